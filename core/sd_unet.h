/* sd_unet.h - the Stable Diffusion 1.x / 2.x denoiser: diffusers'
 * UNet2DConditionModel, inference only, weights read by their diffusers
 * names from a checkpoint (core/sd_weights.h).
 *
 *   sample [B, 4, h, w] (latents), timesteps [B], encoder_hidden_states
 *   [B, 77, D] (the text encoder's last_hidden_state)  ->  out [B, 4, h, w]
 *   (the predicted noise, or v for v-prediction checkpoints).
 *
 * The network, level by level (SD 1.5: block_out_channels 320 640 1280 1280):
 *
 *   time_proj      sinusoidal features of t            [B, C0]
 *   time_embedding linear -> SiLU -> linear             [B, 4 C0]
 *   conv_in        3x3 conv, 4 -> C0                    [B, C0, h, w]     -> skip
 *   down_blocks.i  layers_per_block x (ResnetBlock2D [+ Transformer2DModel])  -> skip each
 *                  + Downsample2D (stride-2 conv) except the last level   -> skip
 *   mid_block      ResnetBlock2D, Transformer2DModel, ResnetBlock2D
 *   up_blocks.i    (layers_per_block + 1) x (concat the last skip on the
 *                  channels, ResnetBlock2D [+ Transformer2DModel])
 *                  + Upsample2D (nearest 2x, 3x3 conv) except the last
 *   conv_norm_out  GroupNorm -> SiLU -> conv_out 3x3    [B, 4, h, w]
 *
 * Memory: weights are fetched per layer and released right after (fp16
 * checkpoints are widened one layer at a time); the skips and the current
 * block's input/output are separate allocations freed as soon as they are
 * used; a block's temporaries come from a scratch arena sized for the
 * largest block at the current batch and latent size (see
 * sd_unet_scratch_floats). Attention is computed in chunks of queries
 * (core/attention.h), never as a full [heads, 4096, 4096] matrix.
 *
 *     sd_weights w;  DL_TRY(sd_weights_open(&w, "models/sd15"));
 *     sd_unet u;     DL_TRY(sd_unet_init(&u, &w));
 *     float t[2] = {999, 999};
 *     DL_TRY(sd_unet_forward(&u, &eps, &latents, t, &text_emb, NULL));
 *     sd_unet_free(&u);  sd_weights_close(&w);
 */
#ifndef DL_SD_UNET_H
#define DL_SD_UNET_H

#include "sd_unet_blocks.h"
#include "sd_weights.h"
#include "tensor.h"

#define SD_UNET_MAX_LEVELS 8
/* conv_in + per level: layers_per_block resnets + a downsampler */
#define SD_UNET_MAX_SKIPS 64

typedef struct {
    int   in_channels, out_channels;            /* 4, 4                                      */
    int   levels;                               /* len(block_out_channels)                   */
    int   block_out_channels[SD_UNET_MAX_LEVELS];
    int   layers_per_block;                     /* 2                                         */
    int   down_attn[SD_UNET_MAX_LEVELS];        /* 1 = CrossAttnDownBlock2D, 0 = DownBlock2D  */
    int   up_attn[SD_UNET_MAX_LEVELS];          /* up_blocks order: 1 = CrossAttnUpBlock2D    */
    int   heads[SD_UNET_MAX_LEVELS];            /* attention heads per level (down order)    */
    int   transformer_layers[SD_UNET_MAX_LEVELS]; /* BasicTransformerBlocks per attention     */
    int   cross_attention_dim;                  /* 768 (SD 1.x), 1024 (SD 2.x)               */
    int   use_linear_projection;                /* SD 2.x: proj_in/out are Linear            */
    int   norm_num_groups;                      /* 32                                        */
    float norm_eps;                             /* 1e-5                                      */
    int   flip_sin_to_cos;                      /* 1                                         */
    float freq_shift;                           /* 0                                         */
    int   time_embed_dim;                       /* 4 * block_out_channels[0]                 */
    int   downsample_padding;                   /* 1                                         */
    int   conv_in_kernel, conv_out_kernel;      /* 3, 3                                      */
    int   center_input_sample;                  /* 0: if 1, sample = 2 sample - 1 first      */
    int   upcast_attention;                     /* read, but fp32 needs no upcast            */
    int   sample_size;                          /* 64: latent size the model was trained at  */
} sd_unet_config;

/* SD 1.5's configuration (used for single-file checkpoints). */
void sd_unet_config_sd15(sd_unet_config *c);

/* Parse a diffusers unet/config.json. Keys that are absent keep SD 1.5's
 * values; features outside SD 1.x/2.x (class or addition embeddings, other
 * block types, time_cond_proj_dim ...) give DL_ERR_FORMAT naming the key. */
dl_status sd_unet_config_parse(sd_unet_config *c, const char *json);

/* Number of skip tensors the down path makes (12 for SD 1.5) and the
 * channels / downscale factor of skip k (what ControlNet residuals must match). */
int sd_unet_num_skips(const sd_unet_config *c);
void sd_unet_skip_info(const sd_unet_config *c, int k, int *channels, int *downscale);

typedef struct {
    sd_unet_config cfg;
    sd_weights    *weights;      /* borrowed; must outlive the sd_unet              */
    dl_arena       scratch;      /* block temporaries (grown when the shape grows)  */
    sd_block_hook  hook;         /* optional: called with every block's output      */
    void          *hook_ctx;
} sd_unet;

/* Read the config from the checkpoint (SD 1.5's for single files). Weights
 * are not read here; a missing or misshapen tensor is reported by the first
 * forward, naming it. */
dl_status sd_unet_init(sd_unet *u, sd_weights *w);
/* Same with an explicit configuration. */
dl_status sd_unet_init_config(sd_unet *u, sd_weights *w, const sd_unet_config *cfg);
void      sd_unet_free(sd_unet *u);

/* ControlNet's extra inputs: down[k] is added to skip k (shape of that skip:
 * sd_unet_skip_info), mid to the mid block's output. NULL = none. */
typedef struct {
    const dl_tensor *down[SD_UNET_MAX_SKIPS];
    int              n_down;                   /* must be sd_unet_num_skips() */
    const dl_tensor *mid;
} sd_unet_residuals;

/* out [B, out_channels, h, w] (preallocated), sample [B, in_channels, h, w],
 * timesteps: B floats (diffusers' timesteps, e.g. 999 .. 1), context
 * [B, L, cross_attention_dim]. extra may be NULL.
 * Hooks (if set) receive: time_proj, time_embedding, conv_in,
 * down_blocks.i.{resnets.j, attentions.j[.transformer_blocks.n.{attn1,attn2,ff}],
 * hidden_states, res_samples.k}, mid_block, up_blocks.i (after its upsampler,
 * plus up_blocks.i.resnets.j / attentions.j), conv_norm_out, conv_act, conv_out. */
dl_status sd_unet_forward(sd_unet *u, dl_tensor *out, const dl_tensor *sample, const float *timesteps,
                          const dl_tensor *context, const sd_unet_residuals *extra);

/* Scratch-arena floats one forward needs at batch B, latent h x w and
 * context length Lc (the largest block's temporaries). */
size_t sd_unet_scratch_floats(const sd_unet_config *c, int B, int h, int w, int Lc);

#endif
