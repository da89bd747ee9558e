/* sampler_kdpm2.c - DPM-Solver-2 in sigma space (Karras et al. 2022,
 * k-diffusion's sample_dpm_2 / sample_dpm_2_ancestral), as diffusers'
 * KDPM2DiscreteScheduler and KDPM2AncestralDiscreteScheduler compute them.
 *
 * A midpoint method: each step sigma_i -> sigma_{i+1} takes two model calls.
 *   1. Euler half-way, to the geometric mean  sigma_mid = sqrt(sigma_i sigma_{i+1})
 *      (in diffusers: exp(lerp(log sigma_i, log sigma_{i+1}, 0.5))):
 *          x_mid = x + d(x, sigma_i) (sigma_mid - sigma_i)
 *   2. the whole step with the slope measured at the midpoint:
 *          x_next = x + d(x_mid, sigma_mid) (sigma_{i+1} - sigma_i)
 * The last step (to sigma = 0) is a single Euler step: 2N - 1 calls.
 * The model is called at the midpoint with the (fractional) timestep whose
 * sigma is sigma_mid (diffusers' sigma_to_t, in float32).
 *
 * Ancestral variant: the step aims at sigma_down instead of sigma_{i+1}
 * (midpoint between sigma_i and sigma_down) and adds fresh noise of std
 * sigma_up, as Euler A does. diffusers draws a noise tensor at EVERY call
 * (only the second stage uses it) - reproduced here. With eta = 1 the
 * midpoint sqrt(sigma_i sigma_down) is exactly sigma_{i+1}.
 *
 * diffusers stores every list with the entries repeated; this file keeps
 * its layout (E[0] = a[0], E[k] = a[(k+1)/2], E[2N+1] = a[N]) and indexes
 * it exactly as diffusers' step() does.
 */
#include "sampler_internal.h"

#include <math.h>
#include <stdlib.h>

/* torch's lerp at weight 0.5: end - (end - start) * 0.5 */
static float lerp_half(float start, float end) { return end - (end - start) * 0.5f; }

/* diffusers' sigma_to_t in float32 torch: interpolate log sigma in the
 * training table. */
static float sigma_to_t_f32(float sigma, const float *log_sig, int T)
{
    float log_sigma = logf(sigma);
    int low = 0;
    for (int t = 0; t < T; t++)
        if (log_sigma - log_sig[t] >= 0) low = t;
    if (low > T - 2) low = T - 2;
    float lo = log_sig[low], hi = log_sig[low + 1];
    float w = (lo - log_sigma) / (lo - hi);
    w = w < 0 ? 0 : (w > 1 ? 1 : w);
    return (1 - w) * (float)low + w * (float)(low + 1);
}

static void expand(const float *a, int N, float *E)
{
    for (int k = 0; k < 2 * N + 2; k++) {
        int i = (k + 1) / 2;
        E[k] = a[i < N ? i : N];
    }
}

dl_status dl__kdpm2_setup(dl_sampler *s)
{
    const int N = s->num_steps, T = s->sched->num_train_timesteps;
    const int ancestral = s->kind == DL_SAMPLER_KDPM2_A;
    double *ts = malloc((size_t)N * sizeof(double));
    float *table = malloc((size_t)T * sizeof(float)), *a = malloc(4 * (size_t)(N + 1) * sizeof(float));
    dl_status st = (ts && table && a) ? DL_OK : dl_fail(DL_ERR_MEMORY, "sampler: out of memory");
    if (st == DL_OK) st = dl__euler_timesteps(&s->cfg, T, N, ts);
    free(s->sigmas_interpol); free(s->sigmas_up); free(s->sigmas_down);
    s->sigmas_interpol = s->sigmas_up = s->sigmas_down = NULL;
    if (st == DL_OK) st = dl__alloc_sigmas(s, 2 * N + 2);
    if (st == DL_OK) {
        s->sigmas_interpol = malloc((size_t)(2 * N + 2) * sizeof(float));
        s->sigmas_up = malloc((size_t)(2 * N + 2) * sizeof(float));
        s->sigmas_down = malloc((size_t)(2 * N + 2) * sizeof(float));
        if (!s->sigmas_interpol || !s->sigmas_up || !s->sigmas_down) st = dl_fail(DL_ERR_MEMORY, "sampler: out of memory");
    }
    if (st == DL_OK) {
        float *sig = a, *mid = a + (N + 1), *up = a + 2 * (N + 1), *down = a + 3 * (N + 1);
        dl__sigma_table(s->sched, table);
        for (int i = 0; i < N; i++) sig[i] = (float)dl__np_interp(table, T, ts[i]);
        sig[N] = 0.0f;
        for (int t = 0; t < T; t++) table[t] = logf(table[t]);     /* now log sigma */
        for (int i = 0; i <= N; i++) {
            if (ancestral) {
                float next = i < N ? sig[i + 1] : 0.0f;
                up[i] = i < N ? sqrtf(next * next * (sig[i] * sig[i] - next * next) / (sig[i] * sig[i])) : NAN;
                down[i] = i < N ? sqrtf(next * next - up[i] * up[i]) : 0.0f;
                /* midpoint between sigma_i and sigma_down_i; the last two are 0 */
                mid[i] = i >= N - 1 ? 0.0f : expf(lerp_half(logf(sig[i]), logf(down[i])));
            } else {
                up[i] = down[i] = 0;
                /* midpoint between sigma_{i-1} and sigma_i (entry 0 is never used) */
                mid[i] = i == 0 ? NAN : (i == N ? 0.0f : expf(lerp_half(logf(sig[i]), logf(sig[i - 1]))));
            }
        }
        expand(sig, N, s->sigmas);
        expand(mid, N, s->sigmas_interpol);
        expand(up, N, s->sigmas_up);
        expand(down, N, s->sigmas_down);
        /* timesteps: [t0, tm, t1, tm, t2, ..., t_{N-1}], the midpoints' t between */
        s->timesteps[0] = (float)ts[0];
        for (int i = 1; i < N; i++) {
            float mid_sigma = ancestral ? mid[i - 1] : mid[i];
            s->timesteps[2 * i - 1] = sigma_to_t_f32(mid_sigma, table, T);
            s->timesteps[2 * i] = (float)ts[i];
        }
        s->num_calls = 2 * N - 1;
        float max = 0;
        for (int i = 0; i <= N; i++) max = fmaxf(max, sig[i]);
        int plain = s->cfg.timestep_spacing == DL_SPACING_LINSPACE || s->cfg.timestep_spacing == DL_SPACING_TRAILING;
        s->init_noise_sigma = plain ? max : sqrtf(max * max + 1.0f);
    }
    s->have_saved = 0;
    free(ts);
    free(table);
    free(a);
    return st;
}

/* The sigma of the current call: sigma itself in the first stage, the
 * midpoint sigma in the second (scale_model_input and x0 both use it). */
float dl__kdpm2_input_sigma(const dl_sampler *s)
{
    const int j = s->step_index;
    if (!s->have_saved) return s->sigmas[j];
    return s->kind == DL_SAMPLER_KDPM2_A ? s->sigmas_interpol[j - 1] : s->sigmas_interpol[j];
}

static float x0_sigma(const dl_sampler *s) { return dl__kdpm2_input_sigma(s); }

dl_status dl__kdpm2_x0(dl_sampler *s)
{
    dl__x0_sigma_view(s->cfg.prediction_type, x0_sigma(s), s->x.data, s->eps.data, s->x0.data, s->x.numel);
    return DL_OK;
}

dl_status dl__kdpm2_update(dl_sampler *s, const float *z)
{
    const int j = s->step_index;
    const int64_t n = s->x.numel;
    const int ancestral = s->kind == DL_SAMPLER_KDPM2_A;
    float *x = s->x.data, *x_start = s->saved.data;
    const float *x0 = s->x0.data;
    if (!s->have_saved) {
        /* stage 1: Euler from sigma to the midpoint */
        float sigma = s->sigmas[j];
        float sigma_mid = ancestral ? s->sigmas_interpol[j] : s->sigmas_interpol[j + 1];
        float dt = sigma_mid - sigma;
        for (int64_t i = 0; i < n; i++) {
            float d = (x[i] - x0[i]) / sigma;
            x_start[i] = x[i];
            x[i] = x[i] + d * dt;
        }
        s->have_saved = 1;
    } else {
        /* stage 2: the whole step from the saved x with the midpoint's slope */
        float sigma = s->sigmas[j - 1];
        float sigma_mid = ancestral ? s->sigmas_interpol[j - 1] : s->sigmas_interpol[j];
        float target = ancestral ? s->sigmas_down[j - 1] : s->sigmas[j];
        float sigma_up = ancestral ? s->sigmas_up[j - 1] : 0.0f;
        float dt = target - sigma;
        for (int64_t i = 0; i < n; i++) {
            float d = (x[i] - x0[i]) / sigma_mid;
            float prev = x_start[i] + d * dt;
            x[i] = ancestral ? prev + z[i] * sigma_up : prev;
        }
        s->have_saved = 0;
    }
    return DL_OK;
}
