/* linear.c - see linear.h */
#include "linear.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>

#include "linear_direct.h"

static int g_direct_enabled = 1;
void linear_use_direct(int on) { g_direct_enabled = on != 0; }

/* Shared by both linear versions, so they accept and reject exactly the
 * same arguments. Gives rows (product of the leading dims of x), in and out
 * features. */
static dl_status linear_check(const char *op, const dl_tensor *out, const dl_tensor *x,
                              const dl_tensor *weight, const dl_tensor *bias,
                              int *rows, int *in_features, int *out_features)
{
    if (!x || !x->data) return dl_fail(DL_ERR_ARG, "%s: input x is missing (NULL tensor)", op);
    int64_t in = x->shape[x->ndim - 1];
    DL_TRY(dl_check_shape(weight, op, "weight", 2, DL_SHAPE(-1, in)));
    int64_t outf = weight->shape[0];
    if (bias) DL_TRY(dl_check_shape(bias, op, "bias", 1, DL_SHAPE(outf)));
    int64_t want[DL_MAX_DIMS];                     /* out = [..., out_features] */
    for (int i = 0; i < x->ndim; i++) want[i] = x->shape[i];
    want[x->ndim - 1] = outf;
    DL_TRY(dl_check_shape(out, op, "out", x->ndim, want));
    if (dl_tensors_overlap(out, x) || dl_tensors_overlap(out, weight) || dl_tensors_overlap(out, bias))
        return dl_fail(DL_ERR_ARG, "%s: out overlaps an input; give it its own memory", op);
    int64_t r = x->numel / in;
    if (r > INT_MAX || in > INT_MAX || outf > INT_MAX)
        return dl_fail(DL_ERR_ARG, "%s: sizes too large for BLAS int", op);
    *rows = (int)r;
    *in_features = (int)in;
    *out_features = (int)outf;
    return DL_OK;
}

dl_status linear_forward_ref(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight, const dl_tensor *bias)
{
    int rows = 0, in = 0, outf = 0;
    DL_TRY(linear_check("linear_ref", out, x, weight, bias, &rows, &in, &outf));
    // x [rows, in], weight [outf, in], out [rows, outf]
    for (int r = 0; r < rows; r++) {
        const float *xr = x->data + (size_t)r * in;
        for (int o = 0; o < outf; o++) {
            const float *wo = weight->data + (size_t)o * in;
            float sum = bias ? bias->data[o] : 0.0f;
            for (int i = 0; i < in; i++) sum += xr[i] * wo[i];
            out->data[(size_t)r * outf + o] = sum;
        }
    }
    return DL_OK;
}

dl_status linear_forward(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight, const dl_tensor *bias)
{
    int rows = 0, in = 0, outf = 0;
    DL_TRY(linear_check("linear", out, x, weight, bias, &rows, &in, &outf));
    if (g_direct_enabled && linear_direct_applies(rows, in, outf)) {
        linear_direct_forward(out->data, x->data, weight->data, bias ? bias->data : NULL, rows, in, outf);
        return DL_OK;
    }
    // Start out at the bias and let sgemm add on top (beta = 1): that saves a
    // second pass over out after the product.
    float beta = 0.0f;
    if (bias) {
        const int par = dl_parallel_ok();
        #pragma omp parallel for schedule(static) if (par)
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outf; o++) out->data[(size_t)r * outf + o] = bias->data[o];
        beta = 1.0f;
    }
    // out[rows, outf] = x[rows, in] * weight[outf, in]^T  (+ out)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, outf, in,
                1.0f, x->data, in, weight->data, in, beta, out->data, outf);
    return DL_OK;
}

/* ------------------------------------------------------------------ */

static dl_status matmul_check(const char *op, const dl_tensor *c, const dl_tensor *a, const dl_tensor *b,
                              int *M, int *N, int *K)
{
    DL_TRY(dl_check_shape(a, op, "a", 2, DL_SHAPE(-1, -1)));
    DL_TRY(dl_check_shape(b, op, "b", 2, DL_SHAPE(a->shape[1], -1)));
    DL_TRY(dl_check_shape(c, op, "c", 2, DL_SHAPE(a->shape[0], b->shape[1])));
    if (dl_tensors_overlap(c, a) || dl_tensors_overlap(c, b))
        return dl_fail(DL_ERR_ARG, "%s: c overlaps an input; give it its own memory", op);
    if (a->shape[0] > INT_MAX || a->shape[1] > INT_MAX || b->shape[1] > INT_MAX)
        return dl_fail(DL_ERR_ARG, "%s: sizes too large for BLAS int", op);
    *M = (int)a->shape[0];
    *K = (int)a->shape[1];
    *N = (int)b->shape[1];
    return DL_OK;
}

dl_status matmul_forward_ref(dl_tensor *c, const dl_tensor *a, const dl_tensor *b)
{
    int M = 0, N = 0, K = 0;
    DL_TRY(matmul_check("matmul_ref", c, a, b, &M, &N, &K));
    // c[m, n] = sum_k a[m, k] * b[k, n]
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            float sum = 0.0f;
            for (int k = 0; k < K; k++) sum += a->data[(size_t)m * K + k] * b->data[(size_t)k * N + n];
            c->data[(size_t)m * N + n] = sum;
        }
    }
    return DL_OK;
}

dl_status matmul_forward(dl_tensor *c, const dl_tensor *a, const dl_tensor *b)
{
    int M = 0, N = 0, K = 0;
    DL_TRY(matmul_check("matmul", c, a, b, &M, &N, &K));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K,
                1.0f, a->data, K, b->data, N, 0.0f, c->data, N);
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Backward: dx += dout W, dweight += dout^T x, dbias += column sums of dout. */

/* Shared by both versions: dout must be x's shape with out_features last;
 * each gradient (when not NULL) has the shape of what it is the gradient
 * of, and no gradient may share memory with an input or another gradient
 * (they are written while the inputs are still being read). */
static dl_status linear_backward_check(const char *op, const dl_tensor *dx, const dl_tensor *dweight,
                                       const dl_tensor *dbias, const dl_tensor *dout, const dl_tensor *x,
                                       const dl_tensor *weight, int *rows, int *in_features, int *out_features)
{
    if (!x || !x->data) return dl_fail(DL_ERR_ARG, "%s: input x is missing (NULL tensor)", op);
    int64_t in = x->shape[x->ndim - 1];
    DL_TRY(dl_check_shape(weight, op, "weight", 2, DL_SHAPE(-1, in)));
    int64_t outf = weight->shape[0];
    int64_t want[DL_MAX_DIMS];                     /* dout = [..., out_features] */
    for (int i = 0; i < x->ndim; i++) want[i] = x->shape[i];
    want[x->ndim - 1] = outf;
    DL_TRY(dl_check_shape(dout, op, "dout", x->ndim, want));
    if (dx) DL_TRY(dl_check_shape(dx, op, "dx", x->ndim, x->shape));
    if (dweight) DL_TRY(dl_check_shape(dweight, op, "dweight", 2, weight->shape));
    if (dbias) DL_TRY(dl_check_shape(dbias, op, "dbias", 1, DL_SHAPE(outf)));
    const dl_tensor *grads[3] = {dx, dweight, dbias}, *ins[3] = {dout, x, weight};
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 3; j++)
            if (dl_tensors_overlap(grads[i], ins[j]))
                return dl_fail(DL_ERR_ARG, "%s: a gradient output overlaps an input; give it its own memory", op);
        for (int j = i + 1; j < 3; j++)
            if (dl_tensors_overlap(grads[i], grads[j]))
                return dl_fail(DL_ERR_ARG, "%s: two gradient outputs share memory", op);
    }
    int64_t r = x->numel / in;
    if (r > INT_MAX || in > INT_MAX || outf > INT_MAX)
        return dl_fail(DL_ERR_ARG, "%s: sizes too large for BLAS int", op);
    *rows = (int)r;
    *in_features = (int)in;
    *out_features = (int)outf;
    return DL_OK;
}

dl_status linear_backward_ref(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias,
                              const dl_tensor *dout, const dl_tensor *x, const dl_tensor *weight)
{
    int rows = 0, in = 0, outf = 0;
    DL_TRY(linear_backward_check("linear_backward_ref", dx, dweight, dbias, dout, x, weight, &rows, &in, &outf));
    // dout [rows, outf], x [rows, in], weight [outf, in]
    for (int r = 0; r < rows; r++) {
        const float *xr = x->data + (size_t)r * in;
        const float *gr = dout->data + (size_t)r * outf;
        for (int o = 0; o < outf; o++) {
            const float g = gr[o];                       // dL/dout[r, o]
            const float *wo = weight->data + (size_t)o * in;
            if (dbias) dbias->data[o] += g;
            for (int i = 0; i < in; i++) {
                if (dx) dx->data[(size_t)r * in + i] += g * wo[i];           // out[r, o] uses x[r, i] * W[o, i]
                if (dweight) dweight->data[(size_t)o * in + i] += g * xr[i];
            }
        }
    }
    return DL_OK;
}

static dl_status linear_backward_beta(const char *op, dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias,
                                     const dl_tensor *dout, const dl_tensor *x, const dl_tensor *weight, float dx_beta)
{
    int rows = 0, in = 0, outf = 0;
    DL_TRY(linear_backward_check(op, dx, dweight, dbias, dout, x, weight, &rows, &in, &outf));
    const int direct = g_direct_enabled && linear_direct_applies(rows, in, outf);
    // dx[rows, in] = dx_beta * dx + dout[rows, outf] x weight[outf, in]
    if (dx && direct) linear_direct_dx(dx->data, dout->data, weight->data, rows, in, outf, dx_beta == 0.0f);
    else if (dx)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, in, outf,
                    1.0f, dout->data, outf, weight->data, in, dx_beta, dx->data, in);
    // dweight[outf, in] += dout[rows, outf]^T x x[rows, in]
    if (dweight && !(direct && linear_direct_dw(dweight->data, dout->data, x->data, rows, in, outf)))
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, outf, in, rows,
                    1.0f, dout->data, outf, x->data, in, 1.0f, dweight->data, in);
    if (dbias) {
        // Column sums of dout, 16 columns at a time: a block walks all rows
        // with its 16 running sums in registers. Blocks are independent, so
        // big ones are spread over the threads.
        const int nblk = (outf + 15) / 16;
        const int par = dl_parallel_ok() && (size_t)rows * outf >= 65536 && nblk > 1;
        #pragma omp parallel for schedule(static) if (par)
        for (int blk = 0; blk < nblk; blk++) {
            const int o0 = blk * 16, n = outf - o0 < 16 ? outf - o0 : 16;
            float acc[16] = {0};
            for (int r = 0; r < rows; r++) {
                const float *gr = dout->data + (size_t)r * outf + o0;   // dout[r, o0 ..]
                for (int j = 0; j < n; j++) acc[j] += gr[j];
            }
            for (int j = 0; j < n; j++) dbias->data[o0 + j] += acc[j];
        }
    }
    return DL_OK;
}

dl_status linear_backward(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias,
                          const dl_tensor *dout, const dl_tensor *x, const dl_tensor *weight)
{
    return linear_backward_beta("linear_backward", dx, dweight, dbias, dout, x, weight, 1.0f);
}

dl_status linear_backward_set_dx(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias,
                                 const dl_tensor *dout, const dl_tensor *x, const dl_tensor *weight)
{
    return linear_backward_beta("linear_backward_set_dx", dx, dweight, dbias, dout, x, weight, 0.0f);
}
