/* sd_controlnet.h - ControlNet: a trainable copy of the UNet's down and mid
 * blocks that reads a control image (edges, depth, pose ...) and tells the
 * UNet what to add to its skip connections. diffusers' ControlNetModel,
 * inference only, weights by their diffusers names.
 *
 *   sample [B, 4, h, w], timesteps [B], context [B, 77, D]   (as the UNet)
 *   cond   [B, 3, 8h, 8w] the control image in [0, 1]
 *     -> down[k] [B, C_k, h_k, w_k] for every UNet skip k, mid [B, Cm, h', w']
 *
 * The network:
 *
 *   controlnet_cond_embedding   conv_in 3x3 -> SiLU -> per level: conv 3x3,
 *                               SiLU, conv 3x3 stride 2, SiLU -> conv_out 3x3
 *                               [B, C0, h, w]  (8x smaller: the latent size)
 *   conv_in(sample) + that      the control signal enters here, once
 *   time_proj, time_embedding,  exactly the UNet's down path and mid block
 *   down_blocks.i, mid_block    (same block code: core/sd_unet_blocks.h)
 *   controlnet_down_blocks.k    1x1 conv of every skip -> down[k]
 *   controlnet_mid_block        1x1 conv of the mid output -> mid
 *   * conditioning_scale        (global_pool_conditions: each residual is
 *                               replaced by its spatial mean)
 *
 * The 1x1 convs and the embedding's conv_out start at zero when a
 * ControlNet is trained ("zero convolutions"): an untrained ControlNet adds
 * nothing and the UNet behaves exactly as before.
 *
 * The residuals go straight into sd_unet_forward:
 *
 *     sd_weights cw;  DL_TRY(sd_weights_open_component(&cw, "models/control_canny", SD_PART_UNET));
 *     sd_controlnet cn;  DL_TRY(sd_controlnet_init(&cn, &cw));
 *     sd_controlnet_output res;  DL_TRY(sd_controlnet_output_alloc(&res, &cn.cfg, 2, 64, 64));
 *     DL_TRY(sd_controlnet_forward(&cn, &res, &latents, t, &text_emb, &cond, 1.0f, 0));
 *     sd_unet_residuals r = sd_controlnet_residuals(&res);
 *     DL_TRY(sd_unet_forward(&unet, &eps, &latents, t, &text_emb, &r));
 */
#ifndef DL_SD_CONTROLNET_H
#define DL_SD_CONTROLNET_H

#include <stdint.h>

#include "sd_unet.h"
#include "sd_weights.h"
#include "tensor.h"

#define SD_CONTROLNET_MAX_COND_LEVELS 8

typedef struct {
    sd_unet_config unet;              /* the down/mid half of the UNet it copies (up_* unused)   */
    int conditioning_channels;        /* 3: the control image's channels                        */
    int cond_levels;                  /* len(conditioning_embedding_out_channels)                */
    int cond_channels[SD_CONTROLNET_MAX_COND_LEVELS];   /* 16 32 96 256 in SD 1.5 ControlNets    */
    int bgr;                          /* controlnet_conditioning_channel_order "bgr": flip first */
    int global_pool_conditions;       /* residuals are spatial means (shuffle-style models)      */
} sd_controlnet_config;

/* Parse a ControlNet's config.json (the UNet keys it mirrors are read by
 * sd_unet_config_parse; features it does not have give DL_ERR_FORMAT naming
 * the key). */
dl_status sd_controlnet_config_parse(sd_controlnet_config *c, const char *json);

typedef struct {
    sd_controlnet_config cfg;
    sd_weights   *weights;      /* borrowed, part SD_PART_UNET (sd_weights_open_component) */
    dl_arena      scratch;      /* block temporaries (grown when the shape grows)          */
    sd_block_hook hook;         /* optional: called with every block's output              */
    void         *hook_ctx;
} sd_controlnet;

/* Read the config from the weights' SD_PART_UNET config.json. A missing or
 * misshapen tensor is reported by the first forward, naming it. */
dl_status sd_controlnet_init(sd_controlnet *cn, sd_weights *w);
void      sd_controlnet_free(sd_controlnet *cn);

/* The residuals: down[k] has the shape of the UNet's skip k. Owned tensors. */
typedef struct {
    dl_tensor down[SD_UNET_MAX_SKIPS];
    int       n_down;
    dl_tensor mid;
} sd_controlnet_output;

/* Allocate the residuals for batch B and latents h x w. */
dl_status sd_controlnet_output_alloc(sd_controlnet_output *o, const sd_controlnet_config *c, int B, int h, int w);
void      sd_controlnet_output_free(sd_controlnet_output *o);
/* The form sd_unet_forward takes (pointers into o). */
sd_unet_residuals sd_controlnet_residuals(const sd_controlnet_output *o);

/* out (from sd_controlnet_output_alloc, same B, h, w as sample),
 * sample [B, in_channels, h, w] (the UNet's input at this step), timesteps:
 * B floats, context [B, L, cross_attention_dim], cond [B, conditioning_channels,
 * H, W] with H, W such that the embedding lands on h x w (8h x 8w for SD).
 * conditioning_scale multiplies every residual (diffusers'
 * controlnet_conditioning_scale). guess_mode must be 0 (not supported).
 * Hooks (if set) receive: time_proj, time_embedding, conv_in (before the
 * control is added), controlnet_cond_embedding, the down blocks' intermediates
 * as in sd_unet.h, mid_block. */
dl_status sd_controlnet_forward(sd_controlnet *cn, sd_controlnet_output *out, const dl_tensor *sample,
                                const float *timesteps, const dl_tensor *context, const dl_tensor *cond,
                                float conditioning_scale, int guess_mode);

/* ---- the control image ------------------------------------------------- */

/* As the ControlNet pipeline prepares it: rgb [h][w][3] uint8 ->
 * out [copies, 3, h, w] = value / 255 (no [-1, 1] normalisation, unlike
 * the VAE's input), the same picture in every row (copies = 2 for
 * classifier-free guidance: [negative, positive]). out preallocated. */
dl_status sd_controlnet_image_to_tensor(dl_tensor *out, const uint8_t *rgb, int w, int h);

/* A Canny control image: edges (0 / 255) of img [h][w][channels] with
 * thresholds low, high (OpenCV's cv2.Canny, core/canny.h), the same map in
 * all three channels of rgb_out [h][w][3]. grey_first = 1 converts to grey
 * first (channels 1 or 3; cv2.cvtColor then cv2.Canny), 0 runs Canny on
 * the colour channels directly (channels 1..4, as the diffusers examples do
 * with cv2.Canny(rgb)). */
dl_status sd_controlnet_canny_image(const uint8_t *img, int w, int h, int channels, float low, float high,
                                    int grey_first, uint8_t *rgb_out);

#endif
