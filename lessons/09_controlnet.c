/* 09_controlnet.c - Lesson 09: ControlNet with Canny edges. Steer Stable
 * Diffusion with a picture's outline instead of words alone.
 *
 *   picture --Canny (core/canny.c: Sobel, |gx|+|gy|, non-maximum
 *             suppression, hysteresis low/high)--> edges 0/255, x3 channels
 *   per UNet call: ControlNet(latents, t, prompt, edges / 255)
 *       -> 12 down residuals + 1 mid residual (SD 1.5), times --control-scale,
 *          added to the UNet's skip connections (core/sd_controlnet_pipe.c)
 *   the usual sampler loop and VAE decoder (lesson 07)
 *
 * The Canny part always works, with no model at all: the edges of the
 * picture and the stages that make them. The thresholds can be changed in
 * the window: only the last stage (hysteresis) is rerun, so the edges follow
 * the keys at once. See docs/09_controlnet.md.
 *
 *   bin/09_controlnet --image data/images/chelsea.png --edges-only
 *   bin/09_controlnet --model models/sd15 --controlnet models/controlnet-canny --prompt "a tiger"
 *   bin/09_controlnet --model tests/fixtures/tiny-sd --controlnet tests/fixtures/tiny-controlnet --prompt "a cat"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/canny.h"
#include "../core/png_text.h"
#include "../core/safetensors.h"
#include "../core/sd_controlnet_pipe.h"
#include "../viz/app.h"
#include "../viz/viz.h"

static const char *USAGE =
    "Lesson 09: ControlNet (Canny edges) on Stable Diffusion (matches diffusers' StableDiffusionControlNetPipeline).\n"
    "  --image IMG             the picture whose edges steer the image (default data/images/chelsea.png)\n"
    "  --low T --high T        Canny hysteresis thresholds (default 100 200, as cv2.Canny(img, 100, 200))\n"
    "  --grey                  Canny on the grey picture (default: on the RGB channels, as the diffusers docs)\n"
    "  --edges-only            only the edges (also automatic without --model / --controlnet)\n"
    "  --model PATH            Stable Diffusion: a diffusers folder or a single .safetensors checkpoint\n"
    "  --controlnet PATH       a ControlNet folder (config.json + diffusion_pytorch_model.safetensors)\n"
    "  --prompt TEXT           what to draw (required with a model)\n"
    "  --control-scale S       how strongly the edges steer (default 1.0; 0 = plain SD)\n"
    "  --negative-prompt TEXT, --steps N (25), --guidance G (7.5), --scheduler NAME (dpmpp_2m), --seed S (42)\n"
    "  --width W --height H    resize the picture (multiples of the VAE's factor); default: its own size,\n"
    "                          shrunk to at most 64 latent pixels a side\n"
    "  --out FILE              the PNG (default out.png); edges to FILE_edges.png, Canny stages to FILE_canny.png\n"
    "  --init-latents F, --save-latents F, --threads N, --headless   as lesson 07\n"
    "live window keys: left/right: low -/+ 10, down/up: high -/+ 10 (shift: 1), g: generate again,\n"
    "                  s: screenshot, q/Esc: quit\n";

static const char *WHAT_TO_DOWNLOAD =
    "For the image, this lesson needs two sets of weights:\n"
    "  1. Stable Diffusion 1.5: huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --include \"*.json\" \"*.txt\" \\\n"
    "       \"text_encoder/model.safetensors\" \"unet/diffusion_pytorch_model.safetensors\" \"vae/diffusion_pytorch_model.safetensors\" \\\n"
    "       --local-dir models/sd15            (or the single file v1-5-pruned-emaonly.safetensors)\n"
    "  2. the Canny ControlNet: huggingface-cli download lllyasviel/sd-controlnet-canny config.json \\\n"
    "       diffusion_pytorch_model.safetensors --local-dir models/controlnet-canny\n"
    "  then: bin/09_controlnet --model models/sd15 --controlnet models/controlnet-canny --prompt \"...\"\n"
    "  The mechanics on the tiny test models (RANDOM weights: the pictures mean nothing):\n"
    "    bin/09_controlnet --model tests/fixtures/tiny-sd --controlnet tests/fixtures/tiny-controlnet --prompt \"a cat\"\n";

#define P 256   /* window tile size */

typedef struct {
    dl_app *app;
    dl_image pic;                  /* the picture at the generation size      */
    int grey;
    canny_gradients g;             /* everything that does not need thresholds */
    float low, high;
    uint8_t *edges;                /* [h][w] 0/255                            */
    dl_image control;              /* edges in three channels: the ControlNet's input */
    dl_image output;
    char status[200];
    /* the model (NULL: edges only) */
    sd_pipeline *p;
    sd_controlnet_plugin *cn;
    sd_run_opts *o;
    viz_window *win;
    int quit, again, running, shots;
    int64_t frames;
} lesson;

static float parse_float(dl_app *app, int argc, char **argv, int *i, float lo, float hi)
{
    const char *opt = argv[*i], *s = dl_arg_str(app, argc, argv, i);
    char *end;
    float v = strtof(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi)) dl_app_bad_arg(app, "%s wants a number in [%g, %g], got '%s'", opt, lo, hi, s);
    return v;
}

/* ---- the edges: only hysteresis depends on the thresholds ------------------- */

static void update_edges(lesson *L)
{
    const int w = L->pic.w, h = L->pic.h;
    if (canny_hysteresis(L->g.thin, w, h, L->low, L->high, L->edges) != DL_OK) dl_die(NULL);
    int n = 0;
    for (int i = 0; i < w * h; i++) {
        for (int c = 0; c < 3; c++) L->control.px[i * 3 + c] = L->edges[i];   /* stacked, as the pipelines do */
        n += L->edges[i] != 0;
    }
    snprintf(L->status, sizeof L->status, "Canny low %g high %g: %d edge pixels (%.1f%%)", (double)L->low,
             (double)L->high, n, 100.0 * n / (w * h));
}

/* int32 [h][w] -> heat map picture */
static dl_image heat(const int32_t *v, int w, int h, float vmax)
{
    float *f = malloc((size_t)w * h * sizeof *f);
    dl_image img;
    if (!f) dl_die("out of memory");
    for (int i = 0; i < w * h; i++) f[i] = (float)v[i];
    if (dl_heatmap_image(&img, f, w, h, vmax, 1) != DL_OK) dl_die(NULL);
    free(f);
    return img;
}

/* The stages (row 1) and other thresholds (row 2), as one picture. */
static void save_stages(lesson *L, const char *path)
{
    const int w = L->pic.w, h = L->pic.h;
    static char lbl[8][48];
    const float pairs[4][2] = {{50, 100}, {100, 200}, {150, 300}, {200, 400}};
    const char *rows[2] = {"stages", "low/high"};
    int tw = w > 256 ? 256 : w < 96 ? 96 : w, th = tw * h / w;
    dl_grid gr = {.rows = 2, .cols = 4, .tile_w = tw, .tile_h = th, .pad = 6, .text_scale = 1, .row_labels = rows,
                  .title = "Canny: picture, |gx|+|gy|, after non-maximum suppression, edges"};
    dl_image canvas, tiles[8];
    tiles[0] = L->pic;
    tiles[1] = heat(L->g.mag, w, h, 2.0f * L->high);
    tiles[2] = heat(L->g.thin, w, h, 2.0f * L->high);
    if (dl_image_alloc(&tiles[3], w, h, 1) != DL_OK) dl_die(NULL);
    memcpy(tiles[3].px, L->edges, (size_t)w * h);
    for (int k = 0; k < 4; k++) {
        if (dl_image_alloc(&tiles[4 + k], w, h, 1) != DL_OK ||
            canny_hysteresis(L->g.thin, w, h, pairs[k][0], pairs[k][1], tiles[4 + k].px) != DL_OK)
            dl_die(NULL);
        snprintf(lbl[4 + k], sizeof lbl[4 + k], "%g / %g", (double)pairs[k][0], (double)pairs[k][1]);
    }
    snprintf(lbl[0], sizeof lbl[0], "picture");
    snprintf(lbl[1], sizeof lbl[1], "|gx|+|gy|");
    snprintf(lbl[2], sizeof lbl[2], "thin (NMS)");
    snprintf(lbl[3], sizeof lbl[3], "edges %g / %g", (double)L->low, (double)L->high);
    if (dl_grid_create(&canvas, &gr) != DL_OK) dl_die(NULL);
    for (int k = 0; k < 8; k++) {
        dl_image t;
        if (dl_image_resize(&t, &tiles[k], tw, th) != DL_OK) dl_die(NULL);
        dl_grid_place(&canvas, &gr, k / 4, k % 4, &t);
        dl_image_draw_text(&canvas, gr.origin_x + (k % 4) * (tw + gr.pad), gr.origin_y + (k / 4) * (th + gr.pad) + th - 10,
                           lbl[k], 255, 255, 0, 1);
        dl_image_free(&t);
        if (k) dl_image_free(&tiles[k]);
    }
    if (dl_image_save_png(&canvas, path) != DL_OK) dl_die(NULL);
    printf("wrote %s (%dx%d)\n", path, canvas.w, canvas.h);
    dl_image_free(&canvas);
}

/* ---- the window: original | edges | output ----------------------------------- */

static void draw_frame(lesson *L, const sd_step_info *info)
{
    const int th = P * L->pic.h / L->pic.w, W = 3 * P + 4 * 12, H = th + 110;
    dl_image f;
    if (dl_image_alloc(&f, W, H, 3) != DL_OK) dl_die(NULL);
    dl_image_fill(&f, 24, 24, 28);
    const char *names[3] = {"original", "Canny edges (the ControlNet's input)", L->p ? "output" : "output: no model loaded"};
    const dl_image *src[3] = {&L->pic, &L->control, L->output.px ? &L->output : NULL};
    dl_image pv = {0};            /* while generating: the predicted x0, SD's linear latent -> RGB preview */
    sd_preview_map map = sd_preview_map_sd();
    if (info && sd_preview_image(&map, info->x0, 0, &pv) == DL_OK) src[2] = &pv;
    for (int k = 0; k < 3; k++) {
        int x = 12 + k * (P + 12), y = 28;
        dl_image_draw_text(&f, x, 10, names[k], 220, 220, 220, 1);
        dl_image_draw_rect(&f, x - 1, y - 1, P + 2, th + 2, 1, 80, 80, 80);
        if (!src[k]) continue;
        dl_image t;
        if (dl_image_resize(&t, src[k], P, th) != DL_OK) dl_die(NULL);
        dl_image_blit(&f, &t, x, y);
        dl_image_free(&t);
    }
    dl_image_free(&pv);
    if (!L->p) dl_image_draw_text(&f, 2 * (P + 12) + 20, 40, "edges only: see the terminal\nfor the weights to download", 200, 160, 120, 1);
    dl_image_draw_text(&f, 12, th + 40, L->status, 255, 220, 120, 2);
    char line[160] = "";
    if (info) snprintf(line, sizeof line, "generating: step %d/%d  t = %g", info->call, info->calls, (double)info->timestep);
    dl_image_draw_text(&f, 12, th + 66, line, 180, 220, 180, 1);
    dl_image_draw_text(&f, 12, H - 16, "left/right: low   down/up: high (shift: 1)   g: generate   s: screenshot   q: quit", 140, 140, 140, 1);
    viz_present(L->win, &f);
    dl_image_free(&f);
    if (dl_app_frame_limit(L->app, L->win, ++L->frames)) L->quit = 1;   /* scripted run: keep what was shown */
}

static void handle_events(lesson *L, const sd_step_info *info)
{
    viz_event ev;
    while (viz_poll(L->win, &ev)) {
        if (ev.type == VIZ_QUIT || (ev.type == VIZ_KEY && (ev.key == 'q' || ev.key == VIZ_KEY_ESCAPE))) { L->quit = 1; return; }
        if (ev.type != VIZ_KEY) continue;
        float d = ev.shift ? 1.0f : 10.0f;
        if (ev.key == VIZ_KEY_LEFT) L->low = L->low - d < 0 ? 0 : L->low - d;
        else if (ev.key == VIZ_KEY_RIGHT) L->low = L->low + d > L->high ? L->high : L->low + d;
        else if (ev.key == VIZ_KEY_DOWN) L->high = L->high - d < L->low ? L->low : L->high - d;
        else if (ev.key == VIZ_KEY_UP) L->high += d;
        else if (ev.key == 'g' || ev.key == VIZ_KEY_ENTER) {
            if (L->p) L->again = 1;
            else printf("no model loaded: nothing to generate.\n%s", WHAT_TO_DOWNLOAD);
        } else if (ev.key == 's') {
            char name[64];
            dl_image shot;
            snprintf(name, sizeof name, "09_screenshot_%03d.png", ++L->shots);
            if (viz_read_window(L->win, &shot) == DL_OK) { dl_app_save(L->app, name, &shot); dl_image_free(&shot); }
        }
        update_edges(L);        /* the last Canny stage only: immediate */
        draw_frame(L, info);
    }
}

/* ---- generation ------------------------------------------------------------- */

static int on_step(void *ctx, const sd_step_info *info)
{
    lesson *L = ctx;
    printf("step %d/%d  t=%-6g %6.2f s/step\n", info->call, info->calls, (double)info->timestep,
           info->elapsed_seconds / info->call);
    fflush(stdout);
    if (!L->win) return 0;
    draw_frame(L, info);
    handle_events(L, info);
    return L->quit;
}

static void generate(lesson *L, const char *out, const char *save_path, const char *cn_name, float scale)
{
    if (sd_controlnet_plugin_set_image(L->cn, L->control.px, L->control.w, L->control.h, scale) != DL_OK) dl_die(NULL);
    sd_run_result r;
    if (sd_pipeline_run(L->p, L->o, on_step, L, &r) != DL_OK) dl_die(NULL);
    printf("%d UNet + ControlNet calls, %.1f s\n", r.calls, r.seconds_sampling);
    if (!r.stopped) {
        dl_image_free(&L->output);
        if (sd_image_from_decoded(&r.image, 0, &L->output) != DL_OK) dl_die(NULL);
        char params[4096];
        int n = sd_parameters_text(params, sizeof params, L->o, L->p->name);
        snprintf(params + n, sizeof params - (size_t)n, ", ControlNet: %s, Control scale: %g, Canny: %g/%g%s", cn_name,
                 (double)scale, (double)L->low, (double)L->high, L->grey ? " grey" : "");
        if (dl_png_save_with_text(&L->output, out, "parameters", params) != DL_OK) dl_die("check --out");
        printf("wrote %s (%dx%d)\n", out, L->output.w, L->output.h);
        dl_st_writer w;
        if (save_path && (dl_st_writer_init(&w) != DL_OK || dl_st_writer_add(&w, "latents_final", &r.latents) != DL_OK ||
                          dl_st_writer_save(&w, save_path) != DL_OK))
            dl_die("check --save-latents");
        if (save_path) { dl_st_writer_free(&w); printf("wrote %s (latents_final)\n", save_path); }
    }
    sd_run_result_free(&r);
}

/* ---- main ------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    dl_app app;
    dl_app_init(&app, "09_controlnet", USAGE);
    sd_run_opts o = sd_run_opts_default();
    const char *model = NULL, *cn_path = NULL, *image_path = "data/images/chelsea.png", *out = "out.png";
    const char *sched = "dpmpp_2m", *init_path = NULL, *save_path = NULL;
    float low = 100, high = 200, scale = 1.0f;
    int grey = 0, edges_only = 0, threads = 0;
    o.width = o.height = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--out")) out = dl_arg_str(&app, argc, argv, &i);   /* a file here, not a folder */
        else if (dl_app_common_arg(&app, argc, argv, &i)) continue;
        else if (!strcmp(a, "--image")) image_path = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--low")) low = parse_float(&app, argc, argv, &i, 0, 100000);
        else if (!strcmp(a, "--high")) high = parse_float(&app, argc, argv, &i, 0, 100000);
        else if (!strcmp(a, "--grey")) grey = 1;
        else if (!strcmp(a, "--edges-only")) edges_only = 1;
        else if (!strcmp(a, "--model")) model = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--controlnet")) cn_path = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--prompt")) o.prompt = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--control-scale")) scale = parse_float(&app, argc, argv, &i, 0, 10);
        else if (!strcmp(a, "--negative-prompt")) {
            if (i + 1 >= argc) dl_app_bad_arg(&app, "option --negative-prompt needs a value");
            o.negative_prompt = argv[++i];
        }
        else if (!strcmp(a, "--steps")) o.steps = (int)dl_arg_int(&app, argc, argv, &i, 1, 1000);
        else if (!strcmp(a, "--guidance")) o.guidance = parse_float(&app, argc, argv, &i, 0, 100);
        else if (!strcmp(a, "--scheduler")) sched = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(a, "--width")) o.width = (int)dl_arg_int(&app, argc, argv, &i, 1, 4096);
        else if (!strcmp(a, "--height")) o.height = (int)dl_arg_int(&app, argc, argv, &i, 1, 4096);
        else if (!strcmp(a, "--init-latents")) init_path = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--save-latents")) save_path = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--threads")) threads = (int)dl_arg_int(&app, argc, argv, &i, 1, 1024);
        else dl_app_bad_arg(&app, "unknown option '%s'", a);
    }
    if (low > high) dl_app_bad_arg(&app, "--low %g is above --high %g (Canny needs low <= high)", (double)low, (double)high);
    if (dl_sampler_kind_from_name(sched, &o.scheduler) != DL_OK) dl_app_bad_arg(&app, "%s", dl_error_message());
    if (!edges_only && (!model || !cn_path)) {
        printf("%s given: showing the Canny edges only.\n%s", !model && !cn_path ? "no --model and no --controlnet"
               : !model ? "no --model" : "no --controlnet", WHAT_TO_DOWNLOAD);
        edges_only = 1;
    }
    if (!edges_only && !o.prompt) dl_app_bad_arg(&app, "--prompt TEXT is required to generate (or --edges-only)");
    if (threads) dl_set_threads(threads);
    static char out_dir[4096];                /* screenshots go next to the PNG */
    snprintf(out_dir, sizeof out_dir, "%s", out);
    char *slash = strrchr(out_dir, '/');
    if (slash) { *slash = 0; app.out_dir = out_dir[0] ? out_dir : "/"; } else app.out_dir = ".";
    int headless = dl_app_choose_mode(&app);
    if (dl_make_dirs(app.out_dir) != DL_OK) dl_die("check --out");

    /* 1. the models (if any): they decide the picture's size (multiples of f) */
    lesson L;
    memset(&L, 0, sizeof L);
    L.app = &app;
    L.low = low, L.high = high, L.grey = grey;
    sd_pipeline p;
    sd_controlnet_plugin cn;
    int f = 8;                                 /* SD's factor, for the edges-only size */
    if (!edges_only) {
        if (sd_pipeline_load(&p, model, NULL) != DL_OK) dl_die("--model: a diffusers folder or a .safetensors checkpoint");
        if (sd_controlnet_plugin_load(&cn, cn_path) != DL_OK) dl_die("--controlnet: a ControlNet folder (config.json + weights)");
        f = p.downscale;
        L.p = &p, L.cn = &cn, L.o = &o;
        if (p.context_dim < 768)
            printf("NOTE: %s is a tiny test model with RANDOM weights: the picture is not meaningful, only the mechanics "
                   "(edges -> ControlNet residuals -> UNet skips) are real.\n", p.name);
    }
    dl_image raw;
    if (dl_image_load(&raw, image_path, 3) != DL_OK) dl_die("--image: a PNG/JPEG picture");
    sd_fit_size(raw.w, raw.h, f, 64, &o.width, &o.height);   /* its own aspect, at most 64 latent pixels a side */
    if (o.width % f || o.height % f || o.width < 8 * f || o.height < 8 * f)
        dl_app_bad_arg(&app, "--width %d --height %d: both must be multiples of %d (the VAE's downscale factor) and at least %d",
                       o.width, o.height, f, 8 * f);
    if (dl_image_resize(&L.pic, &raw, o.width, o.height) != DL_OK) dl_die(NULL);
    printf("picture %s %dx%d -> %dx%d\n", image_path, raw.w, raw.h, o.width, o.height);
    dl_image_free(&raw);

    /* 2. Canny: stages 1-4 once (grey?, Sobel, magnitude, non-maximum suppression), hysteresis per threshold */
    dl_image grey_img = {0};
    if (grey && dl_image_alloc(&grey_img, L.pic.w, L.pic.h, 1) == DL_OK)
        if (canny_rgb_to_grey(L.pic.px, L.pic.w, L.pic.h, grey_img.px) != DL_OK) dl_die(NULL);
    const dl_image *src = grey ? &grey_img : &L.pic;
    if (canny_prepare(&L.g, src->px, src->w, src->h, src->c) != DL_OK || dl_image_alloc(&L.control, L.pic.w, L.pic.h, 3) != DL_OK ||
        !(L.edges = malloc((size_t)L.pic.w * L.pic.h)))
        dl_die(NULL);
    update_edges(&L);
    printf("%s\n", L.status);
    char path[4096];
    size_t n = strlen(out);
    int stem = (int)(n > 4 && !strcmp(out + n - 4, ".png") ? n - 4 : n);
    snprintf(path, sizeof path, "%.*s_edges.png", stem, out);
    if (dl_image_save_png(&L.control, path) != DL_OK) dl_die(NULL);
    printf("wrote %s (%dx%d, the control image)\n", path, L.control.w, L.control.h);
    snprintf(path, sizeof path, "%.*s_canny.png", stem, out);
    save_stages(&L, path);

    /* 3. generation, steered by the edges */
    dl_tensor init = {0};
    if (L.p && init_path) {
        dl_safetensors st;
        if (dl_st_open(&st, init_path) != DL_OK || dl_st_load_tensor(&st, "init_latents", &init) != DL_OK)
            dl_die("--init-latents wants a .safetensors file with a tensor init_latents");
        dl_st_close(&st);
        o.init_latents = &init;
    }
    if (L.p) {
        o.release_text_encoder = 0;   /* "g" encodes the prompt again */
        sd_controlnet_plugin_attach(&cn, &o);
    }
    if (!headless) {
        char title[160];
        snprintf(title, sizeof title, "difflab 09 - ControlNet%s", L.p ? "" : " (edges only)");
        if (!(L.win = viz_open(title, 3 * P + 48, P * L.pic.h / L.pic.w + 110, 1))) dl_die("run with --headless");
        draw_frame(&L, NULL);
    }
    const char *cn_name = cn_path ? strrchr(cn_path, '/') ? strrchr(cn_path, '/') + 1 : cn_path : "";
    if (L.p && !L.quit) generate(&L, out, save_path, cn_name, scale);
    while (L.win && !L.quit) {            /* live: keys change the edges; g generates again */
        if (L.again && L.p) { L.again = 0; generate(&L, out, save_path, cn_name, scale); }
        if (L.win && !L.quit) draw_frame(&L, NULL);
        while (L.win && !L.quit && !L.again) { handle_events(&L, NULL); viz_wait(L.win, 30); }
    }
    if (L.win) viz_close(L.win);
    if (L.p) { sd_controlnet_plugin_free(&cn); sd_pipeline_free(&p); }
    canny_gradients_free(&L.g);
    free(L.edges);
    dl_tensor_free(&init);
    dl_image_free(&grey_img);
    dl_image_free(&L.control);
    dl_image_free(&L.output);
    dl_image_free(&L.pic);
    return 0;
}
