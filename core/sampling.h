/* sampling.h - the reverse process: turn noise into pictures, step by step.
 *
 * A trained model looks at a noisy sample x_t and predicts the noise in it
 * (or, with prediction_type v_prediction, the "velocity" v). A sampler
 * starts from pure noise and walks t down to 0, asking the model once per
 * call. Thirteen samplers, each reproducing one diffusers (v0.27.2)
 * scheduler number for number:
 *
 *   name             diffusers class                    model calls for N steps
 *   ddpm             DDPMScheduler ("fixed_small")      N   ancestral, noise every step
 *   ddim             DDIMScheduler (eta)                N   deterministic when eta = 0
 *   pndm             PNDMScheduler (skip_prk_steps)     N+1 linear multistep (PLMS)
 *   lms              LMSDiscreteScheduler               N   4th-order multistep in sigma
 *   euler            EulerDiscreteScheduler             N   one Euler step of the ODE
 *   euler_a          EulerAncestralDiscreteScheduler    N   Euler + fresh noise
 *   heun             HeunDiscreteScheduler              2N-1 2nd-order (trapezoid) steps
 *   kdpm2            KDPM2DiscreteScheduler             2N-1 DPM-Solver-2 (midpoint)
 *   kdpm2_a          KDPM2AncestralDiscreteScheduler    2N-1 the same + fresh noise
 *   dpmpp_2m         DPMSolverMultistepScheduler        N   DPM-Solver++ 2M
 *   dpmpp_2m_karras  the same with use_karras_sigmas    N
 *   unipc            UniPCMultistepScheduler (bh2)      N   predictor + corrector
 *   lcm              LCMScheduler                       N   latent consistency model
 *
 * Two views of the same noisy state (see docs/04_sampling.md):
 *   - "VP" (DDPM, DDIM, PNDM, DPM++, UniPC, LCM):  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
 *   - "VE" (the Euler family):  x = x0 + sigma eps,  sigma_t = sqrt((1 - abar_t) / abar_t)
 *     The model was trained on VP inputs, so these samplers hand it
 *     x / sqrt(sigma^2 + 1) (scale_model_input) and start from noise of
 *     standard deviation init_noise_sigma ~ sigma_max instead of 1.
 *
 * The model is a callback, so the toy U-Net, classifier-free guidance (a
 * wrapper around another callback) and later the Stable Diffusion UNet
 * plug in the same way:
 *
 *     dl_sampler s;
 *     dl_sampler_config cfg = dl_sampler_config_sd();         // SD 1.5's scheduler_config.json
 *     DL_TRY(dl_sampler_init(&s, DL_SAMPLER_EULER_A, &sched, &cfg, 25, 0.0f, 4, DL_SHAPE(1, 4, 64, 64)));
 *     DL_TRY(dl_sampler_set_noise(&s, &rng));                 // x = randn * init_noise_sigma
 *     while (!dl_sampler_done(&s))
 *         DL_TRY(dl_sampler_step(&s, my_model, my_ctx, &rng)); // one model call
 *     ... s.x holds the samples; dl_sampler_free(&s);
 *
 * One step = ONE model call (Heun and KDPM2 take 2N-1 of them for N steps,
 * PNDM N+1), so live windows can show every call. A step splits in two:
 * dl_sampler_predict (scale the input, call the model: fills s.eps and s.x0
 * for the CURRENT x) and dl_sampler_update (the scheduler maths). The
 * per-family maths lives in core/sampler_*.c; this file's functions are in
 * core/sampling.c.
 *
 * diffusers conventions kept here (see also docs/04_sampling.md):
 *   - "leading" spacing (0, T/N, 2T/N, ... reversed) + steps_offset, or
 *     "trailing" / "linspace"; DPM++ and UniPC divide by N+1 instead of N,
 *     LCM uses its own 50-step grid; Euler-family timesteps are floats;
 *   - the previous timestep of DDPM / DDIM / PNDM is ALWAYS t - T/N
 *     (integer division), whatever the spacing (as diffusers does);
 *   - clip_sample (x0_hat clamped to [-1, 1]) is OFF in dl_sampler_config_default,
 *     while diffusers' DDPM/DDIM class defaults turn it on: set it explicitly;
 *   - noise: drawn after the model call, one randn tensor of x's shape per
 *     draw, from the torch-identical dl_rng, exactly when diffusers draws:
 *     DDPM every step with t > 0, DDIM when eta > 0, Euler and Euler A
 *     every step (Euler's draw is multiplied by s_churn = 0: it only
 *     advances the generator), KDPM2 A every call, LCM every step but the last.
 */
#ifndef DL_SAMPLING_H
#define DL_SAMPLING_H

#include <stddef.h>
#include <stdint.h>

#include "dl_error.h"
#include "rng.h"
#include "schedule.h"
#include "tensor.h"

/* The model: from the (already scaled) input x [B, ...] at timesteps t [B]
 * (floats, as diffusers hands them to the UNet) predict eps (or v, with
 * prediction_type v_prediction) into eps_out (x's shape). */
typedef dl_status (*dl_eps_model)(void *ctx, const dl_tensor *x_t, const float *t, dl_tensor *eps_out);

typedef enum {
    DL_SAMPLER_DDPM, DL_SAMPLER_DDIM, DL_SAMPLER_PNDM, DL_SAMPLER_LMS,
    DL_SAMPLER_EULER, DL_SAMPLER_EULER_A, DL_SAMPLER_HEUN, DL_SAMPLER_KDPM2, DL_SAMPLER_KDPM2_A,
    DL_SAMPLER_DPMPP_2M, DL_SAMPLER_DPMPP_2M_KARRAS, DL_SAMPLER_UNIPC, DL_SAMPLER_LCM,
    DL_SAMPLER_COUNT
} dl_sampler_kind;
/* "ddpm" "ddim" "pndm" "lms" "euler" "euler_a" "heun" "kdpm2" "kdpm2_a"
 * "dpmpp_2m" "dpmpp_2m_karras" "unipc" "lcm" */
extern const char *const dl_sampler_names[DL_SAMPLER_COUNT];
/* The diffusers class of each kind ("DDPMScheduler", ...). */
extern const char *const dl_sampler_class_names[DL_SAMPLER_COUNT];
dl_status dl_sampler_kind_from_name(const char *name, dl_sampler_kind *kind);

typedef enum { DL_SPACING_LEADING, DL_SPACING_TRAILING, DL_SPACING_LINSPACE, DL_SPACING_COUNT } dl_timestep_spacing;
extern const char *const dl_spacing_names[DL_SPACING_COUNT];           /* "leading", "trailing", "linspace" */
dl_status dl_spacing_from_name(const char *name, dl_timestep_spacing *spacing);

typedef enum { DL_PREDICT_EPSILON, DL_PREDICT_V, DL_PREDICTION_COUNT } dl_prediction_type;
extern const char *const dl_prediction_names[DL_PREDICTION_COUNT];     /* "epsilon", "v_prediction" */
dl_status dl_prediction_from_name(const char *name, dl_prediction_type *type);

/* The scheduler_config.json fields the samplers use (num_train_timesteps and
 * the betas live in dl_schedule). Fields a sampler does not use are ignored. */
typedef struct {
    dl_timestep_spacing timestep_spacing;
    int   steps_offset;        /* added to "leading" timesteps (SD 1.x: 1)             */
    dl_prediction_type prediction_type;   /* what the model predicts: eps or v         */
    int   set_alpha_to_one;    /* DDIM/PNDM/LCM: the final abar_prev is 1 (else abar[0]) */
    int   clip_sample;         /* DDPM/DDIM/LCM/Heun: clamp x0_hat to +-clip_sample_range */
    float clip_sample_range;   /* 1.0                                                  */
    int   use_clipped_model_output; /* DDIM: recompute eps from the clipped x0 so that
                                  x_prev = sqrt(abar_prev) x0 + dir * eps stays
                                  consistent (diffusers' step() argument, default 0) */
    int   use_karras_sigmas;   /* euler, heun, lms, dpmpp_2m, unipc: Karras et al. sigmas */
    int   solver_order;        /* dpmpp_2m / unipc: 1 or 2 (default 2)                 */
    int   lower_order_final;   /* dpmpp_2m / unipc: first-order last steps (default 1) */
    int   unipc_bh1;           /* unipc: solver_type "bh1" (B(h) = h) instead of "bh2" */
    int   original_inference_steps; /* lcm: the distillation grid (50)                 */
    float timestep_scaling;    /* lcm: 10                                              */
} dl_sampler_config;

/* diffusers' DDPM/DDIM class defaults EXCEPT clip_sample, which is off:
 * leading, steps_offset 0, epsilon, set_alpha_to_one 1, clip_sample 0. */
dl_sampler_config dl_sampler_config_default(void);
/* Stable Diffusion 1.5's scheduler_config.json, as every scheduler class
 * reads it (Cls.from_config): leading, steps_offset 1, epsilon,
 * set_alpha_to_one 0, clip_sample 0; the keys SD's file lacks take the
 * class defaults (solver_order 2, lower_order_final 1, no Karras, LCM 50 / 10). */
dl_sampler_config dl_sampler_config_sd(void);
/* A diffusers class's own defaults (Cls() with no config): e.g. Euler-family
 * and DPM++/UniPC use "linspace", DDPM/DDIM/LCM clip_sample = 1. */
dl_sampler_config dl_sampler_config_class_default(dl_sampler_kind kind);

/* The N timesteps DDPM/DDIM/PNDM's set_timesteps(N) gives (descending) into out[N]:
 *   leading   t_i = (N-1-i) * (T / N) + steps_offset          (integer T / N)
 *   trailing  round(T - i * T/N) - 1                          (float T/N)
 *   linspace  round(i * (T-1) / (N-1)), reversed
 * N in 1..T; every t must land in [0, T) (a steps_offset that pushes the
 * first t to T, or a trailing N for which numpy's arange gives N+1 values,
 * is an error naming N). Other samplers: see dl_sampler_init's timesteps. */
dl_status dl_sampler_timesteps(const dl_sampler_config *cfg, int num_train_timesteps, int num_steps, int *out);

/* ------------------------------------------------------------------ */
/* One DDPM / DDIM step as plain maths on n floats (the lesson 04 exercise
 * rewrites ddim_step). t_prev < 0 means "the end": abar_prev = 1 for DDPM,
 * and 1 or abar[0] (set_alpha_to_one) for DDIM. model_out is eps (or v with
 * cfg->prediction_type v_prediction). x0_out may be NULL; x_prev may alias
 * x_t. noise: standard normal draws, needed (non-NULL) when DDPM has t > 0 /
 * DDIM has eta > 0, else ignored. */

/* x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)   (epsilon)
 *        = sqrt(abar_t) x_t - sqrt(1 - abar_t) v          (v_prediction)
 * optionally clipped. */
dl_status dl_predict_x0(const dl_schedule *s, const dl_sampler_config *cfg, int t,
                        const float *x_t, const float *model_out, float *x0_out, int64_t n);

/* DDPM ("fixed_small"), with a = abar_t / abar_prev, b = 1 - a:
 *   mean   = sqrt(abar_prev) b / (1 - abar_t) x0_hat + sqrt(a) (1 - abar_prev) / (1 - abar_t) x_t
 *   var    = max((1 - abar_prev) / (1 - abar_t) b, 1e-20)
 *   x_prev = mean + sqrt(var) noise          (noise only when t > 0) */
dl_status ddpm_step(const dl_schedule *s, const dl_sampler_config *cfg, int t, int t_prev,
                    const float *x_t, const float *model_out, const float *noise,
                    float *x_prev, float *x0_out, int64_t n);

/* DDIM (Song et al. 2021, eq. 12):
 *   sigma  = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev)
 *   x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma noise */
dl_status ddim_step(const dl_schedule *s, const dl_sampler_config *cfg, int t, int t_prev, float eta,
                    const float *x_t, const float *model_out, const float *noise,
                    float *x_prev, float *x0_out, int64_t n);

/* ------------------------------------------------------------------ */
/* The step-by-step sampler. Read the fields, change them only through the
 * functions below. */
typedef struct {
    dl_sampler_kind kind;
    dl_sampler_config cfg;
    const dl_schedule *sched;  /* borrowed: must outlive the sampler                    */
    float eta;                 /* DDIM only (0 = deterministic)                          */
    int num_steps;             /* N, the inference steps asked for                       */
    int num_calls;             /* model calls in a whole run: N, 2N-1 or N+1             */
    float *timesteps;          /* [num_calls] the t handed to the model at each call     */
    float *sigmas;             /* [num_sigmas] diffusers' scheduler.sigmas (NULL for
                                  ddpm, ddim, pndm, lcm); Heun/KDPM2 repeat entries      */
    int num_sigmas;
    float init_noise_sigma;    /* std of the starting noise (1, or ~sigma_max)           */
    int step_index;            /* calls done (0..num_calls); the next call is at
                                  timesteps[step_index]                                  */
    int have_prediction;       /* eps / x0 belong to the current x (predict was called)  */
    int64_t model_calls;
    dl_tensor x;               /* [B, ...] the current sample                            */
    dl_tensor model_in;        /* the model's input at the last call: scale_model_input(x) */
    dl_tensor eps;             /* the model's output for it (eps, or v)                  */
    dl_tensor x0;              /* the predicted clean sample at the last call (LCM: its
                                  "denoised" output, the pipeline's result)              */
    dl_tensor noise;           /* the noise of the last update (0 if it drew none)       */
    float *t_batch;            /* [B] scratch: t as floats for the model                 */
    /* --- internal state of the multistep / two-stage samplers (sampler_*.c) --- */
    float *sigmas_interpol, *sigmas_up, *sigmas_down;   /* KDPM2: [num_sigmas]        */
    dl_tensor hist[4];         /* past model outputs or derivatives, oldest first        */
    int hist_len;
    dl_tensor saved;           /* the sample a two-stage step returns to                 */
    dl_tensor saved_d;         /* Heun: the first stage's derivative                     */
    int have_saved;
    float saved_dt;
    int counter, lower_order_nums, this_order;
} dl_sampler;

/* shape: the sample's shape, batch first ([B, C, H, W]); num_steps N >= 1;
 * eta >= 0 (DDIM only, the others ignore it). Computes the timesteps,
 * sigmas and init_noise_sigma as diffusers' set_timesteps(N) does.
 * x starts at zero: call set_noise or set_x. */
dl_status dl_sampler_init(dl_sampler *s, dl_sampler_kind kind, const dl_schedule *sched,
                          const dl_sampler_config *cfg, int num_steps, float eta,
                          int ndim, const int64_t shape[]);
void dl_sampler_free(dl_sampler *s);

/* Restart from x = randn(shape) * init_noise_sigma, drawn from rng as
 * torch.randn(shape, generator=rng) does (the pipeline's prepare_latents). */
dl_status dl_sampler_set_noise(dl_sampler *s, dl_rng *rng);
/* The same with given standard normal noise z (x's numel floats): x = z * init_noise_sigma. */
dl_status dl_sampler_set_noise_from(dl_sampler *s, const float *z);
/* Restart from a given x, used as is (no init_noise_sigma). */
dl_status dl_sampler_set_x(dl_sampler *s, const dl_tensor *x_T);

/* ---- starting part-way: img2img ------------------------------------------
 * An img2img run noises an encoded picture to the level of one of the
 * sampler's calls and runs only the calls from there on, as diffusers'
 * img2img pipelines do with timesteps[t_start * order:] (and
 * set_begin_index(t_start * order)):
 *
 *     int start = t_start * dl_sampler_order(s.kind);
 *     DL_TRY(dl_sampler_add_noise(&s, start, z0, noise, xs, n));   // z0 noised to that level
 *     DL_TRY(dl_sampler_set_start(&s, start, &x_start));           // then the usual loop
 *
 * The multistep samplers (LMS, DPM++, UniPC, PNDM) start with an empty
 * history, exactly as the diffusers schedulers do. */

/* diffusers' scheduler.order: model calls per step for the timestep cut
 * (2 for heun, kdpm2, kdpm2_a; 1 for the others). */
int dl_sampler_order(dl_sampler_kind kind);
/* Restart from x (used as is) with the first start_call calls skipped:
 * the next call is at timesteps[start_call]. start_call in [0, num_calls). */
dl_status dl_sampler_set_start(dl_sampler *s, int start_call, const dl_tensor *x);
/* The scheduler's add_noise(x0, noise, timesteps[call]) into out (n = x's
 * numel floats; out may alias x0):
 *   ddpm ddim pndm lcm:   sqrt(abar_t) x0 + sqrt(1 - abar_t) noise
 *   euler family, kdpm2:  x0 + sigmas[call] noise
 *   dpmpp_2m, unipc:      alpha x0 + sigma_vp noise, alpha = 1 / sqrt(sigmas[call]^2 + 1),
 *                         sigma_vp = sigmas[call] alpha                              */
dl_status dl_sampler_add_noise(const dl_sampler *s, int call, const float *x0, const float *noise,
                               float *out, int64_t n);

int dl_sampler_done(const dl_sampler *s);
/* The timestep of the next call, rounded (-1 when done), and the one a
 * DDPM/DDIM step goes to (t - T/N; negative means "the end"). */
int dl_sampler_current_t(const dl_sampler *s);
int dl_sampler_prev_t(const dl_sampler *s, int t);
/* The exact (float) timestep of the next call; -1 when done. */
float dl_sampler_current_timestep(const dl_sampler *s);
/* The noise level of the next call as a sigma = sqrt((1 - abar) / abar)
 * (the Euler family's own sigma, the others' at their t); 0 when done. */
float dl_sampler_current_sigma(const dl_sampler *s);
/* Does the next update draw noise? (see the list at the top) */
int dl_sampler_update_draws_noise(const dl_sampler *s);
/* The predicted clean sample of the last call (LCM: its "denoised"; PNDM:
 * x0_hat from that call's raw eps), or NULL before the first predict. */
const dl_tensor *dl_sampler_x0(const dl_sampler *s);

/* The model call at the current timestep: s->model_in = scale_model_input(x),
 * s->eps = model(model_in, t), s->x0 = predicted x0 (x unchanged). */
dl_status dl_sampler_predict(dl_sampler *s, dl_eps_model model, void *ctx);
/* The scheduler maths with the prediction made by dl_sampler_predict. Noise
 * (if this call draws any) comes from `noise` (x's numel floats, e.g. a
 * recorded diffusers draw) if non-NULL, else from rng. */
dl_status dl_sampler_update(dl_sampler *s, dl_rng *rng, const float *noise);
/* predict (unless already done for this x) + update with noise from rng. */
dl_status dl_sampler_step(dl_sampler *s, dl_eps_model model, void *ctx, dl_rng *rng);
/* All remaining calls. */
dl_status dl_sampler_run(dl_sampler *s, dl_eps_model model, void *ctx, dl_rng *rng);

/* The schedule of a sampler as text, the way diffusers would show it:
 *     scheduler: euler (EulerDiscreteScheduler), 4 steps, 4 model calls
 *     timesteps: [751, 501, 251, 1]
 *     sigmas: [4.1166978, 1.6236929, 0.69839859, 0.041314479, 0]
 *     init_noise_sigma: 4.2364135
 * Writes at most n bytes (NUL-terminated) like snprintf; returns the length
 * the whole text needs. */
int dl_sampler_describe(const dl_sampler *s, char *buf, size_t n);

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
 * pushes the sample further towards the class. With guidance_rescale
 * phi > 0 (Lin et al. 2023, diffusers' rescale_noise_cfg), each item's
 * result is pulled back towards the standard deviation of eps_cond:
 *
 *     eps = phi * eps * std(eps_cond) / std(eps) + (1 - phi) * eps
 *
 * dl_cfg_eps is itself a dl_eps_model, so it plugs into any sampler:
 *
 *     dl_cfg g;
 *     DL_TRY(dl_cfg_init(&g, toy_eps, &toy_ctx, 3.0f, 4, DL_SHAPE(B, 1, 32, 32)));
 *     DL_TRY(dl_sampler_step(&s, dl_cfg_eps, &g, &rng));
 */
typedef struct {
    dl_eps_model model;        /* evaluated on [uncond x B, cond x B]          */
    void *model_ctx;
    float guidance;            /* g                                            */
    float guidance_rescale;    /* phi, 0 = off (dl_cfg_init sets 0)            */
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
/* guidance_rescale alone, per item of `per_item` values (std with Bessel's
 * correction, as torch.std): eps = phi eps std(cond)/std(eps) + (1 - phi) eps. */
void dl_cfg_rescale(float *eps, const float *eps_cond, float phi, int64_t batch, int64_t per_item);

#endif
