/* test_lesson05.c - lesson 05 (classifier-free guidance): the exercises of
 * docs/05_guidance.md checked against the library, and bin/05_guidance
 * headless on the shipped toy model (a few steps), --help and bad arguments. */
#include "testing.h"
#include "../core/rng.h"
#include "../core/sampling.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENV "OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 "   /* small batches: one thread is enough, and a busy machine cannot stall it */

/* ---- the exercises -------------------------------------------------------- */

/* EXERCISE 1. Classifier-free guidance on n values: start from the
 * unconditional prediction and go g times the way to the conditional one. */
static void my_cfg_combine(float *out, const float *u, const float *c, float g, int n)
{
    for (int i = 0; i < n; i++) out[i] = u[i] + g * (c[i] - u[i]);
}

/* EXERCISE 2. Guidance rescale (Lin et al. 2023): large g inflates the
 * standard deviation of eps. Scale the guided eps of one item back to the
 * std of eps_cond, then blend: eps = phi * rescaled + (1 - phi) * eps.
 * Use the sample std with n - 1 (as torch.std). */
static double std_of(const float *x, int n)
{
    double m = 0, v = 0;
    for (int i = 0; i < n; i++) m += x[i];
    m /= n;
    for (int i = 0; i < n; i++) v += (x[i] - m) * (x[i] - m);
    return sqrt(v / (n - 1));
}
static void my_rescale(float *eps, const float *cond, float phi, int n)
{
    double r = std_of(cond, n) / std_of(eps, n);
    for (int i = 0; i < n; i++) eps[i] = (float)(phi * eps[i] * r + (1 - phi) * eps[i]);
}

TEST(lesson05, exercise_cfg_combine)
{
    enum { N = 257 };
    float u[N], c[N], mine[N], lib[N];
    dl_rng rng;
    dl_rng_seed(&rng, 5);
    dl_rng_randn(&rng, u, N);
    dl_rng_randn(&rng, c, N);
    const float gs[] = {0.0f, 1.0f, 3.0f, 7.5f};
    for (int k = 0; k < 4; k++) {
        my_cfg_combine(mine, u, c, gs[k], N);
        dl_cfg_combine(lib, u, c, gs[k], N);
        float worst = 0;
        for (int i = 0; i < N; i++) worst = fmaxf(worst, fabsf(mine[i] - lib[i]));
        CHECK(worst <= 1e-5f, "g = %g: max difference %g", gs[k], worst);
    }
    /* g = 0 is the unconditional model, g = 1 the conditional one */
    my_cfg_combine(mine, u, c, 0.0f, N);
    CHECK(!memcmp(mine, u, sizeof u), "g = 0 must give eps_uncond");
    my_cfg_combine(mine, u, c, 1.0f, N);
    CHECK(fabsf(mine[7] - c[7]) < 1e-6f, "g = 1 must give eps_cond");
}

TEST(lesson05, exercise_guidance_rescale)
{
    enum { B = 2, P = 300 };
    float u[B * P], c[B * P], mine[B * P], lib[B * P];
    dl_rng rng;
    dl_rng_seed(&rng, 6);
    dl_rng_randn(&rng, u, B * P);
    dl_rng_randn(&rng, c, B * P);
    dl_cfg_combine(lib, u, c, 7.5f, B * P);
    memcpy(mine, lib, sizeof lib);
    for (int b = 0; b < B; b++) my_rescale(mine + b * P, c + b * P, 0.7f, P);
    dl_cfg_rescale(lib, c, 0.7f, B, P);
    float worst = 0;
    for (int i = 0; i < B * P; i++) worst = fmaxf(worst, fabsf(mine[i] - lib[i]));
    CHECK(worst <= 1e-4f, "rescale: max difference %g", worst);
    /* phi = 1 gives exactly the conditional std */
    dl_cfg_combine(lib, u, c, 7.5f, B * P);
    dl_cfg_rescale(lib, c, 1.0f, B, P);
    CHECK(fabs(std_of(lib, P) - std_of(c, P)) < 1e-4, "phi = 1: std %g vs %g", std_of(lib, P), std_of(c, P));
}

/* ---- the program ---------------------------------------------------------- */

TEST(lesson05, headless_writes_the_figures)
{
    char dir[512], cmd[1024], path[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson05"));
    const char *files[] = {"05_guidance_grid.png", "05_guidance_heat.png", "05_tradeoff.png"};
    for (int i = 0; i < 3; i++) { snprintf(path, sizeof path, "%s/%s", dir, files[i]); remove(path); }
    snprintf(cmd, sizeof cmd, ENV "%s/05_guidance --headless --steps 3 --per-class 2 --out %s", dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "exit status %d", rc)) { dl_test_show_log(); return; }
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        CHECK(dl_test_file_ok(path), "%s missing", path);
    }
    /* the table has one line per guidance scale, the largest last */
    CHECK(dl_test_log_contains("judged accuracy") && dl_test_log_contains("\n  7.5 ") && dl_test_log_contains("\n  20 "),
          "the trade-off table is incomplete");
}

TEST(lesson05, help_and_bad_arguments)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/05_guidance --help", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0 && dl_test_log_contains("--per-class"), "--help");
    const struct { const char *args, *says; } bad[] = {
        {"--steps 1", "--steps"},
        {"--per-class 1", "--per-class"},
        {"--seed -3", "-3"},
        {"--checkpoint /nonexistent.safetensors", "nonexistent"},
        {"--bogus", "--bogus"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, ENV "%s/05_guidance --headless --out %s %s", dl_test_bin_dir(),
                 dl_test_out_dir("lesson05/bad"), bad[i].args);
        int rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "'%s' should fail cleanly, exit status %d", bad[i].args, rc);
        if (!CHECK(dl_test_log_contains(bad[i].says) && dl_test_log_contains("error"), "'%s': message should name '%s'",
                   bad[i].args, bad[i].says))
            dl_test_show_log();
    }
}

/* The live window on SDL's display-less "dummy" driver: a few frames, then
 * the program saves what the window showed. */
TEST(lesson05, live_window_runs)
{
    char dir[512], cmd[1024], path[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson05/live"));
    snprintf(path, sizeof path, "%s/05_guidance_window.png", dir);
    remove(path);
    snprintf(cmd, sizeof cmd, ENV "env -u DISPLAY -u WAYLAND_DISPLAY SDL_VIDEODRIVER=dummy %s/05_guidance --max-frames 3 "
             "--steps 4 --out %s", dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0 && dl_test_file_ok(path), "exit %d, %s %s", rc, path, dl_test_file_ok(path) ? "written" : "missing"))
        dl_test_show_log();
}
