/* resample.c - see resample.h */
#include "resample.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* upsample_nearest2x */

static dl_status upsample_check(const char *op, const dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(dl_check_shape(x, op, "x", 4, DL_SHAPE(-1, -1, -1, -1)));
    DL_TRY(dl_check_shape(out, op, "out", 4,
                          DL_SHAPE(x->shape[0], x->shape[1], 2 * x->shape[2], 2 * x->shape[3])));
    if (dl_tensors_overlap(out, x)) return dl_fail(DL_ERR_ARG, "%s: out overlaps x; give it its own memory", op);
    return DL_OK;
}

dl_status upsample_nearest2x_forward_ref(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(upsample_check("upsample_nearest2x_ref", out, x));
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t Ho = 2 * H, Wo = 2 * W;
    for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++)
    for (int64_t oh = 0; oh < Ho; oh++)
    for (int64_t ow = 0; ow < Wo; ow++)
        out->data[((n * C + c) * Ho + oh) * Wo + ow] = x->data[((n * C + c) * H + oh / 2) * W + ow / 2];
    return DL_OK;
}

dl_status upsample_nearest2x_forward(dl_tensor *out, const dl_tensor *x)
{
    DL_TRY(upsample_check("upsample_nearest2x", out, x));
    const int64_t rows = x->shape[0] * x->shape[1] * x->shape[2];   // all input rows of all planes
    const int64_t W = x->shape[3];
    const int par = dl_parallel_ok();
    // input row r becomes output rows 2r and 2r+1 (planes stack, so that holds across planes)
    #pragma omp parallel for schedule(static) if (par)
    for (int64_t r = 0; r < rows; r++) {
        const float *src = x->data + r * W;
        float *d0 = out->data + (2 * r) * (2 * W);
        for (int64_t w = 0; w < W; w++) d0[2 * w] = d0[2 * w + 1] = src[w];
        memcpy(d0 + 2 * W, d0, sizeof(float) * 2 * W);
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* avg_pool2d */

static dl_status avg_pool_check(const char *op, const dl_tensor *out, const dl_tensor *x, int kernel, int stride)
{
    DL_TRY(dl_check_shape(x, op, "x", 4, DL_SHAPE(-1, -1, -1, -1)));
    if (kernel < 1) return dl_fail(DL_ERR_ARG, "%s: kernel is %d, must be >= 1", op, kernel);
    if (stride < 1) return dl_fail(DL_ERR_ARG, "%s: stride is %d, must be >= 1", op, stride);
    const int64_t H = x->shape[2], W = x->shape[3];
    if (H < kernel || W < kernel)
        return dl_fail(DL_ERR_SHAPE, "%s: kernel %d is larger than the %lldx%lld input", op, kernel,
                       (long long)H, (long long)W);
    DL_TRY(dl_check_shape(out, op, "out", 4,
                          DL_SHAPE(x->shape[0], x->shape[1], (H - kernel) / stride + 1, (W - kernel) / stride + 1)));
    if (dl_tensors_overlap(out, x)) return dl_fail(DL_ERR_ARG, "%s: out overlaps x; give it its own memory", op);
    return DL_OK;
}

dl_status avg_pool2d_forward_ref(dl_tensor *out, const dl_tensor *x, int kernel, int stride)
{
    DL_TRY(avg_pool_check("avg_pool2d_ref", out, x, kernel, stride));
    const int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t Ho = out->shape[2], Wo = out->shape[3];
    for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++)
    for (int64_t oh = 0; oh < Ho; oh++)
    for (int64_t ow = 0; ow < Wo; ow++) {
        float sum = 0.0f;
        for (int kh = 0; kh < kernel; kh++)
        for (int kw = 0; kw < kernel; kw++)
            sum += x->data[((n * C + c) * H + oh * stride + kh) * W + ow * stride + kw];
        out->data[((n * C + c) * Ho + oh) * Wo + ow] = sum / (float)(kernel * kernel);
    }
    return DL_OK;
}

dl_status avg_pool2d_forward(dl_tensor *out, const dl_tensor *x, int kernel, int stride)
{
    DL_TRY(avg_pool_check("avg_pool2d", out, x, kernel, stride));
    const int64_t planes = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
    const int64_t Ho = out->shape[2], Wo = out->shape[3];
    const float div = (float)(kernel * kernel);
    const int par = dl_parallel_ok();
    // The reference's loops and summation order (so the results agree to the
    // bit), with the row pointers hoisted and all planes' rows in one
    // parallel loop.
    #pragma omp parallel for schedule(static) if (par)
    for (int64_t pr = 0; pr < planes * Ho; pr++) {             // output row oh of plane p
        const int64_t p = pr / Ho, oh = pr % Ho;
        const float *top = x->data + (p * H + oh * stride) * W;   // x[p, oh*stride, 0]
        float *d = out->data + pr * Wo;
        for (int64_t ow = 0; ow < Wo; ow++) {
            const float *win = top + ow * stride;
            float sum = 0.0f;
            for (int kh = 0; kh < kernel; kh++)
                for (int kw = 0; kw < kernel; kw++) sum += win[kh * W + kw];
            d[ow] = sum / div;
        }
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* concat_channels */

static dl_status concat_check(const char *op, const dl_tensor *out, const dl_tensor *a, const dl_tensor *b)
{
    DL_TRY(dl_check_shape(a, op, "a", 4, DL_SHAPE(-1, -1, -1, -1)));
    DL_TRY(dl_check_shape(b, op, "b", 4, DL_SHAPE(a->shape[0], -1, a->shape[2], a->shape[3])));
    DL_TRY(dl_check_shape(out, op, "out", 4,
                          DL_SHAPE(a->shape[0], a->shape[1] + b->shape[1], a->shape[2], a->shape[3])));
    if (dl_tensors_overlap(out, a) || dl_tensors_overlap(out, b))
        return dl_fail(DL_ERR_ARG, "%s: out overlaps an input; give it its own memory", op);
    return DL_OK;
}

dl_status concat_channels_forward_ref(dl_tensor *out, const dl_tensor *a, const dl_tensor *b)
{
    DL_TRY(concat_check("concat_channels_ref", out, a, b));
    const int64_t N = a->shape[0], Ca = a->shape[1], Cb = b->shape[1], HW = a->shape[2] * a->shape[3];
    const int64_t C = Ca + Cb;
    for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++)
    for (int64_t i = 0; i < HW; i++)
        out->data[(n * C + c) * HW + i] = c < Ca ? a->data[(n * Ca + c) * HW + i]
                                                 : b->data[(n * Cb + (c - Ca)) * HW + i];
    return DL_OK;
}

dl_status concat_channels_forward(dl_tensor *out, const dl_tensor *a, const dl_tensor *b)
{
    DL_TRY(concat_check("concat_channels", out, a, b));
    const int64_t N = a->shape[0], HW = a->shape[2] * a->shape[3];
    const size_t na = (size_t)(a->shape[1] * HW), nb = (size_t)(b->shape[1] * HW);   // floats per image
    // per image: out[n] = a[n] followed by b[n], two contiguous blocks
    for (int64_t n = 0; n < N; n++) {
        memcpy(out->data + n * (na + nb), a->data + n * na, sizeof(float) * na);
        memcpy(out->data + n * (na + nb) + na, b->data + n * nb, sizeof(float) * nb);
    }
    return DL_OK;
}

/* ================================================================== */
/* Backward                                                            */
/* ================================================================== */

/* The forward checks, with dx in x's place and dout in out's (so the
 * messages say "x" / "out" for dx / dout). Without dx there is no shape to
 * check against and nothing to do. */

dl_status upsample_nearest2x_backward_ref(dl_tensor *dx, const dl_tensor *dout)
{
    if (!dx) return DL_OK;
    DL_TRY(upsample_check("upsample_nearest2x_backward_ref", dout, dx));
    const int64_t N = dx->shape[0], C = dx->shape[1], H = dx->shape[2], W = dx->shape[3];
    const int64_t Ho = 2 * H, Wo = 2 * W;
    // out[n, c, oh, ow] = x[n, c, oh/2, ow/2]: send each dout back to its source
    for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++)
    for (int64_t oh = 0; oh < Ho; oh++)
    for (int64_t ow = 0; ow < Wo; ow++)
        dx->data[((n * C + c) * H + oh / 2) * W + ow / 2] += dout->data[((n * C + c) * Ho + oh) * Wo + ow];
    return DL_OK;
}

dl_status upsample_nearest2x_backward(dl_tensor *dx, const dl_tensor *dout)
{
    if (!dx) return DL_OK;
    DL_TRY(upsample_check("upsample_nearest2x_backward", dout, dx));
    const int64_t rows = dx->shape[0] * dx->shape[1] * dx->shape[2];   // all input rows of all planes
    const int64_t W = dx->shape[3];
    const int par = dl_parallel_ok();
    // input row r received output rows 2r and 2r+1 (also across planes)
    #pragma omp parallel for schedule(static) if (par && rows * W >= 16384)
    for (int64_t r = 0; r < rows; r++) {
        const float *top = dout->data + (2 * r) * (2 * W), *bot = top + 2 * W;
        float *d = dx->data + r * W;
        for (int64_t w = 0; w < W; w++) d[w] += (top[2 * w] + top[2 * w + 1]) + (bot[2 * w] + bot[2 * w + 1]);
    }
    return DL_OK;
}

dl_status avg_pool2d_backward_ref(dl_tensor *dx, const dl_tensor *dout, int kernel, int stride)
{
    if (!dx) return DL_OK;
    DL_TRY(avg_pool_check("avg_pool2d_backward_ref", dout, dx, kernel, stride));
    const int64_t N = dx->shape[0], C = dx->shape[1], H = dx->shape[2], W = dx->shape[3];
    const int64_t Ho = dout->shape[2], Wo = dout->shape[3];
    for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++)
    for (int64_t oh = 0; oh < Ho; oh++)
    for (int64_t ow = 0; ow < Wo; ow++) {
        // out = (sum of the window) / k^2: each window pixel gets dout / k^2
        const float g = dout->data[((n * C + c) * Ho + oh) * Wo + ow] / (float)(kernel * kernel);
        for (int kh = 0; kh < kernel; kh++)
        for (int kw = 0; kw < kernel; kw++)
            dx->data[((n * C + c) * H + oh * stride + kh) * W + ow * stride + kw] += g;
    }
    return DL_OK;
}

dl_status avg_pool2d_backward(dl_tensor *dx, const dl_tensor *dout, int kernel, int stride)
{
    if (!dx) return DL_OK;
    DL_TRY(avg_pool_check("avg_pool2d_backward", dout, dx, kernel, stride));
    const int64_t planes = dx->shape[0] * dx->shape[1], H = dx->shape[2], W = dx->shape[3];
    const int64_t Ho = dout->shape[2], Wo = dout->shape[3];
    const float div = (float)(kernel * kernel);
    const int par = dl_parallel_ok();
    // Windows overlap only inside their own plane (stride < kernel), so
    // planes are split over the threads, and each plane is done in the
    // reference's order.
    #pragma omp parallel for schedule(static) if (par && planes * H * W >= 16384)
    for (int64_t p = 0; p < planes; p++) {
        const float *g = dout->data + p * Ho * Wo;    // dout[p]
        float *d = dx->data + p * H * W;              // dx[p]
        for (int64_t oh = 0; oh < Ho; oh++)
            for (int64_t ow = 0; ow < Wo; ow++) {
                const float v = g[oh * Wo + ow] / div;
                float *win = d + oh * stride * W + ow * stride;
                for (int kh = 0; kh < kernel; kh++)
                    for (int kw = 0; kw < kernel; kw++) win[kh * W + kw] += v;
            }
    }
    return DL_OK;
}

/* da [N, Ca, H, W], db [N, Cb, H, W] (either may be NULL), dout [N, Ca+Cb, H, W].
 * Gives Ca (the channel where b's part starts). */
static dl_status concat_backward_check(const char *op, const dl_tensor *da, const dl_tensor *db,
                                       const dl_tensor *dout, int64_t *Ca)
{
    DL_TRY(dl_check_shape(dout, op, "dout", 4, DL_SHAPE(-1, -1, -1, -1)));
    const int64_t N = dout->shape[0], C = dout->shape[1], H = dout->shape[2], W = dout->shape[3];
    if (da) DL_TRY(dl_check_shape(da, op, "da", 4, DL_SHAPE(N, -1, H, W)));
    if (db) DL_TRY(dl_check_shape(db, op, "db", 4, DL_SHAPE(N, -1, H, W)));
    if (!da && !db) { *Ca = 0; return DL_OK; }      /* nothing wanted */
    const int64_t ca = da ? da->shape[1] : C - (db ? db->shape[1] : 0);
    const int64_t cb = db ? db->shape[1] : C - ca;
    if (ca < 1 || cb < 1 || ca + cb != C) {
        char s[64];
        return dl_fail(DL_ERR_SHAPE, "%s: dout %s has %lld channels, da and db have %lld + %lld",
                       op, dl_shape_str(dout, s, sizeof s), (long long)C, (long long)ca, (long long)cb);
    }
    if (dl_tensors_overlap(da, dout) || dl_tensors_overlap(db, dout) || dl_tensors_overlap(da, db))
        return dl_fail(DL_ERR_ARG, "%s: a gradient output overlaps dout or the other one", op);
    *Ca = ca;
    return DL_OK;
}

dl_status concat_channels_backward_ref(dl_tensor *da, dl_tensor *db, const dl_tensor *dout)
{
    int64_t Ca = 0;
    DL_TRY(concat_backward_check("concat_channels_backward_ref", da, db, dout, &Ca));
    if (!da && !db) return DL_OK;
    const int64_t N = dout->shape[0], C = dout->shape[1], HW = dout->shape[2] * dout->shape[3];
    const int64_t Cb = C - Ca;
    for (int64_t n = 0; n < N; n++)
    for (int64_t c = 0; c < C; c++)
    for (int64_t i = 0; i < HW; i++) {
        const float g = dout->data[(n * C + c) * HW + i];
        if (c < Ca) { if (da) da->data[(n * Ca + c) * HW + i] += g; }
        else        { if (db) db->data[(n * Cb + (c - Ca)) * HW + i] += g; }
    }
    return DL_OK;
}

static dl_status concat_backward_impl(const char *op, dl_tensor *da, dl_tensor *db, const dl_tensor *dout, int set)
{
    int64_t Ca = 0;
    DL_TRY(concat_backward_check(op, da, db, dout, &Ca));
    if (!da && !db) return DL_OK;
    const int64_t N = dout->shape[0], HW = dout->shape[2] * dout->shape[3];
    const int64_t na = Ca * HW, nb = (dout->shape[1] - Ca) * HW;   // floats per image
    const int par = dl_parallel_ok();
    // per image: dout[n] = [a's block | b's block], two contiguous runs
    #pragma omp parallel for schedule(static) if (par && N * (na + nb) >= 32768)
    for (int64_t n = 0; n < N; n++) {
        const float *g = dout->data + n * (na + nb);
        if (set) {                                   /* a split: two copies */
            if (da) memcpy(da->data + n * na, g, sizeof(float) * (size_t)na);
            if (db) memcpy(db->data + n * nb, g + na, sizeof(float) * (size_t)nb);
            continue;
        }
        if (da) { float *d = da->data + n * na; for (int64_t i = 0; i < na; i++) d[i] += g[i]; }
        if (db) { float *d = db->data + n * nb; for (int64_t i = 0; i < nb; i++) d[i] += g[na + i]; }
    }
    return DL_OK;
}

dl_status concat_channels_backward(dl_tensor *da, dl_tensor *db, const dl_tensor *dout)
{
    return concat_backward_impl("concat_channels_backward", da, db, dout, 0);
}

dl_status concat_channels_backward_set(dl_tensor *da, dl_tensor *db, const dl_tensor *dout)
{
    return concat_backward_impl("concat_channels_backward_set", da, db, dout, 1);
}
