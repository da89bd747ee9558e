/* dataset.c - MNIST and Twemoji as float images in [-1, 1] (see dataset.h). */
#include "dataset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idx.h"

#define MNIST_PAD 2   /* 28 + 2 + 2 = 32 */

/* classes.txt: one name per line, line i = label i. */
static dl_status read_class_names(dl_dataset *d, const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return dl_fail(DL_ERR_IO, "dataset: cannot open %s", path);
    char line[256];
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        if (n == DL_DATASET_MAX_CLASSES) {
            fclose(f);
            return dl_fail(DL_ERR_FORMAT, "dataset: %s has more than %d classes", path, DL_DATASET_MAX_CLASSES);
        }
        size_t len = strlen(line);
        if (len >= sizeof d->class_names[0]) {
            fclose(f);
            return dl_fail(DL_ERR_FORMAT, "dataset: %s: class name '%s' is too long", path, line);
        }
        memcpy(d->class_names[n++], line, len + 1);
    }
    fclose(f);
    if (n < 2) return dl_fail(DL_ERR_FORMAT, "dataset: %s lists %d classes", path, n);
    d->num_classes = n;
    return DL_OK;
}

/* Images (IDX, [N, 28, 28] or [N, 32, 32, 3]) and labels ([N]) into d. */
static dl_status convert(dl_dataset *d, const dl_idx *img, const dl_idx *lab, int rgb, const char *img_path,
                         const char *lab_path)
{
    if (rgb ? (img->ndim != 4 || img->dims[1] != 32 || img->dims[2] != 32 || img->dims[3] != 3)
            : (img->ndim != 3 || img->dims[1] != 28 || img->dims[2] != 28))
        return dl_fail(DL_ERR_FORMAT, "dataset: %s does not hold %s images", img_path,
                       rgb ? "32x32x3" : "28x28");
    if (lab->ndim != 1 || lab->dims[0] != img->dims[0])
        return dl_fail(DL_ERR_FORMAT, "dataset: %s has %lld labels for %lld images", lab_path,
                       (long long)lab->dims[0], (long long)img->dims[0]);
    const int n = (int)img->dims[0], S = 32, C = rgb ? 3 : 1;
    d->count = n;
    d->channels = C;
    d->size = S;
    d->images = malloc(sizeof(float) * (size_t)n * C * S * S);
    d->labels = malloc((size_t)n);
    if (!d->images || !d->labels) return dl_fail(DL_ERR_MEMORY, "dataset: out of memory for %d images", n);
    for (int i = 0; i < n; i++) {
        const unsigned char *src = dl_idx_item(img, i);
        float *dst = d->images + (size_t)i * C * S * S;
        if (rgb) {
            /* NHWC bytes -> NCHW floats */
            for (int c = 0; c < C; c++)
                for (int y = 0; y < S; y++)
                    for (int x = 0; x < S; x++)
                        dst[(c * S + y) * S + x] = src[(y * S + x) * C + c] / 127.5f - 1.0f;
        } else {
            /* 28x28 in the middle of a 32x32 field of background (-1) */
            for (int k = 0; k < S * S; k++) dst[k] = -1.0f;
            for (int y = 0; y < 28; y++)
                for (int x = 0; x < 28; x++)
                    dst[(y + MNIST_PAD) * S + x + MNIST_PAD] = src[y * 28 + x] / 127.5f - 1.0f;
        }
        uint8_t label = dl_idx_item(lab, i)[0];
        if (label >= d->num_classes)
            return dl_fail(DL_ERR_FORMAT, "dataset: %s: label %d of item %d is not below %d classes", lab_path,
                           label, i, d->num_classes);
        d->labels[i] = label;
    }
    return DL_OK;
}

dl_status dl_dataset_load_subset(dl_dataset *d, const char *name, const char *data_dir, int train,
                                 int max_count)
{
    memset(d, 0, sizeof *d);
    if (!name || !data_dir) return dl_fail(DL_ERR_ARG, "dataset: no name or data folder");
    int rgb;
    char img_path[512], lab_path[512], cls_path[512];
    if (!strcmp(name, "mnist")) {
        rgb = 0;
        const char *split = train ? "train" : "t10k";
        snprintf(img_path, sizeof img_path, "%s/mnist/%s-images-idx3-ubyte.gz", data_dir, split);
        snprintf(lab_path, sizeof lab_path, "%s/mnist/%s-labels-idx1-ubyte.gz", data_dir, split);
        snprintf(cls_path, sizeof cls_path, "%s/mnist/classes.txt", data_dir);
    } else if (!strcmp(name, "emoji")) {
        rgb = 1;   /* one split only: `train` does not matter */
        snprintf(img_path, sizeof img_path, "%s/twemoji32/twemoji32-images-idx4-ubyte", data_dir);
        snprintf(lab_path, sizeof lab_path, "%s/twemoji32/twemoji32-labels-idx1-ubyte", data_dir);
        snprintf(cls_path, sizeof cls_path, "%s/twemoji32/classes.txt", data_dir);
    } else {
        return dl_fail(DL_ERR_ARG, "dataset: unknown dataset '%s' (use mnist or emoji)", name);
    }
    DL_TRY(read_class_names(d, cls_path));
    dl_idx img = {0}, lab = {0};
    dl_status s = dl_idx_load(&img, img_path, max_count > 0 ? max_count : 0);
    if (s == DL_OK) s = dl_idx_load(&lab, lab_path, max_count > 0 ? max_count : 0);
    if (s == DL_OK) s = convert(d, &img, &lab, rgb, img_path, lab_path);
    dl_idx_free(&img);
    dl_idx_free(&lab);
    if (s != DL_OK) dl_dataset_free(d);
    return s;
}

dl_status dl_dataset_load(dl_dataset *d, const char *name, const char *data_dir, int train)
{
    return dl_dataset_load_subset(d, name, data_dir, train, 0);
}

void dl_dataset_get(const dl_dataset *d, int index, float *out)
{
    int64_t n = dl_dataset_image_numel(d);
    memcpy(out, d->images + (size_t)index * (size_t)n, sizeof(float) * (size_t)n);
}

void dl_dataset_batch(const dl_dataset *d, dl_rng *rng, int batch, float *images_out, int *labels_out)
{
    int64_t n = dl_dataset_image_numel(d);
    for (int b = 0; b < batch; b++) {
        int i = (int)(dl_rng_u32(rng) % (uint32_t)d->count);
        dl_dataset_get(d, i, images_out + (size_t)b * (size_t)n);
        if (labels_out) labels_out[b] = d->labels[i];
    }
}

void dl_dataset_free(dl_dataset *d)
{
    free(d->images);
    free(d->labels);
    memset(d, 0, sizeof *d);
}
