/* test_lesson10.c - lesson 10 (LoRA): the exercises of docs/10_lora.md
 * checked against the library and the tiny LoRA, and bin/10_lora on the tiny
 * model: the scale sweep against diffusers' recorded runs (scale 0 = the base
 * model exactly, 0.5 = diffusers' LoRA run), merged vs on the fly, the
 * unmatched-key report, the live window, --help and bad arguments. */
#include "testing.h"
#include "../core/image.h"
#include "../core/safetensors.h"
#include "../core/sd_lora.h"
#include "../core/sd_weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ENV    "OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 "
#define TINY   "tests/fixtures/tiny-sd"
#define KOHYA  "tests/fixtures/tiny-lora/tiny_lora_kohya.safetensors"
#define PEFT   "tests/fixtures/tiny-lora/pytorch_lora_weights.safetensors"
#define GOLDEN "tests/fixtures/tiny-sd-golden"
/* diffusers' recorded DDIM runs: this prompt, 8 steps, g 7.5, 64x64, the seed-42 latents */
#define RUN "--steps 8 --scheduler ddim --guidance 7.5 --seed 42 --width 64 --height 64 --threads 1 " \
            "--prompt \"A majestic lion in a cosmic nebula, digital art, highly detailed\" "            \
            "--negative-prompt \"blurry, low quality, distorted\""

/* ---- the exercises -------------------------------------------------------- */

/* EXERCISE 1. The LoRA update of one layer, plain loops:
 * W [out, in] += coef * up [out, rank] @ down [rank, in]. */
static void my_lora_delta(float *W, const float *up, const float *down, int64_t out, int64_t in, int rank, float coef)
{
    for (int64_t o = 0; o < out; o++)
        for (int64_t i = 0; i < in; i++) {
            float acc = 0;
            for (int r = 0; r < rank; r++) acc += up[o * rank + r] * down[r * in + i];
            W[o * in + i] += coef * acc;
        }
}

/* EXERCISE 2. The factor in front of up @ down: the user's scale s times
 * the file's alpha over the rank. */
static float my_coef(float scale, float alpha, int rank) { return scale * alpha / (float)rank; }

/* EXERCISE 3. Parameters of a rank-r update of an [out, in] weight (the two
 * thin matrices), against out * in for a full fine-tune of that weight. */
static int64_t my_lora_params(int64_t out, int64_t in, int rank) { return (int64_t)rank * (out + in); }

TEST(lesson10, exercise_delta_of_one_layer)
{
    sd_weights w;
    if (!CHECK(sd_weights_open(&w, TINY) == DL_OK, "%s", dl_error_message())) return;
    sd_lora l;
    if (CHECK(sd_lora_load(&l, KOHYA, &w, 1.0f) == DL_OK, "%s", dl_error_message())) {
        double worst = 0;
        for (int k = 0; k < l.n_modules; k += 7) {      /* every 7th module: UNet and text encoder, linear and conv */
            const sd_lora_module *m = &l.modules[k];
            float *a = calloc((size_t)(m->out * m->in), sizeof(float)), *b = calloc((size_t)(m->out * m->in), sizeof(float));
            if (!CHECK(a && b, "malloc")) { free(a); free(b); break; }
            const float coef = my_coef(0.75f, m->alpha, m->rank);
            my_lora_delta(a, m->up, m->down, m->out, m->in, m->rank, coef);
            sd_lora_add_delta_ref(b, m->up, m->down, m->out, m->in, m->rank, 0.75f * m->alpha / m->rank);
            double d = dl_max_abs_diff(a, b, (size_t)(m->out * m->in));
            worst = d > worst ? d : worst;
            free(a); free(b);
        }
        printf("    my delta vs sd_lora_add_delta_ref: max abs diff %.2g\n", worst);
        CHECK(worst <= 1e-6, "my_lora_delta differs by %g", worst);
        CHECK(my_coef(1.0f, 2.0f, 4) == 0.5f && my_coef(0.5f, 8.0f, 4) == 1.0f, "coef = scale * alpha / rank");
        sd_lora_free(&l);
    }
    sd_weights_close(&w);
}

/* W' served by sd_lora_apply == W + s * alpha/rank * up @ down computed by hand */
TEST(lesson10, exercise_merged_weight_by_hand)
{
    sd_weights w;
    if (!CHECK(sd_weights_open(&w, TINY) == DL_OK, "%s", dl_error_message())) return;
    sd_lora_list L;
    sd_lora_list_init(&L);
    if (CHECK(sd_lora_list_add(&L, KOHYA ":0.75", &w) == DL_OK, "%s", dl_error_message())) {
        const char *targets[2] = {"mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                                  "text_model.encoder.layers.1.mlp.fc1.weight"};
        const sd_part parts[2] = {SD_PART_UNET, SD_PART_TEXT_ENCODER};
        for (int t = 0; t < 2; t++) {
            int first, nd;
            int64_t shape[8];
            dl_tensor orig, got;
            if (!CHECK(sd_lora_find(L.items[0], parts[t], targets[t], &first) == 1, "%s not in the LoRA", targets[t]) ||
                !CHECK(sd_weights_shape(&w, parts[t], targets[t], &nd, shape) == DL_OK, "%s", dl_error_message()))
                continue;
            const sd_lora_module *m = &L.items[0]->modules[first];
            sd_lora_remove(&L);
            if (!CHECK(sd_weights_get(&w, parts[t], targets[t], nd, shape, &orig) == DL_OK, "%s", dl_error_message())) continue;
            float *want = malloc((size_t)orig.numel * sizeof(float));
            memcpy(want, orig.data, (size_t)orig.numel * sizeof(float));
            my_lora_delta(want, m->up, m->down, m->out, m->in, m->rank, my_coef(0.75f, m->alpha, m->rank));
            sd_lora_apply(&L, &w);
            if (CHECK(sd_weights_get(&w, parts[t], targets[t], nd, shape, &got) == DL_OK, "%s", dl_error_message())) {
                CHECK_CLOSE(targets[t], got.data, want, (size_t)orig.numel, 1e-5);
                CHECK(dl_max_abs_diff(got.data, orig.data, (size_t)orig.numel) > 1e-3, "%s: the LoRA changed nothing", targets[t]);
                dl_tensor_free(&got);
            }
            free(want);
            dl_tensor_free(&orig);
        }
    }
    sd_lora_list_free(&L);
    sd_weights_close(&w);
}

TEST(lesson10, exercise_parameter_count)
{
    sd_weights w;
    dl_safetensors f;
    if (!CHECK(sd_weights_open(&w, TINY) == DL_OK, "%s", dl_error_message())) return;
    if (!CHECK(dl_st_open(&f, KOHYA) == DL_OK, "%s", dl_error_message())) { sd_weights_close(&w); return; }
    sd_lora l;
    if (CHECK(sd_lora_load(&l, KOHYA, &w, 1.0f) == DL_OK, "%s", dl_error_message())) {
        int64_t mine = 0, full = 0, in_file = 0;
        for (int k = 0; k < l.n_modules; k++) {
            mine += my_lora_params(l.modules[k].out, l.modules[k].in, l.modules[k].rank);
            full += l.modules[k].out * l.modules[k].in;
        }
        for (int i = 0; i < f.count; i++)       /* the file's up and down tensors (not the scalar alphas) */
            if (!strstr(f.entries[i].name, ".alpha")) in_file += dl_st_numel(&f.entries[i]);
        printf("    LoRA parameters %lld (the file: %lld), the weights they change: %lld (%.1fx more)\n",
               (long long)mine, (long long)in_file, (long long)full, (double)full / (double)mine);
        CHECK(mine == in_file, "my count %lld, the file holds %lld", (long long)mine, (long long)in_file);
        CHECK(mine < full, "rank 4 is smaller than the full matrices");
        sd_lora_free(&l);
    }
    dl_st_close(&f);
    sd_weights_close(&w);
}

/* ---- the program ----------------------------------------------------------- */

/* max |png - diffusers' float image * 255| in levels, or -1 */
static int png_vs_golden(const char *png, const char *golden, const char *name)
{
    dl_safetensors g;
    dl_tensor want = {0};
    dl_image img;
    int worst = -1;
    if (!CHECK(dl_st_open(&g, golden) == DL_OK, "%s", dl_error_message())) return -1;
    if (CHECK(dl_st_load_tensor(&g, name, &want) == DL_OK, "%s", dl_error_message()) &&
        CHECK(dl_image_load(&img, png, 3) == DL_OK, "%s", dl_error_message())) {
        if (CHECK((int64_t)img.w * img.h * 3 == want.numel, "%s: %dx%d", png, img.w, img.h)) {
            worst = 0;
            for (int64_t i = 0; i < want.numel; i++) {
                int d = abs(img.px[i] - (int)nearbyintf(want.data[i] * 255.0f));
                worst = d > worst ? d : worst;
            }
        }
        dl_image_free(&img);
    }
    dl_tensor_free(&want);
    dl_st_close(&g);
    return worst;
}

/* mean |a - b| over the bytes of two PNGs, or -1 */
static double png_diff(const char *a, const char *b)
{
    dl_image x, y;
    double d = -1;
    if (dl_image_load(&x, a, 3) != DL_OK) return -1;
    if (dl_image_load(&y, b, 3) == DL_OK) {
        if (x.w == y.w && x.h == y.h) {
            d = 0;
            for (int i = 0; i < x.w * x.h * 3; i++) d += abs(x.px[i] - y.px[i]);
            d /= x.w * x.h * 3;
        }
        dl_image_free(&y);
    }
    dl_image_free(&x);
    return d;
}

TEST(lesson10, sweep_matches_diffusers)
{
    char dir[512], cmd[2048], p0[700], p05[700], p1[700], base[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson10/sweep"));
    snprintf(p0, sizeof p0, "%s/10_lora_scale_0.00.png", dir);
    snprintf(p05, sizeof p05, "%s/10_lora_scale_0.50.png", dir);
    snprintf(p1, sizeof p1, "%s/10_lora_scale_1.00.png", dir);
    snprintf(base, sizeof base, "%s/no_lora.png", dir);
    remove(p0); remove(p05); remove(p1);
    snprintf(cmd, sizeof cmd, ENV "%s/10_lora --headless --model " TINY " --lora " KOHYA " " RUN " --out %s", dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "exit status %d", rc)) { dl_test_show_log(); return; }
    CHECK(dl_test_log_contains("270 tensors -> 90 modules, 0 unmatched"), "the LoRA summary");
    CHECK(dl_test_log_contains("unet          72 modules, rank 4, alpha 2 (alpha/rank 0.5)") &&
          dl_test_log_contains("text_encoder  18 modules, rank 4, alpha 8"), "modules per part");
    CHECK(dl_test_log_contains("attn2.to_k x6") && dl_test_log_contains("self_attn.q_proj x3"), "targets by kind");
    CHECK(dl_test_log_contains("RANDOM"), "the tiny model is announced as random");
    char sweep[700];
    snprintf(sweep, sizeof sweep, "%s/10_lora_sweep.png", dir);
    CHECK(dl_test_file_ok(sweep), "%s missing", sweep);
    /* scale 0 = diffusers without LoRA; 0.5 = diffusers' LoRA run at 0.5 */
    int d0 = png_vs_golden(p0, GOLDEN "/pipeline_ddim.safetensors", "image");
    int d05 = png_vs_golden(p05, GOLDEN "/lora.safetensors", "pipeline_ddim.lora_scale_0.5.image");
    printf("    scale 0 vs diffusers (no LoRA): %d levels; scale 0.5 vs diffusers' LoRA run: %d levels\n", d0, d05);
    CHECK(d0 >= 0 && d0 <= 1, "scale 0 differs from diffusers' image by %d levels", d0);
    CHECK(d05 >= 0 && d05 <= 1, "scale 0.5 differs from diffusers' LoRA image by %d levels", d05);
    /* scale 0 is exactly the model without any LoRA (lesson 07's program, same run) */
    snprintf(cmd, sizeof cmd, ENV "%s/07_txt2img --headless --model " TINY " " RUN " --out %s", dl_test_bin_dir(), base);
    if (CHECK(dl_test_run(cmd) == 0, "07_txt2img failed")) {
        double same = png_diff(p0, base), moved = png_diff(p1, base);
        printf("    mean |scale 0 - no LoRA| = %.3f, |scale 1 - no LoRA| = %.3f levels\n", same, moved);
        CHECK(same == 0.0, "scale 0 must equal the run without LoRA (mean diff %g)", same);
        CHECK(moved > 1.0, "scale 1 must differ from the run without LoRA (mean diff %g)", moved);
    }
}

/* merged weights, the PEFT file: the same pictures as kohya on the fly */
TEST(lesson10, merge_and_peft_match_on_the_fly)
{
    char dir[512], cmd[2048], png[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson10/merge"));
    snprintf(png, sizeof png, "%s/10_lora_scale_0.50.png", dir);
    remove(png);
    snprintf(cmd, sizeof cmd, ENV "%s/10_lora --headless --merge --model " TINY " --lora " PEFT " " RUN " --out %s", dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "exit status %d", rc)) { dl_test_show_log(); return; }
    CHECK(dl_test_log_contains("diffusers names") && dl_test_log_contains("sd_lora_fuse"), "PEFT file, merged");
    int d = png_vs_golden(png, GOLDEN "/lora.safetensors", "pipeline_ddim.lora_scale_0.5.image");
    printf("    merged PEFT LoRA at 0.5 vs diffusers: %d levels\n", d);
    CHECK(d >= 0 && d <= 1, "merged PEFT at 0.5 differs from diffusers by %d levels", d);
}

/* a LoRA with a key for a layer this model does not have: the key is printed with its reason */
TEST(lesson10, unmatched_keys_are_printed)
{
    dl_safetensors src;
    if (!CHECK(dl_st_open(&src, KOHYA) == DL_OK, "%s", dl_error_message())) return;
    const char *good = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q";
    char name[256], path[700], cmd[2048];
    dl_tensor down = {0}, up = {0};
    snprintf(name, sizeof name, "%s.lora_down.weight", good);
    int ok = dl_st_load_tensor(&src, name, &down) == DL_OK;
    snprintf(name, sizeof name, "%s.lora_up.weight", good);
    ok = ok && dl_st_load_tensor(&src, name, &up) == DL_OK;
    dl_st_writer wr;
    dl_st_writer_init(&wr);
    snprintf(path, sizeof path, "%s/mixed_lora.safetensors", dl_test_out_dir("lesson10/unmatched"));
    if (CHECK(ok, "kohya fixture")) {
        snprintf(name, sizeof name, "%s.lora_down.weight", good); dl_st_writer_add(&wr, name, &down);
        snprintf(name, sizeof name, "%s.lora_up.weight", good); dl_st_writer_add(&wr, name, &up);
        dl_st_writer_add(&wr, "lora_unet_input_blocks_4_1_proj_in.lora_down.weight", &down);   /* LDM naming: not here */
        dl_st_writer_add(&wr, "lora_unet_input_blocks_4_1_proj_in.lora_up.weight", &up);
        if (CHECK(dl_st_writer_save(&wr, path) == DL_OK, "%s", dl_error_message())) {
            snprintf(cmd, sizeof cmd, ENV "%s/10_lora --headless --model " TINY " --lora %s:0.5 --steps 1 --out %s",
                     dl_test_bin_dir(), path, dl_test_out_dir("lesson10/unmatched"));
            int rc = dl_test_run(cmd);
            CHECK(rc == 0, "exit status %d", rc);
            if (!CHECK(dl_test_log_contains("1 modules, 2 unmatched") &&
                       dl_test_log_contains("UNMATCHED lora_unet_input_blocks_4_1_proj_in.lora_down.weight: ") &&
                       dl_test_log_contains("warning: 2 LoRA key(s) matched nothing"), "the unmatched keys and their reason"))
                dl_test_show_log();
        }
    }
    dl_st_writer_free(&wr);
    dl_tensor_free(&down); dl_tensor_free(&up);
    dl_st_close(&src);
}

TEST(lesson10, live_window_runs)
{
    char dir[512], cmd[2048], path[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson10/live"));
    snprintf(path, sizeof path, "%s/10_lora_window.png", dir);
    remove(path);
    snprintf(cmd, sizeof cmd, ENV "env -u DISPLAY -u WAYLAND_DISPLAY SDL_VIDEODRIVER=dummy %s/10_lora --model " TINY
             " --steps 1 --max-frames 2 --out %s", dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0 && dl_test_file_ok(path), "exit %d, %s %s", rc, path, dl_test_file_ok(path) ? "written" : "missing"))
        dl_test_show_log();
}

TEST(lesson10, help_and_bad_arguments)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/10_lora --help", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0 && dl_test_log_contains("--lora FILE[:scale]") && dl_test_log_contains("--merge"), "--help");
    if (access("models/sd15", R_OK) != 0) {   /* no model: what to download, then the tiny model */
        snprintf(cmd, sizeof cmd, ENV "%s/10_lora --headless --steps 1 --out %s", dl_test_bin_dir(), dl_test_out_dir("lesson10/nomodel"));
        CHECK(dl_test_run(cmd) == 0 && dl_test_log_contains("models/sd15") && dl_test_log_contains("Civitai") &&
              dl_test_log_contains("RANDOM"), "without --model: the download advice and the tiny model");
    }
    const struct { const char *args, *says; } bad[] = {
        {"--lora " KOHYA ":abc", "abc"},
        {"--lora tests/fixtures/tiny-lora/missing.safetensors", "missing.safetensors"},
        {"--lora " KOHYA " --bogus", "--bogus"},
        {"--lora " GOLDEN "/lora.safetensors", "not a LoRA"},
        {"--lora " KOHYA " --width 65 --height 64", "multiples of 2"},
        {"--lora " KOHYA " --scheduler bogus", "bogus"},
        {"--lora " KOHYA " --steps 0", "--steps"},
        {"--model /nonexistent/sd15 --lora " KOHYA, "/nonexistent/sd15"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *model = strstr(bad[i].args, "--model") ? "" : "--model " TINY;
        snprintf(cmd, sizeof cmd, ENV "%s/10_lora --headless --steps 1 --out %s %s %s", dl_test_bin_dir(),
                 dl_test_out_dir("lesson10/bad"), model, bad[i].args);
        int rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "'%s' should fail cleanly, exit status %d", bad[i].args, rc);
        if (!CHECK(dl_test_log_contains(bad[i].says) && dl_test_log_contains("error"), "'%s': message should name '%s'",
                   bad[i].args, bad[i].says))
            dl_test_show_log();
    }
}
