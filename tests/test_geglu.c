/* test_geglu.c - GEGLU (out = h * gelu(g)): forward fast vs reference and
 * vs the two kernels it replaces (gelu_erf then mul); backward by finite
 * differences on small shapes (g on [-6, 6]: both tails), fast vs
 * reference on bigger ones (threaded), += and NULL semantics (gradcheck.h),
 * shape and overlap errors.
 *
 * Error level: smooth like gelu (see test_grad_elementwise.c): h = 3e-3,
 * atol 2e-4 + rtol 2e-3. A wrong derivative (gelu instead of gelu', or a
 * missing h factor) is off by O(1). */
#include "testing.h"
#include "gradcheck.h"
#include "../core/elementwise.h"
#include "../core/geglu.h"

#include <stdio.h>

typedef struct { dl_tensor h, g, y; } geglu_case;

static dl_status gg_forward(gc_op *op)
{
    geglu_case *c = op->ctx;
    return geglu_forward_ref(&c->y, &c->h, &c->g);
}

static dl_status gg_backward(gc_op *op, int fast, dl_tensor *grad[], const dl_tensor *dout)
{
    geglu_case *c = op->ctx;
    return (fast ? geglu_backward : geglu_backward_ref)(grad[0], grad[1], dout, &c->h, &c->g);
}

static const gc_tol GEGLU_TOL = {.h = 3e-3, .atol = 2e-4, .rtol = 2e-3, .fast_rtol = 1e-5};

static void geglu_run(dl_test_rng *r, int ndim, const int64_t shape[], float range, int mode)
{
    geglu_case c;
    if (!dl_test_rand_tensor(&c.h, r, ndim, shape) || !dl_test_rand_tensor(&c.g, r, ndim, shape) ||
        !dl_test_rand_tensor(&c.y, r, ndim, shape))
        return;
    for (int64_t i = 0; i < c.g.numel; i++) c.g.data[i] *= range;
    gc_op op = {.ninputs = 2, .inputs = {&c.h, &c.g}, .names = {"dh", "dg"}, .out = &c.y,
                .forward = gg_forward, .backward = gg_backward, .ctx = &c};
    char sh[64];
    snprintf(op.label, sizeof op.label, "geglu_backward %s, g in +-%g", dl_shape_str(&c.h, sh, sizeof sh), (double)range);
    gc_check_op(&op, r, GEGLU_TOL, mode);
    dl_tensor_free(&c.h); dl_tensor_free(&c.g); dl_tensor_free(&c.y);
}

TEST(geglu, backward_gradcheck_and_fast)
{
    dl_test_rng r = {0x6e61u};
    geglu_run(&r, 3, DL_SHAPE(3, 7, 5), 6.0f, GC_NUMERIC);
    geglu_run(&r, 1, DL_SHAPE(1), 1.0f, GC_NUMERIC);
    geglu_run(&r, 3, DL_SHAPE(2, 13, 17), 12.0f, GC_NO_NUMERIC);
    geglu_run(&r, 3, DL_SHAPE(8, 64, 256), 5.0f, GC_BIG);          /* the toy U-Net's width, threaded */
}

/* Forward: fast = reference, and = gelu_erf_forward then mul_forward. */
TEST(geglu, forward_matches_gelu_then_mul)
{
    dl_test_rng r = {0x6e62u};
    dl_tensor h, g, y, y_ref, gg, y_two;
    dl_test_rand_tensor(&h, &r, 3, DL_SHAPE(4, 64, 256));
    dl_test_rand_tensor(&g, &r, 3, DL_SHAPE(4, 64, 256));
    for (int64_t i = 0; i < g.numel; i++) g.data[i] *= 6.0f;
    dl_tensor_alloc(&y, 3, h.shape);
    dl_tensor_alloc(&y_ref, 3, h.shape);
    dl_tensor_alloc(&gg, 3, h.shape);
    dl_tensor_alloc(&y_two, 3, h.shape);
    dl_tensor_fill(&y, 1e9f);
    CHECK(geglu_forward_ref(&y_ref, &h, &g) == DL_OK, "%s", dl_error_message());
    CHECK(geglu_forward(&y, &h, &g) == DL_OK, "%s", dl_error_message());
    CHECK(gelu_erf_forward_ref(&gg, &g) == DL_OK && mul_forward_ref(&y_two, &h, &gg) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE_REL("geglu fast vs reference", &y, &y_ref, 1e-5);
    CHECK_CLOSE_REL("geglu reference vs gelu_erf then mul", &y_ref, &y_two, 1e-6);
    dl_tensor bad;
    dl_tensor_alloc(&bad, 3, DL_SHAPE(4, 64, 255));
    EXPECT_FAIL(geglu_forward(&y, &h, &bad), DL_ERR_SHAPE, "geglu", "g of another shape");
    EXPECT_FAIL(geglu_backward(&gg, &y, &y, &h, &g), DL_ERR_ARG, "geglu_backward", "dg is dout");
    dl_tensor *all[] = {&h, &g, &y, &y_ref, &gg, &y_two, &bad};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}
