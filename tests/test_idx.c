/* test_idx.c - core/idx: MNIST as shipped in data/mnist, and broken files.
 * Expected values come from data/mnist/README.md (first labels, counts). */
#include "testing.h"
#include "../core/idx.h"

#include <stdio.h>
#include <string.h>
#include <zlib.h>

TEST(idx, mnist_test_set)
{
    dl_idx lab;
    CHECK(dl_idx_load(&lab, "data/mnist/t10k-labels-idx1-ubyte.gz", 0) == DL_OK, "%s", dl_error_message());
    CHECK(lab.ndim == 1 && lab.dims[0] == 10000 && lab.item_size == 1, "labels: ndim %d, n %lld", lab.ndim, (long long)lab.dims[0]);
    const unsigned char first[10] = {7, 2, 1, 0, 4, 1, 4, 9, 5, 9};
    CHECK(lab.data && !memcmp(lab.data, first, 10), "first test labels are 7 2 1 0 4 1 4 9 5 9");
    const int want_counts[10] = {980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009};
    int counts[10] = {0}, bad = 0;
    for (int64_t i = 0; i < lab.dims[0]; i++) {
        if (lab.data[i] < 10) counts[lab.data[i]]++;
        else bad++;
    }
    CHECK(bad == 0 && !memcmp(counts, want_counts, sizeof counts), "label histogram differs from the README");
    dl_idx_free(&lab);

    dl_idx img;
    CHECK(dl_idx_load(&img, "data/mnist/t10k-images-idx3-ubyte.gz", 3) == DL_OK, "%s", dl_error_message());
    CHECK(img.ndim == 3 && img.dims[0] == 3 && img.dims[1] == 28 && img.dims[2] == 28 && img.items_in_file == 10000,
          "images: [%lld, %lld, %lld] of %lld", (long long)img.dims[0], (long long)img.dims[1],
          (long long)img.dims[2], (long long)img.items_in_file);
    /* a digit: some full ink in the middle, an empty border row */
    const unsigned char *seven = dl_idx_item(&img, 0);
    int ink = 0, border = 0;
    for (int i = 0; i < 784; i++) ink += seven[i] > 200;
    for (int x = 0; x < 28; x++) border += seven[x];
    CHECK(ink > 40 && border == 0, "first test image does not look like a digit (ink %d, top row %d)", ink, border);
    dl_idx_free(&img);
}

static void write_file(const char *path, const unsigned char *b, size_t n, int gz)
{
    if (gz) {
        gzFile f = gzopen(path, "wb");
        if (f) { gzwrite(f, b, (unsigned)n); gzclose(f); }
    } else {
        FILE *f = fopen(path, "wb");
        if (f) { fwrite(b, 1, n, f); fclose(f); }
    }
}

TEST(idx, raw_gz_and_broken_files)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("idx"));
    char path[600];
    /* A valid [2, 3] uint8 IDX: 00 00 08 02, 2, 3, six bytes. */
    unsigned char good[8 + 8 + 6] = {0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6};
    for (int gz = 0; gz < 2; gz++) {
        snprintf(path, sizeof path, "%s/good%s", dir, gz ? ".gz" : "");
        write_file(path, good, 18, gz);
        dl_idx x;
        CHECK(dl_idx_load(&x, path, 0) == DL_OK, "%s", dl_error_message());
        CHECK(x.ndim == 2 && x.dims[0] == 2 && x.dims[1] == 3 && x.item_size == 3, "dims");
        CHECK(x.data && dl_idx_item(&x, 1)[2] == 6, "data");
        dl_idx_free(&x);
    }
    dl_idx x;
    dl_status s = dl_idx_load(&x, "no/such/file.gz", 0);
    CHECK(s == DL_ERR_IO && strstr(dl_error_message(), "no/such/file.gz"), "missing: %s", dl_error_message());

    unsigned char bad_magic[18];
    memcpy(bad_magic, good, 18);
    bad_magic[0] = 0x1f;
    snprintf(path, sizeof path, "%s/bad_magic", dir);
    write_file(path, bad_magic, 18, 0);
    s = dl_idx_load(&x, path, 0);
    CHECK(s == DL_ERR_FORMAT && strstr(dl_error_message(), "bad_magic"), "bad magic: %s", dl_error_message());

    unsigned char bad_type[18];
    memcpy(bad_type, good, 18);
    bad_type[2] = 0x0d;   /* float: not supported */
    snprintf(path, sizeof path, "%s/bad_type", dir);
    write_file(path, bad_type, 18, 0);
    CHECK(dl_idx_load(&x, path, 0) == DL_ERR_FORMAT, "float IDX accepted");

    snprintf(path, sizeof path, "%s/short.gz", dir);
    write_file(path, good, 15, 1);           /* 3 data bytes missing */
    s = dl_idx_load(&x, path, 0);
    CHECK(s == DL_ERR_FORMAT && strstr(dl_error_message(), "truncated"), "short file: %s", dl_error_message());
    CHECK(dl_idx_load(&x, path, 1) == DL_OK, "the first item is all there");
    dl_idx_free(&x);

    unsigned char longer[19];
    memcpy(longer, good, 18);
    longer[18] = 99;
    snprintf(path, sizeof path, "%s/trailing", dir);
    write_file(path, longer, 19, 0);
    CHECK(dl_idx_load(&x, path, 0) == DL_ERR_FORMAT, "trailing junk accepted");

    unsigned char zero_dim[18];
    memcpy(zero_dim, good, 18);
    zero_dim[11] = 0;   /* second dimension 0 */
    snprintf(path, sizeof path, "%s/zero_dim", dir);
    write_file(path, zero_dim, 18, 0);
    CHECK(dl_idx_load(&x, path, 0) == DL_ERR_FORMAT, "zero dimension accepted");
    CHECK(x.data == NULL, "failed load leaves no data");
}
