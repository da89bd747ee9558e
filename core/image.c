/* image.c - see image.h. stb_image / stb_image_write come from -lstb (no
 * STB_*_IMPLEMENTATION here); stb_easy_font is header-only. */
#include "image.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"   /* stb_easy_font_spacing */
#include <stb/stb_easy_font.h>
#pragma GCC diagnostic pop

dl_status dl_image_alloc(dl_image *img, int w, int h, int c)
{
    memset(img, 0, sizeof *img);
    if (w <= 0 || h <= 0 || w > DL_IMAGE_MAX_SIDE || h > DL_IMAGE_MAX_SIDE)
        return dl_fail(DL_ERR_ARG, "image: size %dx%d outside 1..%d", w, h, DL_IMAGE_MAX_SIDE);
    if (c != 1 && c != 3 && c != 4)
        return dl_fail(DL_ERR_ARG, "image: %d channels (want 1, 3 or 4)", c);
    img->px = calloc((size_t)w * h * c, 1);
    if (!img->px) return dl_fail(DL_ERR_MEMORY, "image: cannot allocate %dx%dx%d", w, h, c);
    img->w = w; img->h = h; img->c = c;
    return DL_OK;
}

void dl_image_free(dl_image *img)
{
    free(img->px);
    memset(img, 0, sizeof *img);
}

dl_status dl_image_load(dl_image *img, const char *path, int want_channels)
{
    memset(img, 0, sizeof *img);
    if (want_channels != 0 && want_channels != 1 && want_channels != 3 && want_channels != 4)
        return dl_fail(DL_ERR_ARG, "image: cannot load '%s' with %d channels", path, want_channels);
    FILE *f = fopen(path, "rb");
    if (!f) return dl_fail(DL_ERR_IO, "cannot open image '%s': %s", path, strerror(errno));
    /* Read the header first: refuse absurd sizes before decoding anything. */
    int w, h, c;
    if (!stbi_info_from_file(f, &w, &h, &c)) {
        fclose(f);
        return dl_fail(DL_ERR_FORMAT, "image '%s' is not a readable PNG/JPEG/BMP (%s)", path, stbi_failure_reason());
    }
    if (w <= 0 || h <= 0 || w > DL_IMAGE_MAX_SIDE || h > DL_IMAGE_MAX_SIDE) {
        fclose(f);
        return dl_fail(DL_ERR_FORMAT, "image '%s' has an absurd size %dx%d (max side %d)", path, w, h, DL_IMAGE_MAX_SIDE);
    }
    int keep = want_channels ? want_channels : (c == 2 ? 4 : c);   /* gray+alpha -> RGBA */
    unsigned char *px = stbi_load_from_file(f, &w, &h, &c, keep);
    fclose(f);
    if (!px) return dl_fail(DL_ERR_FORMAT, "image '%s' is corrupt (%s)", path, stbi_failure_reason());
    dl_status s = dl_image_alloc(img, w, h, keep);
    if (s == DL_OK) memcpy(img->px, px, (size_t)w * h * keep);
    stbi_image_free(px);
    return s;
}

dl_status dl_image_save_png(const dl_image *img, const char *path)
{
    if (!img->px) return dl_fail(DL_ERR_ARG, "image: cannot save an empty image to '%s'", path);
    char tmp[4096];   /* unique per process: two programs may write the same file */
    if (snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid()) >= (int)sizeof tmp)
        return dl_fail(DL_ERR_ARG, "image: path too long '%s'", path);
    if (!stbi_write_png(tmp, img->w, img->h, img->c, img->px, img->w * img->c)) {
        remove(tmp);
        return dl_fail(DL_ERR_IO, "cannot write PNG '%s' (is the directory there and writable?)", path);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return dl_fail(DL_ERR_IO, "cannot rename '%s' to '%s': %s", tmp, path, strerror(e));
    }
    return DL_OK;
}

/* ---- resampling --------------------------------------------------------- */

/* Area-filter weights along one axis: output i covers input interval
 * [i*s, (i+1)*s) with s = n_in / n_out; input pixel j contributes the length
 * of its overlap, normalised so the weights sum to 1. Stored as `taps`
 * (index, weight) pairs per output, first[i] = first input index. */
typedef struct { int taps; int *first; float *weight; } area_axis;

static dl_status area_axis_init(area_axis *a, int n_in, int n_out)
{
    double s = (double)n_in / n_out;
    a->taps = (int)ceil(s) + 1;
    a->first = malloc(sizeof(int) * n_out);
    a->weight = calloc((size_t)n_out * a->taps, sizeof(float));
    if (!a->first || !a->weight) {
        free(a->first); free(a->weight);
        return dl_fail(DL_ERR_MEMORY, "image resize: out of memory");
    }
    for (int i = 0; i < n_out; i++) {
        double lo = i * s, hi = (i + 1) * s;
        int j0 = (int)floor(lo);
        a->first[i] = j0;
        for (int k = 0; k < a->taps; k++) {
            int j = j0 + k;
            if (j >= n_in) break;
            double overlap = fmin(hi, j + 1.0) - fmax(lo, (double)j);
            if (overlap > 0) a->weight[(size_t)i * a->taps + k] = (float)(overlap / s);
        }
    }
    return DL_OK;
}

static unsigned char to_u8(float v)
{
    v = floorf(v + 0.5f);
    return (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
}

dl_status dl_image_resize(dl_image *out, const dl_image *in, int w, int h)
{
    DL_TRY(dl_image_alloc(out, w, h, in->c));
    const int c = in->c;
    area_axis ax, ay;
    float *rows = malloc(sizeof(float) * (size_t)in->h * w * c);   /* [in.h, w, c] */
    if (!rows || area_axis_init(&ax, in->w, w) != DL_OK) {
        free(rows); dl_image_free(out);
        return dl_fail(DL_ERR_MEMORY, "image resize: out of memory");
    }
    if (area_axis_init(&ay, in->h, h) != DL_OK) {
        free(rows); free(ax.first); free(ax.weight); dl_image_free(out);
        return DL_ERR_MEMORY;
    }
    /* pass 1: horizontal, [in.h, in.w, c] -> [in.h, w, c] */
    for (int y = 0; y < in->h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < c; k++) {
                float acc = 0;
                for (int t = 0; t < ax.taps && ax.first[x] + t < in->w; t++)
                    acc += ax.weight[(size_t)x * ax.taps + t] *
                           in->px[((size_t)y * in->w + ax.first[x] + t) * c + k];
                rows[((size_t)y * w + x) * c + k] = acc;
            }
    /* pass 2: vertical, [in.h, w, c] -> [h, w, c] */
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < c; k++) {
                float acc = 0;
                for (int t = 0; t < ay.taps && ay.first[y] + t < in->h; t++)
                    acc += ay.weight[(size_t)y * ay.taps + t] *
                           rows[((size_t)(ay.first[y] + t) * w + x) * c + k];
                out->px[((size_t)y * w + x) * c + k] = to_u8(acc);
            }
    free(rows); free(ax.first); free(ax.weight); free(ay.first); free(ay.weight);
    return DL_OK;
}

dl_status dl_image_scale_nearest(dl_image *out, const dl_image *in, int factor)
{
    if (factor < 1 || (int64_t)in->w * factor > DL_IMAGE_MAX_SIDE || (int64_t)in->h * factor > DL_IMAGE_MAX_SIDE)
        return dl_fail(DL_ERR_ARG, "image scale: factor %d for %dx%d is out of range", factor, in->w, in->h);
    DL_TRY(dl_image_alloc(out, in->w * factor, in->h * factor, in->c));
    for (int y = 0; y < out->h; y++)
        for (int x = 0; x < out->w; x++)
            memcpy(&out->px[((size_t)y * out->w + x) * in->c],
                   &in->px[((size_t)(y / factor) * in->w + x / factor) * in->c], (size_t)in->c);
    return DL_OK;
}

/* Read pixel i of any image as RGB. */
static void get_rgb(const dl_image *img, size_t i, unsigned char rgb[3])
{
    const unsigned char *p = &img->px[i * img->c];
    if (img->c == 1) rgb[0] = rgb[1] = rgb[2] = p[0];
    else { rgb[0] = p[0]; rgb[1] = p[1]; rgb[2] = p[2]; }
}

/* Write an RGB colour into pixel i of any image. */
static void put_rgb(dl_image *img, size_t i, unsigned char r, unsigned char g, unsigned char b)
{
    unsigned char *p = &img->px[i * img->c];
    if (img->c == 1) { p[0] = to_u8(0.299f * r + 0.587f * g + 0.114f * b); return; }
    p[0] = r; p[1] = g; p[2] = b;
    if (img->c == 4) p[3] = 255;
}

dl_status dl_image_convert(dl_image *out, const dl_image *in, int c)
{
    DL_TRY(dl_image_alloc(out, in->w, in->h, c));
    size_t n = (size_t)in->w * in->h;
    unsigned char rgb[3];
    for (size_t i = 0; i < n; i++) {
        get_rgb(in, i, rgb);
        put_rgb(out, i, rgb[0], rgb[1], rgb[2]);
        if (c == 4 && in->c == 4) out->px[i * 4 + 3] = in->px[i * 4 + 3];
    }
    return DL_OK;
}

dl_status dl_image_crop(dl_image *out, const dl_image *in, int x, int y, int w, int h)
{
    if (x < 0) { w += x; x = 0; }
    if (y < 0) { h += y; y = 0; }
    if (x + w > in->w) w = in->w - x;
    if (y + h > in->h) h = in->h - y;
    if (w <= 0 || h <= 0) return dl_fail(DL_ERR_ARG, "image crop: rectangle outside the %dx%d image", in->w, in->h);
    DL_TRY(dl_image_alloc(out, w, h, in->c));
    for (int r = 0; r < h; r++)
        memcpy(&out->px[(size_t)r * w * in->c], &in->px[((size_t)(y + r) * in->w + x) * in->c], (size_t)w * in->c);
    return DL_OK;
}

dl_status dl_image_pad(dl_image *out, const dl_image *in, int pad, unsigned char value)
{
    if (pad < 0) return dl_fail(DL_ERR_ARG, "image pad: negative padding %d", pad);
    DL_TRY(dl_image_alloc(out, in->w + 2 * pad, in->h + 2 * pad, in->c));
    memset(out->px, value, (size_t)out->w * out->h * out->c);
    for (int r = 0; r < in->h; r++)
        memcpy(&out->px[((size_t)(r + pad) * out->w + pad) * in->c], &in->px[(size_t)r * in->w * in->c], (size_t)in->w * in->c);
    return DL_OK;
}

/* ---- tensors ------------------------------------------------------------ */

dl_status dl_image_to_tensor(dl_tensor *out, const dl_image *img)
{
    DL_TRY(dl_check_shape(out, "dl_image_to_tensor", "out", 4, DL_SHAPE(1, img->c, img->h, img->w)));
    const int C = img->c, H = img->h, W = img->w;
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)   /* interleaved HWC -> planar CHW */
                out->data[((size_t)c * H + y) * W + x] = img->px[((size_t)y * W + x) * C + c] / 127.5f - 1.0f;
    return DL_OK;
}

dl_status dl_tensor_to_image(dl_image *out, const dl_tensor *t, int batch_index)
{
    int64_t N = 1, C, H, W;
    if (t->ndim == 4) { N = t->shape[0]; C = t->shape[1]; H = t->shape[2]; W = t->shape[3]; }
    else if (t->ndim == 3) { C = t->shape[0]; H = t->shape[1]; W = t->shape[2]; }
    else return dl_fail(DL_ERR_SHAPE, "dl_tensor_to_image: tensor has %d dims, expected [N, C, H, W] or [C, H, W]", t->ndim);
    if (C != 1 && C != 3) {
        char buf[64];
        return dl_fail(DL_ERR_SHAPE, "dl_tensor_to_image: tensor has shape %s, expected 1 or 3 channels", dl_shape_str(t, buf, sizeof buf));
    }
    if (batch_index < 0 || batch_index >= N)
        return dl_fail(DL_ERR_ARG, "dl_tensor_to_image: batch index %d outside 0..%lld", batch_index, (long long)N - 1);
    DL_TRY(dl_image_alloc(out, (int)W, (int)H, (int)C));
    const float *src = t->data + (size_t)batch_index * C * H * W;
    for (int64_t c = 0; c < C; c++)
        for (int64_t y = 0; y < H; y++)
            for (int64_t x = 0; x < W; x++) {
                float v = (src[(c * H + y) * W + x] + 1.0f) * 127.5f;
                if (!(v == v)) v = 0;   /* NaN -> black rather than garbage */
                out->px[(y * W + x) * C + c] = to_u8(v);
            }
    return DL_OK;
}

dl_status dl_tensor_item_image(dl_image *out, const dl_tensor *t, int b, float range, int zoom)
{
    if (t->ndim != 4) return dl_fail(DL_ERR_SHAPE, "dl_tensor_item_image: tensor has %d dims, expected [N, C, H, W]", t->ndim);
    if (!(range > 0) || zoom < 1 || zoom > 64)
        return dl_fail(DL_ERR_ARG, "dl_tensor_item_image: range %g / zoom %d (want range > 0, zoom 1..64)", range, zoom);
    const int64_t C = t->shape[1], H = t->shape[2], W = t->shape[3];
    if (C != 1 && C != 3) return dl_fail(DL_ERR_SHAPE, "dl_tensor_item_image: %lld channels, expected 1 or 3", (long long)C);
    if (b < 0 || b >= t->shape[0])
        return dl_fail(DL_ERR_ARG, "dl_tensor_item_image: item %d outside 0..%lld", b, (long long)t->shape[0] - 1);
    DL_TRY(dl_image_alloc(out, (int)(W * zoom), (int)(H * zoom), (int)C));
    const float *src = t->data + (size_t)b * C * H * W;
    for (int64_t y = 0; y < H * zoom; y++)
        for (int64_t x = 0; x < W * zoom; x++)
            for (int64_t c = 0; c < C; c++) {
                float v = (src[(c * H + y / zoom) * W + x / zoom] / range + 1.0f) * 127.5f;
                if (!(v == v)) v = 0;   /* NaN -> black */
                out->px[((size_t)y * out->w + x) * C + c] = to_u8(v);
            }
    return DL_OK;
}

dl_status dl_heatmap_image(dl_image *out, const float *v, int w, int h, float vmax, int zoom)
{
    if (w < 1 || h < 1 || !(vmax > 0) || zoom < 1 || zoom > 64)
        return dl_fail(DL_ERR_ARG, "dl_heatmap_image: %dx%d, vmax %g, zoom %d", w, h, vmax, zoom);
    DL_TRY(dl_image_alloc(out, w * zoom, h * zoom, 3));
    for (int y = 0; y < h * zoom; y++)
        for (int x = 0; x < w * zoom; x++) {
            float u = v[(size_t)(y / zoom) * w + x / zoom] / vmax;   /* 0 .. 1 */
            if (!(u > 0)) u = 0;
            if (u > 1) u = 1;
            /* three ramps: red rises first, then green, then blue */
            float r = 3 * u, g = 3 * u - 1, bl = 3 * u - 2;
            unsigned char *p = out->px + ((size_t)y * out->w + x) * 3;
            p[0] = to_u8(255 * (r > 1 ? 1 : r));
            p[1] = to_u8(255 * (g < 0 ? 0 : g > 1 ? 1 : g));
            p[2] = to_u8(255 * (bl < 0 ? 0 : bl));
        }
    return DL_OK;
}

/* ---- drawing ------------------------------------------------------------ */

void dl_image_fill_rect(dl_image *img, int x, int y, int w, int h,
                        unsigned char r, unsigned char g, unsigned char b)
{
    int x0 = x < 0 ? 0 : x, y0 = y < 0 ? 0 : y;
    int x1 = x + w > img->w ? img->w : x + w, y1 = y + h > img->h ? img->h : y + h;
    for (int yy = y0; yy < y1; yy++)
        for (int xx = x0; xx < x1; xx++)
            put_rgb(img, (size_t)yy * img->w + xx, r, g, b);
}

void dl_image_fill(dl_image *img, unsigned char r, unsigned char g, unsigned char b)
{
    dl_image_fill_rect(img, 0, 0, img->w, img->h, r, g, b);
}

void dl_image_draw_rect(dl_image *img, int x, int y, int w, int h, int thick,
                        unsigned char r, unsigned char g, unsigned char b)
{
    dl_image_fill_rect(img, x, y, w, thick, r, g, b);
    dl_image_fill_rect(img, x, y + h - thick, w, thick, r, g, b);
    dl_image_fill_rect(img, x, y, thick, h, r, g, b);
    dl_image_fill_rect(img, x + w - thick, y, thick, h, r, g, b);
}

void dl_image_draw_line(dl_image *img, int x0, int y0, int x1, int y1, int thick,
                        unsigned char r, unsigned char g, unsigned char b)
{
    int dx = abs(x1 - x0), dy = -abs(y1 - y0);
    int sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    int err = dx + dy, half = (thick - 1) / 2;
    for (;;) {
        dl_image_fill_rect(img, x0 - half, y0 - half, thick, thick, r, g, b);
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * err;
        if (e2 >= dy) { err += dy; x0 += sx; }
        if (e2 <= dx) { err += dx; y0 += sy; }
    }
}

void dl_image_blit(dl_image *dst, const dl_image *src, int x, int y)
{
    unsigned char rgb[3];
    for (int r = 0; r < src->h; r++) {
        int yy = y + r;
        if (yy < 0 || yy >= dst->h) continue;
        for (int col = 0; col < src->w; col++) {
            int xx = x + col;
            if (xx < 0 || xx >= dst->w) continue;
            get_rgb(src, (size_t)r * src->w + col, rgb);
            put_rgb(dst, (size_t)yy * dst->w + xx, rgb[0], rgb[1], rgb[2]);
        }
    }
}

/* ---- text --------------------------------------------------------------- */

/* stb_easy_font indexes a table with (char - 32): keep only printable ASCII. */
static char *printable_copy(const char *text)
{
    size_t n = strlen(text);
    char *s = malloc(n + 1);
    if (!s) return NULL;
    for (size_t i = 0; i <= n; i++) {
        unsigned char ch = (unsigned char)text[i];
        s[i] = (ch == 0 || ch == '\n' || (ch >= 32 && ch < 127)) ? (char)ch : '?';
    }
    return s;
}

int dl_text_width(const char *text, int scale)
{
    char *s = printable_copy(text);
    int w = s ? stb_easy_font_width(s) * (scale < 1 ? 1 : scale) : 0;
    free(s);
    return w;
}

int dl_text_height(const char *text, int scale)
{
    char *s = printable_copy(text);
    int h = s ? stb_easy_font_height(s) * (scale < 1 ? 1 : scale) : 0;
    free(s);
    return h;
}

int dl_image_draw_text(dl_image *img, int x, int y, const char *text,
                       unsigned char r, unsigned char g, unsigned char b, int scale)
{
    if (scale < 1) scale = 1;
    char *s = printable_copy(text);
    if (!s) return 0;
    /* Each character is a handful of quads (4 vertices x 16 bytes each);
     * 1 KiB per character is far more than the worst glyph needs. */
    int vbuf_size = (int)(strlen(s) + 1) * 1024;
    float *vbuf = malloc((size_t)vbuf_size);
    int width = 0;
    if (vbuf) {
        int quads = stb_easy_font_print(0, 0, s, NULL, vbuf, vbuf_size);
        for (int q = 0; q < quads; q++) {
            const float *v0 = vbuf + q * 16;        /* vertex 0: top-left     */
            const float *v2 = vbuf + q * 16 + 8;    /* vertex 2: bottom-right */
            int qx = (int)v0[0], qy = (int)v0[1];
            int qw = (int)v2[0] - qx, qh = (int)v2[1] - qy;
            dl_image_fill_rect(img, x + qx * scale, y + qy * scale, qw * scale, qh * scale, r, g, b);
        }
        width = stb_easy_font_width(s) * scale;
    }
    free(vbuf);
    free(s);
    return width;
}

/* ---- grid --------------------------------------------------------------- */

dl_status dl_grid_create(dl_image *canvas, dl_grid *g)
{
    if (g->rows < 1 || g->cols < 1 || g->tile_w < 1 || g->tile_h < 1)
        return dl_fail(DL_ERR_ARG, "grid: %d x %d tiles of %dx%d is not a grid", g->rows, g->cols, g->tile_w, g->tile_h);
    if (g->pad <= 0) g->pad = 8;
    if (g->text_scale <= 0) g->text_scale = 2;
    const int pad = g->pad, ts = g->text_scale;
    int title_h = g->title ? dl_text_height(g->title, ts + 1) + pad : 0;
    int label_w = 0, label_h = 0;
    for (int r = 0; g->row_labels && r < g->rows; r++) {
        int w = g->row_labels[r] ? dl_text_width(g->row_labels[r], ts) : 0;
        if (w > label_w) label_w = w;
    }
    if (label_w) label_w += pad;
    for (int c = 0; g->col_labels && c < g->cols; c++) {
        int h = g->col_labels[c] ? dl_text_height(g->col_labels[c], ts) : 0;
        if (h > label_h) label_h = h;
    }
    if (label_h) label_h += pad / 2;
    int64_t W = (int64_t)pad * 2 + label_w + (int64_t)g->cols * g->tile_w + (int64_t)(g->cols - 1) * pad;
    int64_t H = (int64_t)pad * 2 + title_h + label_h + (int64_t)g->rows * g->tile_h + (int64_t)(g->rows - 1) * pad;
    if (g->title && W < 2 * pad + dl_text_width(g->title, ts + 1))   /* room for the whole title */
        W = 2 * pad + dl_text_width(g->title, ts + 1);
    if (W > DL_IMAGE_MAX_SIDE || H > DL_IMAGE_MAX_SIDE)
        return dl_fail(DL_ERR_ARG, "grid: canvas %lldx%lld is too large", (long long)W, (long long)H);
    DL_TRY(dl_image_alloc(canvas, (int)W, (int)H, 3));
    dl_image_fill(canvas, 255, 255, 255);
    g->origin_x = pad + label_w;
    g->origin_y = pad + title_h + label_h;
    if (g->title) dl_image_draw_text(canvas, pad, pad, g->title, 0, 0, 0, ts + 1);
    for (int c = 0; g->col_labels && c < g->cols; c++) {
        if (!g->col_labels[c]) continue;
        int cx = g->origin_x + c * (g->tile_w + pad) + (g->tile_w - dl_text_width(g->col_labels[c], ts)) / 2;
        dl_image_draw_text(canvas, cx, pad + title_h, g->col_labels[c], 30, 30, 30, ts);
    }
    for (int r = 0; g->row_labels && r < g->rows; r++) {
        if (!g->row_labels[r]) continue;
        /* centre the ink: the last line's capitals fill 7 of its 12 rows */
        int ink_h = dl_text_height(g->row_labels[r], ts) - 5 * ts;
        int cy = g->origin_y + r * (g->tile_h + pad) + (g->tile_h - ink_h) / 2;
        dl_image_draw_text(canvas, pad, cy, g->row_labels[r], 30, 30, 30, ts);
    }
    return DL_OK;
}

void dl_grid_place(dl_image *canvas, const dl_grid *g, int row, int col, const dl_image *tile)
{
    if (row < 0 || row >= g->rows || col < 0 || col >= g->cols) return;
    int x = g->origin_x + col * (g->tile_w + g->pad) + (g->tile_w - tile->w) / 2;
    int y = g->origin_y + row * (g->tile_h + g->pad) + (g->tile_h - tile->h) / 2;
    dl_image_blit(canvas, tile, x, y);
}
