/* sampler_internal.h - what the sampler files (core/sampling.c and
 * core/sampler_*.c) share. Not part of the public API: use sampling.h.
 *
 * Every sampler family provides
 *   setup    : timesteps, sigmas, init_noise_sigma, num_calls (set_timesteps)
 *   x0       : the predicted clean sample of the current call (for the views)
 *   update   : the step maths, x -> the next x
 * and the driver in sampling.c calls them in order: setup once, then per
 * model call  model_in = x / input_scale -> model -> x0 -> update.
 */
#ifndef DL_SAMPLER_INTERNAL_H
#define DL_SAMPLER_INTERNAL_H

#include "sampling.h"

/* ---- schedules (sampler_schedule.c) ------------------------------------ */

/* sigma_t = sqrt((1 - abar_t) / abar_t) for t = 0..T-1, float32 as torch computes it. */
void dl__sigma_table(const dl_schedule *s, float *sig /* [T] */);
/* numpy.interp(x, arange(T), fp) in double: linear between the two neighbours. */
double dl__np_interp(const float *fp, int T, double x);
/* Karras et al. (2022) eq. 5, rho = 7, in double:
 * sigma_i = (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, i = 0..n-1 */
void dl__karras_sigmas(double sigma_min, double sigma_max, int n, double *out);
/* diffusers' _sigma_to_t: the (fractional) t whose log sigma is log(sigma),
 * interpolating linearly in log sigma between table entries (numpy, double). */
double dl__sigma_to_t(double sigma, const float *log_sig /* [T] */, int T);
/* The Euler family's float timesteps (EulerDiscreteScheduler.set_timesteps):
 * leading / trailing as dl_sampler_timesteps, linspace NOT rounded. */
dl_status dl__euler_timesteps(const dl_sampler_config *cfg, int T, int N, double *out /* [N] */);
/* DPM-Solver / UniPC timesteps: the same spacings over N+1 points, last dropped. */
dl_status dl__dpm_timesteps(const dl_sampler_config *cfg, int T, int N, int *out /* [N] */);
/* LCM: N of the original_inference_steps grid k*(1..50)-1, k = T/50. */
dl_status dl__lcm_timesteps(const dl_sampler_config *cfg, int T, int N, int *out /* [N] */);

/* x0 from a model output in the sigma ("VE") view:
 *   epsilon:       x0 = x - sigma eps
 *   v_prediction:  x0 = v (-sigma / sqrt(sigma^2 + 1)) + x / (sigma^2 + 1) */
void dl__x0_sigma_view(dl_prediction_type type, float sigma, const float *x, const float *model_out,
                       float *x0, int64_t n);

/* Room for one more entry of s->hist, keeping the newest `cap`: returns the
 * buffer that becomes hist[hist_len - 1] (the oldest is recycled). */
float *dl__hist_push(dl_sampler *s, int cap);
/* s->sigmas = malloc(n floats), s->num_sigmas = n. */
dl_status dl__alloc_sigmas(dl_sampler *s, int n);

/* ---- the families ------------------------------------------------------ */

/* sampler_ddpm_ddim.c */
dl_status dl__ddpm_ddim_setup(dl_sampler *s);
dl_status dl__ddpm_ddim_x0(dl_sampler *s);
dl_status dl__ddpm_update(dl_sampler *s, const float *z);
dl_status dl__ddim_update(dl_sampler *s, const float *z);
/* sampler_pndm.c */
dl_status dl__pndm_setup(dl_sampler *s);
dl_status dl__pndm_x0(dl_sampler *s);
dl_status dl__pndm_update(dl_sampler *s);
/* sampler_euler.c: euler, euler_a, lms, heun */
dl_status dl__euler_family_setup(dl_sampler *s);
float dl__euler_family_input_sigma(const dl_sampler *s);
dl_status dl__euler_family_x0(dl_sampler *s);
dl_status dl__euler_update(dl_sampler *s);
dl_status dl__euler_a_update(dl_sampler *s, const float *z);
dl_status dl__heun_update(dl_sampler *s);
dl_status dl__lms_update(dl_sampler *s);
/* sampler_kdpm2.c: kdpm2, kdpm2_a */
dl_status dl__kdpm2_setup(dl_sampler *s);
float dl__kdpm2_input_sigma(const dl_sampler *s);
dl_status dl__kdpm2_x0(dl_sampler *s);
dl_status dl__kdpm2_update(dl_sampler *s, const float *z);
/* sampler_dpm.c: dpmpp_2m (+ Karras); sampler_unipc.c */
dl_status dl__dpm_setup(dl_sampler *s);   /* DPM++ and UniPC share the schedule */
dl_status dl__dpm_x0(dl_sampler *s);      /* both convert the output to x0 the same way */
dl_status dl__dpmpp_update(dl_sampler *s);
dl_status dl__unipc_update(dl_sampler *s);
/* sampler_lcm.c */
dl_status dl__lcm_setup(dl_sampler *s);
dl_status dl__lcm_x0(dl_sampler *s);
dl_status dl__lcm_update(dl_sampler *s, const float *z);

#endif
