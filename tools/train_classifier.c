/* train_classifier.c - train the MNIST digit classifier that judges the
 * diffusion model's samples (core/mnist_classifier.h).
 *
 *     bin/train_classifier                      # 2 epochs, writes data/mnist_classifier.safetensors
 *     bin/train_classifier --epochs 1 --out out/clf.safetensors --seed 3
 *
 * Plain supervised learning: minibatches of 64 training digits (padded to
 * 32x32, in [-1, 1]), cross-entropy loss, AdamW with a warmup + cosine
 * learning rate. Prints the loss and the accuracy on the 10,000 test digits
 * after every epoch; the file is written atomically at the end.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../core/dataset.h"
#include "../core/mnist_classifier.h"
#include "../core/optim.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bin/train_classifier [--epochs N] [--out FILE] [--seed S] [--batch B] [--lr LR] [--threads T]\n"
            "Trains the MNIST classifier used to judge generated digits.\n"
            "  --epochs N    passes over the 60,000 training digits (default 2)\n"
            "  --out FILE    where to write the weights (default data/mnist_classifier.safetensors)\n"
            "  --seed S      initialisation and shuffling seed (default 0)\n"
            "  --batch B     minibatch size (default 64)\n"
            "  --lr LR       peak AdamW learning rate (default 0.004)\n"
            "  --threads T   CPU threads (default: all cores)\n"
            "  --data DIR    data folder (default data)\n");
}

/* Accuracy on a whole split, in batches. */
static double evaluate(mnist_classifier *m, const dl_dataset *d)
{
    int *pred = malloc(sizeof(int) * (size_t)d->count);
    dl_tensor all;
    if (!pred || dl_tensor_view(&all, d->images, 4, DL_SHAPE(d->count, 1, 32, 32)) != DL_OK) dl_die(NULL);
    if (mnist_classifier_predict(m, &all, pred, NULL) != DL_OK) dl_die(NULL);
    int right = 0;
    for (int i = 0; i < d->count; i++) right += pred[i] == d->labels[i];
    free(pred);
    return (double)right / d->count;
}

int main(int argc, char **argv)
{
    int epochs = 2, batch = 64, threads = 0;
    uint64_t seed = 0;
    float lr = 4e-3f;
    const char *out = "data/mnist_classifier.safetensors", *data_dir = "data";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--epochs") && has) epochs = atoi(argv[++i]);
        else if (!strcmp(a, "--out") && has) out = argv[++i];
        else if (!strcmp(a, "--seed") && has) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--batch") && has) batch = atoi(argv[++i]);
        else if (!strcmp(a, "--lr") && has) lr = (float)atof(argv[++i]);
        else if (!strcmp(a, "--threads") && has) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--data") && has) data_dir = argv[++i];
        else { usage(stderr); dl_die_msg("see --help", "unknown or incomplete option '%s'", a); }
    }
    if (epochs < 1 || batch < 1 || batch > 4096 || !(lr > 0)) dl_die_msg("see --help", "bad --epochs, --batch or --lr");
    dl_set_threads(threads);

    dl_dataset train, test;
    double t0 = now();
    if (dl_dataset_load(&train, "mnist", data_dir, 1) != DL_OK) dl_die("run from the repository root (needs data/mnist)");
    if (dl_dataset_load(&test, "mnist", data_dir, 0) != DL_OK) dl_die("run from the repository root (needs data/mnist)");
    printf("MNIST: %d training, %d test digits (loaded in %.1f s), %d threads\n", train.count, test.count,
           now() - t0, dl_get_threads());

    mnist_classifier *m;
    if (mnist_classifier_create(&m, batch, seed) != DL_OK) dl_die(NULL);
    printf("model: conv 1->16, SiLU, pool, conv 16->32, SiLU, pool, linear 2048->10: %lld parameters\n",
           (long long)dl_params_numel(&m->params));
    dl_adamw opt;
    if (dl_adamw_init(&opt, &m->params, lr, 0.9f, 0.999f, 1e-8f, 1e-4f) != DL_OK) dl_die(NULL);

    const int steps_per_epoch = train.count / batch;
    const int64_t total = (int64_t)epochs * steps_per_epoch, warmup = total / 50;
    int *order = malloc(sizeof(int) * (size_t)train.count), *labels = malloc(sizeof(int) * (size_t)batch);
    float *dlogits = malloc(sizeof(float) * (size_t)batch * MNIST_CLASSES);
    dl_tensor x, dl;
    if (!order || !labels || !dlogits || dl_tensor_alloc(&x, 4, DL_SHAPE(batch, 1, 32, 32)) != DL_OK ||
        dl_tensor_view(&dl, dlogits, 2, DL_SHAPE(batch, MNIST_CLASSES)) != DL_OK)
        dl_die("out of memory");
    dl_rng rng;
    dl_rng_seed(&rng, seed + 1);
    const int64_t n = 32 * 32;
    double start = now(), acc = 0;
    for (int e = 0; e < epochs; e++) {
        /* a fresh random order every epoch (Fisher-Yates) */
        for (int i = 0; i < train.count; i++) order[i] = i;
        for (int i = train.count - 1; i > 0; i--) {
            int j = (int)(dl_rng_u32(&rng) % (uint32_t)(i + 1)), t = order[i];
            order[i] = order[j];
            order[j] = t;
        }
        double loss_sum = 0;
        int right = 0, seen = 0;
        for (int s = 0; s < steps_per_epoch; s++) {
            for (int b = 0; b < batch; b++) {
                int idx = order[s * batch + b];
                dl_dataset_get(&train, idx, x.data + b * n);
                labels[b] = train.labels[idx];
            }
            int correct;
            dl_params_zero_grad(&m->params);
            if (mnist_classifier_forward(m, &x, NULL) != DL_OK) dl_die(NULL);
            loss_sum += mnist_cross_entropy(m->logits.data, labels, batch, MNIST_CLASSES, dlogits, &correct);
            right += correct;
            seen += batch;
            if (mnist_classifier_backward(m, &dl) != DL_OK) dl_die(NULL);
            float step_lr = dl_lr_warmup_cosine(opt.step, warmup, total, lr, lr * 0.01f);
            if (dl_adamw_step(&opt, &m->params, step_lr) != DL_OK) dl_die(NULL);
            if ((s + 1) % 200 == 0 || s + 1 == steps_per_epoch) {
                double el = now() - start;
                printf("\repoch %d/%d  step %5d/%d  loss %.4f  train acc %.2f%%  lr %.2e  %.0f img/s   ", e + 1,
                       epochs, s + 1, steps_per_epoch, loss_sum / (s + 1), 100.0 * right / seen, step_lr,
                       (double)(opt.step * batch) / el);
                fflush(stdout);
            }
        }
        double t_eval = now();
        acc = evaluate(m, &test);
        printf("\nepoch %d: test accuracy %.2f%% (%d digits, %.1f s); training so far %.1f s\n", e + 1, 100 * acc,
               test.count, now() - t_eval, t_eval - start);
    }
    char note[512];
    snprintf(note, sizeof note, "bin/train_classifier --epochs %d --seed %llu --batch %d --lr %g: test accuracy "
             "%.2f%% on the 10000 MNIST test digits", epochs, (unsigned long long)seed, batch, lr, 100 * acc);
    if (mnist_classifier_save(m, out, note) != DL_OK) dl_die("could not write the classifier");
    printf("wrote %s (%s)\ntotal %.1f s\n", out, note, now() - t0);
    free(order); free(labels); free(dlogits);
    dl_tensor_free(&x);
    dl_adamw_free(&opt);
    mnist_classifier_free(m);
    dl_dataset_free(&train);
    dl_dataset_free(&test);
    return 0;
}
