/* 03_train.c - Lesson 03: train a diffusion model, in C, on a laptop CPU.
 *
 * The recipe (DDPM, Ho et al. 2020) fits in four lines:
 *
 *     x0      a batch of training images (digits or emoji), labels y
 *     t, eps  t ~ uniform{0..999}, eps ~ N(0, I)
 *     x_t   = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps             (lesson 01)
 *     loss  = mean (eps_theta(x_t, t, y) - eps)^2                 "predict the noise"
 *
 * and AdamW does the rest. 10% of the labels are replaced by a "null" class,
 * so the same network also learns to denoise without knowing the class:
 * classifier-free guidance needs both at sampling time (lesson 04).
 *
 * The window shows the loss falling (raw and smoothed), the loss by
 * timestep (which t are hard?) and samples of every class, drawn with the
 * EMA weights by DDIM every --sample-every steps. See docs/03_training.md.
 *
 *   bin/03_train                        live window, 10 minutes on MNIST
 *   bin/03_train --headless --out out/03     writes loss.png, samples_step<N>.png,
 *                                        checkpoint.safetensors, toy_mnist.safetensors
 *   bin/03_train --resume out/03/checkpoint.safetensors --minutes 5     continue
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../core/checkpoint.h"
#include "../core/dataset.h"
#include "../core/image.h"
#include "../core/optim.h"
#include "../core/plot.h"
#include "../core/sampling.h"
#include "../core/toy_sample.h"
#include "../core/toy_unet.h"
#include "../core/train_toy.h"
#include "../viz/app.h"
#include "../viz/viz.h"

static const char *USAGE =
    "Lesson 03: train the toy U-Net with the epsilon-prediction loss.\n"
    "options:\n"
    "  --dataset NAME        mnist (default) or emoji\n"
    "  --minutes M           train for M minutes (default 10)\n"
    "  --steps N             train until step N instead (with --minutes too: whichever comes first)\n"
    "  --batch B             images per step (default 64)\n"
    "  --lr LR               peak learning rate of AdamW (default 0.001; warmup, then cosine decay)\n"
    "  --seed S              seed of the weights and of all training randomness (default 0)\n"
    "  --resume CKPT         continue a run from its checkpoint.safetensors (weights, EMA,\n"
    "                        optimizer, step and RNG); --steps is then the total to reach\n"
    "  --checkpoint-every N  save OUT/checkpoint.safetensors every N steps (default 500; 0: only at the end)\n"
    "  --sample-every N      draw the sample grid every N steps (default 500; 0: only at the end);\n"
    "                        headless runs write OUT/samples_step<N>.png each time\n"
    "  --tiny                a tiny model on 256 images, batch 4, 5-step sample grid (for tests)\n"
    "At the end (or on Ctrl-C, or closing the window) it saves OUT/checkpoint.safetensors (to resume),\n"
    "OUT/toy_<dataset>.safetensors (EMA weights only: for bin/04_sampling) and OUT/loss.png.\n"
    "live window keys: space pause/continue, n: new samples now, s: screenshot, q or Esc: save and quit\n";

/* ------------------------------------------------------------------------ */
/* 1. Settings.                                                              */

typedef struct {
    const char *dataset;
    double minutes;             /* time budget; <= 0: none */
    int minutes_given;
    int64_t steps;              /* total steps; 0: from the time budget */
    int batch;
    float lr;
    uint64_t seed;
    const char *resume;
    int64_t checkpoint_every, sample_every;
    int tiny;
} options;

/* --tiny: a model for tests, two levels of 8 and 16 channels (~70k
 * parameters). It learns little, but every part of the lesson runs. */
static void tiny_config(toy_unet_config *c, const char *dataset)
{
    toy_unet_config_default(c, dataset);
    c->levels = 2;
    c->block_out_channels[0] = 8;
    c->block_out_channels[1] = 16;
    c->block_out_channels[2] = 0;
    c->layers_per_block = 1;
    c->attention_levels = 1 << 1;       /* attention at 16x16 (and in the mid block) */
    c->cross_attention_dim = 8;
    c->heads = 2;
    c->norm_groups = 4;
    c->time_embed_dim = 4 * c->block_out_channels[0];
}

#define WARMUP_MAX 200            /* learning-rate warmup steps (fewer for short runs) */
#define SAMPLE_STEPS 25           /* DDIM steps of the sample grid (--tiny: 5) */
#define SAMPLE_GUIDANCE 3.0f
#define SAMPLE_SEED 20240         /* the grid always starts from the same noise */

/* ------------------------------------------------------------------------ */
/* 2. What we record while training.                                         */

typedef struct {
    float *loss;                  /* per step, since the start of this run */
    int64_t first_step;           /* the step of loss[0] (> 0 after --resume) */
    int64_t n, cap;
    float smooth;                 /* exponential average of the loss (see smooth_next) */
    double acc, weight;           /* its running sums */
    float buckets[TOY_LOSS_BUCKETS];   /* running mean loss per t bucket */
} history;

/* Exponential moving average with factor 0.98 (about the last 50 steps),
 * debiased as Adam does: acc starts at 0, so divide by the total weight
 * 1 - 0.98^n the average has collected (otherwise it starts near 0). */
static float smooth_next(double *acc, double *weight, float value)
{
    *acc = 0.98 * *acc + 0.02 * value;
    *weight = 0.98 * *weight + 0.02;
    return (float)(*acc / *weight);
}

static void history_add(history *h, float loss)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? 2 * h->cap : 4096;
        h->loss = realloc(h->loss, sizeof(float) * (size_t)h->cap);
        if (!h->loss) dl_die_msg(NULL, "out of memory for the loss history");
    }
    h->loss[h->n++] = loss;
    h->smooth = smooth_next(&h->acc, &h->weight, loss);
}

/* ------------------------------------------------------------------------ */
/* 3. Pictures: the loss curve, the loss by timestep, the samples.          */

#define PLOT_POINTS 1500          /* at most this many points per curve */

static void draw_loss_curve(dl_image *img, int x, int y, int w, int h, const history *hs)
{
    dl_plot p;
    dl_plot_init(&p, "training loss: mean (eps_pred - eps)^2", "step", "loss");
    p.log_y = 1;
    int64_t stride = hs->n / PLOT_POINTS + 1, m = hs->n / stride;
    float *xs = malloc(sizeof(float) * (size_t)(m + 1)), *raw = malloc(sizeof(float) * (size_t)(m + 1)),
          *sm = malloc(sizeof(float) * (size_t)(m + 1));
    if (!xs || !raw || !sm) dl_die_msg(NULL, "out of memory");
    double acc = 0, weight = 0;
    int64_t k = 0;
    for (int64_t i = 0; i < hs->n; i++) {
        float s = smooth_next(&acc, &weight, hs->loss[i]);
        if (i % stride == 0 && k < m + 1) { xs[k] = (float)(hs->first_step + i + 1); raw[k] = hs->loss[i]; sm[k] = s; k++; }
    }
    dl_plot_add_series(&p, "loss of each step", xs, raw, (int)k, 0xb0b0b0u);
    dl_plot_add_series(&p, "smoothed", xs, sm, (int)k, DL_PLOT_BLUE);
    dl_plot_draw(&p, img, x, y, w, h);
    dl_plot_free(&p);
    free(xs);
    free(raw);
    free(sm);
}

/* A bar per timestep bucket: which noise levels are hard to denoise? */
static void draw_bucket_bars(dl_image *img, int x, int y, int w, int h, const float v[TOY_LOSS_BUCKETS], int T)
{
    dl_image_fill_rect(img, x, y, w, h, 255, 255, 255);
    dl_image_draw_text(img, x + 10, y + 6, "loss by timestep t (running mean per bucket)", 0, 0, 0, 2);
    const int left = x + 70, right = x + w - 12, top = y + 40, bottom = y + h - 44;
    float vmax = 0;
    for (int k = 0; k < TOY_LOSS_BUCKETS; k++) if (isfinite(v[k]) && v[k] > vmax) vmax = v[k];
    if (vmax <= 0) vmax = 1;
    vmax *= 1.15f;
    /* y axis with 4 ticks */
    char s[32];
    for (int i = 0; i <= 4; i++) {
        float val = vmax * i / 4;
        int yy = bottom - (int)((bottom - top) * i / 4.0f);
        dl_image_draw_line(img, left, yy, right, yy, 1, 225, 225, 225);
        snprintf(s, sizeof s, "%.3f", val);
        dl_image_draw_text(img, left - dl_text_width(s, 1) - 6, yy - 3, s, 60, 60, 60, 1);
    }
    int bw = (right - left) / TOY_LOSS_BUCKETS;
    for (int k = 0; k < TOY_LOSS_BUCKETS; k++) {
        int bx = left + k * bw;
        if (isfinite(v[k])) {
            int bh = (int)((bottom - top) * v[k] / vmax);
            dl_image_fill_rect(img, bx + 3, bottom - bh, bw - 6, bh, 0x1f, 0x77, 0xb4);
            snprintf(s, sizeof s, "%.3f", v[k]);
            dl_image_draw_text(img, bx + (bw - dl_text_width(s, 1)) / 2, bottom - bh - 12, s, 0, 0, 0, 1);
        }
        snprintf(s, sizeof s, "%d", k * T / TOY_LOSS_BUCKETS);
        dl_image_draw_text(img, bx + 3, bottom + 6, s, 0, 0, 0, 2);
    }
    dl_image_draw_line(img, left, bottom, right, bottom, 1, 0, 0, 0);
    dl_image_draw_text(img, left, bottom + 26, "t (bucket start): small t = little noise, large t = almost pure noise",
                       80, 80, 80, 1);
}

typedef struct {
    dl_tensor x;                  /* [classes * cols, C, S, S] the latest samples */
    int cols, valid;
    int steps;                    /* DDIM steps */
    int64_t step;                 /* training step they were drawn at */
} sample_grid;

/* One row per class with the EMA weights: DDIM, guidance 3, fixed noise. */
static void draw_samples(sample_grid *g, toy_trainer *tr)
{
    const toy_unet_config *cfg = toy_unet_get_config(tr->net);
    int n = cfg->num_classes * g->cols;
    int *labels = malloc(sizeof(int) * (size_t)n);
    if (!labels) dl_die_msg(NULL, "out of memory");
    for (int i = 0; i < n; i++) labels[i] = i / g->cols;
    toy_sample_opts o = toy_sample_opts_default();
    o.steps = g->steps;
    o.guidance = SAMPLE_GUIDANCE;
    dl_rng rng;
    dl_rng_seed(&rng, SAMPLE_SEED);
    dl_param_list *params = toy_unet_params(tr->net);
    dl_ema_swap(&tr->ema, params);                     /* sample with the EMA weights */
    dl_status st = toy_sample(tr->net, &tr->sched, &o, labels, n, &rng, &g->x);
    dl_ema_swap(&tr->ema, params);                     /* and back to the live ones */
    if (st != DL_OK) dl_die(NULL);
    g->valid = 1;
    g->step = tr->step;
    free(labels);
}

/* The grid as a picture: row labels = class names. */
static dl_image samples_picture(const sample_grid *g, const dl_dataset *data, int zoom, const char *title)
{
    int rows = data->num_classes, S = data->size;
    const char *names[DL_DATASET_MAX_CLASSES];
    for (int c = 0; c < rows; c++) names[c] = data->class_names[c];
    dl_grid grid = { .rows = rows, .cols = g->cols, .tile_w = zoom * S, .tile_h = zoom * S, .pad = 4,
                     .text_scale = 2, .title = title, .row_labels = names };
    dl_image canvas;
    if (dl_grid_create(&canvas, &grid) != DL_OK) dl_die(NULL);
    for (int i = 0; g->valid && i < rows * g->cols; i++) {
        dl_image small, big;
        if (dl_tensor_to_image(&small, &g->x, i) != DL_OK || dl_image_scale_nearest(&big, &small, zoom) != DL_OK) dl_die(NULL);
        dl_grid_place(&canvas, &grid, i / g->cols, i % g->cols, &big);
        dl_image_free(&small);
        dl_image_free(&big);
    }
    return canvas;
}

static void save_loss_png(dl_app *app, const history *hs, int T)
{
    dl_image img;
    if (dl_image_alloc(&img, 1400, 480, 3) != DL_OK) dl_die(NULL);
    dl_image_fill(&img, 255, 255, 255);
    draw_loss_curve(&img, 0, 0, 760, 480, hs);
    draw_bucket_bars(&img, 770, 0, 620, 480, hs->buckets, T);
    if (dl_app_save(app, "loss.png", &img) != DL_OK) dl_die("check --out");
    dl_image_free(&img);
}

static void save_samples_png(dl_app *app, const sample_grid *g, const dl_dataset *data)
{
    char name[64], title[128];
    snprintf(name, sizeof name, "samples_step%lld.png", (long long)g->step);
    snprintf(title, sizeof title, "step %lld: EMA weights, DDIM %d steps, guidance %.0f", (long long)g->step,
             g->steps, SAMPLE_GUIDANCE);
    dl_image img = samples_picture(g, data, 3, title);
    if (dl_app_save(app, name, &img) != DL_OK) dl_die("check --out");
    dl_image_free(&img);
}

/* ------------------------------------------------------------------------ */
/* 4. The training loop.                                                     */

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    dl_app *app;
    options *o;
    toy_trainer *tr;
    dl_dataset data;
    history hist;
    sample_grid grid;
    int64_t start_step, total;    /* total: the step to reach (estimated from the time budget) */
    int total_fixed;              /* 1: --steps given */
    int estimated;                /* total has been estimated from the speed */
    int64_t warmup;
    double t_start, deadline;     /* seconds; deadline 0 = none */
    double finish_reserve;        /* seconds kept free before the deadline for the final grid and saves */
    double last_print;
    int64_t last_printed_step;
    double t_warm;                /* when the warmup ended (time budget runs) */
    char ckpt_path[1024], ema_path[1024];
    char status[256];             /* the progress line */
} run;

/* The learning rate: a linear warmup, then a cosine down to 1% of the peak.
 * With --steps N the cosine runs over the steps (exact and reproducible).
 * With a time budget the last step is not known, so after the warmup the
 * cosine runs over the TIME that is left: it reaches 1% when time is up. */
static float current_lr(run *r, double now)
{
    float base = r->o->lr, low = base * 0.01f;
    int64_t step = r->tr->step;
    if (r->total_fixed) return dl_lr_warmup_cosine(step, r->warmup, r->total, base, low);
    if (step < r->warmup) return base * (float)(step + 1) / (float)r->warmup;
    if (r->t_warm == 0) r->t_warm = now;                  /* the warmup just ended */
    double p = (now - r->t_warm) / (r->deadline - r->t_warm);
    p = p < 0 ? 0 : (p > 1 ? 1 : p);
    return low + (base - low) * 0.5f * (1.0f + (float)cos(M_PI * p));
}

/* Without --steps: how many steps fit into the time budget at the speed so
 * far? (Only shown as "step 1200/~5400"; the first estimate, after 20
 * steps, also shortens the warmup of short runs.) */
static void estimate_total(run *r, double now)
{
    if (r->total_fixed) return;
    int64_t done = r->tr->step - r->start_step;
    double used = now - r->t_start, left = r->deadline - now;
    if (done < 5 || used <= 0) return;
    int64_t est = r->tr->step + (int64_t)(done / used * (left > 0 ? left : 0));
    r->total = est > r->tr->step ? est : r->tr->step;
    if (!r->estimated && r->warmup > r->total / 10) r->warmup = r->total / 10;
    r->estimated = 1;
}

static void progress(run *r, float loss, double now, int print)
{
    int64_t done = r->tr->step - r->start_step;
    double used = now - r->t_start, rate = used > 0 ? done / used : 0;
    double eta = r->total_fixed ? (rate > 0 ? (r->total - r->tr->step) / rate : 0) : r->deadline - now;
    if (r->deadline > 0 && r->deadline - now < eta) eta = r->deadline - now;
    if (eta < 0) eta = 0;
    char of[32];   /* "/N", "/~N" while N is an estimate from the time budget, "" before that */
    if (r->total_fixed) snprintf(of, sizeof of, "/%lld", (long long)r->total);
    else if (r->estimated) snprintf(of, sizeof of, "/~%lld", (long long)r->total);
    else of[0] = '\0';
    snprintf(r->status, sizeof r->status, "step %lld%s  loss %.4f (smoothed %.4f)  lr %.2g  %.2f step/s  ETA %d:%02d",
             (long long)r->tr->step, of, loss, r->hist.smooth, r->tr->last_lr, rate, (int)eta / 60, (int)eta % 60);
    if (print) { printf("%s\n", r->status); fflush(stdout); r->last_printed_step = r->tr->step; }
}

static void save_checkpoint(run *r, int final)
{
    if (dl_make_dirs(r->app->out_dir) != DL_OK) dl_die("check --out");
    if (toy_trainer_save(r->tr, r->ckpt_path) != DL_OK) dl_die("check --out and the free disk space");
    if (final) {
        if (toy_trainer_save_ema(r->tr, r->ema_path) != DL_OK) dl_die("check --out and the free disk space");
        printf("wrote %s (resume with --resume) and %s (EMA weights, for bin/04_sampling)\n", r->ckpt_path, r->ema_path);
    } else {
        printf("wrote %s (step %lld)\n", r->ckpt_path, (long long)r->tr->step);
    }
}

static int finished(const run *r, double now)
{
    if (toy_train_interrupted) return 1;
    if (r->total_fixed && r->tr->step >= r->total) return 1;
    if (r->deadline > 0 && now >= r->deadline - r->finish_reserve) return 1;
    return 0;
}

/* One optimizer step and the bookkeeping around it. */
static void train_one(run *r)
{
    float loss, buckets[TOY_LOSS_BUCKETS];
    if (toy_train_step_dataset(r->tr, &r->data, r->o->batch, current_lr(r, seconds_now()), &loss, buckets) != DL_OK)
        dl_die(NULL);
    if (!isfinite(loss)) dl_die_msg("try a smaller --lr", "the loss became %f at step %lld", loss, (long long)r->tr->step);
    history_add(&r->hist, loss);
    memcpy(r->hist.buckets, buckets, sizeof buckets);
    double now = seconds_now();
    int64_t step = r->tr->step;
    int print = now - r->last_print >= 5 || step == r->start_step + 1;
    if (step - r->start_step == 20 || print) estimate_total(r, now);
    progress(r, loss, now, print);
    if (print) r->last_print = now;
    if (r->o->checkpoint_every > 0 && step % r->o->checkpoint_every == 0) save_checkpoint(r, 0);
}

/* ------------------------------------------------------------------------ */
/* 5. Headless and live.                                                     */

static int sample_due(const run *r)
{
    return r->o->sample_every > 0 && r->tr->step % r->o->sample_every == 0;
}

static void finish(run *r)
{
    const int T = r->tr->sched.num_train_timesteps;
    int interrupted = toy_train_interrupted;
    if (r->hist.n > 0 && r->last_printed_step != r->tr->step)   /* the last line */
        progress(r, r->hist.loss[r->hist.n - 1], seconds_now(), 1);
    save_checkpoint(r, 1);
    save_loss_png(r->app, &r->hist, T);
    if (interrupted) {
        printf("interrupted at step %lld: continue with --resume %s\n", (long long)r->tr->step, r->ckpt_path);
        return;
    }
    if (!r->grid.valid || r->grid.step != r->tr->step) draw_samples(&r->grid, r->tr);
    if (r->app->headless) save_samples_png(r->app, &r->grid, &r->data);
}

static void run_headless(run *r)
{
    while (!finished(r, seconds_now())) {
        train_one(r);
        if (sample_due(r) && !finished(r, seconds_now())) {   /* the last grid is finish()'s */
            double t0 = seconds_now();
            draw_samples(&r->grid, r->tr);
            /* finish() draws one more grid and saves: stop training early enough
             * for that to fit in the time budget too */
            r->finish_reserve = 2 * (seconds_now() - t0) + 1.0;
            save_samples_png(r->app, &r->grid, &r->data);
            save_loss_png(r->app, &r->hist, r->tr->sched.num_train_timesteps);
        }
    }
    finish(r);
}

#define FRAME_W 1280
#define FRAME_H 760

static void draw_frame(dl_image *f, run *r, int paused, const char *message)
{
    dl_image_fill(f, 250, 250, 250);
    dl_image_draw_text(f, 12, 10, r->status[0] ? r->status : "starting...", 0, 0, 0, 2);
    if (paused) dl_image_draw_text(f, 12, 34, "PAUSED (space continues)", 200, 0, 0, 2);
    draw_loss_curve(f, 0, 56, 720, 380, &r->hist);
    draw_bucket_bars(f, 8, 444, 704, 300, r->hist.buckets, r->tr->sched.num_train_timesteps);
    /* samples: one row per class, 2x enlarged */
    const int S = r->data.size * 2, gx = 760, gy = 60, pad = 4;
    char line[160];
    if (r->grid.valid) snprintf(line, sizeof line, "samples at step %lld (EMA, DDIM %d, g %.0f)", (long long)r->grid.step,
                                r->grid.steps, SAMPLE_GUIDANCE);
    else snprintf(line, sizeof line, "samples: at step %lld", (long long)r->o->sample_every);
    dl_image_draw_text(f, gx, 40, line, 0, 0, 0, 2);
    for (int c = 0; c < r->data.num_classes; c++) {
        int y = gy + c * (S + pad);
        dl_image_draw_text(f, gx, y + S / 2 - 6, r->data.class_names[c], 0, 0, 0, 2);
        for (int j = 0; r->grid.valid && j < r->grid.cols; j++) {
            dl_image small, big;
            if (dl_tensor_to_image(&small, &r->grid.x, c * r->grid.cols + j) != DL_OK ||
                dl_image_scale_nearest(&big, &small, 2) != DL_OK) dl_die(NULL);
            dl_image_blit(f, &big, gx + 90 + j * (S + pad), y);
            dl_image_free(&small);
            dl_image_free(&big);
        }
    }
    dl_image_draw_text(f, 12, FRAME_H - 18, message && message[0] ? message :
                       "space: pause  n: new samples  s: screenshot  q: save and quit", 80, 80, 80, 1);
}

static void run_live(run *r)
{
    viz_window *win = viz_open("difflab 03 - training", FRAME_W, FRAME_H, 1);
    if (!win) dl_die("run with --headless to train without a window");
    dl_image frame;
    if (dl_image_alloc(&frame, FRAME_W, FRAME_H, 3) != DL_OK) dl_die(NULL);
    int paused = 0, training = 1, shots = 0, sample_now = 0;
    char message[200] = "";
    double last_draw = 0;
    for (int64_t frame_no = 0, running = 1; running; frame_no++) {
        viz_event ev;
        while (viz_poll(win, &ev)) {
            if (ev.type == VIZ_QUIT) running = 0;
            if (ev.type != VIZ_KEY) continue;
            if (ev.key == 'q' || ev.key == VIZ_KEY_ESCAPE) running = 0;
            else if (ev.key == ' ') paused = !paused;
            else if (ev.key == 'n') sample_now = 1;
            else if (ev.key == 's') {
                char name[64];
                snprintf(name, sizeof name, "03_screenshot_%03d.png", ++shots);
                if (dl_app_save(r->app, name, &frame) == DL_OK) snprintf(message, sizeof message, "saved %s/%s", r->app->out_dir, name);
                else snprintf(message, sizeof message, "could not save: %.120s", dl_error_message());
            }
        }
        if (!running || toy_train_interrupted) break;
        if (training && !paused) {
            double until = seconds_now() + 0.1;   /* train for ~0.1 s between frames */
            do {
                train_one(r);
                if (sample_due(r)) draw_samples(&r->grid, r->tr);
            } while (seconds_now() < until && !finished(r, seconds_now()));
            if (finished(r, seconds_now())) {
                training = 0;
                finish(r);
                snprintf(message, sizeof message, "done: saved %.150s; q quits", r->ckpt_path);
            }
        }
        if (sample_now) { draw_samples(&r->grid, r->tr); sample_now = 0; }
        double now = seconds_now();
        if (now - last_draw > 0.1 || !training) {
            draw_frame(&frame, r, paused, message);
            viz_present(win, &frame);
            last_draw = now;
        }
        if (dl_app_frame_limit(r->app, win, frame_no + 1)) running = 0;   /* scripted run: keep what was shown */
        viz_wait(win, training && !paused ? 1 : 16);
    }
    if (training) finish(r);   /* quit or Ctrl-C during training: save and exit */
    dl_image_free(&frame);
    viz_close(win);
}

/* ------------------------------------------------------------------------ */

static double arg_double(dl_app *app, int argc, char **argv, int *i, double lo, double hi)
{
    const char *opt = argv[*i];
    const char *s = dl_arg_str(app, argc, argv, i);
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !isfinite(v)) dl_app_bad_arg(app, "%s wants a number, got '%s'", opt, s);
    if (v < lo || v > hi) dl_app_bad_arg(app, "%s %s is out of range [%g, %g]", opt, s, lo, hi);
    return v;
}

int main(int argc, char **argv)
{
    dl_app app;
    dl_app_init(&app, "03_train", USAGE);
    options o = { .dataset = "mnist", .minutes = 10, .batch = 64, .lr = 1e-3f, .checkpoint_every = 500,
                  .sample_every = 500 };
    int batch_given = 0;
    for (int i = 1; i < argc; i++) {
        if (dl_app_common_arg(&app, argc, argv, &i)) continue;
        const char *a = argv[i];
        if (!strcmp(a, "--dataset")) o.dataset = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--minutes")) { o.minutes = arg_double(&app, argc, argv, &i, 0.01, 100000); o.minutes_given = 1; }
        else if (!strcmp(a, "--steps")) o.steps = dl_arg_int(&app, argc, argv, &i, 1, 100000000);
        else if (!strcmp(a, "--batch")) { o.batch = (int)dl_arg_int(&app, argc, argv, &i, 1, 1024); batch_given = 1; }
        else if (!strcmp(a, "--lr")) o.lr = (float)arg_double(&app, argc, argv, &i, 1e-7, 1);
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(a, "--resume")) o.resume = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(a, "--checkpoint-every")) o.checkpoint_every = dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(a, "--sample-every")) o.sample_every = dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(a, "--tiny")) o.tiny = 1;
        else dl_app_bad_arg(&app, "unknown option '%s'", a);
    }
    if (strcmp(o.dataset, "mnist") && strcmp(o.dataset, "emoji"))
        dl_app_bad_arg(&app, "--dataset '%s': choose mnist or emoji", o.dataset);
    if (o.tiny && !batch_given) o.batch = 4;
    if (o.resume && access(o.resume, R_OK) != 0)
        dl_app_bad_arg(&app, "--resume: cannot read '%s' (give the checkpoint.safetensors of an earlier run)", o.resume);
    int headless = dl_app_choose_mode(&app);

    run r = { .app = &app, .o = &o };
    /* the data: all of it, or 256 images for --tiny */
    if (dl_dataset_load_subset(&r.data, o.dataset, "data", 1, o.tiny ? 256 : 0) != DL_OK)
        dl_die("run from the repository root, where data/ is");
    /* the model and its trainer: new, or from the checkpoint */
    if (o.resume) {
        if (toy_trainer_create_from_checkpoint(&r.tr, o.resume, o.batch, o.lr) != DL_OK)
            dl_die("--resume wants a checkpoint.safetensors written by bin/03_train");
        if (toy_unet_get_config(r.tr->net)->in_channels != r.data.channels ||
            toy_unet_get_config(r.tr->net)->num_classes != r.data.num_classes)
            dl_app_bad_arg(&app, "--resume %s: that model was trained on another dataset than '%s'", o.resume, o.dataset);
        printf("resumed %s at step %lld\n", o.resume, (long long)r.tr->step);
    } else {
        toy_unet_config cfg;
        if (o.tiny) tiny_config(&cfg, o.dataset);
        else if (toy_unet_config_default(&cfg, o.dataset) != DL_OK) dl_die(NULL);
        if (toy_trainer_create(&r.tr, &cfg, o.batch, o.seed, o.lr) != DL_OK) dl_die(NULL);
    }
    const toy_unet_config *cfg = toy_unet_get_config(r.tr->net);
    printf("model: %d levels, channels %d/%d/%d, %lld parameters; data: %s, %d images; batch %d\n", cfg->levels,
           cfg->block_out_channels[0], cfg->levels > 1 ? cfg->block_out_channels[1] : 0,
           cfg->levels > 2 ? cfg->block_out_channels[2] : 0, (long long)dl_params_numel(toy_unet_params(r.tr->net)),
           o.dataset, r.data.count, o.batch);

    /* how long: --steps N (the total to reach), else the time budget */
    r.start_step = r.tr->step;
    r.hist.first_step = r.tr->step;
    r.total_fixed = o.steps > 0;
    if (r.total_fixed && o.steps <= r.tr->step)
        dl_app_bad_arg(&app, "--steps %lld: the checkpoint is already at step %lld", (long long)o.steps, (long long)r.tr->step);
    r.total = r.total_fixed ? o.steps : r.tr->step + 1000000;   /* refined after 20 steps */
    r.warmup = r.total_fixed && o.steps / 10 < WARMUP_MAX ? o.steps / 10 : WARMUP_MAX;
    r.t_start = r.last_print = seconds_now();
    r.deadline = (!r.total_fixed || o.minutes_given) ? r.t_start + o.minutes * 60 : 0;
    r.grid.cols = o.tiny ? 1 : 6;
    r.grid.steps = o.tiny ? 5 : SAMPLE_STEPS;
    if (dl_tensor_alloc(&r.grid.x, 4, DL_SHAPE(r.data.num_classes * r.grid.cols, r.data.channels, r.data.size, r.data.size)) != DL_OK)
        dl_die(NULL);
    snprintf(r.ckpt_path, sizeof r.ckpt_path, "%s/checkpoint.safetensors", app.out_dir);
    snprintf(r.ema_path, sizeof r.ema_path, "%s/toy_%s.safetensors", app.out_dir, o.dataset);
    if (dl_make_dirs(app.out_dir) != DL_OK) dl_die("check --out");

    toy_train_install_sigint();   /* Ctrl-C: save, then exit */
    if (headless) run_headless(&r);
    else run_live(&r);
    toy_train_remove_sigint();

    printf("trained %lld steps in %.1f minutes; sample with:\n  bin/04_sampling --checkpoint %s --class 3 --headless --out %s\n",
           (long long)(r.tr->step - r.start_step), (seconds_now() - r.t_start) / 60, r.ema_path, app.out_dir);
    dl_tensor_free(&r.grid.x);
    free(r.hist.loss);
    dl_dataset_free(&r.data);
    toy_trainer_free(r.tr);
    return 0;
}
