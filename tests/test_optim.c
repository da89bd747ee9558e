/* test_optim.c - AdamW and gradient clipping against PyTorch
 * (tests/fixtures/optim, made by tests/torch_refs/gen_optim_refs.py), EMA and
 * the learning-rate schedule against their formulas. */
#include "testing.h"
#include "../core/optim.h"
#include "../core/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define OPTIM_FIXTURE "tests/fixtures/optim/optim.safetensors"
static const int64_t SHAPES[3][4] = {{3, 5}, {7}, {2, 3, 2, 2}};
static const int NDIMS[3] = {2, 1, 4};

static int make_params(dl_param_list *list)
{
    memset(list, 0, sizeof *list);
    for (int i = 0; i < 3; i++) {
        char name[32];
        snprintf(name, sizeof name, "p%d", i);
        if (!CHECK(dl_params_add(list, name, NDIMS[i], SHAPES[i], NULL) == DL_OK, "add: %s",
                   dl_error_message()))
            return 0;
    }
    return 1;
}

/* Copy the fixture tensor `name` into dst (numel values). */
static int load_into(const dl_safetensors *f, const char *name, float *dst, int64_t numel)
{
    const dl_st_entry *e = dl_st_find(f, name);
    if (!CHECK(e != NULL, "fixture lacks %s", name)) return 0;
    if (!CHECK(dl_st_numel(e) == numel, "%s: %lld values, want %lld", name,
               (long long)dl_st_numel(e), (long long)numel))
        return 0;
    return CHECK(dl_st_read_f32(f, e, dst) == DL_OK, "%s: %s", name, dl_error_message());
}

static int check_against(const dl_safetensors *f, const char *name, const dl_tensor *got, double atol)
{
    dl_tensor want;
    if (!CHECK(dl_st_load_tensor(f, name, &want) == DL_OK, "%s: %s", name, dl_error_message())) return 0;
    int ok = CHECK(want.numel == got->numel, "%s: numel", name) &&
             CHECK_CLOSE(name, got->data, want.data, (size_t)want.numel, atol);
    dl_tensor_free(&want);
    return ok;
}

static void adamw_run(const char *run, float beta1, float beta2, float eps, float wd)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, OPTIM_FIXTURE) == DL_OK, "%s", dl_error_message())) return;
    dl_param_list params;
    if (!make_params(&params)) { dl_st_close(&f); return; }
    char name[96];
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s.p%d.init", run, i);
        load_into(&f, name, params.items[i]->value.data, params.items[i]->value.numel);
    }
    float lrs[6];
    snprintf(name, sizeof name, "%s.lr", run);
    load_into(&f, name, lrs, 6);
    dl_adamw opt;
    CHECK(dl_adamw_init(&opt, &params, lrs[0], beta1, beta2, eps, wd) == DL_OK, "%s", dl_error_message());
    for (int k = 0; k < 6; k++) {
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "%s.grad.s%d.p%d", run, k, i);
            load_into(&f, name, params.items[i]->grad.data, params.items[i]->grad.numel);
        }
        CHECK(dl_adamw_step(&opt, &params, lrs[k]) == DL_OK, "step: %s", dl_error_message());
        for (int i = 0; i < 3; i++) {
            snprintf(name, sizeof name, "%s.after.s%d.p%d", run, k, i);
            /* float32 against float32: a few ulps of values ~1 */
            check_against(&f, name, &params.items[i]->value, 2e-6);
        }
    }
    CHECK(opt.step == 6, "step count %lld", (long long)opt.step);
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s.m.p%d", run, i);
        check_against(&f, name, &opt.m[i], 1e-6);
        snprintf(name, sizeof name, "%s.v.p%d", run, i);
        check_against(&f, name, &opt.v[i], 1e-6);
    }
    dl_adamw_free(&opt);
    dl_params_free(&params);
    dl_st_close(&f);
}

TEST(optim, adamw_matches_torch)
{
    adamw_run("adamw_a", 0.9f, 0.999f, 1e-8f, 0.01f);
    adamw_run("adamw_b", 0.8f, 0.95f, 1e-3f, 0.5f);
}

TEST(optim, adamw_rejects_other_list)
{
    dl_param_list a, b;
    if (!make_params(&a)) return;
    memset(&b, 0, sizeof b);
    dl_params_add(&b, "only", 1, DL_SHAPE(4), NULL);
    dl_adamw opt;
    CHECK(dl_adamw_init(&opt, &a, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f) == DL_OK, "init");
    EXPECT_FAIL(dl_adamw_step(&opt, &b, -1.0f), DL_ERR_ARG, "adamw", "step with another list");
    dl_adamw_free(&opt);
    EXPECT_FAIL(dl_adamw_init(&opt, &a, 1e-3f, 1.0f, 0.999f, 1e-8f, 0.0f), DL_ERR_ARG, "adamw", "beta1 = 1");
    dl_adamw_free(&opt);   /* safe after a failed init */
    dl_params_free(&a);
    dl_params_free(&b);
}

static void clip_case(const char *c)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, OPTIM_FIXTURE) == DL_OK, "%s", dl_error_message())) return;
    dl_param_list params;
    if (!make_params(&params)) { dl_st_close(&f); return; }
    char name[96];
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s.grad.p%d", c, i);
        load_into(&f, name, params.items[i]->grad.data, params.items[i]->grad.numel);
    }
    float max_norm, want_total;
    snprintf(name, sizeof name, "%s.max_norm", c);
    load_into(&f, name, &max_norm, 1);
    snprintf(name, sizeof name, "%s.total_norm", c);
    load_into(&f, name, &want_total, 1);
    float total = dl_grad_clip(&params, max_norm);
    CHECK(fabsf(total - want_total) <= 1e-6f * want_total, "%s: total norm %.8g, torch %.8g", c, total, want_total);
    for (int i = 0; i < 3; i++) {
        snprintf(name, sizeof name, "%s.clipped.p%d", c, i);
        check_against(&f, name, &params.items[i]->grad, 1e-6);
    }
    float after = dl_grad_clip(&params, 0.0f);   /* measure only */
    float expect = total > max_norm ? max_norm : total;
    CHECK(fabsf(after - expect) <= 1e-5f * expect, "%s: norm after clipping %g, want %g", c, after, expect);
    dl_params_free(&params);
    dl_st_close(&f);
}

TEST(optim, grad_clip_matches_torch)
{
    clip_case("clip_big");
    clip_case("clip_small");
}

TEST(optim, ema_formula_and_swap)
{
    dl_param_list params;
    if (!make_params(&params)) return;
    dl_test_rng r = {7};
    for (int i = 0; i < 3; i++)
        dl_test_fill(&r, params.items[i]->value.data, (size_t)params.items[i]->value.numel, -1, 1);
    float start = params.items[0]->value.data[4];
    dl_ema ema;
    CHECK(dl_ema_init(&ema, &params, 0.9f) == DL_OK, "init: %s", dl_error_message());
    CHECK(ema.shadow[0].data[4] == start, "shadow starts as a copy");
    /* Drive param 0, element 4 through known values; track the formula in double. */
    double want = start;
    const float vals[5] = {1.0f, -2.0f, 0.5f, 3.0f, 0.25f};
    for (int k = 0; k < 5; k++) {
        params.items[0]->value.data[4] = vals[k];
        float d = k < 3 ? 0.9f : dl_ema_warmup_decay(k, 0.999f);
        if (k < 3) CHECK(dl_ema_update(&ema, &params) == DL_OK, "update");
        else CHECK(dl_ema_update_decay(&ema, &params, d) == DL_OK, "update_decay");
        want = (double)d * want + (1.0 - (double)d) * vals[k];
    }
    CHECK(fabs(ema.shadow[0].data[4] - want) < 1e-6, "ema %.8g, formula %.8g", ema.shadow[0].data[4], want);
    /* Parameters that never change: the shadow stays equal to them. */
    CHECK(fabsf(ema.shadow[2].data[5] - params.items[2]->value.data[5]) < 1e-6f, "constant param");
    /* warmup formula */
    CHECK(fabsf(dl_ema_warmup_decay(0, 0.999f) - 0.1f) < 1e-7f, "warmup at 0: %g", dl_ema_warmup_decay(0, 0.999f));
    CHECK(fabsf(dl_ema_warmup_decay(90, 0.999f) - 0.91f) < 1e-6f, "warmup at 90");
    CHECK(dl_ema_warmup_decay(100000, 0.999f) == 0.999f, "warmup capped");
    /* swap twice = identity; once exchanges */
    float live = params.items[0]->value.data[4], shadow = ema.shadow[0].data[4];
    dl_ema_swap(&ema, &params);
    CHECK(params.items[0]->value.data[4] == shadow && ema.shadow[0].data[4] == live, "swap exchanges");
    dl_ema_swap(&ema, &params);
    CHECK(params.items[0]->value.data[4] == live && ema.shadow[0].data[4] == shadow, "swap back");
    dl_ema_free(&ema);
    dl_params_free(&params);
}

TEST(optim, lr_warmup_cosine_formula)
{
    const float base = 1e-3f, lo = 1e-5f;
    /* warmup: linear ramp reaching base at the last warmup step */
    CHECK(fabsf(dl_lr_warmup_cosine(0, 100, 1000, base, lo) - base / 100) < 1e-9f, "first warmup step");
    CHECK(fabsf(dl_lr_warmup_cosine(49, 100, 1000, base, lo) - base / 2) < 1e-9f, "mid warmup");
    CHECK(fabsf(dl_lr_warmup_cosine(99, 100, 1000, base, lo) - base) < 1e-9f, "end of warmup");
    CHECK(fabsf(dl_lr_warmup_cosine(100, 100, 1000, base, lo) - base) < 1e-9f, "cosine starts at base");
    /* half-way through the decay: the mean of base and min */
    CHECK(fabsf(dl_lr_warmup_cosine(550, 100, 1000, base, lo) - (base + lo) / 2) < 1e-9f, "half-way");
    double p = 0.25;   /* step 325 */
    float want = (float)(lo + (base - lo) * 0.5 * (1 + cos(M_PI * p)));
    CHECK(fabsf(dl_lr_warmup_cosine(325, 100, 1000, base, lo) - want) < 1e-9f, "quarter");
    CHECK(fabsf(dl_lr_warmup_cosine(1000, 100, 1000, base, lo) - lo) < 1e-9f, "end = min");
    CHECK(fabsf(dl_lr_warmup_cosine(5000, 100, 1000, base, lo) - lo) < 1e-9f, "after end = min");
    CHECK(fabsf(dl_lr_warmup_cosine(0, 0, 1000, base, lo) - base) < 1e-9f, "no warmup");
    /* monotone decay after warmup */
    float prev = 1;
    int mono = 1;
    for (int s = 100; s <= 1000; s += 10) {
        float lr = dl_lr_warmup_cosine(s, 100, 1000, base, lo);
        if (lr > prev) mono = 0;
        prev = lr;
    }
    CHECK(mono, "cosine decay is not monotone");
}
