/* sampling.c - see sampling.h
 *
 * Every float operation follows the order in which diffusers' torch code
 * computes it (float32 throughout, -ffp-contract=off keeps a*b+c unfused),
 * so the trajectories match diffusers to rounding noise.
 */
#include "sampling.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *const dl_sampler_names[DL_SAMPLER_COUNT] = {"ddpm", "ddim"};
const char *const dl_spacing_names[DL_SPACING_COUNT] = {"leading", "trailing", "linspace"};

dl_status dl_sampler_kind_from_name(const char *name, dl_sampler_kind *kind)
{
    for (int k = 0; k < DL_SAMPLER_COUNT; k++)
        if (name && !strcmp(name, dl_sampler_names[k])) { *kind = (dl_sampler_kind)k; return DL_OK; }
    return dl_fail(DL_ERR_ARG, "sampler: unknown scheduler \"%s\" (valid: ddpm, ddim)", name ? name : "(null)");
}

dl_status dl_spacing_from_name(const char *name, dl_timestep_spacing *spacing)
{
    for (int k = 0; k < DL_SPACING_COUNT; k++)
        if (name && !strcmp(name, dl_spacing_names[k])) { *spacing = (dl_timestep_spacing)k; return DL_OK; }
    return dl_fail(DL_ERR_ARG, "sampler: unknown timestep_spacing \"%s\" (valid: leading, trailing, linspace)",
                   name ? name : "(null)");
}

dl_sampler_config dl_sampler_config_default(void)
{
    return (dl_sampler_config){ .timestep_spacing = DL_SPACING_LEADING, .steps_offset = 0,
                                .set_alpha_to_one = 1, .clip_sample = 0, .clip_sample_range = 1.0f };
}

dl_sampler_config dl_sampler_config_sd(void)
{
    return (dl_sampler_config){ .timestep_spacing = DL_SPACING_LEADING, .steps_offset = 1,
                                .set_alpha_to_one = 0, .clip_sample = 0, .clip_sample_range = 1.0f };
}

/* ------------------------------------------------------------------ */
/* Timesteps, as numpy computes them in diffusers' set_timesteps.      */

dl_status dl_sampler_timesteps(const dl_sampler_config *cfg, int T, int N, int *out)
{
    if (T < 1) return dl_fail(DL_ERR_ARG, "sampler timesteps: num_train_timesteps = %d", T);
    if (N < 1 || N > T)
        return dl_fail(DL_ERR_ARG, "sampler timesteps: %d steps, must be in 1..%d (the training steps)", N, T);
    switch (cfg->timestep_spacing) {
    case DL_SPACING_LEADING: {          /* 0, r, 2r, ... reversed, + offset; r = T // N */
        int ratio = T / N;
        for (int i = 0; i < N; i++) out[i] = (N - 1 - i) * ratio + cfg->steps_offset;
        break;
    }
    case DL_SPACING_TRAILING: {         /* round(arange(T, 0, -T/N)) - 1 */
        double step = (double)T / N;
        /* numpy's arange: ceil((stop - start) / step) values start + i * delta,
         * with delta recomputed as (start + step) - start */
        double len = ceil((0.0 - T) / -step);
        if ((int)len != N)
            return dl_fail(DL_ERR_ARG, "sampler timesteps: trailing spacing with %d steps gives %d timesteps in "
                           "diffusers (numpy's float arange); pick another step count", N, (int)len);
        double delta = ((double)T - step) - (double)T;
        for (int i = 0; i < N; i++) out[i] = (int)nearbyint((double)T + i * delta) - 1;
        break;
    }
    case DL_SPACING_LINSPACE: {         /* round(linspace(0, T-1, N)), reversed */
        double step = N > 1 ? (double)(T - 1) / (N - 1) : 0;
        for (int i = 0; i < N; i++) {
            double v = (N > 1 && i == N - 1) ? (double)(T - 1) : i * step;
            out[N - 1 - i] = (int)nearbyint(v);
        }
        break;
    }
    default:
        return dl_fail(DL_ERR_ARG, "sampler timesteps: bad spacing %d", (int)cfg->timestep_spacing);
    }
    for (int i = 0; i < N; i++)
        if (out[i] < 0 || out[i] >= T)
            return dl_fail(DL_ERR_ARG, "sampler timesteps: %s spacing with %d steps and steps_offset %d gives t = %d, "
                           "outside [0, %d)", dl_spacing_names[cfg->timestep_spacing], N, cfg->steps_offset, out[i], T);
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* The step maths.                                                     */

static dl_status check_t(const dl_schedule *s, const char *op, int t, int t_prev)
{
    if (!s || !s->alphas_cumprod) return dl_fail(DL_ERR_ARG, "%s: no schedule", op);
    if (t < 0 || t >= s->num_train_timesteps)
        return dl_fail(DL_ERR_ARG, "%s: timestep %d outside [0, %d)", op, t, s->num_train_timesteps);
    if (t_prev >= t) return dl_fail(DL_ERR_ARG, "%s: previous timestep %d is not below t = %d", op, t_prev, t);
    return DL_OK;
}

/* x0_hat for one value; clipping as diffusers' clip_sample. */
static inline float x0_from_eps(float x, float e, float sqrt_one_minus_abar, float sqrt_abar, int clip, float range)
{
    float x0 = (x - sqrt_one_minus_abar * e) / sqrt_abar;
    if (clip) x0 = x0 < -range ? -range : (x0 > range ? range : x0);
    return x0;
}

dl_status dl_predict_x0(const dl_schedule *s, const dl_sampler_config *cfg, int t,
                        const float *x_t, const float *eps, float *x0_out, int64_t n)
{
    DL_TRY(check_t(s, "dl_predict_x0", t, -1));
    float abar = s->alphas_cumprod[t];
    float sa = sqrtf(abar), sb = sqrtf(1.0f - abar);
    for (int64_t i = 0; i < n; i++)
        x0_out[i] = x0_from_eps(x_t[i], eps[i], sb, sa, cfg->clip_sample, cfg->clip_sample_range);
    return DL_OK;
}

dl_status ddpm_step(const dl_schedule *s, const dl_sampler_config *cfg, int t, int t_prev,
                    const float *x_t, const float *eps, const float *noise,
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
        float x0 = x0_from_eps(x, eps[i], sb, sa, cfg->clip_sample, cfg->clip_sample_range);
        float mean = coef_x0 * x0 + coef_xt * x;
        if (x0_out) x0_out[i] = x0;
        x_prev[i] = t > 0 ? mean + sigma * noise[i] : mean;
    }
    return DL_OK;
}

/* STUDENT EXERCISE (docs/04_sampling.md): write the DDIM step yourself,
 * then `make test K=ddim` compares your sampler with diffusers'. */
dl_status ddim_step(const dl_schedule *s, const dl_sampler_config *cfg, int t, int t_prev, float eta,
                    const float *x_t, const float *eps, const float *noise,
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
    for (int64_t i = 0; i < n; i++) {
        float e = eps[i];
        float x0 = x0_from_eps(x_t[i], e, sb, sa, cfg->clip_sample, cfg->clip_sample_range);
        if (cfg->use_clipped_model_output) e = (x_t[i] - sa * x0) / sb;
        float direction = dir_coef * e;
        float xp = sqrt_abar_prev * x0 + direction;
        if (x0_out) x0_out[i] = x0;
        x_prev[i] = eta > 0 ? xp + std_dev * noise[i] : xp;
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* The step-by-step sampler.                                           */

dl_status dl_sampler_init(dl_sampler *s, dl_sampler_kind kind, const dl_schedule *sched,
                          const dl_sampler_config *cfg, int num_steps, float eta,
                          int ndim, const int64_t shape[])
{
    memset(s, 0, sizeof *s);
    if ((unsigned)kind >= DL_SAMPLER_COUNT) return dl_fail(DL_ERR_ARG, "dl_sampler_init: bad sampler kind %d", (int)kind);
    if (!sched || !sched->alphas_cumprod) return dl_fail(DL_ERR_ARG, "dl_sampler_init: no schedule");
    if (!cfg) return dl_fail(DL_ERR_ARG, "dl_sampler_init: no config");
    if (!(eta >= 0 && eta <= 100)) return dl_fail(DL_ERR_ARG, "dl_sampler_init: eta = %g, must be >= 0", eta);
    if (ndim < 1 || ndim > DL_MAX_DIMS) return dl_fail(DL_ERR_ARG, "dl_sampler_init: %d dims", ndim);
    if (dl_shape_numel(ndim, shape) < 1) return DL_ERR_SHAPE;   /* the message names the bad dimension */
    s->kind = kind;
    s->cfg = *cfg;
    s->sched = sched;
    s->eta = eta;
    s->num_steps = num_steps;
    int T = sched->num_train_timesteps;
    if (num_steps < 1 || num_steps > T)
        return dl_fail(DL_ERR_ARG, "dl_sampler_init (%s): %d steps, must be in 1..%d", dl_sampler_names[kind], num_steps, T);
    s->timesteps = malloc((size_t)num_steps * sizeof(int));
    s->t_batch = malloc((size_t)shape[0] * sizeof(float));
    dl_status st = (!s->timesteps || !s->t_batch) ? dl_fail(DL_ERR_MEMORY, "dl_sampler_init: out of memory") : DL_OK;
    if (st == DL_OK) st = dl_sampler_timesteps(cfg, T, num_steps, s->timesteps);
    if (st == DL_OK) st = dl_tensor_alloc(&s->x, ndim, shape);
    if (st == DL_OK) st = dl_tensor_alloc(&s->eps, ndim, shape);
    if (st == DL_OK) st = dl_tensor_alloc(&s->x0, ndim, shape);
    if (st == DL_OK) st = dl_tensor_alloc(&s->noise, ndim, shape);
    if (st != DL_OK) { dl_sampler_free(s); return st; }
    return DL_OK;
}

void dl_sampler_free(dl_sampler *s)
{
    free(s->timesteps);
    free(s->t_batch);
    dl_tensor_free(&s->x);
    dl_tensor_free(&s->eps);
    dl_tensor_free(&s->x0);
    dl_tensor_free(&s->noise);
    memset(s, 0, sizeof *s);
}

static void restart(dl_sampler *s)
{
    s->step_index = 0;
    s->have_prediction = 0;
    s->model_calls = 0;
    dl_tensor_fill(&s->eps, 0);
    dl_tensor_fill(&s->x0, 0);
    dl_tensor_fill(&s->noise, 0);
}

dl_status dl_sampler_set_noise(dl_sampler *s, dl_rng *rng)
{
    if (!rng) return dl_fail(DL_ERR_ARG, "dl_sampler_set_noise: no rng");
    DL_TRY(dl_rng_randn_tensor(rng, &s->x));   /* * init_noise_sigma, which is 1 */
    restart(s);
    return DL_OK;
}

dl_status dl_sampler_set_x(dl_sampler *s, const dl_tensor *x_T)
{
    if (!x_T || x_T->numel != s->x.numel)
        return dl_fail(DL_ERR_SHAPE, "dl_sampler_set_x: x_T has %lld values, the sampler %lld",
                       x_T ? (long long)x_T->numel : 0LL, (long long)s->x.numel);
    DL_TRY(dl_tensor_copy(&s->x, x_T));
    restart(s);
    return DL_OK;
}

int dl_sampler_done(const dl_sampler *s) { return s->step_index >= s->num_steps; }

int dl_sampler_current_t(const dl_sampler *s)
{
    return dl_sampler_done(s) ? -1 : s->timesteps[s->step_index];
}

/* diffusers: prev_t = t - T // N for both DDPM (previous_timestep) and DDIM. */
int dl_sampler_prev_t(const dl_sampler *s, int t)
{
    return t - s->sched->num_train_timesteps / s->num_steps;
}

int dl_sampler_update_draws_noise(const dl_sampler *s)
{
    if (dl_sampler_done(s)) return 0;
    return s->kind == DL_SAMPLER_DDPM ? dl_sampler_current_t(s) > 0 : s->eta > 0;
}

dl_status dl_sampler_predict(dl_sampler *s, dl_eps_model model, void *ctx)
{
    if (dl_sampler_done(s)) return dl_fail(DL_ERR_ARG, "dl_sampler_predict: all %d steps are done", s->num_steps);
    if (!model) return dl_fail(DL_ERR_ARG, "dl_sampler_predict: no model");
    int t = dl_sampler_current_t(s);
    for (int64_t b = 0; b < s->x.shape[0]; b++) s->t_batch[b] = (float)t;
    DL_TRY(model(ctx, &s->x, s->t_batch, &s->eps));
    s->model_calls++;
    DL_TRY(dl_predict_x0(s->sched, &s->cfg, t, s->x.data, s->eps.data, s->x0.data, s->x.numel));
    s->have_prediction = 1;
    return DL_OK;
}

dl_status dl_sampler_update(dl_sampler *s, dl_rng *rng, const float *noise)
{
    if (dl_sampler_done(s)) return dl_fail(DL_ERR_ARG, "dl_sampler_update: all %d steps are done", s->num_steps);
    if (!s->have_prediction) return dl_fail(DL_ERR_ARG, "dl_sampler_update: call dl_sampler_predict first");
    int t = dl_sampler_current_t(s), t_prev = dl_sampler_prev_t(s, t);
    const float *z = NULL;
    if (dl_sampler_update_draws_noise(s)) {   /* drawn after the model call, as diffusers does */
        if (noise) memcpy(s->noise.data, noise, (size_t)s->noise.numel * sizeof(float));
        else if (rng) dl_rng_randn(rng, s->noise.data, s->noise.numel);
        else return dl_fail(DL_ERR_ARG, "dl_sampler_update (%s): t = %d needs noise: give an rng or a noise array",
                            dl_sampler_names[s->kind], t);
        z = s->noise.data;
    } else {
        dl_tensor_fill(&s->noise, 0);
    }
    if (s->kind == DL_SAMPLER_DDPM)
        DL_TRY(ddpm_step(s->sched, &s->cfg, t, t_prev, s->x.data, s->eps.data, z, s->x.data, NULL, s->x.numel));
    else
        DL_TRY(ddim_step(s->sched, &s->cfg, t, t_prev, s->eta, s->x.data, s->eps.data, z, s->x.data, NULL, s->x.numel));
    s->step_index++;
    s->have_prediction = 0;
    return DL_OK;
}

dl_status dl_sampler_step(dl_sampler *s, dl_eps_model model, void *ctx, dl_rng *rng)
{
    if (!s->have_prediction) DL_TRY(dl_sampler_predict(s, model, ctx));
    return dl_sampler_update(s, rng, NULL);
}

dl_status dl_sampler_run(dl_sampler *s, dl_eps_model model, void *ctx, dl_rng *rng)
{
    while (!dl_sampler_done(s)) DL_TRY(dl_sampler_step(s, model, ctx, rng));
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Classifier-free guidance.                                           */

dl_status dl_cfg_init(dl_cfg *g, dl_eps_model model, void *model_ctx, float guidance,
                      int ndim, const int64_t shape[])
{
    memset(g, 0, sizeof *g);
    if (!model) return dl_fail(DL_ERR_ARG, "dl_cfg_init: no model");
    if (ndim < 1 || ndim > DL_MAX_DIMS || shape[0] < 1)
        return dl_fail(DL_ERR_ARG, "dl_cfg_init: bad sample shape (%d dims)", ndim);
    if (!isfinite(guidance)) return dl_fail(DL_ERR_ARG, "dl_cfg_init: guidance %g is not finite", guidance);
    g->model = model;
    g->model_ctx = model_ctx;
    g->guidance = guidance;
    g->batch = (int)shape[0];
    int64_t shape2[DL_MAX_DIMS];
    for (int d = 0; d < ndim; d++) shape2[d] = shape[d];
    shape2[0] = 2 * shape[0];
    dl_status st = dl_tensor_alloc(&g->x2, ndim, shape2);
    if (st == DL_OK) st = dl_tensor_alloc(&g->eps2, ndim, shape2);
    if (st == DL_OK && !(g->t2 = malloc((size_t)shape2[0] * sizeof(float))))
        st = dl_fail(DL_ERR_MEMORY, "dl_cfg_init: out of memory");
    if (st != DL_OK) { dl_cfg_free(g); return st; }
    return DL_OK;
}

void dl_cfg_combine(float *out, const float *eps_uncond, const float *eps_cond, float g, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        float u = eps_uncond[i];
        out[i] = u + g * (eps_cond[i] - u);   /* diffusers: uncond + g * (text - uncond) */
    }
}

dl_status dl_cfg_eps(void *cfg, const dl_tensor *x_t, const float *t, dl_tensor *eps_out)
{
    dl_cfg *g = cfg;
    int64_t half = g->x2.numel / 2;
    if (x_t->numel != half || eps_out->numel != half || x_t->shape[0] != g->batch)
        return dl_fail(DL_ERR_SHAPE, "dl_cfg_eps: x_t has %lld values in %lld items, the guidance was set up for %lld in %d",
                       (long long)x_t->numel, (long long)x_t->shape[0], (long long)half, g->batch);
    /* the doubled batch: [x, x] at [t, t]; the model conditions the halves differently */
    memcpy(g->x2.data, x_t->data, (size_t)half * sizeof(float));
    memcpy(g->x2.data + half, x_t->data, (size_t)half * sizeof(float));
    memcpy(g->t2, t, (size_t)g->batch * sizeof(float));
    memcpy(g->t2 + g->batch, t, (size_t)g->batch * sizeof(float));
    DL_TRY(g->model(g->model_ctx, &g->x2, g->t2, &g->eps2));
    dl_cfg_combine(eps_out->data, g->eps2.data, g->eps2.data + half, g->guidance, half);
    return DL_OK;
}

const float *dl_cfg_eps_uncond(const dl_cfg *g) { return g->eps2.data; }
const float *dl_cfg_eps_cond(const dl_cfg *g) { return g->eps2.data + g->eps2.numel / 2; }

void dl_cfg_free(dl_cfg *g)
{
    dl_tensor_free(&g->x2);
    dl_tensor_free(&g->eps2);
    free(g->t2);
    memset(g, 0, sizeof *g);
}
