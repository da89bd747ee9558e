/* test_lesson01.c - lesson 01 (forward noising): the program, and the
 * exercises of docs/01_forward_noising.md.
 *
 *   make test K=lesson01              everything here
 *   make test K=lesson01/variance     exercise 2
 *   make test K=lesson01/snr_one      exercise 3
 *   make test K=add_noise             exercise 1 (tests/test_schedule.c)
 *
 * The three EXERCISE functions below are where a student writes the answer
 * (the repository ships a solution so that the tests pass; delete the
 * body and write your own).
 */
#include "testing.h"
#include "../core/idx.h"
#include "../core/image.h"
#include "../core/rng.h"
#include "../core/schedule.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the exercises ------------------------------------------------------ */

/* EXERCISE 2. x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps with eps ~ N(0, 1)
 * independent of x_0. If the pixels of x_0 have variance var_x0, what is
 * the variance of x_t (over pixels and noise draws)? */
static double expected_variance(double ab, double var_x0)
{
    return ab * var_x0 + (1.0 - ab);   /* Var[aX + bE] = a^2 Var X + b^2 Var E */
}

/* EXERCISE 3a. The cosine schedule of improved DDPM sets
 * abar(t) = f(t+1) / f(0) with f(u) = cos^2((u/T + s) / (1 + s) * pi/2), s = 0.008
 * (the +1 because diffusers' alphas_cumprod[t] already includes step t).
 * At which t is SNR = abar / (1 - abar) equal to 1? A formula, not a search. */
static double cosine_t_where_snr_is_one(int T)
{
    const double s = 0.008, f0 = pow(cos(s / (1 + s) * M_PI / 2), 2);
    /* abar = 1/2  <=>  cos^2(angle) = f0 / 2 */
    double angle = acos(sqrt(f0 / 2));
    return T * (angle * 2 / M_PI * (1 + s) - s) - 1;
}

/* EXERCISE 3b. The linear schedule: beta_t = b0 + (b1 - b0) t / (T - 1).
 * For small betas, ln abar_t = sum ln(1 - beta_s) ~ -sum_{s<=t} beta_s.
 * Using that approximation, at which t is SNR = 1 (abar = 1/2)? */
static double linear_t_where_snr_is_one(int T, double b0, double b1)
{
    /* sum_{s=0}^{t} beta_s = (t+1) b0 + (b1-b0)/(T-1) t(t+1)/2 = ln 2:
     * with u = t + 1: (k/2) u^2 + (b0 - k/2) u - ln 2 = 0, k = (b1-b0)/(T-1) */
    double k = (b1 - b0) / (T - 1), a = k / 2, b = b0 - k / 2, c = -log(2.0);
    double u = (-b + sqrt(b * b - 4 * a * c)) / (2 * a);
    return u - 1;
}

/* One step of the forward chain, q(x_t | x_{t-1}) = N(sqrt(1 - beta) x, beta):
 * not an exercise, but worth reading next to the closed form. */
static float forward_step(float x, float beta, float z)
{
    return sqrtf(1.0f - beta) * x + sqrtf(beta) * z;
}

/* ---- exercise tests ----------------------------------------------------- */

/* The t (fractional) where ln SNR crosses 0, found numerically. */
static double numeric_snr_one(const dl_schedule *s)
{
    for (int t = 0; t + 1 < s->num_train_timesteps; t++) {
        double a = dl_schedule_log_snr(s, t), b = dl_schedule_log_snr(s, t + 1);
        if (a >= 0 && b < 0) return t + a / (a - b);
    }
    return NAN;
}

TEST(lesson01, snr_one_crossing)
{
    dl_schedule cos_s, lin_s;
    CHECK(dl_schedule_init_default(&cos_s, DL_SCHEDULE_COSINE) == DL_OK, "%s", dl_error_message());
    CHECK(dl_schedule_init_default(&lin_s, DL_SCHEDULE_LINEAR) == DL_OK, "%s", dl_error_message());
    double got = cosine_t_where_snr_is_one(1000), want = numeric_snr_one(&cos_s);
    CHECK(fabs(got - want) < 0.5, "cosine: your formula says t = %.2f, the schedule crosses SNR = 1 at t = %.2f", got, want);
    got = linear_t_where_snr_is_one(1000, 1e-4, 0.02);
    want = numeric_snr_one(&lin_s);
    CHECK(fabs(got - want) < 0.75, "linear: your formula says t = %.2f, the schedule crosses SNR = 1 at t = %.2f", got, want);
    /* the point of the cosine schedule: half the signal lasts about twice as long */
    CHECK(numeric_snr_one(&cos_s) > 1.8 * numeric_snr_one(&lin_s), "cosine keeps the signal longer than linear");
    dl_schedule_free(&cos_s);
    dl_schedule_free(&lin_s);
}

TEST(lesson01, variance_of_x_t)
{
    /* x_0 = the first MNIST test digit, 32x32 in [-1, 1], as in the lesson */
    dl_idx mnist;
    CHECK(dl_idx_load(&mnist, "data/mnist/t10k-images-idx3-ubyte.gz", 1) == DL_OK, "%s", dl_error_message());
    if (!mnist.data) return;
    enum { N = 32 * 32, DRAWS = 256 };
    float x0[N] = {0};
    for (int y = 0; y < 28; y++)
        for (int x = 0; x < 28; x++) x0[(y + 2) * 32 + x + 2] = mnist.data[y * 28 + x] / 127.5f - 1.0f;
    for (int y = 0; y < 32; y++)   /* the padding is black (-1) too */
        for (int x = 0; x < 32; x++)
            if (y < 2 || y >= 30 || x < 2 || x >= 30) x0[y * 32 + x] = -1.0f;
    dl_idx_free(&mnist);
    double mean0 = 0, var0 = 0;
    for (int i = 0; i < N; i++) mean0 += x0[i];
    mean0 /= N;
    for (int i = 0; i < N; i++) var0 += (x0[i] - mean0) * (x0[i] - mean0);
    var0 /= N;

    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    float *eps = malloc(sizeof(float) * N * DRAWS), *xt = malloc(sizeof(float) * N * DRAWS);
    dl_rng rng;
    dl_rng_seed(&rng, 0);
    dl_rng_randn(&rng, eps, (int64_t)N * DRAWS);
    const int ts[4] = {0, 100, 300, 999};
    for (int k = 0; k < 4; k++) {
        for (int d = 0; d < DRAWS; d++)
            CHECK(add_noise(&s, xt + d * N, x0, eps + d * N, N, ts[k]) == DL_OK, "%s", dl_error_message());
        double m = 0, v = 0;
        for (int i = 0; i < N * DRAWS; i++) m += xt[i];
        m /= (double)N * DRAWS;
        for (int i = 0; i < N * DRAWS; i++) v += (xt[i] - m) * (xt[i] - m);
        v /= (double)N * DRAWS;
        double ab = s.alphas_cumprod[ts[k]];
        CHECK(fabs(m - sqrt(ab) * mean0) < 0.01, "t=%d: mean of x_t %.4f, want sqrt(ab) mean(x0) = %.4f",
              ts[k], m, sqrt(ab) * mean0);
        CHECK(fabs(v - expected_variance(ab, var0)) < 0.015,
              "t=%d: variance of x_t %.4f, your formula gives %.4f (ab = %.4f, var x0 = %.4f)",
              ts[k], v, expected_variance(ab, var0), ab, var0);
    }
    free(eps);
    free(xt);
    dl_schedule_free(&s);
}

/* ---- the closed form equals many small steps ---------------------------- */

TEST(lesson01, closed_form_equals_small_steps)
{
    enum { S = 8192 };   /* independent chains, all starting at x_0 = 0.8 */
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    float *x = malloc(sizeof(float) * S), *z = malloc(sizeof(float) * S);
    for (int i = 0; i < S; i++) x[i] = 0.8f;
    dl_rng rng;
    dl_rng_seed(&rng, 1);
    for (int t = 0; t < s.num_train_timesteps; t++) {
        dl_rng_randn(&rng, z, S);
        for (int i = 0; i < S; i++) x[i] = forward_step(x[i], s.betas[t], z[i]);
        if (t != 20 && t != 250 && t != 999) continue;
        double m = 0, v = 0, ab = s.alphas_cumprod[t];
        for (int i = 0; i < S; i++) m += x[i];
        m /= S;
        for (int i = 0; i < S; i++) v += (x[i] - m) * (x[i] - m);
        v /= S;
        /* closed form: x_t ~ N(sqrt(ab) x_0, 1 - ab); tolerances ~4 standard errors */
        double se_m = sqrt((1 - ab) / S), se_v = sqrt(2.0 / S) * (1 - ab);
        CHECK(fabs(m - sqrt(ab) * 0.8) < 4 * se_m + 1e-4, "t=%d: chain mean %.4f, closed form %.4f", t, m, sqrt(ab) * 0.8);
        CHECK(fabs(v - (1 - ab)) < 4 * se_v + 1e-6, "t=%d: chain variance %.4f, closed form %.4f", t, v, 1 - ab);
    }
    free(x);
    free(z);
    dl_schedule_free(&s);
}

/* ---- the program ---------------------------------------------------------- */

/* Mean |horizontal neighbour difference| of the luma in columns [x0, x1). */
static double roughness(const dl_image *img, int x0, int x1)
{
    double sum = 0;
    long n = 0;
    for (int y = 0; y < img->h; y++)
        for (int x = x0 + 1; x < x1; x++) {
            const unsigned char *a = &img->px[(y * img->w + x - 1) * 3], *b = &img->px[(y * img->w + x) * 3];
            sum += fabs((a[0] + a[1] + a[2]) / 3.0 - (b[0] + b[1] + b[2]) / 3.0);
            n++;
        }
    return n ? sum / n : 0;
}

TEST(lesson01, headless_writes_three_pictures)
{
    char dir[512];   /* copy: dl_test_out_dir reuses its buffer (dl_test_run calls it) */
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson01"));
    const char *names[3] = {"01_strip_cat.png", "01_strip_digit.png", "01_schedules.png"};
    const int min_w[3] = {5 * 384, 5 * 192, 1200}, min_h[3] = {3 * 256, 3 * 192, 400};
    char cmd[1024], path[600];
    for (int i = 0; i < 3; i++) { snprintf(path, sizeof path, "%s/%s", dir, names[i]); remove(path); }
    snprintf(cmd, sizeof cmd, "%s/01_forward_noising --headless --out %s", dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "'%s' exited with %d", cmd, rc)) dl_test_show_log();
    CHECK(dl_test_log_contains("wrote"), "the program should say what it wrote");
    dl_image img[3] = {{0}};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        CHECK(dl_image_load(&img[i], path, 3) == DL_OK, "%s", dl_error_message());
        CHECK(img[i].w >= min_w[i] && img[i].h >= min_h[i] && img[i].w <= 4096 && img[i].h <= 2048,
              "%s is %dx%d, expected at least %dx%d", names[i], img[i].w, img[i].h, min_w[i], min_h[i]);
    }
    /* left columns (small t) are smooth, right columns (large t) are noise */
    for (int i = 0; i < 2; i++) {
        if (!img[i].px) continue;
        double left = roughness(&img[i], img[i].w / 8, img[i].w * 3 / 10), right = roughness(&img[i], img[i].w * 7 / 10, img[i].w);
        CHECK(right > 2 * left, "%s: right side (large t) not noisier than the left (%.1f vs %.1f)", names[i], right, left);
    }
    /* the schedules figure has coloured curves (blue, orange, green) */
    int colours[3] = {0};
    for (int p = 0; img[2].px && p < img[2].w * img[2].h; p++) {
        const unsigned char *c = &img[2].px[p * 3];
        colours[0] += c[0] == 0x1f && c[1] == 0x77 && c[2] == 0xb4;
        colours[1] += c[0] == 0xff && c[1] == 0x7f && c[2] == 0x0e;
        colours[2] += c[0] == 0x2c && c[1] == 0xa0 && c[2] == 0x2c;
    }
    CHECK(colours[0] > 1000 && colours[1] > 1000 && colours[2] > 1000, "curves of the three schedules (%d %d %d pixels)",
          colours[0], colours[1], colours[2]);
    for (int i = 0; i < 3; i++) dl_image_free(&img[i]);
}

TEST(lesson01, no_display_means_headless_and_seed_matters)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson01/auto"));
    char cmd[1024], a[600], b[600];
    snprintf(cmd, sizeof cmd, "env -u DISPLAY -u WAYLAND_DISPLAY -u SDL_VIDEODRIVER %s/01_forward_noising --out %s --seed 7 --digit-index 1",
             dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "'%s' exited with %d", cmd, rc)) dl_test_show_log();
    CHECK(dl_test_log_contains("no display"), "one line should say that it runs headless");
    /* another seed, another digit: the pictures differ from the default run */
    snprintf(a, sizeof a, "%s/01_strip_digit.png", dir);
    snprintf(b, sizeof b, "%s/01_strip_digit.png", dl_test_out_dir("lesson01"));
    dl_image x, y;
    if (CHECK(dl_image_load(&x, a, 3) == DL_OK, "%s", dl_error_message()) && dl_image_load(&y, b, 3) == DL_OK) {
        CHECK(x.w != y.w || x.h != y.h || memcmp(x.px, y.px, (size_t)x.w * x.h * 3) != 0,
              "--seed 7 --digit-index 1 gave the same picture as the defaults");
        dl_image_free(&y);
    }
    dl_image_free(&x);
}

TEST(lesson01, help_and_bad_arguments)
{
    char cmd[1024];
    const char *bin = dl_test_bin_dir();
    snprintf(cmd, sizeof cmd, "%s/01_forward_noising --help", bin);
    CHECK(dl_test_run(cmd) == 0, "--help should exit 0");
    CHECK(dl_test_log_contains("--seed") && dl_test_log_contains("--headless"), "--help lists the options");

    const struct { const char *args, *says; } bad[] = {
        {"--seed abc", "abc"},
        {"--seed -3", "-3"},
        {"--seed 12x", "12x"},
        {"--digit-index 10000", "10000"},
        {"--digit-index", "needs a value"},
        {"--image no/such/photo.png", "no/such/photo.png"},
        {"--frobnicate", "--frobnicate"},
        {"--out /proc/not_here", "/proc/not_here"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s/01_forward_noising --headless %s", bin, bad[i].args);
        int rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "'%s' should fail cleanly, exit status %d", bad[i].args, rc);
        if (!CHECK(dl_test_log_contains(bad[i].says) && dl_test_log_contains("error"), "'%s': the message should mention '%s'",
                   bad[i].args, bad[i].says))
            dl_test_show_log();
    }
}
