/* linear_direct.c - see linear_direct.h.
 *
 * GCC vector extensions (16 floats = one AVX-512 register, two AVX2 ones);
 * compiled with fused multiply-add allowed like conv2d_direct.c, so results
 * differ from the reference loops by rounding only (tests/test_linear.c). */
#pragma GCC optimize("fp-contract=fast")

#include "linear_direct.h"

#include <stdlib.h>
#include <string.h>

#include "tensor.h"

#if defined(__AVX512F__)
#define LW 16          /* floats per vector (one AVX-512 register)               */
#define TR 6           /* rows per tile: 6 x 4 accumulators of the 32 registers  */
#define TV 4           /* vectors (of LW columns) per tile                       */
#else
#define LW 8           /* AVX2 (or two SSE registers)                            */
#define TR 4           /* 4 x 2 accumulators + 2 B vectors + 1 broadcast of 16   */
#define TV 2
#endif
#define DW_ROWS 256    /* rows per chunk of the weight gradient   */

typedef float lvf  __attribute__((vector_size(LW * 4)));
typedef float lvfu __attribute__((vector_size(LW * 4), aligned(4)));
/* Call T(R_, V_) (a macro defined where this is used) with compile-time
 * constants equal to R (1..6) and V (1..4): each call is a tile function
 * inlined for its own R and V, whose accumulators then stay in registers. */
#define DISPATCH_RV_V(R_, V) \
    do { if ((V) == 4) T(R_, 4); else if ((V) == 3) T(R_, 3); else if ((V) == 2) T(R_, 2); else T(R_, 1); } while (0)
#define DISPATCH_RV(R, V)                         \
    do {                                          \
        switch (R) {                              \
        case 6: DISPATCH_RV_V(6, V); break;       \
        case 5: DISPATCH_RV_V(5, V); break;       \
        case 4: DISPATCH_RV_V(4, V); break;       \
        case 3: DISPATCH_RV_V(3, V); break;       \
        case 2: DISPATCH_RV_V(2, V); break;       \
        default: DISPATCH_RV_V(1, V); break;      \
        }                                         \
    } while (0)

static inline lvf lload(const float *p) { return *(const lvfu *)p; }
static inline void lstore(float *p, lvf v) { *(lvfu *)p = v; }

int linear_direct_applies(int rows, int in, int outf)
{
    return rows >= 16 && in % LW == 0 && outf % LW == 0 && in <= 512 && outf <= 512 && (in <= 256 || outf <= 256);
}

/* One tile: rows r0 .. r0+R-1, columns n0 .. n0 + V*LW - 1:
 *     C[r, n] = init[r, n] + sum over k of A[r, k] * B[k, n]
 * init: C itself (add), the bias row (bias != NULL, C's old values
 * ignored) or 0 (neither). */
static inline __attribute__((always_inline))
void tile_rows(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int K,
               const float *bias, int add, const int R, const int V)
{
    lvf acc[6][4];                    /* R <= TR <= 6, V <= TV <= 4: only R x V used */
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) {
            if (add) acc[r][v] = lload(C + (size_t)r * ldc + v * LW);
            else if (bias) acc[r][v] = lload(bias + v * LW);
            else acc[r][v] = (lvf){0};
        }
    for (int k = 0; k < K; k++) {
        lvf b[4];
        for (int v = 0; v < V; v++) b[v] = lload(B + (size_t)k * ldb + v * LW);
        for (int r = 0; r < R; r++) {
            const float a = A[(size_t)r * lda + k];
            for (int v = 0; v < V; v++) acc[r][v] += a * b[v];
        }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) lstore(C + (size_t)r * ldc + v * LW, acc[r][v]);
}

/* C [rows, N] (+)= A [rows, K] B [K, N], N a multiple of LW; tiles of TR
 * rows shared out over the threads. */
static void rows_times_matrix(float *C, const float *A, const float *B, const float *bias, int rows, int K, int N,
                              int add)
{
    const int tiles = (rows + TR - 1) / TR;
    #pragma omp parallel for schedule(static) if (dl_parallel_ok() && (size_t)rows * K * N >= 262144)
    for (int t = 0; t < tiles; t++) {
        const int r0 = t * TR, R = rows - r0 < TR ? rows - r0 : TR;
        for (int n0 = 0; n0 < N; n0 += TV * LW) {
            const int V = (N - n0) / LW < TV ? (N - n0) / LW : TV;
            float *c = C + (size_t)r0 * N + n0;
            const float *a = A + (size_t)r0 * K, *b = B + n0, *bi = bias ? bias + n0 : NULL;
#define T(R_, V_) tile_rows(c, N, a, K, b, N, K, bi, add, R_, V_)
            DISPATCH_RV(R, V);
#undef T
        }
    }
}

void linear_direct_forward(float *out, const float *x, const float *w, const float *bias, int rows, int in, int outf)
{
    /* out = x W^T: B = W^T [in][outf], a small transposed copy */
    float *wt = malloc(sizeof(float) * (size_t)in * outf);
    if (!wt) {                             /* fall back on the plain loops: still correct */
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outf; o++) {
                float s = bias ? bias[o] : 0.0f;
                for (int i = 0; i < in; i++) s += x[(size_t)r * in + i] * w[(size_t)o * in + i];
                out[(size_t)r * outf + o] = s;
            }
        return;
    }
    for (int o = 0; o < outf; o++)
        for (int i = 0; i < in; i++) wt[(size_t)i * outf + o] = w[(size_t)o * in + i];
    rows_times_matrix(out, x, wt, bias, rows, in, outf, 0);
    free(wt);
}

void linear_direct_dx(float *dx, const float *dout, const float *w, int rows, int in, int outf, int set)
{
    /* dx [rows, in] (+)= dout [rows, outf] W [outf, in]: B = W as it is */
    rows_times_matrix(dx, dout, w, NULL, rows, outf, in, !set);
}

/* dW tile: outputs o0 .. o0+R-1 x columns i0 .. i0 + V*LW - 1, summed over
 * rows r0 .. r1-1 in registers, then added to dw. */
static inline __attribute__((always_inline))
void tile_dw(float *dw, int in, const float *dout, int outf, const float *x, int r0, int r1, const int R, const int V)
{
    lvf acc[6][4];                    /* R <= TR <= 6, V <= TV <= 4: only R x V used */
    for (int o = 0; o < R; o++) for (int v = 0; v < V; v++) acc[o][v] = (lvf){0};
    for (int r = r0; r < r1; r++) {
        lvf b[4];
        for (int v = 0; v < V; v++) b[v] = lload(x + (size_t)r * in + v * LW);
        for (int o = 0; o < R; o++) {
            const float a = dout[(size_t)r * outf + o];
            for (int v = 0; v < V; v++) acc[o][v] += a * b[v];
        }
    }
    for (int o = 0; o < R; o++)
        for (int v = 0; v < V; v++) lstore(dw + (size_t)o * in + v * LW, lload(dw + (size_t)o * in + v * LW) + acc[o][v]);
}

int linear_direct_dw(float *dw, const float *dout, const float *x, int rows, int in, int outf)
{
    int threads = dl_parallel_ok() && (size_t)rows * in * outf >= 262144 ? dl_get_threads() : 1;
    if (threads < 1) threads = 1;
    if (threads > rows / TR) threads = rows / TR > 0 ? rows / TR : 1;
    const size_t n_w = (size_t)outf * in;
    float *part = calloc((size_t)threads * n_w, sizeof(float));
    if (!part) return 0;
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
        const int tid = dl_thread_num();
        const int r0 = (int)((long long)rows * tid / threads), r1 = (int)((long long)rows * (tid + 1) / threads);
        float *mine = part + (size_t)tid * n_w;
        /* rows in chunks of DW_ROWS, so that the chunk's x and dout stay in
         * cache while every tile of dW passes over them */
        for (int c0 = r0; c0 < r1; c0 += DW_ROWS) {
        const int c1 = r1 - c0 < DW_ROWS ? r1 : c0 + DW_ROWS;
        for (int o0 = 0; o0 < outf; o0 += TR) {
            const int R = outf - o0 < TR ? outf - o0 : TR;
            for (int i0 = 0; i0 < in; i0 += TV * LW) {
                const int V = (in - i0) / LW < TV ? (in - i0) / LW : TV;
                float *d = mine + (size_t)o0 * in + i0;
                const float *a = dout + o0, *b = x + i0;
#define T(R_, V_) tile_dw(d, in, a, outf, b, c0, c1, R_, V_)
                DISPATCH_RV(R, V);
#undef T
            }
        }
        }
    }
    for (size_t i = 0; i < n_w; i++) {
        float s = 0.0f;
        for (int t = 0; t < threads; t++) s += part[(size_t)t * n_w + i];
        dw[i] += s;
    }
    free(part);
    return 1;
}
