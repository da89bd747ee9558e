/* schedule.h - noise schedules: how much noise the forward process adds.
 *
 * A schedule is a list of T small variances beta_t (t = 0 .. T-1). Going one
 * step forward keeps sqrt(alpha_t) = sqrt(1 - beta_t) of the signal; going
 * from x0 straight to step t keeps sqrt(abar_t) of it, where
 *
 *     alpha_t = 1 - beta_t,     abar_t = alpha_0 * alpha_1 * ... * alpha_t
 *     x_t     = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise      (add_noise)
 *
 * All numbers are float32 and computed exactly as torch/diffusers compute
 * them, so betas, alphas and alphas_cumprod equal diffusers' bit for bit:
 *
 *     dl_schedule s;
 *     dl_schedule_init_default(&s, DL_SCHEDULE_SCALED_LINEAR);   // Stable Diffusion
 *     add_noise(&s, x_t, x0, noise, n, 500);
 *     dl_schedule_free(&s);
 *
 * Schedules (names as in diffusers' beta_schedule):
 *   linear             betas = linspace(beta_start, beta_end, T)         (DDPM paper)
 *   scaled_linear      betas = linspace(sqrt(beta_start), sqrt(beta_end), T)^2  (SD)
 *   squaredcos_cap_v2  cosine: abar(t) = cos^2((t/T + 0.008)/1.008 * pi/2),
 *                      beta_t = min(1 - abar((t+1)/T) / abar(t/T), 0.999)
 */
#ifndef DL_SCHEDULE_H
#define DL_SCHEDULE_H

#include <stdint.h>

#include "dl_error.h"

typedef enum {
    DL_SCHEDULE_LINEAR,
    DL_SCHEDULE_SCALED_LINEAR,
    DL_SCHEDULE_COSINE,
    DL_SCHEDULE_COUNT
} dl_schedule_kind;

/* {"linear", "scaled_linear", "squaredcos_cap_v2"} */
extern const char *const dl_schedule_names[DL_SCHEDULE_COUNT];

/* Look a name up; the error lists the valid names. */
dl_status dl_schedule_kind_from_name(const char *name, dl_schedule_kind *kind);

typedef struct {
    dl_schedule_kind kind;
    int   num_train_timesteps;   /* T */
    double beta_start, beta_end; /* as given (0 for the cosine schedule) */
    float *betas;                /* [T] */
    float *alphas;               /* [T] 1 - betas */
    float *alphas_cumprod;       /* [T] running product, "abar" */
} dl_schedule;

/* T in 1..100000; for linear / scaled_linear 0 < beta_start < beta_end < 1
 * (both ignored for the cosine schedule). Matches torch exactly for
 * T <= 32768 (beyond that torch's linspace result depends on its threads).
 * beta_start/beta_end are double because diffusers takes the square root of
 * the Python (double) value: pass 0.012, not 0.012f, to match it exactly. */
dl_status dl_schedule_init(dl_schedule *s, dl_schedule_kind kind, int num_train_timesteps,
                           double beta_start, double beta_end);

/* T = 1000; linear 1e-4..0.02 (DDPM paper), scaled_linear 0.00085..0.012
 * (Stable Diffusion 1.x/2.x), cosine (improved DDPM). */
dl_status dl_schedule_init_default(dl_schedule *s, dl_schedule_kind kind);

void dl_schedule_free(dl_schedule *s);

/* Signal-to-noise ratio abar_t / (1 - abar_t) (float32, as torch would) and
 * its natural log (computed in double: stays accurate near abar = 1).
 * t must be in [0, T); NaN otherwise. */
float dl_schedule_snr(const dl_schedule *s, int t);
float dl_schedule_log_snr(const dl_schedule *s, int t);

/* Forward process, one jump from x0 to step t (diffusers' add_noise):
 *     x_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise      (n floats)
 * t outside [0, T) -> DL_ERR_ARG. */
dl_status add_noise(const dl_schedule *s, float *x_t, const float *x0, const float *noise,
                    int64_t n, int t);

/* One DDPM reverse step t -> t-1 over the full training schedule, given the
 * predicted noise eps and fresh standard normal noise z (z unused, may be
 * NULL, when t == 0). As diffusers' DDPMScheduler.step with
 * variance_type "fixed_small", prediction_type "epsilon" and NO clipping of
 * x0_hat (diffusers clips to [-1, 1] by default; clip_sample=False here):
 *     x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
 *     mean   = coef1 x0_hat + coef2 x_t,
 *              coef1 = sqrt(abar_prev) beta_t / (1 - abar_t)
 *              coef2 = sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t)
 *     var    = max((1 - abar_prev) / (1 - abar_t) beta_t, 1e-20)
 *     x_prev = mean + sqrt(var) z       (abar_prev = 1 at t = 0: x_prev = x0_hat)
 * with alpha_t = abar_t / abar_prev and beta_t = 1 - alpha_t, as diffusers
 * computes them. x_prev may alias x_t. */
dl_status ddpm_posterior_step(const dl_schedule *s, float *x_prev, const float *x_t,
                              const float *eps, const float *z, int64_t n, int t);

#endif
