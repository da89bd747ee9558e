/* test_grad_elementwise.c - silu, gelu_erf, softmax, add, mul backward:
 * finite-difference check of the references on small shapes (sizes 1, 3,
 * 7; activations on [-6, 6] so the saturated tails are covered; add / mul
 * with every broadcast pattern the U-Net uses and some it doesn't), fast vs
 * reference on bigger shapes (threaded paths, ranges up to +-12), += and
 * NULL semantics (gradcheck.h), errors.
 *
 * Error level: add and mul are linear in each input (no truncation error):
 * measured |numeric - analytic| <= 5e-6 at h = 1e-2. The activations and
 * softmax are smooth; with h = 3e-3 the measured error is <= 1.1e-4 for
 * silu / gelu on [-6, 6] (float32 rounding of outputs up to 6, ~5e-7,
 * divided by 2h) and <= 1.5e-5 for softmax. atol 2e-4 + rtol 2e-3 passes
 * with err/tol <= 0.08; a wrong derivative (e.g. sigmoid instead of the silu
 * derivative, or softmax without the row-sum term) is off by 0.05 .. 1. */
#include "testing.h"
#include "gradcheck.h"
#include "../core/elementwise.h"

#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* silu, gelu_erf, softmax: one input x, out y */

typedef struct { dl_tensor x, y, ytmp; int which; } unary_case;
enum { U_SILU, U_GELU, U_SOFTMAX };
static const char *unary_name[] = {"silu_backward", "gelu_erf_backward", "softmax_backward"};

static dl_status unary_forward(gc_op *op)
{
    unary_case *c = op->ctx;
    switch (c->which) {
    case U_SILU: return silu_forward_ref(&c->y, &c->x);
    case U_GELU: return gelu_erf_forward_ref(&c->y, &c->x);
    default:     return softmax_forward_ref(&c->y, &c->x);
    }
}

static dl_status unary_backward(gc_op *op, int fast, dl_tensor *g[], const dl_tensor *dout)
{
    unary_case *c = op->ctx;
    switch (c->which) {
    case U_SILU: return (fast ? silu_backward : silu_backward_ref)(g[0], dout, &c->x);
    case U_GELU: return (fast ? gelu_erf_backward : gelu_erf_backward_ref)(g[0], dout, &c->x);
    default:
        /* softmax_backward takes the forward's output y */
        DL_TRY(softmax_forward_ref(&c->ytmp, &c->x));
        return (fast ? softmax_backward : softmax_backward_ref)(g[0], dout, &c->ytmp);
    }
}

static const gc_tol SMOOTH_TOL = {.h = 3e-3, .atol = 2e-4, .rtol = 2e-3, .fast_rtol = 1e-5};
static const gc_tol LINEAR_TOL = {.h = 1e-2, .atol = 2e-4, .rtol = 2e-3, .fast_rtol = 1e-5};

static void unary_case_run(dl_test_rng *r, int which, int ndim, const int64_t shape[], float range, int mode)
{
    unary_case c = {.which = which};
    if (!dl_test_rand_tensor(&c.x, r, ndim, shape) || !dl_test_rand_tensor(&c.y, r, ndim, shape) ||
        !dl_test_rand_tensor(&c.ytmp, r, ndim, shape))
        return;
    for (int64_t i = 0; i < c.x.numel; i++) c.x.data[i] *= range;
    gc_op op = {.ninputs = 1, .inputs = {&c.x}, .names = {"dx"}, .out = &c.y,
                .forward = unary_forward, .backward = unary_backward, .ctx = &c};
    char sh[64];
    snprintf(op.label, sizeof op.label, "%s x %s in +-%g", unary_name[which], dl_shape_str(&c.x, sh, sizeof sh),
             (double)range);
    gc_check_op(&op, r, SMOOTH_TOL, mode);
    dl_tensor_free(&c.x); dl_tensor_free(&c.y); dl_tensor_free(&c.ytmp);
}

TEST(silu_backward, gradcheck_and_fast)
{
    dl_test_rng r = {0x5170u};
    unary_case_run(&r, U_SILU, 3, DL_SHAPE(3, 7, 5), 6.0f, GC_NUMERIC);
    unary_case_run(&r, U_SILU, 1, DL_SHAPE(1), 1.0f, GC_NUMERIC);
    unary_case_run(&r, U_SILU, 4, DL_SHAPE(2, 13, 17, 11), 12.0f, GC_NO_NUMERIC);   // 4862 values
    unary_case_run(&r, U_SILU, 4, DL_SHAPE(4, 32, 16, 16), 8.0f, GC_BIG);           // threaded
}

TEST(gelu_erf_backward, gradcheck_and_fast)
{
    dl_test_rng r = {0x6e1u};
    unary_case_run(&r, U_GELU, 3, DL_SHAPE(3, 7, 5), 6.0f, GC_NUMERIC);
    unary_case_run(&r, U_GELU, 1, DL_SHAPE(1), 1.0f, GC_NUMERIC);
    unary_case_run(&r, U_GELU, 4, DL_SHAPE(2, 13, 17, 11), 12.0f, GC_NO_NUMERIC);
    unary_case_run(&r, U_GELU, 3, DL_SHAPE(8, 64, 128), 5.0f, GC_BIG);
}

TEST(softmax_backward, gradcheck_and_fast)
{
    dl_test_rng r = {0x50f7u};
    unary_case_run(&r, U_SOFTMAX, 2, DL_SHAPE(3, 7), 3.0f, GC_NUMERIC);
    unary_case_run(&r, U_SOFTMAX, 3, DL_SHAPE(2, 3, 1), 3.0f, GC_NUMERIC);    // rows of 1: y = 1, dx = 0
    unary_case_run(&r, U_SOFTMAX, 4, DL_SHAPE(1, 2, 3, 13), 6.0f, GC_NUMERIC);
    unary_case_run(&r, U_SOFTMAX, 3, DL_SHAPE(4, 33, 77), 8.0f, GC_NO_NUMERIC);
    unary_case_run(&r, U_SOFTMAX, 2, DL_SHAPE(512, 256), 4.0f, GC_BIG);     // threaded
}

/* ------------------------------------------------------------------ */
/* add, mul: inputs a and b (b broadcast onto a) */

typedef struct { dl_tensor a, b, y; int mul; } bin_case;

static dl_status bin_forward(gc_op *op)
{
    bin_case *c = op->ctx;
    return c->mul ? mul_forward_ref(&c->y, &c->a, &c->b) : add_forward_ref(&c->y, &c->a, &c->b);
}

static dl_status bin_backward(gc_op *op, int fast, dl_tensor *g[], const dl_tensor *dout)
{
    bin_case *c = op->ctx;
    if (c->mul) return (fast ? mul_backward : mul_backward_ref)(g[0], g[1], dout, &c->a, &c->b);
    return (fast ? add_backward : add_backward_ref)(g[0], g[1], dout);
}

static void bin_case_run(dl_test_rng *r, int mul, int an, const int64_t ashape[], int bn, const int64_t bshape[],
                         int mode)
{
    bin_case c = {.mul = mul};
    if (!dl_test_rand_tensor(&c.a, r, an, ashape) || !dl_test_rand_tensor(&c.b, r, bn, bshape) ||
        !dl_test_rand_tensor(&c.y, r, an, ashape))
        return;
    gc_op op = {.ninputs = 2, .inputs = {&c.a, &c.b}, .names = {"da", "db"}, .out = &c.y,
                .forward = bin_forward, .backward = bin_backward, .ctx = &c};
    char sa[64], sb[64];
    snprintf(op.label, sizeof op.label, "%s a %s b %s", mul ? "mul_backward" : "add_backward",
             dl_shape_str(&c.a, sa, sizeof sa), dl_shape_str(&c.b, sb, sizeof sb));
    gc_check_op(&op, r, LINEAR_TOL, mode);
    dl_tensor_free(&c.a); dl_tensor_free(&c.b); dl_tensor_free(&c.y);
}

/* The broadcast patterns, small (numeric) and big (fast paths, threads). */
static void bin_all(int mul, uint64_t seed)
{
    dl_test_rng r = {seed};
    bin_case_run(&r, mul, 4, DL_SHAPE(2, 3, 5, 7), 4, DL_SHAPE(2, 3, 1, 1), GC_NUMERIC);   // + temb [N, C, 1, 1]
    bin_case_run(&r, mul, 3, DL_SHAPE(2, 7, 3), 1, DL_SHAPE(3), GC_NUMERIC);              // + bias [C]
    bin_case_run(&r, mul, 3, DL_SHAPE(2, 3, 7), 3, DL_SHAPE(2, 3, 7), GC_NUMERIC);        // same shape
    bin_case_run(&r, mul, 4, DL_SHAPE(2, 3, 1, 7), 1, DL_SHAPE(1), GC_NUMERIC);           // a scalar
    bin_case_run(&r, mul, 4, DL_SHAPE(3, 2, 3, 5), 4, DL_SHAPE(1, 2, 1, 5), GC_NUMERIC);  // mixed
    bin_case_run(&r, mul, 4, DL_SHAPE(2, 3, 4, 5), 3, DL_SHAPE(3, 1, 1), GC_NUMERIC);     // fewer dims
    bin_case_run(&r, mul, 2, DL_SHAPE(1, 1), 2, DL_SHAPE(1, 1), GC_NUMERIC);
    bin_case_run(&r, mul, 4, DL_SHAPE(4, 64, 16, 16), 4, DL_SHAPE(4, 64, 1, 1), GC_BIG);
    bin_case_run(&r, mul, 3, DL_SHAPE(8, 256, 64), 1, DL_SHAPE(64), GC_BIG);
    bin_case_run(&r, mul, 4, DL_SHAPE(4, 64, 16, 16), 4, DL_SHAPE(4, 64, 16, 16), GC_BIG);
    bin_case_run(&r, mul, 4, DL_SHAPE(4, 64, 16, 16), 3, DL_SHAPE(64, 1, 1), GC_BIG);
    bin_case_run(&r, mul, 4, DL_SHAPE(2, 3, 100, 150), 1, DL_SHAPE(1), GC_BIG);          // one long run
}

TEST(add_backward, gradcheck_and_fast) { bin_all(0, 0xadd0u); }
TEST(mul_backward, gradcheck_and_fast) { bin_all(1, 0x3a10u); }

/* add_backward with only da: no b shape is needed. */
TEST(add_backward, da_only)
{
    dl_test_rng r = {0xadd1u};
    dl_tensor dout, da;
    if (!dl_test_rand_tensor(&dout, &r, 3, DL_SHAPE(2, 3, 4)) || !dl_test_rand_tensor(&da, &r, 3, DL_SHAPE(2, 3, 4)))
        return;
    float want[24];
    for (int i = 0; i < 24; i++) want[i] = da.data[i] + dout.data[i];
    CHECK(add_backward(&da, NULL, &dout) == DL_OK, "fast: %s", dl_error_message());
    CHECK_CLOSE("add_backward da += dout", da.data, want, 24, 0);
    for (int i = 0; i < 24; i++) want[i] += dout.data[i];
    CHECK(add_backward_ref(&da, NULL, &dout) == DL_OK, "ref: %s", dl_error_message());
    CHECK_CLOSE("add_backward_ref da += dout", da.data, want, 24, 0);
    dl_tensor_free(&dout); dl_tensor_free(&da);
}

TEST(elementwise_backward, errors)
{
    dl_tensor x, dout, dx, bad, db, db_bad, b;
    dl_tensor_alloc(&x, 4, DL_SHAPE(2, 3, 4, 5));
    dl_tensor_alloc(&dout, 4, DL_SHAPE(2, 3, 4, 5));
    dl_tensor_alloc(&dx, 4, DL_SHAPE(2, 3, 4, 5));
    dl_tensor_alloc(&bad, 4, DL_SHAPE(2, 3, 5, 4));
    dl_tensor_alloc(&b, 4, DL_SHAPE(2, 3, 1, 1));
    dl_tensor_alloc(&db, 4, DL_SHAPE(2, 3, 1, 1));
    dl_tensor_alloc(&db_bad, 4, DL_SHAPE(2, 2, 1, 1));
    for (int fast = 0; fast < 2; fast++) {
        typedef dl_status (*unary_bwd)(dl_tensor *, const dl_tensor *, const dl_tensor *);
        unary_bwd fs[3] = {fast ? silu_backward : silu_backward_ref, fast ? gelu_erf_backward : gelu_erf_backward_ref,
                           fast ? softmax_backward : softmax_backward_ref};
        const char *names[3] = {"silu_backward", "gelu_erf_backward", "softmax_backward"};
        for (int i = 0; i < 3; i++) {
            CHECK(fs[i](&dx, &dout, &x) == DL_OK, "%s valid call: %s", names[i], dl_error_message());
            CHECK(fs[i](NULL, &dout, &x) == DL_OK, "%s with dx NULL: %s", names[i], dl_error_message());
            EXPECT_FAIL(fs[i](&dx, &bad, &x), DL_ERR_SHAPE, names[i], "wrong dout");
            CHECK(strstr(dl_error_message(), "dout") != NULL, "should name dout: %s", dl_error_message());
            EXPECT_FAIL(fs[i](&bad, &dout, &x), DL_ERR_SHAPE, names[i], "wrong dx");
            EXPECT_FAIL(fs[i](&dx, &dx, &x), DL_ERR_ARG, names[i], "dx aliases dout");
            EXPECT_FAIL(fs[i](&dx, &dout, NULL), DL_ERR_ARG, names[i], "NULL x");
        }
        dl_status (*add)(dl_tensor *, dl_tensor *, const dl_tensor *) = fast ? add_backward : add_backward_ref;
        dl_status (*mul)(dl_tensor *, dl_tensor *, const dl_tensor *, const dl_tensor *, const dl_tensor *) =
            fast ? mul_backward : mul_backward_ref;
        CHECK(add(&dx, &db, &dout) == DL_OK, "add valid call: %s", dl_error_message());
        EXPECT_FAIL(add(&dx, &db_bad, &dout), DL_ERR_SHAPE, "add_backward", "db does not broadcast");
        EXPECT_FAIL(add(&bad, &db, &dout), DL_ERR_SHAPE, "add_backward", "wrong da");
        EXPECT_FAIL(add(&dout, &db, &dout), DL_ERR_ARG, "add_backward", "da aliases dout");
        EXPECT_FAIL(add(&dx, &db, NULL), DL_ERR_ARG, "add_backward", "NULL dout");
        CHECK(mul(&dx, &db, &dout, &x, &b) == DL_OK, "mul valid call: %s", dl_error_message());
        EXPECT_FAIL(mul(&dx, &db_bad, &dout, &x, &b), DL_ERR_SHAPE, "mul_backward", "db not b's shape");
        EXPECT_FAIL(mul(&dx, &db, &bad, &x, &b), DL_ERR_SHAPE, "mul_backward", "wrong dout");
        EXPECT_FAIL(mul(&dx, &db, &dout, &x, &db_bad), DL_ERR_SHAPE, "mul_backward", "b does not broadcast");
        EXPECT_FAIL(mul(&dx, &b, &dout, &x, &b), DL_ERR_ARG, "mul_backward", "db aliases b");
        EXPECT_FAIL(mul(&dx, &db, &dout, NULL, &b), DL_ERR_ARG, "mul_backward", "NULL a");
    }
    dl_tensor *all[] = {&x, &dout, &dx, &bad, &b, &db, &db_bad};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}
