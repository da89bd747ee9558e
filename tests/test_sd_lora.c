/* test_sd_lora.c - LoRA files (core/sd_lora.h) against diffusers + PEFT on
 * the tiny model: tests/fixtures/tiny-lora/ (the same LoRA in kohya and in
 * diffusers/PEFT format) and tests/fixtures/tiny-sd-golden/lora.safetensors
 * (UNet and text-encoder outputs at scales 1.0 and 0.5, fused at 0.5, and a
 * whole DDIM run at 0.5). See both folders' README.md. */
#include "testing.h"
#include "../core/clip_text.h"
#include "../core/safetensors.h"
#include "../core/sd_lora.h"
#include "../core/sd_pipeline.h"
#include "../core/sd_unet.h"
#include "../core/sd_weights.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TINY_SD     "tests/fixtures/tiny-sd"
#define TINY_SINGLE "tests/fixtures/tiny-sd/tiny-sd.safetensors"
#define KOHYA       "tests/fixtures/tiny-lora/tiny_lora_kohya.safetensors"
#define PEFT        "tests/fixtures/tiny-lora/pytorch_lora_weights.safetensors"
#define GOLDEN      "tests/fixtures/tiny-sd-golden/lora.safetensors"
#define TOL         1e-4
#define PIPE_TOL    1e-3
#define PROMPT      "A majestic lion in a cosmic nebula, digital art, highly detailed"
#define NEGATIVE    "blurry, low quality, distorted"

/* ---- small helpers ------------------------------------------------------- */

static int load(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    dl_status s = dl_st_load_tensor(f, name, t);
    return CHECK(s == DL_OK, "golden tensor %s: %s", name, dl_error_message());
}

/* The golden inputs: sample [1,4,32,32], context [1,77,32], t, the prompt's ids. */
typedef struct {
    dl_safetensors g;
    dl_tensor sample, context;
    float t[1];
    int ids[77];
    int ok;
} inputs;

static void inputs_open(inputs *in)
{
    memset(in, 0, sizeof *in);
    if (!CHECK(dl_st_open(&in->g, GOLDEN) == DL_OK, "%s", dl_error_message())) return;
    int64_t t64[1], ids64[77];
    const dl_st_entry *et = dl_st_find(&in->g, "input.timestep"), *ei = dl_st_find(&in->g, "input.text_input_ids");
    in->ok = load(&in->g, "input.sample", &in->sample) && load(&in->g, "input.encoder_hidden_states", &in->context) &&
             CHECK(et && dl_st_numel(et) == 1 && dl_st_read_i64(&in->g, et, t64) == DL_OK, "input.timestep") &&
             CHECK(ei && dl_st_numel(ei) == 77 && dl_st_read_i64(&in->g, ei, ids64) == DL_OK, "input.text_input_ids");
    if (!in->ok) return;
    in->t[0] = (float)t64[0];
    for (int i = 0; i < 77; i++) in->ids[i] = (int)ids64[i];
    CHECK(in->t[0] == 500, "t = %g, want 500", in->t[0]);
}

static void inputs_close(inputs *in)
{
    dl_tensor_free(&in->sample);
    dl_tensor_free(&in->context);
    dl_st_close(&in->g);
}

/* UNet output for the golden inputs into out (allocated here). */
static int unet_run(sd_unet *u, const inputs *in, dl_tensor *out)
{
    if (!CHECK(dl_tensor_alloc(out, 4, in->sample.shape) == DL_OK, "alloc")) return 0;
    return CHECK(sd_unet_forward(u, out, &in->sample, in->t, &in->context, NULL) == DL_OK, "unet: %s",
                 dl_error_message());
}

/* Text encoder (loaded now, so it sees the current patch) last_hidden_state. */
static int text_run(sd_weights *w, const inputs *in, dl_tensor *out)
{
    clip_text_model te;
    if (!CHECK(clip_text_load(&te, w) == DL_OK, "clip_text_load: %s", dl_error_message())) return 0;
    int ok = CHECK(dl_tensor_alloc(out, 3, DL_SHAPE(1, 77, te.config.hidden_size)) == DL_OK, "alloc") &&
             CHECK(clip_text_forward(&te, in->ids, 1, 77, out, NULL, NULL) == DL_OK, "text: %s", dl_error_message());
    clip_text_free(&te);
    return ok;
}

/* Compare with golden tensor `name`, print the max diff, return it. */
static double compare(const inputs *in, const dl_tensor *got, const char *name, double tol)
{
    dl_tensor want;
    if (!load(&in->g, name, &want)) return -1;
    double d = -1;
    if (CHECK(want.numel == got->numel, "%s: %lld values, want %lld", name, (long long)got->numel,
              (long long)want.numel)) {
        d = dl_max_abs_diff(got->data, want.data, (size_t)want.numel);
        printf("    %-38s max abs diff %.3g\n", name, d);
        CHECK_CLOSE(name, got->data, want.data, (size_t)want.numel, tol);
    }
    dl_tensor_free(&want);
    return d;
}

static int bits_equal(const dl_tensor *a, const dl_tensor *b)
{
    return a->numel == b->numel && memcmp(a->data, b->data, (size_t)a->numel * sizeof(float)) == 0;
}

static int find_unmatched(const sd_lora *l, const char *key)
{
    for (int i = 0; i < l->n_unmatched; i++)
        if (strcmp(l->unmatched[i].key, key) == 0) return i;
    return -1;
}

/* ---- pieces ---------------------------------------------------------------- */

TEST(lora, parse_spec)
{
    char path[256];
    float s = -1;
    CHECK(sd_lora_parse_spec("style.safetensors", path, sizeof path, &s) == DL_OK && strcmp(path, "style.safetensors") == 0 &&
              s == 1.0f, "no scale -> 1.0 (%s %g)", path, s);
    CHECK(sd_lora_parse_spec("loras/a.safetensors:0.5", path, sizeof path, &s) == DL_OK &&
              strcmp(path, "loras/a.safetensors") == 0 && s == 0.5f, "FILE:0.5 (%s %g)", path, s);
    CHECK(sd_lora_parse_spec("a.safetensors:-1.25", path, sizeof path, &s) == DL_OK && s == -1.25f, "negative scale");
    CHECK(sd_lora_parse_spec("odd:dir/a.safetensors", path, sizeof path, &s) == DL_OK &&
              strcmp(path, "odd:dir/a.safetensors") == 0 && s == 1.0f, "':' inside a folder name is part of the path");
    EXPECT_FAIL(sd_lora_parse_spec("a.safetensors:strong", path, sizeof path, &s), DL_ERR_ARG, "a.safetensors:strong",
                "a scale that is not a number");
    EXPECT_FAIL(sd_lora_parse_spec("a.safetensors:", path, sizeof path, &s), DL_ERR_ARG, "scale", "empty scale");
    EXPECT_FAIL(sd_lora_parse_spec(":0.5", path, sizeof path, &s), DL_ERR_ARG, "no file name", "no file");
}

TEST(lora, delta_fast_matches_ref)
{
    dl_test_rng r = {.s = 61};
    const int sizes[][3] = {{1, 1, 1}, {3, 7, 2}, {7, 3, 5}, {64, 64, 4}, {37, 32, 4}, {13, 576, 3}, {65, 9, 16}};
    for (size_t c = 0; c < sizeof sizes / sizeof sizes[0]; c++) {
        int out = sizes[c][0], in = sizes[c][1], rank = sizes[c][2];
        float *w1 = malloc(sizeof(float) * out * in), *w2 = malloc(sizeof(float) * out * in);
        float *up = malloc(sizeof(float) * out * rank), *down = malloc(sizeof(float) * rank * in);
        if (CHECK(w1 && w2 && up && down, "malloc")) {
            dl_test_fill(&r, w1, (size_t)out * in, -1, 1);
            memcpy(w2, w1, sizeof(float) * out * in);
            dl_test_fill(&r, up, (size_t)out * rank, -1, 1);
            dl_test_fill(&r, down, (size_t)rank * in, -1, 1);
            /* a plain double-precision reference of one element */
            double want00 = w1[0];
            for (int k = 0; k < rank; k++) want00 += 0.375 * (double)up[k] * down[(size_t)k * in];
            sd_lora_add_delta_ref(w1, up, down, out, in, rank, 0.375f);
            sd_lora_add_delta(w2, up, down, out, in, rank, 0.375f);
            CHECK(fabs(w1[0] - want00) < 1e-5, "[%d %d %d] ref W[0,0] %g, want %g", out, in, rank, w1[0], want00);
            char what[64];
            snprintf(what, sizeof what, "delta [%d x %d] rank %d", out, in, rank);
            CHECK_CLOSE(what, w2, w1, (size_t)out * in, 1e-5);
        }
        free(w1); free(w2); free(up); free(down);
    }
}

/* Both formats resolve to the same 90 weights with the same products, also
 * against the single-file checkpoint (LDM names inside). */
TEST(lora, kohya_and_peft_resolve_the_same)
{
    sd_weights w, ws;
    if (!CHECK(sd_weights_open(&w, TINY_SD) == DL_OK, "%s", dl_error_message())) return;
    if (!CHECK(sd_weights_open(&ws, TINY_SINGLE) == DL_OK, "%s", dl_error_message())) {
        sd_weights_close(&w);
        return;
    }
    sd_lora k, p, ks;
    int ok = CHECK(sd_lora_load(&k, KOHYA, &w, 1.0f) == DL_OK, "kohya: %s", dl_error_message());
    ok = CHECK(sd_lora_load(&p, PEFT, &w, 1.0f) == DL_OK, "peft: %s", dl_error_message()) && ok;
    ok = CHECK(sd_lora_load(&ks, KOHYA, &ws, 1.0f) == DL_OK, "kohya on the single file: %s", dl_error_message()) && ok;
    if (ok) {
        printf("    kohya: %d keys -> %d modules, %d unmatched; peft: %d keys -> %d modules, %d unmatched\n", k.n_keys,
               k.n_modules, k.n_unmatched, p.n_keys, p.n_modules, p.n_unmatched);
        CHECK(k.format == SD_LORA_KOHYA && p.format == SD_LORA_DIFFUSERS, "formats %d %d", k.format, p.format);
        CHECK(k.n_keys == 270 && p.n_keys == 180, "keys %d %d", k.n_keys, p.n_keys);
        CHECK(k.n_modules == 90 && p.n_modules == 90 && ks.n_modules == 90, "modules %d %d %d", k.n_modules,
              p.n_modules, ks.n_modules);
        CHECK(k.n_unmatched == 0 && p.n_unmatched == 0 && ks.n_unmatched == 0, "unmatched %d %d %d (first: %s: %s)",
              k.n_unmatched, p.n_unmatched, ks.n_unmatched, k.n_unmatched ? k.unmatched[0].key : "",
              k.n_unmatched ? k.unmatched[0].reason : "");
        int first;
        CHECK(sd_lora_find(&k, SD_PART_UNET, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0.weight",
                           &first) == 1, "kohya to_out_0 -> to_out.0");
        CHECK(sd_lora_find(&k, SD_PART_UNET, "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
                           &first) == 1 && k.modules[first].out == 512 && k.modules[first].in == 64 &&
                  k.modules[first].alpha == 2.0f && k.modules[first].rank == 4,
              "kohya ff_net_0_proj -> ff.net.0.proj, [512, 64], alpha 2, rank 4");
        CHECK(sd_lora_find(&k, SD_PART_UNET, "up_blocks.0.attentions.0.proj_in.weight", &first) == 1 &&
                  k.modules[first].in == 64, "1x1 conv proj_in");
        CHECK(sd_lora_find(&k, SD_PART_TEXT_ENCODER, "text_model.encoder.layers.0.self_attn.q_proj.weight", &first) == 1 &&
                  k.modules[first].alpha == 8.0f, "text encoder q_proj, alpha 8");
        CHECK(sd_lora_find(&p, SD_PART_TEXT_ENCODER, "text_model.encoder.layers.0.mlp.fc1.weight", &first) == 1 &&
                  p.modules[first].alpha == 4.0f && p.modules[first].out == 37, "peft fc1: alpha = rank, out 37");
        /* same targets (both sorted), same alpha/rank * up @ down */
        double worst = 0;
        int same = k.n_modules == p.n_modules && k.n_modules == ks.n_modules;
        for (int i = 0; same && i < k.n_modules; i++) {
            const sd_lora_module *a = &k.modules[i], *b = &p.modules[i], *c = &ks.modules[i];
            same = a->part == b->part && strcmp(a->target, b->target) == 0 && a->part == c->part &&
                   strcmp(a->target, c->target) == 0 && a->out == b->out && a->in == b->in && a->rank == b->rank;
            if (!same) break;
            float *da = calloc((size_t)(a->out * a->in), sizeof(float)), *db = calloc((size_t)(a->out * a->in), sizeof(float));
            if (da && db) {
                sd_lora_add_delta(da, a->up, a->down, a->out, a->in, a->rank, a->alpha / a->rank);
                sd_lora_add_delta(db, b->up, b->down, b->out, b->in, b->rank, b->alpha / b->rank);
                double d = dl_max_abs_diff(da, db, (size_t)(a->out * a->in));
                if (d > worst) worst = d;
            }
            free(da); free(db);
        }
        CHECK(same, "kohya, peft and single-file kohya resolve to the same weights");
        printf("    kohya vs peft deltas: max abs diff %.3g\n", worst);
        CHECK(worst <= 1e-6, "kohya vs peft deltas differ by %g", worst);
    }
    sd_lora_free(&k); sd_lora_free(&p); sd_lora_free(&ks);
    sd_weights_close(&ws);
    sd_weights_close(&w);
}

/* Conv LoRA (LoCon): down [rank, C, 3, 3], up [out, rank, 1, 1] on a 3x3
 * conv, and a 1x1 conv_shortcut ('_' inside the module name itself). The
 * served weight must be W + s * alpha/rank * up @ down, reshaped. */
TEST(lora, conv_lora_reshapes)
{
    sd_weights w;
    if (!CHECK(sd_weights_open(&w, TINY_SD) == DL_OK, "%s", dl_error_message())) return;
    static const struct { const char *down, *up, *alpha, *target; int rank, out, c, k; float a; } cases[] = {
        {"lora_unet_down_blocks_1_resnets_0_conv1.lora_down.weight", "lora_unet_down_blocks_1_resnets_0_conv1.lora_up.weight",
         "lora_unet_down_blocks_1_resnets_0_conv1.alpha", "down_blocks.1.resnets.0.conv1.weight", 3, 64, 32, 3, 1.5f},
        {"lora_unet_down_blocks_1_resnets_0_conv_shortcut.lora_down.weight",
         "lora_unet_down_blocks_1_resnets_0_conv_shortcut.lora_up.weight", NULL,
         "down_blocks.1.resnets.0.conv_shortcut.weight", 2, 64, 32, 1, 2.0f},
        {"unet.up_blocks.1.resnets.0.conv1.lora_A.weight", "unet.up_blocks.1.resnets.0.conv1.lora_B.weight", NULL,
         "up_blocks.1.resnets.0.conv1.weight", 2, 32, 96, 3, 2.0f},
    };
    const int ncase = (int)(sizeof cases / sizeof cases[0]);
    dl_test_rng r = {.s = 77};
    dl_tensor down[3] = {{0}}, up[3] = {{0}};
    dl_st_writer wr;
    dl_st_writer_init(&wr);
    int ok = 1;
    for (int i = 0; i < ncase && ok; i++) {
        ok = dl_test_rand_tensor(&down[i], &r, 4, DL_SHAPE(cases[i].rank, cases[i].c, cases[i].k, cases[i].k)) &&
             dl_test_rand_tensor(&up[i], &r, 4, DL_SHAPE(cases[i].out, cases[i].rank, 1, 1)) &&
             CHECK(dl_st_writer_add(&wr, cases[i].down, &down[i]) == DL_OK && dl_st_writer_add(&wr, cases[i].up, &up[i]) == DL_OK,
                   "%s", dl_error_message());
        if (ok && cases[i].alpha)
            ok = CHECK(dl_st_writer_add_raw(&wr, cases[i].alpha, DL_DTYPE_F32, 0, NULL, &cases[i].a) == DL_OK, "alpha");
    }
    char path[600];
    snprintf(path, sizeof path, "%s/conv_lora.safetensors", dl_test_out_dir("lora"));
    ok = ok && CHECK(dl_st_writer_save(&wr, path) == DL_OK, "%s", dl_error_message());
    dl_st_writer_free(&wr);
    sd_lora_list L;
    sd_lora_list_init(&L);
    const float scale = 0.7f;
    char spec[640];
    snprintf(spec, sizeof spec, "%s:0.7", path);
    if (ok && CHECK(sd_lora_list_add(&L, spec, &w) == DL_OK, "%s", dl_error_message()) &&
        CHECK(L.items[0]->n_modules == ncase && L.items[0]->n_unmatched == 0, "%d modules, %d unmatched",
              L.items[0]->n_modules, L.items[0]->n_unmatched)) {
        for (int i = 0; i < ncase; i++) {
            const int64_t shape[4] = {cases[i].out, cases[i].c, cases[i].k, cases[i].k};
            dl_tensor orig, got;
            if (!CHECK(sd_weights_get(&w, SD_PART_UNET, cases[i].target, 4, shape, &orig) == DL_OK, "%s",
                       dl_error_message()))
                continue;
            CHECK(sd_lora_apply(&L, &w) == DL_OK, "apply");
            if (CHECK(sd_weights_get(&w, SD_PART_UNET, cases[i].target, 4, shape, &got) == DL_OK, "%s",
                      dl_error_message())) {
                /* want[o, c, y, x] = W + scale * alpha/rank * sum_r up[o, r] down[r, c, y, x] (double) */
                const int64_t per_out = orig.numel / cases[i].out;
                float *want = malloc((size_t)orig.numel * sizeof(float));
                if (CHECK(want != NULL, "malloc")) {
                    const double coef = (double)scale * cases[i].a / cases[i].rank;
                    for (int64_t o = 0; o < cases[i].out; o++)
                        for (int64_t j = 0; j < per_out; j++) {
                            double acc = 0;
                            for (int k = 0; k < cases[i].rank; k++)
                                acc += (double)up[i].data[o * cases[i].rank + k] * down[i].data[k * per_out + j];
                            want[o * per_out + j] = (float)(orig.data[o * per_out + j] + coef * acc);
                        }
                    CHECK_CLOSE(cases[i].target, got.data, want, (size_t)orig.numel, 1e-5);
                    free(want);
                }
                dl_tensor_free(&got);
            }
            sd_lora_remove(&L);
            dl_tensor_free(&orig);
        }
    }
    for (int i = 0; i < ncase; i++) { dl_tensor_free(&down[i]); dl_tensor_free(&up[i]); }
    sd_lora_list_free(&L);
    sd_weights_close(&w);
}

/* ---- against diffusers ---------------------------------------------------- */

/* On the fly: scale 1.0, then 0.5 (no reload), then removed. */
TEST(lora, unet_on_the_fly_matches_diffusers)
{
    sd_weights w; sd_unet u; inputs in;
    inputs_open(&in);
    if (!in.ok || !CHECK(sd_weights_open(&w, TINY_SD) == DL_OK, "%s", dl_error_message())) { inputs_close(&in); return; }
    if (!CHECK(sd_unet_init(&u, &w) == DL_OK, "%s", dl_error_message())) { sd_weights_close(&w); inputs_close(&in); return; }
    sd_lora_list L;
    sd_lora_list_init(&L);
    dl_tensor base = {0}, y = {0}, y05 = {0}, after = {0}, yp = {0};
    if (unet_run(&u, &in, &base) && CHECK(sd_lora_list_add(&L, KOHYA ":1.0", &w) == DL_OK, "%s", dl_error_message()) &&
        CHECK(sd_lora_apply(&L, &w) == DL_OK, "%s", dl_error_message())) {
        compare(&in, &base, "unet_out.no_lora", TOL);
        if (unet_run(&u, &in, &y)) {
            compare(&in, &y, "unet_out.lora_scale_1.0", TOL);
            dl_tensor_free(&y);
        }
        L.items[0]->scale = 0.5f;   /* takes effect at the next forward */
        if (unet_run(&u, &in, &y05)) compare(&in, &y05, "unet_out.lora_scale_0.5", TOL);
        /* the PEFT file instead: the same outputs */
        sd_lora_list P;
        sd_lora_list_init(&P);
        if (CHECK(sd_lora_list_add(&P, PEFT ":0.5", &w) == DL_OK, "%s", dl_error_message()) &&
            CHECK(sd_lora_apply(&P, &w) == DL_OK, "%s", dl_error_message()) && unet_run(&u, &in, &yp) && y05.data) {
            double d = dl_max_abs_diff(y05.data, yp.data, (size_t)yp.numel);
            printf("    %-38s max abs diff %.3g\n", "unet kohya vs peft (0.5)", d);
            CHECK(d <= 1e-6, "kohya vs peft UNet outputs differ by %g", d);
        }
        sd_lora_list_free(&P);   /* removes its patch */
        L.items[0]->scale = 0.5f;
        /* two LoRAs at 0.5 each = one at 1.0 */
        sd_lora_remove(&L);
        if (CHECK(sd_lora_list_add(&L, PEFT ":0.5", &w) == DL_OK, "%s", dl_error_message()) &&
            CHECK(L.count == 2, "2 LoRAs") && sd_lora_apply(&L, &w) == DL_OK && unet_run(&u, &in, &y)) {
            compare(&in, &y, "unet_out.lora_scale_1.0", TOL);
            dl_tensor_free(&y);
        }
        sd_lora_remove(&L);
        if (unet_run(&u, &in, &after)) {
            CHECK(bits_equal(&after, &base), "after removing the LoRA the UNet output is bit-identical to before");
            compare(&in, &after, "unet_out.no_lora", TOL);
        }
    }
    dl_tensor_free(&base); dl_tensor_free(&after); dl_tensor_free(&yp); dl_tensor_free(&y05);
    sd_lora_list_free(&L);
    sd_unet_free(&u);
    sd_weights_close(&w);
    inputs_close(&in);
}

TEST(lora, text_encoder_matches_diffusers)
{
    sd_weights w; inputs in;
    inputs_open(&in);
    if (!in.ok || !CHECK(sd_weights_open(&w, TINY_SD) == DL_OK, "%s", dl_error_message())) { inputs_close(&in); return; }
    sd_lora_list L, P;
    sd_lora_list_init(&L);
    sd_lora_list_init(&P);
    dl_tensor y = {0}, yp = {0};
    if (text_run(&w, &in, &y)) compare(&in, &y, "text_last_hidden_state.no_lora", TOL);
    dl_tensor_free(&y);
    if (CHECK(sd_lora_list_add(&L, KOHYA, &w) == DL_OK, "%s", dl_error_message()) &&
        CHECK(sd_lora_list_add(&P, PEFT, &w) == DL_OK, "%s", dl_error_message())) {
        const float scales[2] = {1.0f, 0.5f};
        const char *names[2] = {"text_last_hidden_state.lora_scale_1.0", "text_last_hidden_state.lora_scale_0.5"};
        for (int s = 0; s < 2; s++) {
            L.items[0]->scale = P.items[0]->scale = scales[s];
            sd_lora_apply(&L, &w);
            if (text_run(&w, &in, &y)) compare(&in, &y, names[s], TOL);   /* reloaded: sees the new scale */
            sd_lora_apply(&P, &w);
            if (text_run(&w, &in, &yp) && y.data) {
                double d = dl_max_abs_diff(y.data, yp.data, (size_t)y.numel);
                printf("    %-38s max abs diff %.3g\n", "text kohya vs peft", d);
                CHECK(d <= 1e-6, "kohya vs peft text outputs differ by %g", d);
            }
            dl_tensor_free(&y); dl_tensor_free(&yp);
        }
        sd_lora_remove(&P);
        if (text_run(&w, &in, &y)) compare(&in, &y, "text_last_hidden_state.no_lora", TOL);
        dl_tensor_free(&y);
    }
    sd_lora_list_free(&L);
    sd_lora_list_free(&P);
    sd_weights_close(&w);
    inputs_close(&in);
}

/* Merged at 0.5, then un-merged: the checkpoint's weights bit for bit. */
TEST(lora, fused_matches_diffusers_and_unfuses_exactly)
{
    sd_weights w; sd_unet u; inputs in;
    inputs_open(&in);
    if (!in.ok || !CHECK(sd_weights_open(&w, TINY_SD) == DL_OK, "%s", dl_error_message())) { inputs_close(&in); return; }
    if (!CHECK(sd_unet_init(&u, &w) == DL_OK, "%s", dl_error_message())) { sd_weights_close(&w); inputs_close(&in); return; }
    sd_lora_list L;
    sd_lora_list_init(&L);
    dl_tensor base = {0}, y = {0}, after = {0};
    if (unet_run(&u, &in, &base) && CHECK(sd_lora_list_add(&L, KOHYA ":0.5", &w) == DL_OK, "%s", dl_error_message()) &&
        CHECK(sd_lora_fuse(&L, &w) == DL_OK, "%s", dl_error_message())) {
        L.items[0]->scale = 2.0f;   /* merged weights keep the scale they were fused at */
        if (unet_run(&u, &in, &y)) compare(&in, &y, "unet_out.fused_lora_scale_0.5", TOL);
        dl_tensor_free(&y);
        /* a merged weight differs from the file, by exactly the merge */
        const sd_lora_module *m = &L.items[0]->modules[0];
        dl_tensor fw, orig;
        int nd; int64_t sh[8];
        if (CHECK(sd_weights_shape(&w, m->part, m->target, &nd, sh) == DL_OK, "%s", dl_error_message()) &&
            CHECK(sd_weights_get(&w, m->part, m->target, nd, sh, &fw) == DL_OK, "%s", dl_error_message())) {
            /* fw is a view of the merged copy, which unfuse frees: keep our own copy */
            dl_tensor view = fw;
            if (CHECK(dl_tensor_alloc(&fw, view.ndim, view.shape) == DL_OK, "alloc"))
                memcpy(fw.data, view.data, (size_t)view.numel * sizeof(float));
            dl_tensor_free(&view);
            sd_lora_unfuse(&L);
            if (CHECK(sd_weights_get(&w, m->part, m->target, nd, sh, &orig) == DL_OK, "%s", dl_error_message())) {
                CHECK(!bits_equal(&fw, &orig), "fused weight %s differs from the original", m->target);
                dl_tensor_free(&orig);
            }
            dl_tensor_free(&fw);
        }
        sd_lora_unfuse(&L);
        /* every touched weight equals the file's bytes again */
        dl_safetensors f;
        if (CHECK(dl_st_open(&f, sd_weights_file(&w, SD_PART_UNET)) == DL_OK, "%s", dl_error_message())) {
            int exact = 0, n = 0;
            for (int i = 0; i < L.items[0]->n_modules; i++) {
                const sd_lora_module *mi = &L.items[0]->modules[i];
                if (mi->part != SD_PART_UNET) continue;
                const dl_st_entry *e = dl_st_find(&f, mi->target);
                dl_tensor t;
                n++;
                if (e && sd_weights_get(&w, mi->part, mi->target, e->ndim, e->shape, &t) == DL_OK) {
                    exact += (size_t)t.numel * sizeof(float) == e->nbytes && memcmp(t.data, f.data + e->offset, e->nbytes) == 0;
                    dl_tensor_free(&t);
                }
            }
            printf("    unfused: %d of %d LoRA-touched UNet weights bit-identical to the file\n", exact, n);
            CHECK(n == 72 && exact == n, "%d of %d weights restored exactly", exact, n);
            dl_st_close(&f);
        }
        if (unet_run(&u, &in, &after)) CHECK(bits_equal(&after, &base), "UNet output after unfuse bit-identical to before");
    }
    dl_tensor_free(&base); dl_tensor_free(&after);
    sd_lora_list_free(&L);
    sd_unet_free(&u);
    sd_weights_close(&w);
    inputs_close(&in);
}

/* ---- keys that match nothing ---------------------------------------------- */

TEST(lora, unmatched_keys_are_reported)
{
    sd_weights w;
    if (!CHECK(sd_weights_open(&w, TINY_SD) == DL_OK, "%s", dl_error_message())) return;
    /* a file with one good module (copied from the kohya fixture) and bad keys of every kind */
    const char *good = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q";
    dl_safetensors src;
    char path[600];
    snprintf(path, sizeof path, "%s/bogus_lora.safetensors", dl_test_out_dir("lora"));
    int ok = CHECK(dl_st_open(&src, KOHYA) == DL_OK, "%s", dl_error_message());
    dl_st_writer wr;
    dl_st_writer_init(&wr);
    dl_tensor down = {0}, up = {0}, alpha = {0}, wrong = {0};
    char name[256];
    if (ok) {
        snprintf(name, sizeof name, "%s.lora_down.weight", good); ok = load(&src, name, &down);
        snprintf(name, sizeof name, "%s.lora_up.weight", good); ok = ok && load(&src, name, &up);
        snprintf(name, sizeof name, "%s.alpha", good); ok = ok && load(&src, name, &alpha);
        ok = ok && CHECK(dl_tensor_alloc(&wrong, 2, DL_SHAPE(4, 48)) == DL_OK, "alloc");
    }
    const char *bad[] = {
        "lora_unet_bogus_block_0_to_q.lora_down.weight",         /* no such module          */
        "lora_unet_bogus_block_0_to_q.lora_up.weight",
        "lora_unet_bogus_block_0_to_q.alpha",
        "unet.down_blocks.7.attentions.0.proj_in.lora_A.weight", /* diffusers name, absent  */
        "unet.down_blocks.7.attentions.0.proj_in.lora_B.weight",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",   /* SDXL's second text encoder */
        "lora_unet_mid_block_attentions_0_proj_in.hada_w1_a",    /* LyCORIS (LoHa)          */
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k.lora_down.weight",   /* no up half */
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_v.lora_down.weight",   /* shapes      */
        "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_v.lora_up.weight",
    };
    const int nbad = (int)(sizeof bad / sizeof bad[0]);
    if (ok) {
        snprintf(name, sizeof name, "%s.lora_down.weight", good); dl_st_writer_add(&wr, name, &down);
        snprintf(name, sizeof name, "%s.lora_up.weight", good); dl_st_writer_add(&wr, name, &up);
        snprintf(name, sizeof name, "%s.alpha", good);
        dl_st_writer_add_raw(&wr, name, DL_DTYPE_F32, 0, NULL, alpha.data);
        for (int i = 0; i < nbad; i++) {
            if (strstr(bad[i], ".alpha")) dl_st_writer_add_raw(&wr, bad[i], DL_DTYPE_F32, 0, NULL, alpha.data);
            else if (strstr(bad[i], "attn1_to_v.lora_down")) dl_st_writer_add(&wr, bad[i], &wrong);   /* in 48 != 64 */
            else if (strstr(bad[i], "lora_up") || strstr(bad[i], "lora_B")) dl_st_writer_add(&wr, bad[i], &up);
            else dl_st_writer_add(&wr, bad[i], &down);
        }
        ok = CHECK(dl_st_writer_save(&wr, path) == DL_OK, "%s", dl_error_message());
    }
    dl_st_writer_free(&wr);
    sd_lora l;
    if (ok && CHECK(sd_lora_load(&l, path, &w, 1.0f) == DL_OK, "%s", dl_error_message())) {
        CHECK(l.n_modules == 1 && strcmp(l.modules[0].target,
                                         "mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight") == 0,
              "the good module still loads (%d modules)", l.n_modules);
        CHECK(l.n_unmatched == nbad, "%d unmatched, want %d", l.n_unmatched, nbad);
        for (int i = 0; i < nbad; i++) {
            int k = find_unmatched(&l, bad[i]);
            if (CHECK(k >= 0, "'%s' not reported", bad[i])) {
                CHECK(l.unmatched[k].reason[0] != 0, "'%s' has a reason", bad[i]);
                if (i == 0) printf("    e.g. %s: %s\n", l.unmatched[k].key, l.unmatched[k].reason);
            }
        }
        int k;
        if ((k = find_unmatched(&l, bad[8])) >= 0)
            CHECK(strstr(l.unmatched[k].reason, "shapes") != NULL, "shape reason: %s", l.unmatched[k].reason);
        if ((k = find_unmatched(&l, bad[7])) >= 0)
            CHECK(strstr(l.unmatched[k].reason, "lora_up") != NULL, "missing half: %s", l.unmatched[k].reason);
        sd_lora_list L;
        sd_lora_list_init(&L);
        CHECK(sd_lora_list_add_loaded(&L, &l) == DL_OK && sd_lora_list_unmatched(&L) == nbad, "list total");
        sd_lora_list_free(&L);
    }
    sd_lora_free(&l);
    /* a file with no LoRA tensor at all is an error, not a silent no-op */
    EXPECT_FAIL(sd_lora_load(&l, GOLDEN, &w, 1.0f), DL_ERR_FORMAT, "not a LoRA", "a golden file as a LoRA");
    EXPECT_FAIL(sd_lora_load(&l, "tests/fixtures/tiny-lora/missing.safetensors", &w, 1.0f), DL_ERR_IO, "missing.safetensors",
                "a missing file");
    dl_tensor_free(&down); dl_tensor_free(&up); dl_tensor_free(&alpha); dl_tensor_free(&wrong);
    if (ok) dl_st_close(&src);
    sd_weights_close(&w);
}

/* ---- the whole pipeline ---------------------------------------------------- */

/* txt2img, DDIM, 8 steps, LoRA at 0.5 on UNet and text encoder. */
TEST(lora, pipeline_ddim_scale_half)
{
    sd_pipeline p;
    if (!CHECK(sd_pipeline_load(&p, TINY_SD, NULL) == DL_OK, "%s", dl_error_message())) return;
    inputs in;
    inputs_open(&in);
    sd_lora_list L;
    sd_lora_list_init(&L);
    dl_tensor init = {0}, want_lat = {0}, want_img = {0};
    sd_run_result r;
    memset(&r, 0, sizeof r);
    if (in.ok && load(&in.g, "pipeline_ddim.init_latents", &init) &&
        load(&in.g, "pipeline_ddim.lora_scale_0.5.latents_final", &want_lat) &&
        load(&in.g, "pipeline_ddim.lora_scale_0.5.image", &want_img) &&
        CHECK(sd_lora_list_add(&L, KOHYA ":0.5", &p.weights) == DL_OK, "%s", dl_error_message()) &&
        CHECK(sd_lora_apply(&L, &p.weights) == DL_OK, "%s", dl_error_message())) {
        /* the text encoder holds its weights: load it again to see the LoRA */
        p.have_text = CHECK(sd_pipeline_reload_text_encoder(&p) == DL_OK, "%s", dl_error_message());
        sd_run_opts o = sd_run_opts_default();
        o.prompt = PROMPT;
        o.negative_prompt = NEGATIVE;
        o.steps = 8;
        o.guidance = 7.5f;
        o.scheduler = DL_SAMPLER_DDIM;
        o.seed = 1234;
        o.width = o.height = 64;
        o.init_latents = &init;
        if (p.have_text && CHECK(sd_pipeline_run(&p, &o, NULL, NULL, &r) == DL_OK, "%s", dl_error_message())) {
            compare(&in, &r.latents, "pipeline_ddim.lora_scale_0.5.latents_final", PIPE_TOL);
            if (CHECK(r.image.numel == want_img.numel, "image size")) {   /* ours NCHW, diffusers NHWC */
                const int64_t plane = r.image.shape[2] * r.image.shape[3];
                dl_tensor nhwc;
                if (CHECK(dl_tensor_alloc(&nhwc, 4, want_img.shape) == DL_OK, "alloc")) {
                    for (int64_t px = 0; px < plane; px++)
                        for (int ch = 0; ch < 3; ch++) nhwc.data[px * 3 + ch] = r.image.data[ch * plane + px];
                    compare(&in, &nhwc, "pipeline_ddim.lora_scale_0.5.image", PIPE_TOL);
                    dl_tensor_free(&nhwc);
                }
            }
        }
    }
    sd_run_result_free(&r);
    dl_tensor_free(&init); dl_tensor_free(&want_lat); dl_tensor_free(&want_img);
    sd_lora_list_free(&L);
    sd_pipeline_free(&p);
    inputs_close(&in);
}
