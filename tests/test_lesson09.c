/* test_lesson09.c - lesson 09 (ControlNet with Canny edges): the exercises
 * of docs/09_controlnet.md (hysteresis, non-maximum suppression, the zero
 * convolution) checked against OpenCV's and diffusers' recorded outputs and
 * the library, and bin/09_controlnet: edges only (no model), the diffusers
 * ControlNet run through the command line on the tiny models, live on SDL's
 * dummy driver, bad arguments. */
#include "testing.h"
#include "sd_cli_check.h"
#include "../core/canny.h"
#include "../core/image.h"
#include "../core/png_text.h"
#include "../core/safetensors.h"
#include "../core/sd_controlnet.h"
#include "../core/sd_unet.h"
#include "../core/sd_weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENV "OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 "
#define TINY "tests/fixtures/tiny-sd"
#define TINY_CN "tests/fixtures/tiny-controlnet"
#define GOLDEN "tests/fixtures/tiny-sd-golden"
#define CANNY "tests/fixtures/canny"
#define CAT "data/images/chelsea.png"
#define LION "\"A majestic lion in a cosmic nebula, digital art, highly detailed\""
#define BLURRY "\"blurry, low quality, distorted\""

static int load(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    return CHECK(dl_st_load_tensor(f, name, t) == DL_OK, "golden tensor %s: %s", name, dl_error_message());
}

/* ---- the exercises -------------------------------------------------------- */

/* EXERCISE 1. Hysteresis: a pixel with thin > high is an edge; a pixel with
 * thin > low is an edge if one of its 8 neighbours is. (Thresholds are
 * whole numbers here, as OpenCV rounds them down.) The simplest correct
 * way: sweep over the image until nothing changes. */
static void my_hysteresis(const int32_t *thin, int w, int h, int low, int high, uint8_t *edges)
{
    for (int i = 0; i < w * h; i++) edges[i] = thin[i] > high ? 255 : 0;
    for (int changed = 1; changed; ) {
        changed = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) {
                if (edges[y * w + x] || thin[y * w + x] <= low) continue;
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++) {
                        int nx = x + dx, ny = y + dy;
                        if (nx >= 0 && nx < w && ny >= 0 && ny < h && edges[ny * w + nx] && !edges[y * w + x]) {
                            edges[y * w + x] = 255;
                            changed = 1;
                        }
                    }
            }
    }
}

/* EXERCISE 2. Non-maximum suppression: keep mag only where it is a maximum
 * along the gradient direction, binned with OpenCV's integer test
 * (tan 22.5 deg = 13573 / 2^15, tan 67.5 = tan 22.5 + 2):
 *   |gy| 2^15 <  |gx| 13573           horizontal gradient: left < m >= right
 *   |gy| 2^15 > |gx| (13573 + 2^16)   vertical: above < m >= below
 *   otherwise diagonal: same signs of gx, gy: up-left < m > down-right,
 *                        opposite signs: up-right < m > down-left
 * (outside the image counts as 0). */
static int mag_at(const int32_t *mag, int w, int h, int x, int y)
{
    return x < 0 || x >= w || y < 0 || y >= h ? 0 : mag[y * w + x];
}
static void my_nms(const int32_t *mag, const int16_t *gx, const int16_t *gy, int w, int h, int32_t *thin)
{
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int i = y * w + x, m = mag[i], ax = abs(gx[i]), ay = abs(gy[i]), keep;
            long a = (long)ay << 15, t22 = (long)ax * 13573, t67 = t22 + ((long)ax << 16);
            if (a < t22) keep = m > mag_at(mag, w, h, x - 1, y) && m >= mag_at(mag, w, h, x + 1, y);
            else if (a > t67) keep = m > mag_at(mag, w, h, x, y - 1) && m >= mag_at(mag, w, h, x, y + 1);
            else if ((gx[i] < 0) == (gy[i] < 0)) keep = m > mag_at(mag, w, h, x - 1, y - 1) && m > mag_at(mag, w, h, x + 1, y + 1);
            else keep = m > mag_at(mag, w, h, x + 1, y - 1) && m > mag_at(mag, w, h, x - 1, y + 1);
            thin[i] = keep ? m : 0;
        }
}

/* EXERCISE 3. A zero convolution: the 1x1 conv that turns one of the
 * ControlNet's own skips into the residual for the UNet's skip, times the
 * conditioning scale: out[b][o][p] = scale (bias[o] + sum_i W[o][i] in[b][i][p]).
 * in [B, Cin, HW], W [Cout, Cin], out [B, Cout, HW]. */
static void my_zero_conv(float *out, const float *in, const float *W, const float *bias, int B, int Cin, int Cout,
                         int HW, float scale)
{
    for (int b = 0; b < B; b++)
        for (int o = 0; o < Cout; o++)
            for (int p = 0; p < HW; p++) {
                float acc = bias[o];
                for (int i = 0; i < Cin; i++) acc += W[o * Cin + i] * in[((size_t)b * Cin + i) * HW + p];
                out[((size_t)b * Cout + o) * HW + p] = scale * acc;
            }
}

/* the cat, resized as the lesson does for SD (448x296) */
static int cat_gradients(canny_gradients *g, dl_image *small)
{
    dl_image cat;
    if (!CHECK(dl_image_load(&cat, CAT, 3) == DL_OK, "%s", dl_error_message())) return 0;
    int ok = CHECK(dl_image_resize(small, &cat, 448, 296) == DL_OK, "%s", dl_error_message()) &&
             CHECK(canny_prepare(g, small->px, small->w, small->h, 3) == DL_OK, "%s", dl_error_message());
    dl_image_free(&cat);
    return ok;
}

TEST(lesson09, exercise_hysteresis)
{
    canny_gradients g = {0};
    dl_image small = {0};
    if (cat_gradients(&g, &small)) {
        const int n = g.w * g.h, th[4][2] = {{100, 200}, {50, 100}, {0, 0}, {300, 300}};
        uint8_t *mine = malloc((size_t)n), *lib = malloc((size_t)n);
        for (int k = 0; k < 4 && mine && lib; k++) {
            my_hysteresis(g.thin, g.w, g.h, th[k][0], th[k][1], mine);
            CHECK(canny_hysteresis(g.thin, g.w, g.h, (float)th[k][0], (float)th[k][1], lib) == DL_OK, "%s", dl_error_message());
            int diff = 0;
            for (int i = 0; i < n; i++) diff += mine[i] != lib[i];
            CHECK(diff == 0, "cat, low %d high %d: %d pixels differ from canny_hysteresis", th[k][0], th[k][1], diff);
        }
        free(mine); free(lib);
    }
    canny_gradients_free(&g);
    dl_image_free(&small);
    /* the whole detector with my last stage = OpenCV's cv2.Canny(gray, 100, 200) (fixture PNGs) */
    dl_image in, cv;
    if (CHECK(dl_image_load(&in, CANNY "/input.png", 3) == DL_OK, "%s", dl_error_message())) {
        if (CHECK(dl_image_load(&cv, CANNY "/edges_from_gray.png", 1) == DL_OK, "%s", dl_error_message())) {
            const int w = in.w, h = in.h;
            uint8_t *gr = malloc((size_t)w * h), *mine = malloc((size_t)w * h);
            canny_gradients cg = {0};
            if (CHECK(gr && mine && cv.w == w && cv.h == h, "sizes") && CHECK(canny_rgb_to_grey(in.px, w, h, gr) == DL_OK &&
                                                                         canny_prepare(&cg, gr, w, h, 1) == DL_OK, "%s", dl_error_message())) {
                my_hysteresis(cg.thin, w, h, 100, 200, mine);
                int diff = 0, edges = 0;
                for (int i = 0; i < w * h; i++) { diff += mine[i] != cv.px[i]; edges += cv.px[i] != 0; }
                CHECK(diff == 0 && edges > 50, "%d of %d OpenCV edge pixels differ", diff, edges);
            }
            canny_gradients_free(&cg);
            free(gr); free(mine);
            dl_image_free(&cv);
        }
        dl_image_free(&in);
    }
}

TEST(lesson09, exercise_non_maximum_suppression)
{
    canny_gradients g = {0};
    dl_image small = {0};
    if (cat_gradients(&g, &small)) {
        const int n = g.w * g.h;
        int32_t *mine = malloc((size_t)n * sizeof *mine);
        if (CHECK(mine != NULL, "malloc")) {
            my_nms(g.mag, g.gx, g.gy, g.w, g.h, mine);
            int diff = 0, kept = 0;
            for (int i = 0; i < n; i++) { diff += mine[i] != g.thin[i]; kept += g.thin[i] > 0; }
            CHECK(diff == 0, "cat: %d of %d pixels differ from canny_nms (%d kept)", diff, n, kept);
            CHECK(kept > n / 20 && kept < n / 2, "%d of %d pixels kept: a thin map", kept, n);
        }
        free(mine);
    }
    canny_gradients_free(&g);
    dl_image_free(&small);
}

/* Hook: copies of the ControlNet's intermediates the exercise needs. */
typedef struct { dl_tensor conv_in, emb, mid; } grabbed;
static void grab(void *ctx, const char *name, const dl_tensor *t)
{
    grabbed *gb = ctx;
    dl_tensor *dst = !strcmp(name, "conv_in") ? &gb->conv_in : !strcmp(name, "controlnet_cond_embedding") ? &gb->emb
                   : !strcmp(name, "mid_block") ? &gb->mid : NULL;
    if (!dst || dst->data) return;
    if (dl_tensor_alloc(dst, 4, t->shape) == DL_OK) dl_tensor_copy(dst, t);
}

static double compare_golden(const dl_safetensors *g, const char *name, const float *got, int64_t n)
{
    dl_tensor want = {0};
    double d = -1;
    if (load(g, name, &want) && CHECK(want.numel == n, "%s: %lld values, mine %lld", name, (long long)want.numel, (long long)n)) {
        d = dl_max_abs_diff(got, want.data, (size_t)n);
        printf("    %-36s max abs diff %.2e\n", name, d);
        CHECK_CLOSE(name, got, want.data, (size_t)n, 1e-4);
    }
    dl_tensor_free(&want);
    return d;
}

TEST(lesson09, exercise_zero_convolution)
{
    sd_weights w;
    sd_controlnet cn;
    dl_safetensors g;
    if (!CHECK(sd_weights_open_component(&w, TINY_CN, SD_PART_UNET) == DL_OK, "%s", dl_error_message())) return;
    if (!CHECK(sd_controlnet_init(&cn, &w) == DL_OK, "%s", dl_error_message())) { sd_weights_close(&w); return; }
    grabbed gb;
    memset(&gb, 0, sizeof gb);
    dl_tensor x = {0}, ehs = {0}, cond = {0}, ts = {0}, W0 = {0}, b0 = {0}, Wm = {0}, bm = {0}, u = {0}, plain = {0};
    sd_controlnet_output res;
    memset(&res, 0, sizeof res);
    if (CHECK(dl_st_open(&g, GOLDEN "/controlnet_ddim.safetensors") == DL_OK, "%s", dl_error_message())) {
        if (load(&g, "step0.latent_model_input", &x) && load(&g, "step0.encoder_hidden_states", &ehs) &&
            load(&g, "step0.controlnet_cond", &cond) && load(&g, "step0.timestep", &ts) &&
            CHECK(sd_controlnet_output_alloc(&res, &cn.cfg, 2, 32, 32) == DL_OK, "%s", dl_error_message())) {
            float t[2] = {ts.data[0], ts.data[0]};
            cn.hook = grab;
            cn.hook_ctx = &gb;
            if (CHECK(sd_controlnet_forward(&cn, &res, &x, t, &ehs, &cond, 1.0f, 0) == DL_OK, "%s", dl_error_message()) &&
                CHECK(gb.conv_in.data && gb.emb.data && gb.mid.data, "hook: conv_in, controlnet_cond_embedding, mid_block")) {
                /* skip 0: the control enters ONCE, added to conv_in's output, then its zero conv */
                const int C0 = (int)gb.conv_in.shape[1], HW0 = (int)(gb.conv_in.shape[2] * gb.conv_in.shape[3]);
                const int Cm = (int)gb.mid.shape[1], HWm = (int)(gb.mid.shape[2] * gb.mid.shape[3]);
                float *skip0 = malloc((size_t)gb.conv_in.numel * sizeof(float));
                float *r0 = malloc((size_t)gb.conv_in.numel * sizeof(float)), *rm = malloc((size_t)gb.mid.numel * sizeof(float));
                if (CHECK(skip0 && r0 && rm, "malloc") &&
                    CHECK(sd_weights_get(&w, SD_PART_UNET, "controlnet_down_blocks.0.weight", 4, DL_SHAPE(C0, C0, 1, 1), &W0) == DL_OK &&
                          sd_weights_get(&w, SD_PART_UNET, "controlnet_down_blocks.0.bias", 1, DL_SHAPE(C0), &b0) == DL_OK &&
                          sd_weights_get(&w, SD_PART_UNET, "controlnet_mid_block.weight", 4, DL_SHAPE(Cm, Cm, 1, 1), &Wm) == DL_OK &&
                          sd_weights_get(&w, SD_PART_UNET, "controlnet_mid_block.bias", 1, DL_SHAPE(Cm), &bm) == DL_OK,
                          "%s", dl_error_message())) {
                    for (int64_t i = 0; i < gb.conv_in.numel; i++) skip0[i] = gb.conv_in.data[i] + gb.emb.data[i];
                    my_zero_conv(r0, skip0, W0.data, b0.data, 2, C0, C0, HW0, 1.0f);
                    my_zero_conv(rm, gb.mid.data, Wm.data, bm.data, 2, Cm, Cm, HWm, 1.0f);
                    compare_golden(&g, "step0.down_block_res_samples.0", r0, gb.conv_in.numel);
                    compare_golden(&g, "step0.mid_block_res_sample", rm, gb.mid.numel);
                    /* scale 0.5 halves them (what --control-scale does) */
                    my_zero_conv(rm, gb.mid.data, Wm.data, bm.data, 2, Cm, Cm, HWm, 0.5f);
                    if (CHECK(sd_controlnet_forward(&cn, &res, &x, t, &ehs, &cond, 0.5f, 0) == DL_OK, "%s", dl_error_message()))
                        CHECK_CLOSE("mid residual at scale 0.5", rm, res.mid.data, (size_t)res.mid.numel, 1e-5);
                }
                free(skip0); free(r0); free(rm);
            }
            /* Why zero: residuals that are zero (an untrained ControlNet, or scale 0) leave the UNet as it was */
            sd_weights uw;
            sd_unet un;
            cn.hook = NULL;
            if (CHECK(sd_controlnet_forward(&cn, &res, &x, t, &ehs, &cond, 0.0f, 0) == DL_OK, "%s", dl_error_message()) &&
                CHECK(sd_weights_open(&uw, TINY) == DL_OK, "%s", dl_error_message())) {
                if (CHECK(sd_unet_init(&un, &uw) == DL_OK, "%s", dl_error_message()) && dl_tensor_alloc(&u, 4, x.shape) == DL_OK &&
                    load(&g, "step0.unet_out_without_residuals", &plain)) {
                    sd_unet_residuals r = sd_controlnet_residuals(&res);
                    if (CHECK(sd_unet_forward(&un, &u, &x, t, &ehs, &r) == DL_OK, "%s", dl_error_message()))
                        CHECK_CLOSE("UNet with zero residuals = plain UNet", u.data, plain.data, (size_t)u.numel, 1e-4);
                    sd_unet_free(&un);
                }
                sd_weights_close(&uw);
            }
        }
        dl_st_close(&g);
    }
    dl_tensor *all[] = {&x, &ehs, &cond, &ts, &W0, &b0, &Wm, &bm, &u, &plain, &gb.conv_in, &gb.emb, &gb.mid};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
    sd_controlnet_output_free(&res);
    sd_controlnet_free(&cn);
    sd_weights_close(&w);
}

/* ---- the program ------------------------------------------------------------ */

/* channel 0 of a PNG vs an edge map */
static int differing(const char *png, const uint8_t *edges, int w, int h)
{
    dl_image img;
    if (!CHECK(dl_image_load(&img, png, 3) == DL_OK, "%s", dl_error_message())) return -1;
    int diff = -1;
    if (CHECK(img.w == w && img.h == h, "%s is %dx%d, want %dx%d", png, img.w, img.h, w, h)) {
        diff = 0;
        for (int i = 0; i < w * h; i++) diff += img.px[i * 3] != edges[i] || img.px[i * 3 + 1] != edges[i] || img.px[i * 3 + 2] != edges[i];
    }
    dl_image_free(&img);
    return diff;
}

TEST(lesson09, edges_only_without_a_model)
{
    char dir[512], cmd[2048], png[700], edges[700], stages[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson09/edges"));
    snprintf(png, sizeof png, "%s/cat.png", dir);
    snprintf(edges, sizeof edges, "%s/cat_edges.png", dir);
    snprintf(stages, sizeof stages, "%s/cat_canny.png", dir);
    remove(edges); remove(stages);
    /* no --model, no --controlnet: the Canny part, and what to download */
    snprintf(cmd, sizeof cmd, ENV "%s/09_controlnet --image " CAT " --headless --out %s", dl_test_bin_dir(), png);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "exit status %d", rc)) { dl_test_show_log(); return; }
    CHECK(dl_test_log_contains("lllyasviel/sd-controlnet-canny") && dl_test_log_contains("models/controlnet-canny") &&
          dl_test_log_contains("models/sd15") && dl_test_log_contains("tests/fixtures/tiny-controlnet") &&
          dl_test_log_contains("RANDOM"), "what to download, where, and the tiny models");
    CHECK(dl_test_file_ok(stages), "%s missing", stages);
    /* the edges are cv2.Canny(rgb, 100, 200) of the resized cat */
    dl_image cat, small;
    if (CHECK(dl_image_load(&cat, CAT, 3) == DL_OK, "%s", dl_error_message())) {
        if (CHECK(dl_image_resize(&small, &cat, 448, 296) == DL_OK, "%s", dl_error_message())) {
            uint8_t *want = malloc((size_t)448 * 296);
            if (CHECK(want && canny_edges_color(small.px, 448, 296, 3, 100, 200, want) == DL_OK, "%s", dl_error_message()))
                CHECK(differing(edges, want, 448, 296) == 0, "edges differ from canny_edges_color");
            free(want);
            dl_image_free(&small);
        }
        dl_image_free(&cat);
    }
    /* --edges-only with other thresholds, grey; a model without a ControlNet also falls back to edges */
    snprintf(cmd, sizeof cmd, ENV "%s/09_controlnet --image " CANNY "/input.png --grey --low 50 --high 150 --model " TINY
             " --headless --out %s", dl_test_bin_dir(), png);
    rc = dl_test_run(cmd);
    if (!CHECK(rc == 0 && dl_test_log_contains("no --controlnet"), "exit %d", rc)) { dl_test_show_log(); return; }
    dl_image in;
    if (CHECK(dl_image_load(&in, CANNY "/input.png", 3) == DL_OK, "%s", dl_error_message())) {
        uint8_t grey[64 * 64], want[64 * 64];
        if (CHECK(in.w == 64 && in.h == 64, "input.png size") && canny_rgb_to_grey(in.px, 64, 64, grey) == DL_OK &&
            CHECK(canny_edges(grey, 64, 64, 50, 150, want) == DL_OK, "%s", dl_error_message()))
            CHECK(differing(edges, want, 64, 64) == 0, "grey edges 50/150 differ");
        dl_image_free(&in);
    }
}

/* diffusers' ControlNet run of the fixtures, through the command line:
 * the edges of the grey test picture ARE the golden control image */
TEST(lesson09, command_line_reproduces_diffusers)
{
    char dir[512], cmd[2048], png[700], lat[700], edges[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson09/ddim"));
    snprintf(png, sizeof png, "%s/lion.png", dir);
    snprintf(edges, sizeof edges, "%s/lion_edges.png", dir);
    snprintf(lat, sizeof lat, "%s/lion_latents.safetensors", dir);
    remove(png); remove(lat); remove(edges);
    snprintf(cmd, sizeof cmd, ENV "%s/09_controlnet --model " TINY " --controlnet " TINY_CN " --image " GOLDEN "/test_image.png"
             " --grey --low 100 --high 200 --control-scale 1 --prompt " LION " --negative-prompt " BLURRY " --steps 8"
             " --guidance 7.5 --scheduler ddim --seed 1234 --init-latents " GOLDEN "/controlnet_ddim.safetensors --headless"
             " --out %s --save-latents %s", dl_test_bin_dir(), png, lat);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "exit status %d", rc)) { dl_test_show_log(); return; }
    CHECK(dl_test_log_contains("RANDOM weights") && dl_test_log_contains("step 8/8"), "tiny-model note and progress");
    dl_image ctl;
    if (CHECK(dl_image_load(&ctl, GOLDEN "/controlnet_control_image.png", 1) == DL_OK, "%s", dl_error_message())) {
        CHECK(differing(edges, ctl.px, ctl.w, ctl.h) == 0, "the control image differs from diffusers'");
        dl_image_free(&ctl);
    }
    sd_check_cli_run(GOLDEN "/controlnet_ddim.safetensors", lat, png);
    char *text = NULL;
    if (CHECK(dl_png_read_text(png, "parameters", &text) == DL_OK, "%s", dl_error_message()))
        CHECK(strstr(text, "ControlNet: tiny-controlnet, Control scale: 1, Canny: 100/200 grey") != NULL, "parameters: %s", text);
    free(text);
}

TEST(lesson09, live_window_runs)
{
    const char *extra[2] = {"--edges-only", "--model " TINY " --controlnet " TINY_CN " --prompt \"a cat\" --steps 3"};
    for (int k = 0; k < 2; k++) {
        char dir[512], cmd[2048], path[700];
        snprintf(dir, sizeof dir, "%s", dl_test_out_dir(k ? "lesson09/live_model" : "lesson09/live_edges"));
        snprintf(path, sizeof path, "%s/09_controlnet_window.png", dir);
        remove(path);
        snprintf(cmd, sizeof cmd, ENV "env -u DISPLAY -u WAYLAND_DISPLAY SDL_VIDEODRIVER=dummy %s/09_controlnet --image " GOLDEN
                 "/test_image.png %s --max-frames 2 --out %s/live.png", dl_test_bin_dir(), extra[k], dir);
        int rc = dl_test_run(cmd);
        if (!CHECK(rc == 0 && dl_test_file_ok(path), "%s: exit %d, %s %s", extra[k], rc, path, dl_test_file_ok(path) ? "written" : "missing"))
            dl_test_show_log();
    }
}

TEST(lesson09, help_and_bad_arguments)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/09_controlnet --help", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0 && dl_test_log_contains("--controlnet") && dl_test_log_contains("--edges-only") &&
          dl_test_log_contains("--control-scale"), "--help");
    const struct { const char *args, *says; } bad[] = {
        {"--low 300 --high 200", "--low"},
        {"--low abc", "--low"},
        {"--control-scale -1", "--control-scale"},
        {"--image /nonexistent/pic.png", "/nonexistent/pic.png"},
        {"--model " TINY " --controlnet /nonexistent/cn --prompt x", "/nonexistent/cn"},
        {"--model " TINY " --controlnet " TINY_CN, "--prompt"},
        {"--model " TINY " --controlnet " TINY_CN " --prompt x --width 65", "multiples of 2"},
        {"--model " TINY " --controlnet " TINY_CN " --prompt x --scheduler bogus", "bogus"},
        {"--bogus", "--bogus"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, ENV "%s/09_controlnet --headless --image " GOLDEN "/test_image.png --steps 2 --out %s/x.png %s",
                 dl_test_bin_dir(), dl_test_out_dir("lesson09/bad"), bad[i].args);
        int rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "'%s' should fail cleanly, exit status %d", bad[i].args, rc);
        if (!CHECK(dl_test_log_contains(bad[i].says) && dl_test_log_contains("error"), "'%s': message should name '%s'",
                   bad[i].args, bad[i].says))
            dl_test_show_log();
    }
}
