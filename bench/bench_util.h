/* bench_util.h - timing and this machine's own ceilings, measured in the
 * same run as the kernels they judge.
 *
 *   double t = bench_time(fn, ctx, 0.5);   // best seconds per call over ~0.5 s
 *   double peak = bench_sgemm_gflops(M, N, K);   // raw cblas_sgemm, same shape
 *   double bw   = bench_triad_gbs();       // STREAM-like triad a = b + s*c
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

double bench_now(void);
/* Call fn(ctx) repeatedly for at least min_seconds (and at least 3 times),
 * return the best (lowest) seconds per call. One warm-up call first. */
double bench_time(void (*fn)(void *), void *ctx, double min_seconds);
/* GFLOP/s of cblas_sgemm (row-major, no transpose) C[M,N] = A[M,K] B[K,N]. */
double bench_sgemm_gflops(int M, int N, int K);
/* Memory bandwidth in GB/s on arrays far larger than the caches:
 * copy counts 2 x 4 bytes per element, triad 3 x 4 bytes (no write-allocate). */
double bench_copy_gbs(void);
double bench_triad_gbs(void);
/* Parse "--threads N" / "--quick" style flags shared by all benches. */
void bench_init(int argc, char **argv, const char *name, const char *help);
int  bench_quick(void);   /* 1 if --quick: shorter timings (used by tests) */

#endif
