/* sd_pipeline.h - Stable Diffusion text-to-image, as diffusers'
 * StableDiffusionPipeline does it, from the parts in core/:
 *
 *   prompt, negative prompt
 *     -> clip_tokenize                 77 ids each                     (clip_tokenizer.h)
 *     -> clip_text_forward             context [2, 77, D]  = [negative, positive]   (clip_text.h)
 *   seed -> torch-identical randn      latents [1, 4, H/f, W/f] * init_noise_sigma  (rng.h; f = 8 for SD)
 *   N sampler calls (sampling.h), each:
 *       scale_model_input, the batch [x, x] at [t, t]
 *       sd_unet_forward                eps [2, 4, H/f, W/f]            (sd_unet.h)
 *       eps = eps_neg + g (eps_pos - eps_neg)   (+ guidance_rescale)
 *       the scheduler's update          latents [1, 4, H/f, W/f]
 *   latents / scaling_factor -> sd_vae_decode -> x [1, 3, H, W] in ~[-1, 1]
 *   image = clamp(x / 2 + 0.5, 0, 1)                               -> 8-bit RGB
 *
 * With guidance <= 1 there is no unconditional half (diffusers runs the
 * UNet on the positive prompt alone); the negative prompt is then unused.
 *
 *     sd_pipeline p;
 *     DL_TRY(sd_pipeline_load(&p, "models/sd15", NULL));      // folder or single .safetensors
 *     sd_run_opts o = sd_run_opts_default();                 // 25 steps, g 7.5, dpmpp_2m, seed 42, 512x512
 *     o.prompt = "a photo of a cat";
 *     sd_run_result r;
 *     DL_TRY(sd_pipeline_run(&p, &o, my_step_callback, my_ctx, &r));
 *     dl_image img;  DL_TRY(sd_image_from_decoded(&r.image, 0, &img));
 *     ... sd_run_result_free(&r); sd_pipeline_free(&p);
 *
 * Plug-in points for later pipelines (all off by default in sd_run_opts):
 *   - start_latents + start_step: img2img starts from given (already noised)
 *     latents at a later sampler call instead of from pure noise;
 *   - residuals: ControlNet's callback, asked before each UNet call for the
 *     residuals added to the UNet's skips (sd_unet_residuals);
 *   - noise: the sampler's noise draws given instead of drawn (tests replay
 *     diffusers' recorded draws with it);
 *   - prompt_embeds: a precomputed context instead of the text encoder.
 */
#ifndef DL_SD_PIPELINE_H
#define DL_SD_PIPELINE_H

#include <stdint.h>

#include "clip_text.h"
#include "clip_tokenizer.h"
#include "dl_error.h"
#include "image.h"
#include "rng.h"
#include "sampling.h"
#include "schedule.h"
#include "scheduler_config.h"
#include "sd_unet.h"
#include "sd_vae.h"
#include "sd_weights.h"
#include "tensor.h"

/* ---- loading ------------------------------------------------------------ */

typedef struct {
    /* Single files carry no configs and no tokenizer. config_dir: a folder in
     * diffusers layout whose {text_encoder,unet,vae}/config.json,
     * scheduler/scheduler_config.json and tokenizer/ are used (what
     * diffusers' from_single_file(config=...) does). NULL: SD 1.5's configs
     * (SD 2.x's UNet when the text encoder is OpenCLIP-sized). */
    const char *config_dir;
    /* A tokenizer folder (vocab.json, merges.txt) that overrides the model's.
     * NULL: <folder>/tokenizer, or for single files <config_dir>/tokenizer,
     * then "tokenizer/" next to the file. */
    const char *tokenizer_dir;
    /* "epsilon" or "v_prediction" overrides the scheduler config's
     * prediction_type (single SD 2.x 768 files do not say). NULL: keep it. */
    const char *prediction_type;
    /* 1: keep the widened fp32 UNet weights between calls (SD_CACHE_AUTO: if
     * they fit in half of the free memory; 3.2 GB for SD 1.5). 0 (default):
     * widen fp16 weights layer by layer at every call. Measured by
     * bench_sd on this machine (SD 1.5, 512x512, CFG): 6.81 s per step
     * cached vs 6.88 s widening (0.35 s of it), peak RSS 3.65 vs 2.05 GB. */
    int keep_weights;
} sd_load_opts;

typedef struct {
    char path[1024];              /* as given                                       */
    char name[256];               /* file or folder name without .safetensors       */
    sd_weights weights;           /* memory-mapped; the models read from it         */
    clip_tokenizer tokenizer;
    char tokenizer_dir[1024];
    clip_text_model text;         /* freed early by sd_pipeline_release_text_encoder */
    int have_text;
    sd_unet unet;
    sd_vae vae;
    dl_scheduler_config scheduler;   /* the model's scheduler_config.json (or SD 1.5's) */
    char scheduler_source[1100];     /* where it came from, for messages             */
    dl_schedule schedule;            /* its betas / alphas_cumprod                    */
    int latent_channels, downscale;  /* 4, 8 for SD (2 for the tiny test model)       */
    int context_dim;                 /* D: 768 SD 1.x, 1024 SD 2.x                    */
} sd_pipeline;

/* Open a diffusers folder or a single .safetensors checkpoint and read every
 * config (the weights stay mapped; layers are fetched when used). opts may be
 * NULL. Errors name what is missing (file, folder, tensor) and what to give. */
dl_status sd_pipeline_load(sd_pipeline *p, const char *path, const sd_load_opts *opts);
void      sd_pipeline_free(sd_pipeline *p);
/* Free the text encoder (its fp16 copies) once the prompts are encoded. */
void      sd_pipeline_release_text_encoder(sd_pipeline *p);
/* Load the text encoder again from p->weights as they are now. The encoder
 * holds its weights, so after a LoRA change (sd_lora_apply, a new scale,
 * sd_lora_fuse / _unfuse / _remove) call this before encoding prompts; the
 * UNet fetches its weights at every forward and needs nothing. Also brings
 * back a released encoder. */
dl_status sd_pipeline_reload_text_encoder(sd_pipeline *p);

/* One prompt -> its 77 context vectors: out [1, 77, context_dim]
 * (preallocated). ids (may be NULL) gets the 77 token ids. An empty prompt is
 * still encoded (BOS, EOS, padding), as diffusers does for the negative. */
dl_status sd_pipeline_encode(sd_pipeline *p, const char *prompt, dl_tensor *out, int ids[CLIP_MAX_TOKENS]);

/* ---- one run ------------------------------------------------------------ */

/* ControlNet plug-in: called before every UNet call with the UNet's input
 * (scaled latents [B, 4, h, w], B = 2 with guidance), its timesteps and
 * context; fills *res (residuals owned by the callee, valid until the next
 * call) or leaves res->n_down = 0 and res->mid = NULL for none. */
typedef dl_status (*sd_residuals_fn)(void *ctx, const dl_tensor *sample, const float *timesteps,
                                     const dl_tensor *context, sd_unet_residuals *res);

typedef struct {
    const char *prompt;              /* required (unless prompt_embeds)                */
    const char *negative_prompt;     /* NULL = ""                                      */
    int steps;                       /* N inference steps (25)                         */
    float guidance;                  /* g (7.5); <= 1 runs no unconditional half       */
    float guidance_rescale;          /* phi (0 = off)                                  */
    dl_sampler_kind scheduler;       /* DL_SAMPLER_DPMPP_2M                            */
    float eta;                       /* DDIM only (0)                                  */
    uint64_t seed;                   /* torch.Generator("cpu").manual_seed(seed) (42)  */
    int width, height;               /* pixels, multiples of the VAE's factor (512)    */
    /* Starting point: init_latents [1, C, h, w] standard normal noise used
     * instead of drawing (then multiplied by init_noise_sigma, as diffusers
     * does with latents=...; the seed only feeds the sampler's noise). */
    const dl_tensor *init_latents;
    /* img2img: latents used AS IS (already noised to the level of sampler
     * call start_step) and the first start_step calls skipped. */
    const dl_tensor *start_latents;
    int start_step;
    /* Replay noise: n_noise tensors of the latents' size, used in order by
     * the sampler calls that draw noise (instead of the generator). */
    const float *noise;
    int n_noise;
    const dl_tensor *prompt_embeds;  /* [2, 77, D] = [negative, positive], or NULL     */
    sd_residuals_fn residuals;       /* ControlNet, or NULL                            */
    void *residuals_ctx;
    int release_text_encoder;        /* free the text encoder after encoding (0)       */
    int decode_every;                /* full VAE decode of the predicted x0 every k calls (0 = never) */
    int skip_decode;                 /* 1: stop after the latents (no final VAE decode) */
    /* The generator, continued instead of a new one seeded with seed (img2img
     * hands over the one that already drew the VAE's posterior sample and the
     * add_noise noise, as diffusers uses one generator for all). NULL: new. */
    dl_rng *rng;
} sd_run_opts;

sd_run_opts sd_run_opts_default(void);

/* What the callback sees after each sampler call (one UNet call). */
typedef struct {
    int call, calls;                 /* 1-based index of this call, calls in the run   */
    float timestep;                  /* t of this call                                 */
    const dl_tensor *latents;        /* [1, C, h, w] after the update                  */
    const dl_tensor *x0;             /* the predicted clean latents of this call       */
    const dl_tensor *x0_decoded;     /* [1, 3, H, W] in [0, 1] (VAE of x0) on the calls
                                        decode_every asks for, else NULL               */
    const dl_sampler *sampler;       /* everything else (sigmas, eps ...)              */
    double step_seconds, elapsed_seconds;   /* this call (with its decode), and so far */
} sd_step_info;

/* Return 0 to go on; anything else stops the run (result.stopped = 1). */
typedef int (*sd_step_fn)(void *ctx, const sd_step_info *info);

typedef struct {
    dl_tensor latents;               /* [1, C, h, w] final latents (before / scaling_factor) */
    dl_tensor image;                 /* [1, 3, H, W] in [0, 1] (empty with skip_decode or when stopped) */
    dl_tensor context;               /* [2, 77, D] or [1, 77, D]: what the UNet was given */
    int ids[2][CLIP_MAX_TOKENS];     /* token ids of [negative, positive]              */
    int n_real[2];                   /* tokens before the padding                      */
    int calls;                       /* UNet calls made                                */
    int stopped;                     /* the callback stopped the run                   */
    float init_noise_sigma;
    double seconds_text, seconds_sampling, seconds_decode;
} sd_run_result;

/* The whole pipeline. cb may be NULL. The result is allocated here (free it
 * with sd_run_result_free, also after a failure). */
dl_status sd_pipeline_run(sd_pipeline *p, const sd_run_opts *o, sd_step_fn cb, void *cb_ctx, sd_run_result *r);
void      sd_run_result_free(sd_run_result *r);

/* ---- the small steps, on their own (the lesson's exercises) ------------- */

/* The UNet's context for classifier-free guidance: out [2, 77, D] =
 * [negative, positive] (the unconditional half first, as diffusers). */
dl_status sd_cfg_context(dl_tensor *out, const dl_tensor *negative, const dl_tensor *positive);
/* The VAE's input: z = latents / scaling_factor (a division, as torch does). */
dl_status sd_latents_to_vae_input(dl_tensor *z, const dl_tensor *latents, float scaling_factor);
/* The decoder's output x [B, 3, H, W] -> clamp(x / 2 + 0.5, 0, 1) in place. */
void      sd_postprocess(dl_tensor *x);
/* Item b of a [B, 3, H, W] tensor in [0, 1] -> 8-bit RGB (round(v * 255), as
 * diffusers' numpy_to_pil). Allocates out. */
dl_status sd_image_from_decoded(const dl_tensor *x01, int b, dl_image *out);

/* ---- a cheap preview: latents -> RGB by a fixed linear map ---------------
 * Each latent pixel's 4 values map to RGB by a 4x3 matrix (plus a bias): a
 * least-squares fit of the VAE decoder, good enough to watch an image form
 * at 1/f of the resolution without a decoder call. The default coefficients
 * are the published fit for SD 1.x/2.x latents; sd_preview_fit makes one for
 * any VAE from a latent and its decoded image. */
typedef struct { float m[4][3]; float bias[3]; } sd_preview_map;
/* SD 1.x / 2.x (rgb ~ latents . m, in about [-1, 1]). */
sd_preview_map sd_preview_map_sd(void);
/* Least squares on latents [1, 4, h, w] and their decoded image [1, 3, f h, f w]
 * in [0, 1] (average-pooled to h x w). */
dl_status sd_preview_fit(sd_preview_map *map, const dl_tensor *latents, const dl_tensor *image01);
/* Item b of latents [B, 4, h, w] -> RGB h x w. Allocates out. */
dl_status sd_preview_image(const sd_preview_map *map, const dl_tensor *latents, int b, dl_image *out);

/* The generation parameters in the text other SD tools write into their PNGs:
 *     <prompt>
 *     Negative prompt: <negative>            (line left out when empty)
 *     Steps: 25, Sampler: dpmpp_2m, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: v1-5-pruned-emaonly
 * Returns the length like snprintf. */
/* The size to generate a picture of pic_w x pic_h at: its own aspect, scaled
 * down (never up) so that the longer side has at most max_latent latent
 * pixels, each side rounded down to a multiple of the VAE's factor. Only
 * the sides that are 0 in *w / *h are set (the user's choice wins). */
void sd_fit_size(int pic_w, int pic_h, int factor, int max_latent, int *w, int *h);

int sd_parameters_text(char *buf, size_t n, const sd_run_opts *o, const char *model_name);

#endif
