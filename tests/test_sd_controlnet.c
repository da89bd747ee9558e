/* test_sd_controlnet.c - ControlNet (core/sd_controlnet.h) against
 * diffusers' ControlNetModel: the tiny ControlNet in
 * tests/fixtures/tiny-controlnet, the first step of the golden ControlNet
 * pipeline run in tests/fixtures/tiny-sd-golden/controlnet_ddim.safetensors
 * (see the READMEs), the control image made from the test picture, the
 * config reader and the error messages. */
#include "testing.h"
#include "../core/image.h"
#include "../core/safetensors.h"
#include "../core/sd_controlnet.h"
#include "../core/sd_pipeline.h"
#include "../core/sd_unet.h"
#include "../core/sd_weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TINY_SD "tests/fixtures/tiny-sd"
#define TINY_CN "tests/fixtures/tiny-controlnet"
#define GOLDEN_DIR "tests/fixtures/tiny-sd-golden/"
#define CN_TOL 1e-4
#define PIPE_TOL 1e-3   /* whole 8-step runs (fixtures README) */

static int load(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    dl_status s = dl_st_load_tensor(f, name, t);
    return CHECK(s == DL_OK, "golden tensor %s: %s", name, dl_error_message());
}

static int open_controlnet(sd_weights *w, sd_controlnet *cn)
{
    if (!CHECK(sd_weights_open_component(w, TINY_CN, SD_PART_UNET) == DL_OK, "open %s: %s", TINY_CN,
               dl_error_message()))
        return 0;
    if (!CHECK(sd_controlnet_init(cn, w) == DL_OK, "sd_controlnet_init: %s", dl_error_message())) {
        sd_weights_close(w);
        return 0;
    }
    return 1;
}

/* The golden inputs of the pipeline's first step. */
typedef struct {
    dl_safetensors g;
    dl_tensor x, ehs, cond, ts;
    float t[2];
} step0_inputs;

static int load_step0(step0_inputs *in)
{
    memset(in, 0, sizeof *in);
    if (!CHECK(dl_st_open(&in->g, GOLDEN_DIR "controlnet_ddim.safetensors") == DL_OK, "%s", dl_error_message()))
        return 0;
    if (!(load(&in->g, "step0.latent_model_input", &in->x) && load(&in->g, "step0.encoder_hidden_states", &in->ehs) &&
          load(&in->g, "step0.controlnet_cond", &in->cond) && load(&in->g, "step0.timestep", &in->ts)))
        return 0;
    CHECK(in->ts.data[0] == 876, "step0 timestep %g, want 876", in->ts.data[0]);
    in->t[0] = in->t[1] = in->ts.data[0];
    return 1;
}

static void free_step0(step0_inputs *in)
{
    dl_tensor_free(&in->x); dl_tensor_free(&in->ehs); dl_tensor_free(&in->cond); dl_tensor_free(&in->ts);
    dl_st_close(&in->g);
}

/* Keep a copy of the hooked controlnet_cond_embedding. */
static void grab_embedding(void *ctx, const char *name, const dl_tensor *t)
{
    dl_tensor *keep = ctx;
    if (strcmp(name, "controlnet_cond_embedding") || keep->data) return;
    if (dl_tensor_alloc(keep, t->ndim, t->shape) == DL_OK) dl_tensor_copy(keep, t);
}

static double compare(const dl_safetensors *g, const char *name, const dl_tensor *got)
{
    dl_tensor want;
    double d = 1e30;
    if (!load(g, name, &want)) return d;
    if (CHECK(want.numel == got->numel && want.ndim == got->ndim, "%s: %lld values, want %lld", name,
              (long long)got->numel, (long long)want.numel)) {
        d = dl_max_abs_diff(got->data, want.data, (size_t)want.numel);
        printf("    %-34s max abs diff %.3g\n", name, d);
        CHECK_CLOSE(name, got->data, want.data, (size_t)want.numel, CN_TOL);
    }
    dl_tensor_free(&want);
    return d;
}

TEST(controlnet, step0_residuals_match_diffusers)
{
    sd_weights w; sd_controlnet cn; step0_inputs in;
    if (!open_controlnet(&w, &cn)) return;
    sd_controlnet_output res;
    memset(&res, 0, sizeof res);
    dl_tensor emb = {0};
    if (load_step0(&in) &&
        CHECK(sd_controlnet_output_alloc(&res, &cn.cfg, 2, 32, 32) == DL_OK, "%s", dl_error_message())) {
        CHECK(res.n_down == 6, "%d down residuals, want 6", res.n_down);
        cn.hook = grab_embedding;
        cn.hook_ctx = &emb;
        if (CHECK(sd_controlnet_forward(&cn, &res, &in.x, in.t, &in.ehs, &in.cond, 1.0f, 0) == DL_OK, "%s",
                  dl_error_message())) {
            if (CHECK(emb.data != NULL, "no controlnet_cond_embedding reported to the hook"))
                compare(&in.g, "step0.controlnet_cond_embedding", &emb);
            for (int k = 0; k < res.n_down; k++) {
                char name[64];
                snprintf(name, sizeof name, "step0.down_block_res_samples.%d", k);
                compare(&in.g, name, &res.down[k]);
            }
            compare(&in.g, "step0.mid_block_res_sample", &res.mid);

            /* the residuals straight into the UNet */
            sd_weights uw; sd_unet u; dl_tensor out;
            if (CHECK(sd_weights_open(&uw, TINY_SD) == DL_OK, "%s", dl_error_message())) {
                if (CHECK(sd_unet_init(&u, &uw) == DL_OK, "%s", dl_error_message()) &&
                    CHECK(dl_tensor_alloc(&out, 4, in.x.shape) == DL_OK, "alloc")) {
                    sd_unet_residuals r = sd_controlnet_residuals(&res);
                    if (CHECK(sd_unet_forward(&u, &out, &in.x, in.t, &in.ehs, &r) == DL_OK, "%s", dl_error_message()))
                        compare(&in.g, "step0.unet_out_with_residuals", &out);
                    dl_tensor_free(&out);
                    sd_unet_free(&u);
                }
                sd_weights_close(&uw);
            }
        }
    }
    dl_tensor_free(&emb);
    sd_controlnet_output_free(&res);
    free_step0(&in);
    sd_controlnet_free(&cn);
    sd_weights_close(&w);
}

/* conditioning_scale multiplies every residual; global_pool_conditions
 * replaces each by its spatial mean; "bgr" swaps the first and third
 * channels of the control image. Checked against the plain run. */
TEST(controlnet, scale_pool_and_channel_order)
{
    sd_weights w; sd_controlnet cn; step0_inputs in;
    if (!open_controlnet(&w, &cn)) return;
    sd_controlnet_output a, b;
    memset(&a, 0, sizeof a); memset(&b, 0, sizeof b);
    dl_tensor swapped = {0};
    if (load_step0(&in) && CHECK(sd_controlnet_output_alloc(&a, &cn.cfg, 2, 32, 32) == DL_OK, "alloc") &&
        CHECK(sd_controlnet_output_alloc(&b, &cn.cfg, 2, 32, 32) == DL_OK, "alloc") &&
        CHECK(sd_controlnet_forward(&cn, &a, &in.x, in.t, &in.ehs, &in.cond, 1.0f, 0) == DL_OK, "%s",
              dl_error_message())) {
        /* scale 0.5: half of everything */
        if (CHECK(sd_controlnet_forward(&cn, &b, &in.x, in.t, &in.ehs, &in.cond, 0.5f, 0) == DL_OK, "%s",
                  dl_error_message())) {
            double worst = 0;
            for (int k = 0; k <= a.n_down; k++) {
                const dl_tensor *x = k < a.n_down ? &a.down[k] : &a.mid, *y = k < a.n_down ? &b.down[k] : &b.mid;
                for (int64_t i = 0; i < x->numel; i++) {
                    double d = y->data[i] - 0.5 * x->data[i];
                    if (d < 0) d = -d;
                    if (d > worst) worst = d;
                }
            }
            CHECK(worst <= 1e-6, "scale 0.5: max |b - a/2| = %.3g", worst);
        }
        /* global pool at scale 2: every value is 2 x the mean of its plane */
        cn.cfg.global_pool_conditions = 1;
        if (CHECK(sd_controlnet_forward(&cn, &b, &in.x, in.t, &in.ehs, &in.cond, 2.0f, 0) == DL_OK, "%s",
                  dl_error_message())) {
            double worst = 0;
            for (int k = 0; k <= a.n_down; k++) {
                const dl_tensor *x = k < a.n_down ? &a.down[k] : &a.mid, *y = k < a.n_down ? &b.down[k] : &b.mid;
                const int64_t px = x->shape[2] * x->shape[3];
                for (int64_t p = 0; p < x->shape[0] * x->shape[1]; p++) {
                    double m = 0;
                    for (int64_t i = 0; i < px; i++) m += x->data[p * px + i];
                    m = 2 * m / (double)px;
                    for (int64_t i = 0; i < px; i++) {
                        double d = y->data[p * px + i] - m;
                        if (d < 0) d = -d;
                        if (d > worst) worst = d;
                    }
                }
            }
            CHECK(worst <= 1e-5, "global pool: max |b - 2 mean(a)| = %.3g", worst);
        }
        cn.cfg.global_pool_conditions = 0;
        /* bgr with the channels swapped back gives the rgb result */
        cn.cfg.bgr = 1;
        if (CHECK(dl_tensor_alloc(&swapped, 4, in.cond.shape) == DL_OK, "alloc")) {
            const int64_t plane = in.cond.shape[2] * in.cond.shape[3];
            for (int64_t bi = 0; bi < 2; bi++)
                for (int ch = 0; ch < 3; ch++)
                    memcpy(swapped.data + (bi * 3 + ch) * plane, in.cond.data + (bi * 3 + 2 - ch) * plane,
                           (size_t)plane * sizeof(float));
            /* the golden control image is grey (all channels equal): make it differ first */
            for (int64_t i = 0; i < plane; i++) swapped.data[i] *= 0.25f, in.cond.data[2 * plane + i] *= 0.25f;
            for (int64_t i = 0; i < plane; i++) swapped.data[3 * plane + i] *= 0.25f, in.cond.data[5 * plane + i] *= 0.25f;
            if (CHECK(sd_controlnet_forward(&cn, &b, &in.x, in.t, &in.ehs, &swapped, 1.0f, 0) == DL_OK, "%s",
                      dl_error_message())) {
                cn.cfg.bgr = 0;
                if (CHECK(sd_controlnet_forward(&cn, &a, &in.x, in.t, &in.ehs, &in.cond, 1.0f, 0) == DL_OK, "%s",
                          dl_error_message())) {
                    CHECK_CLOSE("bgr == rgb swapped (mid)", b.mid.data, a.mid.data, (size_t)a.mid.numel, 1e-6);
                    CHECK_CLOSE("bgr == rgb swapped (down 0)", b.down[0].data, a.down[0].data,
                                (size_t)a.down[0].numel, 1e-6);
                }
            }
        }
    }
    dl_tensor_free(&swapped);
    sd_controlnet_output_free(&a);
    sd_controlnet_output_free(&b);
    free_step0(&in);
    sd_controlnet_free(&cn);
    sd_weights_close(&w);
}

/* The control image: Canny(100, 200) of the grey test picture stacked to 3
 * channels is the golden's PNG, and that PNG / 255 twice is step0.controlnet_cond. */
TEST(controlnet, canny_control_image_matches_pipeline)
{
    dl_image pic = {0}, ctrl = {0};
    uint8_t *edges = NULL;
    if (CHECK(dl_image_load(&pic, GOLDEN_DIR "test_image.png", 3) == DL_OK, "%s", dl_error_message()) &&
        CHECK(dl_image_load(&ctrl, GOLDEN_DIR "controlnet_control_image.png", 3) == DL_OK, "%s",
              dl_error_message()) &&
        CHECK(pic.w == 64 && pic.h == 64 && ctrl.w == 64 && ctrl.h == 64, "image sizes") &&
        CHECK((edges = malloc(64 * 64 * 3)) != NULL, "malloc")) {
        if (CHECK(sd_controlnet_canny_image(pic.px, 64, 64, 3, 100, 200, 1, edges) == DL_OK, "%s",
                  dl_error_message())) {
            int differ = 0, on = 0;
            for (int i = 0; i < 64 * 64 * 3; i++) differ += edges[i] != ctrl.px[i], on += edges[i] == 255;
            printf("    canny control image: %d of %d values differ (%d edge pixels)\n", differ, 64 * 64 * 3, on / 3);
            CHECK(differ == 0, "%d values differ from controlnet_control_image.png", differ);
            CHECK(on > 0, "no edges at all");
        }
        /* the pipeline's tensor */
        dl_safetensors g;
        dl_tensor want, got;
        if (CHECK(dl_st_open(&g, GOLDEN_DIR "controlnet_ddim.safetensors") == DL_OK, "%s", dl_error_message())) {
            if (load(&g, "step0.controlnet_cond", &want) &&
                CHECK(dl_tensor_alloc(&got, 4, want.shape) == DL_OK, "alloc")) {
                if (CHECK(sd_controlnet_image_to_tensor(&got, ctrl.px, 64, 64) == DL_OK, "%s", dl_error_message()))
                    CHECK_CLOSE("controlnet_cond", got.data, want.data, (size_t)want.numel, 1e-7);
                dl_tensor_free(&got);
                dl_tensor_free(&want);
            }
            dl_st_close(&g);
        }
        /* grey_first = 0: cv2.Canny on the colour image (the canny fixture's edges_from_rgb) */
        dl_image in = {0}, rgb_edges = {0};
        if (CHECK(dl_image_load(&in, "tests/fixtures/canny/input.png", 3) == DL_OK, "%s", dl_error_message()) &&
            CHECK(dl_image_load(&rgb_edges, "tests/fixtures/canny/edges_from_rgb.png", 1) == DL_OK, "%s",
                  dl_error_message()) &&
            CHECK(in.w == 64 && in.h == 64, "canny input size") &&
            CHECK(sd_controlnet_canny_image(in.px, 64, 64, 3, 100, 200, 0, edges) == DL_OK, "%s",
                  dl_error_message())) {
            int differ = 0;
            for (int p = 0; p < 64 * 64; p++)
                for (int ch = 0; ch < 3; ch++) differ += edges[3 * p + ch] != rgb_edges.px[p];
            CHECK(differ == 0, "colour Canny: %d values differ from edges_from_rgb.png", differ);
        }
        dl_image_free(&in);
        dl_image_free(&rgb_edges);
        EXPECT_FAIL(sd_controlnet_canny_image(pic.px, 64, 64, 4, 100, 200, 1, edges), DL_ERR_ARG, "channels",
                    "grey_first with 4 channels");
    }
    free(edges);
    dl_image_free(&pic);
    dl_image_free(&ctrl);
}

/* Read a small text file (malloc'd). */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = calloc(1, 1 << 16);
    if (buf && fread(buf, 1, (1 << 16) - 1, f) == 0) buf[0] = 0;
    fclose(f);
    return buf;
}

/* Replace the first `from` in text (owned) by `to`. */
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

TEST(controlnet, config_reader)
{
    char *json = slurp(TINY_CN "/config.json");
    if (!CHECK(json != NULL, "read %s", TINY_CN "/config.json")) return;
    sd_controlnet_config c;
    if (CHECK(sd_controlnet_config_parse(&c, json) == DL_OK, "%s", dl_error_message())) {
        CHECK(c.conditioning_channels == 3 && c.cond_levels == 2 && c.cond_channels[0] == 16 &&
              c.cond_channels[1] == 32, "conditioning embedding %d ch, %d levels %d %d", c.conditioning_channels,
              c.cond_levels, c.cond_channels[0], c.cond_channels[1]);
        CHECK(!c.bgr && !c.global_pool_conditions, "bgr %d pool %d", c.bgr, c.global_pool_conditions);
        CHECK(c.unet.levels == 2 && c.unet.block_out_channels[0] == 32 && c.unet.block_out_channels[1] == 64 &&
              !c.unet.down_attn[0] && c.unet.down_attn[1] && c.unet.layers_per_block == 2 &&
              c.unet.cross_attention_dim == 32 && c.unet.norm_num_groups == 8 && c.unet.heads[1] == 8,
              "unet half of the config");
    }
    char *t = replace(strdup(json), "\"rgb\"", "\"bgr\"");
    t = replace(t, "\"global_pool_conditions\": false", "\"global_pool_conditions\": true");
    if (CHECK(sd_controlnet_config_parse(&c, t) == DL_OK, "%s", dl_error_message()))
        CHECK(c.bgr && c.global_pool_conditions, "bgr %d pool %d", c.bgr, c.global_pool_conditions);
    free(t);
    t = replace(strdup(json), "\"rgb\"", "\"yuv\"");
    EXPECT_FAIL(sd_controlnet_config_parse(&c, t), DL_ERR_FORMAT, "controlnet_conditioning_channel_order",
                "unknown channel order");
    free(t);
    t = replace(strdup(json), "\"class_embed_type\": null", "\"class_embed_type\": \"timestep\"");
    EXPECT_FAIL(sd_controlnet_config_parse(&c, t), DL_ERR_FORMAT, "class_embed_type", "class embedding");
    free(t);
    free(json);
}

TEST(controlnet, errors_name_the_problem)
{
    sd_weights w;
    EXPECT_FAIL(sd_weights_open_component(&w, "tests/fixtures/no-such-controlnet", SD_PART_UNET), DL_ERR_IO,
                "no-such-controlnet", "missing folder");
    EXPECT_FAIL(sd_weights_open_component(&w, "tests/fixtures/canny", SD_PART_UNET), DL_ERR_IO,
                "diffusion_pytorch_model.safetensors", "folder without weights");
    sd_controlnet cn; step0_inputs in;
    if (!open_controlnet(&w, &cn)) return;
    sd_controlnet_output res, small;
    memset(&res, 0, sizeof res); memset(&small, 0, sizeof small);
    dl_tensor half = {0};
    if (load_step0(&in) && CHECK(sd_controlnet_output_alloc(&res, &cn.cfg, 2, 32, 32) == DL_OK, "alloc") &&
        CHECK(sd_controlnet_output_alloc(&small, &cn.cfg, 2, 16, 16) == DL_OK, "alloc")) {
        EXPECT_FAIL(sd_controlnet_forward(&cn, &res, &in.x, in.t, &in.ehs, &in.cond, 1.0f, 1), DL_ERR_ARG,
                    "guess_mode", "guess mode");
        EXPECT_FAIL(sd_controlnet_forward(&cn, &small, &in.x, in.t, &in.ehs, &in.cond, 1.0f, 0), DL_ERR_SHAPE,
                    "out.down[0]", "residuals for the wrong latent size");
        /* a control image at the latent size instead of 2x (the tiny model downsamples once) */
        if (CHECK(dl_tensor_alloc(&half, 4, DL_SHAPE(2, 3, 32, 32)) == DL_OK, "alloc"))
            EXPECT_FAIL(sd_controlnet_forward(&cn, &res, &in.x, in.t, &in.ehs, &half, 1.0f, 0), DL_ERR_SHAPE,
                        "controlnet_cond", "control image too small");
        EXPECT_FAIL(sd_controlnet_forward(&cn, &res, &in.x, in.t, &in.ehs, &in.x, 1.0f, 0), DL_ERR_SHAPE,
                    "controlnet_cond", "4-channel control image");
    }
    dl_tensor_free(&half);
    sd_controlnet_output_free(&res);
    sd_controlnet_output_free(&small);
    free_step0(&in);
    sd_controlnet_free(&cn);
    sd_weights_close(&w);
    /* the UNet's folder is not a ControlNet: its config has up blocks but no
     * controlnet tensors; the first forward names the missing one */
    sd_weights uw;
    if (CHECK(sd_weights_open(&uw, TINY_SD) == DL_OK, "%s", dl_error_message())) {
        sd_controlnet bad;
        if (CHECK(sd_controlnet_init(&bad, &uw) == DL_OK, "%s", dl_error_message())) {
            /* (no conditioning keys in a UNet config: give it the tiny ControlNet's embedding) */
            bad.cfg.cond_levels = 2;
            bad.cfg.cond_channels[0] = 16;
            bad.cfg.cond_channels[1] = 32;
            step0_inputs in2;
            sd_controlnet_output r2;
            memset(&r2, 0, sizeof r2);
            if (load_step0(&in2) && CHECK(sd_controlnet_output_alloc(&r2, &bad.cfg, 2, 32, 32) == DL_OK, "alloc"))
                EXPECT_FAIL(sd_controlnet_forward(&bad, &r2, &in2.x, in2.t, &in2.ehs, &in2.cond, 1.0f, 0),
                            DL_ERR_FORMAT, "controlnet_cond_embedding", "no controlnet tensors");
            sd_controlnet_output_free(&r2);
            free_step0(&in2);
            sd_controlnet_free(&bad);
        }
        sd_weights_close(&uw);
    }
}

/* ---- the whole ControlNet pipeline run --------------------------------------- */

/* The pipeline's residuals plug-in: ControlNet on the UNet's input. */
typedef struct {
    sd_controlnet *cn;
    const dl_image *control;         /* the control picture, RGB */
    dl_tensor cond;                  /* [B, 3, H, W] in [0, 1]   */
    sd_controlnet_output out;
    float scale;
} cn_plugin;

static dl_status cn_residuals(void *ctx, const dl_tensor *sample, const float *timesteps, const dl_tensor *context,
                              sd_unet_residuals *res)
{
    cn_plugin *pl = ctx;
    const int B = (int)sample->shape[0];
    if (!pl->cond.data) {
        const dl_image *im = pl->control;
        DL_TRY(dl_tensor_alloc(&pl->cond, 4, DL_SHAPE(B, 3, im->h, im->w)));
        DL_TRY(sd_controlnet_image_to_tensor(&pl->cond, im->px, im->w, im->h));
        DL_TRY(sd_controlnet_output_alloc(&pl->out, &pl->cn->cfg, B, (int)sample->shape[2], (int)sample->shape[3]));
    }
    DL_TRY(sd_controlnet_forward(pl->cn, &pl->out, sample, timesteps, context, &pl->cond, pl->scale, 0));
    *res = sd_controlnet_residuals(&pl->out);
    return DL_OK;
}

typedef struct {
    float *per_step;                 /* [calls][numel] */
    int64_t numel;
    int calls, max_calls;
} step_log;

static int on_step(void *ctx, const sd_step_info *info)
{
    step_log *log = ctx;
    if (log->calls < log->max_calls && info->latents->numel == log->numel)
        memcpy(log->per_step + (size_t)log->calls * log->numel, info->latents->data, (size_t)log->numel * sizeof(float));
    log->calls++;
    return 0;
}

/* A golden tensor of any rank as a flat float array (malloc'd). */
static float *load_flat(const dl_safetensors *g, const char *name, int64_t *numel)
{
    const dl_st_entry *e = dl_st_find(g, name);
    if (!CHECK(e != NULL, "golden tensor %s missing", name)) return NULL;
    int64_t n = 1;
    for (int d = 0; d < e->ndim; d++) n *= e->shape[d];
    float *v = malloc((size_t)n * sizeof(float));
    if (!CHECK(v && dl_st_read_f32(g, e, v) == DL_OK, "read %s: %s", name, dl_error_message())) {
        free(v);
        return NULL;
    }
    *numel = n;
    return v;
}

TEST(controlnet, full_ddim_run_matches_diffusers)
{
    sd_weights w; sd_controlnet cn; sd_pipeline p; dl_safetensors g;
    dl_image control = {0};
    if (!open_controlnet(&w, &cn)) return;
    if (!CHECK(sd_pipeline_load(&p, TINY_SD, NULL) == DL_OK, "%s", dl_error_message())) {
        sd_controlnet_free(&cn); sd_weights_close(&w);
        return;
    }
    int64_t n_steps = 0, n_final = 0, n_image = 0;
    float *want_steps = NULL, *want_final = NULL, *want_image = NULL;
    dl_tensor init = {0};
    cn_plugin pl = {.cn = &cn, .control = &control, .scale = 1.0f};
    step_log log = {0};
    sd_run_result r;
    memset(&r, 0, sizeof r);
    if (CHECK(dl_st_open(&g, GOLDEN_DIR "controlnet_ddim.safetensors") == DL_OK, "%s", dl_error_message()) &&
        CHECK(dl_image_load(&control, GOLDEN_DIR "controlnet_control_image.png", 3) == DL_OK, "%s",
              dl_error_message()) &&
        load(&g, "init_latents", &init) && (want_steps = load_flat(&g, "latents_per_step", &n_steps)) &&
        (want_final = load_flat(&g, "latents_final", &n_final)) && (want_image = load_flat(&g, "image", &n_image))) {
        log.numel = init.numel;
        log.max_calls = (int)(n_steps / init.numel);
        log.per_step = calloc((size_t)n_steps, sizeof(float));
        sd_run_opts o = sd_run_opts_default();
        o.prompt = "A majestic lion in a cosmic nebula, digital art, highly detailed";
        o.negative_prompt = "blurry, low quality, distorted";
        o.steps = 8;
        o.guidance = 7.5f;
        o.scheduler = DL_SAMPLER_DDIM;
        o.width = o.height = 64;
        o.init_latents = &init;
        o.residuals = cn_residuals;
        o.residuals_ctx = &pl;
        if (CHECK(log.per_step != NULL && log.max_calls == 8, "latents_per_step: %d steps", log.max_calls) &&
            CHECK(sd_pipeline_run(&p, &o, on_step, &log, &r) == DL_OK, "%s", dl_error_message())) {
            CHECK(log.calls == 8, "%d UNet calls, want 8", log.calls);
            double worst = 0;
            for (int k = 0; k < log.max_calls; k++) {
                double d = dl_max_abs_diff(log.per_step + k * log.numel, want_steps + k * log.numel, (size_t)log.numel);
                if (d > worst) worst = d;
            }
            printf("    latents_per_step (8)                max abs diff %.3g\n", worst);
            CHECK_CLOSE("latents_per_step", log.per_step, want_steps, (size_t)n_steps, PIPE_TOL);
            printf("    latents_final                       max abs diff %.3g\n",
                   dl_max_abs_diff(r.latents.data, want_final, (size_t)n_final));
            CHECK(r.latents.numel == n_final, "latents_final size");
            CHECK_CLOSE("latents_final", r.latents.data, want_final, (size_t)n_final, PIPE_TOL);
            /* image: ours [1, 3, H, W], diffusers' NHWC [1, H, W, 3] */
            if (CHECK(r.image.numel == n_image, "image size %lld, want %lld", (long long)r.image.numel,
                      (long long)n_image)) {
                const int64_t plane = r.image.shape[2] * r.image.shape[3];
                float *nhwc = malloc((size_t)n_image * sizeof(float));
                if (CHECK(nhwc != NULL, "malloc")) {
                    for (int64_t px = 0; px < plane; px++)
                        for (int ch = 0; ch < 3; ch++) nhwc[px * 3 + ch] = r.image.data[ch * plane + px];
                    printf("    image                               max abs diff %.3g\n",
                           dl_max_abs_diff(nhwc, want_image, (size_t)n_image));
                    CHECK_CLOSE("image", nhwc, want_image, (size_t)n_image, PIPE_TOL);
                    free(nhwc);
                }
            }
        }
    }
    sd_run_result_free(&r);
    free(log.per_step);
    free(want_steps); free(want_final); free(want_image);
    dl_tensor_free(&init);
    dl_tensor_free(&pl.cond);
    sd_controlnet_output_free(&pl.out);
    dl_image_free(&control);
    dl_st_close(&g);
    sd_pipeline_free(&p);
    sd_controlnet_free(&cn);
    sd_weights_close(&w);
}
