/* sampling.c - see sampling.h: names, configs, DDPM/DDIM-style timesteps,
 * the step-by-step driver that every sampler family plugs into, and
 * classifier-free guidance. The maths of each family is in core/sampler_*.c.
 */
#include "sampler_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const dl_sampler_names[DL_SAMPLER_COUNT] = {
    "ddpm", "ddim", "pndm", "lms", "euler", "euler_a", "heun", "kdpm2", "kdpm2_a",
    "dpmpp_2m", "dpmpp_2m_karras", "unipc", "lcm"};
const char *const dl_sampler_class_names[DL_SAMPLER_COUNT] = {
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler", "DPMSolverMultistepScheduler", "DPMSolverMultistepScheduler",
    "UniPCMultistepScheduler", "LCMScheduler"};
const char *const dl_spacing_names[DL_SPACING_COUNT] = {"leading", "trailing", "linspace"};
const char *const dl_prediction_names[DL_PREDICTION_COUNT] = {"epsilon", "v_prediction"};

dl_status dl_sampler_kind_from_name(const char *name, dl_sampler_kind *kind)
{
    for (int k = 0; k < DL_SAMPLER_COUNT; k++)
        if (name && !strcmp(name, dl_sampler_names[k])) { *kind = (dl_sampler_kind)k; return DL_OK; }
    return dl_fail(DL_ERR_ARG, "sampler: unknown scheduler \"%s\" (valid: ddpm ddim pndm lms euler euler_a heun "
                   "kdpm2 kdpm2_a dpmpp_2m dpmpp_2m_karras unipc lcm)", name ? name : "(null)");
}

dl_status dl_spacing_from_name(const char *name, dl_timestep_spacing *spacing)
{
    for (int k = 0; k < DL_SPACING_COUNT; k++)
        if (name && !strcmp(name, dl_spacing_names[k])) { *spacing = (dl_timestep_spacing)k; return DL_OK; }
    return dl_fail(DL_ERR_ARG, "sampler: unknown timestep_spacing \"%s\" (valid: leading, trailing, linspace)",
                   name ? name : "(null)");
}

dl_status dl_prediction_from_name(const char *name, dl_prediction_type *type)
{
    for (int k = 0; k < DL_PREDICTION_COUNT; k++)
        if (name && !strcmp(name, dl_prediction_names[k])) { *type = (dl_prediction_type)k; return DL_OK; }
    return dl_fail(DL_ERR_ARG, "sampler: unsupported prediction_type \"%s\" (valid: epsilon, v_prediction)",
                   name ? name : "(null)");
}

dl_sampler_config dl_sampler_config_default(void)
{
    return (dl_sampler_config){ .timestep_spacing = DL_SPACING_LEADING, .steps_offset = 0,
                                .prediction_type = DL_PREDICT_EPSILON, .set_alpha_to_one = 1,
                                .clip_sample = 0, .clip_sample_range = 1.0f, .use_clipped_model_output = 0,
                                .use_karras_sigmas = 0, .solver_order = 2, .lower_order_final = 1,
                                .unipc_bh1 = 0, .original_inference_steps = 50, .timestep_scaling = 10.0f };
}

dl_sampler_config dl_sampler_config_sd(void)
{
    dl_sampler_config c = dl_sampler_config_default();
    c.steps_offset = 1;
    c.set_alpha_to_one = 0;
    return c;
}

dl_sampler_config dl_sampler_config_class_default(dl_sampler_kind kind)
{
    dl_sampler_config c = dl_sampler_config_default();
    switch (kind) {
    case DL_SAMPLER_DDPM: case DL_SAMPLER_DDIM:
        c.clip_sample = 1;
        break;
    case DL_SAMPLER_PNDM:
        c.set_alpha_to_one = 0;
        break;
    case DL_SAMPLER_LMS: case DL_SAMPLER_EULER: case DL_SAMPLER_EULER_A: case DL_SAMPLER_HEUN:
    case DL_SAMPLER_KDPM2: case DL_SAMPLER_KDPM2_A: case DL_SAMPLER_DPMPP_2M: case DL_SAMPLER_UNIPC:
        c.timestep_spacing = DL_SPACING_LINSPACE;
        break;
    case DL_SAMPLER_DPMPP_2M_KARRAS:
        c.timestep_spacing = DL_SPACING_LINSPACE;
        c.use_karras_sigmas = 1;
        break;
    default:
        break;
    }
    return c;
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
/* The step-by-step sampler.                                           */

static int is_euler_family(dl_sampler_kind k)
{
    return k == DL_SAMPLER_EULER || k == DL_SAMPLER_EULER_A || k == DL_SAMPLER_HEUN || k == DL_SAMPLER_LMS;
}
static int is_kdpm2(dl_sampler_kind k) { return k == DL_SAMPLER_KDPM2 || k == DL_SAMPLER_KDPM2_A; }
static int is_dpm(dl_sampler_kind k) { return k == DL_SAMPLER_DPMPP_2M || k == DL_SAMPLER_DPMPP_2M_KARRAS; }

static dl_status check_config(dl_sampler_kind kind, const dl_sampler_config *c)
{
    const char *name = dl_sampler_names[kind];
    if ((unsigned)c->timestep_spacing >= DL_SPACING_COUNT)
        return dl_fail(DL_ERR_ARG, "dl_sampler_init (%s): bad timestep_spacing %d", name, (int)c->timestep_spacing);
    if ((unsigned)c->prediction_type >= DL_PREDICTION_COUNT)
        return dl_fail(DL_ERR_ARG, "dl_sampler_init (%s): bad prediction_type %d", name, (int)c->prediction_type);
    if (c->steps_offset < 0) return dl_fail(DL_ERR_ARG, "dl_sampler_init (%s): steps_offset %d < 0", name, c->steps_offset);
    if (c->use_karras_sigmas && !(kind == DL_SAMPLER_EULER || kind == DL_SAMPLER_HEUN || kind == DL_SAMPLER_LMS ||
                                  is_dpm(kind) || kind == DL_SAMPLER_UNIPC))
        return dl_fail(DL_ERR_ARG, "dl_sampler_init (%s): use_karras_sigmas is supported by euler, heun, lms, "
                       "dpmpp_2m and unipc only", name);
    if ((is_dpm(kind) || kind == DL_SAMPLER_UNIPC) && (c->solver_order < 1 || c->solver_order > 2))
        return dl_fail(DL_ERR_ARG, "dl_sampler_init (%s): solver_order %d, supported: 1 or 2", name, c->solver_order);
    if (kind == DL_SAMPLER_LCM && !(c->timestep_scaling > 0))
        return dl_fail(DL_ERR_ARG, "dl_sampler_init (lcm): timestep_scaling %g must be > 0", c->timestep_scaling);
    if (c->clip_sample && !(c->clip_sample_range > 0))
        return dl_fail(DL_ERR_ARG, "dl_sampler_init (%s): clip_sample_range %g must be > 0", name, c->clip_sample_range);
    return DL_OK;
}

/* How many history buffers (hist) and whether the saved-sample buffers are needed. */
static int hist_needed(dl_sampler_kind k)
{
    if (k == DL_SAMPLER_PNDM || k == DL_SAMPLER_LMS) return 4;
    if (is_dpm(k) || k == DL_SAMPLER_UNIPC) return 2;
    return 0;
}
static int saved_needed(dl_sampler_kind k)
{
    return k == DL_SAMPLER_PNDM || k == DL_SAMPLER_HEUN || is_kdpm2(k) || k == DL_SAMPLER_UNIPC;
}

static dl_status setup(dl_sampler *s)
{
    switch (s->kind) {
    case DL_SAMPLER_DDPM: case DL_SAMPLER_DDIM: return dl__ddpm_ddim_setup(s);
    case DL_SAMPLER_PNDM:                       return dl__pndm_setup(s);
    case DL_SAMPLER_LCM:                        return dl__lcm_setup(s);
    case DL_SAMPLER_KDPM2: case DL_SAMPLER_KDPM2_A: return dl__kdpm2_setup(s);
    case DL_SAMPLER_DPMPP_2M: case DL_SAMPLER_DPMPP_2M_KARRAS: case DL_SAMPLER_UNIPC: return dl__dpm_setup(s);
    default:                                    return dl__euler_family_setup(s);
    }
}

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
    DL_TRY(check_config(kind, cfg));
    int T = sched->num_train_timesteps;
    if (num_steps < 1 || num_steps > T)
        return dl_fail(DL_ERR_ARG, "dl_sampler_init (%s): %d steps, must be in 1..%d", dl_sampler_names[kind], num_steps, T);
    s->kind = kind;
    s->cfg = *cfg;
    if (kind == DL_SAMPLER_DPMPP_2M_KARRAS) s->cfg.use_karras_sigmas = 1;
    s->sched = sched;
    s->eta = eta;
    s->num_steps = num_steps;
    s->timesteps = malloc((size_t)(2 * num_steps + 1) * sizeof(float));
    s->t_batch = malloc((size_t)shape[0] * sizeof(float));
    dl_status st = (!s->timesteps || !s->t_batch) ? dl_fail(DL_ERR_MEMORY, "dl_sampler_init: out of memory") : DL_OK;
    dl_tensor *bufs[] = {&s->x, &s->model_in, &s->eps, &s->x0, &s->noise};
    for (int i = 0; i < 5 && st == DL_OK; i++) st = dl_tensor_alloc(bufs[i], ndim, shape);
    for (int i = 0; i < hist_needed(kind) && st == DL_OK; i++) st = dl_tensor_alloc(&s->hist[i], ndim, shape);
    if (st == DL_OK && saved_needed(kind)) st = dl_tensor_alloc(&s->saved, ndim, shape);
    if (st == DL_OK && saved_needed(kind)) st = dl_tensor_alloc(&s->saved_d, ndim, shape);
    if (st == DL_OK) st = setup(s);
    /* Some corner cases give diffusers (and so us) a NaN schedule, e.g.
     * kdpm2_a with 2 linspace steps: sqrt of a slightly negative
     * sigma_next^2 - sigma_up^2. Refuse them here rather than sample NaN. */
    for (int i = 0; st == DL_OK && i < s->num_calls; i++)
        if (!isfinite(s->timesteps[i]) || s->timesteps[i] < 0 || s->timesteps[i] > T - 1)
            st = dl_fail(DL_ERR_ARG, "dl_sampler_init (%s): %d %s steps give an invalid timestep at call %d (%g); "
                         "use another step count or spacing", dl_sampler_names[kind], num_steps,
                         dl_spacing_names[s->cfg.timestep_spacing], i, (double)s->timesteps[i]);
    for (int i = 0; st == DL_OK && s->sigmas && i < s->num_sigmas; i++)
        if (!isfinite(s->sigmas[i]))
            st = dl_fail(DL_ERR_ARG, "dl_sampler_init (%s): %d %s steps give a non-finite sigma %d",
                         dl_sampler_names[kind], num_steps, dl_spacing_names[s->cfg.timestep_spacing], i);
    if (st != DL_OK) { dl_sampler_free(s); return st; }
    return DL_OK;
}

void dl_sampler_free(dl_sampler *s)
{
    free(s->timesteps);
    free(s->t_batch);
    free(s->sigmas);
    free(s->sigmas_interpol);
    free(s->sigmas_up);
    free(s->sigmas_down);
    dl_tensor *bufs[] = {&s->x, &s->model_in, &s->eps, &s->x0, &s->noise, &s->saved, &s->saved_d,
                         &s->hist[0], &s->hist[1], &s->hist[2], &s->hist[3]};
    for (int i = 0; i < 11; i++) dl_tensor_free(bufs[i]);
    memset(s, 0, sizeof *s);
}

static dl_status restart(dl_sampler *s)
{
    s->step_index = 0;
    s->have_prediction = 0;
    s->model_calls = 0;
    dl_tensor_fill(&s->eps, 0);
    dl_tensor_fill(&s->x0, 0);
    dl_tensor_fill(&s->noise, 0);
    /* the multistep / two-stage state starts over */
    s->hist_len = 0;
    s->have_saved = 0;
    s->counter = s->lower_order_nums = s->this_order = 0;
    return DL_OK;
}

dl_status dl_sampler_set_noise(dl_sampler *s, dl_rng *rng)
{
    if (!rng) return dl_fail(DL_ERR_ARG, "dl_sampler_set_noise: no rng");
    DL_TRY(dl_rng_randn_tensor(rng, &s->x));
    for (int64_t i = 0; i < s->x.numel; i++) s->x.data[i] = s->x.data[i] * s->init_noise_sigma;
    return restart(s);
}

dl_status dl_sampler_set_noise_from(dl_sampler *s, const float *z)
{
    if (!z) return dl_fail(DL_ERR_ARG, "dl_sampler_set_noise_from: no noise");
    for (int64_t i = 0; i < s->x.numel; i++) s->x.data[i] = z[i] * s->init_noise_sigma;
    return restart(s);
}

dl_status dl_sampler_set_x(dl_sampler *s, const dl_tensor *x_T)
{
    if (!x_T || x_T->numel != s->x.numel)
        return dl_fail(DL_ERR_SHAPE, "dl_sampler_set_x: x_T has %lld values, the sampler %lld",
                       x_T ? (long long)x_T->numel : 0LL, (long long)s->x.numel);
    DL_TRY(dl_tensor_copy(&s->x, x_T));
    return restart(s);
}

int dl_sampler_order(dl_sampler_kind kind)
{
    return kind == DL_SAMPLER_HEUN || is_kdpm2(kind) ? 2 : 1;
}

dl_status dl_sampler_set_start(dl_sampler *s, int start_call, const dl_tensor *x)
{
    if (start_call < 0 || start_call >= s->num_calls)
        return dl_fail(DL_ERR_ARG, "dl_sampler_set_start: call %d outside 0..%d (%s, %d calls)", start_call,
                       s->num_calls - 1, dl_sampler_names[s->kind], s->num_calls);
    DL_TRY(dl_sampler_set_x(s, x));          /* x as is; the history starts empty */
    s->step_index = start_call;
    return DL_OK;
}

dl_status dl_sampler_add_noise(const dl_sampler *s, int call, const float *x0, const float *noise, float *out, int64_t n)
{
    if (call < 0 || call >= s->num_calls)
        return dl_fail(DL_ERR_ARG, "dl_sampler_add_noise: call %d outside 0..%d", call, s->num_calls - 1);
    if (!x0 || !noise || !out) return dl_fail(DL_ERR_ARG, "dl_sampler_add_noise: missing array");
    if (is_euler_family(s->kind) || is_kdpm2(s->kind)) {
        const float sigma = s->sigmas[call];          /* the "VE" view: x = x0 + sigma eps */
        for (int64_t i = 0; i < n; i++) out[i] = x0[i] + noise[i] * sigma;
        return DL_OK;
    }
    if (is_dpm(s->kind) || s->kind == DL_SAMPLER_UNIPC) {
        const float sigma = s->sigmas[call];          /* VP again, from the sampler's own sigma */
        const float alpha = 1.0f / sqrtf(sigma * sigma + 1.0f), sigma_vp = sigma * alpha;
        for (int64_t i = 0; i < n; i++) out[i] = alpha * x0[i] + sigma_vp * noise[i];
        return DL_OK;
    }
    return add_noise(s->sched, out, x0, noise, n, (int)nearbyintf(s->timesteps[call]));   /* ddpm ddim pndm lcm */
}

int dl_sampler_done(const dl_sampler *s) { return s->step_index >= s->num_calls; }

float dl_sampler_current_timestep(const dl_sampler *s)
{
    return dl_sampler_done(s) ? -1.0f : s->timesteps[s->step_index];
}

int dl_sampler_current_t(const dl_sampler *s)
{
    return dl_sampler_done(s) ? -1 : (int)nearbyintf(s->timesteps[s->step_index]);
}

/* diffusers: prev_t = t - T // N for DDPM (previous_timestep), DDIM and PNDM. */
int dl_sampler_prev_t(const dl_sampler *s, int t)
{
    return t - s->sched->num_train_timesteps / s->num_steps;
}

/* The sigma scale_model_input divides by, or a negative number if the
 * model sees x unscaled. */
static float input_sigma(const dl_sampler *s)
{
    if (is_euler_family(s->kind)) return dl__euler_family_input_sigma(s);
    if (is_kdpm2(s->kind)) return dl__kdpm2_input_sigma(s);
    return -1.0f;
}

float dl_sampler_current_sigma(const dl_sampler *s)
{
    if (dl_sampler_done(s)) return 0.0f;
    float sig = input_sigma(s);
    if (sig >= 0) return sig;
    if (is_dpm(s->kind) || s->kind == DL_SAMPLER_UNIPC) return s->sigmas[s->step_index];
    float ab = s->sched->alphas_cumprod[dl_sampler_current_t(s)];
    return sqrtf((1.0f - ab) / ab);
}

int dl_sampler_update_draws_noise(const dl_sampler *s)
{
    if (dl_sampler_done(s)) return 0;
    switch (s->kind) {
    case DL_SAMPLER_DDPM:    return dl_sampler_current_t(s) > 0;
    case DL_SAMPLER_DDIM:    return s->eta > 0;
    case DL_SAMPLER_EULER:   return 1;    /* drawn, multiplied by s_churn = 0 */
    case DL_SAMPLER_EULER_A: return 1;
    case DL_SAMPLER_KDPM2_A: return 1;    /* every call; the second stage uses it */
    case DL_SAMPLER_LCM:     return s->step_index < s->num_calls - 1;
    default:                 return 0;
    }
}

const dl_tensor *dl_sampler_x0(const dl_sampler *s)
{
    return s->model_calls > 0 ? &s->x0 : NULL;
}

static dl_status predict_x0(dl_sampler *s)
{
    switch (s->kind) {
    case DL_SAMPLER_DDPM: case DL_SAMPLER_DDIM: return dl__ddpm_ddim_x0(s);
    case DL_SAMPLER_PNDM:                       return dl__pndm_x0(s);
    case DL_SAMPLER_LCM:                        return dl__lcm_x0(s);
    case DL_SAMPLER_KDPM2: case DL_SAMPLER_KDPM2_A: return dl__kdpm2_x0(s);
    case DL_SAMPLER_DPMPP_2M: case DL_SAMPLER_DPMPP_2M_KARRAS: case DL_SAMPLER_UNIPC: return dl__dpm_x0(s);
    default:                                    return dl__euler_family_x0(s);
    }
}

dl_status dl_sampler_predict(dl_sampler *s, dl_eps_model model, void *ctx)
{
    if (dl_sampler_done(s)) return dl_fail(DL_ERR_ARG, "dl_sampler_predict: all %d model calls are done", s->num_calls);
    if (!model) return dl_fail(DL_ERR_ARG, "dl_sampler_predict: no model");
    /* scale_model_input: the Euler family hands the model x / sqrt(sigma^2 + 1) */
    float sigma = input_sigma(s);
    if (sigma >= 0) {
        float c = sqrtf(sigma * sigma + 1.0f);
        for (int64_t i = 0; i < s->x.numel; i++) s->model_in.data[i] = s->x.data[i] / c;
    } else {
        memcpy(s->model_in.data, s->x.data, (size_t)s->x.numel * sizeof(float));
    }
    float t = s->timesteps[s->step_index];
    for (int64_t b = 0; b < s->x.shape[0]; b++) s->t_batch[b] = t;
    DL_TRY(model(ctx, &s->model_in, s->t_batch, &s->eps));
    s->model_calls++;
    DL_TRY(predict_x0(s));
    s->have_prediction = 1;
    return DL_OK;
}

dl_status dl_sampler_update(dl_sampler *s, dl_rng *rng, const float *noise)
{
    if (dl_sampler_done(s)) return dl_fail(DL_ERR_ARG, "dl_sampler_update: all %d model calls are done", s->num_calls);
    if (!s->have_prediction) return dl_fail(DL_ERR_ARG, "dl_sampler_update: call dl_sampler_predict first");
    const float *z = NULL;
    if (dl_sampler_update_draws_noise(s)) {   /* drawn after the model call, as diffusers does */
        if (noise) memcpy(s->noise.data, noise, (size_t)s->noise.numel * sizeof(float));
        else if (rng) dl_rng_randn(rng, s->noise.data, s->noise.numel);
        else return dl_fail(DL_ERR_ARG, "dl_sampler_update (%s): t = %g needs noise: give an rng or a noise array",
                            dl_sampler_names[s->kind], dl_sampler_current_timestep(s));
        z = s->noise.data;
    } else {
        dl_tensor_fill(&s->noise, 0);
    }
    dl_status st;
    switch (s->kind) {
    case DL_SAMPLER_DDPM:    st = dl__ddpm_update(s, z); break;
    case DL_SAMPLER_DDIM:    st = dl__ddim_update(s, z); break;
    case DL_SAMPLER_PNDM:    st = dl__pndm_update(s); break;
    case DL_SAMPLER_LMS:     st = dl__lms_update(s); break;
    case DL_SAMPLER_EULER:   st = dl__euler_update(s); break;
    case DL_SAMPLER_EULER_A: st = dl__euler_a_update(s, z); break;
    case DL_SAMPLER_HEUN:    st = dl__heun_update(s); break;
    case DL_SAMPLER_KDPM2: case DL_SAMPLER_KDPM2_A: st = dl__kdpm2_update(s, z); break;
    case DL_SAMPLER_UNIPC:   st = dl__unipc_update(s); break;
    case DL_SAMPLER_LCM:     st = dl__lcm_update(s, z); break;
    default:                 st = dl__dpmpp_update(s); break;
    }
    DL_TRY(st);
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
/* The schedule as text.                                               */

/* Append like snprintf: *len counts the whole text, buf gets what fits. */
static void put(char *buf, size_t n, size_t *len, const char *fmt, ...)
{
    size_t at = *len < n ? *len : n;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(buf ? buf + at : NULL, buf ? n - at : 0, fmt, ap);
    va_end(ap);
    if (w > 0) *len += (size_t)w;
}

/* "name: [a, b, c]": integers as integers, other values with 9 digits */
static void put_list(char *buf, size_t n, size_t *len, const char *name, const float *v, int count)
{
    int all_int = 1;
    for (int i = 0; i < count; i++) all_int &= v[i] == floorf(v[i]) && fabsf(v[i]) < 1e9f;
    put(buf, n, len, "%s: [", name);
    for (int i = 0; i < count; i++) {
        if (all_int) put(buf, n, len, i ? ", %lld" : "%lld", (long long)v[i]);
        else put(buf, n, len, i ? ", %.9g" : "%.9g", (double)v[i]);
    }
    put(buf, n, len, "]\n");
}

int dl_sampler_describe(const dl_sampler *s, char *buf, size_t n)
{
    size_t len = 0;
    if (buf && n) buf[0] = 0;
    put(buf, n, &len, "scheduler: %s (%s), %d steps, %d model calls\n", dl_sampler_names[s->kind],
        dl_sampler_class_names[s->kind], s->num_steps, s->num_calls);
    put_list(buf, n, &len, "timesteps", s->timesteps, s->num_calls);
    if (s->sigmas) put_list(buf, n, &len, "sigmas", s->sigmas, s->num_sigmas);
    else put(buf, n, &len, "sigmas: none (this scheduler works with alphas_cumprod directly)\n");
    put(buf, n, &len, "init_noise_sigma: %.9g\n", (double)s->init_noise_sigma);
    return (int)len;
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
    g->guidance_rescale = 0.0f;
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

/* torch.std (Bessel's correction) of n values, accumulated in double */
static double std_of(const float *v, int64_t n)
{
    double mean = 0, ss = 0;
    for (int64_t i = 0; i < n; i++) mean += v[i];
    mean /= (double)n;
    for (int64_t i = 0; i < n; i++) ss += (v[i] - mean) * (v[i] - mean);
    return n > 1 ? sqrt(ss / (double)(n - 1)) : 0.0;
}

void dl_cfg_rescale(float *eps, const float *eps_cond, float phi, int64_t batch, int64_t per_item)
{
    /* Lin et al. 2023, "Common diffusion noise schedules and sample steps
     * are flawed", eq. 15-16: a large g inflates eps's spread; rescale it to
     * the conditional prediction's, then mix with the unrescaled one. */
    for (int64_t b = 0; b < batch; b++) {
        float *e = eps + b * per_item;
        float std_text = (float)std_of(eps_cond + b * per_item, per_item);
        float std_cfg = (float)std_of(e, per_item);
        float ratio = std_cfg > 0 ? std_text / std_cfg : 1.0f;
        for (int64_t i = 0; i < per_item; i++) {
            float rescaled = e[i] * ratio;
            e[i] = phi * rescaled + (1.0f - phi) * e[i];
        }
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
    if (g->guidance_rescale > 0)
        dl_cfg_rescale(eps_out->data, g->eps2.data + half, g->guidance_rescale, g->batch, half / g->batch);
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
