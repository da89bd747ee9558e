/* train_toy.h - one training step of the toy diffusion model, and the run
 * around it (checkpoints, resume, Ctrl-C).
 *
 * The epsilon-prediction loss (DDPM, Ho et al. 2020): take clean images x0,
 * pick a random timestep t and random noise eps, make the noisy image
 *
 *     x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps          (add_noise)
 *
 * and train the U-Net to tell the noise back:  loss = mean (eps_pred - eps)^2.
 * With probability cfg_drop_prob (0.1) a label is replaced by the "null"
 * class, so the same network also learns the unconditional model that
 * classifier-free guidance needs at sampling time.
 *
 *     toy_trainer *tr;
 *     DL_TRY(toy_trainer_create(&tr, &cfg, 64, seed, 1e-3f));
 *     toy_train_install_sigint();
 *     while (tr->step < steps && !toy_train_interrupted) {
 *         float lr = dl_lr_warmup_cosine(tr->step, 200, steps, 1e-3f, 1e-5f);
 *         DL_TRY(toy_train_step_dataset(tr, &data, 64, lr, &loss, buckets));
 *     }
 *     DL_TRY(toy_trainer_save(tr, "out/toy.safetensors"));   // also after Ctrl-C
 *     toy_trainer_free(tr);
 *
 * Reproducibility: every random draw of training (batch indices, t, eps,
 * label dropout) comes from tr->rng, which checkpoints save. So "N steps"
 * and "N/2 steps, save, resume, N/2 steps" give bit-identical weights (same
 * machine, same thread count).
 */
#ifndef DL_TRAIN_TOY_H
#define DL_TRAIN_TOY_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "dataset.h"
#include "optim.h"
#include "rng.h"
#include "schedule.h"
#include "toy_unet.h"

/* The noise schedule of the toy model: DDPM's linear 1e-4 .. 0.02 over
 * T = 1000 steps (dl_schedule_init_default(&s, TOY_TRAIN_SCHEDULE)).
 * Samplers must use the same one. */
#define TOY_TRAIN_SCHEDULE DL_SCHEDULE_LINEAR
#define TOY_LOSS_BUCKETS 10

typedef struct {
    toy_unet *net;
    dl_adamw opt;
    dl_ema ema;
    dl_schedule sched;
    dl_rng rng;              /* all training randomness (saved in checkpoints) */
    int64_t step;            /* optimizer steps done */
    float max_grad_norm;     /* clip_grad_norm_ threshold (1.0); <= 0 = no clipping */
    float cfg_drop_prob;     /* label -> null class with this probability (0.1) */
    float ema_max_decay;     /* 0.999; the decay warms up: dl_ema_warmup_decay(step, max) */
    int ema_warmup;          /* 1 (default) = warm the decay up, 0 = always ema_max_decay */
    /* measured in the last step */
    float last_loss, last_grad_norm, last_lr;
    /* loss by timestep: bucket k holds t in [k T/10, (k+1) T/10). Running
     * means of the per-image loss: the exact mean of the first 50 images of
     * a bucket, then an exponential average over ~50 images (so it follows
     * the model as it learns). Not saved in checkpoints. */
    double bucket_mean[TOY_LOSS_BUCKETS];
    int64_t bucket_count[TOY_LOSS_BUCKETS];
    /* scratch, [max_batch, C, S, S] */
    int max_batch;
    float *x0, *x_t, *noise, *eps_pred, *deps, *timesteps;
    int *labels, *class_ids;
    float *per_image_loss;
} toy_trainer;

/* A new model (init from `seed`), AdamW (lr, betas 0.9/0.999, eps 1e-8,
 * weight decay 0.01 as diffusers' training scripts), EMA (0.999, warmup),
 * the linear schedule, tr->rng seeded with seed + 1 (the weights' init uses
 * `seed`), max_grad_norm 1, cfg_drop_prob 0.1. Change the fields before the
 * first step if you want other values. */
dl_status toy_trainer_create(toy_trainer **out, const toy_unet_config *cfg, int max_batch, uint64_t seed,
                             float lr);
void      toy_trainer_free(toy_trainer *tr);

/* One step on a given batch: images [batch, C, S, S] in [-1, 1], labels
 * [batch] in 0..num_classes-1. lr < 0 = the optimizer's default lr.
 * loss_out = the batch MSE; loss_by_t_bucket [10] (nullable) receives the
 * running means (NaN for a bucket that has seen no image yet). */
dl_status toy_train_step(toy_trainer *tr, const float *images, const int *labels, int batch, float lr,
                         float *loss_out, float *loss_by_t_bucket);
/* The same, drawing the batch from a dataset with tr->rng. */
dl_status toy_train_step_dataset(toy_trainer *tr, const dl_dataset *data, int batch, float lr, float *loss_out,
                                 float *loss_by_t_bucket);

/* ---- checkpoints (core/checkpoint.h) ---- */
/* Everything needed to resume: weights, EMA, AdamW moments, step, rng,
 * the model config as JSON. Atomic (temp file + rename). */
dl_status toy_trainer_save(const toy_trainer *tr, const char *path);
/* Only the EMA weights under the plain names: the file to ship for sampling. */
dl_status toy_trainer_save_ema(const toy_trainer *tr, const char *path);
/* Continue from a checkpoint saved by toy_trainer_save. The file's config
 * must equal the trainer's (DL_ERR_FORMAT naming the first differing field
 * otherwise). An EMA-only file also loads (EMA restarts from its weights,
 * optimizer from zero). */
dl_status toy_trainer_resume(toy_trainer *tr, const char *path);
/* Create a trainer from the config stored in a checkpoint, then resume. */
dl_status toy_trainer_create_from_checkpoint(toy_trainer **out, const char *path, int max_batch, float lr);
/* For sampling: a model built from the checkpoint's config, with its "<name>"
 * weights (the EMA weights for a shipped file). */
dl_status toy_trainer_load_model(toy_unet **out, const char *path, int max_batch);

/* ---- Ctrl-C ----
 * toy_train_install_sigint() makes SIGINT set toy_train_interrupted = 1
 * instead of killing the program; the training loop checks the flag, saves
 * a checkpoint and exits cleanly. A second Ctrl-C kills as usual (the
 * handler is one-shot), in case the program hangs. */
extern volatile sig_atomic_t toy_train_interrupted;
void toy_train_install_sigint(void);
/* Put the default SIGINT behaviour back and clear the flag. */
void toy_train_remove_sigint(void);

#endif
