/* conv2d.c - see conv2d.h */
#include "conv2d.h"
#include "conv2d_direct.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int g_direct_enabled = 1;
void conv2d_use_direct(int on) { g_direct_enabled = on != 0; }
int  conv2d_direct_enabled(void) { return g_direct_enabled; }

int conv2d_out_size(int in, int kernel, int stride, int padding)
{
    if (in < 1 || kernel < 1 || stride < 1 || padding < 0) return -1;
    long long span = (long long)in + 2LL * padding - kernel;   /* room the kernel can slide over */
    if (span < 0) return 0;
    long long o = span / stride + 1;
    return o > INT_MAX ? -1 : (int)o;
}

/* The sizes of one convolution, checked once and shared by both versions. */
typedef struct {
    int N, Cin, H, W;       /* x      [N, Cin, H, W]       */
    int Cout, KH, KW;       /* weight [Cout, Cin, KH, KW]  */
    int Ho, Wo;             /* out    [N, Cout, Ho, Wo]    */
    int stride, pad;
} conv_geom;

static dl_status conv2d_check(const char *op, const dl_tensor *out, const dl_tensor *x,
                              const dl_tensor *weight, const dl_tensor *bias,
                              int stride, int padding, conv_geom *g)
{
    DL_TRY(dl_check_shape(x, op, "x", 4, DL_SHAPE(-1, -1, -1, -1)));
    DL_TRY(dl_check_shape(weight, op, "weight", 4, DL_SHAPE(-1, x->shape[1], -1, -1)));
    if (bias) DL_TRY(dl_check_shape(bias, op, "bias", 1, DL_SHAPE(weight->shape[0])));
    if (stride < 1) return dl_fail(DL_ERR_ARG, "%s: stride is %d, must be >= 1", op, stride);
    if (padding < 0) return dl_fail(DL_ERR_ARG, "%s: padding is %d, must be >= 0", op, padding);
    /* numel <= 2^31 keeps every single dimension within int */
    g->N = (int)x->shape[0];   g->Cin = (int)x->shape[1];
    g->H = (int)x->shape[2];   g->W = (int)x->shape[3];
    g->Cout = (int)weight->shape[0];
    g->KH = (int)weight->shape[2];  g->KW = (int)weight->shape[3];
    g->stride = stride;  g->pad = padding;
    g->Ho = conv2d_out_size(g->H, g->KH, stride, padding);
    g->Wo = conv2d_out_size(g->W, g->KW, stride, padding);
    if (g->Ho < 1 || g->Wo < 1)
        return dl_fail(DL_ERR_SHAPE, "%s: kernel %dx%d does not fit input %dx%d with padding %d",
                       op, g->KH, g->KW, g->H, g->W, padding);
    DL_TRY(dl_check_shape(out, op, "out", 4, DL_SHAPE(g->N, g->Cout, g->Ho, g->Wo)));
    if (dl_tensors_overlap(out, x) || dl_tensors_overlap(out, weight) || dl_tensors_overlap(out, bias))
        return dl_fail(DL_ERR_ARG, "%s: out overlaps an input; give it its own memory", op);
    if ((long long)g->Cin * g->KH * g->KW > INT_MAX || (long long)g->N * g->Ho * g->Wo > INT_MAX)
        return dl_fail(DL_ERR_ARG, "%s: sizes too large for BLAS int", op);
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Reference: the definition, one output value at a time. */

dl_status conv2d_forward_ref(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                             const dl_tensor *bias, int stride, int padding)
{
    conv_geom g = {0};
    DL_TRY(conv2d_check("conv2d_ref", out, x, weight, bias, stride, padding, &g));
    for (int n = 0; n < g.N; n++)
    for (int co = 0; co < g.Cout; co++)
    for (int oh = 0; oh < g.Ho; oh++)
    for (int ow = 0; ow < g.Wo; ow++) {
        float sum = bias ? bias->data[co] : 0.0f;
        for (int ci = 0; ci < g.Cin; ci++)
        for (int kh = 0; kh < g.KH; kh++)
        for (int kw = 0; kw < g.KW; kw++) {
            int ih = oh * stride - padding + kh;   // input pixel under this tap
            int iw = ow * stride - padding + kw;
            if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;   // zero padding
            float xv = x->data[(((size_t)n * g.Cin + ci) * g.H + ih) * g.W + iw];
            float wv = weight->data[(((size_t)co * g.Cin + ci) * g.KH + kh) * g.KW + kw];
            sum += xv * wv;
        }
        out->data[(((size_t)n * g.Cout + co) * g.Ho + oh) * g.Wo + ow] = sum;
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Fast: im2col + sgemm, tiled so the column matrix stays small.
 *
 * With K = Cin*KH*KW, the convolution of one image is a matrix product
 *     out[Cout, Ho*Wo] = weight[Cout, K] x col[K, Ho*Wo]
 * where column j = (oh, ow) of col holds the K input values that output
 * pixel sees. col is KH*KW times bigger than x (47 MB for a 320-channel
 * 64x64 image), so we build it for a few output rows at a time (a "tile")
 * and run one sgemm per tile. Small images go the other way: several whole
 * images share one tile, so that sgemm gets enough columns to be efficient.
 * The scratch memory is freed before returning. */

/* Fewer columns than this and sgemm slows down (it re-packs the whole
 * weight matrix for every call), so a tile gets at least this many. */
#define CONV2D_MIN_TILE_COLS 256

/* Fill col[K, nimg*nrows*Wo] for images n0 .. n0+nimg-1, output rows
 * oh0 .. oh0+nrows-1. Row k = (ci*KH + kh)*KW + kw (the order of the weight's
 * last three dims), column j = (i*nrows + r)*Wo + ow. */
static void im2col_tile(float *col, const float *x, const conv_geom *g,
                        int n0, int nimg, int oh0, int nrows, int par)
{
    const int K = g->Cin * g->KH * g->KW, s = g->stride, p = g->pad, W = g->W, Wo = g->Wo;
    const size_t cols = (size_t)nimg * nrows * Wo;
    #pragma omp parallel for schedule(static) if (par)
    for (int k = 0; k < K; k++) {
        const int kw = k % g->KW, kh = (k / g->KW) % g->KH, ci = k / (g->KW * g->KH);
        // Output columns ow in [lo, hi) read inside the image: 0 <= ow*s - p + kw < W.
        int lo = p - kw <= 0 ? 0 : (p - kw + s - 1) / s;
        int hi = W + p - kw <= 0 ? 0 : (W + p - kw + s - 1) / s;
        if (lo > Wo) lo = Wo;
        if (hi > Wo) hi = Wo;
        if (hi < lo) hi = lo;
        float *dst = col + (size_t)k * cols;
        for (int i = 0; i < nimg; i++) {
            const float *plane = x + ((size_t)(n0 + i) * g->Cin + ci) * g->H * W;   // x[n, ci]
            for (int r = 0; r < nrows; r++) {
                float *d = dst + ((size_t)i * nrows + r) * Wo;
                int ih = (oh0 + r) * s - p + kh;
                if (ih < 0 || ih >= g->H) {            // whole row falls in the padding
                    memset(d, 0, sizeof(float) * Wo);
                    continue;
                }
                const float *src = plane + (size_t)ih * W + (lo * s - p + kw);   // x[ih, iw(lo)]
                for (int ow = 0; ow < lo; ow++) d[ow] = 0.0f;
                if (s == 1) for (int t = 0; t < hi - lo; t++) d[lo + t] = src[t];
                else        for (int t = 0; t < hi - lo; t++) d[lo + t] = src[(size_t)t * s];
                for (int ow = hi; ow < Wo; ow++) d[ow] = 0.0f;
            }
        }
    }
}

/* out[n, :, oh0 .. oh0+nrows-1, :] = bias (the sgemm then adds with beta = 1) */
static void fill_bias_rows(float *out_n, const float *bias, const conv_geom *g, int oh0, int nrows, int par)
{
    const size_t plane = (size_t)g->Ho * g->Wo, len = (size_t)nrows * g->Wo;
    #pragma omp parallel for schedule(static) if (par)
    for (int co = 0; co < g->Cout; co++) {
        float *d = out_n + co * plane + (size_t)oh0 * g->Wo;
        for (size_t j = 0; j < len; j++) d[j] = bias[co];
    }
}

/* 1x1, stride 1, no padding: x[n] viewed as [Cin, H*W] already is col. */
static void conv1x1(float *out, const float *x, const float *w, const float *bias, const conv_geom *g, int par)
{
    const int HW = g->H * g->W;
    for (int n = 0; n < g->N; n++) {
        float *out_n = out + (size_t)n * g->Cout * HW;
        if (bias) fill_bias_rows(out_n, bias, g, 0, g->Ho, par);
        // out[n][Cout, HW] = w[Cout, Cin] x x[n][Cin, HW]  (+ bias already there)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g->Cout, HW, g->Cin,
                    1.0f, w, g->Cin, x + (size_t)n * g->Cin * HW, HW,
                    bias ? 1.0f : 0.0f, out_n, HW);
    }
}

dl_status conv2d_forward(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                         const dl_tensor *bias, int stride, int padding)
{
    conv_geom g = {0};
    DL_TRY(conv2d_check("conv2d", out, x, weight, bias, stride, padding, &g));
    const float *b = bias ? bias->data : NULL;
    const int par = dl_parallel_ok();
    if (g_direct_enabled && conv2d_direct_applies(g.N, g.Cin, g.H, g.W, g.Cout, g.KH, g.KW, stride, padding))
        return conv2d_direct_forward(out->data, x->data, weight->data, b, NULL, NULL, g.N, g.Cin, g.H, g.W, g.Cout,
                                     g.KH, g.KW, stride, padding);
    if (g.KH == 1 && g.KW == 1 && stride == 1 && padding == 0) {
        conv1x1(out->data, x->data, weight->data, b, &g, par);
        return DL_OK;
    }
    const int K = g.Cin * g.KH * g.KW, HoWo = g.Ho * g.Wo;

    // Tile shape: as many columns as CONV2D_WORKSPACE_FLOATS allows, but at
    // least CONV2D_MIN_TILE_COLS and at least one output row.
    size_t want_cols = CONV2D_WORKSPACE_FLOATS / (size_t)K;
    if (want_cols < CONV2D_MIN_TILE_COLS) want_cols = CONV2D_MIN_TILE_COLS;
    int imgs_per_tile = 1, rows_per_tile = g.Ho;
    if (HoWo < CONV2D_MIN_TILE_COLS) {               // small images: group whole images
        size_t n = want_cols / (size_t)HoWo;
        imgs_per_tile = n > (size_t)g.N ? g.N : (int)n;
    } else if ((size_t)HoWo > want_cols) {           // big images: a few rows at a time
        size_t r = want_cols / (size_t)g.Wo;
        rows_per_tile = r < 1 ? 1 : (int)r;
        int ntiles = (g.Ho + rows_per_tile - 1) / rows_per_tile;
        rows_per_tile = (g.Ho + ntiles - 1) / ntiles;     // even out the tiles
    }                                                // else: one whole image per tile
    const size_t tile_cols = (size_t)imgs_per_tile * rows_per_tile * g.Wo;

    // Workspace: col [K, tile_cols]; when images are grouped, the product
    // lands in tmp [Cout, tile_cols] and is then copied into NCHW order.
    float *col = malloc(sizeof(float) * (size_t)K * tile_cols);
    float *tmp = imgs_per_tile > 1 ? malloc(sizeof(float) * (size_t)g.Cout * tile_cols) : NULL;
    if (!col || (imgs_per_tile > 1 && !tmp)) {
        free(col);
        free(tmp);
        return dl_fail(DL_ERR_MEMORY, "conv2d: cannot allocate the %zu MiB im2col workspace",
                       (sizeof(float) * (size_t)K * tile_cols) >> 20);
    }

    for (int n0 = 0; n0 < g.N; n0 += imgs_per_tile) {
        const int nimg = g.N - n0 < imgs_per_tile ? g.N - n0 : imgs_per_tile;
        float *out_n = out->data + (size_t)n0 * g.Cout * HoWo;
        if (nimg == 1) {
            for (int oh0 = 0; oh0 < g.Ho; oh0 += rows_per_tile) {
                const int nrows = g.Ho - oh0 < rows_per_tile ? g.Ho - oh0 : rows_per_tile;
                const int cols = nrows * g.Wo;
                im2col_tile(col, x->data, &g, n0, 1, oh0, nrows, par);
                if (b) fill_bias_rows(out_n, b, &g, oh0, nrows, par);
                // out[n][Cout, rows oh0..] = weight[Cout, K] x col[K, cols]  (+ bias);
                // consecutive channels of out are Ho*Wo apart, hence ldc = HoWo
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g.Cout, cols, K,
                            1.0f, weight->data, K, col, cols,
                            b ? 1.0f : 0.0f, out_n + (size_t)oh0 * g.Wo, HoWo);
            }
        } else {
            const int cols = nimg * HoWo;
            im2col_tile(col, x->data, &g, n0, nimg, 0, g.Ho, par);
            // tmp[Cout, nimg*Ho*Wo] = weight[Cout, K] x col[K, nimg*Ho*Wo]
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, g.Cout, cols, K,
                        1.0f, weight->data, K, col, cols, 0.0f, tmp, cols);
            // tmp[co, i*HoWo + p] -> out[n0 + i, co, p], adding the bias
            #pragma omp parallel for collapse(2) schedule(static) if (par)
            for (int i = 0; i < nimg; i++)
                for (int co = 0; co < g.Cout; co++) {
                    const float *s = tmp + (size_t)co * cols + (size_t)i * HoWo;
                    float *d = out_n + ((size_t)i * g.Cout + co) * HoWo;
                    const float bv = b ? b[co] : 0.0f;
                    for (int j = 0; j < HoWo; j++) d[j] = s[j] + bv;
                }
        }
    }
    free(col);
    free(tmp);
    return DL_OK;
}

/* ================================================================== */
/* Backward                                                            */
/* ================================================================== */

/* The same geometry as the forward (x, weight, stride, padding), then dout
 * must be the forward's output shape and every gradient the shape of its
 * tensor. Gradients must not overlap inputs or each other. */
static dl_status conv2d_backward_check(const char *op, const dl_tensor *dx, const dl_tensor *dweight,
                                       const dl_tensor *dbias, const dl_tensor *dout, const dl_tensor *x,
                                       const dl_tensor *weight, int stride, int padding, conv_geom *g)
{
    DL_TRY(dl_check_shape(x, op, "x", 4, DL_SHAPE(-1, -1, -1, -1)));
    DL_TRY(dl_check_shape(weight, op, "weight", 4, DL_SHAPE(-1, x->shape[1], -1, -1)));
    if (stride < 1) return dl_fail(DL_ERR_ARG, "%s: stride is %d, must be >= 1", op, stride);
    if (padding < 0) return dl_fail(DL_ERR_ARG, "%s: padding is %d, must be >= 0", op, padding);
    g->N = (int)x->shape[0];   g->Cin = (int)x->shape[1];
    g->H = (int)x->shape[2];   g->W = (int)x->shape[3];
    g->Cout = (int)weight->shape[0];
    g->KH = (int)weight->shape[2];  g->KW = (int)weight->shape[3];
    g->stride = stride;  g->pad = padding;
    g->Ho = conv2d_out_size(g->H, g->KH, stride, padding);
    g->Wo = conv2d_out_size(g->W, g->KW, stride, padding);
    if (g->Ho < 1 || g->Wo < 1)
        return dl_fail(DL_ERR_SHAPE, "%s: kernel %dx%d does not fit input %dx%d with padding %d",
                       op, g->KH, g->KW, g->H, g->W, padding);
    DL_TRY(dl_check_shape(dout, op, "dout", 4, DL_SHAPE(g->N, g->Cout, g->Ho, g->Wo)));
    if (dx) DL_TRY(dl_check_shape(dx, op, "dx", 4, x->shape));
    if (dweight) DL_TRY(dl_check_shape(dweight, op, "dweight", 4, weight->shape));
    if (dbias) DL_TRY(dl_check_shape(dbias, op, "dbias", 1, DL_SHAPE(g->Cout)));
    const dl_tensor *grads[3] = {dx, dweight, dbias}, *ins[3] = {dout, x, weight};
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 3; j++)
            if (dl_tensors_overlap(grads[i], ins[j]))
                return dl_fail(DL_ERR_ARG, "%s: a gradient output overlaps an input; give it its own memory", op);
        for (int j = i + 1; j < 3; j++)
            if (dl_tensors_overlap(grads[i], grads[j]))
                return dl_fail(DL_ERR_ARG, "%s: two gradient outputs share memory", op);
    }
    if ((long long)g->Cin * g->KH * g->KW > INT_MAX || (long long)g->N * g->Ho * g->Wo > INT_MAX)
        return dl_fail(DL_ERR_ARG, "%s: sizes too large for BLAS int", op);
    return DL_OK;
}

/* Reference: walk the forward's loops and, for every product
 * weight * x that went into out[n, co, oh, ow], send dout[n, co, oh, ow]
 * back to both factors (the chain rule, one term at a time). */
dl_status conv2d_backward_ref(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                              const dl_tensor *x, const dl_tensor *weight, int stride, int padding)
{
    conv_geom g = {0};
    DL_TRY(conv2d_backward_check("conv2d_backward_ref", dx, dweight, dbias, dout, x, weight, stride, padding, &g));
    for (int n = 0; n < g.N; n++)
    for (int co = 0; co < g.Cout; co++)
    for (int oh = 0; oh < g.Ho; oh++)
    for (int ow = 0; ow < g.Wo; ow++) {
        const float d = dout->data[(((size_t)n * g.Cout + co) * g.Ho + oh) * g.Wo + ow];   // dL/dout
        if (dbias) dbias->data[co] += d;
        for (int ci = 0; ci < g.Cin; ci++)
        for (int kh = 0; kh < g.KH; kh++)
        for (int kw = 0; kw < g.KW; kw++) {
            int ih = oh * stride - padding + kh;
            int iw = ow * stride - padding + kw;
            if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) continue;   // padding: no input there
            size_t xi = (((size_t)n * g.Cin + ci) * g.H + ih) * g.W + iw;
            size_t wi = (((size_t)co * g.Cin + ci) * g.KH + kh) * g.KW + kw;
            if (dweight) dweight->data[wi] += d * x->data[xi];
            if (dx) dx->data[xi] += d * weight->data[wi];
        }
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Fast backward */

/* dbias[co] += sum over images and pixels of dout[n, co]. Channels are
 * independent, so they are split over the threads. */
static void conv_bias_grad(float *dbias, const float *dout, const conv_geom *g, int par)
{
    const size_t plane = (size_t)g->Ho * g->Wo;
    #pragma omp parallel for schedule(static) if (par && (size_t)g->N * g->Cout * plane >= 65536)
    for (int co = 0; co < g->Cout; co++) {
        float total = 0.0f;
        for (int n = 0; n < g->N; n++) {
            const float *d = dout + ((size_t)n * g->Cout + co) * plane;   // dout[n, co]
            float s = 0.0f;
            #pragma omp simd reduction(+:s)
            for (size_t j = 0; j < plane; j++) s += d[j];
            total += s;
        }
        dbias[co] += total;
    }
}

/* The adjoint of im2col_tile: add every entry of dcol[K, nimg*nrows*Wo]
 * back onto the input pixel it was copied from (columns that read padding
 * add nothing). Entries of different rows k = (ci, kh, kw) can land on the
 * same pixel, but only within the same channel ci and image, so the
 * (image, channel) pairs are split over the threads: no two threads ever
 * write the same pixel. */
static void col2im_tile_add(float *dx, const float *dcol, const conv_geom *g,
                            int n0, int nimg, int oh0, int nrows, int par)
{
    const int s = g->stride, p = g->pad, W = g->W, Wo = g->Wo, KH = g->KH, KW = g->KW;
    const size_t cols = (size_t)nimg * nrows * Wo;
    #pragma omp parallel for collapse(2) schedule(static) if (par)
    for (int i = 0; i < nimg; i++)
    for (int ci = 0; ci < g->Cin; ci++) {
        float *plane = dx + ((size_t)(n0 + i) * g->Cin + ci) * g->H * W;   // dx[n, ci]
        for (int kh = 0; kh < KH; kh++)
        for (int kw = 0; kw < KW; kw++) {
            const int k = (ci * KH + kh) * KW + kw;
            // output columns ow in [lo, hi) read inside the image (as in im2col_tile)
            int lo = p - kw <= 0 ? 0 : (p - kw + s - 1) / s;
            int hi = W + p - kw <= 0 ? 0 : (W + p - kw + s - 1) / s;
            if (lo > Wo) lo = Wo;
            if (hi > Wo) hi = Wo;
            if (hi <= lo) continue;                 // this tap only ever reads padding
            for (int r = 0; r < nrows; r++) {
                const int ih = (oh0 + r) * s - p + kh;
                if (ih < 0 || ih >= g->H) continue;
                const float *src = dcol + (size_t)k * cols + ((size_t)i * nrows + r) * Wo;
                float *d = plane + (size_t)ih * W + (lo * s - p + kw);   // dx[ih, iw(lo)]
                if (s == 1) for (int t = 0; t < hi - lo; t++) d[t] += src[lo + t];
                else        for (int t = 0; t < hi - lo; t++) d[(size_t)t * s] += src[lo + t];
            }
        }
    }
}

/* 1x1, stride 1, no padding, images n_begin .. n_end-1: x[n] viewed as
 * [Cin, H*W] already is col, and dx[n] as [Cin, H*W] is dcol, so both
 * gradients are plain sgemms. */
static void conv1x1_backward(float *dx, float *dw, const float *dout, const float *x, const float *w,
                             const conv_geom *g, int n_begin, int n_end)
{
    const int HW = g->H * g->W;
    for (int n = n_begin; n < n_end; n++) {
        const float *dout_n = dout + (size_t)n * g->Cout * HW;
        // dw[Cout, Cin] += dout[n][Cout, HW] x x[n][Cin, HW]^T
        if (dw)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->Cout, g->Cin, HW,
                        1.0f, dout_n, HW, x + (size_t)n * g->Cin * HW, HW, 1.0f, dw, g->Cin);
        // dx[n][Cin, HW] += w[Cout, Cin]^T x dout[n][Cout, HW]
        if (dx)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, g->Cin, HW, g->Cout,
                        1.0f, w, g->Cin, dout_n, HW, 1.0f, dx + (size_t)n * g->Cin * HW, HW);
    }
}

/* Tile plan shared by the two parallel strategies: the forward's tiles, as
 * many columns as CONV2D_WORKSPACE_FLOATS allows, at least
 * CONV2D_MIN_TILE_COLS and at least one output row; small images grouped
 * several to a tile. */
typedef struct { int imgs_per_tile, rows_per_tile; size_t tile_cols; } conv_tiles;

static conv_tiles conv_plan_tiles(const conv_geom *g, int max_imgs)
{
    const int K = g->Cin * g->KH * g->KW, HoWo = g->Ho * g->Wo;
    size_t want_cols = CONV2D_WORKSPACE_FLOATS / (size_t)K;
    if (want_cols < CONV2D_MIN_TILE_COLS) want_cols = CONV2D_MIN_TILE_COLS;
    conv_tiles t = {1, g->Ho, 0};
    if (HoWo < CONV2D_MIN_TILE_COLS) {
        size_t n = want_cols / (size_t)HoWo;
        t.imgs_per_tile = n > (size_t)max_imgs ? max_imgs : (int)n;
    } else if ((size_t)HoWo > want_cols) {
        size_t r = want_cols / (size_t)g->Wo;
        t.rows_per_tile = r < 1 ? 1 : (int)r;
        int ntiles = (g->Ho + t.rows_per_tile - 1) / t.rows_per_tile;
        t.rows_per_tile = (g->Ho + ntiles - 1) / ntiles;
    }
    t.tile_cols = (size_t)t.imgs_per_tile * t.rows_per_tile * g->Wo;
    return t;
}

/* dx and dw (either may be NULL) for images n_begin .. n_end-1, tile by
 * tile. col [K, tile_cols] holds im2col(x) for dw, then dcol for dx; dtile
 * [Cout, tile_cols] (grouped images only) holds dout of the tile's images
 * side by side. par: may the copies use OpenMP threads. */
static void conv_backward_tiles(float *dx, float *dw, const float *dout, const float *x, const float *w,
                                const conv_geom *g, const conv_tiles *t, int n_begin, int n_end,
                                float *col, float *dtile, int par)
{
    const int K = g->Cin * g->KH * g->KW, HoWo = g->Ho * g->Wo;
    for (int n0 = n_begin; n0 < n_end; n0 += t->imgs_per_tile) {
        const int nimg = n_end - n0 < t->imgs_per_tile ? n_end - n0 : t->imgs_per_tile;
        const float *dout_n = dout + (size_t)n0 * g->Cout * HoWo;
        for (int oh0 = 0; oh0 < g->Ho; oh0 += t->rows_per_tile) {
            const int nrows = g->Ho - oh0 < t->rows_per_tile ? g->Ho - oh0 : t->rows_per_tile;
            const int cols = nimg * nrows * g->Wo;
            // dmat [Cout, cols] with row stride ld: the tile of dout
            const float *dmat;
            int ld;
            if (nimg == 1) {                       // read in place: rows of channels are HoWo apart
                dmat = dout_n + (size_t)oh0 * g->Wo;
                ld = HoWo;
            } else {                               // dtile[co, i*HoWo + p] = dout[n0 + i, co, p]
                #pragma omp parallel for collapse(2) schedule(static) if (par)
                for (int co = 0; co < g->Cout; co++)
                    for (int i = 0; i < nimg; i++)
                        memcpy(dtile + (size_t)co * cols + (size_t)i * HoWo,
                               dout_n + ((size_t)i * g->Cout + co) * HoWo, sizeof(float) * HoWo);
                dmat = dtile;
                ld = cols;
            }
            if (dw) {
                im2col_tile(col, x, g, n0, nimg, oh0, nrows, par);
                // dw[Cout, K] += dmat[Cout, cols] x col[K, cols]^T
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, g->Cout, K, cols,
                            1.0f, dmat, ld, col, cols, 1.0f, dw, K);
            }
            if (dx) {
                // dcol[K, cols] = w[Cout, K]^T x dmat[Cout, cols]
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, cols, g->Cout,
                            1.0f, w, K, dmat, ld, 0.0f, col, cols);
                col2im_tile_add(dx, col, g, n0, nimg, oh0, nrows, par);
            }
        }
    }
}

/* Two ways to use the threads:
 *  - many images (N >= 2 x threads, e.g. a training batch of 64): each
 *    thread takes a contiguous range of images and runs the whole tile loop
 *    on it with single-threaded BLAS, its own col / dtile buffers and its
 *    own dweight partial (added up at the end in thread order). No
 *    fork/join per tile, and im2col / col2im run fully in parallel.
 *  - few big images (SD: batch 2 at 64x64): one tile after another, each
 *    sgemm threaded by OpenBLAS and the copies by OpenMP (as the forward).
 * The scratch memory is allocated up front (so a failure leaves the
 * gradients untouched) and freed before returning. */
dl_status conv2d_backward(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                          const dl_tensor *x, const dl_tensor *weight, int stride, int padding)
{
    conv_geom g = {0};
    DL_TRY(conv2d_backward_check("conv2d_backward", dx, dweight, dbias, dout, x, weight, stride, padding, &g));
    const int par = dl_parallel_ok();
    if (dbias) conv_bias_grad(dbias->data, dout->data, &g, par);
    if (!dx && !dweight) return DL_OK;
    float *dxd = dx ? dx->data : NULL, *dwd = dweight ? dweight->data : NULL;
    if (g_direct_enabled && conv2d_direct_applies(g.N, g.Cin, g.H, g.W, g.Cout, g.KH, g.KW, stride, padding))
        return conv2d_direct_backward(dxd, dwd, dout->data, x->data, weight->data, g.N, g.Cin, g.H, g.W, g.Cout,
                                      g.KH, g.KW, stride, padding, 0);
    const int K = g.Cin * g.KH * g.KW;
    const int is1x1 = g.KH == 1 && g.KW == 1 && stride == 1 && padding == 0;
    int threads = dl_get_threads();
    if (threads < 1) threads = 1;
    const int split = threads > 1 && g.N >= 2 * threads;

    if (!split) {
        if (is1x1) {
            conv1x1_backward(dxd, dwd, dout->data, x->data, weight->data, &g, 0, g.N);
            return DL_OK;
        }
        const conv_tiles t = conv_plan_tiles(&g, g.N);
        float *col = malloc(sizeof(float) * (size_t)K * t.tile_cols);
        float *dtile = t.imgs_per_tile > 1 ? malloc(sizeof(float) * (size_t)g.Cout * t.tile_cols) : NULL;
        if (!col || (t.imgs_per_tile > 1 && !dtile)) {
            free(col);
            free(dtile);
            return dl_fail(DL_ERR_MEMORY, "conv2d_backward: cannot allocate the %zu MiB im2col workspace",
                           (sizeof(float) * (size_t)K * t.tile_cols) >> 20);
        }
        // Copies and scatters of small tiles stay on one thread: waking the
        // team costs more than the copy.
        const int par_tile = par && (size_t)K * t.tile_cols >= 32768;
        conv_backward_tiles(dxd, dwd, dout->data, x->data, weight->data, &g, &t, 0, g.N, col, dtile, par_tile);
        free(col);
        free(dtile);
        return DL_OK;
    }

    // Split mode: per thread [col K x tile_cols | dtile Cout x tile_cols | dw partial Cout x K]
    const int per_range = (g.N + threads - 1) / threads;
    const conv_tiles t = conv_plan_tiles(&g, per_range);
    const size_t n_col = is1x1 ? 0 : (size_t)K * t.tile_cols;
    const size_t n_dtile = is1x1 || t.imgs_per_tile == 1 ? 0 : (size_t)g.Cout * t.tile_cols;
    const size_t n_dw = dwd ? (size_t)g.Cout * K : 0;
    const size_t per_thread = n_col + n_dtile + n_dw;
    float *scratch = per_thread ? malloc(sizeof(float) * per_thread * (size_t)threads) : NULL;
    if (per_thread && !scratch)
        return dl_fail(DL_ERR_MEMORY, "conv2d_backward: cannot allocate %d x %zu MiB of workspace", threads,
                       (sizeof(float) * per_thread) >> 20);
    for (int tid = 0; tid < threads && n_dw; tid++)
        memset(scratch + (size_t)tid * per_thread + n_col + n_dtile, 0, sizeof(float) * n_dw);
    const int blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(1);
    #pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const int tid = omp_get_thread_num();
#else
        const int tid = 0;
#endif
        float *mine = scratch ? scratch + (size_t)tid * per_thread : NULL;
        float *col = n_col ? mine : NULL, *dtile = n_dtile ? mine + n_col : NULL;
        float *dw_part = n_dw ? mine + n_col + n_dtile : NULL;
        // range r = images [r*per_range, (r+1)*per_range) (the last ones may be
        // shorter or empty); one range per thread, unless OpenMP gave us a
        // smaller team
        #pragma omp for schedule(static, 1)
        for (int r = 0; r < threads; r++) {
            const int n_begin = r * per_range < g.N ? r * per_range : g.N;
            const int n_end = n_begin + per_range < g.N ? n_begin + per_range : g.N;
            if (is1x1) conv1x1_backward(dxd, dw_part, dout->data, x->data, weight->data, &g, n_begin, n_end);
            else conv_backward_tiles(dxd, dw_part, dout->data, x->data, weight->data, &g, &t, n_begin, n_end,
                                     col, dtile, 0);
        }
    }
    openblas_set_num_threads(blas_threads);
    if (n_dw) {
        // dweight += the partials, in thread order (same result on every run)
        const size_t m = n_dw;
        #pragma omp parallel for schedule(static) if (m >= 65536)
        for (size_t i = 0; i < m; i++) {
            float sum = 0.0f;
            for (int tid = 0; tid < threads; tid++) sum += scratch[(size_t)tid * per_thread + n_col + n_dtile + i];
            dwd[i] += sum;
        }
    }
    free(scratch);
    return DL_OK;
}

/* dx is written, not added to. The direct kernels write it in place; the
 * im2col + sgemm paths add into a zeroed dx. */
dl_status conv2d_backward_set_dx(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                                 const dl_tensor *x, const dl_tensor *weight, int stride, int padding)
{
    conv_geom g = {0};
    DL_TRY(conv2d_backward_check("conv2d_backward_set_dx", dx, dweight, dbias, dout, x, weight, stride, padding, &g));
    if (dx && g_direct_enabled && conv2d_direct_applies(g.N, g.Cin, g.H, g.W, g.Cout, g.KH, g.KW, stride, padding)) {
        if (dbias) conv_bias_grad(dbias->data, dout->data, &g, dl_parallel_ok());
        return conv2d_direct_backward(dx->data, dweight ? dweight->data : NULL, dout->data, x->data, weight->data,
                                      g.N, g.Cin, g.H, g.W, g.Cout, g.KH, g.KW, stride, padding, 1);
    }
    if (dx) dl_tensor_zero(dx);
    return conv2d_backward(dx, dweight, dbias, dout, x, weight, stride, padding);
}

/* ------------------------------------------------------------------ */
/* Fused: out = conv(x) + bias + bias_n[n] + res. */

static dl_status fused_check(const char *op, const dl_tensor *out, const dl_tensor *bias_n, const dl_tensor *res)
{
    if (bias_n) DL_TRY(dl_check_shape(bias_n, op, "bias_n", 2, DL_SHAPE(out->shape[0], out->shape[1])));
    if (res) DL_TRY(dl_check_shape(res, op, "res", 4, out->shape));
    if (dl_tensors_overlap(out, bias_n) || dl_tensors_overlap(out, res))
        return dl_fail(DL_ERR_ARG, "%s: out overlaps bias_n or res; give it its own memory", op);
    return DL_OK;
}

/* out[n, co] += bias_n[n, co] + res[n, co] (either may be NULL), plane by plane. */
static void add_extras(dl_tensor *out, const dl_tensor *bias_n, const dl_tensor *res)
{
    const int64_t NC = out->shape[0] * out->shape[1], P = out->shape[2] * out->shape[3];
    #pragma omp parallel for schedule(static) if (dl_parallel_ok() && NC * P >= 65536)
    for (int64_t nc = 0; nc < NC; nc++) {
        float *o = out->data + nc * P;
        const float bn = bias_n ? bias_n->data[nc] : 0.0f;      /* bias_n [N, Cout]: index n*Cout + co = nc */
        const float *r = res ? res->data + nc * P : NULL;
        for (int64_t i = 0; i < P; i++) o[i] += bn + (r ? r[i] : 0.0f);
    }
}

dl_status conv2d_forward_fused_ref(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight, const dl_tensor *bias,
                                   const dl_tensor *bias_n, const dl_tensor *res, int stride, int padding)
{
    DL_TRY(conv2d_forward_ref(out, x, weight, bias, stride, padding));
    DL_TRY(fused_check("conv2d_fused_ref", out, bias_n, res));
    add_extras(out, bias_n, res);
    return DL_OK;
}

dl_status conv2d_forward_fused(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight, const dl_tensor *bias,
                               const dl_tensor *bias_n, const dl_tensor *res, int stride, int padding)
{
    conv_geom g = {0};
    DL_TRY(conv2d_check("conv2d_fused", out, x, weight, bias, stride, padding, &g));
    DL_TRY(fused_check("conv2d_fused", out, bias_n, res));
    if (g_direct_enabled && conv2d_direct_applies(g.N, g.Cin, g.H, g.W, g.Cout, g.KH, g.KW, stride, padding))
        return conv2d_direct_forward(out->data, x->data, weight->data, bias ? bias->data : NULL,
                                     bias_n ? bias_n->data : NULL, res ? res->data : NULL,
                                     g.N, g.Cin, g.H, g.W, g.Cout, g.KH, g.KW, stride, padding);
    DL_TRY(conv2d_forward(out, x, weight, bias, stride, padding));
    add_extras(out, bias_n, res);
    return DL_OK;
}
