/* geglu.h - the gated feed-forward activation of a transformer block
 * (diffusers' GEGLU: the projection gives two halves h and g, then
 * out = h * gelu(g), gelu the exact erf one).
 *
 *     out  = h * gelu(g),            gelu(g)  = g Phi(g)
 *     dh  += dout * gelu(g)
 *     dg  += dout * h * gelu'(g),    gelu'(g) = Phi(g) + g phi(g)
 *
 * with Phi(g) = (1 + erf(g / sqrt 2)) / 2 and phi(g) = exp(-g^2 / 2) / sqrt(2 pi).
 * One pass each way instead of gelu_erf then mul (and their two backward
 * passes through a gelu(g) tensor): the forward writes no gelu(g), the
 * backward recomputes it next to the derivative (both need Phi(g)).
 * h, g, out, dout have one shape; gradients ACCUMULATE (+=), may be NULL,
 * and must not overlap an input. _ref: libm erff / expf per element; fast:
 * the vectorizable dl_erff_fast / dl_expf_fast of elementwise.h. */
#ifndef DL_GEGLU_H
#define DL_GEGLU_H

#include "tensor.h"

dl_status geglu_forward_ref(dl_tensor *out, const dl_tensor *h, const dl_tensor *g);
dl_status geglu_forward(dl_tensor *out, const dl_tensor *h, const dl_tensor *g);
dl_status geglu_backward_ref(dl_tensor *dh, dl_tensor *dg, const dl_tensor *dout, const dl_tensor *h,
                             const dl_tensor *g);
dl_status geglu_backward(dl_tensor *dh, dl_tensor *dg, const dl_tensor *dout, const dl_tensor *h, const dl_tensor *g);

#endif
