/* bench_util.c - see bench_util.h */
#include "bench_util.h"
#include "../core/tensor.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int quick;

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int bench_quick(void) { return quick; }

double bench_time(void (*fn)(void *), void *ctx, double min_seconds)
{
    if (quick) min_seconds *= 0.1;
    fn(ctx);                                   /* warm-up: caches, pages, threads */
    double best = 1e30, start = bench_now();
    int calls = 0;
    while (calls < 3 || bench_now() - start < min_seconds) {
        double t0 = bench_now();
        fn(ctx);
        double dt = bench_now() - t0;
        if (dt < best) best = dt;
        calls++;
    }
    return best;
}

typedef struct { int M, N, K; float *A, *B, *C; } sgemm_ctx;
static void run_sgemm(void *p)
{
    sgemm_ctx *c = p;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, c->M, c->N, c->K,
                1.0f, c->A, c->K, c->B, c->N, 0.0f, c->C, c->N);
}

double bench_sgemm_gflops(int M, int N, int K)
{
    sgemm_ctx c = {M, N, K, malloc(sizeof(float) * M * K), malloc(sizeof(float) * K * N),
                   malloc(sizeof(float) * M * N)};
    if (!c.A || !c.B || !c.C) dl_die_msg("use smaller shapes", "bench: out of memory for sgemm %dx%dx%d", M, N, K);
    for (long i = 0; i < (long)M * K; i++) c.A[i] = (float)(i % 7) * 0.1f;
    for (long i = 0; i < (long)K * N; i++) c.B[i] = (float)(i % 5) * 0.1f;
    double t = bench_time(run_sgemm, &c, 0.3);
    free(c.A); free(c.B); free(c.C);
    return 2.0 * M * N * (double)K / t * 1e-9;
}

#define BW_N (32L << 20)   /* 32 Mi floats = 128 MiB per array */
typedef struct { float *a, *b, *c; } bw_ctx;
static void run_copy(void *p)
{
    bw_ctx *x = p;
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < BW_N; i++) x->a[i] = x->b[i];
}
static void run_triad(void *p)
{
    bw_ctx *x = p;
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < BW_N; i++) x->a[i] = x->b[i] + 1.5f * x->c[i];
}
static double bandwidth(void (*fn)(void *), double bytes_per_elem)
{
    bw_ctx x = {malloc(sizeof(float) * BW_N), malloc(sizeof(float) * BW_N), malloc(sizeof(float) * BW_N)};
    if (!x.a || !x.b || !x.c) dl_die_msg("", "bench: out of memory for bandwidth arrays");
    #pragma omp parallel for schedule(static)
    for (long i = 0; i < BW_N; i++) { x.a[i] = 0; x.b[i] = 1; x.c[i] = 2; }
    double t = bench_time(fn, &x, 0.3);
    free(x.a); free(x.b); free(x.c);
    return bytes_per_elem * BW_N / t * 1e-9;
}
double bench_copy_gbs(void)  { return bandwidth(run_copy, 8.0); }
double bench_triad_gbs(void) { return bandwidth(run_triad, 12.0); }

void bench_init(int argc, char **argv, const char *name, const char *help)
{
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: %s [--threads N] [--quick]\n%s\n"
                   "  --threads N  threads for OpenMP and OpenBLAS (default: all cores)\n"
                   "  --quick      10x shorter timings (numbers get noisier)\n", name, help);
            exit(0);
        } else if (!strcmp(argv[i], "--quick")) {
            quick = 1;
        } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            char *end;
            long n = strtol(argv[++i], &end, 10);
            if (*end || n < 1 || n > 1024) dl_die_msg("give a thread count such as --threads 2", "%s: bad --threads value '%s'", name, argv[i]);
            threads = (int)n;
        } else {
            dl_die_msg("see --help", "%s: unknown argument '%s'", name, argv[i]);
        }
    }
    dl_set_threads(threads);
    printf("%s: %d threads\n", name, dl_get_threads());
}
