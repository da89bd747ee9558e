/* 11_prompts.c - Lesson 11: prompts, tokens, and the 77-token window.
 *
 * A prompt reaches the UNet only as 77 vectors of the text encoder, one per
 * token, through cross-attention. The lesson shows both ends of that:
 *
 *   (a) the prompt progression, one seed, one picture per prompt:
 *         "A cat"
 *         "A cat, watercolor painting"                                 + [style]
 *         "A cat, watercolor painting, highly detailed, vibrant colors" + [quality]
 *         "..., soft golden hour lighting, by John Singer Sargent"      + [lighting], [artist]
 *   (b) the token view: every prompt as the CLIP tokenizer sees it (BPE
 *       pieces, ids, BOS/EOS) and where the 77-token window cuts; an
 *       over-long prompt shows the dropped tokens (they never reach the
 *       model). Needs only the tokenizer: works without any SD weights.
 *   (c) the template [subject], [style], [quality], [lighting], [artist]:
 *       --subject ... --artist build the prompts of (a).
 *
 *   bin/11_prompts --model models/sd15
 *   bin/11_prompts --tokenizer models/sd15/tokenizer --subject "a lighthouse"    (token view only)
 * See docs/11_prompts.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/png_text.h"
#include "../core/sd_pipeline.h"
#include "../viz/app.h"
#include "../viz/viz.h"

static const char *USAGE =
    "Lesson 11: prompts - the progression from one seed, the tokens, the 77-token window, the template.\n"
    "  --subject TEXT --style TEXT --quality TEXT --lighting TEXT --artist TEXT\n"
    "                          the template [subject], [style], [quality], [lighting], [artist]\n"
    "                          (default: \"A cat\", \"watercolor painting\", \"highly detailed, vibrant colors\",\n"
    "                          \"soft golden hour lighting\", \"by John Singer Sargent\"); \"\" leaves a part out\n"
    "  --prompt TEXT           one more prompt for the token view and the grid (up to 4)\n"
    "  --long-prompt TEXT      the over-long example (default: the full prompt + many tags)\n"
    "  --tokenizer DIR         a tokenizer folder (vocab.json, merges.txt); without --model: token view only\n"
    "  --tokens-only           only the token view (no model needed)\n"
    "  --model PATH            diffusers folder or .safetensors checkpoint (default: models/sd15 if present,\n"
    "                          else the tiny test model tests/fixtures/tiny-sd, whose weights are random)\n"
    "  --negative-prompt TEXT --steps N --guidance G --scheduler NAME --seed S --width W --height H\n"
    "  --threads N --config DIR   as bin/07_txt2img (default 25 steps, 7.5, dpmpp_2m, seed 42, native size)\n"
    "  --out DIR               11_tokens.png, 11_prompts_grid.png, 11_prompt_<k>.png (default out)\n"
    "  --headless              no window\n"
    "live window keys: s: screenshot, q/Esc: quit\n";

static const char *DOWNLOAD =
    "No Stable Diffusion model found (--model not given, models/sd15 absent). For real pictures put SD 1.5 in\n"
    "models/sd15 (huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir models/sd15),\n"
    "or give the single file: --model v1-5-pruned-emaonly.safetensors --tokenizer DIR.\n";

#define TINY_MODEL "tests/fixtures/tiny-sd"
#define MAXP 10
static const char *TAGS = ", masterpiece, best quality, ultra detailed, intricate details, sharp focus, 8k resolution, "
    "trending on artstation, award winning, cinematic composition, depth of field, soft shadows, subtle film grain, "
    "delicate brush strokes, textured cold-press paper, muted background, a small red collar with a golden bell";

typedef struct {
    char text[4096];
    char label[64];
    int grid;               /* rendered in the grid            */
} prompt;

/* [subject], [style], [quality], [lighting], [artist]: the first k non-empty parts joined by ", " */
static void build_prompt(char *out, size_t n, const char *const parts[5], int k)
{
    size_t len = 0;
    out[0] = 0;
    for (int i = 0; i < k; i++)
        if (parts[i] && parts[i][0] && len < n)
            len += (size_t)snprintf(out + len, n - len, "%s%s", len ? ", " : "", parts[i]);
}

/* ---- (b) the token view -------------------------------------------------------- */

/* All tokens of the text (no truncation): malloc'ed ids, *n of them. */
static int *all_tokens(const clip_tokenizer *tok, const char *text, int *n)
{
    if (clip_encode(tok, text, NULL, 0, n) != DL_OK) dl_die(NULL);
    int *ids = malloc((size_t)(*n + 1) * sizeof *ids);
    if (!ids || clip_encode(tok, text, ids, *n, n) != DL_OK) dl_die(NULL);
    return ids;
}

static void print_tokens(const clip_tokenizer *tok, int k, const prompt *P)
{
    int n, keep;
    int *ids = all_tokens(tok, P->text, &n);
    keep = n < CLIP_MAX_TOKENS - 2 ? n : CLIP_MAX_TOKENS - 2;     /* BOS + 75 + EOS */
    printf("\n[%d] %s: \"%s\"\n", k, P->label, P->text);
    if (n <= keep) printf("    %d tokens + BOS/EOS = %d of 77 (the other %d are padding)\n", n, n + 2, CLIP_MAX_TOKENS - n - 2);
    else printf("    %d tokens + BOS/EOS = %d > 77: the last %d token(s) are DROPPED\n", n, n + 2, n - keep);
    char piece[128];
    printf("    tokens: <BOS>(%d)", tok->bos_id);
    for (int i = 0; i < keep; i++) { clip_token_text(tok, ids[i], piece, sizeof piece); printf(" %s(%d)", piece, ids[i]); }
    printf(" <EOS>(%d)\n    ids: %d", tok->eos_id, tok->bos_id);
    for (int i = 0; i < keep; i++) printf(" %d", ids[i]);
    printf(" %d\n", tok->eos_id);
    if (n > keep) {
        printf("    dropped:");
        for (int i = keep; i < n; i++) { clip_token_text(tok, ids[i], piece, sizeof piece); printf(" %s(%d)", piece, ids[i]); }
        printf("\n");
    }
    free(ids);
}

/* One prompt as boxes "piece / id", wrapped at `width`; a word's pieces share
 * a colour, BOS/EOS are grey, dropped tokens red behind a yellow cut line.
 * img NULL: only measures. Returns the y below the drawing. */
static int draw_tokens(dl_image *img, int width, int y, const clip_tokenizer *tok, int k, const prompt *P)
{
    int n;
    int *ids = all_tokens(tok, P->text, &n);
    const int keep = n < CLIP_MAX_TOKENS - 2 ? n : CLIP_MAX_TOKENS - 2, total = n + 2;
    char line[300];
    snprintf(line, sizeof line, "[%d] %s: %d tokens + BOS/EOS = %d%s", k, P->label, n, n + 2,
             n > keep ? " > 77: the encoder sees up to the yellow cut, the red tokens are DROPPED" : " of 77");
    if (img) dl_image_draw_text(img, 8, y, line, 255, 220, 120, 1);
    y += 16;
    int x = 8, word = 0;
    for (int j = 0; j < total; j++) {
        /* the order the encoder sees: BOS, the first 75, EOS | then what is cut */
        const int id = j == 0 ? tok->bos_id : j <= keep ? ids[j - 1] : j == keep + 1 ? tok->eos_id : ids[j - 2];
        const int special = j == 0 || j == keep + 1, dropped = j > keep + 1;
        char piece[128], num[16];
        int ends = 1;
        if (special) snprintf(piece, sizeof piece, "%s", j ? "<EOS>" : "<BOS>");
        else ends = clip_token_text(tok, id, piece, sizeof piece);
        snprintf(num, sizeof num, "%d", id);
        int w = dl_text_width(piece, 1) > dl_text_width(num, 1) ? dl_text_width(piece, 1) : dl_text_width(num, 1);
        w += 8;
        if (x + w > width - 8) { x = 8; y += 30; }
        if (img) {
            unsigned char r = 60, g = 90, b = 140;                      /* alternate colours per word */
            if (word & 1) { r = 50; g = 120; b = 90; }
            if (special) r = g = b = 90;
            if (dropped) { r = 150; g = 40; b = 40; }
            dl_image_fill_rect(img, x, y, w - 2, 26, r, g, b);
            dl_image_draw_text(img, x + 3, y + 2, piece, 255, 255, 255, 1);
            dl_image_draw_text(img, x + 3, y + 14, num, 200, 200, 200, 1);
            if (j == keep + 2) dl_image_fill_rect(img, x - 7, y - 2, 3, 30, 255, 220, 0);   /* the cut, after EOS */
        }
        if (!special && ends) word++;
        x += w + (j == keep + 1 && n > keep ? 12 : 0);
    }
    if (n <= keep) {
        snprintf(line, sizeof line, "+ %d x <EOS>(%d) padding = 77", CLIP_MAX_TOKENS - total, tok->pad_id);
        if (x + dl_text_width(line, 1) > width - 8) { x = 8; y += 30; }
        if (img) dl_image_draw_text(img, x + 4, y + 8, line, 150, 150, 150, 1);
    }
    free(ids);
    return y + 30 + 14;
}

static void token_view_png(dl_app *app, const clip_tokenizer *tok, const prompt *ps, int np, dl_image *out)
{
    const int W = 1100;
    int h = 30;
    for (int k = 0; k < np; k++) h = draw_tokens(NULL, W, h, tok, k + 1, &ps[k]);
    if (dl_image_alloc(out, W, h, 3) != DL_OK) dl_die(NULL);
    dl_image_fill(out, 24, 24, 28);
    dl_image_draw_text(out, 8, 8, "CLIP tokens: piece / id (one colour per word; BOS + 75 + EOS = the 77-token window)",
                       240, 240, 240, 1);
    int y = 30;
    for (int k = 0; k < np; k++) y = draw_tokens(out, W, y, tok, k + 1, &ps[k]);
    if (dl_app_save(app, "11_tokens.png", out) != DL_OK) dl_die("check --out");
}

/* ---- (a) the grid: one picture per prompt, same seed ------------------------------- */

typedef struct {
    dl_app *app;
    viz_window *win;
    const dl_image *tokens;
    dl_image *grid;
    int quit, shots;
    int64_t frames;
} live;

static void show(live *V)
{
    if (!V->win) return;
    viz_event ev;
    while (viz_poll(V->win, &ev)) {
        if (ev.type == VIZ_QUIT || (ev.type == VIZ_KEY && (ev.key == 'q' || ev.key == VIZ_KEY_ESCAPE))) V->quit = 1;
        if (ev.type == VIZ_KEY && ev.key == 's') {
            char name[64];
            dl_image shot;
            snprintf(name, sizeof name, "11_screenshot_%03d.png", ++V->shots);
            if (viz_read_window(V->win, &shot) == DL_OK) { dl_app_save(V->app, name, &shot); dl_image_free(&shot); }
        }
    }
    const int W = V->tokens->w > V->grid->w ? V->tokens->w : V->grid->w;
    dl_image f;
    if (dl_image_alloc(&f, W, V->grid->h + V->tokens->h, 3) != DL_OK) dl_die(NULL);
    dl_image_fill(&f, 24, 24, 28);
    dl_image_blit(&f, V->grid, 0, 0);
    dl_image_blit(&f, V->tokens, 0, V->grid->h);
    viz_present(V->win, &f);
    dl_image_free(&f);
    if (!V->quit && dl_app_frame_limit(V->app, V->win, ++V->frames)) V->quit = 1;   /* scripted run: keep what was shown */
}

static int on_step(void *ctx, const sd_step_info *info)
{
    (void)info;
    live *V = ctx;
    show(V);
    return V->quit;
}

static void render_grid(sd_pipeline *p, sd_run_opts *o, const prompt *ps, int np, live *V)
{
    const char *cols[MAXP];
    int idx[MAXP], nc = 0;
    for (int k = 0; k < np; k++) if (ps[k].grid) { idx[nc] = k; cols[nc++] = ps[k].label; }
    const int zoom = o->width < 192 ? 192 / o->width : 1, tw = o->width * zoom, th = o->height * zoom;
    char title[400];
    snprintf(title, sizeof title, "one seed (%llu), growing prompts - %s", (unsigned long long)o->seed, p->name);
    dl_grid g = { .rows = 1, .cols = nc, .tile_w = tw > 160 ? tw : 160, .tile_h = th, .pad = 8, .text_scale = 1,
                  .title = title, .col_labels = cols };
    if (dl_grid_create(V->grid, &g) != DL_OK) dl_die(NULL);
    for (int c = 0; c < nc && !V->quit; c++) {
        o->prompt = ps[idx[c]].text;
        sd_run_result r;
        if (sd_pipeline_run(p, o, on_step, V, &r) != DL_OK) dl_die(NULL);
        if (!r.stopped) {
            dl_image img, big;
            char params[5000], path[4200];
            if (sd_image_from_decoded(&r.image, 0, &img) != DL_OK || dl_image_scale_nearest(&big, &img, zoom) != DL_OK) dl_die(NULL);
            dl_grid_place(V->grid, &g, 0, c, &big);
            sd_parameters_text(params, sizeof params, o, p->name);
            snprintf(path, sizeof path, "%s/11_prompt_%d.png", V->app->out_dir, idx[c] + 1);
            if (dl_make_dirs(V->app->out_dir) != DL_OK || dl_png_save_with_text(&img, path, "parameters", params) != DL_OK)
                dl_die("check --out");
            printf("[%d] %d UNet calls in %.2f s, wrote %s\n", idx[c] + 1, r.calls, r.seconds_sampling, path);
            dl_image_free(&img);
            dl_image_free(&big);
        }
        sd_run_result_free(&r);
        show(V);
    }
    if (!V->quit && dl_app_save(V->app, "11_prompts_grid.png", V->grid) != DL_OK) dl_die("check --out");
}

/* ---- main ------------------------------------------------------------------------ */

static float parse_float(dl_app *app, int argc, char **argv, int *i, float lo, float hi)
{
    const char *opt = argv[*i], *s = dl_arg_str(app, argc, argv, i);
    char *end;
    float v = strtof(s, &end);
    if (end == s || *end || !(v >= lo && v <= hi)) dl_app_bad_arg(app, "%s wants a number in [%g, %g], got '%s'", opt, lo, hi, s);
    return v;
}

/* an option whose value may be "" */
static const char *text_arg(dl_app *app, int argc, char **argv, int *i)
{
    if (*i + 1 >= argc) dl_app_bad_arg(app, "option %s needs a value", argv[*i]);
    return argv[++*i];
}

int main(int argc, char **argv)
{
    dl_app app;
    dl_app_init(&app, "11_prompts", USAGE);
    const char *parts[5] = {"A cat", "watercolor painting", "highly detailed, vibrant colors", "soft golden hour lighting",
                            "by John Singer Sargent"};
    static const char *const names[5] = {"--subject", "--style", "--quality", "--lighting", "--artist"};
    const char *extra[4], *long_prompt = NULL, *model = NULL, *sched = "dpmpp_2m";
    int n_extra = 0, tokens_only = 0, threads = 0;
    sd_run_opts o = sd_run_opts_default();
    o.width = o.height = 0;                        /* 0: the model's native size */
    sd_load_opts lo = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int part = -1;
        for (int k = 0; k < 5; k++) if (!strcmp(a, names[k])) part = k;
        if (part >= 0) parts[part] = text_arg(&app, argc, argv, &i);
        else if (dl_app_common_arg(&app, argc, argv, &i)) continue;
        else if (!strcmp(a, "--prompt")) {
            if (n_extra == 4) dl_app_bad_arg(&app, "at most 4 --prompt");
            extra[n_extra++] = dl_arg_str(&app, argc, argv, &i);
        }
        else if (!strcmp(a, "--long-prompt")) long_prompt = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--tokens-only")) tokens_only = 1;
        else if (!strcmp(a, "--tokenizer")) lo.tokenizer_dir = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--model")) model = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--negative-prompt")) o.negative_prompt = text_arg(&app, argc, argv, &i);
        else if (!strcmp(a, "--steps")) o.steps = (int)dl_arg_int(&app, argc, argv, &i, 1, 1000);
        else if (!strcmp(a, "--guidance")) o.guidance = parse_float(&app, argc, argv, &i, 0.0f, 100.0f);
        else if (!strcmp(a, "--scheduler")) sched = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(a, "--width")) o.width = (int)dl_arg_int(&app, argc, argv, &i, 8, 4096);
        else if (!strcmp(a, "--height")) o.height = (int)dl_arg_int(&app, argc, argv, &i, 8, 4096);
        else if (!strcmp(a, "--threads")) threads = (int)dl_arg_int(&app, argc, argv, &i, 1, 1024);
        else if (!strcmp(a, "--config")) lo.config_dir = dl_arg_str(&app, argc, argv, &i);
        else dl_app_bad_arg(&app, "unknown option '%s'", a);
    }
    if (!parts[0][0]) dl_app_bad_arg(&app, "--subject must not be empty: it is what the picture is of");
    if (dl_sampler_kind_from_name(sched, &o.scheduler) != DL_OK) dl_app_bad_arg(&app, "%s", dl_error_message());
    if (threads) dl_set_threads(threads);
    if (lo.tokenizer_dir && !model) tokens_only = 1;

    /* the prompts: the progression of the template, the extras, the over-long one */
    prompt ps[MAXP];
    int np = 0;
    const int level[4] = {1, 2, 3, 5};
    const char *labels[4] = {"subject", "+ style", "+ quality", "full: + lighting, artist"};
    memset(ps, 0, sizeof ps);
    for (int k = 0; k < 4; k++) {
        build_prompt(ps[np].text, sizeof ps[np].text, parts, level[k]);
        if (np && !strcmp(ps[np].text, ps[np - 1].text)) continue;     /* an empty part adds nothing */
        snprintf(ps[np].label, sizeof ps[np].label, "%s", labels[k]);
        ps[np++].grid = 1;
    }
    for (int k = 0; k < n_extra; k++) {
        snprintf(ps[np].text, sizeof ps[np].text, "%s", extra[k]);
        snprintf(ps[np].label, sizeof ps[np].label, "--prompt %d", k + 1);
        ps[np++].grid = 1;
    }
    if (long_prompt) snprintf(ps[np].text, sizeof ps[np].text, "%s", long_prompt);
    else {
        const prompt *full = &ps[np - 1 - n_extra];
        size_t len = strlen(full->text);
        memcpy(ps[np].text, full->text, len);
        snprintf(ps[np].text + len, sizeof ps[np].text - len, "%s", TAGS);
    }
    snprintf(ps[np].label, sizeof ps[np].label, "over-long");
    np++;
    printf("template [subject], [style], [quality], [lighting], [artist]:\n");
    for (int k = 0; k < 5; k++) printf("  %-10s \"%s\"\n", names[k] + 2, parts[k]);

    /* the model, or only its tokenizer */
    int tiny = 0;
    if (!model && !lo.tokenizer_dir) {
        if (access("models/sd15", R_OK) == 0) model = "models/sd15";
        else {
            printf("\n%s", DOWNLOAD);
            if (access(TINY_MODEL "/model_index.json", R_OK) != 0) dl_app_bad_arg(&app, "give --model PATH or --tokenizer DIR");
            model = TINY_MODEL;
            tiny = 1;
        }
    }
    tiny = tiny || (model && strstr(model, "tiny-sd"));
    if (tiny) printf("\nUsing the TINY TEST MODEL (%s): its tokenizer is the real CLIP vocabulary, so the token view is\n"
                     "exact; its weights are RANDOM, so the pictures are not meaningful (every step is real).\n", model);
    sd_pipeline p;
    memset(&p, 0, sizeof p);
    clip_tokenizer own_tok;
    const clip_tokenizer *tok = &own_tok;
    char tok_dir[4200];
    if (tokens_only) {
        if (lo.tokenizer_dir) snprintf(tok_dir, sizeof tok_dir, "%s", lo.tokenizer_dir);
        else snprintf(tok_dir, sizeof tok_dir, "%s/tokenizer", model);
        if (clip_tokenizer_load(&own_tok, tok_dir) != DL_OK)
            dl_die("--tokenizer DIR: a folder with vocab.json and merges.txt (e.g. the tokenizer/ folder of SD 1.5)");
    } else {
        if (sd_pipeline_load(&p, model, &lo) != DL_OK)
            dl_die("--model: a diffusers folder or a .safetensors checkpoint (see bin/07_txt2img --help)");
        tok = &p.tokenizer;
        snprintf(tok_dir, sizeof tok_dir, "%s", p.tokenizer_dir);
    }
    printf("\ntokenizer %s: %d tokens in the vocabulary, BOS %d, EOS %d, padding %d\n", tok_dir, tok->n_vocab, tok->bos_id,
           tok->eos_id, tok->pad_id);
    for (int k = 0; k < np; k++) print_tokens(tok, k + 1, &ps[k]);
    printf("\n");
    dl_image tokens, grid = {0};
    token_view_png(&app, tok, ps, np, &tokens);

    if (!tokens_only) {
        const int f = p.downscale;                   /* the VAE's factor: 8 for SD, 2 for the tiny model */
        if (!o.width) o.width = p.unet.cfg.sample_size * f;
        if (!o.height) o.height = p.unet.cfg.sample_size * f;
        if (o.width % f || o.height % f || o.width < 8 * f || o.height < 8 * f)
            dl_app_bad_arg(&app, "--width %d --height %d: both must be multiples of %d (this VAE's downscale factor) and at least %d",
                           o.width, o.height, f, 8 * f);
        printf("model %s: %dx%d, %d steps of %s, guidance %g, seed %llu, negative prompt \"%s\"\n", p.name, o.width, o.height,
               o.steps, sched, (double)o.guidance, (unsigned long long)o.seed, o.negative_prompt);
        live V = {&app, NULL, &tokens, &grid, 0, 0, 0};
        if (!dl_app_choose_mode(&app) && !(V.win = viz_open("difflab 11 - prompts", 1100, 700, 1))) dl_die("run with --headless");
        render_grid(&p, &o, ps, np, &V);
        while (V.win && !V.quit) { show(&V); viz_wait(V.win, 30); }
        if (V.win) viz_close(V.win);
        sd_pipeline_free(&p);
    } else {
        printf("token view only (no --model): for the pictures give --model PATH\n");
        clip_tokenizer_free(&own_tok);
    }
    dl_image_free(&tokens);
    dl_image_free(&grid);
    return 0;
}
