/* norm.h - GroupNorm and LayerNorm (PyTorch nn.GroupNorm / nn.LayerNorm).
 *
 * group_norm: x [N, C, ...] (2 to 4 dims, e.g. [N, C, H, W]). The C
 * channels are split into `groups` consecutive groups of C/groups channels;
 * each (image n, group g) is normalised over all its channels and pixels:
 *
 *     mean, var = mean and BIASED variance of x[n, group g, ...]
 *     out[n, c, ...] = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]
 *
 * layer_norm: the same over the LAST dimension C of x [..., C] (each row
 * has its own mean and variance); weight/bias [C].
 *
 * weight and bias are [C] or NULL (NULL = 1 and 0, i.e. no affine).
 * `out` has x's shape and may be x itself (in place).
 * Statistics are accumulated in double, so large means (x ~ 1e3 + noise)
 * do not lose the variance to cancellation.
 *
 * The fast versions split the (n, group) pairs / the rows over OpenMP
 * threads and make one reading pass for the statistics and one pass that
 * writes y = (x - mean) * s[c] + bias[c], s[c] = rstd * weight[c].
 *
 *     DL_TRY(group_norm_forward(&h, &x, &w, &b, 32, 1e-5f));   // SD ResBlock
 */
#ifndef DL_NORM_H
#define DL_NORM_H

#include "tensor.h"

dl_status group_norm_forward_ref(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                                 const dl_tensor *bias, int groups, float eps);
dl_status group_norm_forward(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                             const dl_tensor *bias, int groups, float eps);

dl_status layer_norm_forward_ref(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                                 const dl_tensor *bias, float eps);
dl_status layer_norm_forward(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                             const dl_tensor *bias, float eps);

#endif
