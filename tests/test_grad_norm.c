/* test_grad_norm.c - group_norm_backward and layer_norm_backward:
 * finite-difference check of the references (dx, dweight, dbias) on small
 * shapes (sizes 1, 3, 7; 2- to 4-d inputs; one group, one channel per
 * group; no weight), fast vs reference on bigger random shapes (incl. the
 * threaded ones), += and NULL semantics (gradcheck.h), errors.
 *
 * Error level: the normalisation is smooth but not linear, so the step
 * trades truncation (h^2 f'''/6, largest for groups of very few values)
 * against float32 rounding / 2h. Measured with h = 3e-3 on inputs of O(1):
 * |numeric - analytic| <= 3.6e-3 for gradients ~13 in groups of 3 values,
 * <= 2.6e-4 everywhere else; atol 1e-3 + rtol 1e-2 leaves > 10x margin
 * (worst err/tol 0.08). Dropping either mean term of dx (or using the
 * variance instead of rstd) gives errors of O(0.1 .. 1). */
#include "testing.h"
#include "gradcheck.h"
#include "../core/norm.h"
#include "../core/elementwise.h"

#include <stdio.h>
#include <string.h>

typedef struct { dl_tensor x, w, b, y; int groups, affine; float eps; } norm_case;

static dl_status gn_forward(gc_op *op)
{
    norm_case *c = op->ctx;
    return group_norm_forward_ref(&c->y, &c->x, c->affine ? &c->w : NULL, c->affine ? &c->b : NULL,
                                  c->groups, c->eps);
}

static dl_status gn_backward(gc_op *op, int fast, dl_tensor *g[], const dl_tensor *dout)
{
    norm_case *c = op->ctx;
    return (fast ? group_norm_backward : group_norm_backward_ref)(g[0], c->affine ? g[1] : NULL,
                                                                  c->affine ? g[2] : NULL, dout, &c->x,
                                                                  c->affine ? &c->w : NULL, c->groups, c->eps);
}

static dl_status ln_forward(gc_op *op)
{
    norm_case *c = op->ctx;
    return layer_norm_forward_ref(&c->y, &c->x, c->affine ? &c->w : NULL, c->affine ? &c->b : NULL, c->eps);
}

static dl_status ln_backward(gc_op *op, int fast, dl_tensor *g[], const dl_tensor *dout)
{
    norm_case *c = op->ctx;
    return (fast ? layer_norm_backward : layer_norm_backward_ref)(g[0], c->affine ? g[1] : NULL,
                                                                  c->affine ? g[2] : NULL, dout, &c->x,
                                                                  c->affine ? &c->w : NULL, c->eps);
}

static const gc_tol NORM_TOL = {.h = 3e-3, .atol = 1e-3, .rtol = 1e-2, .fast_rtol = 2e-5};

/* layer_norm when groups == 0, else group_norm; C is x's channel dim (dim 1
 * for group_norm, the last for layer_norm). affine = 0: no weight / bias,
 * then only dx is checked. */
static void norm_case_run(dl_test_rng *r, int ndim, const int64_t shape[], int groups, int affine, int mode)
{
    norm_case c = {.groups = groups, .affine = affine, .eps = 1e-5f};
    const int64_t C = groups ? shape[1] : shape[ndim - 1];
    if (!dl_test_rand_tensor(&c.x, r, ndim, shape) || !dl_test_rand_tensor(&c.y, r, ndim, shape) ||
        !dl_test_rand_tensor(&c.w, r, 1, DL_SHAPE(C)) || !dl_test_rand_tensor(&c.b, r, 1, DL_SHAPE(C)))
        return;
    for (int64_t i = 0; i < C; i++) c.w.data[i] += 1.5f;       // weights around 1.5, away from 0
    gc_op op = {.ninputs = affine ? 3 : 1, .inputs = {&c.x, &c.w, &c.b}, .names = {"dx", "dweight", "dbias"},
                .out = &c.y, .forward = groups ? gn_forward : ln_forward,
                .backward = groups ? gn_backward : ln_backward, .ctx = &c};
    char sh[64];
    if (groups)
        snprintf(op.label, sizeof op.label, "group_norm_backward x %s groups %d%s",
                 dl_shape_str(&c.x, sh, sizeof sh), groups, affine ? "" : " no affine");
    else
        snprintf(op.label, sizeof op.label, "layer_norm_backward x %s%s", dl_shape_str(&c.x, sh, sizeof sh),
                 affine ? "" : " no affine");
    gc_check_op(&op, r, NORM_TOL, mode);
    dl_tensor_free(&c.x); dl_tensor_free(&c.y); dl_tensor_free(&c.w); dl_tensor_free(&c.b);
}

TEST(group_norm_backward, gradcheck_ref)
{
    dl_test_rng r = {0x6e0a11u};
    norm_case_run(&r, 4, DL_SHAPE(2, 6, 3, 3), 3, 1, GC_NUMERIC);   // 2 channels per group
    norm_case_run(&r, 4, DL_SHAPE(1, 3, 7, 1), 1, 1, GC_NUMERIC);   // one group
    norm_case_run(&r, 4, DL_SHAPE(2, 4, 1, 3), 4, 1, GC_NUMERIC);   // one channel per group, 3 values
    norm_case_run(&r, 3, DL_SHAPE(3, 4, 5), 2, 1, GC_NUMERIC);      // [N, C, L]
    norm_case_run(&r, 2, DL_SHAPE(3, 7), 7, 1, GC_NUMERIC);         // [N, C]: 1 value per group (xhat = 0)
    norm_case_run(&r, 4, DL_SHAPE(2, 6, 2, 3), 2, 0, GC_NUMERIC);   // no weight / bias
}

TEST(group_norm_backward, fast_matches_reference)
{
    dl_test_rng r = {0x6e0a12u};
    norm_case_run(&r, 4, DL_SHAPE(3, 8, 7, 9), 4, 1, GC_NO_NUMERIC);
    norm_case_run(&r, 4, DL_SHAPE(2, 6, 13, 1), 3, 0, GC_NO_NUMERIC);
    norm_case_run(&r, 3, DL_SHAPE(5, 9, 11), 9, 1, GC_NO_NUMERIC);
    norm_case_run(&r, 4, DL_SHAPE(4, 32, 16, 16), 8, 1, GC_BIG);     // > 32768 values: threaded path
}

TEST(layer_norm_backward, gradcheck_ref)
{
    dl_test_rng r = {0x1a7e12u};
    norm_case_run(&r, 2, DL_SHAPE(3, 7), 0, 1, GC_NUMERIC);
    norm_case_run(&r, 3, DL_SHAPE(2, 3, 5), 0, 1, GC_NUMERIC);      // [B, L, C]
    norm_case_run(&r, 1, DL_SHAPE(8), 0, 1, GC_NUMERIC);            // one row
    norm_case_run(&r, 2, DL_SHAPE(4, 3), 0, 0, GC_NUMERIC);         // no weight / bias
    norm_case_run(&r, 4, DL_SHAPE(1, 2, 1, 3), 0, 1, GC_NUMERIC);
}

TEST(layer_norm_backward, fast_matches_reference)
{
    dl_test_rng r = {0x1a7e13u};
    norm_case_run(&r, 3, DL_SHAPE(3, 7, 13), 0, 1, GC_NO_NUMERIC);
    norm_case_run(&r, 2, DL_SHAPE(9, 1), 0, 1, GC_NO_NUMERIC);      // C = 1: xhat = 0
    norm_case_run(&r, 3, DL_SHAPE(2, 5, 33), 0, 0, GC_NO_NUMERIC);
    norm_case_run(&r, 3, DL_SHAPE(8, 64, 96), 0, 1, GC_BIG);        // > 32768 values: per-thread sums
}

TEST(group_norm_backward, errors)
{
    dl_tensor x, w, dout, dout_bad, dx, dx_bad, dw, dw_bad;
    dl_tensor_alloc(&x, 4, DL_SHAPE(2, 6, 4, 4));
    dl_tensor_alloc(&w, 1, DL_SHAPE(6));
    dl_tensor_alloc(&dout, 4, DL_SHAPE(2, 6, 4, 4));
    dl_tensor_alloc(&dout_bad, 4, DL_SHAPE(2, 6, 4, 3));
    dl_tensor_alloc(&dx, 4, DL_SHAPE(2, 6, 4, 4));
    dl_tensor_alloc(&dx_bad, 4, DL_SHAPE(2, 6, 16, 1));
    dl_tensor_alloc(&dw, 1, DL_SHAPE(6));
    dl_tensor_alloc(&dw_bad, 1, DL_SHAPE(4));
    for (int fast = 0; fast < 2; fast++) {
        dl_status (*f)(dl_tensor *, dl_tensor *, dl_tensor *, const dl_tensor *, const dl_tensor *,
                       const dl_tensor *, int, float) = fast ? group_norm_backward : group_norm_backward_ref;
        CHECK(f(&dx, &dw, NULL, &dout, &x, &w, 3, 1e-5f) == DL_OK, "valid call: %s", dl_error_message());
        EXPECT_FAIL(f(&dx, &dw, NULL, &dout_bad, &x, &w, 3, 1e-5f), DL_ERR_SHAPE, "group_norm", "wrong dout");
        CHECK(strstr(dl_error_message(), "dout") != NULL, "message should name dout: %s", dl_error_message());
        EXPECT_FAIL(f(&dx_bad, &dw, NULL, &dout, &x, &w, 3, 1e-5f), DL_ERR_SHAPE, "group_norm", "wrong dx");
        EXPECT_FAIL(f(&dx, &dw_bad, NULL, &dout, &x, &w, 3, 1e-5f), DL_ERR_SHAPE, "group_norm", "wrong dweight");
        EXPECT_FAIL(f(&dx, &dw, NULL, &dout, &x, &w, 4, 1e-5f), DL_ERR_ARG, "group_norm", "6 channels in 4 groups");
        EXPECT_FAIL(f(&dx, &dw, NULL, &dout, &x, &w, 3, -1.0f), DL_ERR_ARG, "group_norm", "negative eps");
        EXPECT_FAIL(f(&x, &dw, NULL, &dout, &x, &w, 3, 1e-5f), DL_ERR_ARG, "group_norm", "dx aliases x");
        EXPECT_FAIL(f(&dx, &dw, NULL, &dout, NULL, &w, 3, 1e-5f), DL_ERR_ARG, "group_norm", "NULL x");
    }
    dl_tensor *all[] = {&x, &w, &dout, &dout_bad, &dx, &dx_bad, &dw, &dw_bad};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

TEST(layer_norm_backward, errors)
{
    dl_tensor x, w, dout, dout_bad, dx, db_bad;
    dl_tensor_alloc(&x, 3, DL_SHAPE(2, 5, 8));
    dl_tensor_alloc(&w, 1, DL_SHAPE(8));
    dl_tensor_alloc(&dout, 3, DL_SHAPE(2, 5, 8));
    dl_tensor_alloc(&dout_bad, 3, DL_SHAPE(2, 8, 5));
    dl_tensor_alloc(&dx, 3, DL_SHAPE(2, 5, 8));
    dl_tensor_alloc(&db_bad, 1, DL_SHAPE(5));
    for (int fast = 0; fast < 2; fast++) {
        dl_status (*f)(dl_tensor *, dl_tensor *, dl_tensor *, const dl_tensor *, const dl_tensor *,
                       const dl_tensor *, float) = fast ? layer_norm_backward : layer_norm_backward_ref;
        CHECK(f(&dx, NULL, NULL, &dout, &x, &w, 1e-5f) == DL_OK, "valid call: %s", dl_error_message());
        EXPECT_FAIL(f(&dx, NULL, NULL, &dout_bad, &x, &w, 1e-5f), DL_ERR_SHAPE, "layer_norm", "wrong dout");
        EXPECT_FAIL(f(&dx, NULL, &db_bad, &dout, &x, &w, 1e-5f), DL_ERR_SHAPE, "layer_norm", "wrong dbias");
        EXPECT_FAIL(f(&dx, NULL, NULL, &dout, &x, &db_bad, 1e-5f), DL_ERR_SHAPE, "layer_norm", "wrong weight");
        EXPECT_FAIL(f(&dx, NULL, NULL, &dx, &x, &w, 1e-5f), DL_ERR_ARG, "layer_norm", "dx aliases dout");
    }
    dl_tensor *all[] = {&x, &w, &dout, &dout_bad, &dx, &db_bad};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

/* ---- GroupNorm + SiLU, fused (norm_silu.c): the same tolerances as
 * group_norm (silu is smooth, its derivative <= 1.1) ---- */

typedef struct { dl_tensor x, w, b, n, a; int groups, affine, keep_n; } gns_case;

static dl_status gns_forward(gc_op *op)
{
    gns_case *c = op->ctx;
    return group_norm_silu_forward_ref(&c->n, &c->a, &c->x, c->affine ? &c->w : NULL, c->affine ? &c->b : NULL,
                                       c->groups, 1e-5f);
}

static dl_status gns_backward(gc_op *op, int fast, dl_tensor *g[], const dl_tensor *da)
{
    gns_case *c = op->ctx;
    /* n must belong to the unperturbed inputs: recompute it (the check perturbs x, w, b) */
    DL_TRY(group_norm_silu_forward_ref(&c->n, &c->a, &c->x, c->affine ? &c->w : NULL, c->affine ? &c->b : NULL,
                                       c->groups, 1e-5f));
    /* keep_n 0: the backward recomputes n from x, weight and bias */
    return (fast ? group_norm_silu_backward : group_norm_silu_backward_ref)(
        g[0], c->affine ? g[1] : NULL, c->affine ? g[2] : NULL, da, &c->x, c->keep_n ? &c->n : NULL,
        c->affine ? &c->w : NULL, c->affine ? &c->b : NULL, c->groups, 1e-5f);
}

static void gns_case_run(dl_test_rng *r, int ndim, const int64_t shape[], int groups, int affine, int keep_n, int mode)
{
    gns_case c = {.groups = groups, .affine = affine, .keep_n = keep_n};
    const int64_t C = shape[1];
    if (!dl_test_rand_tensor(&c.x, r, ndim, shape) || !dl_test_rand_tensor(&c.n, r, ndim, shape) ||
        !dl_test_rand_tensor(&c.a, r, ndim, shape) || !dl_test_rand_tensor(&c.w, r, 1, DL_SHAPE(C)) ||
        !dl_test_rand_tensor(&c.b, r, 1, DL_SHAPE(C)))
        return;
    for (int64_t i = 0; i < C; i++) c.w.data[i] += 1.5f;
    gc_op op = {.ninputs = affine ? 3 : 1, .inputs = {&c.x, &c.w, &c.b}, .names = {"dx", "dweight", "dbias"},
                .out = &c.a, .forward = gns_forward, .backward = gns_backward, .ctx = &c};
    char sh[64];
    snprintf(op.label, sizeof op.label, "group_norm_silu_backward x %s groups %d%s%s", dl_shape_str(&c.x, sh, sizeof sh),
             groups, affine ? "" : " no affine", keep_n ? "" : " (n recomputed)");
    gc_check_op(&op, r, NORM_TOL, mode);
    dl_tensor *all[] = {&c.x, &c.w, &c.b, &c.n, &c.a};
    for (int i = 0; i < 5; i++) dl_tensor_free(all[i]);
}

TEST(group_norm_silu, gradcheck_and_fast)
{
    dl_test_rng r = {0x6e5117u};
    for (int keep_n = 1; keep_n >= 0; keep_n--) {
        gns_case_run(&r, 4, DL_SHAPE(2, 6, 3, 3), 3, 1, keep_n, GC_NUMERIC);     // 2 channels per group
        gns_case_run(&r, 4, DL_SHAPE(1, 3, 7, 1), 1, 1, keep_n, GC_NUMERIC);     // one group
        gns_case_run(&r, 3, DL_SHAPE(3, 4, 5), 2, 0, keep_n, GC_NUMERIC);        // [N, C, L], no affine
        gns_case_run(&r, 4, DL_SHAPE(5, 16, 32, 32), 8, 1, keep_n, GC_BIG);      // the toy U-Net's first level (threaded)
        gns_case_run(&r, 4, DL_SHAPE(3, 12, 7, 9), 4, 0, keep_n, GC_NO_NUMERIC);
    }
}

/* The fused forward equals group_norm then silu; the fused backward equals
 * silu_backward then group_norm_backward (fast kernels both sides). */
TEST(group_norm_silu, same_as_the_two_kernels)
{
    dl_test_rng r = {0x5e11u};
    const int64_t *shape = DL_SHAPE(4, 32, 16, 16);
    dl_tensor x, w, b, da, n1, a1, n2, a2, dn, dx1, dx2, dw1, dw2, db1, db2;
    if (!dl_test_rand_tensor(&x, &r, 4, shape) || !dl_test_rand_tensor(&da, &r, 4, shape) ||
        !dl_test_rand_tensor(&w, &r, 1, DL_SHAPE(32)) || !dl_test_rand_tensor(&b, &r, 1, DL_SHAPE(32)))
        return;
    dl_tensor *outs[] = {&n1, &a1, &n2, &a2, &dn, &dx1, &dx2};
    for (int i = 0; i < 7; i++) dl_tensor_alloc(outs[i], 4, shape);
    dl_tensor *small[] = {&dw1, &dw2, &db1, &db2};
    for (int i = 0; i < 4; i++) dl_tensor_alloc(small[i], 1, DL_SHAPE(32));
    CHECK(group_norm_forward(&n1, &x, &w, &b, 8, 1e-5f) == DL_OK && silu_forward(&a1, &n1) == DL_OK, "%s", dl_error_message());
    CHECK(group_norm_silu_forward(&n2, &a2, &x, &w, &b, 8, 1e-5f) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE_REL("fused n", &n2, &n1, 1e-6);
    CHECK_CLOSE_REL("fused a", &a2, &a1, 1e-6);
    CHECK(silu_backward(&dn, &da, &n1) == DL_OK &&
          group_norm_backward(&dx1, &dw1, &db1, &dn, &x, &w, 8, 1e-5f) == DL_OK, "%s", dl_error_message());
    CHECK(group_norm_silu_backward(&dx2, &dw2, &db2, &da, &x, &n2, &w, &b, 8, 1e-5f) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE_REL("fused dx", &dx2, &dx1, 1e-5);
    CHECK_CLOSE_REL("fused dweight", &dw2, &dw1, 1e-5);
    CHECK_CLOSE_REL("fused dbias", &db2, &db1, 1e-5);
    /* without n: the forward writes the same a, the backward recomputes the
     * same n (the same float operations), so both agree to the bit */
    dl_tensor_fill(&a1, 7.0f);
    CHECK(group_norm_silu_forward(NULL, &a1, &x, &w, &b, 8, 1e-5f) == DL_OK, "%s", dl_error_message());
    CHECK(dl_max_abs_diff(a1.data, a2.data, (size_t)a1.numel) == 0.0, "a without n_out differs");
    dl_tensor_fill(&dx1, 0.0f); dl_tensor_fill(&dw1, 0.0f); dl_tensor_fill(&db1, 0.0f);
    dl_tensor_fill(&dx2, 0.0f); dl_tensor_fill(&dw2, 0.0f); dl_tensor_fill(&db2, 0.0f);
    CHECK(group_norm_silu_backward(&dx1, &dw1, &db1, &da, &x, &n2, &w, &b, 8, 1e-5f) == DL_OK, "%s", dl_error_message());
    CHECK(group_norm_silu_backward(&dx2, &dw2, &db2, &da, &x, NULL, &w, &b, 8, 1e-5f) == DL_OK, "%s", dl_error_message());
    CHECK(dl_max_abs_diff(dx1.data, dx2.data, (size_t)dx1.numel) == 0.0 &&
          dl_max_abs_diff(dw1.data, dw2.data, 32) == 0.0 && dl_max_abs_diff(db1.data, db2.data, 32) == 0.0,
          "backward with n recomputed differs from backward with the forward's n");
    /* errors name the op and the tensor */
    EXPECT_FAIL(group_norm_silu_forward(&n2, &a2, &x, &w, &b, 7, 1e-5f), DL_ERR_ARG, "group_norm_silu", "7 groups");
    EXPECT_FAIL(group_norm_silu_forward(&n2, &n2, &x, &w, &b, 8, 1e-5f), DL_ERR_ARG, "share memory", "n_out = a_out");
    EXPECT_FAIL(group_norm_silu_backward(&dx2, NULL, NULL, &da, &x, &dw1, &w, &b, 8, 1e-5f), DL_ERR_SHAPE, "n", "n of the wrong shape");
    EXPECT_FAIL(group_norm_silu_backward(&x, NULL, NULL, &da, &x, &n2, &w, &b, 8, 1e-5f), DL_ERR_ARG, "overlaps", "dx = x");
    EXPECT_FAIL(group_norm_silu_backward(&dx2, NULL, NULL, &da, &x, NULL, &w, &dw1 /* [32]: fine */, 7, 1e-5f),
                DL_ERR_ARG, "group_norm_silu_backward", "7 groups");
    dl_tensor *all[] = {&x, &w, &b, &da, &n1, &a1, &n2, &a2, &dn, &dx1, &dx2, &dw1, &dw2, &db1, &db2};
    for (int i = 0; i < 15; i++) dl_tensor_free(all[i]);
}
