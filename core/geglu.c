/* geglu.c - see geglu.h */
#include "geglu.h"

#include <math.h>

#include "elementwise.h"

#define INV_SQRT2 0.70710678118654752f
#define INV_SQRT_2PI 0.39894228040143268f
#define PARALLEL_MIN 65536

static dl_status check_forward(const char *op, const dl_tensor *out, const dl_tensor *h, const dl_tensor *g)
{
    if (!h || !h->data || !g || !g->data) return dl_fail(DL_ERR_ARG, "%s: h or g is missing (NULL tensor)", op);
    DL_TRY(dl_check_shape(g, op, "g", h->ndim, h->shape));
    return dl_check_shape(out, op, "out", h->ndim, h->shape);
}

static dl_status check_backward(const char *op, const dl_tensor *dh, const dl_tensor *dg, const dl_tensor *dout,
                                const dl_tensor *h, const dl_tensor *g)
{
    if (!h || !h->data || !g || !g->data) return dl_fail(DL_ERR_ARG, "%s: h or g is missing (NULL tensor)", op);
    DL_TRY(dl_check_shape(g, op, "g", h->ndim, h->shape));
    DL_TRY(dl_check_shape(dout, op, "dout", h->ndim, h->shape));
    const dl_tensor *grads[2] = {dh, dg}, *ins[3] = {dout, h, g};
    for (int i = 0; i < 2; i++) {
        if (!grads[i]) continue;
        DL_TRY(dl_check_shape(grads[i], op, i ? "dg" : "dh", h->ndim, h->shape));
        for (int j = 0; j < 3; j++)
            if (dl_tensors_overlap(grads[i], ins[j]))
                return dl_fail(DL_ERR_ARG, "%s: a gradient overlaps an input; give it its own memory", op);
    }
    if (dl_tensors_overlap(dh, dg)) return dl_fail(DL_ERR_ARG, "%s: dh and dg share memory", op);
    return DL_OK;
}

dl_status geglu_forward_ref(dl_tensor *out, const dl_tensor *h, const dl_tensor *g)
{
    DL_TRY(check_forward("geglu_ref", out, h, g));
    for (int64_t i = 0; i < h->numel; i++) {
        const float v = g->data[i];
        const float cdf = 0.5f * (1.0f + erff(v * INV_SQRT2));      /* Phi(g) */
        out->data[i] = h->data[i] * (v * cdf);                       /* h * gelu(g) */
    }
    return DL_OK;
}

dl_status geglu_forward(dl_tensor *out, const dl_tensor *h, const dl_tensor *g)
{
    DL_TRY(check_forward("geglu", out, h, g));
    const float *hd = h->data, *gd = g->data;
    float *o = out->data;
    const int64_t n = h->numel;
    #pragma omp parallel for simd schedule(static) if (dl_parallel_ok() && n >= PARALLEL_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float v = gd[i];
        const float cdf = 0.5f * (1.0f + dl_erff_fast(v * INV_SQRT2));
        o[i] = hd[i] * (v * cdf);
    }
    return DL_OK;
}

dl_status geglu_backward_ref(dl_tensor *dh, dl_tensor *dg, const dl_tensor *dout, const dl_tensor *h,
                             const dl_tensor *g)
{
    DL_TRY(check_backward("geglu_backward_ref", dh, dg, dout, h, g));
    for (int64_t i = 0; i < h->numel; i++) {
        const float v = g->data[i], d = dout->data[i];
        const float cdf = 0.5f * (1.0f + erff(v * INV_SQRT2));       /* Phi(g) */
        const float pdf = INV_SQRT_2PI * expf(-0.5f * v * v);         /* phi(g) */
        if (dh) dh->data[i] += d * (v * cdf);                         /* d out / d h = gelu(g)        */
        if (dg) dg->data[i] += d * h->data[i] * (cdf + v * pdf);      /* d out / d g = h gelu'(g)      */
    }
    return DL_OK;
}

dl_status geglu_backward(dl_tensor *dh, dl_tensor *dg, const dl_tensor *dout, const dl_tensor *h, const dl_tensor *g)
{
    DL_TRY(check_backward("geglu_backward", dh, dg, dout, h, g));
    if (!dh && !dg) return DL_OK;
    const float *hd = h->data, *gd = g->data, *od = dout->data;
    float *dhd = dh ? dh->data : NULL, *dgd = dg ? dg->data : NULL;
    const int64_t n = h->numel;
    if (dhd && dgd) {
        #pragma omp parallel for simd schedule(static) if (dl_parallel_ok() && n >= PARALLEL_MIN)
        for (int64_t i = 0; i < n; i++) {
            const float v = gd[i], d = od[i];
            const float cdf = 0.5f * (1.0f + dl_erff_fast(v * INV_SQRT2));
            const float pdf = INV_SQRT_2PI * dl_expf_fast(-0.5f * v * v);
            dhd[i] += d * (v * cdf);
            dgd[i] += d * hd[i] * (cdf + v * pdf);
        }
        return DL_OK;
    }
    for (int64_t i = 0; i < n; i++) {               /* one of the two: the plain loop */
        const float v = gd[i], d = od[i];
        const float cdf = 0.5f * (1.0f + dl_erff_fast(v * INV_SQRT2));
        if (dhd) dhd[i] += d * (v * cdf);
        else dgd[i] += d * hd[i] * (cdf + v * INV_SQRT_2PI * dl_expf_fast(-0.5f * v * v));
    }
    return DL_OK;
}
