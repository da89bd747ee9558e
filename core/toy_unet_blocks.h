/* toy_unet_blocks.h - the building blocks of the toy U-Net (core/toy_unet.h),
 * forward and backward, each a small struct that holds pointers to its
 * named parameters (core/param.h) and the activations it saves for backward.
 *
 * The blocks are diffusers' UNet2DConditionModel blocks, small:
 *
 *   toy_resblock      ResnetBlock2D: GroupNorm -> SiLU -> conv 3x3 -> + time
 *                     embedding -> GroupNorm -> SiLU -> conv 3x3 -> + shortcut
 *   toy_transformer   Transformer2DModel with one BasicTransformerBlock:
 *                     GroupNorm -> proj_in (1x1) -> tokens -> self-attention,
 *                     cross-attention (on the class token), GEGLU feed-forward
 *                     (each with a LayerNorm before and a residual add after)
 *                     -> proj_out (1x1) -> + input
 *   toy_resample      Downsample2D (conv 3x3 stride 2) or Upsample2D (nearest
 *                     2x, then conv 3x3)
 *
 * Lifecycle of a block (toy_unet.c does this for every block):
 *
 *     toy_resblock rb;
 *     toy_resblock_init(&rb, &params, &rng, "down_blocks.0.resnets.0", 32, 64, 128, 8, 1e-5f, 16, 16);
 *     toy_resblock_plan(&rb, &planner, max_batch);       // saved activations, once
 *     toy_resblock_forward(&rb, &x, &temb_act, &scratch);  // x [B, 32, 16, 16], B <= max_batch
 *     ... rb.out: view it with toy_batch_view(&rb.out, B) ...
 *     toy_resblock_backward(&rb, &dx, &dtemb_act, &dout, &scratch);   // dx =, += into dtemb, grads
 *
 * Saved activations are allocated ONCE for max_batch; a smaller batch uses
 * the first B images of each (toy_batch_view). The scratch arena holds the
 * temporaries of one block's backward and is reset before the call returns.
 * Parameter gradients and the shared dtemb_act / dctx ACCUMULATE, like
 * every backward kernel of difflab. The input gradient dx is SET (written,
 * not added to): in the U-Net each block's input feeds only that block, so
 * its gradient buffer needs no zeroing first.
 */
#ifndef DL_TOY_UNET_BLOCKS_H
#define DL_TOY_UNET_BLOCKS_H

#include <stddef.h>

#include "param.h"
#include "rng.h"
#include "tensor.h"

/* The first B items of a tensor whose first dimension is the batch (a view). */
dl_tensor toy_batch_view(const dl_tensor *t, int B);

/* Arena floats that a tensor of n floats takes (its 64-byte alignment included). */
size_t toy_arena_floats(int64_t n);

/* A tensor carved from the scratch arena like dl_arena_tensor, but zeroed
 * (zero = 1) by all threads, or not at all (zero = 0: the caller overwrites
 * it). The gradients of one step are hundreds of MB at batch 64, and a
 * one-thread memset of them would cost ~5% of the step. */
dl_status toy_scratch_tensor(dl_arena *a, dl_tensor *t, int ndim, const int64_t shape[], int zero);
void      toy_zero_floats(float *p, int64_t n);

/* Plans the saved activations: with arena == NULL it only adds up the floats
 * they need (to size the arena), else it carves them from the arena. */
typedef struct { dl_arena *arena; size_t floats; } toy_planner;
dl_status toy_plan_tensor(toy_planner *p, dl_tensor *t, int ndim, const int64_t shape[]);

/* Parameters with PyTorch's default initialisation, drawn from rng:
 * conv / linear weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
 * (kaiming_uniform with a = sqrt(5)); norm weight 1, bias 0. */
dl_status toy_add_conv(dl_param_list *params, dl_rng *rng, const char *prefix, int cout, int cin,
                       int k, int bias, dl_param **w, dl_param **b);
dl_status toy_add_linear(dl_param_list *params, dl_rng *rng, const char *prefix, int out, int in,
                         int bias, dl_param **w, dl_param **b);
dl_status toy_add_norm(dl_param_list *params, const char *prefix, int channels, dl_param **w, dl_param **b);

/* ------------------------------------------------------------------ */
/* ResnetBlock2D:
 *   h   = conv1(silu(norm1(x))) + time_emb_proj(temb_act)[:, :, None, None]
 *   out = conv2(silu(norm2(h))) + (conv_shortcut(x) if in_ch != out_ch else x)
 * x [B, in_ch, H, W], temb_act = silu(temb) [B, temb_dim], out [B, out_ch, H, W]. */
typedef struct {
    char name[96];
    int in_ch, out_ch, temb_dim, H, W, groups;
    float eps;
    dl_param *norm1_w, *norm1_b, *conv1_w, *conv1_b, *temb_w, *temb_b;
    dl_param *norm2_w, *norm2_b, *conv2_w, *conv2_b;
    dl_param *short_w, *short_b;        /* conv_shortcut (1x1), NULL if in_ch == out_ch */
    /* saved by forward, [max_batch, ...] */
    dl_tensor x;                        /* the input (a view of the caller's tensor) */
    dl_tensor temb_act;                 /* the time input (a view)                   */
    dl_tensor a1;                       /* silu(norm1(x))              [B, in, H, W]  */
    dl_tensor tproj;                    /* time_emb_proj(temb_act)     [B, out]       */
    dl_tensor h, a2;                    /* conv1(a1) + tproj, silu(norm2(h)); the norms'
                                         * outputs are recomputed in backward, not kept */
    dl_tensor out;                      /* the block's output          [B, out, H, W] */
} toy_resblock;

dl_status toy_resblock_init(toy_resblock *b, dl_param_list *params, dl_rng *rng, const char *name,
                            int in_ch, int out_ch, int temb_dim, int groups, float eps, int H, int W);
dl_status toy_resblock_plan(toy_resblock *b, toy_planner *plan, int max_batch);
dl_status toy_resblock_forward(toy_resblock *b, const dl_tensor *x, const dl_tensor *temb_act,
                               dl_arena *scratch);
dl_status toy_resblock_backward(toy_resblock *b, dl_tensor *dx, dl_tensor *dtemb_act,
                                const dl_tensor *dout, dl_arena *scratch);
/* Scratch floats forward and backward need at batch B. */
size_t toy_resblock_scratch_floats(const toy_resblock *b, int B);

/* ------------------------------------------------------------------ */
/* Transformer2DModel (use_linear_projection = False: proj_in / proj_out are
 * 1x1 convs, as in Stable Diffusion 1.x) with one BasicTransformerBlock.
 * x [B, C, H, W] -> tokens t [B, L = H*W, C]:
 *   t  = proj_in(norm(x))                       (GroupNorm eps 1e-6)
 *   t += attn1(norm1(t))                        self-attention, heads
 *   t += attn2(norm2(t), ctx)                   cross-attention on ctx [B, Lc, ctx_dim]
 *   t += ff.net.2(h * gelu(g)),  (h, g) = ff.net.0.proj(norm3(t)) split in halves (GEGLU)
 *   out = proj_out(t) + x                       (LayerNorms eps 1e-5)
 * q/k/v projections have no bias, to_out.0 has one (diffusers defaults). */
typedef struct {
    char name[96];
    int C, H, W, L, heads, ctx_dim, ctx_len, groups;
    dl_param *norm_w, *norm_b, *proj_in_w, *proj_in_b, *proj_out_w, *proj_out_b;
    dl_param *ln1_w, *ln1_b, *q1_w, *k1_w, *v1_w, *o1_w, *o1_b;
    dl_param *ln2_w, *ln2_b, *q2_w, *k2_w, *v2_w, *o2_w, *o2_b;
    dl_param *ln3_w, *ln3_b, *ff0_w, *ff0_b, *ff2_w, *ff2_b;
    /* saved by forward, [max_batch, ...] */
    dl_tensor x, ctx;                   /* inputs (views)                              */
    dl_tensor gn;                       /* norm(x)                     [B, C, H, W]    */
    dl_tensor tok;                      /* gn as tokens                [B, L, C]       */
    dl_tensor t0, n1, q1, k1, v1, a1;   /* proj_in(tok), norm1, q/k/v, attention out    */
    dl_tensor t1, n2, q2, a2;           /* t0 + attn1, norm2, q, attention out          */
    dl_tensor k2, v2;                   /* from ctx                    [B, Lc, C]      */
    dl_tensor t2, n3;                   /* t1 + attn2, norm3                            */
    dl_tensor ffh, ffg, m;              /* GEGLU halves, ffh * gelu(ffg)   [B, L, 4C] */
    dl_tensor t3, po;                   /* t2 + ff, proj_out(t3)       [B, L, C]       */
    dl_tensor out;                      /* po as NCHW + x              [B, C, H, W]    */
} toy_transformer;

dl_status toy_transformer_init(toy_transformer *b, dl_param_list *params, dl_rng *rng, const char *name,
                               int C, int heads, int ctx_dim, int ctx_len, int groups, int H, int W);
dl_status toy_transformer_plan(toy_transformer *b, toy_planner *plan, int max_batch);
dl_status toy_transformer_forward(toy_transformer *b, const dl_tensor *x, const dl_tensor *ctx,
                                  dl_arena *scratch);
/* dx [B, C, H, W] is set; dctx [B, Lc, ctx_dim] accumulates (may be NULL). */
dl_status toy_transformer_backward(toy_transformer *b, dl_tensor *dx, dl_tensor *dctx,
                                   const dl_tensor *dout, dl_arena *scratch);
size_t toy_transformer_scratch_floats(const toy_transformer *b, int B);

/* ------------------------------------------------------------------ */
/* Downsample2D: out = conv 3x3 stride 2 pad 1 (x)          [B, C, H/2, W/2]
 * Upsample2D:   out = conv 3x3 pad 1 (nearest2x(x))        [B, C, 2H, 2W]
 * (H, W are the input's size.) */
typedef struct {
    char name[96];
    int up;                             /* 0 Downsample2D, 1 Upsample2D */
    int C, H, W;
    dl_param *conv_w, *conv_b;
    dl_tensor x;                        /* input (a view)                          */
    dl_tensor xu;                       /* Upsample2D: nearest2x(x) [B, C, 2H, 2W] */
    dl_tensor out;
} toy_resample;

dl_status toy_resample_init(toy_resample *b, dl_param_list *params, dl_rng *rng, const char *name,
                            int up, int C, int H, int W);
dl_status toy_resample_plan(toy_resample *b, toy_planner *plan, int max_batch);
dl_status toy_resample_forward(toy_resample *b, const dl_tensor *x);
dl_status toy_resample_backward(toy_resample *b, dl_tensor *dx, const dl_tensor *dout, dl_arena *scratch);
size_t toy_resample_scratch_floats(const toy_resample *b, int B);

#endif
