/* test_torch_conv.c - conv2d, linear, upsample and avg-pool against PyTorch.
 * The fixture was written by tests/torch_refs/gen_kernel_refs_conv.py
 * (torch 1.13 CPU, float32); see tests/fixtures/torch_kernels/README.md. */
#include "testing.h"
#include "../core/conv2d.h"
#include "../core/linear.h"
#include "../core/resample.h"
#include "../core/safetensors.h"

#define FIXTURE "tests/fixtures/torch_kernels/conv_linear.safetensors"
#define TOL 2e-5   /* float32, different summation order */

static int load(dl_safetensors *f, const char *name, dl_tensor *t)
{
    return CHECK(dl_st_load_tensor(f, name, t) == DL_OK, "%s", dl_error_message());
}

/* Run one conv case with both the reference and the fast kernel. */
static void check_conv(dl_safetensors *f, const char *what, const dl_tensor *x, const char *wname,
                       const char *bname, const char *oname, int stride, int pad)
{
    dl_tensor w = {0}, b = {0}, want = {0}, got = {0};
    if (!load(f, wname, &w) || !load(f, oname, &want)) goto done;
    if (bname && !load(f, bname, &b)) goto done;
    dl_tensor_alloc(&got, 4, want.shape);
    CHECK(conv2d_forward_ref(&got, x, &w, bname ? &b : NULL, stride, pad) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE(what, got.data, want.data, (size_t)want.numel, TOL);
    dl_tensor_fill(&got, 0);
    CHECK(conv2d_forward(&got, x, &w, bname ? &b : NULL, stride, pad) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE(what, got.data, want.data, (size_t)want.numel, TOL);
done:
    dl_tensor_free(&w); dl_tensor_free(&b); dl_tensor_free(&want); dl_tensor_free(&got);
}

TEST(conv2d, torch_reference)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, FIXTURE) == DL_OK, "%s", dl_error_message())) return;
    dl_tensor x = {0};
    if (load(&f, "conv3.x", &x)) {
        check_conv(&f, "conv 3x3 pad 1", &x, "conv3.w", "conv3.b", "conv3.out", 1, 1);
        check_conv(&f, "downsample 3x3 stride 2", &x, "down.w", "down.b", "down.out", 2, 1);
        check_conv(&f, "conv 1x1 no bias", &x, "conv1.w", NULL, "conv1.out", 1, 0);
        check_conv(&f, "conv 5x2 stride 3 pad 2", &x, "conv52.w", NULL, "conv52.out", 3, 2);
    }
    dl_tensor_free(&x);
    dl_st_close(&f);
}

TEST(linear, torch_reference)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, FIXTURE) == DL_OK, "%s", dl_error_message())) return;
    dl_tensor x = {0}, w = {0}, b = {0}, want = {0}, got = {0};
    if (load(&f, "linear.x", &x) && load(&f, "linear.w", &w) && load(&f, "linear.b", &b) &&
        load(&f, "linear.out", &want)) {
        dl_tensor_alloc(&got, want.ndim, want.shape);
        CHECK(linear_forward_ref(&got, &x, &w, &b) == DL_OK, "%s", dl_error_message());
        CHECK_CLOSE("linear ref", got.data, want.data, (size_t)want.numel, TOL);
        dl_tensor_fill(&got, 0);
        CHECK(linear_forward(&got, &x, &w, &b) == DL_OK, "%s", dl_error_message());
        CHECK_CLOSE("linear fast", got.data, want.data, (size_t)want.numel, TOL);
    }
    dl_tensor_free(&x); dl_tensor_free(&w); dl_tensor_free(&b); dl_tensor_free(&want); dl_tensor_free(&got);
    dl_st_close(&f);
}

TEST(resample, torch_reference)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, FIXTURE) == DL_OK, "%s", dl_error_message())) return;
    dl_tensor x = {0}, up = {0}, pool = {0}, got = {0};
    if (load(&f, "conv3.x", &x) && load(&f, "upsample.out", &up) && load(&f, "avgpool.out", &pool)) {
        dl_tensor_alloc(&got, 4, up.shape);
        CHECK(upsample_nearest2x_forward_ref(&got, &x) == DL_OK, "%s", dl_error_message());
        CHECK_CLOSE("upsample ref", got.data, up.data, (size_t)up.numel, 0.0);
        CHECK(upsample_nearest2x_forward(&got, &x) == DL_OK, "%s", dl_error_message());
        CHECK_CLOSE("upsample fast", got.data, up.data, (size_t)up.numel, 0.0);
        dl_tensor_free(&got);
        dl_tensor_alloc(&got, 4, pool.shape);
        CHECK(avg_pool2d_forward_ref(&got, &x, 2, 2) == DL_OK, "%s", dl_error_message());
        CHECK_CLOSE("avg_pool ref", got.data, pool.data, (size_t)pool.numel, 1e-6);
        CHECK(avg_pool2d_forward(&got, &x, 2, 2) == DL_OK, "%s", dl_error_message());
        CHECK_CLOSE("avg_pool fast", got.data, pool.data, (size_t)pool.numel, 1e-6);
    }
    dl_tensor_free(&x); dl_tensor_free(&up); dl_tensor_free(&pool); dl_tensor_free(&got);
    dl_st_close(&f);
}
