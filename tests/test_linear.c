/* test_linear.c - linear (nn.Linear) and matmul: fast vs reference, hand
 * computed cases, shape errors. */
#include "testing.h"
#include "../core/linear.h"
#include "../core/linear_direct.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A tensor of uniform [-1, 1) values (a failed check and 0 if allocation fails). */
TEST(linear, hand_computed)
{
    // x [2, 3] = [[1, 2, 3], [0, -1, 4]]; weight [2 out, 3 in]; bias [2]
    float xd[] = {1, 2, 3, 0, -1, 4}, wd[] = {1, 0, -1, 2, 1, 0}, bd[] = {0.5f, -1};
    // row 0: 1*1 + 2*0 + 3*(-1) + 0.5 = -1.5     1*2 + 2*1 + 3*0 - 1 = 3
    // row 1: 0 + 0 - 4 + 0.5 = -3.5              0 - 1 + 0 - 1 = -2
    const float want[] = {-1.5f, 3, -3.5f, -2};
    dl_tensor x, w, b, y;
    dl_tensor_view(&x, xd, 2, DL_SHAPE(2, 3));
    dl_tensor_view(&w, wd, 2, DL_SHAPE(2, 3));
    dl_tensor_view(&b, bd, 1, DL_SHAPE(2));
    dl_tensor_alloc(&y, 2, DL_SHAPE(2, 2));
    CHECK(linear_forward_ref(&y, &x, &w, &b) == DL_OK, "ref: %s", dl_error_message());
    CHECK_CLOSE("linear_ref hand", y.data, want, 4, 1e-6);
    dl_tensor_fill(&y, 99);
    CHECK(linear_forward(&y, &x, &w, &b) == DL_OK, "fast: %s", dl_error_message());
    CHECK_CLOSE("linear hand", y.data, want, 4, 1e-6);
    // no bias: want - bias
    const float want_nb[] = {-2, 4, -4, -1};
    CHECK(linear_forward(&y, &x, &w, NULL) == DL_OK, "fast no bias: %s", dl_error_message());
    CHECK_CLOSE("linear hand, no bias", y.data, want_nb, 4, 1e-6);
    dl_tensor_free(&y);

    // matmul [2,2] x [2,2]: [[1,2],[3,4]] [[5,6],[7,8]] = [[19,22],[43,50]]
    float ad[] = {1, 2, 3, 4}, bm[] = {5, 6, 7, 8};
    const float want_mm[] = {19, 22, 43, 50};
    dl_tensor a, bb, c;
    dl_tensor_view(&a, ad, 2, DL_SHAPE(2, 2));
    dl_tensor_view(&bb, bm, 2, DL_SHAPE(2, 2));
    dl_tensor_alloc(&c, 2, DL_SHAPE(2, 2));
    CHECK(matmul_forward_ref(&c, &a, &bb) == DL_OK, "matmul ref: %s", dl_error_message());
    CHECK_CLOSE("matmul_ref hand", c.data, want_mm, 4, 1e-6);
    CHECK(matmul_forward(&c, &a, &bb) == DL_OK, "matmul: %s", dl_error_message());
    CHECK_CLOSE("matmul hand", c.data, want_mm, 4, 1e-6);
    dl_tensor_free(&c);
}

TEST(linear, fast_matches_reference)
{
    dl_test_rng r = {0x11a7ea5u};
    static const int sizes[] = {1, 3, 7, 8, 13, 33, 64};
    for (int iter = 0; iter < 40; iter++) {
        int ndim = 1 + iter % 4;                        // x has 1 to 4 dims
        int64_t xs[4], ys[4];
        for (int d = 0; d < ndim - 1; d++) xs[d] = ys[d] = dl_test_int(&r, 1, 5);
        int in = sizes[dl_test_int(&r, 0, 6)], outf = sizes[dl_test_int(&r, 0, 6)];
        xs[ndim - 1] = in;
        ys[ndim - 1] = outf;
        int with_bias = iter % 3 != 0;
        dl_tensor x, w, b = {0}, y_ref, y;
        if (!dl_test_rand_tensor(&x, &r, ndim, xs) || !dl_test_rand_tensor(&w, &r, 2, DL_SHAPE(outf, in))) return;
        if (with_bias && !dl_test_rand_tensor(&b, &r, 1, DL_SHAPE(outf))) return;
        dl_tensor_alloc(&y_ref, ndim, ys);
        dl_tensor_alloc(&y, ndim, ys);
        dl_tensor_fill(&y, 1e9f);                       // stale values must be overwritten
        const dl_tensor *bp = with_bias ? &b : NULL;
        CHECK(linear_forward_ref(&y_ref, &x, &w, bp) == DL_OK, "ref: %s", dl_error_message());
        CHECK(linear_forward(&y, &x, &w, bp) == DL_OK, "fast: %s", dl_error_message());
        if (!CHECK_CLOSE_REL("linear fast vs ref", &y, &y_ref, 1e-4))
            CHECK(0, "  case: ndim %d, in %d, out %d, bias %d", ndim, in, outf, with_bias);
        dl_tensor_free(&x); dl_tensor_free(&w); dl_tensor_free(&b);
        dl_tensor_free(&y_ref); dl_tensor_free(&y);
    }
}

TEST(linear, matmul_fast_matches_reference)
{
    dl_test_rng r = {0x3a7a1u};
    static const int sizes[] = {1, 3, 7, 9, 16, 31, 70};
    for (int iter = 0; iter < 30; iter++) {
        int M = sizes[dl_test_int(&r, 0, 6)], N = sizes[dl_test_int(&r, 0, 6)], K = sizes[dl_test_int(&r, 0, 6)];
        dl_tensor a, b, c_ref, c;
        if (!dl_test_rand_tensor(&a, &r, 2, DL_SHAPE(M, K)) || !dl_test_rand_tensor(&b, &r, 2, DL_SHAPE(K, N))) return;
        dl_tensor_alloc(&c_ref, 2, DL_SHAPE(M, N));
        dl_tensor_alloc(&c, 2, DL_SHAPE(M, N));
        CHECK(matmul_forward_ref(&c_ref, &a, &b) == DL_OK, "ref: %s", dl_error_message());
        CHECK(matmul_forward(&c, &a, &b) == DL_OK, "fast: %s", dl_error_message());
        if (!CHECK_CLOSE_REL("matmul fast vs ref", &c, &c_ref, 1e-4)) CHECK(0, "  case: M %d N %d K %d", M, N, K);
        dl_tensor_free(&a); dl_tensor_free(&b); dl_tensor_free(&c_ref); dl_tensor_free(&c);
    }
}

TEST(linear, shape_errors)
{
    dl_tensor x, w, w_bad, b, b_bad, y, y_bad, y_lead;
    dl_tensor_alloc(&x, 3, DL_SHAPE(2, 5, 8));
    dl_tensor_alloc(&w, 2, DL_SHAPE(4, 8));
    dl_tensor_alloc(&w_bad, 2, DL_SHAPE(4, 7));         // in_features 7 != 8
    dl_tensor_alloc(&b, 1, DL_SHAPE(4));
    dl_tensor_alloc(&b_bad, 1, DL_SHAPE(5));
    dl_tensor_alloc(&y, 3, DL_SHAPE(2, 5, 4));
    dl_tensor_alloc(&y_bad, 3, DL_SHAPE(2, 5, 3));      // out_features 3 != 4
    dl_tensor_alloc(&y_lead, 3, DL_SHAPE(2, 6, 4));     // leading dims differ
    for (int fast = 0; fast < 2; fast++) {
        dl_status (*f)(dl_tensor *, const dl_tensor *, const dl_tensor *, const dl_tensor *) =
            fast ? linear_forward : linear_forward_ref;
        CHECK(f(&y, &x, &w, &b) == DL_OK, "valid call failed: %s", dl_error_message());
        EXPECT_FAIL(f(&y, &x, &w_bad, &b), DL_ERR_SHAPE, "linear", "wrong in_features");
        CHECK(strstr(dl_error_message(), "weight") != NULL, "message should name weight: %s", dl_error_message());
        EXPECT_FAIL(f(&y, &x, &w, &b_bad), DL_ERR_SHAPE, "linear", "wrong bias");
        EXPECT_FAIL(f(&y_bad, &x, &w, &b), DL_ERR_SHAPE, "linear", "wrong out features");
        EXPECT_FAIL(f(&y_lead, &x, &w, &b), DL_ERR_SHAPE, "linear", "wrong out leading dims");
        EXPECT_FAIL(f(&y, &x, NULL, &b), DL_ERR_ARG, "linear", "NULL weight");
        EXPECT_FAIL(f(&y, NULL, &w, &b), DL_ERR_ARG, "linear", "NULL x");
    }
    // out aliasing the input
    dl_tensor sq_x, sq_w;
    dl_tensor_alloc(&sq_x, 2, DL_SHAPE(3, 3));
    dl_tensor_alloc(&sq_w, 2, DL_SHAPE(3, 3));
    EXPECT_FAIL(linear_forward(&sq_x, &sq_x, &sq_w, NULL), DL_ERR_ARG, "linear", "out == x");
    // matmul
    dl_tensor a, bm, bm_bad, c, c_bad;
    dl_tensor_alloc(&a, 2, DL_SHAPE(3, 4));
    dl_tensor_alloc(&bm, 2, DL_SHAPE(4, 5));
    dl_tensor_alloc(&bm_bad, 2, DL_SHAPE(3, 5));        // inner dims 4 vs 3
    dl_tensor_alloc(&c, 2, DL_SHAPE(3, 5));
    dl_tensor_alloc(&c_bad, 2, DL_SHAPE(5, 3));
    CHECK(matmul_forward(&c, &a, &bm) == DL_OK, "valid matmul failed: %s", dl_error_message());
    EXPECT_FAIL(matmul_forward(&c, &a, &bm_bad), DL_ERR_SHAPE, "matmul", "inner dims");
    EXPECT_FAIL(matmul_forward_ref(&c, &a, &bm_bad), DL_ERR_SHAPE, "matmul", "inner dims (ref)");
    EXPECT_FAIL(matmul_forward(&c_bad, &a, &bm), DL_ERR_SHAPE, "matmul", "wrong c");
    EXPECT_FAIL(matmul_forward(&c, &x, &bm), DL_ERR_SHAPE, "matmul", "3-d a");
    dl_tensor *all[] = {&x, &w, &w_bad, &b, &b_bad, &y, &y_bad, &y_lead, &sq_x, &sq_w, &a, &bm, &bm_bad, &c, &c_bad};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

/* The direct kernels for narrow layers (core/linear_direct.h): row counts
 * that leave a partial tile of 6 rows, column counts of 1 to 4+ vectors
 * (16 .. 80, 512), with and without bias, 1 and 3 threads; each case must
 * take the direct path, and the sgemm path (linear_use_direct(0)) must
 * agree as well. */
TEST(linear, direct_paths)
{
    static const int cases[][3] = {   /* rows, in, out */
        {16, 16, 16}, {4096, 64, 64}, {100, 64, 512}, {37, 256, 64}, {23, 48, 80}, {64, 16, 64}, {130, 32, 256},
    };
    dl_test_rng r = {0xd17ec7u};
    const int saved = dl_get_threads();
    for (int i = 0; i < (int)(sizeof cases / sizeof cases[0]); i++) {
        const int rows = cases[i][0], in = cases[i][1], outf = cases[i][2];
        CHECK(linear_direct_applies(rows, in, outf), "case %d (%d x %d -> %d) should take the direct kernel", i, rows,
              in, outf);
        dl_tensor x, w, b, y_ref, y;
        dl_test_rand_tensor(&x, &r, 2, DL_SHAPE(rows, in));
        dl_test_rand_tensor(&w, &r, 2, DL_SHAPE(outf, in));
        dl_test_rand_tensor(&b, &r, 1, DL_SHAPE(outf));
        dl_tensor_alloc(&y_ref, 2, DL_SHAPE(rows, outf));
        dl_tensor_alloc(&y, 2, DL_SHAPE(rows, outf));
        const dl_tensor *bp = i % 2 ? &b : NULL;
        CHECK(linear_forward_ref(&y_ref, &x, &w, bp) == DL_OK, "ref: %s", dl_error_message());
        for (int direct = 1; direct >= 0; direct--) {
            linear_use_direct(direct);
            dl_set_threads(i % 3 == 2 ? 3 : saved);
            dl_tensor_fill(&y, 1e9f);
            CHECK(linear_forward(&y, &x, &w, bp) == DL_OK, "fast: %s", dl_error_message());
            if (!CHECK_CLOSE_REL("linear direct / sgemm vs ref", &y, &y_ref, 1e-4))
                CHECK(0, "  case: rows %d, in %d, out %d, direct %d", rows, in, outf, direct);
        }
        linear_use_direct(1);
        dl_set_threads(saved);
        dl_tensor_free(&x); dl_tensor_free(&w); dl_tensor_free(&b);
        dl_tensor_free(&y_ref); dl_tensor_free(&y);
    }
    CHECK(!linear_direct_applies(4096, 320, 320), "SD-sized layers stay on sgemm");
    CHECK(!linear_direct_applies(4096, 64, 20), "20 columns are not whole vectors");
    CHECK(!linear_direct_applies(8, 64, 64), "too few rows");
}
