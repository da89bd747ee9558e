/* bench_attention.c - attention at Stable Diffusion's 64x64 latent shapes.
 *
 * 8 heads of 40 (320 channels), 4096 queries (64x64 tokens), batch 2:
 *   self-attention   Lk = 4096
 *   cross-attention  Lk = 77 text tokens
 * FLOPs = 4 * B * H * Lq * Lk * D (two GEMMs of 2*Lq*Lk*D each).
 * The ceiling printed next to it is raw cblas_sgemm on the Q K^T shape,
 * measured in the same run, both for one query chunk (what the kernel
 * runs) and for a whole head (what an unchunked version would run).
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

int main(int argc, char **argv)
{
    bench_init(argc, argv, "bench_attention",
               "Multi-head attention at SD 1.x 64x64-latent shapes (8 heads x 40, 4096 queries, batch 2):\n"
               "self-attention (4096 keys) and cross-attention (77 keys), ms and GFLOP/s against raw sgemm.");
    int Lq = bench_quick() ? 1024 : 4096;
    if (bench_quick()) printf("--quick: %d queries instead of 4096, no reference timing\n", Lq);
    bench_case("self", 2, 8, 40, Lq, Lq, 0);
    bench_case("cross", 2, 8, 40, Lq, 77, !bench_quick());
    return 0;
}
