/* clip_text.c - see clip_text.h. Built only from the fast kernels:
 * layer_norm_forward, linear_forward, attention_forward (causal),
 * quick_gelu_forward / gelu_erf_forward, add_forward. */
#include "clip_text.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "elementwise.h"
#include "linear.h"
#include "norm.h"

void clip_text_config_sd15(clip_text_config *c)
{
    c->vocab_size = 49408;
    c->hidden_size = 768;
    c->intermediate_size = 3072;
    c->num_hidden_layers = 12;
    c->num_attention_heads = 12;
    c->max_position_embeddings = 77;
    c->hidden_act = CLIP_ACT_QUICK_GELU;
    c->layer_norm_eps = 1e-5f;
    c->eos_token_id = 2;
}

static dl_status check_config(const clip_text_config *c)
{
    if (c->vocab_size < 1 || c->hidden_size < 1 || c->intermediate_size < 1 || c->num_hidden_layers < 1 ||
        c->num_attention_heads < 1 || c->max_position_embeddings < 1 || c->hidden_size > (1 << 16) ||
        c->intermediate_size > (1 << 18) || c->num_hidden_layers > 256 || c->max_position_embeddings > 4096 ||
        c->vocab_size > (1 << 22) || !(c->layer_norm_eps > 0.0f))
        return dl_fail(DL_ERR_FORMAT, "clip_text: config has an impossible size (hidden %d, intermediate %d, "
                       "layers %d, heads %d, positions %d, vocab %d)", c->hidden_size, c->intermediate_size,
                       c->num_hidden_layers, c->num_attention_heads, c->max_position_embeddings, c->vocab_size);
    if (c->hidden_size % c->num_attention_heads != 0)
        return dl_fail(DL_ERR_FORMAT, "clip_text: hidden_size %d is not divisible by num_attention_heads %d",
                       c->hidden_size, c->num_attention_heads);
    return DL_OK;
}

/* Read an integer field if present; it must be a whole number. */
static int json_int(const cJSON *root, const char *key, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v) return 1;
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= INT_MIN && d <= INT_MAX) || d != (double)(int)d) return 0;   /* range first: (int)1e300 is undefined */
    *out = (int)v->valuedouble;
    return 1;
}

dl_status clip_text_config_from_json(clip_text_config *c, const char *json)
{
    clip_text_config_sd15(c);
    if (!json) return dl_fail(DL_ERR_ARG, "clip_text: NULL config");
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dl_fail(DL_ERR_FORMAT, "clip_text: text_encoder config.json is not a JSON object");
    }
    static const char *const keys[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                       "num_attention_heads", "max_position_embeddings", "eos_token_id"};
    int *fields[] = {&c->vocab_size, &c->hidden_size, &c->intermediate_size, &c->num_hidden_layers,
                     &c->num_attention_heads, &c->max_position_embeddings, &c->eos_token_id};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (!json_int(root, keys[i], fields[i])) {
            cJSON_Delete(root);
            return dl_fail(DL_ERR_FORMAT, "clip_text: config field '%s' is not an integer", keys[i]);
        }
    const cJSON *eps = cJSON_GetObjectItemCaseSensitive(root, "layer_norm_eps");
    if (cJSON_IsNumber(eps)) c->layer_norm_eps = (float)eps->valuedouble;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act) {
        if (cJSON_IsString(act) && strcmp(act->valuestring, "quick_gelu") == 0) c->hidden_act = CLIP_ACT_QUICK_GELU;
        else if (cJSON_IsString(act) && strcmp(act->valuestring, "gelu") == 0) c->hidden_act = CLIP_ACT_GELU;
        else {
            dl_status st = dl_fail(DL_ERR_FORMAT, "clip_text: hidden_act '%s' is not supported (quick_gelu or gelu)",
                                   cJSON_IsString(act) ? act->valuestring : "(not a string)");
            cJSON_Delete(root);
            return st;
        }
    }
    cJSON_Delete(root);
    return check_config(c);
}

/* ------------------------------------------------------------------ */
/* Loading                                                             */

typedef struct {
    sd_weights *w;
    dl_status st;
} loader;

/* Load one tensor unless an earlier one failed (so the caller checks once). */
static void get(loader *L, dl_tensor *t, const char *name, int ndim, const int64_t *shape)
{
    if (L->st != DL_OK) return;
    L->st = sd_weights_get(L->w, SD_PART_TEXT_ENCODER, name, ndim, shape, t);
}

static dl_status config_from_weights(clip_text_config *c, sd_weights *w);

dl_status clip_text_load(clip_text_model *m, sd_weights *w)
{
    memset(m, 0, sizeof *m);
    clip_text_config c;
    const char *json = sd_weights_config_json(w, SD_PART_TEXT_ENCODER);
    if (json) DL_TRY(clip_text_config_from_json(&c, json));
    else DL_TRY(config_from_weights(&c, w));
    return clip_text_load_with_config(m, w, &c);
}

dl_status clip_text_load_with_config(clip_text_model *m, sd_weights *w, const clip_text_config *c)
{
    memset(m, 0, sizeof *m);
    DL_TRY(check_config(c));
    m->config = *c;
    const int64_t H = c->hidden_size, I = c->intermediate_size;
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    if (!m->layers) return dl_fail(DL_ERR_MEMORY, "clip_text: out of memory");

    loader L = {w, DL_OK};
    get(&L, &m->token_embedding, "text_model.embeddings.token_embedding.weight", 2, DL_SHAPE(c->vocab_size, H));
    get(&L, &m->position_embedding, "text_model.embeddings.position_embedding.weight", 2,
        DL_SHAPE(c->max_position_embeddings, H));
    char name[160];
#define LAYER_GET(field, suffix, ndim, ...)                                                   \
    do {                                                                                      \
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.%s", l, suffix);            \
        get(&L, &layer->field, name, ndim, DL_SHAPE(__VA_ARGS__));                            \
    } while (0)
    for (int l = 0; l < c->num_hidden_layers; l++) {
        clip_text_layer *layer = &m->layers[l];
        LAYER_GET(ln1_w, "layer_norm1.weight", 1, H);
        LAYER_GET(ln1_b, "layer_norm1.bias", 1, H);
        LAYER_GET(q_w, "self_attn.q_proj.weight", 2, H, H);
        LAYER_GET(q_b, "self_attn.q_proj.bias", 1, H);
        LAYER_GET(k_w, "self_attn.k_proj.weight", 2, H, H);
        LAYER_GET(k_b, "self_attn.k_proj.bias", 1, H);
        LAYER_GET(v_w, "self_attn.v_proj.weight", 2, H, H);
        LAYER_GET(v_b, "self_attn.v_proj.bias", 1, H);
        LAYER_GET(out_w, "self_attn.out_proj.weight", 2, H, H);
        LAYER_GET(out_b, "self_attn.out_proj.bias", 1, H);
        LAYER_GET(ln2_w, "layer_norm2.weight", 1, H);
        LAYER_GET(ln2_b, "layer_norm2.bias", 1, H);
        LAYER_GET(fc1_w, "mlp.fc1.weight", 2, I, H);
        LAYER_GET(fc1_b, "mlp.fc1.bias", 1, I);
        LAYER_GET(fc2_w, "mlp.fc2.weight", 2, H, I);
        LAYER_GET(fc2_b, "mlp.fc2.bias", 1, H);
    }
#undef LAYER_GET
    get(&L, &m->final_ln_w, "text_model.final_layer_norm.weight", 1, DL_SHAPE(H));
    get(&L, &m->final_ln_b, "text_model.final_layer_norm.bias", 1, DL_SHAPE(H));
    if (L.st != DL_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", dl_error_message());
        clip_text_free(m);
        return dl_fail(L.st, "%s", msg);
    }
    return DL_OK;
}

void clip_text_free(clip_text_model *m)
{
    if (!m) return;
    dl_tensor_free(&m->token_embedding);
    dl_tensor_free(&m->position_embedding);
    if (m->layers)
        for (int l = 0; l < m->config.num_hidden_layers; l++) {
            clip_text_layer *y = &m->layers[l];
            dl_tensor *all[] = {&y->ln1_w, &y->ln1_b, &y->q_w, &y->q_b, &y->k_w, &y->k_b, &y->v_w, &y->v_b,
                                &y->out_w, &y->out_b, &y->ln2_w, &y->ln2_b, &y->fc1_w, &y->fc1_b,
                                &y->fc2_w, &y->fc2_b};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
        }
    free(m->layers);
    dl_tensor_free(&m->final_ln_w);
    dl_tensor_free(&m->final_ln_b);
    memset(m, 0, sizeof *m);
}

/* A single file without config: SD 1.5's values, sizes read off the weights. */
static dl_status config_from_weights(clip_text_config *c, sd_weights *w)
{
    clip_text_config_sd15(c);
    int nd;
    int64_t tok[8], pos[8], fc1[8];
    DL_TRY(sd_weights_shape(w, SD_PART_TEXT_ENCODER, "text_model.embeddings.token_embedding.weight", &nd, tok));
    if (nd != 2) return dl_fail(DL_ERR_FORMAT, "clip_text: token_embedding is not a matrix");
    DL_TRY(sd_weights_shape(w, SD_PART_TEXT_ENCODER, "text_model.embeddings.position_embedding.weight", &nd, pos));
    if (nd != 2) return dl_fail(DL_ERR_FORMAT, "clip_text: position_embedding is not a matrix");
    DL_TRY(sd_weights_shape(w, SD_PART_TEXT_ENCODER, "text_model.encoder.layers.0.mlp.fc1.weight", &nd, fc1));
    if (nd != 2) return dl_fail(DL_ERR_FORMAT, "clip_text: mlp.fc1 is not a matrix");
    c->vocab_size = (int)tok[0];
    c->hidden_size = (int)tok[1];
    c->max_position_embeddings = (int)pos[0];
    c->intermediate_size = (int)fc1[0];
    int layers = 0;
    char name[160];
    for (;; layers++) {
        snprintf(name, sizeof name, "text_model.encoder.layers.%d.mlp.fc1.weight", layers);
        if (layers > 256 || !sd_weights_has(w, SD_PART_TEXT_ENCODER, name)) break;
    }
    /* SD 2.x (OpenCLIP ViT-H, hidden 1024) conditions on the penultimate of
     * its 24 layers: diffusers' SD 2 configs say 23, and so do we. */
    c->num_hidden_layers = c->hidden_size == 1024 && layers > 1 ? layers - 1 : layers;
    if (c->hidden_size % 64 != 0)
        return dl_fail(DL_ERR_FORMAT, "clip_text: cannot tell the number of attention heads of a hidden size %d "
                       "text encoder from the weights alone (64-wide heads assumed); give the model's "
                       "config folder (sd_weights_set_config_dir)", c->hidden_size);
    c->num_attention_heads = c->hidden_size / 64;
    c->hidden_act = c->hidden_size == 1024 ? CLIP_ACT_GELU : CLIP_ACT_QUICK_GELU;
    return check_config(c);
}

/* ------------------------------------------------------------------ */
/* Forward                                                             */

/* One pre-LN transformer layer, x [B, L, H] updated in place.
 * Scratch: h, q, k, v, a [B, L, H] and f [B, L, I]. */
static dl_status layer_forward(const clip_text_layer *y, const clip_text_config *c, dl_tensor *x, dl_tensor *h,
                               dl_tensor *q, dl_tensor *k, dl_tensor *v, dl_tensor *a, dl_tensor *f)
{
    /* x = x + out_proj(attention(layer_norm1(x)))  (causal: token i sees 0..i) */
    DL_TRY(layer_norm_forward(h, x, &y->ln1_w, &y->ln1_b, c->layer_norm_eps));
    DL_TRY(linear_forward(q, h, &y->q_w, &y->q_b));
    DL_TRY(linear_forward(k, h, &y->k_w, &y->k_b));
    DL_TRY(linear_forward(v, h, &y->v_w, &y->v_b));
    DL_TRY(attention_forward(a, q, k, v, c->num_attention_heads, 1));
    DL_TRY(linear_forward(h, a, &y->out_w, &y->out_b));
    DL_TRY(add_forward(x, x, h));

    /* x = x + fc2(act(fc1(layer_norm2(x)))) */
    DL_TRY(layer_norm_forward(h, x, &y->ln2_w, &y->ln2_b, c->layer_norm_eps));
    DL_TRY(linear_forward(f, h, &y->fc1_w, &y->fc1_b));
    if (c->hidden_act == CLIP_ACT_QUICK_GELU) DL_TRY(quick_gelu_forward(f, f));
    else DL_TRY(gelu_erf_forward(f, f));
    DL_TRY(linear_forward(h, f, &y->fc2_w, &y->fc2_b));
    return add_forward(x, x, h);
}

dl_status clip_text_forward(const clip_text_model *m, const int *ids, int batch, int seq_len,
                            dl_tensor *last_hidden_state, dl_tensor *pooled, dl_tensor *hidden_states)
{
    const clip_text_config *c = &m->config;
    const int H = c->hidden_size;
    if (!m->layers || !ids || !last_hidden_state)
        return dl_fail(DL_ERR_ARG, "clip_text_forward: NULL model, ids or output");
    if (batch < 1 || seq_len < 1 || seq_len > c->max_position_embeddings)
        return dl_fail(DL_ERR_ARG, "clip_text_forward: batch %d x %d tokens (at most %d positions)", batch,
                       seq_len, c->max_position_embeddings);
    for (int i = 0; i < batch * seq_len; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            return dl_fail(DL_ERR_ARG, "clip_text_forward: token id %d at position %d is outside the "
                           "vocabulary (0..%d)", ids[i], i % seq_len, c->vocab_size - 1);
    DL_TRY(dl_check_shape(last_hidden_state, "clip_text_forward", "last_hidden_state", 3,
                          DL_SHAPE(batch, seq_len, H)));
    if (pooled) DL_TRY(dl_check_shape(pooled, "clip_text_forward", "pooled", 2, DL_SHAPE(batch, H)));
    if (hidden_states)
        for (int l = 0; l <= c->num_hidden_layers; l++)
            DL_TRY(dl_check_shape(&hidden_states[l], "clip_text_forward", "hidden_states[i]", 3,
                                  DL_SHAPE(batch, seq_len, H)));

    /* scratch: x (the residual stream), h, q, k, v, a [B, L, H] and f [B, L, I] */
    dl_tensor t[7];
    memset(t, 0, sizeof t);
    dl_tensor *x = &t[0];
    dl_status st = DL_OK;
    for (int i = 0; i < 6 && st == DL_OK; i++) st = dl_tensor_alloc(&t[i], 3, DL_SHAPE(batch, seq_len, H));
    if (st == DL_OK) st = dl_tensor_alloc(&t[6], 3, DL_SHAPE(batch, seq_len, c->intermediate_size));

    /* embeddings: x[b, i] = token_embedding[ids[b, i]] + position_embedding[i] */
    for (int b = 0; b < batch && st == DL_OK; b++)
        for (int i = 0; i < seq_len; i++) {
            const float *tok = m->token_embedding.data + (size_t)ids[b * seq_len + i] * H;
            const float *pos = m->position_embedding.data + (size_t)i * H;
            float *row = x->data + ((size_t)b * seq_len + i) * H;
            for (int d = 0; d < H; d++) row[d] = tok[d] + pos[d];
        }
    if (st == DL_OK && hidden_states) st = dl_tensor_copy(&hidden_states[0], x);

    for (int l = 0; l < c->num_hidden_layers && st == DL_OK; l++) {
        st = layer_forward(&m->layers[l], c, x, &t[1], &t[2], &t[3], &t[4], &t[5], &t[6]);
        if (st == DL_OK && hidden_states) st = dl_tensor_copy(&hidden_states[l + 1], x);
    }
    if (st == DL_OK) st = layer_norm_forward(last_hidden_state, x, &m->final_ln_w, &m->final_ln_b, c->layer_norm_eps);

    /* pooled: the vector at the EOS token */
    for (int b = 0; b < batch && st == DL_OK && pooled; b++) {
        const int *row_ids = ids + (size_t)b * seq_len;
        int at = 0;
        if (c->eos_token_id == 2) {   /* legacy configs: the largest id (first occurrence) */
            for (int i = 1; i < seq_len; i++)
                if (row_ids[i] > row_ids[at]) at = i;
        } else {                      /* the first eos_token_id (none: position 0... as torch's argmax) */
            for (int i = 0; i < seq_len; i++)
                if (row_ids[i] == c->eos_token_id) { at = i; break; }
        }
        memcpy(pooled->data + (size_t)b * H, last_hidden_state->data + ((size_t)b * seq_len + at) * H,
               (size_t)H * sizeof(float));
    }
    for (int i = 0; i < 7; i++) dl_tensor_free(&t[i]);
    return st;
}
