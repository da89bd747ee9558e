/* toy_unet.h - a small class-conditional U-Net, forward and backward, built
 * from the same blocks as Stable Diffusion's UNet2DConditionModel
 * (core/toy_unet_blocks.h) and with the same parameter names.
 *
 * Inputs: a noisy image x_t [B, C, S, S], its timestep t [B] and a class id
 * [B]. Output: the predicted noise eps [B, C, S, S].
 *
 *   t     -> sinusoidal embedding (dim block_out_channels[0]) -> time_embedding
 *            (linear_1, SiLU, linear_2) = temb [B, time_embed_dim]; every ResBlock
 *            adds a projection of SiLU(temb) to its channels
 *   class -> class_embedding (a table of num_classes + 1 rows: the last row is
 *            the "null" class for classifier-free guidance) = one token
 *            [B, 1, cross_attention_dim] that the cross-attention layers look at,
 *            as SD's layers look at the 77 text tokens
 *   x_t   -> conv_in -> down_blocks (ResBlocks [+ Transformer2D], Downsample2D)
 *         -> mid_block (ResBlock, Transformer2D, ResBlock)
 *         -> up_blocks (ResBlocks on [h, skip] concatenated [+ Transformer2D], Upsample2D)
 *         -> conv_norm_out, SiLU, conv_out -> eps
 *
 *     toy_unet_config cfg;
 *     toy_unet_config_default(&cfg, "mnist");
 *     toy_unet *net;
 *     if (toy_unet_create(&net, &cfg, 64, 1234) != DL_OK) dl_die(NULL);
 *     dl_params_zero_grad(toy_unet_params(net));
 *     toy_unet_forward(net, &x_t, t, labels, &eps_pred);      // B <= 64
 *     ... deps = dLoss/deps_pred ...
 *     toy_unet_backward(net, &deps);                          // grads += into params
 *     toy_unet_free(net);
 *
 * Memory: everything the backward pass needs is allocated by toy_unet_create
 * for max_batch images (two arenas); forward and backward do no malloc.
 */
#ifndef DL_TOY_UNET_H
#define DL_TOY_UNET_H

#include <stddef.h>
#include <stdint.h>

#include "param.h"
#include "tensor.h"

#define TOY_UNET_MAX_LEVELS 4
#define TOY_UNET_MAX_LAYERS 4     /* layers_per_block */

typedef struct {
    int in_channels;              /* 1 MNIST, 3 emoji */
    int image_size;               /* 32 */
    int levels;                   /* number of resolutions, e.g. 3: 32x32, 16x16, 8x8 */
    int block_out_channels[TOY_UNET_MAX_LEVELS];   /* per level, e.g. {16, 32, 64} */
    int layers_per_block;         /* ResBlocks per level (down); up has layers_per_block + 1 like diffusers */
    int attention_levels;         /* bit mask: bit i = level i has Transformer2D; the mid block always has one */
    int num_classes;              /* 10; the null class (CFG) is index num_classes */
    int cross_attention_dim;      /* class-token width, e.g. 64 */
    int heads;                    /* attention heads (head dim = channels / heads) */
    int norm_groups;              /* GroupNorm groups (must divide every channel count) */
    int time_embed_dim;           /* 4 * block_out_channels[0] as in diffusers */
} toy_unet_config;

/* The configs the lessons train: "mnist" (1 channel, 10 classes) or "emoji" (3, 8). */
dl_status toy_unet_config_default(toy_unet_config *cfg, const char *dataset);
/* DL_ERR_ARG with a message naming the field if the config cannot be built. */
dl_status toy_unet_config_check(const toy_unet_config *cfg);
/* {"in_channels": 1, ..., "block_out_channels": [16, 32, 64], ...} */
dl_status toy_unet_config_to_json(const toy_unet_config *cfg, char *buf, size_t size);
/* Parses the JSON above (every field required) and checks the result. */
dl_status toy_unet_config_from_json(toy_unet_config *cfg, const char *json);

typedef struct toy_unet toy_unet;

/* Build the network with PyTorch-like default init from init_seed (dl_rng). */
dl_status toy_unet_create(toy_unet **out, const toy_unet_config *cfg, int max_batch, uint64_t init_seed);
void      toy_unet_free(toy_unet *net);

dl_param_list         *toy_unet_params(toy_unet *net);
const toy_unet_config *toy_unet_get_config(const toy_unet *net);
int                    toy_unet_max_batch(const toy_unet *net);
/* Bytes held for activations and backward scratch (both arenas). */
size_t                 toy_unet_memory_bytes(const toy_unet *net);

/* eps_out [B, C, S, S] = model(x [B, C, S, S], timesteps [B], class_ids [B]).
 * B <= max_batch; class ids in 0..num_classes (num_classes = null class). */
dl_status toy_unet_forward(toy_unet *net, const dl_tensor *x, const float *timesteps,
                           const int *class_ids, dl_tensor *eps_out);

/* After a forward with the same batch: deps = dLoss/deps_out [B, C, S, S].
 * ACCUMULATES into every parameter's grad (zero them first). */
dl_status toy_unet_backward(toy_unet *net, const dl_tensor *deps);
/* The same, and also dx += dLoss/dx (dx [B, C, S, S], or NULL). */
dl_status toy_unet_backward_ex(toy_unet *net, const dl_tensor *deps, dl_tensor *dx);

/* Lesson 02: cb is called after each block of the forward pass with the
 * block's name ("down_blocks.0.resnets.0", ...) and its output. NULL = off. */
void toy_unet_set_trace(toy_unet *net, void (*cb)(void *ctx, const char *block, const dl_tensor *t), void *ctx);

#endif
