/* canny.h - the Canny edge detector, bit-exact with OpenCV's cv2.Canny.
 *
 * ControlNet's Canny model is conditioned on edge maps made by
 * cv2.Canny(image, 100, 200). This file rebuilds that call from scratch in
 * four small stages that can be run and shown one at a time:
 *
 *     image --(grey)--> grey --(Sobel 3x3)--> gx, gy --(|gx|+|gy|)--> mag
 *           --(non-maximum suppression)--> thin --(hysteresis)--> edges
 *
 *     uint8_t edges[64 * 64];
 *     canny_edges(grey, 64, 64, 100, 200, edges);            // 0 or 255
 *     canny_edges_color(rgb, 64, 64, 3, 100, 200, edges);    // what the
 *                                          // diffusers ControlNet docs do
 *
 * OpenCV's defaults are reproduced exactly: no Gaussian blur (Canny in
 * OpenCV smooths only through the Sobel kernel itself), aperture 3,
 * L1 magnitude (L2gradient = false), replicated borders, OpenCV's
 * fixed-point direction test and its tie-breaking. Thresholds are compared
 * strictly: a pixel is "strong" if mag > high, "weak" if mag > low.
 *
 * All images are row-major, interleaved: pixel (x, y) channel k is at
 * [(y * w + x) * channels + k]. Per-pixel arrays are [h][w].
 *
 * For a live view with adjustable thresholds, run canny_prepare once
 * (everything up to non-maximum suppression does not depend on the
 * thresholds) and only canny_hysteresis when they change.
 */
#ifndef DL_CANNY_H
#define DL_CANNY_H

#include <stdint.h>

#include "dl_error.h"

/* The largest side accepted (same bound as core/image.h). */
#define CANNY_MAX_SIDE 16384

/* ---- stage 1: RGB -> grey, as cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) ----
 * rgb [h][w][3] -> grey [h][w]. Y = 0.299 R + 0.587 G + 0.114 B computed
 * in 15-bit fixed point with rounding, like OpenCV 4 does for 8-bit images. */
dl_status canny_rgb_to_grey(const uint8_t *rgb, int w, int h, uint8_t *grey_out);

/* ---- stage 2: Sobel 3x3 gradients with replicated borders -------------
 * img [h][w][channels] -> gx, gy [h][w][channels] (one gradient per channel).
 * gx = right column - left column, gy = bottom row - top row, each weighted
 * 1 2 1 across; values lie in [-1020, 1020]. */
dl_status canny_sobel(const uint8_t *img, int w, int h, int channels, int16_t *gx, int16_t *gy);

/* ---- stage 3: magnitude ------------------------------------------------
 * mag [h][w] = |gx| + |gy| (L1). With several channels, each pixel keeps
 * the channel with the largest magnitude (the first one on ties), and
 * gx_out, gy_out [h][w] receive that channel's gradient (for the direction
 * test of the next stage). gx_out / gy_out may be gx / gy themselves. */
dl_status canny_magnitude(const int16_t *gx, const int16_t *gy, int w, int h, int channels,
                          int32_t *mag, int16_t *gx_out, int16_t *gy_out);

/* ---- stage 4: non-maximum suppression ----------------------------------
 * thin [h][w] = mag where the pixel is a maximum along its gradient
 * direction, else 0. The direction is binned into horizontal, vertical or
 * one of the two diagonals (boundaries at 22.5 and 67.5 degrees); outside
 * the image the magnitude counts as 0. Ties go to the left / upper pixel. */
dl_status canny_nms(const int32_t *mag, const int16_t *gx, const int16_t *gy, int w, int h,
                    int32_t *thin);

/* ---- stage 5: hysteresis -----------------------------------------------
 * edges [h][w] = 255 for every pixel with thin > high ("strong") and every
 * pixel with thin > low that is connected to a strong one through such
 * pixels (8-neighbours); 0 elsewhere. Needs 0 <= low <= high (OpenCV would
 * swap them; here it is an error). OpenCV rounds thresholds down, so 100.7
 * acts as 100. */
dl_status canny_hysteresis(const int32_t *thin, int w, int h, float low, float high, uint8_t *edges_out);

/* ---- the stages together ------------------------------------------------ */

/* What stays the same when only the thresholds change. Owned arrays [h][w]. */
typedef struct {
    int w, h;
    int16_t *gx, *gy;   /* gradient (of the strongest channel)          */
    int32_t *mag;       /* |gx| + |gy|                                  */
    int32_t *thin;      /* mag after non-maximum suppression            */
} canny_gradients;

/* Stages 2-4 for an image with 1..4 channels; allocates g's arrays. */
dl_status canny_prepare(canny_gradients *g, const uint8_t *img, int w, int h, int channels);
/* Free the arrays and zero the struct. Safe on a zeroed struct. */
void canny_gradients_free(canny_gradients *g);

/* cv2.Canny(grey, low, high) for a grey image [h][w] -> edges [h][w] (0/255). */
dl_status canny_edges(const uint8_t *grey, int w, int h, float low, float high, uint8_t *edges_out);

/* cv2.Canny(img, low, high) for an image with 1..4 channels (no grey
 * conversion: OpenCV runs Sobel on every channel and keeps, per pixel, the
 * strongest). This is what the diffusers ControlNet examples do with an RGB
 * image. */
dl_status canny_edges_color(const uint8_t *img, int w, int h, int channels, float low, float high,
                            uint8_t *edges_out);

#endif
