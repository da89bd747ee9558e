/* test_lesson03.c - lesson 03 (training): the program on a tiny model, its
 * outputs, --resume, and its error messages; plus the exercises of
 * docs/03_training.md.
 *
 *   make test K=lesson03                    everything here
 *   make test K=lesson03/exercise           the exercises only
 *
 * The lesson binaries run with OMP_WAIT_POLICY=passive: on a 2-core machine
 * shared with other jobs, OpenMP threads that spin-wait slow a tiny run
 * down by 10-50x; passive waiting keeps these tests at a few seconds.
 */
#include "testing.h"
#include "../core/checkpoint.h"
#include "../core/image.h"
#include "../core/safetensors.h"
#include "../core/schedule.h"
#include "../core/rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENV "OMP_WAIT_POLICY=passive "

/* ---- the exercises -------------------------------------------------------- */

/* EXERCISE 1. The epsilon-prediction loss of ONE image: x_t was made from x0
 * and eps at step t (x_t = sqrt(abar) x0 + sqrt(1 - abar) eps); the model
 * predicted eps_pred. Return the mean squared error over the n pixels. */
static double eps_loss(const float *eps_pred, const float *eps, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += ((double)eps_pred[i] - eps[i]) * ((double)eps_pred[i] - eps[i]);
    return s / n;
}

/* EXERCISE 2. A model that predicts the noise also predicts the clean image:
 * solve x_t = sqrt(abar) x0 + sqrt(1 - abar) eps for x0, with eps_pred in
 * place of eps. */
static float x0_from_eps_pred(float x_t, float eps_pred, float abar)
{
    return (x_t - sqrtf(1.0f - abar) * eps_pred) / sqrtf(abar);
}

/* EXERCISE 3. Classifier-free guidance needs an unconditional model. During
 * training, each label is replaced by the null class (id num_classes) with
 * probability p. Given a uniform number u in [0, 1) for the image, return
 * the class id the network should see. */
static int maybe_drop_label(int label, int num_classes, float u, float p)
{
    return u < p ? num_classes : label;
}

/* ---- exercise tests ------------------------------------------------------- */

TEST(lesson03, exercise_eps_loss)
{
    /* A perfect prediction has loss 0; predicting 0 has loss E[eps^2] ~ 1. */
    enum { N = 4096 };
    float *eps = malloc(sizeof(float) * N), *zero = calloc(N, sizeof(float)), *half = malloc(sizeof(float) * N);
    dl_rng rng;
    dl_rng_seed(&rng, 3);
    dl_rng_randn(&rng, eps, N);
    double sumsq = 0;
    for (int i = 0; i < N; i++) { half[i] = 0.5f * eps[i]; sumsq += (double)eps[i] * eps[i]; }
    CHECK(fabs(eps_loss(eps, eps, N)) < 1e-12, "a perfect prediction: loss %g, want 0", eps_loss(eps, eps, N));
    CHECK(fabs(eps_loss(zero, eps, N) - sumsq / N) < 1e-9, "predicting 0: loss %g, want mean(eps^2) = %g",
          eps_loss(zero, eps, N), sumsq / N);
    CHECK(fabs(eps_loss(half, eps, N) - 0.25 * sumsq / N) < 1e-9, "predicting eps/2: loss %g, want %g",
          eps_loss(half, eps, N), 0.25 * sumsq / N);
    CHECK(fabs(eps_loss(zero, eps, N) - 1.0) < 0.06, "E[eps^2] should be about 1 (got %g)", eps_loss(zero, eps, N));
    free(eps);
    free(zero);
    free(half);
}

TEST(lesson03, exercise_x0_from_eps)
{
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    dl_test_rng r = {11};
    const int ts[4] = {0, 100, 500, 900};
    for (int k = 0; k < 4; k++) {
        float x0[64], eps[64], xt[64], got[64];
        dl_test_fill(&r, x0, 64, -1, 1);
        dl_test_fill(&r, eps, 64, -2, 2);
        add_noise(&s, xt, x0, eps, 64, ts[k]);
        for (int i = 0; i < 64; i++) got[i] = x0_from_eps_pred(xt[i], eps[i], s.alphas_cumprod[ts[k]]);
        char what[64];
        snprintf(what, sizeof what, "x0 recovered from the true noise at t = %d", ts[k]);
        CHECK_CLOSE(what, got, x0, 64, ts[k] < 600 ? 1e-4 : 2e-3);   /* 1/sqrt(abar) grows with t */
    }
    dl_schedule_free(&s);
}

TEST(lesson03, exercise_label_dropout)
{
    dl_rng rng;
    dl_rng_seed(&rng, 9);
    int dropped = 0, kept_right = 1, n = 20000;
    for (int i = 0; i < n; i++) {
        float u;
        dl_rng_rand(&rng, &u, 1);
        int id = maybe_drop_label(i % 10, 10, u, 0.1f);
        if (id == 10) dropped++;
        else kept_right &= id == i % 10;
    }
    CHECK(kept_right, "a label that is not dropped must stay the same");
    CHECK(abs(dropped - n / 10) < 250, "with p = 0.1 about %d of %d labels should become the null class, got %d",
          n / 10, n, dropped);
    CHECK(maybe_drop_label(3, 10, 0.5f, 0.0f) == 3 && maybe_drop_label(3, 10, 0.0f, 1.0f) == 10, "p = 0 and p = 1");
}

/* ---- the program ------------------------------------------------------------ */

static int64_t checkpoint_step(const char *path)
{
    dl_safetensors f;
    if (dl_st_open(&f, path) != DL_OK) return -1;
    char buf[32] = "";
    int ok = dl_st_metadata_get(&f, "step", buf, sizeof buf);
    dl_st_close(&f);
    return ok ? atoll(buf) : -1;
}

/* first "loss X" and last "smoothed Y" of the progress lines */
static void loss_trend(double *first, double *last_smoothed)
{
    *first = *last_smoothed = NAN;
    char *log = dl_test_read_log();
    if (!log) return;
    for (char *p = log; (p = strstr(p, "step ")) != NULL; p++) {
        char *l = strstr(p, " loss "), *sm = strstr(p, "(smoothed ");
        char *nl = strchr(p, '\n');
        if (!l || !sm || (nl && (l > nl || sm > nl))) continue;
        if (isnan(*first)) *first = atof(l + 6);
        *last_smoothed = atof(sm + 10);
    }
    free(log);
}

TEST(lesson03, tiny_run_writes_outputs_and_resumes)
{
    char dir[512], cmd[2048], path[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson03/tiny"));
    const char *files[] = {"loss.png", "samples_step10.png", "samples_step20.png", "checkpoint.safetensors",
                           "toy_mnist.safetensors"};
    for (size_t i = 0; i < 5; i++) { snprintf(path, sizeof path, "%s/%s", dir, files[i]); remove(path); }
    snprintf(cmd, sizeof cmd, ENV "%s/03_train --tiny --steps 20 --sample-every 10 --checkpoint-every 10 --seed 1 --headless --out %s",
             dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "'%s' exited with %d", cmd, rc)) { dl_test_show_log(); return; }
    CHECK(dl_test_log_contains("step 20/20") && dl_test_log_contains("step/s") && dl_test_log_contains("ETA"), "progress line with step/N, step/s, ETA");
    for (size_t i = 0; i < 5; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        CHECK(dl_test_file_ok(path), "%s was not written", path);
    }
    /* the loss falls even in 20 tiny steps (from ~1, the variance of the noise) */
    double first, last;
    loss_trend(&first, &last);
    CHECK(first > 0.5 && last < 0.8 * first, "loss should fall: first step %.3f, smoothed at the end %.3f", first, last);
    /* pictures of a sensible size */
    dl_image img = {0};
    snprintf(path, sizeof path, "%s/samples_step20.png", dir);
    if (CHECK(dl_image_load(&img, path, 3) == DL_OK, "%s", dl_error_message()))
        CHECK(img.h >= 10 * 96 && img.w >= 96, "samples grid %dx%d: one row of 3x tiles per class", img.w, img.h);
    dl_image_free(&img);
    snprintf(path, sizeof path, "%s/loss.png", dir);
    if (CHECK(dl_image_load(&img, path, 3) == DL_OK, "%s", dl_error_message())) CHECK(img.w >= 800, "loss.png %dx%d", img.w, img.h);
    dl_image_free(&img);
    /* the checkpoints: step 20, config inside, the EMA file loads as a model */
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", dir);
    CHECK(checkpoint_step(path) == 20, "checkpoint step %lld, want 20", (long long)checkpoint_step(path));
    char json[2048];
    CHECK(dl_checkpoint_read_config(path, json, sizeof json) == DL_OK && strstr(json, "block_out_channels"),
          "the checkpoint holds the model config: %s", dl_error_message());

    /* --resume continues from step 20 to 25 */
    snprintf(cmd, sizeof cmd, ENV "%s/03_train --resume %s/checkpoint.safetensors --tiny --steps 25 --headless --out %s",
             dl_test_bin_dir(), dir, dir);
    rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "'%s' exited with %d", cmd, rc)) dl_test_show_log();
    CHECK(dl_test_log_contains("resumed") && dl_test_log_contains("step 25/25"), "resume should say so and reach step 25");
    CHECK(checkpoint_step(path) == 25, "after resuming: checkpoint step %lld, want 25", (long long)checkpoint_step(path));
    /* asking for fewer steps than the checkpoint has is an error */
    snprintf(cmd, sizeof cmd, ENV "%s/03_train --resume %s/checkpoint.safetensors --steps 10 --headless --out %s",
             dl_test_bin_dir(), dir, dir);
    rc = dl_test_run(cmd);
    CHECK(rc != 0 && rc < 128 && dl_test_log_contains("already at step 25"), "--steps below the checkpoint's step: rc %d", rc);
}

TEST(lesson03, resume_missing_or_corrupt_checkpoint)
{
    char dir[512], cmd[2048], bad[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson03/bad"));
    const char *bin = dl_test_bin_dir();
    /* missing */
    snprintf(cmd, sizeof cmd, ENV "%s/03_train --tiny --headless --out %s --resume %s/no_such.safetensors", bin, dir, dir);
    int rc = dl_test_run(cmd);
    CHECK(rc != 0 && rc < 128, "a missing --resume file should fail cleanly (rc %d)", rc);
    if (!CHECK(dl_test_log_contains("no_such.safetensors") && dl_test_log_contains("error"), "the message names the missing file")) dl_test_show_log();
    /* corrupt: a few bytes of garbage */
    snprintf(bad, sizeof bad, "%s/corrupt.safetensors", dir);
    FILE *f = fopen(bad, "wb");
    if (f) { fputs("this is not a checkpoint at all", f); fclose(f); }
    snprintf(cmd, sizeof cmd, ENV "%s/03_train --tiny --headless --out %s --resume %s", bin, dir, bad);
    rc = dl_test_run(cmd);
    CHECK(rc != 0 && rc < 128, "a corrupt --resume file should fail cleanly (rc %d)", rc);
    if (!CHECK(dl_test_log_contains("corrupt.safetensors") && dl_test_log_contains("error"), "the message names the corrupt file")) dl_test_show_log();
    /* truncated: the first half of a real checkpoint (a small one saved here) */
    dl_param_list params = {0};
    dl_param *w;
    char good[700];
    snprintf(good, sizeof good, "%s/whole.safetensors", dir);
    if (CHECK(dl_params_add(&params, "conv_in.weight", 4, DL_SHAPE(8, 1, 3, 3), &w) == DL_OK, "%s", dl_error_message()) &&
        CHECK(dl_checkpoint_save(good, &params, NULL, NULL, NULL, 7, "{}") == DL_OK, "%s", dl_error_message())) {
        FILE *in = fopen(good, "rb");
        char buf[4096];
        size_t n = in ? fread(buf, 1, sizeof buf, in) : 0;
        if (in) fclose(in);
        snprintf(bad, sizeof bad, "%s/truncated.safetensors", dir);
        FILE *out = fopen(bad, "wb");
        if (out) { fwrite(buf, 1, n / 2, out); fclose(out); }
        snprintf(cmd, sizeof cmd, ENV "%s/03_train --tiny --headless --out %s --resume %s", bin, dir, bad);
        rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "a truncated --resume file should fail cleanly (rc %d)", rc);
        if (!CHECK(dl_test_log_contains("truncated.safetensors"), "the message names the truncated file")) dl_test_show_log();
        /* whole but not a toy U-Net: wrong architecture or missing config */
        snprintf(cmd, sizeof cmd, ENV "%s/03_train --tiny --headless --out %s --resume %s", bin, dir, good);
        rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "a checkpoint of another model should fail cleanly (rc %d)", rc);
        if (!CHECK(dl_test_log_contains("whole.safetensors"), "the message names the file")) dl_test_show_log();
    }
    dl_params_free(&params);
}

TEST(lesson03, help_and_bad_arguments)
{
    char cmd[1024];
    const char *bin = dl_test_bin_dir();
    snprintf(cmd, sizeof cmd, "%s/03_train --help", bin);
    CHECK(dl_test_run(cmd) == 0, "--help should exit 0");
    CHECK(dl_test_log_contains("--dataset") && dl_test_log_contains("--minutes") && dl_test_log_contains("--resume") && dl_test_log_contains("--tiny"),
          "--help lists the options");
    const struct { const char *args, *says; } bad[] = {
        {"--dataset cifar", "cifar"},
        {"--steps 0", "--steps"},
        {"--steps many", "many"},
        {"--batch 0", "--batch"},
        {"--minutes -1", "-1"},
        {"--lr abc", "abc"},
        {"--resume", "needs a value"},
        {"--frobnicate", "--frobnicate"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s/03_train --tiny --headless --out build/test_out/lesson03/bad %s", bin, bad[i].args);
        int rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "'%s' should fail cleanly, exit status %d", bad[i].args, rc);
        if (!CHECK(dl_test_log_contains(bad[i].says) && dl_test_log_contains("error"), "'%s': the message should mention '%s'",
                   bad[i].args, bad[i].says))
            dl_test_show_log();
    }
}

TEST(lesson03, ctrl_c_saves_and_exits)
{
    char dir[512], cmd[3072], path[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson03/ctrl_c"));
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", dir);
    remove(path);
    /* start a long run, wait for its first progress line, then send SIGINT.
     * The old log goes first: otherwise the wait could see the previous run's
     * lines before the new run truncates the file, and send SIGINT before the
     * handler is installed (a background job ignores SIGINT until then, so the
     * run would never end). If the run does not stop within 60 s it is killed
     * and the test fails instead of hanging. */
    snprintf(cmd, sizeof cmd,
             "rm -f %s/run.log; "
             ENV "%s/03_train --tiny --steps 1000000 --headless --out %s > %s/run.log 2>&1 & pid=$!; "
             "for i in $(seq 1200); do grep -q '^step ' %s/run.log 2>/dev/null && break; sleep 0.1; done; "
             "kill -INT $pid; for i in $(seq 600); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; "
             "kill -KILL $pid 2>/dev/null; wait $pid; rc=$?; cat %s/run.log; exit $rc",
             dir, dl_test_bin_dir(), dir, dir, dir, dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "after Ctrl-C the program should save and exit 0, got %d", rc)) dl_test_show_log();
    CHECK(dl_test_log_contains("interrupted at step") && dl_test_log_contains("--resume"), "it should say how to resume");
    CHECK(dl_test_file_ok(path) && checkpoint_step(path) > 0, "Ctrl-C should leave a checkpoint (%s)", path);
}
