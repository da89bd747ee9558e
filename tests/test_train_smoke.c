/* test_train_smoke.c - the toy trainer (core/train_toy.h) on a tiny U-Net:
 * the loss falls within a few dozen steps, and save + resume continues
 * bit-exactly. Also the Ctrl-C flag. */
#include "testing.h"
#include "../core/train_toy.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 16x16 digits, two levels {8, 16}: a model of ~30k parameters. */
static toy_unet_config tiny_config(void)
{
    toy_unet_config c;
    memset(&c, 0, sizeof c);
    c.in_channels = 1;
    c.image_size = 16;
    c.levels = 2;
    c.block_out_channels[0] = 8;
    c.block_out_channels[1] = 16;
    c.layers_per_block = 1;
    c.attention_levels = 0;   /* the mid block still has its Transformer2D */
    c.num_classes = 10;
    c.cross_attention_dim = 16;
    c.heads = 2;
    c.norm_groups = 4;
    c.time_embed_dim = 32;
    return c;
}

/* The first `count` training digits, 2x2-averaged from 32x32 to 16x16. */
static int tiny_mnist(dl_dataset *small, int count)
{
    dl_dataset d;
    if (!CHECK(dl_dataset_load_subset(&d, "mnist", "data", 1, count) == DL_OK, "%s", dl_error_message())) return 0;
    *small = d;
    small->size = 16;
    for (int i = 0; i < d.count; i++) {
        const float *src = d.images + (size_t)i * 1024;
        float *dst = d.images + (size_t)i * 256;   /* in place: dst never overtakes src */
        for (int y = 0; y < 16; y++)
            for (int x = 0; x < 16; x++)
                dst[y * 16 + x] = 0.25f * (src[2 * y * 32 + 2 * x] + src[2 * y * 32 + 2 * x + 1] +
                                           src[(2 * y + 1) * 32 + 2 * x] + src[(2 * y + 1) * 32 + 2 * x + 1]);
    }
    return 1;
}

TEST(train_smoke, loss_falls)
{
    toy_unet_config cfg = tiny_config();
    dl_dataset data;
    if (!tiny_mnist(&data, 64)) return;
    toy_trainer *tr;
    if (!CHECK(toy_trainer_create(&tr, &cfg, 16, 3, 3e-3f) == DL_OK, "%s", dl_error_message())) {
        dl_dataset_free(&data);
        return;
    }
    enum { STEPS = 50 };
    float losses[STEPS], buckets[TOY_LOSS_BUCKETS];
    int ok = 1;
    for (int s = 0; s < STEPS && ok; s++) {
        float lr = dl_lr_warmup_cosine(s, 5, STEPS, 3e-3f, 3e-4f);
        ok = CHECK(toy_train_step_dataset(tr, &data, 16, lr, &losses[s], buckets) == DL_OK, "step %d: %s", s,
                   dl_error_message());
    }
    if (ok) {
        double first = 0, last = 0;
        for (int i = 0; i < 10; i++) {
            first += losses[i] / 10;
            last += losses[STEPS - 10 + i] / 10;
        }
        printf("    loss: first 10 steps %.4f, last 10 steps %.4f\n", first, last);
        CHECK(first > 0.3 && first < 3.0, "the first losses %.3f should be near 1 (eps ~ N(0, 1))", first);
        CHECK(last < 0.8 * first, "the loss did not fall: first 10 steps %.4f, last 10 %.4f", first, last);
        CHECK(tr->step == STEPS && tr->opt.step == STEPS, "step counters %lld %lld", (long long)tr->step,
              (long long)tr->opt.step);
        int seen = 0;
        for (int k = 0; k < TOY_LOSS_BUCKETS; k++) seen += !isnan(buckets[k]);
        CHECK(seen == TOY_LOSS_BUCKETS, "only %d of 10 timestep buckets have a loss after %d images", seen, STEPS * 16);
        /* noise is hardest to see at small t (x_t ~ x0): the first bucket's loss is the largest */
        CHECK(buckets[0] > buckets[9], "loss by t: bucket 0 %.3f, bucket 9 %.3f", buckets[0], buckets[9]);
        CHECK(tr->last_grad_norm > 0 && isfinite(tr->last_grad_norm), "grad norm %g", tr->last_grad_norm);
    }
    int bad_label[1] = {10};
    float img[256] = {0}, l;
    EXPECT_FAIL(toy_train_step(tr, img, bad_label, 1, -1, &l, NULL), DL_ERR_ARG, "label", "label out of range");
    EXPECT_FAIL(toy_train_step_dataset(tr, &data, 17, -1, &l, NULL), DL_ERR_ARG, "max_batch", "batch too big");
    toy_trainer_free(tr);
    dl_dataset_free(&data);
}

static int same_params(toy_trainer *a, toy_trainer *b)
{
    dl_param_list *pa = toy_unet_params(a->net), *pb = toy_unet_params(b->net);
    if (pa->count != pb->count) return 0;
    for (int i = 0; i < pa->count; i++) {
        size_t n = sizeof(float) * (size_t)pa->items[i]->value.numel;
        if (memcmp(pa->items[i]->value.data, pb->items[i]->value.data, n) ||
            memcmp(a->ema.shadow[i].data, b->ema.shadow[i].data, n) || memcmp(a->opt.m[i].data, b->opt.m[i].data, n) ||
            memcmp(a->opt.v[i].data, b->opt.v[i].data, n))
            return 0;
    }
    return 1;
}

TEST(train_smoke, resume_is_bit_exact)
{
    toy_unet_config cfg = tiny_config();
    dl_dataset data;
    if (!tiny_mnist(&data, 64)) return;
    enum { N = 6 };
    toy_trainer *straight, *first_half, *resumed = NULL;
    float l;
    CHECK(toy_trainer_create(&straight, &cfg, 8, 11, 2e-3f) == DL_OK, "%s", dl_error_message());
    CHECK(toy_trainer_create(&first_half, &cfg, 8, 11, 2e-3f) == DL_OK, "%s", dl_error_message());
    if (!straight || !first_half) goto done;
    for (int s = 0; s < N; s++) toy_train_step_dataset(straight, &data, 8, dl_lr_warmup_cosine(s, 2, N, 2e-3f, 0), &l, NULL);
    for (int s = 0; s < N / 2; s++)
        toy_train_step_dataset(first_half, &data, 8, dl_lr_warmup_cosine(s, 2, N, 2e-3f, 0), &l, NULL);
    char path[512];
    snprintf(path, sizeof path, "%s/resume.safetensors", dl_test_out_dir("train_smoke"));
    CHECK(toy_trainer_save(first_half, path) == DL_OK, "save: %s", dl_error_message());
    if (!CHECK(toy_trainer_create_from_checkpoint(&resumed, path, 8, 2e-3f) == DL_OK, "resume: %s", dl_error_message()))
        goto done;
    CHECK(resumed->step == N / 2 && resumed->opt.step == N / 2, "resumed at step %lld", (long long)resumed->step);
    CHECK(same_params(resumed, first_half), "the loaded state differs from the saved one");
    for (int s = N / 2; s < N; s++) toy_train_step_dataset(resumed, &data, 8, dl_lr_warmup_cosine(s, 2, N, 2e-3f, 0), &l, NULL);
    CHECK(same_params(resumed, straight), "N steps straight and N/2 + save + resume + N/2 differ");
    CHECK(!memcmp(&resumed->rng.state, &straight->rng.state, sizeof straight->rng.state), "rng positions differ");

    /* Resuming into a trainer with another config: a clear error. */
    toy_unet_config other = cfg;
    other.heads = 4;
    toy_trainer *wrong;
    if (CHECK(toy_trainer_create(&wrong, &other, 8, 1, 1e-3f) == DL_OK, "%s", dl_error_message())) {
        EXPECT_FAIL(toy_trainer_resume(wrong, path), DL_ERR_FORMAT, "heads", "other config");
        toy_trainer_free(wrong);
    }
    /* The EMA-only file loads as a model for sampling. */
    snprintf(path, sizeof path, "%s/ema.safetensors", dl_test_out_dir("train_smoke"));
    CHECK(toy_trainer_save_ema(straight, path) == DL_OK, "save_ema: %s", dl_error_message());
    toy_unet *net;
    if (CHECK(toy_trainer_load_model(&net, path, 2) == DL_OK, "load_model: %s", dl_error_message())) {
        dl_param_list *p = toy_unet_params(net);
        CHECK(!memcmp(p->items[0]->value.data, straight->ema.shadow[0].data, sizeof(float) * (size_t)p->items[0]->value.numel),
              "the model's weights are not the EMA weights");
        toy_unet_free(net);
    }
done:
    toy_trainer_free(straight);
    toy_trainer_free(first_half);
    toy_trainer_free(resumed);
    dl_dataset_free(&data);
}

TEST(train_smoke, sigint_sets_the_flag)
{
    toy_train_install_sigint();
    CHECK(toy_train_interrupted == 0, "flag set before Ctrl-C");
    raise(SIGINT);   /* would kill the test runner without the handler */
    CHECK(toy_train_interrupted == 1, "SIGINT did not set the flag");
    toy_train_remove_sigint();
    CHECK(toy_train_interrupted == 0, "flag not cleared");
}
