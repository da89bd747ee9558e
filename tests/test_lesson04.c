/* test_lesson04.c - lesson 04 (sampling): the scriptable sampler and the
 * figures on a tiny randomly initialised model saved here, its error
 * messages, and the exercises of docs/04_sampling.md.
 *
 *   make test K=lesson04              everything here
 *   make test K=ddim                  exercise 1: your DDIM step against diffusers
 *   make test K=lesson04/exercise     the other exercises
 *
 * Lesson binaries run with OMP_WAIT_POLICY=passive (see test_lesson03.c).
 */
#include "testing.h"
#include "../core/checkpoint.h"
#include "../core/image.h"
#include "../core/optim.h"
#include "../core/sampling.h"
#include "../core/schedule.h"
#include "../core/toy_sample.h"
#include "../core/toy_unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ENV "OMP_WAIT_POLICY=passive "

/* ---- the exercises -------------------------------------------------------- */

/* EXERCISE 2. The mean of the DDPM posterior q(x_{t-1} | x_t, x0) is a
 * weighted sum of x0 and x_t (Ho et al. 2020, eq. 7). With
 * abar = alphas_cumprod[t], abar_prev = alphas_cumprod[t-1] (1 at t = 0),
 * alpha = abar / abar_prev and beta = 1 - alpha, return the weight of x0
 * and the weight of x_t. */
static void posterior_weights(float abar, float abar_prev, float *w_x0, float *w_xt)
{
    float alpha = abar / abar_prev, beta = 1.0f - alpha;
    *w_x0 = sqrtf(abar_prev) * beta / (1.0f - abar);
    *w_xt = sqrtf(alpha) * (1.0f - abar_prev) / (1.0f - abar);
}

/* EXERCISE 3. DDIM with eta = 0 is deterministic: the same x_T always gives
 * the same picture. Going from t to t_prev it keeps x0_hat and the noise
 * direction eps. Write the one-value update x_t -> x_prev. */
static float ddim_eta0_update(float x_t, float eps, float abar, float abar_prev)
{
    float x0 = (x_t - sqrtf(1.0f - abar) * eps) / sqrtf(abar);
    return sqrtf(abar_prev) * x0 + sqrtf(1.0f - abar_prev) * eps;
}

/* ---- exercise tests ------------------------------------------------------- */

TEST(lesson04, exercise_posterior_weights)
{
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    dl_sampler_config cfg = dl_sampler_config_default();
    /* against the library's DDPM step with zero noise: x_prev = w_x0 x0_hat + w_xt x_t */
    const int ts[4] = {999, 500, 10, 1};
    for (int k = 0; k < 4; k++) {
        int t = ts[k];
        float x[2] = {0.7f, -0.3f}, e[2] = {0.2f, 1.1f}, z[2] = {0, 0}, got[2], x0[2];
        ddpm_step(&s, &cfg, t, t - 1, x, e, z, got, x0, 2);
        float wa, wb;
        posterior_weights(s.alphas_cumprod[t], s.alphas_cumprod[t - 1], &wa, &wb);
        float want[2] = {wa * x0[0] + wb * x[0], wa * x0[1] + wb * x[1]};
        char what[64];
        snprintf(what, sizeof what, "posterior mean at t = %d", t);
        CHECK_CLOSE(what, want, got, 2, 1e-5);
        /* the weights are what makes the mean lie between x0_hat and x_t */
        CHECK(wa > 0 && wb > 0 && wa + wb > 0.9f && wa + wb < 1.1f, "t = %d: weights %g and %g", t, wa, wb);
    }
    dl_schedule_free(&s);
}

TEST(lesson04, exercise_ddim_deterministic_update)
{
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    dl_sampler_config cfg = dl_sampler_config_default();
    dl_test_rng r = {5};
    const int pairs[3][2] = {{980, 960}, {500, 300}, {20, 0}};
    for (int k = 0; k < 3; k++) {
        float x[32], e[32], want[32], got[32];
        dl_test_fill(&r, x, 32, -2, 2);
        dl_test_fill(&r, e, 32, -2, 2);
        int t = pairs[k][0], tp = pairs[k][1];
        ddim_step(&s, &cfg, t, tp, 0.0f, x, e, NULL, want, NULL, 32);
        for (int i = 0; i < 32; i++) got[i] = ddim_eta0_update(x[i], e[i], s.alphas_cumprod[t], s.alphas_cumprod[tp]);
        char what[64];
        snprintf(what, sizeof what, "DDIM eta=0 step %d -> %d", t, tp);
        CHECK_CLOSE(what, got, want, 32, 1e-5);
    }
    dl_schedule_free(&s);
}

/* ---- a tiny model to sample from ------------------------------------------- */

static void micro_config(toy_unet_config *c)
{
    toy_unet_config_default(c, "mnist");
    c->levels = 2;
    c->block_out_channels[0] = 8;
    c->block_out_channels[1] = 8;
    c->block_out_channels[2] = 0;
    c->layers_per_block = 1;
    c->attention_levels = 0;          /* attention in the mid block only */
    c->cross_attention_dim = 8;
    c->heads = 1;
    c->norm_groups = 4;
    c->time_embed_dim = 32;
}

/* Saves a randomly initialised micro model: a full training checkpoint
 * (weights, EMA, AdamW) at `full` and an EMA-only file at `ema_only`. */
static int save_micro_model(const char *full, const char *ema_only)
{
    toy_unet_config cfg;
    micro_config(&cfg);
    toy_unet *net;
    if (!CHECK(toy_unet_create(&net, &cfg, 2, 42) == DL_OK, "%s", dl_error_message())) return 0;
    char json[2048];
    dl_param_list *params = toy_unet_params(net);
    dl_ema ema;
    dl_adamw opt;
    int ok = CHECK(toy_unet_config_to_json(&cfg, json, sizeof json) == DL_OK, "%s", dl_error_message()) &&
             CHECK(dl_ema_init(&ema, params, 0.99f) == DL_OK, "%s", dl_error_message()) &&
             CHECK(dl_adamw_init(&opt, params, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f) == DL_OK, "%s", dl_error_message());
    if (ok) {
        ok = CHECK(dl_checkpoint_save(full, params, &ema, &opt, NULL, 3, json) == DL_OK, "%s", dl_error_message()) &&
             CHECK(dl_checkpoint_save_ema_weights(ema_only, params, &ema, 3, json) == DL_OK, "%s", dl_error_message());
        dl_ema_free(&ema);
        dl_adamw_free(&opt);
    }
    toy_unet_free(net);
    return ok;
}

/* toy_sample splits big requests into chunks that fit the net; each
 * sample must not depend on which chunk (and neighbours) it ran with, and
 * the class ids must stay with their images. */
TEST(lesson04, toy_sample_chunks_are_independent)
{
    /* one thread: tiny batches gain nothing from two, and on a busy machine
     * spinning OpenMP threads make this test 20x slower */
    int threads = dl_get_threads();
    dl_set_threads(1);
    toy_unet_config cfg;
    micro_config(&cfg);
    toy_unet *big, *small;
    if (!CHECK(toy_unet_create(&big, &cfg, 8, 5) == DL_OK && toy_unet_create(&small, &cfg, 2, 5) == DL_OK, "%s",
               dl_error_message())) { dl_set_threads(threads); return; }
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    const int labels[4] = {1, 9, 4, 10};   /* 10 = the null class */
    dl_tensor a, b;
    dl_tensor_alloc(&a, 4, DL_SHAPE(4, 1, 32, 32));
    dl_tensor_alloc(&b, 4, DL_SHAPE(4, 1, 32, 32));
    for (int g = 0; g < 2; g++) {
        toy_sample_opts o = toy_sample_opts_default();
        o.steps = 4;
        o.guidance = g ? 3.0f : 1.0f;
        dl_rng r1, r2;
        dl_rng_seed(&r1, 77);
        dl_rng_seed(&r2, 77);
        CHECK(toy_sample(big, &s, &o, labels, 4, &r1, &a) == DL_OK, "%s", dl_error_message());    /* one chunk */
        CHECK(toy_sample(small, &s, &o, labels, 4, &r2, &b) == DL_OK, "%s", dl_error_message());  /* 4 or 2 chunks */
        CHECK_CLOSE(g ? "guided samples, chunked vs not" : "unguided samples, chunked vs not", a.data, b.data, 4 * 1024, 1e-4);
    }
    /* too many images for the net's batch are refused by the guided model itself */
    toy_guided tg;
    int many[3] = {0, 1, 2};
    EXPECT_FAIL(toy_guided_init(&tg, small, many, 3, 3.0f), DL_ERR_ARG, "toy_guided_init", "3 guided images in a batch of 2");
    EXPECT_FAIL(toy_guided_init(&tg, small, (int[]){11}, 1, 3.0f), DL_ERR_ARG, "class 11", "class out of range");
    dl_tensor_free(&a);
    dl_tensor_free(&b);
    dl_schedule_free(&s);
    toy_unet_free(big);
    toy_unet_free(small);
    dl_set_threads(threads);
}

static int same_png(const char *a, const char *b)
{
    dl_image x = {0}, y = {0};
    int same = dl_image_load(&x, a, 0) == DL_OK && dl_image_load(&y, b, 0) == DL_OK && x.w == y.w && x.h == y.h &&
               x.c == y.c && !memcmp(x.px, y.px, (size_t)x.w * x.h * x.c);
    dl_image_free(&x);
    dl_image_free(&y);
    return same;
}

TEST(lesson04, scripted_sampling_writes_one_png_per_sample)
{
    char dir[512], full[700], ema[700], cmd[2048], path[800], other[800];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson04/scripted"));
    snprintf(full, sizeof full, "%s/micro_full.safetensors", dir);
    snprintf(ema, sizeof ema, "%s/micro_ema.safetensors", dir);
    if (!save_micro_model(full, ema)) return;
    for (int i = 0; i < 4; i++) { snprintf(path, sizeof path, "%s/class3_%d.png", dir, i); remove(path); }
    /* DDIM from the EMA-only file (the shipped kind) */
    snprintf(cmd, sizeof cmd, ENV "%s/04_sampling --checkpoint %s --class 3 --count 3 --guidance 3 --scheduler ddim "
             "--steps 5 --seed 7 --out %s --headless", dl_test_bin_dir(), ema, dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "'%s' exited with %d", cmd, rc)) { dl_test_show_log(); return; }
    for (int i = 0; i < 3; i++) {
        dl_image img = {0};
        snprintf(path, sizeof path, "%s/class3_%d.png", dir, i);
        if (CHECK(dl_image_load(&img, path, 0) == DL_OK, "%s", dl_error_message()))
            CHECK(img.w == 32 && img.h == 32 && img.c == 1, "%s is %dx%d with %d channels, want 32x32 gray", path, img.w, img.h, img.c);
        dl_image_free(&img);
    }
    snprintf(path, sizeof path, "%s/class3_3.png", dir);
    CHECK(!dl_test_file_ok(path), "--count 3 wrote a 4th image");
    snprintf(path, sizeof path, "%s/class3_grid.png", dir);
    CHECK(dl_test_file_ok(path), "the contact sheet %s is missing", path);
    /* the same seed gives the same pictures, from the full training checkpoint too
     * (its EMA equals the EMA-only file's weights) */
    snprintf(other, sizeof other, "%s/again", dir);
    snprintf(cmd, sizeof cmd, ENV "%s/04_sampling --checkpoint %s --class 3 --count 3 --steps 5 --seed 7 --out %s --headless",
             dl_test_bin_dir(), full, other);
    rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "'%s' exited with %d", cmd, rc)) dl_test_show_log();
    snprintf(path, sizeof path, "%s/class3_1.png", dir);
    snprintf(other, sizeof other, "%s/again/class3_1.png", dir);
    CHECK(same_png(path, other), "same seed, same weights: %s and %s differ", path, other);
    /* another seed, another picture */
    snprintf(other, sizeof other, "%s/seed8", dir);
    snprintf(cmd, sizeof cmd, ENV "%s/04_sampling --checkpoint %s --class 3 --count 2 --steps 5 --seed 8 --out %s --headless",
             dl_test_bin_dir(), ema, other);
    rc = dl_test_run(cmd);
    snprintf(other, sizeof other, "%s/seed8/class3_1.png", dir);
    CHECK(rc == 0 && !same_png(path, other), "--seed 8 gave the same picture as --seed 7");
    /* DDPM over a subset of steps, no guidance */
    snprintf(cmd, sizeof cmd, ENV "%s/04_sampling --checkpoint %s --class 0 --count 2 --guidance 1 --scheduler ddpm "
             "--steps 10 --out %s --headless", dl_test_bin_dir(), ema, dir);
    rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "'%s' exited with %d", cmd, rc)) dl_test_show_log();
    snprintf(path, sizeof path, "%s/class0_1.png", dir);
    CHECK(dl_test_file_ok(path), "%s missing", path);
}

/* Every scheduler of the sampler library runs the toy model from the command line. */
TEST(lesson04, every_scheduler_name)
{
    char dir[512], full[700], ema[700], cmd[2048], path[900];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson04/schedulers"));
    snprintf(full, sizeof full, "%s/micro_full.safetensors", dir);
    snprintf(ema, sizeof ema, "%s/micro_ema.safetensors", dir);
    if (!save_micro_model(full, ema)) return;
    for (int k = 0; k < DL_SAMPLER_COUNT; k++) {
        char sub[700];
        snprintf(sub, sizeof sub, "%s/%s", dir, dl_sampler_names[k]);
        snprintf(path, sizeof path, "%s/class2_0.png", sub);
        remove(path);
        snprintf(cmd, sizeof cmd, ENV "%s/04_sampling --checkpoint %s --class 2 --count 1 --scheduler %s --steps 4 "
                 "--out %s --headless", dl_test_bin_dir(), ema, dl_sampler_names[k], sub);
        int rc = dl_test_run(cmd);
        if (!CHECK(rc == 0 && dl_test_file_ok(path), "--scheduler %s: exit %d, %s %s", dl_sampler_names[k], rc, path,
                   dl_test_file_ok(path) ? "written" : "missing"))
            dl_test_show_log();
    }
}

TEST(lesson04, headless_figures)
{
    char dir[512], ema[700], full[700], cmd[2048], path[800];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson04/figures"));
    snprintf(full, sizeof full, "%s/micro_full.safetensors", dir);
    snprintf(ema, sizeof ema, "%s/micro_ema.safetensors", dir);
    if (!save_micro_model(full, ema)) return;
    const char *names[2] = {"04_reverse_process.png", "04_samples.png"};
    for (int i = 0; i < 2; i++) { snprintf(path, sizeof path, "%s/%s", dir, names[i]); remove(path); }
    /* without --class: DDPM next to DDIM 50 (eta 0, 1), and a grid of all classes
     * (DDPM with 200 instead of 1000 steps to keep the test short) */
    snprintf(cmd, sizeof cmd, ENV "%s/04_sampling --checkpoint %s --count 2 --steps 5 --ddpm-steps 200 --out %s --headless",
             dl_test_bin_dir(), ema, dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "'%s' exited with %d", cmd, rc)) { dl_test_show_log(); return; }
    for (int i = 0; i < 2; i++) {
        dl_image img = {0};
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (CHECK(dl_image_load(&img, path, 3) == DL_OK, "%s", dl_error_message()))
            CHECK(img.w >= 2 * 96 && img.h >= 6 * 96, "%s is only %dx%d", names[i], img.w, img.h);
        dl_image_free(&img);
    }
}

TEST(lesson04, help_and_bad_arguments)
{
    char dir[512], ema[700], full[700], cmd[2048];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson04/bad"));
    snprintf(full, sizeof full, "%s/micro_full.safetensors", dir);
    snprintf(ema, sizeof ema, "%s/micro_ema.safetensors", dir);
    if (!save_micro_model(full, ema)) return;
    const char *bin = dl_test_bin_dir();
    snprintf(cmd, sizeof cmd, "%s/04_sampling --help", bin);
    CHECK(dl_test_run(cmd) == 0, "--help should exit 0");
    CHECK(dl_test_log_contains("--checkpoint") && dl_test_log_contains("--guidance") && dl_test_log_contains("--scheduler"), "--help lists the options");
    const struct { const char *args, *says; } bad[] = {
        {"--class 10", "--class 10"},            /* the model has classes 0..9 */
        {"--class -1", "-1"},
        {"--scheduler eulerr", "eulerr"},
        {"--guidance much", "much"},
        {"--count 0", "--count"},
        {"--steps 0", "--steps"},
        {"--steps 1001", "1001"},
        {"--eta -1", "-1"},
        {"--ddpm-steps 10", "--ddpm-steps"},
        {"--frobnicate", "--frobnicate"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, ENV "%s/04_sampling --checkpoint %s --headless --out %s %s", bin, ema, dir, bad[i].args);
        int rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "'%s' should fail cleanly, exit status %d", bad[i].args, rc);
        if (!CHECK(dl_test_log_contains(bad[i].says) && dl_test_log_contains("error"), "'%s': the message should mention '%s'",
                   bad[i].args, bad[i].says))
            dl_test_show_log();
    }
    /* missing and corrupt checkpoints */
    snprintf(cmd, sizeof cmd, ENV "%s/04_sampling --checkpoint %s/none.safetensors --class 1 --headless --out %s", bin, dir, dir);
    int rc = dl_test_run(cmd);
    CHECK(rc != 0 && rc < 128 && dl_test_log_contains("none.safetensors"), "a missing checkpoint: rc %d", rc);
    char corrupt[800];
    snprintf(corrupt, sizeof corrupt, "%s/corrupt.safetensors", dir);
    FILE *f = fopen(corrupt, "wb");
    if (f) { fputs("garbage, not safetensors", f); fclose(f); }
    snprintf(cmd, sizeof cmd, ENV "%s/04_sampling --checkpoint %s --class 1 --headless --out %s", bin, corrupt, dir);
    rc = dl_test_run(cmd);
    CHECK(rc != 0 && rc < 128 && dl_test_log_contains("corrupt.safetensors"), "a corrupt checkpoint: rc %d", rc);
    /* no shipped checkpoint: the message says how to make one */
    if (access("data/toy_mnist.safetensors", F_OK) != 0) {
        snprintf(cmd, sizeof cmd, ENV "%s/04_sampling --class 1 --headless --out %s", bin, dir);
        rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128 && dl_test_log_contains("bin/03_train"), "no default checkpoint: should explain bin/03_train (rc %d)", rc);
    }
}
