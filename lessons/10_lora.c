/* 10_lora.c - Lesson 10: LoRA, a low-rank change of the weights, and what
 * its scale does to a picture.
 *
 *   W' = W + s * (alpha / rank) * up @ down      up [out, rank], down [rank, in]
 *
 * for the attention, feed-forward and projection layers of the UNet (and the
 * text encoder's attention and MLP): a few MB instead of the 3.4 GB of a
 * fine-tuned model. The program loads one or more LoRA files (kohya/A1111 or
 * diffusers/PEFT names, core/sd_lora.c), prints what they change (modules,
 * rank, alpha, targets per part) and every key that matched nothing, then
 * renders the same seed at the LoRA scales 0, 0.25, 0.5, 0.75, 1.0 and 1.5:
 * scale 0 is the base model exactly, 1.0 the LoRA as trained.
 * See docs/10_lora.md.
 *
 *   bin/10_lora --model models/sd15 --lora models/loras/watercolor.safetensors --prompt "a cat"
 *   bin/10_lora --headless          (no models/: the tiny test model + tiny LoRA, random weights)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/png_text.h"
#include "../core/sd_lora.h"
#include "../core/sd_pipeline.h"
#include "../viz/app.h"
#include "../viz/viz.h"

static const char *USAGE =
    "Lesson 10: LoRA - low-rank weight updates and their scale (SD 1.x / 2.x, matching diffusers).\n"
    "  --model PATH            diffusers folder or .safetensors checkpoint (default: models/sd15 if present,\n"
    "                          else the tiny test model tests/fixtures/tiny-sd, whose weights are random)\n"
    "  --lora FILE[:scale]     a LoRA (.safetensors, kohya or diffusers/PEFT names); repeatable. The sweep\n"
    "                          multiplies every LoRA's own scale (default 1) by 0, 0.25, 0.5, 0.75, 1, 1.5\n"
    "  --prompt TEXT           (default \"a photo of a cat\")\n"
    "  --negative-prompt TEXT  (default empty)\n"
    "  --steps N --guidance G --scheduler NAME --seed S --width W --height H --threads N\n"
    "                          as bin/07_txt2img (default 25, 7.5, dpmpp_2m, 42, the model's native size)\n"
    "  --merge                 merge the LoRA into the weights for each scale (sd_lora_fuse) instead of\n"
    "                          applying it on the fly at every weight fetch\n"
    "  --tokenizer DIR --config DIR   for single-file checkpoints (see bin/07_txt2img --help)\n"
    "  --out DIR               PNGs: 10_lora_sweep.png and 10_lora_scale_<s>.png (default out)\n"
    "  --headless              no window\n"
    "live window keys: left/right or -/+: the big view's scale by 0.25 (-1 ... 2; rendered on demand),\n"
    "                  1-6: a scale of the sweep, s: screenshot, q/Esc: quit\n";

static const char *DOWNLOAD =
    "No Stable Diffusion model found (--model not given, models/sd15 absent). For real pictures:\n"
    "  1. SD 1.5 as a diffusers folder in models/sd15 (Hugging Face stable-diffusion-v1-5/stable-diffusion-v1-5:\n"
    "     huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir models/sd15), or the single\n"
    "     file v1-5-pruned-emaonly.safetensors (then --model models/v1-5-pruned-emaonly.safetensors --tokenizer DIR)\n"
    "  2. a LoRA trained for SD 1.5 into models/loras/: a kohya .safetensors (Civitai, type LoRA, base model SD 1.5)\n"
    "     or a diffusers pytorch_lora_weights.safetensors (Hugging Face); run with --lora models/loras/NAME.safetensors\n";

#define TINY_MODEL "tests/fixtures/tiny-sd"
#define TINY_LORA  "tests/fixtures/tiny-lora/tiny_lora_kohya.safetensors"
#define NSWEEP 6
static const float SWEEP[NSWEEP] = {0.0f, 0.25f, 0.5f, 0.75f, 1.0f, 1.5f};
#define SCALE_MIN  (-1.0f)
#define SCALE_STEP 0.25f
#define NSLOTS     13        /* -1, -0.75, ..., 2: every scale the big view can show */

typedef struct {
    dl_app *app;
    sd_pipeline *p;
    sd_lora_list *loras;
    float own[SD_LORA_MAX];        /* each LoRA's scale from FILE:scale    */
    sd_run_opts *o;
    int merge;
    dl_image img[NSLOTS];          /* rendered images, by slot             */
    viz_window *win;
    int big, quit, shots;
    char status[200];
} lesson;

static float slot_scale(int slot) { return SCALE_MIN + SCALE_STEP * (float)slot; }
static int scale_slot(float s) { return (int)((s - SCALE_MIN) / SCALE_STEP + 0.5f); }

/* ---- what the LoRA changes ------------------------------------------------- */

/* "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight" -> "attn1.to_q":
 * the part after the last numbered container ("...s.N", e.g. blocks.0, layers.3). */
static void layer_kind(const char *target, char *kind, size_t n)
{
    const char *start = target;
    for (const char *c = target; *c; c++)
        if (c > target && c[-1] == '.' && c[0] >= '0' && c[0] <= '9' && c - target >= 2 && c[-2] == 's') {
            const char *e = c;
            while (*e >= '0' && *e <= '9') e++;
            if (*e == '.') start = e + 1;
        }
    size_t len = strlen(start) < n ? strlen(start) : n - 1;
    memcpy(kind, start, len);
    kind[len] = 0;
    char *w = strstr(kind, ".weight");
    if (w && !w[7]) *w = 0;
}

static void describe(const sd_lora *l)
{
    printf("\nLoRA %s (%s names, scale %g): %d tensors -> %d modules, %d unmatched\n", l->path,
           sd_lora_format_names[l->format], (double)l->scale, l->n_keys, l->n_modules, l->n_unmatched);
    for (int part = 0; part < SD_PART_COUNT; part++) {
        int count = 0, rmin = 1 << 30, rmax = 0;
        float amin = 1e30f, amax = -1e30f;
        char kinds[40][64];
        int kcount[40], nk = 0;
        long long params = 0;
        for (int i = 0; i < l->n_modules; i++) {
            const sd_lora_module *m = &l->modules[i];
            if ((int)m->part != part) continue;
            count++;
            params += (long long)m->rank * (m->out + m->in);
            rmin = m->rank < rmin ? m->rank : rmin;  rmax = m->rank > rmax ? m->rank : rmax;
            amin = m->alpha < amin ? m->alpha : amin; amax = m->alpha > amax ? m->alpha : amax;
            char k[64];
            layer_kind(m->target, k, sizeof k);
            int j = 0;
            while (j < nk && strcmp(kinds[j], k)) j++;
            if (j == nk && nk < 40) { snprintf(kinds[nk], sizeof kinds[nk], "%.63s", k); kcount[nk++] = 0; }
            if (j < nk) kcount[j]++;
        }
        if (!count) continue;
        printf("  %-12s %3d modules, rank %d", sd_part_names[part], count, rmin);
        if (rmax != rmin) printf("..%d", rmax);
        printf(", alpha %g", (double)amin);
        if (amax != amin) printf("..%g", (double)amax);
        printf(" (alpha/rank %g), %lld LoRA parameters\n    targets:", (double)(amin / rmin), params);
        for (int j = 0; j < nk; j++) printf(" %s x%d", kinds[j], kcount[j]);
        printf("\n");
    }
    for (int k = 0; k < l->n_unmatched; k++)
        printf("  UNMATCHED %s: %s\n", l->unmatched[k].key, l->unmatched[k].reason);
    if (l->n_unmatched)
        printf("  %d key(s) change nothing in this model (a LoRA for another base model changes nothing at all)\n",
               l->n_unmatched);
}

/* ---- one picture per scale ------------------------------------------------------ */

static void draw_frame(lesson *L);

static int on_step(void *ctx, const sd_step_info *info)
{
    lesson *L = ctx;
    snprintf(L->status, sizeof L->status, "scale %.2f: step %d/%d", (double)slot_scale(L->big), info->call, info->calls);
    if (!L->win) return 0;
    viz_event ev;
    while (viz_poll(L->win, &ev))
        if (ev.type == VIZ_QUIT || (ev.type == VIZ_KEY && (ev.key == 'q' || ev.key == VIZ_KEY_ESCAPE))) L->quit = 1;
    draw_frame(L);
    return L->quit;
}

/* The image at sweep scale s: every LoRA at s times its own scale, same seed. */
static void render(lesson *L, int slot)
{
    if (L->img[slot].px || L->quit) return;
    const float s = slot_scale(slot);
    for (int i = 0; i < L->loras->count; i++) L->loras->items[i]->scale = s * L->own[i];
    sd_pipeline *p = L->p;
    if (L->merge && sd_lora_fuse(L->loras, &p->weights) != DL_OK) dl_die(NULL);   /* W' computed once */
    /* on the fly the UNet sees the new scale at its next forward; the text encoder holds its weights */
    if (sd_pipeline_reload_text_encoder(p) != DL_OK) dl_die(NULL);
    int keep = L->big;
    L->big = slot;
    sd_run_result r;
    if (sd_pipeline_run(p, L->o, on_step, L, &r) != DL_OK) dl_die(NULL);
    if (!r.stopped) {
        if (sd_image_from_decoded(&r.image, 0, &L->img[slot]) != DL_OK) dl_die(NULL);
        printf("scale %5.2f: %d UNet calls in %.2f s (%.2f s each)\n", (double)s, r.calls, r.seconds_sampling,
               r.seconds_sampling / (r.calls ? r.calls : 1));
        char params[4096], name[64], path[4200], *e;
        e = params + sd_parameters_text(params, sizeof params - 600, L->o, p->name);
        for (int i = 0; i < L->loras->count && e < params + sizeof params - 300; i++)
            e += snprintf(e, 300, ", LoRA %d: %s:%g", i + 1, L->loras->items[i]->path, (double)L->loras->items[i]->scale);
        snprintf(name, sizeof name, "10_lora_scale_%.2f.png", (double)s);
        snprintf(path, sizeof path, "%s/%s", L->app->out_dir, name);
        if (dl_make_dirs(L->app->out_dir) != DL_OK || dl_png_save_with_text(&L->img[slot], path, "parameters", params) != DL_OK)
            dl_die("check --out");
        printf("wrote %s\n", path);
    }
    sd_run_result_free(&r);
    L->big = L->win ? slot : keep;
    L->status[0] = 0;
}

/* |image - image at scale 0| per pixel (mean over RGB, in 8-bit levels); returns the mean */
static double diff_map(const dl_image *a, const dl_image *base, float *v)
{
    double sum = 0;
    for (int i = 0; i < a->w * a->h; i++) {
        int d = 0;
        for (int c = 0; c < 3; c++) d += abs(a->px[i * 3 + c] - base->px[i * 3 + c]);
        v[i] = d / 3.0f;
        sum += v[i];
    }
    return sum / (a->w * a->h);
}

/* the sweep side by side, one labelled column per scale; below, what changed */
static void save_sweep(lesson *L)
{
    static char text[NSWEEP][32];
    const char *cols[NSWEEP], *rows[2] = {"image", "|image - scale 0|"};
    for (int k = 0; k < NSWEEP; k++) { snprintf(text[k], sizeof text[k], "scale %.2f", (double)SWEEP[k]); cols[k] = text[k]; }
    const dl_image *base = &L->img[scale_slot(0.0f)];
    if (!base->px) return;
    const int zoom = base->w < 128 ? 128 / base->w : 1;
    char title[300];
    snprintf(title, sizeof title, "LoRA scale sweep, seed %llu: %.200s", (unsigned long long)L->o->seed, L->o->prompt);
    dl_grid g = { .rows = 2, .cols = NSWEEP, .tile_w = base->w * zoom, .tile_h = base->h * zoom, .pad = 6,
                  .text_scale = 1, .title = title, .row_labels = rows, .col_labels = cols };
    dl_image canvas;
    if (dl_grid_create(&canvas, &g) != DL_OK) dl_die(NULL);
    float *v = malloc(sizeof(float) * base->w * base->h);
    float vmax = 1;                       /* one colour scale for the whole row */
    for (int k = 0; k < NSWEEP && v; k++) {
        const dl_image *im = &L->img[scale_slot(SWEEP[k])];
        if (!im->px) continue;
        diff_map(im, base, v);
        for (int i = 0; i < im->w * im->h; i++) vmax = v[i] > vmax ? v[i] : vmax;
    }
    for (int k = 0; k < NSWEEP && v; k++) {
        const dl_image *im = &L->img[scale_slot(SWEEP[k])];
        dl_image big, heat;
        if (!im->px || dl_image_scale_nearest(&big, im, zoom) != DL_OK) continue;
        dl_grid_place(&canvas, &g, 0, k, &big);
        double mean = diff_map(im, base, v);
        printf("scale %5.2f: mean |image - scale 0| = %.2f levels of 255\n", (double)SWEEP[k], mean);
        if (dl_heatmap_image(&heat, v, im->w, im->h, vmax, zoom) == DL_OK) { dl_grid_place(&canvas, &g, 1, k, &heat); dl_image_free(&heat); }
        dl_image_free(&big);
    }
    free(v);
    if (dl_app_save(L->app, "10_lora_sweep.png", &canvas) != DL_OK) dl_die("check --out");
    dl_image_free(&canvas);
}

/* ---- the window: the sweep on top, the big view below ------------------------- */

static void draw_frame(lesson *L)
{
    const int T = 128, B = 384, W = NSWEEP * (T + 10) + 10, H = 40 + T + 30 + B + 50;
    dl_image f, tile;
    if (dl_image_alloc(&f, W, H, 3) != DL_OK) dl_die(NULL);
    dl_image_fill(&f, 24, 24, 28);
    char line[300];
    snprintf(line, sizeof line, "prompt: %.100s   seed %llu", L->o->prompt, (unsigned long long)L->o->seed);
    dl_image_draw_text(&f, 10, 8, line, 240, 240, 240, 1);
    for (int k = 0; k < NSWEEP; k++) {
        int x = 10 + k * (T + 10), y = 40, slot = scale_slot(SWEEP[k]);
        snprintf(line, sizeof line, "%d: scale %.2f", k + 1, (double)SWEEP[k]);
        dl_image_draw_text(&f, x, y - 14, line, 220, 220, 220, 1);
        dl_image_draw_rect(&f, x - 2, y - 2, T + 4, T + 4, 2, slot == L->big ? 255 : 70, slot == L->big ? 200 : 70, 70);
        if (L->img[slot].px && dl_image_resize(&tile, &L->img[slot], T, T) == DL_OK) { dl_image_blit(&f, &tile, x, y); dl_image_free(&tile); }
    }
    const int bx = (W - B) / 2, by = 40 + T + 30;
    snprintf(line, sizeof line, "big view: LoRA scale %.2f%s", (double)slot_scale(L->big), L->big == scale_slot(0) ? " (= the base model)" : "");
    dl_image_draw_text(&f, bx, by - 16, line, 255, 220, 120, 1);
    if (L->img[L->big].px && dl_image_resize(&tile, &L->img[L->big], B, B) == DL_OK) { dl_image_blit(&f, &tile, bx, by); dl_image_free(&tile); }
    dl_image_draw_text(&f, 10, H - 40, L->status, 255, 220, 120, 2);
    dl_image_draw_text(&f, 10, H - 14, "left/right: scale -/+ 0.25   1-6: sweep scale   s: screenshot   q: quit", 140, 140, 140, 1);
    viz_present(L->win, &f);
    dl_image_free(&f);
}

static void live(lesson *L)
{
    int64_t frames = 0;
    while (!L->quit) {
        viz_event ev;
        while (viz_poll(L->win, &ev)) {
            if (ev.type == VIZ_QUIT || (ev.type == VIZ_KEY && (ev.key == 'q' || ev.key == VIZ_KEY_ESCAPE))) L->quit = 1;
            if (ev.type != VIZ_KEY) continue;
            int want = L->big;
            if (ev.key == VIZ_KEY_LEFT || ev.key == '-') want--;
            if (ev.key == VIZ_KEY_RIGHT || ev.key == '+' || ev.key == '=') want++;
            if (ev.key >= '1' && ev.key < '1' + NSWEEP) want = scale_slot(SWEEP[ev.key - '1']);
            if (want >= 0 && want < NSLOTS && want != L->big) { L->big = want; draw_frame(L); render(L, want); }
            if (ev.key == 's') {
                char name[64];
                dl_image shot;
                snprintf(name, sizeof name, "10_screenshot_%03d.png", ++L->shots);
                if (viz_read_window(L->win, &shot) == DL_OK) { dl_app_save(L->app, name, &shot); dl_image_free(&shot); }
            }
        }
        draw_frame(L);
        if (dl_app_frame_limit(L->app, L->win, ++frames)) break;   /* scripted run: keep what was shown */
        viz_wait(L->win, 30);
    }
}

/* ---- main ---------------------------------------------------------------------- */

static float parse_float(dl_app *app, int argc, char **argv, int *i, float lo, float hi)
{
    const char *opt = argv[*i], *s = dl_arg_str(app, argc, argv, i);
    char *end;
    float v = strtof(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi)) dl_app_bad_arg(app, "%s wants a number in [%g, %g], got '%s'", opt, lo, hi, s);
    return v;
}

int main(int argc, char **argv)
{
    dl_app app;
    dl_app_init(&app, "10_lora", USAGE);
    sd_run_opts o = sd_run_opts_default();
    o.prompt = "a photo of a cat";
    sd_load_opts lo = {0};
    const char *model = NULL, *specs[SD_LORA_MAX], *sched = "dpmpp_2m";
    int n_specs = 0, threads = 0, merge = 0;
    o.width = o.height = 0;                        /* 0: the model's native size */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (dl_app_common_arg(&app, argc, argv, &i)) continue;
        else if (!strcmp(a, "--model")) model = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--lora")) {
            if (n_specs == SD_LORA_MAX) dl_app_bad_arg(&app, "at most %d --lora", SD_LORA_MAX);
            specs[n_specs++] = dl_arg_str(&app, argc, argv, &i);
            char path[1024];
            float s;
            if (sd_lora_parse_spec(specs[n_specs - 1], path, sizeof path, &s) != DL_OK) dl_app_bad_arg(&app, "%s", dl_error_message());
            if (access(path, R_OK) != 0) dl_app_bad_arg(&app, "--lora: cannot read '%s'", path);
        }
        else if (!strcmp(a, "--prompt")) o.prompt = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--negative-prompt")) {
            if (i + 1 >= argc) dl_app_bad_arg(&app, "option --negative-prompt needs a value");
            o.negative_prompt = argv[++i];
        }
        else if (!strcmp(a, "--steps")) o.steps = (int)dl_arg_int(&app, argc, argv, &i, 1, 1000);
        else if (!strcmp(a, "--guidance")) o.guidance = parse_float(&app, argc, argv, &i, 0.0f, 100.0f);
        else if (!strcmp(a, "--scheduler")) sched = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(a, "--width")) o.width = (int)dl_arg_int(&app, argc, argv, &i, 8, 4096);
        else if (!strcmp(a, "--height")) o.height = (int)dl_arg_int(&app, argc, argv, &i, 8, 4096);
        else if (!strcmp(a, "--threads")) threads = (int)dl_arg_int(&app, argc, argv, &i, 1, 1024);
        else if (!strcmp(a, "--merge")) merge = 1;
        else if (!strcmp(a, "--tokenizer")) lo.tokenizer_dir = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--config")) lo.config_dir = dl_arg_str(&app, argc, argv, &i);
        else dl_app_bad_arg(&app, "unknown option '%s'", a);
    }
    if (dl_sampler_kind_from_name(sched, &o.scheduler) != DL_OK) dl_app_bad_arg(&app, "%s", dl_error_message());
    if (threads) dl_set_threads(threads);
    int tiny = 0;
    if (!model) {
        if (access("models/sd15", R_OK) == 0) model = "models/sd15";
        else {
            printf("%s", DOWNLOAD);
            if (access(TINY_MODEL "/model_index.json", R_OK) != 0) dl_app_bad_arg(&app, "--model PATH is required");
            model = TINY_MODEL;
            tiny = 1;
        }
    }
    tiny = tiny || strstr(model, "tiny-sd") != NULL;
    if (tiny) {
        printf("\nRunning on the TINY TEST MODEL (%s): its weights are RANDOM, the pictures are not meaningful;\n"
               "every step is the real computation, and scale 0 vs 1 still shows what a LoRA changes.\n\n", model);
        if (!n_specs) specs[n_specs++] = TINY_LORA;
    }
    if (!n_specs) { printf("%s", DOWNLOAD); dl_app_bad_arg(&app, "--lora FILE[:scale] is required with a real model"); }
    int headless = dl_app_choose_mode(&app);

    sd_pipeline p;
    if (sd_pipeline_load(&p, model, &lo) != DL_OK)
        dl_die("--model: a diffusers folder or a .safetensors checkpoint (see bin/07_txt2img --help)");
    const int f = p.downscale;                       /* the VAE's factor: 8 for SD, 2 for the tiny model */
    if (!o.width) o.width = p.unet.cfg.sample_size * f;
    if (!o.height) o.height = p.unet.cfg.sample_size * f;
    if (o.width % f || o.height % f || o.width < 8 * f || o.height < 8 * f)
        dl_app_bad_arg(&app, "--width %d --height %d: both must be multiples of %d (this VAE's downscale factor) and at least %d",
                       o.width, o.height, f, 8 * f);
    printf("model %s: %dx%d images, latents %dx%d, %d steps of %s, guidance %g, seed %llu\n", p.name, o.width, o.height,
           o.width / f, o.height / f, o.steps, sched, (double)o.guidance, (unsigned long long)o.seed);

    sd_lora_list loras;
    sd_lora_list_init(&loras);
    lesson L;
    memset(&L, 0, sizeof L);
    for (int i = 0; i < n_specs; i++) {
        if (sd_lora_list_add(&loras, specs[i], &p.weights) != DL_OK) dl_die("--lora FILE[:scale]: a LoRA .safetensors file");
        L.own[i] = loras.items[i]->scale;
        describe(loras.items[i]);
    }
    if (sd_lora_list_unmatched(&loras)) printf("\nwarning: %d LoRA key(s) matched nothing (listed above)\n", sd_lora_list_unmatched(&loras));
    if (!merge && sd_lora_apply(&loras, &p.weights) != DL_OK) dl_die(NULL);
    printf("\napplying %s; the sweep scales every LoRA's own scale by", merge ? "merged into the weights (sd_lora_fuse)" : "on the fly (sd_lora_apply)");
    for (int k = 0; k < NSWEEP; k++) printf(" %g", (double)SWEEP[k]);
    printf("\n");

    L.app = &app; L.p = &p; L.loras = &loras; L.o = &o; L.merge = merge;
    L.big = scale_slot(1.0f);
    if (!headless && !(L.win = viz_open("difflab 10 - LoRA scale sweep", NSWEEP * 138 + 10, 40 + 128 + 30 + 384 + 50, 1)))
        dl_die("run with --headless");
    for (int k = 0; k < NSWEEP && !L.quit; k++) render(&L, scale_slot(SWEEP[k]));
    if (!L.quit) save_sweep(&L);
    if (L.win) { L.big = scale_slot(1.0f); live(&L); viz_close(L.win); }

    for (int s = 0; s < NSLOTS; s++) dl_image_free(&L.img[s]);
    sd_lora_list_free(&loras);
    sd_pipeline_free(&p);
    return 0;
}
