/* 08_img2img.c - Lesson 08: image to image. Instead of pure noise, start
 * from a picture, noised part of the way.
 *
 *   picture -> 2 v / 255 - 1 -> VAE encoder -> mean, std of the latents
 *   z0 = (mean + std * n1) * 0.18215                    n1: 1st draw of the generator
 *   strength s, N steps: keep the last int(N s) steps   (t_start = N - int(N s))
 *   x  = add_noise(z0, n2, t = timesteps[t_start])      n2: 2nd draw
 *   the usual denoising loop from t on (guided by the prompt), VAE decoder
 *
 * s = 1 redraws almost everything (only a trace of the picture survives the
 * first timestep); s = 0.3 only touches the details. The lesson runs the
 * --strength you ask for, then a sweep of strengths from the same seed,
 * next to the input. The img2img code lives in core/sd_img2img.c; see
 * docs/08_img2img.md.
 *
 *   bin/08_img2img --model models/sd15 --prompt "a tiger, photo" --strength 0.6
 *   bin/08_img2img --model tests/fixtures/tiny-sd --prompt "a cat" --steps 8 --headless   (random weights)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/png_text.h"
#include "../core/safetensors.h"
#include "../core/sd_img2img.h"
#include "../viz/app.h"
#include "../viz/viz.h"

static const char *USAGE =
    "Lesson 08: Stable Diffusion image-to-image (matches diffusers' StableDiffusionImg2ImgPipeline).\n"
    "  --model PATH            a diffusers folder or a single .safetensors checkpoint (required)\n"
    "  --init-image IMG        the starting picture (default data/images/chelsea.png, the cat)\n"
    "  --prompt TEXT           what to turn it into (required)\n"
    "  --strength S            0..1: how far to noise it (default 0.75; 1 = almost from scratch)\n"
    "  --sweep LIST            strengths of the comparison strip (default 0.3,0.4,...,1.0; 'none': no sweep)\n"
    "  --negative-prompt TEXT  what to steer away from (default empty)\n"
    "  --steps N               sampler steps for strength 1 (default 25; strength s runs int(N s))\n"
    "  --guidance G            classifier-free guidance scale (default 7.5)\n"
    "  --scheduler NAME        ddpm ddim pndm lms euler euler_a heun kdpm2 kdpm2_a dpmpp_2m\n"
    "                          dpmpp_2m_karras unipc lcm (default dpmpp_2m)\n"
    "  --seed S                the generator's seed (default 42)\n"
    "  --width W --height H    resize the picture to this (multiples of the VAE's factor, 8 for SD);\n"
    "                          default: its own size, shrunk to at most 64 latent pixels a side\n"
    "  --out FILE              the PNG (default out.png); the sweep goes to FILE_sweep.png\n"
    "  --save-latents F        write the final latents as tensor latents_final\n"
    "  --threads N             CPU threads (default: all cores)\n"
    "  --tokenizer DIR, --config DIR   as lesson 07, for single-file checkpoints\n"
    "  --headless              no window\n"
    "live window keys: s: screenshot, q/Esc: quit\n";

static const char *NO_MODEL =
    "--model PATH is required. This lesson needs Stable Diffusion weights, for example:\n"
    "    SD 1.5 as a diffusers folder: huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 \\\n"
    "        --include \"*.json\" \"*.txt\" \"text_encoder/model.safetensors\" \"unet/diffusion_pytorch_model.safetensors\" \\\n"
    "        \"vae/diffusion_pytorch_model.safetensors\" --local-dir models/sd15     -> --model models/sd15\n"
    "    or the single file v1-5-pruned-emaonly.safetensors in models/   -> --model models/v1-5-pruned-emaonly.safetensors\n"
    "  To see the mechanics now, use the tiny test model (RANDOM weights: the pictures mean nothing):\n"
    "    bin/08_img2img --model tests/fixtures/tiny-sd --prompt \"a cat\" --steps 8";

#define MAX_SWEEP 16
#define TILE 192

typedef struct {
    dl_app *app;
    sd_pipeline *p;
    sd_preview_map map;                /* latents -> RGB, fitted to the input picture */
    dl_image input;                    /* the picture as the model sees it          */
    double sweep[MAX_SWEEP];
    int n_sweep, done;                 /* sweep entries, finished ones              */
    dl_image out[MAX_SWEEP];           /* their results                             */
    dl_image start[MAX_SWEEP];         /* their noised starting latents (preview)   */
    char label[MAX_SWEEP][48];
    dl_image main_out;                 /* the --strength run                        */
    const char *now;                   /* what is running                           */
    viz_window *win;
    int quit, shots;
    int64_t frames;
} lesson;

/* "0.3,0.5,1" -> values; 0 entries for "none" */
static int parse_list(dl_app *app, const char *s, double *v)
{
    if (!strcmp(s, "none")) return 0;
    int n = 0;
    for (const char *q = s; *q; ) {
        char *end;
        double x = strtod(q, &end);
        if (end == q || !(x >= 0 && x <= 1) || n == MAX_SWEEP) dl_app_bad_arg(app, "--sweep wants up to %d strengths in [0, 1] separated by commas, got '%s'", MAX_SWEEP, s);
        v[n++] = x;
        q = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') dl_app_bad_arg(app, "--sweep: cannot read '%s'", s);
    }
    return n;
}

static dl_image tile_of(const dl_image *img, int size)
{
    dl_image t;
    int w = img->w >= img->h ? size : size * img->w / img->h, h = img->w >= img->h ? size * img->h / img->w : size;
    if (dl_image_resize(&t, img, w < 1 ? 1 : w, h < 1 ? 1 : h) != DL_OK) dl_die(NULL);
    return t;
}

/* ---- the window ------------------------------------------------------------- */

static int tile_h(const lesson *L) { return L->input.h > L->input.w ? TILE : TILE * L->input.h / L->input.w; }

static void draw_frame(lesson *L, const sd_step_info *info)
{
    const int cols = L->n_sweep + 1 > 4 ? L->n_sweep + 1 : 4, W = cols * (TILE + 10) + 10, th = tile_h(L), H = 2 * th + 120;
    dl_image f;
    if (dl_image_alloc(&f, W, H, 3) != DL_OK) dl_die(NULL);
    dl_image_fill(&f, 24, 24, 28);
    /* top: input, the step being made (x0 preview), the main result */
    const char *top[3] = {"input", "now: predicted x0", "strength run"};
    for (int k = 0; k < 3; k++) {
        int x = 10 + k * (TILE + 10), y = 24;
        dl_image_draw_text(&f, x, 8, top[k], 220, 220, 220, 1);
        dl_image t = {0}, small = {0};
        if (k == 0) t = tile_of(&L->input, TILE);
        if (k == 1 && info && sd_preview_image(&L->map, info->x0, 0, &small) == DL_OK) t = tile_of(&small, TILE);
        if (k == 2 && L->main_out.px) t = tile_of(&L->main_out, TILE);
        if (t.px) dl_image_blit(&f, &t, x, y);
        dl_image_free(&t);
        dl_image_free(&small);
    }
    char line[200];
    if (info) snprintf(line, sizeof line, "%s: step %d/%d  t = %g", L->now, info->call, info->calls, (double)info->timestep);
    else snprintf(line, sizeof line, "%s", L->now ? L->now : "done");
    dl_image_draw_text(&f, 3 * (TILE + 10) + 10, 30, line, 255, 220, 120, 1);
    /* bottom: the sweep, input first */
    int y = th + 60;
    dl_image_draw_text(&f, 10, y - 16, "strength sweep, same seed:", 220, 220, 220, 1);
    for (int k = 0; k <= L->n_sweep; k++) {
        int x = 10 + k * (TILE + 10);
        const dl_image *src = k == 0 ? &L->input : k - 1 < L->done ? &L->out[k - 1] : NULL;
        dl_image_draw_text(&f, x, y + th + 4, k == 0 ? "input" : L->label[k - 1], 200, 200, 200, 1);
        if (!src || !src->px) continue;
        dl_image t = tile_of(src, TILE);
        dl_image_blit(&f, &t, x, y);
        dl_image_free(&t);
    }
    dl_image_draw_text(&f, 10, H - 16, "s: screenshot   q: quit", 140, 140, 140, 1);
    viz_present(L->win, &f);
    dl_image_free(&f);
    if (dl_app_frame_limit(L->app, L->win, ++L->frames)) L->quit = 1;   /* scripted run: keep what was shown */
}

static void handle_events(lesson *L)
{
    viz_event ev;
    while (viz_poll(L->win, &ev)) {
        if (ev.type == VIZ_QUIT || (ev.type == VIZ_KEY && (ev.key == 'q' || ev.key == VIZ_KEY_ESCAPE))) L->quit = 1;
        else if (ev.type == VIZ_KEY && ev.key == 's') {
            char name[64];
            dl_image shot;
            snprintf(name, sizeof name, "08_screenshot_%03d.png", ++L->shots);
            if (viz_read_window(L->win, &shot) == DL_OK) { dl_app_save(L->app, name, &shot); dl_image_free(&shot); }
        }
    }
}

static int on_step(void *ctx, const sd_step_info *info)
{
    lesson *L = ctx;
    printf("  %s  step %d/%d  t=%-5g %.2f s/step\n", L->now, info->call, info->calls, (double)info->timestep,
           info->elapsed_seconds / info->call);
    fflush(stdout);
    if (!L->win) return 0;
    draw_frame(L, info);
    handle_events(L);
    return L->quit;
}

/* one img2img run; returns 0 if it was stopped */
static int run_one(lesson *L, sd_run_opts *o, const dl_tensor *moments, double strength, dl_image *img, dl_tensor *latents,
                   dl_image *start)
{
    sd_img2img_input in = {NULL, moments, strength, NULL, NULL};
    sd_img2img_info info;
    sd_run_result r;
    if (sd_img2img_run(L->p, o, &in, on_step, L, &r, &info) != DL_OK) dl_die(NULL);
    printf("strength %g: skip %d of %d steps, add noise at t = %g, %d UNet calls (%.1f s)\n", strength, info.plan.t_start,
           o->steps, (double)info.plan.start_timestep, r.calls, r.seconds_sampling);
    int ok = !r.stopped;
    if (start && sd_preview_image(&L->map, &info.noisy_latents, 0, start) != DL_OK) dl_die(NULL);
    if (ok && sd_image_from_decoded(&r.image, 0, img) != DL_OK) dl_die(NULL);
    if (ok && latents && (dl_tensor_alloc(latents, 4, r.latents.shape) != DL_OK || dl_tensor_copy(latents, &r.latents) != DL_OK)) dl_die(NULL);
    sd_img2img_info_free(&info);
    sd_run_result_free(&r);
    return ok;
}

/* ---- main ------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    dl_app app;
    dl_app_init(&app, "08_img2img", USAGE);
    sd_run_opts o = sd_run_opts_default();
    sd_load_opts lo = {0};
    const char *model = NULL, *image_path = "data/images/chelsea.png", *out = "out.png", *sched = "dpmpp_2m", *save_path = NULL;
    const char *sweep_text = "0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0";
    double strength = 0.75;
    int threads = 0;
    o.width = o.height = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--out")) out = dl_arg_str(&app, argc, argv, &i);   /* a file here, not a folder */
        else if (dl_app_common_arg(&app, argc, argv, &i)) continue;
        else if (!strcmp(a, "--model")) model = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--init-image")) image_path = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--prompt")) o.prompt = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--negative-prompt")) {
            if (i + 1 >= argc) dl_app_bad_arg(&app, "option --negative-prompt needs a value");
            o.negative_prompt = argv[++i];
        } else if (!strcmp(a, "--strength")) {
            const char *s = dl_arg_str(&app, argc, argv, &i);
            char *end;
            strength = strtod(s, &end);
            if (end == s || *end || !(strength >= 0 && strength <= 1)) dl_app_bad_arg(&app, "--strength wants a number in [0, 1], got '%s'", s);
        }
        else if (!strcmp(a, "--sweep")) sweep_text = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--steps")) o.steps = (int)dl_arg_int(&app, argc, argv, &i, 1, 1000);
        else if (!strcmp(a, "--guidance")) {
            const char *s = dl_arg_str(&app, argc, argv, &i);
            char *end;
            o.guidance = strtof(s, &end);
            if (end == s || *end || !(o.guidance >= 0 && o.guidance <= 100)) dl_app_bad_arg(&app, "--guidance wants a number in [0, 100], got '%s'", s);
        }
        else if (!strcmp(a, "--scheduler")) sched = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(a, "--width")) o.width = (int)dl_arg_int(&app, argc, argv, &i, 1, 4096);
        else if (!strcmp(a, "--height")) o.height = (int)dl_arg_int(&app, argc, argv, &i, 1, 4096);
        else if (!strcmp(a, "--save-latents")) save_path = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--threads")) threads = (int)dl_arg_int(&app, argc, argv, &i, 1, 1024);
        else if (!strcmp(a, "--tokenizer")) lo.tokenizer_dir = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--config")) lo.config_dir = dl_arg_str(&app, argc, argv, &i);
        else dl_app_bad_arg(&app, "unknown option '%s'", a);
    }
    if (!model) dl_app_bad_arg(&app, "%s", NO_MODEL);
    if (!o.prompt) dl_app_bad_arg(&app, "--prompt TEXT is required");
    if (dl_sampler_kind_from_name(sched, &o.scheduler) != DL_OK) dl_app_bad_arg(&app, "%s", dl_error_message());
    lesson L;
    memset(&L, 0, sizeof L);
    L.app = &app;
    L.n_sweep = parse_list(&app, sweep_text, L.sweep);
    if (threads) dl_set_threads(threads);
    static char out_dir[4096];                /* screenshots go next to the PNG */
    snprintf(out_dir, sizeof out_dir, "%s", out);
    char *slash = strrchr(out_dir, '/');
    if (slash) { *slash = 0; app.out_dir = out_dir[0] ? out_dir : "/"; } else app.out_dir = ".";
    int headless = dl_app_choose_mode(&app);
    if (dl_make_dirs(app.out_dir) != DL_OK) dl_die("check --out");

    /* 1. the model and the picture, at a size the VAE can take */
    sd_pipeline p;
    if (sd_pipeline_load(&p, model, &lo) != DL_OK) dl_die("--model: a diffusers folder or a .safetensors checkpoint (see --help)");
    L.p = &p;
    const int f = p.downscale;
    if (p.context_dim < 768)
        printf("NOTE: %s is a tiny test model with RANDOM weights: the pictures are not meaningful, only the mechanics "
               "(encode, noise, denoise, decode) are real. Real weights: run without --model for what to download.\n", p.name);
    dl_image pic;
    if (dl_image_load(&pic, image_path, 3) != DL_OK) dl_die("--init-image: a PNG/JPEG picture");
    sd_fit_size(pic.w, pic.h, f, 64, &o.width, &o.height);   /* its own aspect, at most 64 latent pixels a side */
    if (o.width % f || o.height % f || o.width < 8 * f || o.height < 8 * f)
        dl_app_bad_arg(&app, "--width %d --height %d: both must be multiples of %d (this VAE's downscale factor) and at least %d",
                       o.width, o.height, f, 8 * f);
    if (dl_image_resize(&L.input, &pic, o.width, o.height) != DL_OK) dl_die(NULL);
    printf("model %s: picture %s %dx%d -> %dx%d, latents %d x %d x %d\n", p.name, image_path, pic.w, pic.h, o.width,
           o.height, p.latent_channels, o.height / f, o.width / f);
    dl_image_free(&pic);

    /* 2. encode the picture once (each run draws its own posterior sample from it) */
    dl_tensor x = {0}, moments = {0}, context = {0}, pos = {0}, neg = {0}, z01 = {0};
    if (dl_tensor_alloc(&x, 4, DL_SHAPE(1, 3, o.height, o.width)) != DL_OK || sd_img2img_preprocess(&x, &L.input) != DL_OK ||
        sd_img2img_encode(&p, &x, &moments) != DL_OK)
        dl_die(NULL);
    /* a latent -> RGB preview fitted to this VAE: the mean latents against the picture */
    if (dl_tensor_alloc(&z01, 4, DL_SHAPE(1, 3, o.height, o.width)) != DL_OK) dl_die(NULL);
    for (int64_t i = 0; i < x.numel; i++) z01.data[i] = x.data[i] * 0.5f + 0.5f;
    dl_tensor mean = {0};
    if (dl_tensor_alloc(&mean, 4, DL_SHAPE(1, p.latent_channels, o.height / f, o.width / f)) != DL_OK ||
        sd_vae_moments_split(&moments, &mean, NULL, NULL) != DL_OK)
        dl_die(NULL);
    for (int64_t i = 0; i < mean.numel; i++) mean.data[i] *= p.vae.cfg.scaling_factor;
    if (sd_preview_fit(&L.map, &mean, &z01) != DL_OK) L.map = sd_preview_map_sd();

    /* 3. the prompts once, then the text encoder's memory goes back */
    const int D = p.context_dim;
    if (dl_tensor_alloc(&pos, 3, DL_SHAPE(1, 77, D)) != DL_OK || dl_tensor_alloc(&neg, 3, DL_SHAPE(1, 77, D)) != DL_OK ||
        dl_tensor_alloc(&context, 3, DL_SHAPE(2, 77, D)) != DL_OK || sd_pipeline_encode(&p, o.prompt, &pos, NULL) != DL_OK ||
        sd_pipeline_encode(&p, o.negative_prompt, &neg, NULL) != DL_OK || sd_cfg_context(&context, &neg, &pos) != DL_OK)
        dl_die(NULL);
    sd_pipeline_release_text_encoder(&p);
    o.prompt_embeds = &context;

    if (!headless && !(L.win = viz_open("difflab 08 - img2img", 4 * (TILE + 10) + 10 > (L.n_sweep + 1) * (TILE + 10) + 10 ?
                                        4 * (TILE + 10) + 10 : (L.n_sweep + 1) * (TILE + 10) + 10, 2 * tile_h(&L) + 120, 1)))
        dl_die("run with --headless");

    /* 4. the asked strength */
    dl_tensor latents = {0};
    char now[64];
    snprintf(now, sizeof now, "strength %g", strength);
    L.now = now;
    if (run_one(&L, &o, &moments, strength, &L.main_out, save_path ? &latents : NULL, NULL)) {
        char params[4096];
        int n = sd_parameters_text(params, sizeof params, &o, p.name);
        snprintf(params + n, sizeof params - (size_t)n, ", Denoising strength: %g", strength);
        if (dl_png_save_with_text(&L.main_out, out, "parameters", params) != DL_OK) dl_die("check --out");
        printf("wrote %s (%dx%d)\n", out, L.main_out.w, L.main_out.h);
        if (save_path) {
            dl_st_writer w;
            if (dl_st_writer_init(&w) != DL_OK || dl_st_writer_add(&w, "latents_final", &latents) != DL_OK ||
                dl_st_writer_set_metadata(&w, "parameters", params) != DL_OK || dl_st_writer_save(&w, save_path) != DL_OK)
                dl_die("check --save-latents");
            dl_st_writer_free(&w);
            printf("wrote %s (latents_final)\n", save_path);
        }
    }

    /* 5. the sweep: same seed, same prompt, only the strength changes */
    for (int k = 0; k < L.n_sweep && !L.quit; k++) {
        sd_img2img_plan plan = {0};
        plan.init_timestep = o.steps - sd_img2img_t_start(o.steps, L.sweep[k]);
        snprintf(L.label[k], sizeof L.label[k], "s=%g: %d of %d steps", L.sweep[k], plan.init_timestep, o.steps);
        if (plan.init_timestep < 1) {
            printf("strength %g runs no step with --steps %d: left out\n", L.sweep[k], o.steps);
            dl_image_alloc(&L.out[k], 8, 8, 3);
            dl_image_alloc(&L.start[k], 8, 8, 3);
            L.done++;
            continue;
        }
        snprintf(now, sizeof now, "sweep %d/%d (strength %g)", k + 1, L.n_sweep, L.sweep[k]);
        if (!run_one(&L, &o, &moments, L.sweep[k], &L.out[k], NULL, &L.start[k])) break;
        L.done++;
    }
    if (L.n_sweep && L.done == L.n_sweep) {
        static const char *cols[MAX_SWEEP + 1], *rows[2] = {"start", "result"};
        cols[0] = "input";
        for (int k = 0; k < L.n_sweep; k++) cols[k + 1] = L.label[k];
        int tw = o.width < 96 ? 96 : o.width > 256 ? 256 : o.width, th = tw * o.height / o.width;
        char title[300];
        snprintf(title, sizeof title, "img2img strength sweep: \"%.120s\", seed %llu, %s", o.prompt,
                 (unsigned long long)o.seed, sched);
        dl_grid g = {.rows = 2, .cols = L.n_sweep + 1, .tile_w = tw, .tile_h = th, .pad = 6, .text_scale = 1,
                     .title = title, .row_labels = rows, .col_labels = cols};
        dl_image canvas, t;
        if (dl_grid_create(&canvas, &g) != DL_OK) dl_die(NULL);
        for (int row = 0; row < 2; row++)      /* row 0: x_t where sampling starts (linear preview); row 1: the result */
            for (int k = row; k <= L.n_sweep; k++) {
                if (dl_image_resize(&t, k ? (row ? &L.out[k - 1] : &L.start[k - 1]) : &L.input, tw, th) != DL_OK) dl_die(NULL);
                dl_grid_place(&canvas, &g, row, k, &t);
                dl_image_free(&t);
            }
        char path[4096];
        size_t n = strlen(out);
        snprintf(path, sizeof path, "%.*s_sweep.png", (int)(n > 4 && !strcmp(out + n - 4, ".png") ? n - 4 : n), out);
        if (dl_image_save_png(&canvas, path) != DL_OK) dl_die(NULL);
        printf("wrote %s (%dx%d)\n", path, canvas.w, canvas.h);
        dl_image_free(&canvas);
    }
    L.now = NULL;
    if (L.win) {   /* show everything until q */
        if (!L.quit) draw_frame(&L, NULL);
        while (!L.quit) { handle_events(&L); viz_wait(L.win, 30); }
        viz_close(L.win);
    }
    for (int k = 0; k < L.n_sweep; k++) { dl_image_free(&L.out[k]); dl_image_free(&L.start[k]); }
    dl_image_free(&L.main_out);
    dl_image_free(&L.input);
    dl_tensor *ts[] = {&x, &moments, &context, &pos, &neg, &z01, &mean, &latents};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) dl_tensor_free(ts[i]);
    sd_pipeline_free(&p);
    return 0;
}
