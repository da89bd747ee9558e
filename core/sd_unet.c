/* sd_unet.c - see sd_unet.h. The config reader, then the forward pass. */
#include "sd_unet.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "elementwise.h"
#include "resample.h"
#include "timestep_embedding.h"

/* ======================================================================== */
/* Configuration                                                             */

void sd_unet_config_sd15(sd_unet_config *c)
{
    memset(c, 0, sizeof *c);
    c->in_channels = 4;
    c->out_channels = 4;
    c->levels = 4;
    const int boc[4] = {320, 640, 1280, 1280};
    for (int i = 0; i < 4; i++) {
        c->block_out_channels[i] = boc[i];
        c->down_attn[i] = i < 3;           /* CrossAttnDownBlock2D x3, DownBlock2D    */
        c->up_attn[i] = i > 0;             /* UpBlock2D, CrossAttnUpBlock2D x3        */
        c->heads[i] = 8;
        c->transformer_layers[i] = 1;
    }
    c->layers_per_block = 2;
    c->cross_attention_dim = 768;
    c->use_linear_projection = 0;
    c->norm_num_groups = 32;
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1;
    c->freq_shift = 0.0f;
    c->time_embed_dim = 4 * 320;
    c->downsample_padding = 1;
    c->conv_in_kernel = 3;
    c->conv_out_kernel = 3;
    c->sample_size = 64;
}

#define CFG_ERR(...) dl_fail(DL_ERR_FORMAT, "unet config: " __VA_ARGS__)

/* A whole number that fits an int (the range test comes first: converting
 * an out-of-range double such as 1e300 to int is undefined). */
static int is_int(double d) { return d >= INT_MIN && d <= INT_MAX && d == (double)(int)d; }

/* An int (or a float holding an integer) if the key is present and not null. */
static dl_status opt_int(const cJSON *root, const char *key, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return DL_OK;
    if (!cJSON_IsNumber(v) || !is_int(v->valuedouble))
        return CFG_ERR("'%s' must be an integer", key);
    *out = (int)v->valuedouble;
    return DL_OK;
}

static dl_status opt_float(const cJSON *root, const char *key, float *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return DL_OK;
    if (!cJSON_IsNumber(v)) return CFG_ERR("'%s' must be a number", key);
    *out = (float)v->valuedouble;
    return DL_OK;
}

static dl_status opt_bool(const cJSON *root, const char *key, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return DL_OK;
    if (!cJSON_IsBool(v)) return CFG_ERR("'%s' must be true or false", key);
    *out = cJSON_IsTrue(v);
    return DL_OK;
}

/* An int for every level, or one int for all of them. */
static dl_status opt_per_level(const cJSON *root, const char *key, int levels, int out[])
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return DL_OK;
    if (cJSON_IsNumber(v)) {
        if (!is_int(v->valuedouble)) return CFG_ERR("'%s' must be an integer or a list of %d integers", key, levels);
        for (int i = 0; i < levels; i++) out[i] = (int)v->valuedouble;
        return DL_OK;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != levels)
        return CFG_ERR("'%s' must be an integer or a list of %d integers", key, levels);
    for (int i = 0; i < levels; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsNumber(e) || !is_int(e->valuedouble)) return CFG_ERR("'%s'[%d] is not an integer", key, i);
        out[i] = (int)e->valuedouble;
    }
    return DL_OK;
}

/* The key must be absent, null (or false / 0) - a feature we do not have. */
static dl_status must_be_off(const cJSON *root, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v) || cJSON_IsFalse(v)) return DL_OK;
    if (cJSON_IsNumber(v) && v->valuedouble == 0) return DL_OK;
    if (cJSON_IsArray(v)) {               /* e.g. only_cross_attention: [false, ...] */
        const cJSON *e;
        int on = 0;
        cJSON_ArrayForEach(e, v) on |= !(cJSON_IsFalse(e) || cJSON_IsNull(e));
        if (!on) return DL_OK;
    }
    return CFG_ERR("'%s' is set, which SD 1.x/2.x UNets do not use (not supported)", key);
}

/* The key, if present, must be this string. */
static dl_status must_be_str(const cJSON *root, const char *key, const char *want)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return DL_OK;
    if (!cJSON_IsString(v) || strcmp(v->valuestring, want) != 0)
        return CFG_ERR("'%s' must be \"%s\" (not supported otherwise)", key, want);
    return DL_OK;
}

static dl_status must_be_num(const cJSON *root, const char *key, double want)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return DL_OK;
    if (!cJSON_IsNumber(v) || v->valuedouble != want)
        return CFG_ERR("'%s' must be %g (not supported otherwise)", key, want);
    return DL_OK;
}

/* down_block_types / up_block_types: which levels have attention. */
static dl_status block_types(const cJSON *root, const char *key, int levels, const char *with_attn,
                             const char *without, int out[])
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return DL_OK;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != levels)
        return CFG_ERR("'%s' must list %d block types (one per block_out_channels)", key, levels);
    for (int i = 0; i < levels; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (cJSON_IsString(e) && strcmp(e->valuestring, with_attn) == 0) out[i] = 1;
        else if (cJSON_IsString(e) && strcmp(e->valuestring, without) == 0) out[i] = 0;
        else return CFG_ERR("%s[%d] must be \"%s\" or \"%s\"", key, i, with_attn, without);
    }
    return DL_OK;
}

static dl_status parse_root(sd_unet_config *c, const cJSON *root)
{
    const cJSON *boc = cJSON_GetObjectItemCaseSensitive(root, "block_out_channels");
    if (boc && !cJSON_IsNull(boc)) {
        int n = cJSON_IsArray(boc) ? cJSON_GetArraySize(boc) : 0;
        if (n < 1 || n > SD_UNET_MAX_LEVELS)
            return CFG_ERR("'block_out_channels' must be a list of 1 to %d integers", SD_UNET_MAX_LEVELS);
        int old = c->levels;
        c->levels = n;
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(boc, i);
            /* at most INT_MAX / 4: time_embed_dim is 4 * block_out_channels[0] */
            if (!cJSON_IsNumber(e) || e->valuedouble < 1 || e->valuedouble > INT_MAX / 4 || !is_int(e->valuedouble))
                return CFG_ERR("block_out_channels[%d] is not a positive integer (or absurdly large)", i);
            c->block_out_channels[i] = (int)e->valuedouble;
            if (i >= old) {                    /* levels beyond SD 1.5's: repeat its last one */
                c->heads[i] = c->heads[old - 1];
                c->transformer_layers[i] = 1;
            }
        }
        if (n != old && !cJSON_GetObjectItemCaseSensitive(root, "down_block_types"))
            return CFG_ERR("'down_block_types' is missing (block_out_channels has %d levels)", n);
        if (n != old && !cJSON_GetObjectItemCaseSensitive(root, "up_block_types"))
            return CFG_ERR("'up_block_types' is missing (block_out_channels has %d levels)", n);
        c->time_embed_dim = 4 * c->block_out_channels[0];
    }
    const int L = c->levels;
    DL_TRY(block_types(root, "down_block_types", L, "CrossAttnDownBlock2D", "DownBlock2D", c->down_attn));
    DL_TRY(block_types(root, "up_block_types", L, "CrossAttnUpBlock2D", "UpBlock2D", c->up_attn));
    DL_TRY(opt_int(root, "in_channels", &c->in_channels));
    DL_TRY(opt_int(root, "out_channels", &c->out_channels));
    const cJSON *lpb = cJSON_GetObjectItemCaseSensitive(root, "layers_per_block");
    if (lpb && cJSON_IsArray(lpb)) return CFG_ERR("a per-level 'layers_per_block' list is not supported");
    DL_TRY(opt_int(root, "layers_per_block", &c->layers_per_block));
    /* attention_head_dim is really the number of heads in SD configs (legacy
     * naming in diffusers); num_attention_heads, when given, says the same. */
    DL_TRY(opt_per_level(root, "attention_head_dim", L, c->heads));
    DL_TRY(opt_per_level(root, "num_attention_heads", L, c->heads));
    DL_TRY(opt_per_level(root, "transformer_layers_per_block", L, c->transformer_layers));
    const cJSON *cad = cJSON_GetObjectItemCaseSensitive(root, "cross_attention_dim");
    if (cad && cJSON_IsArray(cad)) return CFG_ERR("a per-level 'cross_attention_dim' list is not supported");
    DL_TRY(opt_int(root, "cross_attention_dim", &c->cross_attention_dim));
    DL_TRY(opt_bool(root, "use_linear_projection", &c->use_linear_projection));
    DL_TRY(opt_int(root, "norm_num_groups", &c->norm_num_groups));
    DL_TRY(opt_float(root, "norm_eps", &c->norm_eps));
    DL_TRY(opt_bool(root, "flip_sin_to_cos", &c->flip_sin_to_cos));
    DL_TRY(opt_float(root, "freq_shift", &c->freq_shift));
    DL_TRY(opt_int(root, "time_embedding_dim", &c->time_embed_dim));
    DL_TRY(opt_int(root, "downsample_padding", &c->downsample_padding));
    DL_TRY(opt_int(root, "conv_in_kernel", &c->conv_in_kernel));
    DL_TRY(opt_int(root, "conv_out_kernel", &c->conv_out_kernel));
    DL_TRY(opt_bool(root, "center_input_sample", &c->center_input_sample));
    DL_TRY(opt_bool(root, "upcast_attention", &c->upcast_attention));
    DL_TRY(opt_int(root, "sample_size", &c->sample_size));
    /* what SD 1.x / 2.x never use */
    static const char *const off[] = {
        "class_embed_type", "addition_embed_type", "time_cond_proj_dim", "encoder_hid_dim",
        "encoder_hid_dim_type", "num_class_embeds", "projection_class_embeddings_input_dim",
        "timestep_post_act", "time_embedding_act_fn", "only_cross_attention", "dual_cross_attention",
        "resnet_skip_time_act", "class_embeddings_concat", "mid_block_only_cross_attention",
        "reverse_transformer_layers_per_block", "addition_time_embed_dim"};
    for (size_t i = 0; i < sizeof off / sizeof off[0]; i++) DL_TRY(must_be_off(root, off[i]));
    DL_TRY(must_be_str(root, "act_fn", "silu"));
    DL_TRY(must_be_str(root, "resnet_time_scale_shift", "default"));
    DL_TRY(must_be_str(root, "time_embedding_type", "positional"));
    DL_TRY(must_be_str(root, "attention_type", "default"));
    DL_TRY(must_be_str(root, "mid_block_type", "UNetMidBlock2DCrossAttn"));
    DL_TRY(must_be_num(root, "mid_block_scale_factor", 1.0));
    DL_TRY(must_be_num(root, "resnet_out_scale_factor", 1.0));
    return DL_OK;
}

static dl_status validate(const sd_unet_config *c)
{
    if (c->levels < 1 || c->levels > SD_UNET_MAX_LEVELS) return CFG_ERR("%d levels", c->levels);
    if (c->in_channels < 1 || c->out_channels < 1 || c->layers_per_block < 1 || c->cross_attention_dim < 1 ||
        c->norm_num_groups < 1 || c->time_embed_dim < 1)
        return CFG_ERR("channels, layers_per_block, cross_attention_dim, norm_num_groups must be positive");
    if (c->conv_in_kernel < 1 || c->conv_in_kernel % 2 == 0 || c->conv_out_kernel < 1 || c->conv_out_kernel % 2 == 0)
        return CFG_ERR("conv_in_kernel / conv_out_kernel must be odd");
    if (c->block_out_channels[0] % 2) return CFG_ERR("block_out_channels[0] must be even (time_proj)");
    if (c->layers_per_block > SD_UNET_MAX_SKIPS || sd_unet_num_skips(c) > SD_UNET_MAX_SKIPS)   /* first test: no overflow */
        return CFG_ERR("too many skip connections");
    for (int i = 0; i < c->levels; i++) {
        int C = c->block_out_channels[i];
        if (C % c->norm_num_groups) return CFG_ERR("block_out_channels[%d] = %d is not a multiple of norm_num_groups %d", i, C, c->norm_num_groups);
        if (c->heads[i] < 1 || C % c->heads[i]) return CFG_ERR("level %d: %d channels do not split into %d heads", i, C, c->heads[i]);
        if (c->transformer_layers[i] < 1) return CFG_ERR("transformer_layers_per_block must be >= 1");
    }
    return DL_OK;
}

dl_status sd_unet_config_parse(sd_unet_config *c, const char *json)
{
    sd_unet_config_sd15(c);
    if (!json) return dl_fail(DL_ERR_ARG, "unet config: no JSON text");
    cJSON *root = cJSON_Parse(json);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return CFG_ERR("not a JSON object");
    }
    dl_status s = parse_root(c, root);
    cJSON_Delete(root);
    DL_TRY(s);
    return validate(c);
}

int sd_unet_num_skips(const sd_unet_config *c)
{
    return 1 + c->levels * c->layers_per_block + (c->levels - 1);
}

void sd_unet_skip_info(const sd_unet_config *c, int k, int *channels, int *downscale)
{
    *channels = c->block_out_channels[0];
    *downscale = 1;
    if (k <= 0) return;
    k--;
    for (int i = 0; i < c->levels; i++) {
        int n = c->layers_per_block + (i < c->levels - 1);
        if (k < n) {
            *channels = c->block_out_channels[i];
            *downscale = (1 << i) * (k == c->layers_per_block ? 2 : 1);
            return;
        }
        k -= n;
    }
}

/* ======================================================================== */
/* Scratch size                                                              */

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

size_t sd_unet_scratch_floats(const sd_unet_config *c, int B, int h, int w, int Lc)
{
    int skipC[SD_UNET_MAX_SKIPS], skipH[SD_UNET_MAX_SKIPS], skipW[SD_UNET_MAX_SKIPS], n = 0;
    size_t m = 0;
    int H = h, W = w, C = c->block_out_channels[0];
    skipC[n] = C; skipH[n] = H; skipW[n++] = W;
    for (int i = 0; i < c->levels; i++) {
        int Co = c->block_out_channels[i];
        for (int j = 0; j < c->layers_per_block; j++) {
            m = max_sz(m, sd_resnet_scratch_floats(B, C, Co, H, W));
            C = Co;
            if (c->down_attn[i]) m = max_sz(m, sd_transformer_scratch_floats(B, Co, H, W, Lc));
            skipC[n] = C; skipH[n] = H; skipW[n++] = W;
        }
        if (i < c->levels - 1) {
            m = max_sz(m, sd_downsample_scratch_floats(B, C, H, W, c->downsample_padding));
            H = sd_downsample_size(H, c->downsample_padding);
            W = sd_downsample_size(W, c->downsample_padding);
            skipC[n] = C; skipH[n] = H; skipW[n++] = W;
        }
    }
    m = max_sz(m, sd_resnet_scratch_floats(B, C, C, H, W));
    m = max_sz(m, sd_transformer_scratch_floats(B, C, H, W, Lc));
    for (int i = 0; i < c->levels; i++) {
        int lvl = c->levels - 1 - i, Co = c->block_out_channels[lvl];
        for (int j = 0; j <= c->layers_per_block; j++) {
            n--;
            m = max_sz(m, sd_resnet_scratch_floats(B, C + skipC[n], Co, H, W));
            C = Co;
            if (c->up_attn[i]) m = max_sz(m, sd_transformer_scratch_floats(B, Co, H, W, Lc));
        }
        if (i < c->levels - 1 && n > 0) {
            H = skipH[n - 1];
            W = skipW[n - 1];
            m = max_sz(m, sd_upsample_scratch_floats(B, C, H, W));
        }
    }
    return m + 1024;
}

/* ======================================================================== */
/* Forward                                                                   */

typedef struct {
    dl_tensor skips[SD_UNET_MAX_SKIPS];
    int       n_skips;
    dl_tensor h;              /* the current hidden state (owned, or a view of a skip) */
    dl_tensor tmp, tmp2;      /* a block's output before it becomes h                 */
    dl_tensor tproj, temb, temb1;
} unet_state;

static void state_free(unet_state *s)
{
    for (int i = 0; i < s->n_skips; i++) dl_tensor_free(&s->skips[i]);
    dl_tensor *t[] = {&s->h, &s->tmp, &s->tmp2, &s->tproj, &s->temb, &s->temb1};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) dl_tensor_free(t[i]);
}

static dl_status act(dl_tensor *t, int64_t B, int64_t C, int64_t H, int64_t W)
{
    return dl_tensor_alloc(t, 4, DL_SHAPE(B, C, H, W));
}

/* h becomes a skip: the skip list owns it, h keeps a view. */
static void push_skip(unet_state *s)
{
    s->skips[s->n_skips++] = s->h;
    s->h.owns_data = 0;
}

/* Replace h by tmp (freeing h if it is owned). */
static void take_tmp(unet_state *s)
{
    dl_tensor_free(&s->h);
    s->h = s->tmp;
    memset(&s->tmp, 0, sizeof s->tmp);
}

/* resnet [+ transformer] at one position of a down / up block; the result is in s->h. */
static dl_status res_attn(const sd_ctx *cx, unet_state *s, const sd_unet_config *c, const char *blk, int j,
                          int Co, int attn, int lvl, const dl_tensor *temb_act, const dl_tensor *context)
{
    char name[128];
    const int64_t B = s->h.shape[0], H = s->h.shape[2], W = s->h.shape[3];
    DL_TRY(act(&s->tmp, B, Co, H, W));
    snprintf(name, sizeof name, "%s.resnets.%d", blk, j);
    DL_TRY(sd_resnet_forward(cx, name, &s->tmp, &s->h, temb_act, c->norm_eps));
    take_tmp(s);
    if (!attn) return DL_OK;
    DL_TRY(act(&s->tmp, B, Co, H, W));
    snprintf(name, sizeof name, "%s.attentions.%d", blk, j);
    DL_TRY(sd_transformer_forward(cx, name, &s->tmp, &s->h, context, c->heads[lvl], c->transformer_layers[lvl],
                                  c->use_linear_projection));
    take_tmp(s);
    return DL_OK;
}

static dl_status forward_body(sd_unet *u, unet_state *s, dl_tensor *out, const dl_tensor *sample,
                              const float *timesteps, const dl_tensor *context, const sd_unet_residuals *extra)
{
    const sd_unet_config *c = &u->cfg;
    const int B = (int)sample->shape[0];
    const int C0 = c->block_out_channels[0];
    sd_ctx cx = {.w = u->weights, .part = SD_PART_UNET, .arena = &u->scratch, .groups = c->norm_num_groups,
                 .hook = u->hook, .hook_ctx = u->hook_ctx};
    char name[128];

    /* time: sinusoidal features -> linear -> SiLU -> linear; resnets get silu(temb) */
    DL_TRY(dl_tensor_alloc(&s->tproj, 2, DL_SHAPE(B, C0)));
    DL_TRY(dl_tensor_alloc(&s->temb1, 2, DL_SHAPE(B, c->time_embed_dim)));
    DL_TRY(dl_tensor_alloc(&s->temb, 2, DL_SHAPE(B, c->time_embed_dim)));
    DL_TRY(timestep_embedding_forward(&s->tproj, timesteps, B, C0, c->flip_sin_to_cos, c->freq_shift, 1.0f, 10000));
    sd_emit(&cx, "time_proj", NULL, &s->tproj);
    DL_TRY(sd_linear(&cx, "time_embedding.linear_1", &s->temb1, &s->tproj, 1));
    DL_TRY(silu_forward(&s->temb1, &s->temb1));
    DL_TRY(sd_linear(&cx, "time_embedding.linear_2", &s->temb, &s->temb1, 1));
    sd_emit(&cx, "time_embedding", NULL, &s->temb);
    DL_TRY(silu_forward(&s->temb, &s->temb));
    const dl_tensor *temb_act = &s->temb;

    /* conv_in: the first skip */
    const int64_t h = sample->shape[2], w = sample->shape[3];
    DL_TRY(act(&s->h, B, C0, h, w));
    if (c->center_input_sample) {
        DL_TRY(act(&s->tmp, B, c->in_channels, h, w));
        for (int64_t i = 0; i < sample->numel; i++) s->tmp.data[i] = 2.0f * sample->data[i] - 1.0f;
        DL_TRY(sd_conv(&cx, "conv_in", &s->h, &s->tmp, c->conv_in_kernel, 1, c->conv_in_kernel / 2));
        dl_tensor_free(&s->tmp);
    } else {
        DL_TRY(sd_conv(&cx, "conv_in", &s->h, sample, c->conv_in_kernel, 1, c->conv_in_kernel / 2));
    }
    sd_emit(&cx, "conv_in", NULL, &s->h);
    push_skip(s);

    /* down blocks: every resnet(+attention) output and every downsampler output is a skip */
    for (int i = 0; i < c->levels; i++) {
        const int Co = c->block_out_channels[i], first = s->n_skips;
        char blk[64];
        snprintf(blk, sizeof blk, "down_blocks.%d", i);
        for (int j = 0; j < c->layers_per_block; j++) {
            DL_TRY(res_attn(&cx, s, c, blk, j, Co, c->down_attn[i], i, temb_act, context));
            push_skip(s);
        }
        if (i < c->levels - 1) {
            const int64_t Ho = sd_downsample_size((int)s->h.shape[2], c->downsample_padding);
            const int64_t Wo = sd_downsample_size((int)s->h.shape[3], c->downsample_padding);
            DL_TRY(act(&s->tmp, B, Co, Ho, Wo));
            snprintf(name, sizeof name, "%s.downsamplers.0", blk);
            DL_TRY(sd_downsample_forward(&cx, name, &s->tmp, &s->h, c->downsample_padding));
            take_tmp(s);
            push_skip(s);
        }
        sd_emit(&cx, blk, "hidden_states", &s->h);
        for (int k = first; k < s->n_skips; k++) {
            snprintf(name, sizeof name, "%s.res_samples.%d", blk, k - first);
            sd_emit(&cx, name, NULL, &s->skips[k]);
        }
    }

    /* mid block: resnet, transformer, resnet */
    {
        const int lvl = c->levels - 1, Cm = c->block_out_channels[lvl];
        const int64_t H = s->h.shape[2], W = s->h.shape[3];
        DL_TRY(act(&s->tmp, B, Cm, H, W));
        DL_TRY(sd_resnet_forward(&cx, "mid_block.resnets.0", &s->tmp, &s->h, temb_act, c->norm_eps));
        take_tmp(s);
        DL_TRY(act(&s->tmp, B, Cm, H, W));
        DL_TRY(sd_transformer_forward(&cx, "mid_block.attentions.0", &s->tmp, &s->h, context, c->heads[lvl],
                                      c->transformer_layers[lvl], c->use_linear_projection));
        take_tmp(s);
        DL_TRY(act(&s->tmp, B, Cm, H, W));
        DL_TRY(sd_resnet_forward(&cx, "mid_block.resnets.1", &s->tmp, &s->h, temb_act, c->norm_eps));
        take_tmp(s);
        if (extra && extra->mid) {
            DL_TRY(dl_check_shape(extra->mid, "sd_unet", "mid_block_additional_residual", 4, s->h.shape));
            DL_TRY(add_forward(&s->h, &s->h, extra->mid));
        }
        sd_emit(&cx, "mid_block", NULL, &s->h);
    }

    /* ControlNet: residuals added to every skip. Only the skips change: the
     * mid block still reads the down path's own output (as in diffusers). */
    if (extra && extra->n_down > 0) {
        for (int k = 0; k < s->n_skips; k++) {
            snprintf(name, sizeof name, "down_block_additional_residuals[%d]", k);
            DL_TRY(dl_check_shape(extra->down[k], "sd_unet", name, 4, s->skips[k].shape));
            DL_TRY(add_forward(&s->skips[k], &s->skips[k], extra->down[k]));
        }
    }

    /* up blocks: each resnet first concatenates the latest skip onto h */
    for (int i = 0; i < c->levels; i++) {
        const int lvl = c->levels - 1 - i, Co = c->block_out_channels[lvl];
        char blk[64];
        snprintf(blk, sizeof blk, "up_blocks.%d", i);
        for (int j = 0; j <= c->layers_per_block; j++) {
            dl_tensor *skip = &s->skips[s->n_skips - 1];
            DL_TRY(act(&s->tmp, B, s->h.shape[1] + skip->shape[1], s->h.shape[2], s->h.shape[3]));
            DL_TRY(concat_channels_forward(&s->tmp, &s->h, skip));       /* cat([h, skip], dim=1) */
            dl_tensor_free(skip);
            s->n_skips--;
            take_tmp(s);
            DL_TRY(res_attn(&cx, s, c, blk, j, Co, c->up_attn[i], lvl, temb_act, context));
        }
        if (i < c->levels - 1) {
            /* upsample to the size of the skip it meets next (2x unless the
             * latent size is not divisible by the total stride) */
            const dl_tensor *next = &s->skips[s->n_skips - 1];
            DL_TRY(act(&s->tmp, B, Co, next->shape[2], next->shape[3]));
            snprintf(name, sizeof name, "%s.upsamplers.0", blk);
            DL_TRY(sd_upsample_forward(&cx, name, &s->tmp, &s->h));
            take_tmp(s);
        }
        sd_emit(&cx, blk, NULL, &s->h);
    }

    /* out: GroupNorm -> SiLU -> conv_out */
    DL_TRY(act(&s->tmp, B, C0, s->h.shape[2], s->h.shape[3]));
    DL_TRY(sd_group_norm(&cx, "conv_norm_out", &s->tmp, &s->h, c->norm_eps));
    take_tmp(s);
    sd_emit(&cx, "conv_norm_out", NULL, &s->h);
    DL_TRY(silu_forward(&s->h, &s->h));
    sd_emit(&cx, "conv_act", NULL, &s->h);
    DL_TRY(sd_conv(&cx, "conv_out", out, &s->h, c->conv_out_kernel, 1, c->conv_out_kernel / 2));
    sd_emit(&cx, "conv_out", NULL, out);
    return DL_OK;
}

dl_status sd_unet_forward(sd_unet *u, dl_tensor *out, const dl_tensor *sample, const float *timesteps,
                          const dl_tensor *context, const sd_unet_residuals *extra)
{
    const sd_unet_config *c = &u->cfg;
    if (!timesteps) return dl_fail(DL_ERR_ARG, "sd_unet: timesteps is NULL");
    DL_TRY(dl_check_shape(sample, "sd_unet", "sample", 4, DL_SHAPE(-1, c->in_channels, -1, -1)));
    const int64_t B = sample->shape[0];
    DL_TRY(dl_check_shape(out, "sd_unet", "out", 4, DL_SHAPE(B, c->out_channels, sample->shape[2], sample->shape[3])));
    DL_TRY(dl_check_shape(context, "sd_unet", "encoder_hidden_states", 3, DL_SHAPE(B, -1, c->cross_attention_dim)));
    if (extra && extra->n_down > 0) {
        if (extra->n_down != sd_unet_num_skips(c))
            return dl_fail(DL_ERR_ARG, "sd_unet: %d down_block_additional_residuals given, the UNet has %d skips",
                           extra->n_down, sd_unet_num_skips(c));
        for (int k = 0; k < extra->n_down; k++) {
            int ch, ds;
            char name[64];
            sd_unet_skip_info(c, k, &ch, &ds);
            snprintf(name, sizeof name, "down_block_additional_residuals[%d]", k);
            DL_TRY(dl_check_shape(extra->down[k], "sd_unet", name, 4, DL_SHAPE(B, ch, -1, -1)));
        }
    }
    size_t need = sd_unet_scratch_floats(c, (int)B, (int)sample->shape[2], (int)sample->shape[3],
                                         (int)context->shape[1]);
    if (u->scratch.capacity < need) {
        dl_arena_free(&u->scratch);
        DL_TRY(dl_arena_init(&u->scratch, need));
    }
    unet_state s;
    memset(&s, 0, sizeof s);
    size_t mark = dl_arena_mark(&u->scratch);
    dl_status st = forward_body(u, &s, out, sample, timesteps, context, extra);
    dl_arena_reset(&u->scratch, mark);
    state_free(&s);
    return st;
}

dl_status sd_unet_init_config(sd_unet *u, sd_weights *w, const sd_unet_config *cfg)
{
    memset(u, 0, sizeof *u);
    if (!w) return dl_fail(DL_ERR_ARG, "sd_unet: no weights");
    DL_TRY(validate(cfg));
    u->cfg = *cfg;
    u->weights = w;
    return DL_OK;
}

dl_status sd_unet_init(sd_unet *u, sd_weights *w)
{
    memset(u, 0, sizeof *u);
    if (!w) return dl_fail(DL_ERR_ARG, "sd_unet: no weights");
    sd_unet_config cfg;
    const char *json = sd_weights_config_json(w, SD_PART_UNET);
    if (json) DL_TRY(sd_unet_config_parse(&cfg, json));
    else sd_unet_config_sd15(&cfg);
    return sd_unet_init_config(u, w, &cfg);
}

void sd_unet_free(sd_unet *u)
{
    dl_arena_free(&u->scratch);
    memset(u, 0, sizeof *u);
}
