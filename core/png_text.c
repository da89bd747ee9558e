/* png_text.c - see png_text.h. */
#include "png_text.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stb/stb_image_write.h>
#include <zlib.h>

static const unsigned char PNG_SIGNATURE[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

/* ---- growing byte buffer (stb hands the encoded PNG over in pieces) ---- */
typedef struct { unsigned char *p; size_t n, cap; int failed; } bytes;

static void bytes_put(bytes *b, const void *data, size_t n)
{
    if (b->failed) return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n) cap *= 2;
        unsigned char *p = realloc(b->p, cap);
        if (!p) { b->failed = 1; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void stb_sink(void *ctx, void *data, int size) { bytes_put(ctx, data, (size_t)size); }

static uint32_t get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void put_be32(bytes *b, uint32_t v)
{
    unsigned char q[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8), (unsigned char)v};
    bytes_put(b, q, 4);
}

static int key_ok(const char *key)
{
    size_t n = strlen(key);
    if (n < 1 || n > 79 || key[0] == ' ' || key[n - 1] == ' ') return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)key[i] < 32 || (unsigned char)key[i] > 126) return 0;
    return 1;
}

dl_status dl_png_encode_with_text(const dl_image *img, const char *key, const char *text,
                                  unsigned char **png, size_t *size)
{
    *png = NULL;
    *size = 0;
    if (!img || !img->px) return dl_fail(DL_ERR_ARG, "png: no image to encode");
    if (key && !key_ok(key)) return dl_fail(DL_ERR_ARG, "png: text key \"%s\" is not 1-79 printable ASCII characters", key);
    bytes raw = {0};
    if (!stbi_write_png_to_func(stb_sink, &raw, img->w, img->h, img->c, img->px, img->w * img->c) || raw.failed) {
        free(raw.p);
        return dl_fail(DL_ERR_MEMORY, "png: encoding a %dx%d image failed", img->w, img->h);
    }
    /* the last chunk is IEND: 12 bytes (length 0, "IEND", CRC) */
    if (raw.n < 8 + 12 || memcmp(raw.p + raw.n - 8, "IEND", 4)) {
        free(raw.p);
        return dl_fail(DL_ERR_FORMAT, "png: the encoder's output does not end with IEND");
    }
    if (!key) { *png = raw.p; *size = raw.n; return DL_OK; }

    /* the chunk: tEXt for plain ASCII, iTXt (UTF-8) otherwise */
    int ascii = 1;
    for (const char *c = text ? text : ""; *c; c++) ascii &= (unsigned char)*c < 128;
    bytes chunk = {0};                               /* type + data: what the CRC covers */
    bytes_put(&chunk, ascii ? "tEXt" : "iTXt", 4);
    bytes_put(&chunk, key, strlen(key) + 1);         /* keyword and its NUL */
    if (!ascii) bytes_put(&chunk, "\0\0\0\0", 4);     /* not compressed, method 0, no language, no translated key */
    bytes_put(&chunk, text ? text : "", text ? strlen(text) : 0);
    if (chunk.failed || chunk.n - 4 > 0x7fffffffu) {
        free(raw.p); free(chunk.p);
        return dl_fail(DL_ERR_MEMORY, "png: text chunk too large");
    }
    uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), chunk.p, (uInt)chunk.n);

    bytes out = {0};
    bytes_put(&out, raw.p, raw.n - 12);              /* everything up to IEND */
    put_be32(&out, (uint32_t)(chunk.n - 4));
    bytes_put(&out, chunk.p, chunk.n);
    put_be32(&out, crc);
    bytes_put(&out, raw.p + raw.n - 12, 12);         /* IEND */
    free(raw.p);
    free(chunk.p);
    if (out.failed) { free(out.p); return dl_fail(DL_ERR_MEMORY, "png: out of memory"); }
    *png = out.p;
    *size = out.n;
    return DL_OK;
}

dl_status dl_png_save_with_text(const dl_image *img, const char *path, const char *key, const char *text)
{
    unsigned char *png;
    size_t n;
    DL_TRY(dl_png_encode_with_text(img, key, text, &png, &n));
    char tmp[4096];   /* unique per process: two programs may write the same file */
    if (snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid()) >= (int)sizeof tmp) {
        free(png);
        return dl_fail(DL_ERR_ARG, "png: path too long '%s'", path);
    }
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        int e = errno;
        free(png);
        return dl_fail(DL_ERR_IO, "cannot write PNG '%s': %s (is the directory there and writable?)", path, strerror(e));
    }
    int ok = fwrite(png, 1, n, f) == n;
    ok &= fflush(f) == 0;
    ok &= fclose(f) == 0;
    free(png);
    if (!ok) { remove(tmp); return dl_fail(DL_ERR_IO, "cannot write PNG '%s' (disk full?)", path); }
    if (rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return dl_fail(DL_ERR_IO, "cannot rename '%s' to '%s': %s", tmp, path, strerror(e));
    }
    return DL_OK;
}

dl_status dl_png_find_text(const unsigned char *png, size_t size, const char *source, const char *key, char **text)
{
    *text = NULL;
    if (size < 8 || memcmp(png, PNG_SIGNATURE, 8)) return dl_fail(DL_ERR_FORMAT, "%s: not a PNG file", source);
    size_t klen = strlen(key);
    for (size_t at = 8; ; ) {
        if (size - at < 12) return dl_fail(DL_ERR_FORMAT, "%s: truncated PNG (no IEND chunk)", source);
        uint32_t len = get_be32(png + at);
        const unsigned char *type = png + at + 4, *data = type + 4;
        if (len > size - at - 12) return dl_fail(DL_ERR_FORMAT, "%s: PNG chunk at byte %zu runs past the end", source, at);
        uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), type, len + 4);
        if (crc != get_be32(data + len))
            return dl_fail(DL_ERR_FORMAT, "%s: PNG chunk %.4s at byte %zu has a bad CRC", source, (const char *)type, at);
        if (!memcmp(type, "IEND", 4)) break;
        int is_text = !memcmp(type, "tEXt", 4), is_itxt = !memcmp(type, "iTXt", 4);
        if ((is_text || is_itxt) && len > klen && !memcmp(data, key, klen) && data[klen] == 0) {
            size_t off = klen + 1;
            if (is_itxt) {
                /* compression flag, method, then language tag and translated keyword (NUL-terminated) */
                if (len < off + 2 || data[off] != 0)
                    return dl_fail(DL_ERR_FORMAT, "%s: iTXt chunk \"%s\" is compressed (not supported)", source, key);
                off += 2;
                for (int field = 0; field < 2; field++) {
                    while (off < len && data[off]) off++;
                    if (off >= len) return dl_fail(DL_ERR_FORMAT, "%s: malformed iTXt chunk \"%s\"", source, key);
                    off++;
                }
            }
            char *s = malloc(len - off + 1);
            if (!s) return dl_fail(DL_ERR_MEMORY, "png: out of memory");
            memcpy(s, data + off, len - off);
            s[len - off] = 0;
            *text = s;
            return DL_OK;
        }
        at += 12 + (size_t)len;
    }
    return dl_fail(DL_ERR_FORMAT, "%s: no text chunk \"%s\" in the PNG", source, key);
}

dl_status dl_png_read_text(const char *path, const char *key, char **text)
{
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return dl_fail(DL_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    bytes b = {0};
    unsigned char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) bytes_put(&b, buf, n);
    fclose(f);
    if (b.failed) { free(b.p); return dl_fail(DL_ERR_MEMORY, "png: out of memory reading '%s'", path); }
    dl_status s = dl_png_find_text(b.p ? b.p : (const unsigned char *)"", b.n, path, key, text);
    free(b.p);
    return s;
}
