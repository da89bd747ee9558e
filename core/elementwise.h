/* elementwise.h - activations, softmax and broadcast add/mul.
 *
 *   silu        x * sigmoid(x)                         (ResNet blocks, time MLP)
 *   gelu_erf    x * 0.5 * (1 + erf(x / sqrt(2)))       (torch GELU default, GEGLU)
 *   gelu_tanh   0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (approximate='tanh')
 *   quick_gelu  x * sigmoid(1.702 x)                   (CLIP text encoder)
 *   softmax     exp(x - max) / sum(exp(x - max)) over the LAST dimension
 *   add / mul   out = a (+|*) b, b broadcast onto a (NumPy rules, see below)
 *
 * Every op has a plain-loop reference (*_ref, libm expf/erff/tanhf) and a
 * fast version (OpenMP + loops the compiler vectorizes, using the small
 * polynomial exp/erf below instead of libm calls, which do not vectorize).
 * Fast and reference agree to a few float ulps of max(1, |x|).
 *
 * In place is allowed: `out` may be the same tensor as `x` (or as `a`).
 * `out` must have exactly the shape of `x` (of `a` for add/mul).
 *
 * Broadcasting for add/mul: the dims of b are aligned with a's from the
 * right; each of b's dims must be 1 or equal to a's; b may have fewer dims.
 *
 *     a [N, C, H, W] + b [N, C, 1, 1]     one value per (image, channel)
 *     a [B, L, C]    + b [C]              a bias per channel
 *
 *     DL_TRY(add_forward(&h, &h, &temb));   // in place, temb [N, C, 1, 1]
 */
#ifndef DL_ELEMENTWISE_H
#define DL_ELEMENTWISE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "tensor.h"

dl_status silu_forward_ref(dl_tensor *out, const dl_tensor *x);
dl_status silu_forward(dl_tensor *out, const dl_tensor *x);
dl_status gelu_erf_forward_ref(dl_tensor *out, const dl_tensor *x);
dl_status gelu_erf_forward(dl_tensor *out, const dl_tensor *x);
dl_status gelu_tanh_forward_ref(dl_tensor *out, const dl_tensor *x);
dl_status gelu_tanh_forward(dl_tensor *out, const dl_tensor *x);
dl_status quick_gelu_forward_ref(dl_tensor *out, const dl_tensor *x);
dl_status quick_gelu_forward(dl_tensor *out, const dl_tensor *x);

/* Softmax over the last dimension (rows of length x->shape[ndim-1]). */
dl_status softmax_forward_ref(dl_tensor *out, const dl_tensor *x);
dl_status softmax_forward(dl_tensor *out, const dl_tensor *x);

/* out = a + b and out = a * b with b broadcast onto a. out may alias a;
 * it may alias b only if b has a's shape. */
dl_status add_forward_ref(dl_tensor *out, const dl_tensor *a, const dl_tensor *b);
dl_status add_forward(dl_tensor *out, const dl_tensor *a, const dl_tensor *b);
dl_status mul_forward_ref(dl_tensor *out, const dl_tensor *a, const dl_tensor *b);
dl_status mul_forward(dl_tensor *out, const dl_tensor *a, const dl_tensor *b);

/* out = s * x (one plain loop; out may alias x). */
dl_status scale_forward(dl_tensor *out, const dl_tensor *x, float s);

/* Raw building block shared with attention: softmax of one row of n floats,
 * in place, with the fast exp. */
void softmax_row_inplace(float *row, int64_t n);

/* ------------------------------------------------------------------ */
/* Backward (training). dout = dL/dout has the forward output's shape.
 * Gradients ACCUMULATE (+=) and may be NULL (skipped); they must not
 * overlap an input (so no in-place backward).
 *
 *   silu_backward      dx += dout * s * (1 + x (1 - s)),   s = sigmoid(x)
 *   gelu_erf_backward  dx += dout * (Phi(x) + x phi(x)),   Phi(x) = (1 + erf(x/sqrt 2)) / 2,
 *                                                          phi(x) = exp(-x^2/2) / sqrt(2 pi)
 *   softmax_backward   dx += y * (dout - sum_j dout_j y_j)  per row, from the
 *                      softmax OUTPUT y (which is all it needs)
 *   add_backward       da += dout;  db += dout summed over the dims where b was
 *                      broadcast (db has b's shape, e.g. [N, C, 1, 1] sums H, W)
 *   mul_backward       da += dout * b (b broadcast);  db += (dout * a) summed as above
 */
dl_status silu_backward_ref(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *x);
dl_status silu_backward(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *x);
dl_status gelu_erf_backward_ref(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *x);
dl_status gelu_erf_backward(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *x);
dl_status softmax_backward_ref(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *y);
dl_status softmax_backward(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *y);
/* db (if not NULL) gives b's shape; it must broadcast onto dout (a's shape). */
dl_status add_backward_ref(dl_tensor *da, dl_tensor *db, const dl_tensor *dout);
dl_status add_backward(dl_tensor *da, dl_tensor *db, const dl_tensor *dout);
dl_status mul_backward_ref(dl_tensor *da, dl_tensor *db, const dl_tensor *dout, const dl_tensor *a, const dl_tensor *b);
dl_status mul_backward(dl_tensor *da, dl_tensor *db, const dl_tensor *dout, const dl_tensor *a, const dl_tensor *b);

/* ------------------------------------------------------------------ */
/* a * b + c, as ONE fused instruction when the CPU has FMA (-march=native
 * on any recent x86): twice the polynomial throughput. (The Makefile's
 * -ffp-contract=off stops the compiler from fusing on its own; an explicit
 * fmaf is still honoured.) Results may differ by an ulp between machines. */
#ifdef __FMA__
#define DL_MULADD(a, b, c) fmaf((a), (b), (c))
#else
#define DL_MULADD(a, b, c) ((a) * (b) + (c))
#endif

/* exp(x) written so that a loop calling it vectorizes (no libm call, no
 * branch). Idea: e^x = 2^n * e^r with n = round(x / ln 2), |r| <= ln2 / 2;
 * e^r is a degree-7 polynomial (Cephes coefficients, ~1 ulp), and 2^n is
 * built directly in the exponent bits of a float.
 * Inputs below -87.3 give 0 (true value < 1.2e-38); inputs above 88.3
 * saturate at e^88.3 ~ 2.2e38 instead of overflowing; NaN stays NaN. */
static inline float dl_expf_fast(float x)
{
    float xc = x > 88.3f ? 88.3f : x;
    xc = xc < -87.3f ? -87.3f : xc;
    /* Adding 1.5 * 2^23 rounds to an integer that lands in the low mantissa bits. */
    const float shifter = 12582912.0f;                /* bits 0x4B400000 */
    float t = DL_MULADD(xc, 1.44269504088896341f, shifter);
    float n = t - shifter;                            /* round(x / ln 2) */
    /* r = x - n ln2, with ln2 split in two parts so the product is exact. */
    float r = DL_MULADD(n, -0.693359375f, xc);
    r = DL_MULADD(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = DL_MULADD(p, r, 1.3981999507e-3f);
    p = DL_MULADD(p, r, 8.3334519073e-3f);
    p = DL_MULADD(p, r, 4.1665795894e-2f);
    p = DL_MULADD(p, r, 1.6666665459e-1f);
    p = DL_MULADD(p, r, 5.0000001201e-1f);
    p = DL_MULADD(p * r, r, r) + 1.0f;                /* e^r = 1 + r + r^2 p(r) */
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    uint32_t sb = (tb - 0x4B400000u + 127u) << 23;    /* float bits of 2^n */
    float scale;
    memcpy(&scale, &sb, sizeof scale);
    return x < -87.3f ? 0.0f : p * scale;
}

/* erf(x) by Abramowitz & Stegun 7.1.26, the same formula PyTorch's
 * vectorized CPU erf uses. The formula is good to 1.5e-7; in float the
 * total error is up to ~5e-7 near x = 0, where 1 - poly * e^(-x^2)
 * cancels. GELU multiplies erf by x / 2, so there it does not show.
 *
 *   erf(|x|) = 1 - (a1 t + a2 t^2 + a3 t^3 + a4 t^4 + a5 t^5) e^(-x^2),
 *   t = 1 / (1 + p |x|),  and erf(-x) = -erf(x). */
static inline float dl_erff_fast(float x)
{
    float ax = x < 0.0f ? -x : x;
    float t = 1.0f / DL_MULADD(0.3275911f, ax, 1.0f);
    float poly = 1.061405429f;
    poly = DL_MULADD(poly, t, -1.453152027f);
    poly = DL_MULADD(poly, t, 1.421413741f);
    poly = DL_MULADD(poly, t, -0.284496736f);
    poly = DL_MULADD(poly, t, 0.254829592f);
    poly = poly * t;
    float y = 1.0f - poly * dl_expf_fast(-ax * ax);
    return x < 0.0f ? -y : y;
}

#endif
