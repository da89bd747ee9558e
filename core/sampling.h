/* sampling.h - the reverse process: turn noise into pictures, step by step.
 *
 * A trained model eps_theta(x_t, t) predicts the noise in x_t. A sampler
 * starts from pure noise x_T ~ N(0, I) and walks t down to 0; every step
 * asks the model once and moves x_t to x_{t_prev}. Two samplers, both
 * reproducing diffusers (v0.27) number for number:
 *
 *   DDPM  (DDPMScheduler, "fixed_small" variance): ancestral sampling, the
 *         posterior q(x_{t_prev} | x_t, x0_hat) plus fresh noise every step.
 *         1000 steps over the training schedule, or a subset.
 *   DDIM  (DDIMScheduler): a jump straight to t_prev along the predicted
 *         noise direction; eta = 0 deterministic, eta = 1 as noisy as DDPM.
 *
 * Both share the predicted clean picture
 *
 *     x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
 *
 * The model is a callback, so the toy U-Net, classifier-free guidance (a
 * wrapper around another callback) and later the Stable Diffusion UNet
 * plug in the same way:
 *
 *     dl_sampler s;
 *     dl_sampler_config cfg = dl_sampler_config_default();
 *     DL_TRY(dl_sampler_init(&s, DL_SAMPLER_DDIM, &sched, &cfg, 50, 0.0f, 4, DL_SHAPE(8, 1, 32, 32)));
 *     DL_TRY(dl_sampler_set_noise(&s, &rng));              // x_T = randn
 *     while (!dl_sampler_done(&s))
 *         DL_TRY(dl_sampler_step(&s, my_model, my_ctx, &rng));
 *     ... s.x holds the samples; dl_sampler_free(&s);
 *
 * Live views split a step in two: dl_sampler_predict (the model call: fills
 * s.eps and s.x0 for the CURRENT x_t) and dl_sampler_update (the scheduler
 * maths: x_t -> x_{t_prev}). dl_sampler_step = predict + update.
 *
 * diffusers conventions kept here (see docs/04_sampling.md):
 *   - timesteps: "leading" spacing (0, T/N, 2T/N, ... reversed) + steps_offset,
 *     or "trailing" / "linspace";
 *   - the previous timestep is ALWAYS t - T/N (integer division), for DDPM
 *     and DDIM alike, whatever the spacing (as diffusers does);
 *   - DDIM's last step goes to abar = 1 (set_alpha_to_one) or alphas_cumprod[0];
 *     DDPM's always to 1;
 *   - clip_sample (x0_hat clamped to [-1, 1]) is OFF by default here, while
 *     diffusers' DDPM/DDIM class defaults turn it on: set it explicitly;
 *   - noise: DDPM draws one randn tensor of x's shape in every step with
 *     t > 0, DDIM in every step when eta > 0, always AFTER the model call,
 *     from the torch-identical dl_rng (as diffusers' randn_tensor does);
 *   - init_noise_sigma is 1 for both: x_T = randn, unscaled, and the model
 *     sees x_t unscaled (no scale_model_input);
 *   - prediction_type "epsilon" only (v_prediction comes with the full scheduler library).
 */
#ifndef DL_SAMPLING_H
#define DL_SAMPLING_H

#include <stdint.h>

#include "dl_error.h"
#include "rng.h"
#include "schedule.h"
#include "tensor.h"

/* The model: predict the noise eps in x_t [B, ...] at timesteps t [B]
 * (floats, as diffusers hands them to the UNet) into eps_out (x_t's shape). */
typedef dl_status (*dl_eps_model)(void *ctx, const dl_tensor *x_t, const float *t, dl_tensor *eps_out);

typedef enum { DL_SAMPLER_DDPM, DL_SAMPLER_DDIM, DL_SAMPLER_COUNT } dl_sampler_kind;
extern const char *const dl_sampler_names[DL_SAMPLER_COUNT];           /* "ddpm", "ddim" */
dl_status dl_sampler_kind_from_name(const char *name, dl_sampler_kind *kind);

typedef enum { DL_SPACING_LEADING, DL_SPACING_TRAILING, DL_SPACING_LINSPACE, DL_SPACING_COUNT } dl_timestep_spacing;
extern const char *const dl_spacing_names[DL_SPACING_COUNT];           /* "leading", "trailing", "linspace" */
dl_status dl_spacing_from_name(const char *name, dl_timestep_spacing *spacing);

/* The scheduler_config.json fields that matter for DDPM and DDIM. */
typedef struct {
    dl_timestep_spacing timestep_spacing;
    int   steps_offset;        /* added to "leading" timesteps (SD 1.x: 1)            */
    int   set_alpha_to_one;    /* DDIM: the final abar_prev is 1 (else abar[0])        */
    int   clip_sample;         /* clamp x0_hat to [-clip_sample_range, +range]        */
    float clip_sample_range;   /* 1.0                                                 */
    int   use_clipped_model_output; /* DDIM: recompute eps from the clipped x0 so that
                                  x_prev = sqrt(abar_prev) x0 + dir * eps stays
                                  consistent (diffusers' step() argument, default 0) */
} dl_sampler_config;

/* diffusers' DDPM/DDIM class defaults EXCEPT clip_sample, which is off:
 * leading, steps_offset 0, set_alpha_to_one 1, clip_sample 0 (range 1). */
dl_sampler_config dl_sampler_config_default(void);
/* Stable Diffusion 1.x's scheduler_config.json: leading, steps_offset 1,
 * set_alpha_to_one 0, clip_sample 0. */
dl_sampler_config dl_sampler_config_sd(void);

/* The N timesteps diffusers' set_timesteps(N) gives (descending) into out[N]:
 *   leading   t_i = (N-1-i) * (T / N) + steps_offset          (integer T / N)
 *   trailing  round(T - i * T/N) - 1                          (float T/N)
 *   linspace  round(i * (T-1) / (N-1)), reversed
 * N in 1..T; every t must land in [0, T) (a steps_offset that pushes the
 * first t to T, or a trailing N for which numpy's arange gives N+1 values,
 * is an error naming N). */
dl_status dl_sampler_timesteps(const dl_sampler_config *cfg, int num_train_timesteps, int num_steps, int *out);

/* ------------------------------------------------------------------ */
/* One step as plain maths on n floats (the heart of each sampler; the
 * lesson 04 exercise rewrites ddim_step). t_prev < 0 means "the end":
 * abar_prev = 1 for DDPM, and 1 or abar[0] (set_alpha_to_one) for DDIM.
 * x0_out may be NULL; x_prev may alias x_t. noise: standard normal draws,
 * needed (non-NULL) when DDPM has t > 0 / DDIM has eta > 0, else ignored. */

/* x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  (optionally clipped) */
dl_status dl_predict_x0(const dl_schedule *s, const dl_sampler_config *cfg, int t,
                        const float *x_t, const float *eps, float *x0_out, int64_t n);

/* DDPM ("fixed_small"), with a = abar_t / abar_prev, b = 1 - a:
 *   mean   = sqrt(abar_prev) b / (1 - abar_t) x0_hat + sqrt(a) (1 - abar_prev) / (1 - abar_t) x_t
 *   var    = max((1 - abar_prev) / (1 - abar_t) b, 1e-20)
 *   x_prev = mean + sqrt(var) noise          (noise only when t > 0) */
dl_status ddpm_step(const dl_schedule *s, const dl_sampler_config *cfg, int t, int t_prev,
                    const float *x_t, const float *eps, const float *noise,
                    float *x_prev, float *x0_out, int64_t n);

/* DDIM (Song et al. 2021, eq. 12):
 *   sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
 *   x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma noise */
dl_status ddim_step(const dl_schedule *s, const dl_sampler_config *cfg, int t, int t_prev, float eta,
                    const float *x_t, const float *eps, const float *noise,
                    float *x_prev, float *x0_out, int64_t n);

/* ------------------------------------------------------------------ */
/* The step-by-step sampler. */
typedef struct {
    dl_sampler_kind kind;
    dl_sampler_config cfg;
    const dl_schedule *sched;  /* borrowed: must outlive the sampler            */
    float eta;                 /* DDIM only (0 = deterministic)                  */
    int num_steps;             /* N = model calls for a whole run                */
    int *timesteps;            /* [N] descending                                 */
    int step_index;            /* steps done (0..N); the current t is timesteps[step_index] */
    int have_prediction;       /* eps / x0 belong to the current x (predict was called) */
    int64_t model_calls;
    dl_tensor x;               /* [B, ...] the current sample x_t                */
    dl_tensor eps;             /* the model's noise prediction for x at t        */
    dl_tensor x0;              /* the predicted clean sample x0_hat for x at t   */
    dl_tensor noise;           /* the noise of the last update (0 if it drew none) */
    float *t_batch;            /* [B] scratch: t as floats for the model         */
} dl_sampler;

/* shape: the sample's shape, batch first ([B, C, H, W]); eta >= 0 (DDPM
 * ignores it). x starts at zero: call set_noise or set_x. */
dl_status dl_sampler_init(dl_sampler *s, dl_sampler_kind kind, const dl_schedule *sched,
                          const dl_sampler_config *cfg, int num_steps, float eta,
                          int ndim, const int64_t shape[]);
void dl_sampler_free(dl_sampler *s);

/* Restart from x_T = randn(shape) (init_noise_sigma = 1), drawn from rng as
 * torch.randn(shape, generator=rng) does, or from a given x_T. */
dl_status dl_sampler_set_noise(dl_sampler *s, dl_rng *rng);
dl_status dl_sampler_set_x(dl_sampler *s, const dl_tensor *x_T);

int dl_sampler_done(const dl_sampler *s);
/* The timestep of the next step (-1 when done), and the one it steps to
 * (t - T/N; negative means "the end"). */
int dl_sampler_current_t(const dl_sampler *s);
int dl_sampler_prev_t(const dl_sampler *s, int t);
/* Does the next update draw noise? (DDPM: t > 0; DDIM: eta > 0.) */
int dl_sampler_update_draws_noise(const dl_sampler *s);

/* The model call at the current t: fills s->eps and s->x0 (x unchanged). */
dl_status dl_sampler_predict(dl_sampler *s, dl_eps_model model, void *ctx);
/* x_t -> x_{t_prev} with the prediction made by dl_sampler_predict. Noise
 * (if this step needs any) comes from `noise` (x's numel floats, e.g. a
 * recorded diffusers draw) if non-NULL, else from rng. */
dl_status dl_sampler_update(dl_sampler *s, dl_rng *rng, const float *noise);
/* predict (unless already done for this x) + update with noise from rng. */
dl_status dl_sampler_step(dl_sampler *s, dl_eps_model model, void *ctx, dl_rng *rng);
/* All remaining steps. */
dl_status dl_sampler_run(dl_sampler *s, dl_eps_model model, void *ctx, dl_rng *rng);

/* ------------------------------------------------------------------ */
/* Classifier-free guidance (Ho & Salimans 2022). The wrapped model is
 * called ONCE per step on the doubled batch [x, x] with timesteps [t, t]:
 * the first B items must be evaluated unconditionally (null class, empty
 * prompt), the last B conditionally; the wrapped model's ctx arranges that
 * (e.g. class ids [null x B, labels]). Then
 *
 *     eps = eps_uncond + g (eps_cond - eps_uncond)
 *
 * g = 1 is the plain conditional model, g = 0 the unconditional one, g > 1
 * pushes the sample further towards the class. dl_cfg_eps is itself a
 * dl_eps_model, so it plugs into any sampler:
 *
 *     dl_cfg g;
 *     DL_TRY(dl_cfg_init(&g, toy_eps, &toy_ctx, 3.0f, 4, DL_SHAPE(B, 1, 32, 32)));
 *     DL_TRY(dl_sampler_step(&s, dl_cfg_eps, &g, &rng));
 */
typedef struct {
    dl_eps_model model;        /* evaluated on [uncond x B, cond x B]          */
    void *model_ctx;
    float guidance;            /* g                                            */
    int batch;                 /* B: the wrapped model sees 2B items           */
    dl_tensor x2, eps2;        /* [2B, ...]; eps2 keeps the last uncond/cond eps */
    float *t2;                 /* [2B]                                          */
} dl_cfg;

dl_status dl_cfg_init(dl_cfg *g, dl_eps_model model, void *model_ctx, float guidance,
                      int ndim, const int64_t shape[] /* of x: [B, ...] */);
dl_status dl_cfg_eps(void *cfg, const dl_tensor *x_t, const float *t, dl_tensor *eps_out);
/* The last call's unconditional / conditional predictions ([B, ...] floats). */
const float *dl_cfg_eps_uncond(const dl_cfg *g);
const float *dl_cfg_eps_cond(const dl_cfg *g);
void dl_cfg_free(dl_cfg *g);

/* The combination alone: out[i] = u[i] + g (c[i] - u[i]) (out may alias u or c). */
void dl_cfg_combine(float *out, const float *eps_uncond, const float *eps_cond, float g, int64_t n);

#endif
