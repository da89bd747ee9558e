/* conv2d_direct.h - the direct 3x3 convolution behind conv2d_forward /
 * conv2d_backward for SMALL channel counts (internal to core/conv2d.c).
 *
 * im2col + sgemm is the right tool when the matrices are big (Stable
 * Diffusion: 320..1280 channels). A toy U-Net has 16..64 channels: its
 * GEMMs are [16 x 144] x [144 x 1024], sgemm runs them at half speed, and
 * the im2col copy (9x the input) plus sgemm's own packing copies cost as
 * much as the arithmetic. The direct kernel reads the (zero-padded) input
 * in place instead:
 *
 *     out[n, co, h, w:w+V] = bias[co] + sum over ci, kh, kw of
 *         weight[co, ci, kh, kw] * xpad[n, ci, h+kh, w+kw : w+kw+V]
 *
 * V consecutive output pixels of one row are one SIMD vector (V = 16 with
 * AVX-512, else 8); a tile of 4 vectors x a block of output channels lives
 * in registers while ci, kh, kw run. Backward:
 *   dx = the same kernel on the padded dout with the weights transposed
 *        (ci <-> co) and flipped (kh, kw -> 2-kh, 2-kw): a 3x3 "full"
 *        correlation is a padded correlation with the flipped kernel;
 *   dweight[co, ci, kh, kw] = sum over n, h, w of dout[n, co, h, w] *
 *        xpad[n, ci, h+kh, w+kw]: vector products summed over the image,
 *        one partial per thread, added up at the end.
 * Only 3x3, stride 1, padding 1 with W a multiple of V; conv2d.c decides. */
#ifndef DL_CONV2D_DIRECT_H
#define DL_CONV2D_DIRECT_H

#include "dl_error.h"

/* Does the direct kernel handle this convolution (and is it the faster
 * choice)? x [N, Cin, H, W], weight [Cout, Cin, KH, KW]. */
int conv2d_direct_applies(int N, int Cin, int H, int W, int Cout, int KH, int KW, int stride, int pad);

/* out [N, Cout, Ho, Wo] = conv(x, w) + bias + bias_n[n] + res (each of
 * bias [Cout], bias_n [N, Cout], res [N, Cout, Ho, Wo] may be NULL);
 * w [Cout, Cin, KH, KW]. Fails (DL_ERR_ARG) where conv2d_direct_applies
 * says no. */
dl_status conv2d_direct_forward(float *out, const float *x, const float *w, const float *bias,
                                const float *bias_n, const float *res,
                                int N, int Cin, int H, int W, int Cout, int KH, int KW, int stride, int pad);

/* dx += conv^T(dout) (dx = ... with set_dx), dw += dout (x) x  (either
 * may be NULL; dbias is conv2d.c's business). */
dl_status conv2d_direct_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                                 int N, int Cin, int H, int W, int Cout, int KH, int KW, int stride, int pad,
                                 int set_dx);

#endif
