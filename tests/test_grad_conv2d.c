/* test_grad_conv2d.c - conv2d_backward: finite-difference check of the
 * reference (dx, dweight, dbias) on small shapes (sizes 1, 3, 7, kernels
 * 1/2/3/5 and non-square, stride 1-3, padding 0-2); fast vs reference on
 * random shapes and on every path of the fast version (1x1 shortcut,
 * grouped small images with a partial last group, row tiles, parallel
 * copies); += and NULL semantics (gradcheck.h); shape / aliasing errors.
 *
 * Error level: conv is linear in x, in weight and in bias, so the central
 * difference has no truncation error; with h = 1e-2 the measured
 * |numeric - analytic| stays below ~3e-5 (float32 rounding of the outputs
 * that change, divided by 2h; gradients here are up to ~10). atol 5e-4 +
 * rtol 2e-3 leaves a margin of > 10x; a wrong gradient is off by O(1). */
#include "testing.h"
#include "gradcheck.h"
#include "../core/conv2d.h"
#include "../core/conv2d_direct.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { dl_tensor x, w, b, y; int stride, pad; } conv_case;

static dl_status conv_forward(gc_op *op)
{
    conv_case *c = op->ctx;
    return conv2d_forward_ref(&c->y, &c->x, &c->w, &c->b, c->stride, c->pad);
}

static dl_status conv_backward(gc_op *op, int fast, dl_tensor *g[], const dl_tensor *dout)
{
    conv_case *c = op->ctx;
    return (fast ? conv2d_backward : conv2d_backward_ref)(g[0], g[1], g[2], dout, &c->x, &c->w, c->stride, c->pad);
}

static const gc_tol CONV_TOL = {.h = 1e-2, .atol = 5e-4, .rtol = 2e-3, .fast_rtol = 2e-5};

static void conv_case_run(dl_test_rng *r, int n, int cin, int h, int w, int cout, int kh, int kw,
                          int stride, int pad, int numeric)
{
    int ho = conv2d_out_size(h, kh, stride, pad), wo = conv2d_out_size(w, kw, stride, pad);
    if (!CHECK(ho >= 1 && wo >= 1, "bad test case %dx%d k%dx%d s%d p%d", h, w, kh, kw, stride, pad)) return;
    conv_case c = {.stride = stride, .pad = pad};
    if (!dl_test_rand_tensor(&c.x, r, 4, DL_SHAPE(n, cin, h, w)) ||
        !dl_test_rand_tensor(&c.w, r, 4, DL_SHAPE(cout, cin, kh, kw)) ||
        !dl_test_rand_tensor(&c.b, r, 1, DL_SHAPE(cout)) ||
        !dl_test_rand_tensor(&c.y, r, 4, DL_SHAPE(n, cout, ho, wo)))
        return;
    gc_op op = {.ninputs = 3, .inputs = {&c.x, &c.w, &c.b}, .names = {"dx", "dweight", "dbias"},
                .out = &c.y, .forward = conv_forward, .backward = conv_backward, .ctx = &c};
    snprintf(op.label, sizeof op.label, "conv2d_backward x [%d,%d,%d,%d] w [%d,%d,%d,%d] s%d p%d",
             n, cin, h, w, cout, cin, kh, kw, stride, pad);
    gc_check_op(&op, r, CONV_TOL, numeric);
    dl_tensor_free(&c.x); dl_tensor_free(&c.w); dl_tensor_free(&c.b); dl_tensor_free(&c.y);
}

TEST(conv2d_backward, gradcheck_ref)
{
    dl_test_rng r = {0x6c0417u};
    conv_case_run(&r, 2, 3, 5, 7, 4, 3, 3, 1, 1, GC_NUMERIC);   // the U-Net's 3x3 "same" conv
    conv_case_run(&r, 1, 2, 7, 7, 3, 3, 3, 2, 1, GC_NUMERIC);   // Downsample2D: stride 2, odd size
    conv_case_run(&r, 2, 3, 3, 4, 2, 1, 1, 1, 0, GC_NUMERIC);   // 1x1 (the fast shortcut)
    conv_case_run(&r, 1, 1, 1, 1, 1, 1, 1, 1, 0, GC_NUMERIC);   // everything 1
    conv_case_run(&r, 1, 3, 7, 3, 2, 5, 2, 3, 2, GC_NUMERIC);   // non-square kernel, stride 3, pad 2
    conv_case_run(&r, 1, 2, 1, 1, 3, 3, 3, 1, 1, GC_NUMERIC);   // 1x1 image, most taps in padding
    conv_case_run(&r, 2, 1, 6, 5, 1, 2, 2, 2, 0, GC_NUMERIC);   // even kernel, stride = kernel
}

TEST(conv2d_backward, fast_matches_reference_random)
{
    dl_test_rng r = {0xbac4c0u};
    static const int ks[] = {1, 3, 5, 2};
    static const int sizes[] = {1, 3, 7, 8, 9, 13};
    int done = 0;
    for (int iter = 0; done < 30 && iter < 1000; iter++) {
        int kh = ks[dl_test_int(&r, 0, 3)], kw = iter % 4 == 0 ? ks[dl_test_int(&r, 0, 3)] : kh;
        int h = sizes[dl_test_int(&r, 0, 5)], w = sizes[dl_test_int(&r, 0, 5)];
        int stride = dl_test_int(&r, 1, 3), pad = dl_test_int(&r, 0, 2);
        if (conv2d_out_size(h, kh, stride, pad) < 1 || conv2d_out_size(w, kw, stride, pad) < 1) continue;
        int n = dl_test_int(&r, 1, 3), cin = sizes[dl_test_int(&r, 0, 3)], cout = sizes[dl_test_int(&r, 0, 4)];
        conv_case_run(&r, n, cin, h, w, cout, kh, kw, stride, pad, GC_NO_NUMERIC);
        done++;
    }
    CHECK(done == 30, "only %d random cases", done);
}

/* The fast version's paths, sizes from CONV2D_WORKSPACE_FLOATS (4 Mi floats)
 * and CONV2D_MIN_TILE_COLS (256) as in test_conv2d.c. */
TEST(conv2d_backward, fast_paths)
{
    conv2d_use_direct(0);   // im2col + sgemm paths (the direct kernel has its own test)
    dl_test_rng r = {0x7a75u};
    conv_case_run(&r, 3, 7, 5, 9, 6, 1, 1, 1, 0, GC_BIG);      // 1x1 shortcut
    conv_case_run(&r, 2, 7, 5, 9, 6, 1, 1, 2, 0, GC_BIG);      // 1x1 stride 2: general path
    conv_case_run(&r, 1, 7, 5, 9, 3, 1, 1, 1, 1, GC_BIG);      // 1x1 padded: general path
    conv_case_run(&r, 7, 4, 8, 8, 5, 3, 3, 1, 1, GC_BIG);      // 8x8 images grouped, all 7 in one tile
    conv_case_run(&r, 5, 3, 16, 16, 4, 3, 3, 1, 1, GC_BIG);    // exactly 256 pixels: one image per tile
    conv_case_run(&r, 5, 512, 15, 15, 5, 3, 3, 1, 1, GC_BIG);  // 4 images per tile, then 1
    conv_case_run(&r, 1, 64, 97, 97, 4, 3, 3, 1, 1, GC_BIG);   // 2 row tiles (49 + 48 rows)
    conv_case_run(&r, 2, 64, 97, 61, 3, 3, 3, 2, 1, GC_BIG);   // stride 2 row tiles
    conv2d_use_direct(1);
}

/* With OMP_WAIT_POLICY=passive the copies, the col2im scatter and the bias
 * sums run on several threads (dl_parallel_ok): same results. */
TEST(conv2d_backward, fast_parallel_copies)
{
    conv2d_use_direct(0);   // im2col + sgemm paths (the direct kernel has its own test)
    const char *old = getenv("OMP_WAIT_POLICY");
    char *saved = old ? strdup(old) : NULL;
    setenv("OMP_WAIT_POLICY", "passive", 1);
    dl_test_rng r = {0x9a7a11e2u};
    conv_case_run(&r, 2, 7, 13, 9, 5, 3, 3, 1, 1, GC_BIG);
    conv_case_run(&r, 3, 3, 8, 8, 4, 5, 3, 2, 2, GC_BIG);
    conv_case_run(&r, 9, 16, 8, 8, 8, 3, 3, 1, 1, GC_BIG);   // grouped images
    conv_case_run(&r, 4, 32, 32, 32, 32, 3, 3, 1, 1, GC_BIG);
    if (saved) { setenv("OMP_WAIT_POLICY", saved, 1); free(saved); }
    else unsetenv("OMP_WAIT_POLICY");
    conv2d_use_direct(1);
}

/* Batches of >= 2 x threads images are split into one range of images per
 * thread (single-threaded BLAS, private dweight partials). Run with 3
 * threads so the ranges are uneven (7 = 3 + 3 + 1) and one can be empty
 * (9 images, 4 threads: 3 + 3 + 3 + 0). */
TEST(conv2d_backward, fast_batch_split)
{
    conv2d_use_direct(0);   // im2col + sgemm paths (the direct kernel has its own test)
    const int saved = dl_get_threads();
    dl_test_rng r = {0x5b117u};
    dl_set_threads(3);
    conv_case_run(&r, 6, 5, 9, 7, 4, 3, 3, 1, 1, GC_NO_NUMERIC);     // 2 images per thread
    conv_case_run(&r, 7, 3, 8, 8, 5, 3, 3, 1, 1, GC_NO_NUMERIC);     // grouped 8x8 images, ranges 3 + 3 + 1
    conv_case_run(&r, 7, 6, 5, 9, 4, 1, 1, 1, 0, GC_NO_NUMERIC);     // 1x1 shortcut
    conv_case_run(&r, 8, 4, 17, 16, 3, 3, 3, 2, 1, GC_NO_NUMERIC);   // stride 2
    conv_case_run(&r, 6, 16, 16, 16, 16, 3, 3, 1, 1, GC_NO_NUMERIC); // 256-pixel images, one per tile
    dl_set_threads(4);
    conv_case_run(&r, 9, 3, 5, 5, 2, 3, 3, 1, 1, GC_NO_NUMERIC);     // an empty last range
    dl_set_threads(saved);
    conv2d_use_direct(1);
}

TEST(conv2d_backward, errors)
{
    dl_tensor x, w, dout, dout_bad, dx, dx_bad, dw, dw_bad, db, db_bad;
    dl_tensor_alloc(&x, 4, DL_SHAPE(2, 3, 8, 8));
    dl_tensor_alloc(&w, 4, DL_SHAPE(4, 3, 3, 3));
    dl_tensor_alloc(&dout, 4, DL_SHAPE(2, 4, 8, 8));
    dl_tensor_alloc(&dout_bad, 4, DL_SHAPE(2, 4, 4, 4));        // the stride-2 shape
    dl_tensor_alloc(&dx, 4, DL_SHAPE(2, 3, 8, 8));
    dl_tensor_alloc(&dx_bad, 4, DL_SHAPE(2, 3, 8, 7));
    dl_tensor_alloc(&dw, 4, DL_SHAPE(4, 3, 3, 3));
    dl_tensor_alloc(&dw_bad, 4, DL_SHAPE(3, 4, 3, 3));
    dl_tensor_alloc(&db, 1, DL_SHAPE(4));
    dl_tensor_alloc(&db_bad, 1, DL_SHAPE(3));
    for (int fast = 0; fast < 2; fast++) {
        dl_status (*f)(dl_tensor *, dl_tensor *, dl_tensor *, const dl_tensor *, const dl_tensor *,
                       const dl_tensor *, int, int) = fast ? conv2d_backward : conv2d_backward_ref;
        CHECK(f(&dx, &dw, &db, &dout, &x, &w, 1, 1) == DL_OK, "valid call: %s", dl_error_message());
        EXPECT_FAIL(f(&dx, &dw, &db, &dout_bad, &x, &w, 1, 1), DL_ERR_SHAPE, "conv2d_backward", "wrong dout");
        CHECK(strstr(dl_error_message(), "dout") != NULL, "message should name dout: %s", dl_error_message());
        EXPECT_FAIL(f(&dx, &dw, &db, &dout, &x, &w, 2, 1), DL_ERR_SHAPE, "conv2d_backward", "stride 2 with stride-1 dout");
        EXPECT_FAIL(f(&dx_bad, &dw, &db, &dout, &x, &w, 1, 1), DL_ERR_SHAPE, "conv2d_backward", "wrong dx");
        EXPECT_FAIL(f(&dx, &dw_bad, &db, &dout, &x, &w, 1, 1), DL_ERR_SHAPE, "conv2d_backward", "wrong dweight");
        EXPECT_FAIL(f(&dx, &dw, &db_bad, &dout, &x, &w, 1, 1), DL_ERR_SHAPE, "conv2d_backward", "wrong dbias");
        EXPECT_FAIL(f(&dx, &dw, &db, &dout, &x, &w, 0, 1), DL_ERR_ARG, "conv2d_backward", "stride 0");
        EXPECT_FAIL(f(&dx, &dw, &db, &dout, &x, &w, 1, -1), DL_ERR_ARG, "conv2d_backward", "negative padding");
        EXPECT_FAIL(f(&x, &dw, &db, &dout, &x, &w, 1, 1), DL_ERR_ARG, "conv2d_backward", "dx aliases x");
        EXPECT_FAIL(f(&dx, &w, &db, &dout, &x, &w, 1, 1), DL_ERR_ARG, "conv2d_backward", "dweight aliases weight");
        EXPECT_FAIL(f(&dx, &dw, &db, NULL, &x, &w, 1, 1), DL_ERR_ARG, "conv2d_backward", "NULL dout");
    }
    dl_tensor *all[] = {&x, &w, &dout, &dout_bad, &dx, &dx_bad, &dw, &dw_bad, &db, &db_bad};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

/* The direct kernels (conv2d_direct.h): dx by the flipped, transposed
 * kernel (3x3), the transposed one (1x1) or columns added back (stride 2);
 * dweight by per-thread running sums over groups of images; on partial
 * vector tiles, partial channel blocks, both input layouts (padded rows,
 * shifted planes); finite differences on small cases; 1 and 3 threads (a
 * range of images per thread, uneven shares, more threads than images). */
TEST(conv2d_backward, direct)
{
    const int saved = dl_get_threads();
    dl_test_rng r = {0xd1b4c7u};
    conv2d_use_direct(1);
    CHECK(conv2d_direct_applies(2, 3, 3, 16, 5, 3, 3, 1, 1), "the small case must take the direct kernel");
    CHECK(conv2d_direct_applies(2, 3, 4, 4, 5, 3, 3, 1, 1), "4x4 must take the direct kernel (shifted)");
    CHECK(conv2d_direct_applies(2, 3, 8, 8, 5, 1, 1, 1, 0), "1x1 must take the direct kernel");
    CHECK(conv2d_direct_applies(2, 3, 8, 8, 5, 3, 3, 2, 1), "stride 2 must take the direct kernel");
    conv_case_run(&r, 2, 3, 3, 16, 5, 3, 3, 1, 1, GC_NUMERIC);
    conv_case_run(&r, 2, 3, 4, 4, 5, 3, 3, 1, 1, GC_NUMERIC);
    conv_case_run(&r, 2, 3, 8, 8, 5, 1, 1, 1, 0, GC_NUMERIC);
    conv_case_run(&r, 2, 3, 8, 8, 5, 3, 3, 2, 1, GC_NUMERIC);
    conv_case_run(&r, 3, 5, 16, 16, 7, 3, 3, 1, 1, GC_BIG);
    conv_case_run(&r, 2, 6, 5, 48, 9, 3, 3, 1, 1, GC_BIG);
    conv_case_run(&r, 1, 1, 7, 32, 3, 3, 3, 1, 1, GC_BIG);
    conv_case_run(&r, 9, 17, 8, 8, 12, 3, 3, 1, 1, GC_BIG);    /* 9 images of 8x8: groups of 8, then 1 */
    conv_case_run(&r, 4, 10, 16, 16, 9, 1, 1, 1, 0, GC_BIG);
    conv_case_run(&r, 3, 7, 16, 16, 10, 3, 3, 2, 1, GC_BIG);
    dl_set_threads(3);
    conv_case_run(&r, 7, 4, 16, 16, 6, 3, 3, 1, 1, GC_NO_NUMERIC);
    conv_case_run(&r, 1, 16, 8, 32, 16, 3, 3, 1, 1, GC_NO_NUMERIC);
    conv_case_run(&r, 8, 6, 8, 8, 7, 3, 3, 1, 1, GC_NO_NUMERIC);   /* image by image: 8 >= 2 x 3 */
    conv_case_run(&r, 8, 6, 8, 8, 7, 3, 3, 2, 1, GC_NO_NUMERIC);
    conv_case_run(&r, 8, 6, 8, 8, 7, 1, 1, 1, 0, GC_NO_NUMERIC);
    dl_set_threads(1);
    conv_case_run(&r, 2, 8, 16, 16, 8, 3, 3, 1, 1, GC_NO_NUMERIC);
    conv_case_run(&r, 4, 8, 8, 8, 8, 3, 3, 2, 1, GC_NO_NUMERIC);
    dl_set_threads(saved);
}
