/* 05_guidance.c - Lesson 05: classifier-free guidance, one knob.
 *
 * The toy U-Net learned two models in one: eps(x_t, t, class) and, because
 * 10% of the training labels were replaced by the "null" class,
 * eps(x_t, t, null). Classifier-free guidance (Ho & Salimans 2022) runs
 * both on the batch [null, class] and extrapolates from one to the other:
 *
 *     eps = eps_uncond + g (eps_cond - eps_uncond)
 *
 * g = 1 is the plain conditional model; g > 1 pushes each step further
 * towards "looks like this class". This lesson samples every class with
 * g in {1, 2, 3, 5, 7.5, 12, 20} from the SAME initial noise, step by step,
 * next to a heat map of |eps_cond - eps_uncond| (where the class changes
 * the model's mind), and measures the trade-off: judged accuracy (the
 * project's MNIST classifier) against diversity (mean pairwise distance
 * within a class). See docs/05_guidance.md.
 *
 *   bin/05_guidance                 live window
 *   bin/05_guidance --headless      out/05_guidance_grid.png, 05_guidance_heat.png, 05_tradeoff.png
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/image.h"
#include "../core/mnist_classifier.h"
#include "../core/plot.h"
#include "../core/sample_metrics.h"
#include "../core/schedule.h"
#include "../core/toy_sample.h"
#include "../core/train_toy.h"
#include "../viz/app.h"
#include "../viz/viz.h"

#define NG 7
static const float GUIDANCE[NG] = {1.0f, 2.0f, 3.0f, 5.0f, 7.5f, 12.0f, 20.0f};

static const char *USAGE =
    "Lesson 05: classifier-free guidance. Every class sampled with guidance g = 1, 2, 3, 5, 7.5, 12, 20\n"
    "from the same noise, the heat map of |eps_cond - eps_uncond|, and accuracy vs diversity.\n"
    "options:\n"
    "  --checkpoint F   toy model (default data/toy_mnist.safetensors, or a bin/03_train file)\n"
    "  --judge F        MNIST classifier (default data/mnist_classifier.safetensors)\n"
    "  --steps S        DDIM steps (default 50)\n"
    "  --seed X         initial noise (default 0)\n"
    "  --per-class N    samples per class and g for the accuracy/diversity measurement (default 10;\n"
    "                   headless only; 0 skips it)\n"
    "live window keys: space play/pause, right arrow: one step, r: new noise,\n"
    "  left/up/down: heat map column, x: show x_t / predicted x_0, s: screenshot, q or Esc: quit\n";

/* ------------------------------------------------------------------------ */
/* 1. One sampler per guidance scale, all from the same x_T.               */

typedef struct {
    toy_unet *net;
    const dl_schedule *sched;
    int classes, steps;
    int labels[16];            /* row k samples class k                       */
    dl_sampler s[NG];          /* DDIM, eta 0, batch = classes                */
    toy_guided g[NG];          /* the guided model of each column             */
    dl_tensor heat;            /* [classes, 1, S, S]: |eps_cond - eps_uncond| of column heat_col, last step */
    int heat_col;              /* a column with g != 1 (g = 1 never runs the unconditional model) */
    char heat_label[48];       /* the heat column's title                     */
    uint64_t seed;
    dl_rng rng;                /* DDIM with eta 0 draws no noise; the API wants a generator all the same */
} guidance_grid;

static void grid_start(guidance_grid *G, uint64_t seed)
{
    G->seed = seed;
    dl_rng_seed(&G->rng, seed);
    if (dl_sampler_set_noise(&G->s[0], &G->rng) != DL_OK) dl_die(NULL);   /* one torch.randn((classes, C, S, S)) */
    for (int k = 1; k < NG; k++) dl_sampler_set_x(&G->s[k], &G->s[0].x);
    dl_tensor_fill(&G->heat, 0.0f);
    snprintf(G->heat_label, sizeof G->heat_label, "heat g=%g", GUIDANCE[G->heat_col]);
}

static void grid_init(guidance_grid *G, toy_unet *net, const dl_schedule *sched, int steps, uint64_t seed)
{
    memset(G, 0, sizeof *G);
    const toy_unet_config *c = toy_unet_get_config(net);
    G->net = net;
    G->sched = sched;
    G->classes = c->num_classes;
    G->steps = steps;
    G->heat_col = 2;                                            /* g = 3 */
    const int64_t *shape = DL_SHAPE(G->classes, c->in_channels, c->image_size, c->image_size);
    dl_sampler_config cfg = toy_sample_opts_default().config;   /* as lesson 04: x0 clipped to [-1, 1] */
    for (int k = 0; k < G->classes; k++) G->labels[k] = k;
    for (int k = 0; k < NG; k++)
        if (dl_sampler_init(&G->s[k], DL_SAMPLER_DDIM, sched, &cfg, steps, 0.0f, 4, shape) != DL_OK ||
            toy_guided_init(&G->g[k], net, G->labels, G->classes, GUIDANCE[k]) != DL_OK)
            dl_die(NULL);
    if (dl_tensor_alloc(&G->heat, 4, DL_SHAPE(G->classes, 1, c->image_size, c->image_size)) != DL_OK) dl_die(NULL);
    grid_start(G, seed);
}

static void grid_free(guidance_grid *G)
{
    for (int k = 0; k < NG; k++) { dl_sampler_free(&G->s[k]); toy_guided_free(&G->g[k]); }
    dl_tensor_free(&G->heat);
}

static int grid_done(const guidance_grid *G) { return dl_sampler_done(&G->s[0]); }

/* heat = |eps_cond - eps_uncond| (mean over channels) of the heat column's last model call */
static void grid_update_heat(guidance_grid *G)
{
    snprintf(G->heat_label, sizeof G->heat_label, "heat g=%g", GUIDANCE[G->heat_col]);
    if (G->s[G->heat_col].model_calls == 0) return;     /* no model call yet */
    const float *u = dl_cfg_eps_uncond(&G->g[G->heat_col].cfg), *c = dl_cfg_eps_cond(&G->g[G->heat_col].cfg);
    const int64_t C = G->s[0].x.shape[1], P = G->heat.shape[2] * G->heat.shape[3];
    for (int b = 0; b < G->classes; b++)
        for (int64_t p = 0; p < P; p++) {
            float sum = 0;
            for (int64_t ch = 0; ch < C; ch++) {
                size_t i = ((size_t)b * C + ch) * P + p;
                sum += fabsf(c[i] - u[i]);
            }
            G->heat.data[b * P + p] = sum / C;
        }
}

/* One DDIM step in every column (each step is one guided model call). */
static void grid_tick(guidance_grid *G)
{
    if (grid_done(G)) return;
    for (int k = 0; k < NG; k++)
        if (dl_sampler_step(&G->s[k], toy_guided_eps, &G->g[k], &G->rng) != DL_OK) dl_die(NULL);
    grid_update_heat(G);
}

/* ------------------------------------------------------------------------ */
/* 2. Pictures.                                                             */

#define HEAT_MAX 0.5f    /* |eps_cond - eps_uncond| shown as white; eps itself is ~N(0, 1) */

static void grid_figure(dl_image *out, const guidance_grid *G, int show_x0, int zoom, const char *title)
{
    static char col_text[NG + 1][48], row_text[16][8];
    const char *cols[NG + 1], *rows[16];
    const int compact = zoom < 3;            /* the live window: short labels */
    for (int k = 0; k < NG; k++) {
        snprintf(col_text[k], sizeof col_text[k], compact ? "g=%g" : "g = %g", GUIDANCE[k]);
        cols[k] = col_text[k];
    }
    snprintf(col_text[NG], sizeof col_text[NG], "%s", compact ? "heat" : G->heat_label);
    cols[NG] = col_text[NG];
    for (int r = 0; r < G->classes; r++) { snprintf(row_text[r], sizeof row_text[r], "%d", r); rows[r] = row_text[r]; }
    const int S = (int)G->s[0].x.shape[2];
    dl_grid g = { .rows = G->classes, .cols = NG + 1, .tile_w = zoom * S, .tile_h = zoom * S, .pad = 4,
                  .text_scale = 2, .title = title, .row_labels = rows, .col_labels = cols };
    if (dl_grid_create(out, &g) != DL_OK) dl_die(NULL);
    for (int k = 0; k < NG; k++) {
        const dl_sampler *s = &G->s[k];
        const dl_tensor *t = show_x0 && !dl_sampler_done(s) && s->model_calls > 0 ? &s->x0 : &s->x;
        for (int r = 0; r < G->classes; r++) {
            dl_image tile;
            if (dl_tensor_item_image(&tile, t, r, 1.0f, zoom) != DL_OK) dl_die(NULL);
            dl_grid_place(out, &g, r, k, &tile);
            dl_image_free(&tile);
        }
    }
    const int P = S * S;
    for (int r = 0; r < G->classes; r++) {
        dl_image tile;
        if (dl_heatmap_image(&tile, G->heat.data + (size_t)r * P, S, S, HEAT_MAX, zoom) != DL_OK) dl_die(NULL);
        dl_grid_place(out, &g, r, NG, &tile);
        dl_image_free(&tile);
    }
}

/* ------------------------------------------------------------------------ */
/* 3. Headless: the grid, the heat maps along the way, the trade-off.      */

static void save(dl_app *app, const char *name, dl_image *img)
{
    if (dl_app_save(app, name, img) != DL_OK) dl_die("check --out");
    dl_image_free(img);
}

static void run_figures(dl_app *app, guidance_grid *G)
{
    enum { SNAPS = 5 };
    const int S = (int)G->s[0].x.shape[2], P = S * S;
    int at[SNAPS];                       /* steps after which the heat maps are taken */
    for (int i = 0; i < SNAPS; i++) at[i] = 1 + (G->steps - 1) * i / (SNAPS - 1);
    static char col_text[SNAPS][32], row_text[16][8];
    const char *cols[SNAPS], *rows[16];
    for (int r = 0; r < G->classes; r++) { snprintf(row_text[r], sizeof row_text[r], "%d", r); rows[r] = row_text[r]; }
    dl_tensor snaps[SNAPS];
    for (int i = 0, done = 0; i < SNAPS; i++) {
        while (done < at[i]) {
            int t = dl_sampler_current_t(&G->s[0]);
            grid_tick(G);
            done++;
            snprintf(col_text[i], sizeof col_text[i], "t = %d", t);
        }
        cols[i] = col_text[i];
        if (dl_tensor_alloc(&snaps[i], 4, G->heat.shape) != DL_OK || dl_tensor_copy(&snaps[i], &G->heat) != DL_OK) dl_die(NULL);
    }
    while (!grid_done(G)) grid_tick(G);

    char title[200];
    snprintf(title, sizeof title, "classifier-free guidance: DDIM %d steps, the same noise in every row (seed %llu)",
             G->steps, (unsigned long long)G->seed);
    /* the heat column of the grid: the middle snapshot, where guidance does most */
    if (dl_tensor_copy(&G->heat, &snaps[SNAPS / 2]) != DL_OK) dl_die(NULL);
    snprintf(G->heat_label, sizeof G->heat_label, "heat, %s", col_text[SNAPS / 2]);
    dl_image img;
    grid_figure(&img, G, 0, 3, title);
    save(app, "05_guidance_grid.png", &img);

    snprintf(title, sizeof title, "|eps_cond - eps_uncond| on the way (g = %g; white = %g)", GUIDANCE[G->heat_col],
             HEAT_MAX);
    dl_grid g = { .rows = G->classes, .cols = SNAPS, .tile_w = 3 * S, .tile_h = 3 * S, .pad = 4, .text_scale = 2,
                  .title = title, .row_labels = rows, .col_labels = cols };
    if (dl_grid_create(&img, &g) != DL_OK) dl_die(NULL);
    for (int i = 0; i < SNAPS; i++) {
        for (int r = 0; r < G->classes; r++) {
            dl_image tile;
            if (dl_heatmap_image(&tile, snaps[i].data + (size_t)r * P, S, S, HEAT_MAX, 3) != DL_OK) dl_die(NULL);
            dl_grid_place(&img, &g, r, i, &tile);
            dl_image_free(&tile);
        }
        dl_tensor_free(&snaps[i]);
    }
    save(app, "05_guidance_heat.png", &img);
}

/* For every g: per_class samples of every class (same noise for every g),
 * judged accuracy and diversity; a table and two plots. */
static void run_tradeoff(dl_app *app, toy_unet *net, const dl_schedule *sched, int steps, uint64_t seed,
                         int per_class, const char *judge_path)
{
    const toy_unet_config *c = toy_unet_get_config(net);
    if (c->in_channels != 1 || c->num_classes != 10) {
        printf("trade-off: skipped (the judge knows MNIST digits; this model has %d classes, %d channels)\n",
               c->num_classes, c->in_channels);
        return;
    }
    mnist_classifier *clf;
    if (mnist_classifier_load(&clf, judge_path, 256) != DL_OK) dl_die("train the judge with bin/train_classifier (data/README.md)");
    const int S = c->image_size, n = per_class;
    dl_tensor x;
    int labels[10000];
    if (n > 10000 || dl_tensor_alloc(&x, 4, DL_SHAPE(n, 1, S, S)) != DL_OK) dl_die(NULL);
    float gs[NG], acc[NG], div[NG];
    printf("\n  g     judged accuracy   diversity     (%d samples per class, DDIM %d steps)\n", n, steps);
    for (int k = 0; k < NG; k++) {
        toy_sample_opts o = toy_sample_opts_default();
        o.steps = steps;
        o.guidance = GUIDANCE[k];
        int correct = 0;
        double diversity = 0;
        for (int cls = 0; cls < 10; cls++) {
            dl_rng rng;
            dl_rng_seed(&rng, seed + 1000 + (uint64_t)cls);   /* the same noise for every g */
            for (int i = 0; i < n; i++) labels[i] = cls;
            int ok = 0;
            if (toy_sample(net, sched, &o, labels, n, &rng, &x) != DL_OK || sample_judge_count(clf, &x, labels, &ok) != DL_OK)
                dl_die(NULL);
            correct += ok;
            diversity += sample_diversity(x.data, n, S * S);
        }
        gs[k] = GUIDANCE[k];
        acc[k] = 100.0f * correct / (10.0f * n);
        div[k] = (float)(diversity / 10);
        printf("  %-5g %9.1f %%       %.3f\n", (double)gs[k], (double)acc[k], (double)div[k]);
        fflush(stdout);
    }
    dl_plot pa, pd;
    dl_plot_init(&pa, "judged accuracy", "guidance scale g", "% judged the requested digit");
    dl_plot_init(&pd, "diversity", "guidance scale g", "mean pairwise RMS distance");
    pa.legend = pd.legend = 0;
    dl_plot_add_series(&pa, "", gs, acc, NG, DL_PLOT_BLUE);
    dl_plot_add_series(&pd, "", gs, div, NG, DL_PLOT_ORANGE);
    dl_plot_set_yrange(&pa, 0, 100);
    dl_image img;
    if (dl_image_alloc(&img, 1280, 480, 3) != DL_OK) dl_die(NULL);
    dl_image_fill(&img, 255, 255, 255);
    dl_plot_draw(&pa, &img, 0, 0, 640, 480);
    dl_plot_draw(&pd, &img, 640, 0, 640, 480);
    dl_plot_free(&pa);
    dl_plot_free(&pd);
    save(app, "05_tradeoff.png", &img);
    dl_tensor_free(&x);
    mnist_classifier_free(clf);
}

/* ------------------------------------------------------------------------ */
/* 4. Live.                                                                  */

static void run_live(dl_app *app, guidance_grid *G)
{
    dl_image frame;
    char title[200];
    snprintf(title, sizeof title, "step 0/%d", G->steps);
    grid_figure(&frame, G, 0, 2, title);              /* to learn the window size */
    const int W = frame.w > 580 ? frame.w : 580, H = frame.h + 60;
    viz_window *win = viz_open("difflab 05 - guidance", W, H, 1);
    if (!win) dl_die("run with --headless to write the pictures instead");
    dl_image canvas;
    if (dl_image_alloc(&canvas, W, H, 3) != DL_OK) dl_die(NULL);
    dl_image_free(&frame);
    int playing = 1, show_x0 = 0, dirty = 1, shots = 0;
    for (int64_t frame_no = 0, running = 1; running; frame_no++) {
        viz_event ev;
        while (viz_poll(win, &ev)) {
            if (ev.type == VIZ_QUIT) running = 0;
            if (ev.type != VIZ_KEY) continue;
            int k = ev.key;
            if (k == 'q' || k == VIZ_KEY_ESCAPE) running = 0;
            else if (k == ' ') playing = !playing;
            else if (k == VIZ_KEY_RIGHT) { playing = 0; grid_tick(G); }
            else if (k == 'r') grid_start(G, G->seed + 1);
            else if (k == 'x') show_x0 = !show_x0;
            else if (k == VIZ_KEY_LEFT || k == VIZ_KEY_UP || k == VIZ_KEY_DOWN) {
                G->heat_col = G->heat_col % (NG - 1) + 1;   /* cycles 1 .. NG-1 (g = 1 has no uncond) */
                grid_update_heat(G);
            } else if (k == 's') {
                char name[64];
                snprintf(name, sizeof name, "05_screenshot_%03d.png", ++shots);
                dl_app_save(app, name, &canvas);
            }
            dirty = 1;
        }
        if (playing && !grid_done(G)) { grid_tick(G); dirty = 1; }
        if (dirty) {
            int done = G->s[0].step_index;
            snprintf(title, sizeof title, "step %d/%d  t=%d  %s  heat: g=%g", done, G->steps,
                     dl_sampler_current_t(&G->s[0]), show_x0 ? "x0_hat" : "x_t", GUIDANCE[G->heat_col]);
            grid_figure(&frame, G, show_x0, 2, title);
            dl_image_fill(&canvas, 255, 255, 255);
            dl_image_blit(&canvas, &frame, 0, 0);
            dl_image_free(&frame);
            dl_image_draw_text(&canvas, 8, canvas.h - 52, "space play  right step  r new noise", 80, 80, 80, 2);
            dl_image_draw_text(&canvas, 8, canvas.h - 26, "up/down heat column  x x_t/x0  s save  q quit", 80, 80, 80, 2);
            viz_present(win, &canvas);
            dirty = 0;
        }
        if (dl_app_frame_limit(app, win, frame_no + 1)) running = 0;   /* scripted run: keep what was shown */
        viz_wait(win, 16);
    }
    dl_image_free(&canvas);
    viz_close(win);
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    dl_app app;
    dl_app_init(&app, "05_guidance", USAGE);
    const char *checkpoint = "data/toy_mnist.safetensors", *judge = "data/mnist_classifier.safetensors";
    int steps = 50, per_class = 10;
    uint64_t seed = 0;
    for (int i = 1; i < argc; i++) {
        if (dl_app_common_arg(&app, argc, argv, &i)) continue;
        const char *a = argv[i];
        if (!strcmp(a, "--checkpoint")) checkpoint = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--judge")) judge = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--steps")) steps = (int)dl_arg_int(&app, argc, argv, &i, 2, 1000);
        else if (!strcmp(a, "--seed")) seed = (uint64_t)dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(a, "--per-class")) per_class = (int)dl_arg_int(&app, argc, argv, &i, 0, 1000);
        else dl_app_bad_arg(&app, "unknown option '%s'", a);
    }
    if (per_class == 1) dl_app_bad_arg(&app, "--per-class 1: diversity needs at least 2 samples (or 0 to skip)");
    int headless = dl_app_choose_mode(&app);

    toy_unet *net;
    /* the grid runs 2 x classes images per model call; the measurement up to 64 */
    if (toy_trainer_load_model(&net, checkpoint, 64) != DL_OK)
        dl_die("give a file written by bin/03_train, e.g. --checkpoint out/03/toy_mnist.safetensors");
    const toy_unet_config *c = toy_unet_get_config(net);
    if (c->num_classes > 16) dl_die_msg(NULL, "%s: %d classes, this lesson shows at most 16", checkpoint, c->num_classes);
    dl_schedule sched;
    if (dl_schedule_init_default(&sched, TOY_TRAIN_SCHEDULE) != DL_OK) dl_die(NULL);
    printf("model %s: %d classes; DDIM %d steps, guidance", checkpoint, c->num_classes, steps);
    for (int k = 0; k < NG; k++) printf(" %g", GUIDANCE[k]);
    printf("\n");

    guidance_grid G;
    grid_init(&G, net, &sched, steps, seed);
    if (headless) {
        run_figures(&app, &G);
        if (per_class > 0) run_tradeoff(&app, net, &sched, steps, seed, per_class, judge);
    } else {
        run_live(&app, &G);
    }
    grid_free(&G);
    dl_schedule_free(&sched);
    toy_unet_free(net);
    return 0;
}
