/* 01_forward_noising.c - Lesson 01: how diffusion destroys a picture.
 *
 * A diffusion model learns to undo noise. Before it can, we must know how
 * the noise is put in: the FORWARD process. Step t adds a little Gaussian
 * noise of variance beta_t and shrinks the signal so the variance stays 1:
 *
 *     q(x_t | x_{t-1}) = N( sqrt(1 - beta_t) x_{t-1},  beta_t I )
 *
 * Chaining t such steps is again one Gaussian (the closed form), with
 * alpha_t = 1 - beta_t and alpha_bar_t = alpha_1 * ... * alpha_t:
 *
 *     x_t = sqrt(alpha_bar_t) * x_0  +  sqrt(1 - alpha_bar_t) * eps,   eps ~ N(0, I)
 *
 * so we can jump to any t directly. This program shows x_t for a photo and
 * an MNIST digit under three beta schedules (linear, scaled_linear, cosine)
 * and plots what they do to the signal-to-noise ratio. See
 * docs/01_forward_noising.md for the maths and the exercises.
 *
 *   bin/01_forward_noising               live window (if there is a display)
 *   bin/01_forward_noising --headless    writes out/01_strip_cat.png,
 *                                        out/01_strip_digit.png, out/01_schedules.png
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/idx.h"
#include "../core/image.h"
#include "../core/plot.h"
#include "../core/rng.h"
#include "../core/schedule.h"
#include "../core/tensor.h"
#include "../viz/app.h"
#include "../viz/viz.h"

static const char *USAGE =
    "Lesson 01: the forward (noising) process of diffusion.\n"
    "Shows x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps for a photo and an MNIST\n"
    "digit under the linear, scaled_linear and cosine schedules.\n"
    "options:\n"
    "  --seed N          seed of the noise eps (default 0; same numbers as torch.randn\n"
    "                    with torch.Generator().manual_seed(N))\n"
    "  --image PATH      another photo instead of data/images/chelsea.png\n"
    "  --digit-index N   which MNIST test image to use (default 0, a '7')\n"
    "live window keys: left/right t-1/t+1, shift+left/right or up/down t-50/t+50,\n"
    "  mouse on the slider sets t, 1/2/3 or tab: schedule, r: new noise, space: play,\n"
    "  c: cat/digit, s: screenshot, q or Esc: quit\n";

#define PHOTO_HEIGHT 128     /* the photo is noised at this size (pixels)   */
#define DIGIT_PAD    2       /* MNIST 28x28 -> 32x32, as U-Nets like it     */
static const int STRIP_TS[5] = {0, 250, 500, 750, 999};
static const unsigned int SCHEDULE_COLOR[DL_SCHEDULE_COUNT] = {DL_PLOT_BLUE, DL_PLOT_ORANGE, DL_PLOT_GREEN};
static const char *const SCHEDULE_LABEL[DL_SCHEDULE_COUNT] = {"linear", "scaled_linear", "cosine"};

/* ------------------------------------------------------------------------ */
/* 1. The things we noise: a clean picture x_0 and one draw of noise eps.   */

typedef struct {
    char name[64];       /* "cat", "digit 7"                                  */
    dl_tensor x0;        /* [1, C, H, W], values in [-1, 1]                   */
    dl_tensor eps;       /* [1, C, H, W], N(0, 1): the SAME eps for every t   */
    dl_tensor xt;        /* [1, C, H, W], scratch for x_t                     */
    int zoom;            /* enlargement in the strips (nearest: crisp pixels) */
} subject;

static void subject_from_image(subject *s, const char *name, const dl_image *img, int zoom)
{
    snprintf(s->name, sizeof s->name, "%s", name);
    const int64_t *shape = DL_SHAPE(1, img->c, img->h, img->w);
    if (dl_tensor_alloc(&s->x0, 4, shape) != DL_OK || dl_tensor_alloc(&s->eps, 4, shape) != DL_OK ||
        dl_tensor_alloc(&s->xt, 4, shape) != DL_OK || dl_image_to_tensor(&s->x0, img) != DL_OK)
        dl_die(NULL);
    s->zoom = zoom;
}

/* eps ~ N(0, I), drawn exactly as torch.randn(x0.shape, generator=manual_seed(seed)). */
static void subject_draw_noise(subject *s, uint64_t seed)
{
    dl_rng rng;
    dl_rng_seed(&rng, seed);
    dl_rng_randn(&rng, s->eps.data, s->eps.numel);
}

static void subject_free(subject *s)
{
    dl_tensor_free(&s->x0);
    dl_tensor_free(&s->eps);
    dl_tensor_free(&s->xt);
}

/* The photo: loaded as RGB and shrunk (area filter) to PHOTO_HEIGHT rows. */
static void load_photo(subject *s, const char *path)
{
    dl_image full, small;
    if (dl_image_load(&full, path, 3) != DL_OK) dl_die("give a PNG or JPEG with --image, or run from the repository root");
    int w = (int)lround((double)full.w * PHOTO_HEIGHT / full.h);
    if (w > 2 * PHOTO_HEIGHT) w = 2 * PHOTO_HEIGHT;   /* very wide photos get squeezed a bit */
    if (w < 8) w = 8;
    if (dl_image_resize(&small, &full, w, PHOTO_HEIGHT) != DL_OK) dl_die(NULL);
    subject_from_image(s, "cat", &small, 2);
    if (strcmp(path, "data/images/chelsea.png") != 0) snprintf(s->name, sizeof s->name, "photo");
    dl_image_free(&full);
    dl_image_free(&small);
}

/* An MNIST test digit, padded with black to 32x32. */
static void load_digit(subject *s, int index)
{
    const char *images = "data/mnist/t10k-images-idx3-ubyte.gz", *labels = "data/mnist/t10k-labels-idx1-ubyte.gz";
    const char *hint = "run from the repository root, where data/mnist/ is";
    dl_idx img, lab;
    if (dl_idx_load(&img, images, index + 1) != DL_OK) dl_die(hint);
    if (dl_idx_load(&lab, labels, index + 1) != DL_OK) dl_die(hint);
    if (index >= img.dims[0] || img.ndim != 3)
        dl_die_msg("--digit-index counts from 0", "there is no MNIST test image %d (the file has %lld)",
                   index, (long long)img.items_in_file);
    dl_image digit, padded;
    if (dl_image_alloc(&digit, (int)img.dims[2], (int)img.dims[1], 1) != DL_OK) dl_die(NULL);
    memcpy(digit.px, dl_idx_item(&img, index), (size_t)img.item_size);
    if (dl_image_pad(&padded, &digit, DIGIT_PAD, 0) != DL_OK) dl_die(NULL);
    char name[64];
    snprintf(name, sizeof name, "digit %d", dl_idx_item(&lab, index)[0]);
    subject_from_image(s, name, &padded, 6);
    dl_image_free(&digit);
    dl_image_free(&padded);
    dl_idx_free(&img);
    dl_idx_free(&lab);
}

/* ------------------------------------------------------------------------ */
/* 2. The forward process itself: one line of maths, done by add_noise.     */

/* x_t for subject s at step t, as a picture enlarged `zoom` times. */
static dl_image noised_picture(subject *s, const dl_schedule *sched, int t, int zoom)
{
    /* x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * eps */
    if (add_noise(sched, s->xt.data, s->x0.data, s->eps.data, s->x0.numel, t) != DL_OK) dl_die(NULL);
    dl_image small, big;
    if (dl_tensor_to_image(&small, &s->xt, 0) != DL_OK) dl_die(NULL);   /* [-1, 1] -> 0..255, clamped */
    if (dl_image_scale_nearest(&big, &small, zoom) != DL_OK) dl_die(NULL);
    dl_image_free(&small);
    return big;
}

/* ------------------------------------------------------------------------ */
/* 3. Headless pictures: a strip per subject, and the schedule curves.      */

/* Rows = schedules, columns = t; each tile says its alpha_bar_t. */
static dl_image strip(subject *s, const dl_schedule sched[DL_SCHEDULE_COUNT], uint64_t seed)
{
    char title[160], col_text[5][32];
    const char *cols[5];
    for (int c = 0; c < 5; c++) {
        snprintf(col_text[c], sizeof col_text[c], "t = %d", STRIP_TS[c]);
        cols[c] = col_text[c];
    }
    snprintf(title, sizeof title, "%s: x_t = sqrt(ab) x_0 + sqrt(1 - ab) eps\nab = alpha_bar_t; the same eps in every tile (seed %llu)",
             s->name, (unsigned long long)seed);
    dl_grid g = { .rows = DL_SCHEDULE_COUNT, .cols = 5,
                  .tile_w = (int)s->x0.shape[3] * s->zoom, .tile_h = (int)s->x0.shape[2] * s->zoom,
                  .pad = 10, .text_scale = 2, .title = title,
                  .row_labels = SCHEDULE_LABEL, .col_labels = cols };
    dl_image canvas;
    if (dl_grid_create(&canvas, &g) != DL_OK) dl_die(NULL);
    for (int k = 0; k < DL_SCHEDULE_COUNT; k++)
        for (int c = 0; c < 5; c++) {
            dl_image tile = noised_picture(s, &sched[k], STRIP_TS[c], s->zoom);
            char ab[32];   /* how much signal is left, written on the tile */
            snprintf(ab, sizeof ab, "ab=%.3g", sched[k].alphas_cumprod[STRIP_TS[c]]);
            dl_image_fill_rect(&tile, 0, tile.h - 22, dl_text_width(ab, 2) + 8, 22, 0, 0, 0);
            dl_image_draw_text(&tile, 4, tile.h - 18, ab, 255, 255, 255, 2);
            dl_grid_place(&canvas, &g, k, c, &tile);
            dl_image_free(&tile);
        }
    return canvas;
}

/* Per schedule, against t: sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t), log SNR. */
typedef struct { float t[1000], signal[1000], noise[1000], log_snr[1000]; int n; } curves;

static void schedule_curves(curves *cv, const dl_schedule *s)
{
    cv->n = s->num_train_timesteps < 1000 ? s->num_train_timesteps : 1000;
    for (int t = 0; t < cv->n; t++) {
        float ab = s->alphas_cumprod[t];
        cv->t[t] = (float)t;
        cv->signal[t] = sqrtf(ab);
        cv->noise[t] = sqrtf(1.0f - ab);
        cv->log_snr[t] = dl_schedule_log_snr(s, t);   /* ln(ab / (1 - ab)) */
    }
}

static dl_image schedules_figure(const curves cv[DL_SCHEDULE_COUNT])
{
    const int wa = 920, wb = 680, ph = 520;   /* panel a has its legend on the right */
    dl_image fig;
    if (dl_image_alloc(&fig, wa + wb, ph, 3) != DL_OK) dl_die(NULL);
    dl_plot a, b;
    dl_plot_init(&a, "how much signal and noise x_t holds", "t", "scale");
    dl_plot_init(&b, "log SNR = ln(alpha_bar_t / (1 - alpha_bar_t))", "t", "log SNR");
    for (int k = 0; k < DL_SCHEDULE_COUNT; k++) {
        unsigned int col = SCHEDULE_COLOR[k];
        dl_plot_add_series(&a, SCHEDULE_LABEL[k], cv[k].t, cv[k].signal, cv[k].n, col);
        dl_plot_add_series_ex(&a, "", cv[k].t, cv[k].noise, cv[k].n, col, DL_PLOT_DASHED);
        dl_plot_add_series(&b, SCHEDULE_LABEL[k], cv[k].t, cv[k].log_snr, cv[k].n, col);
    }
    /* legend-only entries (no points) that explain the line styles */
    dl_plot_add_series(&a, "sqrt(alpha_bar_t)", NULL, NULL, 0, DL_PLOT_BLACK);
    dl_plot_add_series_ex(&a, "sqrt(1 - alpha_bar_t)", NULL, NULL, 0, DL_PLOT_BLACK, DL_PLOT_DASHED);
    a.legend_outside = 1;
    dl_plot_draw(&a, &fig, 0, 0, wa, ph);
    dl_plot_draw(&b, &fig, wa, 0, wb, ph);
    dl_plot_free(&a);
    dl_plot_free(&b);
    return fig;
}

static void run_headless(dl_app *app, subject subj[2], const dl_schedule sched[], const curves cv[], uint64_t seed)
{
    dl_image img = strip(&subj[0], sched, seed);
    if (dl_app_save(app, "01_strip_cat.png", &img) != DL_OK) dl_die("check --out");
    dl_image_free(&img);
    img = strip(&subj[1], sched, seed);
    if (dl_app_save(app, "01_strip_digit.png", &img) != DL_OK) dl_die("check --out");
    dl_image_free(&img);
    img = schedules_figure(cv);
    if (dl_app_save(app, "01_schedules.png", &img) != DL_OK) dl_die("check --out");
    dl_image_free(&img);
}

/* ------------------------------------------------------------------------ */
/* 4. The live window: scrub t, switch schedules, watch the numbers.        */

#define FRAME_W 960
#define FRAME_H 540
#define TEXT 2                        /* text scale in the frame */

typedef struct {
    int t, schedule, who;             /* who: 0 photo, 1 digit */
    int playing;
    uint64_t seed;
    int shots;                        /* screenshots saved so far */
    char message[160];                /* shown for a while after 's' */
    int message_frames;
} live_state;

static void draw_frame(dl_image *f, subject *s, const dl_schedule *sched, const curves *cv,
                       const live_state *st, viz_slider *slider)
{
    dl_image_fill(f, 250, 250, 250);
    char line[200];
    /* title */
    dl_image_draw_text(f, 16, 12, "x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps", 0, 0, 0, TEXT);

    /* x_t, as large as fits (whole pixels) in a 576 x 384 box */
    const int bx = 16, by = 48, bw = 576, bh = 384;
    int zw = bw / (int)s->x0.shape[3], zh = bh / (int)s->x0.shape[2];
    dl_image xt = noised_picture(s, sched, st->t, zw < zh ? zw : zh);
    dl_image_fill_rect(f, bx, by, bw, bh, 40, 40, 40);
    dl_image_blit(f, &xt, bx + (bw - xt.w) / 2, by + (bh - xt.h) / 2);
    dl_image_free(&xt);

    /* the numbers at this t */
    float ab = sched->alphas_cumprod[st->t], snr = dl_schedule_snr(sched, st->t);
    int x = 612, y = 52, dy = 26;
    snprintf(line, sizeof line, "%s, %s", s->name, SCHEDULE_LABEL[st->schedule]);
    dl_image_draw_text(f, x, y, line, 0, 0, 0, TEXT); y += dy;
    snprintf(line, sizeof line, "t = %d  (seed %llu)", st->t, (unsigned long long)st->seed);
    dl_image_draw_text(f, x, y, line, 0, 0, 0, TEXT); y += dy;
    snprintf(line, sizeof line, "beta_t       = %.5f", sched->betas[st->t]);
    dl_image_draw_text(f, x, y, line, 60, 60, 60, TEXT); y += dy;
    snprintf(line, sizeof line, "alpha_bar_t  = %.5f", ab);
    dl_image_draw_text(f, x, y, line, 60, 60, 60, TEXT); y += dy;
    snprintf(line, sizeof line, "sqrt(ab)     = %.4f", sqrtf(ab));
    dl_image_draw_text(f, x, y, line, 31, 119, 180, TEXT); y += dy;
    snprintf(line, sizeof line, "sqrt(1 - ab) = %.4f", sqrtf(1 - ab));
    dl_image_draw_text(f, x, y, line, 214, 39, 40, TEXT); y += dy;
    snprintf(line, sizeof line, "SNR = %.3g  ln SNR = %.2f", snr, logf(snr));
    dl_image_draw_text(f, x, y, line, 60, 60, 60, TEXT); y += dy;

    /* a small plot of this schedule with a marker at t (colours as the text above) */
    dl_plot p;
    dl_plot_init(&p, "", "t", "");
    p.legend = 0;
    dl_plot_add_series(&p, "sqrt(ab)", cv->t, cv->signal, cv->n, DL_PLOT_BLUE);
    dl_plot_add_series_ex(&p, "sqrt(1-ab)", cv->t, cv->noise, cv->n, DL_PLOT_RED, DL_PLOT_DASHED);
    dl_plot_set_yrange(&p, 0, 1);
    p.has_marker = 1;
    p.marker_x = (float)st->t;
    dl_plot_draw(&p, f, x - 8, y + 6, FRAME_W - x - 4, 432 - (y + 6));
    dl_plot_free(&p);

    /* the t slider and the keys */
    slider->value = st->t;
    viz_slider_draw(slider, f);
    if (st->message_frames > 0) dl_image_draw_text(f, 16, 490, st->message, 0, 120, 0, TEXT);
    else {
        dl_image_draw_text(f, 16, 486, "left/right: t -+1   shift or up/down: -+50   mouse: slider   space: play", 80, 80, 80, TEXT);
        dl_image_draw_text(f, 16, 512, "1 2 3 / tab: schedule   r: new noise   c: cat/digit   s: save   q: quit", 80, 80, 80, TEXT);
    }
}

static void run_live(dl_app *app, subject subj[2], const dl_schedule sched[], const curves cv[], uint64_t seed)
{
    viz_window *win = viz_open("difflab 01 - forward noising", FRAME_W, FRAME_H, 1);
    if (!win) dl_die("run with --headless to write the pictures instead");
    dl_image frame;
    if (dl_image_alloc(&frame, FRAME_W, FRAME_H, 3) != DL_OK) dl_die(NULL);
    viz_slider slider = { .x = 16, .y = 446, .w = FRAME_W - 32, .h = 26, .min = 0, .max = 999 };
    live_state st = { .t = 250, .schedule = 0, .who = 0, .seed = seed };
    const int T = sched[0].num_train_timesteps;
    slider.max = T - 1;

    int dirty = 1;
    for (int64_t frame_no = 0, running = 1; running; frame_no++) {
        viz_event ev;
        while (viz_poll(win, &ev)) {
            if (viz_slider_event(&slider, &ev)) { st.t = slider.value; st.playing = 0; dirty = 1; }
            if (ev.type == VIZ_QUIT) running = 0;
            if (ev.type != VIZ_KEY) continue;
            int step = (ev.shift || ev.key == VIZ_KEY_UP || ev.key == VIZ_KEY_DOWN) ? 50 : 1;
            switch (ev.key) {
            case 'q': case VIZ_KEY_ESCAPE: running = 0; break;
            case VIZ_KEY_RIGHT: case VIZ_KEY_UP:   st.t += step; st.playing = 0; break;
            case VIZ_KEY_LEFT:  case VIZ_KEY_DOWN: st.t -= step; st.playing = 0; break;
            case VIZ_KEY_HOME: st.t = 0; break;
            case VIZ_KEY_END:  st.t = T - 1; break;
            case '1': case '2': case '3': st.schedule = ev.key - '1'; break;
            case VIZ_KEY_TAB: st.schedule = (st.schedule + 1) % DL_SCHEDULE_COUNT; break;
            case 'c': st.who = 1 - st.who; break;
            case 'r':   /* a new eps: a new seed for both subjects */
                st.seed++;
                subject_draw_noise(&subj[0], st.seed);
                subject_draw_noise(&subj[1], st.seed);
                break;
            case ' ':
                st.playing = !st.playing;
                if (st.playing && st.t >= T - 1) st.t = 0;
                break;
            case 's': {
                char name[64];
                snprintf(name, sizeof name, "01_screenshot_%03d.png", ++st.shots);
                if (dl_app_save(app, name, &frame) == DL_OK)
                    snprintf(st.message, sizeof st.message, "saved %s/%s", app->out_dir, name);
                else
                    snprintf(st.message, sizeof st.message, "could not save: %.120s", dl_error_message());
                st.message_frames = 120;
                break;
            }
            default: break;
            }
            if (st.t < 0) st.t = 0;
            if (st.t > T - 1) st.t = T - 1;
            dirty = 1;
        }
        if (st.playing) {   /* about 4 seconds from 0 to 999 at 60 frames/s */
            st.t += 4;
            if (st.t >= T - 1) { st.t = T - 1; st.playing = 0; }
            dirty = 1;
        }
        if (st.message_frames > 0 && --st.message_frames == 0) dirty = 1;
        if (dirty) {   /* only redraw when something changed: x_t for ONE t is cheap */
            draw_frame(&frame, &subj[st.who], &sched[st.schedule], &cv[st.schedule], &st, &slider);
            viz_present(win, &frame);
            dirty = 0;
        }
        if (dl_app_frame_limit(app, win, frame_no + 1)) running = 0;   /* scripted run: keep what was shown */
        viz_wait(win, 16);
    }
    dl_image_free(&frame);
    viz_close(win);
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    dl_app app;
    dl_app_init(&app, "01_forward_noising", USAGE);
    uint64_t seed = 0;
    const char *photo = "data/images/chelsea.png";
    int digit_index = 0;
    for (int i = 1; i < argc; i++) {
        if (dl_app_common_arg(&app, argc, argv, &i)) continue;
        if (!strcmp(argv[i], "--seed")) seed = (uint64_t)dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else if (!strcmp(argv[i], "--image")) photo = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(argv[i], "--digit-index")) digit_index = (int)dl_arg_int(&app, argc, argv, &i, 0, 59999);
        else dl_app_bad_arg(&app, "unknown option '%s'", argv[i]);
    }

    /* The three schedules, with diffusers' default settings for each. */
    dl_schedule sched[DL_SCHEDULE_COUNT];
    curves *cv = malloc(sizeof(curves) * DL_SCHEDULE_COUNT);
    if (!cv) dl_die_msg(NULL, "out of memory");
    for (int k = 0; k < DL_SCHEDULE_COUNT; k++) {
        if (dl_schedule_init_default(&sched[k], (dl_schedule_kind)k) != DL_OK) dl_die(NULL);
        schedule_curves(&cv[k], &sched[k]);
    }

    /* The two subjects and their noise. */
    subject subj[2];
    load_photo(&subj[0], photo);
    load_digit(&subj[1], digit_index);
    subject_draw_noise(&subj[0], seed);
    subject_draw_noise(&subj[1], seed);

    if (dl_app_choose_mode(&app)) run_headless(&app, subj, sched, cv, seed);
    else run_live(&app, subj, sched, cv, seed);

    for (int k = 0; k < 2; k++) subject_free(&subj[k]);
    for (int k = 0; k < DL_SCHEDULE_COUNT; k++) dl_schedule_free(&sched[k]);
    free(cv);
    return 0;
}
