/* idx.h - read IDX files (MNIST, twemoji32), gzip-compressed or raw.
 *
 * An IDX file is: bytes 00 00 <type> <ndim>, then ndim big-endian uint32
 * sizes, then the data row-major. We read type 0x08 (unsigned byte) only,
 * which is what MNIST uses: images [N, 28, 28], labels [N].
 *
 *     dl_idx img;
 *     if (dl_idx_load(&img, "data/mnist/t10k-images-idx3-ubyte.gz", 16) != DL_OK) dl_die(NULL);
 *     const unsigned char *first = dl_idx_item(&img, 0);    // 28*28 bytes
 *     dl_idx_free(&img);
 *
 * zlib's gzread reads plain files transparently, so both forms work.
 */
#ifndef DL_IDX_H
#define DL_IDX_H

#include <stdint.h>

#include "dl_error.h"

#define DL_IDX_MAX_DIMS 4

typedef struct {
    int ndim;                       /* 1..4                                  */
    int64_t dims[DL_IDX_MAX_DIMS];  /* dims[0] = items read (<= in the file) */
    int64_t items_in_file;          /* dims[0] as the header says            */
    int64_t item_size;              /* bytes per item = product of dims[1..] */
    unsigned char *data;            /* dims[0] * item_size bytes             */
} dl_idx;

/* Read the header and the first max_items items (all if max_items <= 0).
 * Checks the magic, the element type, the dimensions (positive, total
 * below 2^31 bytes) and the length: a file shorter than the items asked
 * for is DL_ERR_FORMAT, and when all items are read, so is trailing junk.
 * A missing file is DL_ERR_IO. Errors name the file. */
dl_status dl_idx_load(dl_idx *out, const char *path, int64_t max_items);
void dl_idx_free(dl_idx *idx);

/* Pointer to item i (0 <= i < dims[0]), item_size bytes. */
static inline const unsigned char *dl_idx_item(const dl_idx *idx, int64_t i)
{
    return idx->data + i * idx->item_size;
}

#endif
