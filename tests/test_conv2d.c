/* test_conv2d.c - conv2d: a hand-checkable box filter and shift, fast vs
 * reference on random shapes (odd sizes, kernels 1/3/5 and non-square,
 * stride 1/2/3, padding 0/1/2), the U-Net's stride-2 downsample, the tiled
 * paths of the fast version, and shape / argument errors. */
#include "testing.h"
#include "../core/conv2d.h"
#include "../core/conv2d_direct.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Run conv2d_forward and conv2d_forward_ref on random data and compare. */
static void compare_case(dl_test_rng *r, int n, int cin, int h, int w, int cout, int kh, int kw,
                         int stride, int pad, int with_bias)
{
    int ho = conv2d_out_size(h, kh, stride, pad), wo = conv2d_out_size(w, kw, stride, pad);
    if (!CHECK(ho >= 1 && wo >= 1, "bad test case %dx%d k%dx%d s%d p%d", h, w, kh, kw, stride, pad)) return;
    dl_tensor x, wt, b = {0}, y_ref, y;
    if (!dl_test_rand_tensor(&x, r, 4, DL_SHAPE(n, cin, h, w)) || !dl_test_rand_tensor(&wt, r, 4, DL_SHAPE(cout, cin, kh, kw)))
        return;
    if (with_bias && !dl_test_rand_tensor(&b, r, 1, DL_SHAPE(cout))) return;
    dl_tensor_alloc(&y_ref, 4, DL_SHAPE(n, cout, ho, wo));
    dl_tensor_alloc(&y, 4, DL_SHAPE(n, cout, ho, wo));
    dl_tensor_fill(&y, 1e9f);                        // stale values must be overwritten
    const dl_tensor *bp = with_bias ? &b : NULL;
    CHECK(conv2d_forward_ref(&y_ref, &x, &wt, bp, stride, pad) == DL_OK, "ref: %s", dl_error_message());
    CHECK(conv2d_forward(&y, &x, &wt, bp, stride, pad) == DL_OK, "fast: %s", dl_error_message());
    if (!CHECK_CLOSE_REL("conv2d fast vs ref", &y, &y_ref, 1e-4))
        CHECK(0, "  case: x [%d,%d,%d,%d] w [%d,%d,%d,%d] stride %d pad %d bias %d",
              n, cin, h, w, cout, cin, kh, kw, stride, pad, with_bias);
    dl_tensor_free(&x); dl_tensor_free(&wt); dl_tensor_free(&b);
    dl_tensor_free(&y_ref); dl_tensor_free(&y);
}

TEST(conv2d, out_size)
{
    CHECK(conv2d_out_size(64, 3, 1, 1) == 64, "same conv keeps the size");
    CHECK(conv2d_out_size(64, 3, 2, 1) == 32, "Downsample2D halves 64");
    CHECK(conv2d_out_size(7, 3, 2, 1) == 4, "Downsample2D on 7 gives 4 (floor((7+2-3)/2)+1)");
    CHECK(conv2d_out_size(7, 3, 2, 0) == 3, "7, k3, s2, p0 gives 3");
    CHECK(conv2d_out_size(5, 5, 1, 0) == 1, "kernel as large as the input gives 1");
    CHECK(conv2d_out_size(2, 5, 1, 1) <= 0, "kernel larger than the padded input");
    CHECK(conv2d_out_size(8, 3, 0, 1) <= 0, "stride 0 is invalid");
    CHECK(conv2d_out_size(8, 3, 1, -1) <= 0, "negative padding is invalid");
    CHECK(conv2d_out_size(8, 0, 1, 0) <= 0, "kernel 0 is invalid");
}

/* 4x4 image x[h][w] = 4h + w + 1 (1 .. 16), sums computed here by hand and
 * by summing windows of an explicitly zero-padded copy. */
TEST(conv2d, box_filter_by_hand)
{
    float img[16], ones[9];
    for (int i = 0; i < 16; i++) img[i] = (float)(i + 1);
    for (int i = 0; i < 9; i++) ones[i] = 1.0f;
    float padded[6][6] = {{0}};
    for (int h = 0; h < 4; h++)
        for (int w = 0; w < 4; w++) padded[h + 1][w + 1] = img[h * 4 + w];
    float want[16];
    for (int h = 0; h < 4; h++)
        for (int w = 0; w < 4; w++) {
            float s = 0;
            for (int dh = 0; dh < 3; dh++)
                for (int dw = 0; dw < 3; dw++) s += padded[h + dh][w + dw];
            want[h * 4 + w] = s;
        }
    // by hand: corner 1+2+5+6 = 14, x[1][1]: 1+2+3+5+6+7+9+10+11 = 54, corner x[3][3]: 11+12+15+16 = 54
    CHECK(want[0] == 14 && want[5] == 54 && want[15] == 54, "the test's own box sums are wrong");

    dl_tensor x, k, y;
    dl_tensor_view(&x, img, 4, DL_SHAPE(1, 1, 4, 4));
    dl_tensor_view(&k, ones, 4, DL_SHAPE(1, 1, 3, 3));
    dl_tensor_alloc(&y, 4, DL_SHAPE(1, 1, 4, 4));
    for (int fast = 0; fast < 2; fast++) {
        dl_status s = fast ? conv2d_forward(&y, &x, &k, NULL, 1, 1) : conv2d_forward_ref(&y, &x, &k, NULL, 1, 1);
        CHECK(s == DL_OK, "box filter: %s", dl_error_message());
        CHECK_CLOSE(fast ? "box filter fast" : "box filter ref", y.data, want, 16, 1e-5);
    }
    dl_tensor_free(&y);

    // Downsample2D (stride 2, padding 1) on the same image: 2x2 windows of
    // the padded image starting at rows/cols 0 and 2.
    //   [0,0] 1+2+5+6 = 14    [0,1] 2+3+4+6+7+8 = 30
    //   [1,0] 5+6+9+10+13+14 = 57    [1,1] 6+7+8+10+11+12+14+15+16 = 99
    const float want_ds[4] = {14, 30, 57, 99};
    dl_tensor_alloc(&y, 4, DL_SHAPE(1, 1, 2, 2));
    for (int fast = 0; fast < 2; fast++) {
        dl_status s = fast ? conv2d_forward(&y, &x, &k, NULL, 2, 1) : conv2d_forward_ref(&y, &x, &k, NULL, 2, 1);
        CHECK(s == DL_OK, "downsample: %s", dl_error_message());
        CHECK_CLOSE(fast ? "downsample fast" : "downsample ref", y.data, want_ds, 4, 1e-5);
    }
    dl_tensor_free(&y);
}

/* Cross-correlation, not convolution: a kernel whose only 1 is top-left
 * reads the input up and to the left, out[h][w] = x[h-1][w-1]. Also two
 * input channels, two output channels and a bias. */
TEST(conv2d, orientation_channels_bias)
{
    float img[2 * 9];                                // x [1, 2, 3, 3]: channel 1 = 10 * channel 0
    for (int i = 0; i < 9; i++) { img[i] = (float)(i + 1); img[9 + i] = 10.0f * (i + 1); }
    float wd[2 * 2 * 9] = {0};                       // weight [2, 2, 3, 3]
    wd[0] = 1.0f;                                    // co 0, ci 0: top-left tap
    wd[2 * 9 + 9 + 8] = 0.5f;                        // co 1, ci 1: bottom-right tap, times 0.5
    wd[2 * 9 + 4] = -1.0f;                           // co 1, ci 0: centre tap, times -1
    float bd[2] = {0.25f, 100.0f};
    float want[2 * 9];
    for (int h = 0; h < 3; h++)
        for (int w = 0; w < 3; w++) {
            float up_left = (h > 0 && w > 0) ? img[(h - 1) * 3 + (w - 1)] : 0.0f;
            float down_right = (h < 2 && w < 2) ? img[9 + (h + 1) * 3 + (w + 1)] : 0.0f;
            want[h * 3 + w] = up_left + 0.25f;
            want[9 + h * 3 + w] = 0.5f * down_right - img[h * 3 + w] + 100.0f;
        }
    dl_tensor x, k, b, y;
    dl_tensor_view(&x, img, 4, DL_SHAPE(1, 2, 3, 3));
    dl_tensor_view(&k, wd, 4, DL_SHAPE(2, 2, 3, 3));
    dl_tensor_view(&b, bd, 1, DL_SHAPE(2));
    dl_tensor_alloc(&y, 4, DL_SHAPE(1, 2, 3, 3));
    for (int fast = 0; fast < 2; fast++) {
        dl_status s = fast ? conv2d_forward(&y, &x, &k, &b, 1, 1) : conv2d_forward_ref(&y, &x, &k, &b, 1, 1);
        CHECK(s == DL_OK, "conv: %s", dl_error_message());
        CHECK_CLOSE(fast ? "orientation fast" : "orientation ref", y.data, want, 18, 1e-5);
    }
    dl_tensor_free(&y);
}

TEST(conv2d, fast_matches_reference_random)
{
    dl_test_rng r = {0xc0417u};
    static const int ks[] = {1, 3, 5, 2};
    static const int sizes[] = {1, 3, 7, 8, 9, 13};
    int done = 0;
    for (int iter = 0; done < 60 && iter < 1000; iter++) {
        int kh = ks[dl_test_int(&r, 0, 3)], kw = iter % 4 == 0 ? ks[dl_test_int(&r, 0, 3)] : kh;   // some non-square
        int h = sizes[dl_test_int(&r, 0, 5)], w = sizes[dl_test_int(&r, 0, 5)];
        int stride = dl_test_int(&r, 1, 3), pad = dl_test_int(&r, 0, 2);
        if (conv2d_out_size(h, kh, stride, pad) < 1 || conv2d_out_size(w, kw, stride, pad) < 1) continue;
        int n = dl_test_int(&r, 1, 3), cin = sizes[dl_test_int(&r, 0, 3)], cout = sizes[dl_test_int(&r, 0, 4)];
        compare_case(&r, n, cin, h, w, cout, kh, kw, stride, pad, iter % 3 != 0);
        done++;
    }
    CHECK(done == 60, "only %d random cases", done);
    // the 1x1 stride-1 pad-0 shortcut, and 1x1 cases that must not take it
    compare_case(&r, 2, 7, 5, 9, 3, 1, 1, 1, 0, 1);
    compare_case(&r, 2, 7, 5, 9, 3, 1, 1, 1, 0, 0);
    compare_case(&r, 2, 7, 5, 9, 3, 1, 1, 2, 0, 1);
    compare_case(&r, 1, 7, 5, 9, 3, 1, 1, 1, 1, 1);
    // non-square kernels and inputs, kernel as large as the padded input
    compare_case(&r, 2, 3, 6, 11, 4, 1, 3, 1, 0, 1);
    compare_case(&r, 1, 3, 6, 11, 4, 5, 2, 3, 2, 0);
    compare_case(&r, 1, 2, 1, 1, 3, 5, 5, 1, 2, 1);
}

/* diffusers Downsample2D: 3x3, stride 2, padding 1, on even and odd sizes. */
TEST(conv2d, downsample_stride2)
{
    dl_test_rng r = {0xd0e5u};
    compare_case(&r, 2, 8, 8, 8, 8, 3, 3, 2, 1, 1);
    compare_case(&r, 1, 5, 7, 7, 6, 3, 3, 2, 1, 1);
    compare_case(&r, 2, 4, 9, 16, 3, 3, 3, 2, 1, 0);
    compare_case(&r, 2, 32, 32, 32, 32, 3, 3, 2, 1, 1);
}

/* The fast version's tiling: images split into row tiles (uneven last
 * tile), and small images grouped several per sgemm (partial last group).
 * The sizes follow from CONV2D_WORKSPACE_FLOATS (4 Mi floats) in conv2d.h. */
TEST(conv2d, fast_tiled_paths)
{
    dl_test_rng r = {0x7115u};
    conv2d_use_direct(0);                    // the im2col + sgemm path even where the direct one applies
    // K = 64*9 = 576 -> ~7281 columns per tile; 97x97 = 9409 pixels -> 2 row tiles (49 + 48 rows)
    compare_case(&r, 1, 64, 97, 97, 4, 3, 3, 1, 1, 1);
    compare_case(&r, 2, 64, 97, 61, 3, 3, 3, 2, 1, 0);          // stride 2: out 49x31, one image per tile
    // images under 256 pixels are grouped: K = 512*9 = 4608 -> 910 columns;
    // 15x15 = 225 pixels -> 4 images per sgemm, so 5 = 4 + 1
    compare_case(&r, 5, 512, 15, 15, 5, 3, 3, 1, 1, 1);
    compare_case(&r, 5, 512, 15, 15, 5, 3, 3, 1, 1, 0);
    conv2d_use_direct(1);
}

/* With OMP_WAIT_POLICY=passive the fast version fills its buffers with
 * OpenMP threads (see copies_in_parallel in conv2d.c): same results. */
TEST(conv2d, fast_matches_reference_parallel_copies)
{
    const char *old = getenv("OMP_WAIT_POLICY");
    char *saved = old ? strdup(old) : NULL;
    setenv("OMP_WAIT_POLICY", "passive", 1);
    dl_test_rng r = {0x9a7a11e1u};
    compare_case(&r, 2, 7, 13, 9, 5, 3, 3, 1, 1, 1);
    compare_case(&r, 3, 3, 8, 8, 4, 5, 3, 2, 2, 0);
    compare_case(&r, 2, 5, 7, 7, 6, 1, 1, 1, 0, 1);
    compare_case(&r, 5, 512, 15, 15, 5, 3, 3, 1, 1, 1);
    compare_case(&r, 1, 64, 97, 97, 4, 3, 3, 1, 1, 1);
    if (saved) { setenv("OMP_WAIT_POLICY", saved, 1); free(saved); }
    else unsetenv("OMP_WAIT_POLICY");
}

TEST(conv2d, errors)
{
    dl_tensor x, w, w_cin, b, b_bad, y, y_bad, y_s2, x3;
    dl_tensor_alloc(&x, 4, DL_SHAPE(2, 3, 8, 8));
    dl_tensor_alloc(&w, 4, DL_SHAPE(4, 3, 3, 3));
    dl_tensor_alloc(&w_cin, 4, DL_SHAPE(4, 5, 3, 3));  // expects 5 input channels
    dl_tensor_alloc(&b, 1, DL_SHAPE(4));
    dl_tensor_alloc(&b_bad, 1, DL_SHAPE(3));
    dl_tensor_alloc(&y, 4, DL_SHAPE(2, 4, 8, 8));
    dl_tensor_alloc(&y_bad, 4, DL_SHAPE(2, 4, 7, 8));
    dl_tensor_alloc(&y_s2, 4, DL_SHAPE(2, 4, 4, 4));
    dl_tensor_alloc(&x3, 3, DL_SHAPE(3, 8, 8));
    for (int fast = 0; fast < 2; fast++) {
        dl_status (*f)(dl_tensor *, const dl_tensor *, const dl_tensor *, const dl_tensor *, int, int) =
            fast ? conv2d_forward : conv2d_forward_ref;
        CHECK(f(&y, &x, &w, &b, 1, 1) == DL_OK, "valid call failed: %s", dl_error_message());
        CHECK(f(&y_s2, &x, &w, &b, 2, 1) == DL_OK, "valid stride-2 call failed: %s", dl_error_message());
        EXPECT_FAIL(f(&y, &x, &w_cin, &b, 1, 1), DL_ERR_SHAPE, "conv2d", "wrong weight channels");
        CHECK(strstr(dl_error_message(), "weight") && strstr(dl_error_message(), "[4, 5, 3, 3]"),
              "message should name the weight and its shape: %s", dl_error_message());
        EXPECT_FAIL(f(&y_bad, &x, &w, &b, 1, 1), DL_ERR_SHAPE, "conv2d", "wrong out shape");
        EXPECT_FAIL(f(&y, &x, &w, &b, 2, 1), DL_ERR_SHAPE, "conv2d", "out shape for stride 1 given with stride 2");
        EXPECT_FAIL(f(&y, &x, &w, &b_bad, 1, 1), DL_ERR_SHAPE, "conv2d", "wrong bias");
        EXPECT_FAIL(f(&y, &x, &w, &b, 0, 1), DL_ERR_ARG, "conv2d", "stride 0");
        CHECK(strstr(dl_error_message(), "stride") != NULL, "message should name stride: %s", dl_error_message());
        EXPECT_FAIL(f(&y, &x, &w, &b, 1, -1), DL_ERR_ARG, "conv2d", "negative padding");
        EXPECT_FAIL(f(&y, &x3, &w, &b, 1, 1), DL_ERR_SHAPE, "conv2d", "3-d input");
        EXPECT_FAIL(f(&y, NULL, &w, &b, 1, 1), DL_ERR_ARG, "conv2d", "NULL x");
        EXPECT_FAIL(f(&y, &x, NULL, &b, 1, 1), DL_ERR_ARG, "conv2d", "NULL weight");
    }
    // kernel larger than the padded input
    dl_tensor w9, y1;
    dl_tensor_alloc(&w9, 4, DL_SHAPE(4, 3, 11, 11));
    dl_tensor_alloc(&y1, 4, DL_SHAPE(2, 4, 1, 1));
    EXPECT_FAIL(conv2d_forward(&y1, &x, &w9, NULL, 1, 1), DL_ERR_SHAPE, "conv2d", "kernel too large");
    // out aliasing the input
    dl_tensor xs, ws;
    dl_tensor_alloc(&xs, 4, DL_SHAPE(1, 2, 4, 4));
    dl_tensor_alloc(&ws, 4, DL_SHAPE(2, 2, 3, 3));
    EXPECT_FAIL(conv2d_forward(&xs, &xs, &ws, NULL, 1, 1), DL_ERR_ARG, "conv2d", "out == x");
    dl_tensor *all[] = {&x, &w, &w_cin, &b, &b_bad, &y, &y_bad, &y_s2, &x3, &w9, &y1, &xs, &ws};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

/* The direct kernels (conv2d_direct.h). 3x3 stride 1: rows of 1, 2 and 3
 * SIMD vectors (16, 32, 48 are multiples of both 8 and 16; the padded
 * layout), planes whose rows are narrower than a vector (8x8, 4x4, 16x17
 * and 2x8: the shifted layout, vectors running over row ends), row counts
 * that leave a partial last tile of vectors, channel counts that leave a
 * partial last block of output channels, a single input channel, with and
 * without bias. 1x1 and 3x3 stride 2 (1-tap kernels on the input as it is
 * and on im2col columns). Each case must really take the direct path, and
 * the same cases through im2col + sgemm must agree as well. */
TEST(conv2d, direct_paths)
{
    static const int cases[][8] = {   /* n, cin, h, w, cout, k, stride, pad */
        {3, 5, 16, 16, 7, 3, 1, 1}, {2, 3, 32, 32, 4, 3, 1, 1}, {1, 1, 5, 32, 1, 3, 1, 1}, {2, 6, 3, 48, 5, 3, 1, 1},
        {4, 16, 16, 16, 16, 3, 1, 1}, {1, 9, 7, 16, 11, 3, 1, 1}, {2, 128, 4, 16, 6, 3, 1, 1},
        {5, 7, 8, 8, 9, 3, 1, 1}, {2, 3, 4, 4, 5, 3, 1, 1}, {1, 4, 16, 17, 3, 3, 1, 1}, {3, 2, 2, 8, 6, 3, 1, 1},
        {3, 7, 8, 8, 9, 1, 1, 0}, {2, 48, 32, 32, 16, 1, 1, 0}, {1, 5, 4, 4, 1, 1, 1, 0},
        {2, 5, 16, 16, 6, 3, 2, 1}, {3, 4, 8, 8, 9, 3, 2, 1}, {1, 3, 15, 9, 4, 3, 2, 1},
    };
    dl_test_rng r = {0xd12ec7u};
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        const int *c = cases[i];
        CHECK(conv2d_direct_applies(c[0], c[1], c[2], c[3], c[4], c[5], c[5], c[6], c[7]),
              "case %d: [%d,%d,%d,%d] -> %d k%d s%d should take the direct kernel", i, c[0], c[1], c[2], c[3], c[4],
              c[5], c[6]);
        for (int direct = 1; direct >= 0; direct--) {
            conv2d_use_direct(direct);
            compare_case(&r, c[0], c[1], c[2], c[3], c[4], c[5], c[5], c[6], c[7], i % 2);
        }
    }
    conv2d_use_direct(1);
    CHECK(!conv2d_direct_applies(2, 8, 16, 16, 8, 3, 3, 3, 1), "stride 3 is not direct");
    CHECK(!conv2d_direct_applies(2, 8, 16, 16, 8, 5, 5, 1, 2), "5x5 is not direct");
    CHECK(!conv2d_direct_applies(2, 8, 5, 5, 8, 3, 3, 1, 1), "a 5x5 plane (25 pixels) is no whole number of vectors");
    CHECK(!conv2d_direct_applies(2, 320, 64, 64, 320, 3, 3, 1, 1), "SD-sized channels stay on sgemm");
}

/* out = conv(x) + bias + bias_n[n] + res: fused (direct kernels start from
 * the sums) against the reference (conv, then the adds), on direct and
 * im2col shapes, with each extra alone and both; res overlapping out is
 * refused. */
static void fused_case(dl_test_rng *r, int n, int cin, int h, int w, int cout, int k, int stride, int pad,
                       int use_bias_n, int use_res)
{
    const int ho = conv2d_out_size(h, k, stride, pad), wo = conv2d_out_size(w, k, stride, pad);
    dl_tensor x, wt, b, bn, res, y, y_ref;
    dl_test_rand_tensor(&x, r, 4, DL_SHAPE(n, cin, h, w));
    dl_test_rand_tensor(&wt, r, 4, DL_SHAPE(cout, cin, k, k));
    dl_test_rand_tensor(&b, r, 1, DL_SHAPE(cout));
    dl_test_rand_tensor(&bn, r, 2, DL_SHAPE(n, cout));
    dl_test_rand_tensor(&res, r, 4, DL_SHAPE(n, cout, ho, wo));
    dl_tensor_alloc(&y, 4, res.shape);
    dl_tensor_alloc(&y_ref, 4, res.shape);
    dl_tensor_fill(&y, 1e9f);
    const dl_tensor *bnp = use_bias_n ? &bn : NULL, *resp = use_res ? &res : NULL;
    CHECK(conv2d_forward_fused_ref(&y_ref, &x, &wt, &b, bnp, resp, stride, pad) == DL_OK, "%s", dl_error_message());
    CHECK(conv2d_forward_fused(&y, &x, &wt, &b, bnp, resp, stride, pad) == DL_OK, "%s", dl_error_message());
    char what[128];
    snprintf(what, sizeof what, "fused conv [%d,%d,%d,%d] -> %d k%d s%d bias_n %d res %d", n, cin, h, w, cout, k,
             stride, use_bias_n, use_res);
    CHECK_CLOSE_REL(what, &y, &y_ref, 1e-4);
    dl_tensor *all[] = {&x, &wt, &b, &bn, &res, &y, &y_ref};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

TEST(conv2d, fused_bias_and_residual)
{
    dl_test_rng r = {0xf05edu};
    for (int direct = 1; direct >= 0; direct--) {
        conv2d_use_direct(direct);
        for (int m = 1; m < 4; m++) {
            fused_case(&r, 5, 6, 16, 16, 7, 3, 1, 1, m & 1, m >> 1);
            fused_case(&r, 5, 6, 8, 8, 9, 3, 1, 1, m & 1, m >> 1);
            fused_case(&r, 3, 6, 8, 8, 5, 1, 1, 0, m & 1, m >> 1);
            fused_case(&r, 2, 3, 7, 9, 4, 5, 1, 2, m & 1, m >> 1);   /* no direct kernel */
        }
    }
    conv2d_use_direct(1);
    dl_tensor x, wt, y;
    dl_tensor_alloc(&x, 4, DL_SHAPE(1, 2, 8, 8));
    dl_tensor_alloc(&wt, 4, DL_SHAPE(2, 2, 3, 3));
    dl_tensor_alloc(&y, 4, DL_SHAPE(1, 2, 8, 8));
    EXPECT_FAIL(conv2d_forward_fused(&y, &x, &wt, NULL, NULL, &y, 1, 1), DL_ERR_ARG, "conv2d_fused", "res == out");
    dl_tensor_free(&x); dl_tensor_free(&wt); dl_tensor_free(&y);
}
