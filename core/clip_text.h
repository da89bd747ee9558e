/* clip_text.h - the CLIP text encoder of Stable Diffusion (transformers'
 * CLIPTextModel): 77 token ids in, 77 context vectors out.
 *
 *   ids [B, L]                                    (L <= 77, from the tokenizer)
 *   x = token_embedding[ids] + position_embedding[0 .. L-1]       [B, L, hidden]
 *   N times (pre-LayerNorm transformer layer):
 *       x = x + out_proj(causal_self_attention(layer_norm1(x)))
 *       x = x + fc2(act(fc1(layer_norm2(x))))        act = quick_gelu (SD 1.x) | gelu (SD 2.x)
 *   last_hidden_state = final_layer_norm(x)                       [B, L, hidden]
 *   pooled[b] = last_hidden_state[b, position of the EOS token]   [B, hidden]
 *
 * Causal: token i only sees tokens 0..i. There is no padding mask (Stable
 * Diffusion passes none): the pad tokens after EOS are real tokens that see
 * the whole prompt, and the UNet reads all 77 vectors.
 *
 * The EOS position: with eos_token_id == 2 in the config (the value SD 1.x
 * and 2.x ship, a leftover of the original CLIP config) transformers takes
 * the position of the LARGEST id (49407 = <|endoftext|> is the largest id
 * in the vocabulary; its first occurrence); otherwise the first position
 * whose id is eos_token_id.
 *
 *     sd_weights w;  DL_TRY(sd_weights_open(&w, "models/sd15"));
 *     clip_text_model te;  DL_TRY(clip_text_load(&te, &w));
 *     dl_tensor ctx;  dl_tensor_alloc(&ctx, 3, DL_SHAPE(2, 77, te.config.hidden_size));
 *     DL_TRY(clip_text_forward(&te, ids, 2, 77, &ctx, NULL, NULL));
 *     clip_text_free(&te);  sd_weights_close(&w);   // (weights may be views of w's files)
 */
#ifndef DL_CLIP_TEXT_H
#define DL_CLIP_TEXT_H

#include "sd_weights.h"
#include "tensor.h"

typedef enum { CLIP_ACT_QUICK_GELU, CLIP_ACT_GELU } clip_act;

typedef struct {
    int      vocab_size;               /* 49408                          */
    int      hidden_size;              /* 768 (SD 1.x), 1024 (SD 2.x)    */
    int      intermediate_size;        /* 3072 / 4096                    */
    int      num_hidden_layers;        /* 12 / 23 (SD 2.x uses 23 of 24) */
    int      num_attention_heads;      /* 12 / 16 (head size 64)         */
    int      max_position_embeddings;  /* 77                             */
    clip_act hidden_act;               /* quick_gelu / gelu              */
    float    layer_norm_eps;           /* 1e-5                           */
    int      eos_token_id;             /* 2 = "largest id" rule (above)  */
} clip_text_config;

/* SD 1.5's text encoder (openai/clip-vit-large-patch14). */
void clip_text_config_sd15(clip_text_config *c);

/* Parse a transformers config.json (CLIPTextConfig); fields that are
 * missing keep SD 1.5's values. Errors: not JSON, unknown hidden_act,
 * sizes that do not fit (hidden_size not divisible by the heads...). */
dl_status clip_text_config_from_json(clip_text_config *c, const char *json);

typedef struct {
    dl_tensor ln1_w, ln1_b;                 /* [hidden]                        */
    dl_tensor q_w, q_b, k_w, k_b, v_w, v_b; /* [hidden, hidden], [hidden]      */
    dl_tensor out_w, out_b;                 /* [hidden, hidden], [hidden]      */
    dl_tensor ln2_w, ln2_b;                 /* [hidden]                        */
    dl_tensor fc1_w, fc1_b;                 /* [intermediate, hidden], [inter] */
    dl_tensor fc2_w, fc2_b;                 /* [hidden, intermediate], [hidden]*/
} clip_text_layer;

typedef struct {
    clip_text_config config;
    dl_tensor token_embedding;       /* [vocab, hidden]     */
    dl_tensor position_embedding;    /* [positions, hidden] */
    clip_text_layer *layers;         /* num_hidden_layers   */
    dl_tensor final_ln_w, final_ln_b;
} clip_text_model;

/* Load with the checkpoint's own config: text_encoder/config.json of a
 * diffusers folder (or the one given by sd_weights_set_config_dir). A single
 * file without config uses SD 1.5's values, with the sizes read off the
 * weights (vocabulary, hidden, intermediate, positions, layers) and 64-wide
 * heads (true for SD 1.x and 2.x); activation quick_gelu, except gelu for
 * hidden 1024 (SD 2.x's OpenCLIP). */
dl_status clip_text_load(clip_text_model *m, sd_weights *w);
/* Load with an explicit config. */
dl_status clip_text_load_with_config(clip_text_model *m, sd_weights *w, const clip_text_config *c);
void      clip_text_free(clip_text_model *m);

/* ids: batch x seq_len token ids (row-major), seq_len <= max positions.
 *   last_hidden_state  [batch, seq_len, hidden]   (required)
 *   pooled             [batch, hidden]            or NULL
 *   hidden_states      NULL, or an array of num_hidden_layers + 1 tensors
 *                      [batch, seq_len, hidden]: [0] the embeddings, [i]
 *                      the output of layer i (before final_layer_norm).
 *                      "CLIP skip" k = conditioning on [num_hidden_layers - k]
 *                      put through final_layer_norm (SD 2.x's diffusers
 *                      configs already stop at 23 of OpenCLIP's 24 layers)
 * All outputs are preallocated by the caller. Scratch is allocated inside. */
dl_status clip_text_forward(const clip_text_model *m, const int *ids, int batch, int seq_len,
                            dl_tensor *last_hidden_state, dl_tensor *pooled, dl_tensor *hidden_states);

#endif
