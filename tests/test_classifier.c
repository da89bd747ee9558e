/* test_classifier.c - the MNIST judge (core/mnist_classifier.h): gradients
 * by finite differences, the shipped weights' accuracy, input sizes, files. */
#include "testing.h"
#include "../core/dataset.h"
#include "../core/idx.h"
#include "../core/mnist_classifier.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHIPPED "data/mnist_classifier.safetensors"

TEST(classifier, cross_entropy_gradient_fd)
{
    enum { B = 4, K = 10 };
    float z[B * K], dz[B * K];
    int labels[B] = {3, 0, 9, 3};
    dl_test_rng r = {11};
    dl_test_fill(&r, z, B * K, -3, 3);
    int correct;
    float loss = mnist_cross_entropy(z, labels, B, K, dz, &correct);
    /* the loss itself, by the definition, in double */
    double want = 0;
    int want_correct = 0;
    for (int b = 0; b < B; b++) {
        double s = 0;
        int best = 0;
        for (int k = 0; k < K; k++) {
            s += exp(z[b * K + k]);
            if (z[b * K + k] > z[b * K + best]) best = k;
        }
        want += (log(s) - z[b * K + labels[b]]) / B;
        want_correct += best == labels[b];
    }
    CHECK(fabs(loss - want) < 1e-5, "loss %.7g, definition %.7g", loss, want);
    CHECK(correct == want_correct, "correct %d, want %d", correct, want_correct);
    /* central differences on every logit */
    const float h = 1e-2f;
    double worst = 0;
    for (int i = 0; i < B * K; i++) {
        float keep = z[i];
        z[i] = keep + h;
        double up = mnist_cross_entropy(z, labels, B, K, NULL, NULL);
        z[i] = keep - h;
        double down = mnist_cross_entropy(z, labels, B, K, NULL, NULL);
        z[i] = keep;
        double fd = (up - down) / (2 * h);
        worst = fmax(worst, fabs(fd - dz[i]));
    }
    CHECK(worst < 2e-4, "dlogits vs finite differences: max diff %.3g", worst);
    /* rows of the gradient sum to 0 (softmax sums to 1) */
    double row = 0;
    for (int k = 0; k < K; k++) row += dz[K + k];
    CHECK(fabs(row) < 1e-6, "gradient row sums to %g", row);
}

/* Loss of the whole model on a fixed batch (for finite differences). */
static double model_loss(mnist_classifier *m, const dl_tensor *x, const int *labels)
{
    if (mnist_classifier_forward(m, x, NULL) != DL_OK) return NAN;
    return mnist_cross_entropy(m->logits.data, labels, (int)x->shape[0], MNIST_CLASSES, NULL, NULL);
}

TEST(classifier, model_gradient_fd)
{
    mnist_classifier *m;
    if (!CHECK(mnist_classifier_create(&m, 3, 5) == DL_OK, "%s", dl_error_message())) return;
    dl_test_rng r = {21};
    dl_tensor x;
    if (!dl_test_rand_tensor(&x, &r, 4, DL_SHAPE(2, 1, 32, 32))) { mnist_classifier_free(m); return; }
    /* bigger weights than the init, so that every layer matters to the loss */
    for (int i = 0; i < m->params.count; i++)
        for (int64_t j = 0; j < m->params.items[i]->value.numel; j++) m->params.items[i]->value.data[j] *= 3.0f;
    int labels[2] = {4, 7};
    float dlogits[2 * MNIST_CLASSES];
    dl_tensor dl;
    dl_tensor_view(&dl, dlogits, 2, DL_SHAPE(2, MNIST_CLASSES));
    dl_params_zero_grad(&m->params);
    CHECK(mnist_classifier_forward(m, &x, NULL) == DL_OK, "forward: %s", dl_error_message());
    mnist_cross_entropy(m->logits.data, labels, 2, MNIST_CLASSES, dlogits, NULL);
    CHECK(mnist_classifier_backward(m, &dl) == DL_OK, "backward: %s", dl_error_message());
    /* a few entries of every parameter: analytic vs central differences (float
     * forward, so h is large-ish and the tolerance is relative to the largest
     * gradient of the tensor) */
    const float h = 1e-2f;
    for (int i = 0; i < m->params.count; i++) {
        dl_param *p = m->params.items[i];
        double gmax = 0, worst = 0;
        for (int64_t j = 0; j < p->grad.numel; j++) gmax = fmax(gmax, fabs(p->grad.data[j]));
        for (int k = 0; k < 6; k++) {
            int64_t j = dl_test_int(&r, 0, (int)p->value.numel - 1);
            float keep = p->value.data[j];
            p->value.data[j] = keep + h;
            double up = model_loss(m, &x, labels);
            p->value.data[j] = keep - h;
            double down = model_loss(m, &x, labels);
            p->value.data[j] = keep;
            worst = fmax(worst, fabs((up - down) / (2 * h) - p->grad.data[j]));
        }
        CHECK(gmax > 0, "%s: zero gradient", p->name);
        CHECK(worst <= 2e-2 * gmax + 1e-4, "%s: finite differences differ by %.3g (largest gradient %.3g)", p->name,
              worst, gmax);
    }
    dl_tensor_free(&x);
    mnist_classifier_free(m);
}

TEST(classifier, shipped_weights_reach_97_percent)
{
    mnist_classifier *m;
    if (!CHECK(mnist_classifier_load(&m, SHIPPED, 250) == DL_OK, "%s", dl_error_message())) return;
    dl_dataset d;
    if (!CHECK(dl_dataset_load_subset(&d, "mnist", "data", 0, 1000) == DL_OK, "%s", dl_error_message())) {
        mnist_classifier_free(m);
        return;
    }
    dl_tensor all;
    dl_tensor_view(&all, d.images, 4, DL_SHAPE(d.count, 1, 32, 32));
    int *pred = malloc(sizeof(int) * (size_t)d.count);
    float *conf = malloc(sizeof(float) * (size_t)d.count);
    CHECK(mnist_classifier_predict(m, &all, pred, conf) == DL_OK, "predict: %s", dl_error_message());
    int right = 0, conf_ok = 1;
    for (int i = 0; i < d.count; i++) {
        right += pred[i] == d.labels[i];
        conf_ok &= conf[i] >= 0.1f && conf[i] <= 1.0f;
    }
    CHECK(right >= 970, "accuracy on the first 1000 test digits: %.1f%%", right / 10.0);
    CHECK(conf_ok, "confidences outside [0.1, 1]");

    /* The same digits as raw 28x28 tensors: padded inside predict, same answers. */
    dl_idx raw;
    if (CHECK(dl_idx_load(&raw, "data/mnist/t10k-images-idx3-ubyte.gz", 50) == DL_OK, "%s", dl_error_message())) {
        dl_tensor small;
        dl_tensor_alloc(&small, 4, DL_SHAPE(50, 1, 28, 28));
        for (int64_t i = 0; i < small.numel; i++) small.data[i] = raw.data[i] / 127.5f - 1.0f;
        int pred28[50];
        CHECK(mnist_classifier_predict(m, &small, pred28, NULL) == DL_OK, "predict 28: %s", dl_error_message());
        CHECK(!memcmp(pred28, pred, sizeof pred28), "28x28 inputs judged differently");
        dl_tensor_free(&small);
        dl_idx_free(&raw);
    }
    dl_tensor wrong;
    dl_tensor_alloc(&wrong, 4, DL_SHAPE(2, 3, 32, 32));
    EXPECT_FAIL(mnist_classifier_predict(m, &wrong, pred, NULL), DL_ERR_SHAPE, "mnist_classifier_predict", "RGB input");
    dl_tensor_free(&wrong);
    free(pred);
    free(conf);
    dl_dataset_free(&d);
    mnist_classifier_free(m);
}

TEST(classifier, save_load_round_trip_and_errors)
{
    mnist_classifier *a, *b;
    if (!CHECK(mnist_classifier_create(&a, 2, 9) == DL_OK, "%s", dl_error_message())) return;
    char path[512];
    snprintf(path, sizeof path, "%s/clf.safetensors", dl_test_out_dir("classifier"));
    CHECK(mnist_classifier_save(a, path, "test") == DL_OK, "save: %s", dl_error_message());
    CHECK(mnist_classifier_load(&b, path, 2) == DL_OK, "load: %s", dl_error_message());
    if (b) {
        int same = 1;
        for (int i = 0; i < a->params.count; i++)
            same &= !memcmp(a->params.items[i]->value.data, b->params.items[i]->value.data,
                            sizeof(float) * (size_t)a->params.items[i]->value.numel);
        CHECK(same, "weights differ after the round trip");
        mnist_classifier_free(b);
    }
    /* not a classifier file */
    EXPECT_FAIL(mnist_classifier_load(&b, "tests/fixtures/optim/optim.safetensors", 2), DL_ERR_FORMAT, "optim.safetensors",
                "wrong file");
    mnist_classifier_free(a);
}
