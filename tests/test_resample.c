/* test_resample.c - nearest 2x upsampling, average pooling and channel
 * concatenation: hand-checked cases, fast vs reference, shape errors. */
#include "testing.h"
#include "../core/resample.h"

#include <stdlib.h>
#include <string.h>

/* Run the fast versions both single-threaded (default) and with OpenMP
 * copies (OMP_WAIT_POLICY=passive, see resample.c). */
static void set_passive(int on, char **saved)
{
    if (on) {
        const char *old = getenv("OMP_WAIT_POLICY");
        *saved = old ? strdup(old) : NULL;
        setenv("OMP_WAIT_POLICY", "passive", 1);
    } else {
        if (*saved) { setenv("OMP_WAIT_POLICY", *saved, 1); free(*saved); }
        else unsetenv("OMP_WAIT_POLICY");
        *saved = NULL;
    }
}

TEST(resample, hand_computed)
{
    // upsample [[1, 2], [3, 4]] -> every value a 2x2 block
    float xd[] = {1, 2, 3, 4};
    const float up_want[] = {1, 1, 2, 2,  1, 1, 2, 2,  3, 3, 4, 4,  3, 3, 4, 4};
    dl_tensor x, y;
    dl_tensor_view(&x, xd, 4, DL_SHAPE(1, 1, 2, 2));
    dl_tensor_alloc(&y, 4, DL_SHAPE(1, 1, 4, 4));
    CHECK(upsample_nearest2x_forward_ref(&y, &x) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE("upsample ref", y.data, up_want, 16, 0);
    dl_tensor_fill(&y, 0);
    CHECK(upsample_nearest2x_forward(&y, &x) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE("upsample fast", y.data, up_want, 16, 0);
    dl_tensor_free(&y);

    // avg pool on x[h][w] = 4h + w + 1 (4x4, values 1 .. 16)
    float img[16];
    for (int i = 0; i < 16; i++) img[i] = (float)(i + 1);
    dl_tensor_view(&x, img, 4, DL_SHAPE(1, 1, 4, 4));
    // kernel 2 stride 2: (1+2+5+6)/4 = 3.5, (3+4+7+8)/4 = 5.5, (9+10+13+14)/4 = 11.5, (11+12+15+16)/4 = 13.5
    const float pool2_want[] = {3.5f, 5.5f, 11.5f, 13.5f};
    // kernel 3 stride 1: window means are the centre values 6, 7, 10, 11
    const float pool3_want[] = {6, 7, 10, 11};
    dl_tensor_alloc(&y, 4, DL_SHAPE(1, 1, 2, 2));
    for (int fast = 0; fast < 2; fast++) {
        dl_status (*f)(dl_tensor *, const dl_tensor *, int, int) = fast ? avg_pool2d_forward : avg_pool2d_forward_ref;
        CHECK(f(&y, &x, 2, 2) == DL_OK, "%s", dl_error_message());
        CHECK_CLOSE("avg_pool k2 s2", y.data, pool2_want, 4, 1e-6);
        CHECK(f(&y, &x, 3, 1) == DL_OK, "%s", dl_error_message());
        CHECK_CLOSE("avg_pool k3 s1", y.data, pool3_want, 4, 1e-6);
        CHECK(f(&y, &x, 3, 2) != DL_OK, "k3 s2 on 4x4 gives 1x1, not 2x2");
    }
    dl_tensor_free(&y);
    // floor mode: a 5x5 image, kernel 2 stride 2 -> 2x2 (last row and column dropped)
    float img5[25];
    for (int i = 0; i < 25; i++) img5[i] = (float)i;         // x[h][w] = 5h + w
    dl_tensor_view(&x, img5, 4, DL_SHAPE(1, 1, 5, 5));
    const float floor_want[] = {(0 + 1 + 5 + 6) / 4.0f, (2 + 3 + 7 + 8) / 4.0f,
                                (10 + 11 + 15 + 16) / 4.0f, (12 + 13 + 17 + 18) / 4.0f};
    dl_tensor_alloc(&y, 4, DL_SHAPE(1, 1, 2, 2));
    CHECK(avg_pool2d_forward(&y, &x, 2, 2) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE("avg_pool floor mode", y.data, floor_want, 4, 1e-6);
    dl_tensor_free(&y);

    // concat: a [2, 1, 1, 2], b [2, 2, 1, 2]; out[n] = a[n] then b[n]
    float ad[] = {1, 2,  10, 20}, bd[] = {3, 4, 5, 6,  30, 40, 50, 60};
    const float cat_want[] = {1, 2, 3, 4, 5, 6,  10, 20, 30, 40, 50, 60};
    dl_tensor a, b;
    dl_tensor_view(&a, ad, 4, DL_SHAPE(2, 1, 1, 2));
    dl_tensor_view(&b, bd, 4, DL_SHAPE(2, 2, 1, 2));
    dl_tensor_alloc(&y, 4, DL_SHAPE(2, 3, 1, 2));
    CHECK(concat_channels_forward_ref(&y, &a, &b) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE("concat ref", y.data, cat_want, 12, 0);
    dl_tensor_fill(&y, 0);
    CHECK(concat_channels_forward(&y, &a, &b) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE("concat fast", y.data, cat_want, 12, 0);
    dl_tensor_free(&y);
}

TEST(resample, fast_matches_reference)
{
    dl_test_rng r = {0x5a3b1eu};
    static const int sizes[] = {1, 3, 7, 8, 13};
    for (int pass = 0; pass < 2; pass++) {
        char *saved = NULL;
        if (pass) set_passive(1, &saved);
        for (int iter = 0; iter < 30; iter++) {
            int n = dl_test_int(&r, 1, 3), c = sizes[dl_test_int(&r, 0, 4)];
            int h = sizes[dl_test_int(&r, 0, 4)], w = sizes[dl_test_int(&r, 0, 4)];
            dl_tensor x, y_ref, y;
            if (!dl_test_rand_tensor(&x, &r, 4, DL_SHAPE(n, c, h, w))) return;

            // upsample: pure copies, so exact
            dl_tensor_alloc(&y_ref, 4, DL_SHAPE(n, c, 2 * h, 2 * w));
            dl_tensor_alloc(&y, 4, DL_SHAPE(n, c, 2 * h, 2 * w));
            CHECK(upsample_nearest2x_forward_ref(&y_ref, &x) == DL_OK, "%s", dl_error_message());
            CHECK(upsample_nearest2x_forward(&y, &x) == DL_OK, "%s", dl_error_message());
            if (!CHECK_CLOSE("upsample fast vs ref", y.data, y_ref.data, (size_t)y.numel, 0))
                CHECK(0, "  case [%d,%d,%d,%d]", n, c, h, w);
            dl_tensor_free(&y_ref); dl_tensor_free(&y);

            // avg pool: same summation order, so exact
            int k = dl_test_int(&r, 1, 3), s = dl_test_int(&r, 1, 3);
            if (h >= k && w >= k) {
                int ho = (h - k) / s + 1, wo = (w - k) / s + 1;
                dl_tensor_alloc(&y_ref, 4, DL_SHAPE(n, c, ho, wo));
                dl_tensor_alloc(&y, 4, DL_SHAPE(n, c, ho, wo));
                CHECK(avg_pool2d_forward_ref(&y_ref, &x, k, s) == DL_OK, "%s", dl_error_message());
                CHECK(avg_pool2d_forward(&y, &x, k, s) == DL_OK, "%s", dl_error_message());
                if (!CHECK_CLOSE("avg_pool fast vs ref", y.data, y_ref.data, (size_t)y.numel, 0))
                    CHECK(0, "  case [%d,%d,%d,%d] k %d s %d", n, c, h, w, k, s);
                dl_tensor_free(&y_ref); dl_tensor_free(&y);
            }

            // concat with a second tensor of another channel count
            int cb = sizes[dl_test_int(&r, 0, 4)];
            dl_tensor b;
            if (!dl_test_rand_tensor(&b, &r, 4, DL_SHAPE(n, cb, h, w))) return;
            dl_tensor_alloc(&y_ref, 4, DL_SHAPE(n, c + cb, h, w));
            dl_tensor_alloc(&y, 4, DL_SHAPE(n, c + cb, h, w));
            CHECK(concat_channels_forward_ref(&y_ref, &x, &b) == DL_OK, "%s", dl_error_message());
            CHECK(concat_channels_forward(&y, &x, &b) == DL_OK, "%s", dl_error_message());
            if (!CHECK_CLOSE("concat fast vs ref", y.data, y_ref.data, (size_t)y.numel, 0))
                CHECK(0, "  case [%d,%d,%d,%d] + %d channels", n, c, h, w, cb);
            // and the reference itself: channel c of out is channel c of x, then of b
            CHECK(!memcmp(y_ref.data, x.data, sizeof(float) * (size_t)(c * h * w)), "concat ref: first block is not x[0]");
            CHECK(!memcmp(y_ref.data + (size_t)c * h * w, b.data, sizeof(float) * (size_t)(cb * h * w)),
                  "concat ref: second block is not b[0]");
            dl_tensor_free(&y_ref); dl_tensor_free(&y); dl_tensor_free(&b);
            dl_tensor_free(&x);
        }
        if (pass) set_passive(0, &saved);
    }
}

TEST(resample, errors)
{
    dl_tensor x, x3, up, up_bad, pool, b, b_h, b_n, cat, cat_bad;
    dl_tensor_alloc(&x, 4, DL_SHAPE(2, 3, 4, 6));
    dl_tensor_alloc(&x3, 3, DL_SHAPE(3, 4, 6));
    dl_tensor_alloc(&up, 4, DL_SHAPE(2, 3, 8, 12));
    dl_tensor_alloc(&up_bad, 4, DL_SHAPE(2, 3, 8, 11));
    dl_tensor_alloc(&pool, 4, DL_SHAPE(2, 3, 2, 3));
    dl_tensor_alloc(&b, 4, DL_SHAPE(2, 5, 4, 6));
    dl_tensor_alloc(&b_h, 4, DL_SHAPE(2, 5, 5, 6));     // other height
    dl_tensor_alloc(&b_n, 4, DL_SHAPE(1, 5, 4, 6));     // other batch
    dl_tensor_alloc(&cat, 4, DL_SHAPE(2, 8, 4, 6));
    dl_tensor_alloc(&cat_bad, 4, DL_SHAPE(2, 7, 4, 6));
    for (int fast = 0; fast < 2; fast++) {
        dl_status (*fu)(dl_tensor *, const dl_tensor *) = fast ? upsample_nearest2x_forward : upsample_nearest2x_forward_ref;
        dl_status (*fp)(dl_tensor *, const dl_tensor *, int, int) = fast ? avg_pool2d_forward : avg_pool2d_forward_ref;
        dl_status (*fc)(dl_tensor *, const dl_tensor *, const dl_tensor *) =
            fast ? concat_channels_forward : concat_channels_forward_ref;
        CHECK(fu(&up, &x) == DL_OK && fp(&pool, &x, 2, 2) == DL_OK && fc(&cat, &x, &b) == DL_OK,
              "valid calls failed: %s", dl_error_message());
        EXPECT_FAIL(fu(&up_bad, &x), DL_ERR_SHAPE, "upsample_nearest2x", "upsample wrong out");
        EXPECT_FAIL(fu(&up, &x3), DL_ERR_SHAPE, "upsample_nearest2x", "upsample 3-d x");
        EXPECT_FAIL(fp(&pool, &x, 0, 2), DL_ERR_ARG, "avg_pool2d", "kernel 0");
        EXPECT_FAIL(fp(&pool, &x, 2, 0), DL_ERR_ARG, "avg_pool2d", "stride 0");
        EXPECT_FAIL(fp(&pool, &x, 5, 1), DL_ERR_SHAPE, "avg_pool2d", "kernel taller than x");
        EXPECT_FAIL(fp(&pool, &x, 2, 1), DL_ERR_SHAPE, "avg_pool2d", "out for stride 2 given with stride 1");
        EXPECT_FAIL(fc(&cat, &x, &b_h), DL_ERR_SHAPE, "concat_channels", "concat other height");
        EXPECT_FAIL(fc(&cat, &x, &b_n), DL_ERR_SHAPE, "concat_channels", "concat other batch");
        EXPECT_FAIL(fc(&cat_bad, &x, &b), DL_ERR_SHAPE, "concat_channels", "concat wrong out channels");
        EXPECT_FAIL(fc(&cat, &x, NULL), DL_ERR_ARG, "concat_channels", "concat NULL b");
    }
    dl_tensor *all[] = {&x, &x3, &up, &up_bad, &pool, &b, &b_h, &b_n, &cat, &cat_bad};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}
