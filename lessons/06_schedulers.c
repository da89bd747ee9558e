/* 06_schedulers.c - Lesson 06: the scheduler race.
 *
 * Thirteen samplers (core/sampling.h, each one a diffusers scheduler) start
 * from the SAME initial noise x_T and draw the same digit with the toy
 * U-Net, guided with g = 3. Every tick each sampler gets ONE model call, the
 * honest unit of cost: Heun and KDPM2 need two calls per step, PNDM one
 * extra at the start. Beside every pane, the noise level (sigma) of each of
 * its calls, with a marker at the next one. Then the measurement: how far
 * is each sampler's result from a reference run (DDIM, 200 steps, the same
 * x_T), against the number of model calls it spent? See docs/06_schedulers.md.
 *
 *   bin/06_schedulers                 live window
 *   bin/06_schedulers --headless      out/06_race.png, 06_schedules.png, 06_distance_vs_calls.png + a table
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/image.h"
#include "../core/plot.h"
#include "../core/sampler_calls.h"
#include "../core/schedule.h"
#include "../core/toy_sample.h"
#include "../core/train_toy.h"
#include "../viz/app.h"
#include "../viz/viz.h"

#define NS DL_SAMPLER_COUNT     /* every sampler of the library races */
#define MAX_CALLS 2000          /* Heun with 1000 steps makes 1999 calls */
#define MAX_LIST 8

static const char *USAGE =
    "Lesson 06: the scheduler race. 13 samplers draw the same digit from the same noise, one model\n"
    "call per tick each, beside their sigma schedules; then the distance of each result to a\n"
    "reference (DDIM, --ref-steps steps, the same noise) against the model calls it cost.\n"
    "options:\n"
    "  --checkpoint F   toy model (default data/toy_mnist.safetensors, or a bin/03_train file)\n"
    "  --steps N        inference steps of the race (default 20; LCM stops at 50)\n"
    "  --class K        the digit of the race (default 3)\n"
    "  --guidance G     classifier-free guidance scale (default 3)\n"
    "  --seed X         initial noise (default 0)\n"
    "  --spacing S      timestep_spacing: trailing (default: every sampler starts at t = 999),\n"
    "                   leading (as lessons 04-05 and Stable Diffusion 1.x), linspace\n"
    "  --clip           clamp x0_hat to [-1, 1] as lessons 04-05 do (only DDPM, DDIM, Heun and LCM can,\n"
    "                   so the others then solve a different ODE; off by default for a fair race)\n"
    "  --steps-list L   step counts of the measurement (default 5,10,20,50; headless only)\n"
    "  --digits D       the measurement's batch: digits 0..D-1, one each (default 10; 0 skips it)\n"
    "  --ref-steps R    DDIM steps of the reference (default 200)\n"
    "live window keys: space play/pause, right arrow: one tick, up/down: more/fewer steps (restart),\n"
    "  0-9: the digit, r: new noise, x: show x_t / predicted x_0, s: screenshot, q or Esc: quit\n";

typedef struct {
    toy_unet *net;
    const dl_schedule *sched;
    dl_sampler_config cfg;
    float guidance;
    int ref_steps;
} setup;

/* LCM's timesteps come from its 50-step distillation grid: it cannot take more. */
static int steps_for(const setup *P, dl_sampler_kind k, int steps)
{
    return k == DL_SAMPLER_LCM && steps > P->cfg.original_inference_steps ? P->cfg.original_inference_steps : steps;
}

static int is_stochastic(dl_sampler_kind k)
{
    return k == DL_SAMPLER_DDPM || k == DL_SAMPLER_EULER_A || k == DL_SAMPLER_KDPM2_A || k == DL_SAMPLER_LCM;
}

/* RMS distance of two batches of pictures, pixels clamped to [-1, 1] as they are shown */
static double rms_pixels(const float *a, const float *b, int64_t n)
{
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fmin(1, fmax(-1, a[i])) - fmin(1, fmax(-1, b[i]));
        sum += d * d;
    }
    return sqrt(sum / (double)n);
}

/* A whole run of one sampler from x_T (standard normal; the sampler scales
 * it by its init_noise_sigma), with fresh noise from a copy of `rng`. */
static void run_sampler(const setup *P, dl_sampler_kind k, int steps, const dl_tensor *x_T, const int *labels,
                        const dl_rng *rng, float *out)
{
    dl_sampler s;
    toy_guided g;
    dl_rng r = *rng;
    if (dl_sampler_init(&s, k, P->sched, &P->cfg, steps_for(P, k, steps), 0.0f, 4, x_T->shape) != DL_OK ||
        toy_guided_init(&g, P->net, labels, (int)x_T->shape[0], P->guidance) != DL_OK ||
        dl_sampler_set_noise_from(&s, x_T->data) != DL_OK || dl_sampler_run(&s, toy_guided_eps, &g, &r) != DL_OK)
        dl_die(NULL);
    memcpy(out, s.x.data, sizeof(float) * (size_t)s.x.numel);
    toy_guided_free(&g);
    dl_sampler_free(&s);
}

/* ------------------------------------------------------------------------ */
/* 1. The race: one sampler per pane, one model call per tick.              */

typedef struct {
    const setup *P;
    int steps, digit;
    uint64_t seed;
    dl_tensor x_T, ref;        /* [1, C, S, S]: the noise everyone starts from, the reference result */
    dl_rng rng_after;          /* the generator after drawing x_T: every sampler's step noise starts here */
    dl_sampler s[NS];
    dl_rng rng[NS];
    toy_guided g;
    int ok[NS];                /* 0: this sampler cannot run these steps (why: err) */
    char err[NS][160];
    float t_call[NS][MAX_CALLS], sigma_call[NS][MAX_CALLS];   /* each call's timestep and sigma */
    float ddim_sigma[MAX_CALLS];
    int ddim_calls, max_calls, ticks;
} race;

/* New noise, new digit or new steps: everything starts again. */
static void race_start(race *R, int steps, int digit, uint64_t seed)
{
    const setup *P = R->P;
    int new_ref = digit != R->digit || seed != R->seed || !R->ref.data;
    R->steps = steps; R->digit = digit; R->seed = seed; R->ticks = 0;
    const toy_unet_config *c = toy_unet_get_config(P->net);
    const int64_t *shape = DL_SHAPE(1, c->in_channels, c->image_size, c->image_size);
    if (!R->x_T.data && (dl_tensor_alloc(&R->x_T, 4, shape) != DL_OK || dl_tensor_alloc(&R->ref, 4, shape) != DL_OK))
        dl_die(NULL);
    dl_rng_seed(&R->rng_after, seed);
    dl_rng_randn_tensor(&R->rng_after, &R->x_T);                 /* torch.randn((1, C, S, S)) */
    toy_guided_free(&R->g);
    if (toy_guided_init(&R->g, P->net, &R->digit, 1, P->guidance) != DL_OK) dl_die(NULL);
    if (new_ref) run_sampler(P, DL_SAMPLER_DDIM, P->ref_steps, &R->x_T, &R->digit, &R->rng_after, R->ref.data);
    if (dl_sampler_call_schedule(DL_SAMPLER_DDIM, P->sched, &P->cfg, steps, 0.0f, NULL, R->ddim_sigma, MAX_CALLS,
                                 &R->ddim_calls) != DL_OK) dl_die(NULL);
    R->max_calls = R->ddim_calls;
    for (int k = 0; k < NS; k++) {
        dl_sampler_free(&R->s[k]);
        int calls = 0, n = steps_for(P, k, steps);
        R->ok[k] = dl_sampler_call_schedule(k, P->sched, &P->cfg, n, 0.0f, R->t_call[k], R->sigma_call[k],
                                            MAX_CALLS, &calls) == DL_OK &&
                   dl_sampler_init(&R->s[k], k, P->sched, &P->cfg, n, 0.0f, 4, shape) == DL_OK &&
                   dl_sampler_set_noise_from(&R->s[k], R->x_T.data) == DL_OK;   /* x = x_T * init_noise_sigma */
        if (!R->ok[k]) {
            snprintf(R->err[k], sizeof R->err[k], "%s", dl_error_message());
            dl_sampler_free(&R->s[k]);
        }
        R->rng[k] = R->rng_after;
        if (R->ok[k] && calls > R->max_calls) R->max_calls = calls;
    }
}

static int race_done(const race *R)
{
    for (int k = 0; k < NS; k++)
        if (R->ok[k] && !dl_sampler_done(&R->s[k])) return 0;
    return 1;
}

/* One model call for every sampler that has not finished. */
static void race_tick(race *R)
{
    for (int k = 0; k < NS; k++)
        if (R->ok[k] && !dl_sampler_done(&R->s[k]) &&
            dl_sampler_step(&R->s[k], toy_guided_eps, &R->g, &R->rng[k]) != DL_OK)
            dl_die(NULL);
    R->ticks++;
}

static void race_free(race *R)
{
    for (int k = 0; k < NS; k++) dl_sampler_free(&R->s[k]);
    toy_guided_free(&R->g);
    dl_tensor_free(&R->x_T);
    dl_tensor_free(&R->ref);
}

/* ------------------------------------------------------------------------ */
/* 2. Pictures.                                                             */

#define SIGMA_LO 0.005f   /* the linear schedule's sigmas run from 0.01 (t = 0) to 157 (t = 999) */
#define SIGMA_HI 300.0f

/* log sigma against the call number: this sampler solid, DDIM with the same steps dashed */
static void schedule_plot(const race *R, int k, dl_image *img, int x, int y, int w, int h, int small)
{
    dl_plot p;
    char title[64];
    snprintf(title, sizeof title, small ? "" : "%s: %d calls", dl_sampler_names[k], R->ok[k] ? R->s[k].num_calls : 0);
    dl_plot_init(&p, title, small ? "" : "model call", small ? "" : "sigma");
    p.log_y = 1;
    p.legend = 0;
    p.text_scale = 1;
    p.line_width = small ? 2 : 3;
    dl_plot_set_xrange(&p, 1, (float)(R->max_calls > 1 ? R->max_calls : 2));
    dl_plot_set_yrange(&p, SIGMA_LO, SIGMA_HI);
    float xs[MAX_CALLS];
    for (int i = 0; i < R->max_calls; i++) xs[i] = (float)(i + 1);
    if (k != DL_SAMPLER_DDIM) dl_plot_add_series_ex(&p, "ddim", xs, R->ddim_sigma, R->ddim_calls, DL_PLOT_GRAY, DL_PLOT_DASHED);
    if (R->ok[k]) {
        dl_plot_add_series(&p, dl_sampler_names[k], xs, R->sigma_call[k], R->s[k].num_calls, DL_PLOT_BLUE);
        p.has_marker = 1;
        p.marker_x = (float)(R->s[k].step_index < R->s[k].num_calls ? R->s[k].step_index + 1 : R->s[k].num_calls);
    }
    dl_plot_draw(&p, img, x, y, w, h);
    dl_plot_free(&p);
}

enum { ZOOM = 4, PLOT_W = 200, TEXT_H = 18 };

/* One pane: name and call counter, the picture, the schedule, the state. */
static void pane_image(dl_image *out, const race *R, int k, int show_x0)
{
    const int S = (int)R->x_T.shape[2], side = S * ZOOM;
    if (dl_image_alloc(out, side + 6 + PLOT_W, TEXT_H + side + TEXT_H, 3) != DL_OK) dl_die(NULL);
    dl_image_fill(out, 255, 255, 255);
    char text[200];
    const dl_sampler *s = &R->s[k];
    if (!R->ok[k]) {
        dl_image_draw_text(out, 0, 0, dl_sampler_names[k], 0, 0, 0, 2);
        dl_image_draw_text(out, 0, TEXT_H + 4, "cannot run these steps:", 160, 0, 0, 1);
        snprintf(text, sizeof text, "%.60s\n%.60s", R->err[k], strlen(R->err[k]) > 60 ? R->err[k] + 60 : "");
        dl_image_draw_text(out, 0, TEXT_H + 20, text, 160, 0, 0, 1);
        return;
    }
    int done = dl_sampler_done(s);
    snprintf(text, sizeof text, "%s  %lld/%d calls", dl_sampler_names[k], (long long)s->model_calls, s->num_calls);
    dl_image_draw_text(out, 0, 0, text, done ? 0 : 30, done ? 120 : 30, done ? 0 : 30, 2);
    const dl_tensor *t = show_x0 && !done && s->model_calls > 0 ? &s->x0 : &s->x;
    dl_image tile;
    if (dl_tensor_item_image(&tile, t, 0, 1.0f, ZOOM) != DL_OK) dl_die(NULL);
    dl_image_blit(out, &tile, 0, TEXT_H);
    dl_image_free(&tile);
    schedule_plot(R, k, out, side + 6, TEXT_H, PLOT_W, side, 1);
    if (done) snprintf(text, sizeof text, "done: RMS %.3f to the reference", rms_pixels(s->x.data, R->ref.data, s->x.numel));
    else snprintf(text, sizeof text, "next t = %.0f, sigma = %.3g", dl_sampler_current_timestep(s), dl_sampler_current_sigma(s));
    dl_image_draw_text(out, 0, TEXT_H + side + 4, text, 60, 60, 60, 1);
}

static void race_figure(dl_image *out, const race *R, int show_x0, const char *title)
{
    enum { COLS = 4 };
    const int S = (int)R->x_T.shape[2];
    dl_grid g = { .rows = (NS + 1 + COLS - 1) / COLS, .cols = COLS, .tile_w = S * ZOOM + 6 + PLOT_W,
                  .tile_h = 2 * TEXT_H + S * ZOOM, .pad = 10, .text_scale = 2, .title = title };
    if (dl_grid_create(out, &g) != DL_OK) dl_die(NULL);
    dl_image pane;
    for (int k = 0; k < NS; k++) {
        pane_image(&pane, R, k, show_x0);
        dl_grid_place(out, &g, k / COLS, k % COLS, &pane);
        dl_image_free(&pane);
    }
    /* the last cell: the reference the distances are measured to */
    if (dl_image_alloc(&pane, g.tile_w, g.tile_h, 3) != DL_OK) dl_die(NULL);
    dl_image_fill(&pane, 255, 255, 255);
    char text[64];
    snprintf(text, sizeof text, "reference: ddim %d", R->P->ref_steps);
    dl_image_draw_text(&pane, 0, 0, text, 0, 0, 0, 2);
    dl_image tile;
    if (dl_tensor_item_image(&tile, &R->ref, 0, 1.0f, ZOOM) != DL_OK) dl_die(NULL);
    dl_image_blit(&pane, &tile, 0, TEXT_H);
    dl_image_free(&tile);
    dl_grid_place(out, &g, NS / COLS, NS % COLS, &pane);
    dl_image_free(&pane);
}

static void race_title(char *title, size_t n, const race *R, const char *extra)
{
    snprintf(title, n, "digit %d, %d steps, g = %g, seed %llu, %s spacing%s: tick %d%s", R->digit, R->steps,
             (double)R->P->guidance, (unsigned long long)R->seed, dl_spacing_names[R->P->cfg.timestep_spacing],
             R->P->cfg.clip_sample ? "" : ", no clip", R->ticks, extra);
}

static void save(dl_app *app, const char *name, dl_image *img)
{
    if (dl_app_save(app, name, img) != DL_OK) dl_die("check --out");
    dl_image_free(img);
}

static void schedules_figure(dl_app *app, const race *R)
{
    enum { COLS = 4, W = 420, H = 260 };
    char title[200];
    snprintf(title, sizeof title, "sigma of every model call, %d steps, %s spacing (dashed: ddim)", R->steps,
             dl_spacing_names[R->P->cfg.timestep_spacing]);
    dl_grid g = { .rows = (NS + COLS - 1) / COLS, .cols = COLS, .tile_w = W, .tile_h = H, .pad = 6, .title = title };
    dl_image img;
    if (dl_grid_create(&img, &g) != DL_OK) dl_die(NULL);
    for (int k = 0; k < NS; k++)
        schedule_plot(R, k, &img, g.origin_x + (k % COLS) * (W + g.pad), g.origin_y + (k / COLS) * (H + g.pad), W, H, 0);
    save(app, "06_schedules.png", &img);
}

/* ------------------------------------------------------------------------ */
/* 3. The measurement: distance to the reference against model calls.       */

static void measure(dl_app *app, const setup *P, int digits, const int *list, int nlist, uint64_t seed)
{
    const toy_unet_config *c = toy_unet_get_config(P->net);
    int labels[64];
    for (int i = 0; i < digits; i++) labels[i] = i % c->num_classes;
    dl_tensor x_T, ref, out;
    const int64_t *shape = DL_SHAPE(digits, c->in_channels, c->image_size, c->image_size);
    if (dl_tensor_alloc(&x_T, 4, shape) != DL_OK || dl_tensor_alloc(&ref, 4, shape) != DL_OK ||
        dl_tensor_alloc(&out, 4, shape) != DL_OK) dl_die(NULL);
    dl_rng rng;
    dl_rng_seed(&rng, seed);
    dl_rng_randn_tensor(&rng, &x_T);                   /* one torch.randn((digits, C, S, S)) for everyone */
    run_sampler(P, DL_SAMPLER_DDIM, P->ref_steps, &x_T, labels, &rng, ref.data);

    printf("\nRMS distance to the reference (DDIM %d steps from the same x_T), %d digits, pixels in [-1, 1]\n",
           P->ref_steps, digits);
    printf("%-16s", "sampler");
    for (int j = 0; j < nlist; j++) printf("   N=%-3d calls  RMS ", list[j]);
    printf("\n");
    static float calls[NS][MAX_LIST], dist[NS][MAX_LIST];
    int have[NS];
    for (int k = 0; k < NS; k++) {
        printf("%-16s", dl_sampler_names[k]);
        have[k] = 0;
        for (int j = 0; j < nlist; j++) {
            int n, N = steps_for(P, k, list[j]);
            if (dl_sampler_call_schedule(k, P->sched, &P->cfg, N, 0.0f, NULL, NULL, MAX_CALLS, &n) != DL_OK) {
                printf("         n/a       ");
                continue;
            }
            run_sampler(P, k, list[j], &x_T, labels, &rng, out.data);
            calls[k][have[k]] = (float)n;
            dist[k][have[k]] = (float)rms_pixels(out.data, ref.data, out.numel);
            printf("        %5d  %.4f", n, (double)dist[k][have[k]]);
            have[k]++;
            fflush(stdout);
        }
        printf("%s\n", is_stochastic(k) ? "   (stochastic)" : "");
    }

    /* two panels: the ODE solvers (they can converge to the reference) and the stochastic ones */
    static const unsigned colour[NS] = {
        DL_PLOT_BLUE, DL_PLOT_BLUE, DL_PLOT_ORANGE, DL_PLOT_GREEN, DL_PLOT_RED, DL_PLOT_RED, DL_PLOT_PURPLE,
        DL_PLOT_PURPLE, DL_PLOT_PURPLE, DL_PLOT_BROWN, DL_PLOT_BROWN, DL_PLOT_BLACK, DL_PLOT_GRAY};
    dl_plot pd, ps;
    char title[128];
    snprintf(title, sizeof title, "deterministic samplers (reference: DDIM %d)", P->ref_steps);
    dl_plot_init(&pd, title, "model calls", "RMS distance to the reference");
    dl_plot_init(&ps, "stochastic samplers (fresh noise every step)", "model calls", "RMS distance to the reference");
    pd.log_y = ps.log_y = 1;
    pd.legend_outside = ps.legend_outside = 1;
    float lo = 1e9f, hi = 0;
    for (int k = 0; k < NS; k++) {
        dl_plot *p = is_stochastic(k) ? &ps : &pd;
        int dashed = k == DL_SAMPLER_KDPM2 || k == DL_SAMPLER_DPMPP_2M_KARRAS;
        if (have[k]) dl_plot_add_series_ex(p, dl_sampler_names[k], calls[k], dist[k], have[k], colour[k],
                                           dashed ? DL_PLOT_DASHED : DL_PLOT_SOLID);
        for (int j = 0; j < have[k]; j++)
            if (dist[k][j] > 0) { lo = fminf(lo, dist[k][j]); hi = fmaxf(hi, dist[k][j]); }
    }
    if (hi > 0) { dl_plot_set_yrange(&pd, lo * 0.8f, hi * 1.25f); dl_plot_set_yrange(&ps, lo * 0.8f, hi * 1.25f); }
    dl_image img;
    if (dl_image_alloc(&img, 1600, 560, 3) != DL_OK) dl_die(NULL);
    dl_image_fill(&img, 255, 255, 255);
    dl_plot_draw(&pd, &img, 0, 0, 800, 560);
    dl_plot_draw(&ps, &img, 800, 0, 800, 560);
    dl_plot_free(&pd);
    dl_plot_free(&ps);
    save(app, "06_distance_vs_calls.png", &img);
    dl_tensor_free(&x_T);
    dl_tensor_free(&ref);
    dl_tensor_free(&out);
}

/* ------------------------------------------------------------------------ */
/* 4. Live.                                                                  */

static const int STEP_CHOICES[] = {2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200};
#define NCHOICES ((int)(sizeof STEP_CHOICES / sizeof STEP_CHOICES[0]))

static int next_steps(int steps, int up)
{
    if (up) { for (int i = 0; i < NCHOICES; i++) if (STEP_CHOICES[i] > steps) return STEP_CHOICES[i]; }
    else { for (int i = NCHOICES - 1; i >= 0; i--) if (STEP_CHOICES[i] < steps) return STEP_CHOICES[i]; }
    return steps;
}

static void run_live(dl_app *app, race *R)
{
    dl_image frame;
    char title[256];
    race_title(title, sizeof title, R, "");
    race_figure(&frame, R, 0, title);
    viz_window *win = viz_open("difflab 06 - scheduler race", frame.w, frame.h + 30, 1);
    if (!win) dl_die("run with --headless to write the pictures instead");
    dl_image canvas;
    if (dl_image_alloc(&canvas, frame.w, frame.h + 30, 3) != DL_OK) dl_die(NULL);
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
            else if (k == VIZ_KEY_RIGHT) { playing = 0; if (!race_done(R)) race_tick(R); }
            else if (k == VIZ_KEY_UP || k == VIZ_KEY_DOWN) race_start(R, next_steps(R->steps, k == VIZ_KEY_UP), R->digit, R->seed);
            else if (k >= '0' && k <= '9' && k - '0' < toy_unet_get_config(R->P->net)->num_classes)
                race_start(R, R->steps, k - '0', R->seed);
            else if (k == 'r') race_start(R, R->steps, R->digit, R->seed + 1);
            else if (k == 'x') show_x0 = !show_x0;
            else if (k == 's') {
                char name[64];
                snprintf(name, sizeof name, "06_screenshot_%03d.png", ++shots);
                dl_app_save(app, name, &canvas);
            }
            dirty = 1;
        }
        if (playing && !race_done(R)) { race_tick(R); dirty = 1; }
        if (dirty) {
            race_title(title, sizeof title, R, show_x0 ? ", showing x0_hat" : "");
            race_figure(&frame, R, show_x0, title);
            dl_image_fill(&canvas, 255, 255, 255);
            dl_image_blit(&canvas, &frame, 0, 0);
            dl_image_free(&frame);
            dl_image_draw_text(&canvas, 8, canvas.h - 24,
                               "space: play/pause  right: one call  up/down: steps  0-9: digit  r: new noise  x: x_t/x0  s: save  q: quit",
                               80, 80, 80, 2);
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

static int parse_list(const char *text, int *list)
{
    int n = 0;
    for (const char *p = text; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 1000 || n == MAX_LIST || (*end && *end != ',')) return 0;
        list[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv)
{
    dl_app app;
    dl_app_init(&app, "06_schedulers", USAGE);
    const char *checkpoint = "data/toy_mnist.safetensors", *spacing = "trailing", *list_text = "5,10,20,50";
    int steps = 20, digit = 3, digits = 10, ref_steps = 200, clip = 0, list[MAX_LIST];
    double guidance = 3.0;
    uint64_t seed = 0;
    for (int i = 1; i < argc; i++) {
        if (dl_app_common_arg(&app, argc, argv, &i)) continue;
        const char *a = argv[i];
        if (!strcmp(a, "--checkpoint")) checkpoint = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--steps")) steps = (int)dl_arg_int(&app, argc, argv, &i, 1, 1000);
        else if (!strcmp(a, "--class")) digit = (int)dl_arg_int(&app, argc, argv, &i, 0, 63);
        else if (!strcmp(a, "--guidance")) {
            const char *v = dl_arg_str(&app, argc, argv, &i);
            char *end;
            guidance = strtod(v, &end);
            if (*end || end == v || !(guidance >= 0 && guidance <= 50))
                dl_app_bad_arg(&app, "--guidance %s: give a number from 0 to 50", v);
        } else if (!strcmp(a, "--seed")) seed = (uint64_t)dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(a, "--spacing")) spacing = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--clip")) clip = 1;
        else if (!strcmp(a, "--steps-list")) list_text = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--digits")) digits = (int)dl_arg_int(&app, argc, argv, &i, 0, 32);
        else if (!strcmp(a, "--ref-steps")) ref_steps = (int)dl_arg_int(&app, argc, argv, &i, 1, 1000);
        else dl_app_bad_arg(&app, "unknown option '%s'", a);
    }
    int nlist = parse_list(list_text, list);
    if (!nlist) dl_app_bad_arg(&app, "--steps-list %s: give up to %d step counts from 1 to 1000, e.g. 5,10,20", list_text, MAX_LIST);
    setup P = { .guidance = (float)guidance, .ref_steps = ref_steps, .cfg = toy_sample_opts_default().config };
    if (dl_spacing_from_name(spacing, &P.cfg.timestep_spacing) != DL_OK)
        dl_app_bad_arg(&app, "--spacing %s: use leading, trailing or linspace", spacing);
    P.cfg.clip_sample = clip;
    int headless = dl_app_choose_mode(&app);

    /* CFG runs 2 x digits images per model call */
    if (toy_trainer_load_model(&P.net, checkpoint, 2 * (digits > 1 ? digits : 1)) != DL_OK)
        dl_die("give a file written by bin/03_train, e.g. --checkpoint out/03/toy_mnist.safetensors");
    const toy_unet_config *c = toy_unet_get_config(P.net);
    if (digit >= c->num_classes) dl_die_msg(NULL, "--class %d: %s has classes 0..%d", digit, checkpoint, c->num_classes - 1);
    dl_schedule sched;
    if (dl_schedule_init_default(&sched, TOY_TRAIN_SCHEDULE) != DL_OK) dl_die(NULL);
    P.sched = &sched;
    printf("model %s: digit %d, guidance %g, %d steps, %s spacing, x0 %s; reference DDIM %d steps\n", checkpoint,
           digit, guidance, steps, spacing, P.cfg.clip_sample ? "clipped" : "not clipped", ref_steps);

    static race R;                                 /* large: the call schedules of 13 samplers */
    R.P = &P;
    race_start(&R, steps, digit, seed);
    if (headless) {
        while (!race_done(&R)) race_tick(&R);
        char title[256];
        race_title(title, sizeof title, &R, " (all done)");
        dl_image img;
        race_figure(&img, &R, 0, title);
        save(&app, "06_race.png", &img);
        schedules_figure(&app, &R);
        if (digits > 0) measure(&app, &P, digits, list, nlist, seed);
    } else {
        run_live(&app, &R);
    }
    race_free(&R);
    dl_schedule_free(&sched);
    toy_unet_free(P.net);
    return 0;
}
