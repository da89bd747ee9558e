/* test_tensor.c - the tensor type, shape checks and the arena. */
#include "testing.h"
#include "../core/tensor.h"

#include <stdio.h>
#include <string.h>

TEST(tensor, alloc_shape_and_errors)
{
    dl_tensor t;
    CHECK(dl_tensor_alloc(&t, 4, DL_SHAPE(2, 3, 5, 7)) == DL_OK, "alloc failed: %s", dl_error_message());
    CHECK(t.numel == 210, "numel %lld", (long long)t.numel);
    char buf[64];
    CHECK(!strcmp(dl_shape_str(&t, buf, sizeof buf), "[2, 3, 5, 7]"), "shape string %s", buf);
    CHECK(dl_check_shape(&t, "op", "x", 4, DL_SHAPE(-1, 3, -1, -1)) == DL_OK, "wildcard shape check");
    CHECK(dl_check_shape(&t, "conv2d", "input", 4, DL_SHAPE(-1, 4, -1, -1)) == DL_ERR_SHAPE, "mismatch not caught");
    CHECK(strstr(dl_error_message(), "[2, 3, 5, 7]") && strstr(dl_error_message(), "conv2d"),
          "message should name op and shape: %s", dl_error_message());
    dl_tensor v;
    CHECK(dl_tensor_reshape(&v, &t, 2, DL_SHAPE(6, 35)) == DL_OK && v.data == t.data, "reshape view");
    CHECK(dl_tensor_reshape(&v, &t, 2, DL_SHAPE(6, 36)) == DL_ERR_SHAPE, "bad reshape accepted");
    dl_tensor_free(&t);
    CHECK(dl_tensor_alloc(&t, 5, DL_SHAPE(1, 1, 1, 1, 1)) != DL_OK, "5-d tensor accepted");
    CHECK(dl_tensor_alloc(&t, 2, DL_SHAPE(0, 4)) != DL_OK, "zero dimension accepted");
    CHECK(dl_tensor_alloc(&t, 4, DL_SHAPE(1 << 20, 1 << 20, 1 << 20, 1 << 20)) != DL_OK, "absurd size accepted");
}

TEST(tensor, arena_alignment_and_overflow)
{
    dl_arena a;
    CHECK(dl_arena_init(&a, 1000) == DL_OK, "arena init");
    dl_tensor x, y, z;
    size_t mark = dl_arena_mark(&a);
    CHECK(dl_arena_tensor(&a, &x, 1, DL_SHAPE(3)) == DL_OK, "x");
    CHECK(dl_arena_tensor(&a, &y, 2, DL_SHAPE(10, 10)) == DL_OK, "y");
    CHECK(((uintptr_t)y.data & 63) == 0, "arena tensors are 64-byte aligned");
    CHECK(dl_arena_tensor(&a, &z, 1, DL_SHAPE(2000)) == DL_ERR_MEMORY, "overflow not caught");
    dl_arena_reset(&a, mark);
    CHECK(dl_arena_tensor(&a, &z, 1, DL_SHAPE(900)) == DL_OK, "reset frees space");
    dl_arena_free(&a);
}

TEST(tensor, error_message_can_wrap_itself)
{
    dl_fail(DL_ERR_IO, "inner problem");
    dl_fail(DL_ERR_FORMAT, "outer: %s", dl_error_message());
    CHECK(!strcmp(dl_error_message(), "outer: inner problem"), "got '%s'", dl_error_message());
}

/* A program started without OMP_WAIT_POLICY or GOMP_SPINCOUNT restarts
 * itself with GOMP_SPINCOUNT=20000 (see the end of core/tensor.c); a choice
 * made by the user is kept. */
TEST(tensor, omp_short_spin_by_default)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT %s/run_tests --omp-env | grep -qx '(unset) 20000'",
             dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0, "run_tests started without OpenMP settings did not get GOMP_SPINCOUNT=20000");
    snprintf(cmd, sizeof cmd, "env -u GOMP_SPINCOUNT OMP_WAIT_POLICY=active %s/run_tests --omp-env | grep -qx 'active (unset)'",
             dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0, "a user's OMP_WAIT_POLICY=active was not kept");
}
