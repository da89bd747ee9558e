/* test_schedule.c - noise schedules, add_noise and the DDPM posterior step.
 *
 * References: tests/fixtures/schedules/schedules.safetensors, made by
 * tests/torch_refs/gen_schedule_refs.py with torch ops (diffusers' formulas),
 * plus diffusers' own alphas_cumprod (see the fixture README). Float results
 * are compared bit for bit; a failure reports the count and max ulp.
 *
 * Groups: schedule, add_noise (a student exercise: `make test K=add_noise`),
 * ddpm_step.
 */
#include "testing.h"
#include "../core/schedule.h"
#include "../core/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIXTURE "tests/fixtures/schedules/schedules.safetensors"
#define NVALUES 280   /* the fixture's inputs have shape [2, 4, 5, 7] */

/* Same table as CONFIGS in gen_schedule_refs.py. */
static const struct { const char *name; dl_schedule_kind kind; int T; double b0, b1; } configs[] = {
    {"linear_T1000", DL_SCHEDULE_LINEAR, 1000, 1e-4, 0.02},
    {"scaled_linear_T1000", DL_SCHEDULE_SCALED_LINEAR, 1000, 0.00085, 0.012},
    {"cosine_T1000", DL_SCHEDULE_COSINE, 1000, 0, 0},
    {"linear_T37", DL_SCHEDULE_LINEAR, 37, 0.001, 0.05},
    {"scaled_linear_T100", DL_SCHEDULE_SCALED_LINEAR, 100, 0.0001, 0.02},
    {"cosine_T50", DL_SCHEDULE_COSINE, 50, 0, 0},
    {"linear_T1", DL_SCHEDULE_LINEAR, 1, 0.1, 0.2},
    {"linear_T2", DL_SCHEDULE_LINEAR, 2, 0.1, 0.2},
    {"scaled_linear_T23", DL_SCHEDULE_SCALED_LINEAR, 23, 0.00085, 0.012},
};
#define NCONFIGS ((int)(sizeof configs / sizeof configs[0]))

static int64_t ulps(float a, float b)
{
    int32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    int64_t ix = x < 0 ? (int64_t)INT32_MIN - x : x, iy = y < 0 ? (int64_t)INT32_MIN - y : y;
    return ix > iy ? ix - iy : iy - ix;
}

/* Exact comparison: counts differing values and the max ulp distance. */
static int check_exact(const char *what, const float *got, const float *want, int64_t n)
{
    int64_t bad = 0, worst = 0, at = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t u = ulps(got[i], want[i]);
        if (u) { bad++; if (u > worst) { worst = u; at = i; } }
    }
    return CHECK(bad == 0, "%s: %lld of %lld values differ from torch, max %lld ulp (index %lld: %.9g vs %.9g)",
                 what, (long long)bad, (long long)n, (long long)worst, (long long)at,
                 (double)got[at], (double)want[at]);
}

/* A fixture tensor as float32, or NULL (with a failed check). */
static float *load(const dl_safetensors *f, const char *name, int64_t want_n)
{
    const dl_st_entry *e = dl_st_find(f, name);
    if (!CHECK(e != NULL, "%s: missing tensor '%s'", f->path, name)) return NULL;
    if (!CHECK(dl_st_numel(e) == want_n, "'%s' has %lld values, expected %lld", name,
               (long long)dl_st_numel(e), (long long)want_n)) return NULL;
    float *p = malloc((size_t)want_n * sizeof *p);
    if (p) dl_st_read_f32(f, e, p);
    return p;
}

static int open_fixture(dl_safetensors *f)
{
    return CHECK(dl_st_open(f, FIXTURE) == DL_OK, "%s", dl_error_message());
}

static int config_index(const char *name)
{
    for (int i = 0; i < NCONFIGS; i++)
        if (!strcmp(configs[i].name, name)) return i;
    return -1;
}

/* ------------------------------------------------------------------ */

TEST(schedule, scaled_linear_equals_diffusers)
{
    dl_safetensors f;
    if (!open_fixture(&f)) return;
    dl_schedule s;
    CHECK(dl_schedule_init_default(&s, DL_SCHEDULE_SCALED_LINEAR) == DL_OK, "%s", dl_error_message());
    float *want = load(&f, "diffusers_alphas_cumprod", 1000);
    if (want) check_exact("scaled_linear alphas_cumprod vs diffusers", s.alphas_cumprod, want, 1000);
    free(want);
    dl_schedule_free(&s);
    dl_st_close(&f);
}

TEST(schedule, all_configs_equal_torch)
{
    dl_safetensors f;
    if (!open_fixture(&f)) return;
    for (int c = 0; c < NCONFIGS; c++) {
        dl_schedule s;
        if (!CHECK(dl_schedule_init(&s, configs[c].kind, configs[c].T, configs[c].b0, configs[c].b1) == DL_OK,
                   "%s: %s", configs[c].name, dl_error_message())) continue;
        const char *parts[3] = {"betas", "alphas", "alphas_cumprod"};
        const float *mine[3] = {s.betas, s.alphas, s.alphas_cumprod};
        for (int p = 0; p < 3; p++) {
            char name[128];
            snprintf(name, sizeof name, "%s.%s", configs[c].name, parts[p]);
            float *want = load(&f, name, configs[c].T);
            if (want) check_exact(name, mine[p], want, configs[c].T);
            free(want);
        }
        dl_schedule_free(&s);
    }
    dl_st_close(&f);
}

TEST(schedule, properties)
{
    for (int k = 0; k < DL_SCHEDULE_COUNT; k++) {
        dl_schedule s;
        if (!CHECK(dl_schedule_init_default(&s, (dl_schedule_kind)k) == DL_OK, "%s", dl_error_message())) continue;
        const char *nm = dl_schedule_names[k];
        int T = s.num_train_timesteps, dec = 1, snr_dec = 1, range = 1;
        for (int t = 0; t < T; t++) {
            if (!(s.betas[t] > 0 && s.betas[t] < 1)) range = 0;
            if (t && !(s.alphas_cumprod[t] < s.alphas_cumprod[t - 1])) dec = 0;
            if (t && !(dl_schedule_snr(&s, t) < dl_schedule_snr(&s, t - 1))) snr_dec = 0;
        }
        CHECK(T == 1000, "%s: T = %d", nm, T);
        CHECK(range, "%s: betas outside (0, 1)", nm);
        CHECK(dec, "%s: alphas_cumprod not strictly decreasing", nm);
        CHECK(snr_dec, "%s: SNR not strictly decreasing", nm);
        CHECK(s.alphas_cumprod[0] > 0.99f && s.alphas_cumprod[0] < 1.0f, "%s: abar_0 = %g", nm, s.alphas_cumprod[0]);
        /* log SNR agrees with log(SNR) where SNR is well conditioned */
        for (int t = 0; t < T; t += 111) {
            double want = log(dl_schedule_snr(&s, t));
            CHECK(fabs(dl_schedule_log_snr(&s, t) - want) < 1e-4 * (1 + fabs(want)),
                  "%s: log_snr(%d) = %g, log(snr) = %g", nm, t, dl_schedule_log_snr(&s, t), want);
        }
        CHECK(isnan(dl_schedule_snr(&s, T)) && isnan(dl_schedule_log_snr(&s, -1)), "%s: snr out of range is NaN", nm);
        dl_schedule_free(&s);
    }
    dl_schedule s;
    /* the ends of a linspace are exact; the DDPM paper's 1e-4 .. 0.02 */
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    CHECK(s.betas[0] == 1e-4f && s.betas[999] == 0.02f, "linear ends %g %g", s.betas[0], s.betas[999]);
    CHECK(s.alphas_cumprod[999] > 3e-5f && s.alphas_cumprod[999] < 5e-5f, "linear abar_T = %g (about 4e-5)",
          s.alphas_cumprod[999]);
    dl_schedule_free(&s);
    /* SD's schedule ends with abar ~ 0.0047 (sigma_max = 14.6) */
    dl_schedule_init_default(&s, DL_SCHEDULE_SCALED_LINEAR);
    double sigma_max = sqrt((1.0 - s.alphas_cumprod[999]) / s.alphas_cumprod[999]);
    CHECK(fabs(sigma_max - 14.6146) < 1e-3, "scaled_linear sigma_max = %.5f, expected 14.6146", sigma_max);
    dl_schedule_free(&s);
    /* cosine: abar follows cos^2 closely and ends near 0 (last beta capped at 0.999) */
    dl_schedule_init_default(&s, DL_SCHEDULE_COSINE);
    CHECK(s.alphas_cumprod[999] < 1e-6f, "cosine abar_T = %g, should be ~0", s.alphas_cumprod[999]);
    CHECK(fabsf(s.betas[999] - 0.999f) == 0, "cosine last beta %g capped at 0.999", s.betas[999]);
    double c0 = cos(0.008 / 1.008 * M_PI / 2), c500 = cos((0.5 + 0.008) / 1.008 * M_PI / 2);
    double want = (c500 * c500) / (c0 * c0);   /* abar(t) = f(t)/f(0) at t = 500/1000 (after step 499) */
    CHECK(fabs(s.alphas_cumprod[499] - want) < 1e-5, "cosine abar_499 = %g, cos^2 formula %g", s.alphas_cumprod[499], want);
    dl_schedule_free(&s);
}

TEST(schedule, names_and_validation)
{
    dl_schedule_kind k;
    CHECK(dl_schedule_kind_from_name("scaled_linear", &k) == DL_OK && k == DL_SCHEDULE_SCALED_LINEAR, "lookup");
    CHECK(dl_schedule_kind_from_name("squaredcos_cap_v2", &k) == DL_OK && k == DL_SCHEDULE_COSINE, "cosine name");
    CHECK(dl_schedule_kind_from_name("cosine", &k) == DL_ERR_ARG, "unknown name accepted");
    const char *msg = dl_error_message();
    CHECK(strstr(msg, "linear") && strstr(msg, "scaled_linear") && strstr(msg, "squaredcos_cap_v2"),
          "error should list valid names: %s", msg);
    dl_schedule s;
    CHECK(dl_schedule_init(&s, DL_SCHEDULE_LINEAR, 0, 1e-4, 0.02) == DL_ERR_ARG, "T = 0 accepted");
    CHECK(dl_schedule_init(&s, DL_SCHEDULE_LINEAR, 100001, 1e-4, 0.02) == DL_ERR_ARG, "T too large accepted");
    CHECK(dl_schedule_init(&s, DL_SCHEDULE_LINEAR, 1000, 0.02, 1e-4) == DL_ERR_ARG, "start > end accepted");
    CHECK(dl_schedule_init(&s, DL_SCHEDULE_SCALED_LINEAR, 1000, 0, 0.012) == DL_ERR_ARG, "beta_start 0 accepted");
    CHECK(dl_schedule_init(&s, DL_SCHEDULE_LINEAR, 1000, 1e-4, 1.0) == DL_ERR_ARG, "beta_end 1 accepted");
    CHECK(dl_schedule_init(&s, (dl_schedule_kind)7, 1000, 1e-4, 0.02) == DL_ERR_ARG, "bad kind accepted");
    CHECK(s.betas == NULL, "failed init leaves no memory");
    CHECK(dl_schedule_init(&s, DL_SCHEDULE_COSINE, 10, 0, 0) == DL_OK, "cosine ignores betas");
    dl_schedule_free(&s);
    dl_schedule_free(&s);   /* twice is harmless */
}

/* ------------------------------------------------------------------ */

TEST(add_noise, matches_torch)
{
    static const struct { const char *cfg; int t; } cases[] = {
        {"scaled_linear_T1000", 0}, {"scaled_linear_T1000", 1}, {"scaled_linear_T1000", 10},
        {"scaled_linear_T1000", 500}, {"scaled_linear_T1000", 999}, {"linear_T1000", 250},
        {"linear_T1000", 999}, {"cosine_T1000", 0}, {"cosine_T1000", 999},
    };
    dl_safetensors f;
    if (!open_fixture(&f)) return;
    float *x0 = load(&f, "add_noise.x0", NVALUES), *noise = load(&f, "add_noise.noise", NVALUES);
    float x_t[NVALUES];
    for (size_t i = 0; x0 && noise && i < sizeof cases / sizeof cases[0]; i++) {
        int c = config_index(cases[i].cfg);
        dl_schedule s;
        dl_schedule_init(&s, configs[c].kind, configs[c].T, configs[c].b0, configs[c].b1);
        char name[128];
        snprintf(name, sizeof name, "add_noise.%s.t%d", cases[i].cfg, cases[i].t);
        float *want = load(&f, name, NVALUES);
        CHECK(add_noise(&s, x_t, x0, noise, NVALUES, cases[i].t) == DL_OK, "%s: %s", name, dl_error_message());
        if (want) check_exact(name, x_t, want, NVALUES);
        free(want);
        dl_schedule_free(&s);
    }
    free(x0);
    free(noise);
    dl_st_close(&f);
}

TEST(add_noise, properties)
{
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_SCALED_LINEAR);
    enum { N = 20000 };
    float *x0 = malloc(N * sizeof *x0), *e = malloc(N * sizeof *e), *x = malloc(N * sizeof *x);
    dl_test_rng r = {99};
    /* unit-variance inputs (uniform on [-sqrt3, sqrt3]) stay unit variance: a^2 + b^2 = 1 */
    dl_test_fill(&r, x0, N, -1.7320508f, 1.7320508f);
    dl_test_fill(&r, e, N, -1.7320508f, 1.7320508f);
    for (int t = 0; t < 1000; t += 333) {
        CHECK(add_noise(&s, x, x0, e, N, t) == DL_OK, "add_noise t=%d", t);
        double var = 0;
        for (int i = 0; i < N; i++) var += (double)x[i] * x[i];
        var /= N;
        CHECK(fabs(var - 1.0) < 0.03, "t=%d: variance %.4f, expected ~1", t, var);
    }
    /* t = 0 is almost x0; t = 999 is mostly noise */
    add_noise(&s, x, x0, e, N, 0);
    CHECK(dl_max_abs_diff(x, x0, N) < 0.06, "t=0 far from x0: %g", dl_max_abs_diff(x, x0, N));
    add_noise(&s, x, x0, e, N, 999);
    CHECK(dl_max_abs_diff(x, e, N) < 0.13, "t=999 far from the noise: %g", dl_max_abs_diff(x, e, N));
    CHECK(add_noise(&s, x, x0, e, N, 1000) == DL_ERR_ARG, "t = T accepted");
    CHECK(add_noise(&s, x, x0, e, N, -1) == DL_ERR_ARG, "t = -1 accepted");
    CHECK(strstr(dl_error_message(), "-1") != NULL, "message names the timestep: %s", dl_error_message());
    free(x0); free(e); free(x);
    dl_schedule_free(&s);
}

/* ------------------------------------------------------------------ */

TEST(ddpm_step, matches_torch)
{
    static const struct { const char *cfg; int t; } cases[] = {
        {"scaled_linear_T1000", 999}, {"scaled_linear_T1000", 500}, {"scaled_linear_T1000", 10},
        {"scaled_linear_T1000", 1}, {"scaled_linear_T1000", 0}, {"linear_T1000", 100},
        {"cosine_T1000", 999}, {"cosine_T1000", 1},
    };
    dl_safetensors f;
    if (!open_fixture(&f)) return;
    float *x_t = load(&f, "ddpm.x_t", NVALUES), *eps = load(&f, "ddpm.eps", NVALUES), *z = load(&f, "ddpm.z", NVALUES);
    float out[NVALUES];
    for (size_t i = 0; x_t && eps && z && i < sizeof cases / sizeof cases[0]; i++) {
        int c = config_index(cases[i].cfg);
        dl_schedule s;
        dl_schedule_init(&s, configs[c].kind, configs[c].T, configs[c].b0, configs[c].b1);
        char name[128];
        snprintf(name, sizeof name, "ddpm.%s.t%d", cases[i].cfg, cases[i].t);
        float *want = load(&f, name, NVALUES);
        CHECK(ddpm_posterior_step(&s, out, x_t, eps, z, NVALUES, cases[i].t) == DL_OK, "%s: %s", name, dl_error_message());
        if (want) check_exact(name, out, want, NVALUES);
        free(want);
        dl_schedule_free(&s);
    }
    free(x_t); free(eps); free(z);
    dl_st_close(&f);
}

TEST(ddpm_step, equals_ddim_eta1_form)
{
    /* Independent check: with the TRUE noise as eps, the DDPM posterior
     * q(x_{t-1} | x_t, x0) can also be written (DDIM paper, eta = 1) as
     *     x_{t-1} = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - var) eps + sqrt(var) z.
     * Compute that in double from the schedule and compare. */
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    enum { N = 257 };
    float x0[N], e[N], z[N], xt[N], got[N];
    dl_test_rng r = {7};
    dl_test_fill(&r, x0, N, -1, 1);
    dl_test_fill(&r, e, N, -2, 2);
    dl_test_fill(&r, z, N, -2, 2);
    const int ts[] = {1, 2, 10, 100, 500, 999};
    for (int k = 0; k < 6; k++) {
        int t = ts[k];
        add_noise(&s, xt, x0, e, N, t);
        CHECK(ddpm_posterior_step(&s, got, xt, e, z, N, t) == DL_OK, "%s", dl_error_message());
        double ab = s.alphas_cumprod[t], abp = s.alphas_cumprod[t - 1];
        double var = (1 - abp) / (1 - ab) * (1 - ab / abp);
        double worst = 0;
        for (int i = 0; i < N; i++) {
            double want = sqrt(abp) * x0[i] + sqrt(1 - abp - var) * e[i] + sqrt(var) * z[i];
            double d = fabs(got[i] - want);
            if (d > worst) worst = d;
        }
        /* float32 rounding of x_t is amplified by 1/sqrt(abar_t) in x0_hat, and
         * diffusers' beta_t = 1 - abar_t/abar_prev (float32) carries a relative
         * error of ~6e-8/beta_t from cancellation (beta_t ~ 1e-4 at small t) */
        double tol = 2e-5 / sqrt(ab) + 3e-8 / (1 - ab / abp);
        CHECK(worst < tol, "t=%d: max diff %.3g from the DDIM eta=1 form (tol %.3g)", t, worst, tol);
    }
    /* t small, z = 0: the step lands on (almost) x0 */
    float zero[N] = {0};
    add_noise(&s, xt, x0, e, N, 1);
    ddpm_posterior_step(&s, got, xt, e, zero, N, 1);
    CHECK(dl_max_abs_diff(got, x0, N) < 0.03, "t=1 step with true noise: %g from x0", dl_max_abs_diff(got, x0, N));
    add_noise(&s, xt, x0, e, N, 0);
    CHECK(ddpm_posterior_step(&s, got, xt, e, NULL, N, 0) == DL_OK, "t=0 needs no z");
    CHECK(dl_max_abs_diff(got, x0, N) < 1e-5, "t=0 returns x0_hat = x0: %g", dl_max_abs_diff(got, x0, N));
    /* in place, and argument errors */
    float inplace[N];
    memcpy(inplace, xt, sizeof xt);
    ddpm_posterior_step(&s, got, xt, e, z, N, 0);
    ddpm_posterior_step(&s, inplace, inplace, e, z, N, 0);
    CHECK(!memcmp(got, inplace, sizeof got), "x_prev may alias x_t");
    CHECK(ddpm_posterior_step(&s, got, xt, e, NULL, N, 5) == DL_ERR_ARG, "missing z at t > 0 accepted");
    CHECK(ddpm_posterior_step(&s, got, xt, e, z, N, 1000) == DL_ERR_ARG, "t = T accepted");
    dl_schedule_free(&s);
}
