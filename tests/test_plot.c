/* test_plot.c - core/plot: ticks, rendering, NaN/inf and flat data. */
#include "testing.h"
#include "../core/plot.h"

#include <math.h>
#include <string.h>

static int count_color(const dl_image *img, unsigned int rgb, int *minx, int *maxx)
{
    int n = 0;
    if (minx) *minx = img->w;
    if (maxx) *maxx = -1;
    for (int y = 0; y < img->h; y++)
        for (int x = 0; x < img->w; x++) {
            const unsigned char *p = &img->px[(y * img->w + x) * 3];
            if (p[0] == (rgb >> 16 & 255) && p[1] == (rgb >> 8 & 255) && p[2] == (rgb & 255)) {
                n++;
                if (minx && x < *minx) *minx = x;
                if (maxx && x > *maxx) *maxx = x;
            }
        }
    return n;
}

TEST(plot, nice_steps)
{
    CHECK(dl_plot_nice_step(10, 5) == 2, "10/5 -> %g", dl_plot_nice_step(10, 5));
    CHECK(fabs(dl_plot_nice_step(1, 5) - 0.2) < 1e-12, "1/5 -> %g", dl_plot_nice_step(1, 5));
    CHECK(dl_plot_nice_step(999, 6) == 200, "999/6 -> %g", dl_plot_nice_step(999, 6));
    CHECK(fabs(dl_plot_nice_step(0.03, 3) - 0.01) < 1e-12, "0.03/3 -> %g", dl_plot_nice_step(0.03, 3));
    CHECK(dl_plot_nice_step(0, 5) == 1 && dl_plot_nice_step(NAN, 5) == 1, "degenerate ranges");
}

TEST(plot, renders_series_where_they_belong)
{
    float x[101], up[101], down[101];
    for (int i = 0; i <= 100; i++) { x[i] = (float)i; up[i] = i / 100.0f; down[i] = 1 - i / 100.0f; }
    dl_plot p;
    dl_plot_init(&p, "two lines", "t", "value");
    CHECK(dl_plot_add_series(&p, "up", x, up, 101, DL_PLOT_RED) == DL_OK, "add");
    CHECK(dl_plot_add_series_ex(&p, "down", x, down, 101, DL_PLOT_BLUE, DL_PLOT_DASHED) == DL_OK, "add");
    p.legend = 0;   /* so colour counts are the lines only */
    dl_image img;
    CHECK(dl_plot_render(&p, &img, 400, 300) == DL_OK && img.w == 400 && img.h == 300 && img.c == 3, "render");
    int rx0, rx1;
    int red = count_color(&img, DL_PLOT_RED, &rx0, &rx1), blue = count_color(&img, DL_PLOT_BLUE, NULL, NULL);
    CHECK(red > 300, "red line has only %d pixels", red);
    CHECK(blue > 100 && blue < red, "dashed blue line: %d pixels (red %d)", blue, red);
    CHECK(rx1 - rx0 > 200, "the line spans the plot width (%d..%d)", rx0, rx1);
    /* "up" rises: its leftmost pixels are lower (larger y) than its rightmost */
    int yl = -1, yr = -1;
    for (int y = 0; y < img.h; y++) {
        const unsigned char *l = &img.px[(y * img.w + rx0) * 3], *r = &img.px[(y * img.w + rx1) * 3];
        if (l[0] == 0xd6 && l[1] == 0x27) yl = y;
        if (r[0] == 0xd6 && r[1] == 0x27 && yr < 0) yr = y;
    }
    CHECK(yl > yr + 100, "rising series drawn rising (left y %d, right y %d)", yl, yr);
    dl_image_free(&img);
    /* the same plot with a legend shows more of each colour */
    p.legend = 1;
    dl_plot_render(&p, &img, 400, 300);
    CHECK(count_color(&img, DL_PLOT_RED, NULL, NULL) > red, "legend swatch missing");
    dl_image_free(&img);
    dl_plot_free(&p);
}

TEST(plot, nan_inf_flat_and_empty)
{
    float x[6] = {0, 1, 2, 3, 4, 5};
    float holes[6] = {1, NAN, 3, INFINITY, 5, -INFINITY};
    float flat[6] = {2, 2, 2, 2, 2, 2};
    float nan6[6] = {NAN, NAN, NAN, NAN, NAN, NAN};
    float neg[6] = {-1, 0, 1e-3f, 1, 10, 100};
    dl_plot p;
    dl_image img;
    dl_plot_init(&p, "flat", "x", "y");
    dl_plot_add_series(&p, "flat", x, flat, 6, DL_PLOT_GREEN);
    CHECK(dl_plot_render(&p, &img, 320, 200) == DL_OK, "flat render");
    CHECK(count_color(&img, DL_PLOT_GREEN, NULL, NULL) > 100, "a flat series is still drawn");
    dl_image_free(&img);
    dl_plot_free(&p);

    dl_plot_init(&p, "holes", "x", "y");
    dl_plot_add_series(&p, "holes", x, holes, 6, DL_PLOT_ORANGE);
    dl_plot_add_series(&p, "all nan", x, nan6, 6, DL_PLOT_PURPLE);
    dl_plot_add_series(&p, "empty", x, x, 0, DL_PLOT_BROWN);
    CHECK(dl_plot_render(&p, &img, 320, 200) == DL_OK, "render with NaN/inf");
    CHECK(count_color(&img, DL_PLOT_ORANGE, NULL, NULL) > 10, "finite points of a holey series drawn");
    dl_image_free(&img);
    dl_plot_free(&p);

    dl_plot_init(&p, "log", "x", "y");
    p.log_y = 1;
    dl_plot_add_series(&p, "with non-positive", x, neg, 6, DL_PLOT_RED);
    CHECK(dl_plot_render(&p, &img, 320, 200) == DL_OK, "log render");
    CHECK(count_color(&img, DL_PLOT_RED, NULL, NULL) > 50, "log plot drawn");
    dl_image_free(&img);
    dl_plot_set_yrange(&p, 1e30f, 1e31f);        /* all data outside a fixed range */
    p.has_marker = 1;
    p.marker_x = 2;
    CHECK(dl_plot_render(&p, &img, 320, 200) == DL_OK, "render outside the range");
    dl_image_free(&img);
    dl_plot_free(&p);

    dl_plot_init(&p, "tiny", "", "");
    dl_plot_add_series(&p, "a", x, flat, 6, DL_PLOT_RED);
    CHECK(dl_plot_render(&p, &img, 30, 20) == DL_OK, "a plot too small to draw still renders");
    dl_image_free(&img);
    for (int i = 0; i < DL_PLOT_MAX_SERIES - 1; i++) dl_plot_add_series(&p, "more", x, flat, 6, DL_PLOT_RED);
    CHECK(dl_plot_add_series(&p, "one too many", x, flat, 6, DL_PLOT_RED) == DL_ERR_ARG, "series limit");
    dl_plot_free(&p);
}
