/* test_grad_set_dx.c - the "set" variants of backward kernels
 * (conv2d_backward_set_dx, linear_backward_set_dx,
 * group_norm_silu_backward_set_dx, concat_channels_backward_set): the
 * input gradient is WRITTEN, whatever the buffer held before (here 1e9),
 * and equals what the adding version puts into a zeroed buffer; parameter
 * gradients still ADD to what they held. */
#include "testing.h"
#include "../core/conv2d.h"
#include "../core/conv2d_direct.h"
#include "../core/linear.h"
#include "../core/norm.h"
#include "../core/resample.h"

#include <stdio.h>

/* dx_set (filled with garbage first) vs dx_add (zeroed first); the
 * parameter gradients of both runs started from the same values. */
static void compare(const char *what, dl_tensor *dx_set, dl_tensor *dx_add, dl_tensor *pg_set, dl_tensor *pg_add, int n)
{
    char label[160];
    snprintf(label, sizeof label, "%s: dx set vs added into zeros", what);
    CHECK_CLOSE_REL(label, dx_set, dx_add, 1e-6);
    for (int i = 0; i < n; i++) {
        snprintf(label, sizeof label, "%s: parameter gradient %d still accumulates", what, i);
        CHECK_CLOSE_REL(label, &pg_set[i], &pg_add[i], 1e-6);
    }
}

static void conv_case(dl_test_rng *r, int n, int cin, int h, int w, int cout, int k, int stride, int pad)
{
    const int ho = conv2d_out_size(h, k, stride, pad), wo = conv2d_out_size(w, k, stride, pad);
    dl_tensor x, wt, dout, dx_set, dx_add, pg_set[2], pg_add[2];
    dl_test_rand_tensor(&x, r, 4, DL_SHAPE(n, cin, h, w));
    dl_test_rand_tensor(&wt, r, 4, DL_SHAPE(cout, cin, k, k));
    dl_test_rand_tensor(&dout, r, 4, DL_SHAPE(n, cout, ho, wo));
    dl_tensor_alloc(&dx_set, 4, x.shape);
    dl_tensor_alloc(&dx_add, 4, x.shape);
    dl_test_rand_tensor(&pg_set[0], r, 4, wt.shape);
    dl_test_rand_tensor(&pg_set[1], r, 1, DL_SHAPE(cout));
    dl_tensor_alloc(&pg_add[0], 4, wt.shape);
    dl_tensor_alloc(&pg_add[1], 1, DL_SHAPE(cout));
    dl_tensor_copy(&pg_add[0], &pg_set[0]);
    dl_tensor_copy(&pg_add[1], &pg_set[1]);
    dl_tensor_fill(&dx_set, 1e9f);
    CHECK(conv2d_backward_set_dx(&dx_set, &pg_set[0], &pg_set[1], &dout, &x, &wt, stride, pad) == DL_OK,
          "%s", dl_error_message());
    CHECK(conv2d_backward(&dx_add, &pg_add[0], &pg_add[1], &dout, &x, &wt, stride, pad) == DL_OK, "%s",
          dl_error_message());
    char what[96];
    snprintf(what, sizeof what, "conv2d [%d,%d,%d,%d] -> %d k%d s%d%s", n, cin, h, w, cout, k, stride,
             conv2d_direct_enabled() && conv2d_direct_applies(n, cin, h, w, cout, k, k, stride, pad) ? " (direct)" : "");
    compare(what, &dx_set, &dx_add, pg_set, pg_add, 2);
    dl_tensor *all[] = {&x, &wt, &dout, &dx_set, &dx_add, &pg_set[0], &pg_set[1], &pg_add[0], &pg_add[1]};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

TEST(set_dx, conv2d)
{
    dl_test_rng r = {0x5e7d0u};
    for (int direct = 1; direct >= 0; direct--) {
        conv2d_use_direct(direct);
        conv_case(&r, 5, 6, 16, 16, 7, 3, 1, 1);   /* padded rows          */
        conv_case(&r, 5, 6, 8, 8, 7, 3, 1, 1);     /* shifted planes       */
        conv_case(&r, 5, 6, 8, 8, 7, 1, 1, 0);     /* 1x1                  */
        conv_case(&r, 5, 6, 16, 16, 7, 3, 2, 1);   /* stride 2             */
        conv_case(&r, 2, 3, 7, 9, 4, 5, 1, 2);     /* no direct kernel: 5x5 */
    }
    conv2d_use_direct(1);
}

static void linear_set_case(dl_test_rng *r, int rows, int in, int outf)
{
    dl_tensor x, wt, dout, dx_set, dx_add, pg_set[2], pg_add[2];
    dl_test_rand_tensor(&x, r, 2, DL_SHAPE(rows, in));
    dl_test_rand_tensor(&wt, r, 2, DL_SHAPE(outf, in));
    dl_test_rand_tensor(&dout, r, 2, DL_SHAPE(rows, outf));
    dl_tensor_alloc(&dx_set, 2, x.shape);
    dl_tensor_alloc(&dx_add, 2, x.shape);
    dl_test_rand_tensor(&pg_set[0], r, 2, wt.shape);
    dl_test_rand_tensor(&pg_set[1], r, 1, DL_SHAPE(outf));
    dl_tensor_alloc(&pg_add[0], 2, wt.shape);
    dl_tensor_alloc(&pg_add[1], 1, DL_SHAPE(outf));
    dl_tensor_copy(&pg_add[0], &pg_set[0]);
    dl_tensor_copy(&pg_add[1], &pg_set[1]);
    dl_tensor_fill(&dx_set, 1e9f);
    CHECK(linear_backward_set_dx(&dx_set, &pg_set[0], &pg_set[1], &dout, &x, &wt) == DL_OK, "%s", dl_error_message());
    CHECK(linear_backward(&dx_add, &pg_add[0], &pg_add[1], &dout, &x, &wt) == DL_OK, "%s", dl_error_message());
    char what[96];
    snprintf(what, sizeof what, "linear [%d,%d] -> %d", rows, in, outf);
    compare(what, &dx_set, &dx_add, pg_set, pg_add, 2);
    dl_tensor *all[] = {&x, &wt, &dout, &dx_set, &dx_add, &pg_set[0], &pg_set[1], &pg_add[0], &pg_add[1]};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

TEST(set_dx, linear)
{
    dl_test_rng r = {0x11ea5u};
    linear_set_case(&r, 15, 7, 4);      /* sgemm */
    linear_set_case(&r, 100, 64, 48);   /* the direct kernel */
}

TEST(set_dx, group_norm_silu)
{
    dl_test_rng r = {0x6a5e7u};
    dl_tensor x, n, a, wt, b, da, dx_set, dx_add, pg_set[2], pg_add[2];
    dl_test_rand_tensor(&x, &r, 4, DL_SHAPE(3, 8, 5, 6));
    dl_test_rand_tensor(&wt, &r, 1, DL_SHAPE(8));
    dl_test_rand_tensor(&b, &r, 1, DL_SHAPE(8));
    dl_test_rand_tensor(&da, &r, 4, x.shape);
    dl_tensor_alloc(&n, 4, x.shape);
    dl_tensor_alloc(&a, 4, x.shape);
    CHECK(group_norm_silu_forward(&n, &a, &x, &wt, &b, 4, 1e-5f) == DL_OK, "%s", dl_error_message());
    dl_tensor_alloc(&dx_set, 4, x.shape);
    dl_tensor_alloc(&dx_add, 4, x.shape);
    dl_test_rand_tensor(&pg_set[0], &r, 1, DL_SHAPE(8));
    dl_test_rand_tensor(&pg_set[1], &r, 1, DL_SHAPE(8));
    dl_tensor_alloc(&pg_add[0], 1, DL_SHAPE(8));
    dl_tensor_alloc(&pg_add[1], 1, DL_SHAPE(8));
    dl_tensor_copy(&pg_add[0], &pg_set[0]);
    dl_tensor_copy(&pg_add[1], &pg_set[1]);
    dl_tensor_fill(&dx_set, 1e9f);
    CHECK(group_norm_silu_backward_set_dx(&dx_set, &pg_set[0], &pg_set[1], &da, &x, NULL, &wt, &b, 4, 1e-5f) == DL_OK,
          "%s", dl_error_message());
    CHECK(group_norm_silu_backward(&dx_add, &pg_add[0], &pg_add[1], &da, &x, &n, &wt, &b, 4, 1e-5f) == DL_OK, "%s",
          dl_error_message());
    compare("group_norm_silu [3,8,5,6] g4", &dx_set, &dx_add, pg_set, pg_add, 2);
    dl_tensor *all[] = {&x, &n, &a, &wt, &b, &da, &dx_set, &dx_add, &pg_set[0], &pg_set[1], &pg_add[0], &pg_add[1]};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

TEST(set_dx, concat_split)
{
    dl_test_rng r = {0xc0ca7u};
    dl_tensor dout, da_set, db_set, da_add, db_add;
    dl_test_rand_tensor(&dout, &r, 4, DL_SHAPE(3, 7, 4, 5));
    dl_tensor_alloc(&da_set, 4, DL_SHAPE(3, 3, 4, 5));
    dl_tensor_alloc(&db_set, 4, DL_SHAPE(3, 4, 4, 5));
    dl_tensor_alloc(&da_add, 4, DL_SHAPE(3, 3, 4, 5));
    dl_tensor_alloc(&db_add, 4, DL_SHAPE(3, 4, 4, 5));
    dl_tensor_fill(&da_set, 1e9f);
    dl_tensor_fill(&db_set, -1e9f);
    CHECK(concat_channels_backward_set(&da_set, &db_set, &dout) == DL_OK, "%s", dl_error_message());
    CHECK(concat_channels_backward(&da_add, &db_add, &dout) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE_REL("concat split: first part", &da_set, &da_add, 0);
    CHECK_CLOSE_REL("concat split: second part", &db_set, &db_add, 0);
    /* by hand: channel 3 of image 1 is channel 0 of db's image 1 */
    CHECK(db_set.data[(1 * 4 + 0) * 20 + 7] == dout.data[(1 * 7 + 3) * 20 + 7], "split puts channel 3 into db[:, 0]");
    dl_tensor *all[] = {&dout, &da_set, &db_set, &da_add, &db_add};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}
