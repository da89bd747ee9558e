/* gradcheck.c - see gradcheck.h */
#include "gradcheck.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

double gc_loss(const dl_tensor *out, const float *r)
{
    double L = 0.0;
    for (int64_t i = 0; i < out->numel; i++) L += (double)r[i] * (double)out->data[i];
    return L;
}

static int verbose(void)
{
    const char *v = getenv("DL_GRADCHECK_VERBOSE");
    return v && v[0] && v[0] != '0';
}

/* A zeroed tensor shaped like t (1 on success). */
static int alloc_like(dl_tensor *g, const dl_tensor *t)
{
    if (dl_tensor_alloc(g, t->ndim, t->shape) == DL_OK) return 1;
    CHECK(0, "gradcheck: alloc failed: %s", dl_error_message());
    return 0;
}

/* Check 1: numeric vs analytic for input `which`. */
static int numeric_check(gc_op *op, int which, const float *r, const dl_tensor *analytic, gc_tol tol)
{
    dl_tensor *in = op->inputs[which];
    double worst = 0.0, max_err = 0.0, max_grad = 0.0, a_at = 0.0, n_at = 0.0;
    int64_t at = 0;
    for (int64_t i = 0; i < in->numel; i++) {
        const float x0 = in->data[i];
        const float xp = (float)(x0 + tol.h), xm = (float)(x0 - tol.h);
        in->data[i] = xp;
        dl_status s1 = op->forward(op);
        double Lp = gc_loss(op->out, r);
        in->data[i] = xm;
        dl_status s2 = op->forward(op);
        double Lm = gc_loss(op->out, r);
        in->data[i] = x0;
        if (!CHECK(s1 == DL_OK && s2 == DL_OK, "%s: forward failed: %s", op->label, dl_error_message()))
            return 0;
        const double num = (Lp - Lm) / ((double)xp - (double)xm);
        const double a = analytic->data[i];
        const double err = fabs(a - num), ratio = err / (tol.atol + tol.rtol * fabs(num));
        if (!(ratio <= worst)) { worst = ratio; at = i; a_at = a; n_at = num; }   /* also catches NaN */
        if (err > max_err) max_err = err;
        if (fabs(num) > max_grad) max_grad = fabs(num);
    }
    if (verbose())
        printf("    gradcheck %-58s %-8s max |err| %.2e  max |grad| %.2e  err/tol %.3f\n",
               op->label, op->names[which], max_err, max_grad, worst);
    return CHECK(worst <= 1.0, "%s: %s numeric check failed at index %lld: analytic %.7g, numeric %.7g "
                 "(|err| %.3g > %.3g + %.3g |numeric|; worst err/tol %.3g)",
                 op->label, op->names[which], (long long)at, a_at, n_at, fabs(a_at - n_at), tol.atol,
                 tol.rtol, worst);
}

/* max |got - want| <= rtol * max(1, max |want|) */
static int close_rel(const char *label, const char *what, const char *how, const dl_tensor *got,
                     const dl_tensor *want, double rtol)
{
    double scale = 1.0, m = 0.0;
    int64_t at = 0;
    for (int64_t i = 0; i < want->numel; i++) scale = fmax(scale, fabs(want->data[i]));
    for (int64_t i = 0; i < want->numel; i++) {
        double d = fabs((double)got->data[i] - (double)want->data[i]);
        if (!(d <= m)) { m = d; at = i; }
    }
    return CHECK(m <= rtol * scale, "%s: %s %s: max diff %.3g > %.3g at index %lld (got %.9g, want %.9g)",
                 label, what, how, m, rtol * scale, (long long)at, (double)got->data[at],
                 (double)want->data[at]);
}

int gc_check_op(gc_op *op, dl_test_rng *rng, gc_tol tol, int mode)
{
    const int n = op->ninputs;
    int ok = 1;
    dl_tensor dout = {0}, ref[GC_MAX_INPUTS] = {{0}}, got[GC_MAX_INPUTS] = {{0}}, pre[GC_MAX_INPUTS] = {{0}};
    dl_tensor *grads[GC_MAX_INPUTS];

    if (!alloc_like(&dout, op->out)) return 0;
    dl_test_fill(rng, dout.data, (size_t)dout.numel, -1.0f, 1.0f);           /* r = dL/dout */
    for (int i = 0; i < n; i++) {
        if (!alloc_like(&ref[i], op->inputs[i]) || !alloc_like(&got[i], op->inputs[i]) ||
            !alloc_like(&pre[i], op->inputs[i])) { ok = 0; goto done; }
        dl_test_fill(rng, pre[i].data, (size_t)pre[i].numel, -2.0f, 2.0f);
    }
    ok &= CHECK(op->forward(op) == DL_OK, "%s: forward failed: %s", op->label, dl_error_message());

    /* the reference gradients, from zero */
    for (int i = 0; i < n; i++) grads[i] = &ref[i];
    if (!CHECK(op->backward(op, 0, grads, &dout) == DL_OK, "%s: ref backward failed: %s", op->label,
               dl_error_message())) { ok = 0; goto done; }

    /* 1. numeric */
    if (mode == GC_NUMERIC)
        for (int i = 0; i < n; i++) ok &= numeric_check(op, i, dout.data, &ref[i], tol);

    for (int fast = mode == GC_BIG ? 1 : 0; fast < 2; fast++) {
        const char *which = fast ? "fast" : "ref";
        char how[64];
        /* 2. fast vs ref (from zero) */
        if (fast) {
            for (int i = 0; i < n; i++) { dl_tensor_fill(&got[i], 0.0f); grads[i] = &got[i]; }
            ok &= CHECK(op->backward(op, 1, grads, &dout) == DL_OK, "%s: fast backward failed: %s",
                        op->label, dl_error_message());
            for (int i = 0; i < n; i++) ok &= close_rel(op->label, op->names[i], "fast vs ref", &got[i], &ref[i],
                                                       tol.fast_rtol);
        }
        /* 3. accumulation: prefill + gradient */
        for (int i = 0; i < n; i++) { dl_tensor_copy(&got[i], &pre[i]); grads[i] = &got[i]; }
        ok &= CHECK(op->backward(op, fast, grads, &dout) == DL_OK, "%s: %s backward failed: %s", op->label,
                    which, dl_error_message());
        for (int i = 0; i < n; i++) {
            for (int64_t j = 0; j < got[i].numel; j++) got[i].data[j] -= pre[i].data[j];
            snprintf(how, sizeof how, "%s accumulates (+=)", which);
            ok &= close_rel(op->label, op->names[i], how, &got[i], &ref[i], tol.fast_rtol + 1e-6);
        }
        /* 4. NULL outputs: one gradient at a time, then none */
        for (int i = 0; i < n && n > 1; i++) {
            for (int j = 0; j < n; j++) grads[j] = NULL;
            dl_tensor_fill(&got[i], 0.0f);
            grads[i] = &got[i];
            ok &= CHECK(op->backward(op, fast, grads, &dout) == DL_OK, "%s: %s backward with only %s failed: %s",
                        op->label, which, op->names[i], dl_error_message());
            snprintf(how, sizeof how, "%s alone (others NULL)", which);
            ok &= close_rel(op->label, op->names[i], how, &got[i], &ref[i], tol.fast_rtol);
        }
        for (int j = 0; j < n; j++) grads[j] = NULL;
        ok &= CHECK(op->backward(op, fast, grads, &dout) == DL_OK, "%s: %s backward with all gradients NULL: %s",
                    op->label, which, dl_error_message());
    }
done:
    dl_tensor_free(&dout);
    for (int i = 0; i < n; i++) { dl_tensor_free(&ref[i]); dl_tensor_free(&got[i]); dl_tensor_free(&pre[i]); }
    return ok;
}
