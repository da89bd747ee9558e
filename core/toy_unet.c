/* toy_unet.c - see toy_unet.h. The layout follows diffusers'
 * UNet2DConditionModel (CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn,
 * CrossAttnUpBlock2D / UpBlock2D) so that the parameter names match.
 */
#include "toy_unet.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv2d.h"
#include "elementwise.h"
#include "embedding.h"
#include "linear.h"
#include "norm.h"
#include "resample.h"
#include "rng.h"
#include "timestep_embedding.h"
#include "toy_unet_blocks.h"

#define NORM_EPS 1e-5f    /* UNet2DConditionModel's norm_eps: ResBlocks and conv_norm_out */
#define MAX_SKIPS (1 + TOY_UNET_MAX_LEVELS * (TOY_UNET_MAX_LAYERS + 1))

typedef void (*trace_fn)(void *ctx, const char *block, const dl_tensor *t);

struct toy_unet {
    toy_unet_config cfg;
    int max_batch;
    int batch;                    /* batch of the last successful forward, 0 = none */
    dl_param_list params;
    dl_arena act;                 /* activations saved by forward, planned for max_batch */
    dl_arena scratch;             /* temporaries, and the gradients of backward */

    dl_param *conv_in_w, *conv_in_b, *time1_w, *time1_b, *time2_w, *time2_b, *class_emb;
    dl_param *norm_out_w, *norm_out_b, *conv_out_w, *conv_out_b;

    /* blocks; up blocks are numbered as in diffusers: up_blocks.0 is the lowest resolution */
    toy_resblock    down_res[TOY_UNET_MAX_LEVELS][TOY_UNET_MAX_LAYERS];
    toy_transformer down_attn[TOY_UNET_MAX_LEVELS][TOY_UNET_MAX_LAYERS];
    toy_resample    down_sample[TOY_UNET_MAX_LEVELS];
    toy_resblock    mid_res[2];
    toy_transformer mid_attn;
    toy_resblock    up_res[TOY_UNET_MAX_LEVELS][TOY_UNET_MAX_LAYERS + 1];
    toy_transformer up_attn[TOY_UNET_MAX_LEVELS][TOY_UNET_MAX_LAYERS + 1];
    toy_resample    up_sample[TOY_UNET_MAX_LEVELS];
    dl_tensor       up_cat[TOY_UNET_MAX_LEVELS][TOY_UNET_MAX_LAYERS + 1];   /* [h, skip] */

    /* the skip connections: outputs of conv_in and of every down block, in push order */
    const dl_tensor *skip[MAX_SKIPS];
    int nskips;
    int up_skip[TOY_UNET_MAX_LEVELS][TOY_UNET_MAX_LAYERS + 1];   /* which skip each up ResBlock takes */

    /* saved activations of the stem and the head ([max_batch, ...]) */
    dl_tensor x;                  /* the input             [B, C, S, S]      */
    dl_tensor h_in;               /* conv_in(x)            [B, ch0, S, S]    */
    dl_tensor t_sin, t_h1, t_a1;  /* sinusoids [B, ch0], linear_1, SiLU [B, TE] */
    dl_tensor temb, temb_act;     /* linear_2, SiLU(temb) [B, TE]           */
    dl_tensor ctx;                /* class tokens          [B, 1, X]         */
    dl_tensor out_a;              /* silu(conv_norm_out)   [B, ch0, S, S]    */
    const dl_tensor *h_last;      /* input of conv_norm_out (an up block's output) */
    int *ids;                     /* [max_batch] class ids of the last forward */
    size_t max_grad_floats;       /* the largest activation, for the backward ping-pong buffers */

    trace_fn trace;
    void *trace_ctx;
};

static int has_attn(const toy_unet_config *c, int level) { return (c->attention_levels >> level) & 1; }

/* ======================================================================== */
/* Config                                                                    */

dl_status toy_unet_config_default(toy_unet_config *cfg, const char *dataset)
{
    memset(cfg, 0, sizeof *cfg);
    int mnist = dataset && !strcmp(dataset, "mnist"), emoji = dataset && !strcmp(dataset, "emoji");
    if (!mnist && !emoji)
        return dl_fail(DL_ERR_ARG, "toy_unet: unknown dataset '%s' (mnist or emoji)", dataset ? dataset : "(null)");
    cfg->in_channels = mnist ? 1 : 3;
    cfg->num_classes = mnist ? 10 : 8;
    cfg->image_size = 32;
    cfg->levels = 3;                                 /* 32x32, 16x16, 8x8 */
    /* MNIST: lesson 03 has 10 minutes on 2 cores. Measured at batch 64 (2
     * threads, quiet machine) one step of {32, 64, 64} takes ~1.0 s and of
     * {16, 32, 64} ~0.6 s; for the same training time the narrower net
     * reached a lower loss (4 minutes: 0.043 vs 0.055 held-out MSE), so it
     * gets the ~1000 steps instead of ~600. Colour emoji get the wider one. */
    cfg->block_out_channels[0] = mnist ? 16 : 32;
    cfg->block_out_channels[1] = mnist ? 32 : 64;
    cfg->block_out_channels[2] = 64;
    cfg->layers_per_block = 1;
    cfg->attention_levels = 1 << 2;                  /* attention at 8x8 only (and in the mid block) */
    cfg->cross_attention_dim = 64;
    cfg->heads = 4;
    cfg->norm_groups = 8;
    cfg->time_embed_dim = 4 * cfg->block_out_channels[0];
    return DL_OK;
}

dl_status toy_unet_config_check(const toy_unet_config *c)
{
#define BAD(...) return dl_fail(DL_ERR_ARG, "toy_unet config: " __VA_ARGS__)
    if (c->in_channels < 1 || c->in_channels > 4) BAD("in_channels = %d, expected 1..4", c->in_channels);
    if (c->levels < 1 || c->levels > TOY_UNET_MAX_LEVELS) BAD("levels = %d, expected 1..%d", c->levels, TOY_UNET_MAX_LEVELS);
    if (c->layers_per_block < 1 || c->layers_per_block > TOY_UNET_MAX_LAYERS)
        BAD("layers_per_block = %d, expected 1..%d", c->layers_per_block, TOY_UNET_MAX_LAYERS);
    int div = 1 << (c->levels - 1);
    if (c->image_size < 2 || c->image_size > 1024 || c->image_size % div)
        BAD("image_size = %d must be 2..1024 and divisible by 2^(levels-1) = %d", c->image_size, div);
    if (c->norm_groups < 1) BAD("norm_groups = %d, expected >= 1", c->norm_groups);
    if (c->heads < 1) BAD("heads = %d, expected >= 1", c->heads);
    if (c->attention_levels < 0 || c->attention_levels >= (1 << c->levels))
        BAD("attention_levels = %d is not a bit mask of the %d levels", c->attention_levels, c->levels);
    for (int i = 0; i < c->levels; i++) {
        int ch = c->block_out_channels[i];
        if (ch < 1 || ch > 2048) BAD("block_out_channels[%d] = %d, expected 1..2048", i, ch);
        if (ch % c->norm_groups) BAD("block_out_channels[%d] = %d is not divisible by norm_groups = %d", i, ch, c->norm_groups);
        int attn = has_attn(c, i) || i == c->levels - 1;   /* the mid block attends at the last level */
        if (attn && ch % c->heads) BAD("block_out_channels[%d] = %d is not divisible by heads = %d", i, ch, c->heads);
    }
    if (c->block_out_channels[0] < 2) BAD("block_out_channels[0] = %d: the timestep embedding needs >= 2", c->block_out_channels[0]);
    if (c->num_classes < 1 || c->num_classes > 100000) BAD("num_classes = %d, expected 1..100000", c->num_classes);
    if (c->cross_attention_dim < 1 || c->cross_attention_dim > 8192)
        BAD("cross_attention_dim = %d, expected 1..8192", c->cross_attention_dim);
    if (c->time_embed_dim < 1 || c->time_embed_dim > 16384) BAD("time_embed_dim = %d, expected 1..16384", c->time_embed_dim);
#undef BAD
    return DL_OK;
}

dl_status toy_unet_config_to_json(const toy_unet_config *c, char *buf, size_t size)
{
    char ch[64] = "";
    for (int i = 0; i < c->levels && i < TOY_UNET_MAX_LEVELS; i++)
        snprintf(ch + strlen(ch), sizeof ch - strlen(ch), "%s%d", i ? ", " : "", c->block_out_channels[i]);
    int n = snprintf(buf, size,
                     "{\"in_channels\": %d, \"image_size\": %d, \"levels\": %d, \"block_out_channels\": [%s], "
                     "\"layers_per_block\": %d, \"attention_levels\": %d, \"num_classes\": %d, "
                     "\"cross_attention_dim\": %d, \"heads\": %d, \"norm_groups\": %d, \"time_embed_dim\": %d}",
                     c->in_channels, c->image_size, c->levels, ch, c->layers_per_block, c->attention_levels,
                     c->num_classes, c->cross_attention_dim, c->heads, c->norm_groups, c->time_embed_dim);
    if (n < 0 || (size_t)n >= size) return dl_fail(DL_ERR_ARG, "toy_unet: config JSON needs %d bytes, buffer has %zu", n, size);
    return DL_OK;
}

dl_status toy_unet_config_from_json(toy_unet_config *cfg, const char *json)
{
    memset(cfg, 0, sizeof *cfg);
    cJSON *root = json ? cJSON_Parse(json) : NULL;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return dl_fail(DL_ERR_FORMAT, "toy_unet config: not a JSON object: %.60s", json ? json : "(null)");
    }
    struct { const char *key; int *dst; } f[] = {
        {"in_channels", &cfg->in_channels}, {"image_size", &cfg->image_size}, {"levels", &cfg->levels},
        {"layers_per_block", &cfg->layers_per_block}, {"attention_levels", &cfg->attention_levels},
        {"num_classes", &cfg->num_classes}, {"cross_attention_dim", &cfg->cross_attention_dim},
        {"heads", &cfg->heads}, {"norm_groups", &cfg->norm_groups}, {"time_embed_dim", &cfg->time_embed_dim},
    };
    dl_status s = DL_OK;
    for (size_t i = 0; i < sizeof f / sizeof f[0] && s == DL_OK; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, f[i].key);
        /* range first: converting an out-of-range double (1e300) to int is undefined */
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= INT_MIN && v->valuedouble <= INT_MAX) ||
            v->valuedouble != (double)(int)v->valuedouble)
            s = dl_fail(DL_ERR_FORMAT, "toy_unet config: \"%s\" missing or not an integer", f[i].key);
        else *f[i].dst = (int)v->valuedouble;
    }
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(root, "block_out_channels");
    if (s == DL_OK && (!cJSON_IsArray(ch) || cJSON_GetArraySize(ch) != cfg->levels ||
                       cfg->levels < 1 || cfg->levels > TOY_UNET_MAX_LEVELS))
        s = dl_fail(DL_ERR_FORMAT, "toy_unet config: \"block_out_channels\" must be an array of \"levels\" = %d integers",
                    cfg->levels);
    for (int i = 0; s == DL_OK && i < cfg->levels; i++) {
        const cJSON *v = cJSON_GetArrayItem(ch, i);
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= INT_MIN && v->valuedouble <= INT_MAX))
            s = dl_fail(DL_ERR_FORMAT, "toy_unet config: block_out_channels[%d] is not a number in the int range", i);
        else cfg->block_out_channels[i] = (int)v->valuedouble;
    }
    cJSON_Delete(root);
    return s == DL_OK ? toy_unet_config_check(cfg) : s;
}

/* ======================================================================== */
/* Building                                                                  */

/* Parameters in diffusers' order: conv_in, time_embedding, class_embedding,
 * down_blocks, mid_block, up_blocks, conv_norm_out, conv_out (the same order
 * as named_parameters() of the torch model in bench/toy_unet_torch.py). */
static dl_status build(toy_unet *n, dl_rng *rng)
{
    const toy_unet_config *c = &n->cfg;
    const int L = c->levels, lpb = c->layers_per_block, TE = c->time_embed_dim, G = c->norm_groups;
    const int *ch = c->block_out_channels, X = c->cross_attention_dim;
    char name[96];
    DL_TRY(toy_add_conv(&n->params, rng, "conv_in", ch[0], c->in_channels, 3, 1, &n->conv_in_w, &n->conv_in_b));
    DL_TRY(toy_add_linear(&n->params, rng, "time_embedding.linear_1", TE, ch[0], 1, &n->time1_w, &n->time1_b));
    DL_TRY(toy_add_linear(&n->params, rng, "time_embedding.linear_2", TE, TE, 1, &n->time2_w, &n->time2_b));
    DL_TRY(dl_params_add(&n->params, "class_embedding.weight", 2, DL_SHAPE(c->num_classes + 1, X), &n->class_emb));
    dl_rng_randn(rng, n->class_emb->value.data, n->class_emb->value.numel);     /* nn.Embedding: N(0, 1) */

    for (int l = 0; l < L; l++) {
        int S = c->image_size >> l, cin = l ? ch[l - 1] : ch[0];
        for (int j = 0; j < lpb; j++) {
            snprintf(name, sizeof name, "down_blocks.%d.resnets.%d", l, j);
            DL_TRY(toy_resblock_init(&n->down_res[l][j], &n->params, rng, name, j ? ch[l] : cin, ch[l], TE, G, NORM_EPS, S, S));
            if (!has_attn(c, l)) continue;
            snprintf(name, sizeof name, "down_blocks.%d.attentions.%d", l, j);
            DL_TRY(toy_transformer_init(&n->down_attn[l][j], &n->params, rng, name, ch[l], c->heads, X, 1, G, S, S));
        }
        if (l < L - 1) {
            snprintf(name, sizeof name, "down_blocks.%d.downsamplers.0", l);
            DL_TRY(toy_resample_init(&n->down_sample[l], &n->params, rng, name, 0, ch[l], S, S));
        }
    }
    int Sl = c->image_size >> (L - 1), cm = ch[L - 1];
    DL_TRY(toy_resblock_init(&n->mid_res[0], &n->params, rng, "mid_block.resnets.0", cm, cm, TE, G, NORM_EPS, Sl, Sl));
    DL_TRY(toy_transformer_init(&n->mid_attn, &n->params, rng, "mid_block.attentions.0", cm, c->heads, X, 1, G, Sl, Sl));
    DL_TRY(toy_resblock_init(&n->mid_res[1], &n->params, rng, "mid_block.resnets.1", cm, cm, TE, G, NORM_EPS, Sl, Sl));
    for (int i = 0; i < L; i++) {
        int l = L - 1 - i, S = c->image_size >> l;
        int prev = i ? ch[l + 1] : ch[L - 1], skip_last = ch[l ? l - 1 : 0];
        for (int j = 0; j <= lpb; j++) {
            int res_in = j ? ch[l] : prev, skip_ch = j == lpb ? skip_last : ch[l];
            snprintf(name, sizeof name, "up_blocks.%d.resnets.%d", i, j);
            DL_TRY(toy_resblock_init(&n->up_res[i][j], &n->params, rng, name, res_in + skip_ch, ch[l], TE, G, NORM_EPS, S, S));
            if (!has_attn(c, l)) continue;
            snprintf(name, sizeof name, "up_blocks.%d.attentions.%d", i, j);
            DL_TRY(toy_transformer_init(&n->up_attn[i][j], &n->params, rng, name, ch[l], c->heads, X, 1, G, S, S));
        }
        if (l > 0) {
            snprintf(name, sizeof name, "up_blocks.%d.upsamplers.0", i);
            DL_TRY(toy_resample_init(&n->up_sample[i], &n->params, rng, name, 1, ch[l], S, S));
        }
    }
    DL_TRY(toy_add_norm(&n->params, "conv_norm_out", ch[0], &n->norm_out_w, &n->norm_out_b));
    DL_TRY(toy_add_conv(&n->params, rng, "conv_out", c->in_channels, ch[0], 3, 1, &n->conv_out_w, &n->conv_out_b));
    return DL_OK;
}

static void track(size_t *mx, const dl_tensor *t) { if ((size_t)t->numel > *mx) *mx = (size_t)t->numel; }

/* Carve (or, with p->arena == NULL, count) every saved activation for B =
 * max_batch images, and record the skip connections in forward order. */
static dl_status plan(toy_unet *n, toy_planner *p)
{
    const toy_unet_config *c = &n->cfg;
    const int L = c->levels, lpb = c->layers_per_block, B = n->max_batch, S = c->image_size;
    const int *ch = c->block_out_channels, TE = c->time_embed_dim;
    size_t mx = 0;
    DL_TRY(toy_plan_tensor(p, &n->x, 4, DL_SHAPE(B, c->in_channels, S, S)));
    DL_TRY(toy_plan_tensor(p, &n->h_in, 4, DL_SHAPE(B, ch[0], S, S)));
    DL_TRY(toy_plan_tensor(p, &n->t_sin, 2, DL_SHAPE(B, ch[0])));
    DL_TRY(toy_plan_tensor(p, &n->t_h1, 2, DL_SHAPE(B, TE)));
    DL_TRY(toy_plan_tensor(p, &n->t_a1, 2, DL_SHAPE(B, TE)));
    DL_TRY(toy_plan_tensor(p, &n->temb, 2, DL_SHAPE(B, TE)));
    DL_TRY(toy_plan_tensor(p, &n->temb_act, 2, DL_SHAPE(B, TE)));
    DL_TRY(toy_plan_tensor(p, &n->ctx, 3, DL_SHAPE(B, 1, c->cross_attention_dim)));
    DL_TRY(toy_plan_tensor(p, &n->out_a, 4, DL_SHAPE(B, ch[0], S, S)));
    track(&mx, &n->h_in);
    n->nskips = 0;
    n->skip[n->nskips++] = &n->h_in;
    const dl_tensor *h = &n->h_in;
    for (int l = 0; l < L; l++) {
        for (int j = 0; j < lpb; j++) {
            DL_TRY(toy_resblock_plan(&n->down_res[l][j], p, B));
            h = &n->down_res[l][j].out;
            if (has_attn(c, l)) {
                DL_TRY(toy_transformer_plan(&n->down_attn[l][j], p, B));
                h = &n->down_attn[l][j].out;
            }
            track(&mx, h);
            n->skip[n->nskips++] = h;
        }
        if (l < L - 1) {
            DL_TRY(toy_resample_plan(&n->down_sample[l], p, B));
            h = &n->down_sample[l].out;
            n->skip[n->nskips++] = h;
        }
    }
    DL_TRY(toy_resblock_plan(&n->mid_res[0], p, B));
    DL_TRY(toy_transformer_plan(&n->mid_attn, p, B));
    DL_TRY(toy_resblock_plan(&n->mid_res[1], p, B));
    h = &n->mid_res[1].out;
    int top = n->nskips;                    /* the up path pops skips from the end */
    for (int i = 0; i < L; i++) {
        int l = L - 1 - i;
        for (int j = 0; j <= lpb; j++) {
            toy_resblock *rb = &n->up_res[i][j];
            const dl_tensor *sk = n->skip[--top];
            n->up_skip[i][j] = top;
            if (h->shape[1] + sk->shape[1] != rb->in_ch || sk->shape[2] != rb->H)
                return dl_fail(DL_ERR_ARG, "toy_unet: internal error: skip %d does not fit %s", top, rb->name);
            DL_TRY(toy_plan_tensor(p, &n->up_cat[i][j], 4, DL_SHAPE(B, rb->in_ch, rb->H, rb->W)));
            track(&mx, &n->up_cat[i][j]);
            DL_TRY(toy_resblock_plan(rb, p, B));
            h = &rb->out;
            if (has_attn(c, l)) {
                DL_TRY(toy_transformer_plan(&n->up_attn[i][j], p, B));
                h = &n->up_attn[i][j].out;
            }
        }
        if (l > 0) {
            DL_TRY(toy_resample_plan(&n->up_sample[i], p, B));
            h = &n->up_sample[i].out;
            track(&mx, h);
        }
    }
    n->h_last = h;
    n->max_grad_floats = mx;
    return DL_OK;
}

/* Scratch floats for B = max_batch: everything toy_unet_backward_ex carves. */
static size_t scratch_floats(const toy_unet *n)
{
    const toy_unet_config *c = &n->cfg;
    const int L = c->levels, lpb = c->layers_per_block, B = n->max_batch;
    size_t total = 0, block = 0, s;
    for (int k = 0; k < n->nskips; k++) total += toy_arena_floats(n->skip[k]->numel);   /* dskip */
    total += 2 * toy_arena_floats((int64_t)n->max_grad_floats);                          /* ping-pong */
    total += toy_arena_floats(n->temb.numel) + toy_arena_floats(n->ctx.numel);            /* dtemb_act, dctx */
#define MAX_IN(x) do { s = (x); if (s > block) block = s; } while (0)
    MAX_IN(2 * toy_arena_floats(n->out_a.numel));                                         /* head */
    MAX_IN(3 * toy_arena_floats(n->temb.numel));                                          /* time MLP */
    for (int l = 0; l < L; l++) {
        for (int j = 0; j < lpb; j++) {
            MAX_IN(toy_resblock_scratch_floats(&n->down_res[l][j], B));
            if (has_attn(c, l)) MAX_IN(toy_transformer_scratch_floats(&n->down_attn[l][j], B));
        }
        if (l < L - 1) MAX_IN(toy_resample_scratch_floats(&n->down_sample[l], B));
        int i = L - 1 - l;
        for (int j = 0; j <= lpb; j++) {
            MAX_IN(toy_resblock_scratch_floats(&n->up_res[i][j], B));
            if (has_attn(c, l)) MAX_IN(toy_transformer_scratch_floats(&n->up_attn[i][j], B));
        }
        if (l > 0) MAX_IN(toy_resample_scratch_floats(&n->up_sample[i], B));
    }
    MAX_IN(toy_resblock_scratch_floats(&n->mid_res[0], B));
    MAX_IN(toy_transformer_scratch_floats(&n->mid_attn, B));
#undef MAX_IN
    return total + block + 64;
}

dl_status toy_unet_create(toy_unet **out, const toy_unet_config *cfg, int max_batch, uint64_t init_seed)
{
    *out = NULL;
    DL_TRY(toy_unet_config_check(cfg));
    if (max_batch < 1 || max_batch > 65536) return dl_fail(DL_ERR_ARG, "toy_unet: max_batch = %d, expected 1..65536", max_batch);
    toy_unet *n = calloc(1, sizeof *n);
    if (!n) return dl_fail(DL_ERR_MEMORY, "toy_unet: out of memory");
    n->cfg = *cfg;
    n->max_batch = max_batch;
    dl_rng rng;
    dl_rng_seed(&rng, init_seed);
    toy_planner count = {0};
    dl_status s = build(n, &rng);
    if (s == DL_OK) s = plan(n, &count);                       /* how many floats? */
    if (s == DL_OK) s = dl_arena_init(&n->act, count.floats + 64);
    toy_planner carve = {.arena = &n->act};
    if (s == DL_OK) s = plan(n, &carve);                       /* now for real */
    if (s == DL_OK) s = dl_arena_init(&n->scratch, scratch_floats(n));
    if (s == DL_OK && !(n->ids = calloc((size_t)max_batch, sizeof *n->ids)))
        s = dl_fail(DL_ERR_MEMORY, "toy_unet: out of memory");
    if (s != DL_OK) {
        toy_unet_free(n);
        return s;
    }
    *out = n;
    return DL_OK;
}

void toy_unet_free(toy_unet *n)
{
    if (!n) return;
    dl_params_free(&n->params);
    dl_arena_free(&n->act);
    dl_arena_free(&n->scratch);
    free(n->ids);
    free(n);
}

dl_param_list *toy_unet_params(toy_unet *n) { return &n->params; }
const toy_unet_config *toy_unet_get_config(const toy_unet *n) { return &n->cfg; }
int toy_unet_max_batch(const toy_unet *n) { return n->max_batch; }
size_t toy_unet_memory_bytes(const toy_unet *n) { return (n->act.capacity + n->scratch.capacity) * sizeof(float); }

void toy_unet_set_trace(toy_unet *n, trace_fn cb, void *ctx)
{
    n->trace = cb;
    n->trace_ctx = ctx;
}

/* ======================================================================== */
/* Forward                                                                   */

#define BV(t) toy_batch_view(&(t), B)
#define TRACE(name, t) do { if (n->trace) { dl_tensor tv_ = (t); n->trace(n->trace_ctx, (name), &tv_); } } while (0)

static dl_status forward_body(toy_unet *n, const dl_tensor *x_in, const float *timesteps,
                              const int *class_ids, dl_tensor *eps_out)
{
    const toy_unet_config *c = &n->cfg;
    const int B = (int)x_in->shape[0], L = c->levels, lpb = c->layers_per_block;
    dl_tensor x = BV(n->x), h_in = BV(n->h_in), t_sin = BV(n->t_sin), t_h1 = BV(n->t_h1), t_a1 = BV(n->t_a1);
    dl_tensor temb = BV(n->temb), temb_act = BV(n->temb_act), ctx = BV(n->ctx), ctx2;
    DL_TRY(dl_tensor_copy(&x, x_in));
    memcpy(n->ids, class_ids, sizeof(int) * (size_t)B);

    /* time: sinusoids -> linear_1 -> SiLU -> linear_2; ResBlocks get SiLU(temb) */
    DL_TRY(timestep_embedding_forward(&t_sin, timesteps, B, c->block_out_channels[0], 1, 0.0f, 1.0f, 10000));
    DL_TRY(linear_forward(&t_h1, &t_sin, &n->time1_w->value, &n->time1_b->value));
    DL_TRY(silu_forward(&t_a1, &t_h1));
    DL_TRY(linear_forward(&temb, &t_a1, &n->time2_w->value, &n->time2_b->value));
    DL_TRY(silu_forward(&temb_act, &temb));
    TRACE("time_embedding", temb);
    /* class: one learned token per class, the "text" of the cross-attention */
    DL_TRY(dl_tensor_reshape(&ctx2, &ctx, 2, DL_SHAPE(B, c->cross_attention_dim)));
    DL_TRY(embedding_forward(&ctx2, &n->class_emb->value, class_ids, B));
    TRACE("class_embedding", ctx);

    DL_TRY(conv2d_forward(&h_in, &x, &n->conv_in_w->value, &n->conv_in_b->value, 1, 1));
    TRACE("conv_in", h_in);
    dl_tensor h = h_in;
    for (int l = 0; l < L; l++) {                       /* down: ResBlocks [+ attention], downsample */
        for (int j = 0; j < lpb; j++) {
            DL_TRY(toy_resblock_forward(&n->down_res[l][j], &h, &temb_act, &n->scratch));
            h = BV(n->down_res[l][j].out);
            TRACE(n->down_res[l][j].name, h);
            if (!has_attn(c, l)) continue;
            DL_TRY(toy_transformer_forward(&n->down_attn[l][j], &h, &ctx, &n->scratch));
            h = BV(n->down_attn[l][j].out);
            TRACE(n->down_attn[l][j].name, h);
        }
        if (l == L - 1) break;
        DL_TRY(toy_resample_forward(&n->down_sample[l], &h));
        h = BV(n->down_sample[l].out);
        TRACE(n->down_sample[l].name, h);
    }
    DL_TRY(toy_resblock_forward(&n->mid_res[0], &h, &temb_act, &n->scratch));   /* mid */
    h = BV(n->mid_res[0].out);
    TRACE(n->mid_res[0].name, h);
    DL_TRY(toy_transformer_forward(&n->mid_attn, &h, &ctx, &n->scratch));
    h = BV(n->mid_attn.out);
    TRACE(n->mid_attn.name, h);
    DL_TRY(toy_resblock_forward(&n->mid_res[1], &h, &temb_act, &n->scratch));
    h = BV(n->mid_res[1].out);
    TRACE(n->mid_res[1].name, h);
    for (int i = 0; i < L; i++) {                       /* up: [h, skip] -> ResBlock [+ attention], upsample */
        int l = L - 1 - i;
        for (int j = 0; j <= lpb; j++) {
            dl_tensor skip = BV(*n->skip[n->up_skip[i][j]]), cat = BV(n->up_cat[i][j]);
            DL_TRY(concat_channels_forward(&cat, &h, &skip));
            char what[128];
            snprintf(what, sizeof what, "%s input [h, skip]", n->up_res[i][j].name);
            TRACE(what, cat);
            DL_TRY(toy_resblock_forward(&n->up_res[i][j], &cat, &temb_act, &n->scratch));
            h = BV(n->up_res[i][j].out);
            TRACE(n->up_res[i][j].name, h);
            if (!has_attn(c, l)) continue;
            DL_TRY(toy_transformer_forward(&n->up_attn[i][j], &h, &ctx, &n->scratch));
            h = BV(n->up_attn[i][j].out);
            TRACE(n->up_attn[i][j].name, h);
        }
        if (l == 0) break;
        DL_TRY(toy_resample_forward(&n->up_sample[i], &h));
        h = BV(n->up_sample[i].out);
        TRACE(n->up_sample[i].name, h);
    }
    dl_tensor out_a = BV(n->out_a);                            /* head */
    DL_TRY(group_norm_silu_forward(NULL, &out_a, &h, &n->norm_out_w->value, &n->norm_out_b->value,
                                   c->norm_groups, NORM_EPS));
    DL_TRY(conv2d_forward(eps_out, &out_a, &n->conv_out_w->value, &n->conv_out_b->value, 1, 1));
    TRACE("conv_out", *eps_out);
    return DL_OK;
}

dl_status toy_unet_forward(toy_unet *n, const dl_tensor *x, const float *timesteps, const int *class_ids,
                           dl_tensor *eps_out)
{
    const toy_unet_config *c = &n->cfg;
    n->batch = 0;
    if (!x || !timesteps || !class_ids || !eps_out) return dl_fail(DL_ERR_ARG, "toy_unet_forward: NULL argument");
    const int B = x->ndim == 4 ? (int)x->shape[0] : 0;
    if (B < 1 || B > n->max_batch)
        return dl_fail(DL_ERR_SHAPE, "toy_unet_forward: batch %d outside 1..max_batch = %d", B, n->max_batch);
    const int64_t *shape = DL_SHAPE(B, c->in_channels, c->image_size, c->image_size);
    DL_TRY(dl_check_shape(x, "toy_unet_forward", "x", 4, shape));
    DL_TRY(dl_check_shape(eps_out, "toy_unet_forward", "eps_out", 4, shape));
    for (int b = 0; b < B; b++)
        if (class_ids[b] < 0 || class_ids[b] > c->num_classes)
            return dl_fail(DL_ERR_ARG, "toy_unet_forward: class id %d (item %d) outside 0..%d (%d = null class)",
                           class_ids[b], b, c->num_classes, c->num_classes);
    dl_arena_reset(&n->scratch, 0);
    DL_TRY(forward_body(n, x, timesteps, class_ids, eps_out));
    n->batch = B;
    return DL_OK;
}

/* ======================================================================== */
/* Backward                                                                  */

/* Two buffers of the largest activation size: the gradient flowing down the
 * network lives in one while the next block writes its input's gradient
 * into the other. Not zeroed: every block sets its dx (toy_unet_blocks.h). */
typedef struct { float *buf[2]; int cur; } pingpong;

static dl_tensor pp_next(pingpong *pp, const dl_tensor *like)
{
    pp->cur ^= 1;
    dl_tensor t;
    dl_tensor_view(&t, pp->buf[pp->cur], like->ndim, like->shape);
    return t;
}

static dl_status backward_body(toy_unet *n, const dl_tensor *deps, dl_tensor *dx)
{
    const toy_unet_config *c = &n->cfg;
    const int B = n->batch, L = c->levels, lpb = c->layers_per_block;
    dl_arena *scr = &n->scratch;
    dl_tensor dskip[MAX_SKIPS], dtemb_act, dctx, ppt[2];
    /* each skip feeds one concat, whose backward sets its gradient: no zeroing */
    for (int k = 0; k < n->nskips; k++) DL_TRY(toy_scratch_tensor(scr, &dskip[k], 4, BV(*n->skip[k]).shape, 0));
    DL_TRY(toy_scratch_tensor(scr, &dtemb_act, 2, BV(n->temb).shape, 1));
    DL_TRY(toy_scratch_tensor(scr, &dctx, 3, BV(n->ctx).shape, 1));
    for (int k = 0; k < 2; k++) DL_TRY(toy_scratch_tensor(scr, &ppt[k], 1, DL_SHAPE((int64_t)n->max_grad_floats), 0));
    pingpong pp = {{ppt[0].data, ppt[1].data}, 0};
    size_t mark = dl_arena_mark(scr);

    /* head: eps = conv_out(silu(conv_norm_out(h))) */
    dl_tensor out_a = BV(n->out_a), h_last = BV(*n->h_last), d_oa;
    DL_TRY(toy_scratch_tensor(scr, &d_oa, 4, out_a.shape, 0));
    DL_TRY(conv2d_backward_set_dx(&d_oa, &n->conv_out_w->grad, &n->conv_out_b->grad, deps, &out_a,
                                  &n->conv_out_w->value, 1, 1));
    dl_tensor dh = pp_next(&pp, &h_last), dn;
    DL_TRY(group_norm_silu_backward_set_dx(&dh, &n->norm_out_w->grad, &n->norm_out_b->grad, &d_oa, &h_last, NULL,
                                           &n->norm_out_w->value, &n->norm_out_b->value, c->norm_groups, NORM_EPS));
    dl_arena_reset(scr, mark);

    for (int i = L - 1; i >= 0; i--) {                  /* up path, last block first */
        int l = L - 1 - i;
        if (l > 0) {
            toy_resample *u = &n->up_sample[i];
            dn = pp_next(&pp, &u->x);
            DL_TRY(toy_resample_backward(u, &dn, &dh, scr));
            dh = dn;
        }
        for (int j = lpb; j >= 0; j--) {
            if (has_attn(c, l)) {
                toy_transformer *t = &n->up_attn[i][j];
                dn = pp_next(&pp, &t->x);
                DL_TRY(toy_transformer_backward(t, &dn, &dctx, &dh, scr));
                dh = dn;
            }
            toy_resblock *r = &n->up_res[i][j];
            dl_tensor dcat = pp_next(&pp, &r->x);
            DL_TRY(toy_resblock_backward(r, &dcat, &dtemb_act, &dh, scr));
            /* the concat splits the gradient: the first channels go down the
             * up path, the rest to the skip's own gradient */
            dl_tensor prev = r->x;
            prev.shape[1] = r->x.shape[1] - dskip[n->up_skip[i][j]].shape[1];
            prev.numel = prev.numel / r->x.shape[1] * prev.shape[1];
            dh = pp_next(&pp, &prev);
            DL_TRY(concat_channels_backward_set(&dh, &dskip[n->up_skip[i][j]], &dcat));
        }
    }
    toy_resblock *mid[2] = {&n->mid_res[1], &n->mid_res[0]};   /* mid, in reverse */
    dn = pp_next(&pp, &mid[0]->x);
    DL_TRY(toy_resblock_backward(mid[0], &dn, &dtemb_act, &dh, scr));
    dh = dn;
    dn = pp_next(&pp, &n->mid_attn.x);
    DL_TRY(toy_transformer_backward(&n->mid_attn, &dn, &dctx, &dh, scr));
    dh = dn;
    dn = pp_next(&pp, &mid[1]->x);
    DL_TRY(toy_resblock_backward(mid[1], &dn, &dtemb_act, &dh, scr));
    dh = dn;

    int k = n->nskips;                                  /* down path: skips in reverse push order */
    for (int l = L - 1; l >= 0; l--) {
        if (l < L - 1) {
            DL_TRY(add_backward(&dh, NULL, &dskip[--k]));  /* the downsampler's output was a skip too */
            toy_resample *d = &n->down_sample[l];
            dn = pp_next(&pp, &d->x);
            DL_TRY(toy_resample_backward(d, &dn, &dh, scr));
            dh = dn;
        }
        for (int j = lpb - 1; j >= 0; j--) {
            DL_TRY(add_backward(&dh, NULL, &dskip[--k]));
            if (has_attn(c, l)) {
                toy_transformer *t = &n->down_attn[l][j];
                dn = pp_next(&pp, &t->x);
                DL_TRY(toy_transformer_backward(t, &dn, &dctx, &dh, scr));
                dh = dn;
            }
            toy_resblock *r = &n->down_res[l][j];
            dn = pp_next(&pp, &r->x);
            DL_TRY(toy_resblock_backward(r, &dn, &dtemb_act, &dh, scr));
            dh = dn;
        }
    }
    DL_TRY(add_backward(&dh, NULL, &dskip[--k]));          /* conv_in's output */
    dl_tensor x = BV(n->x);
    DL_TRY(conv2d_backward(dx, &n->conv_in_w->grad, &n->conv_in_b->grad, &dh, &x, &n->conv_in_w->value, 1, 1));

    /* time MLP: temb_act = silu(linear_2(silu(linear_1(sinusoids)))) */
    dl_tensor temb = BV(n->temb), t_a1 = BV(n->t_a1), t_h1 = BV(n->t_h1), t_sin = BV(n->t_sin);
    dl_tensor d_temb, d_ta1, d_th1;
    DL_TRY(toy_scratch_tensor(scr, &d_temb, 2, temb.shape, 1));
    DL_TRY(silu_backward(&d_temb, &dtemb_act, &temb));
    DL_TRY(toy_scratch_tensor(scr, &d_ta1, 2, t_a1.shape, 1));
    DL_TRY(linear_backward(&d_ta1, &n->time2_w->grad, &n->time2_b->grad, &d_temb, &t_a1, &n->time2_w->value));
    DL_TRY(toy_scratch_tensor(scr, &d_th1, 2, t_h1.shape, 1));
    DL_TRY(silu_backward(&d_th1, &d_ta1, &t_h1));
    DL_TRY(linear_backward(NULL, &n->time1_w->grad, &n->time1_b->grad, &d_th1, &t_sin, &n->time1_w->value));
    /* class tokens: each row of the table gets the gradient of the images that used it */
    dl_tensor dctx2;
    DL_TRY(dl_tensor_reshape(&dctx2, &dctx, 2, DL_SHAPE(B, c->cross_attention_dim)));
    return embedding_backward(&n->class_emb->grad, &dctx2, n->ids, B);
}

dl_status toy_unet_backward_ex(toy_unet *n, const dl_tensor *deps, dl_tensor *dx)
{
    const toy_unet_config *c = &n->cfg;
    if (n->batch < 1) return dl_fail(DL_ERR_ARG, "toy_unet_backward: no successful forward pass to go back through");
    const int64_t *shape = DL_SHAPE(n->batch, c->in_channels, c->image_size, c->image_size);
    DL_TRY(dl_check_shape(deps, "toy_unet_backward", "deps", 4, shape));
    if (dx) DL_TRY(dl_check_shape(dx, "toy_unet_backward", "dx", 4, shape));
    dl_arena_reset(&n->scratch, 0);
    dl_status s = backward_body(n, deps, dx);
    dl_arena_reset(&n->scratch, 0);
    return s;
}

dl_status toy_unet_backward(toy_unet *n, const dl_tensor *deps) { return toy_unet_backward_ex(n, deps, NULL); }
