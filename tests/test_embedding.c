/* test_embedding.c - embedding_forward (table lookup) by hand and fast vs
 * reference; embedding_backward: finite-difference check of the reference
 * (dtable, with repeated ids so rows collect several gradients), fast vs
 * reference, += and NULL semantics (gradcheck.h); id range errors.
 *
 * Error level: the lookup is linear in the table, no truncation error; with
 * h = 1e-2 |numeric - analytic| is ~1e-7. atol 1e-4 + rtol 1e-3. */
#include "testing.h"
#include "gradcheck.h"
#include "../core/embedding.h"

#include <stdio.h>
#include <string.h>

TEST(embedding, forward_by_hand)
{
    float td[3 * 2] = {1, 2, 3, 4, 5, 6};                  // table [3, 2]
    const int ids[4] = {2, 0, 2, 1};
    const float want[8] = {5, 6, 1, 2, 5, 6, 3, 4};
    dl_tensor table, out;
    dl_tensor_view(&table, td, 2, DL_SHAPE(3, 2));
    dl_tensor_alloc(&out, 2, DL_SHAPE(4, 2));
    for (int fast = 0; fast < 2; fast++) {
        dl_tensor_fill(&out, 99.0f);
        CHECK((fast ? embedding_forward : embedding_forward_ref)(&out, &table, ids, 4) == DL_OK, "%s",
              dl_error_message());
        CHECK_CLOSE(fast ? "embedding fast" : "embedding ref", out.data, want, 8, 0);
    }
    dl_tensor_free(&out);
}

typedef struct { dl_tensor table, out; int *ids; int n; } emb_case;

static dl_status emb_forward(gc_op *op)
{
    emb_case *c = op->ctx;
    return embedding_forward_ref(&c->out, &c->table, c->ids, c->n);
}

static dl_status emb_backward(gc_op *op, int fast, dl_tensor *g[], const dl_tensor *dout)
{
    emb_case *c = op->ctx;
    return (fast ? embedding_backward : embedding_backward_ref)(g[0], dout, c->ids, c->n);
}

static void emb_case_run(dl_test_rng *r, int num, int dim, int n, int mode)
{
    emb_case c = {.n = n};
    int ids[512];
    if (!CHECK(n <= 512, "test case too big")) return;
    for (int i = 0; i < n; i++) ids[i] = dl_test_int(r, 0, num - 1);   // repeats when n > num
    c.ids = ids;
    if (!dl_test_rand_tensor(&c.table, r, 2, DL_SHAPE(num, dim)) || !dl_test_rand_tensor(&c.out, r, 2, DL_SHAPE(n, dim)))
        return;
    gc_op op = {.ninputs = 1, .inputs = {&c.table}, .names = {"dtable"}, .out = &c.out,
                .forward = emb_forward, .backward = emb_backward, .ctx = &c};
    snprintf(op.label, sizeof op.label, "embedding_backward table [%d, %d] n %d", num, dim, n);
    gc_check_op(&op, r, (gc_tol){.h = 1e-2, .atol = 1e-4, .rtol = 1e-3, .fast_rtol = 1e-6}, mode);
    dl_tensor_free(&c.table); dl_tensor_free(&c.out);
}

TEST(embedding_backward, gradcheck_and_fast)
{
    dl_test_rng r = {0xe3b0u};
    emb_case_run(&r, 11, 7, 9, GC_NUMERIC);        // the toy U-Net's 10 classes + null
    emb_case_run(&r, 3, 5, 12, GC_NUMERIC);        // every id repeated
    emb_case_run(&r, 1, 1, 1, GC_NUMERIC);
    emb_case_run(&r, 11, 64, 128, GC_NO_NUMERIC);  // a training batch of class tokens
}

TEST(embedding, errors)
{
    dl_tensor table, out, out_bad;
    dl_tensor_alloc(&table, 2, DL_SHAPE(11, 4));
    dl_tensor_alloc(&out, 2, DL_SHAPE(3, 4));
    dl_tensor_alloc(&out_bad, 2, DL_SHAPE(3, 5));
    const int ok_ids[3] = {0, 10, 5}, neg[3] = {0, -1, 5}, big[3] = {11, 0, 0};
    for (int fast = 0; fast < 2; fast++) {
        dl_status (*f)(dl_tensor *, const dl_tensor *, const int *, int) = fast ? embedding_forward : embedding_forward_ref;
        dl_status (*b)(dl_tensor *, const dl_tensor *, const int *, int) = fast ? embedding_backward : embedding_backward_ref;
        CHECK(f(&out, &table, ok_ids, 3) == DL_OK, "valid: %s", dl_error_message());
        EXPECT_FAIL(f(&out, &table, neg, 3), DL_ERR_ARG, "embedding", "id -1");
        CHECK(strstr(dl_error_message(), "ids[1] = -1") != NULL, "should name the bad id: %s", dl_error_message());
        EXPECT_FAIL(f(&out, &table, big, 3), DL_ERR_ARG, "embedding", "id 11 of 11 rows");
        EXPECT_FAIL(f(&out, &table, ok_ids, 2), DL_ERR_SHAPE, "embedding", "n does not match out");
        EXPECT_FAIL(f(&out_bad, &table, ok_ids, 3), DL_ERR_SHAPE, "embedding", "wrong dim");
        EXPECT_FAIL(f(&out, &table, NULL, 3), DL_ERR_ARG, "embedding", "NULL ids");
        EXPECT_FAIL(f(&out, &table, ok_ids, 0), DL_ERR_ARG, "embedding", "n = 0");
        CHECK(b(&table, &out, ok_ids, 3) == DL_OK, "backward valid: %s", dl_error_message());
        CHECK(b(NULL, &out, ok_ids, 3) == DL_OK, "backward dtable NULL: %s", dl_error_message());
        EXPECT_FAIL(b(&table, &out, big, 3), DL_ERR_ARG, "embedding_backward", "backward id out of range");
        EXPECT_FAIL(b(&table, &out_bad, ok_ids, 3), DL_ERR_SHAPE, "embedding_backward", "backward wrong dout");
    }
    dl_tensor_free(&table); dl_tensor_free(&out); dl_tensor_free(&out_bad);
}
