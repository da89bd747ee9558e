/* sd_vae.c - see sd_vae.h. Config reader, decoder, encoder. */
#include "sd_vae.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "elementwise.h"

#define VAE_EPS 1e-6f     /* every GroupNorm of the VAE (resnets, attention, norm_out) */

/* ======================================================================== */
/* Configuration                                                             */

void sd_vae_config_sd15(sd_vae_config *c)
{
    memset(c, 0, sizeof *c);
    c->in_channels = 3;
    c->out_channels = 3;
    c->latent_channels = 4;
    c->levels = 4;
    const int boc[4] = {128, 256, 512, 512};
    for (int i = 0; i < 4; i++) c->block_out_channels[i] = boc[i];
    c->layers_per_block = 2;
    c->norm_num_groups = 32;
    c->scaling_factor = 0.18215f;
    c->use_quant_conv = 1;
    c->use_post_quant_conv = 1;
    c->mid_block_add_attention = 1;
}

#define CFG_ERR(...) dl_fail(DL_ERR_FORMAT, "vae config: " __VA_ARGS__)

static dl_status opt_num(const cJSON *root, const char *key, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return DL_OK;
    if (cJSON_IsBool(v)) { *out = cJSON_IsTrue(v); return DL_OK; }
    if (!cJSON_IsNumber(v)) return CFG_ERR("'%s' must be a number", key);
    *out = v->valuedouble;
    return DL_OK;
}

static dl_status opt_int(const cJSON *root, const char *key, int *out)
{
    double d = *out;
    DL_TRY(opt_num(root, key, &d));
    if (!(d >= INT_MIN && d <= INT_MAX) || d != (double)(int)d)   /* range first: (int)1e300 is undefined */
        return CFG_ERR("'%s' must be an integer", key);
    *out = (int)d;
    return DL_OK;
}

static dl_status block_types(const cJSON *root, const char *key, int levels, const char *want)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return DL_OK;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != levels)
        return CFG_ERR("'%s' must list %d block types", key, levels);
    for (int i = 0; i < levels; i++) {
        const cJSON *e = cJSON_GetArrayItem(v, i);
        if (!cJSON_IsString(e) || strcmp(e->valuestring, want) != 0)
            return CFG_ERR("%s[%d] must be \"%s\"", key, i, want);
    }
    return DL_OK;
}

static dl_status parse_root(sd_vae_config *c, const cJSON *root)
{
    const cJSON *boc = cJSON_GetObjectItemCaseSensitive(root, "block_out_channels");
    if (boc && !cJSON_IsNull(boc)) {
        int n = cJSON_IsArray(boc) ? cJSON_GetArraySize(boc) : 0;
        if (n < 1 || n > SD_VAE_MAX_LEVELS)
            return CFG_ERR("'block_out_channels' must be a list of 1 to %d integers", SD_VAE_MAX_LEVELS);
        c->levels = n;
        for (int i = 0; i < n; i++) {
            const cJSON *e = cJSON_GetArrayItem(boc, i);
            if (!cJSON_IsNumber(e) || !(e->valuedouble >= 1 && e->valuedouble <= INT_MAX))
                return CFG_ERR("block_out_channels[%d] is not a positive integer", i);
            c->block_out_channels[i] = (int)e->valuedouble;
        }
    }
    DL_TRY(block_types(root, "down_block_types", c->levels, "DownEncoderBlock2D"));
    DL_TRY(block_types(root, "up_block_types", c->levels, "UpDecoderBlock2D"));
    DL_TRY(opt_int(root, "in_channels", &c->in_channels));
    DL_TRY(opt_int(root, "out_channels", &c->out_channels));
    DL_TRY(opt_int(root, "latent_channels", &c->latent_channels));
    DL_TRY(opt_int(root, "layers_per_block", &c->layers_per_block));
    DL_TRY(opt_int(root, "norm_num_groups", &c->norm_num_groups));
    DL_TRY(opt_int(root, "use_quant_conv", &c->use_quant_conv));
    DL_TRY(opt_int(root, "use_post_quant_conv", &c->use_post_quant_conv));
    DL_TRY(opt_int(root, "mid_block_add_attention", &c->mid_block_add_attention));
    double sf = c->scaling_factor;
    DL_TRY(opt_num(root, "scaling_factor", &sf));
    c->scaling_factor = (float)sf;
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "act_fn");
    if (act && !cJSON_IsNull(act) && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu") != 0))
        return CFG_ERR("'act_fn' must be \"silu\"");
    return DL_OK;
}

static dl_status validate(const sd_vae_config *c)
{
    if (c->in_channels < 1 || c->out_channels < 1 || c->latent_channels < 1 || c->layers_per_block < 1 ||
        c->norm_num_groups < 1 || c->levels < 1 || c->levels > SD_VAE_MAX_LEVELS)
        return CFG_ERR("channels, levels, layers_per_block and norm_num_groups must be positive");
    for (int i = 0; i < c->levels; i++)
        if (c->block_out_channels[i] % c->norm_num_groups)
            return CFG_ERR("block_out_channels[%d] = %d is not a multiple of norm_num_groups %d", i,
                           c->block_out_channels[i], c->norm_num_groups);
    if (!(c->scaling_factor > 0)) return CFG_ERR("scaling_factor must be positive");
    return DL_OK;
}

dl_status sd_vae_config_parse(sd_vae_config *c, const char *json)
{
    sd_vae_config_sd15(c);
    if (!json) return dl_fail(DL_ERR_ARG, "vae config: no JSON text");
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

int sd_vae_downscale(const sd_vae_config *c) { return 1 << (c->levels - 1); }

dl_status sd_vae_init_config(sd_vae *v, sd_weights *w, const sd_vae_config *cfg)
{
    memset(v, 0, sizeof *v);
    if (!w) return dl_fail(DL_ERR_ARG, "sd_vae: no weights");
    DL_TRY(validate(cfg));
    v->cfg = *cfg;
    v->weights = w;
    return DL_OK;
}

dl_status sd_vae_init(sd_vae *v, sd_weights *w)
{
    memset(v, 0, sizeof *v);
    if (!w) return dl_fail(DL_ERR_ARG, "sd_vae: no weights");
    sd_vae_config cfg;
    const char *json = sd_weights_config_json(w, SD_PART_VAE);
    if (json) DL_TRY(sd_vae_config_parse(&cfg, json));
    else sd_vae_config_sd15(&cfg);
    return sd_vae_init_config(v, w, &cfg);
}

void sd_vae_free(sd_vae *v)
{
    dl_arena_free(&v->scratch);
    memset(v, 0, sizeof *v);
}

/* ======================================================================== */
/* Scratch sizes                                                             */

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static size_t mid_scratch(int B, int C, int H, int W, int attn)
{
    size_t m = sd_resnet_scratch_floats(B, C, C, H, W);
    return attn ? max_sz(m, sd_vae_attention_scratch_floats(B, C, H, W)) : m;
}

static size_t decoder_scratch(const sd_vae_config *c, int B, int h, int w)
{
    int C = c->block_out_channels[c->levels - 1], H = h, W = w;
    size_t m = mid_scratch(B, C, H, W, c->mid_block_add_attention);
    for (int i = 0; i < c->levels; i++) {
        int Co = c->block_out_channels[c->levels - 1 - i];
        for (int j = 0; j <= c->layers_per_block; j++) {
            m = max_sz(m, sd_resnet_scratch_floats(B, C, Co, H, W));
            C = Co;
        }
        if (i < c->levels - 1) {
            H *= 2;
            W *= 2;
            m = max_sz(m, sd_upsample_scratch_floats(B, C, H, W));
        }
    }
    return m + 1024;
}

static size_t encoder_scratch(const sd_vae_config *c, int B, int H, int W)
{
    int C = c->block_out_channels[0];
    size_t m = 0;
    for (int i = 0; i < c->levels; i++) {
        int Co = c->block_out_channels[i];
        for (int j = 0; j < c->layers_per_block; j++) {
            m = max_sz(m, sd_resnet_scratch_floats(B, C, Co, H, W));
            C = Co;
        }
        if (i < c->levels - 1) {
            m = max_sz(m, sd_downsample_scratch_floats(B, C, H, W, 0));
            H = sd_downsample_size(H, 0);
            W = sd_downsample_size(W, 0);
        }
    }
    return max_sz(m, mid_scratch(B, C, H, W, c->mid_block_add_attention)) + 1024;
}

static dl_status reserve(sd_vae *v, size_t floats)
{
    dl_arena_free(&v->scratch);
    return dl_arena_init(&v->scratch, floats);
}

/* ======================================================================== */
/* Forward passes                                                            */

/* h = the current activation (owned), tmp = the block output being made */
typedef struct { dl_tensor h, tmp; } vae_state;

static void take_tmp(vae_state *s)
{
    dl_tensor_free(&s->h);
    s->h = s->tmp;
    memset(&s->tmp, 0, sizeof s->tmp);
}

static dl_status act(dl_tensor *t, int64_t B, int64_t C, int64_t H, int64_t W)
{
    return dl_tensor_alloc(t, 4, DL_SHAPE(B, C, H, W));
}

/* "<part>.mid_block": resnet, attention, resnet at C channels. */
static dl_status mid_block(const sd_ctx *cx, vae_state *s, const char *part, int attn)
{
    const int64_t B = s->h.shape[0], C = s->h.shape[1], H = s->h.shape[2], W = s->h.shape[3];
    char name[128];
    snprintf(name, sizeof name, "%s.mid_block.resnets.0", part);
    DL_TRY(act(&s->tmp, B, C, H, W));
    DL_TRY(sd_resnet_forward(cx, name, &s->tmp, &s->h, NULL, VAE_EPS));
    take_tmp(s);
    if (attn) {
        snprintf(name, sizeof name, "%s.mid_block.attentions.0", part);
        DL_TRY(act(&s->tmp, B, C, H, W));
        DL_TRY(sd_vae_attention_forward(cx, name, &s->tmp, &s->h));
        take_tmp(s);
    }
    snprintf(name, sizeof name, "%s.mid_block.resnets.1", part);
    DL_TRY(act(&s->tmp, B, C, H, W));
    DL_TRY(sd_resnet_forward(cx, name, &s->tmp, &s->h, NULL, VAE_EPS));
    take_tmp(s);
    snprintf(name, sizeof name, "%s.mid_block", part);
    sd_emit(cx, name, NULL, &s->h);
    return DL_OK;
}

/* "<part>.conv_norm_out" -> SiLU -> "<part>.conv_out" into out. */
static dl_status norm_act_conv(const sd_ctx *cx, vae_state *s, const char *part, dl_tensor *out)
{
    char name[128];
    snprintf(name, sizeof name, "%s.conv_norm_out", part);
    DL_TRY(sd_group_norm(cx, name, &s->h, &s->h, VAE_EPS));         /* in place */
    DL_TRY(silu_forward(&s->h, &s->h));
    snprintf(name, sizeof name, "%s.conv_out", part);
    return sd_conv(cx, name, out, &s->h, 3, 1, 1);
}

static dl_status decode_body(sd_vae *v, vae_state *s, dl_tensor *image, const dl_tensor *z)
{
    const sd_vae_config *c = &v->cfg;
    sd_ctx cx = {.w = v->weights, .part = SD_PART_VAE, .arena = &v->scratch, .groups = c->norm_num_groups,
                 .hook = v->hook, .hook_ctx = v->hook_ctx};
    const int64_t B = z->shape[0], h = z->shape[2], w = z->shape[3];
    char name[128];
    /* post_quant_conv (1x1) then conv_in to the deepest level's channels */
    const dl_tensor *zin = z;
    if (c->use_post_quant_conv) {
        DL_TRY(act(&s->tmp, B, c->latent_channels, h, w));
        DL_TRY(sd_conv(&cx, "post_quant_conv", &s->tmp, z, 1, 1, 0));
        take_tmp(s);
        zin = &s->h;
    }
    DL_TRY(act(&s->tmp, B, c->block_out_channels[c->levels - 1], h, w));
    DL_TRY(sd_conv(&cx, "decoder.conv_in", &s->tmp, zin, 3, 1, 1));
    take_tmp(s);
    DL_TRY(mid_block(&cx, s, "decoder", c->mid_block_add_attention));
    /* up blocks, channels in reverse; every one but the last doubles the size */
    for (int i = 0; i < c->levels; i++) {
        const int64_t Co = c->block_out_channels[c->levels - 1 - i];
        for (int j = 0; j <= c->layers_per_block; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            DL_TRY(act(&s->tmp, B, Co, s->h.shape[2], s->h.shape[3]));
            DL_TRY(sd_resnet_forward(&cx, name, &s->tmp, &s->h, NULL, VAE_EPS));
            take_tmp(s);
        }
        if (i < c->levels - 1) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0", i);
            DL_TRY(act(&s->tmp, B, Co, 2 * s->h.shape[2], 2 * s->h.shape[3]));
            DL_TRY(sd_upsample_forward(&cx, name, &s->tmp, &s->h));
            take_tmp(s);
        }
        snprintf(name, sizeof name, "decoder.up_blocks.%d", i);
        sd_emit(&cx, name, NULL, &s->h);
    }
    return norm_act_conv(&cx, s, "decoder", image);
}

static dl_status encode_body(sd_vae *v, vae_state *s, dl_tensor *moments, const dl_tensor *image)
{
    const sd_vae_config *c = &v->cfg;
    sd_ctx cx = {.w = v->weights, .part = SD_PART_VAE, .arena = &v->scratch, .groups = c->norm_num_groups,
                 .hook = v->hook, .hook_ctx = v->hook_ctx};
    const int64_t B = image->shape[0];
    char name[128];
    DL_TRY(act(&s->tmp, B, c->block_out_channels[0], image->shape[2], image->shape[3]));
    DL_TRY(sd_conv(&cx, "encoder.conv_in", &s->tmp, image, 3, 1, 1));
    take_tmp(s);
    for (int i = 0; i < c->levels; i++) {
        const int64_t Co = c->block_out_channels[i];
        for (int j = 0; j < c->layers_per_block; j++) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.resnets.%d", i, j);
            DL_TRY(act(&s->tmp, B, Co, s->h.shape[2], s->h.shape[3]));
            DL_TRY(sd_resnet_forward(&cx, name, &s->tmp, &s->h, NULL, VAE_EPS));
            take_tmp(s);
        }
        if (i < c->levels - 1) {
            snprintf(name, sizeof name, "encoder.down_blocks.%d.downsamplers.0", i);
            DL_TRY(act(&s->tmp, B, Co, sd_downsample_size((int)s->h.shape[2], 0),
                       sd_downsample_size((int)s->h.shape[3], 0)));
            DL_TRY(sd_downsample_forward(&cx, name, &s->tmp, &s->h, 0));
            take_tmp(s);
        }
        snprintf(name, sizeof name, "encoder.down_blocks.%d", i);
        sd_emit(&cx, name, NULL, &s->h);
    }
    DL_TRY(mid_block(&cx, s, "encoder", c->mid_block_add_attention));
    /* norm_out -> SiLU -> conv_out (2 x latent channels: mean and logvar) -> quant_conv */
    if (!c->use_quant_conv) return norm_act_conv(&cx, s, "encoder", moments);
    dl_tensor pre;
    DL_TRY(act(&pre, B, 2 * c->latent_channels, s->h.shape[2], s->h.shape[3]));
    dl_status st = norm_act_conv(&cx, s, "encoder", &pre);
    if (st == DL_OK) st = sd_conv(&cx, "quant_conv", moments, &pre, 1, 1, 0);
    dl_tensor_free(&pre);
    return st;
}

dl_status sd_vae_decode(sd_vae *v, dl_tensor *image, const dl_tensor *z)
{
    const sd_vae_config *c = &v->cfg;
    const int f = sd_vae_downscale(c);
    DL_TRY(dl_check_shape(z, "sd_vae_decode", "latents", 4, DL_SHAPE(-1, c->latent_channels, -1, -1)));
    DL_TRY(dl_check_shape(image, "sd_vae_decode", "image", 4,
                          DL_SHAPE(z->shape[0], c->out_channels, z->shape[2] * f, z->shape[3] * f)));
    DL_TRY(reserve(v, decoder_scratch(c, (int)z->shape[0], (int)z->shape[2], (int)z->shape[3])));
    vae_state s;
    memset(&s, 0, sizeof s);
    dl_status st = decode_body(v, &s, image, z);
    dl_tensor_free(&s.h);
    dl_tensor_free(&s.tmp);
    v->scratch_peak = v->scratch.peak;
    dl_arena_free(&v->scratch);
    return st;
}

dl_status sd_vae_encode(sd_vae *v, dl_tensor *moments, const dl_tensor *image)
{
    const sd_vae_config *c = &v->cfg;
    const int f = sd_vae_downscale(c);
    DL_TRY(dl_check_shape(image, "sd_vae_encode", "image", 4, DL_SHAPE(-1, c->in_channels, -1, -1)));
    if (image->shape[2] % f || image->shape[3] % f)
        return dl_fail(DL_ERR_SHAPE, "sd_vae_encode: image size %lldx%lld is not a multiple of %d",
                       (long long)image->shape[2], (long long)image->shape[3], f);
    DL_TRY(dl_check_shape(moments, "sd_vae_encode", "moments", 4,
                          DL_SHAPE(image->shape[0], 2 * c->latent_channels, image->shape[2] / f, image->shape[3] / f)));
    DL_TRY(reserve(v, encoder_scratch(c, (int)image->shape[0], (int)image->shape[2], (int)image->shape[3])));
    vae_state s;
    memset(&s, 0, sizeof s);
    dl_status st = encode_body(v, &s, moments, image);
    dl_tensor_free(&s.h);
    dl_tensor_free(&s.tmp);
    v->scratch_peak = v->scratch.peak;
    dl_arena_free(&v->scratch);
    return st;
}

dl_status sd_vae_moments_split(const dl_tensor *moments, dl_tensor *mean, dl_tensor *logvar, dl_tensor *std)
{
    DL_TRY(dl_check_shape(moments, "sd_vae_moments_split", "moments", 4, DL_SHAPE(-1, -1, -1, -1)));
    const int64_t B = moments->shape[0], C2 = moments->shape[1], HW = moments->shape[2] * moments->shape[3];
    if (C2 % 2) return dl_fail(DL_ERR_SHAPE, "sd_vae_moments_split: %lld channels is odd", (long long)C2);
    const int64_t C = C2 / 2;
    const int64_t *want = DL_SHAPE(B, C, moments->shape[2], moments->shape[3]);
    if (mean) DL_TRY(dl_check_shape(mean, "sd_vae_moments_split", "mean", 4, want));
    if (logvar) DL_TRY(dl_check_shape(logvar, "sd_vae_moments_split", "logvar", 4, want));
    if (std) DL_TRY(dl_check_shape(std, "sd_vae_moments_split", "std", 4, want));
    for (int64_t b = 0; b < B; b++)
        for (int64_t i = 0; i < C * HW; i++) {
            float m = moments->data[b * C2 * HW + i];
            float lv = moments->data[b * C2 * HW + C * HW + i];
            lv = lv < -30.0f ? -30.0f : lv > 20.0f ? 20.0f : lv;
            if (mean) mean->data[b * C * HW + i] = m;
            if (logvar) logvar->data[b * C * HW + i] = lv;
            if (std) std->data[b * C * HW + i] = expf(0.5f * lv);
        }
    return DL_OK;
}
