/* timestep_embedding.h - the sinusoidal timestep embedding of diffusers
 * (get_timestep_embedding), the input of the UNet's time MLP.
 *
 *     half  = dim / 2
 *     freq_i = exp(-ln(max_period) * i / (half - downscale_freq_shift))   i < half
 *     arg[n, i] = timesteps[n] * freq_i * scale
 *     out[n] = [sin(arg[n]), cos(arg[n])]      or [cos, sin] if flip_sin_to_cos,
 *              plus one zero column if dim is odd
 *
 *     out  [n, dim]   preallocated
 *
 * Stable Diffusion: dim 320, flip_sin_to_cos = 1, shift 0, scale 1,
 * max_period 10000:
 *     float t = 999;
 *     DL_TRY(timestep_embedding_forward(&emb, &t, 1, 320, 1, 0.0f, 1.0f, 10000));
 *
 * Computed in float32 step by step as PyTorch does, including an exp that
 * rounds like PyTorch's CPU exp, so the result matches torch to ~1e-7 even
 * for t = 999 (a 1-ulp different frequency would move sin(999 f) by ~6e-5).
 * Plain loops only: the op is tiny.
 */
#ifndef DL_TIMESTEP_EMBEDDING_H
#define DL_TIMESTEP_EMBEDDING_H

#include "tensor.h"

dl_status timestep_embedding_forward(dl_tensor *out, const float *timesteps, int n, int dim,
                                     int flip_sin_to_cos, float downscale_freq_shift,
                                     float scale, int max_period);

#endif
