/* elementwise.c - see elementwise.h */
#include "elementwise.h"

#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many elements a parallel region costs more than it saves. */
#define PARALLEL_MIN 32768

/* 1 / sqrt(2), inside erf-GELU */
#define INV_SQRT2 0.70710678118654752f
/* sqrt(2 / pi), the scale inside tanh-GELU */
#define GELU_TANH_BETA 0.7978845608028654f
#define GELU_TANH_KAPPA 0.044715f

/* `out` must exist and have exactly x's shape. */
static dl_status check_unary(const char *op, const dl_tensor *out, const dl_tensor *x)
{
    if (!x || !x->data) return dl_fail(DL_ERR_ARG, "%s: x is missing (NULL tensor)", op);
    return dl_check_shape(out, op, "out", x->ndim, x->shape);
}

/* ------------------------------------------------------------------ */
/* Activations, reference: one libm call per element. */

dl_status silu_forward_ref(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(check_unary("silu", out, x));
    for (int64_t i = 0; i < x->numel; i++) {
        float v = x->data[i];
        out->data[i] = v / (1.0f + expf(-v));
    }
    return DL_OK;
}

dl_status gelu_erf_forward_ref(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(check_unary("gelu_erf", out, x));
    for (int64_t i = 0; i < x->numel; i++) {
        float v = x->data[i];
        out->data[i] = v * 0.5f * (1.0f + erff(v * INV_SQRT2));
    }
    return DL_OK;
}


dl_status gelu_tanh_forward_ref(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(check_unary("gelu_tanh", out, x));
    for (int64_t i = 0; i < x->numel; i++) {
        float v = x->data[i];
        float inner = GELU_TANH_BETA * (v + GELU_TANH_KAPPA * v * v * v);
        out->data[i] = 0.5f * v * (1.0f + tanhf(inner));
    }
    return DL_OK;
}

dl_status quick_gelu_forward_ref(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(check_unary("quick_gelu", out, x));
    for (int64_t i = 0; i < x->numel; i++) {
        float v = x->data[i];
        out->data[i] = v * (1.0f / (1.0f + expf(-1.702f * v)));
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Activations, fast: the same formulas with dl_expf_fast / dl_erff_fast,
 * so each loop becomes SIMD code, split over the OpenMP threads. */

dl_status silu_forward(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(check_unary("silu", out, x));
    const float *in = x->data;
    float *o = out->data;
    int64_t n = x->numel;
    #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++)
        o[i] = in[i] / (1.0f + dl_expf_fast(-in[i]));
    return DL_OK;
}

dl_status gelu_erf_forward(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(check_unary("gelu_erf", out, x));
    const float *in = x->data;
    float *o = out->data;
    int64_t n = x->numel;
    #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++)
        o[i] = in[i] * 0.5f * (1.0f + dl_erff_fast(in[i] * INV_SQRT2));
    return DL_OK;
}

dl_status gelu_tanh_forward(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(check_unary("gelu_tanh", out, x));
    const float *in = x->data;
    float *o = out->data;
    int64_t n = x->numel;
    #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        float v = in[i];
        float u = GELU_TANH_BETA * (v + GELU_TANH_KAPPA * v * v * v);
        /* tanh(u) = 1 - 2 / (e^(2u) + 1): saturates cleanly to +-1. */
        float th = 1.0f - 2.0f / (dl_expf_fast(2.0f * u) + 1.0f);
        o[i] = 0.5f * v * (1.0f + th);
    }
    return DL_OK;
}

dl_status quick_gelu_forward(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(check_unary("quick_gelu", out, x));
    const float *in = x->data;
    float *o = out->data;
    int64_t n = x->numel;
    #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++)
        o[i] = in[i] * (1.0f / (1.0f + dl_expf_fast(-1.702f * in[i])));
    return DL_OK;
}

dl_status scale_forward(dl_tensor *out, const dl_tensor *x, float s)
{
    DL_TRY(check_unary("scale", out, x));
    for (int64_t i = 0; i < x->numel; i++) out->data[i] = s * x->data[i];
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Softmax over the last dimension. */

dl_status softmax_forward_ref(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(check_unary("softmax", out, x));
    int64_t n = x->shape[x->ndim - 1];          /* row length */
    int64_t rows = x->numel / n;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x->data + r * n;
        float *yr = out->data + r * n;
        /* Subtracting the max keeps every exp() <= 1: no overflow. */
        float mx = xr[0];
        for (int64_t j = 1; j < n; j++) if (xr[j] > mx) mx = xr[j];
        float sum = 0.0f;
        for (int64_t j = 0; j < n; j++) { yr[j] = expf(xr[j] - mx); sum += yr[j]; }
        for (int64_t j = 0; j < n; j++) yr[j] /= sum;
    }
    return DL_OK;
}

void softmax_row_inplace(float *row, int64_t n)
{
    float mx = row[0];
    #pragma omp simd reduction(max:mx)
    for (int64_t j = 0; j < n; j++) mx = row[j] > mx ? row[j] : mx;
    float sum = 0.0f;
    #pragma omp simd reduction(+:sum)
    for (int64_t j = 0; j < n; j++) { row[j] = dl_expf_fast(row[j] - mx); sum += row[j]; }
    float inv = 1.0f / sum;
    #pragma omp simd
    for (int64_t j = 0; j < n; j++) row[j] *= inv;
}

dl_status softmax_forward(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(check_unary("softmax", out, x));
    int64_t n = x->shape[x->ndim - 1];
    int64_t rows = x->numel / n;
    #pragma omp parallel for schedule(static) if (x->numel >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        if (out->data != x->data) memcpy(out->data + r * n, x->data + r * n, (size_t)n * sizeof(float));
        softmax_row_inplace(out->data + r * n, n);
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Broadcast add / mul.
 *
 * Both shapes are padded on the left with 1s to 4 dims. b's stride in a
 * dimension is 0 where b has size 1 (the same b value is reused). */

typedef struct {
    int64_t shape[4];     /* a's shape, padded to 4 dims */
    int64_t bstride[4];   /* b's element strides, 0 in broadcast dims */
} bcast;

static dl_status make_bcast(bcast *bc, const char *op, const dl_tensor *out,
                            const dl_tensor *a, const dl_tensor *b)
{
    if (!a || !a->data) return dl_fail(DL_ERR_ARG, "%s: a is missing (NULL tensor)", op);
    if (!b || !b->data) return dl_fail(DL_ERR_ARG, "%s: b is missing (NULL tensor)", op);
    DL_TRY(dl_check_shape(out, op, "out", a->ndim, a->shape));
    char sa[64], sb[64];
    if (b->ndim > a->ndim)
        return dl_fail(DL_ERR_SHAPE, "%s: b %s has more dims than a %s; b is broadcast onto a",
                       op, dl_shape_str(b, sb, sizeof sb), dl_shape_str(a, sa, sizeof sa));
    int64_t bshape[4];
    for (int d = 0; d < 4; d++) {
        int ia = d - (4 - a->ndim), ib = d - (4 - b->ndim);
        bc->shape[d] = ia >= 0 ? a->shape[ia] : 1;
        bshape[d] = ib >= 0 ? b->shape[ib] : 1;
        if (bshape[d] != 1 && bshape[d] != bc->shape[d])
            return dl_fail(DL_ERR_SHAPE, "%s: b %s cannot be broadcast onto a %s "
                           "(aligned from the right, each b dim must be 1 or equal to a's)",
                           op, dl_shape_str(b, sb, sizeof sb), dl_shape_str(a, sa, sizeof sa));
    }
    int64_t stride = 1;
    for (int d = 3; d >= 0; d--) {
        bc->bstride[d] = bshape[d] == 1 ? 0 : stride;
        stride *= bshape[d];
    }
    return DL_OK;
}

enum { OP_ADD, OP_MUL };

static dl_status binary_ref(int op, const char *name, dl_tensor *out, const dl_tensor *a, const dl_tensor *b)
{
    bcast bc;
    DL_TRY(make_bcast(&bc, name, out, a, b));
    const int64_t *S = bc.shape, *bs = bc.bstride;
    for (int64_t i0 = 0; i0 < S[0]; i0++)
        for (int64_t i1 = 0; i1 < S[1]; i1++)
            for (int64_t i2 = 0; i2 < S[2]; i2++)
                for (int64_t i3 = 0; i3 < S[3]; i3++) {
                    int64_t ia = ((i0 * S[1] + i1) * S[2] + i2) * S[3] + i3;
                    float vb = b->data[i0 * bs[0] + i1 * bs[1] + i2 * bs[2] + i3 * bs[3]];
                    out->data[ia] = op == OP_ADD ? a->data[ia] + vb : a->data[ia] * vb;
                }
    return DL_OK;
}

dl_status add_forward_ref(dl_tensor *out, const dl_tensor *a, const dl_tensor *b)
{
    return binary_ref(OP_ADD, "add", out, a, b);
}
dl_status mul_forward_ref(dl_tensor *out, const dl_tensor *a, const dl_tensor *b)
{
    return binary_ref(OP_MUL, "mul", out, a, b);
}

/* Fast version: split a's dims into outer dims and an inner contiguous run
 * in which b is either the same run (b_scalar = 0, e.g. a bias [C]) or one
 * repeated value (b_scalar = 1, e.g. [N, C, 1, 1]). Then every (outer
 * index, block of the run) is one simple vectorized loop. */
#define RUN_BLOCK 16384

static dl_status binary_fast(int op, const char *name, dl_tensor *out, const dl_tensor *a, const dl_tensor *b)
{
    bcast bc;
    DL_TRY(make_bcast(&bc, name, out, a, b));
    /* Grow the inner run from the right while b keeps the same kind.
     * Dims where a has size 1 fit either kind. */
    int kind = -1;                  /* -1 undecided, 0 b follows a, 1 b constant */
    int first_inner = 4;
    int64_t inner = 1;
    for (int d = 3; d >= 0; d--) {
        if (bc.shape[d] == 1) { first_inner = d; continue; }
        int k = bc.bstride[d] == 0 ? 1 : 0;
        if (kind == -1) kind = k;
        if (k != kind) break;
        inner *= bc.shape[d];
        first_inner = d;
    }
    int b_scalar = kind == 1;
    int64_t outer = a->numel / inner;
    int64_t nblk = (inner + RUN_BLOCK - 1) / RUN_BLOCK;

    #pragma omp parallel for schedule(static) if (a->numel >= PARALLEL_MIN)
    for (int64_t task = 0; task < outer * nblk; task++) {
        int64_t o = task / nblk, j0 = (task % nblk) * RUN_BLOCK;
        int64_t j1 = j0 + RUN_BLOCK < inner ? j0 + RUN_BLOCK : inner;
        /* b's offset for outer index o: unravel o over dims [0, first_inner). */
        int64_t boff = 0, rest = o;
        for (int d = first_inner - 1; d >= 0; d--) {
            boff += (rest % bc.shape[d]) * bc.bstride[d];
            rest /= bc.shape[d];
        }
        const float *pa = a->data + o * inner;
        const float *pb = b->data + boff;
        float *po = out->data + o * inner;
        if (b_scalar) {
            float vb = pb[0];
            if (op == OP_ADD) { for (int64_t j = j0; j < j1; j++) po[j] = pa[j] + vb; }
            else              { for (int64_t j = j0; j < j1; j++) po[j] = pa[j] * vb; }
        } else {
            if (op == OP_ADD) { for (int64_t j = j0; j < j1; j++) po[j] = pa[j] + pb[j]; }
            else              { for (int64_t j = j0; j < j1; j++) po[j] = pa[j] * pb[j]; }
        }
    }
    return DL_OK;
}

dl_status add_forward(dl_tensor *out, const dl_tensor *a, const dl_tensor *b)
{
    return binary_fast(OP_ADD, "add", out, a, b);
}
dl_status mul_forward(dl_tensor *out, const dl_tensor *a, const dl_tensor *b)
{
    return binary_fast(OP_MUL, "mul", out, a, b);
}

/* ================================================================== */
/* Backward                                                            */
/* ================================================================== */

/* 1 / sqrt(2 pi), the normal density's constant */
#define INV_SQRT_2PI 0.39894228040143268f

/* dx (if not NULL) and dout have x's shape; dx overlaps neither input. */
static dl_status check_unary_backward(const char *op, const dl_tensor *dx, const dl_tensor *dout,
                                      const dl_tensor *x, const char *xname)
{
    if (!x || !x->data) return dl_fail(DL_ERR_ARG, "%s: %s is missing (NULL tensor)", op, xname);
    DL_TRY(dl_check_shape(dout, op, "dout", x->ndim, x->shape));
    if (dx) {
        DL_TRY(dl_check_shape(dx, op, "dx", x->ndim, x->shape));
        if (dl_tensors_overlap(dx, dout) || dl_tensors_overlap(dx, x))
            return dl_fail(DL_ERR_ARG, "%s: dx overlaps an input; give it its own memory", op);
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Activations: the derivative of f(x), times dout. */

dl_status silu_backward_ref(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *x)
{
    DL_TRY(check_unary_backward("silu_backward", dx, dout, x, "x"));
    if (!dx) return DL_OK;
    for (int64_t i = 0; i < x->numel; i++) {
        float v = x->data[i];
        float s = 1.0f / (1.0f + expf(-v));            /* sigmoid */
        /* d/dx [x s(x)] = s + x s (1 - s) */
        dx->data[i] += dout->data[i] * (s + v * s * (1.0f - s));
    }
    return DL_OK;
}

dl_status silu_backward(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *x)
{
    DL_TRY(check_unary_backward("silu_backward", dx, dout, x, "x"));
    if (!dx) return DL_OK;
    const float *in = x->data, *g = dout->data;
    float *d = dx->data;
    int64_t n = x->numel;
    #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + dl_expf_fast(-in[i]));
        d[i] += g[i] * (s * (1.0f + in[i] * (1.0f - s)));
    }
    return DL_OK;
}

dl_status gelu_erf_backward_ref(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *x)
{
    DL_TRY(check_unary_backward("gelu_erf_backward", dx, dout, x, "x"));
    if (!dx) return DL_OK;
    for (int64_t i = 0; i < x->numel; i++) {
        float v = x->data[i];
        float cdf = 0.5f * (1.0f + erff(v * INV_SQRT2));        /* Phi(x) */
        float pdf = INV_SQRT_2PI * expf(-0.5f * v * v);          /* phi(x) = Phi'(x) */
        /* d/dx [x Phi(x)] = Phi(x) + x phi(x) */
        dx->data[i] += dout->data[i] * (cdf + v * pdf);
    }
    return DL_OK;
}

dl_status gelu_erf_backward(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *x)
{
    DL_TRY(check_unary_backward("gelu_erf_backward", dx, dout, x, "x"));
    if (!dx) return DL_OK;
    const float *in = x->data, *g = dout->data;
    float *d = dx->data;
    int64_t n = x->numel;
    #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        float v = in[i];
        float cdf = 0.5f * (1.0f + dl_erff_fast(v * INV_SQRT2));
        float pdf = INV_SQRT_2PI * dl_expf_fast(-0.5f * v * v);
        d[i] += g[i] * (cdf + v * pdf);
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Softmax: with y = softmax(x) on a row, dy_j/dx_i = y_j (delta_ij - y_i), so
 *     dx_i = sum_j dout_j y_j (delta_ij - y_i) = y_i (dout_i - sum_j dout_j y_j). */

dl_status softmax_backward_ref(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *y)
{
    DL_TRY(check_unary_backward("softmax_backward", dx, dout, y, "y"));
    if (!dx) return DL_OK;
    int64_t n = y->shape[y->ndim - 1];
    int64_t rows = y->numel / n;
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y->data + r * n, *gr = dout->data + r * n;
        float dot = 0.0f;                       /* sum_j dout_j y_j */
        for (int64_t j = 0; j < n; j++) dot += gr[j] * yr[j];
        for (int64_t j = 0; j < n; j++) dx->data[r * n + j] += yr[j] * (gr[j] - dot);
    }
    return DL_OK;
}

dl_status softmax_backward(dl_tensor *dx, const dl_tensor *dout, const dl_tensor *y)
{
    DL_TRY(check_unary_backward("softmax_backward", dx, dout, y, "y"));
    if (!dx) return DL_OK;
    int64_t n = y->shape[y->ndim - 1];
    int64_t rows = y->numel / n;
    #pragma omp parallel for schedule(static) if (y->numel >= PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
        const float *yr = y->data + r * n, *gr = dout->data + r * n;
        float *dr = dx->data + r * n;
        float dot = 0.0f;
        #pragma omp simd reduction(+:dot)
        for (int64_t j = 0; j < n; j++) dot += gr[j] * yr[j];
        #pragma omp simd
        for (int64_t j = 0; j < n; j++) dr[j] += yr[j] * (gr[j] - dot);
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* add / mul: broadcasting copies one b value to many places of a, so its
 * gradient is the SUM of dout over those places. */

/* Checks for both: dout has a's shape (`ashape`, which is dout itself for
 * add), b's shape (given by `bshape`, b or db) broadcasts onto it; da has a's
 * shape, db b's; gradients overlap no input and not each other. */
static dl_status check_binary_backward(const char *op, bcast *bc, const dl_tensor *da, const dl_tensor *db,
                                       const dl_tensor *dout, const dl_tensor *ashape, const dl_tensor *bshape,
                                       const dl_tensor *a, const dl_tensor *b)
{
    DL_TRY(dl_check_shape(dout, op, "dout", ashape->ndim, ashape->shape));
    if (da) DL_TRY(dl_check_shape(da, op, "da", ashape->ndim, ashape->shape));
    if (bshape) {
        DL_TRY(make_bcast(bc, op, dout, ashape, bshape));
        if (db && b) DL_TRY(dl_check_shape(db, op, "db", b->ndim, b->shape));
    }
    const dl_tensor *grads[2] = {da, db}, *ins[3] = {dout, a, b};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 3; j++)
            if (dl_tensors_overlap(grads[i], ins[j]))
                return dl_fail(DL_ERR_ARG, "%s: a gradient output overlaps an input; give it its own memory", op);
    if (dl_tensors_overlap(da, db)) return dl_fail(DL_ERR_ARG, "%s: da and db share memory", op);
    return DL_OK;
}

/* Reference: a's 4 loops; dout[i] goes to da[i] and to b's element bi. */
static void binary_backward_ref(float *da, float *db, const float *dout, const float *a, const float *b,
                                const bcast *bc)
{
    const int64_t *S = bc->shape, *bs = bc->bstride;
    for (int64_t i0 = 0; i0 < S[0]; i0++)
        for (int64_t i1 = 0; i1 < S[1]; i1++)
            for (int64_t i2 = 0; i2 < S[2]; i2++)
                for (int64_t i3 = 0; i3 < S[3]; i3++) {
                    int64_t ia = ((i0 * S[1] + i1) * S[2] + i2) * S[3] + i3;
                    int64_t ib = i0 * bs[0] + i1 * bs[1] + i2 * bs[2] + i3 * bs[3];
                    /* add: out = a + b -> both factors 1;  mul: out = a * b */
                    if (da) da[ia] += b ? dout[ia] * b[ib] : dout[ia];
                    if (db) db[ib] += a ? dout[ia] * a[ia] : dout[ia];
                }
}

dl_status add_backward_ref(dl_tensor *da, dl_tensor *db, const dl_tensor *dout)
{
    bcast bc;
    if (!dout || !dout->data) return dl_fail(DL_ERR_ARG, "add_backward: dout is missing (NULL tensor)");
    DL_TRY(check_binary_backward("add_backward", &bc, da, db, dout, dout, db, NULL, NULL));
    if (!db) {                                   /* no b shape: the plain da loop */
        for (int64_t i = 0; da && i < dout->numel; i++) da->data[i] += dout->data[i];
        return DL_OK;
    }
    binary_backward_ref(da ? da->data : NULL, db->data, dout->data, NULL, NULL, &bc);
    return DL_OK;
}

dl_status mul_backward_ref(dl_tensor *da, dl_tensor *db, const dl_tensor *dout, const dl_tensor *a,
                           const dl_tensor *b)
{
    bcast bc;
    if (!a || !a->data) return dl_fail(DL_ERR_ARG, "mul_backward: a is missing (NULL tensor)");
    if (!b || !b->data) return dl_fail(DL_ERR_ARG, "mul_backward: b is missing (NULL tensor)");
    DL_TRY(check_binary_backward("mul_backward", &bc, da, db, dout, a, b, a, b));
    binary_backward_ref(da ? da->data : NULL, db ? db->data : NULL, dout->data, a->data, b->data, &bc);
    return DL_OK;
}

/* Fast: the forward's split of a into `outer` runs of `inner` contiguous
 * values, in which b is either the same run (b_scalar = 0) or one repeated
 * value (b_scalar = 1); boff(o) is b's offset for run o. */
typedef struct { int64_t inner, outer; int first_inner, b_scalar; } bcast_runs;

static bcast_runs split_runs(const bcast *bc, int64_t numel)
{
    bcast_runs s = {1, 1, 4, 0};
    int kind = -1;                  /* -1 undecided, 0 b follows a, 1 b constant */
    for (int d = 3; d >= 0; d--) {
        if (bc->shape[d] == 1) { s.first_inner = d; continue; }
        int k = bc->bstride[d] == 0 ? 1 : 0;
        if (kind == -1) kind = k;
        if (k != kind) break;
        s.inner *= bc->shape[d];
        s.first_inner = d;
    }
    s.b_scalar = kind == 1;
    s.outer = numel / s.inner;
    return s;
}

static int64_t run_boff(const bcast *bc, const bcast_runs *s, int64_t o)
{
    int64_t boff = 0, rest = o;
    for (int d = s->first_inner - 1; d >= 0; d--) {
        boff += (rest % bc->shape[d]) * bc->bstride[d];
        rest /= bc->shape[d];
    }
    return boff;
}

/* da += dout * b (b broadcast; b NULL = 1). Runs are independent; long
 * runs are cut into RUN_BLOCK pieces so that one long run still uses all
 * the threads. */
static void da_fast(float *da, const float *dout, const float *b, const bcast *bc, const bcast_runs *s)
{
    const int64_t inner = s->inner, nblk = (inner + RUN_BLOCK - 1) / RUN_BLOCK;
    #pragma omp parallel for schedule(static) if (s->outer * inner >= PARALLEL_MIN)
    for (int64_t task = 0; task < s->outer * nblk; task++) {
        const int64_t o = task / nblk, j0 = (task % nblk) * RUN_BLOCK;
        const int64_t j1 = j0 + RUN_BLOCK < inner ? j0 + RUN_BLOCK : inner;
        const float *g = dout + o * inner;
        float *d = da + o * inner;
        if (!b) {
            for (int64_t j = j0; j < j1; j++) d[j] += g[j];
        } else if (s->b_scalar) {
            const float vb = b[run_boff(bc, s, o)];
            for (int64_t j = j0; j < j1; j++) d[j] += g[j] * vb;
        } else {
            const float *pb = b + run_boff(bc, s, o);
            for (int64_t j = j0; j < j1; j++) d[j] += g[j] * pb[j];
        }
    }
}

/* db += dout (* a) summed onto b's shape. Different runs can feed the same
 * b values, so each thread sums into its own zeroed copy of db's shape
 * (bnumel floats) and the copies are added into db at the end. */
static dl_status db_fast(float *db, int64_t bnumel, const float *dout, const float *a, const bcast *bc,
                         const bcast_runs *s, const char *op)
{
    const int64_t inner = s->inner, numel = s->outer * inner;
    if (bnumel == numel) {                       /* nothing broadcast: elementwise */
        #pragma omp parallel for simd schedule(static) if (numel >= PARALLEL_MIN)
        for (int64_t i = 0; i < numel; i++) db[i] += a ? dout[i] * a[i] : dout[i];
        return DL_OK;
    }
#ifdef _OPENMP
    const int nthreads = numel >= PARALLEL_MIN && s->outer > 1 ? omp_get_max_threads() : 1;
#else
    const int nthreads = 1;
#endif
    float *part = calloc((size_t)nthreads * (size_t)bnumel, sizeof(float));
    if (!part) return dl_fail(DL_ERR_MEMORY, "%s: cannot allocate %d x %lld floats of scratch",
                              op, nthreads, (long long)bnumel);
    #pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
#ifdef _OPENMP
        float *mine = part + (size_t)omp_get_thread_num() * (size_t)bnumel;
#else
        float *mine = part;
#endif
        #pragma omp for schedule(static)
        for (int64_t o = 0; o < s->outer; o++) {
            const float *g = dout + o * inner, *pa = a ? a + o * inner : NULL;
            float *d = mine + run_boff(bc, s, o);
            if (s->b_scalar) {                   /* the whole run feeds one b value */
                float sum = 0.0f;
                if (pa) { for (int64_t j = 0; j < inner; j++) sum += g[j] * pa[j]; }
                else    { for (int64_t j = 0; j < inner; j++) sum += g[j]; }
                d[0] += sum;
            } else if (pa) {
                for (int64_t j = 0; j < inner; j++) d[j] += g[j] * pa[j];
            } else {
                for (int64_t j = 0; j < inner; j++) d[j] += g[j];
            }
        }
    }
    #pragma omp parallel for schedule(static) if (nthreads > 1 && bnumel >= PARALLEL_MIN)
    for (int64_t i = 0; i < bnumel; i++) {
        float sum = 0.0f;
        for (int t = 0; t < nthreads; t++) sum += part[(size_t)t * (size_t)bnumel + i];
        db[i] += sum;
    }
    free(part);
    return DL_OK;
}

dl_status add_backward(dl_tensor *da, dl_tensor *db, const dl_tensor *dout)
{
    bcast bc;
    if (!dout || !dout->data) return dl_fail(DL_ERR_ARG, "add_backward: dout is missing (NULL tensor)");
    DL_TRY(check_binary_backward("add_backward", &bc, da, db, dout, dout, db, NULL, NULL));
    if (!db) {
        if (da) {
            const int64_t n = dout->numel;
            const float *g = dout->data;
            float *d = da->data;
            #pragma omp parallel for simd schedule(static) if (n >= PARALLEL_MIN)
            for (int64_t i = 0; i < n; i++) d[i] += g[i];
        }
        return DL_OK;
    }
    bcast_runs s = split_runs(&bc, dout->numel);
    if (da) da_fast(da->data, dout->data, NULL, &bc, &s);
    return db_fast(db->data, db->numel, dout->data, NULL, &bc, &s, "add_backward");
}

dl_status mul_backward(dl_tensor *da, dl_tensor *db, const dl_tensor *dout, const dl_tensor *a,
                       const dl_tensor *b)
{
    bcast bc;
    if (!a || !a->data) return dl_fail(DL_ERR_ARG, "mul_backward: a is missing (NULL tensor)");
    if (!b || !b->data) return dl_fail(DL_ERR_ARG, "mul_backward: b is missing (NULL tensor)");
    DL_TRY(check_binary_backward("mul_backward", &bc, da, db, dout, a, b, a, b));
    bcast_runs s = split_runs(&bc, dout->numel);
    if (da) da_fast(da->data, dout->data, b->data, &bc, &s);
    if (db) DL_TRY(db_fast(db->data, db->numel, dout->data, a->data, &bc, &s, "mul_backward"));
    return DL_OK;
}
