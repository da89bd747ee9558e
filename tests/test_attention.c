/* test_attention.c - multi-head scaled-dot-product attention. */
#include "testing.h"
#include "../core/attention.h"
#include "../core/safetensors.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef dl_status (*attn_fn)(dl_tensor *, const dl_tensor *, const dl_tensor *, const dl_tensor *, int, int);

/* Naive attention in double, written independently: for every (b, h, i)
 * build the full score row, softmax it, mix the values. */
static void attention_double(float *out, const float *q, const float *k, const float *v,
                             int B, int Lq, int Lk, int H, int D, int causal)
{
    int HD = H * D;
    double *s = malloc(sizeof(double) * (size_t)Lk);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Lq; i++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < Lk; j++) {
                    double dot = 0;
                    for (int d = 0; d < D; d++)
                        dot += (double)q[(b * Lq + i) * HD + h * D + d] * k[(b * Lk + j) * HD + h * D + d];
                    s[j] = (causal && j > i) ? -INFINITY : dot / sqrt((double)D);
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j < Lk; j++) { s[j] = exp(s[j] - mx); sum += s[j]; }
                for (int d = 0; d < D; d++) {
                    double acc = 0;
                    for (int j = 0; j < Lk; j++) acc += s[j] * v[(b * Lk + j) * HD + h * D + d];
                    out[(b * Lq + i) * HD + h * D + d] = (float)(acc / sum);
                }
            }
    free(s);
}

typedef struct { dl_tensor q, k, v, out, want; } attn_case;

static void case_alloc(attn_case *c, dl_test_rng *rng, int B, int Lq, int Lk, int HD, float range)
{
    dl_tensor_alloc(&c->q, 3, DL_SHAPE(B, Lq, HD));
    dl_tensor_alloc(&c->k, 3, DL_SHAPE(B, Lk, HD));
    dl_tensor_alloc(&c->v, 3, DL_SHAPE(B, Lk, HD));
    dl_tensor_alloc(&c->out, 3, DL_SHAPE(B, Lq, HD));
    dl_tensor_alloc(&c->want, 3, DL_SHAPE(B, Lq, HD));
    dl_test_fill(rng, c->q.data, (size_t)c->q.numel, -range, range);
    dl_test_fill(rng, c->k.data, (size_t)c->k.numel, -range, range);
    dl_test_fill(rng, c->v.data, (size_t)c->v.numel, -1, 1);
}
static void case_free(attn_case *c)
{
    dl_tensor_free(&c->q); dl_tensor_free(&c->k); dl_tensor_free(&c->v);
    dl_tensor_free(&c->out); dl_tensor_free(&c->want);
}

/* Both versions against the double computation on tiny cases. */
TEST(attention, matches_naive_double)
{
    dl_test_rng rng = {5};
    const int cfg[][6] = {   /* B, Lq, Lk, H, D, causal */
        {2, 5, 3, 2, 3, 0}, {1, 4, 4, 1, 7, 1}, {1, 6, 6, 3, 2, 1}, {3, 1, 9, 2, 5, 0}};
    for (int t = 0; t < 4; t++) {
        int B = cfg[t][0], Lq = cfg[t][1], Lk = cfg[t][2], H = cfg[t][3], D = cfg[t][4], causal = cfg[t][5];
        attn_case c;
        case_alloc(&c, &rng, B, Lq, Lk, H * D, 2.0f);
        attention_double(c.want.data, c.q.data, c.k.data, c.v.data, B, Lq, Lk, H, D, causal);
        for (int fast = 0; fast < 2; fast++) {
            CHECK((fast ? attention_forward : attention_forward_ref)(&c.out, &c.q, &c.k, &c.v, H, causal) == DL_OK,
                  "attention: %s", dl_error_message());
            CHECK_CLOSE(fast ? "attention vs double" : "attention_ref vs double", c.out.data, c.want.data,
                        (size_t)c.out.numel, 2e-6);
        }
        case_free(&c);
    }
}

/* One key: softmax over one score is 1, so every query returns v.
 * Causal: query 0 sees only key 0, so it returns v[0] too. */
TEST(attention, one_key_and_causal_first_query)
{
    dl_test_rng rng = {6};
    attn_case c;
    case_alloc(&c, &rng, 2, 7, 1, 12, 3.0f);
    for (int fast = 0; fast < 2; fast++) {
        CHECK((fast ? attention_forward : attention_forward_ref)(&c.out, &c.q, &c.k, &c.v, 3, 0) == DL_OK, "run");
        int bad = 0;
        for (int b = 0; b < 2; b++)
            for (int i = 0; i < 7; i++)
                for (int ch = 0; ch < 12; ch++)
                    bad += fabsf(c.out.data[(b * 7 + i) * 12 + ch] - c.v.data[b * 12 + ch]) > 1e-6f;
        CHECK(bad == 0, "one key (fast %d): %d outputs differ from v", fast, bad);
    }
    case_free(&c);

    case_alloc(&c, &rng, 1, 9, 9, 8, 3.0f);
    for (int fast = 0; fast < 2; fast++) {
        CHECK((fast ? attention_forward : attention_forward_ref)(&c.out, &c.q, &c.k, &c.v, 2, 1) == DL_OK, "causal");
        CHECK_CLOSE("causal query 0 == v[0]", c.out.data, c.v.data, 8, 1e-6);
        /* changing the last key/value must not change any query but the last */
        dl_tensor before;
        dl_tensor_alloc(&before, 3, DL_SHAPE(1, 9, 8));
        dl_tensor_copy(&before, &c.out);
        /* key 8 now matches query 8 strongly, and carries value 10 */
        float k8[8], v8[8];
        memcpy(k8, c.k.data + 64, sizeof k8);
        memcpy(v8, c.v.data + 64, sizeof v8);
        for (int ch = 0; ch < 8; ch++) { c.k.data[8 * 8 + ch] = 2.0f * c.q.data[8 * 8 + ch]; c.v.data[8 * 8 + ch] = 10.0f; }
        CHECK((fast ? attention_forward : attention_forward_ref)(&c.out, &c.q, &c.k, &c.v, 2, 1) == DL_OK, "causal");
        CHECK_CLOSE("causal: future key ignored", c.out.data, before.data, 8 * 8, 0.0);
        CHECK(c.out.data[64] > before.data[64] + 1.0f, "last query should see its own key: %g, before %g",
              c.out.data[64], before.data[64]);
        memcpy(c.k.data + 64, k8, sizeof k8);
        memcpy(c.v.data + 64, v8, sizeof v8);
        dl_tensor_free(&before);
    }
    case_free(&c);
}

/* Fast vs reference on random odd shapes, chunk boundaries, 1 and 2 threads. */
TEST(attention, fast_matches_reference)
{
    dl_test_rng rng = {7};
    int threads0 = dl_get_threads();
    for (int t = 0; t < 16; t++) {
        int B = dl_test_int(&rng, 1, 3), H = dl_test_int(&rng, 1, 4), D = (int[]){1, 3, 7, 8, 40}[t % 5];
        int Lk = (int[]){1, 3, 7, 77, 300}[dl_test_int(&rng, 0, 4)];
        int Lq = (int[]){1, 3, 7, 100, 257}[dl_test_int(&rng, 0, 4)];
        int causal = t % 3 == 0;
        if (causal) Lk = Lq;
        if (t == 15) { Lk = 100000; Lq = 35; B = 1; H = 1; D = 3; causal = 0; }   /* chunk of 16: 3 chunks, last partial */
        attn_case c;
        case_alloc(&c, &rng, B, Lq, Lk, H * D, 1.5f);
        CHECK(attention_forward_ref(&c.want, &c.q, &c.k, &c.v, H, causal) == DL_OK, "ref");
        dl_set_threads(1 + t % 2);
        CHECK(attention_forward(&c.out, &c.q, &c.k, &c.v, H, causal) == DL_OK, "fast: %s", dl_error_message());
        CHECK(dl_max_abs_diff(c.out.data, c.want.data, (size_t)c.out.numel) < 2e-6,
              "B %d Lq %d Lk %d H %d D %d causal %d threads %d: max diff %.3g", B, Lq, Lk, H, D, causal,
              1 + t % 2, dl_max_abs_diff(c.out.data, c.want.data, (size_t)c.out.numel));
        case_free(&c);
    }
    dl_set_threads(threads0);
    CHECK(openblas_get_num_threads() == threads0, "OpenBLAS threads restored: %d, want %d",
          openblas_get_num_threads(), threads0);
}

/* An SD-like cross-attention shape with many query chunks; and a large
 * self-attention where the answer is known: with all keys equal every
 * score is equal, so each output is the mean of the values. */
TEST(attention, sd_shapes_and_bounded_scratch)
{
    dl_test_rng rng = {8};
    attn_case c;
    case_alloc(&c, &rng, 1, 1000, 77, 8 * 40, 1.0f);
    CHECK(attention_forward_ref(&c.want, &c.q, &c.k, &c.v, 8, 0) == DL_OK, "ref");
    CHECK(attention_forward(&c.out, &c.q, &c.k, &c.v, 8, 0) == DL_OK, "fast");
    CHECK_CLOSE("Lq 1000, Lk 77, 8 heads of 40", c.out.data, c.want.data, (size_t)c.out.numel, 2e-6);
    case_free(&c);

    int L = 2048, HD = 16;
    case_alloc(&c, &rng, 1, L, L, HD, 1.0f);
    for (int j = 1; j < L; j++) memcpy(c.k.data + j * HD, c.k.data, sizeof(float) * HD);
    double mean[16] = {0};
    for (int j = 0; j < L; j++) for (int ch = 0; ch < HD; ch++) mean[ch] += c.v.data[j * HD + ch] / L;
    CHECK(attention_forward(&c.out, &c.q, &c.k, &c.v, 2, 0) == DL_OK, "fast");
    double worst = 0;
    for (int i = 0; i < L; i++) for (int ch = 0; ch < HD; ch++)
        worst = fmax(worst, fabs(c.out.data[i * HD + ch] - mean[ch]));
    CHECK(worst < 1e-5, "equal keys: output should be the mean of v, max error %.3g", worst);
    case_free(&c);

    /* the scratch bound */
    size_t full = (size_t)4096 * 4096;
    size_t s = attention_scratch_floats(4096, 4096, 2);
    CHECK(s <= 2 * (size_t)DL_ATTN_SCORE_BUDGET, "4096x4096 scratch %zu floats > 2 x budget", s);
    CHECK(s * 8 <= full, "scratch %zu floats is not much smaller than one head's score matrix (%zu)", s, full);
    CHECK(attention_query_chunk(4096, 77) == DL_ATTN_MAX_CHUNK, "chunk for Lk 77: %d", attention_query_chunk(4096, 77));
    CHECK(attention_query_chunk(5, 77) == 5, "chunk never exceeds Lq: %d", attention_query_chunk(5, 77));
    CHECK(attention_query_chunk(100, 1000000) == DL_ATTN_MIN_CHUNK, "huge Lk: chunk %d", attention_query_chunk(100, 1000000));
    for (int Lk = 1; Lk <= DL_ATTN_SCORE_BUDGET / DL_ATTN_MIN_CHUNK; Lk = Lk * 3 + 1) {
        int ch = attention_query_chunk(100000, Lk);
        CHECK(ch >= 1 && (size_t)ch * Lk <= DL_ATTN_SCORE_BUDGET, "Lk %d: chunk %d breaks the budget", Lk, ch);
        CHECK(attention_scratch_floats(100000, Lk, 3) == (size_t)3 * ch * Lk, "scratch formula for Lk %d", Lk);
    }
}

TEST(attention, errors_are_clear)
{
    dl_tensor q, k, v, out, k2;
    dl_tensor_alloc(&q, 3, DL_SHAPE(2, 5, 12));
    dl_tensor_alloc(&k, 3, DL_SHAPE(2, 7, 12));
    dl_tensor_alloc(&v, 3, DL_SHAPE(2, 7, 12));
    dl_tensor_alloc(&out, 3, DL_SHAPE(2, 5, 12));
    dl_tensor_alloc(&k2, 3, DL_SHAPE(1, 7, 12));
    attn_fn fns[2] = {attention_forward_ref, attention_forward};
    for (int f = 0; f < 2; f++) {
        CHECK(fns[f](&out, &q, &k, &v, 5, 0) == DL_ERR_ARG && strstr(dl_error_message(), "12 channels") &&
              strstr(dl_error_message(), "5 heads"), "heads not dividing: %s", dl_error_message());
        CHECK(fns[f](&out, &q, &k, &v, 3, 1) == DL_ERR_SHAPE && strstr(dl_error_message(), "causal"),
              "causal with Lq != Lk: %s", dl_error_message());
        CHECK(fns[f](&out, &q, &k2, &v, 3, 0) == DL_ERR_SHAPE && strstr(dl_error_message(), "attention: k"),
              "batch mismatch: %s", dl_error_message());
        CHECK(fns[f](&out, &q, &k, &q, 3, 0) == DL_ERR_SHAPE && strstr(dl_error_message(), "attention: v"),
              "v shape: %s", dl_error_message());
        CHECK(fns[f](&out, &q, &k, &v, 3, 0) == DL_OK, "valid call: %s", dl_error_message());
        CHECK(fns[f](&k, &q, &k, &v, 3, 0) == DL_ERR_SHAPE && strstr(dl_error_message(), "out"),
              "out shape: %s", dl_error_message());
        CHECK(fns[f](&out, NULL, &k, &v, 3, 0) == DL_ERR_ARG, "NULL q");
    }
    dl_tensor_free(&q); dl_tensor_free(&k); dl_tensor_free(&v); dl_tensor_free(&out); dl_tensor_free(&k2);
}

/* Against PyTorch 1.13 (diffusers-style head split, baddbmm, softmax, bmm). */
TEST(attention, matches_torch)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, "tests/fixtures/torch_kernels/norm_attn.safetensors") == DL_OK,
               "open fixture: %s", dl_error_message())) return;
    const struct { const char *q, *k, *v, *out; int heads, causal; } cases[] = {
        {"attn_cross.q", "attn_cross.k", "attn_cross.v", "attn_cross.out", 4, 0},
        {"attn_causal.x", "attn_causal.x", "attn_causal.x", "attn_causal.out", 2, 1},
        {"attn_sd.q", "attn_sd.k", "attn_sd.v", "attn_sd.out", 2, 0}};
    for (int i = 0; i < 3; i++) {
        dl_tensor q = {0}, k = {0}, v = {0}, want = {0}, out = {0};
        CHECK(dl_st_load_tensor(&f, cases[i].q, &q) == DL_OK && dl_st_load_tensor(&f, cases[i].k, &k) == DL_OK &&
              dl_st_load_tensor(&f, cases[i].v, &v) == DL_OK && dl_st_load_tensor(&f, cases[i].out, &want) == DL_OK,
              "load %s: %s", cases[i].out, dl_error_message());
        dl_tensor_alloc(&out, 3, q.shape);
        for (int fast = 0; fast < 2; fast++) {
            CHECK((fast ? attention_forward : attention_forward_ref)(&out, &q, &k, &v, cases[i].heads,
                  cases[i].causal) == DL_OK, "%s: %s", cases[i].out, dl_error_message());
            CHECK_CLOSE(cases[i].out, out.data, want.data, (size_t)out.numel, 2e-6);
        }
        dl_tensor_free(&q); dl_tensor_free(&k); dl_tensor_free(&v); dl_tensor_free(&want); dl_tensor_free(&out);
    }
    dl_st_close(&f);
}

/* One key (the toy U-Net's cross-attention on its class token): the fast
 * version copies the value to every query (softmax over one score is 1);
 * same as the reference, and exactly v. */
TEST(attention, single_key)
{
    dl_test_rng rng = {9};
    attn_case c;
    case_alloc(&c, &rng, 3, 64, 1, 4 * 8, 3.0f);
    CHECK(attention_forward_ref(&c.want, &c.q, &c.k, &c.v, 4, 0) == DL_OK, "ref");
    CHECK(attention_forward(&c.out, &c.q, &c.k, &c.v, 4, 0) == DL_OK, "fast: %s", dl_error_message());
    CHECK_CLOSE("one key: fast vs reference", c.out.data, c.want.data, (size_t)c.out.numel, 1e-6);
    int exact = 1;
    for (int b = 0; b < 3; b++)
        for (int i = 0; i < 64; i++)
            for (int ch = 0; ch < 32; ch++)
                exact &= c.out.data[((size_t)b * 64 + i) * 32 + ch] == c.v.data[(size_t)b * 32 + ch];
    CHECK(exact, "with one key every output row is that key's value");
    case_free(&c);
}
