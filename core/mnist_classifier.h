/* mnist_classifier.h - a small CNN that reads digits: the judge of the
 * diffusion model's samples ("asked for a 3, is it a 3?").
 *
 *   x [B, 1, 32, 32]  (MNIST padded to 32x32, values in [-1, 1])
 *   conv1 3x3 pad 1, 1 -> 16      [B, 16, 32, 32]
 *   SiLU, avg-pool 2              [B, 16, 16, 16]
 *   conv2 3x3 pad 1, 16 -> 32     [B, 32, 16, 16]
 *   SiLU, avg-pool 2              [B, 32, 8, 8]
 *   flatten                       [B, 2048]
 *   fc 2048 -> 10                 [B, 10] logits
 *
 * 25,290 parameters, trained by bin/train_classifier (tools/train_classifier.c)
 * with cross-entropy and AdamW; the trained weights ship in
 * data/mnist_classifier.safetensors.
 *
 *     mnist_classifier *m;
 *     if (mnist_classifier_load(&m, "data/mnist_classifier.safetensors", 256) != DL_OK) dl_die(NULL);
 *     int pred[100];
 *     mnist_classifier_predict(m, &samples, pred, NULL);    // samples [100, 1, 32, 32]
 *     mnist_classifier_free(m);
 */
#ifndef DL_MNIST_CLASSIFIER_H
#define DL_MNIST_CLASSIFIER_H

#include <stdint.h>

#include "param.h"
#include "tensor.h"

#define MNIST_CLASSIFIER_FORMAT "difflab-mnist-classifier-1"
#define MNIST_CLASSES 10

typedef struct {
    dl_param_list params;   /* conv1.weight [16,1,3,3], conv1.bias, conv2.weight [32,16,3,3], conv2.bias,
                               fc.weight [10, 2048], fc.bias */
    dl_param *conv1_w, *conv1_b, *conv2_w, *conv2_b, *fc_w, *fc_b;
    int max_batch;
    int batch;              /* of the last forward */
    /* activations of the last forward (kept for backward), [max_batch, ...] */
    dl_tensor x, h1, s1, p1, h2, s2, p2, logits;
    /* their gradients (scratch for backward) */
    dl_tensor dp2, ds2, dh2, dp1, ds1, dh1;
} mnist_classifier;

/* PyTorch default init (uniform +-1/sqrt(fan_in) for weights and biases),
 * drawn from dl_rng seeded with `seed`. */
dl_status mnist_classifier_create(mnist_classifier **out, int max_batch, uint64_t seed);
void      mnist_classifier_free(mnist_classifier *m);

/* logits [B, 10] for x [B, 1, 32, 32], B <= max_batch. logits may be NULL
 * (then read m->logits, B rows). */
dl_status mnist_classifier_forward(mnist_classifier *m, const dl_tensor *x, dl_tensor *logits);
/* After a forward: dlogits [B, 10] -> ACCUMULATES into the params' grads. */
dl_status mnist_classifier_backward(mnist_classifier *m, const dl_tensor *dlogits);

/* Mean cross-entropy of softmax(logits) against the labels,
 *     loss = 1/B sum_b ( logsumexp(logits[b]) - logits[b, label_b] ),
 * computed in double. If dlogits is given it receives the gradient
 *     dloss/dlogits[b, k] = (softmax(logits[b])_k - [k == label_b]) / B
 * (overwritten, not accumulated). Optionally counts correct argmax
 * predictions into *correct. */
float mnist_cross_entropy(const float *logits, const int *labels, int batch, int classes, float *dlogits,
                          int *correct);

/* Judge a batch of any size (processed in chunks of max_batch): images
 * [N, 1, 32, 32] or [N, 1, 28, 28] (padded with -1 to 32x32) in [-1, 1].
 * pred [N] = argmax class; confidence [N] = its softmax probability (may be NULL). */
dl_status mnist_classifier_predict(mnist_classifier *m, const dl_tensor *images, int *pred, float *confidence);

/* Weights as safetensors (atomic), metadata "format" = MNIST_CLASSIFIER_FORMAT
 * plus the given note (e.g. the command and test accuracy; may be NULL). */
dl_status mnist_classifier_save(const mnist_classifier *m, const char *path, const char *note);
dl_status mnist_classifier_load(mnist_classifier **out, const char *path, int max_batch);

#endif
