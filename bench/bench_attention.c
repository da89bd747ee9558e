/* bench_attention.c - attention at Stable Diffusion's 64x64 latent shapes.
 *
 * 8 heads of 40 (320 channels), 4096 queries (64x64 tokens), batch 2:
 *   self-attention   Lk = 4096
 *   cross-attention  Lk = 77 text tokens
 * FLOPs = 4 * B * H * Lq * Lk * D (two GEMMs of 2*Lq*Lk*D each).
 * The ceiling printed next to it is raw cblas_sgemm on the Q K^T shape,
 * measured in the same run, both for one query chunk (what the kernel
 * runs) and for a whole head (what an unchunked version would run).
 *
 * attention_backward: the toy U-Net's self-attention (batch 64, 4 heads of
 * 32, 64 tokens = 8x8) and once the SD 64x64 self-attention (batch 1, 8
 * heads of 40, 4096 tokens). FLOPs = 10 * B * H * Lq * Lk * D: the five
 * GEMMs (recomputed scores, dV, dP, dQ, dK) of 2*Lq*Lk*D each. Printed next
 * to the forward on the same shape (backward / forward time; the FLOP ratio
 * is 2.5).
 */
#include "bench_util.h"
#include "../core/attention.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct { dl_tensor q, k, v, out; int heads; } attn_ctx;

static void run_fast(void *p)
{
    attn_ctx *c = p;
    if (attention_forward(&c->out, &c->q, &c->k, &c->v, c->heads, 0) != DL_OK) dl_die("bench_attention");
}
static void run_ref(void *p)
{
    attn_ctx *c = p;
    if (attention_forward_ref(&c->out, &c->q, &c->k, &c->v, c->heads, 0) != DL_OK) dl_die("bench_attention");
}

static void fill(dl_tensor *t, unsigned seed)
{
    for (int64_t i = 0; i < t->numel; i++) {
        seed = seed * 1664525u + 1013904223u;
        t->data[i] = (float)(seed >> 8) / 16777216.0f - 0.5f;
    }
}

static void bench_case(const char *name, int B, int H, int D, int Lq, int Lk, int with_ref)
{
    attn_ctx c = {.heads = H};
    int HD = H * D;
    if (dl_tensor_alloc(&c.q, 3, DL_SHAPE(B, Lq, HD)) || dl_tensor_alloc(&c.k, 3, DL_SHAPE(B, Lk, HD)) ||
        dl_tensor_alloc(&c.v, 3, DL_SHAPE(B, Lk, HD)) || dl_tensor_alloc(&c.out, 3, DL_SHAPE(B, Lq, HD)))
        dl_die("smaller shapes");
    fill(&c.q, 1); fill(&c.k, 2); fill(&c.v, 3);
    double flops = 4.0 * B * H * (double)Lq * Lk * D;
    int threads = dl_get_threads();
    int chunk = attention_query_chunk(Lq, Lk);
    size_t scratch = attention_scratch_floats(Lq, Lk, threads) * sizeof(float);

    double t = bench_time(run_fast, &c, 1.0);
    double chunk_gemm = bench_sgemm_gflops(chunk, Lk, D);
    double head_gemm = bench_sgemm_gflops(Lq, Lk, D);
    printf("%-6s B %d H %d D %d Lq %d Lk %-5d  %8.2f ms  %6.1f GFLOP/s   sgemm Q K^T [%dx%dx%d] %6.1f GFLOP/s "
           "(%3.0f%%), whole head [%dx%dx%d] %6.1f GFLOP/s\n",
           name, B, H, D, Lq, Lk, t * 1e3, flops / t * 1e-9, chunk, Lk, D, chunk_gemm,
           100.0 * flops / t * 1e-9 / chunk_gemm, Lq, Lk, D, head_gemm);
    printf("       scratch %.2f MiB (%d threads x %d queries x %d keys); one full score matrix per head would be %.1f MiB\n",
           scratch / 1048576.0, threads, chunk, Lk, (double)Lq * Lk * 4 / 1048576.0);
    if (with_ref) {
        double tr = bench_time(run_ref, &c, 0.0);
        printf("       reference (plain loops): %.1f ms, %.2f GFLOP/s -> fast is %.0fx faster\n",
               tr * 1e3, flops / tr * 1e-9, tr / t);
    }
    dl_tensor_free(&c.q); dl_tensor_free(&c.k); dl_tensor_free(&c.v); dl_tensor_free(&c.out);
}

typedef struct { attn_ctx f; dl_tensor dq, dk, dv; } attn_bwd_ctx;

static void run_backward(void *p)
{
    attn_bwd_ctx *c = p;
    if (attention_backward(&c->dq, &c->dk, &c->dv, &c->f.out, &c->f.q, &c->f.k, &c->f.v, c->f.heads, 0) != DL_OK)
        dl_die("bench_attention: attention_backward");
}

/* once = 1: a single timed call each (the SD shape takes seconds) */
static void bench_backward_case(const char *name, int B, int H, int D, int Lq, int Lk, int once)
{
    attn_bwd_ctx c = {.f.heads = H};
    int HD = H * D;
    if (dl_tensor_alloc(&c.f.q, 3, DL_SHAPE(B, Lq, HD)) || dl_tensor_alloc(&c.f.k, 3, DL_SHAPE(B, Lk, HD)) ||
        dl_tensor_alloc(&c.f.v, 3, DL_SHAPE(B, Lk, HD)) || dl_tensor_alloc(&c.f.out, 3, DL_SHAPE(B, Lq, HD)) ||
        dl_tensor_alloc(&c.dq, 3, DL_SHAPE(B, Lq, HD)) || dl_tensor_alloc(&c.dk, 3, DL_SHAPE(B, Lk, HD)) ||
        dl_tensor_alloc(&c.dv, 3, DL_SHAPE(B, Lk, HD)))
        dl_die("smaller shapes");
    fill(&c.f.q, 1); fill(&c.f.k, 2); fill(&c.f.v, 3);
    double tf, tb;
    if (once) {
        double t0 = bench_now();
        run_fast(&c.f);
        tf = bench_now() - t0;
        fill(&c.f.out, 4);                                  // dout
        t0 = bench_now();
        run_backward(&c);
        tb = bench_now() - t0;
    } else {
        tf = bench_time(run_fast, &c.f, 0.5);
        fill(&c.f.out, 4);
        tb = bench_time(run_backward, &c, 0.5);
    }
    double flops = 10.0 * B * H * (double)Lq * Lk * D;
    int threads = dl_get_threads(), chunk = attention_query_chunk(Lq, Lk);
    double chunk_gemm = bench_sgemm_gflops(chunk, Lk, D);
    printf("%-9s B %d H %d D %d Lq %d Lk %-5d  %8.2f ms  %6.1f GFLOP/s  (forward %.2f ms: backward = %.2fx)   "
           "sgemm [%dx%dx%d] %6.1f GFLOP/s (%3.0f%%)\n",
           name, B, H, D, Lq, Lk, tb * 1e3, flops / tb * 1e-9, tf * 1e3, tb / tf, chunk, Lk, D, chunk_gemm,
           100.0 * flops / tb * 1e-9 / chunk_gemm);
    printf("          scratch %.2f MiB (%d threads x 2 blocks of %d queries x %d keys)%s\n",
           attention_backward_scratch_floats(Lq, Lk, threads) * 4.0 / 1048576.0, threads, chunk, Lk,
           once ? ", one timed call" : "");
    dl_tensor *all[] = {&c.f.q, &c.f.k, &c.f.v, &c.f.out, &c.dq, &c.dk, &c.dv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

int main(int argc, char **argv)
{
    bench_init(argc, argv, "bench_attention",
               "Multi-head attention at SD 1.x 64x64-latent shapes (8 heads x 40, 4096 queries, batch 2):\n"
               "self-attention (4096 keys) and cross-attention (77 keys), ms and GFLOP/s against raw sgemm.");
    int Lq = bench_quick() ? 1024 : 4096;
    if (bench_quick()) printf("--quick: %d queries instead of 4096, no reference timing\n", Lq);
    bench_case("self", 2, 8, 40, Lq, Lq, 0);
    bench_case("cross", 2, 8, 40, Lq, 77, !bench_quick());

    printf("\nattention_backward (dq, dk, dv):\n");
    bench_backward_case("toy self", bench_quick() ? 8 : 64, 4, 32, 64, 64, 0);
    bench_backward_case("SD self", 1, 8, 40, Lq, Lq, 1);
    return 0;
}
