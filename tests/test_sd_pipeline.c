/* test_sd_pipeline.c - the whole text-to-image pipeline (core/sd_pipeline.h)
 * on the tiny checkpoint tests/fixtures/tiny-sd against diffusers'
 * StableDiffusionPipeline: the 10 recorded runs of
 * tests/fixtures/tiny-sd-golden/pipeline_<scheduler>.safetensors (one per
 * scheduler; meta data in pipelines.json), the prompt embeddings, the seed-42
 * initial latents, and the plug-in points (img2img start, ControlNet
 * residuals, replayed noise). See tests/fixtures/tiny-sd-golden/README.md. */
#include "testing.h"
#include "../core/rng.h"
#include "../core/safetensors.h"
#include "../core/sd_pipeline.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TINY_SD "tests/fixtures/tiny-sd"
#define GOLDEN_DIR "tests/fixtures/tiny-sd-golden"
#define PROMPT "A majestic lion in a cosmic nebula, digital art, highly detailed"
#define NEGATIVE "blurry, low quality, distorted"
/* fp32 against fp32 with another summation order; diffusers' own fp32-vs-fp64
 * noise is <= 5e-5 on the latents, 1.4e-6 on the image (README) */
#define LATENT_TOL 1e-3
#define IMAGE_TOL 1e-3

static int load(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    return CHECK(dl_st_load_tensor(f, name, t) == DL_OK, "golden tensor %s: %s", name, dl_error_message());
}

/* A golden tensor of any rank (latents_per_step is [K, 1, 4, h, w]) as a flat one. */
static int load_flat(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    const dl_st_entry *e = dl_st_find(f, name);
    if (!CHECK(e != NULL, "golden tensor %s missing", name)) return 0;
    return CHECK(dl_tensor_alloc(t, 1, DL_SHAPE(dl_st_numel(e))) == DL_OK && dl_st_read_f32(f, e, t->data) == DL_OK,
                 "golden tensor %s: %s", name, dl_error_message());
}

/* The tiny model is far too small for threads to pay off; on a busy
 * machine they only wait for each other. */
static int saved_threads;
static void one_thread(void) { saved_threads = dl_get_threads(); dl_set_threads(1); }
static void restore_threads(void) { dl_set_threads(saved_threads); }
#define PIPE_TEST(name)                                                        \
    static void name##_body(void);                                             \
    TEST(sd_pipeline, name) { one_thread(); name##_body(); restore_threads(); } \
    static void name##_body(void)

static int open_pipeline(sd_pipeline *p)
{
    return CHECK(sd_pipeline_load(p, TINY_SD, NULL) == DL_OK, "load %s: %s", TINY_SD, dl_error_message());
}

/* the run's options as the fixtures were made */
static sd_run_opts golden_opts(dl_sampler_kind kind, const dl_tensor *init)
{
    sd_run_opts o = sd_run_opts_default();
    o.prompt = PROMPT;
    o.negative_prompt = NEGATIVE;
    o.steps = 8;
    o.guidance = 7.5f;
    o.scheduler = kind;
    o.seed = 1234;                 /* the generator passed to the pipeline; feeds the sampler's noise */
    o.width = o.height = 64;
    o.init_latents = init;
    return o;
}

/* records the latents after every call */
typedef struct { float *all; int n, cap; int64_t numel; } recorder;

static int record(void *ctx, const sd_step_info *info)
{
    recorder *r = ctx;
    if (r->n < r->cap) memcpy(r->all + (size_t)r->n * r->numel, info->latents->data, (size_t)r->numel * sizeof(float));
    r->n++;
    return 0;
}

/* NHWC [1, H, W, 3] golden image vs our [1, 3, H, W] */
static double image_diff(const dl_tensor *ours, const dl_tensor *nhwc)
{
    const int64_t H = ours->shape[2], W = ours->shape[3];
    double worst = 0;
    for (int64_t c = 0; c < 3; c++)
        for (int64_t i = 0; i < H * W; i++)
            worst = fmax(worst, fabs((double)ours->data[c * H * W + i] - nhwc->data[i * 3 + c]));
    return worst;
}

static cJSON *read_json(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!CHECK(f != NULL, "cannot open %s", path)) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    size_t got = text ? fread(text, 1, (size_t)n, f) : 0;
    fclose(f);
    cJSON *j = NULL;
    if (text && got == (size_t)n) {
        text[n] = 0;
        /* Python's json writes -Infinity (DPM++'s lambda_min_clipped), which
         * JSON lacks: make it a number that overflows to -inf */
        for (char *q = text; (q = strstr(q, "Infinity")) != NULL; q += 8) memcpy(q, "1e999   ", 8);
        j = cJSON_Parse(text);
    }
    free(text);
    CHECK(j != NULL, "%s is not JSON", path);
    return j;
}

/* diffusers' run names -> our sampler names */
static const char *our_name(const char *run)
{
    return !strcmp(run, "euler_ancestral") ? "euler_a" : run;
}

/* One golden run; replay = use the recorded noise draws instead of the generator. */
static void check_run(sd_pipeline *p, const char *run, const cJSON *meta, int replay, double *worst_lat, double *worst_img)
{
    char path[256];
    snprintf(path, sizeof path, GOLDEN_DIR "/pipeline_%s.safetensors", run);
    dl_safetensors g;
    if (!CHECK(dl_st_open(&g, path) == DL_OK, "%s", dl_error_message())) return;
    dl_sampler_kind kind;
    dl_tensor init = {0}, steps = {0}, fin = {0}, img = {0}, noise = {0};
    int have_noise = dl_st_find(&g, "noise_draws") != NULL;
    if (replay && !have_noise) { dl_st_close(&g); return; }
    if (!CHECK(dl_sampler_kind_from_name(our_name(run), &kind) == DL_OK, "%s", dl_error_message()) ||
        !load(&g, "init_latents", &init) || !load(&g, "latents_final", &fin) || !load(&g, "image", &img)) goto done;
    const dl_st_entry *e = dl_st_find(&g, "latents_per_step");
    if (!CHECK(e && e->ndim == 5, "%s: latents_per_step", run)) goto done;
    const int K = (int)e->shape[0];
    if (!CHECK(dl_tensor_alloc(&steps, 1, DL_SHAPE(dl_st_numel(e))) == DL_OK && dl_st_read_f32(&g, e, steps.data) == DL_OK,
               "%s: latents_per_step", run)) goto done;
    sd_run_opts o = golden_opts(kind, &init);
    if (replay) {
        if (!load_flat(&g, "noise_draws", &noise)) goto done;
        o.noise = noise.data;
        o.n_noise = (int)(noise.numel / init.numel);
    }
    recorder rec = {malloc((size_t)(K + 2) * (size_t)init.numel * sizeof(float)), 0, K + 2, init.numel};
    sd_run_result r;
    dl_status st = sd_pipeline_run(p, &o, record, &rec, &r);
    if (CHECK(st == DL_OK, "%s: %s", run, dl_error_message()) &&
        CHECK(rec.n == K && r.calls == K, "%s: %d calls (callback saw %d), diffusers made %d", run, r.calls, rec.n, K)) {
        double dsteps = dl_max_abs_diff(rec.all, steps.data, (size_t)steps.numel);
        double dfin = dl_max_abs_diff(r.latents.data, fin.data, (size_t)fin.numel);
        double dimg = image_diff(&r.image, &img);
        printf("    %-16s %s latents_per_step %.2e  latents_final %.2e  image %.2e\n", run,
               replay ? "(replayed noise)" : "(seed 1234)     ", dsteps, dfin, dimg);
        CHECK(dsteps <= LATENT_TOL, "%s: latents_per_step differ by %g", run, dsteps);
        CHECK(dfin <= LATENT_TOL, "%s: latents_final differ by %g", run, dfin);
        CHECK(dimg <= IMAGE_TOL, "%s: image differs by %g", run, dimg);
        if (getenv("DL_PIPE_TIMES")) printf("      text %.3f s, sampling %.3f s, decode %.3f s\n", r.seconds_text, r.seconds_sampling, r.seconds_decode);
        *worst_lat = fmax(*worst_lat, fmax(dsteps, dfin));
        *worst_img = fmax(*worst_img, dimg);
        /* init_noise_sigma and the timesteps, from pipelines.json */
        const cJSON *ins = cJSON_GetObjectItemCaseSensitive(meta, "init_noise_sigma");
        CHECK(cJSON_IsNumber(ins) && fabs(r.init_noise_sigma - ins->valuedouble) <= 1e-6 * fmax(1, ins->valuedouble),
              "%s: init_noise_sigma %g, diffusers %g", run, r.init_noise_sigma, ins ? ins->valuedouble : -1);
        const cJSON *ts = cJSON_GetObjectItemCaseSensitive(meta, "timesteps");
        CHECK(cJSON_GetArraySize(ts) == K, "%s: %d timesteps in pipelines.json, %d calls", run, cJSON_GetArraySize(ts), K);
    }
    free(rec.all);
    sd_run_result_free(&r);
done:
    dl_tensor_free(&init); dl_tensor_free(&steps); dl_tensor_free(&fin); dl_tensor_free(&img); dl_tensor_free(&noise);
    dl_st_close(&g);
}

PIPE_TEST(all_schedulers_match_diffusers)
{
    cJSON *j = read_json(GOLDEN_DIR "/pipelines.json");
    if (!j) return;
    sd_pipeline p;
    if (!open_pipeline(&p)) { cJSON_Delete(j); return; }
    const cJSON *runs = cJSON_GetObjectItemCaseSensitive(j, "runs"), *run;
    int n = 0;
    double worst_lat = 0, worst_img = 0;
    cJSON_ArrayForEach(run, runs) {
        if (run->string[0] == '_') continue;   /* "_check_...": a note of the generator, not a run */
        /* the fixtures' prompts and settings are ours */
        const cJSON *pr = cJSON_GetObjectItemCaseSensitive(run, "prompt");
        const cJSON *np = cJSON_GetObjectItemCaseSensitive(run, "negative_prompt");
        CHECK(cJSON_IsString(pr) && !strcmp(pr->valuestring, PROMPT) && cJSON_IsString(np) &&
              !strcmp(np->valuestring, NEGATIVE), "%s: other prompts", run->string);
        check_run(&p, run->string, run, 0, &worst_lat, &worst_img);
        check_run(&p, run->string, run, 1, &worst_lat, &worst_img);
        n++;
    }
    CHECK(n == 10, "pipelines.json has %d runs, expected 10", n);
    printf("    worst over all runs: latents %.2e, image %.2e\n", worst_lat, worst_img);
    sd_pipeline_free(&p);
    cJSON_Delete(j);
}

PIPE_TEST(prompt_embeds_match_diffusers)
{
    sd_pipeline p;
    if (!open_pipeline(&p)) return;
    dl_safetensors g;
    dl_tensor want_pos = {0}, want_neg = {0}, pos = {0}, neg = {0};
    if (CHECK(dl_st_open(&g, GOLDEN_DIR "/pipeline_prompt_embeds.safetensors") == DL_OK, "%s", dl_error_message())) {
        if (load(&g, "prompt_embeds", &want_pos) && load(&g, "negative_prompt_embeds", &want_neg) &&
            dl_tensor_alloc(&pos, 3, DL_SHAPE(1, 77, p.context_dim)) == DL_OK &&
            dl_tensor_alloc(&neg, 3, DL_SHAPE(1, 77, p.context_dim)) == DL_OK) {
            int ids[77];
            CHECK(sd_pipeline_encode(&p, PROMPT, &pos, ids) == DL_OK, "%s", dl_error_message());
            CHECK(sd_pipeline_encode(&p, NEGATIVE, &neg, NULL) == DL_OK, "%s", dl_error_message());
            CHECK(ids[0] == 49406, "BOS first");
            printf("    prompt_embeds %.2e, negative_prompt_embeds %.2e\n",
                   dl_max_abs_diff(pos.data, want_pos.data, (size_t)pos.numel),
                   dl_max_abs_diff(neg.data, want_neg.data, (size_t)neg.numel));
            CHECK_CLOSE("prompt_embeds", pos.data, want_pos.data, (size_t)pos.numel, 1e-4);
            CHECK_CLOSE("negative_prompt_embeds", neg.data, want_neg.data, (size_t)neg.numel, 1e-4);
            /* the run's context is [negative, positive] */
            sd_run_opts o = golden_opts(DL_SAMPLER_DDIM, NULL);
            o.steps = 1;
            o.skip_decode = 1;
            sd_run_result r;
            if (CHECK(sd_pipeline_run(&p, &o, NULL, NULL, &r) == DL_OK, "%s", dl_error_message()) &&
                CHECK(r.context.shape[0] == 2, "CFG context batch %lld", (long long)r.context.shape[0])) {
                CHECK_CLOSE("context[0] = negative", r.context.data, want_neg.data, (size_t)want_neg.numel, 1e-4);
                CHECK_CLOSE("context[1] = prompt", r.context.data + want_neg.numel, want_pos.data, (size_t)want_pos.numel, 1e-4);
            }
            sd_run_result_free(&r);
        }
        dl_st_close(&g);
    }
    /* after release the encoder is gone and says so */
    sd_pipeline_release_text_encoder(&p);
    if (pos.data) EXPECT_FAIL(sd_pipeline_encode(&p, PROMPT, &pos, NULL), DL_ERR_ARG, "released", "encode after release");
    dl_tensor_free(&want_pos); dl_tensor_free(&want_neg); dl_tensor_free(&pos); dl_tensor_free(&neg);
    sd_pipeline_free(&p);
}

/* Seed 42 drawn by our generator is the fixtures' init_latents, and a run
 * that draws its own latents (no init_latents, seed 42) is the DDIM run. */
PIPE_TEST(seed_42_draws_the_golden_latents)
{
    dl_safetensors g;
    if (!CHECK(dl_st_open(&g, GOLDEN_DIR "/pipeline_ddim.safetensors") == DL_OK, "%s", dl_error_message())) return;
    dl_tensor init = {0}, mine = {0}, fin = {0};
    if (load(&g, "init_latents", &init) && load(&g, "latents_final", &fin) &&
        dl_tensor_alloc(&mine, 4, DL_SHAPE(1, 4, 32, 32)) == DL_OK) {
        dl_rng rng;
        dl_rng_seed(&rng, 42);
        dl_rng_randn_tensor(&rng, &mine);
        double d = dl_max_abs_diff(mine.data, init.data, (size_t)init.numel);
        printf("    randn seed 42 vs init_latents: %.2e\n", d);
        CHECK(d <= 1e-6, "seed 42: max diff %g", d);
        sd_pipeline p;
        if (open_pipeline(&p)) {
            sd_run_opts o = golden_opts(DL_SAMPLER_DDIM, NULL);
            o.seed = 42;
            o.skip_decode = 1;
            sd_run_result r;
            if (CHECK(sd_pipeline_run(&p, &o, NULL, NULL, &r) == DL_OK, "%s", dl_error_message()))
                CHECK_CLOSE("latents_final (drawn with seed 42)", r.latents.data, fin.data, (size_t)fin.numel, LATENT_TOL);
            sd_run_result_free(&r);
            sd_pipeline_free(&p);
        }
    }
    dl_tensor_free(&init); dl_tensor_free(&mine); dl_tensor_free(&fin);
    dl_st_close(&g);
}

/* img2img's plug-in: start DDIM from the golden latents after call 4 at
 * call 4; the rest of the run must end at the golden final latents. */
PIPE_TEST(start_latents_resume_a_run)
{
    dl_safetensors g;
    if (!CHECK(dl_st_open(&g, GOLDEN_DIR "/pipeline_ddim.safetensors") == DL_OK, "%s", dl_error_message())) return;
    dl_tensor fin = {0}, steps = {0}, start = {0};
    sd_pipeline p;
    if (load(&g, "latents_final", &fin) && load_flat(&g, "latents_per_step", &steps) && open_pipeline(&p)) {
        const int64_t n = fin.numel;
        if (dl_tensor_view(&start, steps.data + 3 * n, 4, DL_SHAPE(1, 4, 32, 32)) == DL_OK) {
            sd_run_opts o = golden_opts(DL_SAMPLER_DDIM, NULL);
            o.start_latents = &start;
            o.start_step = 4;
            o.skip_decode = 1;
            sd_run_result r;
            if (CHECK(sd_pipeline_run(&p, &o, NULL, NULL, &r) == DL_OK, "%s", dl_error_message())) {
                CHECK(r.calls == 4, "resumed run made %d calls, want 4", r.calls);
                CHECK_CLOSE("latents_final (resumed at call 4)", r.latents.data, fin.data, (size_t)n, LATENT_TOL);
            }
            sd_run_result_free(&r);
            o.start_step = 8;
            EXPECT_FAIL(sd_pipeline_run(&p, &o, NULL, NULL, &r), DL_ERR_ARG, "start_step", "start_step past the end");
            sd_run_result_free(&r);
        }
        sd_pipeline_free(&p);
    }
    dl_tensor_free(&fin); dl_tensor_free(&steps);
    dl_st_close(&g);
}

/* ControlNet's plug-in: hand the UNet the residuals diffusers' ControlNet
 * pipeline computed for its first step (recorded in controlnet_ddim); the
 * first latents after that step must be the golden ones, and must differ
 * from a run without residuals. */
typedef struct { const dl_safetensors *g; dl_tensor down[12], mid; int n_down, calls; } cn_hook;

static dl_status first_step_residuals(void *ctx, const dl_tensor *sample, const float *t, const dl_tensor *context,
                                      sd_unet_residuals *res)
{
    cn_hook *h = ctx;
    (void)context;
    if (h->calls++ > 0) return DL_OK;          /* only the first call has recorded residuals */
    if (sample->shape[0] != 2 || t[0] != 876.0f) return dl_fail(DL_ERR_ARG, "unexpected first call");
    for (int k = 0; k < h->n_down; k++) res->down[k] = &h->down[k];
    res->n_down = h->n_down;
    res->mid = &h->mid;
    return DL_OK;
}

PIPE_TEST(controlnet_residuals_plug_in)
{
    dl_safetensors g;
    if (!CHECK(dl_st_open(&g, GOLDEN_DIR "/controlnet_ddim.safetensors") == DL_OK, "%s", dl_error_message())) return;
    cn_hook h;
    memset(&h, 0, sizeof h);
    h.g = &g;
    sd_pipeline p;
    dl_tensor steps = {0}, init = {0};
    int ok = open_pipeline(&p);
    h.n_down = ok ? sd_unet_num_skips(&p.unet.cfg) : 0;
    for (int k = 0; k < h.n_down && ok; k++) {
        char name[64];
        snprintf(name, sizeof name, "step0.down_block_res_samples.%d", k);
        ok = load(&g, name, &h.down[k]);
    }
    ok = ok && load(&g, "step0.mid_block_res_sample", &h.mid) && load_flat(&g, "latents_per_step", &steps);
    if (ok) {
        dl_safetensors gd;   /* the ControlNet run starts from the same seed-42 latents */
        if (CHECK(dl_st_open(&gd, GOLDEN_DIR "/pipeline_ddim.safetensors") == DL_OK, "%s", dl_error_message())) {
            ok = load(&gd, "init_latents", &init);
            dl_st_close(&gd);
        }
    }
    if (ok) {
        sd_run_opts o = golden_opts(DL_SAMPLER_DDIM, &init);
        o.steps = 8;
        o.residuals = first_step_residuals;
        o.residuals_ctx = &h;
        o.skip_decode = 1;
        recorder rec = {malloc(8 * (size_t)init.numel * sizeof(float)), 0, 8, init.numel};
        sd_run_result r;
        if (CHECK(sd_pipeline_run(&p, &o, record, &rec, &r) == DL_OK, "%s", dl_error_message())) {
            CHECK(h.calls == 8, "the hook was asked %d times, want 8", h.calls);
            double d = dl_max_abs_diff(rec.all, steps.data, (size_t)init.numel);
            printf("    latents after the ControlNet step: %.2e\n", d);
            CHECK(d <= LATENT_TOL, "first step with residuals: max diff %g", d);
        }
        sd_run_result_free(&r);
        o.residuals = NULL;
        rec.n = 0;
        if (CHECK(sd_pipeline_run(&p, &o, record, &rec, &r) == DL_OK, "%s", dl_error_message()))
            CHECK(dl_max_abs_diff(rec.all, steps.data, (size_t)init.numel) > 1e-2, "the residuals made no difference");
        sd_run_result_free(&r);
        free(rec.all);
    }
    for (int k = 0; k < 12; k++) dl_tensor_free(&h.down[k]);
    dl_tensor_free(&h.mid); dl_tensor_free(&steps); dl_tensor_free(&init);
    if (h.n_down) sd_pipeline_free(&p);
    dl_st_close(&g);
}

/* Options that change the run: no CFG at g <= 1, guidance_rescale,
 * v_prediction from the config, the callback can stop. */
static int stop_after_two(void *ctx, const sd_step_info *info) { (void)ctx; return info->call >= 2; }

/* DDIM with v_prediction: the predicted x0 of every call must be
 * sqrt(abar_t) x_t - sqrt(1 - abar_t) v, v = the guided model output */
typedef struct { const sd_pipeline *p; int calls; double worst; } vcheck;

static int check_v_x0(void *ctx, const sd_step_info *info)
{
    vcheck *v = ctx;
    const dl_sampler *s = info->sampler;
    const double abar = v->p->schedule.alphas_cumprod[(int)info->timestep];
    for (int64_t i = 0; i < s->x0.numel; i++) {
        double want = sqrt(abar) * s->model_in.data[i] - sqrt(1 - abar) * s->eps.data[i];
        v->worst = fmax(v->worst, fabs(want - s->x0.data[i]));
    }
    v->calls++;
    return 0;
}

PIPE_TEST(options_and_stopping)
{
    sd_pipeline p;
    if (!open_pipeline(&p)) return;
    sd_run_opts o = golden_opts(DL_SAMPLER_EULER, NULL);
    o.steps = 4;
    o.skip_decode = 1;
    sd_run_result base, r;
    if (!CHECK(sd_pipeline_run(&p, &o, NULL, NULL, &base) == DL_OK, "%s", dl_error_message())) { sd_pipeline_free(&p); return; }
    const size_t n = (size_t)base.latents.numel;
    o.guidance = 1.0f;
    if (CHECK(sd_pipeline_run(&p, &o, NULL, NULL, &r) == DL_OK, "%s", dl_error_message())) {
        CHECK(r.context.shape[0] == 1, "g = 1 must run the prompt alone (context batch %lld)", (long long)r.context.shape[0]);
        CHECK(dl_max_abs_diff(r.latents.data, base.latents.data, n) > 1e-3, "g = 1 and g = 7.5 gave the same latents");
    }
    sd_run_result_free(&r);
    o.guidance = 7.5f;
    o.guidance_rescale = 0.7f;
    if (CHECK(sd_pipeline_run(&p, &o, NULL, NULL, &r) == DL_OK, "%s", dl_error_message()))
        CHECK(dl_max_abs_diff(r.latents.data, base.latents.data, n) > 1e-3, "guidance_rescale changed nothing");
    sd_run_result_free(&r);
    o.guidance_rescale = 0;
    if (CHECK(sd_pipeline_run(&p, &o, stop_after_two, NULL, &r) == DL_OK, "%s", dl_error_message()))
        CHECK(r.stopped && r.calls == 2 && r.image.data == NULL, "stop: stopped %d after %d calls", r.stopped, r.calls);
    sd_run_result_free(&r);
    /* bad options name themselves */
    o.width = 65;
    EXPECT_FAIL(sd_pipeline_run(&p, &o, NULL, NULL, &r), DL_ERR_ARG, "multiples of 2", "width 65");
    sd_run_result_free(&r);
    o.width = 64;
    o.steps = 0;
    EXPECT_FAIL(sd_pipeline_run(&p, &o, NULL, NULL, &r), DL_ERR_ARG, "steps", "0 steps");
    sd_run_result_free(&r);
    sd_run_result_free(&base);
    sd_pipeline_free(&p);

    /* v_prediction via the config: the same model read as a v-predictor walks elsewhere */
    sd_load_opts lo = {0};
    lo.prediction_type = "v_prediction";
    if (CHECK(sd_pipeline_load(&p, TINY_SD, &lo) == DL_OK, "%s", dl_error_message())) {
        CHECK(p.scheduler.values.prediction_type == DL_PREDICT_V, "prediction_type not taken");
        o = golden_opts(DL_SAMPLER_DDIM, NULL);
        o.steps = 2;
        o.skip_decode = 1;
        vcheck vc = {&p, 0, 0};
        if (CHECK(sd_pipeline_run(&p, &o, check_v_x0, &vc, &r) == DL_OK, "%s", dl_error_message())) {
            CHECK(r.calls == 2 && vc.calls == 2, "calls %d", r.calls);
            printf("    v_prediction: x0 = sqrt(abar) x - sqrt(1 - abar) v within %.1e\n", vc.worst);
            CHECK(vc.worst <= 1e-4, "the sampler did not read the model output as v (max diff %g)", vc.worst);
        }
        sd_run_result_free(&r);
        sd_pipeline_free(&p);
    }
    lo.prediction_type = "sample";
    EXPECT_FAIL(sd_pipeline_load(&p, TINY_SD, &lo), DL_ERR_ARG, "prediction_type", "unknown prediction type");
}

/* The single-file checkpoint (fp16, LDM names) with the folder's configs
 * gives the DDIM run within fp16 rounding; without a tokenizer the message
 * says what is missing. */
PIPE_TEST(single_file_checkpoint)
{
    sd_pipeline p;
    sd_load_opts lo = {0};
    lo.config_dir = TINY_SD;
    if (!CHECK(sd_pipeline_load(&p, TINY_SD "/tiny-sd.safetensors", &lo) == DL_OK, "%s", dl_error_message())) return;
    CHECK(!strcmp(p.name, "tiny-sd"), "model name '%s'", p.name);
    CHECK(strstr(p.scheduler_source, "scheduler_config.json") != NULL, "scheduler from %s", p.scheduler_source);
    dl_safetensors g;
    dl_tensor init = {0}, fin = {0};
    if (CHECK(dl_st_open(&g, GOLDEN_DIR "/pipeline_ddim.safetensors") == DL_OK, "%s", dl_error_message())) {
        if (load(&g, "init_latents", &init) && load(&g, "latents_final", &fin)) {
            sd_run_opts o = golden_opts(DL_SAMPLER_DDIM, &init);
            sd_run_result r;
            if (CHECK(sd_pipeline_run(&p, &o, NULL, NULL, &r) == DL_OK, "%s", dl_error_message())) {
                double d = dl_max_abs_diff(r.latents.data, fin.data, (size_t)fin.numel);
                printf("    single file (fp16 weights): latents_final %.2e\n", d);
                CHECK(d <= 5e-2, "single file: latents_final differ by %g (fp16 rounding expected ~1e-2)", d);
            }
            sd_run_result_free(&r);
        }
        dl_st_close(&g);
    }
    dl_tensor_free(&init); dl_tensor_free(&fin);
    sd_pipeline_free(&p);

    /* a single file alone in a folder, configs elsewhere, no tokenizer anywhere */
    char dir[512], path[700], cfg[700], src[2400], dst[1200];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("sd_pipeline/lonely"));
    snprintf(path, sizeof path, "%s/tiny.safetensors", dir);
    snprintf(cfg, sizeof cfg, "%s/cfg", dir);
    char cwd[1024];
    if (!CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd")) return;
    remove(path);
    snprintf(src, sizeof src, "%s/" TINY_SD "/tiny-sd.safetensors", cwd);
    CHECK(symlink(src, path) == 0, "symlink %s", path);
    const char *parts[3] = {"text_encoder", "unet", "vae"};
    for (int i = 0; i < 3; i++) {
        snprintf(dst, sizeof dst, "%s/%s", cfg, parts[i]);
        snprintf(src, sizeof src, "mkdir -p %s", dst);
        CHECK(system(src) == 0, "mkdir");
        snprintf(dst, sizeof dst, "%s/%s/config.json", cfg, parts[i]);
        snprintf(src, sizeof src, "%s/" TINY_SD "/%s/config.json", cwd, parts[i]);
        remove(dst);
        CHECK(symlink(src, dst) == 0, "symlink %s", dst);
    }
    lo.config_dir = cfg;
    EXPECT_FAIL(sd_pipeline_load(&p, path, &lo), DL_ERR_IO, "no tokenizer", "single file without tokenizer");
    lo.tokenizer_dir = TINY_SD "/tokenizer";
    if (CHECK(sd_pipeline_load(&p, path, &lo) == DL_OK, "with --tokenizer: %s", dl_error_message())) {
        CHECK(strstr(p.scheduler_source, "built in") != NULL, "no scheduler config -> SD 1.5's, got %s", p.scheduler_source);
        sd_pipeline_free(&p);
    }
    EXPECT_FAIL(sd_pipeline_load(&p, "tests/fixtures/no-such-model", NULL), DL_ERR_IO, "no-such-model", "missing model");
}

/* The preview map: the SD coefficients are a fixed matrix; a fit on a
 * latent and its decoded image reproduces a linear relation exactly. */
PIPE_TEST(preview_fit_recovers_a_linear_map)
{
    dl_tensor lat = {0}, img = {0};
    dl_rng rng;
    dl_rng_seed(&rng, 3);
    if (!CHECK(dl_tensor_alloc(&lat, 4, DL_SHAPE(1, 4, 8, 8)) == DL_OK && dl_tensor_alloc(&img, 4, DL_SHAPE(1, 3, 16, 16)) == DL_OK,
               "alloc")) return;
    dl_rng_randn_tensor(&rng, &lat);
    sd_preview_map want = sd_preview_map_sd(), got;
    want.bias[1] = 0.1f;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 16; y++)
            for (int x = 0; x < 16; x++) {
                float v = want.bias[c];
                for (int k = 0; k < 4; k++) v += want.m[k][c] * lat.data[(k * 8 + y / 2) * 8 + x / 2];
                img.data[(c * 16 + y) * 16 + x] = (v + 1) / 2;   /* no clamping: a pure linear relation */
            }
    CHECK(sd_preview_fit(&got, &lat, &img) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE("preview map", &got.m[0][0], &want.m[0][0], 12, 1e-4);
    CHECK_CLOSE("preview bias", got.bias, want.bias, 3, 1e-4);
    dl_image pv;
    if (CHECK(sd_preview_image(&got, &lat, 0, &pv) == DL_OK, "%s", dl_error_message())) {
        CHECK(pv.w == 8 && pv.h == 8 && pv.c == 3, "preview %dx%dx%d", pv.w, pv.h, pv.c);
        dl_image_free(&pv);
    }
    dl_tensor_free(&lat); dl_tensor_free(&img);
}

/* sd_fit_size: the picture's aspect, scaled down to at most 64 latent
 * pixels a side, multiples of the VAE factor; never scaled up; a side the
 * user gave is kept. */
TEST(sd_pipeline, fit_size)
{
    int w = 0, h = 0;
    sd_fit_size(1000, 500, 8, 64, &w, &h);
    CHECK(w == 512 && h == 256, "1000x500, factor 8: %dx%d, want 512x256", w, h);
    w = h = 0;
    sd_fit_size(451, 300, 8, 64, &w, &h);
    CHECK(w == 448 && h == 296, "451x300 is small enough, rounded down to multiples of 8: %dx%d", w, h);
    w = 640, h = 0;
    sd_fit_size(1000, 500, 2, 64, &w, &h);
    CHECK(w == 640 && h == 64, "given width kept, height fitted for factor 2: %dx%d", w, h);
}
