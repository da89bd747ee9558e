/* 04_sampling.c - Lesson 04: the reverse process, from noise to a digit.
 *
 * A trained model eps_theta(x_t, t, class) guesses the noise in x_t. From
 * that guess follows a guess of the clean picture,
 *
 *     x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
 *
 * and a sampler uses both to take a step back towards t = 0:
 *
 *   DDPM  x_{t-1} = mean of q(x_{t-1} | x_t, x0_hat) + sigma_t z    1000 steps
 *   DDIM  x_{t'}  = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - s^2) eps_hat + s z
 *                   with s = eta * sigma, any t' < t: 50 steps do the job
 *
 * The window runs DDPM (1000 steps), DDIM with eta = 0 and DDIM with
 * eta = 1 (50 steps each) side by side from the SAME initial noise and
 * shows, for the current step, x_t, the predicted noise and the predicted
 * x_0. See docs/04_sampling.md for the maths and the exercises.
 *
 *   bin/04_sampling                       live window (if there is a display)
 *   bin/04_sampling --headless            out/04_reverse_process.png, out/04_samples.png
 *   bin/04_sampling --class 7 --count 16 --headless     out/class7_0.png ... + out/class7_grid.png
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../core/checkpoint.h"
#include "../core/image.h"
#include "../core/optim.h"
#include "../core/plot.h"
#include "../core/rng.h"
#include "../core/sampling.h"
#include "../core/schedule.h"
#include "../core/toy_sample.h"
#include "../core/train_toy.h"
#include "../core/toy_unet.h"
#include "../viz/app.h"
#include "../viz/viz.h"

#define DEFAULT_CHECKPOINT "data/toy_mnist.safetensors"

static const char *USAGE =
    "Lesson 04: the reverse process. DDPM (1000 steps) next to DDIM (50 steps, eta 0 and 1),\n"
    "showing x_t, the predicted noise and the predicted x_0 at every step.\n"
    "It is also the scriptable sampler of the toy model.\n"
    "options:\n"
    "  --checkpoint F     model to sample (default " DEFAULT_CHECKPOINT "; any file written\n"
    "                     by bin/03_train works, its EMA weights are used)\n"
    "  --class K          the class to draw (0 .. classes-1). Headless with --class: writes\n"
    "                     OUT/class<K>_<i>.png (one image per sample) and OUT/class<K>_grid.png.\n"
    "                     Headless without --class: OUT/04_reverse_process.png and\n"
    "                     OUT/04_samples.png (one row per class). Live: the class shown first.\n"
    "  --count N          samples (default 8)\n"
    "  --guidance G       classifier-free guidance scale (default 3; 1 = no guidance)\n"
    "  --scheduler NAME   ddpm ddim pndm lms euler euler_a heun kdpm2 kdpm2_a dpmpp_2m\n"
    "                     dpmpp_2m_karras unipc lcm (default ddim; lesson 06 races them)\n"
    "  --steps S          sampler steps (default 50; 1000 for ddpm)\n"
    "  --eta E            DDIM noise: 0 deterministic (default) .. 1 like DDPM\n"
    "  --seed X           seed of the initial noise (default 0; torch.randn with manual_seed(X))\n"
    "  --ddpm-steps N     DDPM steps of the live view and 04_reverse_process.png (default 1000 =\n"
    "                     every training step; fewer run faster on a slow machine)\n"
    "live window keys: space play/pause, right arrow: one step, r: restart with new noise,\n"
    "  0-9: class, up/down: guidance +-0.5, s: screenshot, q or Esc: quit\n";

/* ------------------------------------------------------------------------ */
/* 1. The model: a toy U-Net from a checkpoint, with its EMA weights.        */

typedef struct {
    toy_unet *net;
    toy_unet_config cfg;
    dl_schedule sched;        /* the training schedule: DDPM's linear 1e-4..0.02, T = 1000 */
    int64_t step;             /* training steps the checkpoint had */
} model;

static void load_model(model *m, const char *path, int max_batch)
{
    if (access(path, R_OK) != 0) {
        if (!strcmp(path, DEFAULT_CHECKPOINT))
            dl_die_msg("train one: bin/03_train --dataset mnist --out out/03 (about 10 minutes), then\n"
                       "      bin/04_sampling --checkpoint out/03/toy_mnist.safetensors",
                       "the shipped checkpoint %s is not there", path);
        dl_die_msg("give the path of a file written by bin/03_train", "cannot read checkpoint '%s'", path);
    }
    char json[4096];
    const char *hint = "is it a checkpoint written by bin/03_train?";
    if (dl_checkpoint_read_config(path, json, sizeof json) != DL_OK) dl_die(hint);
    if (toy_unet_config_from_json(&m->cfg, json) != DL_OK) dl_die(hint);
    if (toy_unet_create(&m->net, &m->cfg, max_batch, 0) != DL_OK) dl_die(NULL);
    /* Load live weights and (if the file has them) EMA weights, then sample
     * with the EMA weights: a file without "ema.*" gives an EMA equal to
     * its weights, so the swap is harmless for the shipped EMA-only file. */
    dl_param_list *params = toy_unet_params(m->net);
    dl_ema ema;
    if (dl_ema_init(&ema, params, 0.999f) != DL_OK) dl_die(NULL);
    if (dl_checkpoint_load(path, params, &ema, NULL, NULL, &m->step, NULL, 0) != DL_OK) dl_die(hint);
    dl_ema_swap(&ema, params);
    dl_ema_free(&ema);
    if (dl_schedule_init_default(&m->sched, TOY_TRAIN_SCHEDULE) != DL_OK) dl_die(NULL);   /* as training */
}

static void free_model(model *m)
{
    toy_unet_free(m->net);
    dl_schedule_free(&m->sched);
}

/* ------------------------------------------------------------------------ */
/* 2. Pictures of tensors.                                                   */

/* Item b of t [B, C, S, S] as a picture, values in [-range, range] mapped to
 * black..white, enlarged `zoom` times. */
static dl_image tile(const dl_tensor *t, int b, float range, int zoom)
{
    dl_image img;
    if (dl_tensor_item_image(&img, t, b, range, zoom) != DL_OK) dl_die(NULL);
    return img;
}

/* ------------------------------------------------------------------------ */
/* 3. Three samplers in step: DDPM 1000, DDIM 50 eta 0, DDIM 50 eta 1.      */

enum { RACE_DDPM, RACE_DDIM0, RACE_DDIM1, RACE_N };
static const char *const RACE_NAME[RACE_N] = {"DDPM", "DDIM, 50 steps, eta 0", "DDIM, 50 steps, eta 1"};
#define RACE_DDIM_STEPS 50

typedef struct {
    model *m;
    dl_sampler s[RACE_N];
    toy_guided g;             /* one image, guided: the net sees 2 (null, class) */
    dl_rng rng;               /* initial noise, then the samplers' own noise      */
    int cls;
    float guidance;
    uint64_t seed;
} race;

/* Make sure every sampler's eps / x0 belong to its current x (so the
 * picture shows x_t with the model's guesses for it). */
static void race_predict(race *r)
{
    for (int k = 0; k < RACE_N; k++)
        if (!dl_sampler_done(&r->s[k]) && !r->s[k].have_prediction)
            if (dl_sampler_predict(&r->s[k], toy_guided_eps, &r->g) != DL_OK) dl_die(NULL);
}

static void race_start(race *r, int cls, float guidance, uint64_t seed)
{
    toy_guided_free(&r->g);
    r->cls = cls;
    r->guidance = guidance;
    r->seed = seed;
    if (toy_guided_init(&r->g, r->m->net, &cls, 1, guidance) != DL_OK) dl_die(NULL);
    dl_rng_seed(&r->rng, seed);
    /* the same x_T for all three: one torch.randn((1, C, S, S)) */
    if (dl_sampler_set_noise(&r->s[0], &r->rng) != DL_OK) dl_die(NULL);
    for (int k = 1; k < RACE_N; k++) dl_sampler_set_x(&r->s[k], &r->s[0].x);
    race_predict(r);
}

static void race_init(race *r, model *m, int ddpm_steps, int cls, float guidance, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    r->m = m;
    dl_sampler_config cfg = toy_sample_opts_default().config;   /* leading, offset 0, x0 clipped to [-1, 1] */
    int S = m->cfg.image_size, C = m->cfg.in_channels;
    const int64_t *shape = DL_SHAPE(1, C, S, S);
    if (dl_sampler_init(&r->s[RACE_DDPM], DL_SAMPLER_DDPM, &m->sched, &cfg, ddpm_steps, 0, 4, shape) != DL_OK ||
        dl_sampler_init(&r->s[RACE_DDIM0], DL_SAMPLER_DDIM, &m->sched, &cfg, RACE_DDIM_STEPS, 0, 4, shape) != DL_OK ||
        dl_sampler_init(&r->s[RACE_DDIM1], DL_SAMPLER_DDIM, &m->sched, &cfg, RACE_DDIM_STEPS, 1, 4, shape) != DL_OK)
        dl_die(NULL);
    race_start(r, cls, guidance, seed);
}

static void race_free(race *r)
{
    for (int k = 0; k < RACE_N; k++) dl_sampler_free(&r->s[k]);
    toy_guided_free(&r->g);
}

static int race_done(const race *r) { return dl_sampler_done(&r->s[RACE_DDIM0]); }

/* One DDIM step for both DDIMs; DDPM catches up to the same t (20 steps). */
static void race_tick(race *r)
{
    if (race_done(r)) return;
    for (int k = RACE_DDIM0; k <= RACE_DDIM1; k++)
        if (dl_sampler_step(&r->s[k], toy_guided_eps, &r->g, &r->rng) != DL_OK) dl_die(NULL);
    int target = dl_sampler_current_t(&r->s[RACE_DDIM0]);   /* -1 when done */
    dl_sampler *d = &r->s[RACE_DDPM];
    while (!dl_sampler_done(d) && dl_sampler_current_t(d) > target)
        if (dl_sampler_step(d, toy_guided_eps, &r->g, &r->rng) != DL_OK) dl_die(NULL);
    race_predict(r);
}

/* The t a sampler is at, as text ("t = 980" or "done"). */
static void t_text(char *buf, size_t n, const dl_sampler *s)
{
    if (dl_sampler_done(s)) snprintf(buf, n, "done (%lld calls)", (long long)s->model_calls);
    else snprintf(buf, n, "t = %d (%lld calls)", dl_sampler_current_t(s), (long long)s->model_calls);
}

/* ------------------------------------------------------------------------ */
/* 4. Headless: the scriptable sampler and the figures.                     */

typedef struct {
    int cls;                  /* -1: not given */
    int count;
    float guidance, eta;
    dl_sampler_kind kind;
    int steps;                /* 0: the scheduler's default */
    uint64_t seed;
    int ddpm_steps;           /* DDPM in the live view / figure (1000) */
} options;

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* count samples; sample i has class labels[i]. */
static void sample_labels(model *m, const options *o, const int *labels, int count, dl_tensor *out)
{
    toy_sample_opts so = toy_sample_opts_default();
    so.kind = o->kind;
    so.steps = o->steps ? o->steps : (o->kind == DL_SAMPLER_DDPM ? m->sched.num_train_timesteps : 50);
    so.eta = o->eta;
    so.guidance = o->guidance;
    dl_rng rng;
    dl_rng_seed(&rng, o->seed);
    if (dl_tensor_alloc(out, 4, DL_SHAPE(count, m->cfg.in_channels, m->cfg.image_size, m->cfg.image_size)) != DL_OK) dl_die(NULL);
    if (toy_sample(m->net, &m->sched, &so, labels, count, &rng, out) != DL_OK) dl_die(NULL);
}

/* --class K: OUT/class<K>_<i>.png at the model's size, and a contact sheet. */
static void run_scripted(dl_app *app, model *m, const options *o)
{
    double t0 = seconds_now();
    dl_tensor x;
    int *labels = malloc(sizeof(int) * (size_t)o->count);
    if (!labels) dl_die_msg(NULL, "out of memory");
    for (int i = 0; i < o->count; i++) labels[i] = o->cls;
    sample_labels(m, o, labels, o->count, &x);
    free(labels);
    char name[64];
    for (int i = 0; i < o->count; i++) {
        dl_image img;
        if (dl_tensor_to_image(&img, &x, i) != DL_OK) dl_die(NULL);
        snprintf(name, sizeof name, "class%d_%d.png", o->cls, i);
        if (dl_app_save(app, name, &img) != DL_OK) dl_die("check --out");
        dl_image_free(&img);
    }
    int cols = o->count < 8 ? o->count : 8, rows = (o->count + cols - 1) / cols;
    char title[160];
    snprintf(title, sizeof title, "class %d, %s %d steps, guidance %g, seed %llu", o->cls, dl_sampler_names[o->kind],
             o->steps ? o->steps : (o->kind == DL_SAMPLER_DDPM ? 1000 : 50), o->guidance, (unsigned long long)o->seed);
    dl_grid g = { .rows = rows, .cols = cols, .tile_w = 4 * m->cfg.image_size, .tile_h = 4 * m->cfg.image_size,
                  .pad = 6, .text_scale = 2, .title = title };
    dl_image sheet;
    if (dl_grid_create(&sheet, &g) != DL_OK) dl_die(NULL);
    for (int i = 0; i < o->count; i++) {
        dl_image t = tile(&x, i, 1.0f, 4);
        dl_grid_place(&sheet, &g, i / cols, i % cols, &t);
        dl_image_free(&t);
    }
    snprintf(name, sizeof name, "class%d_grid.png", o->cls);
    if (dl_app_save(app, name, &sheet) != DL_OK) dl_die("check --out");
    dl_image_free(&sheet);
    printf("sampled %d images of class %d in %.1f s\n", o->count, o->cls, seconds_now() - t0);
    dl_tensor_free(&x);
}

/* One row per class, `count` samples each. */
static void samples_figure(dl_app *app, model *m, const options *o)
{
    int n = m->cfg.num_classes, cols = o->count < 8 ? o->count : 8;
    char row_text[16][16], title[160];
    const char *rows[16];
    for (int c = 0; c < n && c < 16; c++) { snprintf(row_text[c], sizeof row_text[c], "%d", c); rows[c] = row_text[c]; }
    snprintf(title, sizeof title, "one row per class: %s, guidance %g, seed %llu", dl_sampler_names[o->kind],
             o->guidance, (unsigned long long)o->seed);
    dl_grid g = { .rows = n, .cols = cols, .tile_w = 3 * m->cfg.image_size, .tile_h = 3 * m->cfg.image_size,
                  .pad = 4, .text_scale = 2, .title = title, .row_labels = rows };
    dl_image sheet;
    if (dl_grid_create(&sheet, &g) != DL_OK) dl_die(NULL);
    int labels[16 * 8];
    for (int i = 0; i < n * cols; i++) labels[i] = i / cols;
    dl_tensor x;
    sample_labels(m, o, labels, n * cols, &x);   /* all classes in one go: fewer, larger batches */
    for (int i = 0; i < n * cols; i++) {
        dl_image t = tile(&x, i, 1.0f, 3);
        dl_grid_place(&sheet, &g, i / cols, i % cols, &t);
        dl_image_free(&t);
    }
    dl_tensor_free(&x);
    if (dl_app_save(app, "04_samples.png", &sheet) != DL_OK) dl_die("check --out");
    dl_image_free(&sheet);
}

/* Rows: x_t and x0_hat for each sampler; columns: snapshots along the way. */
static void reverse_process_figure(dl_app *app, model *m, const options *o)
{
    enum { COLS = 8 };
    const int at_tick[COLS] = {0, 10, 20, 30, 40, 45, 49, 50};   /* DDIM steps done */
    const char *row_labels[2 * RACE_N] = {"DDPM x_t", "x0_hat", "DDIM0 x_t", "x0_hat", "DDIM1 x_t", "x0_hat"};
    char col_text[COLS][32];
    const char *cols[COLS];
    race r;
    int cls = o->cls >= 0 ? o->cls : 0;
    race_init(&r, m, o->ddpm_steps, cls, o->guidance, o->seed);
    int S = m->cfg.image_size, zoom = 3;
    char title[200];
    snprintf(title, sizeof title, "the reverse process, class %d, guidance %g, seed %llu: DDPM %d steps,\n"
             "DDIM 50 steps with eta 0 (DDIM0) and eta 1 (DDIM1), all from the same x_T", cls, o->guidance,
             (unsigned long long)o->seed, o->ddpm_steps);
    dl_grid g = { .rows = 2 * RACE_N, .cols = COLS, .tile_w = zoom * S, .tile_h = zoom * S, .pad = 6,
                  .text_scale = 2, .title = title, .row_labels = row_labels, .col_labels = cols };
    dl_image tiles[COLS][2 * RACE_N];
    int ticks = 0;
    for (int c = 0; c < COLS; c++) {
        while (ticks < at_tick[c]) { race_tick(&r); ticks++; }
        int t = dl_sampler_current_t(&r.s[RACE_DDIM0]);
        if (t >= 0) snprintf(col_text[c], sizeof col_text[c], "t = %d", t);
        else snprintf(col_text[c], sizeof col_text[c], "result");
        cols[c] = col_text[c];
        for (int k = 0; k < RACE_N; k++) {
            const dl_sampler *s = &r.s[k];
            tiles[c][2 * k] = tile(&s->x, 0, 1.0f, zoom);
            tiles[c][2 * k + 1] = tile(dl_sampler_done(s) ? &s->x : &s->x0, 0, 1.0f, zoom);
        }
    }
    dl_image canvas;
    if (dl_grid_create(&canvas, &g) != DL_OK) dl_die(NULL);
    for (int c = 0; c < COLS; c++)
        for (int k = 0; k < 2 * RACE_N; k++) {
            dl_grid_place(&canvas, &g, k, c, &tiles[c][k]);
            dl_image_free(&tiles[c][k]);
        }
    if (dl_app_save(app, "04_reverse_process.png", &canvas) != DL_OK) dl_die("check --out");
    dl_image_free(&canvas);
    race_free(&r);
}

/* ------------------------------------------------------------------------ */
/* 5. The live window.                                                       */

#define FRAME_W 1100
#define FRAME_H 600
#define ZOOM 4
#define TEXT 2

typedef struct {
    int playing, shots, message_frames;
    char message[160];
} live_state;

static void draw_frame(dl_image *f, const race *r, const live_state *st, const model *m)
{
    dl_image_fill(f, 250, 250, 250);
    char line[200];
    snprintf(line, sizeof line, "class %d, guidance %.1f, seed %llu (model: %lld training steps)", r->cls, r->guidance,
             (unsigned long long)r->seed, (long long)m->step);
    dl_image_draw_text(f, 16, 10, line, 0, 0, 0, TEXT);
    const int S = m->cfg.image_size * ZOOM, x0 = 260, y0 = 96, dx = S + 24, dy = S + 36;
    const char *heads[3] = {"\nx_t", "predicted\nnoise", "predicted\nx_0"};
    for (int c = 0; c < 3; c++) dl_image_draw_text(f, x0 + c * dx, y0 - 54, heads[c], 0, 0, 0, TEXT);
    for (int k = 0; k < RACE_N; k++) {
        const dl_sampler *s = &r->s[k];
        int y = y0 + k * dy;
        if (k == RACE_DDPM) snprintf(line, sizeof line, "DDPM, %d steps", s->num_steps);
        else snprintf(line, sizeof line, "%s", RACE_NAME[k]);
        dl_image_draw_text(f, 16, y + 8, line, 0, 0, 0, TEXT);
        t_text(line, sizeof line, s);
        dl_image_draw_text(f, 16, y + 34, line, 80, 80, 80, TEXT);
        int done = dl_sampler_done(s);
        /* after the last step x is the result; eps / x0 are from the last call */
        dl_image a = tile(&s->x, 0, 1.0f, ZOOM), b = tile(&s->eps, 0, 2.5f, ZOOM), c = tile(done ? &s->x : &s->x0, 0, 1.0f, ZOOM);
        dl_image_blit(f, &a, x0, y);
        dl_image_blit(f, &b, x0 + dx, y);
        dl_image_blit(f, &c, x0 + 2 * dx, y);
        dl_image_free(&a);
        dl_image_free(&b);
        dl_image_free(&c);
    }
    /* the noise level the samplers are at, on the schedule's curve */
    enum { T = 1000 };
    static float ts[T], noise[T];
    int n = m->sched.num_train_timesteps < T ? m->sched.num_train_timesteps : T;
    for (int t = 0; t < n; t++) { ts[t] = (float)t; noise[t] = sqrtf(1.0f - m->sched.alphas_cumprod[t]); }
    dl_plot p;
    dl_plot_init(&p, "sqrt(1 - abar_t)", "t", "noise level");
    p.legend = 0;
    dl_plot_add_series(&p, "", ts, noise, n, DL_PLOT_BLUE);
    dl_plot_set_yrange(&p, 0, 1);
    int t = dl_sampler_current_t(&r->s[RACE_DDIM0]);
    p.has_marker = t >= 0;
    p.marker_x = (float)t;
    dl_plot_draw(&p, f, x0 + 3 * dx + 8, y0 - 30, FRAME_W - (x0 + 3 * dx) - 16, 320);
    dl_plot_free(&p);
    if (st->message_frames > 0) dl_image_draw_text(f, 16, FRAME_H - 30, st->message, 0, 120, 0, TEXT);
    else dl_image_draw_text(f, 16, FRAME_H - 30,
                            "space: play/pause  right: step  r: new noise  0-9: class  up/down: guidance  s: save  q: quit",
                            80, 80, 80, TEXT);
}

static void run_live(dl_app *app, model *m, const options *o)
{
    viz_window *win = viz_open("difflab 04 - sampling", FRAME_W, FRAME_H, 1);
    if (!win) dl_die("run with --headless to write the pictures instead");
    dl_image frame;
    if (dl_image_alloc(&frame, FRAME_W, FRAME_H, 3) != DL_OK) dl_die(NULL);
    race r;
    race_init(&r, m, o->ddpm_steps, o->cls >= 0 ? o->cls : 0, o->guidance, o->seed);
    live_state st = { .playing = 1 };
    int dirty = 1;
    for (int64_t frame_no = 0, running = 1; running; frame_no++) {
        viz_event ev;
        while (viz_poll(win, &ev)) {
            if (ev.type == VIZ_QUIT) running = 0;
            if (ev.type != VIZ_KEY) continue;
            int k = ev.key;
            if (k == 'q' || k == VIZ_KEY_ESCAPE) running = 0;
            else if (k == ' ') st.playing = !st.playing;
            else if (k == VIZ_KEY_RIGHT) { st.playing = 0; race_tick(&r); }
            else if (k == 'r') race_start(&r, r.cls, r.guidance, r.seed + 1);
            else if (k >= '0' && k <= '9' && k - '0' < m->cfg.num_classes) race_start(&r, k - '0', r.guidance, r.seed);
            else if (k == VIZ_KEY_UP || k == VIZ_KEY_DOWN) {
                float g = r.guidance + (k == VIZ_KEY_UP ? 0.5f : -0.5f);
                race_start(&r, r.cls, g < 0 ? 0 : (g > 20 ? 20 : g), r.seed);
            } else if (k == 's') {
                char name[64];
                snprintf(name, sizeof name, "04_screenshot_%03d.png", ++st.shots);
                if (dl_app_save(app, name, &frame) == DL_OK) snprintf(st.message, sizeof st.message, "saved %s/%s", app->out_dir, name);
                else snprintf(st.message, sizeof st.message, "could not save: %.120s", dl_error_message());
                st.message_frames = 120;
            }
            dirty = 1;
        }
        if (st.playing && !race_done(&r)) { race_tick(&r); dirty = 1; }
        if (st.message_frames > 0 && --st.message_frames == 0) dirty = 1;
        if (dirty) {
            draw_frame(&frame, &r, &st, m);
            viz_present(win, &frame);
            dirty = 0;
        }
        if (dl_app_frame_limit(app, win, frame_no + 1)) running = 0;   /* scripted run: keep what was shown */
        viz_wait(win, 16);
    }
    race_free(&r);
    dl_image_free(&frame);
    viz_close(win);
}

/* ------------------------------------------------------------------------ */

static float arg_float(dl_app *app, int argc, char **argv, int *i, float lo, float hi)
{
    const char *opt = argv[*i];
    const char *s = dl_arg_str(app, argc, argv, i);
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !isfinite(v)) dl_app_bad_arg(app, "%s wants a number, got '%s'", opt, s);
    if (v < lo || v > hi) dl_app_bad_arg(app, "%s %s is out of range [%g, %g]", opt, s, lo, hi);
    return (float)v;
}

int main(int argc, char **argv)
{
    dl_app app;
    dl_app_init(&app, "04_sampling", USAGE);
    options o = { .cls = -1, .count = 8, .guidance = 3.0f, .eta = 0.0f, .kind = DL_SAMPLER_DDIM, .steps = 0, .seed = 0,
                  .ddpm_steps = 1000 };
    const char *checkpoint = DEFAULT_CHECKPOINT;
    for (int i = 1; i < argc; i++) {
        if (dl_app_common_arg(&app, argc, argv, &i)) continue;
        const char *a = argv[i];
        if (!strcmp(a, "--checkpoint")) checkpoint = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--class")) o.cls = (int)dl_arg_int(&app, argc, argv, &i, 0, 15);
        else if (!strcmp(a, "--count")) o.count = (int)dl_arg_int(&app, argc, argv, &i, 1, 10000);
        else if (!strcmp(a, "--guidance")) o.guidance = arg_float(&app, argc, argv, &i, 0, 100);
        else if (!strcmp(a, "--eta")) o.eta = arg_float(&app, argc, argv, &i, 0, 10);
        else if (!strcmp(a, "--steps")) o.steps = (int)dl_arg_int(&app, argc, argv, &i, 1, 100000);
        else if (!strcmp(a, "--ddpm-steps")) o.ddpm_steps = (int)dl_arg_int(&app, argc, argv, &i, RACE_DDIM_STEPS, 100000);
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(a, "--scheduler")) {
            const char *name = dl_arg_str(&app, argc, argv, &i);
            if (dl_sampler_kind_from_name(name, &o.kind) != DL_OK) dl_app_bad_arg(&app, "%s", dl_error_message());
        } else dl_app_bad_arg(&app, "unknown option '%s'", a);
    }
    int headless = dl_app_choose_mode(&app);

    /* the net holds activations for max_batch images (~6 MB each for the
     * MNIST model): the live view runs one guided image (2 through the net),
     * headless runs go in chunks of up to 16 guided samples */
    int max_batch = !headless ? 2 : (o.cls >= 0 && 2 * o.count < 32 ? 2 * o.count : 32);
    model m = {0};
    load_model(&m, checkpoint, max_batch);
    printf("model: %s, %d classes, %lld parameters, %lld training steps\n", checkpoint, m.cfg.num_classes,
           (long long)dl_params_numel(toy_unet_params(m.net)), (long long)m.step);
    if (o.cls >= m.cfg.num_classes)
        dl_app_bad_arg(&app, "--class %d: this model knows classes 0..%d", o.cls, m.cfg.num_classes - 1);
    if (o.steps > m.sched.num_train_timesteps)
        dl_app_bad_arg(&app, "--steps %d: at most %d (the training steps)", o.steps, m.sched.num_train_timesteps);
    if (o.ddpm_steps > m.sched.num_train_timesteps)
        dl_app_bad_arg(&app, "--ddpm-steps %d: at most %d (the training steps)", o.ddpm_steps, m.sched.num_train_timesteps);

    if (!headless) run_live(&app, &m, &o);
    else if (o.cls >= 0) run_scripted(&app, &m, &o);
    else {
        reverse_process_figure(&app, &m, &o);
        samples_figure(&app, &m, &o);
    }
    free_model(&m);
    return 0;
}
