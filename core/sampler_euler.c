/* sampler_euler.c - the sigma-space ODE samplers of Karras et al. (2022),
 * as diffusers' EulerDiscrete, EulerAncestralDiscrete, HeunDiscrete and
 * LMSDiscrete schedulers compute them.
 *
 * The "VE" view: x = x0 + sigma eps with sigma = sqrt((1 - abar) / abar).
 * Denoising is the ODE  dx/dsigma = (x - x0_hat(x, sigma)) / sigma = d,
 * integrated from sigma_max down to 0 over a few sigmas:
 *
 *   euler    x += d (sigma_next - sigma)
 *   euler_a  the same down to sigma_down, then fresh noise of std sigma_up
 *            (sigma_up^2 = sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2,
 *             sigma_down^2 = sigma_next^2 - sigma_up^2)
 *   heun     Euler to sigma_next, evaluate d there, redo the step with the
 *            average of both slopes (2 model calls per step; the last step,
 *            to sigma = 0, is plain Euler): 2N - 1 calls
 *   lms      linear multistep: x += sum_k c_k d_{-k}, c_k the integral from
 *            sigma to sigma_next of the Lagrange polynomial through the last
 *            (up to 4) sigmas
 *
 * The model wants the VP input x / sqrt(sigma^2 + 1) (scale_model_input)
 * and the chain starts from noise of std init_noise_sigma: sigma_max with
 * "linspace"/"trailing" spacing, sqrt(sigma_max^2 + 1) with "leading".
 */
#include "sampler_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* set_timesteps(N): timesteps, then sigma at each by linear interpolation
 * of the training table (np.interp in double), or Karras sigmas, then 0. */
dl_status dl__euler_family_setup(dl_sampler *s)
{
    const int N = s->num_steps, T = s->sched->num_train_timesteps;
    double *ts = malloc((size_t)N * sizeof(double)), *sig = malloc((size_t)N * sizeof(double));
    float *table = malloc((size_t)T * sizeof(float));
    dl_status st = (ts && sig && table) ? DL_OK : dl_fail(DL_ERR_MEMORY, "sampler: out of memory");
    if (st == DL_OK) st = dl__euler_timesteps(&s->cfg, T, N, ts);
    if (st == DL_OK) {
        dl__sigma_table(s->sched, table);
        for (int i = 0; i < N; i++) sig[i] = dl__np_interp(table, T, ts[i]);
        if (s->cfg.use_karras_sigmas) {
            /* Karras sigmas between the first and last of the list just made,
             * and the (fractional) t of each */
            double smin = sig[N - 1], smax = sig[0];
            for (int t = 0; t < T; t++) table[t] = logf(table[t]);
            dl__karras_sigmas(smin, smax, N, sig);
            for (int i = 0; i < N; i++) ts[i] = dl__sigma_to_t(sig[i], table, T);
        }
    }
    if (st == DL_OK) {
        if (s->kind == DL_SAMPLER_HEUN) {
            /* every sigma but the first and the last 0 twice:
             * [s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0], timesteps [t0, t1, t1, ...] */
            st = dl__alloc_sigmas(s, 2 * N);
            if (st == DL_OK) {
                s->sigmas[0] = (float)sig[0];
                s->timesteps[0] = (float)ts[0];
                for (int i = 1; i < N; i++) {
                    s->sigmas[2 * i - 1] = s->sigmas[2 * i] = (float)sig[i];
                    s->timesteps[2 * i - 1] = s->timesteps[2 * i] = (float)ts[i];
                }
                s->sigmas[2 * N - 1] = 0.0f;
                s->num_calls = 2 * N - 1;
            }
        } else {
            st = dl__alloc_sigmas(s, N + 1);
            if (st == DL_OK) {
                for (int i = 0; i < N; i++) {
                    s->sigmas[i] = (float)sig[i];
                    s->timesteps[i] = (float)ts[i];
                }
                s->sigmas[N] = 0.0f;
                s->num_calls = N;
            }
        }
    }
    if (st == DL_OK) {
        float max = 0;
        for (int i = 0; i < s->num_sigmas; i++) max = fmaxf(max, s->sigmas[i]);
        int plain = s->cfg.timestep_spacing == DL_SPACING_LINSPACE || s->cfg.timestep_spacing == DL_SPACING_TRAILING;
        s->init_noise_sigma = plain ? max : sqrtf(max * max + 1.0f);
    }
    s->hist_len = 0;
    s->have_saved = 0;
    free(ts);
    free(sig);
    free(table);
    return st;
}

float dl__euler_family_input_sigma(const dl_sampler *s)
{
    return s->sigmas[s->step_index];
}

dl_status dl__euler_family_x0(dl_sampler *s)
{
    /* Heun: sigmas[step_index] is sigma in its first stage and sigma_next in its second */
    float sigma = s->sigmas[s->step_index];
    dl__x0_sigma_view(s->cfg.prediction_type, sigma, s->x.data, s->eps.data, s->x0.data, s->x.numel);
    if (s->kind == DL_SAMPLER_HEUN && s->cfg.clip_sample) {
        float r = s->cfg.clip_sample_range, *x0 = s->x0.data;
        for (int64_t i = 0; i < s->x0.numel; i++) x0[i] = x0[i] < -r ? -r : (x0[i] > r ? r : x0[i]);
    }
    return DL_OK;
}

dl_status dl__euler_update(dl_sampler *s)
{
    /* s_churn = 0, so sigma_hat = sigma and the noise diffusers draws is unused */
    const int j = s->step_index;
    float sigma = s->sigmas[j], dt = s->sigmas[j + 1] - sigma;
    float *x = s->x.data;
    const float *x0 = s->x0.data;
    for (int64_t i = 0; i < s->x.numel; i++) {
        float d = (x[i] - x0[i]) / sigma;            /* dx/dsigma */
        x[i] = x[i] + d * dt;
    }
    return DL_OK;
}

dl_status dl__euler_a_update(dl_sampler *s, const float *z)
{
    const int j = s->step_index;
    float sigma_from = s->sigmas[j], sigma_to = s->sigmas[j + 1];
    /* split the step: deterministic down to sigma_down, noise back up by sigma_up */
    float sigma_up = sqrtf(sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to) / (sigma_from * sigma_from));
    float sigma_down = sqrtf(sigma_to * sigma_to - sigma_up * sigma_up);
    float dt = sigma_down - sigma_from;
    float *x = s->x.data;
    const float *x0 = s->x0.data;
    for (int64_t i = 0; i < s->x.numel; i++) {
        float d = (x[i] - x0[i]) / sigma_from;
        float prev = x[i] + d * dt;
        x[i] = prev + z[i] * sigma_up;
    }
    return DL_OK;
}

dl_status dl__heun_update(dl_sampler *s)
{
    const int j = s->step_index;
    const int64_t n = s->x.numel;
    float *x = s->x.data, *d1 = s->saved_d.data, *x_start = s->saved.data;
    const float *x0 = s->x0.data;
    if (!s->have_saved) {
        /* stage 1: Euler from sigma to sigma_next, remember slope, dt and x */
        float sigma = s->sigmas[j], dt = s->sigmas[j + 1] - sigma;
        for (int64_t i = 0; i < n; i++) {
            float d = (x[i] - x0[i]) / sigma;
            d1[i] = d;
            x_start[i] = x[i];
            x[i] = x[i] + d * dt;
        }
        s->saved_dt = dt;
        s->have_saved = 1;
    } else {
        /* stage 2: the slope at the Euler estimate, averaged with stage 1's */
        float sigma_next = s->sigmas[j], dt = s->saved_dt;
        for (int64_t i = 0; i < n; i++) {
            float d2 = (x[i] - x0[i]) / sigma_next;
            float d = (d1[i] + d2) / 2;
            x[i] = x_start[i] + d * dt;
        }
        s->have_saved = 0;
    }
    return DL_OK;
}

/* c = integral from sigmas[j] to sigmas[j+1] of prod_{m != k} (tau - sigma_{j-m}) / (sigma_{j-k} - sigma_{j-m}),
 * by 3-point Gauss-Legendre (exact for these polynomials of degree <= 3). */
static double lms_coefficient(const float *sig, int order, int j, int k)
{
    const double a = sig[j], b = sig[j + 1];
    const double node[3] = {-sqrt(0.6), 0, sqrt(0.6)}, weight[3] = {5.0 / 9, 8.0 / 9, 5.0 / 9};
    double sum = 0;
    for (int q = 0; q < 3; q++) {
        double tau = 0.5 * (a + b) + 0.5 * (b - a) * node[q], prod = 1;
        for (int m = 0; m < order; m++)
            if (m != k) prod *= (tau - sig[j - m]) / ((double)sig[j - k] - sig[j - m]);
        sum += weight[q] * prod;
    }
    return 0.5 * (b - a) * sum;
}

dl_status dl__lms_update(dl_sampler *s)
{
    const int j = s->step_index;
    const int64_t n = s->x.numel;
    float sigma = s->sigmas[j];
    float *x = s->x.data;
    const float *x0 = s->x0.data;
    float *d = dl__hist_push(s, 4);                 /* the last 4 derivatives */
    for (int64_t i = 0; i < n; i++) d[i] = (x[i] - x0[i]) / sigma;
    int order = j + 1 < 4 ? j + 1 : 4;
    float c[4];
    for (int k = 0; k < order; k++) c[k] = (float)lms_coefficient(s->sigmas, order, j, k);
    /* a run started part-way (img2img) has fewer derivatives than the order:
     * diffusers zips the coefficients with the ones it has */
    const int terms = order < s->hist_len ? order : s->hist_len;
    for (int64_t i = 0; i < n; i++) {
        float acc = 0;
        for (int k = 0; k < terms; k++) acc += c[k] * s->hist[s->hist_len - 1 - k].data[i];   /* newest first */
        x[i] = x[i] + acc;
    }
    return DL_OK;
}
