/* image.h - 8-bit pictures without SDL: load, save, resize, convert to and
 * from tensors, draw rectangles and text, lay out labelled grids.
 *
 * A dl_image is interleaved 8-bit: pixel (x, y) channel k is
 * px[(y * w + x) * c + k], with c = 1 (gray), 3 (RGB) or 4 (RGBA).
 *
 *     dl_image cat, small;
 *     if (dl_image_load(&cat, "data/images/chelsea.png", 3) != DL_OK) dl_die(NULL);
 *     dl_image_resize(&small, &cat, 192, 128);          // area filter
 *     dl_image_draw_text(&small, 4, 4, "t = 500", 255, 255, 255, 2);
 *     dl_image_save_png(&small, "out/cat.png");
 *     dl_image_free(&cat); dl_image_free(&small);
 *
 * Functions that produce a new image (load, resize, scale, convert,
 * tensor_to_image, grid_create) allocate it; free it with dl_image_free.
 * Drawing functions clip to the image and never fail.
 */
#ifndef DL_IMAGE_H
#define DL_IMAGE_H

#include "dl_error.h"
#include "tensor.h"

typedef struct {
    int w, h, c;          /* width, height, channels (1, 3 or 4) */
    unsigned char *px;    /* h * w * c bytes, row after row */
} dl_image;

/* The largest side we accept (loading a 100000x100000 "PNG" is an error). */
#define DL_IMAGE_MAX_SIDE 16384

/* A zero-filled (black) image. DL_ERR_ARG for bad sizes or channels. */
dl_status dl_image_alloc(dl_image *img, int w, int h, int c);
/* Free the pixels and zero the struct. Safe on a zeroed struct. */
void dl_image_free(dl_image *img);

/* Load PNG/JPEG/BMP/... (stb_image). want_channels 1, 3, 4 converts, 0
 * keeps the file's own. Errors name the file: DL_ERR_IO if it cannot be
 * opened, DL_ERR_FORMAT if it is corrupt or absurdly large. */
dl_status dl_image_load(dl_image *img, const char *path, int want_channels);
/* Write a PNG: first to "<path>.<pid>.tmp", then rename, so a reader never
 * sees half a file. DL_ERR_IO names the path on failure. */
dl_status dl_image_save_png(const dl_image *img, const char *path);

/* Resize to w x h with an AREA (box) filter: each output pixel is the
 * average of the input pixels it covers, weighted by covered area. Good
 * for downscaling (no aliasing); for upscaling it degrades to bilinear-ish
 * blocks, so use dl_image_scale_nearest for crisp integer enlargement. */
dl_status dl_image_resize(dl_image *out, const dl_image *in, int w, int h);
/* Enlarge by an integer factor, each pixel a factor x factor block. */
dl_status dl_image_scale_nearest(dl_image *out, const dl_image *in, int factor);
/* Copy with another channel count (gray <-> RGB <-> RGBA; gray uses
 * the Rec. 601 luma 0.299 R + 0.587 G + 0.114 B; alpha is dropped/255). */
dl_status dl_image_convert(dl_image *out, const dl_image *in, int c);
/* Copy of a w x h rectangle (clipped to the image). */
dl_status dl_image_crop(dl_image *out, const dl_image *in, int x, int y, int w, int h);
/* A copy with `pad` pixels of value `value` on every side (MNIST 28 -> 32). */
dl_status dl_image_pad(dl_image *out, const dl_image *in, int pad, unsigned char value);

/* Image -> tensor. out is preallocated [1, C, H, W] with C == img->c,
 * H == img->h, W == img->w. Values map 0..255 -> -1..1 (v / 127.5 - 1),
 * the range diffusion models work in. */
dl_status dl_image_to_tensor(dl_tensor *out, const dl_image *img);
/* Tensor -> image. t is [N, C, H, W] (or [C, H, W]) with C 1 or 3; takes
 * batch item `batch_index`, maps -1..1 -> 0..255 with clamping and
 * rounding ((v + 1) * 127.5). Allocates out (C channels). */
dl_status dl_tensor_to_image(dl_image *out, const dl_tensor *t, int batch_index);

/* ---- drawing (clipped, channel-aware: gray images get the luma) ---- */
/* Item b of t [N, C, H, W] (C = 1 or 3) as a picture with values in
 * [-range, range] mapped to black..white, each pixel enlarged to
 * zoom x zoom (a 32x32 digit at zoom 4 is a 128x128 tile). */
dl_status dl_tensor_item_image(dl_image *out, const dl_tensor *t, int b, float range, int zoom);

/* v [h, w] >= 0 as a heat map (black, red, yellow, white for 0 .. vmax;
 * larger values saturate), enlarged zoom times. RGB. */
dl_status dl_heatmap_image(dl_image *out, const float *v, int w, int h, float vmax, int zoom);

void dl_image_fill(dl_image *img, unsigned char r, unsigned char g, unsigned char b);
void dl_image_fill_rect(dl_image *img, int x, int y, int w, int h,
                        unsigned char r, unsigned char g, unsigned char b);
/* Outline of a rectangle, `thick` pixels wide, drawn inside it. */
void dl_image_draw_rect(dl_image *img, int x, int y, int w, int h, int thick,
                        unsigned char r, unsigned char g, unsigned char b);
/* A line of the given thickness (square brush), Bresenham. */
void dl_image_draw_line(dl_image *img, int x0, int y0, int x1, int y1, int thick,
                        unsigned char r, unsigned char g, unsigned char b);
/* Copy src into dst with its top-left corner at (x, y), converting
 * channels (src alpha, if any, is ignored). */
void dl_image_blit(dl_image *dst, const dl_image *src, int x, int y);

/* Text with stb_easy_font (ASCII; other bytes print as '?'; '\n' starts a
 * new line). `scale` is an integer magnification: at scale 1 capitals are
 * 7 px high and a line is 12 px; scale 2 or 3 reads well on a projector.
 * (x, y) is the top-left corner. Returns the width drawn in pixels. */
int dl_image_draw_text(dl_image *img, int x, int y, const char *text,
                       unsigned char r, unsigned char g, unsigned char b, int scale);
/* Size the text would take, in pixels, at this scale. */
int dl_text_width(const char *text, int scale);
int dl_text_height(const char *text, int scale);

/* ---- grids: rows x cols equal tiles with labels and a title ----------
 *
 *     dl_grid g = { .rows = 3, .cols = 5, .tile_w = 192, .tile_h = 128,
 *                   .title = "x_t for three schedules",
 *                   .row_labels = names, .col_labels = ts };
 *     dl_image canvas;
 *     dl_grid_create(&canvas, &g);            // background, title, labels
 *     dl_grid_place(&canvas, &g, row, col, &tile);
 *
 * Unset fields take defaults: pad 8, text_scale 2, white background,
 * black text. Tiles smaller than tile_w x tile_h are centred in the cell.
 */
typedef struct {
    int rows, cols, tile_w, tile_h;
    int pad;                        /* pixels between and around tiles   */
    int text_scale;                 /* stb_easy_font magnification       */
    const char *title;              /* NULL: no title line               */
    const char *const *row_labels;  /* rows strings (left), or NULL      */
    const char *const *col_labels;  /* cols strings (above), or NULL     */
    /* filled in by dl_grid_create: where cell (0, 0) starts */
    int origin_x, origin_y;
} dl_grid;

dl_status dl_grid_create(dl_image *canvas, dl_grid *g);
void dl_grid_place(dl_image *canvas, const dl_grid *g, int row, int col, const dl_image *tile);

#endif
