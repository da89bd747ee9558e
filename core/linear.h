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

/* Narrow layers (in, out features <= 256/512, multiples of 16: the toy
 * U-Net's) run register-blocked kernels instead of sgemm
 * (core/linear_direct.h); linear_use_direct(0) switches back to sgemm
 * everywhere (tests and bench/bench_toy_step compare both). */
void linear_use_direct(int on);

dl_status matmul_forward_ref(dl_tensor *c, const dl_tensor *a, const dl_tensor *b);
dl_status matmul_forward(dl_tensor *c, const dl_tensor *a, const dl_tensor *b);

/* ------------------------------------------------------------------ */
/* Backward of linear (training). Given dout = dL/dout [..., out_features]:
 *
 *     dx      [..., in]          += dout W          (dx[r, i] += sum_o dout[r, o] W[o, i])
 *     dweight [out_features, in] += dout^T x        (summed over all rows r)
 *     dbias   [out_features]     += sum_r dout[r, :]
 *
 * Gradients ACCUMULATE (+=): zero them first. Any of dx, dweight, dbias may
 * be NULL (not needed: that work is skipped). They must not overlap the
 * inputs. The fast version is two cblas_sgemm calls with beta = 1.
 *
 *     DL_TRY(linear_backward(&dh, &w->grad, &b->grad, &dy, &h, &w->value));
 */
dl_status linear_backward_ref(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias,
                              const dl_tensor *dout, const dl_tensor *x, const dl_tensor *weight);
dl_status linear_backward(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias,
                          const dl_tensor *dout, const dl_tensor *x, const dl_tensor *weight);
/* The same with dx SET (dx = dout W, sgemm beta = 0) instead of added to;
 * dweight and dbias are still added to. For a dx buffer this call writes
 * first: no zeroing needed. */
dl_status linear_backward_set_dx(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias,
                                 const dl_tensor *dout, const dl_tensor *x, const dl_tensor *weight);

#endif
