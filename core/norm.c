/* norm.c - see norm.h */
#include "norm.h"

#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* weight / bias: NULL or [C] */
static dl_status check_affine(const char *op, const dl_tensor *weight, const dl_tensor *bias, int64_t C)
{
    if (weight) DL_TRY(dl_check_shape(weight, op, "weight", 1, DL_SHAPE(C)));
    if (bias) DL_TRY(dl_check_shape(bias, op, "bias", 1, DL_SHAPE(C)));
    return DL_OK;
}

dl_status group_norm_check_args(const char *op, const dl_tensor *x, const dl_tensor *weight, const dl_tensor *bias,
                                int groups, float eps)
{
    if (!x || !x->data) return dl_fail(DL_ERR_ARG, "%s: x is missing (NULL tensor)", op);
    if (x->ndim < 2) {
        char s[64];
        return dl_fail(DL_ERR_SHAPE, "%s: x has shape %s, expected [N, C, ...] with 2 to 4 dims",
                       op, dl_shape_str(x, s, sizeof s));
    }
    int64_t C = x->shape[1];
    if (groups < 1 || C % groups != 0)
        return dl_fail(DL_ERR_ARG, "%s: %lld channels cannot be split into %d equal groups",
                       op, (long long)C, groups);
    if (!(eps >= 0.0f)) return dl_fail(DL_ERR_ARG, "%s: eps %g must be >= 0", op, (double)eps);
    return check_affine(op, weight, bias, C);
}

static dl_status check_group_norm(const dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                                  const dl_tensor *bias, int groups, float eps)
{
    DL_TRY(group_norm_check_args("group_norm", x, weight, bias, groups, eps));
    return dl_check_shape(out, "group_norm", "out", x->ndim, x->shape);
}

static dl_status check_layer_norm(const dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                                  const dl_tensor *bias, float eps)
{
    const char *op = "layer_norm";
    if (!x || !x->data) return dl_fail(DL_ERR_ARG, "%s: x is missing (NULL tensor)", op);
    if (!(eps >= 0.0f)) return dl_fail(DL_ERR_ARG, "%s: eps %g must be >= 0", op, (double)eps);
    DL_TRY(check_affine(op, weight, bias, x->shape[x->ndim - 1]));
    return dl_check_shape(out, op, "out", x->ndim, x->shape);
}

/* ------------------------------------------------------------------ */
/* Reference: two passes (mean, then variance around the mean) per group. */

dl_status group_norm_forward_ref(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                                 const dl_tensor *bias, int groups, float eps)
{
    DL_TRY(check_group_norm(out, x, weight, bias, groups, eps));
    int64_t N = x->shape[0], C = x->shape[1];
    int64_t S = x->numel / (N * C);             /* pixels per channel (H*W) */
    int64_t Cg = C / groups;                    /* channels per group */
    int64_t count = Cg * S;                     /* values per (n, group) */
    for (int64_t n = 0; n < N; n++) {
        for (int64_t g = 0; g < groups; g++) {
            /* the group is one contiguous block: channels g*Cg .. g*Cg+Cg-1 */
            const float *xg = x->data + (n * C + g * Cg) * S;
            float *yg = out->data + (n * C + g * Cg) * S;
            double sum = 0.0;
            for (int64_t i = 0; i < count; i++) sum += xg[i];
            double mean = sum / (double)count;
            double sq = 0.0;
            for (int64_t i = 0; i < count; i++) sq += (xg[i] - mean) * (xg[i] - mean);
            double var = sq / (double)count;    /* biased, like PyTorch */
            float rstd = (float)(1.0 / sqrt(var + (double)eps));
            for (int64_t c = 0; c < Cg; c++) {
                int64_t ch = g * Cg + c;
                float w = weight ? weight->data[ch] : 1.0f;
                float b = bias ? bias->data[ch] : 0.0f;
                for (int64_t s = 0; s < S; s++)
                    yg[c * S + s] = (xg[c * S + s] - (float)mean) * rstd * w + b;
            }
        }
    }
    return DL_OK;
}

dl_status layer_norm_forward_ref(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                                 const dl_tensor *bias, float eps)
{
    DL_TRY(check_layer_norm(out, x, weight, bias, eps));
    int64_t C = x->shape[x->ndim - 1];
    int64_t rows = x->numel / C;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x->data + r * C;
        float *yr = out->data + r * C;
        double sum = 0.0;
        for (int64_t c = 0; c < C; c++) sum += xr[c];
        double mean = sum / (double)C;
        double sq = 0.0;
        for (int64_t c = 0; c < C; c++) sq += (xr[c] - mean) * (xr[c] - mean);
        float rstd = (float)(1.0 / sqrt(sq / (double)C + (double)eps));
        for (int64_t c = 0; c < C; c++) {
            float w = weight ? weight->data[c] : 1.0f;
            float b = bias ? bias->data[c] : 0.0f;
            yr[c] = (xr[c] - (float)mean) * rstd * w + b;
        }
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Fast: ONE reading pass for the statistics. Summing x and x^2 directly
 * would cancel catastrophically when |mean| >> std, so we sum d = x - x0
 * around a sample x0 of the data (the "shifted data" method):
 *     mean = x0 + sum(d) / n,   var = sum(d^2) / n - (sum(d) / n)^2
 * Speed: a single running sum is a chain of dependent additions (one per
 * vector, each waiting for the last); MOMENT_WAYS independent float sums
 * of MOMENT_LANES lanes keep the adder busy. Blocks of MOMENT_BLOCK values
 * are summed in float (at most MOMENT_BLOCK / (ways x lanes) = 64 terms
 * per partial sum), the blocks in double. */
#define MOMENT_LANES 16
#define MOMENT_WAYS 4
#define MOMENT_BLOCK 4096
void norm_shifted_moments(const float *x, int64_t n, double *mean, double *var)
{
    const float x0 = x[0];
    double s = 0.0, ss = 0.0;
    for (int64_t b0 = 0; b0 < n; b0 += MOMENT_BLOCK) {
        const int64_t len = n - b0 < MOMENT_BLOCK ? n - b0 : MOMENT_BLOCK;
        const float *xb = x + b0;
        float ps[MOMENT_WAYS][MOMENT_LANES] = {{0}}, pss[MOMENT_WAYS][MOMENT_LANES] = {{0}};
        int64_t i = 0;
        for (; i + MOMENT_WAYS * MOMENT_LANES <= len; i += MOMENT_WAYS * MOMENT_LANES)
            for (int w = 0; w < MOMENT_WAYS; w++)
                for (int l = 0; l < MOMENT_LANES; l++) {
                    const float d = xb[i + w * MOMENT_LANES + l] - x0;
                    ps[w][l] += d;
                    pss[w][l] += d * d;
                }
        float fs = 0.0f, fss = 0.0f;
        for (; i < len; i++) {
            const float d = xb[i] - x0;
            fs += d;
            fss += d * d;
        }
        for (int w = 0; w < MOMENT_WAYS; w++)
            for (int l = 0; l < MOMENT_LANES; l++) { fs += ps[w][l]; fss += pss[w][l]; }
        s += fs;
        ss += fss;
    }
    double m = s / (double)n;
    double v = ss / (double)n - m * m;
    *mean = (double)x0 + m;
    *var = v > 0.0 ? v : 0.0;
}

dl_status group_norm_forward(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                             const dl_tensor *bias, int groups, float eps)
{
    DL_TRY(check_group_norm(out, x, weight, bias, groups, eps));
    int64_t N = x->shape[0], C = x->shape[1];
    int64_t S = x->numel / (N * C);
    int64_t Cg = C / groups;
    const float *wd = weight ? weight->data : NULL, *bd = bias ? bias->data : NULL;

    /* One task per (n, group): 2 x 32 = 64 tasks for an SD batch of 2. */
    #pragma omp parallel for schedule(static) if (x->numel >= 32768)
    for (int64_t task = 0; task < N * groups; task++) {
        int64_t n = task / groups, g = task % groups;
        const float *xg = x->data + (n * C + g * Cg) * S;
        float *yg = out->data + (n * C + g * Cg) * S;
        double mean, var;
        norm_shifted_moments(xg, Cg * S, &mean, &var);
        float rstd = (float)(1.0 / sqrt(var + (double)eps));
        float m = (float)mean;
        for (int64_t c = 0; c < Cg; c++) {
            int64_t ch = g * Cg + c;
            /* y = (x - mean) * s + b with s = rstd * w[c]. Subtracting the
             * mean first (rather than folding it into b) keeps precision
             * when |mean| >> std. */
            float s = rstd * (wd ? wd[ch] : 1.0f);
            float b = bd ? bd[ch] : 0.0f;
            const float *xc = xg + c * S;
            float *yc = yg + c * S;
            #pragma omp simd
            for (int64_t i = 0; i < S; i++) yc[i] = (xc[i] - m) * s + b;
        }
    }
    return DL_OK;
}

dl_status layer_norm_forward(dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                             const dl_tensor *bias, float eps)
{
    DL_TRY(check_layer_norm(out, x, weight, bias, eps));
    int64_t C = x->shape[x->ndim - 1];
    int64_t rows = x->numel / C;
    const float *wd = weight ? weight->data : NULL, *bd = bias ? bias->data : NULL;

    #pragma omp parallel for schedule(static) if (x->numel >= 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x->data + r * C;
        float *yr = out->data + r * C;
        double mean, var;
        norm_shifted_moments(xr, C, &mean, &var);
        float rstd = (float)(1.0 / sqrt(var + (double)eps));
        float m = (float)mean;
        if (wd && bd) {
            #pragma omp simd
            for (int64_t c = 0; c < C; c++) yr[c] = (xr[c] - m) * rstd * wd[c] + bd[c];
        } else {
            for (int64_t c = 0; c < C; c++)
                yr[c] = (xr[c] - m) * rstd * (wd ? wd[c] : 1.0f) + (bd ? bd[c] : 0.0f);
        }
    }
    return DL_OK;
}

/* ================================================================== */
/* Backward                                                            */
/* ================================================================== */

/* The forward's checks (dout plays out's role), then the gradients:
 * dx like x, dweight / dbias [C], none overlapping an input or another. */
static dl_status check_norm_grads(const char *op, const dl_tensor *dx, const dl_tensor *dweight,
                                  const dl_tensor *dbias, const dl_tensor *dout, const dl_tensor *x,
                                  const dl_tensor *weight, int64_t C)
{
    DL_TRY(dl_check_shape(dout, op, "dout", x->ndim, x->shape));
    if (dx) DL_TRY(dl_check_shape(dx, op, "dx", x->ndim, x->shape));
    if (dweight) DL_TRY(dl_check_shape(dweight, op, "dweight", 1, DL_SHAPE(C)));
    if (dbias) DL_TRY(dl_check_shape(dbias, op, "dbias", 1, DL_SHAPE(C)));
    const dl_tensor *grads[3] = {dx, dweight, dbias}, *ins[3] = {dout, x, weight};
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 3; j++)
            if (dl_tensors_overlap(grads[i], ins[j]))
                return dl_fail(DL_ERR_ARG, "%s: a gradient output overlaps an input; give it its own memory", op);
        for (int j = i + 1; j < 3; j++)
            if (dl_tensors_overlap(grads[i], grads[j]))
                return dl_fail(DL_ERR_ARG, "%s: two gradient outputs share memory", op);
    }
    return DL_OK;
}

static dl_status check_group_norm_backward(const char *op, const dl_tensor *dx, const dl_tensor *dweight,
                                           const dl_tensor *dbias, const dl_tensor *dout, const dl_tensor *x,
                                           const dl_tensor *weight, int groups, float eps)
{
    if (!x || !x->data) return dl_fail(DL_ERR_ARG, "%s: x is missing (NULL tensor)", op);
    /* the forward's checks with x as a stand-in for out (its shape is what out must have) */
    DL_TRY(check_group_norm(x, x, weight, NULL, groups, eps));
    return check_norm_grads(op, dx, dweight, dbias, dout, x, weight, x->shape[1]);
}

static dl_status check_layer_norm_backward(const char *op, const dl_tensor *dx, const dl_tensor *dweight,
                                           const dl_tensor *dbias, const dl_tensor *dout, const dl_tensor *x,
                                           const dl_tensor *weight, float eps)
{
    if (!x || !x->data) return dl_fail(DL_ERR_ARG, "%s: x is missing (NULL tensor)", op);
    DL_TRY(check_layer_norm(x, x, weight, NULL, eps));
    return check_norm_grads(op, dx, dweight, dbias, dout, x, weight, x->shape[x->ndim - 1]);
}

/* ------------------------------------------------------------------ */
/* Reference: statistics as in the forward reference, sums in double. */

dl_status group_norm_backward_ref(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                                  const dl_tensor *x, const dl_tensor *weight, int groups, float eps)
{
    DL_TRY(check_group_norm_backward("group_norm_backward_ref", dx, dweight, dbias, dout, x, weight, groups, eps));
    int64_t N = x->shape[0], C = x->shape[1];
    int64_t S = x->numel / (N * C);             /* pixels per channel */
    int64_t Cg = C / groups;
    int64_t count = Cg * S;                     /* values per (n, group) */
    for (int64_t n = 0; n < N; n++) {
        for (int64_t g = 0; g < groups; g++) {
            const float *xg = x->data + (n * C + g * Cg) * S;      /* [Cg, S] */
            const float *dyg = dout->data + (n * C + g * Cg) * S;  /* [Cg, S] */
            double sum = 0.0;
            for (int64_t i = 0; i < count; i++) sum += xg[i];
            double mean = sum / (double)count;
            double sq = 0.0;
            for (int64_t i = 0; i < count; i++) sq += (xg[i] - mean) * (xg[i] - mean);
            double rstd = 1.0 / sqrt(sq / (double)count + (double)eps);
            /* mean of gw = dout * weight and of gw * xhat over the group */
            double mg = 0.0, mgx = 0.0;
            for (int64_t c = 0; c < Cg; c++) {
                int64_t ch = g * Cg + c;
                double w = weight ? weight->data[ch] : 1.0;
                for (int64_t s = 0; s < S; s++) {
                    double xhat = (xg[c * S + s] - mean) * rstd;
                    double dy = dyg[c * S + s];
                    mg += dy * w;
                    mgx += dy * w * xhat;
                    if (dweight) dweight->data[ch] += (float)(dy * xhat);
                    if (dbias) dbias->data[ch] += (float)dy;
                }
            }
            mg /= (double)count;
            mgx /= (double)count;
            if (!dx) continue;
            for (int64_t c = 0; c < Cg; c++) {
                int64_t ch = g * Cg + c;
                double w = weight ? weight->data[ch] : 1.0;
                for (int64_t s = 0; s < S; s++) {
                    double xhat = (xg[c * S + s] - mean) * rstd;
                    double gw = dyg[c * S + s] * w;
                    dx->data[(n * C + ch) * S + s] += (float)(rstd * (gw - mg - xhat * mgx));
                }
            }
        }
    }
    return DL_OK;
}

dl_status layer_norm_backward_ref(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                                  const dl_tensor *x, const dl_tensor *weight, float eps)
{
    DL_TRY(check_layer_norm_backward("layer_norm_backward_ref", dx, dweight, dbias, dout, x, weight, eps));
    int64_t C = x->shape[x->ndim - 1];
    int64_t rows = x->numel / C;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x->data + r * C;       /* [C] */
        const float *dyr = dout->data + r * C;   /* [C] */
        double sum = 0.0;
        for (int64_t c = 0; c < C; c++) sum += xr[c];
        double mean = sum / (double)C;
        double sq = 0.0;
        for (int64_t c = 0; c < C; c++) sq += (xr[c] - mean) * (xr[c] - mean);
        double rstd = 1.0 / sqrt(sq / (double)C + (double)eps);
        double mg = 0.0, mgx = 0.0;
        for (int64_t c = 0; c < C; c++) {
            double xhat = (xr[c] - mean) * rstd;
            double gw = dyr[c] * (weight ? weight->data[c] : 1.0);
            mg += gw;
            mgx += gw * xhat;
            if (dweight) dweight->data[c] += (float)(dyr[c] * xhat);
            if (dbias) dbias->data[c] += dyr[c];
        }
        mg /= (double)C;
        mgx /= (double)C;
        if (!dx) continue;
        for (int64_t c = 0; c < C; c++) {
            double xhat = (xr[c] - mean) * rstd;
            double gw = dyr[c] * (weight ? weight->data[c] : 1.0);
            dx->data[r * C + c] += (float)(rstd * (gw - mg - xhat * mgx));
        }
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Fast backward */

dl_status group_norm_backward(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                              const dl_tensor *x, const dl_tensor *weight, int groups, float eps)
{
    DL_TRY(check_group_norm_backward("group_norm_backward", dx, dweight, dbias, dout, x, weight, groups, eps));
    if (!dx && !dweight && !dbias) return DL_OK;
    int64_t N = x->shape[0], C = x->shape[1];
    int64_t S = x->numel / (N * C);
    int64_t Cg = C / groups;
    const float *wd = weight ? weight->data : NULL;
    /* part[n, c] = (sum of dout, sum of dout * xhat) over the pixels of
     * x[n, c]: each (n, group) task writes only its own channels, and the
     * sums over n are taken afterwards, channel by channel. */
    float *part = (dweight || dbias) ? malloc(sizeof(float) * 2 * (size_t)(N * C)) : NULL;
    if ((dweight || dbias) && !part)
        return dl_fail(DL_ERR_MEMORY, "group_norm_backward: cannot allocate %lld floats of scratch",
                       (long long)(2 * N * C));

    #pragma omp parallel for schedule(static) if (x->numel >= 32768)
    for (int64_t task = 0; task < N * groups; task++) {
        int64_t n = task / groups, g = task % groups;
        const float *xg = x->data + (n * C + g * Cg) * S;
        const float *dyg = dout->data + (n * C + g * Cg) * S;
        double mean, var;
        norm_shifted_moments(xg, Cg * S, &mean, &var);
        const float rstd = (float)(1.0 / sqrt(var + (double)eps)), m = (float)mean;
        /* pass 1: per channel sum(dy) and sum(dy * xhat); the group means of
         * g = dy * w and g * xhat follow from them (w is constant per channel) */
        double mg = 0.0, mgx = 0.0;
        for (int64_t c = 0; c < Cg; c++) {
            const float *xc = xg + c * S, *dyc = dyg + c * S;
            float s1 = 0.0f, s2 = 0.0f;
            #pragma omp simd reduction(+:s1, s2)
            for (int64_t i = 0; i < S; i++) {
                s1 += dyc[i];
                s2 += dyc[i] * ((xc[i] - m) * rstd);
            }
            const float w = wd ? wd[g * Cg + c] : 1.0f;
            mg += (double)w * s1;
            mgx += (double)w * s2;
            if (part) {
                part[2 * (n * C + g * Cg + c)] = s1;
                part[2 * (n * C + g * Cg + c) + 1] = s2;
            }
        }
        if (!dx) continue;
        const float a = (float)(mg / (double)(Cg * S)), b = (float)(mgx / (double)(Cg * S));
        /* pass 2: dx += rstd * (dy * w - a - xhat * b) */
        for (int64_t c = 0; c < Cg; c++) {
            const float *xc = xg + c * S, *dyc = dyg + c * S;
            float *dxc = dx->data + (n * C + g * Cg + c) * S;
            const float w = wd ? wd[g * Cg + c] : 1.0f;
            #pragma omp simd
            for (int64_t i = 0; i < S; i++) {
                const float xhat = (xc[i] - m) * rstd;
                dxc[i] += rstd * (dyc[i] * w - a - xhat * b);
            }
        }
    }
    if (part) {
        for (int64_t c = 0; c < C; c++) {
            float s1 = 0.0f, s2 = 0.0f;
            for (int64_t n = 0; n < N; n++) {
                s1 += part[2 * (n * C + c)];
                s2 += part[2 * (n * C + c) + 1];
            }
            if (dbias) dbias->data[c] += s1;
            if (dweight) dweight->data[c] += s2;
        }
        free(part);
    }
    return DL_OK;
}

dl_status layer_norm_backward(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *dout,
                              const dl_tensor *x, const dl_tensor *weight, float eps)
{
    DL_TRY(check_layer_norm_backward("layer_norm_backward", dx, dweight, dbias, dout, x, weight, eps));
    int64_t C = x->shape[x->ndim - 1];
    int64_t rows = x->numel / C;
    const float *wd = weight ? weight->data : NULL;
    const int par = x->numel >= 32768;
#ifdef _OPENMP
    const int nthreads = par ? omp_get_max_threads() : 1;
#else
    const int nthreads = 1;
#endif
    /* part[t] = [sum dout, sum dout * xhat] per channel, [2, C], one per thread */
    float *part = (dweight || dbias) ? calloc((size_t)nthreads * 2 * (size_t)C, sizeof(float)) : NULL;
    if ((dweight || dbias) && !part)
        return dl_fail(DL_ERR_MEMORY, "layer_norm_backward: cannot allocate %lld floats of scratch",
                       (long long)(2 * nthreads * C));

    #pragma omp parallel num_threads(nthreads) if (par)
    {
#ifdef _OPENMP
        float *mine = part ? part + (size_t)omp_get_thread_num() * 2 * C : NULL;
#else
        float *mine = part;
#endif
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const float *xr = x->data + r * C, *dyr = dout->data + r * C;
            double mean, var;
            norm_shifted_moments(xr, C, &mean, &var);
            const float rstd = (float)(1.0 / sqrt(var + (double)eps)), m = (float)mean;
            float sg = 0.0f, sgx = 0.0f;          /* sums of g = dy * w and of g * xhat */
            for (int64_t c = 0; c < C; c++) {
                const float xhat = (xr[c] - m) * rstd;
                const float gw = dyr[c] * (wd ? wd[c] : 1.0f);
                sg += gw;
                sgx += gw * xhat;
                if (mine) {
                    mine[c] += dyr[c];
                    mine[C + c] += dyr[c] * xhat;
                }
            }
            if (!dx) continue;
            const float a = sg / (float)C, b = sgx / (float)C;
            float *dxr = dx->data + r * C;
            for (int64_t c = 0; c < C; c++) {
                const float xhat = (xr[c] - m) * rstd;
                dxr[c] += rstd * (dyr[c] * (wd ? wd[c] : 1.0f) - a - xhat * b);
            }
        }
    }
    if (part) {
        for (int64_t c = 0; c < C; c++) {
            float s1 = 0.0f, s2 = 0.0f;
            for (int t = 0; t < nthreads; t++) {
                s1 += part[(size_t)t * 2 * C + c];
                s2 += part[(size_t)t * 2 * C + C + c];
            }
            if (dbias) dbias->data[c] += s1;
            if (dweight) dweight->data[c] += s2;
        }
        free(part);
    }
    return DL_OK;
}
