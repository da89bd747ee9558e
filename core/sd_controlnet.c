/* sd_controlnet.c - see sd_controlnet.h. The config reader, the forward
 * pass (conditioning embedding, the UNet's down/mid path, the zero convs),
 * then the control-image helpers. */
#include "sd_controlnet.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canny.h"
#include "elementwise.h"
#include "timestep_embedding.h"

/* ======================================================================== */
/* Configuration                                                             */

#define CFG_ERR(...) dl_fail(DL_ERR_FORMAT, "controlnet config: " __VA_ARGS__)

static dl_status parse_controlnet_keys(sd_controlnet_config *c, const cJSON *root)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "conditioning_channels");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble != (double)(int)v->valuedouble)
            return CFG_ERR("'conditioning_channels' must be a positive integer");
        c->conditioning_channels = (int)v->valuedouble;
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "conditioning_embedding_out_channels");
    if (v && !cJSON_IsNull(v)) {
        int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 0;
        if (n < 1 || n > SD_CONTROLNET_MAX_COND_LEVELS)
            return CFG_ERR("'conditioning_embedding_out_channels' must be a list of 1 to %d integers",
                           SD_CONTROLNET_MAX_COND_LEVELS);
        c->cond_levels = n;
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(v, i);
            if (!cJSON_IsNumber(e) || e->valuedouble < 1)
                return CFG_ERR("conditioning_embedding_out_channels[%d] is not a positive integer", i);
            c->cond_channels[i] = (int)e->valuedouble;
        }
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "controlnet_conditioning_channel_order");
    if (v && !cJSON_IsNull(v)) {
        if (cJSON_IsString(v) && strcmp(v->valuestring, "rgb") == 0) c->bgr = 0;
        else if (cJSON_IsString(v) && strcmp(v->valuestring, "bgr") == 0) c->bgr = 1;
        else return CFG_ERR("'controlnet_conditioning_channel_order' must be \"rgb\" or \"bgr\"");
    }
    v = cJSON_GetObjectItemCaseSensitive(root, "global_pool_conditions");
    if (v && !cJSON_IsNull(v)) {
        if (!cJSON_IsBool(v)) return CFG_ERR("'global_pool_conditions' must be true or false");
        c->global_pool_conditions = cJSON_IsTrue(v);
    }
    if (c->bgr && c->conditioning_channels != 3)
        return CFG_ERR("channel order \"bgr\" needs 3 conditioning channels, not %d", c->conditioning_channels);
    return DL_OK;
}

/* A ControlNet config has no up_block_types (it has no up path). The UNet
 * reader wants them, so give it the mirror of the down blocks. */
static dl_status add_up_block_types(cJSON *root)
{
    const cJSON *down = cJSON_GetObjectItemCaseSensitive(root, "down_block_types");
    if (!down || !cJSON_IsArray(down) || cJSON_GetObjectItemCaseSensitive(root, "up_block_types")) return DL_OK;
    cJSON *up = cJSON_CreateArray();
    if (!up) return dl_fail(DL_ERR_MEMORY, "controlnet config: out of memory");
    for (int i = cJSON_GetArraySize(down) - 1; i >= 0; i--) {
        const cJSON *e = cJSON_GetArrayItem(down, i);
        int attn = cJSON_IsString(e) && strcmp(e->valuestring, "CrossAttnDownBlock2D") == 0;
        cJSON_AddItemToArray(up, cJSON_CreateString(attn ? "CrossAttnUpBlock2D" : "UpBlock2D"));
    }
    cJSON_AddItemToObject(root, "up_block_types", up);
    return DL_OK;
}

dl_status sd_controlnet_config_parse(sd_controlnet_config *c, const char *json)
{
    memset(c, 0, sizeof *c);
    /* diffusers' defaults (SD 1.5 ControlNets) */
    c->conditioning_channels = 3;
    c->cond_levels = 4;
    const int dflt[4] = {16, 32, 96, 256};
    memcpy(c->cond_channels, dflt, sizeof dflt);
    if (!json) return dl_fail(DL_ERR_ARG, "controlnet config: no JSON text");

    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return CFG_ERR("not a JSON object");
    }
    dl_status s = parse_controlnet_keys(c, root);
    if (s == DL_OK) s = add_up_block_types(root);
    char *unet_json = s == DL_OK ? cJSON_PrintUnformatted(root) : NULL;
    cJSON_Delete(root);
    DL_TRY(s);
    if (!unet_json) return dl_fail(DL_ERR_MEMORY, "controlnet config: out of memory");
    s = sd_unet_config_parse(&c->unet, unet_json);
    free(unet_json);
    if (s != DL_OK) {
        char msg[768];
        snprintf(msg, sizeof msg, "%s", dl_error_message());
        return dl_fail(s, "controlnet config: %s", msg);
    }
    return DL_OK;
}

/* ======================================================================== */
/* Output                                                                    */

/* Shapes of the UNet's skips for latents h x w: conv_in, then per level
 * layers_per_block resnets and (except the last level) a downsampler. */
static int skip_shapes(const sd_unet_config *c, int h, int w, int C[], int H[], int W[])
{
    int n = 0;
    C[n] = c->block_out_channels[0]; H[n] = h; W[n++] = w;
    for (int i = 0; i < c->levels; i++) {
        for (int j = 0; j < c->layers_per_block; j++) {
            C[n] = c->block_out_channels[i]; H[n] = h; W[n++] = w;
        }
        if (i < c->levels - 1) {
            h = sd_downsample_size(h, c->downsample_padding);
            w = sd_downsample_size(w, c->downsample_padding);
            C[n] = c->block_out_channels[i]; H[n] = h; W[n++] = w;
        }
    }
    return n;
}

void sd_controlnet_output_free(sd_controlnet_output *o)
{
    for (int k = 0; k < SD_UNET_MAX_SKIPS; k++) dl_tensor_free(&o->down[k]);
    dl_tensor_free(&o->mid);
    o->n_down = 0;
}

dl_status sd_controlnet_output_alloc(sd_controlnet_output *o, const sd_controlnet_config *c, int B, int h, int w)
{
    memset(o, 0, sizeof *o);
    int C[SD_UNET_MAX_SKIPS], H[SD_UNET_MAX_SKIPS], W[SD_UNET_MAX_SKIPS];
    int n = skip_shapes(&c->unet, h, w, C, H, W);
    for (int k = 0; k < n; k++) {
        dl_status s = dl_tensor_alloc(&o->down[k], 4, DL_SHAPE(B, C[k], H[k], W[k]));
        if (s != DL_OK) { sd_controlnet_output_free(o); return s; }
        o->n_down = k + 1;
    }
    dl_status s = dl_tensor_alloc(&o->mid, 4, DL_SHAPE(B, c->unet.block_out_channels[c->unet.levels - 1],
                                                       H[n - 1], W[n - 1]));
    if (s != DL_OK) sd_controlnet_output_free(o);
    return s;
}

sd_unet_residuals sd_controlnet_residuals(const sd_controlnet_output *o)
{
    sd_unet_residuals r;
    memset(&r, 0, sizeof r);
    r.n_down = o->n_down;
    for (int k = 0; k < o->n_down; k++) r.down[k] = &o->down[k];
    r.mid = &o->mid;
    return r;
}

/* ======================================================================== */
/* Forward                                                                   */

/* Output size of a 3x3 stride-2 conv with padding 1 (the embedding's downsamplers). */
static int stride2_size(int n) { return (n - 1) / 2 + 1; }

/* controlnet_cond_embedding: cond [B, cc, H, W] -> emb [B, C0, h, w]
 *   conv_in 3x3 -> SiLU -> per level i < n-1: blocks.2i 3x3 (c_i -> c_i), SiLU,
 *   blocks.2i+1 3x3 stride 2 (c_i -> c_i+1), SiLU -> conv_out 3x3 (c_last -> C0) */
static dl_status cond_embedding(const sd_ctx *cx, const sd_controlnet_config *c, dl_tensor *emb,
                                const dl_tensor *cond)
{
    const int64_t B = cond->shape[0];
    int64_t H = cond->shape[2], W = cond->shape[3];
    dl_tensor a = {0}, b = {0};
    char name[64];
    dl_status s = dl_tensor_alloc(&a, 4, DL_SHAPE(B, c->cond_channels[0], H, W));
    if (s == DL_OK) s = sd_conv(cx, "controlnet_cond_embedding.conv_in", &a, cond, 3, 1, 1);
    if (s == DL_OK) s = silu_forward(&a, &a);
    for (int i = 0; s == DL_OK && i < c->cond_levels - 1; i++) {
        const int ci = c->cond_channels[i], co = c->cond_channels[i + 1];
        /* same size, same channels */
        s = dl_tensor_alloc(&b, 4, DL_SHAPE(B, ci, H, W));
        snprintf(name, sizeof name, "controlnet_cond_embedding.blocks.%d", 2 * i);
        if (s == DL_OK) s = sd_conv(cx, name, &b, &a, 3, 1, 1);
        if (s == DL_OK) s = silu_forward(&b, &b);
        dl_tensor_free(&a);
        if (s != DL_OK) break;
        /* half the size, the next level's channels */
        H = stride2_size((int)H);
        W = stride2_size((int)W);
        s = dl_tensor_alloc(&a, 4, DL_SHAPE(B, co, H, W));
        snprintf(name, sizeof name, "controlnet_cond_embedding.blocks.%d", 2 * i + 1);
        if (s == DL_OK) s = sd_conv(cx, name, &a, &b, 3, 2, 1);
        if (s == DL_OK) s = silu_forward(&a, &a);
        dl_tensor_free(&b);
    }
    if (s == DL_OK) s = sd_conv(cx, "controlnet_cond_embedding.conv_out", emb, &a, 3, 1, 1);
    dl_tensor_free(&a);
    dl_tensor_free(&b);
    return s;
}

typedef struct {
    dl_tensor h, tmp;          /* the hidden state and a block's output before it becomes h */
    dl_tensor tproj, temb1, temb, emb, flipped;
} cn_state;

static void state_free(cn_state *s)
{
    dl_tensor *t[] = {&s->h, &s->tmp, &s->tproj, &s->temb1, &s->temb, &s->emb, &s->flipped};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) dl_tensor_free(t[i]);
}

/* Replace h by tmp. */
static void take_tmp(cn_state *s)
{
    dl_tensor_free(&s->h);
    s->h = s->tmp;
    memset(&s->tmp, 0, sizeof s->tmp);
}

/* residual k = controlnet_down_blocks.k (1x1 conv) of the skip h */
static dl_status zero_conv(const sd_ctx *cx, dl_tensor *res, const dl_tensor *h, int k)
{
    char name[64];
    snprintf(name, sizeof name, "controlnet_down_blocks.%d", k);
    return sd_conv(cx, name, res, h, 1, 1, 0);
}

static dl_status forward_body(sd_controlnet *cn, cn_state *s, sd_controlnet_output *out, const dl_tensor *sample,
                              const float *timesteps, const dl_tensor *context, const dl_tensor *cond)
{
    const sd_unet_config *c = &cn->cfg.unet;
    const int64_t B = sample->shape[0], h = sample->shape[2], w = sample->shape[3];
    const int C0 = c->block_out_channels[0];
    sd_ctx cx = {.w = cn->weights, .part = SD_PART_UNET, .arena = &cn->scratch, .groups = c->norm_num_groups,
                 .hook = cn->hook, .hook_ctx = cn->hook_ctx};
    char name[128];

    /* time: as the UNet; resnets get silu(temb) */
    DL_TRY(dl_tensor_alloc(&s->tproj, 2, DL_SHAPE(B, C0)));
    DL_TRY(dl_tensor_alloc(&s->temb1, 2, DL_SHAPE(B, c->time_embed_dim)));
    DL_TRY(dl_tensor_alloc(&s->temb, 2, DL_SHAPE(B, c->time_embed_dim)));
    DL_TRY(timestep_embedding_forward(&s->tproj, timesteps, (int)B, C0, c->flip_sin_to_cos, c->freq_shift, 1.0f,
                                      10000));
    sd_emit(&cx, "time_proj", NULL, &s->tproj);
    DL_TRY(sd_linear(&cx, "time_embedding.linear_1", &s->temb1, &s->tproj, 1));
    DL_TRY(silu_forward(&s->temb1, &s->temb1));
    DL_TRY(sd_linear(&cx, "time_embedding.linear_2", &s->temb, &s->temb1, 1));
    sd_emit(&cx, "time_embedding", NULL, &s->temb);
    DL_TRY(silu_forward(&s->temb, &s->temb));

    /* "bgr" models were trained on BGR control images: swap channels 0 and 2 */
    if (cn->cfg.bgr) {
        DL_TRY(dl_tensor_alloc(&s->flipped, 4, cond->shape));
        const int64_t plane = cond->shape[2] * cond->shape[3];
        for (int64_t b = 0; b < B; b++)
            for (int ch = 0; ch < 3; ch++)
                memcpy(s->flipped.data + (b * 3 + ch) * plane, cond->data + (b * 3 + (2 - ch)) * plane,
                       (size_t)plane * sizeof(float));
        cond = &s->flipped;
    }

    /* conv_in(sample) + controlnet_cond_embedding(cond): the first skip */
    DL_TRY(dl_tensor_alloc(&s->h, 4, DL_SHAPE(B, C0, h, w)));
    DL_TRY(sd_conv(&cx, "conv_in", &s->h, sample, 3, 1, 1));
    sd_emit(&cx, "conv_in", NULL, &s->h);
    DL_TRY(dl_tensor_alloc(&s->emb, 4, DL_SHAPE(B, C0, h, w)));
    DL_TRY(cond_embedding(&cx, &cn->cfg, &s->emb, cond));
    sd_emit(&cx, "controlnet_cond_embedding", NULL, &s->emb);
    DL_TRY(add_forward(&s->h, &s->h, &s->emb));
    int k = 0;
    DL_TRY(zero_conv(&cx, &out->down[k], &s->h, k));
    k++;

    /* down blocks: each skip goes through its zero conv right away (the
     * skips themselves are not needed later: there is no up path) */
    for (int i = 0; i < c->levels; i++) {
        const int Co = c->block_out_channels[i];
        char blk[64];
        snprintf(blk, sizeof blk, "down_blocks.%d", i);
        for (int j = 0; j < c->layers_per_block; j++) {
            const int64_t H = s->h.shape[2], W = s->h.shape[3];
            DL_TRY(dl_tensor_alloc(&s->tmp, 4, DL_SHAPE(B, Co, H, W)));
            snprintf(name, sizeof name, "%s.resnets.%d", blk, j);
            DL_TRY(sd_resnet_forward(&cx, name, &s->tmp, &s->h, &s->temb, c->norm_eps));
            take_tmp(s);
            if (c->down_attn[i]) {
                DL_TRY(dl_tensor_alloc(&s->tmp, 4, DL_SHAPE(B, Co, H, W)));
                snprintf(name, sizeof name, "%s.attentions.%d", blk, j);
                DL_TRY(sd_transformer_forward(&cx, name, &s->tmp, &s->h, context, c->heads[i],
                                              c->transformer_layers[i], c->use_linear_projection));
                take_tmp(s);
            }
            DL_TRY(zero_conv(&cx, &out->down[k], &s->h, k));
            k++;
        }
        if (i < c->levels - 1) {
            const int64_t Ho = sd_downsample_size((int)s->h.shape[2], c->downsample_padding);
            const int64_t Wo = sd_downsample_size((int)s->h.shape[3], c->downsample_padding);
            DL_TRY(dl_tensor_alloc(&s->tmp, 4, DL_SHAPE(B, Co, Ho, Wo)));
            snprintf(name, sizeof name, "%s.downsamplers.0", blk);
            DL_TRY(sd_downsample_forward(&cx, name, &s->tmp, &s->h, c->downsample_padding));
            take_tmp(s);
            DL_TRY(zero_conv(&cx, &out->down[k], &s->h, k));
            k++;
        }
        sd_emit(&cx, blk, "hidden_states", &s->h);
    }

    /* mid block: resnet, transformer, resnet, then its zero conv */
    const int lvl = c->levels - 1, Cm = c->block_out_channels[lvl];
    const int64_t H = s->h.shape[2], W = s->h.shape[3];
    DL_TRY(dl_tensor_alloc(&s->tmp, 4, DL_SHAPE(B, Cm, H, W)));
    DL_TRY(sd_resnet_forward(&cx, "mid_block.resnets.0", &s->tmp, &s->h, &s->temb, c->norm_eps));
    take_tmp(s);
    DL_TRY(dl_tensor_alloc(&s->tmp, 4, DL_SHAPE(B, Cm, H, W)));
    DL_TRY(sd_transformer_forward(&cx, "mid_block.attentions.0", &s->tmp, &s->h, context, c->heads[lvl],
                                  c->transformer_layers[lvl], c->use_linear_projection));
    take_tmp(s);
    DL_TRY(dl_tensor_alloc(&s->tmp, 4, DL_SHAPE(B, Cm, H, W)));
    DL_TRY(sd_resnet_forward(&cx, "mid_block.resnets.1", &s->tmp, &s->h, &s->temb, c->norm_eps));
    take_tmp(s);
    sd_emit(&cx, "mid_block", NULL, &s->h);
    DL_TRY(sd_conv(&cx, "controlnet_mid_block", &out->mid, &s->h, 1, 1, 0));
    return DL_OK;
}

/* t = scale * t, or (global_pool_conditions) every channel replaced by
 * scale * its mean over the pixels - diffusers keeps a [B, C, 1, 1] mean
 * that broadcasts when added; the UNet here wants the full shape. */
static void scale_residual(dl_tensor *t, float scale, int pool)
{
    const int64_t planes = t->shape[0] * t->shape[1], px = t->shape[2] * t->shape[3];
    for (int64_t p = 0; p < planes; p++) {
        float *x = t->data + p * px;
        if (pool) {
            double sum = 0;
            for (int64_t i = 0; i < px; i++) sum += x[i];
            const float m = (float)(sum / (double)px) * scale;
            for (int64_t i = 0; i < px; i++) x[i] = m;
        } else {
            for (int64_t i = 0; i < px; i++) x[i] *= scale;
        }
    }
}

dl_status sd_controlnet_forward(sd_controlnet *cn, sd_controlnet_output *out, const dl_tensor *sample,
                                const float *timesteps, const dl_tensor *context, const dl_tensor *cond,
                                float conditioning_scale, int guess_mode)
{
    const sd_controlnet_config *cc = &cn->cfg;
    const sd_unet_config *c = &cc->unet;
    if (guess_mode)
        return dl_fail(DL_ERR_ARG, "sd_controlnet: guess_mode is not supported (run with guess_mode off: the "
                       "ControlNet sees the prompt, as with diffusers' default)");
    if (!timesteps || !out) return dl_fail(DL_ERR_ARG, "sd_controlnet: timesteps or out is NULL");
    DL_TRY(dl_check_shape(sample, "sd_controlnet", "sample", 4, DL_SHAPE(-1, c->in_channels, -1, -1)));
    const int64_t B = sample->shape[0], h = sample->shape[2], w = sample->shape[3];
    DL_TRY(dl_check_shape(context, "sd_controlnet", "encoder_hidden_states", 3,
                          DL_SHAPE(B, -1, c->cross_attention_dim)));
    DL_TRY(dl_check_shape(cond, "sd_controlnet", "controlnet_cond", 4,
                          DL_SHAPE(B, cc->conditioning_channels, -1, -1)));
    /* the embedding must land on the latent size */
    int eh = (int)cond->shape[2], ew = (int)cond->shape[3];
    for (int i = 0; i < cc->cond_levels - 1; i++) { eh = stride2_size(eh); ew = stride2_size(ew); }
    if (eh != h || ew != w)
        return dl_fail(DL_ERR_SHAPE, "sd_controlnet: controlnet_cond %lldx%lld embeds to %dx%d, but the latents "
                       "are %lldx%lld (the control image must be %dx the latent size)",
                       (long long)cond->shape[3], (long long)cond->shape[2], ew, eh, (long long)w, (long long)h,
                       1 << (cc->cond_levels - 1));
    /* the residuals must be what sd_controlnet_output_alloc makes for this input */
    int C[SD_UNET_MAX_SKIPS], H[SD_UNET_MAX_SKIPS], W[SD_UNET_MAX_SKIPS];
    int n = skip_shapes(c, (int)h, (int)w, C, H, W);
    if (out->n_down != n)
        return dl_fail(DL_ERR_ARG, "sd_controlnet: out has %d down residuals, the model makes %d "
                       "(use sd_controlnet_output_alloc)", out->n_down, n);
    for (int k = 0; k < n; k++) {
        char name[48];
        snprintf(name, sizeof name, "out.down[%d]", k);
        DL_TRY(dl_check_shape(&out->down[k], "sd_controlnet", name, 4, DL_SHAPE(B, C[k], H[k], W[k])));
    }
    DL_TRY(dl_check_shape(&out->mid, "sd_controlnet", "out.mid", 4,
                          DL_SHAPE(B, c->block_out_channels[c->levels - 1], H[n - 1], W[n - 1])));

    /* the UNet's own scratch bound (its up path is the larger half, so this
     * covers the down and mid blocks) */
    size_t need = sd_unet_scratch_floats(c, (int)B, (int)h, (int)w, (int)context->shape[1]);
    if (cn->scratch.capacity < need) {
        dl_arena_free(&cn->scratch);
        DL_TRY(dl_arena_init(&cn->scratch, need));
    }
    cn_state s;
    memset(&s, 0, sizeof s);
    size_t mark = dl_arena_mark(&cn->scratch);
    dl_status st = forward_body(cn, &s, out, sample, timesteps, context, cond);
    dl_arena_reset(&cn->scratch, mark);
    state_free(&s);
    DL_TRY(st);

    for (int k = 0; k < n; k++) scale_residual(&out->down[k], conditioning_scale, cc->global_pool_conditions);
    scale_residual(&out->mid, conditioning_scale, cc->global_pool_conditions);
    return DL_OK;
}

dl_status sd_controlnet_init(sd_controlnet *cn, sd_weights *w)
{
    memset(cn, 0, sizeof *cn);
    if (!w) return dl_fail(DL_ERR_ARG, "sd_controlnet: no weights");
    const char *json = sd_weights_config_json(w, SD_PART_UNET);
    if (!json)
        return dl_fail(DL_ERR_FORMAT, "sd_controlnet: %s has no config.json (open a ControlNet folder with "
                       "sd_weights_open_component)", w->path);
    DL_TRY(sd_controlnet_config_parse(&cn->cfg, json));
    cn->weights = w;
    return DL_OK;
}

void sd_controlnet_free(sd_controlnet *cn)
{
    dl_arena_free(&cn->scratch);
    memset(cn, 0, sizeof *cn);
}

/* ======================================================================== */
/* The control image                                                         */

dl_status sd_controlnet_image_to_tensor(dl_tensor *out, const uint8_t *rgb, int w, int h)
{
    if (!rgb || w < 1 || h < 1) return dl_fail(DL_ERR_ARG, "sd_controlnet_image_to_tensor: bad image");
    DL_TRY(dl_check_shape(out, "sd_controlnet_image_to_tensor", "out", 4, DL_SHAPE(-1, 3, h, w)));
    const int64_t plane = (int64_t)h * w;
    /* HWC uint8 -> CHW float in [0, 1], then the same picture in every row */
    for (int64_t p = 0; p < plane; p++)
        for (int ch = 0; ch < 3; ch++) out->data[ch * plane + p] = rgb[p * 3 + ch] / 255.0f;
    for (int64_t b = 1; b < out->shape[0]; b++)
        memcpy(out->data + b * 3 * plane, out->data, (size_t)(3 * plane) * sizeof(float));
    return DL_OK;
}

dl_status sd_controlnet_canny_image(const uint8_t *img, int w, int h, int channels, float low, float high,
                                    int grey_first, uint8_t *rgb_out)
{
    if (!img || !rgb_out || w < 1 || h < 1 || w > CANNY_MAX_SIDE || h > CANNY_MAX_SIDE)
        return dl_fail(DL_ERR_ARG, "sd_controlnet_canny_image: bad image (%dx%d)", w, h);
    if (grey_first ? (channels != 1 && channels != 3) : (channels < 1 || channels > 4))
        return dl_fail(DL_ERR_ARG, "sd_controlnet_canny_image: %d channels (%s)", channels,
                       grey_first ? "grey_first needs 1 or 3" : "1 to 4 allowed");
    const size_t n = (size_t)w * (size_t)h;
    uint8_t *grey = NULL, *edges = malloc(n);
    if (!edges) return dl_fail(DL_ERR_MEMORY, "sd_controlnet_canny_image: out of memory");
    dl_status s;
    if (grey_first && channels == 3) {
        grey = malloc(n);
        s = grey ? canny_rgb_to_grey(img, w, h, grey) : dl_fail(DL_ERR_MEMORY, "sd_controlnet_canny_image: out of memory");
        if (s == DL_OK) s = canny_edges(grey, w, h, low, high, edges);
    } else {
        s = canny_edges_color(img, w, h, channels, low, high, edges);
    }
    if (s == DL_OK)
        for (size_t p = 0; p < n; p++) rgb_out[3 * p] = rgb_out[3 * p + 1] = rgb_out[3 * p + 2] = edges[p];
    free(grey);
    free(edges);
    return s;
}
