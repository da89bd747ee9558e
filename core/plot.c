/* plot.c - see plot.h. Layout of one plot inside its rectangle:
 *
 *     +--------------------------------------------+
 *     |                 title                      |
 *     |  y  ticks +--------------------+           |
 *     |  l  1.0 - |  lines   [legend]  |           |
 *     |  a  0.5 - |                    |           |
 *     |  b      0 +--------------------+           |
 *     |  e        0      500      1000             |
 *     |  l                x label                  |
 *     +--------------------------------------------+
 */
#include "plot.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void dl_plot_init(dl_plot *p, const char *title, const char *xlabel, const char *ylabel)
{
    memset(p, 0, sizeof *p);
    snprintf(p->title, sizeof p->title, "%s", title ? title : "");
    snprintf(p->xlabel, sizeof p->xlabel, "%s", xlabel ? xlabel : "");
    snprintf(p->ylabel, sizeof p->ylabel, "%s", ylabel ? ylabel : "");
    p->text_scale = 2;
    p->line_width = 3;
    p->legend = 1;
}

dl_status dl_plot_add_series_ex(dl_plot *p, const char *name, const float *xs, const float *ys,
                                int n, unsigned int color, dl_plot_style style)
{
    if (p->nseries >= DL_PLOT_MAX_SERIES)
        return dl_fail(DL_ERR_ARG, "plot '%s': more than %d series", p->title, DL_PLOT_MAX_SERIES);
    if (n < 0 || (n > 0 && (!xs || !ys)))
        return dl_fail(DL_ERR_ARG, "plot '%s': series '%s' has no data", p->title, name);
    dl_plot_series *s = &p->series[p->nseries];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name ? name : "");
    s->x = malloc(sizeof(float) * (n ? n : 1));
    s->y = malloc(sizeof(float) * (n ? n : 1));
    if (!s->x || !s->y) {
        free(s->x); free(s->y);
        return dl_fail(DL_ERR_MEMORY, "plot '%s': out of memory", p->title);
    }
    if (n) { memcpy(s->x, xs, sizeof(float) * n); memcpy(s->y, ys, sizeof(float) * n); }
    s->n = n;
    s->color = color;
    s->style = style;
    p->nseries++;
    return DL_OK;
}

dl_status dl_plot_add_series(dl_plot *p, const char *name, const float *xs, const float *ys,
                             int n, unsigned int color)
{
    return dl_plot_add_series_ex(p, name, xs, ys, n, color, DL_PLOT_SOLID);
}

void dl_plot_set_xrange(dl_plot *p, float xmin, float xmax) { p->fixed_x = 1; p->xmin = xmin; p->xmax = xmax; }
void dl_plot_set_yrange(dl_plot *p, float ymin, float ymax) { p->fixed_y = 1; p->ymin = ymin; p->ymax = ymax; }

void dl_plot_free(dl_plot *p)
{
    for (int i = 0; i < p->nseries; i++) { free(p->series[i].x); free(p->series[i].y); }
    p->nseries = 0;
}

double dl_plot_nice_step(double range, int wanted_ticks)
{
    if (!(range > 0) || !isfinite(range)) return 1.0;
    if (wanted_ticks < 1) wanted_ticks = 1;
    double raw = range / wanted_ticks;
    double mag = pow(10.0, floor(log10(raw)));
    double f = raw / mag;                /* 1 <= f < 10 */
    double nice = f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10;
    return nice * mag;
}

/* The value drawn on the y axis: y itself or log10(y). NaN = skip. */
static double yval(const dl_plot *p, float y)
{
    if (!isfinite(y)) return NAN;
    if (p->log_y) return y > 0 ? log10((double)y) : NAN;
    return y;
}

/* Data ranges (skipping NaN/inf), widened when flat or empty. */
static void plot_ranges(const dl_plot *p, double *x0, double *x1, double *y0, double *y1)
{
    double xa = INFINITY, xb = -INFINITY, ya = INFINITY, yb = -INFINITY;
    for (int s = 0; s < p->nseries; s++)
        for (int i = 0; i < p->series[s].n; i++) {
            double x = p->series[s].x[i], y = yval(p, p->series[s].y[i]);
            if (!isfinite(x) || !isfinite(y)) continue;
            if (x < xa) xa = x;
            if (x > xb) xb = x;
            if (y < ya) ya = y;
            if (y > yb) yb = y;
        }
    if (xa > xb) { xa = 0; xb = 1; }
    if (ya > yb) { ya = 0; yb = 1; }
    if (p->fixed_x && p->xmax > p->xmin) { xa = p->xmin; xb = p->xmax; }
    if (p->fixed_y) {
        double a = yval(p, p->ymin), b = yval(p, p->ymax);
        if (isfinite(a) && isfinite(b) && b > a) { ya = a; yb = b; }
    } else {
        double m = 0.04 * (yb - ya);     /* a little air above and below */
        ya -= m; yb += m;
    }
    if (xb - xa < 1e-12 * (fabs(xa) + 1)) { xa -= 0.5 * (fabs(xa) + 1); xb += 0.5 * (fabs(xb) + 1); }
    if (yb - ya < 1e-12 * (fabs(ya) + 1)) { double m = 0.1 * fabs(ya) + 1; ya -= m; yb += m; }
    *x0 = xa; *x1 = xb; *y0 = ya; *y1 = yb;
}

/* A linear tick label: enough decimals for the step, %g for huge/tiny. */
static void tick_label(char *buf, size_t n, double v, double step)
{
    if (fabs(v) < step * 1e-6) v = 0;   /* avoid "-0" and "1e-17" */
    if (fabs(v) >= 1e5 || (step < 1e-4 && v != 0)) { snprintf(buf, n, "%.3g", v); return; }
    int dec = step >= 1 ? 0 : (int)ceil(-log10(step) - 1e-9);
    snprintf(buf, n, "%.*f", dec, v);
}

#define MAX_TICKS 24
typedef struct { int n; double v[MAX_TICKS]; char label[MAX_TICKS][24]; } ticks;

/* Ticks for the axis range [a, b] (in axis units: log10 values if log).
 * Linear: multiples of a nice step. Log: whole decades when the range
 * spans several, else 1-2-5 (or 1..9) times powers of ten. */
static void make_ticks(ticks *t, double a, double b, int wanted, int log_axis)
{
    t->n = 0;
    if (!log_axis || b - a < 0.3) {
        double step = dl_plot_nice_step(b - a, wanted);
        for (double k = ceil(a / step - 1e-9); k <= floor(b / step + 1e-9) && t->n < MAX_TICKS; k++) {
            double v = k * step;
            t->v[t->n] = v;
            if (log_axis) snprintf(t->label[t->n], 24, "%.3g", pow(10.0, v));
            else tick_label(t->label[t->n], 24, v, step);
            t->n++;
        }
        return;
    }
    static const double m125[] = {1, 2, 5}, m19[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    const double *mant = m125;
    int nm = 3, every = 1;
    if (b - a >= 2) { nm = 1; every = (int)fmax(1.0, round(dl_plot_nice_step(b - a, wanted))); }
    else if (b - a < 1) { mant = m19; nm = 9; }
    for (int d = (int)floor(a); d <= (int)ceil(b); d++) {
        if (d % every) continue;
        for (int i = 0; i < nm && t->n < MAX_TICKS; i++) {
            double v = d + log10(mant[i]);
            if (v < a - 1e-9 || v > b + 1e-9) continue;
            double x = mant[i] * pow(10.0, d);
            if (d < -3 || d > 4) snprintf(t->label[t->n], 24, "%ge%d", mant[i], d);
            else snprintf(t->label[t->n], 24, "%g", x);
            t->v[t->n++] = v;
        }
    }
}

static void unpack(unsigned int c, unsigned char *r, unsigned char *g, unsigned char *b)
{
    *r = (unsigned char)(c >> 16); *g = (unsigned char)(c >> 8); *b = (unsigned char)c;
}

typedef struct { int x0, y0, x1, y1; } rect;   /* inclusive-exclusive */

/* Clip segment (ax,ay)-(bx,by) to rect r (Liang-Barsky). 0 if outside. */
static int clip_segment(double *ax, double *ay, double *bx, double *by, rect r)
{
    double t0 = 0, t1 = 1, dx = *bx - *ax, dy = *by - *ay;
    double pp[4] = {-dx, dx, -dy, dy};
    double qq[4] = {*ax - r.x0, (r.x1 - 1) - *ax, *ay - r.y0, (r.y1 - 1) - *ay};
    for (int i = 0; i < 4; i++) {
        if (pp[i] == 0) { if (qq[i] < 0) return 0; continue; }
        double t = qq[i] / pp[i];
        if (pp[i] < 0) { if (t > t1) return 0; if (t > t0) t0 = t; }
        else           { if (t < t0) return 0; if (t < t1) t1 = t; }
    }
    double x0 = *ax + t0 * dx, y0 = *ay + t0 * dy;
    *bx = *ax + t1 * dx; *by = *ay + t1 * dy;
    *ax = x0; *ay = y0;
    return 1;
}

/* Square brush clipped to the plot rectangle. */
static void dot(dl_image *img, rect r, int x, int y, int thick, unsigned int color)
{
    unsigned char R, G, B;
    unpack(color, &R, &G, &B);
    int x0 = x - (thick - 1) / 2, y0 = y - (thick - 1) / 2, x1 = x0 + thick, y1 = y0 + thick;
    if (x0 < r.x0) x0 = r.x0;
    if (y0 < r.y0) y0 = r.y0;
    if (x1 > r.x1) x1 = r.x1;
    if (y1 > r.y1) y1 = r.y1;
    if (x1 > x0 && y1 > y0) dl_image_fill_rect(img, x0, y0, x1 - x0, y1 - y0, R, G, B);
}

/* Where a polyline's dash pattern is: pixels walked so far and the last
 * pixel, so dense data (many points per pixel) still dashes evenly. */
typedef struct { int phase, last_x, last_y; } dash_state;

/* A clipped, optionally dashed segment. */
static void segment(dl_image *img, rect r, double ax, double ay, double bx, double by,
                    int thick, unsigned int color, int dashed, dash_state *ds)
{
    if (!clip_segment(&ax, &ay, &bx, &by, r)) return;
    int x0 = (int)lround(ax), y0 = (int)lround(ay), x1 = (int)lround(bx), y1 = (int)lround(by);
    int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy, on = 6 * thick, period = on + 4 * thick;
    for (;;) {
        if (x0 != ds->last_x || y0 != ds->last_y) {   /* a new pixel */
            ds->phase++;
            ds->last_x = x0; ds->last_y = y0;
            if (!dashed || (ds->phase % period) < on) dot(img, r, x0, y0, thick, color);
        }
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * err;
        if (e2 >= dy) { err += dy; x0 += sx; }
        if (e2 <= dx) { err += dx; y0 += sy; }
    }
}

/* Text turned 90 degrees counter-clockwise (reads bottom to top, like a
 * y label); (x, y) is the top-left corner of the turned text. */
static void draw_text_vertical(dl_image *img, int x, int y, const char *text, int scale)
{
    dl_image t;
    int w = dl_text_width(text, scale), h = dl_text_height(text, scale);
    if (w <= 0 || h <= 0 || dl_image_alloc(&t, w, h, 1) != DL_OK) return;
    dl_image_draw_text(&t, 0, 0, text, 255, 255, 255, scale);
    for (int ty = 0; ty < h; ty++)
        for (int tx = 0; tx < w; tx++)
            if (t.px[ty * w + tx]) dl_image_fill_rect(img, x + ty, y + (w - 1 - tx), 1, 1, 0, 0, 0);
    dl_image_free(&t);
}

/* Size of the legend box; 0 entries when no series has a name. */
static int legend_size(const dl_plot *p, int ts, int *bw, int *bh)
{
    int name_w = 0, entries = 0;   /* series with an empty name stay out of the legend */
    for (int s = 0; s < p->nseries; s++) {
        int w = dl_text_width(p->series[s].name, ts);
        if (w > name_w) name_w = w;
        entries += p->series[s].name[0] != '\0';
    }
    const int pad = 4 * ts, swatch = 20 * ts;
    *bw = pad + swatch + pad + name_w + pad;
    *bh = entries * 12 * ts + pad;
    return p->legend ? entries : 0;
}

void dl_plot_draw(const dl_plot *p, dl_image *img, int X, int Y, int W, int H)
{
    const int ts = p->text_scale > 0 ? p->text_scale : 2;
    const int lw = p->line_width > 0 ? p->line_width : 3;
    const int line_h = 12 * ts, pad = 4 * ts, tick = 3 * ts;
    dl_image_fill_rect(img, X, Y, W, H, 255, 255, 255);

    double xa, xb, ya, yb;
    plot_ranges(p, &xa, &xb, &ya, &yb);
    ticks xt, yt;
    make_ticks(&xt, xa, xb, W > 500 ? 6 : 4, 0);
    make_ticks(&yt, ya, yb, H > 300 ? 6 : 4, p->log_y);

    /* Margins: measure the widest y tick label first. */
    int ylab_w = 0;
    for (int i = 0; i < yt.n; i++) {
        int w = dl_text_width(yt.label[i], ts);
        if (w > ylab_w) ylab_w = w;
    }
    int left = pad + (p->ylabel[0] ? line_h : 0) + ylab_w + tick + ts * 2;
    int top = p->title[0] ? line_h + 2 * pad : 2 * pad;
    int bottom = tick + ts * 2 + line_h + (p->xlabel[0] ? line_h : 0) + pad / 2;
    int right = 2 * pad + 3 * ts * 6 / 2;             /* half of a last x label */
    int bw, bh, entries = legend_size(p, ts, &bw, &bh);
    if (entries && p->legend_outside) right += bw;
    rect r = { X + left, Y + top, X + W - right, Y + H - bottom };
    if (r.x1 - r.x0 < 20 || r.y1 - r.y0 < 20) return;  /* too small to draw */
    const double pw = r.x1 - 1 - r.x0, ph = r.y1 - 1 - r.y0;
#define SX(v) (r.x0 + ((v) - xa) / (xb - xa) * pw)
#define SY(v) (r.y1 - 1 - ((v) - ya) / (yb - ya) * ph)

    /* Title, centred over the plot area. */
    if (p->title[0])
        dl_image_draw_text(img, (r.x0 + r.x1 - dl_text_width(p->title, ts)) / 2, Y + pad, p->title, 0, 0, 0, ts);

    /* Grid lines and ticks with labels. */
    for (int i = 0; i < yt.n; i++) {
        const double v = yt.v[i];
        const char *buf = yt.label[i];
        int py = (int)lround(SY(v));
        dl_image_fill_rect(img, r.x0, py, r.x1 - r.x0, 1, 225, 225, 225);
        dl_image_fill_rect(img, r.x0 - tick, py, tick, ts > 1 ? 2 : 1, 0, 0, 0);
        dl_image_draw_text(img, r.x0 - tick - ts * 2 - dl_text_width(buf, ts), py - 7 * ts / 2, buf, 0, 0, 0, ts);
    }
    for (int i = 0; i < xt.n; i++) {
        const double v = xt.v[i];
        const char *buf = xt.label[i];
        int px = (int)lround(SX(v));
        dl_image_fill_rect(img, px, r.y0, 1, r.y1 - r.y0, 225, 225, 225);
        dl_image_fill_rect(img, px, r.y1, ts > 1 ? 2 : 1, tick, 0, 0, 0);
        dl_image_draw_text(img, px - dl_text_width(buf, ts) / 2, r.y1 + tick + ts * 2, buf, 0, 0, 0, ts);
    }
    if (p->xlabel[0])
        dl_image_draw_text(img, (r.x0 + r.x1 - dl_text_width(p->xlabel, ts)) / 2,
                           r.y1 + tick + ts * 2 + line_h, p->xlabel, 0, 0, 0, ts);
    if (p->ylabel[0])
        draw_text_vertical(img, X + pad, (r.y0 + r.y1 - dl_text_width(p->ylabel, ts)) / 2, p->ylabel, ts);

    /* The marker (e.g. the current t) under the data. */
    if (p->has_marker && isfinite(p->marker_x) && p->marker_x >= xa && p->marker_x <= xb) {
        int mx = (int)lround(SX(p->marker_x));
        dl_image_fill_rect(img, mx - ts / 2, r.y0, ts > 1 ? ts : 1, r.y1 - r.y0, 120, 120, 120);
    }

    /* Series: polylines that break at NaN/inf. */
    for (int s = 0; s < p->nseries; s++) {
        const dl_plot_series *se = &p->series[s];
        int have_prev = 0;
        dash_state ds = { 0, INT_MIN, INT_MIN };
        double px = 0, py = 0;
        for (int i = 0; i < se->n; i++) {
            double y = yval(p, se->y[i]), x = se->x[i];
            if (!isfinite(x) || !isfinite(y)) { have_prev = 0; continue; }
            double qx = SX(x), qy = SY(y);
            if (fabs(qx) > 1e7 || fabs(qy) > 1e7) { have_prev = 0; continue; }   /* far outside a fixed range */
            if (have_prev) segment(img, r, px, py, qx, qy, lw, se->color, se->style == DL_PLOT_DASHED, &ds);
            else if (se->n == 1 || i + 1 >= se->n || !isfinite(yval(p, se->y[i + 1])))
                segment(img, r, qx, qy, qx, qy, lw + 2, se->color, 0, &ds);   /* isolated point */
            px = qx; py = qy; have_prev = 1;
        }
    }

    /* Axes box on top of everything. */
    dl_image_draw_rect(img, r.x0 - 1, r.y0 - 1, r.x1 - r.x0 + 2, r.y1 - r.y0 + 2, ts > 1 ? 2 : 1, 0, 0, 0);

    /* Legend: right of the plot, or in the corner that covers the fewest points. */
    if (entries) {
        const int sw = 20 * ts, m = pad;   /* swatch length, margin */
        int bx = r.x1 + 2 * pad, by = r.y0;
        if (!p->legend_outside) {
            int cx[4] = { r.x1 - m - bw, r.x0 + m, r.x1 - m - bw, r.x0 + m };
            int cy[4] = { r.y0 + m, r.y0 + m, r.y1 - m - bh, r.y1 - m - bh };
            int best = 0, best_count = -1;
            for (int k = 0; k < 4; k++) {
                int count = 0;
                for (int s = 0; s < p->nseries; s++)
                    for (int i = 0; i < p->series[s].n; i++) {
                        double y = yval(p, p->series[s].y[i]);
                        if (!isfinite(y)) continue;
                        double qx = SX(p->series[s].x[i]), qy = SY(y);
                        if (qx >= cx[k] && qx < cx[k] + bw && qy >= cy[k] && qy < cy[k] + bh) count++;
                    }
                if (best_count < 0 || count < best_count) { best = k; best_count = count; }
            }
            bx = cx[best]; by = cy[best];
        }
        dl_image_fill_rect(img, bx, by, bw, bh, 255, 255, 255);
        dl_image_draw_rect(img, bx, by, bw, bh, 1, 160, 160, 160);
        rect lr = { bx, by, bx + bw, by + bh };
        for (int s = 0, row = 0; s < p->nseries; s++) {
            if (!p->series[s].name[0]) continue;
            int ly = by + pad / 2 + row++ * line_h + 7 * ts / 2;   /* middle of the capitals */
            dash_state ds = { 0, INT_MIN, INT_MIN };
            segment(img, lr, bx + pad, ly, bx + pad + sw, ly, lw, p->series[s].color,
                    p->series[s].style == DL_PLOT_DASHED, &ds);
            dl_image_draw_text(img, bx + pad + sw + pad, ly - 7 * ts / 2, p->series[s].name, 0, 0, 0, ts);
        }
    }
#undef SX
#undef SY
}

dl_status dl_plot_render(const dl_plot *p, dl_image *out, int w, int h)
{
    DL_TRY(dl_image_alloc(out, w, h, 3));
    dl_plot_draw(p, out, 0, 0, w, h);
    return DL_OK;
}
