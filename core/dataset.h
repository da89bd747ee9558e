/* dataset.h - the two training sets of the lab, as float tensors in [-1, 1].
 *
 *   "mnist"  handwritten digits, data/mnist/ (IDX, gzip). 28x28 gray, padded
 *            with 2 px of background on every side to 32x32 (the U-Net halves
 *            the size twice, so it wants a multiple of 4), 1 channel,
 *            10 classes "0".."9". Train 60,000 / test 10,000 images.
 *   "emoji"  Twemoji, data/twemoji32/ (IDX, raw). 32x32 RGB on white,
 *            3 channels, 8 classes (face, hand, person, animal, food,
 *            vehicle, flag, heart). 1,311 images and NO separate test split:
 *            train = 0 and train = 1 give the same images.
 *
 * Pixel v in 0..255 becomes v / 127.5 - 1, so MNIST's black background (0)
 * is -1, ink (255) is +1, and the padding is -1 too. Images are stored NCHW
 * (the IDX emoji file is NHWC: converted while loading).
 *
 *     dl_dataset d;
 *     if (dl_dataset_load(&d, "mnist", "data", 1) != DL_OK) dl_die(NULL);
 *     float *x = malloc(sizeof(float) * 64 * d.channels * d.size * d.size);
 *     int y[64];
 *     dl_dataset_batch(&d, &rng, 64, x, y);       // 64 random images + labels
 *     dl_dataset_free(&d);
 *
 * The whole MNIST train split as floats takes 60000 * 32 * 32 * 4 = 246 MB;
 * dl_dataset_load_subset reads only the first items when that is too much.
 */
#ifndef DL_DATASET_H
#define DL_DATASET_H

#include <stdint.h>

#include "rng.h"

#define DL_DATASET_MAX_CLASSES 16

typedef struct {
    int count, channels, size, num_classes;
    float *images;              /* [count, channels, size, size] in [-1, 1] */
    uint8_t *labels;            /* [count], 0 .. num_classes-1 */
    char class_names[DL_DATASET_MAX_CLASSES][32];   /* from classes.txt */
} dl_dataset;

/* name "mnist" | "emoji"; data_dir usually "data"; train 1 = training split,
 * 0 = test split. Errors name the missing/corrupt file. */
dl_status dl_dataset_load(dl_dataset *d, const char *name, const char *data_dir, int train);
/* The same, keeping only the first max_count images (all if <= 0). */
dl_status dl_dataset_load_subset(dl_dataset *d, const char *name, const char *data_dir, int train,
                                 int max_count);

/* `batch` images drawn uniformly at random WITH replacement (indices from
 * dl_rng_u32 % count, so the draw is reproducible from the rng state):
 * images_out [batch, channels, size, size], labels_out [batch] (may be NULL). */
void dl_dataset_batch(const dl_dataset *d, dl_rng *rng, int batch, float *images_out, int *labels_out);

/* Image i (copied to out, channels*size*size floats) - for a fixed subset. */
void dl_dataset_get(const dl_dataset *d, int index, float *out);

/* Floats per image: channels * size * size. */
static inline int64_t dl_dataset_image_numel(const dl_dataset *d)
{
    return (int64_t)d->channels * d->size * d->size;
}

void dl_dataset_free(dl_dataset *d);

#endif
