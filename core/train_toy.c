/* train_toy.c - the toy U-Net's training step, checkpoints and Ctrl-C
 * (see train_toy.h). */
#include "train_toy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"

#define CONFIG_JSON_MAX 2048

/* ------------------------------------------------------------------ */
/* Creation */

void toy_trainer_free(toy_trainer *tr)
{
    if (!tr) return;
    toy_unet_free(tr->net);
    dl_adamw_free(&tr->opt);
    dl_ema_free(&tr->ema);
    dl_schedule_free(&tr->sched);
    free(tr->x0); free(tr->x_t); free(tr->noise); free(tr->eps_pred); free(tr->deps);
    free(tr->timesteps); free(tr->labels); free(tr->class_ids); free(tr->per_image_loss);
    free(tr);
}

dl_status toy_trainer_create(toy_trainer **out, const toy_unet_config *cfg, int max_batch, uint64_t seed,
                             float lr)
{
    *out = NULL;
    if (max_batch < 1) return dl_fail(DL_ERR_ARG, "toy_trainer: max_batch %d must be >= 1", max_batch);
    toy_trainer *tr = calloc(1, sizeof *tr);
    if (!tr) return dl_fail(DL_ERR_MEMORY, "toy_trainer: out of memory");
    dl_status s = toy_unet_create(&tr->net, cfg, max_batch, seed);
    dl_param_list *params = s == DL_OK ? toy_unet_params(tr->net) : NULL;
    if (s == DL_OK) s = dl_adamw_init(&tr->opt, params, lr, 0.9f, 0.999f, 1e-8f, 0.01f);
    if (s == DL_OK) s = dl_ema_init(&tr->ema, params, 0.999f);
    if (s == DL_OK) s = dl_schedule_init_default(&tr->sched, TOY_TRAIN_SCHEDULE);
    if (s == DL_OK) {
        size_t n = (size_t)max_batch * (size_t)cfg->in_channels * (size_t)cfg->image_size * (size_t)cfg->image_size;
        tr->x0 = malloc(sizeof(float) * n);
        tr->x_t = malloc(sizeof(float) * n);
        tr->noise = malloc(sizeof(float) * n);
        tr->eps_pred = malloc(sizeof(float) * n);
        tr->deps = malloc(sizeof(float) * n);
        tr->timesteps = malloc(sizeof(float) * (size_t)max_batch);
        tr->labels = malloc(sizeof(int) * (size_t)max_batch);
        tr->class_ids = malloc(sizeof(int) * (size_t)max_batch);
        tr->per_image_loss = malloc(sizeof(float) * (size_t)max_batch);
        if (!tr->x0 || !tr->x_t || !tr->noise || !tr->eps_pred || !tr->deps || !tr->timesteps || !tr->labels ||
            !tr->class_ids || !tr->per_image_loss)
            s = dl_fail(DL_ERR_MEMORY, "toy_trainer: out of memory for a batch of %d", max_batch);
    }
    if (s != DL_OK) {
        toy_trainer_free(tr);
        return s;
    }
    dl_rng_seed(&tr->rng, seed + 1);
    tr->max_batch = max_batch;
    tr->max_grad_norm = 1.0f;
    tr->cfg_drop_prob = 0.1f;
    tr->ema_max_decay = 0.999f;
    tr->ema_warmup = 1;
    *out = tr;
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* The training step */

static void update_buckets(toy_trainer *tr, int batch, float *loss_by_t_bucket)
{
    const int T = tr->sched.num_train_timesteps;
    for (int b = 0; b < batch; b++) {
        int k = (int)((int64_t)tr->timesteps[b] * TOY_LOSS_BUCKETS / T);
        int64_t n = ++tr->bucket_count[k];
        double alpha = n < 50 ? 1.0 / (double)n : 1.0 / 50.0;   /* mean, then EMA */
        tr->bucket_mean[k] += alpha * (tr->per_image_loss[b] - tr->bucket_mean[k]);
    }
    if (loss_by_t_bucket)
        for (int k = 0; k < TOY_LOSS_BUCKETS; k++)
            loss_by_t_bucket[k] = tr->bucket_count[k] ? (float)tr->bucket_mean[k] : NAN;
}

/* Step on the batch already in tr->x0 / tr->labels. */
static dl_status step_on_scratch(toy_trainer *tr, int batch, float lr, float *loss_out, float *loss_by_t_bucket)
{
    const toy_unet_config *cfg = toy_unet_get_config(tr->net);
    const int C = cfg->in_channels, S = cfg->image_size, T = tr->sched.num_train_timesteps;
    const int64_t n = (int64_t)C * S * S;   /* floats per image */

    /* 1. the random draws: timesteps, label dropout, noise (in this order) */
    for (int b = 0; b < batch; b++) tr->timesteps[b] = (float)(dl_rng_u32(&tr->rng) % (uint32_t)T);
    for (int b = 0; b < batch; b++) {
        float u;
        dl_rng_rand(&tr->rng, &u, 1);
        tr->class_ids[b] = u < tr->cfg_drop_prob ? cfg->num_classes : tr->labels[b];
    }
    dl_rng_randn(&tr->rng, tr->noise, (int64_t)batch * n);

    /* 2. forward process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, per image */
    for (int b = 0; b < batch; b++)
        DL_TRY(add_noise(&tr->sched, tr->x_t + b * n, tr->x0 + b * n, tr->noise + b * n, n, (int)tr->timesteps[b]));

    /* 3. predict the noise, MSE loss, its gradient */
    dl_tensor x_t, eps_pred, deps;
    DL_TRY(dl_tensor_view(&x_t, tr->x_t, 4, DL_SHAPE(batch, C, S, S)));
    DL_TRY(dl_tensor_view(&eps_pred, tr->eps_pred, 4, DL_SHAPE(batch, C, S, S)));
    DL_TRY(dl_tensor_view(&deps, tr->deps, 4, DL_SHAPE(batch, C, S, S)));
    dl_param_list *params = toy_unet_params(tr->net);
    dl_params_zero_grad(params);
    DL_TRY(toy_unet_forward(tr->net, &x_t, tr->timesteps, tr->class_ids, &eps_pred));
    /* loss = 1/N sum (pred - eps)^2 over N = batch * n values; dloss/dpred = 2 (pred - eps) / N */
    const double N = (double)batch * (double)n;
    double total = 0.0;
    for (int b = 0; b < batch; b++) {
        double sum = 0.0;
        for (int64_t i = b * n; i < (b + 1) * n; i++) {
            float diff = tr->eps_pred[i] - tr->noise[i];
            sum += (double)diff * diff;
            tr->deps[i] = (float)(2.0 * diff / N);
        }
        tr->per_image_loss[b] = (float)(sum / (double)n);
        total += sum;
    }
    float loss = (float)(total / N);
    if (!isfinite(loss))
        return dl_fail(DL_ERR_ARG, "toy_train_step: the loss is %g at step %lld (learning rate too high?)", loss,
                       (long long)tr->step);
    DL_TRY(toy_unet_backward(tr->net, &deps));

    /* 4. clip, AdamW, EMA */
    tr->last_grad_norm = dl_grad_clip(params, tr->max_grad_norm);
    tr->last_lr = lr < 0 ? tr->opt.lr : lr;
    DL_TRY(dl_adamw_step(&tr->opt, params, tr->last_lr));
    float decay = tr->ema_warmup ? dl_ema_warmup_decay(tr->step, tr->ema_max_decay) : tr->ema_max_decay;
    DL_TRY(dl_ema_update_decay(&tr->ema, params, decay));
    tr->step++;

    tr->last_loss = loss;
    if (loss_out) *loss_out = loss;
    update_buckets(tr, batch, loss_by_t_bucket);
    return DL_OK;
}

static dl_status check_batch(const toy_trainer *tr, int batch)
{
    if (batch < 1 || batch > tr->max_batch)
        return dl_fail(DL_ERR_ARG, "toy_train_step: batch %d is not in 1..%d (max_batch)", batch, tr->max_batch);
    return DL_OK;
}

dl_status toy_train_step(toy_trainer *tr, const float *images, const int *labels, int batch, float lr,
                         float *loss_out, float *loss_by_t_bucket)
{
    DL_TRY(check_batch(tr, batch));
    const toy_unet_config *cfg = toy_unet_get_config(tr->net);
    const size_t n = (size_t)cfg->in_channels * (size_t)cfg->image_size * (size_t)cfg->image_size;
    for (int b = 0; b < batch; b++)
        if (labels[b] < 0 || labels[b] >= cfg->num_classes)
            return dl_fail(DL_ERR_ARG, "toy_train_step: label %d of image %d is not in 0..%d", labels[b], b,
                           cfg->num_classes - 1);
    memcpy(tr->x0, images, sizeof(float) * n * (size_t)batch);
    memcpy(tr->labels, labels, sizeof(int) * (size_t)batch);
    return step_on_scratch(tr, batch, lr, loss_out, loss_by_t_bucket);
}

dl_status toy_train_step_dataset(toy_trainer *tr, const dl_dataset *data, int batch, float lr, float *loss_out,
                                 float *loss_by_t_bucket)
{
    DL_TRY(check_batch(tr, batch));
    const toy_unet_config *cfg = toy_unet_get_config(tr->net);
    if (data->channels != cfg->in_channels || data->size != cfg->image_size || data->num_classes != cfg->num_classes)
        return dl_fail(DL_ERR_SHAPE, "toy_train_step: the data set has %d channels, %dx%d images and %d classes, the "
                       "model wants %d, %dx%d and %d", data->channels, data->size, data->size, data->num_classes,
                       cfg->in_channels, cfg->image_size, cfg->image_size, cfg->num_classes);
    dl_dataset_batch(data, &tr->rng, batch, tr->x0, tr->labels);
    return step_on_scratch(tr, batch, lr, loss_out, loss_by_t_bucket);
}

/* ------------------------------------------------------------------ */
/* Checkpoints */

static dl_status config_json(const toy_unet *net, char *buf, size_t size)
{
    return toy_unet_config_to_json(toy_unet_get_config(net), buf, size);
}

dl_status toy_trainer_save(const toy_trainer *tr, const char *path)
{
    char cfg[CONFIG_JSON_MAX];
    DL_TRY(config_json(tr->net, cfg, sizeof cfg));
    return dl_checkpoint_save(path, toy_unet_params(tr->net), &tr->ema, &tr->opt, &tr->rng, tr->step, cfg);
}

dl_status toy_trainer_save_ema(const toy_trainer *tr, const char *path)
{
    char cfg[CONFIG_JSON_MAX];
    DL_TRY(config_json(tr->net, cfg, sizeof cfg));
    return dl_checkpoint_save_ema_weights(path, toy_unet_params(tr->net), &tr->ema, tr->step, cfg);
}

/* The first field in which two configs differ, or NULL. */
static const char *config_difference(const toy_unet_config *a, const toy_unet_config *b)
{
#define SAME(f) if (a->f != b->f) return #f
    SAME(in_channels); SAME(image_size); SAME(levels); SAME(layers_per_block); SAME(attention_levels);
    SAME(num_classes); SAME(cross_attention_dim); SAME(heads); SAME(norm_groups); SAME(time_embed_dim);
    for (int i = 0; i < a->levels && i < TOY_UNET_MAX_LEVELS; i++) SAME(block_out_channels[i]);
#undef SAME
    return NULL;
}

static dl_status read_file_config(const char *path, toy_unet_config *cfg)
{
    char json[CONFIG_JSON_MAX];
    DL_TRY(dl_checkpoint_read_config(path, json, sizeof json));
    dl_status s = toy_unet_config_from_json(cfg, json);
    if (s != DL_OK) return dl_fail(s, "checkpoint %s: bad model config: %s", path, dl_error_message());
    return DL_OK;
}

dl_status toy_trainer_resume(toy_trainer *tr, const char *path)
{
    toy_unet_config file_cfg;
    DL_TRY(read_file_config(path, &file_cfg));
    const char *diff = config_difference(&file_cfg, toy_unet_get_config(tr->net));
    if (diff)
        return dl_fail(DL_ERR_FORMAT, "checkpoint %s: wrong architecture: it was trained with another model "
                       "config ('%s' differs)", path, diff);
    int64_t step = 0;
    DL_TRY(dl_checkpoint_load(path, toy_unet_params(tr->net), &tr->ema, &tr->opt, &tr->rng, &step, NULL, 0));
    tr->step = step;
    return DL_OK;
}

dl_status toy_trainer_create_from_checkpoint(toy_trainer **out, const char *path, int max_batch, float lr)
{
    *out = NULL;
    toy_unet_config cfg;
    DL_TRY(read_file_config(path, &cfg));
    toy_trainer *tr;
    DL_TRY(toy_trainer_create(&tr, &cfg, max_batch, 0, lr));
    dl_status s = toy_trainer_resume(tr, path);
    if (s != DL_OK) {
        toy_trainer_free(tr);
        return s;
    }
    *out = tr;
    return DL_OK;
}

dl_status toy_trainer_load_model(toy_unet **out, const char *path, int max_batch)
{
    *out = NULL;
    toy_unet_config cfg;
    DL_TRY(read_file_config(path, &cfg));
    toy_unet *net;
    DL_TRY(toy_unet_create(&net, &cfg, max_batch, 0));
    dl_status s = dl_checkpoint_load(path, toy_unet_params(net), NULL, NULL, NULL, NULL, NULL, 0);
    if (s != DL_OK) {
        toy_unet_free(net);
        return s;
    }
    *out = net;
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Ctrl-C */

volatile sig_atomic_t toy_train_interrupted = 0;

static void on_sigint(int sig)
{
    (void)sig;
    toy_train_interrupted = 1;   /* the only thing a signal handler may safely do */
}

void toy_train_install_sigint(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;   /* one-shot: a second Ctrl-C kills */
    sigaction(SIGINT, &sa, NULL);
}

void toy_train_remove_sigint(void)
{
    signal(SIGINT, SIG_DFL);
    toy_train_interrupted = 0;
}
