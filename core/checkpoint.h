/* checkpoint.h - save a training run to one .safetensors file and resume it
 * exactly: weights, EMA weights, AdamW moments, step and RNG position.
 *
 *     dl_checkpoint_save("out/toy.safetensors", params, &ema, &opt, &rng, step, config_json);
 *     ...
 *     int64_t step;  char cfg[1024];
 *     dl_checkpoint_load("out/toy.safetensors", params, &ema, &opt, &rng, &step, cfg, sizeof cfg);
 *
 * File contents (a normal safetensors file: PyTorch can read it):
 *     "<param name>"            F32  the live weights, diffusers names
 *     "ema.<param name>"        F32  EMA weights            (if ema given)
 *     "optim.m.<param name>"    F32  AdamW first moment     (if opt given)
 *     "optim.v.<param name>"    F32  AdamW second moment    (if opt given)
 *     "rng_state"               U8   the bytes of the dl_rng struct (if rng given)
 *     __metadata__: "format" = "difflab-toy-unet-1", "step", "difflab_config"
 *                   (the model config as JSON), "optim_step" (AdamW's own
 *                   count), "weights" = "live" or "ema" (see below).
 * The file is written to a temporary name and renamed (dl_st_writer_save),
 * so a crash or Ctrl-C during saving never leaves half a checkpoint.
 *
 * Shipping: dl_checkpoint_save_ema_weights writes ONLY the EMA weights,
 * under the plain parameter names (half the size, no optimizer state). Any
 * loader reads "<name>", so such a file loads into plain params for sampling.
 */
#ifndef DL_CHECKPOINT_H
#define DL_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "optim.h"
#include "param.h"
#include "rng.h"

#define DL_CHECKPOINT_FORMAT "difflab-toy-unet-1"

/* ema, opt, rng may be NULL (not saved); config_json may be NULL ("{}"). */
dl_status dl_checkpoint_save(const char *path, const dl_param_list *params, const dl_ema *ema,
                             const dl_adamw *opt, const dl_rng *rng, int64_t step,
                             const char *config_json);

/* The EMA weights stored as the plain "<name>" tensors, nothing else
 * (metadata "weights" = "ema"): the file to ship for sampling. */
dl_status dl_checkpoint_save_ema_weights(const char *path, const dl_param_list *params,
                                         const dl_ema *ema, int64_t step, const char *config_json);

/* Load into existing, already-built objects (the model must be created from
 * the config first; read the config alone with dl_checkpoint_read_config).
 *   params  required: every parameter must be in the file with the same
 *           shape, and every plain tensor of the file must be a parameter;
 *           otherwise DL_ERR_FORMAT "... wrong architecture: ..." naming the
 *           tensor. Nothing is modified unless all checks pass.
 *   ema     NULL = skip. If the file has no "ema.*" tensors (an EMA-only or
 *           live-only file) the EMA restarts as a copy of the loaded weights.
 *   opt     NULL = skip. Without "optim.*" tensors the moments restart at 0
 *           and opt->step at 0 (fine-tuning from a shipped file).
 *   rng     NULL = skip; without "rng_state" it is left unchanged.
 *   step    NULL = skip; 0 if the file has none.
 *   config_json / config_size: the "difflab_config" text ("" if none);
 *           NULL / 0 = skip.
 * A truncated or corrupt file is DL_ERR_FORMAT naming the file. */
dl_status dl_checkpoint_load(const char *path, dl_param_list *params, dl_ema *ema, dl_adamw *opt,
                             dl_rng *rng, int64_t *step, char *config_json, size_t config_size);

/* Only the "difflab_config" metadata (to build the model before loading).
 * DL_ERR_FORMAT if the file has none. */
dl_status dl_checkpoint_read_config(const char *path, char *config_json, size_t config_size);

#endif
