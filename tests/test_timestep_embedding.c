/* test_timestep_embedding.c - diffusers' sinusoidal timestep embedding. */
#include "testing.h"
#include "../core/timestep_embedding.h"
#include "../core/safetensors.h"

#include <math.h>
#include <string.h>

/* The formula in double: freq_i = max_period^(-i / (half - shift)). */
static double arg_double(double t, int i, int half, double shift, int max_period)
{
    return t * pow((double)max_period, -(double)i / ((double)half - shift));
}

TEST(timestep_embedding, layout_and_formula)
{
    const float ts[4] = {0.0f, 1.0f, 3.5f, 999.0f};
    int dim = 320, half = 160;
    dl_tensor e;
    dl_tensor_alloc(&e, 2, DL_SHAPE(4, dim));
    /* SD: flip_sin_to_cos = 1 -> [cos | sin] */
    CHECK(timestep_embedding_forward(&e, ts, 4, dim, 1, 0.0f, 1.0f, 10000) == DL_OK, "%s", dl_error_message());
    for (int j = 0; j < half; j++) {
        CHECK(e.data[j] == 1.0f && e.data[half + j] == 0.0f, "t = 0: cos 1, sin 0 at %d", j);
    }
    for (int n = 1; n < 4; n++) {
        /* float32 rounding of t * freq grows with t: 999 * 2^-24 ~ 6e-5 */
        double tol = ts[n] > 100 ? 2e-4 : 1e-6, worst = 0;
        for (int j = 0; j < half; j++) {
            double a = arg_double(ts[n], j, half, 0.0, 10000);
            worst = fmax(worst, fabs(e.data[n * dim + j] - cos(a)));
            worst = fmax(worst, fabs(e.data[n * dim + half + j] - sin(a)));
        }
        CHECK(worst < tol, "t = %g: max error %.3g vs double formula", ts[n], worst);
    }
    /* the first frequency is 1: cos(t), sin(t) */
    CHECK(fabs(e.data[1 * dim] - cos(1.0)) < 1e-7 && fabs(e.data[1 * dim + half] - sin(1.0)) < 1e-7, "t = 1, i = 0");
    dl_tensor_free(&e);

    /* no flip, shift 1 (diffusers' default): [sin | cos], last freq = 1 / max_period */
    dl_tensor_alloc(&e, 2, DL_SHAPE(1, 8));
    float t = 7.0f;
    CHECK(timestep_embedding_forward(&e, &t, 1, 8, 0, 1.0f, 1.0f, 100) == DL_OK, "no flip");
    for (int j = 0; j < 4; j++) {
        double a = arg_double(7.0, j, 4, 1.0, 100);
        CHECK(fabs(e.data[j] - sin(a)) < 1e-6 && fabs(e.data[4 + j] - cos(a)) < 1e-6, "no flip, j = %d", j);
    }
    CHECK(fabs(arg_double(1.0, 3, 4, 1.0, 100) - 0.01) < 1e-15, "test formula: last freq 1/100");
    /* scale multiplies the argument */
    dl_tensor e2;
    dl_tensor_alloc(&e2, 2, DL_SHAPE(1, 8));
    float t2 = 14.0f;
    CHECK(timestep_embedding_forward(&e2, &t, 1, 8, 0, 1.0f, 2.0f, 100) == DL_OK, "scale 2");
    CHECK(timestep_embedding_forward(&e, &t2, 1, 8, 0, 1.0f, 1.0f, 100) == DL_OK, "t 14");
    CHECK_CLOSE("scale 2 at t 7 == t 14", e2.data, e.data, 8, 1e-6);
    dl_tensor_free(&e); dl_tensor_free(&e2);

    /* odd dim: one zero column at the end */
    dl_tensor_alloc(&e, 2, DL_SHAPE(2, 7));
    dl_tensor_fill(&e, 5.0f);
    const float t3[2] = {10.0f, 20.0f};
    CHECK(timestep_embedding_forward(&e, t3, 2, 7, 1, 0.0f, 1.0f, 10000) == DL_OK, "odd dim");
    CHECK(e.data[6] == 0.0f && e.data[13] == 0.0f, "zero pad column: %g %g", e.data[6], e.data[13]);
    CHECK(fabs(e.data[7] - cos(20.0)) < 1e-6, "second row starts at 7 with cos(20)");
    dl_tensor_free(&e);
}

TEST(timestep_embedding, errors_are_clear)
{
    dl_tensor e;
    dl_tensor_alloc(&e, 2, DL_SHAPE(2, 32));
    float t[2] = {1, 2};
    CHECK(timestep_embedding_forward(&e, t, 2, 320, 1, 0.0f, 1.0f, 10000) == DL_ERR_SHAPE &&
          strstr(dl_error_message(), "timestep_embedding") && strstr(dl_error_message(), "[2, 32]"),
          "wrong out shape: %s", dl_error_message());
    CHECK(timestep_embedding_forward(&e, NULL, 2, 32, 1, 0.0f, 1.0f, 10000) == DL_ERR_ARG, "NULL timesteps");
    CHECK(timestep_embedding_forward(&e, t, 2, 32, 1, 16.0f, 1.0f, 10000) == DL_ERR_ARG, "shift == half");
    CHECK(timestep_embedding_forward(&e, t, 0, 32, 1, 0.0f, 1.0f, 10000) == DL_ERR_ARG, "n = 0");
    dl_tensor_free(&e);
}

/* Against diffusers' formula run by PyTorch 1.13: to ~1e-7, even at t = 999. */
TEST(timestep_embedding, matches_torch)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, "tests/fixtures/torch_kernels/norm_attn.safetensors") == DL_OK,
               "open fixture: %s", dl_error_message())) return;
    dl_tensor ts = {0};
    CHECK(dl_st_load_tensor(&f, "ts.t", &ts) == DL_OK && ts.numel == 4, "ts.t");
    const struct { const char *name; int dim, flip; float shift; } cases[] = {
        {"ts.emb320", 320, 1, 0.0f}, {"ts.emb32", 32, 1, 0.0f},
        {"ts.emb32_noflip_shift1", 32, 0, 1.0f}, {"ts.emb33", 33, 1, 0.0f}};
    for (int i = 0; i < 4; i++) {
        dl_tensor want = {0}, e;
        CHECK(dl_st_load_tensor(&f, cases[i].name, &want) == DL_OK, "%s", cases[i].name);
        dl_tensor_alloc(&e, 2, DL_SHAPE(4, cases[i].dim));
        CHECK(timestep_embedding_forward(&e, ts.data, 4, cases[i].dim, cases[i].flip, cases[i].shift, 1.0f, 10000) == DL_OK,
              "%s: %s", cases[i].name, dl_error_message());
        CHECK_CLOSE(cases[i].name, e.data, want.data, (size_t)e.numel, 2e-7);
        dl_tensor_free(&want); dl_tensor_free(&e);
    }
    dl_tensor_free(&ts);
    dl_st_close(&f);
}
