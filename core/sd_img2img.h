/* sd_img2img.h - Stable Diffusion image-to-image, as diffusers'
 * StableDiffusionImg2ImgPipeline does it (v0.27): start from a picture
 * instead of pure noise.
 *
 *   picture [H][W][3] 8-bit, H and W multiples of the VAE's factor f
 *     -> x = 2 v / 255 - 1                      image [1, 3, H, W]  (sd_img2img_preprocess)
 *     -> VAE encoder                            moments [1, 2C, H/f, W/f] = [mean | logvar]
 *     -> posterior sample z = mean + std * n1   n1 = randn, FIRST draw of the generator
 *     -> z0 = z * scaling_factor                (0.18215)                    [1, C, h, w]
 *   strength s, N steps:
 *     init_timestep = min(int(N s), N)          steps that will run
 *     t_start       = max(N - init_timestep, 0) steps skipped
 *     start_call    = t_start * order           (order 2 for heun / kdpm2)
 *   x = scheduler.add_noise(z0, n2, timesteps[start_call])   n2 = SECOND draw
 *   the usual sampler loop from call start_call on (sd_pipeline_run with
 *   start_latents = x, start_step = start_call and the same generator),
 *   then the VAE decoder.
 *
 * strength 1 runs every step but still starts from the picture noised to
 * the first timestep (for SD's "leading" 1000-step schedule that keeps a
 * trace of it: abar at t = 951 is not 0); small strengths keep more of it.
 *
 * Sizes: sd_img2img_preprocess REQUIRES width and height to be multiples of
 * f (8 for SD, 2 for the tiny test model) and says so otherwise; diffusers
 * would round the size down and resize (Lanczos). Resize first, e.g. with
 * dl_image_resize.
 *
 *     dl_tensor x;  DL_TRY(dl_tensor_alloc(&x, 4, DL_SHAPE(1, 3, img.h, img.w)));
 *     DL_TRY(sd_img2img_preprocess(&x, &img));
 *     sd_run_opts o = sd_run_opts_default();  o.prompt = "a tiger";  o.width = img.w;  o.height = img.h;
 *     sd_img2img_input in = {&x, NULL, 0.75};
 *     sd_run_result r;  sd_img2img_info info;
 *     DL_TRY(sd_img2img_run(&p, &o, &in, cb, ctx, &r, &info));
 *     ... sd_run_result_free(&r); sd_img2img_info_free(&info);
 */
#ifndef DL_SD_IMG2IMG_H
#define DL_SD_IMG2IMG_H

#include "image.h"
#include "rng.h"
#include "sampling.h"
#include "sd_pipeline.h"
#include "tensor.h"

/* diffusers' get_timesteps(N, strength), in sampler calls. */
typedef struct {
    int num_steps;          /* N                                                  */
    double strength;        /* in [0, 1]                                          */
    int init_timestep;      /* min(int(N * strength), N): the steps that run      */
    int t_start;            /* max(N - init_timestep, 0): the steps skipped       */
    int start_call;         /* t_start * order: the first sampler call kept       */
    int calls;              /* sampler calls (UNet calls) that remain             */
    float start_timestep;   /* timesteps[start_call]: where the noise is added    */
} sd_img2img_plan;

/* The cut for a sampler already set up for N steps (s->timesteps). strength
 * outside [0, 1], or one that leaves no step (int(N * strength) = 0), is an
 * error that says how many steps it would need. strength is a double so
 * that int(N * strength) is Python's (0.7 * 10 = 7, not 6.99...). */
dl_status sd_img2img_plan_for(const dl_sampler *s, double strength, sd_img2img_plan *plan);
/* The bare arithmetic: t_start = max(N - min(int(N * strength), N), 0). */
int sd_img2img_t_start(int num_steps, double strength);

/* 8-bit RGB (or grey / RGBA: converted) [h][w][c] -> out [1, 3, h, w] =
 * 2 * (v / 255) - 1 in float32, as diffusers' VaeImageProcessor (v / 255,
 * then 2 x - 1). out preallocated. */
dl_status sd_img2img_preprocess(dl_tensor *out, const dl_image *img);

/* The VAE's posterior sample, scaled: z0 = (mean + std * noise) *
 * scaling_factor with noise = randn(mean's shape) drawn from rng (or taken
 * from `noise` if non-NULL). moments [1, 2C, h, w]; z0 [1, C, h, w]
 * preallocated. */
dl_status sd_img2img_sample_latents(const sd_pipeline *p, const dl_tensor *moments, dl_rng *rng, const float *noise,
                                    dl_tensor *z0);

typedef struct {
    const dl_tensor *image;    /* [1, 3, H, W] in [-1, 1] (sd_img2img_preprocess), or NULL with moments */
    const dl_tensor *moments;  /* its VAE moments [1, 2C, H/f, W/f] (several runs: encode once), or NULL */
    double strength;           /* 0..1 (diffusers' default 0.8)                                         */
    /* Replay (tests): diffusers' recorded draws instead of the generator's. */
    const float *sample_noise;     /* the posterior sample's noise, or NULL */
    const float *add_noise_noise;  /* add_noise's noise, or NULL            */
} sd_img2img_input;

/* What the run started from (for the lesson's pictures). */
typedef struct {
    sd_img2img_plan plan;
    dl_tensor init_latents;    /* z0 [1, C, h, w]: the picture's latents, scaled           */
    dl_tensor noisy_latents;   /* add_noise(z0, ...) at plan.start_timestep: the start      */
} sd_img2img_info;

/* The VAE encoder once: moments [1, 2C, H/f, W/f] allocated here. */
dl_status sd_img2img_encode(sd_pipeline *p, const dl_tensor *image, dl_tensor *moments);

/* The whole img2img run. o->width / o->height must be the image's size;
 * o->start_latents, start_step, init_latents and rng must be unset (this
 * function sets them); everything else as sd_pipeline_run (prompt or
 * prompt_embeds, guidance, scheduler, seed, residuals, noise, ...). The
 * callback sees only the calls that run (info->calls = plan.calls).
 * info may be NULL; free it with sd_img2img_info_free (also after a failure). */
dl_status sd_img2img_run(sd_pipeline *p, const sd_run_opts *o, const sd_img2img_input *in, sd_step_fn cb,
                         void *cb_ctx, sd_run_result *r, sd_img2img_info *info);
void sd_img2img_info_free(sd_img2img_info *info);

#endif
