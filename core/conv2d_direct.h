/* conv2d_direct.h - the direct convolutions behind conv2d_forward /
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
 * V consecutive output pixels are one SIMD vector (V = 16 with AVX-512,
 * else 8); a tile of 4 vectors x a block of output channels lives in
 * registers while ci, kh, kw run. Each image is laid out just before use,
 * in a per-thread buffer: with a zero border, or for rows narrower than a
 * vector (8x8) as three copies shifted by one column, so that a vector may
 * run over a row end. The same kernel with one tap does 1x1 convs (on x as
 * it is) and stride-2 3x3 convs (on the image's 9 im2col planes).
 * Backward:
 *   dx = the same kernel on dout with the weights transposed (ci <-> co)
 *        and, for 3x3, flipped (kh, kw -> 2-kh, 2-kw): a 3x3 "full"
 *        correlation is a padded correlation with the flipped kernel;
 *        stride 2 gives the columns' gradient, added back onto the pixels;
 *   dweight[co, ci, kh, kw] = sum over n, h, w of dout[n, co, h, w] *
 *        xpad[n, ci, h+kh, w+kw]: vector products over chunks of 512
 *        pixels, running vector sums per thread, lanes and threads added
 *        at the end.
 * Which convolutions (3x3 stride 1 pad 1, 1x1, 3x3 stride 2 pad 1; <= 128
 * channels; whole vectors per plane): conv2d_direct_applies. */
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
