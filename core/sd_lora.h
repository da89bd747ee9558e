/* sd_lora.h - LoRA files for Stable Diffusion: load, resolve, apply with a
 * scale (on the fly or merged), and say which keys matched nothing.
 *
 * A LoRA (low-rank adaptation) changes some weights W [out, in] of the UNet
 * and of the text encoder by a product of two thin matrices:
 *
 *     W' = W + s * (alpha / rank) * up @ down
 *          up   [out, rank]     ("lora_up" / "lora_B")
 *          down [rank, in]      ("lora_down" / "lora_A")
 *          s    the LoRA scale the user picks (0 = off, 1 = as trained)
 *          alpha / rank         a constant the file stores (kohya ".alpha";
 *                               alpha = rank when the file has none)
 *
 * For a conv weight [out, C, kh, kw] the same holds with in = C * kh * kw:
 * down is [rank, C, kh, kw] and up is [out, rank, 1, 1] (1x1 or 3x3 convs).
 *
 * Two file formats, both read here (same numbers, different key names):
 *
 *   kohya / A1111   lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight
 *                   lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight, ... .alpha
 *                   The module path is flattened: every '.' became '_'. It
 *                   is resolved against the model itself: each '_' is read
 *                   as '.' or '_' until the name is a weight the checkpoint
 *                   has (sd_weights_has).
 *   diffusers/PEFT  unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight
 *                   text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight
 *                   (also the older ".lora.down/.lora.up",
 *                   ".lora_linear_layer.down/up" and
 *                   "attn1.processor.to_q_lora.down" spellings)
 *
 * Keys that modify nothing in this model (another architecture's layers,
 * LyCORIS variants, a second text encoder, shapes that do not fit) are never
 * dropped silently: they are listed in sd_lora.unmatched with the reason,
 * for the program to print.
 *
 * Applying. The models fetch weights by name right before use
 * (sd_weights_get), so the LoRA sits between the file and the model as a
 * patch of sd_weights (sd_weights_set_patch):
 *
 *   on the fly  sd_lora_apply: every affected tensor comes back as an owned
 *               copy W + sum of the deltas, at the scales of that moment.
 *               Changing a scale needs no reload of the LoRA: the UNet sees
 *               it at its next forward (it fetches per layer); the text
 *               encoder holds its weights, so clip_text_load it again.
 *               sd_lora_remove: the original weights again.
 *               Cost: one rank-r product per affected weight and fetch
 *               (out * in * rank multiply-adds), every UNet forward.
 *               (diffusers computes W x + s * up(down(x)) instead; same
 *               result up to float rounding, ~1e-6 on the tiny model.)
 *   merged      sd_lora_fuse: the merged weights are computed once (at the
 *               current scales) and served from then on; no work per fetch.
 *               sd_lora_unfuse restores the original bit-exactly: the
 *               merged tensors are copies, the checkpoint's own values
 *               were never touched (subtracting the delta again would
 *               not be exact in float32: (W + d) - d != W in general).
 *
 *     sd_lora_list loras;  sd_lora_list_init(&loras);
 *     DL_TRY(sd_lora_list_add(&loras, "style.safetensors:0.8", &w));   // "FILE[:scale]"
 *     for (int i = 0; i < loras.count; i++)
 *         for (int k = 0; k < loras.items[i]->n_unmatched; k++)
 *             printf("unmatched: %s (%s)\n", loras.items[i]->unmatched[k].key, loras.items[i]->unmatched[k].reason);
 *     DL_TRY(sd_lora_apply(&loras, &w));        // now sd_unet / clip_text_load see W'
 *     loras.items[0]->scale = 0.5f;             // next UNet forward uses 0.5
 *     sd_lora_remove(&loras);                   // W again
 *     sd_lora_list_free(&loras);                // before sd_weights_close(&w)
 */
#ifndef DL_SD_LORA_H
#define DL_SD_LORA_H

#include <stddef.h>
#include <stdint.h>

#include "dl_error.h"
#include "sd_weights.h"
#include "tensor.h"

typedef enum { SD_LORA_KOHYA, SD_LORA_DIFFUSERS } sd_lora_format;
extern const char *const sd_lora_format_names[2];   /* "kohya", "diffusers" */

/* One low-rank update of one weight. */
typedef struct {
    sd_part part;           /* SD_PART_UNET or SD_PART_TEXT_ENCODER                       */
    char    target[256];    /* the weight it changes, diffusers name ("...attn1.to_q.weight") */
    char    key[256];       /* the module's key in the file (without ".lora_down.weight")  */
    int     rank;
    float   alpha;          /* from the file, or = rank if it has none                     */
    int64_t out, in;        /* up [out, rank], down [rank, in]; in = C * kh * kw for convs */
    float  *up, *down;      /* owned float32 copies                                        */
} sd_lora_module;

/* A key of the file that changes nothing, and why. */
typedef struct {
    char key[256];
    char reason[256];
} sd_lora_unmatched;

typedef struct {
    char               path[512];
    sd_lora_format     format;       /* of most of its keys                                  */
    float              scale;        /* s above; may be changed at any time                  */
    int                n_keys;       /* tensors in the file                                  */
    int                n_modules;
    sd_lora_module    *modules;      /* sorted by (part, target)                             */
    int                n_unmatched;
    sd_lora_unmatched *unmatched;    /* in file order                                        */
} sd_lora;

/* Read a LoRA file and resolve every key against `model` (its names and
 * shapes; no weight is read). Fails only for an unreadable file or one with
 * no LoRA tensor at all; keys that match nothing go to l->unmatched. */
dl_status sd_lora_load(sd_lora *l, const char *path, sd_weights *model, float scale);
void      sd_lora_free(sd_lora *l);

/* The modules of l that change (part, name): *first is the index of the
 * first, the return value how many (0 if none). */
int sd_lora_find(const sd_lora *l, sd_part part, const char *name, int *first);

/* "FILE[:scale]" -> path and scale (1.0 without ":scale"). The scale is the
 * text after the last ':' and must be a finite number; errors name the spec. */
dl_status sd_lora_parse_spec(const char *spec, char *path, size_t size, float *scale);

/* W [out, in] += coef * up [out, rank] @ down [rank, in], row-major.
 * _ref: plain loops; the other: one cblas_sgemm (beta = 1). Same signature. */
void sd_lora_add_delta_ref(float *W, const float *up, const float *down, int64_t out, int64_t in, int rank,
                           float coef);
void sd_lora_add_delta(float *W, const float *up, const float *down, int64_t out, int64_t in, int rank,
                       float coef);

/* ------------------------------------------------------------------ */
/* Several LoRAs at once, each with its own scale.                     */

#define SD_LORA_MAX 16

typedef struct sd_lora_fused sd_lora_fused;   /* merged copies (sd_lora_fuse) */

typedef struct {
    sd_lora       *items[SD_LORA_MAX];   /* owned (sd_lora_list_add / _add_loaded)     */
    int            count;
    sd_weights    *attached;             /* the weights being patched, or NULL         */
    sd_lora_fused *fused;                /* non-NULL while merged weights are served   */
} sd_lora_list;

void      sd_lora_list_init(sd_lora_list *L);
/* Parse "FILE[:scale]", load it against `model` and append it. */
dl_status sd_lora_list_add(sd_lora_list *L, const char *spec, sd_weights *model);
/* Append an already loaded LoRA (the list takes it over: a heap copy of
 * *l is kept and *l is zeroed). */
dl_status sd_lora_list_add_loaded(sd_lora_list *L, sd_lora *l);
/* Removes the patch, frees every LoRA. Call before sd_weights_close. */
void      sd_lora_list_free(sd_lora_list *L);
/* Total unmatched keys over the list. */
int       sd_lora_list_unmatched(const sd_lora_list *L);

/* W (an owned float32 copy of weight (part, name), any shape with the
 * weight's number of elements) += every module of the list that targets
 * it, each at coef = scale * alpha / rank. *applied (may be NULL) = how
 * many. This is the merge step used by both modes below. */
dl_status sd_lora_merge_into(const sd_lora_list *L, sd_part part, const char *name, dl_tensor *W, int *applied);

/* On the fly: from now on sd_weights_get(w, ...) returns W + deltas (owned
 * copies) for affected tensors, at the scales current at each fetch. */
dl_status sd_lora_apply(sd_lora_list *L, sd_weights *w);
/* Merged: compute W + deltas once for every affected tensor (at the current
 * scales; later scale changes need sd_lora_fuse again) and serve those
 * (views of the merged copies; memory: one float32 copy per affected weight). */
dl_status sd_lora_fuse(sd_lora_list *L, sd_weights *w);
/* Back to the checkpoint's weights, bit-exactly (drops the merged copies;
 * a model that holds views of them, like clip_text_model, must be loaded
 * again). Same as sd_lora_remove. */
void      sd_lora_unfuse(sd_lora_list *L);
/* Detach from the weights (either mode): sd_weights_get is unpatched.
 * A sd_weights carries one patch: applying a second list replaces the
 * first one's, and removing either list unpatches the weights. */
void      sd_lora_remove(sd_lora_list *L);

#endif
