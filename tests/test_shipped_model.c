/* test_shipped_model.c - the shipped toy U-Net (data/toy_mnist.safetensors)
 * makes digits of the requested class: the project's MNIST classifier
 * (data/mnist_classifier.safetensors) reads them back. A smaller version of
 * what `make bench-toy` measures (there: 100 samples per class, DDIM 50). */
#include <stdio.h>

#include "testing.h"
#include "../core/mnist_classifier.h"
#include "../core/schedule.h"
#include "../core/toy_sample.h"
#include "../core/train_toy.h"

#define PER_CLASS 4
#define MIN_CORRECT 32   /* of 40; the shipped model scores far above this (data/README.md) */

TEST(shipped_model, makes_the_requested_digits)
{
    toy_unet *net = NULL;
    mnist_classifier *clf = NULL;
    dl_schedule sched = {0};
    dl_tensor x = {0};
    if (!CHECK(toy_trainer_load_model(&net, "data/toy_mnist.safetensors", 2 * PER_CLASS) == DL_OK, "%s",
               dl_error_message()) ||
        !CHECK(mnist_classifier_load(&clf, "data/mnist_classifier.safetensors", 64) == DL_OK, "%s",
               dl_error_message()) ||
        !CHECK(dl_schedule_init_default(&sched, TOY_TRAIN_SCHEDULE) == DL_OK, "%s", dl_error_message()) ||
        !CHECK(dl_tensor_alloc(&x, 4, DL_SHAPE(PER_CLASS, 1, 32, 32)) == DL_OK, "%s", dl_error_message()))
        goto done;
    toy_sample_opts o = toy_sample_opts_default();
    o.steps = 15;
    int correct = 0, labels[PER_CLASS], pred[PER_CLASS];
    for (int k = 0; k < 10; k++) {
        dl_rng rng;
        dl_rng_seed(&rng, 100 + (uint64_t)k);
        for (int i = 0; i < PER_CLASS; i++) labels[i] = k;
        if (!CHECK(toy_sample(net, &sched, &o, labels, PER_CLASS, &rng, &x) == DL_OK, "%s", dl_error_message()) ||
            !CHECK(mnist_classifier_predict(clf, &x, pred, NULL) == DL_OK, "%s", dl_error_message()))
            goto done;
        for (int i = 0; i < PER_CLASS; i++) correct += pred[i] == k;
    }
    printf("      judged correct: %d of %d (DDIM 15 steps, guidance 3)\n", correct, 10 * PER_CLASS);
    CHECK(correct >= MIN_CORRECT, "only %d of %d samples were read as the requested digit", correct,
          10 * PER_CLASS);
done:
    dl_tensor_free(&x);
    dl_schedule_free(&sched);
    if (clf) mnist_classifier_free(clf);
    if (net) toy_unet_free(net);
}
