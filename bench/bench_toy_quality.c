/* bench_toy_quality.c - how good are the toy U-Net's class-conditional samples?
 *
 * For each guidance scale g and each class k, draw N samples of class k
 * (DDIM, EMA weights as stored in the checkpoint), let the project's MNIST
 * classifier (data/mnist_classifier.safetensors, trained by
 * bin/train_classifier) label them, and report the fraction it judges to be
 * class k. Also the mean pairwise L2 distance within a class (diversity).
 *
 *     bin/bench_toy_quality [--checkpoint F] [--per-class 100] [--steps 50]
 *                           [--seed 0] [--guidance G] [--threads N] [--quick]
 */
#include "bench_util.h"
#include "../core/mnist_classifier.h"
#include "../core/sample_metrics.h"
#include "../core/schedule.h"
#include "../core/toy_sample.h"
#include "../core/train_toy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float guidances[] = {1.0f, 3.0f, 5.0f};
static int num_guidances = 3;

int main(int argc, char **argv)
{
    const char *ckpt = "data/toy_mnist.safetensors", *judge = "data/mnist_classifier.safetensors";
    int per_class = 100, steps = 50;
    unsigned long long seed = 0;
    /* our own flags first; the rest goes to bench_init (--threads, --quick, --help) */
    char *rest[16];
    int nrest = 0;
    rest[nrest++] = argv[0];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--checkpoint") && i + 1 < argc) ckpt = argv[++i];
        else if (!strcmp(argv[i], "--per-class") && i + 1 < argc) per_class = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--guidance") && i + 1 < argc) {   /* one scale instead of 1, 3, 5 */
            guidances[0] = strtof(argv[++i], NULL);
            num_guidances = 1;
            if (!(guidances[0] >= 0 && guidances[0] <= 100)) dl_die_msg("e.g. --guidance 3", "bench_toy_quality: bad --guidance");
        }
        else if (nrest < 15) rest[nrest++] = argv[i];
    }
    if (per_class < 2 || per_class > 10000) dl_die_msg("e.g. --per-class 100", "bench_toy_quality: bad --per-class");
    if (steps < 1 || steps > 1000) dl_die_msg("e.g. --steps 50", "bench_toy_quality: bad --steps");
    bench_init(nrest, rest, "bench_toy_quality",
               "Judged accuracy and diversity of class-conditional toy U-Net samples\n"
               "  --checkpoint F   toy U-Net checkpoint (default data/toy_mnist.safetensors)\n"
               "  --per-class N    samples per class (default 100)\n"
               "  --steps S        DDIM steps (default 50)\n"
               "  --seed X         initial noise seed (default 0)\n"
               "  --guidance G     only this guidance scale (default: 1, 3 and 5)");
    if (bench_quick()) per_class = per_class > 10 ? 10 : per_class;

    toy_unet *net;
    int max_batch = 2 * per_class;
    if (toy_trainer_load_model(&net, ckpt, max_batch) != DL_OK)
        dl_die("make the checkpoint with bin/03_train (see docs/03_training.md)");
    mnist_classifier *clf;
    if (mnist_classifier_load(&clf, judge, 256) != DL_OK)
        dl_die("train the judge with bin/train_classifier (see data/README.md)");
    const toy_unet_config *cfg = toy_unet_get_config(net);
    if (cfg->in_channels != 1 || cfg->num_classes != 10)
        dl_die_msg("this bench judges MNIST models only", "%s is not an MNIST model", ckpt);
    dl_schedule sched;
    if (dl_schedule_init_default(&sched, TOY_TRAIN_SCHEDULE) != DL_OK) dl_die(NULL);

    const int S = cfg->image_size, dim = S * S;
    dl_tensor x;
    if (dl_tensor_alloc(&x, 4, DL_SHAPE(per_class, 1, S, S)) != DL_OK) dl_die(NULL);
    int *labels = malloc(sizeof(int) * per_class);
    if (!labels) dl_die_msg("", "out of memory");

    printf("checkpoint %s, judge %s, DDIM %d steps (eta 0), %d samples per class, seed %llu\n",
           ckpt, judge, steps, per_class, seed);
    printf("\njudged accuracy per class (%%):\n  g   ");
    for (int k = 0; k < 10; k++) printf("%6d", k);
    printf("    mean  diversity   time\n");
    for (int gi = 0; gi < num_guidances; gi++) {
        toy_sample_opts o = toy_sample_opts_default();
        o.kind = DL_SAMPLER_DDIM;
        o.steps = steps;
        o.eta = 0.0f;
        o.guidance = guidances[gi];
        double correct_all = 0, diversity = 0, t0 = bench_now();
        printf("%4.1f ", (double)guidances[gi]);
        for (int k = 0; k < 10; k++) {
            dl_rng rng;
            dl_rng_seed(&rng, seed + (unsigned long long)k);   /* same noise for every g */
            for (int i = 0; i < per_class; i++) labels[i] = k;
            if (toy_sample(net, &sched, &o, labels, per_class, &rng, &x) != DL_OK) dl_die(NULL);
            int correct = 0;
            if (sample_judge_count(clf, &x, labels, &correct) != DL_OK) dl_die(NULL);
            correct_all += correct;
            diversity += sample_diversity(x.data, per_class, dim);
            printf("%6.0f", 100.0 * correct / per_class);
            fflush(stdout);
        }
        printf("   %5.1f   %8.3f %6.0fs\n", 100.0 * correct_all / (10.0 * per_class), diversity / 10,
               bench_now() - t0);
    }
    printf("(diversity: mean pairwise RMS distance between samples of one class, pixels in [-1, 1])\n");
    free(labels);
    dl_tensor_free(&x);
    dl_schedule_free(&sched);
    mnist_classifier_free(clf);
    toy_unet_free(net);
    return 0;
}
