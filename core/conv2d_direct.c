/* conv2d_direct.c - see conv2d_direct.h.
 *
 * The loops (conv2d_direct_kernels.h) are written with GCC vector
 * extensions, so one source gives AVX-512, AVX2 or SSE code. This file is compiled with
 * fused multiply-add allowed (the rest of difflab keeps -ffp-contract=off
 * so that the reference loops are exact): acc += x * w becomes one FMA
 * instruction, as inside sgemm. Results differ from the reference loops by
 * rounding only; tests/test_conv2d.c compares them. */
#pragma GCC optimize("fp-contract=fast")

#include "conv2d_direct.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "tensor.h"

#define NV 4          /* vectors of output pixels per tile */

/* How a kernel reads its input. Output pixels are numbered p = 0 .. P-1
 * in a plane; a vector is VW consecutive p inside one "run" of `run`
 * pixels (an image row, or the whole plane where the layout allows it).
 * For the vector starting at p, tap t reads the VW floats at
 *
 *     in[ci] + dconv_in_off(p) + tap_off[t],  dconv_in_off(p) = (p / run) * in_row + p % run
 *
 * Layouts (conv2d_direct.c builds them):
 *   padded   3x3: [H+2][W+2] with a zero border; run = W, in_row = W+2,
 *            tap_off = kh*(W+2) + kw. Needs W % VW == 0.
 *   shifted  3x3: three copies of the padded plane, copy kw shifted left
 *            by kw and cut to W columns: [3][H+2][W]; tap_off = kw*(H+2)*W
 *            + kh*W. Now p + tap_off[t] is right for every lane even
 *            across rows, so run = P: 16-wide vectors on 8x8 images.
 *   flat     1 tap: the input as it is ([P] per channel; 1x1 convs), or
 *            im2col columns [Cin*9][P] (stride 2): tap_off = {0}, run = P. */
typedef struct {
    int P;              /* output pixels per plane                    */
    int run, runs;      /* pixels per run, runs per plane             */
    int in_row;         /* input floats per run                       */
    size_t in_plane;    /* input floats per input channel             */
    int ntaps;          /* 9 or 1                                     */
    int tap_off[9];
    int vw;             /* vector width: 16 or 8                      */
} dconv_view;

static inline int dconv_in_off(const dconv_view *g, int p) { return (p / g->run) * g->in_row + p % g->run; }

/* A pixel vector's place: image n, run, column in the run. */
typedef struct { int n, run, col; } dconv_pos;

/* dweight's operands: dout[n, co] at dout + n * dout_img + co * dout_ch,
 * input channel ci of image n at in + n * in_img + ci * in_ch. */
typedef struct {
    const float *dout, *in;
    size_t dout_img, dout_ch, in_img, in_ch;
} dconv_dw_src;

static inline void dconv_pos_next(dconv_pos *at, const dconv_view *g, int vw)
{
    at->col += vw;
    if (at->col < g->run) return;
    at->col = 0;
    if (++at->run < g->runs) return;
    at->run = 0;
    at->n++;
}

/* 16-wide kernels (AVX-512 only: without it a 16-wide vector is two
 * 8-wide ones and gains nothing) */
#if defined(__AVX512F__)
#define HAVE_V16 1
#define VW 16
#define VCOB 4        /* 4 channels x 4 vectors = 16 of the 32 vector registers */
#define VDWCOB 8      /* dweight: 8 channels x 3 inputs = 24 registers */
#define VNAME(f) f##_v16
#include "conv2d_direct_kernels.h"
#undef VW
#undef VCOB
#undef VDWCOB
#undef VNAME
#define COB_V16 4
#endif

/* 8-wide kernels (rows of 8, 24, 40 ... pixels, and everything with AVX2) */
#define VW 8
#if defined(__AVX512F__)
#define VCOB 4
#define VDWCOB 8
#else
#define VCOB 2        /* AVX2 has 16 registers: 2 x 4 accumulators + 4 inputs + 1 weight */
#define VDWCOB 3      /* 3 x 3 accumulators + 3 inputs + 1 dout */
#endif
#define VNAME(f) f##_v8
#include "conv2d_direct_kernels.h"
#define COB_V8 VCOB
#define DWCOB_V8 VDWCOB
#undef VW
#undef VNAME

static int dweight_block(int vw)
{
#ifdef HAVE_V16
    if (vw == 16) return 8;
#endif
    (void)vw;
    return DWCOB_V8;
}
static int channel_block(int vw)
{
#ifdef HAVE_V16
    if (vw == 16) return COB_V16;
#endif
    (void)vw;
    return COB_V8;
}

/* The widest vector that tiles a plane of P pixels (0: none). */
static int flat_width(int P)
{
#ifdef HAVE_V16
    if (P % 16 == 0) return 16;
#endif
    return P % 8 == 0 ? 8 : 0;
}

/* The 3x3 stride-1 view for W x H: padded when vectors fit the rows,
 * shifted when they only fit the plane. */
static dconv_view view_3x3(int H, int W)
{
    dconv_view g = {.P = H * W, .ntaps = 9};
#ifdef HAVE_V16
    const int row_vw = W % 16 == 0 ? 16 : 0;
#else
    const int row_vw = W % 8 == 0 ? 8 : 0;
#endif
    if (row_vw) {
        g.vw = row_vw;
        g.run = W;
        g.runs = H;
        g.in_row = W + 2;
        g.in_plane = (size_t)(H + 2) * (W + 2);
        for (int t = 0; t < 9; t++) g.tap_off[t] = (t / 3) * (W + 2) + t % 3;
    } else {
        g.vw = flat_width(H * W);
        g.run = g.in_row = H * W;
        g.runs = 1;
        g.in_plane = (size_t)3 * (H + 2) * W;
        for (int t = 0; t < 9; t++) g.tap_off[t] = (t % 3) * (H + 2) * W + (t / 3) * W;
    }
    return g;
}

/* The 1-tap view of planes of Ho x Wo (a 1x1 conv's input, or im2col columns). */
static dconv_view view_flat(int Ho, int Wo)
{
    dconv_view g = {.P = Ho * Wo, .run = Ho * Wo, .runs = 1, .in_row = Ho * Wo, .in_plane = (size_t)Ho * Wo,
                    .ntaps = 1, .vw = flat_width(Ho * Wo)};
    return g;
}

static int is_3x3_s1(int KH, int KW, int stride, int pad) { return KH == 3 && KW == 3 && stride == 1 && pad == 1; }
static int is_3x3_s2(int KH, int KW, int stride, int pad) { return KH == 3 && KW == 3 && stride == 2 && pad == 1; }
static int is_1x1(int KH, int KW, int stride, int pad) { return KH == 1 && KW == 1 && stride == 1 && pad == 0; }

int conv2d_direct_applies(int N, int Cin, int H, int W, int Cout, int KH, int KW, int stride, int pad)
{
    (void)N;
    /* Big channel counts: sgemm on im2col tiles is faster (measured by
     * bench/bench_conv2d: ~90% of sgemm there). */
    if (Cin > 128 || Cout > 128) return 0;
    if (is_3x3_s1(KH, KW, stride, pad)) return view_3x3(H, W).vw != 0;
    if (is_1x1(KH, KW, stride, pad)) return view_flat(H, W).vw != 0;
    if (is_3x3_s2(KH, KW, stride, pad)) {
        /* the columns of one image (Cin * 9 planes of the output size) are
         * the workspace: keep them under 16 MiB (a VAE encoder's 512x512
         * downsample takes im2col tiles instead) */
        const int Ho = (H - 1) / 2 + 1, Wo = (W - 1) / 2 + 1;
        return view_flat(Ho, Wo).vw != 0 && (size_t)Cin * 9 * Ho * Wo <= ((size_t)1 << 22);
    }
    return 0;
}

/* ---- inputs: one channel plane laid out as a view wants it ----------------- */

/* 3x3: the padded [H+2][W+2] plane, or (shifted) its three shifted copies
 * [3][H+2][W]. s is one channel of x, [H, W]. */
static void layout_plane_3x3(float *d, const float *s, int H, int W, int shifted)
{
    if (!shifted) {
        const int Wp = W + 2;
        memset(d, 0, sizeof(float) * Wp);                          /* top border row    */
        for (int h = 0; h < H; h++) {
            float *row = d + (size_t)(h + 1) * Wp;
            row[0] = 0.0f;
            memcpy(row + 1, s + (size_t)h * W, sizeof(float) * W);
            row[W + 1] = 0.0f;
        }
        memset(d + (size_t)(H + 1) * Wp, 0, sizeof(float) * Wp);  /* bottom border row */
        return;
    }
    for (int kw = 0; kw < 3; kw++) {            /* copy kw: d[kw][r][c] = xpad[r][c + kw] */
        float *dk = d + (size_t)kw * (H + 2) * W;
        memset(dk, 0, sizeof(float) * W);
        memset(dk + (size_t)(H + 1) * W, 0, sizeof(float) * W);
        for (int h = 0; h < H; h++) {
            float *row = dk + (size_t)(h + 1) * W;
            const float *sr = s + (size_t)h * W;
            for (int c = 0; c < W; c++) {
                const int xc = c + kw - 1;          /* column in x; -1 and W are the border */
                row[c] = xc >= 0 && xc < W ? sr[xc] : 0.0f;
            }
        }
    }
}

/* Stride 2, 3x3, padding 1: the nine column planes of one channel,
 * d[t * tstride + oh*Wo + ow] = x[2*oh+kh-1, 2*ow+kw-1] (0 outside), t = kh*3+kw. */
static void layout_plane_s2(float *d, size_t tstride, const float *s, int H, int W, int Ho, int Wo)
{
    for (int t = 0; t < 9; t++) {
        float *dt = d + t * tstride;
        const int kh = t / 3, kw = t % 3;
        for (int oh = 0; oh < Ho; oh++) {
            const int h = 2 * oh + kh - 1;
            for (int ow = 0; ow < Wo; ow++) {
                const int w = 2 * ow + kw - 1;
                dt[oh * Wo + ow] = h >= 0 && h < H && w >= 0 && w < W ? s[(size_t)h * W + w] : 0.0f;
            }
        }
    }
}

/* The adjoint of layout_plane_s2: dx[2*oh+kh-1, 2*ow+kw-1] += dcol[t][oh*Wo+ow]. */
static void col2im_plane_s2_add(float *dx, const float *dcol, int H, int W, int Ho, int Wo)
{
    for (int t = 0; t < 9; t++) {
        const float *s = dcol + (size_t)t * Ho * Wo;
        const int kh = t / 3, kw = t % 3;
        for (int oh = 0; oh < Ho; oh++) {
            const int h = 2 * oh + kh - 1;
            if (h < 0 || h >= H) continue;
            for (int ow = 0; ow < Wo; ow++) {
                const int w = 2 * ow + kw - 1;
                if (w >= 0 && w < W) dx[(size_t)h * W + w] += s[oh * Wo + ow];
            }
        }
    }
}

/* What kind of convolution, and the view its kernel runs on. */
typedef enum { DCONV_3X3, DCONV_1X1, DCONV_S2 } dconv_kind;

typedef struct {
    dconv_kind kind;
    int N, Cin, H, W, Cout, Ho, Wo;
    int Cin_k;          /* input planes the kernel sees: Cin, or Cin * 9 columns (stride 2) */
    dconv_view g;
} dconv_plan;

static void plan_conv(dconv_plan *c, int N, int Cin, int H, int W, int Cout, int KH, int KW, int stride, int pad)
{
    c->kind = is_3x3_s1(KH, KW, stride, pad) ? DCONV_3X3 : is_1x1(KH, KW, stride, pad) ? DCONV_1X1 : DCONV_S2;
    c->N = N; c->Cin = Cin; c->H = H; c->W = W; c->Cout = Cout;
    c->Ho = c->kind == DCONV_S2 ? (H - 1) / 2 + 1 : H;
    c->Wo = c->kind == DCONV_S2 ? (W - 1) / 2 + 1 : W;
    c->Cin_k = c->kind == DCONV_S2 ? Cin * 9 : Cin;
    c->g = c->kind == DCONV_3X3 ? view_3x3(H, W) : view_flat(c->Ho, c->Wo);
}

/* Lay out the C channels of one image x_n [C, H, W] for the kernel: plane
 * k of the result starts at d + k * kstride (k = c, or c*9 + t for the
 * stride-2 columns). kstride = in_plane gives one image's planes one after
 * another; dweight uses a larger one to interleave several images. */
static void layout_image(float *d, size_t kstride, const float *x_n, int C, const dconv_plan *c)
{
    for (int ch = 0; ch < C; ch++) {
        const float *s = x_n + (size_t)ch * c->H * c->W;
        if (c->kind == DCONV_3X3) layout_plane_3x3(d + ch * kstride, s, c->H, c->W, c->g.in_row != c->W + 2);
        else layout_plane_s2(d + (size_t)ch * 9 * kstride, kstride, s, c->H, c->W, c->Ho, c->Wo);
    }
}

/* Weights regrouped so that a tile's broadcasts read consecutive floats:
 * output channels in blocks of COB (the last Cout % COB one by one), each
 * block stored [Cin][ntaps][cob] at offset co0 * Cin * ntaps. w is
 * [Cout][Cin][ntaps], or with transpose_flip [Cin][Cout][ntaps] read at
 * tap ntaps-1-t (the dx pass: its "out" channels are the forward's inputs,
 * and a 3x3 kernel turns around). */
static void pack_weights(float *wp, const float *w, int Cout, int Cin, int ntaps, int COB, int transpose_flip)
{
    for (int co0 = 0; co0 < Cout; ) {
        const int cob = Cout - co0 >= COB ? COB : 1;
        float *blk = wp + (size_t)co0 * Cin * ntaps;
        for (int ci = 0; ci < Cin; ci++)
            for (int t = 0; t < ntaps; t++)
                for (int c = 0; c < cob; c++) {
                    const int co = co0 + c;
                    blk[((size_t)ci * ntaps + t) * cob + c] = transpose_flip
                        ? w[((size_t)ci * Cout + co) * ntaps + (ntaps - 1 - t)]
                        : w[((size_t)co * Cin + ci) * ntaps + t];
                }
        co0 += cob;
    }
}

/* Channel blocks: Cout / COB full ones, then Cout % COB single channels.
 * Block b starts at output channel block_start and holds block_size. */
static int block_count(int Cout, int COB) { return Cout / COB + Cout % COB; }
static int block_start(int b, int Cout, int COB) { const int full = Cout / COB; return b < full ? b * COB : full * COB + (b - full); }
static int block_size(int b, int Cout, int COB) { return b < Cout / COB ? COB : 1; }

/* out [N, Cout_k, P] (+)= the kernel over x (C channels per image; x is
 * dout for the dx pass), with the packed weights wp.
 *  - many images (N >= 2 x threads, a training batch): each thread takes
 *    whole images, lays each one out in its own buffer (ws: threads x one
 *    image) and runs every channel block on it while it is in cache;
 *  - few images (Stable Diffusion's VAE: one 512x512 image): the whole
 *    batch is laid out first (ws: N images), then (image, channel block)
 *    pairs are shared out.
 * 1x1: x is read as it is.
 * What is added to the products (any may be NULL): bias [Cout_k], bias_n
 * [N, Cout_k] (one more bias per image), init [N, Cout_k, P] (init = out:
 * add to out; another tensor: a fused residual add). */
typedef struct { const float *bias, *bias_n, *init; } dconv_adds;

static void conv_images(float *out, const float *x, int C, const float *wp, const dconv_adds *adds, int Cout_k,
                        const dconv_plan *c, int threads, float *ws)
{
    const dconv_view *g = &c->g;
    const int N = c->N, Ck = c->kind == DCONV_S2 ? C * 9 : C;
    const int COB = channel_block(g->vw), nb = block_count(Cout_k, COB);
    const size_t img = (size_t)Ck * g->in_plane, x_img = (size_t)C * c->H * c->W;
#define PLANES(n, in_n, b)                                                                           \
    do {                                                                                             \
        const int co0 = block_start(b, Cout_k, COB), cob = block_size(b, Cout_k, COB);              \
        const size_t at = ((size_t)(n) * Cout_k + co0) * g->P;                                       \
        const float *w_b = wp + (size_t)co0 * Ck * g->ntaps, *bias_b = NULL;                         \
        float bsum[8];                                  /* bias + bias_n of this block */            \
        if (adds->bias_n) {                                                                          \
            for (int k = 0; k < cob; k++)                                                            \
                bsum[k] = (adds->bias ? adds->bias[co0 + k] : 0.0f) + adds->bias_n[(size_t)(n) * Cout_k + co0 + k]; \
            bias_b = bsum;                                                                           \
        } else if (adds->bias) bias_b = adds->bias + co0;                                            \
        const float *init_b = adds->init ? adds->init + at : NULL;                                   \
        if (g->vw == 16) PLANE16(out + at, in_n, w_b, bias_b, Ck, g, cob, init_b);                   \
        else plane_forward_v8(out + at, in_n, w_b, bias_b, Ck, g, cob, init_b);                      \
    } while (0)
#ifdef HAVE_V16
#define PLANE16 plane_forward_v16
#else
#define PLANE16 plane_forward_v8
#endif
    if (N >= 2 * threads) {
        #pragma omp parallel num_threads(threads) if (threads > 1)
        {
            float *buf = ws ? ws + (size_t)dl_thread_num() * img : NULL;
            #pragma omp for schedule(static)
            for (int n = 0; n < N; n++) {
                const float *in_n = x + n * x_img;
                if (c->kind != DCONV_1X1) { layout_image(buf, g->in_plane, in_n, C, c); in_n = buf; }
                for (int b = 0; b < nb; b++) PLANES(n, in_n, b);
            }
        }
    } else {
        if (c->kind != DCONV_1X1) {
            #pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
            for (int n = 0; n < N; n++) layout_image(ws + n * img, g->in_plane, x + n * x_img, C, c);
        }
        const float *in = c->kind == DCONV_1X1 ? x : ws;
        #pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (threads > 1 && N * nb > 1)
        for (int n = 0; n < N; n++)
            for (int b = 0; b < nb; b++) PLANES(n, in + n * img, b);
    }
#undef PLANE16
#undef PLANES
}

/* Workspace floats conv_images needs. */
static size_t conv_images_ws(int C, const dconv_plan *c, int threads)
{
    if (c->kind == DCONV_1X1) return 0;
    const size_t img = (size_t)(c->kind == DCONV_S2 ? C * 9 : C) * c->g.in_plane;
    return img * (c->N >= 2 * threads ? (size_t)threads : (size_t)c->N);
}

/* ---- dweight --------------------------------------------------------------- */

/* Pixels per dweight chunk: dout for one channel block (8 channels x 512
 * pixels = 16 KiB) stays in the L1 cache while all input channels go by. */
#define DW_CHUNK_PIXELS 512

/* Images laid out together for dweight: about one chunk's worth. */
static int dweight_group(const dconv_plan *c)
{
    int gi = DW_CHUNK_PIXELS / c->g.P;
    return gi < 1 ? 1 : gi;
}

static int dweight_threads(const dconv_plan *c, int threads) { return threads < c->N ? threads : c->N; }

/* Floats per thread: the running sums, then the laid-out images. */
static size_t dweight_sums_floats(const dconv_plan *c) { return (size_t)c->Cout * c->Cin_k * c->g.ntaps * c->g.vw; }
static size_t dweight_layout_floats(const dconv_plan *c)
{
    return c->kind == DCONV_1X1 ? 0 : (size_t)dweight_group(c) * c->Cin_k * c->g.in_plane;
}

/* dw [Cout][Cin_k][ntaps] += dout (x) x. Each thread takes a range of
 * images, a group of about DW_CHUNK_PIXELS pixels at a time: it lays the
 * group out channel by channel ([Cin_k][images][in_plane], so that a chunk
 * of one channel is one stretch of memory), then for each chunk, channel
 * block and input channel adds the products into its running vector sums
 * (Cout * Cin_k * ntaps vectors). The lanes and the threads' sums are added
 * at the end, in thread order (the same result on every run). ws: 64-byte
 * aligned, threads x (sums + layout) floats. */
static void dweight_images(float *dw, const float *dout, const float *x, const dconv_plan *c, int threads, float *ws)
{
    const dconv_view *g = &c->g;
    const int vw = g->vw, COB = dweight_block(vw), nb = block_count(c->Cout, COB), Cin_k = c->Cin_k;
    const size_t m = (size_t)Cin_k * g->ntaps, n_sums = dweight_sums_floats(c), n_lay = dweight_layout_floats(c);
    const size_t per_thread = (n_sums + n_lay + 15) / 16 * 16;
    const int gi_max = dweight_group(c), chunk = DW_CHUNK_PIXELS / vw > 0 ? DW_CHUNK_PIXELS / vw : 1;
    const size_t x_img = (size_t)c->Cin * c->H * c->W, dout_img = (size_t)c->Cout * g->P;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int tid = dl_thread_num();
        float *sums = ws + (size_t)tid * per_thread, *lay = sums + n_sums;
        memset(sums, 0, sizeof(float) * n_sums);
        const int n0 = (int)((long long)c->N * tid / threads), n1 = (int)((long long)c->N * (tid + 1) / threads);
        for (int n = n0; n < n1; n += gi_max) {
            const int gi = n1 - n < gi_max ? n1 - n : gi_max;
            dconv_dw_src src = {.dout = dout + n * dout_img, .dout_img = dout_img, .dout_ch = g->P};
            if (c->kind == DCONV_1X1) {
                src.in = x + n * x_img; src.in_img = x_img; src.in_ch = g->P;
            } else {
                for (int i = 0; i < gi; i++) layout_image(lay + i * g->in_plane, gi * g->in_plane, x + (n + i) * x_img, c->Cin, c);
                src.in = lay; src.in_img = g->in_plane; src.in_ch = gi * g->in_plane;
            }
            const int total = gi * (g->P / vw);
            dconv_pos at = {0, 0, 0};
            for (int q = 0; q < total; q += chunk) {
                const int count = total - q < chunk ? total - q : chunk;
                for (int b = 0; b < nb; b++) {
                    const int co0 = block_start(b, c->Cout, COB), cob = block_size(b, c->Cout, COB);
                    float *blk = sums + (size_t)co0 * m * vw;
#ifdef HAVE_V16
                    if (vw == 16) block_dweight_v16((vf_v16 *)blk, &src, at, count, co0, Cin_k, g, cob);
                    else
#endif
                    block_dweight_v8((vf_v8 *)blk, &src, at, count, co0, Cin_k, g, cob);
                }
                for (int k = 0; k < count; k++) dconv_pos_next(&at, g, vw);
            }
        }
    }
    for (int t = 0; t < threads; t++)
        for (int b = 0; b < nb; b++) {
            const int co0 = block_start(b, c->Cout, COB), cob = block_size(b, c->Cout, COB);
            const float *blk = ws + (size_t)t * per_thread + (size_t)co0 * m * vw;
#ifdef HAVE_V16
            if (vw == 16) block_dweight_sum_v16(dw + co0 * m, (const vf_v16 *)blk, (int)m, cob);
            else
#endif
            block_dweight_sum_v8(dw + co0 * m, (const vf_v8 *)blk, (int)m, cob);
        }
}

/* ---- entry points ------------------------------------------------------------ */

static int thread_count(void)
{
    int threads = dl_parallel_ok() ? dl_get_threads() : 1;
    return threads < 1 ? 1 : threads;
}

static dl_status no_memory(const char *op, size_t floats)
{
    return dl_fail(DL_ERR_MEMORY, "%s: cannot allocate %zu MiB of workspace", op, (sizeof(float) * floats) >> 20);
}

dl_status conv2d_direct_forward(float *out, const float *x, const float *w, const float *bias,
                                const float *bias_n, const float *res,
                                int N, int Cin, int H, int W, int Cout, int KH, int KW, int stride, int pad)
{
    if (!conv2d_direct_applies(N, Cin, H, W, Cout, KH, KW, stride, pad))
        return dl_fail(DL_ERR_ARG, "conv2d_direct: no direct kernel for this convolution");
    dconv_plan c;
    plan_conv(&c, N, Cin, H, W, Cout, KH, KW, stride, pad);
    const int threads = thread_count();
    const size_t n_ws = conv_images_ws(Cin, &c, threads);
    float *ws = n_ws ? malloc(sizeof(float) * n_ws) : NULL;
    float *wp = malloc(sizeof(float) * (size_t)Cout * Cin * KH * KW);
    if ((n_ws && !ws) || !wp) {
        free(ws); free(wp);
        return no_memory("conv2d", n_ws);
    }
    /* stride 2 is a 1-tap kernel over the Cin * 9 column planes: w [Cout][Cin*9] */
    pack_weights(wp, w, Cout, c.Cin_k, c.g.ntaps, channel_block(c.g.vw), 0);
    const dconv_adds adds = {bias, bias_n, res};
    conv_images(out, x, Cin, wp, &adds, Cout, &c, threads, ws);
    free(ws); free(wp);
    return DL_OK;
}

/* Stride 2's dx, image by image: dcol [Cin*9, P] = w^T dout[n] (a 1x1
 * kernel from Cout to Cin*9 planes), then added back onto the pixels it
 * came from. ws: threads x Cin*9*P floats. */
static void dx_s2(float *dx, const float *dout, const float *wp, const dconv_plan *c, int threads, float *ws,
                  int set_dx)
{
    dconv_plan one = *c;                   /* the 1x1 pass on one image */
    one.kind = DCONV_1X1;
    one.N = 1;
    const size_t col = (size_t)c->Cin_k * c->g.P;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        float *dcol = ws + (size_t)dl_thread_num() * col;
        #pragma omp for schedule(static)
        for (int n = 0; n < c->N; n++) {
            const dconv_adds none = {NULL, NULL, NULL};
            conv_images(dcol, dout + (size_t)n * c->Cout * c->g.P, c->Cout, wp, &none, c->Cin_k, &one, 1, NULL);
            if (set_dx) memset(dx + (size_t)n * c->Cin * c->H * c->W, 0, sizeof(float) * c->Cin * c->H * c->W);
            for (int ch = 0; ch < c->Cin; ch++)
                col2im_plane_s2_add(dx + ((size_t)n * c->Cin + ch) * c->H * c->W, dcol + (size_t)ch * 9 * c->g.P,
                                    c->H, c->W, c->Ho, c->Wo);
        }
    }
}

dl_status conv2d_direct_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                                 int N, int Cin, int H, int W, int Cout, int KH, int KW, int stride, int pad,
                                 int set_dx)
{
    if (!dx && !dw) return DL_OK;
    if (!conv2d_direct_applies(N, Cin, H, W, Cout, KH, KW, stride, pad))
        return dl_fail(DL_ERR_ARG, "conv2d_direct: no direct kernel for this convolution");
    dconv_plan c;
    plan_conv(&c, N, Cin, H, W, Cout, KH, KW, stride, pad);
    const int threads = thread_count(), dw_threads = dweight_threads(&c, threads);
    /* one workspace for the dx pass, then for dweight (64-byte aligned for its vector sums) */
    size_t n_dx = 0;
    if (dx && c.kind == DCONV_3X3) n_dx = conv_images_ws(Cout, &c, threads);
    if (dx && c.kind == DCONV_S2) n_dx = (size_t)threads * c.Cin_k * c.g.P;
    const size_t n_dw = dw ? (size_t)dw_threads * ((dweight_sums_floats(&c) + dweight_layout_floats(&c) + 15) / 16 * 16) : 0;
    const size_t n_ws = ((n_dx > n_dw ? n_dx : n_dw) + 15) / 16 * 16, n_w = (size_t)Cout * Cin * KH * KW;
    float *ws = n_ws ? aligned_alloc(64, sizeof(float) * n_ws) : NULL;
    float *wp = dx ? malloc(sizeof(float) * n_w) : NULL;
    if ((n_ws && !ws) || (dx && !wp)) {                    /* nothing touched yet */
        free(ws); free(wp);
        return no_memory("conv2d_backward", n_ws + n_w);
    }
    if (dx && c.kind == DCONV_3X3) {
        /* dx[n, ci] += sum over co, kh, kw of w[co, ci, 2-kh, 2-kw] * doutpad[n, co, h+kh, w+kw] */
        pack_weights(wp, w, Cin, Cout, 9, channel_block(c.g.vw), 1);
        const dconv_adds adds = {NULL, NULL, set_dx ? NULL : dx};
        conv_images(dx, dout, Cout, wp, &adds, Cin, &c, threads, ws);
    } else if (dx && c.kind == DCONV_1X1) {
        /* dx[n, ci] += sum over co of w[co, ci] * dout[n, co] */
        pack_weights(wp, w, Cin, Cout, 1, channel_block(c.g.vw), 1);
        const dconv_adds adds = {NULL, NULL, set_dx ? NULL : dx};
        conv_images(dx, dout, Cout, wp, &adds, Cin, &c, threads, NULL);
    } else if (dx) {
        /* stride 2: dcol[ci*9+t] = sum over co of w[co, ci*9+t] * dout[co], back onto the pixels */
        pack_weights(wp, w, c.Cin_k, Cout, 1, channel_block(c.g.vw), 1);
        dx_s2(dx, dout, wp, &c, threads, ws, set_dx);
    }
    if (dw) dweight_images(dw, dout, x, &c, dw_threads, ws);
    free(ws); free(wp);
    return DL_OK;
}
