/* idx.c - see idx.h. */
#include "idx.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

/* Read exactly n bytes; returns the number actually read (or -1). */
static int64_t read_all(gzFile f, unsigned char *buf, int64_t n)
{
    int64_t got = 0;
    while (got < n) {
        int64_t chunk = n - got > (1 << 30) ? (1 << 30) : n - got;
        int r = gzread(f, buf + got, (unsigned)chunk);
        if (r < 0) return -1;
        if (r == 0) break;
        got += r;
    }
    return got;
}

dl_status dl_idx_load(dl_idx *out, const char *path, int64_t max_items)
{
    memset(out, 0, sizeof *out);
    gzFile f = gzopen(path, "rb");
    if (!f) return dl_fail(DL_ERR_IO, "cannot open IDX file '%s': %s", path, strerror(errno ? errno : ENOENT));
    dl_status s = DL_OK;
    unsigned char magic[4], be[4];
    if (read_all(f, magic, 4) != 4) {
        s = dl_fail(DL_ERR_FORMAT, "IDX file '%s' is too short for a header", path);
        goto done;
    }
    /* 00 00 <type> <ndim>; type 0x08 = unsigned byte */
    if (magic[0] != 0 || magic[1] != 0 || magic[3] < 1 || magic[3] > DL_IDX_MAX_DIMS) {
        s = dl_fail(DL_ERR_FORMAT, "'%s' is not an IDX file (magic %02x %02x %02x %02x)",
                    path, magic[0], magic[1], magic[2], magic[3]);
        goto done;
    }
    if (magic[2] != 0x08) {
        s = dl_fail(DL_ERR_FORMAT, "IDX file '%s' has element type 0x%02x; only 0x08 (uint8) is supported", path, magic[2]);
        goto done;
    }
    out->ndim = magic[3];
    int64_t item_size = 1;
    for (int d = 0; d < out->ndim; d++) {
        if (read_all(f, be, 4) != 4) {
            s = dl_fail(DL_ERR_FORMAT, "IDX file '%s' ends inside its header", path);
            goto done;
        }
        int64_t n = ((int64_t)be[0] << 24) | (be[1] << 16) | (be[2] << 8) | be[3];   /* big-endian */
        if (n <= 0 || n > ((int64_t)1 << 31)) {
            s = dl_fail(DL_ERR_FORMAT, "IDX file '%s': dimension %d is %lld", path, d, (long long)n);
            goto done;
        }
        out->dims[d] = n;
        if (d > 0) item_size *= n;
        if (item_size > ((int64_t)1 << 31)) {
            s = dl_fail(DL_ERR_FORMAT, "IDX file '%s': items of %lld bytes are absurd", path, (long long)item_size);
            goto done;
        }
    }
    out->items_in_file = out->dims[0];
    out->item_size = item_size;
    int64_t items = out->dims[0];
    if (max_items > 0 && max_items < items) items = max_items;
    int64_t bytes = items * item_size;
    if (bytes > ((int64_t)1 << 31)) {
        s = dl_fail(DL_ERR_FORMAT, "IDX file '%s': %lld bytes of data are too many", path, (long long)bytes);
        goto done;
    }
    out->data = malloc((size_t)bytes);
    if (!out->data) {
        s = dl_fail(DL_ERR_MEMORY, "IDX file '%s': cannot allocate %lld bytes", path, (long long)bytes);
        goto done;
    }
    int64_t got = read_all(f, out->data, bytes);
    if (got != bytes) {
        s = dl_fail(DL_ERR_FORMAT, "IDX file '%s' is truncated or corrupt: got %lld of %lld data bytes", path,
                    (long long)(got < 0 ? 0 : got), (long long)bytes);
        goto done;
    }
    if (items == out->items_in_file) {   /* read everything: nothing may follow */
        unsigned char extra;
        if (read_all(f, &extra, 1) != 0) {
            s = dl_fail(DL_ERR_FORMAT, "IDX file '%s' has data after the %lld items its header announces",
                        path, (long long)items);
            goto done;
        }
    }
    out->dims[0] = items;
done:
    gzclose(f);
    if (s != DL_OK) dl_idx_free(out);
    return s;
}

void dl_idx_free(dl_idx *idx)
{
    free(idx->data);
    memset(idx, 0, sizeof *idx);
}
