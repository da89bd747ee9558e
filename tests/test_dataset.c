/* test_dataset.c - MNIST / Twemoji loading (core/dataset.h), checked against
 * the raw IDX bytes read independently with core/idx.h. */
#include "testing.h"
#include "../core/dataset.h"
#include "../core/idx.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

TEST(dataset, mnist_padded_and_scaled)
{
    dl_dataset d;
    if (!CHECK(dl_dataset_load_subset(&d, "mnist", "data", 0, 200) == DL_OK, "%s", dl_error_message())) return;
    CHECK(d.count == 200 && d.channels == 1 && d.size == 32 && d.num_classes == 10, "count %d channels %d size %d "
          "classes %d", d.count, d.channels, d.size, d.num_classes);
    CHECK(!strcmp(d.class_names[0], "0") && !strcmp(d.class_names[9], "9"), "class names");
    dl_idx img, lab;
    if (!CHECK(dl_idx_load(&img, "data/mnist/t10k-images-idx3-ubyte.gz", 200) == DL_OK, "%s", dl_error_message()) ||
        !CHECK(dl_idx_load(&lab, "data/mnist/t10k-labels-idx1-ubyte.gz", 200) == DL_OK, "%s", dl_error_message())) {
        dl_dataset_free(&d);
        return;
    }
    int bad_border = 0, bad_pixel = 0, bad_label = 0, saw_ink = 0;
    for (int i = 0; i < d.count; i++) {
        const float *x = d.images + (size_t)i * 32 * 32;
        const unsigned char *raw = dl_idx_item(&img, i);
        for (int y = 0; y < 32; y++)
            for (int xx = 0; xx < 32; xx++) {
                float v = x[y * 32 + xx];
                int inside = y >= 2 && y < 30 && xx >= 2 && xx < 30;
                if (!inside) bad_border += v != -1.0f;
                else {
                    unsigned char b = raw[(y - 2) * 28 + xx - 2];
                    bad_pixel += fabsf(v - (b / 127.5f - 1.0f)) > 0;
                    saw_ink += b == 255 && v == 1.0f;
                    if (b == 0) bad_pixel += v != -1.0f;
                }
            }
        bad_label += d.labels[i] != dl_idx_item(&lab, i)[0];
    }
    CHECK(bad_border == 0, "%d padding pixels are not -1", bad_border);
    CHECK(bad_pixel == 0, "%d pixels differ from raw/127.5 - 1", bad_pixel);
    CHECK(saw_ink > 0, "no pixel 255 -> +1");
    CHECK(bad_label == 0, "%d labels differ", bad_label);
    CHECK(d.labels[0] == 7, "first test digit is a 7, got %d", d.labels[0]);
    dl_idx_free(&img);
    dl_idx_free(&lab);
    dl_dataset_free(&d);

    CHECK(dl_dataset_load(&d, "mnist", "data", 0) == DL_OK && d.count == 10000, "full test split: %d", d.count);
    dl_dataset_free(&d);
}

TEST(dataset, emoji_rgb_nchw)
{
    dl_dataset d;
    if (!CHECK(dl_dataset_load(&d, "emoji", "data", 1) == DL_OK, "%s", dl_error_message())) return;
    CHECK(d.count == 1311 && d.channels == 3 && d.size == 32 && d.num_classes == 8, "count %d channels %d size %d "
          "classes %d", d.count, d.channels, d.size, d.num_classes);
    CHECK(!strcmp(d.class_names[0], "face") && !strcmp(d.class_names[7], "heart"), "names %s .. %s", d.class_names[0],
          d.class_names[7]);
    /* class sizes from data/twemoji32/README.md */
    const int want[8] = {110, 278, 348, 130, 104, 57, 259, 25};
    int hist[8] = {0};
    for (int i = 0; i < d.count; i++) hist[d.labels[i]]++;
    CHECK(!memcmp(hist, want, sizeof want), "class histogram %d %d %d %d %d %d %d %d", hist[0], hist[1], hist[2],
          hist[3], hist[4], hist[5], hist[6], hist[7]);
    dl_idx img;
    if (CHECK(dl_idx_load(&img, "data/twemoji32/twemoji32-images-idx4-ubyte", 0) == DL_OK, "%s", dl_error_message())) {
        int bad = 0;
        for (int i = 0; i < d.count; i += 97) {   /* a spread of images */
            const unsigned char *raw = dl_idx_item(&img, i);
            const float *x = d.images + (size_t)i * 3 * 32 * 32;
            for (int c = 0; c < 3; c++)
                for (int y = 0; y < 32; y++)
                    for (int xx = 0; xx < 32; xx++)
                        bad += x[(c * 32 + y) * 32 + xx] != raw[(y * 32 + xx) * 3 + c] / 127.5f - 1.0f;
        }
        CHECK(bad == 0, "%d values differ from the NHWC bytes", bad);
        /* white background: the corner pixel of the first image is +1 in every channel */
        CHECK(d.images[0] == 1.0f && d.images[1024] == 1.0f && d.images[2048] == 1.0f, "corner not white");
        dl_idx_free(&img);
    }
    dl_dataset_free(&d);
}

TEST(dataset, batches_are_reproducible_samples)
{
    dl_dataset d;
    if (!CHECK(dl_dataset_load_subset(&d, "mnist", "data", 1, 500) == DL_OK, "%s", dl_error_message())) return;
    const int B = 16, n = 32 * 32;
    float *x1 = malloc(sizeof(float) * B * n), *x2 = malloc(sizeof(float) * B * n), *one = malloc(sizeof(float) * n);
    int y1[16], y2[16];
    dl_rng r1, r2, r3;
    dl_rng_seed(&r1, 5);
    dl_rng_seed(&r2, 5);
    dl_rng_seed(&r3, 5);
    dl_dataset_batch(&d, &r1, B, x1, y1);
    dl_dataset_batch(&d, &r2, B, x2, y2);
    CHECK(!memcmp(x1, x2, sizeof(float) * B * n) && !memcmp(y1, y2, sizeof y1), "same seed, different batch");
    int bad = 0, distinct = 0;
    for (int b = 0; b < B; b++) {
        int i = (int)(dl_rng_u32(&r3) % 500u);   /* the documented index rule */
        dl_dataset_get(&d, i, one);
        bad += memcmp(one, x1 + (size_t)b * n, sizeof(float) * n) != 0 || y1[b] != d.labels[i];
        distinct += b > 0 && y1[b] != y1[0];
    }
    CHECK(bad == 0, "%d batch items are not dataset item rng %% count", bad);
    CHECK(distinct > 0, "all labels equal: not random");
    dl_dataset_batch(&d, &r1, B, x2, NULL);   /* labels optional; rng moved on */
    CHECK(memcmp(x1, x2, sizeof(float) * B * n) != 0, "next batch is the same");
    free(x1); free(x2); free(one);
    dl_dataset_free(&d);
}

TEST(dataset, errors_name_the_problem)
{
    dl_dataset d;
    EXPECT_FAIL(dl_dataset_load(&d, "cifar", "data", 1), DL_ERR_ARG, "cifar", "unknown dataset");
    EXPECT_FAIL(dl_dataset_load(&d, "mnist", "build/no_such_data_dir", 1), DL_ERR_IO, "no_such_data_dir", "missing folder");
    CHECK(d.images == NULL && d.count == 0, "failed load leaves an empty dataset");
}
