/* sampler_dpm.c - DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095), as
 * diffusers' DPMSolverMultistepScheduler computes it with its defaults
 * (algorithm_type "dpmsolver++", solver_order 2, solver_type "midpoint",
 * lower_order_final, final sigma 0), with or without Karras sigmas.
 * Also the schedule and x0 conversion UniPC shares (sampler_unipc.c).
 *
 * Work in the VP view with, for a sigma of the VE view,
 *     alpha = 1 / sqrt(sigma^2 + 1),  sigma_vp = sigma alpha,
 *     lambda = log(alpha) - log(sigma_vp)        (half the log-SNR)
 * The model output becomes a data prediction  D = x0 = (x - sigma_vp eps) / alpha.
 * Going from s to t (h = lambda_t - lambda_s > 0):
 *   1st order (= DDIM):  x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) D_0
 *   2nd order (2M):      x_t = (sigma_t / sigma_s) x - alpha_t (e^{-h} - 1) (D_0 + D_1 / 2)
 *                        with D_1 = (D_0 - D_{-1}) / r,  r = h_{-1} / h
 * The first step has no history (1st order) and the last one, to sigma = 0,
 * is 1st order too. Timesteps: DPM-Solver's own spacings over N + 1 points
 * (leading: 1000 // (N+1)); Karras sigmas come from the whole training range
 * and map back to ROUNDED integer timesteps.
 */
#include "sampler_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

dl_status dl__dpm_setup(dl_sampler *s)
{
    const int N = s->num_steps, T = s->sched->num_train_timesteps;
    const int karras = s->cfg.use_karras_sigmas || s->kind == DL_SAMPLER_DPMPP_2M_KARRAS;
    int *ts = malloc((size_t)N * sizeof(int));
    double *sig = malloc((size_t)N * sizeof(double));
    float *table = malloc((size_t)T * sizeof(float));
    dl_status st = (ts && sig && table) ? DL_OK : dl_fail(DL_ERR_MEMORY, "sampler: out of memory");
    float last = 0.0f;
    if (st == DL_OK) {
        dl__sigma_table(s->sched, table);
        if (karras) {
            /* sigma_min = sigma(0), sigma_max = sigma(T-1); t = round(sigma_to_t(sigma)) */
            double smin = table[0], smax = table[T - 1];
            for (int t = 0; t < T; t++) table[t] = logf(table[t]);
            dl__karras_sigmas(smin, smax, N, sig);
            for (int i = 0; i < N; i++) ts[i] = (int)nearbyint(dl__sigma_to_t(sig[i], table, T));
            last = s->kind == DL_SAMPLER_UNIPC ? (float)sig[N - 1] : 0.0f;
        } else {
            st = dl__dpm_timesteps(&s->cfg, T, N, ts);
            for (int i = 0; st == DL_OK && i < N; i++) sig[i] = dl__np_interp(table, T, ts[i]);
            /* DPM-Solver ends at sigma 0, UniPC (v0.27) at sigma(0) */
            last = s->kind == DL_SAMPLER_UNIPC ? table[0] : 0.0f;
        }
    }
    if (st == DL_OK) st = dl__alloc_sigmas(s, N + 1);
    if (st == DL_OK) {
        for (int i = 0; i < N; i++) {
            s->sigmas[i] = (float)sig[i];
            s->timesteps[i] = (float)ts[i];
        }
        s->sigmas[N] = last;
        s->num_calls = N;
        s->init_noise_sigma = 1.0f;
    }
    s->hist_len = 0;
    s->lower_order_nums = 0;
    s->this_order = 0;
    s->have_saved = 0;
    free(ts);
    free(sig);
    free(table);
    return st;
}

dl_status dl__dpm_x0(dl_sampler *s)
{
    /* convert_model_output: eps (or v) -> the data prediction x0 */
    float sigma = s->sigmas[s->step_index];
    float alpha_t = 1.0f / sqrtf(sigma * sigma + 1.0f), sigma_t = sigma * alpha_t;
    const float *x = s->x.data, *m = s->eps.data;
    float *x0 = s->x0.data;
    for (int64_t i = 0; i < s->x.numel; i++)
        x0[i] = s->cfg.prediction_type == DL_PREDICT_V ? alpha_t * x[i] - sigma_t * m[i]
                                                        : (x[i] - sigma_t * m[i]) / alpha_t;
    return DL_OK;
}

/* alpha, sigma_vp and lambda of a VE sigma */
static void vp_of(float sigma, float *alpha, float *sigma_vp, float *lambda)
{
    *alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *sigma_vp = sigma * *alpha;
    *lambda = logf(*alpha) - logf(*sigma_vp);
}

dl_status dl__dpmpp_update(dl_sampler *s)
{
    const int j = s->step_index, n_calls = s->num_calls, order = s->cfg.solver_order;
    const int64_t n = s->x.numel;
    /* the final step (to sigma 0) is first order */
    int last_first_order = j == n_calls - 1;
    memcpy(dl__hist_push(s, 2), s->x0.data, (size_t)n * sizeof(float));
    const float *m0 = s->hist[s->hist_len - 1].data;
    float a_t, s_t, l_t, a_s0, s_s0, l_s0;
    vp_of(s->sigmas[j + 1], &a_t, &s_t, &l_t);
    vp_of(s->sigmas[j], &a_s0, &s_s0, &l_s0);
    float h = l_t - l_s0;
    float ratio = s_t / s_s0, c0 = a_t * (expf(-h) - 1.0f);
    float *x = s->x.data;
    if (order == 1 || s->lower_order_nums < 1 || last_first_order) {
        for (int64_t i = 0; i < n; i++) x[i] = ratio * x[i] - c0 * m0[i];
    } else {
        const float *m1 = s->hist[s->hist_len - 2].data;
        float a_s1, s_s1, l_s1;
        vp_of(s->sigmas[j - 1], &a_s1, &s_s1, &l_s1);
        float h_0 = l_s0 - l_s1, r0 = h_0 / h, inv_r0 = 1.0f / r0, c1 = 0.5f * c0;
        for (int64_t i = 0; i < n; i++) {
            float D1 = inv_r0 * (m0[i] - m1[i]);
            x[i] = ratio * x[i] - c0 * m0[i] - c1 * D1;
        }
    }
    if (s->lower_order_nums < order) s->lower_order_nums++;
    return DL_OK;
}
