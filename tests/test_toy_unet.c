/* test_toy_unet.c - the toy U-Net (core/toy_unet.c) against the same network
 * written with torch.nn modules (bench/toy_unet_torch.py): forward output,
 * the gradient of every parameter and of the input. The fixture was written
 * by tests/torch_refs/gen_toy_unet_refs.py (torch 1.13 CPU, float32); see
 * tests/fixtures/toy_unet/README.md.
 *
 *   make test K=toy_unet
 */
#include "testing.h"
#include "../core/safetensors.h"
#include "../core/toy_unet.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIXTURE "tests/fixtures/toy_unet/refs.safetensors"
#define FWD_TOL 1e-5     /* relative to max |eps| (at least 1) */
#define GRAD_TOL 1e-4    /* relative to max |grad| of each tensor (at least 1) */

typedef struct {
    dl_safetensors f;
    toy_unet_config cfg;
    dl_tensor x, r, eps;   /* inputs, torch's output */
    float t[2];
    int ids[2];
} fixture;

static int load(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    return CHECK(dl_st_load_tensor(f, name, t) == DL_OK, "%s", dl_error_message());
}

static void fixture_free(fixture *fx)
{
    dl_tensor_free(&fx->x); dl_tensor_free(&fx->r); dl_tensor_free(&fx->eps);
    dl_st_close(&fx->f);
}

static int fixture_open(fixture *fx)
{
    memset(fx, 0, sizeof *fx);
    if (!CHECK(dl_st_open(&fx->f, FIXTURE) == DL_OK, "%s", dl_error_message())) return 0;
    char json[1024];
    if (!CHECK(dl_st_metadata_get(&fx->f, "config", json, sizeof json), "no config in the fixture")) return 0;
    if (!CHECK(toy_unet_config_from_json(&fx->cfg, json) == DL_OK, "%s", dl_error_message())) return 0;
    dl_tensor t = {0}, ids = {0};
    int ok = load(&fx->f, "input.x", &fx->x) && load(&fx->f, "input.r", &fx->r) &&
             load(&fx->f, "output.eps", &fx->eps) && load(&fx->f, "input.t", &t) &&
             load(&fx->f, "input.class_ids", &ids);
    for (int b = 0; ok && b < 2; b++) {
        fx->t[b] = t.data[b];
        fx->ids[b] = (int)ids.data[b];
    }
    dl_tensor_free(&t);
    dl_tensor_free(&ids);
    return ok;
}

/* Copy every parameter of the net from the file (names must match exactly). */
static int load_weights(toy_unet *net, const dl_safetensors *f, const char *prefix)
{
    dl_param_list *ps = toy_unet_params(net);
    int ok = 1;
    for (int i = 0; i < ps->count; i++) {
        dl_param *p = ps->items[i];
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        dl_tensor w = {0};
        if (!CHECK(dl_st_load_tensor(f, name, &w) == DL_OK, "C parameter %s: %s", name, dl_error_message())) {
            ok = 0;
            continue;
        }
        char a[64], b[64];
        if (CHECK(w.numel == p->value.numel && w.ndim == p->value.ndim &&
                  !memcmp(w.shape, p->value.shape, sizeof w.shape),
                  "%s: C shape %s, torch shape %s", name, dl_shape_str(&p->value, a, sizeof a), dl_shape_str(&w, b, sizeof b)))
            dl_tensor_copy(&p->value, &w);
        else ok = 0;
        dl_tensor_free(&w);
    }
    return ok;
}

static toy_unet *net_from_fixture(fixture *fx, int max_batch)
{
    toy_unet *net = NULL;
    if (!CHECK(toy_unet_create(&net, &fx->cfg, max_batch, 1) == DL_OK, "%s", dl_error_message())) return NULL;
    char n[32];
    CHECK(dl_st_metadata_get(&fx->f, "params", n, sizeof n) && atoi(n) == toy_unet_params(net)->count,
          "torch has %s parameter tensors, C has %d", n, toy_unet_params(net)->count);
    if (!load_weights(net, &fx->f, "")) {
        toy_unet_free(net);
        return NULL;
    }
    return net;
}

/* max |a - b| / max(1, max |b|) */
static double rel_err(const dl_tensor *a, const dl_tensor *b)
{
    double d = 0, m = 1;
    for (int64_t i = 0; i < b->numel; i++) {
        d = fmax(d, fabs((double)a->data[i] - b->data[i]));
        m = fmax(m, fabs((double)b->data[i]));
    }
    return d / m;
}

static void check_grads(toy_unet *net, const dl_safetensors *f, float scale)
{
    dl_param_list *ps = toy_unet_params(net);
    int bad = 0;
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < ps->count; i++) {
        char name[256];
        snprintf(name, sizeof name, "grad.%s", ps->items[i]->name);
        dl_tensor want = {0};
        if (!load(f, name, &want)) continue;
        for (int64_t k = 0; k < want.numel; k++) want.data[k] *= scale;
        double e = rel_err(&ps->items[i]->grad, &want);
        if (e > worst) { worst = e; worst_name = ps->items[i]->name; }
        if (!CHECK_CLOSE_REL(name, &ps->items[i]->grad, &want, GRAD_TOL) && ++bad > 5) {
            dl_tensor_free(&want);
            break;
        }
        dl_tensor_free(&want);
    }
    printf("      %d parameter gradients vs torch: worst relative error %.2g (%s)\n", ps->count, worst, worst_name);
}

TEST(toy_unet, forward_and_gradients_match_torch)
{
    fixture fx;
    if (!fixture_open(&fx)) { fixture_free(&fx); return; }
    toy_unet *net = net_from_fixture(&fx, 2);
    if (!net) { fixture_free(&fx); return; }
    dl_tensor eps = {0}, dx = {0}, want_dx = {0};
    dl_tensor_alloc(&eps, 4, fx.x.shape);
    dl_tensor_alloc(&dx, 4, fx.x.shape);
    CHECK(toy_unet_forward(net, &fx.x, fx.t, fx.ids, &eps) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE_REL("eps", &eps, &fx.eps, FWD_TOL);
    printf("      eps vs torch: relative error %.2g\n", rel_err(&eps, &fx.eps));
    dl_params_zero_grad(toy_unet_params(net));
    CHECK(toy_unet_backward_ex(net, &fx.r, &dx) == DL_OK, "%s", dl_error_message());   /* dL/deps = r */
    check_grads(net, &fx.f, 1.0f);
    if (load(&fx.f, "grad.input.x", &want_dx)) CHECK_CLOSE_REL("grad of the input", &dx, &want_dx, GRAD_TOL);

    /* a second forward + backward without zeroing: every gradient doubles */
    CHECK(toy_unet_forward(net, &fx.x, fx.t, fx.ids, &eps) == DL_OK, "%s", dl_error_message());
    CHECK(toy_unet_backward(net, &fx.r) == DL_OK, "%s", dl_error_message());
    check_grads(net, &fx.f, 2.0f);
    dl_tensor_free(&eps); dl_tensor_free(&dx); dl_tensor_free(&want_dx);
    toy_unet_free(net);
    fixture_free(&fx);
}

/* A net planned for 5 images runs 2 (the torch batch) and 1 (the first image). */
TEST(toy_unet, batch_smaller_than_max_batch)
{
    fixture fx;
    if (!fixture_open(&fx)) { fixture_free(&fx); return; }
    toy_unet *net = net_from_fixture(&fx, 5);
    if (!net) { fixture_free(&fx); return; }
    dl_tensor eps = {0}, x1, eps1, want1, r1;
    dl_tensor_alloc(&eps, 4, fx.x.shape);
    CHECK(toy_unet_forward(net, &fx.x, fx.t, fx.ids, &eps) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE_REL("eps, batch 2 of max 5", &eps, &fx.eps, FWD_TOL);
    dl_params_zero_grad(toy_unet_params(net));
    CHECK(toy_unet_backward(net, &fx.r) == DL_OK, "%s", dl_error_message());
    check_grads(net, &fx.f, 1.0f);
    /* batch 1: the first image alone gives the first image's output */
    const int64_t *s1 = DL_SHAPE(1, fx.x.shape[1], fx.x.shape[2], fx.x.shape[3]);
    dl_tensor_view(&x1, fx.x.data, 4, s1);
    dl_tensor_view(&eps1, eps.data, 4, s1);
    dl_tensor_view(&want1, fx.eps.data, 4, s1);
    dl_tensor_view(&r1, fx.r.data, 4, s1);
    dl_tensor_fill(&eps, 0);
    CHECK(toy_unet_forward(net, &x1, fx.t, fx.ids, &eps1) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE_REL("eps, batch 1 of max 5", &eps1, &want1, FWD_TOL);
    CHECK(toy_unet_backward(net, &r1) == DL_OK, "%s", dl_error_message());
    EXPECT_FAIL(toy_unet_backward(net, &fx.r), DL_ERR_SHAPE, "deps", "backward with another batch than forward");
    dl_tensor_free(&eps);
    toy_unet_free(net);
    fixture_free(&fx);
}

TEST(toy_unet, bad_config_and_arguments)
{
    toy_unet_config good, c;
    CHECK(toy_unet_config_default(&good, "mnist") == DL_OK, "%s", dl_error_message());
    EXPECT_FAIL(toy_unet_config_default(&c, "cifar"), DL_ERR_ARG, "cifar", "unknown dataset");
    const char *bad[] = {"levels", "norm_groups", "heads", "image_size", "layers_per_block", "attention_levels"};
    toy_unet *net = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        c = good;
        switch (i) {
        case 0: c.levels = 5; break;
        case 1: c.norm_groups = 7; break;          /* 32 % 7 != 0 */
        case 2: c.heads = 5; break;                /* 64 % 5 != 0 at the attention level */
        case 3: c.image_size = 30; break;          /* 30 / 4 is not whole */
        case 4: c.layers_per_block = 0; break;
        case 5: c.attention_levels = 8; break;     /* bit 3, but 3 levels */
        }
        EXPECT_FAIL(toy_unet_create(&net, &c, 4, 0), DL_ERR_ARG, bad[i], bad[i]);
        CHECK(net == NULL, "a failed create leaves *out NULL");
    }
    EXPECT_FAIL(toy_unet_create(&net, &good, 0, 0), DL_ERR_ARG, "max_batch", "max_batch 0");

    /* JSON round trip, and broken JSON */
    char json[512];
    CHECK(toy_unet_config_to_json(&good, json, sizeof json) == DL_OK, "%s", dl_error_message());
    CHECK(toy_unet_config_from_json(&c, json) == DL_OK && !memcmp(&c, &good, sizeof c), "round trip of %s", json);
    EXPECT_FAIL(toy_unet_config_from_json(&c, "{\"levels\": 3}"), DL_ERR_FORMAT, "in_channels", "missing field");
    EXPECT_FAIL(toy_unet_config_from_json(&c, "not json"), DL_ERR_FORMAT, "JSON", "not JSON");
    EXPECT_FAIL(toy_unet_config_to_json(&good, json, 20), DL_ERR_ARG, "JSON", "small buffer");

    /* the default config builds; the forward rejects bad inputs */
    if (!CHECK(toy_unet_create(&net, &good, 2, 0) == DL_OK, "%s", dl_error_message())) return;
    toy_unet_config_to_json(&good, json, sizeof json);
    printf("      default mnist config: %s\n      %lld parameters in %d tensors, %.1f MiB of activations for batch 2\n",
           json, (long long)dl_params_numel(toy_unet_params(net)), toy_unet_params(net)->count,
           toy_unet_memory_bytes(net) / 1048576.0);
    CHECK(dl_params_find(toy_unet_params(net), "down_blocks.2.attentions.0.transformer_blocks.0.attn2.to_k.weight") &&
          dl_params_find(toy_unet_params(net), "up_blocks.0.resnets.1.conv_shortcut.weight") &&
          dl_params_find(toy_unet_params(net), "mid_block.attentions.0.proj_in.weight") &&
          !dl_params_find(toy_unet_params(net), "down_blocks.0.attentions.0.norm.weight"),
          "diffusers parameter names");
    dl_tensor x = {0}, eps = {0}, big = {0};
    dl_tensor_alloc(&x, 4, DL_SHAPE(2, 1, 32, 32));
    dl_tensor_alloc(&eps, 4, DL_SHAPE(2, 1, 32, 32));
    dl_tensor_alloc(&big, 4, DL_SHAPE(3, 1, 32, 32));
    float t[3] = {10, 500, 999};
    int ok_ids[3] = {0, 10, 3}, bad_ids[2] = {0, 11};
    EXPECT_FAIL(toy_unet_backward(net, &eps), DL_ERR_ARG, "forward", "backward before forward");
    EXPECT_FAIL(toy_unet_forward(net, &x, t, bad_ids, &eps), DL_ERR_ARG, "class id 11", "class id out of range");
    EXPECT_FAIL(toy_unet_forward(net, &big, t, ok_ids, &big), DL_ERR_SHAPE, "max_batch", "batch too large");
    EXPECT_FAIL(toy_unet_forward(net, &x, t, ok_ids, &big), DL_ERR_SHAPE, "eps_out", "eps_out shape");
    CHECK(toy_unet_forward(net, &x, t, ok_ids, &eps) == DL_OK, "%s", dl_error_message());
    int finite = 1;
    for (int64_t i = 0; i < eps.numel; i++) finite &= isfinite(eps.data[i]) != 0;
    CHECK(finite, "default net gives finite output");
    dl_tensor_free(&x); dl_tensor_free(&eps); dl_tensor_free(&big);
    toy_unet_free(net);
}

/* Both shipped configs run forward and backward; every gradient is finite,
 * and every parameter gets a nonzero one except the cross-attention's to_q,
 * to_k and the LayerNorm norm2 that feeds only to_q: a softmax over ONE key
 * is 1 whatever the scores, so their gradient is exactly zero (PyTorch's
 * too; see docs/02_unet_blocks.md, exercise 3). */
TEST(toy_unet, default_configs_forward_backward)
{
    const char *sets[2] = {"mnist", "emoji"};
    for (int k = 0; k < 2; k++) {
        toy_unet_config cfg;
        toy_unet *net = NULL;
        CHECK(toy_unet_config_default(&cfg, sets[k]) == DL_OK, "%s", dl_error_message());
        if (!CHECK(toy_unet_create(&net, &cfg, 2, 5) == DL_OK, "%s: %s", sets[k], dl_error_message())) continue;
        const int64_t *shape = DL_SHAPE(2, cfg.in_channels, cfg.image_size, cfg.image_size);
        dl_tensor x, eps;
        dl_test_rng r = {11};
        dl_test_rand_tensor(&x, &r, 4, shape);
        dl_tensor_alloc(&eps, 4, shape);
        float t[2] = {0, 999};
        int ids[2] = {cfg.num_classes - 1, cfg.num_classes};
        dl_params_zero_grad(toy_unet_params(net));
        CHECK(toy_unet_forward(net, &x, t, ids, &eps) == DL_OK, "%s", dl_error_message());
        CHECK(toy_unet_backward(net, &eps) == DL_OK, "%s", dl_error_message());   /* loss = |eps|^2 / 2 */
        dl_param_list *ps = toy_unet_params(net);
        int bad = 0;
        for (int i = 0; i < ps->count && bad < 5; i++) {
            const dl_tensor *g = &ps->items[i]->grad;
            double sum = 0;
            int finite = 1;
            for (int64_t j = 0; j < g->numel; j++) {
                finite &= isfinite(g->data[j]) != 0;
                sum += fabs(g->data[j]);
            }
            const char *nm = ps->items[i]->name;
            int qk = strstr(nm, "attn2.to_q") || strstr(nm, "attn2.to_k") || strstr(nm, "transformer_blocks.0.norm2.");
            bad += !CHECK(finite && (qk ? sum == 0 : sum > 0), "%s: %s gradient sum %g", sets[k], ps->items[i]->name, sum);
        }
        dl_tensor_free(&x);
        dl_tensor_free(&eps);
        toy_unet_free(net);
    }
}
