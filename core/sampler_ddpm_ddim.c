/* sampler_ddpm_ddim.c - DDPM (Ho et al. 2020) and DDIM (Song et al. 2021),
 * as diffusers' DDPMScheduler and DDIMScheduler compute them.
 *
 * Both work in the "VP" view x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
 * and share the predicted clean picture
 *
 *     x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)       (epsilon)
 *     x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v             (v_prediction)
 *
 * Every float operation follows the order in which diffusers' torch code
 * computes it (float32 throughout, -ffp-contract=off keeps a*b+c unfused),
 * so the trajectories match diffusers to rounding noise.
 */
#include "sampler_internal.h"

#include <math.h>
#include <stdlib.h>

static dl_status check_t(const dl_schedule *s, const char *op, int t, int t_prev)
{
    if (!s || !s->alphas_cumprod) return dl_fail(DL_ERR_ARG, "%s: no schedule", op);
    if (t < 0 || t >= s->num_train_timesteps)
        return dl_fail(DL_ERR_ARG, "%s: timestep %d outside [0, %d)", op, t, s->num_train_timesteps);
    if (t_prev >= t) return dl_fail(DL_ERR_ARG, "%s: previous timestep %d is not below t = %d", op, t_prev, t);
    return DL_OK;
}

/* x0_hat for one value (sa = sqrt(abar_t), sb = sqrt(1 - abar_t)), clipped as
 * diffusers' clip_sample. */
static inline float x0_of(const dl_sampler_config *cfg, float x, float out, float sb, float sa)
{
    float x0 = cfg->prediction_type == DL_PREDICT_V ? sa * x - sb * out : (x - sb * out) / sa;
    if (cfg->clip_sample) {
        float r = cfg->clip_sample_range;
        x0 = x0 < -r ? -r : (x0 > r ? r : x0);
    }
    return x0;
}

dl_status dl_predict_x0(const dl_schedule *s, const dl_sampler_config *cfg, int t,
                        const float *x_t, const float *model_out, float *x0_out, int64_t n)
{
    DL_TRY(check_t(s, "dl_predict_x0", t, -1));
    float abar = s->alphas_cumprod[t];
    float sa = sqrtf(abar), sb = sqrtf(1.0f - abar);
    for (int64_t i = 0; i < n; i++) x0_out[i] = x0_of(cfg, x_t[i], model_out[i], sb, sa);
    return DL_OK;
}

dl_status ddpm_step(const dl_schedule *s, const dl_sampler_config *cfg, int t, int t_prev,
                    const float *x_t, const float *model_out, const float *noise,
                    float *x_prev, float *x0_out, int64_t n)
{
    DL_TRY(check_t(s, "ddpm_step", t, t_prev));
    if (t > 0 && !noise) return dl_fail(DL_ERR_ARG, "ddpm_step: t = %d > 0 needs noise", t);
    /* 1. the scalars (0-dim float32 tensors in diffusers) */
    float abar_t = s->alphas_cumprod[t];
    float abar_prev = t_prev >= 0 ? s->alphas_cumprod[t_prev] : 1.0f;
    float beta_prod_t = 1.0f - abar_t;
    float beta_prod_prev = 1.0f - abar_prev;
    float alpha_t = abar_t / abar_prev;          /* the alpha of this (possibly long) step */
    float beta_t = 1.0f - alpha_t;
    /* 2. posterior mean coefficients (DDPM paper eq. 7) and variance */
    float coef_x0 = sqrtf(abar_prev) * beta_t / beta_prod_t;
    float coef_xt = sqrtf(alpha_t) * beta_prod_prev / beta_prod_t;
    float var = beta_prod_prev / beta_prod_t * beta_t;   /* "fixed_small" */
    if (var < 1e-20f) var = 1e-20f;
    float sigma = sqrtf(var);
    float sa = sqrtf(abar_t), sb = sqrtf(beta_prod_t);
    for (int64_t i = 0; i < n; i++) {
        float x = x_t[i];
        float x0 = x0_of(cfg, x, model_out[i], sb, sa);
        float mean = coef_x0 * x0 + coef_xt * x;
        if (x0_out) x0_out[i] = x0;
        x_prev[i] = t > 0 ? mean + sigma * noise[i] : mean;
    }
    return DL_OK;
}

/* STUDENT EXERCISE (docs/04_sampling.md): write the DDIM step yourself,
 * then `make test K=ddim` compares your sampler with diffusers'. */
dl_status ddim_step(const dl_schedule *s, const dl_sampler_config *cfg, int t, int t_prev, float eta,
                    const float *x_t, const float *model_out, const float *noise,
                    float *x_prev, float *x0_out, int64_t n)
{
    DL_TRY(check_t(s, "ddim_step", t, t_prev));
    if (!(eta >= 0)) return dl_fail(DL_ERR_ARG, "ddim_step: eta = %g, must be >= 0", eta);
    if (eta > 0 && !noise) return dl_fail(DL_ERR_ARG, "ddim_step: eta = %g > 0 needs noise", eta);
    float abar_t = s->alphas_cumprod[t];
    float abar_prev = t_prev >= 0 ? s->alphas_cumprod[t_prev]
                                  : (cfg->set_alpha_to_one ? 1.0f : s->alphas_cumprod[0]);
    float beta_prod_t = 1.0f - abar_t;
    float beta_prod_prev = 1.0f - abar_prev;
    /* sigma_t^2 = (1 - abar_prev)/(1 - abar_t) * (1 - abar_t/abar_prev), scaled by eta */
    float variance = (beta_prod_prev / beta_prod_t) * (1.0f - abar_t / abar_prev);
    float std_dev = eta * sqrtf(variance);
    /* how much of the predicted noise direction x_prev keeps */
    float dir_coef = sqrtf(1.0f - abar_prev - std_dev * std_dev);
    float sqrt_abar_prev = sqrtf(abar_prev);
    float sa = sqrtf(abar_t), sb = sqrtf(beta_prod_t);
    int vpred = cfg->prediction_type == DL_PREDICT_V;
    for (int64_t i = 0; i < n; i++) {
        float x = x_t[i], out = model_out[i];
        float x0 = x0_of(cfg, x, out, sb, sa);
        float e = vpred ? sa * out + sb * x : out;      /* the noise the model implies */
        if (cfg->use_clipped_model_output) e = (x - sa * x0) / sb;
        float direction = dir_coef * e;
        float xp = sqrt_abar_prev * x0 + direction;
        if (x0_out) x0_out[i] = x0;
        x_prev[i] = eta > 0 ? xp + std_dev * noise[i] : xp;
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* The sampler hooks.                                                  */

dl_status dl__ddpm_ddim_setup(dl_sampler *s)
{
    /* set_timesteps(N): integer timesteps, one model call each, x starts as
     * plain randn (init_noise_sigma = 1) and the model sees x unscaled */
    int N = s->num_steps;
    int *ts = malloc((size_t)N * sizeof(int));
    if (!ts) return dl_fail(DL_ERR_MEMORY, "sampler: out of memory");
    dl_status st = dl_sampler_timesteps(&s->cfg, s->sched->num_train_timesteps, N, ts);
    for (int i = 0; st == DL_OK && i < N; i++) s->timesteps[i] = (float)ts[i];
    free(ts);
    s->num_calls = N;
    s->init_noise_sigma = 1.0f;
    return st;
}

dl_status dl__ddpm_ddim_x0(dl_sampler *s)
{
    int t = (int)s->timesteps[s->step_index];
    return dl_predict_x0(s->sched, &s->cfg, t, s->x.data, s->eps.data, s->x0.data, s->x.numel);
}

dl_status dl__ddpm_update(dl_sampler *s, const float *z)
{
    int t = (int)s->timesteps[s->step_index], t_prev = dl_sampler_prev_t(s, t);
    return ddpm_step(s->sched, &s->cfg, t, t_prev, s->x.data, s->eps.data, z, s->x.data, NULL, s->x.numel);
}

dl_status dl__ddim_update(dl_sampler *s, const float *z)
{
    int t = (int)s->timesteps[s->step_index], t_prev = dl_sampler_prev_t(s, t);
    return ddim_step(s->sched, &s->cfg, t, t_prev, s->eta, s->x.data, s->eps.data, z, s->x.data, NULL, s->x.numel);
}
