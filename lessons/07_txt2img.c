/* 07_txt2img.c - Lesson 07: Stable Diffusion, text to image, on the kernels
 * of the earlier lessons.
 *
 *   "a photo of a cat"
 *     -> CLIP tokenizer        77 token ids (BOS, BPE pieces, EOS, padding)
 *     -> CLIP text encoder     context [1, 77, 768]   (and the negative prompt's)
 *   seed -> torch-identical randn   latents [1, 4, 64, 64] * init_noise_sigma
 *   N sampler steps: UNet on the batch [negative, positive] (classifier-free
 *     guidance, lesson 05), eps = eps_neg + g (eps_pos - eps_neg), scheduler update
 *   latents / 0.18215 -> VAE decoder -> [1, 3, 512, 512] -> (x / 2 + 0.5) clamped -> PNG
 *
 * The pipeline itself lives in core/sd_pipeline.c; this file shows it: the
 * tokens, a progress line per step, and in the window the latents and the
 * predicted clean image of every step (a cheap linear latent -> RGB preview,
 * and every few steps the real VAE decode). The PNG carries the generation
 * parameters in a text chunk. See docs/07_latent_diffusion.md.
 *
 *   bin/07_txt2img --model models/sd15 --prompt "a lighthouse at dusk, oil painting"
 *   bin/07_txt2img --model tests/fixtures/tiny-sd --prompt "a cat" --width 64 --height 64 --headless
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "../core/png_text.h"
#include "../core/safetensors.h"
#include "../core/sd_pipeline.h"
#include "../viz/app.h"
#include "../viz/viz.h"

static const char *USAGE =
    "Lesson 07: Stable Diffusion text-to-image (SD 1.x / 2.x checkpoints, matching diffusers).\n"
    "  --model PATH            a diffusers folder or a single .safetensors checkpoint (required)\n"
    "  --prompt TEXT           what to draw (required)\n"
    "  --negative-prompt TEXT  what to steer away from (default: empty, still encoded)\n"
    "  --steps N               sampler steps (default 25)\n"
    "  --guidance G            classifier-free guidance scale (default 7.5; <= 1: no guidance)\n"
    "  --scheduler NAME        ddpm ddim pndm lms euler euler_a heun kdpm2 kdpm2_a dpmpp_2m\n"
    "                          dpmpp_2m_karras unipc lcm (default dpmpp_2m)\n"
    "  --seed S                torch.Generator(\"cpu\").manual_seed(S) (default 42)\n"
    "  --width W --height H    pixels, multiples of the VAE's factor (8 for SD; default 512)\n"
    "  --out FILE              the PNG (default out.png); the steps strip goes to FILE_steps.png\n"
    "  --init-latents F        start from tensor init_latents [1, 4, H/8, W/8] of a .safetensors file\n"
    "  --save-latents F        write the final latents as tensor latents_final\n"
    "  --threads N             CPU threads (default: all cores)\n"
    "  --headless              no window\n"
    "more options:\n"
    "  --tokenizer DIR         tokenizer folder (single files carry none; default: tokenizer/ next to it)\n"
    "  --keep-weights          keep the UNet's fp16 weights widened to fp32 between steps\n"
    "                          (SD 1.5: ~3.6 GB instead of ~2 GB peak; saves ~0.35 s per step here)\n"
    "  --config DIR            a diffusers-layout folder with the configs of a single-file checkpoint\n"
    "  --prediction-type T     epsilon or v_prediction (overrides the scheduler config)\n"
    "  --guidance-rescale R    rescale the guided prediction's std (0..1, default 0)\n"
    "  --preview-every K       full VAE decode of the predicted image every K steps (0 = never;\n"
    "                          default: live 1 for small images, 5 for 512x512; headless 0)\n"
    "live window keys: space pause/resume, right arrow: one step while paused, s: screenshot, q/Esc: quit\n";

#define SNAPS 8          /* columns of the steps strip */

typedef struct {
    dl_app *app;
    sd_pipeline *p;
    const sd_run_opts *o;
    sd_preview_map map;
    int fitted;                    /* map fitted to a real decode (not the SD default) */
    dl_tensor snap_x[SNAPS], snap_x0[SNAPS];
    int snap_call[SNAPS], n_snaps;
    /* live */
    viz_window *win;
    dl_image decoded;              /* the last full VAE decode of x0 */
    int decoded_call, paused, quit, shots;
    int64_t frames;
    char tokens_line[600];
} lesson;

static float parse_float(dl_app *app, int argc, char **argv, int *i, float lo, float hi)
{
    const char *opt = argv[*i], *s = dl_arg_str(app, argc, argv, i);
    char *end;
    float v = strtof(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi)) dl_app_bad_arg(app, "%s wants a number in [%g, %g], got '%s'", opt, lo, hi, s);
    return v;
}

/* "a(320) photo(1125) ..." with what the 77-token limit cuts, printed and kept for the window */
static void show_tokens(lesson *L, const char *prompt)
{
    int n = 0;
    if (clip_encode(&L->p->tokenizer, prompt, NULL, 0, &n) != DL_OK) dl_die(NULL);
    int *ids = malloc((size_t)(n + 1) * sizeof *ids);
    if (!ids || clip_encode(&L->p->tokenizer, prompt, ids, n, &n) != DL_OK) dl_die(NULL);
    size_t len = 0;
    printf("tokens (%d + BOS/EOS):", n);
    for (int i = 0; i < n; i++) {
        char piece[128], item[160];
        clip_token_text(&L->p->tokenizer, ids[i], piece, sizeof piece);
        snprintf(item, sizeof item, "%s%s(%d)", i == CLIP_MAX_TOKENS - 2 ? " | CUT:" : "", piece, ids[i]);
        printf(" %s", item);
        if (len + strlen(item) + 2 < sizeof L->tokens_line) len += (size_t)sprintf(L->tokens_line + len, "%s ", item);
    }
    printf("\n");
    if (n > CLIP_MAX_TOKENS - 2) printf("the 77-token limit cuts %d token(s) (after CUT:)\n", n - (CLIP_MAX_TOKENS - 2));
    free(ids);
}

/* ---- pictures ----------------------------------------------------------- */

static dl_image preview(const lesson *L, const dl_tensor *lat, int size)
{
    dl_image small, big;
    if (sd_preview_image(&L->map, lat, 0, &small) != DL_OK) dl_die(NULL);
    int zoom = size / small.w > 1 ? size / small.w : 1;
    if (dl_image_scale_nearest(&big, &small, zoom) != DL_OK) dl_die(NULL);
    dl_image_free(&small);
    return big;
}

/* rows: x_t and predicted x0 (linear previews) at SNAPS steps of the run */
static void save_strip(lesson *L, const char *path)
{
    if (!L->n_snaps) return;
    static char col_text[SNAPS][32];
    const char *cols[SNAPS], *rows[2] = {"x_t", "x0 pred"};
    int size = (int)L->snap_x[0].shape[3] < 128 ? 128 : (int)L->snap_x[0].shape[3];
    for (int k = 0; k < L->n_snaps; k++) { snprintf(col_text[k], sizeof col_text[k], "step %d", L->snap_call[k]); cols[k] = col_text[k]; }
    char title[160];
    snprintf(title, sizeof title, "latents and predicted x0 on the way (%s)",
             L->fitted ? "linear preview fitted to the final image" : "SD's linear latent->RGB preview");
    dl_grid g = { .rows = 2, .cols = L->n_snaps, .tile_w = size, .tile_h = size, .pad = 4, .text_scale = 1,
                  .title = title, .row_labels = rows, .col_labels = cols };
    dl_image canvas;
    if (dl_grid_create(&canvas, &g) != DL_OK) dl_die(NULL);
    for (int k = 0; k < L->n_snaps; k++)
        for (int r = 0; r < 2; r++) {
            dl_image tile = preview(L, r ? &L->snap_x0[k] : &L->snap_x[k], size);
            dl_grid_place(&canvas, &g, r, k, &tile);
            dl_image_free(&tile);
        }
    if (dl_image_save_png(&canvas, path) != DL_OK) dl_die(NULL);
    printf("wrote %s (%dx%d)\n", path, canvas.w, canvas.h);
    dl_image_free(&canvas);
}

/* the window: prompt, tokens, x_t / x0 preview / last VAE decode, status line */
static void draw_frame(lesson *L, const sd_step_info *info, const dl_image *final)
{
    const int P = 256, W = 3 * P + 4 * 12, H = P + 150;
    dl_image f;
    if (dl_image_alloc(&f, W, H, 3) != DL_OK) dl_die(NULL);
    dl_image_fill(&f, 24, 24, 28);
    char line[700];
    snprintf(line, sizeof line, "prompt: %.110s", L->o->prompt);
    dl_image_draw_text(&f, 12, 8, line, 240, 240, 240, 1);
    snprintf(line, sizeof line, "negative: %.105s", L->o->negative_prompt);
    dl_image_draw_text(&f, 12, 22, line, 180, 180, 180, 1);
    snprintf(line, sizeof line, "tokens: %.125s", L->tokens_line);
    dl_image_draw_text(&f, 12, 36, line, 150, 200, 150, 1);
    const char *labels[3] = {"latents x_t (preview)", "predicted x0 (preview)", final ? "final image (VAE)" : "predicted x0 (VAE)"};
    for (int k = 0; k < 3; k++) {
        int x = 12 + k * (P + 12), y = 70;
        dl_image_draw_text(&f, x, y - 14, labels[k], 220, 220, 220, 1);
        dl_image_draw_rect(&f, x - 1, y - 1, P + 2, P + 2, 1, 80, 80, 80);
        dl_image tile = {0}, scaled;
        if (k < 2 && info) tile = preview(L, k ? info->x0 : info->latents, P);
        const dl_image *src = k < 2 ? &tile : final ? final : L->decoded.px ? &L->decoded : NULL;
        if (src && src->px) {
            if (dl_image_resize(&scaled, src, P, P) != DL_OK) dl_die(NULL);
            dl_image_blit(&f, &scaled, x, y);
            dl_image_free(&scaled);
        }
        dl_image_free(&tile);
    }
    if (info) {
        double per = info->elapsed_seconds / info->call;
        snprintf(line, sizeof line, "step %d/%d   t = %g   %.2f s/step   ETA %.0f s%s%s", info->call, info->calls,
                 (double)info->timestep, per, per * (info->calls - info->call), L->paused ? "   PAUSED" : "",
                 final ? "   done" : "");
        dl_image_draw_text(&f, 12, H - 44, line, 255, 220, 120, 2);
    }
    dl_image_draw_text(&f, 12, H - 16, "space: pause/resume   right: one step   s: screenshot   q: quit", 140, 140, 140, 1);
    viz_present(L->win, &f);
    dl_image_free(&f);
    L->frames++;
    if (dl_app_frame_limit(L->app, L->win, L->frames)) L->quit = 1;   /* scripted run: keep what was shown */
}

/* keys; returns 1 when a single step was asked for */
static int handle_events(lesson *L, const sd_step_info *info, const dl_image *final)
{
    viz_event ev;
    int step = 0;
    while (viz_poll(L->win, &ev)) {
        if (ev.type == VIZ_QUIT || (ev.type == VIZ_KEY && (ev.key == 'q' || ev.key == VIZ_KEY_ESCAPE))) L->quit = 1;
        else if (ev.type == VIZ_KEY && ev.key == ' ') L->paused = !L->paused;
        else if (ev.type == VIZ_KEY && ev.key == VIZ_KEY_RIGHT) { L->paused = 1; step = 1; }
        else if (ev.type == VIZ_KEY && ev.key == 's') {
            char name[64];
            dl_image shot;
            snprintf(name, sizeof name, "07_screenshot_%03d.png", ++L->shots);
            if (viz_read_window(L->win, &shot) == DL_OK) { dl_app_save(L->app, name, &shot); dl_image_free(&shot); }
        }
        if (ev.type == VIZ_KEY) draw_frame(L, info, final);
    }
    return step;
}

/* ---- the per-step callback ------------------------------------------------ */

static int on_step(void *ctx, const sd_step_info *info)
{
    lesson *L = ctx;
    double per = info->elapsed_seconds / info->call;
    printf("step %d/%d  t=%-6g %6.2f s/step  ETA %.1f s\n", info->call, info->calls, (double)info->timestep, per,
           per * (info->calls - info->call));
    fflush(stdout);
    /* keep SNAPS evenly spread steps for the strip */
    const int n = info->calls < SNAPS ? info->calls : SNAPS;
    const int next = n == 1 ? 1 : 1 + (int)((long)L->n_snaps * (info->calls - 1) / (n - 1));
    if (L->n_snaps < n && info->call == next) {
        int k = L->n_snaps++;
        if (dl_tensor_alloc(&L->snap_x[k], 4, info->latents->shape) != DL_OK || dl_tensor_copy(&L->snap_x[k], info->latents) != DL_OK ||
            dl_tensor_alloc(&L->snap_x0[k], 4, info->x0->shape) != DL_OK || dl_tensor_copy(&L->snap_x0[k], info->x0) != DL_OK)
            dl_die(NULL);
        L->snap_call[k] = info->call;
    }
    if (info->x0_decoded) {
        dl_image_free(&L->decoded);
        if (sd_image_from_decoded(info->x0_decoded, 0, &L->decoded) != DL_OK) dl_die(NULL);
        if (!L->fitted && L->p->vae.cfg.block_out_channels[L->p->vae.cfg.levels - 1] != 512) {
            /* not SD's VAE: the fixed map means nothing, fit one to this decode */
            if (sd_preview_fit(&L->map, info->x0, info->x0_decoded) == DL_OK) L->fitted = 1;
        }
    }
    if (!L->win) return 0;
    draw_frame(L, info, NULL);
    while (!L->quit) {
        if (handle_events(L, info, NULL)) break;   /* one step */
        if (!L->paused) break;
        viz_wait(L->win, 30);
    }
    return L->quit;
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    dl_app app;
    dl_app_init(&app, "07_txt2img", USAGE);
    sd_run_opts o = sd_run_opts_default();
    sd_load_opts lo = {0};
    const char *model = NULL, *out = "out.png", *init_path = NULL, *save_path = NULL, *sched = "dpmpp_2m";
    int threads = 0, preview_every = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--out")) out = dl_arg_str(&app, argc, argv, &i);   /* a file here, not a folder */
        else if (dl_app_common_arg(&app, argc, argv, &i)) continue;
        else if (!strcmp(a, "--model")) model = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--prompt")) o.prompt = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--negative-prompt")) {           /* may be "" */
            if (i + 1 >= argc) dl_app_bad_arg(&app, "option --negative-prompt needs a value");
            o.negative_prompt = argv[++i];
        }
        else if (!strcmp(a, "--steps")) o.steps = (int)dl_arg_int(&app, argc, argv, &i, 1, 1000);
        else if (!strcmp(a, "--guidance")) o.guidance = parse_float(&app, argc, argv, &i, 0.0f, 100.0f);
        else if (!strcmp(a, "--guidance-rescale")) o.guidance_rescale = parse_float(&app, argc, argv, &i, 0.0f, 1.0f);
        else if (!strcmp(a, "--scheduler")) sched = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(a, "--width")) o.width = (int)dl_arg_int(&app, argc, argv, &i, 8, 4096);
        else if (!strcmp(a, "--height")) o.height = (int)dl_arg_int(&app, argc, argv, &i, 8, 4096);
        else if (!strcmp(a, "--init-latents")) init_path = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--save-latents")) save_path = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--threads")) threads = (int)dl_arg_int(&app, argc, argv, &i, 1, 1024);
        else if (!strcmp(a, "--tokenizer")) lo.tokenizer_dir = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--config")) lo.config_dir = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--keep-weights")) lo.keep_weights = 1;
        else if (!strcmp(a, "--prediction-type")) lo.prediction_type = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--preview-every")) preview_every = (int)dl_arg_int(&app, argc, argv, &i, 0, 1000);
        else dl_app_bad_arg(&app, "unknown option '%s'", a);
    }
    if (!model) dl_app_bad_arg(&app, "--model PATH is required (a diffusers folder or a .safetensors checkpoint)");
    if (!o.prompt) dl_app_bad_arg(&app, "--prompt TEXT is required");
    if (dl_sampler_kind_from_name(sched, &o.scheduler) != DL_OK) dl_app_bad_arg(&app, "%s", dl_error_message());
    if (threads) dl_set_threads(threads);
    static char out_dir[4096];                /* screenshots go next to the PNG */
    snprintf(out_dir, sizeof out_dir, "%s", out);
    char *slash = strrchr(out_dir, '/');
    if (slash) { *slash = 0; app.out_dir = out_dir[0] ? out_dir : "/"; } else app.out_dir = ".";
    if (dl_make_dirs(app.out_dir) != DL_OK)    /* find out now, not after the whole run */
        dl_die("--out: give a PNG path in a folder you can write to");
    int headless = dl_app_choose_mode(&app);

    sd_pipeline p;
    if (sd_pipeline_load(&p, model, &lo) != DL_OK)
        dl_die("--model: a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/) or a .safetensors "
               "checkpoint (--tokenizer DIR if no tokenizer/ folder is next to it; --config DIR with the diffusers "
               "configs if it is not shaped like SD 1.x/2.x)");
    const int f = p.downscale;
    if (o.width % f || o.height % f || o.width < 8 * f || o.height < 8 * f)
        dl_app_bad_arg(&app, "--width %d --height %d: both must be multiples of %d (this VAE's downscale factor) and at least %d",
                       o.width, o.height, f, 8 * f);
    printf("model %s (%s): latents %d x %d x %d for %dx%d, context %d, scheduler %s from %s\n", p.name,
           p.weights.layout == SD_LAYOUT_DIFFUSERS ? "diffusers folder" : "single file", p.latent_channels,
           o.height / f, o.width / f, o.width, o.height, p.context_dim, sched, p.scheduler_source);

    dl_tensor init = {0};
    if (init_path) {
        dl_safetensors st;
        if (dl_st_open(&st, init_path) != DL_OK || dl_st_load_tensor(&st, "init_latents", &init) != DL_OK)
            dl_die("--init-latents wants a .safetensors file with a tensor init_latents");
        dl_st_close(&st);
        if (dl_check_shape(&init, "--init-latents", "init_latents", 4, DL_SHAPE(1, p.latent_channels, o.height / f, o.width / f)) != DL_OK)
            dl_die("the latents must match --width/--height divided by the VAE's factor");
        o.init_latents = &init;
    }

    lesson L;
    memset(&L, 0, sizeof L);
    L.app = &app;
    L.p = &p;
    L.o = &o;
    L.map = sd_preview_map_sd();
    show_tokens(&L, o.prompt);
    o.release_text_encoder = 1;               /* the encoder's memory goes back before the UNet runs */
    if (preview_every < 0) preview_every = headless ? 0 : o.width * o.height <= 256 * 256 ? 1 : 5;
    o.decode_every = preview_every;
    if (!headless) {
        char title[160];
        snprintf(title, sizeof title, "difflab 07 - %s", o.prompt);
        if (!(L.win = viz_open(title, 3 * 256 + 48, 256 + 150, 1))) dl_die("run with --headless");
    }

    sd_run_result r;
    if (sd_pipeline_run(&p, &o, on_step, &L, &r) != DL_OK) dl_die(NULL);
    printf("text encoder %.2f s, %d UNet calls %.2f s (%.2f s each), VAE decode %.2f s\n", r.seconds_text, r.calls,
           r.seconds_sampling, r.seconds_sampling / (r.calls ? r.calls : 1), r.seconds_decode);

    if (!r.stopped) {
        dl_image img;
        char params[4096], path[4096];
        if (sd_image_from_decoded(&r.image, 0, &img) != DL_OK) dl_die(NULL);
        sd_parameters_text(params, sizeof params, &o, p.name);
        if (dl_png_save_with_text(&img, out, "parameters", params) != DL_OK) dl_die("check --out");
        printf("wrote %s (%dx%d)\n", out, img.w, img.h);
        if (save_path) {
            dl_st_writer w;
            if (dl_st_writer_init(&w) != DL_OK || dl_st_writer_add(&w, "latents_final", &r.latents) != DL_OK ||
                dl_st_writer_set_metadata(&w, "parameters", params) != DL_OK || dl_st_writer_save(&w, save_path) != DL_OK)
                dl_die("check --save-latents");
            dl_st_writer_free(&w);
            printf("wrote %s (latents_final)\n", save_path);
        }
        if (!L.fitted && p.vae.cfg.block_out_channels[p.vae.cfg.levels - 1] != 512 && sd_preview_fit(&L.map, &r.latents, &r.image) == DL_OK)
            L.fitted = 1;
        size_t n = strlen(out);
        snprintf(path, sizeof path, "%.*s_steps.png", (int)(n > 4 && !strcmp(out + n - 4, ".png") ? n - 4 : n), out);
        save_strip(&L, path);
        if (L.win) {   /* show the result until q */
            sd_step_info last = {r.calls, r.calls, 0, &r.latents, &L.snap_x0[L.n_snaps - 1], NULL, NULL, 0, r.seconds_sampling};
            draw_frame(&L, &last, &img);
            while (!L.quit) { handle_events(&L, &last, &img); viz_wait(L.win, 30); }
        }
        dl_image_free(&img);
    } else {
        printf("stopped after %d of the steps: no image written\n", r.calls);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak RSS %.0f MB\n", ru.ru_maxrss / 1024.0);

    if (L.win) viz_close(L.win);
    for (int k = 0; k < L.n_snaps; k++) { dl_tensor_free(&L.snap_x[k]); dl_tensor_free(&L.snap_x0[k]); }
    dl_image_free(&L.decoded);
    dl_tensor_free(&init);
    sd_run_result_free(&r);
    sd_pipeline_free(&p);
    return 0;
}
