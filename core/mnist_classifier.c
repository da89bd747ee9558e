/* mnist_classifier.c - the digit judge: a two-conv CNN (see mnist_classifier.h). */
#include "mnist_classifier.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv2d.h"
#include "elementwise.h"
#include "linear.h"
#include "resample.h"
#include "rng.h"
#include "safetensors.h"

#define C1 16
#define C2 32
#define FLAT (C2 * 8 * 8)   /* 2048 */

/* ------------------------------------------------------------------ */
/* Creation */

static dl_status add_param(mnist_classifier *m, const char *name, int ndim, const int64_t *shape, dl_param **out)
{
    return dl_params_add(&m->params, name, ndim, shape, out);
}

/* PyTorch's default init for Conv2d / Linear: kaiming_uniform(a = sqrt(5)) for
 * the weight, i.e. uniform in +-1/sqrt(fan_in), and the same bound for the bias. */
static void init_uniform(dl_rng *rng, dl_tensor *t, int64_t fan_in)
{
    float bound = 1.0f / sqrtf((float)fan_in);
    dl_rng_rand(rng, t->data, t->numel);
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = (2.0f * t->data[i] - 1.0f) * bound;
}

void mnist_classifier_free(mnist_classifier *m)
{
    if (!m) return;
    dl_params_free(&m->params);
    dl_tensor *ts[] = {&m->x, &m->h1, &m->s1, &m->p1, &m->h2, &m->s2, &m->p2, &m->logits,
                       &m->dp2, &m->ds2, &m->dh2, &m->dp1, &m->ds1, &m->dh1};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) dl_tensor_free(ts[i]);
    free(m);
}

dl_status mnist_classifier_create(mnist_classifier **out, int max_batch, uint64_t seed)
{
    *out = NULL;
    if (max_batch < 1) return dl_fail(DL_ERR_ARG, "mnist_classifier: max_batch %d must be >= 1", max_batch);
    mnist_classifier *m = calloc(1, sizeof *m);
    if (!m) return dl_fail(DL_ERR_MEMORY, "mnist_classifier: out of memory");
    const int64_t B = max_batch;
    dl_status s = add_param(m, "conv1.weight", 4, DL_SHAPE(C1, 1, 3, 3), &m->conv1_w);
    if (s == DL_OK) s = add_param(m, "conv1.bias", 1, DL_SHAPE(C1), &m->conv1_b);
    if (s == DL_OK) s = add_param(m, "conv2.weight", 4, DL_SHAPE(C2, C1, 3, 3), &m->conv2_w);
    if (s == DL_OK) s = add_param(m, "conv2.bias", 1, DL_SHAPE(C2), &m->conv2_b);
    if (s == DL_OK) s = add_param(m, "fc.weight", 2, DL_SHAPE(MNIST_CLASSES, FLAT), &m->fc_w);
    if (s == DL_OK) s = add_param(m, "fc.bias", 1, DL_SHAPE(MNIST_CLASSES), &m->fc_b);
    if (s == DL_OK) s = dl_tensor_alloc(&m->x, 4, DL_SHAPE(B, 1, 32, 32));
    if (s == DL_OK) s = dl_tensor_alloc(&m->h1, 4, DL_SHAPE(B, C1, 32, 32));
    if (s == DL_OK) s = dl_tensor_alloc(&m->s1, 4, DL_SHAPE(B, C1, 32, 32));
    if (s == DL_OK) s = dl_tensor_alloc(&m->ds1, 4, DL_SHAPE(B, C1, 32, 32));
    if (s == DL_OK) s = dl_tensor_alloc(&m->dh1, 4, DL_SHAPE(B, C1, 32, 32));
    if (s == DL_OK) s = dl_tensor_alloc(&m->p1, 4, DL_SHAPE(B, C1, 16, 16));
    if (s == DL_OK) s = dl_tensor_alloc(&m->dp1, 4, DL_SHAPE(B, C1, 16, 16));
    if (s == DL_OK) s = dl_tensor_alloc(&m->h2, 4, DL_SHAPE(B, C2, 16, 16));
    if (s == DL_OK) s = dl_tensor_alloc(&m->s2, 4, DL_SHAPE(B, C2, 16, 16));
    if (s == DL_OK) s = dl_tensor_alloc(&m->ds2, 4, DL_SHAPE(B, C2, 16, 16));
    if (s == DL_OK) s = dl_tensor_alloc(&m->dh2, 4, DL_SHAPE(B, C2, 16, 16));
    if (s == DL_OK) s = dl_tensor_alloc(&m->p2, 4, DL_SHAPE(B, C2, 8, 8));
    if (s == DL_OK) s = dl_tensor_alloc(&m->dp2, 4, DL_SHAPE(B, C2, 8, 8));
    if (s == DL_OK) s = dl_tensor_alloc(&m->logits, 2, DL_SHAPE(B, MNIST_CLASSES));
    if (s != DL_OK) {
        mnist_classifier_free(m);
        return s;
    }
    m->max_batch = max_batch;
    dl_rng rng;
    dl_rng_seed(&rng, seed);
    init_uniform(&rng, &m->conv1_w->value, 1 * 9);
    init_uniform(&rng, &m->conv1_b->value, 1 * 9);
    init_uniform(&rng, &m->conv2_w->value, C1 * 9);
    init_uniform(&rng, &m->conv2_b->value, C1 * 9);
    init_uniform(&rng, &m->fc_w->value, FLAT);
    init_uniform(&rng, &m->fc_b->value, FLAT);
    *out = m;
    return DL_OK;
}

/* The first B items of a [max_batch, ...] buffer, as a tensor (no copy). */
static dl_tensor first(const dl_tensor *full, int B)
{
    dl_tensor v;
    int64_t shape[DL_MAX_DIMS];
    memcpy(shape, full->shape, sizeof shape);
    shape[0] = B;
    dl_tensor_view(&v, full->data, full->ndim, shape);
    return v;
}

/* ------------------------------------------------------------------ */
/* Forward and backward */

dl_status mnist_classifier_forward(mnist_classifier *m, const dl_tensor *x, dl_tensor *logits)
{
    DL_TRY(dl_check_shape(x, "mnist_classifier_forward", "x", 4, DL_SHAPE(-1, 1, 32, 32)));
    const int B = (int)x->shape[0];
    if (B > m->max_batch)
        return dl_fail(DL_ERR_SHAPE, "mnist_classifier_forward: batch %d > max_batch %d", B, m->max_batch);
    if (logits) DL_TRY(dl_check_shape(logits, "mnist_classifier_forward", "logits", 2, DL_SHAPE(B, MNIST_CLASSES)));
    m->batch = B;
    dl_tensor xx = first(&m->x, B), h1 = first(&m->h1, B), s1 = first(&m->s1, B), p1 = first(&m->p1, B);
    dl_tensor h2 = first(&m->h2, B), s2 = first(&m->s2, B), p2 = first(&m->p2, B), lg = first(&m->logits, B);
    DL_TRY(dl_tensor_copy(&xx, x));   /* kept for conv1's backward */
    DL_TRY(conv2d_forward(&h1, &xx, &m->conv1_w->value, &m->conv1_b->value, 1, 1));   /* [B, 16, 32, 32] */
    DL_TRY(silu_forward(&s1, &h1));
    DL_TRY(avg_pool2d_forward(&p1, &s1, 2, 2));                                        /* [B, 16, 16, 16] */
    DL_TRY(conv2d_forward(&h2, &p1, &m->conv2_w->value, &m->conv2_b->value, 1, 1));  /* [B, 32, 16, 16] */
    DL_TRY(silu_forward(&s2, &h2));
    DL_TRY(avg_pool2d_forward(&p2, &s2, 2, 2));                                        /* [B, 32, 8, 8] */
    dl_tensor flat;
    DL_TRY(dl_tensor_reshape(&flat, &p2, 2, DL_SHAPE(B, FLAT)));                       /* [B, 2048] */
    DL_TRY(linear_forward(&lg, &flat, &m->fc_w->value, &m->fc_b->value));             /* [B, 10] */
    if (logits) DL_TRY(dl_tensor_copy(logits, &lg));
    return DL_OK;
}

dl_status mnist_classifier_backward(mnist_classifier *m, const dl_tensor *dlogits)
{
    const int B = m->batch;
    if (B < 1) return dl_fail(DL_ERR_ARG, "mnist_classifier_backward: no forward pass before");
    DL_TRY(dl_check_shape(dlogits, "mnist_classifier_backward", "dlogits", 2, DL_SHAPE(B, MNIST_CLASSES)));
    dl_tensor xx = first(&m->x, B), h1 = first(&m->h1, B), p1 = first(&m->p1, B), h2 = first(&m->h2, B);
    dl_tensor p2 = first(&m->p2, B);
    dl_tensor dp2 = first(&m->dp2, B), ds2 = first(&m->ds2, B), dh2 = first(&m->dh2, B);
    dl_tensor dp1 = first(&m->dp1, B), ds1 = first(&m->ds1, B), dh1 = first(&m->dh1, B);
    dl_tensor *zero[] = {&dp2, &ds2, &dh2, &dp1, &ds1, &dh1};   /* gradients accumulate: start at 0 */
    for (int i = 0; i < 6; i++) dl_tensor_fill(zero[i], 0.0f);
    dl_tensor flat, dflat;
    DL_TRY(dl_tensor_reshape(&flat, &p2, 2, DL_SHAPE(B, FLAT)));
    DL_TRY(dl_tensor_reshape(&dflat, &dp2, 2, DL_SHAPE(B, FLAT)));
    /* walk the forward backwards */
    DL_TRY(linear_backward(&dflat, &m->fc_w->grad, &m->fc_b->grad, dlogits, &flat, &m->fc_w->value));
    DL_TRY(avg_pool2d_backward(&ds2, &dp2, 2, 2));
    DL_TRY(silu_backward(&dh2, &ds2, &h2));
    DL_TRY(conv2d_backward(&dp1, &m->conv2_w->grad, &m->conv2_b->grad, &dh2, &p1, &m->conv2_w->value, 1, 1));
    DL_TRY(avg_pool2d_backward(&ds1, &dp1, 2, 2));
    DL_TRY(silu_backward(&dh1, &ds1, &h1));
    DL_TRY(conv2d_backward(NULL, &m->conv1_w->grad, &m->conv1_b->grad, &dh1, &xx, &m->conv1_w->value, 1, 1));
    return DL_OK;
}

float mnist_cross_entropy(const float *logits, const int *labels, int batch, int classes, float *dlogits,
                          int *correct)
{
    double total = 0.0;
    int right = 0;
    for (int b = 0; b < batch; b++) {
        const float *z = logits + (size_t)b * classes;
        int best = 0;
        for (int k = 1; k < classes; k++)
            if (z[k] > z[best]) best = k;
        right += best == labels[b];
        /* logsumexp with the max subtracted, so exp never overflows */
        double sum = 0.0;
        for (int k = 0; k < classes; k++) sum += exp((double)z[k] - z[best]);
        double lse = z[best] + log(sum);
        total += lse - z[labels[b]];
        if (dlogits)
            for (int k = 0; k < classes; k++) {
                double p = exp((double)z[k] - lse);   /* softmax */
                dlogits[(size_t)b * classes + k] = (float)((p - (k == labels[b])) / batch);
            }
    }
    if (correct) *correct = right;
    return (float)(total / batch);
}

dl_status mnist_classifier_predict(mnist_classifier *m, const dl_tensor *images, int *pred, float *confidence)
{
    if (images->ndim != 4 || images->shape[1] != 1 || images->shape[2] != images->shape[3] ||
        (images->shape[2] != 32 && images->shape[2] != 28)) {
        char buf[64];
        return dl_fail(DL_ERR_SHAPE, "mnist_classifier_predict: images have shape %s, expected [N, 1, 32, 32] or "
                       "[N, 1, 28, 28]", dl_shape_str(images, buf, sizeof buf));
    }
    const int N = (int)images->shape[0], S = (int)images->shape[2], pad = (32 - S) / 2;
    for (int start = 0; start < N; start += m->max_batch) {
        int B = N - start < m->max_batch ? N - start : m->max_batch;
        dl_tensor chunk;
        DL_TRY(dl_tensor_alloc(&chunk, 4, DL_SHAPE(B, 1, 32, 32)));
        dl_tensor_fill(&chunk, -1.0f);   /* background for 28x28 inputs */
        for (int b = 0; b < B; b++)
            for (int y = 0; y < S; y++)
                memcpy(chunk.data + ((size_t)b * 32 + y + pad) * 32 + pad,
                       images->data + (((size_t)(start + b)) * S + y) * S, sizeof(float) * (size_t)S);
        dl_status s = mnist_classifier_forward(m, &chunk, NULL);
        dl_tensor_free(&chunk);
        DL_TRY(s);
        for (int b = 0; b < B; b++) {
            const float *z = m->logits.data + (size_t)b * MNIST_CLASSES;
            int best = 0;
            for (int k = 1; k < MNIST_CLASSES; k++)
                if (z[k] > z[best]) best = k;
            pred[start + b] = best;
            if (confidence) {
                double sum = 0.0;
                for (int k = 0; k < MNIST_CLASSES; k++) sum += exp((double)z[k] - z[best]);
                confidence[start + b] = (float)(1.0 / sum);
            }
        }
    }
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Files */

dl_status mnist_classifier_save(const mnist_classifier *m, const char *path, const char *note)
{
    dl_st_writer w;
    DL_TRY(dl_st_writer_init(&w));
    dl_status s = DL_OK;
    for (int i = 0; i < m->params.count && s == DL_OK; i++)
        s = dl_st_writer_add(&w, m->params.items[i]->name, &m->params.items[i]->value);
    if (s == DL_OK) s = dl_st_writer_set_metadata(&w, "format", MNIST_CLASSIFIER_FORMAT);
    if (s == DL_OK && note) s = dl_st_writer_set_metadata(&w, "note", note);
    if (s == DL_OK) s = dl_st_writer_save(&w, path);
    dl_st_writer_free(&w);
    return s;
}

dl_status mnist_classifier_load(mnist_classifier **out, const char *path, int max_batch)
{
    *out = NULL;
    mnist_classifier *m;
    DL_TRY(mnist_classifier_create(&m, max_batch, 0));
    dl_safetensors f;
    dl_status s = dl_st_open(&f, path);
    if (s != DL_OK) {
        mnist_classifier_free(m);
        return s;
    }
    char fmt[64] = "";
    if (!dl_st_metadata_get(&f, "format", fmt, sizeof fmt) || strcmp(fmt, MNIST_CLASSIFIER_FORMAT))
        s = dl_fail(DL_ERR_FORMAT, "%s: not an MNIST classifier file (format '%s', want '%s')", path, fmt,
                    MNIST_CLASSIFIER_FORMAT);
    for (int i = 0; i < m->params.count && s == DL_OK; i++) {
        dl_param *p = m->params.items[i];
        const dl_st_entry *e = dl_st_find(&f, p->name);
        if (!e || dl_st_numel(e) != p->value.numel)
            s = dl_fail(DL_ERR_FORMAT, "%s: tensor '%s' is %s", path, p->name, e ? "the wrong size" : "missing");
        else
            s = dl_st_read_f32(&f, e, p->value.data);
    }
    dl_st_close(&f);
    if (s != DL_OK) {
        mnist_classifier_free(m);
        return s;
    }
    *out = m;
    return DL_OK;
}
