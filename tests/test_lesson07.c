/* test_lesson07.c - lesson 07 (Stable Diffusion text-to-image): the
 * exercises of docs/07_latent_diffusion.md checked against the library and the
 * diffusers goldens, the PNG text chunk, and bin/07_txt2img on the tiny
 * checkpoint (headless, live on SDL's dummy driver, a diffusers run
 * reproduced through the command line, bad arguments). */
#include "testing.h"
#include "sd_cli_check.h"
#include "../core/png_text.h"
#include "../core/safetensors.h"
#include "../core/sd_pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENV "OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 "
#define TINY "tests/fixtures/tiny-sd"
#define GOLDEN "tests/fixtures/tiny-sd-golden"

static int load(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    return CHECK(dl_st_load_tensor(f, name, t) == DL_OK, "golden tensor %s: %s", name, dl_error_message());
}

/* ---- the exercises -------------------------------------------------------- */

/* EXERCISE 1. The UNet's context for classifier-free guidance: one batch of
 * two, the NEGATIVE prompt's 77 x D vectors first, then the prompt's. */
static void my_cfg_context(float *out, const float *negative, const float *positive, int L, int D)
{
    for (int i = 0; i < L * D; i++) {
        out[i] = negative[i];
        out[L * D + i] = positive[i];
    }
}

/* EXERCISE 2. The sampler works on scaled latents (unit variance); the VAE
 * wants them unscaled: z = latents / scaling_factor (divide, as torch does:
 * multiplying by 1/0.18215 rounds differently). */
static void my_vae_input(float *z, const float *latents, float scaling, int n)
{
    for (int i = 0; i < n; i++) z[i] = latents[i] / scaling;
}

/* EXERCISE 3. The decoder gives about [-1, 1]; the picture is
 * clamp(x / 2 + 0.5, 0, 1), then round(v * 255) per channel, and PNG
 * wants interleaved RGB: from [3, H, W] planes to H x W x 3 bytes. */
static void my_postprocess(unsigned char *rgb, const float *x, int H, int W)
{
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < H * W; i++) {
            float v = x[c * H * W + i] / 2.0f + 0.5f;
            v = v < 0 ? 0 : v > 1 ? 1 : v;
            rgb[i * 3 + c] = (unsigned char)nearbyintf(v * 255.0f);
        }
}

TEST(lesson07, exercise_cfg_context)
{
    dl_safetensors g;
    if (!CHECK(dl_st_open(&g, GOLDEN "/pipeline_prompt_embeds.safetensors") == DL_OK, "%s", dl_error_message())) return;
    dl_tensor pos = {0}, neg = {0}, lib = {0};
    if (load(&g, "prompt_embeds", &pos) && load(&g, "negative_prompt_embeds", &neg) &&
        dl_tensor_alloc(&lib, 3, DL_SHAPE(2, 77, pos.shape[2])) == DL_OK) {
        const int D = (int)pos.shape[2];
        float *mine = malloc((size_t)lib.numel * sizeof(float));
        my_cfg_context(mine, neg.data, pos.data, 77, D);
        CHECK(sd_cfg_context(&lib, &neg, &pos) == DL_OK, "%s", dl_error_message());
        CHECK(!memcmp(mine, lib.data, (size_t)lib.numel * sizeof(float)), "the batch is [negative, positive]");
        CHECK(!memcmp(lib.data, neg.data, (size_t)neg.numel * sizeof(float)), "item 0 must be the negative prompt");
        /* the wrong order is caught */
        EXPECT_FAIL(sd_cfg_context(&pos, &neg, &pos), DL_ERR_SHAPE, "sd_cfg_context", "out of batch 1");
        free(mine);
    }
    dl_tensor_free(&pos); dl_tensor_free(&neg); dl_tensor_free(&lib);
    dl_st_close(&g);
}

TEST(lesson07, exercise_latent_scaling_and_postprocess)
{
    dl_safetensors g;   /* diffusers' own decode: latents -> latents / 0.18215 -> decoder -> image */
    if (!CHECK(dl_st_open(&g, GOLDEN "/vae.safetensors") == DL_OK, "%s", dl_error_message())) return;
    dl_tensor lat = {0}, zin = {0}, dec = {0}, post = {0}, z = {0};
    if (load(&g, "latents", &lat) && load(&g, "decode_input", &zin) && load(&g, "decoded", &dec) &&
        load(&g, "image_postprocessed_np", &post) && dl_tensor_alloc(&z, 4, lat.shape) == DL_OK) {
        float *mine = malloc((size_t)lat.numel * sizeof(float));
        my_vae_input(mine, lat.data, 0.18215f, (int)lat.numel);
        CHECK_CLOSE("my latents / scaling_factor", mine, zin.data, (size_t)zin.numel, 0.0);
        CHECK(sd_latents_to_vae_input(&z, &lat, 0.18215f) == DL_OK, "%s", dl_error_message());
        CHECK_CLOSE("library latents / scaling_factor", z.data, zin.data, (size_t)zin.numel, 0.0);
        free(mine);

        const int H = (int)dec.shape[2], W = (int)dec.shape[3];
        unsigned char *rgb = malloc((size_t)H * W * 3);
        my_postprocess(rgb, dec.data, H, W);
        int worst = 0;   /* diffusers' float image (NHWC) times 255, rounded */
        for (int i = 0; i < H * W * 3; i++) worst = abs(rgb[i] - (int)nearbyintf(post.data[i] * 255.0f)) > worst ? abs(rgb[i] - (int)nearbyintf(post.data[i] * 255.0f)) : worst;
        CHECK(worst == 0, "my post-processing differs from diffusers' by %d levels", worst);
        dl_image img;
        sd_postprocess(&dec);
        if (CHECK(sd_image_from_decoded(&dec, 0, &img) == DL_OK, "%s", dl_error_message())) {
            CHECK(!memcmp(img.px, rgb, (size_t)H * W * 3), "sd_image_from_decoded and the exercise differ");
            dl_image_free(&img);
        }
        free(rgb);
    }
    dl_tensor_free(&lat); dl_tensor_free(&zin); dl_tensor_free(&dec); dl_tensor_free(&post); dl_tensor_free(&z);
    dl_st_close(&g);
}

/* ---- PNG text chunks ------------------------------------------------------- */

TEST(lesson07, png_text_chunk_round_trip)
{
    dl_image img;
    if (!CHECK(dl_image_alloc(&img, 5, 3, 3) == DL_OK, "alloc")) return;
    for (int i = 0; i < 45; i++) img.px[i] = (unsigned char)(i * 5);
    const char *texts[2] = {"a cat\nNegative prompt: dog\nSteps: 3, Seed: 1", "ein Kätzchen, 猫"};   /* tEXt, iTXt */
    char path[600];
    snprintf(path, sizeof path, "%s/text.png", dl_test_out_dir("lesson07"));
    for (int k = 0; k < 2; k++) {
        char *back = NULL;
        if (!CHECK(dl_png_save_with_text(&img, path, "parameters", texts[k]) == DL_OK, "%s", dl_error_message())) continue;
        if (CHECK(dl_png_read_text(path, "parameters", &back) == DL_OK, "%s", dl_error_message()))
            CHECK(!strcmp(back, texts[k]), "read back '%s'", back);
        free(back);
        dl_image px;   /* still a valid PNG with the same pixels */
        if (CHECK(dl_image_load(&px, path, 3) == DL_OK, "%s", dl_error_message())) {
            CHECK(px.w == 5 && px.h == 3 && !memcmp(px.px, img.px, 45), "pixels changed");
            dl_image_free(&px);
        }
    }
    char *t = NULL;
    EXPECT_FAIL(dl_png_read_text(path, "Software", &t), DL_ERR_FORMAT, "Software", "missing key");
    /* a flipped byte in the text is caught by the CRC */
    unsigned char *png;
    size_t n;
    if (CHECK(dl_png_encode_with_text(&img, "parameters", "hello", &png, &n) == DL_OK, "%s", dl_error_message())) {
        unsigned char *h = memmem(png, n, "hello", 5);
        if (CHECK(h != NULL, "text not in the PNG")) {
            h[0] = 'j';
            EXPECT_FAIL(dl_png_find_text(png, n, "mem", "parameters", &t), DL_ERR_FORMAT, "CRC", "bad CRC");
        }
        free(png);
    }
    EXPECT_FAIL(dl_png_encode_with_text(&img, "bad\nkey", "x", &png, &n), DL_ERR_ARG, "key", "bad key");
    dl_image_free(&img);
}

/* ---- the program ------------------------------------------------------------ */

/* "Steps: 3, Sampler: euler, ..." -> the value after "key: " up to ',' or end of line */
static int field(const char *text, const char *key, char *out, size_t n)
{
    const char *p = strstr(text, key);
    if (!p) return 0;
    p += strlen(key);
    size_t k = strcspn(p, ",\n");
    snprintf(out, n, "%.*s", (int)k, p);
    return 1;
}

TEST(lesson07, headless_png_carries_the_parameters)
{
    char dir[512], cmd[2048], png[700], strip[700], lat[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson07/headless"));
    snprintf(png, sizeof png, "%s/cat.png", dir);
    snprintf(strip, sizeof strip, "%s/cat_steps.png", dir);
    snprintf(lat, sizeof lat, "%s/cat_latents.safetensors", dir);
    remove(png); remove(strip); remove(lat);
    snprintf(cmd, sizeof cmd, ENV "%s/07_txt2img --model " TINY " --prompt \"a photo of a cat\" --negative-prompt \"blurry, dark\" "
             "--steps 3 --scheduler euler_a --guidance 5 --seed 7 --width 64 --height 48 --headless --out %s --save-latents %s",
             dl_test_bin_dir(), png, lat);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "exit status %d", rc)) { dl_test_show_log(); return; }
    CHECK(dl_test_log_contains("step 3/3") && dl_test_log_contains("s/step") && dl_test_log_contains("ETA"), "progress lines");
    CHECK(dl_test_log_contains("photo(1125)"), "the tokens are shown with their ids");
    CHECK(dl_test_file_ok(strip), "%s missing", strip);
    dl_image img;
    if (CHECK(dl_image_load(&img, png, 0) == DL_OK, "%s", dl_error_message())) {
        CHECK(img.w == 64 && img.h == 48 && img.c == 3, "PNG %dx%dx%d", img.w, img.h, img.c);
        dl_image_free(&img);
    }
    char *text = NULL, v[256];
    if (CHECK(dl_png_read_text(png, "parameters", &text) == DL_OK, "%s", dl_error_message())) {
        CHECK(!strncmp(text, "a photo of a cat\n", 17), "prompt line: %s", text);
        CHECK(field(text, "Negative prompt: ", v, sizeof v) == 1 && !strcmp(v, "blurry"), "negative: %s", text);
        CHECK(strstr(text, "Negative prompt: blurry, dark\n") != NULL, "negative line: %s", text);
        CHECK(field(text, "Steps: ", v, sizeof v) && !strcmp(v, "3"), "steps '%s'", v);
        CHECK(field(text, "Sampler: ", v, sizeof v) && !strcmp(v, "euler_a"), "sampler '%s'", v);
        CHECK(field(text, "CFG scale: ", v, sizeof v) && atof(v) == 5.0, "cfg '%s'", v);
        CHECK(field(text, "Seed: ", v, sizeof v) && !strcmp(v, "7"), "seed '%s'", v);
        CHECK(field(text, "Size: ", v, sizeof v) && !strcmp(v, "64x48"), "size '%s'", v);
        CHECK(field(text, "Model: ", v, sizeof v) && !strcmp(v, "tiny-sd"), "model '%s'", v);
    }
    free(text);
    dl_safetensors f;
    if (CHECK(dl_st_open(&f, lat) == DL_OK, "%s", dl_error_message())) {
        const dl_st_entry *e = dl_st_find(&f, "latents_final");
        CHECK(e && e->ndim == 4 && e->shape[1] == 4 && e->shape[2] == 24 && e->shape[3] == 32, "latents_final [1, 4, 24, 32]");
        dl_st_close(&f);
    }
}

/* diffusers' DDIM run of the fixtures, through the command line:
 * --init-latents from the golden file, seed 1234, 8 steps, g 7.5. */
TEST(lesson07, command_line_reproduces_diffusers)
{
    char dir[512], cmd[2048], png[700], lat[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson07/ddim"));
    snprintf(png, sizeof png, "%s/ddim.png", dir);
    snprintf(lat, sizeof lat, "%s/ddim_latents.safetensors", dir);
    remove(png); remove(lat);
    snprintf(cmd, sizeof cmd, ENV "%s/07_txt2img --model " TINY " --prompt \"A majestic lion in a cosmic nebula, digital art, "
             "highly detailed\" --negative-prompt \"blurry, low quality, distorted\" --steps 8 --guidance 7.5 --scheduler ddim "
             "--seed 1234 --width 64 --height 64 --init-latents " GOLDEN "/pipeline_ddim.safetensors --headless --out %s "
             "--save-latents %s --threads 1", dl_test_bin_dir(), png, lat);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "exit status %d", rc)) { dl_test_show_log(); return; }
    sd_check_cli_run(GOLDEN "/pipeline_ddim.safetensors", lat, png);
}

TEST(lesson07, live_window_runs)
{
    char dir[512], cmd[2048], path[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson07/live"));
    snprintf(path, sizeof path, "%s/07_txt2img_window.png", dir);
    remove(path);
    snprintf(cmd, sizeof cmd, ENV "env -u DISPLAY -u WAYLAND_DISPLAY SDL_VIDEODRIVER=dummy %s/07_txt2img --model " TINY
             " --prompt \"a cat\" --steps 4 --width 64 --height 64 --max-frames 2 --out %s/live.png", dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0 && dl_test_file_ok(path), "exit %d, %s %s", rc, path, dl_test_file_ok(path) ? "written" : "missing"))
        dl_test_show_log();
}

TEST(lesson07, help_and_bad_arguments)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/07_txt2img --help", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0 && dl_test_log_contains("--negative-prompt") && dl_test_log_contains("--init-latents"), "--help");
    const struct { const char *args, *says; } bad[] = {
        {"--model " TINY " --prompt x --width 65 --height 64", "multiples of 2"},
        {"--model " TINY " --prompt x --width 8 --height 64", "at least 16"},
        {"--model " TINY " --prompt x --scheduler bogus", "bogus"},
        {"--model /nonexistent/sd15 --prompt x", "/nonexistent/sd15"},
        {"--model " TINY, "--prompt"},
        {"--prompt x", "--model"},
        {"--model " TINY " --prompt x --steps 0", "--steps"},
        {"--model " TINY " --prompt x --guidance abc", "--guidance"},
        {"--model " TINY " --prompt x --width 128 --height 128 --init-latents " GOLDEN "/pipeline_ddim.safetensors", "init_latents"},
        {"--model " TINY " --prompt x --init-latents " GOLDEN "/pipeline_prompt_embeds.safetensors", "init_latents"},
        {"--model " TINY "/tiny-sd.safetensors --config " TINY " --prompt x --tokenizer /nonexistent/tok", "/nonexistent/tok"},
        {"--model " TINY "/tiny-sd.safetensors --prompt x", "--config"},
        {"--model " TINY " --prompt x --bogus", "--bogus"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, ENV "%s/07_txt2img --headless --width 64 --height 64 --steps 2 --out %s/x.png %s",
                 dl_test_bin_dir(), dl_test_out_dir("lesson07/bad"), bad[i].args);
        /* later options win, so the bad value given in args replaces the defaults above */
        int rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "'%s' should fail cleanly, exit status %d", bad[i].args, rc);
        if (!CHECK(dl_test_log_contains(bad[i].says) && dl_test_log_contains("error"), "'%s': message should name '%s'",
                   bad[i].args, bad[i].says))
            dl_test_show_log();
    }
}
