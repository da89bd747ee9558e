/* canny.c - the Canny edge detector in five small stages (see canny.h).
 *
 * Everything is integer arithmetic, as in OpenCV, so that the result is
 * identical pixel for pixel rather than "close". The places where a
 * from-scratch Canny would usually differ from OpenCV are marked WHY.
 */
#include "canny.h"

#include <math.h>
#include <stdlib.h>

static dl_status check_size(const char *op, int w, int h, int channels)
{
    if (w < 1 || h < 1 || w > CANNY_MAX_SIDE || h > CANNY_MAX_SIDE)
        return dl_fail(DL_ERR_ARG, "%s: image size %d x %d is outside 1..%d", op, w, h, CANNY_MAX_SIDE);
    if (channels < 1 || channels > 4)
        return dl_fail(DL_ERR_ARG, "%s: %d channels, expected 1..4", op, channels);
    return DL_OK;
}

/* ---- stage 1: grey ------------------------------------------------------ */

/* WHY fixed point: OpenCV 4 converts 8-bit RGB with integer weights that sum
 * to 2^15 (0.299, 0.587, 0.114 times 32768, rounded) and adds 2^14 before
 * the shift to round to nearest. Float weights, or OpenCV 3's 14-bit
 * weights, give a different grey level on a few pixels. */
enum { GREY_R = 9798, GREY_G = 19235, GREY_B = 3735, GREY_SHIFT = 15 };

dl_status canny_rgb_to_grey(const uint8_t *rgb, int w, int h, uint8_t *grey_out)
{
    DL_TRY(check_size("canny_rgb_to_grey", w, h, 3));
    if (!rgb || !grey_out) return dl_fail(DL_ERR_ARG, "canny_rgb_to_grey: NULL image");
    size_t n = (size_t)w * (size_t)h;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = rgb + 3 * i;
        int y = p[0] * GREY_R + p[1] * GREY_G + p[2] * GREY_B;
        grey_out[i] = (uint8_t)((y + (1 << (GREY_SHIFT - 1))) >> GREY_SHIFT);
    }
    return DL_OK;
}

/* ---- stage 2: Sobel ----------------------------------------------------- */

/* Clamp a coordinate into [0, n-1]: BORDER_REPLICATE, the border mode
 * OpenCV's Canny asks Sobel for (the edge pixel is repeated outwards). */
static int clampi(int v, int n) { return v < 0 ? 0 : v >= n ? n - 1 : v; }

dl_status canny_sobel(const uint8_t *img, int w, int h, int channels, int16_t *gx, int16_t *gy)
{
    DL_TRY(check_size("canny_sobel", w, h, channels));
    if (!img || !gx || !gy) return dl_fail(DL_ERR_ARG, "canny_sobel: NULL image or output");
    const int c = channels;
    for (int y = 0; y < h; y++) {
        const uint8_t *up = img + (size_t)clampi(y - 1, h) * w * c;   /* row above */
        const uint8_t *mid = img + (size_t)y * w * c;
        const uint8_t *down = img + (size_t)clampi(y + 1, h) * w * c; /* row below */
        for (int x = 0; x < w; x++) {
            int l = clampi(x - 1, w) * c, r = clampi(x + 1, w) * c, m = x * c;
            for (int k = 0; k < c; k++) {
                /*        -1 0 1              -1 -2 -1
                 *   gx:  -2 0 2         gy:   0  0  0
                 *        -1 0 1               1  2  1   */
                int dx = (up[r + k] + 2 * mid[r + k] + down[r + k]) - (up[l + k] + 2 * mid[l + k] + down[l + k]);
                int dy = (down[l + k] + 2 * down[m + k] + down[r + k]) - (up[l + k] + 2 * up[m + k] + up[r + k]);
                size_t i = ((size_t)y * w + x) * c + k;
                gx[i] = (int16_t)dx;
                gy[i] = (int16_t)dy;
            }
        }
    }
    return DL_OK;
}

/* ---- stage 3: magnitude ------------------------------------------------- */

dl_status canny_magnitude(const int16_t *gx, const int16_t *gy, int w, int h, int channels,
                          int32_t *mag, int16_t *gx_out, int16_t *gy_out)
{
    DL_TRY(check_size("canny_magnitude", w, h, channels));
    if (!gx || !gy || !mag || !gx_out || !gy_out) return dl_fail(DL_ERR_ARG, "canny_magnitude: NULL array");
    size_t n = (size_t)w * (size_t)h;
    /* Pixel i reads entries i*c .. i*c+c-1 and writes entry i <= i*c, so
     * writing into gx / gy themselves never overwrites unread values. */
    for (size_t i = 0; i < n; i++) {
        size_t best = i * channels;
        int best_m = abs(gx[best]) + abs(gy[best]);       /* L1, OpenCV's default */
        for (int k = 1; k < channels; k++) {
            size_t j = i * channels + k;
            int m = abs(gx[j]) + abs(gy[j]);
            if (m > best_m) { best_m = m; best = j; }     /* strict: first channel wins ties */
        }
        mag[i] = best_m;
        gx_out[i] = gx[best];
        gy_out[i] = gy[best];
    }
    return DL_OK;
}

/* ---- stage 4: non-maximum suppression ----------------------------------- */

/* tan(22.5 deg) in 15-bit fixed point: round(0.41421356 * 32768). */
enum { TAN22_Q15 = 13573 };

dl_status canny_nms(const int32_t *mag, const int16_t *gx, const int16_t *gy, int w, int h, int32_t *thin)
{
    DL_TRY(check_size("canny_nms", w, h, 1));
    if (!mag || !gx || !gy || !thin) return dl_fail(DL_ERR_ARG, "canny_nms: NULL array");
/* the magnitude at (x, y), 0 outside the image */
#define MAG(x, y) (((x) < 0 || (x) >= w || (y) < 0 || (y) >= h) ? 0 : mag[(size_t)(y) * w + (x)])
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            size_t i = (size_t)y * w + x;
            int m = mag[i], ax = abs(gx[i]), ay = abs(gy[i]);
            int keep;
            /* WHY integers: the angle test "|gy|/|gx| < tan 22.5" becomes
             * |gy| * 2^15 < |gx| * 13573 (and tan 67.5 = tan 22.5 + 2), so
             * there is no atan2 and no rounding that could move a pixel
             * from one bin to the next. */
            int ay_q15 = ay << 15, tan22_ax = ax * TAN22_Q15, tan67_ax = tan22_ax + (ax << 16);
            if (ay_q15 < tan22_ax) {
                /* gradient ~ horizontal: the edge runs up-down, compare left/right */
                keep = m > MAG(x - 1, y) && m >= MAG(x + 1, y);
            } else if (ay_q15 > tan67_ax) {
                /* gradient ~ vertical: compare the pixels above and below */
                keep = m > MAG(x, y - 1) && m >= MAG(x, y + 1);
            } else {
                /* diagonal: gx, gy with the same sign point to the lower
                 * right (y grows downwards), so compare up-left and
                 * down-right; with opposite signs up-right and down-left. */
                int s = ((gx[i] < 0) != (gy[i] < 0)) ? -1 : 1;
                keep = m > MAG(x - s, y - 1) && m > MAG(x + s, y + 1);
            }
            /* WHY ">" on one side and ">=" on the other: on a plateau of
             * two equal magnitudes exactly one survives (the left or upper
             * one), so a step edge gives a 1-pixel line, as in OpenCV. */
            thin[i] = keep ? m : 0;
        }
    }
#undef MAG
    return DL_OK;
}

/* ---- stage 5: hysteresis ------------------------------------------------ */

/* A threshold as OpenCV uses it: rounded down to an integer (cvFloor).
 * Values above any possible magnitude are clamped (avoids int overflow). */
static int threshold_int(float t) { return t > 1e6f ? 1000000 : (int)floorf(t); }

dl_status canny_hysteresis(const int32_t *thin, int w, int h, float low, float high, uint8_t *edges_out)
{
    DL_TRY(check_size("canny_hysteresis", w, h, 1));
    if (!thin || !edges_out) return dl_fail(DL_ERR_ARG, "canny_hysteresis: NULL array");
    if (!(low >= 0) || !(high >= 0) || low > high)   /* !(x >= 0) also rejects NaN */
        return dl_fail(DL_ERR_ARG, "canny_hysteresis: thresholds low %g, high %g: need 0 <= low <= high",
                       (double)low, (double)high);
    const int lo = threshold_int(low), hi = threshold_int(high);
    size_t n = (size_t)w * (size_t)h;
    /* Every pixel is pushed at most once (it is marked 255 when pushed). */
    size_t *stack = malloc(n * sizeof *stack), top = 0;
    if (!stack) return dl_fail(DL_ERR_MEMORY, "canny_hysteresis: out of memory for %d x %d", w, h);

    /* Strong pixels are edges for sure: mark them and remember them. */
    for (size_t i = 0; i < n; i++) {
        edges_out[i] = 0;
        if (thin[i] > hi) { edges_out[i] = 255; stack[top++] = i; }
    }
    /* Grow from them into weak pixels (thin > low), through all 8
     * neighbours, until nothing new is reached: a weak pixel survives only
     * if a chain of weak pixels links it to a strong one. */
    while (top > 0) {
        size_t i = stack[--top];
        int x = (int)(i % (size_t)w), y = (int)(i / (size_t)w);
        for (int dy = -1; dy <= 1; dy++) {
            for (int dx = -1; dx <= 1; dx++) {
                int nx = x + dx, ny = y + dy;
                if (nx < 0 || nx >= w || ny < 0 || ny >= h) continue;
                size_t j = (size_t)ny * w + nx;
                if (edges_out[j] == 0 && thin[j] > lo) { edges_out[j] = 255; stack[top++] = j; }
            }
        }
    }
    free(stack);
    return DL_OK;
}

/* ---- the stages together ------------------------------------------------- */

void canny_gradients_free(canny_gradients *g)
{
    if (!g) return;
    free(g->gx);
    free(g->gy);
    free(g->mag);
    free(g->thin);
    *g = (canny_gradients){0};
}

dl_status canny_prepare(canny_gradients *g, const uint8_t *img, int w, int h, int channels)
{
    if (!g) return dl_fail(DL_ERR_ARG, "canny_prepare: NULL result");
    *g = (canny_gradients){0};
    DL_TRY(check_size("canny_prepare", w, h, channels));
    if (!img) return dl_fail(DL_ERR_ARG, "canny_prepare: NULL image");
    size_t n = (size_t)w * (size_t)h;
    g->w = w;
    g->h = h;
    /* gx / gy hold one gradient per channel first, then (after stage 3)
     * the strongest channel's in their first n entries. */
    g->gx = malloc(n * channels * sizeof *g->gx);
    g->gy = malloc(n * channels * sizeof *g->gy);
    g->mag = malloc(n * sizeof *g->mag);
    g->thin = malloc(n * sizeof *g->thin);
    dl_status s = DL_OK;
    if (!g->gx || !g->gy || !g->mag || !g->thin)
        s = dl_fail(DL_ERR_MEMORY, "canny_prepare: out of memory for %d x %d x %d", w, h, channels);
    if (s == DL_OK) s = canny_sobel(img, w, h, channels, g->gx, g->gy);
    if (s == DL_OK) s = canny_magnitude(g->gx, g->gy, w, h, channels, g->mag, g->gx, g->gy);
    if (s == DL_OK) s = canny_nms(g->mag, g->gx, g->gy, w, h, g->thin);
    if (s != DL_OK) canny_gradients_free(g);
    return s;
}

dl_status canny_edges_color(const uint8_t *img, int w, int h, int channels, float low, float high,
                            uint8_t *edges_out)
{
    if (!edges_out) return dl_fail(DL_ERR_ARG, "canny_edges: NULL output");
    /* check the thresholds before the work (canny_hysteresis checks again) */
    if (!(low >= 0) || !(high >= 0) || low > high)
        return dl_fail(DL_ERR_ARG, "canny_edges: thresholds low %g, high %g: need 0 <= low <= high",
                       (double)low, (double)high);
    canny_gradients g;
    DL_TRY(canny_prepare(&g, img, w, h, channels));
    dl_status s = canny_hysteresis(g.thin, w, h, low, high, edges_out);
    canny_gradients_free(&g);
    return s;
}

dl_status canny_edges(const uint8_t *grey, int w, int h, float low, float high, uint8_t *edges_out)
{
    return canny_edges_color(grey, w, h, 1, low, high, edges_out);
}
