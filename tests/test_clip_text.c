/* test_clip_text.c - the CLIP text encoder against transformers'
 * CLIPTextModel (tests/fixtures/tiny-sd-golden/text_encoder.safetensors:
 * 4 prompts, input ids, last_hidden_state, pooler_output, hidden_states.0..3).
 *
 * Weights from the diffusers folder (fp32, the golden's own weights): within
 * 1e-4. Weights from the single file (fp16-rounded): the outputs move by
 * the rounding of the weights only, checked within 5e-3. */
#include "testing.h"
#include "../core/clip_text.h"
#include "../core/safetensors.h"
#include "../core/sd_weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TINY_DIR    "tests/fixtures/tiny-sd"
#define TINY_SINGLE "tests/fixtures/tiny-sd/tiny-sd.safetensors"
#define GOLDEN      "tests/fixtures/tiny-sd-golden/text_encoder.safetensors"

TEST(clip_text, config_from_json)
{
    clip_text_config c;
    CHECK(clip_text_config_from_json(&c, "{\"hidden_size\": 1024, \"num_attention_heads\": 16, "
                                         "\"hidden_act\": \"gelu\", \"num_hidden_layers\": 23}") == DL_OK,
          "%s", dl_error_message());
    CHECK(c.hidden_size == 1024 && c.num_attention_heads == 16 && c.hidden_act == CLIP_ACT_GELU &&
              c.num_hidden_layers == 23 && c.intermediate_size == 3072 && c.vocab_size == 49408,
          "SD 2.x-like config with SD 1.5 defaults for the rest");
    EXPECT_FAIL(clip_text_config_from_json(&c, "{\"hidden_act\": \"relu\"}"), DL_ERR_FORMAT, "relu",
                "unknown activation");
    EXPECT_FAIL(clip_text_config_from_json(&c, "{\"hidden_size\": 30, \"num_attention_heads\": 4}"), DL_ERR_FORMAT,
                "not divisible", "heads that do not divide the width");
    EXPECT_FAIL(clip_text_config_from_json(&c, "[1, 2"), DL_ERR_FORMAT, "JSON", "not JSON");
    EXPECT_FAIL(clip_text_config_from_json(&c, "{\"num_hidden_layers\": 2.5}"), DL_ERR_FORMAT, "num_hidden_layers",
                "a fractional size");
}

typedef struct {
    int ids[4 * 77];
    dl_tensor last, pooled, hidden[4];
    int ok;
} golden;

static void golden_load(golden *g)
{
    memset(g, 0, sizeof *g);
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, GOLDEN) == DL_OK, "%s", dl_error_message())) return;
    const dl_st_entry *e = dl_st_find(&f, "input_ids");
    int64_t ids64[4 * 77];
    int ok = CHECK(e && dl_st_numel(e) == 4 * 77 && dl_st_read_i64(&f, e, ids64) == DL_OK, "input_ids [4, 77]");
    for (int i = 0; ok && i < 4 * 77; i++) g->ids[i] = (int)ids64[i];
    ok = ok && CHECK(dl_st_load_tensor(&f, "last_hidden_state", &g->last) == DL_OK, "%s", dl_error_message());
    ok = ok && CHECK(dl_st_load_tensor(&f, "pooler_output", &g->pooled) == DL_OK, "%s", dl_error_message());
    char name[64];
    for (int l = 0; ok && l < 4; l++) {
        snprintf(name, sizeof name, "hidden_states.%d", l);
        ok = CHECK(dl_st_load_tensor(&f, name, &g->hidden[l]) == DL_OK, "%s", dl_error_message());
    }
    dl_st_close(&f);
    g->ok = ok;
}

static void golden_free(golden *g)
{
    dl_tensor_free(&g->last);
    dl_tensor_free(&g->pooled);
    for (int l = 0; l < 4; l++) dl_tensor_free(&g->hidden[l]);
}

/* Run the encoder of `model` on the golden ids; compare every output. */
static void run_against_golden(const char *label, sd_weights *w, double atol)
{
    golden g;
    golden_load(&g);
    clip_text_model te;
    if (!g.ok || !CHECK(clip_text_load(&te, w) == DL_OK, "%s load: %s", label, dl_error_message())) {
        golden_free(&g);
        return;
    }
    CHECK(te.config.hidden_size == 32 && te.config.num_hidden_layers == 3 && te.config.num_attention_heads == 4 &&
              te.config.intermediate_size == 37 && te.config.hidden_act == CLIP_ACT_QUICK_GELU,
          "%s: tiny config", label);
    dl_tensor last, pooled, hidden[4];
    CHECK(dl_tensor_alloc(&last, 3, DL_SHAPE(4, 77, 32)) == DL_OK, "alloc");
    CHECK(dl_tensor_alloc(&pooled, 2, DL_SHAPE(4, 32)) == DL_OK, "alloc");
    for (int l = 0; l < 4; l++) CHECK(dl_tensor_alloc(&hidden[l], 3, DL_SHAPE(4, 77, 32)) == DL_OK, "alloc");

    if (CHECK(clip_text_forward(&te, g.ids, 4, 77, &last, &pooled, hidden) == DL_OK, "%s forward: %s", label,
              dl_error_message())) {
        double worst = 0;
        char what[96];
        for (int l = 0; l < 4; l++) {
            double d = dl_max_abs_diff(hidden[l].data, g.hidden[l].data, (size_t)last.numel);
            if (d > worst) worst = d;
            snprintf(what, sizeof what, "%s hidden_states.%d", label, l);
            CHECK_CLOSE(what, hidden[l].data, g.hidden[l].data, (size_t)last.numel, atol);
        }
        double d_last = dl_max_abs_diff(last.data, g.last.data, (size_t)last.numel);
        double d_pool = dl_max_abs_diff(pooled.data, g.pooled.data, (size_t)pooled.numel);
        snprintf(what, sizeof what, "%s last_hidden_state", label);
        CHECK_CLOSE(what, last.data, g.last.data, (size_t)last.numel, atol);
        snprintf(what, sizeof what, "%s pooler_output", label);
        CHECK_CLOSE(what, pooled.data, g.pooled.data, (size_t)pooled.numel, atol);
        printf("    clip_text (%s): max abs diff last_hidden_state %.2e, pooler_output %.2e, hidden_states %.2e\n",
               label, d_last, d_pool, worst);

        /* The outputs really depend on the prompt and are not trivially
         * small (so the comparison above means something). */
        double between = dl_max_abs_diff(last.data, last.data + 77 * 32, 77 * 32);
        CHECK(between > 0.1, "%s: prompts 0 and 1 give nearly the same output (%.3g)", label, between);

        /* Batch independence: prompt 2 alone gives the same rows. */
        dl_tensor one;
        if (CHECK(dl_tensor_alloc(&one, 3, DL_SHAPE(1, 77, 32)) == DL_OK, "alloc") &&
            CHECK(clip_text_forward(&te, g.ids + 2 * 77, 1, 77, &one, NULL, NULL) == DL_OK, "%s",
                  dl_error_message()))
            CHECK_CLOSE("batch of 1 vs row 2 of the batch", one.data, last.data + 2 * 77 * 32, 77 * 32, 1e-5);
        dl_tensor_free(&one);
    }
    dl_tensor_free(&last);
    dl_tensor_free(&pooled);
    for (int l = 0; l < 4; l++) dl_tensor_free(&hidden[l]);
    clip_text_free(&te);
    golden_free(&g);
}

TEST(clip_text, matches_transformers_folder)
{
    sd_weights w;
    if (!CHECK(sd_weights_open(&w, TINY_DIR) == DL_OK, "%s", dl_error_message())) return;
    run_against_golden("folder", &w, 1e-4);
    sd_weights_close(&w);
}

TEST(clip_text, matches_transformers_single_file)
{
    sd_weights w;
    if (!CHECK(sd_weights_open(&w, TINY_SINGLE) == DL_OK, "%s", dl_error_message())) return;
    /* The tiny encoder's 8-wide heads cannot be guessed from its weights. */
    clip_text_model te;
    EXPECT_FAIL(clip_text_load(&te, &w), DL_ERR_FORMAT, "attention heads", "single file without config");
    CHECK(sd_weights_set_config_dir(&w, TINY_DIR) == DL_OK, "%s", dl_error_message());
    run_against_golden("single file, fp16 weights", &w, 5e-3);
    sd_weights_close(&w);
}

TEST(clip_text, argument_errors)
{
    sd_weights w;
    if (!CHECK(sd_weights_open(&w, TINY_DIR) == DL_OK, "%s", dl_error_message())) return;
    clip_text_model te;
    if (!CHECK(clip_text_load(&te, &w) == DL_OK, "%s", dl_error_message())) { sd_weights_close(&w); return; }
    int ids[78] = {49406, 320, 49407};
    dl_tensor out, bad;
    dl_tensor_alloc(&out, 3, DL_SHAPE(1, 77, 32));
    dl_tensor_alloc(&bad, 3, DL_SHAPE(1, 77, 31));
    ids[5] = 49408;
    EXPECT_FAIL(clip_text_forward(&te, ids, 1, 77, &out, NULL, NULL), DL_ERR_ARG, "49408", "id outside vocab");
    ids[5] = 49407;
    EXPECT_FAIL(clip_text_forward(&te, ids, 1, 78, &out, NULL, NULL), DL_ERR_ARG, "78", "too many tokens");
    EXPECT_FAIL(clip_text_forward(&te, ids, 1, 77, &bad, NULL, NULL), DL_ERR_SHAPE, "last_hidden_state",
                "wrong output shape");
    /* wrong config against the weights: the loader names the tensor and both shapes */
    clip_text_config c = te.config;
    c.intermediate_size = 40;
    clip_text_model te2;
    EXPECT_FAIL(clip_text_load_with_config(&te2, &w, &c), DL_ERR_SHAPE, "layers.0.mlp.fc1.weight",
                "config does not fit the weights");
    dl_tensor_free(&out);
    dl_tensor_free(&bad);
    clip_text_free(&te);
    sd_weights_close(&w);
}

/* SD 2.x single files keep OpenCLIP's names (cond_stage_model.model.*, one
 * stacked in_proj for q, k, v). The tiny encoder's fp32 weights written
 * under those names must give the golden outputs again. */
static int copy_as(dl_st_writer *wr, dl_safetensors *src, const char *from, const char *to)
{
    dl_tensor t;
    if (!CHECK(dl_st_load_tensor(src, from, &t) == DL_OK, "%s", dl_error_message())) return 0;
    int ok = CHECK(dl_st_writer_add(wr, to, &t) == DL_OK, "%s", dl_error_message());
    dl_tensor_free(&t);
    return ok;
}

TEST(clip_text, open_clip_names)
{
    dl_safetensors src;
    if (!CHECK(dl_st_open(&src, TINY_DIR "/text_encoder/model.safetensors") == DL_OK, "%s", dl_error_message()))
        return;
    dl_st_writer wr;
    dl_st_writer_init(&wr);
    const float one = 1.0f;
    dl_st_writer_add_raw(&wr, "model.diffusion_model.input_blocks.0.0.weight", DL_DTYPE_F32, 1, DL_SHAPE(1), &one);
#define OC "cond_stage_model.model."
    int ok = copy_as(&wr, &src, "text_model.embeddings.token_embedding.weight", OC "token_embedding.weight") &&
             copy_as(&wr, &src, "text_model.embeddings.position_embedding.weight", OC "positional_embedding") &&
             copy_as(&wr, &src, "text_model.final_layer_norm.weight", OC "ln_final.weight") &&
             copy_as(&wr, &src, "text_model.final_layer_norm.bias", OC "ln_final.bias");
    static const char *const renames[][2] = {
        {"layer_norm1", "ln_1"}, {"layer_norm2", "ln_2"}, {"self_attn.out_proj", "attn.out_proj"},
        {"mlp.fc1", "mlp.c_fc"}, {"mlp.fc2", "mlp.c_proj"},
    };
    char from[160], to[160];
    for (int l = 0; l < 3 && ok; l++) {
        for (int r = 0; r < 5 && ok; r++)
            for (int b = 0; b < 2 && ok; b++) {
                const char *wb = b ? "bias" : "weight";
                snprintf(from, sizeof from, "text_model.encoder.layers.%d.%s.%s", l, renames[r][0], wb);
                snprintf(to, sizeof to, OC "transformer.resblocks.%d.%s.%s", l, renames[r][1], wb);
                ok = copy_as(&wr, &src, from, to);
            }
        /* in_proj_weight [3*32, 32] = rows of q, then k, then v; in_proj_bias [96] likewise */
        dl_tensor stacked_w, stacked_b, part;
        dl_tensor_alloc(&stacked_w, 2, DL_SHAPE(96, 32));
        dl_tensor_alloc(&stacked_b, 1, DL_SHAPE(96));
        static const char qkv[3] = {'q', 'k', 'v'};
        for (int t = 0; t < 3 && ok; t++) {
            snprintf(from, sizeof from, "text_model.encoder.layers.%d.self_attn.%c_proj.weight", l, qkv[t]);
            ok = CHECK(dl_st_load_tensor(&src, from, &part) == DL_OK, "%s", dl_error_message());
            if (ok) memcpy(stacked_w.data + t * 32 * 32, part.data, 32 * 32 * sizeof(float));
            dl_tensor_free(&part);
            snprintf(from, sizeof from, "text_model.encoder.layers.%d.self_attn.%c_proj.bias", l, qkv[t]);
            ok = ok && CHECK(dl_st_load_tensor(&src, from, &part) == DL_OK, "%s", dl_error_message());
            if (ok) memcpy(stacked_b.data + t * 32, part.data, 32 * sizeof(float));
            dl_tensor_free(&part);
        }
        snprintf(to, sizeof to, OC "transformer.resblocks.%d.attn.in_proj_weight", l);
        ok = ok && dl_st_writer_add(&wr, to, &stacked_w) == DL_OK;
        snprintf(to, sizeof to, OC "transformer.resblocks.%d.attn.in_proj_bias", l);
        ok = ok && dl_st_writer_add(&wr, to, &stacked_b) == DL_OK;
        dl_tensor_free(&stacked_w);
        dl_tensor_free(&stacked_b);
    }
#undef OC
    dl_st_close(&src);
    char path[1024];
    snprintf(path, sizeof path, "%s/open_clip_names.safetensors", dl_test_out_dir("clip_text"));
    ok = ok && CHECK(dl_st_writer_save(&wr, path) == DL_OK, "%s", dl_error_message());
    dl_st_writer_free(&wr);
    if (!ok) return;

    sd_weights w;
    if (!CHECK(sd_weights_open(&w, path) == DL_OK, "%s", dl_error_message())) return;
    CHECK(sd_weights_set_config_dir(&w, TINY_DIR) == DL_OK, "%s", dl_error_message());
    run_against_golden("OpenCLIP-named single file", &w, 1e-4);
    sd_weights_close(&w);
}
