/* test_grad_resample.c - upsample_nearest2x, avg_pool2d, concat_channels
 * backward: finite-difference check of the references on small shapes
 * (sizes 1, 3, 7; pooling with overlapping windows, stride > kernel and
 * dropped edge pixels; concat with 1 channel on either side), fast vs
 * reference on bigger shapes (threaded paths), += and NULL semantics
 * (gradcheck.h), a hand-computed upsample case, errors.
 *
 * Error level: all three ops are linear, so the central difference has no
 * truncation error; with h = 1e-2 the measured |numeric - analytic| is
 * <= ~2e-6 (float32 rounding / 2h). atol 1e-4 + rtol 1e-3: > 10x margin;
 * a wrong gradient (a missing 1/k^2, a window off by one, the channels of
 * a and b swapped) is off by 0.1 .. 1. */
#include "testing.h"
#include "gradcheck.h"
#include "../core/resample.h"

#include <stdio.h>
#include <string.h>

typedef struct { dl_tensor x, b, y; int op, kernel, stride; } rs_case;
enum { RS_UP, RS_POOL, RS_CAT };
static const char *rs_name[] = {"upsample_nearest2x_backward", "avg_pool2d_backward", "concat_channels_backward"};

static dl_status rs_forward(gc_op *op)
{
    rs_case *c = op->ctx;
    switch (c->op) {
    case RS_UP:   return upsample_nearest2x_forward_ref(&c->y, &c->x);
    case RS_POOL: return avg_pool2d_forward_ref(&c->y, &c->x, c->kernel, c->stride);
    default:      return concat_channels_forward_ref(&c->y, &c->x, &c->b);
    }
}

static dl_status rs_backward(gc_op *op, int fast, dl_tensor *g[], const dl_tensor *dout)
{
    rs_case *c = op->ctx;
    switch (c->op) {
    case RS_UP:   return (fast ? upsample_nearest2x_backward : upsample_nearest2x_backward_ref)(g[0], dout);
    case RS_POOL: return (fast ? avg_pool2d_backward : avg_pool2d_backward_ref)(g[0], dout, c->kernel, c->stride);
    default:      return (fast ? concat_channels_backward : concat_channels_backward_ref)(g[0], g[1], dout);
    }
}

static const gc_tol RS_TOL = {.h = 1e-2, .atol = 1e-4, .rtol = 1e-3, .fast_rtol = 1e-6};

/* x [n, c, h, w]; for concat b is [n, cb, h, w]; pooling kernel / stride */
static void rs_case_run(dl_test_rng *r, int which, int n, int c, int h, int w, int cb, int kernel, int stride, int mode)
{
    rs_case t = {.op = which, .kernel = kernel, .stride = stride};
    int64_t ys[4] = {n, c, h, w};
    if (which == RS_UP) { ys[2] = 2 * h; ys[3] = 2 * w; }
    if (which == RS_POOL) { ys[2] = (h - kernel) / stride + 1; ys[3] = (w - kernel) / stride + 1; }
    if (which == RS_CAT) ys[1] = c + cb;
    if (!dl_test_rand_tensor(&t.x, r, 4, DL_SHAPE(n, c, h, w)) || !dl_test_rand_tensor(&t.y, r, 4, ys) ||
        !dl_test_rand_tensor(&t.b, r, 4, DL_SHAPE(n, which == RS_CAT ? cb : 1, h, w)))
        return;
    gc_op op = {.ninputs = which == RS_CAT ? 2 : 1, .inputs = {&t.x, &t.b},
                .names = {which == RS_CAT ? "da" : "dx", "db"}, .out = &t.y,
                .forward = rs_forward, .backward = rs_backward, .ctx = &t};
    char sh[64];
    snprintf(op.label, sizeof op.label, "%s x %s", rs_name[which], dl_shape_str(&t.x, sh, sizeof sh));
    if (which == RS_POOL) snprintf(op.label + strlen(op.label), 40, " k%d s%d", kernel, stride);
    if (which == RS_CAT) snprintf(op.label + strlen(op.label), 40, " + %d channels", cb);
    gc_check_op(&op, r, RS_TOL, mode);
    dl_tensor_free(&t.x); dl_tensor_free(&t.b); dl_tensor_free(&t.y);
}

TEST(upsample_nearest2x_backward, gradcheck_and_fast)
{
    dl_test_rng r = {0x0b52u};
    rs_case_run(&r, RS_UP, 2, 3, 3, 7, 0, 0, 0, GC_NUMERIC);
    rs_case_run(&r, RS_UP, 1, 1, 1, 1, 0, 0, 0, GC_NUMERIC);
    rs_case_run(&r, RS_UP, 3, 5, 7, 9, 0, 0, 0, GC_NO_NUMERIC);
    rs_case_run(&r, RS_UP, 8, 32, 8, 8, 0, 0, 0, GC_BIG);        // threaded
}

/* 2x2 input, dout of the 4x4 output = 1 .. 16: each input pixel sums its 2x2 block. */
TEST(upsample_nearest2x_backward, by_hand)
{
    float g[16], want[4] = {1 + 2 + 5 + 6, 3 + 4 + 7 + 8, 9 + 10 + 13 + 14, 11 + 12 + 15 + 16};
    for (int i = 0; i < 16; i++) g[i] = (float)(i + 1);
    dl_tensor dout, dx;
    dl_tensor_view(&dout, g, 4, DL_SHAPE(1, 1, 4, 4));
    dl_tensor_alloc(&dx, 4, DL_SHAPE(1, 1, 2, 2));
    for (int fast = 0; fast < 2; fast++) {
        dl_tensor_fill(&dx, 0.0f);
        CHECK((fast ? upsample_nearest2x_backward : upsample_nearest2x_backward_ref)(&dx, &dout) == DL_OK,
              "upsample backward: %s", dl_error_message());
        CHECK_CLOSE(fast ? "upsample backward fast" : "upsample backward ref", dx.data, want, 4, 0);
    }
    dl_tensor_free(&dx);
}

TEST(avg_pool2d_backward, gradcheck_and_fast)
{
    dl_test_rng r = {0xa9u};
    rs_case_run(&r, RS_POOL, 2, 3, 6, 7, 0, 2, 2, GC_NUMERIC);   // the Downsample2D pool; odd width drops a column
    rs_case_run(&r, RS_POOL, 1, 2, 7, 7, 0, 3, 2, GC_NUMERIC);   // overlapping windows
    rs_case_run(&r, RS_POOL, 1, 2, 7, 5, 0, 2, 3, GC_NUMERIC);   // gaps between windows
    rs_case_run(&r, RS_POOL, 1, 1, 1, 1, 0, 1, 1, GC_NUMERIC);
    rs_case_run(&r, RS_POOL, 3, 7, 13, 11, 0, 3, 1, GC_NO_NUMERIC);
    rs_case_run(&r, RS_POOL, 8, 32, 16, 16, 0, 2, 2, GC_BIG);    // threaded
    rs_case_run(&r, RS_POOL, 4, 16, 17, 15, 0, 3, 2, GC_BIG);
}

TEST(concat_channels_backward, gradcheck_and_fast)
{
    dl_test_rng r = {0xca7u};
    rs_case_run(&r, RS_CAT, 2, 3, 3, 7, 2, 0, 0, GC_NUMERIC);
    rs_case_run(&r, RS_CAT, 1, 1, 1, 1, 1, 0, 0, GC_NUMERIC);
    rs_case_run(&r, RS_CAT, 3, 7, 5, 3, 1, 0, 0, GC_NO_NUMERIC);
    rs_case_run(&r, RS_CAT, 8, 64, 8, 8, 32, 0, 0, GC_BIG);      // threaded
}

TEST(resample_backward, errors)
{
    dl_tensor x, up, up_bad, pool, pool_bad, a, b, cat, b_bad;
    dl_tensor_alloc(&x, 4, DL_SHAPE(2, 3, 6, 6));
    dl_tensor_alloc(&up, 4, DL_SHAPE(2, 3, 12, 12));
    dl_tensor_alloc(&up_bad, 4, DL_SHAPE(2, 3, 12, 11));
    dl_tensor_alloc(&pool, 4, DL_SHAPE(2, 3, 3, 3));
    dl_tensor_alloc(&pool_bad, 4, DL_SHAPE(2, 3, 2, 3));
    dl_tensor_alloc(&a, 4, DL_SHAPE(2, 3, 6, 6));
    dl_tensor_alloc(&b, 4, DL_SHAPE(2, 2, 6, 6));
    dl_tensor_alloc(&b_bad, 4, DL_SHAPE(2, 3, 6, 6));
    dl_tensor_alloc(&cat, 4, DL_SHAPE(2, 5, 6, 6));
    for (int fast = 0; fast < 2; fast++) {
        dl_status (*u)(dl_tensor *, const dl_tensor *) = fast ? upsample_nearest2x_backward : upsample_nearest2x_backward_ref;
        dl_status (*p)(dl_tensor *, const dl_tensor *, int, int) = fast ? avg_pool2d_backward : avg_pool2d_backward_ref;
        dl_status (*c)(dl_tensor *, dl_tensor *, const dl_tensor *) =
            fast ? concat_channels_backward : concat_channels_backward_ref;
        CHECK(u(&x, &up) == DL_OK, "upsample valid: %s", dl_error_message());
        CHECK(u(NULL, &up) == DL_OK, "upsample dx NULL: %s", dl_error_message());
        EXPECT_FAIL(u(&x, &up_bad), DL_ERR_SHAPE, "upsample_nearest2x_backward", "wrong dout");
        CHECK(p(&x, &pool, 2, 2) == DL_OK, "pool valid: %s", dl_error_message());
        EXPECT_FAIL(p(&x, &pool_bad, 2, 2), DL_ERR_SHAPE, "avg_pool2d_backward", "wrong dout");
        EXPECT_FAIL(p(&x, &pool, 0, 2), DL_ERR_ARG, "avg_pool2d_backward", "kernel 0");
        CHECK(c(&a, &b, &cat) == DL_OK, "concat valid: %s", dl_error_message());
        CHECK(c(NULL, &b, &cat) == DL_OK, "concat db only: %s", dl_error_message());
        CHECK(c(&a, NULL, &cat) == DL_OK, "concat da only: %s", dl_error_message());
        EXPECT_FAIL(c(&a, &b_bad, &cat), DL_ERR_SHAPE, "concat_channels_backward", "3 + 3 != 5 channels");
        EXPECT_FAIL(c(&a, &b, &x), DL_ERR_SHAPE, "concat_channels_backward", "dout with 3 channels");
        EXPECT_FAIL(c(&cat, NULL, &cat), DL_ERR_SHAPE, "concat_channels_backward", "da takes every channel");
    }
    dl_tensor *all[] = {&x, &up, &up_bad, &pool, &pool_bad, &a, &b, &b_bad, &cat};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}
