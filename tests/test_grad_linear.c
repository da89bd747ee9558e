/* test_grad_linear.c - linear_backward: finite-difference check of the
 * reference (dx, dweight, dbias) on small shapes incl. sizes 1, 3, 7 and
 * 1- to 4-d inputs; fast vs reference on bigger random shapes; += and NULL
 * semantics (gradcheck.h); shape / aliasing errors.
 *
 * Error level: linear is exactly linear in each input, so the central
 * difference has no truncation error; with h = 1e-2 the measured
 * |numeric - analytic| is <= ~1.3e-5 on these shapes (float32 rounding of the
 * few outputs that change, divided by 2h). atol 1e-4 + rtol 1e-3 leaves a
 * wide margin, while a wrong gradient is off by O(|grad|) ~ 0.1 .. 3. */
#include "testing.h"
#include "gradcheck.h"
#include "../core/linear.h"
#include "../core/linear_direct.h"

#include <stdio.h>
#include <string.h>

typedef struct { dl_tensor x, w, b, y; } lin_case;

static dl_status lin_forward(gc_op *op)
{
    lin_case *c = op->ctx;
    return linear_forward_ref(&c->y, &c->x, &c->w, &c->b);
}

static dl_status lin_backward(gc_op *op, int fast, dl_tensor *g[], const dl_tensor *dout)
{
    lin_case *c = op->ctx;
    return (fast ? linear_backward : linear_backward_ref)(g[0], g[1], g[2], dout, &c->x, &c->w);
}

static const gc_tol LIN_TOL = {.h = 1e-2, .atol = 1e-4, .rtol = 1e-3, .fast_rtol = 1e-5};

/* x [lead..., in] -> y [lead..., outf] */
static void linear_case(dl_test_rng *r, int ndim, const int64_t lead[], int in, int outf, int numeric)
{
    int64_t xs[4], ys[4];
    for (int d = 0; d < ndim - 1; d++) xs[d] = ys[d] = lead[d];
    xs[ndim - 1] = in;
    ys[ndim - 1] = outf;
    lin_case c;
    if (!dl_test_rand_tensor(&c.x, r, ndim, xs) || !dl_test_rand_tensor(&c.w, r, 2, DL_SHAPE(outf, in)) ||
        !dl_test_rand_tensor(&c.b, r, 1, DL_SHAPE(outf)) || !dl_test_rand_tensor(&c.y, r, ndim, ys))
        return;
    gc_op op = {.ninputs = 3, .inputs = {&c.x, &c.w, &c.b}, .names = {"dx", "dweight", "dbias"},
                .out = &c.y, .forward = lin_forward, .backward = lin_backward, .ctx = &c};
    char xsh[64];
    snprintf(op.label, sizeof op.label, "linear_backward x %s -> %d", dl_shape_str(&c.x, xsh, sizeof xsh), outf);
    gc_check_op(&op, r, LIN_TOL, numeric);
    dl_tensor_free(&c.x); dl_tensor_free(&c.w); dl_tensor_free(&c.b); dl_tensor_free(&c.y);
}

TEST(linear_backward, gradcheck_ref)
{
    dl_test_rng r = {0x9c11a7u};
    linear_case(&r, 1, NULL, 3, 7, GC_NUMERIC);                       // x [in]: one row
    linear_case(&r, 2, DL_SHAPE(1), 1, 1, GC_NUMERIC);                // 1x1 everything
    linear_case(&r, 2, DL_SHAPE(7), 3, 5, GC_NUMERIC);
    linear_case(&r, 3, DL_SHAPE(2, 3), 7, 4, GC_NUMERIC);             // [B, L, C]
    linear_case(&r, 4, DL_SHAPE(2, 1, 3), 5, 3, GC_NUMERIC);
}

TEST(linear_backward, fast_matches_reference)
{
    dl_test_rng r = {0x1b4c7u};
    static const int sizes[] = {1, 3, 7, 8, 13, 33, 64};
    for (int iter = 0; iter < 24; iter++) {
        int ndim = 1 + iter % 4;
        int64_t lead[3];
        for (int d = 0; d < ndim - 1; d++) lead[d] = dl_test_int(&r, 1, 9);
        linear_case(&r, ndim, lead, sizes[dl_test_int(&r, 0, 6)], sizes[dl_test_int(&r, 0, 6)], GC_NO_NUMERIC);
    }
    // a bias reduction over many rows and > 16 columns (the blocked, threaded path)
    linear_case(&r, 3, DL_SHAPE(8, 300), 24, 70, GC_NO_NUMERIC);
}

TEST(linear_backward, errors)
{
    dl_tensor x, w, dout, dout_bad, dx, dx_bad, dw, dw_bad, db, db_bad;
    dl_tensor_alloc(&x, 3, DL_SHAPE(2, 5, 4));
    dl_tensor_alloc(&w, 2, DL_SHAPE(3, 4));
    dl_tensor_alloc(&dout, 3, DL_SHAPE(2, 5, 3));
    dl_tensor_alloc(&dout_bad, 3, DL_SHAPE(2, 5, 4));
    dl_tensor_alloc(&dx, 3, DL_SHAPE(2, 5, 4));
    dl_tensor_alloc(&dx_bad, 3, DL_SHAPE(2, 4, 4));
    dl_tensor_alloc(&dw, 2, DL_SHAPE(3, 4));
    dl_tensor_alloc(&dw_bad, 2, DL_SHAPE(4, 3));
    dl_tensor_alloc(&db, 1, DL_SHAPE(3));
    dl_tensor_alloc(&db_bad, 1, DL_SHAPE(4));
    for (int fast = 0; fast < 2; fast++) {
        dl_status (*f)(dl_tensor *, dl_tensor *, dl_tensor *, const dl_tensor *, const dl_tensor *, const dl_tensor *) =
            fast ? linear_backward : linear_backward_ref;
        CHECK(f(&dx, &dw, &db, &dout, &x, &w) == DL_OK, "valid call: %s", dl_error_message());
        EXPECT_FAIL(f(&dx, &dw, &db, &dout_bad, &x, &w), DL_ERR_SHAPE, "linear_backward", "wrong dout");
        CHECK(strstr(dl_error_message(), "dout") != NULL, "message should name dout: %s", dl_error_message());
        EXPECT_FAIL(f(&dx_bad, &dw, &db, &dout, &x, &w), DL_ERR_SHAPE, "linear_backward", "wrong dx");
        EXPECT_FAIL(f(&dx, &dw_bad, &db, &dout, &x, &w), DL_ERR_SHAPE, "linear_backward", "wrong dweight");
        EXPECT_FAIL(f(&dx, &dw, &db_bad, &dout, &x, &w), DL_ERR_SHAPE, "linear_backward", "wrong dbias");
        EXPECT_FAIL(f(&x, &dw, &db, &dout, &x, &w), DL_ERR_ARG, "linear_backward", "dx aliases x");
        EXPECT_FAIL(f(&dx, &dw, &db, &dout, NULL, &w), DL_ERR_ARG, "linear_backward", "NULL x");
        EXPECT_FAIL(f(&dx, &dw, &db, NULL, &x, &w), DL_ERR_ARG, "linear_backward", "NULL dout");
    }
    dl_tensor *all[] = {&x, &w, &dout, &dout_bad, &dx, &dx_bad, &dw, &dw_bad, &db, &db_bad};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

/* The direct kernels' backward (dx added and set, dweight per-thread
 * partials over chunks of rows) against the reference on the toy U-Net's
 * shapes and uneven ones; the set_dx variant on a garbage-filled dx; 1 and
 * 3 threads. */
TEST(linear_backward, direct_paths)
{
    static const int cases[][3] = {{4096, 64, 64}, {100, 64, 512}, {37, 256, 64}, {23, 48, 80}, {600, 32, 256}};
    dl_test_rng r = {0xd1b4e7u};
    const int saved = dl_get_threads();
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        CHECK(linear_direct_applies(cases[i][0], cases[i][1], cases[i][2]), "case %d should take the direct kernel", i);
        dl_set_threads(i % 2 ? 3 : saved);
        linear_case(&r, 2, DL_SHAPE(cases[i][0]), cases[i][1], cases[i][2], GC_BIG);
    }
    dl_set_threads(saved);
}
