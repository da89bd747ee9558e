/* test_elementwise.c - activations, softmax, broadcast add/mul. */
#include "testing.h"
#include "../core/elementwise.h"
#include "../core/safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef dl_status (*unary_fn)(dl_tensor *, const dl_tensor *);

/* Double-precision definitions, written independently of core/. */
static double silu_d(double x)       { return x / (1.0 + exp(-x)); }
static double gelu_erf_d(double x)   { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }
static double gelu_tanh_d(double x)  { return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))); }
static double quick_gelu_d(double x) { return x / (1.0 + exp(-1.702 * x)); }

static const struct {
    const char *name;
    unary_fn ref, fast;
    double (*exact)(double);
} acts[] = {
    {"silu", silu_forward_ref, silu_forward, silu_d},
    {"gelu_erf", gelu_erf_forward_ref, gelu_erf_forward, gelu_erf_d},
    {"gelu_tanh", gelu_tanh_forward_ref, gelu_tanh_forward, gelu_tanh_d},
    {"quick_gelu", quick_gelu_forward_ref, quick_gelu_forward, quick_gelu_d},
};
#define NACTS (int)(sizeof acts / sizeof acts[0])

TEST(elementwise, gelu_known_values)
{
    /* gelu(1) = 0.5 (1 + erf(1/sqrt 2)) = Phi(1) = 0.8413447... */
    CHECK(fabs(gelu_erf_d(1.0) - 0.8413447460685429) < 1e-12, "test's own gelu definition");
    dl_tensor x, y, yf;
    dl_tensor_alloc(&x, 1, DL_SHAPE(5));
    dl_tensor_alloc(&y, 1, DL_SHAPE(5));
    dl_tensor_alloc(&yf, 1, DL_SHAPE(5));
    const float xs[5] = {1.0f, -1.0f, 0.0f, 3.0f, -3.0f};
    memcpy(x.data, xs, sizeof xs);
    CHECK(gelu_erf_forward_ref(&y, &x) == DL_OK && gelu_erf_forward(&yf, &x) == DL_OK, "gelu runs");
    for (int i = 0; i < 5; i++) {
        double want = gelu_erf_d(xs[i]);
        CHECK(fabs(y.data[i] - want) < 1e-6, "gelu_ref(%g) = %.9g, want %.9g", xs[i], y.data[i], want);
        CHECK(fabs(yf.data[i] - want) < 1e-6, "gelu(%g) = %.9g, want %.9g", xs[i], yf.data[i], want);
    }
    CHECK(fabs(y.data[0] - 0.8413447f) < 1e-6, "gelu(1) = %.9g", y.data[0]);
    CHECK(y.data[2] == 0.0f, "gelu(0) = %g", y.data[2]);
    dl_tensor_free(&x); dl_tensor_free(&y); dl_tensor_free(&yf);
}

/* Reference and fast activations against the double definitions on a sweep. */
TEST(elementwise, activations_match_definitions)
{
    int n = 4001;
    dl_tensor x, y;
    dl_tensor_alloc(&x, 1, DL_SHAPE(n));
    dl_tensor_alloc(&y, 1, DL_SHAPE(n));
    for (int i = 0; i < n; i++) x.data[i] = -20.0f + 40.0f * (float)i / (float)(n - 1);
    for (int a = 0; a < NACTS; a++) {
        for (int fast = 0; fast < 2; fast++) {
            CHECK((fast ? acts[a].fast : acts[a].ref)(&y, &x) == DL_OK, "%s runs", acts[a].name);
            double worst = 0; int at = 0;
            for (int i = 0; i < n; i++) {
                double want = acts[a].exact(x.data[i]);
                /* a few float ulps of max(1, |x|); fast erf has 1.5e-7 absolute error */
                double err = fabs(y.data[i] - want) / fmax(1.0, fabs(x.data[i]));
                if (!(err <= worst)) { worst = err; at = i; }
            }
            CHECK(worst < 5e-7, "%s%s: relative error %.3g at x = %g", acts[a].name, fast ? "" : "_ref", worst, x.data[at]);
        }
    }
    dl_tensor_free(&x); dl_tensor_free(&y);
}

TEST(elementwise, fast_exp_and_erf)
{
    double worst = 0;
    for (int i = 0; i <= 100000; i++) {
        float x = -87.0f + 175.0f * (float)i / 100000.0f;
        double want = exp((double)x), got = dl_expf_fast(x);
        double rel = fabs(got - want) / want;
        if (rel > worst) worst = rel;
    }
    CHECK(worst < 3e-7, "dl_expf_fast relative error %.3g (want < 2.5 ulp)", worst);
    CHECK(dl_expf_fast(0.0f) == 1.0f, "exp(0) = %.9g", dl_expf_fast(0.0f));
    CHECK(dl_expf_fast(-100.0f) == 0.0f, "exp(-100) underflows to 0: %g", dl_expf_fast(-100.0f));
    CHECK(isnan(dl_expf_fast(NAN)), "exp(nan) is nan");
    CHECK(isfinite(dl_expf_fast(1000.0f)) && dl_expf_fast(1000.0f) > 1e38f, "exp(1000) saturates");
    worst = 0;
    for (int i = 0; i <= 20000; i++) {
        float x = -6.0f + 12.0f * (float)i / 20000.0f;
        double d = fabs(dl_erff_fast(x) - erf((double)x));
        if (d > worst) worst = d;
    }
    CHECK(worst < 6e-7, "dl_erff_fast abs error %.3g (A&S 7.1.26 bound 1.5e-7 + float cancellation near 0)", worst);
}

/* Fast vs reference on random shapes, including in place. */
TEST(elementwise, fast_matches_reference)
{
    dl_test_rng rng = {12345};
    const int64_t shapes[][4] = {{1, 1, 1, 1}, {3, 1, 1, 1}, {7, 1, 1, 1}, {2, 3, 5, 7}, {1, 33, 1, 1027}, {2, 320, 8, 9}};
    const int ndims[] = {1, 1, 1, 4, 4, 4};
    for (int s = 0; s < 6; s++) {
        dl_tensor x, yr, yf;
        dl_tensor_alloc(&x, ndims[s], shapes[s]);
        dl_tensor_alloc(&yr, ndims[s], shapes[s]);
        dl_tensor_alloc(&yf, ndims[s], shapes[s]);
        dl_test_fill(&rng, x.data, (size_t)x.numel, -8.0f, 8.0f);
        for (int a = 0; a < NACTS; a++) {
            CHECK(acts[a].ref(&yr, &x) == DL_OK, "%s_ref", acts[a].name);
            CHECK(acts[a].fast(&yf, &x) == DL_OK, "%s", acts[a].name);
            CHECK_CLOSE(acts[a].name, yf.data, yr.data, (size_t)x.numel, 4e-6);
            /* in place: out is x itself */
            dl_tensor_copy(&yf, &x);
            CHECK(acts[a].fast(&yf, &yf) == DL_OK, "%s in place", acts[a].name);
            CHECK_CLOSE(acts[a].name, yf.data, yr.data, (size_t)x.numel, 4e-6);
        }
        dl_tensor_free(&x); dl_tensor_free(&yr); dl_tensor_free(&yf);
    }
}

TEST(elementwise, softmax_properties)
{
    dl_test_rng rng = {777};
    const int lens[] = {1, 3, 7, 77, 4097};
    for (int t = 0; t < 5; t++) {
        int L = lens[t], rows = 5;
        dl_tensor x, yr, yf, xs;
        dl_tensor_alloc(&x, 2, DL_SHAPE(rows, L));
        dl_tensor_alloc(&xs, 2, DL_SHAPE(rows, L));
        dl_tensor_alloc(&yr, 2, DL_SHAPE(rows, L));
        dl_tensor_alloc(&yf, 2, DL_SHAPE(rows, L));
        dl_test_fill(&rng, x.data, (size_t)x.numel, -10.0f, 10.0f);
        for (int j = 0; j < L; j++) x.data[4 * L + j] += 5000.0f;   /* huge row: needs max subtraction */
        CHECK(softmax_forward_ref(&yr, &x) == DL_OK && softmax_forward(&yf, &x) == DL_OK, "softmax runs");
        for (int r = 0; r < rows; r++) {
            /* independent double computation */
            double mx = -INFINITY, sum = 0, s_ref = 0, s_fast = 0, worst = 0;
            for (int j = 0; j < L; j++) mx = fmax(mx, x.data[r * L + j]);
            for (int j = 0; j < L; j++) sum += exp(x.data[r * L + j] - mx);
            for (int j = 0; j < L; j++) {
                double want = exp(x.data[r * L + j] - mx) / sum;
                worst = fmax(worst, fmax(fabs(yr.data[r * L + j] - want), fabs(yf.data[r * L + j] - want)));
                s_ref += yr.data[r * L + j];
                s_fast += yf.data[r * L + j];
            }
            CHECK(fabs(s_ref - 1) < 1e-5 && fabs(s_fast - 1) < 1e-5, "L %d row %d sums %.9g %.9g", L, r, s_ref, s_fast);
            CHECK(worst < 1e-6, "L %d row %d: max error %.3g vs double", L, r, worst);
        }
        /* shift invariance: softmax(x + 3) == softmax(x) */
        for (int64_t i = 0; i < x.numel; i++) xs.data[i] = x.data[i] + 3.0f;
        CHECK(softmax_forward(&xs, &xs) == DL_OK, "softmax in place");
        CHECK_CLOSE("softmax shift invariance", xs.data, yr.data, (size_t)x.numel, 2e-6);
        dl_tensor_free(&x); dl_tensor_free(&xs); dl_tensor_free(&yr); dl_tensor_free(&yf);
    }
}

/* add/mul: checked against explicit index formulas for the model's patterns. */
TEST(elementwise, broadcast_patterns)
{
    dl_test_rng rng = {99};
    /* [N, C, H, W] + [N, C, 1, 1]: one value per image and channel */
    int N = 2, C = 5, H = 3, W = 7;
    dl_tensor a, b, y;
    dl_tensor_alloc(&a, 4, DL_SHAPE(N, C, H, W));
    dl_tensor_alloc(&b, 4, DL_SHAPE(N, C, 1, 1));
    dl_tensor_alloc(&y, 4, DL_SHAPE(N, C, H, W));
    dl_test_fill(&rng, a.data, (size_t)a.numel, -1, 1);
    dl_test_fill(&rng, b.data, (size_t)b.numel, -1, 1);
    for (int fast = 0; fast < 2; fast++) {
        CHECK((fast ? add_forward : add_forward_ref)(&y, &a, &b) == DL_OK, "add: %s", dl_error_message());
        int bad = 0;
        for (int n = 0; n < N; n++) for (int c = 0; c < C; c++) for (int i = 0; i < H * W; i++) {
            int at = (n * C + c) * H * W + i;
            bad += y.data[at] != a.data[at] + b.data[n * C + c];
        }
        CHECK(bad == 0, "add [N,C,H,W]+[N,C,1,1] (fast %d): %d wrong", fast, bad);
        CHECK((fast ? mul_forward : mul_forward_ref)(&y, &a, &b) == DL_OK, "mul");
        bad = 0;
        for (int n = 0; n < N; n++) for (int c = 0; c < C; c++) for (int i = 0; i < H * W; i++) {
            int at = (n * C + c) * H * W + i;
            bad += y.data[at] != a.data[at] * b.data[n * C + c];
        }
        CHECK(bad == 0, "mul [N,C,H,W]*[N,C,1,1] (fast %d): %d wrong", fast, bad);
    }
    dl_tensor_free(&a); dl_tensor_free(&b); dl_tensor_free(&y);

    /* [B, L, C] + [C]: a bias per channel, done in place */
    int B = 2, L = 9, Cc = 13;
    dl_tensor x, bias, x0;
    dl_tensor_alloc(&x, 3, DL_SHAPE(B, L, Cc));
    dl_tensor_alloc(&x0, 3, DL_SHAPE(B, L, Cc));
    dl_tensor_alloc(&bias, 1, DL_SHAPE(Cc));
    dl_test_fill(&rng, x.data, (size_t)x.numel, -1, 1);
    dl_test_fill(&rng, bias.data, (size_t)Cc, -1, 1);
    dl_tensor_copy(&x0, &x);
    CHECK(add_forward(&x, &x, &bias) == DL_OK, "bias add in place");
    int bad = 0;
    for (int i = 0; i < B * L; i++) for (int c = 0; c < Cc; c++)
        bad += x.data[i * Cc + c] != x0.data[i * Cc + c] + bias.data[c];
    CHECK(bad == 0, "add [B,L,C]+[C]: %d wrong", bad);
    dl_tensor_free(&x); dl_tensor_free(&x0); dl_tensor_free(&bias);
}

/* Fast vs reference on many broadcast combinations (odd sizes). */
TEST(elementwise, broadcast_fast_matches_reference)
{
    dl_test_rng rng = {4242};
    for (int trial = 0; trial < 60; trial++) {
        int nd = dl_test_int(&rng, 1, 4);
        int64_t as[4], bs[4];
        const int sizes[] = {1, 3, 7, 8, 17};
        for (int d = 0; d < nd; d++) as[d] = sizes[dl_test_int(&rng, 0, 4)];
        if (trial == 0) { nd = 4; as[0] = 2; as[1] = 64; as[2] = 33; as[3] = 31; }   /* parallel path */
        int bnd = dl_test_int(&rng, 1, nd);
        for (int d = 0; d < bnd; d++) {
            int ad = nd - bnd + d;
            bs[d] = dl_test_int(&rng, 0, 1) ? as[ad] : 1;
        }
        dl_tensor a, b, yr, yf;
        dl_tensor_alloc(&a, nd, as);
        dl_tensor_alloc(&b, bnd, bs);
        dl_tensor_alloc(&yr, nd, as);
        dl_tensor_alloc(&yf, nd, as);
        dl_test_fill(&rng, a.data, (size_t)a.numel, -2, 2);
        dl_test_fill(&rng, b.data, (size_t)b.numel, -2, 2);
        char sa[64], sb[64];
        dl_shape_str(&a, sa, sizeof sa); dl_shape_str(&b, sb, sizeof sb);
        CHECK(add_forward_ref(&yr, &a, &b) == DL_OK && add_forward(&yf, &a, &b) == DL_OK, "add %s + %s", sa, sb);
        CHECK(dl_max_abs_diff(yr.data, yf.data, (size_t)a.numel) == 0, "add %s + %s differs", sa, sb);
        CHECK(mul_forward_ref(&yr, &a, &b) == DL_OK && mul_forward(&yf, &a, &b) == DL_OK, "mul %s * %s", sa, sb);
        CHECK(dl_max_abs_diff(yr.data, yf.data, (size_t)a.numel) == 0, "mul %s * %s differs", sa, sb);
        /* reference checked directly for the same-shape case */
        if (bnd == nd && b.numel == a.numel) {
            int bad = 0;
            for (int64_t i = 0; i < a.numel; i++) bad += yr.data[i] != a.data[i] * b.data[i];
            CHECK(bad == 0, "mul same shape %s: %d wrong", sa, bad);
        }
        dl_tensor_free(&a); dl_tensor_free(&b); dl_tensor_free(&yr); dl_tensor_free(&yf);
    }
}

TEST(elementwise, errors_are_clear)
{
    dl_tensor a, b, y, small;
    dl_tensor_alloc(&a, 2, DL_SHAPE(2, 3));
    dl_tensor_alloc(&b, 1, DL_SHAPE(4));
    dl_tensor_alloc(&y, 2, DL_SHAPE(2, 3));
    dl_tensor_alloc(&small, 2, DL_SHAPE(2, 2));
    CHECK(add_forward(&y, &a, &b) == DL_ERR_SHAPE, "[2,3] + [4] accepted");
    CHECK(strstr(dl_error_message(), "add") && strstr(dl_error_message(), "[4]") &&
          strstr(dl_error_message(), "[2, 3]") && strstr(dl_error_message(), "broadcast"),
          "message: %s", dl_error_message());
    CHECK(mul_forward_ref(&y, &b, &a) == DL_ERR_SHAPE, "b with more dims than a accepted");
    CHECK(add_forward(&small, &a, &a) == DL_ERR_SHAPE, "wrong out shape accepted");
    CHECK(silu_forward(&small, &a) == DL_ERR_SHAPE && strstr(dl_error_message(), "silu"),
          "silu out shape: %s", dl_error_message());
    CHECK(softmax_forward(&small, &a) == DL_ERR_SHAPE && strstr(dl_error_message(), "softmax"),
          "softmax out shape: %s", dl_error_message());
    CHECK(gelu_erf_forward(&y, NULL) == DL_ERR_ARG, "NULL x accepted");
    dl_tensor_free(&a); dl_tensor_free(&b); dl_tensor_free(&y); dl_tensor_free(&small);
}

/* Against PyTorch 1.13 (tests/fixtures/torch_kernels/norm_attn.safetensors). */
TEST(elementwise, matches_torch)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, "tests/fixtures/torch_kernels/norm_attn.safetensors") == DL_OK,
               "open fixture: %s", dl_error_message())) return;
    dl_tensor x = {0}, want = {0}, y = {0};
    CHECK(dl_st_load_tensor(&f, "act.x", &x) == DL_OK, "act.x");
    dl_tensor_alloc(&y, x.ndim, x.shape);
    const char *names[] = {"act.silu", "act.gelu_erf", "act.gelu_tanh", "act.quick_gelu"};
    for (int a = 0; a < NACTS; a++) {
        CHECK(dl_st_load_tensor(&f, names[a], &want) == DL_OK, "%s", names[a]);
        for (int fast = 0; fast < 2; fast++) {
            CHECK((fast ? acts[a].fast : acts[a].ref)(&y, &x) == DL_OK, "%s", acts[a].name);
            CHECK_CLOSE(names[a], y.data, want.data, (size_t)x.numel, 5e-6);
        }
        dl_tensor_free(&want);
    }
    dl_tensor_free(&x); dl_tensor_free(&y);

    CHECK(dl_st_load_tensor(&f, "softmax.x", &x) == DL_OK, "softmax.x");
    CHECK(dl_st_load_tensor(&f, "softmax.out", &want) == DL_OK, "softmax.out");
    dl_tensor_alloc(&y, x.ndim, x.shape);
    CHECK(softmax_forward_ref(&y, &x) == DL_OK, "softmax_ref");
    CHECK_CLOSE("softmax_ref vs torch", y.data, want.data, (size_t)x.numel, 1e-6);
    CHECK(softmax_forward(&y, &x) == DL_OK, "softmax");
    CHECK_CLOSE("softmax vs torch", y.data, want.data, (size_t)x.numel, 1e-6);
    dl_tensor_free(&x); dl_tensor_free(&y); dl_tensor_free(&want);
    dl_st_close(&f);
}
