/* test_norm.c - GroupNorm and LayerNorm. */
#include "testing.h"
#include "../core/norm.h"
#include "../core/safetensors.h"

#include <math.h>
#include <string.h>

/* An independent GroupNorm in double, written straight from the definition
 * with explicit [n, c, s] indexing (S = pixels per channel). */
static void group_norm_double(float *y, const float *x, const float *w, const float *b,
                              int N, int C, int S, int G, double eps)
{
    int Cg = C / G;
    for (int n = 0; n < N; n++)
        for (int g = 0; g < G; g++) {
            double sum = 0, sq = 0;
            for (int c = g * Cg; c < (g + 1) * Cg; c++)
                for (int s = 0; s < S; s++) sum += x[(n * C + c) * S + s];
            double mean = sum / (Cg * S);
            for (int c = g * Cg; c < (g + 1) * Cg; c++)
                for (int s = 0; s < S; s++) {
                    double d = x[(n * C + c) * S + s] - mean;
                    sq += d * d;
                }
            double var = sq / (Cg * S);
            for (int c = g * Cg; c < (g + 1) * Cg; c++)
                for (int s = 0; s < S; s++) {
                    double v = (x[(n * C + c) * S + s] - mean) / sqrt(var + eps);
                    y[(n * C + c) * S + s] = (float)(v * (w ? w[c] : 1.0) + (b ? b[c] : 0.0));
                }
        }
}

/* Without affine and eps = 0, every group has mean 0 and variance 1. */
TEST(norm, group_norm_normalises_each_group)
{
    dl_test_rng rng = {1};
    int N = 2, C = 12, H = 5, W = 3, G = 4;
    dl_tensor x, y;
    dl_tensor_alloc(&x, 4, DL_SHAPE(N, C, H, W));
    dl_tensor_alloc(&y, 4, DL_SHAPE(N, C, H, W));
    dl_test_fill(&rng, x.data, (size_t)x.numel, -2.0f, 5.0f);
    for (int fast = 0; fast < 2; fast++) {
        CHECK((fast ? group_norm_forward : group_norm_forward_ref)(&y, &x, NULL, NULL, G, 0.0f) == DL_OK,
              "group_norm: %s", dl_error_message());
        int count = (C / G) * H * W;
        for (int n = 0; n < N; n++)
            for (int g = 0; g < G; g++) {
                const float *yg = y.data + (n * C + g * (C / G)) * H * W;   /* groups are contiguous */
                double m = 0, v = 0;
                for (int i = 0; i < count; i++) m += yg[i];
                m /= count;
                for (int i = 0; i < count; i++) v += (yg[i] - m) * (yg[i] - m);
                v /= count;
                CHECK(fabs(m) < 1e-6 && fabs(v - 1) < 1e-5, "fast %d n %d g %d: mean %.3g var %.9g", fast, n, g, m, v);
            }
    }
    dl_tensor_free(&x); dl_tensor_free(&y);
}

/* Fast and reference against the double definition, random shapes, 2-4 dims,
 * with and without affine, in place, and with a large mean. */
TEST(norm, group_norm_fast_matches_reference)
{
    dl_test_rng rng = {2};
    for (int trial = 0; trial < 24; trial++) {
        const int sizes[] = {1, 3, 7, 8, 13};
        int G = (int[]){1, 2, 3, 4, 32}[dl_test_int(&rng, 0, 4)];
        int C = G * dl_test_int(&rng, 1, 3);
        int N = dl_test_int(&rng, 1, 3);
        int nd = dl_test_int(&rng, 2, 4);
        int64_t shape[4] = {N, C, sizes[dl_test_int(&rng, 0, 4)], sizes[dl_test_int(&rng, 0, 4)]};
        if (trial == 0) { G = 32; C = 320; N = 2; nd = 4; shape[1] = C; shape[0] = N; shape[2] = 9; shape[3] = 11; }
        int S = 1;
        for (int d = 2; d < nd; d++) S *= (int)shape[d];
        float offset = trial % 4 == 3 ? 1000.0f : 0.0f;          /* large mean, std ~1 */
        int affine = trial % 2;
        dl_tensor x, yr, yf, w, b;
        dl_tensor_alloc(&x, nd, shape);
        dl_tensor_alloc(&yr, nd, shape);
        dl_tensor_alloc(&yf, nd, shape);
        dl_tensor_alloc(&w, 1, DL_SHAPE(C));
        dl_tensor_alloc(&b, 1, DL_SHAPE(C));
        dl_test_fill(&rng, x.data, (size_t)x.numel, offset - 2.0f, offset + 2.0f);
        dl_test_fill(&rng, w.data, (size_t)C, 0.5f, 1.5f);
        dl_test_fill(&rng, b.data, (size_t)C, -0.5f, 0.5f);
        float eps = 1e-5f;
        float want[320 * 2 * 99 + 1];
        if ((size_t)x.numel > sizeof want / sizeof want[0]) { CHECK(0, "test buffer too small"); continue; }
        group_norm_double(want, x.data, affine ? w.data : NULL, affine ? b.data : NULL, N, C, S, G, eps);
        const dl_tensor *pw = affine ? &w : NULL, *pb = affine ? &b : NULL;
        CHECK(group_norm_forward_ref(&yr, &x, pw, pb, G, eps) == DL_OK, "ref: %s", dl_error_message());
        CHECK(group_norm_forward(&yf, &x, pw, pb, G, eps) == DL_OK, "fast: %s", dl_error_message());
        /* |mean| 1000: the float mean alone is off by up to 3e-5 */
        double tol = offset > 0 ? 1e-4 : 5e-6;
        CHECK_CLOSE("group_norm_ref vs double", yr.data, want, (size_t)x.numel, tol);
        CHECK_CLOSE("group_norm vs double", yf.data, want, (size_t)x.numel, tol);
        CHECK(group_norm_forward(&x, &x, pw, pb, G, eps) == DL_OK, "in place");
        CHECK_CLOSE("group_norm in place", x.data, yf.data, (size_t)x.numel, 0.0);
        dl_tensor_free(&x); dl_tensor_free(&yr); dl_tensor_free(&yf); dl_tensor_free(&w); dl_tensor_free(&b);
    }
}

TEST(norm, layer_norm_rows_and_fast_matches_reference)
{
    dl_test_rng rng = {3};
    const int64_t shapes[][4] = {{1}, {3}, {7, 5}, {2, 9, 40}, {2, 3, 5, 7}, {64, 320}, {5, 1}};
    const int ndims[] = {1, 1, 2, 3, 4, 2, 2};
    for (int s = 0; s < 7; s++) {
        int nd = ndims[s];
        int64_t C = shapes[s][nd - 1];
        dl_tensor x, yr, yf, w, b;
        dl_tensor_alloc(&x, nd, shapes[s]);
        dl_tensor_alloc(&yr, nd, shapes[s]);
        dl_tensor_alloc(&yf, nd, shapes[s]);
        dl_tensor_alloc(&w, 1, DL_SHAPE(C));
        dl_tensor_alloc(&b, 1, DL_SHAPE(C));
        dl_test_fill(&rng, x.data, (size_t)x.numel, -3.0f, 1.0f);
        dl_test_fill(&rng, w.data, (size_t)C, 0.5f, 1.5f);
        dl_test_fill(&rng, b.data, (size_t)C, -0.5f, 0.5f);
        int64_t rows = x.numel / C;
        /* no affine: each row has mean 0 and variance var / (var + eps) */
        CHECK(layer_norm_forward_ref(&yr, &x, NULL, NULL, 0.0f) == DL_OK, "ref: %s", dl_error_message());
        for (int64_t r = 0; C > 1 && r < rows; r++) {
            double m = 0, v = 0;
            for (int64_t c = 0; c < C; c++) m += yr.data[r * C + c];
            m /= C;
            for (int64_t c = 0; c < C; c++) v += (yr.data[r * C + c] - m) * (yr.data[r * C + c] - m);
            v /= C;
            CHECK(fabs(m) < 1e-6 && fabs(v - 1) < 1e-5, "shape %d row %lld: mean %.3g var %.9g", s, (long long)r, m, v);
        }
        /* a layer norm is a group norm with one group over the rows as [rows, C] */
        float want[64 * 320];
        group_norm_double(want, x.data, NULL, NULL, (int)rows, 1, (int)C, 1, 1e-5);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < C; c++) want[r * C + c] = want[r * C + c] * w.data[c] + b.data[c];
        CHECK(layer_norm_forward_ref(&yr, &x, &w, &b, 1e-5f) == DL_OK, "ref affine");
        CHECK(layer_norm_forward(&yf, &x, &w, &b, 1e-5f) == DL_OK, "fast affine");
        CHECK_CLOSE("layer_norm_ref vs double", yr.data, want, (size_t)x.numel, 5e-6);
        CHECK_CLOSE("layer_norm vs double", yf.data, want, (size_t)x.numel, 5e-6);
        CHECK(layer_norm_forward(&yf, &x, NULL, &b, 1e-5f) == DL_OK, "bias only");
        CHECK(layer_norm_forward_ref(&yr, &x, NULL, &b, 1e-5f) == DL_OK, "bias only ref");
        CHECK_CLOSE("layer_norm bias only", yf.data, yr.data, (size_t)x.numel, 5e-6);
        dl_tensor_free(&x); dl_tensor_free(&yr); dl_tensor_free(&yf); dl_tensor_free(&w); dl_tensor_free(&b);
    }
}

TEST(norm, errors_are_clear)
{
    dl_tensor x, y, w, x1;
    dl_tensor_alloc(&x, 4, DL_SHAPE(1, 6, 2, 2));
    dl_tensor_alloc(&y, 4, DL_SHAPE(1, 6, 2, 2));
    dl_tensor_alloc(&w, 1, DL_SHAPE(5));
    dl_tensor_alloc(&x1, 1, DL_SHAPE(6));
    CHECK(group_norm_forward(&y, &x, NULL, NULL, 4, 1e-5f) == DL_ERR_ARG, "6 channels in 4 groups accepted");
    CHECK(strstr(dl_error_message(), "group_norm") && strstr(dl_error_message(), "6 channels") &&
          strstr(dl_error_message(), "4"), "message: %s", dl_error_message());
    CHECK(group_norm_forward_ref(&y, &x, NULL, NULL, 0, 1e-5f) == DL_ERR_ARG, "0 groups accepted");
    CHECK(group_norm_forward(&y, &x, &w, NULL, 3, 1e-5f) == DL_ERR_SHAPE, "weight [5] for 6 channels accepted");
    CHECK(strstr(dl_error_message(), "weight") && strstr(dl_error_message(), "[5]"), "message: %s", dl_error_message());
    CHECK(group_norm_forward(&y, &x1, NULL, NULL, 3, 1e-5f) == DL_ERR_SHAPE, "1-D group_norm input accepted");
    CHECK(group_norm_forward(&x1, &x, NULL, NULL, 3, 1e-5f) == DL_ERR_SHAPE, "wrong out shape accepted");
    CHECK(layer_norm_forward(&y, &x, &w, NULL, 1e-5f) == DL_ERR_SHAPE, "layer_norm weight [5] for C=2 accepted");
    CHECK(strstr(dl_error_message(), "layer_norm"), "message: %s", dl_error_message());
    CHECK(layer_norm_forward(&y, &x, NULL, NULL, -1.0f) == DL_ERR_ARG, "negative eps accepted");
    dl_tensor_free(&x); dl_tensor_free(&y); dl_tensor_free(&w); dl_tensor_free(&x1);
}

/* Against PyTorch 1.13 F.group_norm / F.layer_norm. */
TEST(norm, matches_torch)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, "tests/fixtures/torch_kernels/norm_attn.safetensors") == DL_OK,
               "open fixture: %s", dl_error_message())) return;
    dl_tensor x = {0}, w = {0}, b = {0}, want = {0}, y = {0};
    CHECK(dl_st_load_tensor(&f, "gn.x", &x) == DL_OK && dl_st_load_tensor(&f, "gn.w", &w) == DL_OK &&
          dl_st_load_tensor(&f, "gn.b", &b) == DL_OK, "gn inputs: %s", dl_error_message());
    dl_tensor_alloc(&y, x.ndim, x.shape);
    const struct { const char *name; float eps; int affine; } gn[] = {
        {"gn.out_eps1e-5", 1e-5f, 1}, {"gn.out_eps1e-6", 1e-6f, 1}, {"gn.out_noaffine", 1e-5f, 0}};
    for (int i = 0; i < 3; i++) {
        CHECK(dl_st_load_tensor(&f, gn[i].name, &want) == DL_OK, "%s", gn[i].name);
        for (int fast = 0; fast < 2; fast++) {
            CHECK((fast ? group_norm_forward : group_norm_forward_ref)(&y, &x, gn[i].affine ? &w : NULL,
                  gn[i].affine ? &b : NULL, 32, gn[i].eps) == DL_OK, "group_norm");
            CHECK_CLOSE(gn[i].name, y.data, want.data, (size_t)y.numel, 1e-5);
        }
        dl_tensor_free(&want);
    }
    dl_tensor_free(&x); dl_tensor_free(&y); dl_tensor_free(&w); dl_tensor_free(&b);

    CHECK(dl_st_load_tensor(&f, "gn3.x", &x) == DL_OK && dl_st_load_tensor(&f, "gn3.out", &want) == DL_OK, "gn3");
    dl_tensor_alloc(&y, x.ndim, x.shape);
    for (int fast = 0; fast < 2; fast++) {
        CHECK((fast ? group_norm_forward : group_norm_forward_ref)(&y, &x, NULL, NULL, 32, 1e-6f) == DL_OK, "gn3");
        CHECK_CLOSE("gn3.out (3-D input)", y.data, want.data, (size_t)y.numel, 1e-5);
    }
    dl_tensor_free(&x); dl_tensor_free(&y); dl_tensor_free(&want);

    CHECK(dl_st_load_tensor(&f, "ln.x", &x) == DL_OK && dl_st_load_tensor(&f, "ln.w", &w) == DL_OK &&
          dl_st_load_tensor(&f, "ln.b", &b) == DL_OK, "ln inputs");
    dl_tensor_alloc(&y, x.ndim, x.shape);
    for (int affine = 0; affine < 2; affine++) {
        const char *name = affine ? "ln.out" : "ln.out_noaffine";
        CHECK(dl_st_load_tensor(&f, name, &want) == DL_OK, "%s", name);
        for (int fast = 0; fast < 2; fast++) {
            CHECK((fast ? layer_norm_forward : layer_norm_forward_ref)(&y, &x, affine ? &w : NULL,
                  affine ? &b : NULL, 1e-5f) == DL_OK, "layer_norm");
            CHECK_CLOSE(name, y.data, want.data, (size_t)y.numel, 1e-5);
        }
        dl_tensor_free(&want);
    }
    dl_tensor_free(&x); dl_tensor_free(&y); dl_tensor_free(&w); dl_tensor_free(&b);
    dl_st_close(&f);
}
