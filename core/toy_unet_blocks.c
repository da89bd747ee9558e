/* toy_unet_blocks.c - see toy_unet_blocks.h.
 *
 * Every forward step names the tensor it writes; every backward step runs
 * the same steps in reverse order, calling the backward kernel of the op
 * with the tensors the forward saved. Gradients flow into zeroed scratch
 * tensors (toy_scratch_tensor) because all backward kernels add (+=) into
 * their outputs.
 */
#include "toy_unet_blocks.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "attention.h"
#include "conv2d.h"
#include "elementwise.h"
#include "geglu.h"
#include "linear.h"
#include "norm.h"
#include "resample.h"

#define LN_EPS 1e-5f         /* BasicTransformerBlock's LayerNorms (torch default) */
#define TR_GN_EPS 1e-6f      /* Transformer2DModel's GroupNorm                     */

dl_tensor toy_batch_view(const dl_tensor *t, int B)
{
    dl_tensor v = *t;
    v.owns_data = 0;
    v.numel = t->numel / t->shape[0] * B;
    v.shape[0] = B;
    return v;
}

size_t toy_arena_floats(int64_t n) { return (size_t)n + 16; }

void toy_zero_floats(float *p, int64_t n) { dl_zero_floats(p, n); }

dl_status toy_scratch_tensor(dl_arena *a, dl_tensor *t, int ndim, const int64_t shape[], int zero)
{
    int64_t n = dl_shape_numel(ndim, shape);
    if (n < 0) return DL_ERR_SHAPE;
    size_t start = (a->used + 15) & ~(size_t)15;         /* 64-byte aligned, as dl_arena_tensor */
    if (start > a->capacity || (size_t)n > a->capacity - start)
        return dl_fail(DL_ERR_MEMORY, "toy_unet: scratch arena full (%lld floats wanted, %zu of %zu used)",
                       (long long)n, a->used, a->capacity);
    DL_TRY(dl_tensor_view(t, a->base + start, ndim, shape));
    a->used = start + (size_t)n;
    if (a->used > a->peak) a->peak = a->used;
    if (zero) toy_zero_floats(t->data, n);
    return DL_OK;
}

dl_status toy_plan_tensor(toy_planner *p, dl_tensor *t, int ndim, const int64_t shape[])
{
    if (p->arena) return dl_arena_tensor(p->arena, t, ndim, shape);
    int64_t n = dl_shape_numel(ndim, shape);
    if (n < 0) return DL_ERR_SHAPE;
    p->floats += toy_arena_floats(n);
    memset(t, 0, sizeof *t);
    t->ndim = ndim;                       /* the shape, so that later plans can read it */
    t->numel = n;
    for (int i = 0; i < DL_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
    return DL_OK;
}

/* ---- parameters with PyTorch's default init ------------------------------ */

static void uniform_fill(dl_rng *rng, dl_tensor *t, float bound)
{
    dl_rng_rand(rng, t->data, t->numel);                      /* [0, 1) */
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = (2.0f * t->data[i] - 1.0f) * bound;
}

static dl_status add_param(dl_param_list *params, const char *prefix, const char *suffix, int ndim,
                           const int64_t *shape, dl_param **out)
{
    char name[DL_PARAM_NAME_MAX];
    if (snprintf(name, sizeof name, "%s.%s", prefix, suffix) >= (int)sizeof name)
        return dl_fail(DL_ERR_ARG, "toy_unet: parameter name '%s.%s' too long", prefix, suffix);
    return dl_params_add(params, name, ndim, shape, out);
}

dl_status toy_add_conv(dl_param_list *params, dl_rng *rng, const char *prefix, int cout, int cin,
                       int k, int bias, dl_param **w, dl_param **b)
{
    DL_TRY(add_param(params, prefix, "weight", 4, DL_SHAPE(cout, cin, k, k), w));
    float bound = 1.0f / sqrtf((float)(cin * k * k));         /* 1 / sqrt(fan_in) */
    uniform_fill(rng, &(*w)->value, bound);
    if (!bias) { if (b) *b = NULL; return DL_OK; }
    DL_TRY(add_param(params, prefix, "bias", 1, DL_SHAPE(cout), b));
    uniform_fill(rng, &(*b)->value, bound);
    return DL_OK;
}

dl_status toy_add_linear(dl_param_list *params, dl_rng *rng, const char *prefix, int out, int in,
                         int bias, dl_param **w, dl_param **b)
{
    DL_TRY(add_param(params, prefix, "weight", 2, DL_SHAPE(out, in), w));
    float bound = 1.0f / sqrtf((float)in);
    uniform_fill(rng, &(*w)->value, bound);
    if (!bias) { if (b) *b = NULL; return DL_OK; }
    DL_TRY(add_param(params, prefix, "bias", 1, DL_SHAPE(out), b));
    uniform_fill(rng, &(*b)->value, bound);
    return DL_OK;
}

dl_status toy_add_norm(dl_param_list *params, const char *prefix, int channels, dl_param **w, dl_param **b)
{
    DL_TRY(add_param(params, prefix, "weight", 1, DL_SHAPE(channels), w));
    DL_TRY(add_param(params, prefix, "bias", 1, DL_SHAPE(channels), b));
    dl_tensor_fill(&(*w)->value, 1.0f);
    return DL_OK;
}

/* ---- small helpers ---------------------------------------------------------- */

/* A saved activation: [max_batch, d1, d2, d3] from the activation arena. */
static dl_status plan4(toy_planner *a, dl_tensor *t, int B, int d1, int d2, int d3)
{
    return toy_plan_tensor(a, t, 4, DL_SHAPE(B, d1, d2, d3));
}
static dl_status plan3(toy_planner *a, dl_tensor *t, int B, int d1, int d2)
{
    return toy_plan_tensor(a, t, 3, DL_SHAPE(B, d1, d2));
}

/* [B, C, L] (NCHW with L = H*W) -> [B, L, C] tokens, and back. Plain loops:
 * these copies are a few percent of a transformer block's time. */
static void nchw_to_tokens(float *out, const float *x, int B, int C, int L)
{
    #pragma omp parallel for collapse(2) if (dl_parallel_ok() && (int64_t)B * C * L > 32768)
    for (int b = 0; b < B; b++)
        for (int l = 0; l < L; l++) {
            const float *src = x + (int64_t)b * C * L + l;
            float *dst = out + ((int64_t)b * L + l) * C;
            for (int c = 0; c < C; c++) dst[c] = src[(int64_t)c * L];
        }
}

static void tokens_to_nchw(float *out, const float *t, int B, int C, int L)
{
    #pragma omp parallel for collapse(2) if (dl_parallel_ok() && (int64_t)B * C * L > 32768)
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) {
            const float *src = t + (int64_t)b * L * C + c;
            float *dst = out + ((int64_t)b * C + c) * L;
            for (int l = 0; l < L; l++) dst[l] = src[(int64_t)l * C];
        }
}

/* A 1x1 conv weight [Cout, Cin, 1, 1] seen as a linear weight [Cout, Cin]. */
static dl_tensor as_matrix(const dl_tensor *w)
{
    dl_tensor v;
    dl_tensor_reshape(&v, w, 2, DL_SHAPE(w->shape[0], w->shape[1]));
    return v;
}

/* Rows [r0, r0 + n) of a [rows, cols] weight, or entries of a [rows] bias (a view). */
static dl_tensor rows_of(const dl_tensor *t, int64_t r0, int64_t n)
{
    dl_tensor v;
    int64_t cols = t->ndim == 2 ? t->shape[1] : 1;
    if (t->ndim == 2) dl_tensor_view(&v, t->data + r0 * cols, 2, DL_SHAPE(n, cols));
    else dl_tensor_view(&v, t->data + r0, 1, DL_SHAPE(n));
    return v;
}

/* ======================================================================== */
/* ResnetBlock2D                                                             */

dl_status toy_resblock_init(toy_resblock *b, dl_param_list *params, dl_rng *rng, const char *name,
                            int in_ch, int out_ch, int temb_dim, int groups, float eps, int H, int W)
{
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->in_ch = in_ch; b->out_ch = out_ch; b->temb_dim = temb_dim;
    b->groups = groups; b->eps = eps; b->H = H; b->W = W;
    char p[160];
#define P(sub) (snprintf(p, sizeof p, "%s.%s", name, sub), p)
    DL_TRY(toy_add_norm(params, P("norm1"), in_ch, &b->norm1_w, &b->norm1_b));
    DL_TRY(toy_add_conv(params, rng, P("conv1"), out_ch, in_ch, 3, 1, &b->conv1_w, &b->conv1_b));
    DL_TRY(toy_add_linear(params, rng, P("time_emb_proj"), out_ch, temb_dim, 1, &b->temb_w, &b->temb_b));
    DL_TRY(toy_add_norm(params, P("norm2"), out_ch, &b->norm2_w, &b->norm2_b));
    DL_TRY(toy_add_conv(params, rng, P("conv2"), out_ch, out_ch, 3, 1, &b->conv2_w, &b->conv2_b));
    if (in_ch != out_ch)
        DL_TRY(toy_add_conv(params, rng, P("conv_shortcut"), out_ch, in_ch, 1, 1, &b->short_w, &b->short_b));
#undef P
    return DL_OK;
}

dl_status toy_resblock_plan(toy_resblock *b, toy_planner *a, int B)
{
    DL_TRY(plan4(a, &b->a1, B, b->in_ch, b->H, b->W));
    DL_TRY(plan4(a, &b->tproj, B, b->out_ch, 1, 1));
    DL_TRY(plan4(a, &b->h, B, b->out_ch, b->H, b->W));
    DL_TRY(plan4(a, &b->a2, B, b->out_ch, b->H, b->W));
    DL_TRY(plan4(a, &b->out, B, b->out_ch, b->H, b->W));
    return DL_OK;
}

size_t toy_resblock_scratch_floats(const toy_resblock *b, int B)
{
    int64_t in = (int64_t)B * b->in_ch * b->H * b->W, out = (int64_t)B * b->out_ch * b->H * b->W;
    /* backward: d_a2, d_n2, d_h (out-sized), d_tproj, d_a1, d_n1 (in-sized);
     * forward: the shortcut conv's output (out-sized) */
    return 3 * toy_arena_floats(out) + toy_arena_floats((int64_t)B * b->out_ch) + 2 * toy_arena_floats(in);
}

dl_status toy_resblock_forward(toy_resblock *b, const dl_tensor *x, const dl_tensor *temb_act,
                               dl_arena *scratch)
{
    const int B = (int)x->shape[0];
    DL_TRY(dl_check_shape(x, b->name, "x", 4, DL_SHAPE(-1, b->in_ch, b->H, b->W)));
    DL_TRY(dl_check_shape(temb_act, b->name, "temb", 2, DL_SHAPE(B, b->temb_dim)));
    if (B > b->out.shape[0])
        return dl_fail(DL_ERR_SHAPE, "%s: batch %d is larger than the planned %lld", b->name, B,
                       (long long)b->out.shape[0]);
    b->x = *x; b->x.owns_data = 0;
    b->temb_act = *temb_act; b->temb_act.owns_data = 0;
    dl_tensor a1 = toy_batch_view(&b->a1, B);
    dl_tensor tproj = toy_batch_view(&b->tproj, B), h = toy_batch_view(&b->h, B);
    dl_tensor a2 = toy_batch_view(&b->a2, B);
    dl_tensor out = toy_batch_view(&b->out, B), tproj2;
    DL_TRY(dl_tensor_reshape(&tproj2, &tproj, 2, DL_SHAPE(B, b->out_ch)));

    /* a1 = silu(norm1(x)); the norm's own output is not kept (backward recomputes it) */
    DL_TRY(group_norm_silu_forward(NULL, &a1, x, &b->norm1_w->value, &b->norm1_b->value, b->groups, b->eps));
    /* the time embedding shifts every channel: one number per (image, channel) */
    DL_TRY(linear_forward(&tproj2, temb_act, &b->temb_w->value, &b->temb_b->value));  /* [B, out] */
    /* h = conv1(a1) + tproj[:, :, None, None], the add fused into the conv */
    DL_TRY(conv2d_forward_fused(&h, &a1, &b->conv1_w->value, &b->conv1_b->value, &tproj2, NULL, 1, 1));
    DL_TRY(group_norm_silu_forward(NULL, &a2, &h, &b->norm2_w->value, &b->norm2_b->value, b->groups, b->eps));
    /* out = conv2(a2) + shortcut(x), the residual add fused into the conv */
    if (!b->short_w) return conv2d_forward_fused(&out, &a2, &b->conv2_w->value, &b->conv2_b->value, NULL, x, 1, 1);
    size_t mark = dl_arena_mark(scratch);
    dl_tensor sc;
    dl_status s = toy_scratch_tensor(scratch, &sc, 4, out.shape, 0);   /* conv overwrites it */
    if (s == DL_OK) s = conv2d_forward(&sc, x, &b->short_w->value, &b->short_b->value, 1, 0);
    if (s == DL_OK) s = conv2d_forward_fused(&out, &a2, &b->conv2_w->value, &b->conv2_b->value, NULL, &sc, 1, 1);
    dl_arena_reset(scratch, mark);
    return s;
}

/* ======================================================================== */
/* Transformer2DModel                                                        */

dl_status toy_transformer_init(toy_transformer *b, dl_param_list *params, dl_rng *rng, const char *name,
                               int C, int heads, int ctx_dim, int ctx_len, int groups, int H, int W)
{
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->C = C; b->H = H; b->W = W; b->L = H * W; b->heads = heads;
    b->ctx_dim = ctx_dim; b->ctx_len = ctx_len; b->groups = groups;
    char p[160];
#define P(sub) (snprintf(p, sizeof p, "%s.%s", name, sub), p)
#define TB "transformer_blocks.0."
    DL_TRY(toy_add_norm(params, P("norm"), C, &b->norm_w, &b->norm_b));
    DL_TRY(toy_add_conv(params, rng, P("proj_in"), C, C, 1, 1, &b->proj_in_w, &b->proj_in_b));
    DL_TRY(toy_add_norm(params, P(TB "norm1"), C, &b->ln1_w, &b->ln1_b));
    DL_TRY(toy_add_linear(params, rng, P(TB "attn1.to_q"), C, C, 0, &b->q1_w, NULL));
    DL_TRY(toy_add_linear(params, rng, P(TB "attn1.to_k"), C, C, 0, &b->k1_w, NULL));
    DL_TRY(toy_add_linear(params, rng, P(TB "attn1.to_v"), C, C, 0, &b->v1_w, NULL));
    DL_TRY(toy_add_linear(params, rng, P(TB "attn1.to_out.0"), C, C, 1, &b->o1_w, &b->o1_b));
    DL_TRY(toy_add_norm(params, P(TB "norm2"), C, &b->ln2_w, &b->ln2_b));
    DL_TRY(toy_add_linear(params, rng, P(TB "attn2.to_q"), C, C, 0, &b->q2_w, NULL));
    DL_TRY(toy_add_linear(params, rng, P(TB "attn2.to_k"), C, ctx_dim, 0, &b->k2_w, NULL));
    DL_TRY(toy_add_linear(params, rng, P(TB "attn2.to_v"), C, ctx_dim, 0, &b->v2_w, NULL));
    DL_TRY(toy_add_linear(params, rng, P(TB "attn2.to_out.0"), C, C, 1, &b->o2_w, &b->o2_b));
    DL_TRY(toy_add_norm(params, P(TB "norm3"), C, &b->ln3_w, &b->ln3_b));
    DL_TRY(toy_add_linear(params, rng, P(TB "ff.net.0.proj"), 8 * C, C, 1, &b->ff0_w, &b->ff0_b));
    DL_TRY(toy_add_linear(params, rng, P(TB "ff.net.2"), C, 4 * C, 1, &b->ff2_w, &b->ff2_b));
    DL_TRY(toy_add_conv(params, rng, P("proj_out"), C, C, 1, 1, &b->proj_out_w, &b->proj_out_b));
#undef TB
#undef P
    return DL_OK;
}

dl_status toy_transformer_plan(toy_transformer *b, toy_planner *a, int B)
{
    const int C = b->C, L = b->L;
    DL_TRY(plan4(a, &b->gn, B, C, b->H, b->W));
    dl_tensor *tok[] = {&b->tok, &b->t0, &b->n1, &b->q1, &b->k1, &b->v1, &b->a1, &b->t1, &b->n2,
                        &b->q2, &b->a2, &b->t2, &b->n3, &b->t3, &b->po};
    for (size_t i = 0; i < sizeof tok / sizeof tok[0]; i++) DL_TRY(plan3(a, tok[i], B, L, C));
    DL_TRY(plan3(a, &b->k2, B, b->ctx_len, C));
    DL_TRY(plan3(a, &b->v2, B, b->ctx_len, C));
    dl_tensor *ff[] = {&b->ffh, &b->ffg, &b->m};
    for (size_t i = 0; i < 3; i++) DL_TRY(plan3(a, ff[i], B, L, 4 * C));
    DL_TRY(plan4(a, &b->out, B, C, b->H, b->W));
    return DL_OK;
}

size_t toy_transformer_scratch_floats(const toy_transformer *b, int B)
{
    int64_t tok = (int64_t)B * b->L * b->C, ctx = (int64_t)B * b->ctx_len * b->C;
    /* backward, at its widest (the feed-forward branch): d_po, d_res, then
     * dm, d_ffh, d_ffg (4C wide), d_n3; the attention branches need
     * fewer (da, dq, dk, dv, dn + the context ones). */
    size_t ff = 2 * toy_arena_floats(tok) + 3 * toy_arena_floats(4 * tok) + toy_arena_floats(tok);
    size_t attn = 2 * toy_arena_floats(tok) + 5 * toy_arena_floats(tok) + 2 * toy_arena_floats(ctx);
    return ff > attn ? ff : attn;
}

dl_status toy_transformer_forward(toy_transformer *b, const dl_tensor *x, const dl_tensor *ctx,
                                  dl_arena *scratch)
{
    (void)scratch;
    const int B = (int)x->shape[0], C = b->C, L = b->L;
    DL_TRY(dl_check_shape(x, b->name, "x", 4, DL_SHAPE(-1, C, b->H, b->W)));
    DL_TRY(dl_check_shape(ctx, b->name, "encoder_hidden_states", 3, DL_SHAPE(B, b->ctx_len, b->ctx_dim)));
    if (B > b->out.shape[0])
        return dl_fail(DL_ERR_SHAPE, "%s: batch %d is larger than the planned %lld", b->name, B,
                       (long long)b->out.shape[0]);
    b->x = *x; b->x.owns_data = 0;
    b->ctx = *ctx; b->ctx.owns_data = 0;
#define V(t) dl_tensor t = toy_batch_view(&b->t, B)
    V(gn); V(tok); V(t0); V(n1); V(q1); V(k1); V(v1); V(a1); V(t1); V(n2); V(q2); V(k2); V(v2); V(a2);
    V(t2); V(n3); V(ffh); V(ffg); V(m); V(t3); V(po); V(out);
#undef V
    dl_tensor pin = as_matrix(&b->proj_in_w->value), pout = as_matrix(&b->proj_out_w->value);
    /* GEGLU: the first 4C rows of ff.net.0.proj make h, the last 4C the gate */
    dl_tensor wh = rows_of(&b->ff0_w->value, 0, 4 * C), wg = rows_of(&b->ff0_w->value, 4 * C, 4 * C);
    dl_tensor bh = rows_of(&b->ff0_b->value, 0, 4 * C), bg = rows_of(&b->ff0_b->value, 4 * C, 4 * C);

    /* in: [B, C, H, W] -> GroupNorm -> tokens [B, L, C] -> proj_in (a 1x1 conv = a linear on tokens) */
    DL_TRY(group_norm_forward(&gn, x, &b->norm_w->value, &b->norm_b->value, b->groups, TR_GN_EPS));
    nchw_to_tokens(tok.data, gn.data, B, C, L);
    DL_TRY(linear_forward(&t0, &tok, &pin, &b->proj_in_b->value));
    /* self-attention: every pixel looks at every pixel */
    DL_TRY(layer_norm_forward(&n1, &t0, &b->ln1_w->value, &b->ln1_b->value, LN_EPS));
    DL_TRY(linear_forward(&q1, &n1, &b->q1_w->value, NULL));
    DL_TRY(linear_forward(&k1, &n1, &b->k1_w->value, NULL));
    DL_TRY(linear_forward(&v1, &n1, &b->v1_w->value, NULL));
    DL_TRY(attention_forward(&a1, &q1, &k1, &v1, b->heads, 0));
    DL_TRY(linear_forward(&t1, &a1, &b->o1_w->value, &b->o1_b->value));
    DL_TRY(add_forward(&t1, &t1, &t0));                                  /* residual */
    /* cross-attention: pixels (queries) look at the class token(s) (keys, values) */
    DL_TRY(layer_norm_forward(&n2, &t1, &b->ln2_w->value, &b->ln2_b->value, LN_EPS));
    DL_TRY(linear_forward(&q2, &n2, &b->q2_w->value, NULL));
    DL_TRY(linear_forward(&k2, ctx, &b->k2_w->value, NULL));
    DL_TRY(linear_forward(&v2, ctx, &b->v2_w->value, NULL));
    DL_TRY(attention_forward(&a2, &q2, &k2, &v2, b->heads, 0));
    DL_TRY(linear_forward(&t2, &a2, &b->o2_w->value, &b->o2_b->value));
    DL_TRY(add_forward(&t2, &t2, &t1));
    /* feed-forward with GEGLU: h * gelu(gate) */
    DL_TRY(layer_norm_forward(&n3, &t2, &b->ln3_w->value, &b->ln3_b->value, LN_EPS));
    DL_TRY(linear_forward(&ffh, &n3, &wh, &bh));
    DL_TRY(linear_forward(&ffg, &n3, &wg, &bg));
    DL_TRY(geglu_forward(&m, &ffh, &ffg));                    /* m = ffh * gelu(ffg), one pass */
    DL_TRY(linear_forward(&t3, &m, &b->ff2_w->value, &b->ff2_b->value));
    DL_TRY(add_forward(&t3, &t3, &t2));
    /* out: proj_out, back to [B, C, H, W], plus the block's input */
    DL_TRY(linear_forward(&po, &t3, &pout, &b->proj_out_b->value));
    tokens_to_nchw(out.data, po.data, B, C, L);
    return add_forward(&out, &out, x);
}

/* ======================================================================== */
/* Downsample2D / Upsample2D                                                 */

dl_status toy_resample_init(toy_resample *b, dl_param_list *params, dl_rng *rng, const char *name,
                            int up, int C, int H, int W)
{
    memset(b, 0, sizeof *b);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->up = up; b->C = C; b->H = H; b->W = W;
    char p[160];
    snprintf(p, sizeof p, "%s.conv", name);
    return toy_add_conv(params, rng, p, C, C, 3, 1, &b->conv_w, &b->conv_b);
}

dl_status toy_resample_plan(toy_resample *b, toy_planner *a, int B)
{
    if (b->up) {
        DL_TRY(plan4(a, &b->xu, B, b->C, 2 * b->H, 2 * b->W));
        return plan4(a, &b->out, B, b->C, 2 * b->H, 2 * b->W);
    }
    return plan4(a, &b->out, B, b->C, b->H / 2, b->W / 2);
}

size_t toy_resample_scratch_floats(const toy_resample *b, int B)
{
    return b->up ? toy_arena_floats((int64_t)B * b->C * 4 * b->H * b->W) : 0;   /* d_xu */
}

dl_status toy_resample_forward(toy_resample *b, const dl_tensor *x)
{
    const int B = (int)x->shape[0];
    DL_TRY(dl_check_shape(x, b->name, "x", 4, DL_SHAPE(-1, b->C, b->H, b->W)));
    if (B > b->out.shape[0])
        return dl_fail(DL_ERR_SHAPE, "%s: batch %d is larger than the planned %lld", b->name, B,
                       (long long)b->out.shape[0]);
    b->x = *x; b->x.owns_data = 0;
    dl_tensor out = toy_batch_view(&b->out, B);
    if (!b->up) return conv2d_forward(&out, x, &b->conv_w->value, &b->conv_b->value, 2, 1);
    dl_tensor xu = toy_batch_view(&b->xu, B);
    DL_TRY(upsample_nearest2x_forward(&xu, x));
    return conv2d_forward(&out, &xu, &b->conv_w->value, &b->conv_b->value, 1, 1);
}

/* ======================================================================== */
/* Backward                                                                   */

/* A zeroed gradient tensor from the scratch arena, shaped like `like`, for
 * kernels that add (+=) into it. */
#define GRAD(name, like) \
    dl_tensor name; \
    DL_TRY(toy_scratch_tensor(scratch, &name, (like).ndim, (like).shape, 1))

/* The same, not zeroed: the first kernel to write it sets it (a *_set_dx
 * kernel or a copy). Zeroing a buffer and reading the zeros back costs two
 * passes over memory, as much as an elementwise op. */
#define GRAD_SET(name, like) \
    dl_tensor name; \
    DL_TRY(toy_scratch_tensor(scratch, &name, (like).ndim, (like).shape, 0))

/* The *_body functions may return early (DL_TRY); their callers reset the
 * scratch arena afterwards whatever happened. */
static dl_status resblock_backward_body(toy_resblock *b, dl_tensor *dx, dl_tensor *dtemb_act,
                                        const dl_tensor *dout, dl_arena *scratch)
{
    const int B = (int)dout->shape[0];
    dl_tensor a1 = toy_batch_view(&b->a1, B);
    dl_tensor h = toy_batch_view(&b->h, B), a2 = toy_batch_view(&b->a2, B);
    /* out = conv2(a2) + shortcut(x): the shortcut path first sets dx */
    if (b->short_w) DL_TRY(conv2d_backward_set_dx(dx, &b->short_w->grad, &b->short_b->grad, dout, &b->x,
                                                  &b->short_w->value, 1, 0));
    else DL_TRY(dl_tensor_copy(dx, dout));                            /* identity: dx = dout */
    GRAD_SET(d_a2, a2);
    DL_TRY(conv2d_backward_set_dx(&d_a2, &b->conv2_w->grad, &b->conv2_b->grad, dout, &a2, &b->conv2_w->value, 1, 1));
    GRAD_SET(d_h, h);                      /* through silu and norm2 in one kernel */
    DL_TRY(group_norm_silu_backward_set_dx(&d_h, &b->norm2_w->grad, &b->norm2_b->grad, &d_a2, &h, NULL,
                                           &b->norm2_w->value, &b->norm2_b->value, b->groups, b->eps));
    /* h = conv1(a1) + tproj[:, :, None, None]: tproj's gradient sums d_h over the pixels */
    dl_tensor d_tproj, d_tproj2;
    DL_TRY(toy_scratch_tensor(scratch, &d_tproj, 4, DL_SHAPE(B, b->out_ch, 1, 1), 1));
    DL_TRY(add_backward(NULL, &d_tproj, &d_h));
    DL_TRY(dl_tensor_reshape(&d_tproj2, &d_tproj, 2, DL_SHAPE(B, b->out_ch)));
    DL_TRY(linear_backward(dtemb_act, &b->temb_w->grad, &b->temb_b->grad, &d_tproj2, &b->temb_act,
                           &b->temb_w->value));
    GRAD_SET(d_a1, a1);
    DL_TRY(conv2d_backward_set_dx(&d_a1, &b->conv1_w->grad, &b->conv1_b->grad, &d_h, &a1, &b->conv1_w->value, 1, 1));
    return group_norm_silu_backward(dx, &b->norm1_w->grad, &b->norm1_b->grad, &d_a1, &b->x, NULL, &b->norm1_w->value,
                                    &b->norm1_b->value, b->groups, b->eps);
}

dl_status toy_resblock_backward(toy_resblock *b, dl_tensor *dx, dl_tensor *dtemb_act,
                                const dl_tensor *dout, dl_arena *scratch)
{
    const int B = (int)b->x.shape[0];
    DL_TRY(dl_check_shape(dout, b->name, "dout", 4, DL_SHAPE(B, b->out_ch, b->H, b->W)));
    DL_TRY(dl_check_shape(dx, b->name, "dx", 4, b->x.shape));
    size_t mark = dl_arena_mark(scratch);
    dl_status s = resblock_backward_body(b, dx, dtemb_act, dout, scratch);
    dl_arena_reset(scratch, mark);
    return s;
}

/* The residual stream's gradient d_res [B, L, C] flows backwards through
 * t3 = t2 + ff(...), t2 = t1 + attn2(...), t1 = t0 + attn1(...): at each
 * "+" it passes unchanged, and each branch's LayerNorm backward adds the
 * branch's contribution into the same tensor. */
static dl_status transformer_backward_body(toy_transformer *b, dl_tensor *dx, dl_tensor *dctx,
                                           const dl_tensor *dout, dl_arena *scratch)
{
    const int B = (int)dout->shape[0], C = b->C, L = b->L;
#define V(t) dl_tensor t = toy_batch_view(&b->t, B)
    V(tok); V(t0); V(n1); V(q1); V(k1); V(v1); V(a1); V(t1); V(n2); V(q2); V(k2); V(v2); V(a2);
    V(t2); V(n3); V(ffh); V(ffg); V(m); V(t3); V(gn);
#undef V
    dl_tensor pin = as_matrix(&b->proj_in_w->value), pout = as_matrix(&b->proj_out_w->value);
    dl_tensor dpin = as_matrix(&b->proj_in_w->grad), dpout = as_matrix(&b->proj_out_w->grad);
    dl_tensor wh = rows_of(&b->ff0_w->value, 0, 4 * C), wg = rows_of(&b->ff0_w->value, 4 * C, 4 * C);
    dl_tensor dwh = rows_of(&b->ff0_w->grad, 0, 4 * C), dwg = rows_of(&b->ff0_w->grad, 4 * C, 4 * C);
    dl_tensor dbh = rows_of(&b->ff0_b->grad, 0, 4 * C), dbg = rows_of(&b->ff0_b->grad, 4 * C, 4 * C);

    /* out = nchw(proj_out(t3)) + x */
    DL_TRY(dl_tensor_copy(dx, dout));                         /* dx = dout, the norm adds its part last */
    GRAD_SET(d_po, t3);
    nchw_to_tokens(d_po.data, dout->data, B, C, L);
    GRAD_SET(d_res, t3);                                      /* d t3 */
    DL_TRY(linear_backward_set_dx(&d_res, &dpout, &b->proj_out_b->grad, &d_po, &t3, &pout));
    size_t mark = dl_arena_mark(scratch);

    /* t3 = t2 + ff.net.2(ffh * gelu(ffg)) */
    GRAD_SET(dm, m);
    DL_TRY(linear_backward_set_dx(&dm, &b->ff2_w->grad, &b->ff2_b->grad, &d_res, &m, &b->ff2_w->value));
    GRAD(d_ffh, ffh);
    GRAD(d_ffg, ffg);
    DL_TRY(geglu_backward(&d_ffh, &d_ffg, &dm, &ffh, &ffg));
    GRAD_SET(d_n3, n3);
    DL_TRY(linear_backward_set_dx(&d_n3, &dwh, &dbh, &d_ffh, &n3, &wh));
    DL_TRY(linear_backward(&d_n3, &dwg, &dbg, &d_ffg, &n3, &wg));
    DL_TRY(layer_norm_backward(&d_res, &b->ln3_w->grad, &b->ln3_b->grad, &d_n3, &t2, &b->ln3_w->value, LN_EPS));
    dl_arena_reset(scratch, mark);                            /* d_res is now d t2 */

    /* t2 = t1 + to_out(attention(q(n2), k(ctx), v(ctx))) */
    GRAD_SET(da2, a2);
    DL_TRY(linear_backward_set_dx(&da2, &b->o2_w->grad, &b->o2_b->grad, &d_res, &a2, &b->o2_w->value));
    GRAD(dq2, q2);
    GRAD(dk2, k2);
    GRAD(dv2, v2);
    DL_TRY(attention_backward(&dq2, &dk2, &dv2, &da2, &q2, &k2, &v2, b->heads, 0));
    GRAD_SET(d_n2, n2);
    DL_TRY(linear_backward_set_dx(&d_n2, &b->q2_w->grad, NULL, &dq2, &n2, &b->q2_w->value));
    DL_TRY(linear_backward(dctx, &b->k2_w->grad, NULL, &dk2, &b->ctx, &b->k2_w->value));
    DL_TRY(linear_backward(dctx, &b->v2_w->grad, NULL, &dv2, &b->ctx, &b->v2_w->value));
    DL_TRY(layer_norm_backward(&d_res, &b->ln2_w->grad, &b->ln2_b->grad, &d_n2, &t1, &b->ln2_w->value, LN_EPS));
    dl_arena_reset(scratch, mark);                            /* d t1 */

    /* t1 = t0 + to_out(attention(q(n1), k(n1), v(n1))) */
    GRAD_SET(da1, a1);
    DL_TRY(linear_backward_set_dx(&da1, &b->o1_w->grad, &b->o1_b->grad, &d_res, &a1, &b->o1_w->value));
    GRAD(dq1, q1);
    GRAD(dk1, k1);
    GRAD(dv1, v1);
    DL_TRY(attention_backward(&dq1, &dk1, &dv1, &da1, &q1, &k1, &v1, b->heads, 0));
    GRAD_SET(d_n1, n1);
    DL_TRY(linear_backward_set_dx(&d_n1, &b->q1_w->grad, NULL, &dq1, &n1, &b->q1_w->value));
    DL_TRY(linear_backward(&d_n1, &b->k1_w->grad, NULL, &dk1, &n1, &b->k1_w->value));
    DL_TRY(linear_backward(&d_n1, &b->v1_w->grad, NULL, &dv1, &n1, &b->v1_w->value));
    DL_TRY(layer_norm_backward(&d_res, &b->ln1_w->grad, &b->ln1_b->grad, &d_n1, &t0, &b->ln1_w->value, LN_EPS));
    dl_arena_reset(scratch, mark);                            /* d t0 */

    /* t0 = proj_in(tokens(norm(x))) */
    GRAD_SET(d_tok, tok);
    DL_TRY(linear_backward_set_dx(&d_tok, &dpin, &b->proj_in_b->grad, &d_res, &tok, &pin));
    GRAD_SET(d_gn, gn);
    tokens_to_nchw(d_gn.data, d_tok.data, B, C, L);
    return group_norm_backward(dx, &b->norm_w->grad, &b->norm_b->grad, &d_gn, &b->x, &b->norm_w->value,
                               b->groups, TR_GN_EPS);
}

dl_status toy_transformer_backward(toy_transformer *b, dl_tensor *dx, dl_tensor *dctx,
                                   const dl_tensor *dout, dl_arena *scratch)
{
    const int B = (int)b->x.shape[0];
    DL_TRY(dl_check_shape(dout, b->name, "dout", 4, DL_SHAPE(B, b->C, b->H, b->W)));
    DL_TRY(dl_check_shape(dx, b->name, "dx", 4, DL_SHAPE(B, b->C, b->H, b->W)));
    if (dctx) DL_TRY(dl_check_shape(dctx, b->name, "dctx", 3, DL_SHAPE(B, b->ctx_len, b->ctx_dim)));
    size_t mark = dl_arena_mark(scratch);
    dl_status s = transformer_backward_body(b, dx, dctx, dout, scratch);
    dl_arena_reset(scratch, mark);
    return s;
}

dl_status toy_resample_backward(toy_resample *b, dl_tensor *dx, const dl_tensor *dout, dl_arena *scratch)
{
    const int B = (int)b->x.shape[0];
    int f = b->up ? 2 : 1, d = b->up ? 1 : 2;                /* output size = input * f / d */
    DL_TRY(dl_check_shape(dout, b->name, "dout", 4, DL_SHAPE(B, b->C, b->H * f / d, b->W * f / d)));
    if (!b->up)
        return conv2d_backward_set_dx(dx, &b->conv_w->grad, &b->conv_b->grad, dout, &b->x, &b->conv_w->value, 2, 1);
    size_t mark = dl_arena_mark(scratch);
    dl_tensor xu = toy_batch_view(&b->xu, B), d_xu;
    dl_status s = toy_scratch_tensor(scratch, &d_xu, 4, xu.shape, 0);
    if (s == DL_OK) s = conv2d_backward_set_dx(&d_xu, &b->conv_w->grad, &b->conv_b->grad, dout, &xu,
                                               &b->conv_w->value, 1, 1);
    if (s == DL_OK) dl_tensor_zero(dx);                 /* the upsample's backward adds */
    if (s == DL_OK) s = upsample_nearest2x_backward(dx, &d_xu);
    dl_arena_reset(scratch, mark);
    return s;
}
