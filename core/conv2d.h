/* conv2d.h - 2-D convolution, PyTorch nn.Conv2d semantics.
 *
 *     x      [N, Cin, H, W]
 *     weight [Cout, Cin, KH, KW]      (any kernel size, square or not)
 *     bias   [Cout] or NULL
 *     out    [N, Cout, Ho, Wo]        Ho = (H + 2*padding - KH) / stride + 1
 *
 *     out[n, co, oh, ow] = bias[co] + sum over ci, kh, kw of
 *         weight[co, ci, kh, kw] * x[n, ci, oh*stride - padding + kh, ow*stride - padding + kw]
 *
 * (a cross-correlation, like PyTorch; input outside the image counts as 0).
 * The U-Net uses 3x3 stride 1 padding 1 (keeps the size), 1x1 (mixes
 * channels) and 3x3 stride 2 padding 1 (the "Downsample2D" that halves it).
 *
 * conv2d_forward_ref is the 7-loop definition. conv2d_forward turns the
 * convolution into one matrix product per tile: "im2col" copies the input
 * patches into a column matrix col[Cin*KH*KW, pixels], then cblas_sgemm
 * computes weight[Cout, Cin*KH*KW] x col. Same signature, same checks.
 * `out` is preallocated by the caller and must not overlap an input.
 *
 *     int ho = conv2d_out_size(64, 3, 2, 1);          // 32
 *     DL_TRY(conv2d_forward(&y, &x, &w, &b, 2, 1));
 */
#ifndef DL_CONV2D_H
#define DL_CONV2D_H

#include "tensor.h"

/* Output length along one axis: (in + 2*padding - kernel) / stride + 1,
 * or a value <= 0 if the arguments are invalid or the kernel does not fit. */
int conv2d_out_size(int in, int kernel, int stride, int padding);

dl_status conv2d_forward_ref(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                             const dl_tensor *bias, int stride, int padding);
dl_status conv2d_forward(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                         const dl_tensor *bias, int stride, int padding);

/* out = conv(x) + bias + bias_n[n] + res in one pass over out, the two
 * additions a U-Net ResBlock makes right after its convolutions:
 *     bias_n [N, Cout]      a bias per image (the time embedding's shift), or NULL
 *     res    [N, Cout, Ho, Wo]  added to the result (the skip connection), or NULL
 * The direct kernels start their sums from bias + bias_n + res instead of
 * reading out again afterwards (two passes over memory saved per add);
 * other shapes run conv2d_forward, then the adds. res and bias_n must not
 * overlap out. */
dl_status conv2d_forward_fused_ref(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight, const dl_tensor *bias,
                                   const dl_tensor *bias_n, const dl_tensor *res, int stride, int padding);
dl_status conv2d_forward_fused(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight, const dl_tensor *bias,
                               const dl_tensor *bias_n, const dl_tensor *res, int stride, int padding);

/* Small channel counts (the toy U-Net: 16..128 channels; 3x3 stride 1
 * padding 1, 1x1, and 3x3 stride 2 padding 1; planes of whole SIMD
 * vectors) take a direct kernel instead of im2col + sgemm, forward and
 * backward: see conv2d_direct.h.
 * conv2d_use_direct(0) turns it off (tests compare both paths; a student can
 * time one against the other). On by default; not thread-safe to toggle
 * while convolutions run. */
void conv2d_use_direct(int on);
int  conv2d_direct_enabled(void);

/* The fast version's scratch memory, malloc'ed and freed in each call: the
 * column matrix of one tile, K x cols floats with K = Cin*KH*KW and
 * cols = max(CONV2D_WORKSPACE_FLOATS / K, 256, one output row Wo); plus, when
 * small images are grouped into one tile, Cout x cols floats for the product.
 * For the SD U-Net that is 16 MiB (+0.6 MiB at 8x8). */
#define CONV2D_WORKSPACE_FLOATS ((size_t)4 << 20)     /* 16 MiB */

/* ------------------------------------------------------------------ */
/* Backward (training). Given dout = dL/dout [N, Cout, Ho, Wo] and the
 * forward's x and weight (nothing is cached, the same stride / padding):
 *
 *     dbias[co]               += sum over n, oh, ow of dout[n, co, oh, ow]
 *     dweight[co, ci, kh, kw] += sum over n, oh, ow of dout[n, co, oh, ow] * x[n, ci, ih, iw]
 *     dx[n, ci, ih, iw]       += sum over co, kh, kw of dout[n, co, oh, ow] * weight[co, ci, kh, kw]
 *         with ih = oh*stride - padding + kh, iw = ow*stride - padding + kw (taps in the
 *         padding contribute nothing)
 *
 * Gradients ACCUMULATE (+=); any of dx, dweight, dbias may be NULL (skipped).
 * Shapes: dx like x, dweight like weight, dbias [Cout]. No gradient may
 * overlap an input.
 *
 * Fast version, per tile of output pixels (the forward's tiles):
 *     col[K, cols]   = im2col(x)                       (only if dweight is wanted)
 *     dweight[Cout, K] += dout_tile[Cout, cols] col^T  one sgemm
 *     dcol[K, cols]  = weight^T dout_tile              one sgemm, into the same buffer
 *     dx            += col2im(dcol)                    scatter-add: every column adds its
 *                                                      K values back onto the pixels it read
 * 1x1 stride-1 unpadded convs skip im2col (x[n] is already [Cin, H*W]).
 * Threads: a batch of at least 2 x threads images (training) is split into
 * one range of images per thread, each with single-threaded BLAS, its own
 * buffers and its own dweight partial (summed at the end); fewer, bigger
 * images go tile by tile with threaded BLAS, like the forward.
 * Scratch per thread in use: the forward's col tile (at most
 * CONV2D_WORKSPACE_FLOATS floats, or K x 256), a Cout x cols copy of dout
 * when small images are grouped, and (batch split) a Cout x K partial.
 */
dl_status conv2d_backward_ref(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                              const dl_tensor *x, const dl_tensor *weight, int stride, int padding);
/* The same, but dx is SET (dx = dL/dx) instead of added to; dweight and
 * dbias are still added to. For a gradient buffer that this call is the
 * first to write: no need to zero it first (and to read the zeros back),
 * which saves two passes over memory per call in a training step. */
dl_status conv2d_backward_set_dx(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                                 const dl_tensor *x, const dl_tensor *weight, int stride, int padding);
dl_status conv2d_backward(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                          const dl_tensor *x, const dl_tensor *weight, int stride, int padding);

#endif
