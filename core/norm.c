/* norm.c - see norm.h */
#include "norm.h"

#include <math.h>

/* weight / bias: NULL or [C] */
static dl_status check_affine(const char *op, const dl_tensor *weight, const dl_tensor *bias, int64_t C)
{
    if (weight) DL_TRY(dl_check_shape(weight, op, "weight", 1, DL_SHAPE(C)));
    if (bias) DL_TRY(dl_check_shape(bias, op, "bias", 1, DL_SHAPE(C)));
    return DL_OK;
}

static dl_status check_group_norm(const dl_tensor *out, const dl_tensor *x, const dl_tensor *weight,
                                  const dl_tensor *bias, int groups, float eps)
{
    const char *op = "group_norm";
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
    DL_TRY(check_affine(op, weight, bias, C));
    return dl_check_shape(out, op, "out", x->ndim, x->shape);
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
 * around a sample x0 of the data (the "shifted data" method), in double:
 *     mean = x0 + sum(d) / n,   var = sum(d^2) / n - (sum(d) / n)^2     */
static void shifted_moments(const float *x, int64_t n, double *mean, double *var)
{
    double x0 = x[0], s = 0.0, ss = 0.0;
    #pragma omp simd reduction(+:s, ss)
    for (int64_t i = 0; i < n; i++) {
        double d = (double)x[i] - x0;
        s += d;
        ss += d * d;
    }
    double m = s / (double)n;
    double v = ss / (double)n - m * m;
    *mean = x0 + m;
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
        shifted_moments(xg, Cg * S, &mean, &var);
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
        shifted_moments(xr, C, &mean, &var);
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
