/* sd_weights.h - Stable Diffusion weights by their diffusers names, from
 * either of the two ways checkpoints are published.
 *
 *   a diffusers folder   model_index.json, text_encoder/model.safetensors,
 *                        unet/diffusion_pytorch_model[.fp16].safetensors,
 *                        vae/diffusion_pytorch_model[.fp16].safetensors, and
 *                        each part's config.json
 *   one single file      the original CompVis/LDM key naming
 *                        (model.diffusion_model.*, first_stage_model.*,
 *                        cond_stage_model.transformer.*), e.g.
 *                        v1-5-pruned-emaonly.safetensors; SD 2.x files
 *                        with OpenCLIP's cond_stage_model.model.* names
 *                        (q/k/v are row thirds of its in_proj_weight)
 *
 * Models ask for a tensor by the name it has in the diffusers state dict of
 * its part ("down_blocks.0.resnets.1.conv1.weight" in the UNet,
 * "text_model.encoder.layers.0.mlp.fc1.weight" in the text encoder) and the
 * shape they expect; the loader translates the name for single files, maps
 * the file, checks the shape and hands back float32 (fp16/bf16 widened).
 * Files stay memory-mapped; float32 tensors are views into the mapping.
 *
 *     sd_weights w;
 *     DL_TRY(sd_weights_open(&w, "models/tiny-sd"));       // folder or .safetensors
 *     dl_tensor k;
 *     DL_TRY(sd_weights_get(&w, SD_PART_UNET, "conv_in.weight", 4, DL_SHAPE(32, 4, 3, 3), &k));
 *     ...
 *     dl_tensor_free(&k); sd_weights_close(&w);
 */
#ifndef DL_SD_WEIGHTS_H
#define DL_SD_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "dl_error.h"
#include "tensor.h"

typedef enum { SD_PART_TEXT_ENCODER, SD_PART_UNET, SD_PART_VAE, SD_PART_COUNT } sd_part;
extern const char *const sd_part_names[SD_PART_COUNT];   /* "text_encoder", "unet", "vae" */

typedef enum { SD_LAYOUT_DIFFUSERS, SD_LAYOUT_SINGLE_FILE } sd_layout;

typedef struct sd_weights_impl sd_weights_impl;   /* opaque: mapped files, name tables */
typedef struct {
    sd_layout layout;
    char path[1024];          /* the folder or the single file, as given            */
    sd_weights_impl *impl;
} sd_weights;

/* path: a diffusers folder (has model_index.json or unet/) or a single
 * .safetensors checkpoint. Prefers the fp32 files in a folder and falls back
 * to the *.fp16.safetensors variant. A missing folder part names the file
 * that is missing. */
dl_status sd_weights_open(sd_weights *w, const char *path);
void      sd_weights_close(sd_weights *w);

/* One model folder on its own - e.g. a ControlNet: config.json +
 * diffusion_pytorch_model[.fp16].safetensors - served as part `as_part`
 * (its tensors are asked for by their diffusers names, like that part's;
 * sd_weights_config_json(w, as_part) gives its config.json). The other parts
 * stay empty: asking them for a tensor reports it missing. */
dl_status sd_weights_open_component(sd_weights *w, const char *folder, sd_part as_part);

/* Fill *out with the float32 values of the tensor `name` (diffusers name
 * within `part`) of the given shape. *out must be freed with dl_tensor_free
 * (a view of the mapping when the file holds float32, else an owned copy);
 * views stay valid until sd_weights_close. Shapes that differ only by
 * trailing 1s match: the VAE attention's q/k/v/proj_out are [C, C, 1, 1]
 * 1x1 convs in single files and [C, C] linears in diffusers folders, and
 * either may be asked for (same values, same layout).
 * Errors name the part, the tensor and the file: missing tensor, shape
 * mismatch (both shapes), unsupported dtype. */
dl_status sd_weights_get(sd_weights *w, sd_part part, const char *name,
                         int ndim, const int64_t shape[], dl_tensor *out);

/* Keeping widened weights: memory against speed.
 *
 * fp16 / bf16 checkpoints are widened to float32 at every sd_weights_get,
 * and the models fetch their weights per layer right before use, so every
 * UNet call widens all of them again (SD 1.5: 860 M values, 3.4 GB of
 * float32 written per call; about 0.5 - 1 s per call on 2 cores with F16C,
 * 6 s with the scalar conversion). With the cache on, a part's tensors are
 * widened once, kept, and handed out as views: later calls read float32
 * directly. The price is memory: the part's float32 size stays allocated
 * (SD 1.5 UNet 3.44 GB, VAE 0.33 GB, text encoder 0.49 GB) while the fp16
 * pages of a cached tensor are released from the mapping (the file stays
 * mapped; the kernel may re-read it). float32 files need no cache (their
 * tensors are views of the mapping already); the mode changes nothing there.
 *
 *   SD_CACHE_OFF   (the default) widen per fetch: peak memory stays at one
 *                  layer's float32 on top of the mapped file
 *   SD_CACHE_ON    keep every widened tensor
 *   SD_CACHE_AUTO  on if the part's float32 size fits in half of the memory
 *                  available (MemAvailable) at its first fetch; what a
 *                  program running many UNet steps should pick unless told
 *                  to save memory
 *
 * Measured by bin/bench_sd (SD 1.5 shapes, fp16, one UNet call at batch 2
 * and 64x64 latents, 2 cores shared with other jobs, load average ~4.5):
 * cache off 38.3 s per call of which 2.6 s widening, peak RSS 2.05 GB (the
 * mapped fp16 file included); cached 34.6 s per call, peak RSS 3.65 GB; the
 * first call with the cache on 52 s (it writes 3.2 GB of fresh memory,
 * which is slow on this virtual machine). Switching a part to OFF frees its
 * copies: a model that holds views of them (clip_text_model) must be loaded
 * again. */
typedef enum { SD_CACHE_OFF, SD_CACHE_ON, SD_CACHE_AUTO } sd_cache_mode;
dl_status sd_weights_set_cache(sd_weights *w, sd_part part, sd_cache_mode mode);
/* Is the cache on for the part (AUTO resolved; 0 for float32 files)? */
int    sd_weights_cache_on(sd_weights *w, sd_part part);
/* Bytes of float32 copies the cache holds now (all parts). */
size_t sd_weights_cache_bytes(const sd_weights *w);
/* Bytes the part's non-float32 tensors take once widened (what caching the
 * whole part costs; 0 for float32 files). */
size_t sd_weights_widened_bytes(sd_weights *w, sd_part part);

/* Does the tensor exist (e.g. optional biases, conv_shortcut)? */
int sd_weights_has(sd_weights *w, sd_part part, const char *name);

/* The shape of a tensor as stored in the file (up to 8 dims; a scalar has
 * ndim 0), to read sizes off the weights of a single file that has no
 * config. Missing tensor: DL_ERR_FORMAT naming part, tensor and file. */
dl_status sd_weights_shape(sd_weights *w, sd_part part, const char *name, int *ndim, int64_t shape[8]);

/* The part's config.json as text (diffusers folders; NULL for single files,
 * which use SD 1.5's default configs, unless sd_weights_set_config_dir gave
 * some). Owned by w. */
const char *sd_weights_config_json(sd_weights *w, sd_part part);

/* Single files carry no config. For a checkpoint that is not SD 1.5-shaped
 * (like the tiny test model) take the three config.json files from a
 * diffusers-layout folder: <folder>/{text_encoder,unet,vae}/config.json
 * (what diffusers' from_single_file(config=...) does). Missing file: named. */
dl_status sd_weights_set_config_dir(sd_weights *w, const char *folder);

/* The file a part's tensors come from (for messages). */
const char *sd_weights_file(sd_weights *w, sd_part part);

/* Weight patches (used by core/sd_lora.h for LoRA). If a patch is set,
 * every tensor sd_weights_get returns first passes through fn, which may
 * replace *t (freeing the old one) by an owned copy with changed values or
 * by a view of memory the patch owns. The files themselves are never
 * written: sd_weights_set_patch(w, NULL, NULL) gives the original weights
 * back, bit for bit. One patch at a time (setting one replaces the last);
 * sd_weights_has / _shape are not affected. */
typedef dl_status (*sd_weights_patch_fn)(void *ctx, sd_part part, const char *name, dl_tensor *t);
void sd_weights_set_patch(sd_weights *w, sd_weights_patch_fn fn, void *ctx);

/* The key that `name` has in the file: unchanged for folders, the
 * CompVis/LDM name for single files, e.g. unet "down_blocks.1.resnets.0.conv1.weight"
 * -> "model.diffusion_model.input_blocks.4.0.in_layers.2.weight". */
dl_status sd_weights_ldm_name(sd_weights *w, sd_part part, const char *name, char *out, size_t size);

#endif
