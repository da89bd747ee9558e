/* test_lesson08.c - lesson 08 (image to image): the exercises of
 * docs/08_img2img.md checked against diffusers' recorded img2img run and
 * the library, and bin/08_img2img on the tiny checkpoint (headless, the
 * diffusers run through the command line, live on SDL's dummy driver, the
 * message without a model, bad arguments). */
#include "testing.h"
#include "sd_cli_check.h"
#include "../core/png_text.h"
#include "../core/safetensors.h"
#include "../core/sd_img2img.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENV "OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 "
#define TINY "tests/fixtures/tiny-sd"
#define GOLDEN "tests/fixtures/tiny-sd-golden"
#define LION "\"A majestic lion in a cosmic nebula, digital art, highly detailed\""
#define BLURRY "\"blurry, low quality, distorted\""

static int load(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    return CHECK(dl_st_load_tensor(f, name, t) == DL_OK, "golden tensor %s: %s", name, dl_error_message());
}

/* ---- the exercises -------------------------------------------------------- */

/* EXERCISE 1. How many of N steps does strength s skip? diffusers:
 * init_timestep = min(int(N * s), N); t_start = max(N - init_timestep, 0).
 * (Python's int() cuts toward zero; N * s in double precision.) */
static int my_t_start(int N, double strength)
{
    int init_timestep = (int)(N * strength);
    if (init_timestep > N) init_timestep = N;
    int t_start = N - init_timestep;
    return t_start > 0 ? t_start : 0;
}

/* EXERCISE 2. The VAE's posterior sample, scaled: the encoder gives a mean
 * and a log-variance per latent; std = exp(logvar / 2) with logvar clamped
 * to [-30, 20]; z0 = (mean + std * noise) * scaling_factor. */
static void my_posterior_sample(float *z0, const float *mean, const float *logvar, const float *noise, float scaling, int n)
{
    for (int i = 0; i < n; i++) {
        float lv = logvar[i] < -30.0f ? -30.0f : logvar[i] > 20.0f ? 20.0f : logvar[i];
        float std = expf(0.5f * lv);
        z0[i] = scaling * (mean[i] + std * noise[i]);
    }
}

/* EXERCISE 3. Noise z0 to the level where the run starts. Two views of one
 * noisy state (lesson 04): VP samplers (DDIM, DDPM, PNDM, DPM++ ...)
 * x = sqrt(abar) z0 + sqrt(1 - abar) n; the Euler family x = z0 + sigma n. */
static void my_add_noise_vp(float *x, const float *z0, const float *noise, float abar, int n)
{
    for (int i = 0; i < n; i++) x[i] = sqrtf(abar) * z0[i] + sqrtf(1.0f - abar) * noise[i];
}
static void my_add_noise_ve(float *x, const float *z0, const float *noise, float sigma, int n)
{
    for (int i = 0; i < n; i++) x[i] = z0[i] + noise[i] * sigma;
}

static cJSON *read_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    return cJSON_Parse(buf);
}

TEST(lesson08, exercise_start_index_from_strength)
{
    /* diffusers' own cut, recorded with the golden run: 8 steps, strength 0.75 */
    cJSON *j = read_json(GOLDEN "/img2img_ddim.json");
    if (!CHECK(j != NULL, "cannot read img2img_ddim.json")) return;
    const cJSON *ts = cJSON_GetObjectItem(j, "timesteps_all");
    int N = cJSON_GetArraySize(ts);
    double s = cJSON_GetObjectItem(j, "strength")->valuedouble;
    int first = cJSON_GetObjectItem(j, "first_denoising_timestep")->valueint;
    int steps = cJSON_GetObjectItem(j, "num_denoising_steps")->valueint;
    int k = my_t_start(N, s);
    CHECK(k >= 0 && k < N && cJSON_GetArrayItem(ts, k)->valueint == first, "t_start %d: timestep %d, diffusers starts at %d",
          k, k >= 0 && k < N ? cJSON_GetArrayItem(ts, k)->valueint : -1, first);
    CHECK(N - k == steps, "%d steps run, diffusers %d", N - k, steps);
    cJSON_Delete(j);
    /* and the library agrees everywhere (the float traps: 0.7 * 10, 0.3 * 10, 0.55 * 20 ...) */
    for (int n = 1; n <= 60; n++)
        for (int q = 0; q <= 100; q++) {
            double st = q / 100.0;
            if (my_t_start(n, st) != sd_img2img_t_start(n, st)) {
                CHECK(0, "N %d strength %g: mine %d, library %d", n, st, my_t_start(n, st), sd_img2img_t_start(n, st));
                return;
            }
        }
}

TEST(lesson08, exercise_posterior_sample)
{
    /* the golden encoder output of test_image.png (vae.safetensors) and the
     * img2img run's first draw must give its init_latents_scaled */
    dl_safetensors v, g;
    if (!CHECK(dl_st_open(&v, GOLDEN "/vae.safetensors") == DL_OK, "%s", dl_error_message())) return;
    if (!CHECK(dl_st_open(&g, GOLDEN "/img2img_ddim.safetensors") == DL_OK, "%s", dl_error_message())) { dl_st_close(&v); return; }
    dl_tensor mean = {0}, logvar = {0}, moments = {0}, noise = {0}, want = {0}, lib = {0};
    sd_pipeline p;
    if (load(&v, "latent_mean", &mean) && load(&v, "latent_logvar", &logvar) && load(&v, "encoder_moments", &moments) &&
        load(&g, "vae_sample_noise", &noise) && load(&g, "init_latents_scaled", &want)) {
        float *mine = malloc((size_t)want.numel * sizeof(float));
        my_posterior_sample(mine, mean.data, logvar.data, noise.data, 0.18215f, (int)want.numel);
        printf("    my posterior sample vs diffusers: max diff %.2e\n", dl_max_abs_diff(mine, want.data, (size_t)want.numel));
        CHECK_CLOSE("my z0", mine, want.data, (size_t)want.numel, 1e-5);
        if (CHECK(sd_pipeline_load(&p, TINY, NULL) == DL_OK, "%s", dl_error_message())) {
            if (CHECK(dl_tensor_alloc(&lib, 4, want.shape) == DL_OK, "alloc") &&
                CHECK(sd_img2img_sample_latents(&p, &moments, NULL, noise.data, &lib) == DL_OK, "%s", dl_error_message()))
                CHECK_CLOSE("library z0 vs mine", lib.data, mine, (size_t)want.numel, 1e-6);
            sd_pipeline_free(&p);
        }
        free(mine);
    }
    dl_tensor *t[] = {&mean, &logvar, &moments, &noise, &want, &lib};
    for (int i = 0; i < 6; i++) dl_tensor_free(t[i]);
    dl_st_close(&v);
    dl_st_close(&g);
}

TEST(lesson08, exercise_add_noise_at_the_start)
{
    dl_schedule sched;
    if (!CHECK(dl_schedule_init(&sched, DL_SCHEDULE_SCALED_LINEAR, 1000, 0.00085, 0.012) == DL_OK, "%s", dl_error_message())) return;
    dl_sampler_config cfg = dl_sampler_config_sd();
    dl_test_rng r = {8};
    float z0[64], n[64], mine[64], lib[64];
    dl_test_fill(&r, z0, 64, -2, 2);
    dl_test_fill(&r, n, 64, -3, 3);
    const dl_sampler_kind kinds[2] = {DL_SAMPLER_DDIM, DL_SAMPLER_EULER};
    for (int k = 0; k < 2; k++) {
        dl_sampler s;
        sd_img2img_plan plan;
        if (!CHECK(dl_sampler_init(&s, kinds[k], &sched, &cfg, 8, 0.0f, 4, DL_SHAPE(1, 4, 4, 4)) == DL_OK, "%s", dl_error_message()))
            continue;
        if (CHECK(sd_img2img_plan_for(&s, 0.75, &plan) == DL_OK, "%s", dl_error_message()) &&
            CHECK(dl_sampler_add_noise(&s, plan.start_call, z0, n, lib, 64) == DL_OK, "%s", dl_error_message())) {
            if (k == 0) my_add_noise_vp(mine, z0, n, sched.alphas_cumprod[(int)plan.start_timestep], 64);
            else my_add_noise_ve(mine, z0, n, s.sigmas[plan.start_call], 64);
            CHECK_CLOSE(dl_sampler_names[kinds[k]], mine, lib, 64, 0.0);
        }
        dl_sampler_free(&s);
    }
    dl_schedule_free(&sched);
}

/* ---- the program ------------------------------------------------------------ */

TEST(lesson08, headless_output_and_sweep)
{
    char dir[512], cmd[2048], png[700], sweep[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson08/headless"));
    snprintf(png, sizeof png, "%s/cat.png", dir);
    snprintf(sweep, sizeof sweep, "%s/cat_sweep.png", dir);
    remove(png); remove(sweep);
    snprintf(cmd, sizeof cmd, ENV "%s/08_img2img --model " TINY " --prompt \"a cat\" --width 64 --height 48 --steps 4 "
             "--strength 0.75 --sweep 0.5,1 --scheduler euler_a --seed 3 --headless --out %s", dl_test_bin_dir(), png);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "exit status %d", rc)) { dl_test_show_log(); return; }
    CHECK(dl_test_log_contains("RANDOM weights"), "the tiny model is announced as random");
    CHECK(dl_test_log_contains("chelsea.png"), "the cat is the default picture");
    CHECK(dl_test_log_contains("strength 0.75: skip 1 of 4 steps") && dl_test_log_contains("strength 0.5: skip 2 of 4 steps") &&
          dl_test_log_contains("strength 1: skip 0 of 4 steps"), "the cut per strength");
    dl_image img;
    if (CHECK(dl_image_load(&img, png, 0) == DL_OK, "%s", dl_error_message())) {
        CHECK(img.w == 64 && img.h == 48 && img.c == 3, "PNG %dx%dx%d", img.w, img.h, img.c);
        dl_image_free(&img);
    }
    if (CHECK(dl_image_load(&img, sweep, 3) == DL_OK, "sweep strip: %s", dl_error_message())) {
        CHECK(img.w > 3 * 96 && img.h > 2 * 48, "sweep %dx%d: input + 2 strengths, 2 rows", img.w, img.h);
        dl_image_free(&img);
    }
    char *text = NULL;
    if (CHECK(dl_png_read_text(png, "parameters", &text) == DL_OK, "%s", dl_error_message()))
        CHECK(strstr(text, "Denoising strength: 0.75") && strstr(text, "Sampler: euler_a") && strstr(text, "Size: 64x48"),
              "parameters: %s", text);
    free(text);
}

/* diffusers' img2img run of the fixtures, through the command line */
TEST(lesson08, command_line_reproduces_diffusers)
{
    char dir[512], cmd[2048], png[700], lat[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson08/ddim"));
    snprintf(png, sizeof png, "%s/lion.png", dir);
    snprintf(lat, sizeof lat, "%s/lion_latents.safetensors", dir);
    remove(png); remove(lat);
    snprintf(cmd, sizeof cmd, ENV "%s/08_img2img --model " TINY " --init-image " GOLDEN "/test_image.png --prompt " LION
             " --negative-prompt " BLURRY " --strength 0.75 --steps 8 --guidance 7.5 --scheduler ddim --seed 1234 --sweep none"
             " --headless --out %s --save-latents %s", dl_test_bin_dir(), png, lat);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "exit status %d", rc)) { dl_test_show_log(); return; }
    CHECK(dl_test_log_contains("64x64 -> 64x64") && dl_test_log_contains("add noise at t = 626"), "size kept, t 626");
    sd_check_cli_run(GOLDEN "/img2img_ddim.safetensors", lat, png);
}

TEST(lesson08, live_window_runs)
{
    char dir[512], cmd[2048], path[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson08/live"));
    snprintf(path, sizeof path, "%s/08_img2img_window.png", dir);
    remove(path);
    snprintf(cmd, sizeof cmd, ENV "env -u DISPLAY -u WAYLAND_DISPLAY SDL_VIDEODRIVER=dummy %s/08_img2img --model " TINY
             " --prompt \"a cat\" --steps 4 --width 64 --height 48 --sweep 0.5 --max-frames 3 --out %s/live.png",
             dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0 && dl_test_file_ok(path), "exit %d, %s %s", rc, path, dl_test_file_ok(path) ? "written" : "missing"))
        dl_test_show_log();
}

TEST(lesson08, help_no_model_and_bad_arguments)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/08_img2img --help", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0 && dl_test_log_contains("--strength") && dl_test_log_contains("--init-image") &&
          dl_test_log_contains("--sweep"), "--help");
    /* no model: what to download, where to put it, and the tiny model with its warning */
    snprintf(cmd, sizeof cmd, "%s/08_img2img --prompt x --headless", dl_test_bin_dir());
    int rc = dl_test_run(cmd);
    if (!CHECK(rc != 0 && rc < 128 && dl_test_log_contains("stable-diffusion-v1-5") && dl_test_log_contains("models/sd15") &&
               dl_test_log_contains("v1-5-pruned-emaonly.safetensors") && dl_test_log_contains("tests/fixtures/tiny-sd") &&
               dl_test_log_contains("RANDOM"), "no --model: exit %d", rc))
        dl_test_show_log();
    const struct { const char *args, *says; } bad[] = {
        {"--model " TINY " --prompt x --strength 1.5", "--strength"},
        {"--model " TINY " --prompt x --strength abc", "--strength"},
        {"--model " TINY " --prompt x --strength 0.1", "strength 0.1"},          /* int(4 * 0.1) = 0 steps */
        {"--model " TINY " --prompt x --sweep 0.5,2", "--sweep"},
        {"--model " TINY " --prompt x --sweep '0.5;0.7'", "--sweep"},
        {"--model " TINY " --prompt x --width 65", "multiples of 2"},
        {"--model " TINY " --prompt x --init-image /nonexistent/pic.png", "/nonexistent/pic.png"},
        {"--model /nonexistent/sd15 --prompt x", "/nonexistent/sd15"},
        {"--model " TINY, "--prompt"},
        {"--model " TINY " --prompt x --scheduler bogus", "bogus"},
        {"--model " TINY " --prompt x --bogus", "--bogus"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, ENV "%s/08_img2img --headless --width 64 --height 48 --steps 4 --sweep none --out %s/x.png %s",
                 dl_test_bin_dir(), dl_test_out_dir("lesson08/bad"), bad[i].args);
        rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "'%s' should fail cleanly, exit status %d", bad[i].args, rc);
        if (!CHECK(dl_test_log_contains(bad[i].says) && dl_test_log_contains("error"), "'%s': message should name '%s'",
                   bad[i].args, bad[i].says))
            dl_test_show_log();
    }
}
