/* schedule.c - see schedule.h
 *
 * Every float operation below mirrors one rounding step of the torch code
 * it reproduces (the Makefile's -ffp-contract=off keeps the compiler from
 * fusing a*b+c; fmaf() marks the places where torch's build does fuse).
 */
#include "schedule.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const char *const dl_schedule_names[DL_SCHEDULE_COUNT] = {"linear", "scaled_linear", "squaredcos_cap_v2"};

#define MAX_TRAIN_TIMESTEPS 100000

dl_status dl_schedule_kind_from_name(const char *name, dl_schedule_kind *kind)
{
    for (int k = 0; k < DL_SCHEDULE_COUNT; k++)
        if (name && !strcmp(name, dl_schedule_names[k])) { *kind = (dl_schedule_kind)k; return DL_OK; }
    return dl_fail(DL_ERR_ARG, "schedule: unknown beta schedule \"%s\" (valid: %s, %s, %s)", name ? name : "(null)",
                   dl_schedule_names[0], dl_schedule_names[1], dl_schedule_names[2]);
}

/* torch.linspace(start, end, T, dtype=float32) on an AVX2 CPU, value for value.
 * The idea: step = (end - start) / (T - 1); the first half counts up from
 * start, the second half counts down from end (so both ends are exact).
 * torch fills 16 values per loop turn as two vectors of 8: each vector gets a
 * base value by that rule, and its 8 lanes are base + k*step. The last
 * T % 16 values use the rule one by one. */
static float linspace_value(float start, float end, float step, int T, int i)
{
    if (i < T / 2) return fmaf(step, (float)i, start);         /* start + step*i */
    return fmaf(-step, (float)(T - 1 - i), end);               /* end - step*(T-1-i) */
}

static void torch_linspace_f32(float *out, float start, float end, int T)
{
    if (T == 1) { out[0] = start; return; }
    float step = (end - start) / (float)(T - 1);
    int i = 0;
    for (; i + 16 <= T; i += 16)
        for (int v = 0; v < 16; v += 8) {                      /* two vectors of 8 */
            float base = linspace_value(start, end, step, T, i + v);
            out[i + v] = base;
            for (int k = 1; k < 8; k++) out[i + v + k] = base + (float)k * step;
        }
    for (; i < T; i++) out[i] = linspace_value(start, end, step, T, i);
}

/* diffusers' betas_for_alpha_bar (cosine), in double as Python does it. */
static double cosine_alpha_bar(double t)
{
    return pow(cos((t + 0.008) / 1.008 * M_PI / 2), 2.0);
}

static dl_status fill_betas(dl_schedule *s)
{
    int T = s->num_train_timesteps;
    float *b = s->betas;
    switch (s->kind) {
    case DL_SCHEDULE_LINEAR:
        torch_linspace_f32(b, (float)s->beta_start, (float)s->beta_end, T);
        break;
    case DL_SCHEDULE_SCALED_LINEAR:
        /* linspace of the square roots (taken in double), then squared in float */
        torch_linspace_f32(b, (float)sqrt(s->beta_start), (float)sqrt(s->beta_end), T);
        for (int i = 0; i < T; i++) b[i] = b[i] * b[i];
        break;
    case DL_SCHEDULE_COSINE:
        for (int i = 0; i < T; i++) {
            double t1 = (double)i / T, t2 = (double)(i + 1) / T;
            double beta = 1 - cosine_alpha_bar(t2) / cosine_alpha_bar(t1);
            b[i] = (float)(beta < 0.999 ? beta : 0.999);      /* max_beta caps the last steps */
        }
        break;
    default:
        return dl_fail(DL_ERR_ARG, "schedule: bad kind %d", (int)s->kind);
    }
    return DL_OK;
}

dl_status dl_schedule_init(dl_schedule *s, dl_schedule_kind kind, int num_train_timesteps,
                           double beta_start, double beta_end)
{
    memset(s, 0, sizeof *s);
    if ((unsigned)kind >= DL_SCHEDULE_COUNT) return dl_fail(DL_ERR_ARG, "schedule: bad kind %d", (int)kind);
    if (num_train_timesteps < 1 || num_train_timesteps > MAX_TRAIN_TIMESTEPS)
        return dl_fail(DL_ERR_ARG, "schedule %s: num_train_timesteps = %d, must be in 1..%d",
                       dl_schedule_names[kind], num_train_timesteps, MAX_TRAIN_TIMESTEPS);
    if (kind != DL_SCHEDULE_COSINE && !(beta_start > 0 && beta_start < beta_end && beta_end < 1))
        return dl_fail(DL_ERR_ARG, "schedule %s: need 0 < beta_start < beta_end < 1, got beta_start = %g, beta_end = %g",
                       dl_schedule_names[kind], beta_start, beta_end);
    int T = num_train_timesteps;
    s->kind = kind;
    s->num_train_timesteps = T;
    s->beta_start = kind == DL_SCHEDULE_COSINE ? 0 : beta_start;
    s->beta_end = kind == DL_SCHEDULE_COSINE ? 0 : beta_end;
    s->betas = malloc((size_t)T * sizeof(float));
    s->alphas = malloc((size_t)T * sizeof(float));
    s->alphas_cumprod = malloc((size_t)T * sizeof(float));
    if (!s->betas || !s->alphas || !s->alphas_cumprod) {
        dl_schedule_free(s);
        return dl_fail(DL_ERR_MEMORY, "schedule: out of memory for %d timesteps", T);
    }
    dl_status st = fill_betas(s);
    if (st != DL_OK) { dl_schedule_free(s); return st; }
    /* torch.cumprod keeps its running product in double and rounds each
     * output to float (its CPU accumulate type for float is double). */
    double prod = 1.0;
    for (int i = 0; i < T; i++) {
        s->alphas[i] = 1.0f - s->betas[i];
        prod *= s->alphas[i];
        s->alphas_cumprod[i] = (float)prod;
    }
    return DL_OK;
}

dl_status dl_schedule_init_default(dl_schedule *s, dl_schedule_kind kind)
{
    switch (kind) {
    case DL_SCHEDULE_LINEAR:        return dl_schedule_init(s, kind, 1000, 1e-4, 0.02);
    case DL_SCHEDULE_SCALED_LINEAR: return dl_schedule_init(s, kind, 1000, 0.00085, 0.012);
    case DL_SCHEDULE_COSINE:        return dl_schedule_init(s, kind, 1000, 0, 0);
    default:
        memset(s, 0, sizeof *s);
        return dl_fail(DL_ERR_ARG, "schedule: bad kind %d", (int)kind);
    }
}

void dl_schedule_free(dl_schedule *s)
{
    free(s->betas);
    free(s->alphas);
    free(s->alphas_cumprod);
    memset(s, 0, sizeof *s);
}

float dl_schedule_snr(const dl_schedule *s, int t)
{
    if (t < 0 || t >= s->num_train_timesteps) return NAN;
    float ab = s->alphas_cumprod[t];
    return ab / (1.0f - ab);
}

float dl_schedule_log_snr(const dl_schedule *s, int t)
{
    if (t < 0 || t >= s->num_train_timesteps) return NAN;
    double ab = s->alphas_cumprod[t];
    return (float)(log(ab) - log1p(-ab));
}

/* ------------------------------------------------------------------ */

/* STUDENT EXERCISE: write add_noise yourself, then `make test K=add_noise`. */
dl_status add_noise(const dl_schedule *s, float *x_t, const float *x0, const float *noise,
                    int64_t n, int t)
{
    if (t < 0 || t >= s->num_train_timesteps)
        return dl_fail(DL_ERR_ARG, "add_noise: timestep %d outside [0, %d)", t, s->num_train_timesteps);
    float abar = s->alphas_cumprod[t];
    float signal = sqrtf(abar);              /* how much of x0 is left  */
    float noise_scale = sqrtf(1.0f - abar);  /* how much noise came in  */
    for (int64_t i = 0; i < n; i++)
        x_t[i] = signal * x0[i] + noise_scale * noise[i];
    return DL_OK;
}

dl_status ddpm_posterior_step(const dl_schedule *s, float *x_prev, const float *x_t,
                              const float *eps, const float *z, int64_t n, int t)
{
    if (t < 0 || t >= s->num_train_timesteps)
        return dl_fail(DL_ERR_ARG, "ddpm_posterior_step: timestep %d outside [0, %d)", t, s->num_train_timesteps);
    if (t > 0 && !z) return dl_fail(DL_ERR_ARG, "ddpm_posterior_step: t = %d > 0 needs the noise z", t);
    /* the scalars, in the order diffusers computes them (float32) */
    float abar_t = s->alphas_cumprod[t];
    float abar_prev = t > 0 ? s->alphas_cumprod[t - 1] : 1.0f;
    float one_minus_abar_t = 1.0f - abar_t;
    float one_minus_abar_prev = 1.0f - abar_prev;
    float alpha_t = abar_t / abar_prev;
    float beta_t = 1.0f - alpha_t;
    float coef_x0 = sqrtf(abar_prev) * beta_t / one_minus_abar_t;
    float coef_xt = sqrtf(alpha_t) * one_minus_abar_prev / one_minus_abar_t;
    float var = one_minus_abar_prev / one_minus_abar_t * beta_t;
    if (var < 1e-20f) var = 1e-20f;
    float sigma = sqrtf(var);
    float sqrt_one_minus_abar_t = sqrtf(one_minus_abar_t), sqrt_abar_t = sqrtf(abar_t);
    for (int64_t i = 0; i < n; i++) {
        float x0_hat = (x_t[i] - sqrt_one_minus_abar_t * eps[i]) / sqrt_abar_t;   /* no clipping */
        float mean = coef_x0 * x0_hat + coef_xt * x_t[i];
        x_prev[i] = t > 0 ? mean + sigma * z[i] : mean;
    }
    return DL_OK;
}
