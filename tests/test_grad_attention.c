/* test_grad_attention.c - attention_backward: finite-difference check of
 * the reference (dq, dk, dv) on small shapes (self and cross attention,
 * causal, 1 query / 1 key, D = 1, odd sizes 3 and 7), fast vs reference
 * across the query-chunk boundaries of the fast version (chunk 256: Lq =
 * 255, 256, 257, 300, 513), with and without the causal mask, in the
 * threaded (many (batch, head) pairs) and the sequential (one pair) mode;
 * += and NULL semantics (gradcheck.h); errors.
 *
 * Error level: softmax attention is smooth; with h = 3e-3 on q, k, v in
 * [-1.5, 1.5] the measured |numeric - analytic| is <= ~1e-5 (float32
 * rounding of the outputs / 2h, truncation h^2 f'''/6 about the same).
 * atol 2e-4 + rtol 2e-3 leaves a > 10x margin; a wrong gradient (missing
 * the softmax row-sum term, the scale applied twice, dK from Q of the
 * wrong query) is off by 1e-2 .. 1. */
#include "testing.h"
#include "gradcheck.h"
#include "../core/attention.h"

#include <stdio.h>
#include <string.h>

typedef struct { dl_tensor q, k, v, out; int heads, causal; } attn_case;

static dl_status attn_forward(gc_op *op)
{
    attn_case *c = op->ctx;
    return attention_forward_ref(&c->out, &c->q, &c->k, &c->v, c->heads, c->causal);
}

static dl_status attn_backward(gc_op *op, int fast, dl_tensor *g[], const dl_tensor *dout)
{
    attn_case *c = op->ctx;
    return (fast ? attention_backward : attention_backward_ref)(g[0], g[1], g[2], dout, &c->q, &c->k, &c->v,
                                                                c->heads, c->causal);
}

static const gc_tol ATTN_TOL = {.h = 3e-3, .atol = 2e-4, .rtol = 2e-3, .fast_rtol = 2e-5};

static void attn_case_run(dl_test_rng *r, int B, int Lq, int Lk, int heads, int D, int causal, int mode)
{
    attn_case c = {.heads = heads, .causal = causal};
    const int HD = heads * D;
    if (!dl_test_rand_tensor(&c.q, r, 3, DL_SHAPE(B, Lq, HD)) || !dl_test_rand_tensor(&c.k, r, 3, DL_SHAPE(B, Lk, HD)) ||
        !dl_test_rand_tensor(&c.v, r, 3, DL_SHAPE(B, Lk, HD)) || !dl_test_rand_tensor(&c.out, r, 3, DL_SHAPE(B, Lq, HD)))
        return;
    // wider q and k: sharper (less uniform) attention rows
    for (int64_t i = 0; i < c.q.numel; i++) c.q.data[i] *= 1.5f;
    for (int64_t i = 0; i < c.k.numel; i++) c.k.data[i] *= 1.5f;
    gc_op op = {.ninputs = 3, .inputs = {&c.q, &c.k, &c.v}, .names = {"dq", "dk", "dv"}, .out = &c.out,
                .forward = attn_forward, .backward = attn_backward, .ctx = &c};
    snprintf(op.label, sizeof op.label, "attention_backward B %d Lq %d Lk %d heads %d D %d%s", B, Lq, Lk, heads, D,
             causal ? " causal" : "");
    gc_check_op(&op, r, ATTN_TOL, mode);
    dl_tensor_free(&c.q); dl_tensor_free(&c.k); dl_tensor_free(&c.v); dl_tensor_free(&c.out);
}

TEST(attention_backward, gradcheck_ref)
{
    dl_test_rng r = {0xa77e2u};
    attn_case_run(&r, 2, 3, 5, 2, 3, 0, GC_NUMERIC);    // cross-attention shape, 2 heads of 3
    attn_case_run(&r, 1, 7, 7, 1, 7, 1, GC_NUMERIC);    // causal self-attention
    attn_case_run(&r, 2, 4, 4, 3, 2, 0, GC_NUMERIC);    // self-attention, 3 heads
    attn_case_run(&r, 1, 1, 1, 1, 1, 0, GC_NUMERIC);    // one query, one key: p = 1, dq = dk = 0
    attn_case_run(&r, 1, 5, 1, 2, 4, 0, GC_NUMERIC);    // one key (the toy U-Net's class token)
    attn_case_run(&r, 1, 3, 6, 4, 1, 0, GC_NUMERIC);    // D = 1
}

TEST(attention_backward, fast_matches_reference)
{
    dl_test_rng r = {0xa77e3u};
    attn_case_run(&r, 2, 7, 3, 2, 3, 0, GC_NO_NUMERIC);
    attn_case_run(&r, 3, 9, 9, 2, 8, 1, GC_NO_NUMERIC);
    attn_case_run(&r, 4, 64, 64, 4, 8, 0, GC_NO_NUMERIC);     // toy U-Net self-attention, small D
    attn_case_run(&r, 4, 64, 1, 4, 8, 0, GC_NO_NUMERIC);      // toy U-Net cross-attention (1 class token)
}

/* attention_query_chunk is 256 here (budget 1 Mi floats / Lk > 256), so
 * these cover: one chunk exactly full, one more query than a chunk, a
 * partial last chunk, and a last chunk of one query; causal masks that
 * cross chunks; one (batch, head) pair (sequential, threaded BLAS) and many
 * pairs (pairs split over the threads). */
TEST(attention_backward, fast_chunk_boundaries)
{
    dl_test_rng r = {0xa77e4u};
    CHECK(attention_query_chunk(300, 300) == 256, "chunk is %d, the test expects 256", attention_query_chunk(300, 300));
    attn_case_run(&r, 1, 256, 256, 1, 4, 0, GC_BIG);
    attn_case_run(&r, 1, 257, 7, 1, 4, 0, GC_BIG);
    attn_case_run(&r, 1, 300, 300, 2, 3, 1, GC_BIG);
    attn_case_run(&r, 2, 300, 40, 2, 4, 0, GC_BIG);
    attn_case_run(&r, 1, 513, 513, 1, 2, 1, GC_BIG);
    attn_case_run(&r, 1, 255, 255, 1, 5, 1, GC_BIG);
}

TEST(attention_backward, scratch_bound)
{
    // two blocks (P and dP) of chunk x Lk floats per thread
    CHECK(attention_backward_scratch_floats(4096, 4096, 2) == (size_t)2 * 2 * 256 * 4096, "SD self-attention bound");
    CHECK(attention_backward_scratch_floats(64, 64, 2) == (size_t)2 * 2 * 64 * 64, "toy U-Net bound");
}

TEST(attention_backward, errors)
{
    dl_tensor q, k, v, dout, dout_bad, dq, dk, dk_bad, dv;
    dl_tensor_alloc(&q, 3, DL_SHAPE(2, 5, 8));
    dl_tensor_alloc(&k, 3, DL_SHAPE(2, 3, 8));
    dl_tensor_alloc(&v, 3, DL_SHAPE(2, 3, 8));
    dl_tensor_alloc(&dout, 3, DL_SHAPE(2, 5, 8));
    dl_tensor_alloc(&dout_bad, 3, DL_SHAPE(2, 3, 8));
    dl_tensor_alloc(&dq, 3, DL_SHAPE(2, 5, 8));
    dl_tensor_alloc(&dk, 3, DL_SHAPE(2, 3, 8));
    dl_tensor_alloc(&dk_bad, 3, DL_SHAPE(2, 5, 8));
    dl_tensor_alloc(&dv, 3, DL_SHAPE(2, 3, 8));
    for (int fast = 0; fast < 2; fast++) {
        dl_status (*f)(dl_tensor *, dl_tensor *, dl_tensor *, const dl_tensor *, const dl_tensor *, const dl_tensor *,
                       const dl_tensor *, int, int) = fast ? attention_backward : attention_backward_ref;
        CHECK(f(&dq, &dk, &dv, &dout, &q, &k, &v, 2, 0) == DL_OK, "valid call: %s", dl_error_message());
        EXPECT_FAIL(f(&dq, &dk, &dv, &dout_bad, &q, &k, &v, 2, 0), DL_ERR_SHAPE, "attention", "wrong dout");
        CHECK(strstr(dl_error_message(), "dout") != NULL, "should name dout: %s", dl_error_message());
        EXPECT_FAIL(f(&dq, &dk_bad, &dv, &dout, &q, &k, &v, 2, 0), DL_ERR_SHAPE, "attention", "wrong dk");
        EXPECT_FAIL(f(&dq, &dk, &dv, &dout, &q, &k, &v, 3, 0), DL_ERR_ARG, "attention", "8 channels in 3 heads");
        EXPECT_FAIL(f(&dq, &dk, &dv, &dout, &q, &k, &v, 2, 1), DL_ERR_SHAPE, "attention", "causal with Lq != Lk");
        EXPECT_FAIL(f(&dq, &dk, &dq, &dout, &q, &k, &v, 2, 0), DL_ERR_SHAPE, "attention", "dv given dq's shape");
        EXPECT_FAIL(f(&dq, &dk, &dv, &dout, &q, &k, &dk, 2, 0), DL_ERR_ARG, "attention", "dk aliases v");
        EXPECT_FAIL(f(&dq, &dk, &dv, NULL, &q, &k, &v, 2, 0), DL_ERR_ARG, "attention", "NULL dout");
    }
    dl_tensor *all[] = {&q, &k, &v, &dout, &dout_bad, &dq, &dk, &dk_bad, &dv};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}
