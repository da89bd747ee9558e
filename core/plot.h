/* plot.h - simple line plots drawn into a dl_image (no SDL, no libraries).
 *
 *     dl_plot p;
 *     dl_plot_init(&p, "noise schedules", "t", "value");
 *     dl_plot_add_series(&p, "sqrt(alpha_bar)", ts, ys, 1000, DL_PLOT_BLUE);
 *     dl_plot_add_series_ex(&p, "sqrt(1 - alpha_bar)", ts, zs, 1000, DL_PLOT_BLUE, DL_PLOT_DASHED);
 *     dl_image img;
 *     dl_plot_render(&p, &img, 640, 400);     // allocates an RGB image
 *     dl_plot_free(&p);
 *
 * Axes get "nice" ticks (1, 2, 5 x 10^k) with numeric labels, light grid
 * lines, an x and a (rotated) y label, a title and a legend placed in the
 * corner where it hides the fewest points. NaN/inf points are skipped (the
 * line breaks there); a flat series gets a small range around its value.
 * With log_y = 1 the y axis is log10 and non-positive values are skipped.
 * Series data is copied, so the arrays may be freed after adding. A series
 * named "" stays out of the legend; one with n = 0 is only a legend entry.
 */
#ifndef DL_PLOT_H
#define DL_PLOT_H

#include "dl_error.h"
#include "image.h"

#define DL_PLOT_MAX_SERIES 12

/* Colours as 0xRRGGBB. A palette that stays distinct on a projector. */
#define DL_PLOT_BLUE   0x1f77b4u
#define DL_PLOT_ORANGE 0xff7f0eu
#define DL_PLOT_GREEN  0x2ca02cu
#define DL_PLOT_RED    0xd62728u
#define DL_PLOT_PURPLE 0x9467bdu
#define DL_PLOT_BROWN  0x8c564bu
#define DL_PLOT_GRAY   0x7f7f7fu
#define DL_PLOT_BLACK  0x000000u

typedef enum { DL_PLOT_SOLID, DL_PLOT_DASHED } dl_plot_style;

typedef struct {
    char name[64];
    float *x, *y;          /* owned copies, n points */
    int n;
    unsigned int color;    /* 0xRRGGBB */
    dl_plot_style style;
} dl_plot_series;

typedef struct {
    char title[128], xlabel[64], ylabel[64];
    dl_plot_series series[DL_PLOT_MAX_SERIES];
    int nseries;
    int log_y;             /* 1: log10 y axis                               */
    int fixed_x, fixed_y;  /* 1: use xmin/xmax (ymin/ymax) instead of data  */
    float xmin, xmax, ymin, ymax;
    int has_marker;        /* 1: a vertical line at marker_x (e.g. current t) */
    float marker_x;
    int text_scale;        /* stb_easy_font scale, default 2                */
    int line_width;        /* pixels, default 3                             */
    int legend;            /* 1 (default): draw the legend                  */
    int legend_outside;    /* 1: legend right of the plot area, not inside  */
} dl_plot;

void dl_plot_init(dl_plot *p, const char *title, const char *xlabel, const char *ylabel);
dl_status dl_plot_add_series(dl_plot *p, const char *name, const float *xs, const float *ys,
                             int n, unsigned int color);
dl_status dl_plot_add_series_ex(dl_plot *p, const char *name, const float *xs, const float *ys,
                                int n, unsigned int color, dl_plot_style style);
void dl_plot_set_xrange(dl_plot *p, float xmin, float xmax);
void dl_plot_set_yrange(dl_plot *p, float ymin, float ymax);
void dl_plot_free(dl_plot *p);

/* Allocate a w x h RGB image and draw the plot into it. */
dl_status dl_plot_render(const dl_plot *p, dl_image *out, int w, int h);
/* Draw the plot into the rectangle (x, y, w, h) of an existing image
 * (e.g. a panel of a figure or a corner of a live frame). */
void dl_plot_draw(const dl_plot *p, dl_image *img, int x, int y, int w, int h);

/* "Nice" tick step for a range and a wished number of ticks (1, 2, 5 x 10^k). */
double dl_plot_nice_step(double range, int wanted_ticks);

#endif
