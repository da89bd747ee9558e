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

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "tensor.h"

#define NV 4          /* vectors of output pixels per tile */

/* 16-wide kernels for rows of 16, 32, 48 ... pixels (AVX-512 only: without
 * it a 16-wide vector is two 8-wide ones and gains nothing) */
#if defined(__AVX512F__)
#define HAVE_V16 1
#define VW 16
#define VCOB 4        /* 4 channels x 4 vectors = 16 of the 32 vector registers */
#define VDWCOB 8      /* dweight: 8 channels x 3 taps = 24 registers */
#define VNAME(f) f##_v16
#include "conv2d_direct_kernels.h"
#undef VW
#undef VCOB
#undef VDWCOB
#undef VNAME
#define COB_V16 4
#endif

/* 8-wide kernels for rows of 8, 24, 40 ... pixels (and for all with AVX2) */
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

/* The kernel width for rows of W pixels: 16 if it divides W (and AVX-512 is
 * there), else 8, else 0 (no direct kernel). */
static int vector_width(int W)
{
#ifdef HAVE_V16
    if (W % 16 == 0) return 16;
#endif
    return W % 8 == 0 ? 8 : 0;
}
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

int conv2d_direct_applies(int N, int Cin, int H, int W, int Cout, int KH, int KW, int stride, int pad)
{
    (void)N; (void)H;
    if (KH != 3 || KW != 3 || stride != 1 || pad != 1 || !vector_width(W)) return 0;
    /* Big channel counts: sgemm on im2col tiles is faster (measured by
     * bench/bench_conv2d: ~90% of sgemm there). */
    return Cin <= 128 && Cout <= 128;
}

/* xp[n, c] = x[n, c] with a border of one zero pixel: [N, C, H+2, W+2] */
static void pad_planes(float *xp, const float *x, int N, int C, int H, int W)
{
    const int Wp = W + 2;
    const size_t plane = (size_t)(H + 2) * Wp;
    #pragma omp parallel for schedule(static) if (dl_parallel_ok() && (size_t)N * C * plane >= 65536)
    for (long long nc = 0; nc < (long long)N * C; nc++) {
        float *d = xp + nc * plane;
        const float *s = x + nc * (size_t)H * W;
        memset(d, 0, sizeof(float) * Wp);                          /* top border row    */
        for (int h = 0; h < H; h++) {
            float *row = d + (size_t)(h + 1) * Wp;
            row[0] = 0.0f;
            memcpy(row + 1, s + (size_t)h * W, sizeof(float) * W);
            row[W + 1] = 0.0f;
        }
        memset(d + (size_t)(H + 1) * Wp, 0, sizeof(float) * Wp);  /* bottom border row */
    }
}

/* Weights regrouped so that a tile's broadcasts read consecutive floats:
 * output channels in blocks of COB (the last Cout % COB one by one), each
 * block stored [Cin][9 taps][cob] at offset co0 * Cin * 9.
 * transpose_flip: pack w'[o][i][tap] = w[i][o][8 - tap] for the dx pass
 * (then "out" channels are the forward's inputs). */
static void pack_weights(float *wp, const float *w, int Cout, int Cin, int COB, int transpose_flip)
{
    for (int co0 = 0; co0 < Cout; ) {
        const int cob = Cout - co0 >= COB ? COB : 1;
        float *blk = wp + (size_t)co0 * Cin * 9;
        for (int ci = 0; ci < Cin; ci++)
            for (int tap = 0; tap < 9; tap++)
                for (int c = 0; c < cob; c++) {
                    const int co = co0 + c;
                    blk[((size_t)ci * 9 + tap) * cob + c] = transpose_flip
                        ? w[((size_t)ci * Cout + co) * 9 + (8 - tap)]   /* w is [Cin_fwd = Cout here][Cout_fwd = Cin][3][3] */
                        : w[((size_t)co * Cin + ci) * 9 + tap];
                }
        co0 += cob;
    }
}

/* Channel blocks: Cout / COB full ones, then Cout % COB single channels.
 * Block b starts at output channel block_start and holds block_size. */
static int block_count(int Cout, int COB) { return Cout / COB + Cout % COB; }
static int block_start(int b, int Cout, int COB) { const int full = Cout / COB; return b < full ? b * COB : full * COB + (b - full); }
static int block_size(int b, int Cout, int COB) { return b < Cout / COB ? COB : 1; }

/* out [N, Cout, H, W] (+)= correlation of the padded xp [N, Cin, H+2, W+2]
 * with the packed weights; work split over (image, channel block). */
static void conv_padded(float *out, const float *xp, const float *wp, const float *bias,
                        int N, int Cin, int H, int W, int Cout, int accumulate)
{
    const int vw = vector_width(W), COB = channel_block(vw), nb = block_count(Cout, COB);
    const size_t out_plane = (size_t)H * W, xp_plane = (size_t)(H + 2) * (W + 2);
    #pragma omp parallel for collapse(2) schedule(static) if (dl_parallel_ok() && N * nb > 1)
    for (int n = 0; n < N; n++)
        for (int b = 0; b < nb; b++) {
            const int co0 = block_start(b, Cout, COB), cob = block_size(b, Cout, COB);
            float *out_n = out + ((size_t)n * Cout + co0) * out_plane;
            const float *xp_n = xp + (size_t)n * Cin * xp_plane, *wblk = wp + (size_t)co0 * Cin * 9;
            const float *bias_b = bias ? bias + co0 : NULL;
#ifdef HAVE_V16
            if (vw == 16) plane_forward_v16(out_n, xp_n, wblk, bias_b, Cin, H, W, cob, accumulate);
            else
#endif
            plane_forward_v8(out_n, xp_n, wblk, bias_b, Cin, H, W, cob, accumulate);
        }
}

dl_status conv2d_direct_forward(float *out, const float *x, const float *w, const float *bias,
                                int N, int Cin, int H, int W, int Cout)
{
    const size_t xp_n = (size_t)N * Cin * (H + 2) * (W + 2);
    float *xp = malloc(sizeof(float) * xp_n), *wp = malloc(sizeof(float) * (size_t)Cout * Cin * 9);
    if (!xp || !wp) {
        free(xp); free(wp);
        return dl_fail(DL_ERR_MEMORY, "conv2d: cannot allocate %zu MiB for the padded input", (sizeof(float) * xp_n) >> 20);
    }
    pad_planes(xp, x, N, Cin, H, W);
    pack_weights(wp, w, Cout, Cin, channel_block(vector_width(W)), 0);
    conv_padded(out, xp, wp, bias, N, Cin, H, W, Cout, 0);
    free(xp); free(wp);
    return DL_OK;
}

/* ------------------------------------------------------------------ */
dl_status conv2d_direct_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                                 int N, int Cin, int H, int W, int Cout)
{
    if (!dx && !dw) return DL_OK;
    int threads = dl_parallel_ok() ? dl_get_threads() : 1;
    if (threads < 1) threads = 1;
    const size_t plane_p = (size_t)(H + 2) * (W + 2);
    const int Cmax = Cin > Cout ? Cin : Cout;
    const size_t n_pad = (size_t)N * Cmax * plane_p, n_w = (size_t)Cout * Cin * 9;
    float *pad = malloc(sizeof(float) * n_pad);
    float *wp = dx ? malloc(sizeof(float) * n_w) : NULL;
    float *part = dw ? calloc((size_t)threads * n_w, sizeof(float)) : NULL;
    if (!pad || (dx && !wp) || (dw && !part)) {
        free(pad); free(wp); free(part);
        return dl_fail(DL_ERR_MEMORY, "conv2d_backward: cannot allocate %zu MiB of workspace", (sizeof(float) * n_pad) >> 20);
    }
    if (dx) {
        /* dx[n, ci] += sum over co, kh, kw of w[co, ci, 2-kh, 2-kw] * doutpad[n, co, h+kh, w+kw] */
        pad_planes(pad, dout, N, Cout, H, W);
        pack_weights(wp, w, Cin, Cout, channel_block(vector_width(W)), 1);
        conv_padded(dx, pad, wp, NULL, N, Cout, H, W, Cin, 1);
    }
    if (dw) {
        pad_planes(pad, x, N, Cin, H, W);
        const int vw = vector_width(W), COB = dweight_block(vw), nb = block_count(Cout, COB);
        int chunk = 4096 / (H * W);
        if (chunk < 1) chunk = 1;
        if (chunk > N) chunk = N;
        const int nchunks = (N + chunk - 1) / chunk;
        #pragma omp parallel num_threads(threads) if (threads > 1)
        {
#ifdef _OPENMP
            const int tid = omp_get_thread_num();
#else
            const int tid = 0;
#endif
            float *mine = part + (size_t)tid * n_w;       /* this thread's dweight partial [Cout][Cin][9] */
            /* chunks of images (about 4096 pixels each, so 64 images of 8x8
             * and 4 of 32x32) x channel blocks, shared out over the threads */
            #pragma omp for collapse(2) schedule(static)
            for (int ch = 0; ch < nchunks; ch++)
                for (int b = 0; b < nb; b++) {
                    const int co0 = block_start(b, Cout, COB), cob = block_size(b, Cout, COB);
                    const int n0 = ch * chunk, nimg = N - n0 < chunk ? N - n0 : chunk;
                    float *dw_blk = mine + (size_t)co0 * Cin * 9;
#ifdef HAVE_V16
                    if (vw == 16) block_dweight_v16(dw_blk, dout, pad, n0, nimg, Cout, co0, Cin, H, W, cob);
                    else
#endif
                    block_dweight_v8(dw_blk, dout, pad, n0, nimg, Cout, co0, Cin, H, W, cob);
                }
        }
        /* dweight += the partials, in thread order (same result on every run) */
        for (size_t i = 0; i < n_w; i++) {
            float s = 0.0f;
            for (int t = 0; t < threads; t++) s += part[(size_t)t * n_w + i];
            dw[i] += s;
        }
    }
    free(pad); free(wp); free(part);
    return DL_OK;
}
