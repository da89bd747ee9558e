/* test_checkpoint.c - save/load of training state (core/checkpoint.h):
 * exact round trip of weights, EMA, AdamW moments, step and RNG position;
 * clear errors for truncated files and wrong architectures; EMA-only files. */
#include "testing.h"
#include "../core/checkpoint.h"
#include "../core/safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *NAMES[3] = {"conv_in.weight", "conv_in.bias", "time_embedding.linear_1.weight"};
static const int64_t SHAPES[3][4] = {{4, 1, 3, 3}, {4}, {16, 4}};
static const int NDIMS[3] = {4, 1, 2};

/* A little "model": 3 params (the third one's shape can be changed). */
static int make_model(dl_param_list *list, int64_t third_rows, int with_extra)
{
    memset(list, 0, sizeof *list);
    for (int i = 0; i < 3; i++) {
        int64_t shape[4];
        memcpy(shape, SHAPES[i], sizeof shape);
        if (i == 2) shape[0] = third_rows;
        if (!CHECK(dl_params_add(list, NAMES[i], NDIMS[i], shape, NULL) == DL_OK, "%s", dl_error_message()))
            return 0;
    }
    if (with_extra && !CHECK(dl_params_add(list, "conv_out.bias", 1, DL_SHAPE(1), NULL) == DL_OK, "extra"))
        return 0;
    return 1;
}

static void randomize(dl_param_list *list, uint64_t seed, int grads_too)
{
    dl_test_rng r = {seed};
    for (int i = 0; i < list->count; i++) {
        dl_test_fill(&r, list->items[i]->value.data, (size_t)list->items[i]->value.numel, -1, 1);
        if (grads_too) dl_test_fill(&r, list->items[i]->grad.data, (size_t)list->items[i]->grad.numel, -1, 1);
    }
}

static int same_tensor(const dl_tensor *a, const dl_tensor *b)
{
    return a->numel == b->numel && !memcmp(a->data, b->data, sizeof(float) * (size_t)a->numel);
}

static char *out_path(const char *file)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", dl_test_out_dir("checkpoint"), file);
    return buf;
}

/* A trained-looking state: a few AdamW steps, EMA updates, RNG advanced. */
static void make_state(dl_param_list *p, dl_ema *ema, dl_adamw *opt, dl_rng *rng)
{
    make_model(p, 16, 0);
    randomize(p, 1, 0);
    dl_ema_init(ema, p, 0.9f);
    dl_adamw_init(opt, p, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f);
    for (int k = 0; k < 3; k++) {
        randomize(p, 100 + k, 1);
        dl_adamw_step(opt, p, -1);
        dl_ema_update(ema, p);
    }
    dl_rng_seed(rng, 77);
    float junk[37];
    dl_rng_randn(rng, junk, 37);
    double one;
    dl_rng_randn_f64(rng, &one, 1);   /* leaves a cached second normal */
}

TEST(checkpoint, round_trip_is_exact)
{
    dl_param_list p, q;
    dl_ema ema, ema2;
    dl_adamw opt, opt2;
    dl_rng rng, rng2;
    make_state(&p, &ema, &opt, &rng);
    const char *path = out_path("round_trip.safetensors");
    char path_copy[512];
    snprintf(path_copy, sizeof path_copy, "%s", path);
    const char *cfg = "{\"in_channels\": 1, \"image_size\": 32}";
    CHECK(dl_checkpoint_save(path_copy, &p, &ema, &opt, &rng, 1234, cfg) == DL_OK, "save: %s", dl_error_message());

    make_model(&q, 16, 0);
    dl_ema_init(&ema2, &q, 0.5f);
    dl_adamw_init(&opt2, &q, 1e-2f, 0.9f, 0.999f, 1e-8f, 0.01f);
    dl_rng_seed(&rng2, 1);
    int64_t step = -1;
    char cfg2[256];
    CHECK(dl_checkpoint_load(path_copy, &q, &ema2, &opt2, &rng2, &step, cfg2, sizeof cfg2) == DL_OK, "load: %s",
          dl_error_message());
    for (int i = 0; i < 3; i++) {
        CHECK(same_tensor(&q.items[i]->value, &p.items[i]->value), "weights of %s differ", NAMES[i]);
        CHECK(same_tensor(&ema2.shadow[i], &ema.shadow[i]), "EMA of %s differs", NAMES[i]);
        CHECK(same_tensor(&opt2.m[i], &opt.m[i]) && same_tensor(&opt2.v[i], &opt.v[i]), "moments of %s", NAMES[i]);
    }
    CHECK(step == 1234, "step %lld", (long long)step);
    CHECK(opt2.step == 3, "optimizer step %lld", (long long)opt2.step);
    CHECK(!strcmp(cfg2, cfg), "config '%s'", cfg2);
    char cfg3[256];
    CHECK(dl_checkpoint_read_config(path_copy, cfg3, sizeof cfg3) == DL_OK && !strcmp(cfg3, cfg), "read_config");
    EXPECT_FAIL(dl_checkpoint_read_config(path_copy, cfg3, 8), DL_ERR_ARG, "config", "tiny config buffer");

    /* The restored generator continues with the same numbers (vector and
     * scalar paths, including the cached Box-Muller value). */
    float a[100], b[100];
    double da[3], db[3];
    dl_rng_randn_f64(&rng, da, 3);
    dl_rng_randn_f64(&rng2, db, 3);
    dl_rng_randn(&rng, a, 100);
    dl_rng_randn(&rng2, b, 100);
    CHECK(!memcmp(a, b, sizeof a) && !memcmp(da, db, sizeof da), "RNG draws differ after loading");

    /* One more identical step on both: identical results. */
    dl_test_rng gr = {999};
    for (int i = 0; i < 3; i++) {
        dl_test_fill(&gr, p.items[i]->grad.data, (size_t)p.items[i]->grad.numel, -1, 1);
        dl_tensor_copy(&q.items[i]->grad, &p.items[i]->grad);
    }
    dl_adamw_step(&opt, &p, -1);
    dl_adamw_step(&opt2, &q, -1);
    CHECK(same_tensor(&q.items[2]->value, &p.items[2]->value), "the next step differs");

    dl_ema_free(&ema); dl_ema_free(&ema2);
    dl_adamw_free(&opt); dl_adamw_free(&opt2);
    dl_params_free(&p); dl_params_free(&q);
}

static int truncate_copy(const char *src, const char *dst, long drop)
{
    FILE *f = fopen(src, "rb");
    if (!f) return 0;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    size_t got = fread(buf, 1, (size_t)n, f);
    fclose(f);
    f = fopen(dst, "wb");
    if (!f) { free(buf); return 0; }
    fwrite(buf, 1, got - (size_t)drop, f);
    fclose(f);
    free(buf);
    return 1;
}

TEST(checkpoint, truncated_file_is_a_clear_error)
{
    dl_param_list p, q;
    dl_ema ema;
    dl_adamw opt;
    dl_rng rng;
    make_state(&p, &ema, &opt, &rng);
    char full[512], cut[512];
    snprintf(full, sizeof full, "%s", out_path("full.safetensors"));
    snprintf(cut, sizeof cut, "%s", out_path("truncated.safetensors"));
    CHECK(dl_checkpoint_save(full, &p, &ema, &opt, &rng, 5, "{}") == DL_OK, "save: %s", dl_error_message());
    CHECK(truncate_copy(full, cut, 100), "cannot write the truncated copy");
    make_model(&q, 16, 0);
    EXPECT_FAIL(dl_checkpoint_load(cut, &q, NULL, NULL, NULL, NULL, NULL, 0), DL_ERR_FORMAT, "truncated.safetensors",
                "truncated data");
    /* Only the header length: cut inside the header. */
    FILE *f = fopen(cut, "wb");
    if (f) { fwrite("\x40\0\0\0\0\0\0\0{\"a", 1, 11, f); fclose(f); }
    EXPECT_FAIL(dl_checkpoint_load(cut, &q, NULL, NULL, NULL, NULL, NULL, 0), DL_ERR_FORMAT, "truncated.safetensors",
                "truncated header");
    EXPECT_FAIL(dl_checkpoint_load("build/test_out/checkpoint/no_such_file.safetensors", &q, NULL, NULL, NULL, NULL,
                                   NULL, 0), DL_ERR_IO, "no_such_file", "missing file");
    dl_ema_free(&ema);
    dl_adamw_free(&opt);
    dl_params_free(&p); dl_params_free(&q);
}

TEST(checkpoint, wrong_architecture_names_the_tensor)
{
    dl_param_list p;
    make_model(&p, 16, 0);
    randomize(&p, 3, 0);
    char path[512];
    snprintf(path, sizeof path, "%s", out_path("arch.safetensors"));
    CHECK(dl_checkpoint_save(path, &p, NULL, NULL, NULL, 0, "{}") == DL_OK, "save: %s", dl_error_message());

    dl_param_list other;   /* third tensor [8, 4] instead of [16, 4] */
    make_model(&other, 8, 0);
    randomize(&other, 4, 0);
    float before = other.items[0]->value.data[0];
    EXPECT_FAIL(dl_checkpoint_load(path, &other, NULL, NULL, NULL, NULL, NULL, 0), DL_ERR_FORMAT,
                "time_embedding.linear_1.weight", "wrong shape");
    CHECK(strstr(dl_error_message(), "wrong architecture") && strstr(dl_error_message(), "[16, 4]") &&
          strstr(dl_error_message(), "[8, 4]"), "message: %s", dl_error_message());
    CHECK(other.items[0]->value.data[0] == before, "a failed load modified the model");
    dl_params_free(&other);

    make_model(&other, 16, 1);   /* the model has a tensor the file lacks */
    EXPECT_FAIL(dl_checkpoint_load(path, &other, NULL, NULL, NULL, NULL, NULL, 0), DL_ERR_FORMAT, "conv_out.bias",
                "missing tensor");
    CHECK(strstr(dl_error_message(), "missing") != NULL, "message: %s", dl_error_message());
    dl_params_free(&other);

    memset(&other, 0, sizeof other);   /* the file has a tensor the model lacks */
    dl_params_add(&other, NAMES[0], 4, SHAPES[0], NULL);
    dl_params_add(&other, NAMES[1], 1, SHAPES[1], NULL);
    EXPECT_FAIL(dl_checkpoint_load(path, &other, NULL, NULL, NULL, NULL, NULL, 0), DL_ERR_FORMAT,
                "time_embedding.linear_1.weight", "extra tensor");
    dl_params_free(&other);
    dl_params_free(&p);
}

TEST(checkpoint, ema_only_file_loads_into_plain_params)
{
    dl_param_list p, q;
    dl_ema ema;
    dl_adamw opt;
    dl_rng rng;
    make_state(&p, &ema, &opt, &rng);
    CHECK(!same_tensor(&p.items[2]->value, &ema.shadow[2]), "EMA should differ from live weights here");
    char path[512];
    snprintf(path, sizeof path, "%s", out_path("ema_only.safetensors"));
    CHECK(dl_checkpoint_save_ema_weights(path, &p, &ema, 42, "{\"x\": 1}") == DL_OK, "save: %s", dl_error_message());
    dl_safetensors f;
    if (CHECK(dl_st_open(&f, path) == DL_OK, "%s", dl_error_message())) {
        CHECK(f.count == 3, "EMA-only file holds %d tensors, want 3", f.count);
        char w[16] = "";
        CHECK(dl_st_metadata_get(&f, "weights", w, sizeof w) && !strcmp(w, "ema"), "weights metadata '%s'", w);
        dl_st_close(&f);
    }
    make_model(&q, 16, 0);
    int64_t step = 0;
    CHECK(dl_checkpoint_load(path, &q, NULL, NULL, NULL, &step, NULL, 0) == DL_OK, "load: %s", dl_error_message());
    for (int i = 0; i < 3; i++) CHECK(same_tensor(&q.items[i]->value, &ema.shadow[i]), "%s is not the EMA", NAMES[i]);
    CHECK(step == 42, "step %lld", (long long)step);

    /* Loading it for further training: EMA restarts from the weights, moments at 0. */
    dl_ema ema2;
    dl_adamw opt2;
    dl_ema_init(&ema2, &q, 0.99f);
    dl_adamw_init(&opt2, &q, 1e-3f, 0.9f, 0.999f, 1e-8f, 0);
    opt2.step = 9;
    opt2.m[0].data[0] = 5;
    CHECK(dl_checkpoint_load(path, &q, &ema2, &opt2, NULL, NULL, NULL, 0) == DL_OK, "load 2: %s", dl_error_message());
    CHECK(same_tensor(&ema2.shadow[2], &ema.shadow[2]), "EMA restarts from the loaded weights");
    CHECK(opt2.step == 0 && opt2.m[0].data[0] == 0, "moments restart");
    dl_ema_free(&ema); dl_ema_free(&ema2);
    dl_adamw_free(&opt); dl_adamw_free(&opt2);
    dl_params_free(&p); dl_params_free(&q);
}
