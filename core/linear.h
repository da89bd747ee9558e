/* linear.h - fully connected layers and plain matrix products.
 *
 * linear: PyTorch nn.Linear, y = x W^T + b, applied to the last dimension.
 *
 *     x      [..., in]               (1 to 4 dims; the leading dims are "rows")
 *     weight [out_features, in]      (PyTorch layout: one row per output)
 *     bias   [out_features] or NULL
 *     out    [..., out_features]     (same leading dims as x)
 *
 * matmul: c = a b for 2-D tensors, a [M, K], b [K, N], c [M, N].
 *
 * Every function has a plain-loop reference version (*_ref) and a fast
 * version (one cblas_sgemm). Both check shapes and return DL_ERR_SHAPE /
 * DL_ERR_ARG with a message naming the op. `out` / `c` is preallocated by
 * the caller and must not overlap an input.
 *
 *     dl_tensor y;  dl_tensor_alloc(&y, 3, DL_SHAPE(2, 77, 1280));
 *     DL_TRY(linear_forward(&y, &x, &w, &b));      // x [2, 77, 320], w [1280, 320]
 */
#ifndef DL_LINEAR_H
#define DL_LINEAR_H

#include "tensor.h"

dl_status linear_forward_ref(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight, const dl_tensor *bias);
dl_status linear_forward(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight, const dl_tensor *bias);

dl_status matmul_forward_ref(dl_tensor *c, const dl_tensor *a, const dl_tensor *b);
dl_status matmul_forward(dl_tensor *c, const dl_tensor *a, const dl_tensor *b);

#endif
