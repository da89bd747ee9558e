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

/* The key that `name` has in the file: unchanged for folders, the
 * CompVis/LDM name for single files, e.g. unet "down_blocks.1.resnets.0.conv1.weight"
 * -> "model.diffusion_model.input_blocks.4.0.in_layers.2.weight". */
dl_status sd_weights_ldm_name(sd_weights *w, sd_part part, const char *name, char *out, size_t size);

#endif
