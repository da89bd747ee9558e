/* sampler_pndm.c - PNDM in its PLMS form (Liu et al. 2022, "pseudo linear
 * multistep"), as diffusers' PNDMScheduler with skip_prk_steps = True: the
 * Stable Diffusion 1.x default scheduler.
 *
 * Idea: like Adams-Bashforth for ODEs, combine the last few noise
 * predictions into a better one, then make one DDIM-like jump with it:
 *
 *     eps' = eps_0                                       first call
 *     eps' = (eps_0 + eps_1) / 2                         second call (redo)
 *     eps' = (3 eps_k - eps_{k-1}) / 2                   then 2nd order
 *     eps' = (23 eps_k - 16 eps_{k-1} + 5 eps_{k-2}) / 12
 *     eps' = (55 eps_k - 59 eps_{k-1} + 37 eps_{k-2} - 9 eps_{k-3}) / 24
 *
 * The start is special: call 1 steps t0 -> t1 with eps(t0); call 2 evaluates
 * eps at that estimate (at t1) and REDOES t0 -> t1 from the saved x with the
 * average of the two (a Heun-like start). That is why diffusers lists t1
 * twice (751 501 501 251 1 for N = 4) and makes N + 1 model calls.
 *
 * The jump itself (the PNDM paper's transfer function phi, eq. 11):
 *
 *     x_prev = sqrt(abar_prev / abar_t) x
 *              - (abar_prev - abar_t) eps' / (abar_t sqrt(1 - abar_prev) + sqrt(abar_t (1 - abar_t) abar_prev))
 */
#include "sampler_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

dl_status dl__pndm_setup(dl_sampler *s)
{
    int N = s->num_steps;
    int *ts = malloc((size_t)N * sizeof(int));
    if (!ts) return dl_fail(DL_ERR_MEMORY, "sampler: out of memory");
    dl_status st = dl_sampler_timesteps(&s->cfg, s->sched->num_train_timesteps, N, ts);
    if (st == DL_OK) {
        /* [t0, t1, t1, t2, ..., t_{N-1}]: the second timestep repeated */
        int k = 0;
        for (int i = 0; i < N; i++) {
            s->timesteps[k++] = (float)ts[i];
            if (i == 1) s->timesteps[k++] = (float)ts[i];
        }
        s->num_calls = k;
    }
    free(ts);
    s->init_noise_sigma = 1.0f;
    s->counter = 0;
    s->hist_len = 0;
    s->have_saved = 0;
    return st;
}

dl_status dl__pndm_x0(dl_sampler *s)
{
    /* for the views only: x0_hat at this call's t from its raw prediction */
    int t = (int)s->timesteps[s->step_index];
    return dl_predict_x0(s->sched, &s->cfg, t, s->x.data, s->eps.data, s->x0.data, s->x.numel);
}

dl_status dl__pndm_update(dl_sampler *s)
{
    const int64_t n = s->x.numel;
    const int T = s->sched->num_train_timesteps, stride = T / s->num_steps;
    int t = (int)s->timesteps[s->step_index];
    int t_prev = t - stride;
    const float *x = s->x.data;
    if (s->counter != 1) {
        /* remember this prediction (the last 4) */
        memcpy(dl__hist_push(s, 4), s->eps.data, (size_t)n * sizeof(float));
    } else {
        /* the repeated call: redo the first jump, t0 -> t1 */
        t_prev = t;
        t = t + stride;
    }
    const float *m = s->eps.data;   /* this call's model output */
    float *e = s->saved_d.data;     /* eps', the combination (scratch) */
    int k = s->hist_len;
    const float *e1 = s->hist[k - 1].data, *e2 = k >= 2 ? s->hist[k - 2].data : NULL;
    const float *e3 = k >= 3 ? s->hist[k - 3].data : NULL, *e4 = k >= 4 ? s->hist[k - 4].data : NULL;
    if (k == 1 && s->counter == 0) {
        memcpy(s->saved.data, x, (size_t)n * sizeof(float));      /* the x to come back to */
        s->have_saved = 1;
        memcpy(e, m, (size_t)n * sizeof(float));
    } else if (k == 1 && s->counter == 1) {
        for (int64_t i = 0; i < n; i++) e[i] = (m[i] + e1[i]) / 2;
        x = s->saved.data;
        s->have_saved = 0;
    } else if (k == 2) {
        for (int64_t i = 0; i < n; i++) e[i] = (3 * e1[i] - e2[i]) / 2;
    } else if (k == 3) {
        for (int64_t i = 0; i < n; i++) e[i] = (23 * e1[i] - 16 * e2[i] + 5 * e3[i]) / 12;
    } else {
        const float c = (float)(1.0 / 24);
        for (int64_t i = 0; i < n; i++) e[i] = c * (55 * e1[i] - 59 * e2[i] + 37 * e3[i] - 9 * e4[i]);
    }

    /* the transfer x_t -> x_prev */
    float abar_t = s->sched->alphas_cumprod[t];
    float abar_prev = t_prev >= 0 ? s->sched->alphas_cumprod[t_prev]
                                  : (s->cfg.set_alpha_to_one ? 1.0f : s->sched->alphas_cumprod[0]);
    float beta_prod_t = 1.0f - abar_t, beta_prod_prev = 1.0f - abar_prev;
    float sample_coeff = sqrtf(abar_prev / abar_t);
    float denom = abar_t * sqrtf(beta_prod_prev) + sqrtf(abar_t * beta_prod_t * abar_prev);
    float diff = abar_prev - abar_t;
    float sa = sqrtf(abar_t), sb = sqrtf(beta_prod_t);
    float *out = s->x.data;
    for (int64_t i = 0; i < n; i++) {
        float xi = x[i];
        float ei = s->cfg.prediction_type == DL_PREDICT_V ? sa * e[i] + sb * xi : e[i];   /* v -> eps */
        out[i] = sample_coeff * xi - diff * ei / denom;
    }
    s->counter++;
    return DL_OK;
}
