/* sd_unet_blocks.c - see sd_unet_blocks.h.
 *
 * Every op helper (sd_group_norm, sd_linear, sd_conv ...) fetches its
 * weights, runs the fast kernel and releases the weights before it returns,
 * so at most one layer's weights are ever widened from fp16 at a time.
 * Block functions are split into a *_body that may return early (DL_TRY)
 * and a wrapper that puts the scratch arena back where it was.
 */
#include "sd_unet_blocks.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "attention.h"
#include "conv2d.h"
#include "elementwise.h"
#include "linear.h"
#include "norm.h"
#include "resample.h"

#define SD_LN_EPS 1e-5f        /* BasicTransformerBlock's LayerNorms             */
#define SD_TR_GN_EPS 1e-6f     /* Transformer2DModel's GroupNorm                 */
#define SD_VAE_ATTN_EPS 1e-6f  /* the VAE attention's GroupNorm (resnet_eps)     */
/* The GEGLU feed-forward works on this many floats of rows at a time: its
 * [rows, 8C] projection is the widest tensor of a transformer block (at 64x64
 * latents and batch 2 it would be 84 MB at once; this way it is 16 MB). */
#define SD_FF_CHUNK_FLOATS ((int64_t)4 << 20)

void sd_emit(const sd_ctx *c, const char *prefix, const char *suffix, const dl_tensor *t)
{
    if (!c->hook) return;
    char name[256];
    if (suffix) snprintf(name, sizeof name, "%s.%s", prefix, suffix);
    else snprintf(name, sizeof name, "%s", prefix);
    c->hook(c->hook_ctx, name, t);
}

size_t sd_arena_floats(int64_t n) { return (size_t)n + 16; }

dl_status sd_scratch_tensor(dl_arena *a, dl_tensor *t, int ndim, const int64_t shape[])
{
    int64_t n = dl_shape_numel(ndim, shape);
    if (n < 0) return DL_ERR_SHAPE;
    size_t start = (a->used + 15) & ~(size_t)15;        /* 64-byte aligned */
    if (start > a->capacity || (size_t)n > a->capacity - start)
        return dl_fail(DL_ERR_MEMORY, "sd scratch: arena full (%lld floats wanted, %zu of %zu used)",
                       (long long)n, a->used, a->capacity);
    DL_TRY(dl_tensor_view(t, a->base + start, ndim, shape));
    a->used = start + (size_t)n;
    if (a->used > a->peak) a->peak = a->used;
    return DL_OK;
}

void sd_nchw_to_tokens(float *tok, const float *x, int B, int C, int L)
{
    /* tok[b, l, c] = x[b, c, l]; blocks of 32 x 32 keep both sides in cache */
    const int T = 32;
    #pragma omp parallel for collapse(2) schedule(static) if (dl_parallel_ok() && (int64_t)B * C * L > 65536)
    for (int b = 0; b < B; b++)
        for (int l0 = 0; l0 < L; l0 += T)
            for (int c0 = 0; c0 < C; c0 += T) {
                const float *src = x + (int64_t)b * C * L;
                float *dst = tok + (int64_t)b * L * C;
                int l1 = l0 + T < L ? l0 + T : L, c1 = c0 + T < C ? c0 + T : C;
                for (int l = l0; l < l1; l++)
                    for (int ch = c0; ch < c1; ch++) dst[(int64_t)l * C + ch] = src[(int64_t)ch * L + l];
            }
}

void sd_tokens_to_nchw(float *x, const float *tok, int B, int C, int L)
{
    const int T = 32;
    #pragma omp parallel for collapse(2) schedule(static) if (dl_parallel_ok() && (int64_t)B * C * L > 65536)
    for (int b = 0; b < B; b++)
        for (int c0 = 0; c0 < C; c0 += T)
            for (int l0 = 0; l0 < L; l0 += T) {
                const float *src = tok + (int64_t)b * L * C;
                float *dst = x + (int64_t)b * C * L;
                int l1 = l0 + T < L ? l0 + T : L, c1 = c0 + T < C ? c0 + T : C;
                for (int ch = c0; ch < c1; ch++)
                    for (int l = l0; l < l1; l++) dst[(int64_t)ch * L + l] = src[(int64_t)l * C + ch];
            }
}

/* ---- profile (sd_set_profile) ---------------------------------------------- */

const char *const sd_op_names[SD_OP_KINDS] = {"conv", "linear", "attention", "geglu", "norm", "weights"};
static sd_profile *g_profile;

void sd_set_profile(sd_profile *p) { g_profile = p; }

static double prof_now(void)
{
    if (!g_profile) return 0.0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Book the time since t0 (from prof_now) and `flops` under `kind`. */
static void prof_add(sd_op_kind kind, double t0, double flops)
{
    if (!g_profile) return;
    g_profile->seconds[kind] += prof_now() - t0;
    g_profile->flops[kind] += flops;
    g_profile->calls[kind]++;
}

/* ---- weights and single ops ------------------------------------------------ */

dl_status sd_get_weight(const sd_ctx *c, dl_tensor *t, const char *prefix, const char *suffix,
                        int ndim, const int64_t shape[])
{
    char name[256];
    if (snprintf(name, sizeof name, "%s.%s", prefix, suffix) >= (int)sizeof name)
        return dl_fail(DL_ERR_ARG, "sd: weight name '%s.%s' too long", prefix, suffix);
    memset(t, 0, sizeof *t);
    return sd_weights_get(c->w, c->part, name, ndim, shape, t);
}

/* weight and bias of a norm / linear / conv, both released by put_pair */
static dl_status get_pair(const sd_ctx *c, const char *prefix, dl_tensor *w, int wdim, const int64_t wshape[],
                          dl_tensor *b, int64_t bsize)
{
    memset(b, 0, sizeof *b);
    double t0 = prof_now();
    DL_TRY(sd_get_weight(c, w, prefix, "weight", wdim, wshape));
    dl_status s = bsize > 0 ? sd_get_weight(c, b, prefix, "bias", 1, DL_SHAPE(bsize)) : DL_OK;
    if (s != DL_OK) dl_tensor_free(w);
    prof_add(SD_OP_WEIGHTS, t0, 0);
    return s;
}

static void put_pair(dl_tensor *w, dl_tensor *b)
{
    dl_tensor_free(w);
    dl_tensor_free(b);
}

dl_status sd_group_norm(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x, float eps)
{
    int64_t C = x->shape[1];
    dl_tensor w, b;
    DL_TRY(get_pair(c, prefix, &w, 1, DL_SHAPE(C), &b, C));
    double t0 = prof_now();
    dl_status s = group_norm_forward(out, x, &w, &b, c->groups, eps);
    prof_add(SD_OP_NORM, t0, 0);
    put_pair(&w, &b);
    return s;
}

dl_status sd_layer_norm(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x, float eps)
{
    int64_t C = x->shape[x->ndim - 1];
    dl_tensor w, b;
    DL_TRY(get_pair(c, prefix, &w, 1, DL_SHAPE(C), &b, C));
    double t0 = prof_now();
    dl_status s = layer_norm_forward(out, x, &w, &b, eps);
    prof_add(SD_OP_NORM, t0, 0);
    put_pair(&w, &b);
    return s;
}

dl_status sd_linear(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x, int has_bias)
{
    int64_t fin = x->shape[x->ndim - 1], fout = out->shape[out->ndim - 1];
    dl_tensor w, b;
    DL_TRY(get_pair(c, prefix, &w, 2, DL_SHAPE(fout, fin), &b, has_bias ? fout : 0));
    double t0 = prof_now();
    dl_status s = linear_forward(out, x, &w, has_bias ? &b : NULL);
    prof_add(SD_OP_LINEAR, t0, 2.0 * (double)(x->numel / fin) * (double)fin * (double)fout);
    put_pair(&w, &b);
    return s;
}

dl_status sd_conv(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x, int k, int stride,
                  int padding)
{
    int64_t Co = out->shape[1], Ci = x->shape[1];
    dl_tensor w, b;
    DL_TRY(get_pair(c, prefix, &w, 4, DL_SHAPE(Co, Ci, k, k), &b, Co));
    double t0 = prof_now();
    dl_status s = conv2d_forward(out, x, &w, &b, stride, padding);
    prof_add(SD_OP_CONV, t0, 2.0 * (double)out->numel * (double)(Ci * k * k));
    put_pair(&w, &b);
    return s;
}

/* ======================================================================== */
/* ResnetBlock2D                                                             */

size_t sd_resnet_scratch_floats(int B, int Ci, int Co, int H, int W)
{
    int64_t px = (int64_t)B * H * W;
    size_t first = sd_arena_floats(px * Ci);                                  /* silu(norm1(x)) */
    size_t second = sd_arena_floats((int64_t)B * Co) + sd_arena_floats(px * Co);  /* temb proj, conv2 */
    return first > second ? first : second;
}

static dl_status resnet_body(const sd_ctx *c, const char *p, dl_tensor *out, const dl_tensor *x,
                             const dl_tensor *temb_act, float eps, size_t mark)
{
    const int B = (int)x->shape[0], Ci = (int)x->shape[1], H = (int)x->shape[2], W = (int)x->shape[3];
    const int Co = (int)out->shape[1];
    char q[256];
#define SUB(s) (snprintf(q, sizeof q, "%s.%s", p, s), q)
    /* out = conv1(silu(norm1(x)))                           [B, Co, H, W] */
    dl_tensor a;
    DL_TRY(sd_scratch_tensor(c->arena, &a, 4, DL_SHAPE(B, Ci, H, W)));
    DL_TRY(sd_group_norm(c, SUB("norm1"), &a, x, eps));
    DL_TRY(silu_forward(&a, &a));
    DL_TRY(sd_conv(c, SUB("conv1"), out, &a, 3, 1, 1));
    dl_arena_reset(c->arena, mark);
    /* + time_emb_proj(silu(temb)): one shift per (image, channel) */
    if (temb_act) {
        dl_tensor tp, tp4;
        DL_TRY(sd_scratch_tensor(c->arena, &tp, 2, DL_SHAPE(B, Co)));
        DL_TRY(sd_linear(c, SUB("time_emb_proj"), &tp, temb_act, 1));
        DL_TRY(dl_tensor_reshape(&tp4, &tp, 4, DL_SHAPE(B, Co, 1, 1)));
        DL_TRY(add_forward(out, out, &tp4));
    }
    /* h2 = conv2(silu(norm2(out)))  (dropout is off at inference) */
    DL_TRY(sd_group_norm(c, SUB("norm2"), out, out, eps));
    DL_TRY(silu_forward(out, out));
    dl_tensor h2;
    DL_TRY(sd_scratch_tensor(c->arena, &h2, 4, DL_SHAPE(B, Co, H, W)));
    DL_TRY(sd_conv(c, SUB("conv2"), &h2, out, 3, 1, 1));
    /* out = shortcut(x) + h2; the shortcut is a 1x1 conv when channels change */
    if (Ci != Co) {
        DL_TRY(sd_conv(c, SUB("conv_shortcut"), out, x, 1, 1, 0));
        return add_forward(out, out, &h2);
    }
    return add_forward(out, x, &h2);
#undef SUB
}

dl_status sd_resnet_forward(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x,
                            const dl_tensor *temb_act, float eps)
{
    DL_TRY(dl_check_shape(x, prefix, "x", 4, DL_SHAPE(-1, -1, -1, -1)));
    DL_TRY(dl_check_shape(out, prefix, "out", 4, DL_SHAPE(x->shape[0], -1, x->shape[2], x->shape[3])));
    if (temb_act) DL_TRY(dl_check_shape(temb_act, prefix, "temb", 2, DL_SHAPE(x->shape[0], -1)));
    size_t mark = dl_arena_mark(c->arena);
    dl_status s = resnet_body(c, prefix, out, x, temb_act, eps, mark);
    dl_arena_reset(c->arena, mark);
    if (s == DL_OK) sd_emit(c, prefix, NULL, out);
    return s;
}

/* ======================================================================== */
/* Transformer2DModel                                                        */

/* GEGLU rows per chunk: the chunk holds [rows, 8C] + [rows, 4C] floats. */
static int64_t ff_rows(int C, int64_t rows)
{
    int64_t r = SD_FF_CHUNK_FLOATS / (12 * (int64_t)C);
    if (r < 16) r = 16;
    return r < rows ? r : rows;
}

size_t sd_transformer_scratch_floats(int B, int C, int H, int W, int Lc)
{
    int64_t tok = (int64_t)B * H * W * C, ctx = (int64_t)B * Lc * C;
    int64_t R = ff_rows(C, (int64_t)B * H * W);
    size_t t = sd_arena_floats(tok);                                       /* the residual stream */
    size_t in = 2 * sd_arena_floats(tok);                                  /* norm(x), tokens      */
    size_t self = 5 * sd_arena_floats(tok);                                /* n, q, k, v, attn     */
    size_t cross = 3 * sd_arena_floats(tok) + 2 * sd_arena_floats(ctx);   /* n, q, attn + k, v    */
    size_t ff = 2 * sd_arena_floats(tok) + sd_arena_floats(R * 8 * C) + sd_arena_floats(R * 4 * C);
    size_t m = in;
    if (self > m) m = self;
    if (cross > m) m = cross;
    if (ff > m) m = ff;
    return t + m;
}

/* attn(LN(t)) with q from the tokens and k, v from ctx (self-attention when
 * ctx == NULL); the result (after to_out.0) is added to t. */
static dl_status attention_sublayer(const sd_ctx *c, const char *bp, const char *which, const char *norm,
                                    dl_tensor *t, const dl_tensor *ctx, int heads)
{
    const int64_t B = t->shape[0], L = t->shape[1], C = t->shape[2];
    const int64_t Lk = ctx ? ctx->shape[1] : L;
    char q_[256];
#define SUB(s) (snprintf(q_, sizeof q_, "%s.%s.%s", bp, which, s), q_)
    dl_tensor n, q, k, v, a;
    DL_TRY(sd_scratch_tensor(c->arena, &n, 3, DL_SHAPE(B, L, C)));
    snprintf(q_, sizeof q_, "%s.%s", bp, norm);
    DL_TRY(sd_layer_norm(c, q_, &n, t, SD_LN_EPS));
    const dl_tensor *kv_in = ctx ? ctx : &n;
    DL_TRY(sd_scratch_tensor(c->arena, &q, 3, DL_SHAPE(B, L, C)));
    DL_TRY(sd_scratch_tensor(c->arena, &k, 3, DL_SHAPE(B, Lk, C)));
    DL_TRY(sd_scratch_tensor(c->arena, &v, 3, DL_SHAPE(B, Lk, C)));
    DL_TRY(sd_scratch_tensor(c->arena, &a, 3, DL_SHAPE(B, L, C)));
    DL_TRY(sd_linear(c, SUB("to_q"), &q, &n, 0));
    DL_TRY(sd_linear(c, SUB("to_k"), &k, kv_in, 0));
    DL_TRY(sd_linear(c, SUB("to_v"), &v, kv_in, 0));
    /* softmax(q k^T / sqrt(C / heads)) v, per head; chunked over the queries */
    double t0 = prof_now();
    DL_TRY(attention_forward(&a, &q, &k, &v, heads, 0));
    prof_add(SD_OP_ATTENTION, t0, 4.0 * (double)B * (double)L * (double)Lk * (double)C);
    DL_TRY(sd_linear(c, SUB("to_out.0"), &q, &a, 1));            /* q's memory is free again */
#undef SUB
    snprintf(q_, sizeof q_, "%s.%s", bp, which);
    sd_emit(c, q_, NULL, &q);
    return add_forward(t, t, &q);
}

/* (h + bh) * gelu(g + bg) for every row, where a row of p is [h (4C) | g (4C)]
 * without its bias and bias = [bh | bg]: adding the projection's bias here
 * rather than in the GEMM saves a pass over the widest tensor of the block. */
static void geglu_rows(float *m, const float *p, const float *bias, int64_t rows, int64_t inner)
{
    #pragma omp parallel for schedule(static) if (dl_parallel_ok() && rows * inner > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *h = p + r * 2 * inner, *g = h + inner, *bh = bias, *bg = bias + inner;
        float *o = m + r * inner;
        #pragma omp simd
        for (int64_t j = 0; j < inner; j++) {
            float hj = h[j] + bh[j], gj = g[j] + bg[j];
            o[j] = hj * (0.5f * gj * (1.0f + dl_erff_fast(gj * 0.70710678118654752f)));
        }
    }
}

/* t += ff.net.2(GEGLU(ff.net.0.proj(LN3(t)))), a chunk of rows at a time. */
static dl_status ff_sublayer(const sd_ctx *c, const char *bp, dl_tensor *t)
{
    const int64_t B = t->shape[0], L = t->shape[1], C = t->shape[2], rows = B * L, inner = 4 * C;
    char q_[256];
    dl_tensor n, f, p, m;
    DL_TRY(sd_scratch_tensor(c->arena, &n, 3, DL_SHAPE(B, L, C)));
    DL_TRY(sd_scratch_tensor(c->arena, &f, 3, DL_SHAPE(B, L, C)));
    snprintf(q_, sizeof q_, "%s.norm3", bp);
    DL_TRY(sd_layer_norm(c, q_, &n, t, SD_LN_EPS));
    const int64_t R = ff_rows((int)C, rows);
    DL_TRY(sd_scratch_tensor(c->arena, &p, 2, DL_SHAPE(R, 2 * inner)));
    DL_TRY(sd_scratch_tensor(c->arena, &m, 2, DL_SHAPE(R, inner)));
    dl_tensor w0, b0, w2, b2;
    snprintf(q_, sizeof q_, "%s.ff.net.0.proj", bp);
    DL_TRY(get_pair(c, q_, &w0, 2, DL_SHAPE(2 * inner, C), &b0, 2 * inner));
    snprintf(q_, sizeof q_, "%s.ff.net.2", bp);
    dl_status s = get_pair(c, q_, &w2, 2, DL_SHAPE(C, inner), &b2, C);
    if (s != DL_OK) { put_pair(&w0, &b0); return s; }
    for (int64_t r0 = 0; r0 < rows && s == DL_OK; r0 += R) {
        int64_t nr = rows - r0 < R ? rows - r0 : R;
        dl_tensor nv, pv, mv, fv;
        dl_tensor_view(&nv, n.data + r0 * C, 2, DL_SHAPE(nr, C));
        dl_tensor_view(&pv, p.data, 2, DL_SHAPE(nr, 2 * inner));
        dl_tensor_view(&mv, m.data, 2, DL_SHAPE(nr, inner));
        dl_tensor_view(&fv, f.data + r0 * C, 2, DL_SHAPE(nr, C));
        double t0 = prof_now();
        s = linear_forward(&pv, &nv, &w0, NULL);                 /* b0 is added by geglu_rows */
        prof_add(SD_OP_LINEAR, t0, 2.0 * (double)nr * (double)C * (double)(2 * inner));
        t0 = prof_now();
        if (s == DL_OK) geglu_rows(mv.data, pv.data, b0.data, nr, inner);
        prof_add(SD_OP_GEGLU, t0, 0);
        t0 = prof_now();
        if (s == DL_OK) s = linear_forward(&fv, &mv, &w2, &b2);
        prof_add(SD_OP_LINEAR, t0, 2.0 * (double)nr * (double)inner * (double)C);
    }
    put_pair(&w0, &b0);
    put_pair(&w2, &b2);
    DL_TRY(s);
    snprintf(q_, sizeof q_, "%s.ff", bp);
    sd_emit(c, q_, NULL, &f);
    return add_forward(t, t, &f);
}

/* proj_in / proj_out: a Linear [C, C] (SD 2.x) or a 1x1 conv [C, C, 1, 1]
 * (SD 1.x), which on tokens is the same product. */
static dl_status token_proj(const sd_ctx *c, const char *p, const char *which, dl_tensor *out,
                            const dl_tensor *x, int linear_proj)
{
    char q_[256];
    snprintf(q_, sizeof q_, "%s.%s", p, which);
    const int64_t C = x->shape[2];
    if (linear_proj) return sd_linear(c, q_, out, x, 1);
    dl_tensor w, b, w2;
    DL_TRY(get_pair(c, q_, &w, 4, DL_SHAPE(C, C, 1, 1), &b, C));
    dl_status s = dl_tensor_reshape(&w2, &w, 2, DL_SHAPE(C, C));
    double t0 = prof_now();
    if (s == DL_OK) s = linear_forward(out, x, &w2, &b);
    prof_add(SD_OP_LINEAR, t0, 2.0 * (double)(x->numel / C) * (double)C * (double)C);
    put_pair(&w, &b);
    return s;
}

static dl_status transformer_body(const sd_ctx *c, const char *p, dl_tensor *out, const dl_tensor *x,
                                  const dl_tensor *ctx, int heads, int layers, int linear_proj)
{
    const int B = (int)x->shape[0], C = (int)x->shape[1], H = (int)x->shape[2], W = (int)x->shape[3];
    const int L = H * W;
    char q_[256];
    /* t = proj_in(tokens(GroupNorm(x)))           the residual stream [B, L, C] */
    dl_tensor t, g, tok;
    DL_TRY(sd_scratch_tensor(c->arena, &t, 3, DL_SHAPE(B, L, C)));
    size_t mark = dl_arena_mark(c->arena);
    DL_TRY(sd_scratch_tensor(c->arena, &g, 4, DL_SHAPE(B, C, H, W)));
    DL_TRY(sd_scratch_tensor(c->arena, &tok, 3, DL_SHAPE(B, L, C)));
    snprintf(q_, sizeof q_, "%s.norm", p);
    DL_TRY(sd_group_norm(c, q_, &g, x, SD_TR_GN_EPS));
    sd_nchw_to_tokens(tok.data, g.data, B, C, L);
    DL_TRY(token_proj(c, p, "proj_in", &t, &tok, linear_proj));
    dl_arena_reset(c->arena, mark);
    /* BasicTransformerBlocks: t += attn1(LN1 t); t += attn2(LN2 t, ctx); t += ff(LN3 t) */
    for (int n = 0; n < layers; n++) {
        char bp[192];
        snprintf(bp, sizeof bp, "%s.transformer_blocks.%d", p, n);
        DL_TRY(attention_sublayer(c, bp, "attn1", "norm1", &t, NULL, heads));
        dl_arena_reset(c->arena, mark);
        DL_TRY(attention_sublayer(c, bp, "attn2", "norm2", &t, ctx, heads));
        dl_arena_reset(c->arena, mark);
        DL_TRY(ff_sublayer(c, bp, &t));
        dl_arena_reset(c->arena, mark);
    }
    /* out = nchw(proj_out(t)) + x */
    dl_tensor po;
    DL_TRY(sd_scratch_tensor(c->arena, &po, 3, DL_SHAPE(B, L, C)));
    DL_TRY(token_proj(c, p, "proj_out", &po, &t, linear_proj));
    sd_tokens_to_nchw(out->data, po.data, B, C, L);
    return add_forward(out, out, x);
}

dl_status sd_transformer_forward(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x,
                                 const dl_tensor *context, int heads, int layers, int linear_proj)
{
    DL_TRY(dl_check_shape(x, prefix, "x", 4, DL_SHAPE(-1, -1, -1, -1)));
    DL_TRY(dl_check_shape(out, prefix, "out", 4, x->shape));
    DL_TRY(dl_check_shape(context, prefix, "encoder_hidden_states", 3, DL_SHAPE(x->shape[0], -1, -1)));
    if (heads < 1 || x->shape[1] % heads != 0)
        return dl_fail(DL_ERR_ARG, "%s: %lld channels do not split into %d heads", prefix,
                       (long long)x->shape[1], heads);
    size_t mark = dl_arena_mark(c->arena);
    dl_status s = transformer_body(c, prefix, out, x, context, heads, layers, linear_proj);
    dl_arena_reset(c->arena, mark);
    if (s == DL_OK) sd_emit(c, prefix, NULL, out);
    return s;
}

/* ======================================================================== */
/* The VAE's spatial self-attention                                          */

size_t sd_vae_attention_scratch_floats(int B, int C, int H, int W)
{
    return 5 * sd_arena_floats((int64_t)B * C * H * W);      /* tokens (or norm), q, k, v, attn */
}

static dl_status vae_attention_body(const sd_ctx *c, const char *p, dl_tensor *out, const dl_tensor *x)
{
    const int B = (int)x->shape[0], C = (int)x->shape[1], H = (int)x->shape[2], W = (int)x->shape[3];
    const int L = H * W;
    char q_[256];
#define SUB(s) (snprintf(q_, sizeof q_, "%s.%s", p, s), q_)
    dl_tensor tok, g, q, k, v, a;
    DL_TRY(sd_scratch_tensor(c->arena, &tok, 3, DL_SHAPE(B, L, C)));
    size_t mark = dl_arena_mark(c->arena);
    DL_TRY(sd_scratch_tensor(c->arena, &g, 4, DL_SHAPE(B, C, H, W)));
    DL_TRY(sd_group_norm(c, SUB("group_norm"), &g, x, SD_VAE_ATTN_EPS));
    sd_nchw_to_tokens(tok.data, g.data, B, C, L);
    dl_arena_reset(c->arena, mark);
    DL_TRY(sd_scratch_tensor(c->arena, &q, 3, DL_SHAPE(B, L, C)));
    DL_TRY(sd_scratch_tensor(c->arena, &k, 3, DL_SHAPE(B, L, C)));
    DL_TRY(sd_scratch_tensor(c->arena, &v, 3, DL_SHAPE(B, L, C)));
    DL_TRY(sd_scratch_tensor(c->arena, &a, 3, DL_SHAPE(B, L, C)));
    DL_TRY(sd_linear(c, SUB("to_q"), &q, &tok, 1));
    DL_TRY(sd_linear(c, SUB("to_k"), &k, &tok, 1));
    DL_TRY(sd_linear(c, SUB("to_v"), &v, &tok, 1));
    double t0 = prof_now();
    DL_TRY(attention_forward(&a, &q, &k, &v, 1, 0));             /* one head, scale 1/sqrt(C) */
    prof_add(SD_OP_ATTENTION, t0, 4.0 * (double)B * (double)L * (double)L * (double)C);
    DL_TRY(sd_linear(c, SUB("to_out.0"), &q, &a, 1));
#undef SUB
    sd_tokens_to_nchw(out->data, q.data, B, C, L);
    return add_forward(out, out, x);
}

dl_status sd_vae_attention_forward(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(dl_check_shape(x, prefix, "x", 4, DL_SHAPE(-1, -1, -1, -1)));
    DL_TRY(dl_check_shape(out, prefix, "out", 4, x->shape));
    size_t mark = dl_arena_mark(c->arena);
    dl_status s = vae_attention_body(c, prefix, out, x);
    dl_arena_reset(c->arena, mark);
    if (s == DL_OK) sd_emit(c, prefix, NULL, out);
    return s;
}

/* ======================================================================== */
/* Downsample2D / Upsample2D                                                 */

int sd_downsample_size(int in, int padding)
{
    return padding == 0 ? conv2d_out_size(in + 1, 3, 2, 0) : conv2d_out_size(in, 3, 2, padding);
}

size_t sd_downsample_scratch_floats(int B, int C, int H, int W, int padding)
{
    return padding == 0 ? sd_arena_floats((int64_t)B * C * (H + 1) * (W + 1)) : 0;
}

static dl_status downsample_body(const sd_ctx *c, const char *p, dl_tensor *out, const dl_tensor *x, int padding)
{
    char q_[256];
    snprintf(q_, sizeof q_, "%s.conv", p);
    if (padding != 0) return sd_conv(c, q_, out, x, 3, 2, padding);
    /* diffusers pads (left 0, right 1, top 0, bottom 1) with zeros, then
     * convolves without padding: the window of output pixel o starts at 2o. */
    const int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    dl_tensor xp;
    DL_TRY(sd_scratch_tensor(c->arena, &xp, 4, DL_SHAPE(B, C, H + 1, W + 1)));
    #pragma omp parallel for schedule(static) if (dl_parallel_ok() && B * C * H * W > 65536)
    for (int64_t bc = 0; bc < B * C; bc++) {
        const float *src = x->data + bc * H * W;
        float *dst = xp.data + bc * (H + 1) * (W + 1);
        for (int64_t h = 0; h < H; h++) {
            memcpy(dst + h * (W + 1), src + h * W, (size_t)W * sizeof(float));
            dst[h * (W + 1) + W] = 0.0f;
        }
        memset(dst + H * (W + 1), 0, (size_t)(W + 1) * sizeof(float));
    }
    return sd_conv(c, q_, out, &xp, 3, 2, 0);
}

dl_status sd_downsample_forward(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x,
                                int padding)
{
    DL_TRY(dl_check_shape(x, prefix, "x", 4, DL_SHAPE(-1, -1, -1, -1)));
    size_t mark = dl_arena_mark(c->arena);
    dl_status s = downsample_body(c, prefix, out, x, padding);
    dl_arena_reset(c->arena, mark);
    return s;
}

size_t sd_upsample_scratch_floats(int B, int C, int Ho, int Wo)
{
    return sd_arena_floats((int64_t)B * C * Ho * Wo);
}

/* PyTorch's "nearest" for an explicit output size: src = floor(dst * in / out)
 * computed in float, clamped to in - 1. */
static int nearest_src(int dst, int in, int out)
{
    float scale = (float)in / (float)out;
    int s = (int)floorf((float)dst * scale);
    return s < in - 1 ? s : in - 1;
}

static dl_status upsample_body(const sd_ctx *c, const char *p, dl_tensor *out, const dl_tensor *x)
{
    const int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t Ho = out->shape[2], Wo = out->shape[3];
    dl_tensor u;
    DL_TRY(sd_scratch_tensor(c->arena, &u, 4, DL_SHAPE(B, C, Ho, Wo)));
    if (Ho == 2 * H && Wo == 2 * W) {
        DL_TRY(upsample_nearest2x_forward(&u, x));
    } else {
        #pragma omp parallel for schedule(static) if (dl_parallel_ok() && B * C * Ho * Wo > 65536)
        for (int64_t bc = 0; bc < B * C; bc++)
            for (int64_t oh = 0; oh < Ho; oh++) {
                const float *src = x->data + (bc * H + nearest_src((int)oh, (int)H, (int)Ho)) * W;
                float *dst = u.data + (bc * Ho + oh) * Wo;
                for (int64_t ow = 0; ow < Wo; ow++) dst[ow] = src[nearest_src((int)ow, (int)W, (int)Wo)];
            }
    }
    char q_[256];
    snprintf(q_, sizeof q_, "%s.conv", p);
    return sd_conv(c, q_, out, &u, 3, 1, 1);
}

dl_status sd_upsample_forward(const sd_ctx *c, const char *prefix, dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(dl_check_shape(x, prefix, "x", 4, DL_SHAPE(-1, -1, -1, -1)));
    DL_TRY(dl_check_shape(out, prefix, "out", 4, DL_SHAPE(x->shape[0], x->shape[1], -1, -1)));
    size_t mark = dl_arena_mark(c->arena);
    dl_status s = upsample_body(c, prefix, out, x);
    dl_arena_reset(c->arena, mark);
    return s;
}
