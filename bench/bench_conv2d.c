/* bench_conv2d.c - conv2d_forward and linear_forward against raw cblas_sgemm.
 *
 * A convolution done as im2col + sgemm can at best run at the speed of the
 * matrix product inside it: out[Cout, pixels] = weight[Cout, K] x col[K, pixels]
 * with K = Cin*KH*KW. For each Stable-Diffusion-sized 3x3 conv we time
 * conv2d_forward and, in the same run, cblas_sgemm on that GEMM shape with
 * all the batch's pixels as columns (M = Cout, N = batch*Ho*Wo, K), and print
 * the ratio. The goal is >= 80%. Timings alternate between the two for
 * ROUNDS rounds (best of each), as the machine may be busy with other work.
 * --quick: one round of 10x shorter timings.
 *
 * conv2d_backward (dx + dweight + dbias) on the toy U-Net's 3x3 convs,
 * batch 64: two GEMMs of the forward's size,
 *     dweight[Cout, K]   += dout[Cout, pixels] x col[K, pixels]^T
 *     dcol[K, pixels]     = weight[Cout, K]^T x dout[Cout, pixels]   (then col2im)
 * so the ceiling is the time cblas_sgemm needs for these two shapes
 * (measured here, plain NoTrans x NoTrans), and the ratio is that time over
 * ours. The forward on the same shapes is printed next to it. Each toy shape
 * runs twice: through the direct kernel that conv2d picks for small channel
 * counts, and through im2col + sgemm (conv2d_use_direct(0)); a ratio above
 * 100% means the direct kernel beats what sgemm alone would need for the
 * equivalent GEMMs (its GEMMs have only 16-128 rows and run at half speed).
 */
#include "bench_util.h"
#include "../core/conv2d.h"
#include "../core/linear.h"

#include <stdio.h>

#define ROUNDS 3   /* conv / sgemm timing rounds per shape */

typedef struct {
    dl_tensor x, w, b, y;
    int stride, pad, use_ref;
} conv_ctx;

static void run_conv(void *p)
{
    conv_ctx *c = p;
    dl_status s = c->use_ref ? conv2d_forward_ref(&c->y, &c->x, &c->w, &c->b, c->stride, c->pad)
                             : conv2d_forward(&c->y, &c->x, &c->w, &c->b, c->stride, c->pad);
    if (s != DL_OK) dl_die("bench_conv2d: conv2d failed");
}

static void fill(dl_tensor *t, float scale)
{
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = scale * (float)((i * 7919) % 2003 - 1001) / 1001.0f;
}

static void conv_setup(conv_ctx *c, int n, int cin, int h, int w, int cout, int k, int stride, int pad)
{
    int ho = conv2d_out_size(h, k, stride, pad), wo = conv2d_out_size(w, k, stride, pad);
    if (dl_tensor_alloc(&c->x, 4, DL_SHAPE(n, cin, h, w)) != DL_OK ||
        dl_tensor_alloc(&c->w, 4, DL_SHAPE(cout, cin, k, k)) != DL_OK ||
        dl_tensor_alloc(&c->b, 1, DL_SHAPE(cout)) != DL_OK ||
        dl_tensor_alloc(&c->y, 4, DL_SHAPE(n, cout, ho, wo)) != DL_OK)
        dl_die("bench_conv2d: not enough memory for the test tensors");
    fill(&c->x, 1.0f);
    fill(&c->w, 0.05f);
    fill(&c->b, 0.1f);
    c->stride = stride;
    c->pad = pad;
    c->use_ref = 0;
}

static void conv_free(conv_ctx *c)
{
    dl_tensor_free(&c->x); dl_tensor_free(&c->w); dl_tensor_free(&c->b); dl_tensor_free(&c->y);
}

/* One table row: time conv2d (fast or ref), compare with sgemm on the GEMM shape. */
static void conv_row(const char *label, int n, int cin, int h, int w, int cout, int k,
                     int stride, int pad, int use_ref, int with_sgemm)
{
    conv_ctx c;
    conv_setup(&c, n, cin, h, w, cout, k, stride, pad);
    c.use_ref = use_ref;
    const int ho = (int)c.y.shape[2], wo = (int)c.y.shape[3];
    const int M = cout, N = n * ho * wo, K = cin * k * k;
    const double gflop = 2.0 * M * (double)N * K * 1e-9;
    // The machine may be shared: alternate conv and sgemm timings for a few
    // rounds and keep the best of each, so both see the same conditions.
    double t = 1e30, peak = 0;
    const int rounds = use_ref || bench_quick() ? 1 : ROUNDS;
    for (int round = 0; round < rounds; round++) {
        double tr = bench_time(run_conv, &c, use_ref ? 0.2 : 0.4);
        if (tr < t) t = tr;
        if (with_sgemm) {
            double p = bench_sgemm_gflops(M, N, K);
            if (p > peak) peak = p;
        }
    }
    const double gf = gflop / t;
    char shape[64];
    snprintf(shape, sizeof shape, "[%d,%d,%d,%d] %dx%d s%d", n, cin, h, w, k, k, stride);
    printf("%-11s %-24s %8.4f %9.2f %9.1f", label, shape, gflop, t * 1e3, gf);
    if (with_sgemm) {
        printf("   %5d %5d %5d %9.1f %6.0f%%\n", M, N, K, peak, 100.0 * gf / peak);
    } else {
        printf("   %23s\n", "(no sgemm: reference)");
    }
    conv_free(&c);
}

typedef struct { dl_tensor x, w, dout, dx, dw, db; int stride, pad; } conv_bwd_ctx;

static void run_conv_backward(void *p)
{
    conv_bwd_ctx *c = p;
    if (conv2d_backward(&c->dx, &c->dw, &c->db, &c->dout, &c->x, &c->w, c->stride, c->pad) != DL_OK)
        dl_die("bench_conv2d: conv2d_backward failed");
}

/* One row for conv2d_backward: dx + dweight + dbias, against sgemm on the
 * dweight and dcol GEMM shapes. */
static void conv_backward_row(const char *label, int n, int cin, int h, int w, int cout, int k, int stride, int pad)
{
    conv_bwd_ctx c = {.stride = stride, .pad = pad};
    const int ho = conv2d_out_size(h, k, stride, pad), wo = conv2d_out_size(w, k, stride, pad);
    if (dl_tensor_alloc(&c.x, 4, DL_SHAPE(n, cin, h, w)) != DL_OK ||
        dl_tensor_alloc(&c.w, 4, DL_SHAPE(cout, cin, k, k)) != DL_OK ||
        dl_tensor_alloc(&c.dout, 4, DL_SHAPE(n, cout, ho, wo)) != DL_OK ||
        dl_tensor_alloc(&c.dx, 4, DL_SHAPE(n, cin, h, w)) != DL_OK ||
        dl_tensor_alloc(&c.dw, 4, DL_SHAPE(cout, cin, k, k)) != DL_OK ||
        dl_tensor_alloc(&c.db, 1, DL_SHAPE(cout)) != DL_OK)
        dl_die("bench_conv2d: not enough memory for the backward tensors");
    fill(&c.x, 1.0f);
    fill(&c.w, 0.05f);
    fill(&c.dout, 0.01f);
    const int P = n * ho * wo, K = cin * k * k;
    const double gf_one = 2.0 * cout * (double)P * K * 1e-9;     // one of the two GEMMs
    double t = 1e30, peak_dw = 0, peak_dx = 0;
    for (int round = 0; round < (bench_quick() ? 1 : ROUNDS); round++) {
        double tr = bench_time(run_conv_backward, &c, 0.4);
        if (tr < t) t = tr;
        double p1 = bench_sgemm_gflops(cout, K, P), p2 = bench_sgemm_gflops(K, P, cout);
        if (p1 > peak_dw) peak_dw = p1;
        if (p2 > peak_dx) peak_dx = p2;
    }
    const double t_sgemm = gf_one / peak_dw + gf_one / peak_dx;
    char shape[64];
    snprintf(shape, sizeof shape, "[%d,%d,%d,%d] %dx%d s%d", n, cin, h, w, k, k, stride);
    printf("%-11s %-24s %8.4f %9.2f %9.1f   dW %dx%dx%d %.1f, dcol %dx%dx%d %.1f GFLOP/s: sgemm %.2f ms, ratio %3.0f%%\n",
           label, shape, 2 * gf_one, t * 1e3, 2 * gf_one / t, cout, K, P, peak_dw, K, P, cout, peak_dx,
           t_sgemm * 1e3, 100.0 * t_sgemm / t);
    dl_tensor *all[] = {&c.x, &c.w, &c.dout, &c.dx, &c.dw, &c.db};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

typedef struct { dl_tensor x, w, b, y; } linear_ctx;
static void run_linear(void *p)
{
    linear_ctx *c = p;
    if (linear_forward(&c->y, &c->x, &c->w, &c->b) != DL_OK) dl_die("bench_conv2d: linear failed");
}

int main(int argc, char **argv)
{
    bench_init(argc, argv, "bench_conv2d",
               "Times conv2d_forward on Stable-Diffusion U-Net shapes (batch 2, 3x3, stride 1, pad 1)\n"
               "and linear_forward, each against cblas_sgemm on the same GEMM shape measured in this run.");
    printf("ratio = conv2d GFLOP/s / cblas_sgemm GFLOP/s for [M,K] x [K,N], N = batch*Ho*Wo (goal >= 80%%)\n\n");
    printf("%-11s %-24s %8s %9s %9s   %5s %5s %5s %9s %7s\n",
           "op", "x shape, kernel, stride", "GFLOP", "ms", "GFLOP/s", "M", "N", "K", "sgemm/s", "ratio");

    static const int sd[][2] = {{320, 64}, {640, 32}, {1280, 16}, {1280, 8}};   // channels, size
    for (int i = 0; i < 4; i++)
        conv_row("conv2d", 2, sd[i][0], sd[i][1], sd[i][1], sd[i][0], 3, 1, 1, 0, 1);
    conv_row("downsample", 2, 320, 64, 64, 320, 3, 2, 1, 0, 1);           // Downsample2D
    conv_row("conv1x1", 2, 640, 32, 32, 320, 1, 1, 0, 0, 1);              // skip projection
    conv_row("conv2d_ref", 1, 32, 16, 16, 32, 3, 1, 1, 1, 0);             // the slow definition
    conv_row("conv2d", 1, 32, 16, 16, 32, 3, 1, 1, 0, 1);                 // same shape, fast
    printf("(the [1,32,16,16] rows compare fast and reference; a GEMM that small (M=32, K=288)\n"
           " is dominated by the im2col copy and call overheads, so the 80%% goal is for the SD shapes)\n");

    // linear: x [2*4096, 320] -> [2*4096, 1280] (a transformer feed-forward size)
    linear_ctx c;
    if (dl_tensor_alloc(&c.x, 3, DL_SHAPE(2, 4096, 320)) != DL_OK ||
        dl_tensor_alloc(&c.w, 2, DL_SHAPE(1280, 320)) != DL_OK ||
        dl_tensor_alloc(&c.b, 1, DL_SHAPE(1280)) != DL_OK ||
        dl_tensor_alloc(&c.y, 3, DL_SHAPE(2, 4096, 1280)) != DL_OK)
        dl_die("bench_conv2d: not enough memory for the linear tensors");
    fill(&c.x, 1.0f);
    fill(&c.w, 0.05f);
    fill(&c.b, 0.1f);
    const int M = 2 * 4096, N = 1280, K = 320;
    const double gflop = 2.0 * M * (double)N * K * 1e-9;
    double t = 1e30, peak = 0;
    for (int round = 0; round < (bench_quick() ? 1 : ROUNDS); round++) {
        double tr = bench_time(run_linear, &c, 0.4), p = bench_sgemm_gflops(M, N, K);
        if (tr < t) t = tr;
        if (p > peak) peak = p;
    }
    printf("%-11s %-24s %8.4f %9.2f %9.1f   %5d %5d %5d %9.1f %6.0f%%\n", "linear",
           "[2,4096,320] -> 1280", gflop, t * 1e3, gflop / t, M, N, K, peak, 100.0 * gflop / t / peak);
    dl_tensor_free(&c.x); dl_tensor_free(&c.w); dl_tensor_free(&c.b); dl_tensor_free(&c.y);

    // the toy U-Net (batch 64): forward and backward of its 3x3 convs, by the
    // direct kernel (conv2d_direct.h) and by im2col + sgemm, side by side
    printf("\ntoy U-Net 3x3 convs, batch 64: forward, then backward (dx + dweight + dbias; GFLOP = the two GEMMs)\n"
           "direct = the small-channel direct kernel, im2col = the same call with conv2d_use_direct(0)\n");
    static const int toy[][2] = {{16, 32}, {32, 32}, {32, 16}, {64, 16}, {64, 8}, {128, 8}};   // channels, size
    const int nb = bench_quick() ? 8 : 64;
    for (int i = 0; i < (int)(sizeof toy / sizeof toy[0]); i++)
        for (int direct = 1; direct >= 0; direct--) {
            conv2d_use_direct(direct);
            conv_row(direct ? "direct" : "im2col", nb, toy[i][0], toy[i][1], toy[i][1], toy[i][0], 3, 1, 1, 0, 1);
            conv_backward_row(direct ? "direct_bwd" : "im2col_bwd", nb, toy[i][0], toy[i][1], toy[i][1], toy[i][0], 3, 1, 1);
        }
    // 1x1 skip projections and stride-2 Downsample2D convs of the toy U-Net
    static const int toy2[][5] = {{48, 32, 16, 1, 1}, {128, 8, 64, 1, 1}, {16, 32, 16, 3, 2}, {32, 16, 32, 3, 2}};
    for (int i = 0; i < (int)(sizeof toy2 / sizeof toy2[0]); i++) {
        const int *t = toy2[i], pad = t[3] == 3 ? 1 : 0;
        for (int direct = 1; direct >= 0; direct--) {
            conv2d_use_direct(direct);
            conv_row(direct ? "direct" : "im2col", nb, t[0], t[1], t[1], t[2], t[3], t[4], pad, 0, 1);
            conv_backward_row(direct ? "direct_bwd" : "im2col_bwd", nb, t[0], t[1], t[1], t[2], t[3], t[4], pad);
        }
    }
    conv2d_use_direct(1);

    // the toy U-Net's transformer linears (64 images x 64 tokens): the direct
    // kernel (linear_direct.h) and sgemm (linear_use_direct(0)), against
    // raw cblas_sgemm on the same [M,K] x [K,N]
    printf("\ntoy U-Net linears, 4096 tokens: direct = linear_direct.h, sgemm = linear_use_direct(0)\n");
    static const int lin[][2] = {{64, 64}, {64, 512}, {256, 64}};   // in, out
    for (int i = 0; i < 3; i++) {
        const int in = lin[i][0], out = lin[i][1], rows = bench_quick() ? 512 : 4096;
        linear_ctx l;
        if (dl_tensor_alloc(&l.x, 2, DL_SHAPE(rows, in)) != DL_OK || dl_tensor_alloc(&l.w, 2, DL_SHAPE(out, in)) != DL_OK ||
            dl_tensor_alloc(&l.b, 1, DL_SHAPE(out)) != DL_OK || dl_tensor_alloc(&l.y, 2, DL_SHAPE(rows, out)) != DL_OK)
            dl_die("bench_conv2d: not enough memory for the linear tensors");
        fill(&l.x, 1.0f);
        fill(&l.w, 0.05f);
        const double gf = 2.0 * rows * (double)in * out * 1e-9;
        for (int direct = 1; direct >= 0; direct--) {
            linear_use_direct(direct);
            double tl = 1e30, pk = 0;
            for (int round = 0; round < (bench_quick() ? 1 : ROUNDS); round++) {
                double tr = bench_time(run_linear, &l, 0.3), pr = bench_sgemm_gflops(rows, out, in);
                if (tr < tl) tl = tr;
                if (pr > pk) pk = pr;
            }
            char shape[64];
            snprintf(shape, sizeof shape, "[%d,%d] -> %d", rows, in, out);
            printf("%-11s %-24s %8.4f %9.2f %9.1f   %5d %5d %5d %9.1f %6.0f%%\n", direct ? "lin_direct" : "lin_sgemm",
                   shape, gf, tl * 1e3, gf / tl, rows, out, in, pk, 100.0 * gf / tl / pk);
        }
        linear_use_direct(1);
        dl_tensor_free(&l.x); dl_tensor_free(&l.w); dl_tensor_free(&l.b); dl_tensor_free(&l.y);
    }
    return 0;
}
