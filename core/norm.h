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

/* ------------------------------------------------------------------ */
/* Backward (training). With xhat = (x - mean) * rstd (the normalised input,
 * recomputed from x) and dout = dL/dout:
 *
 *     dbias[c]   += sum of dout over everything but the channel c
 *     dweight[c] += sum of dout * xhat over everything but c
 *     dx          = rstd * (g - mean(g) - xhat * mean(g * xhat)),   g = dout * weight[c]
 *                   (means over the normalised set: one (n, group) for
 *                   group_norm, one row for layer_norm; dx is accumulated)
 *
 * The two mean terms are there because every x of the set moved the mean
 * and the variance that all the others were normalised with.
 * Gradients ACCUMULATE (+=); dx, dweight, dbias may each be NULL. weight
 * may be NULL (= ones, as in the forward); dweight/dbias are [C]. Gradients
 * must not overlap the inputs.
 * Fast versions: one task per (n, group) / per row as in the forward; the
 * per-channel sums for dweight/dbias go to small per-task / per-thread
 * buffers that are added up at the end (no two threads write one value).
 */
dl_status group_norm_backward_ref(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                                  const dl_tensor *x, const dl_tensor *weight, int groups, float eps);
dl_status group_norm_backward(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                              const dl_tensor *x, const dl_tensor *weight, int groups, float eps);

dl_status layer_norm_backward_ref(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                                  const dl_tensor *x, const dl_tensor *weight, float eps);
dl_status layer_norm_backward(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                              const dl_tensor *x, const dl_tensor *weight, float eps);

/* ------------------------------------------------------------------ */
/* GroupNorm followed by SiLU: the pair that opens both halves of every
 * ResBlock, fused so that the backward pass never writes the intermediate
 * gradient dn to memory (norm_silu.c).
 *
 *     n = group_norm(x, weight, bias),  a = silu(n) = n * sigmoid(n)
 *
 * The forward writes a, and n unless n_out is NULL. The backward takes
 * da = dL/da and adds to dx (and dweight, dbias) what
 * group_norm_backward(dn) would with dn = da * silu'(n),
 * silu'(n) = s (1 + n (1 - s)), s = sigmoid(n). It needs n: give the
 * forward's n_out, or NULL to recompute it from x, weight and bias (the
 * same float operations as the forward, so the same n). Recomputing costs
 * a few multiply-adds per value and saves writing n to memory in the
 * forward and reading it back here (the toy U-Net does this). Same
 * accumulate / NULL rules as group_norm_backward. The _ref versions are
 * literally the two reference kernels one after the other. */
dl_status group_norm_silu_forward_ref(dl_tensor *n_out, dl_tensor *a_out, const dl_tensor *x, const dl_tensor *weight,
                                      const dl_tensor *bias, int groups, float eps);
dl_status group_norm_silu_forward(dl_tensor *n_out, dl_tensor *a_out, const dl_tensor *x, const dl_tensor *weight,
                                  const dl_tensor *bias, int groups, float eps);
dl_status group_norm_silu_backward_ref(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *da,
                                       const dl_tensor *x, const dl_tensor *n, const dl_tensor *weight,
                                       const dl_tensor *bias, int groups, float eps);
dl_status group_norm_silu_backward(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *da,
                                   const dl_tensor *x, const dl_tensor *n, const dl_tensor *weight,
                                   const dl_tensor *bias, int groups, float eps);
/* The same with dx SET (dx = ...) instead of added to (dweight, dbias are
 * still added to): for a dx buffer this call writes first, no zeroing. */
dl_status group_norm_silu_backward_set_dx(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *da,
                                          const dl_tensor *x, const dl_tensor *n, const dl_tensor *weight,
                                          const dl_tensor *bias, int groups, float eps);

/* The argument checks of group_norm (x [N, C, ...] with 2 to 4 dims, C
 * divisible by groups, eps >= 0, weight / bias [C] or NULL), for kernels
 * built on it; messages start with op. */
dl_status group_norm_check_args(const char *op, const dl_tensor *x, const dl_tensor *weight, const dl_tensor *bias,
                                int groups, float eps);

/* Mean and (biased) variance of n floats in one pass: sums of x - x[0]
 * (so that a large mean does not cancel the variance away), in float
 * within blocks of 4096 and in double across blocks. */
void norm_shifted_moments(const float *x, int64_t n, double *mean, double *var);

#endif
