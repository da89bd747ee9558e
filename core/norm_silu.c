/* norm_silu.c - GroupNorm followed by SiLU, fused (see norm.h).
 *
 * Why fuse: both kernels are memory-bound. Run one after the other, the
 * backward pass writes dn (zeroed first, since gradients accumulate), reads
 * it back, and computes every sigmoid once for silu and GroupNorm's sums.
 * Here each (image, group) task keeps its dn in a small per-thread buffer
 * (Cg x H x W floats: 8 KiB for 2 channels of 32x32) that stays in cache. */
#include "norm.h"

#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "elementwise.h"

/* ------------------------------------------------------------------ */
/* Reference: the two reference kernels, one after the other. */

dl_status group_norm_silu_forward_ref(dl_tensor *n_out, dl_tensor *a_out, const dl_tensor *x, const dl_tensor *weight,
                                      const dl_tensor *bias, int groups, float eps)
{
    if (n_out) {
        DL_TRY(group_norm_forward_ref(n_out, x, weight, bias, groups, eps));
        return silu_forward_ref(a_out, n_out);
    }
    if (!x || !x->data) return dl_fail(DL_ERR_ARG, "group_norm_silu_ref: x is missing (NULL tensor)");
    dl_tensor n;                                               /* n not wanted: a temporary */
    DL_TRY(dl_tensor_alloc(&n, x->ndim, x->shape));
    dl_status s = group_norm_forward_ref(&n, x, weight, bias, groups, eps);
    if (s == DL_OK) s = silu_forward_ref(a_out, &n);
    dl_tensor_free(&n);
    return s;
}

dl_status group_norm_silu_backward_ref(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *da,
                                       const dl_tensor *x, const dl_tensor *n, const dl_tensor *weight,
                                       const dl_tensor *bias, int groups, float eps)
{
    if (!x || !x->data) return dl_fail(DL_ERR_ARG, "group_norm_silu_backward_ref: x is missing (NULL tensor)");
    dl_tensor dn, n_again = {0};
    if (!n) {                                                  /* recompute n from x */
        DL_TRY(dl_tensor_alloc(&n_again, x->ndim, x->shape));
        dl_status s = group_norm_forward_ref(&n_again, x, weight, bias, groups, eps);
        if (s != DL_OK) { dl_tensor_free(&n_again); return s; }
        n = &n_again;
    }
    dl_status s = dl_tensor_alloc(&dn, n->ndim, n->shape);     /* zeros: silu_backward adds */
    if (s == DL_OK) s = silu_backward_ref(&dn, da, n);
    if (s == DL_OK) s = group_norm_backward_ref(dx, dweight, dbias, &dn, x, weight, groups, eps);
    dl_tensor_free(&dn);
    dl_tensor_free(&n_again);
    return s;
}

/* ------------------------------------------------------------------ */
/* Fast: one task per (image, group), as group_norm_forward. */

static dl_status check_pair(const char *op, const dl_tensor *x, const dl_tensor *t, const char *name)
{
    if (!x || !x->data) return dl_fail(DL_ERR_ARG, "%s: x is missing (NULL tensor)", op);
    DL_TRY(dl_check_shape(t, op, name, x->ndim, x->shape));
    if (dl_tensors_overlap(t, x)) return dl_fail(DL_ERR_ARG, "%s: %s overlaps x; give it its own memory", op, name);
    return DL_OK;
}

dl_status group_norm_silu_forward(dl_tensor *n_out, dl_tensor *a_out, const dl_tensor *x, const dl_tensor *weight,
                                  const dl_tensor *bias, int groups, float eps)
{
    const char *op = "group_norm_silu";
    if (n_out) DL_TRY(check_pair(op, x, n_out, "n_out"));
    DL_TRY(check_pair(op, x, a_out, "a_out"));
    if (dl_tensors_overlap(n_out, a_out)) return dl_fail(DL_ERR_ARG, "%s: n_out and a_out share memory", op);
    DL_TRY(group_norm_check_args(op, x, weight, bias, groups, eps));
    const int64_t N = x->shape[0], C = x->shape[1], S = x->numel / (N * C), Cg = C / groups;
    const float *wd = weight ? weight->data : NULL, *bd = bias ? bias->data : NULL;

    #pragma omp parallel for schedule(static) if (x->numel >= 32768 && dl_parallel_ok())
    for (int64_t task = 0; task < N * groups; task++) {
        const int64_t nn = task / groups, g = task % groups;
        const float *xg = x->data + (nn * C + g * Cg) * S;
        float *ng = n_out ? n_out->data + (nn * C + g * Cg) * S : NULL, *ag = a_out->data + (nn * C + g * Cg) * S;
        double mean, var;
        norm_shifted_moments(xg, Cg * S, &mean, &var);
        const float rstd = (float)(1.0 / sqrt(var + (double)eps)), m = (float)mean;
        for (int64_t c = 0; c < Cg; c++) {
            const int64_t ch = g * Cg + c;
            const float s = rstd * (wd ? wd[ch] : 1.0f), b = bd ? bd[ch] : 0.0f;
            const float *xc = xg + c * S;
            float *ac = ag + c * S;
            if (ng) {
                float *nc = ng + c * S;
                #pragma omp simd
                for (int64_t i = 0; i < S; i++) {
                    const float v = (xc[i] - m) * s + b;
                    nc[i] = v;
                    ac[i] = v / (1.0f + dl_expf_fast(-v));
                }
            } else {
                #pragma omp simd
                for (int64_t i = 0; i < S; i++) {
                    const float v = (xc[i] - m) * s + b;
                    ac[i] = v / (1.0f + dl_expf_fast(-v));
                }
            }
        }
    }
    return DL_OK;
}

static dl_status gns_backward(const char *op, dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *da,
                              const dl_tensor *x, const dl_tensor *n, const dl_tensor *weight, const dl_tensor *bias,
                              int groups, float eps, int set_dx)
{
    if (n) DL_TRY(check_pair(op, x, n, "n"));
    DL_TRY(check_pair(op, x, da, "da"));
    DL_TRY(group_norm_check_args(op, x, weight, bias, groups, eps));
    if (dx) DL_TRY(dl_check_shape(dx, op, "dx", x->ndim, x->shape));
    if (dweight) DL_TRY(dl_check_shape(dweight, op, "dweight", 1, DL_SHAPE(x->shape[1])));
    if (dbias) DL_TRY(dl_check_shape(dbias, op, "dbias", 1, DL_SHAPE(x->shape[1])));
    const dl_tensor *outs[3] = {dx, dweight, dbias}, *ins[3] = {da, x, n};
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            if (dl_tensors_overlap(outs[i], ins[j]))
                return dl_fail(DL_ERR_ARG, "%s: a gradient output overlaps an input; give it its own memory", op);
    if (!dx && !dweight && !dbias) return DL_OK;

    const int64_t N = x->shape[0], C = x->shape[1], S = x->numel / (N * C), Cg = C / groups;
    const float *wd = weight ? weight->data : NULL, *bd = bias ? bias->data : NULL;
    const int par = x->numel >= 32768 && dl_parallel_ok();
#ifdef _OPENMP
    const int threads = par ? omp_get_max_threads() : 1;
#else
    const int threads = 1;
#endif
    /* dn of one group per thread; part[n, c] = (sum dn, sum dn * xhat) */
    float *dn_buf = malloc(sizeof(float) * (size_t)threads * (size_t)(Cg * S));
    float *part = malloc(sizeof(float) * 2 * (size_t)(N * C));
    if (!dn_buf || !part) {
        free(dn_buf); free(part);
        return dl_fail(DL_ERR_MEMORY, "%s: cannot allocate %lld floats of scratch", op,
                       (long long)(threads * Cg * S + 2 * N * C));
    }
    #pragma omp parallel for schedule(static) num_threads(threads) if (par)
    for (int64_t task = 0; task < N * groups; task++) {
#ifdef _OPENMP
        float *dng = dn_buf + (size_t)omp_get_thread_num() * (size_t)(Cg * S);
#else
        float *dng = dn_buf;
#endif
        const int64_t nn = task / groups, g = task % groups, off = (nn * C + g * Cg) * S;
        const float *xg = x->data + off, *ngp = n ? n->data + off : NULL, *dag = da->data + off;
        double mean, var;
        norm_shifted_moments(xg, Cg * S, &mean, &var);
        const float rstd = (float)(1.0 / sqrt(var + (double)eps)), m = (float)mean;
        /* pass 1: dn = da * silu'(n), kept; per channel sum(dn), sum(dn * xhat) */
        double mg = 0.0, mgx = 0.0;
        for (int64_t c = 0; c < Cg; c++) {
            const float *xc = xg + c * S, *dac = dag + c * S;
            float *dnc = dng + c * S;
            float s1 = 0.0f, s2 = 0.0f;
            if (ngp) {
                const float *nc = ngp + c * S;
                #pragma omp simd reduction(+:s1, s2)
                for (int64_t i = 0; i < S; i++) {
                    const float sg = 1.0f / (1.0f + dl_expf_fast(-nc[i]));
                    const float d = dac[i] * (sg * (1.0f + nc[i] * (1.0f - sg)));
                    dnc[i] = d;
                    s1 += d;
                    s2 += d * ((xc[i] - m) * rstd);
                }
            } else {
                /* n again, exactly as the forward computed it */
                const float sc = rstd * (wd ? wd[g * Cg + c] : 1.0f), bc = bd ? bd[g * Cg + c] : 0.0f;
                #pragma omp simd reduction(+:s1, s2)
                for (int64_t i = 0; i < S; i++) {
                    const float nv = (xc[i] - m) * sc + bc;
                    const float sg = 1.0f / (1.0f + dl_expf_fast(-nv));
                    const float d = dac[i] * (sg * (1.0f + nv * (1.0f - sg)));
                    dnc[i] = d;
                    s1 += d;
                    s2 += d * ((xc[i] - m) * rstd);
                }
            }
            const float w = wd ? wd[g * Cg + c] : 1.0f;
            mg += (double)w * s1;
            mgx += (double)w * s2;
            part[2 * (nn * C + g * Cg + c)] = s1;
            part[2 * (nn * C + g * Cg + c) + 1] = s2;
        }
        if (!dx) continue;
        /* pass 2: dx += rstd * (dn * w - mean(dn w) - xhat * mean(dn w xhat)) */
        const float a = (float)(mg / (double)(Cg * S)), b = (float)(mgx / (double)(Cg * S));
        for (int64_t c = 0; c < Cg; c++) {
            const float *xc = xg + c * S, *dnc = dng + c * S;
            float *dxc = dx->data + off + c * S;
            const float w = wd ? wd[g * Cg + c] : 1.0f;
            if (set_dx) {
                #pragma omp simd
                for (int64_t i = 0; i < S; i++) dxc[i] = rstd * (dnc[i] * w - a - (xc[i] - m) * rstd * b);
            } else {
                #pragma omp simd
                for (int64_t i = 0; i < S; i++) dxc[i] += rstd * (dnc[i] * w - a - (xc[i] - m) * rstd * b);
            }
        }
    }
    for (int64_t c = 0; c < C && (dweight || dbias); c++) {
        float s1 = 0.0f, s2 = 0.0f;
        for (int64_t nn = 0; nn < N; nn++) {
            s1 += part[2 * (nn * C + c)];
            s2 += part[2 * (nn * C + c) + 1];
        }
        if (dbias) dbias->data[c] += s1;
        if (dweight) dweight->data[c] += s2;
    }
    free(dn_buf);
    free(part);
    return DL_OK;
}

dl_status group_norm_silu_backward(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *da,
                                   const dl_tensor *x, const dl_tensor *n, const dl_tensor *weight,
                                   const dl_tensor *bias, int groups, float eps)
{
    return gns_backward("group_norm_silu_backward", dx, dweight, dbias, da, x, n, weight, bias, groups, eps, 0);
}

dl_status group_norm_silu_backward_set_dx(dl_tensor *dx, dl_tensor *dweight, dl_tensor *dbias, const dl_tensor *da,
                                          const dl_tensor *x, const dl_tensor *n, const dl_tensor *weight,
                                          const dl_tensor *bias, int groups, float eps)
{
    return gns_backward("group_norm_silu_backward_set_dx", dx, dweight, dbias, da, x, n, weight, bias, groups, eps, 1);
}
