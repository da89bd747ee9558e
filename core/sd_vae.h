/* sd_vae.h - Stable Diffusion's image autoencoder: diffusers' AutoencoderKL
 * (encoder and decoder), inference only, weights by their diffusers names
 * from a checkpoint (core/sd_weights.h).
 *
 *   decode: latents z [B, 4, h, w] (the sampler's latents already divided by
 *           scaling_factor 0.18215) -> image [B, 3, 8h, 8w] in about [-1, 1]
 *   encode: image [B, 3, H, W] in [-1, 1] -> moments [B, 8, H/8, W/8]
 *           = [mean | logvar] of a diagonal Gaussian over the latents
 *
 * (8 = 2^(levels - 1) for SD's 4 levels of block_out_channels 128 256 512 512.)
 *
 * Decoder: post_quant_conv (1x1) -> conv_in -> mid block (ResnetBlock2D,
 * single-head self-attention, ResnetBlock2D) -> up blocks (layers_per_block+1
 * resnets each, channels reversed, nearest 2x + conv except the last) ->
 * GroupNorm -> SiLU -> conv_out.
 * Encoder: conv_in -> down blocks (layers_per_block resnets, then a stride-2
 * conv after a zero pad of one column right and one row bottom, except the
 * last) -> mid block -> GroupNorm -> SiLU -> conv_out (2 x latent channels)
 * -> quant_conv (1x1).
 * All GroupNorms here use eps 1e-6; there is no time embedding.
 *
 *     sd_vae v;  DL_TRY(sd_vae_init(&v, &weights));
 *     for (i ...) z.data[i] = latents.data[i] / v.cfg.scaling_factor;  // a division, like torch
 *     DL_TRY(sd_vae_decode(&v, &image, &z));        // image [1, 3, 512, 512]
 *     sd_vae_free(&v);
 */
#ifndef DL_SD_VAE_H
#define DL_SD_VAE_H

#include "sd_unet_blocks.h"
#include "sd_weights.h"
#include "tensor.h"

#define SD_VAE_MAX_LEVELS 8

typedef struct {
    int   in_channels, out_channels;              /* 3, 3 (images)                 */
    int   latent_channels;                        /* 4                             */
    int   levels;                                 /* len(block_out_channels)       */
    int   block_out_channels[SD_VAE_MAX_LEVELS];  /* 128 256 512 512              */
    int   layers_per_block;                       /* 2                             */
    int   norm_num_groups;                        /* 32                            */
    float scaling_factor;                         /* 0.18215                       */
    int   use_quant_conv, use_post_quant_conv;    /* 1, 1                          */
    int   mid_block_add_attention;                /* 1                             */
} sd_vae_config;

void sd_vae_config_sd15(sd_vae_config *c);
/* Parse vae/config.json; absent keys keep SD 1.5's values. */
dl_status sd_vae_config_parse(sd_vae_config *c, const char *json);
/* Image pixels per latent pixel along one axis: 2^(levels - 1). */
int sd_vae_downscale(const sd_vae_config *c);

typedef struct {
    sd_vae_config cfg;
    sd_weights   *weights;       /* borrowed                                       */
    dl_arena      scratch;       /* block temporaries, allocated per call          */
    size_t        scratch_peak;  /* floats of scratch the last call used           */
    sd_block_hook hook;          /* optional: every block's output                 */
    void         *hook_ctx;
} sd_vae;

dl_status sd_vae_init(sd_vae *v, sd_weights *w);              /* config from the checkpoint */
dl_status sd_vae_init_config(sd_vae *v, sd_weights *w, const sd_vae_config *cfg);
void      sd_vae_free(sd_vae *v);

/* image [B, out_channels, h*f, w*f] (preallocated, f = sd_vae_downscale),
 * z [B, latent_channels, h, w] = latents / scaling_factor. */
dl_status sd_vae_decode(sd_vae *v, dl_tensor *image, const dl_tensor *z);

/* moments [B, 2*latent_channels, H/f, W/f] (preallocated), image
 * [B, in_channels, H, W] with H, W multiples of f, values in [-1, 1]. */
dl_status sd_vae_encode(sd_vae *v, dl_tensor *moments, const dl_tensor *image);

/* DiagonalGaussianDistribution of the moments: mean = first half of the
 * channels, logvar = second half clamped to [-30, 20], std = exp(logvar / 2).
 * Each output [B, latent_channels, h, w] may be NULL. */
dl_status sd_vae_moments_split(const dl_tensor *moments, dl_tensor *mean, dl_tensor *logvar, dl_tensor *std);

#endif
