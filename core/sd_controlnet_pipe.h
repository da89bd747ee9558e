/* sd_controlnet_pipe.h - ControlNet in the Stable Diffusion pipeline, as
 * diffusers' StableDiffusionControlNetPipeline (v0.27) runs it: before
 * every UNet call the ControlNet sees the same input (latents, timestep,
 * context: the batch [negative, positive] with guidance) plus the control
 * image, and its residuals, times the conditioning scale, are added to the
 * UNet's skip connections (core/sd_controlnet.h, core/sd_unet.h).
 *
 *   control picture [H][W][3] 8-bit (e.g. Canny edges in all three channels)
 *     -> cond [B, 3, H, W] = v / 255          (no [-1, 1] here, unlike the VAE)
 *   per UNet call: ControlNet(sample, t, context, cond) * scale
 *     -> down[k] added to skip k, mid added to the mid block's output
 *
 *     sd_controlnet_plugin cn;
 *     DL_TRY(sd_controlnet_plugin_load(&cn, "models/controlnet-canny"));
 *     DL_TRY(sd_controlnet_plugin_set_image(&cn, edges_rgb, 512, 512, 1.0f));
 *     sd_run_opts o = sd_run_opts_default();   ... o.width = o.height = 512;
 *     sd_controlnet_plugin_attach(&cn, &o);       // o.residuals = ..., o.residuals_ctx = &cn
 *     DL_TRY(sd_pipeline_run(&p, &o, cb, ctx, &r));
 *     sd_controlnet_plugin_free(&cn);
 *
 * The control picture must have the size of the generated image
 * (o.width x o.height); guess mode is not supported.
 */
#ifndef DL_SD_CONTROLNET_PIPE_H
#define DL_SD_CONTROLNET_PIPE_H

#include <stdint.h>

#include "sd_controlnet.h"
#include "sd_pipeline.h"
#include "sd_weights.h"
#include "tensor.h"

typedef struct {
    sd_weights weights;        /* the ControlNet folder (config.json + weights) */
    sd_controlnet cn;
    int loaded;
    uint8_t *rgb;              /* the control picture [h][w][3], owned            */
    int w, h;
    float scale;               /* controlnet_conditioning_scale                  */
    dl_tensor cond;            /* [B, 3, h, w] in [0, 1], built at the first call */
    sd_controlnet_output out;  /* the residuals of the last call                  */
    int out_b, out_h, out_w;   /* what out was allocated for                      */
    int64_t calls;             /* ControlNet forwards made                        */
} sd_controlnet_plugin;

/* Open a diffusers ControlNet folder (config.json, diffusion_pytorch_model
 * [.fp16].safetensors), e.g. lllyasviel/sd-controlnet-canny. Errors name the
 * folder and what is missing. */
dl_status sd_controlnet_plugin_load(sd_controlnet_plugin *pl, const char *folder);
/* The control picture (copied) and the conditioning scale; may be called
 * again between runs (new edges, new scale). */
dl_status sd_controlnet_plugin_set_image(sd_controlnet_plugin *pl, const uint8_t *rgb, int w, int h, float scale);
/* The sd_residuals_fn: ControlNet on the UNet's input. ctx = the plugin. */
dl_status sd_controlnet_plugin_residuals(void *ctx, const dl_tensor *sample, const float *timesteps,
                                         const dl_tensor *context, sd_unet_residuals *res);
/* o->residuals = sd_controlnet_plugin_residuals, o->residuals_ctx = pl. */
void sd_controlnet_plugin_attach(sd_controlnet_plugin *pl, sd_run_opts *o);
void sd_controlnet_plugin_free(sd_controlnet_plugin *pl);

#endif
