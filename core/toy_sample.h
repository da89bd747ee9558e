/* toy_sample.h - sampling the toy U-Net (core/toy_unet.h) with the samplers
 * of core/sampling.h: class labels, classifier-free guidance, batching.
 *
 * The toy U-Net is conditioned on a class id per image; the "null" class
 * (id num_classes, learned with labels dropped 10% of the time) is the
 * unconditional model. Classifier-free guidance runs the net once per step
 * on [null x B, labels] and mixes eps = eps_null + g (eps_class - eps_null).
 *
 *     toy_sample_opts o = toy_sample_opts_default();      // DDIM 50, eta 0, g 3
 *     int labels[8] = {7, 7, 7, 7, 7, 7, 7, 7};
 *     dl_tensor x;  dl_tensor_alloc(&x, 4, DL_SHAPE(8, 1, 32, 32));
 *     DL_TRY(toy_sample(net, &sched, &o, labels, 8, &rng, &x));     // x in ~[-1, 1]
 *
 * For a live view that shows every step, build the pieces yourself:
 * toy_guided_init gives a dl_eps_model + ctx for one batch of labels.
 */
#ifndef DL_TOY_SAMPLE_H
#define DL_TOY_SAMPLE_H

#include "sampling.h"
#include "toy_unet.h"

/* The toy U-Net as a dl_eps_model: ctx is a toy_eps_ctx whose class_ids
 * has one id per item of the batch the sampler (or dl_cfg) hands in. */
typedef struct {
    toy_unet *net;
    const int *class_ids;
} toy_eps_ctx;
dl_status toy_eps_model(void *ctx, const dl_tensor *x_t, const float *t, dl_tensor *eps_out);

/* One batch of B labels, guided with g: model = toy_guided_eps, ctx = &g.
 * g == 1 runs the conditional model alone (one batch of B: the same result
 * as CFG with g = 1, half the work); any other g runs CFG on 2B items,
 * which must fit the net's max_batch. */
typedef struct {
    toy_eps_ctx inner;      /* the net and the ids it sees                  */
    int *ids;               /* [2B]: null x B, then the labels              */
    dl_cfg cfg;             /* unused when guidance == 1                    */
    int batch;
    float guidance;
} toy_guided;

dl_status toy_guided_init(toy_guided *g, toy_unet *net, const int *labels, int batch, float guidance);
dl_status toy_guided_eps(void *g, const dl_tensor *x_t, const float *t, dl_tensor *eps_out);
void toy_guided_free(toy_guided *g);

typedef struct {
    dl_sampler_kind kind;      /* DDIM */
    int steps;                 /* 50 (DDPM: 1000 = every training step)       */
    float eta;                 /* 0 (DDIM only)                               */
    float guidance;            /* 3                                           */
    dl_sampler_config config;  /* dl_sampler_config_default(): clip_sample off */
} toy_sample_opts;

toy_sample_opts toy_sample_opts_default(void);

/* count samples, sample i of class labels[i], into out [count, C, S, S].
 * The initial noise of all samples is ONE draw torch.randn((count, C, S, S))
 * from rng; then the samples run in chunks that fit the net's max_batch
 * (DDPM's per-step noise therefore depends on the chunking). Uses the
 * weights the net has now (swap in the EMA weights first if you want them). */
dl_status toy_sample(toy_unet *net, const dl_schedule *sched, const toy_sample_opts *o,
                     const int *labels, int count, dl_rng *rng, dl_tensor *out);

#endif
