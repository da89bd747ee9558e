/* test_sd_unet.c - the Stable Diffusion UNet (core/sd_unet.h) against
 * diffusers' UNet2DConditionModel on the tiny checkpoint in
 * tests/fixtures/tiny-sd (goldens in tests/fixtures/tiny-sd-golden, see its
 * README.md): whole outputs, every per-block intermediate, ControlNet
 * residuals, the config reader and the error messages. */
#include "testing.h"
#include "../core/safetensors.h"
#include "../core/sd_unet.h"
#include "../core/sd_weights.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TINY_SD "tests/fixtures/tiny-sd"
#define GOLDEN_DIR "tests/fixtures/tiny-sd-golden/"
#define UNET_TOL 1e-4

/* A tensor from a golden file (owned; int64 tensors converted to float). */
static int load(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    dl_status s = dl_st_load_tensor(f, name, t);
    return CHECK(s == DL_OK, "golden tensor %s: %s", name, dl_error_message());
}

static int open_unet(sd_weights *w, sd_unet *u, const char *path)
{
    if (!CHECK(sd_weights_open(w, path) == DL_OK, "open %s: %s", path, dl_error_message())) return 0;
    if (!CHECK(sd_unet_init(u, w) == DL_OK, "sd_unet_init: %s", dl_error_message())) {
        sd_weights_close(w);
        return 0;
    }
    return 1;
}

/* Run the unet on golden inputs and compare with a golden output. */
static double run_case(sd_unet *u, const dl_safetensors *g, const char *sample, const char *ehs,
                       const float *t, const char *want, double tol)
{
    dl_tensor x, c, y, out;
    double d = -1;
    if (!load(g, sample, &x) || !load(g, ehs, &c) || !load(g, want, &y)) return d;
    if (CHECK(dl_tensor_alloc(&out, 4, y.shape) == DL_OK, "alloc")) {
        if (CHECK(sd_unet_forward(u, &out, &x, t, &c, NULL) == DL_OK, "%s: %s", want, dl_error_message())) {
            d = dl_max_abs_diff(out.data, y.data, (size_t)y.numel);
            printf("    %-22s max abs diff %.3g\n", want, d);
            CHECK_CLOSE(want, out.data, y.data, (size_t)y.numel, tol);
        }
        dl_tensor_free(&out);
    }
    dl_tensor_free(&x); dl_tensor_free(&c); dl_tensor_free(&y);
    return d;
}

TEST(sd_unet, outputs_match_diffusers)
{
    sd_weights w; sd_unet u; dl_safetensors g;
    if (!open_unet(&w, &u, TINY_SD)) return;
    if (CHECK(dl_st_open(&g, GOLDEN_DIR "unet.safetensors") == DL_OK, "%s", dl_error_message())) {
        const float t999[2] = {999, 999}, t1[2] = {1, 1};
        run_case(&u, &g, "sample_b1", "encoder_hidden_states_b1", t999, "out_b1_t999", UNET_TOL);
        run_case(&u, &g, "sample_b1", "encoder_hidden_states_b1", t1, "out_b1_t1", UNET_TOL);
        run_case(&u, &g, "sample_b2", "encoder_hidden_states_b2", t999, "out_b2_t999", UNET_TOL);
        run_case(&u, &g, "sample_b2", "encoder_hidden_states_b2", t1, "out_b2_t1", UNET_TOL);
        dl_tensor ts;
        if (load(&g, "timesteps_b2_mixed", &ts)) {
            const float mixed[2] = {ts.data[0], ts.data[1]};
            CHECK(mixed[0] == 999 && mixed[1] == 1, "mixed timesteps %g %g", mixed[0], mixed[1]);
            run_case(&u, &g, "sample_b2", "encoder_hidden_states_b2", mixed, "out_b2_mixed_t", UNET_TOL);
            dl_tensor_free(&ts);
        }
        dl_st_close(&g);
    }
    sd_unet_free(&u);
    sd_weights_close(&w);
}

/* ---- per-block intermediates --------------------------------------------------- */

#define MAX_SEEN 64
typedef struct {
    const dl_safetensors *golden;
    char   names[MAX_SEEN][96];
    double diffs[MAX_SEEN];
    int    n;
} block_log;

static void on_block(void *ctx, const char *name, const dl_tensor *t)
{
    block_log *log = ctx;
    const dl_st_entry *e = dl_st_find(log->golden, name);
    if (!e || log->n >= MAX_SEEN) return;                  /* not recorded by the reference */
    dl_tensor want;
    double d = 1e30;
    if (dl_st_load_tensor(log->golden, name, &want) == DL_OK) {
        if (want.numel == t->numel) d = dl_max_abs_diff(t->data, want.data, (size_t)t->numel);
        dl_tensor_free(&want);
    }
    snprintf(log->names[log->n], sizeof log->names[0], "%s", name);
    log->diffs[log->n++] = d;
}

TEST(sd_unet, every_block_matches_diffusers_t999)
{
    sd_weights w; sd_unet u; dl_safetensors g;
    if (!open_unet(&w, &u, TINY_SD)) return;
    if (!CHECK(dl_st_open(&g, GOLDEN_DIR "unet_blocks_t999.safetensors") == DL_OK, "%s", dl_error_message())) {
        sd_unet_free(&u); sd_weights_close(&w);
        return;
    }
    block_log log = {.golden = &g};
    u.hook = on_block;
    u.hook_ctx = &log;
    dl_tensor x, c, ts, y, out;
    if (load(&g, "input.sample", &x) && load(&g, "input.encoder_hidden_states", &c) &&
        load(&g, "input.timestep", &ts) && load(&g, "output", &y) &&
        CHECK(dl_tensor_alloc(&out, 4, y.shape) == DL_OK, "alloc")) {
        CHECK(ts.data[0] == 999, "timestep %g", ts.data[0]);
        if (CHECK(sd_unet_forward(&u, &out, &x, ts.data, &c, NULL) == DL_OK, "%s", dl_error_message())) {
            CHECK_CLOSE("output", out.data, y.data, (size_t)y.numel, UNET_TOL);
            /* every golden intermediate (all but the inputs) was seen and is close */
            for (int i = 0; i < g.count; i++) {
                const char *name = g.entries[i].name;
                if (!strncmp(name, "input.", 6) || !strcmp(name, "output")) continue;
                int k = 0;
                while (k < log.n && strcmp(log.names[k], name)) k++;
                if (!CHECK(k < log.n, "intermediate %s was never produced", name)) continue;
                printf("    %-58s %.3g\n", name, log.diffs[k]);
                CHECK(log.diffs[k] <= UNET_TOL, "%s: max abs diff %.3g > %g", name, log.diffs[k], UNET_TOL);
            }
        }
        dl_tensor_free(&out);
    }
    dl_tensor_free(&x); dl_tensor_free(&c); dl_tensor_free(&ts); dl_tensor_free(&y);
    dl_st_close(&g);
    sd_unet_free(&u);
    sd_weights_close(&w);
}

/* The fp16 single-file checkpoint (LDM names) gives the same outputs up to
 * the fp16 rounding of its weights. */
TEST(sd_unet, single_file_fp16_checkpoint)
{
    sd_weights w; sd_unet u; dl_safetensors g;
    if (!open_unet(&w, &u, TINY_SD "/tiny-sd.safetensors")) return;
    CHECK(u.cfg.levels == 4 && u.cfg.block_out_channels[0] == 320, "single file should use SD 1.5 defaults");
    /* the tiny model's architecture, as a caller with its config.json would set it */
    sd_unet_config cfg = u.cfg;
    cfg.levels = 2;
    cfg.block_out_channels[0] = 32; cfg.block_out_channels[1] = 64;
    cfg.down_attn[0] = 0; cfg.down_attn[1] = 1;
    cfg.up_attn[0] = 1; cfg.up_attn[1] = 0;
    cfg.cross_attention_dim = 32; cfg.norm_num_groups = 8; cfg.time_embed_dim = 128;
    sd_unet_free(&u);
    if (CHECK(sd_unet_init_config(&u, &w, &cfg) == DL_OK, "%s", dl_error_message()) &&
        CHECK(dl_st_open(&g, GOLDEN_DIR "unet.safetensors") == DL_OK, "%s", dl_error_message())) {
        const float t999[2] = {999, 999};
        run_case(&u, &g, "sample_b2", "encoder_hidden_states_b2", t999, "out_b2_t999", 5e-3);
        dl_st_close(&g);
    }
    sd_unet_free(&u);
    sd_weights_close(&w);
}

/* ControlNet's residuals (recorded in the ControlNet pipeline's first step)
 * added to the skips and the mid block give diffusers' output. */
TEST(sd_unet, controlnet_residuals)
{
    sd_weights w; sd_unet u; dl_safetensors g;
    if (!open_unet(&w, &u, TINY_SD)) return;
    if (!CHECK(dl_st_open(&g, GOLDEN_DIR "controlnet_ddim.safetensors") == DL_OK, "%s", dl_error_message())) {
        sd_unet_free(&u); sd_weights_close(&w);
        return;
    }
    int n = sd_unet_num_skips(&u.cfg);
    CHECK(n == 6, "tiny unet has %d skips, want 6", n);
    dl_tensor res[SD_UNET_MAX_SKIPS], mid, x, c, ts, with, without, out;
    memset(res, 0, sizeof res);
    sd_unet_residuals extra = {.n_down = n};
    int ok = load(&g, "step0.latent_model_input", &x) && load(&g, "step0.encoder_hidden_states", &c) &&
             load(&g, "step0.timestep", &ts) && load(&g, "step0.unet_out_with_residuals", &with) &&
             load(&g, "step0.unet_out_without_residuals", &without) &&
             load(&g, "step0.mid_block_res_sample", &mid);
    for (int k = 0; ok && k < n; k++) {
        char name[64];
        snprintf(name, sizeof name, "step0.down_block_res_samples.%d", k);
        ok = load(&g, name, &res[k]);
        extra.down[k] = &res[k];
        int ch, ds;
        sd_unet_skip_info(&u.cfg, k, &ch, &ds);
        if (ok) CHECK(res[k].shape[1] == ch && res[k].shape[2] == 32 / ds, "skip %d info: %d ch, /%d", k, ch, ds);
    }
    extra.mid = &mid;
    if (ok && CHECK(dl_tensor_alloc(&out, 4, with.shape) == DL_OK, "alloc")) {
        const float t[2] = {ts.data[0], ts.data[0]};
        if (CHECK(sd_unet_forward(&u, &out, &x, t, &c, &extra) == DL_OK, "%s", dl_error_message())) {
            printf("    with residuals: max abs diff %.3g\n", dl_max_abs_diff(out.data, with.data, (size_t)with.numel));
            CHECK_CLOSE("unet_out_with_residuals", out.data, with.data, (size_t)with.numel, UNET_TOL);
        }
        if (CHECK(sd_unet_forward(&u, &out, &x, t, &c, NULL) == DL_OK, "%s", dl_error_message()))
            CHECK_CLOSE("unet_out_without_residuals", out.data, without.data, (size_t)without.numel, UNET_TOL);
        /* a wrong residual count is refused */
        extra.n_down = n - 1;
        EXPECT_FAIL(sd_unet_forward(&u, &out, &x, t, &c, &extra), DL_ERR_ARG, "down_block_additional_residuals",
                    "too few residuals");
        dl_tensor_free(&out);
    }
    for (int k = 0; k < n; k++) dl_tensor_free(&res[k]);
    dl_tensor *all[] = {&mid, &x, &c, &ts, &with, &without};
    for (size_t i = 0; i < 6; i++) dl_tensor_free(all[i]);
    dl_st_close(&g);
    sd_unet_free(&u);
    sd_weights_close(&w);
}

/* ---- the SD 2.x layout: Linear proj_in / proj_out ------------------------------- */

static void link_into(const char *dir, const char *target_rel, const char *name)
{
    char target[PATH_MAX], link[1200];
    if (!CHECK(realpath(target_rel, target) != NULL, "realpath %s", target_rel)) return;
    snprintf(link, sizeof link, "%s/%s", dir, name);
    unlink(link);
    CHECK(symlink(target, link) == 0, "symlink %s: %s", link, strerror(errno));
}

/* Replace the first `from` in text (owned, malloc'd) by `to`. */
static char *replace(char *text, const char *from, const char *to)
{
    char *at = text ? strstr(text, from) : NULL;
    if (!CHECK(at != NULL, "'%s' not in the config", from)) return text;
    size_t n = strlen(text) - strlen(from) + strlen(to) + 1;
    char *out = malloc(n);
    snprintf(out, n, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
    free(text);
    return out;
}

/* SD 2.x checkpoints store proj_in / proj_out as Linear [C, C] and list the
 * heads per level. The tiny model rewritten that way (same numbers, 2-D
 * proj weights, use_linear_projection true, attention_head_dim [8, 8]) must
 * give the same outputs. */
TEST(sd_unet, linear_projection_layout)
{
    char dir[512], unet[600], path[700];
    snprintf(dir, sizeof dir, "%s/linear_proj", dl_test_out_dir("sd_unet"));
    mkdir(dir, 0755);
    link_into(dir, TINY_SD "/model_index.json", "model_index.json");
    link_into(dir, TINY_SD "/text_encoder", "text_encoder");
    link_into(dir, TINY_SD "/vae", "vae");
    snprintf(unet, sizeof unet, "%s/unet", dir);
    mkdir(unet, 0755);
    /* config */
    FILE *f = fopen(TINY_SD "/unet/config.json", "rb");
    if (!CHECK(f != NULL, "config.json")) return;
    char *cfg = calloc(1, 1 << 16);
    size_t got = fread(cfg, 1, (1 << 16) - 1, f);
    fclose(f);
    CHECK(got > 0, "empty config");
    cfg = replace(cfg, "\"use_linear_projection\": false", "\"use_linear_projection\": true");
    cfg = replace(cfg, "\"attention_head_dim\": 8", "\"attention_head_dim\": [8, 8]");
    snprintf(path, sizeof path, "%s/config.json", unet);
    f = fopen(path, "wb");
    if (CHECK(f != NULL, "write %s", path)) { fputs(cfg, f); fclose(f); }
    free(cfg);
    /* weights, proj_in / proj_out as [C, C] */
    dl_safetensors src;
    if (!CHECK(dl_st_open(&src, TINY_SD "/unet/diffusion_pytorch_model.safetensors") == DL_OK, "%s", dl_error_message()))
        return;
    dl_st_writer wr;
    dl_st_writer_init(&wr);
    int reshaped = 0;
    for (int i = 0; i < src.count; i++) {
        const char *name = src.entries[i].name;
        dl_tensor t;
        if (!CHECK(dl_st_load_tensor(&src, name, &t) == DL_OK, "%s", dl_error_message())) break;
        size_t n = strlen(name);
        if ((n > 14 && !strcmp(name + n - 14, "proj_in.weight")) || (n > 15 && !strcmp(name + n - 15, "proj_out.weight"))) {
            CHECK(dl_st_writer_add_raw(&wr, name, DL_DTYPE_F32, 2, DL_SHAPE(t.shape[0], t.shape[1]), t.data) == DL_OK,
                  "%s", dl_error_message());
            reshaped++;
        } else {
            CHECK(dl_st_writer_add(&wr, name, &t) == DL_OK, "%s", dl_error_message());
        }
        dl_tensor_free(&t);
    }
    dl_st_close(&src);
    CHECK(reshaped == 12, "%d proj weights reshaped, want 12 (6 transformers)", reshaped);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", unet);
    CHECK(dl_st_writer_save(&wr, path) == DL_OK, "%s", dl_error_message());
    dl_st_writer_free(&wr);

    sd_weights w; sd_unet u; dl_safetensors g;
    if (!open_unet(&w, &u, dir)) return;
    CHECK(u.cfg.use_linear_projection == 1 && u.cfg.heads[0] == 8 && u.cfg.heads[1] == 8, "config read");
    if (CHECK(dl_st_open(&g, GOLDEN_DIR "unet.safetensors") == DL_OK, "%s", dl_error_message())) {
        const float t1[2] = {1, 1};
        run_case(&u, &g, "sample_b2", "encoder_hidden_states_b2", t1, "out_b2_t1", UNET_TOL);
        dl_st_close(&g);
    }
    sd_unet_free(&u);
    sd_weights_close(&w);
}

/* ---- config ---------------------------------------------------------------- */

TEST(sd_unet, config_tiny_sd15_and_sd2)
{
    sd_weights w; sd_unet u;
    if (open_unet(&w, &u, TINY_SD)) {
        const sd_unet_config *c = &u.cfg;
        CHECK(c->levels == 2 && c->block_out_channels[0] == 32 && c->block_out_channels[1] == 64, "channels");
        CHECK(c->down_attn[0] == 0 && c->down_attn[1] == 1 && c->up_attn[0] == 1 && c->up_attn[1] == 0, "block types");
        CHECK(c->heads[0] == 8 && c->heads[1] == 8, "attention_head_dim 8 = 8 heads");
        CHECK(c->cross_attention_dim == 32 && c->norm_num_groups == 8 && c->time_embed_dim == 128, "dims");
        CHECK(!c->use_linear_projection && c->flip_sin_to_cos && c->freq_shift == 0, "flags");
        CHECK(sd_unet_num_skips(c) == 6, "skips");
        sd_unet_free(&u);
        sd_weights_close(&w);
    }
    sd_unet_config c;
    sd_unet_config_sd15(&c);
    CHECK(c.levels == 4 && c.block_out_channels[3] == 1280 && c.cross_attention_dim == 768, "sd15 defaults");
    CHECK(sd_unet_num_skips(&c) == 12, "sd15 has 12 skips");
    /* SD 2.x style: per-level head counts, linear projections, 1024-d context */
    const char *sd2 = "{\"attention_head_dim\": [5, 10, 20, 20], \"block_out_channels\": [320, 640, 1280, 1280],"
                      "\"cross_attention_dim\": 1024, \"use_linear_projection\": true, \"upcast_attention\": true,"
                      "\"down_block_types\": [\"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"CrossAttnDownBlock2D\", \"DownBlock2D\"],"
                      "\"up_block_types\": [\"UpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\", \"CrossAttnUpBlock2D\"],"
                      "\"num_attention_heads\": null, \"class_embed_type\": null, \"only_cross_attention\": false}";
    if (CHECK(sd_unet_config_parse(&c, sd2) == DL_OK, "sd2 config: %s", dl_error_message())) {
        CHECK(c.heads[0] == 5 && c.heads[1] == 10 && c.heads[3] == 20, "per-level heads");
        CHECK(c.use_linear_projection && c.cross_attention_dim == 1024 && c.upcast_attention, "sd2 flags");
    }
    EXPECT_FAIL(sd_unet_config_parse(&c, "{\"addition_embed_type\": \"text_time\"}"), DL_ERR_FORMAT,
                "addition_embed_type", "SDXL config");
    EXPECT_FAIL(sd_unet_config_parse(&c, "{\"down_block_types\": [\"CrossAttnDownBlock2D\"]}"), DL_ERR_FORMAT,
                "down_block_types", "wrong number of block types");
    EXPECT_FAIL(sd_unet_config_parse(&c, "{\"attention_head_dim\": 7}"), DL_ERR_FORMAT, "heads",
                "320 channels in 7 heads");
    EXPECT_FAIL(sd_unet_config_parse(&c, "[1, 2"), DL_ERR_FORMAT, "unet config", "broken JSON");
}

/* ---- errors ----------------------------------------------------------------- */

TEST(sd_unet, errors_name_the_problem)
{
    sd_weights w; sd_unet u;
    if (!open_unet(&w, &u, TINY_SD)) return;
    dl_tensor x, c, out;
    const float t[1] = {500};
    dl_tensor_alloc(&x, 4, DL_SHAPE(1, 3, 8, 8));               /* 3 latent channels, not 4 */
    dl_tensor_alloc(&c, 3, DL_SHAPE(1, 77, 32));
    dl_tensor_alloc(&out, 4, DL_SHAPE(1, 4, 8, 8));
    EXPECT_FAIL(sd_unet_forward(&u, &out, &x, t, &c, NULL), DL_ERR_SHAPE, "sample", "3 latent channels");
    dl_tensor_free(&x);
    dl_tensor_alloc(&x, 4, DL_SHAPE(1, 4, 8, 8));
    dl_tensor c2;
    dl_tensor_alloc(&c2, 3, DL_SHAPE(1, 77, 768));              /* SD 1.5's context, tiny model */
    EXPECT_FAIL(sd_unet_forward(&u, &out, &x, t, &c2, NULL), DL_ERR_SHAPE, "encoder_hidden_states",
                "768-d context");
    EXPECT_FAIL(sd_unet_forward(&u, &out, &x, NULL, &c, NULL), DL_ERR_ARG, "timesteps", "no timesteps");
    /* a config that wants a tensor the checkpoint does not have: the message names it */
    u.cfg.layers_per_block = 3;
    dl_status s = sd_unet_forward(&u, &out, &x, t, &c, NULL);
    CHECK(s != DL_OK, "a missing tensor was not reported");
    CHECK(strstr(dl_error_message(), "down_blocks.0.resnets.2") != NULL, "message '%s' does not name the tensor",
          dl_error_message());
    /* odd latent sizes work (the upsampler meets the skip's size), as in diffusers */
    u.cfg.layers_per_block = 2;
    dl_tensor x9, o9;
    dl_tensor_alloc(&x9, 4, DL_SHAPE(1, 4, 9, 7));
    dl_tensor_alloc(&o9, 4, DL_SHAPE(1, 4, 9, 7));
    CHECK(sd_unet_forward(&u, &o9, &x9, t, &c, NULL) == DL_OK, "9x7 latents: %s", dl_error_message());
    dl_tensor_free(&x9); dl_tensor_free(&o9);
    dl_tensor_free(&x); dl_tensor_free(&c); dl_tensor_free(&c2); dl_tensor_free(&out);
    sd_unet_free(&u);
    sd_weights_close(&w);
}
