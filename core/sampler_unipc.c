/* sampler_unipc.c - UniPC (Zhao et al. 2023, arXiv 2302.04867), as
 * diffusers' UniPCMultistepScheduler computes it with its defaults
 * (solver_order 2, predict_x0, solver_type "bh2", lower_order_final).
 *
 * Same VP quantities as DPM-Solver++ (sampler_dpm.c): alpha, sigma_vp,
 * lambda, data predictions m = x0. With hh = -h (h = lambda_t - lambda_s0),
 * h phi_1 = e^{hh} - 1 and B(h) = e^{hh} - 1 ("bh2") or hh ("bh1"):
 *
 *   predictor UniP-p (from s0 to t):
 *     x_t = (sigma_t / sigma_s0) x - alpha_t h_phi_1 m_0 - alpha_t B(h) sum_k rho_k D_k
 *     D_k = (m_{-k} - m_0) / r_k,  r_k = (lambda_{s_k} - lambda_s0) / h;  rho = 1/2 at order 2
 *   corrector UniC-p (no extra model call): once the model has seen the
 *     predicted x_t, redo the same step from the previous x with the new
 *     output m_t included:
 *     x_t <- (sigma_t / sigma_s0) x - alpha_t h_phi_1 m_0
 *            - alpha_t B(h) (sum_k rho_k D_k + rho_t (m_t - m_0))
 *     where the rho's solve R rho = b, R_ik = r_k^(i-1) (r_t = 1),
 *     b_i = i! phi_{i+1}(hh) / B(h)   (rho = 1/2 at order 1)
 *
 * So each update first CORRECTS the current x (the model has just been
 * called on it), then PREDICTS the next one. The order ramps up 1, 2, 2, ...
 * and drops to 1 for the last step (lower_order_final).
 */
#include "sampler_internal.h"

#include <math.h>
#include <string.h>

static void vp_of(float sigma, float *alpha, float *sigma_vp, float *lambda)
{
    *alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    *sigma_vp = sigma * *alpha;
    *lambda = logf(*alpha) - logf(*sigma_vp);
}

/* R rho = b for R = [[1, 1], [rk, 1]] by LU with partial pivoting (LAPACK's sgesv). */
static void solve2(float rk, float b1, float b2, float *rho0, float *rho1)
{
    if (fabsf(rk) > 1.0f) {               /* pivot on the second row */
        float l = 1.0f * (1.0f / rk);
        float u22 = 1.0f - l * 1.0f, y2 = b1 - l * b2;
        *rho1 = y2 / u22;
        *rho0 = (b2 - 1.0f * *rho1) / rk;
    } else {
        float l = rk * (1.0f / 1.0f);
        float u22 = 1.0f - l * 1.0f, y2 = b2 - l * b1;
        *rho1 = y2 / u22;
        *rho0 = (b1 - 1.0f * *rho1) / 1.0f;
    }
}

/* The corrector for step j (the model output m_t = s->x0 at the current x). */
static void correct(dl_sampler *s, int j)
{
    const int64_t n = s->x.numel, order = s->this_order;
    const float *m0 = s->hist[s->hist_len - 1].data;   /* the previous step's output */
    const float *x_last = s->saved.data, *m_t = s->x0.data;
    float a_t, s_t, l_t, a_s0, s_s0, l_s0;
    vp_of(s->sigmas[j], &a_t, &s_t, &l_t);
    vp_of(s->sigmas[j - 1], &a_s0, &s_s0, &l_s0);
    float h = l_t - l_s0, hh = -h;
    float h_phi_1 = expm1f(hh);
    float B_h = s->cfg.unipc_bh1 ? hh : expm1f(hh);
    float rk = 0, rho_k = 0, rho_t = 0.5f;
    const float *mk = NULL;
    if (order == 2) {
        float a_k, s_k, l_k;
        vp_of(s->sigmas[j - 2], &a_k, &s_k, &l_k);
        mk = s->hist[s->hist_len - 2].data;
        rk = (l_k - l_s0) / h;
        /* b_1 = phi_2 / B(h), b_2 = 2 phi_3 / B(h), with phi_{k+1} = phi_k / hh - 1/k! */
        float h_phi_k = h_phi_1 / hh - 1.0f;
        float b1 = h_phi_k * 1.0f / B_h;
        h_phi_k = h_phi_k / hh - 1.0f / 2.0f;
        float b2 = h_phi_k * 2.0f / B_h;
        solve2(rk, b1, b2, &rho_k, &rho_t);
    }
    float ratio = s_t / s_s0, c_m0 = a_t * h_phi_1, c_res = a_t * B_h;
    float *x = s->x.data;
    for (int64_t i = 0; i < n; i++) {
        float base = ratio * x_last[i] - c_m0 * m0[i];
        float corr = mk ? rho_k * ((mk[i] - m0[i]) / rk) : 0.0f;
        float D1_t = m_t[i] - m0[i];
        x[i] = base - c_res * (corr + rho_t * D1_t);
    }
}

dl_status dl__unipc_update(dl_sampler *s)
{
    const int j = s->step_index, n_calls = s->num_calls, solver_order = s->cfg.solver_order;
    const int64_t n = s->x.numel;
    /* 1. correct the current x with the output the model just gave for it */
    if (j > 0 && s->have_saved) correct(s, j);
    memcpy(dl__hist_push(s, 2), s->x0.data, (size_t)n * sizeof(float));
    /* 2. the predictor's order: warm up, and lower at the end */
    int order = solver_order;
    if (s->cfg.lower_order_final && n_calls - j < order) order = n_calls - j;
    if (order > s->lower_order_nums + 1) order = s->lower_order_nums + 1;
    s->this_order = order;
    memcpy(s->saved.data, s->x.data, (size_t)n * sizeof(float));   /* last_sample */
    s->have_saved = 1;
    /* 3. predict x at the next sigma */
    const float *m0 = s->hist[s->hist_len - 1].data;
    float a_t, s_t, l_t, a_s0, s_s0, l_s0;
    vp_of(s->sigmas[j + 1], &a_t, &s_t, &l_t);
    vp_of(s->sigmas[j], &a_s0, &s_s0, &l_s0);
    float h = l_t - l_s0, hh = -h;
    float h_phi_1 = expm1f(hh);
    float B_h = s->cfg.unipc_bh1 ? hh : expm1f(hh);
    float rk = 0;
    const float *m1 = NULL;
    if (order == 2) {
        float a_k, s_k, l_k;
        vp_of(s->sigmas[j - 1], &a_k, &s_k, &l_k);
        m1 = s->hist[s->hist_len - 2].data;
        rk = (l_k - l_s0) / h;
    }
    float ratio = s_t / s_s0, c_m0 = a_t * h_phi_1, c_res = a_t * B_h;
    float *x = s->x.data;
    for (int64_t i = 0; i < n; i++) {
        float x_t = ratio * x[i] - c_m0 * m0[i];
        if (m1) x_t = x_t - c_res * (0.5f * ((m1[i] - m0[i]) / rk));   /* rho_p = 1/2 */
        x[i] = x_t;
    }
    if (s->lower_order_nums < solver_order) s->lower_order_nums++;
    return DL_OK;
}
