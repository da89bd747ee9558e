/* linear_direct.h - register-blocked matrix products behind linear_forward
 * and linear_backward for NARROW layers (internal to core/linear.c).
 *
 * A toy U-Net transformer multiplies 4096 tokens by 64x64 weights. sgemm
 * is built for big square-ish matrices: on [4096 x 64] x [64 x 64] it packs
 * both operands on every call and reaches about half of its big-matrix
 * speed. Here the weights are small enough to read in place:
 *
 *     C[r, n] (+)= sum over k of A[r, k] * B[k, n]      (row-major)
 *
 * a tile of 6 rows x up to 4 SIMD vectors of 16 columns lives in 24
 * registers while k runs (AVX2: 4 rows x 2 vectors of 8); each k loads the B vectors once and broadcasts
 * the 6 A values (like conv2d_direct.h, with rows for pixels). Rows are
 * shared out over the threads. The weight gradient,
 *
 *     dW[o, i] += sum over r of dout[r, o] * x[r, i],
 *
 * keeps a 6 x 64 tile of dW in registers while the rows go by, one partial
 * per thread, added up in thread order.
 */
#ifndef DL_LINEAR_DIRECT_H
#define DL_LINEAR_DIRECT_H

/* Does the direct kernel take a layer of this size? (in, out <= 512, one
 * of them <= 256, both whole vectors (16 floats, 8 without AVX-512);
 * rows >= 16.) */
int linear_direct_applies(int rows, int in, int outf);

/* out [rows, outf] = x [rows, in] W^T + bias (bias may be NULL). */
void linear_direct_forward(float *out, const float *x, const float *w, const float *bias, int rows, int in, int outf);

/* dx [rows, in] (+)= dout [rows, outf] W (set: overwrite dx). */
void linear_direct_dx(float *dx, const float *dout, const float *w, int rows, int in, int outf, int set);

/* dw [outf, in] += dout^T x. Returns 0 if it could not allocate its
 * per-thread partials (nothing written then). */
int linear_direct_dw(float *dw, const float *dout, const float *x, int rows, int in, int outf);

#endif
