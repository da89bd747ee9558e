/* sd_unet_blocks.h - the inference building blocks shared by the Stable
 * Diffusion UNet (core/sd_unet.h) and VAE (core/sd_vae.h), with diffusers'
 * module names and semantics.
 *
 *   sd_resnet_forward       ResnetBlock2D: GroupNorm -> SiLU -> conv 3x3
 *                           (+ time embedding) -> GroupNorm -> SiLU -> conv 3x3
 *                           -> + shortcut (1x1 conv when the channels change)
 *   sd_transformer_forward  Transformer2DModel: GroupNorm -> proj_in -> tokens
 *                           -> BasicTransformerBlock(s) (self-attention,
 *                           cross-attention, GEGLU feed-forward) -> proj_out
 *                           -> + input
 *   sd_vae_attention_forward the VAE's single-head spatial self-attention
 *   sd_downsample_forward   Downsample2D: conv 3x3 stride 2 (padding 1, or the
 *                           VAE's asymmetric zero pad right/bottom + padding 0)
 *   sd_upsample_forward     Upsample2D: nearest to the output size, conv 3x3
 *
 * Unlike the toy U-Net (core/toy_unet_blocks.h) nothing is kept for a
 * backward pass and no weight stays in memory: every block asks the weight
 * store for its tensors right before the op that uses them and lets go right
 * after, so fp16 checkpoints are widened one layer at a time. Temporaries of
 * a block come from a scratch arena (a stack: the block resets it to where it
 * found it); the caller allocates the block's output. Sizes of that scratch
 * are given by the *_scratch_floats functions next to each block.
 *
 *     sd_ctx c = {.w = &weights, .part = SD_PART_UNET, .arena = &scratch, .groups = 32};
 *     DL_TRY(sd_resnet_forward(&c, "down_blocks.0.resnets.0", &out, &x, &temb_act, 1e-5f));
 */
#ifndef DL_SD_UNET_BLOCKS_H
#define DL_SD_UNET_BLOCKS_H

#include <stddef.h>

#include "sd_weights.h"
#include "tensor.h"

/* Called with every named intermediate (e.g. "down_blocks.1.attentions.0");
 * t is only valid during the call. */
typedef void (*sd_block_hook)(void *ctx, const char *name, const dl_tensor *t);

typedef struct {
    sd_weights   *w;          /* where the weights come from                      */
    sd_part       part;       /* SD_PART_UNET or SD_PART_VAE                      */
    dl_arena     *arena;      /* block temporaries                                */
    int           groups;     /* GroupNorm groups (norm_num_groups)               */
    sd_block_hook hook;       /* may be NULL                                      */
    void         *hook_ctx;
} sd_ctx;

/* Report an intermediate to the hook (if any): name = prefix[.suffix]. */
void sd_emit(const sd_ctx *c, const char *prefix, const char *suffix, const dl_tensor *t);

/* A scratch tensor carved off the arena, NOT zeroed (the op overwrites it). */
dl_status sd_scratch_tensor(dl_arena *a, dl_tensor *t, int ndim, const int64_t shape[]);
/* Floats a tensor of n floats takes in the arena (64-byte alignment included). */
size_t sd_arena_floats(int64_t n);

/* Copy NCHW [B, C, L=H*W] into tokens [B, L, C] and back. */
void sd_nchw_to_tokens(float *tok, const float *x, int B, int C, int L);
void sd_tokens_to_nchw(float *x, const float *tok, int B, int C, int L);

/* ResnetBlock2D "<prefix>.{norm1,conv1,time_emb_proj,norm2,conv2,conv_shortcut}".
 *   x [B, Ci, H, W], temb_act = silu(temb) [B, T] or NULL (the VAE has no time
 *   input), out [B, Co, H, W] (preallocated, must not overlap x).
 * Scratch: one [B, max(Ci, Co), H, W] tensor (+ [B, Co]). */
dl_status sd_resnet_forward(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x,
                            const dl_tensor *temb_act, float eps);
size_t sd_resnet_scratch_floats(int B, int Ci, int Co, int H, int W);

/* Transformer2DModel "<prefix>.{norm,proj_in,transformer_blocks.N.*,proj_out}".
 *   x [B, C, H, W], context [B, Lc, Dc] (encoder_hidden_states),
 *   out [B, C, H, W] (preallocated, must not overlap x).
 * heads = number of attention heads (head size C / heads), layers = number
 * of BasicTransformerBlocks, linear_proj = 1 for SD 2.x (proj_in/out are
 * Linear [C, C]) and 0 for SD 1.x (1x1 convs [C, C, 1, 1]).
 * Hooks: "<prefix>.transformer_blocks.N.{attn1,attn2,ff}" [B, H*W, C] (the
 * sub-layer outputs before their residual add). */
dl_status sd_transformer_forward(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x,
                                 const dl_tensor *context, int heads, int layers, int linear_proj);
size_t sd_transformer_scratch_floats(int B, int C, int H, int W, int Lc);

/* The VAE's mid-block Attention "<prefix>.{group_norm,to_q,to_k,to_v,to_out.0}"
 * (all with bias), one head over all C channels, eps 1e-6, + input.
 *   x [B, C, H, W] -> out [B, C, H, W] (preallocated, not overlapping x). */
dl_status sd_vae_attention_forward(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x);
size_t sd_vae_attention_scratch_floats(int B, int C, int H, int W);

/* Downsample2D "<prefix>.conv": 3x3 stride 2.
 *   padding 1: symmetric zero padding (UNet), out [B, C, (H+1)/2, (W+1)/2]
 *   padding 0: zero pad one column right and one row bottom first, then no
 *              padding (the VAE encoder), out [B, C, H/2, W/2]
 * (integer division). Scratch: the padded copy [B, C, H+1, W+1] for padding 0. */
dl_status sd_downsample_forward(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x,
                                int padding);
size_t sd_downsample_scratch_floats(int B, int C, int H, int W, int padding);
/* Output size along one axis of sd_downsample_forward. */
int sd_downsample_size(int in, int padding);

/* Upsample2D "<prefix>.conv": nearest-neighbour resize of x [B, C, H, W] to
 * out's size (2H x 2W normally; diffusers passes the skip's size when the
 * latent is not divisible by the UNet's total stride), then conv 3x3 pad 1.
 * Scratch: [B, C, Ho, Wo]. */
dl_status sd_upsample_forward(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x);
size_t sd_upsample_scratch_floats(int B, int C, int Ho, int Wo);

/* Where the time goes: while a profile is set, the ops of every block add
 * their seconds (wall clock) and FLOPs to it, by kind. FLOPs are counted
 * from the shapes (2 per multiply-add): conv 2 B Co Ho Wo Ci k k, linear
 * 2 rows in out, attention 4 B Lq Lk C (its two matmuls); norms and GEGLU
 * count none. "weights" is the time sd_weights_get takes (widening fp16).
 * Off by default (NULL): then it costs one pointer test per op. Not
 * thread-safe: one profile for the whole process (bin/bench_sd). */
typedef enum { SD_OP_CONV, SD_OP_LINEAR, SD_OP_ATTENTION, SD_OP_GEGLU, SD_OP_NORM, SD_OP_WEIGHTS,
               SD_OP_KINDS } sd_op_kind;
extern const char *const sd_op_names[SD_OP_KINDS];   /* "conv", "linear", ... */
typedef struct {
    double seconds[SD_OP_KINDS];
    double flops[SD_OP_KINDS];
    long   calls[SD_OP_KINDS];
} sd_profile;
void sd_set_profile(sd_profile *p);   /* NULL: off */

/* Fetch "<prefix>.<suffix>" with the given shape (float32; free with
 * dl_tensor_free). */
dl_status sd_get_weight(const sd_ctx *c, dl_tensor *t, const char *prefix, const char *suffix,
                        int ndim, const int64_t shape[]);

/* GroupNorm "<prefix>.{weight,bias}" over C channels, out may be x. */
dl_status sd_group_norm(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x, float eps);
/* LayerNorm "<prefix>.{weight,bias}" over the last dimension, out may be x. */
dl_status sd_layer_norm(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x, float eps);
/* Linear "<prefix>.weight" [out, in] (+ "<prefix>.bias" if has_bias) on the
 * last dimension of x. */
dl_status sd_linear(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x, int has_bias);
/* Conv2d "<prefix>.{weight,bias}", square kernel k [Cout, Cin, k, k]. */
dl_status sd_conv(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x, int k, int stride,
                  int padding);

#endif
