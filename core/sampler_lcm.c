/* sampler_lcm.c - the Latent Consistency Model sampler (Luo et al. 2023),
 * as diffusers' LCMScheduler computes it.
 *
 * An LCM is distilled to jump from any x_t straight to a clean sample. The
 * scheduler wraps the model's x0 prediction in the consistency model's
 * boundary condition (Song et al. 2023) so that at t = 0 it is the identity:
 *
 *     c_skip = sigma_d^2 / ((s t)^2 + sigma_d^2),   c_out = s t / sqrt((s t)^2 + sigma_d^2)
 *     denoised = c_out x0_hat + c_skip x_t           (sigma_d = 0.5, s = timestep_scaling = 10)
 *
 * and then re-noises the clean estimate to the next timestep with fresh
 * noise (the forward process, add_noise), except after the last step:
 *
 *     x_prev = sqrt(abar_prev) denoised + sqrt(1 - abar_prev) z
 *
 * The pipeline's result is the last `denoised` (= x after the last step).
 * Timesteps come from the distillation grid: N of 999, 979, ..., 19 (for
 * original_inference_steps 50), e.g. 999 759 499 259 for N = 4.
 */
#include "sampler_internal.h"

#include <math.h>
#include <stdlib.h>

dl_status dl__lcm_setup(dl_sampler *s)
{
    const int N = s->num_steps;
    int *ts = malloc((size_t)N * sizeof(int));
    if (!ts) return dl_fail(DL_ERR_MEMORY, "sampler: out of memory");
    dl_status st = dl__lcm_timesteps(&s->cfg, s->sched->num_train_timesteps, N, ts);
    for (int i = 0; st == DL_OK && i < N; i++) s->timesteps[i] = (float)ts[i];
    free(ts);
    s->num_calls = N;
    s->init_noise_sigma = 1.0f;
    return st;
}

dl_status dl__lcm_x0(dl_sampler *s)
{
    /* x0 = the boundary-conditioned "denoised" */
    const int t = (int)s->timesteps[s->step_index];
    const float sigma_data = 0.5f;
    float scaled_t = (float)t * s->cfg.timestep_scaling;
    float c_skip = sigma_data * sigma_data / (scaled_t * scaled_t + sigma_data * sigma_data);
    float c_out = scaled_t / sqrtf(scaled_t * scaled_t + sigma_data * sigma_data);
    DL_TRY(dl_predict_x0(s->sched, &s->cfg, t, s->x.data, s->eps.data, s->x0.data, s->x.numel));
    float *x0 = s->x0.data;
    const float *x = s->x.data;
    for (int64_t i = 0; i < s->x.numel; i++) x0[i] = c_out * x0[i] + c_skip * x[i];
    return DL_OK;
}

dl_status dl__lcm_update(dl_sampler *s, const float *z)
{
    const int j = s->step_index;
    const float *denoised = s->x0.data;
    float *x = s->x.data;
    if (j == s->num_calls - 1) {                     /* the last step: the result */
        for (int64_t i = 0; i < s->x.numel; i++) x[i] = denoised[i];
        return DL_OK;
    }
    int t_prev = (int)s->timesteps[j + 1];
    float abar_prev = s->sched->alphas_cumprod[t_prev];
    float a = sqrtf(abar_prev), b = sqrtf(1.0f - abar_prev);
    for (int64_t i = 0; i < s->x.numel; i++) x[i] = a * denoised[i] + b * z[i];
    return DL_OK;
}
