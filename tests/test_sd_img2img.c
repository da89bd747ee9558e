/* test_sd_img2img.c - image-to-image (core/sd_img2img.h) and the sampler's
 * part-way start (core/sampling.h) against diffusers'
 * StableDiffusionImg2ImgPipeline: tests/fixtures/tiny-sd-golden/img2img_ddim.*
 * (test_image.png, strength 0.75, DDIM 8 steps, guidance 7.5, seed 1234;
 * see the README), once with our generator and once with diffusers'
 * recorded draws; plus the timestep cut and add_noise for every sampler. */
#include "testing.h"
#include "../core/safetensors.h"
#include "../core/sd_img2img.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TINY "tests/fixtures/tiny-sd"
#define GOLDEN "tests/fixtures/tiny-sd-golden/"
#define PIPE_TOL 1e-3   /* whole runs, as the txt2img goldens (fixtures README) */

static int load(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    return CHECK(dl_st_load_tensor(f, name, t) == DL_OK, "golden tensor %s: %s", name, dl_error_message());
}

/* A golden tensor of any rank ([6, 1, 4, 32, 32] has 5) as a flat array (malloc'd). */
static float *load_flat(const dl_safetensors *g, const char *name, int64_t *numel, int64_t *first_dim)
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
    *first_dim = e->shape[0];
    return v;
}

/* ---- the timestep cut ------------------------------------------------------ */

TEST(sd_img2img, strength_cuts_the_timesteps_as_diffusers)
{
    /* init_timestep = min(int(N * s), N), t_start = N - init_timestep (Python floats) */
    const struct { int N; double s; int t_start; } cases[] = {
        {8, 0.75, 2}, {8, 1.0, 0}, {8, 0.3, 6}, {10, 0.7, 3}, {10, 0.3, 7}, {50, 0.8, 10}, {25, 0.75, 7},
        {3, 0.5, 2}, {7, 0.99, 1}, {8, 0.125, 7}, {1, 1.0, 0}, {20, 0.55, 9},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(sd_img2img_t_start(cases[i].N, cases[i].s) == cases[i].t_start, "N %d strength %g: t_start %d, want %d",
              cases[i].N, cases[i].s, sd_img2img_t_start(cases[i].N, cases[i].s), cases[i].t_start);

    dl_schedule sched;
    if (!CHECK(dl_schedule_init(&sched, DL_SCHEDULE_SCALED_LINEAR, 1000, 0.00085f, 0.012f) == DL_OK, "%s", dl_error_message()))
        return;
    dl_sampler_config cfg = dl_sampler_config_sd();
    const int N = 8;
    for (int k = 0; k < DL_SAMPLER_COUNT; k++) {
        dl_sampler s;
        if (!CHECK(dl_sampler_init(&s, (dl_sampler_kind)k, &sched, &cfg, N, 0.0f, 4, DL_SHAPE(1, 4, 2, 2)) == DL_OK,
                   "%s", dl_error_message()))
            continue;
        sd_img2img_plan plan;
        if (CHECK(sd_img2img_plan_for(&s, 0.75, &plan) == DL_OK, "%s", dl_error_message())) {
            const int order = dl_sampler_order(s.kind);
            CHECK(order == (k == DL_SAMPLER_HEUN || k == DL_SAMPLER_KDPM2 || k == DL_SAMPLER_KDPM2_A ? 2 : 1), "order");
            CHECK(plan.t_start == 2 && plan.init_timestep == 6 && plan.start_call == 2 * order, "%s: plan %d %d %d",
                  dl_sampler_names[k], plan.t_start, plan.init_timestep, plan.start_call);
            CHECK(plan.calls == s.num_calls - plan.start_call && plan.start_timestep == s.timesteps[plan.start_call],
                  "%s: calls / start timestep", dl_sampler_names[k]);
        }
        if (k == DL_SAMPLER_DDIM) CHECK(plan.start_timestep == 626, "ddim starts at t %g, diffusers 626", plan.start_timestep);
        EXPECT_FAIL(sd_img2img_plan_for(&s, 0.1, &plan), DL_ERR_ARG, "strength", "a strength that runs no step");
        EXPECT_FAIL(sd_img2img_plan_for(&s, 1.5, &plan), DL_ERR_ARG, "strength", "strength > 1");
        dl_sampler_free(&s);
    }
    dl_schedule_free(&sched);
}

/* add_noise at a call's level, by hand, for each family; and set_start */
TEST(sd_img2img, add_noise_and_set_start)
{
    dl_schedule sched;
    if (!CHECK(dl_schedule_init(&sched, DL_SCHEDULE_SCALED_LINEAR, 1000, 0.00085f, 0.012f) == DL_OK, "%s", dl_error_message()))
        return;
    dl_sampler_config cfg = dl_sampler_config_sd();
    dl_test_rng r = {5};
    float x0[16], n[16], got[16], want[16];
    dl_test_fill(&r, x0, 16, -1, 1);
    dl_test_fill(&r, n, 16, -2, 2);
    for (int k = 0; k < DL_SAMPLER_COUNT; k++) {
        dl_sampler s;
        if (!CHECK(dl_sampler_init(&s, (dl_sampler_kind)k, &sched, &cfg, 6, 0.0f, 4, DL_SHAPE(1, 4, 2, 2)) == DL_OK,
                   "%s", dl_error_message()))
            continue;
        const int call = 2 * dl_sampler_order(s.kind);
        if (!CHECK(dl_sampler_add_noise(&s, call, x0, n, got, 16) == DL_OK, "%s", dl_error_message())) continue;
        for (int i = 0; i < 16; i++) {
            if (s.sigmas && k != DL_SAMPLER_DPMPP_2M && k != DL_SAMPLER_DPMPP_2M_KARRAS && k != DL_SAMPLER_UNIPC) {
                want[i] = x0[i] + n[i] * s.sigmas[call];
            } else if (s.sigmas) {
                float a = 1.0f / sqrtf(s.sigmas[call] * s.sigmas[call] + 1.0f);
                want[i] = a * x0[i] + s.sigmas[call] * a * n[i];
            } else {
                float ab = sched.alphas_cumprod[(int)s.timesteps[call]];
                want[i] = sqrtf(ab) * x0[i] + sqrtf(1.0f - ab) * n[i];
            }
        }
        CHECK_CLOSE(dl_sampler_names[k], got, want, 16, 0.0);
        /* the noise level matches the sampler's own view of that call */
        dl_tensor x = {0};
        if (CHECK(dl_tensor_alloc(&x, 4, DL_SHAPE(1, 4, 2, 2)) == DL_OK, "alloc")) {
            memcpy(x.data, got, sizeof got);
            if (CHECK(dl_sampler_set_start(&s, call, &x) == DL_OK, "%s", dl_error_message())) {
                CHECK(s.step_index == call && !dl_sampler_done(&s) && s.hist_len == 0 && !s.have_saved,
                      "%s: set_start state", dl_sampler_names[k]);
                CHECK(dl_sampler_current_timestep(&s) == s.timesteps[call], "timestep");
            }
            EXPECT_FAIL(dl_sampler_set_start(&s, s.num_calls, &x), DL_ERR_ARG, "dl_sampler_set_start", "past the end");
            dl_tensor_free(&x);
        }
        dl_sampler_free(&s);
    }
    dl_schedule_free(&sched);
}

/* ---- the golden run ------------------------------------------------------- */

typedef struct { float *per_step; int64_t numel; int calls, max_calls, first_call_seen, calls_announced; } step_log;

static int on_step(void *ctx, const sd_step_info *info)
{
    step_log *log = ctx;
    if (log->calls < log->max_calls)
        memcpy(log->per_step + (size_t)log->calls * log->numel, info->latents->data, (size_t)log->numel * sizeof(float));
    if (!log->calls) { log->first_call_seen = (int)info->timestep; log->calls_announced = info->calls; }
    log->calls++;
    return 0;
}

static void golden_run(int replay)
{
    sd_pipeline p;
    dl_safetensors g;
    if (!CHECK(sd_pipeline_load(&p, TINY, NULL) == DL_OK, "%s", dl_error_message())) return;
    if (!CHECK(dl_st_open(&g, GOLDEN "img2img_ddim.safetensors") == DL_OK, "%s", dl_error_message())) {
        sd_pipeline_free(&p);
        return;
    }
    dl_tensor pre = {0}, z0 = {0}, fin = {0}, img = {0}, n1 = {0}, n2 = {0}, x = {0};
    dl_image pic = {0};
    sd_run_result r;
    sd_img2img_info info;
    memset(&r, 0, sizeof r);
    memset(&info, 0, sizeof info);
    step_log log = {0};
    float *steps = NULL;
    int64_t n_steps = 0, k_steps = 0;
    if (load(&g, "init_image_preprocessed", &pre) && load(&g, "init_latents_scaled", &z0) &&
        (steps = load_flat(&g, "latents_per_step", &n_steps, &k_steps)) && load(&g, "latents_final", &fin) && load(&g, "image", &img) &&
        load(&g, "vae_sample_noise", &n1) && load(&g, "add_noise_noise", &n2) &&
        CHECK(dl_image_load(&pic, GOLDEN "test_image.png", 3) == DL_OK, "%s", dl_error_message()) &&
        CHECK(dl_tensor_alloc(&x, 4, DL_SHAPE(1, 3, pic.h, pic.w)) == DL_OK, "alloc")) {
        /* 1. the picture as the pipeline sees it: 2 v / 255 - 1, bit for bit */
        CHECK(sd_img2img_preprocess(&x, &pic) == DL_OK, "%s", dl_error_message());
        CHECK_CLOSE("init_image_preprocessed", x.data, pre.data, (size_t)pre.numel, 0.0);

        log.numel = fin.numel;
        log.max_calls = (int)k_steps;
        log.per_step = calloc((size_t)n_steps, sizeof(float));
        sd_run_opts o = sd_run_opts_default();
        o.prompt = "A majestic lion in a cosmic nebula, digital art, highly detailed";
        o.negative_prompt = "blurry, low quality, distorted";
        o.steps = 8;
        o.guidance = 7.5f;
        o.scheduler = DL_SAMPLER_DDIM;
        o.seed = 1234;
        o.width = o.height = 64;
        sd_img2img_input in = {&x, NULL, 0.75, replay ? n1.data : NULL, replay ? n2.data : NULL};
        if (CHECK(log.per_step != NULL, "malloc") &&
            CHECK(sd_img2img_run(&p, &o, &in, on_step, &log, &r, &info) == DL_OK, "%s", dl_error_message())) {
            const char *how = replay ? "(diffusers' draws)" : "(our generator)   ";
            CHECK(info.plan.start_call == 2 && info.plan.calls == 6 && info.plan.start_timestep == 626, "plan");
            CHECK(log.calls == 6 && log.calls_announced == 6 && log.first_call_seen == 626, "%d calls from t %d",
                  log.calls, log.first_call_seen);
            printf("    %s init_latents_scaled  max abs diff %.3g\n", how,
                   dl_max_abs_diff(info.init_latents.data, z0.data, (size_t)z0.numel));
            CHECK_CLOSE("init_latents_scaled", info.init_latents.data, z0.data, (size_t)z0.numel, 1e-4);
            printf("    %s latents_per_step (6) max abs diff %.3g\n", how,
                   dl_max_abs_diff(log.per_step, steps, (size_t)n_steps));
            CHECK_CLOSE("latents_per_step", log.per_step, steps, (size_t)n_steps, PIPE_TOL);
            printf("    %s latents_final        max abs diff %.3g\n", how,
                   dl_max_abs_diff(r.latents.data, fin.data, (size_t)fin.numel));
            CHECK_CLOSE("latents_final", r.latents.data, fin.data, (size_t)fin.numel, PIPE_TOL);
            if (CHECK(r.image.numel == img.numel, "image size")) {
                const int64_t plane = r.image.shape[2] * r.image.shape[3];
                float *nhwc = malloc((size_t)img.numel * sizeof(float));
                for (int64_t px = 0; px < plane && nhwc; px++)
                    for (int ch = 0; ch < 3; ch++) nhwc[px * 3 + ch] = r.image.data[ch * plane + px];
                printf("    %s image                max abs diff %.3g\n", how,
                       dl_max_abs_diff(nhwc, img.data, (size_t)img.numel));
                if (CHECK(nhwc != NULL, "malloc")) CHECK_CLOSE("image", nhwc, img.data, (size_t)img.numel, PIPE_TOL);
                free(nhwc);
            }
        }
    }
    free(log.per_step);
    free(steps);
    sd_run_result_free(&r);
    sd_img2img_info_free(&info);
    dl_tensor *ts[] = {&pre, &z0, &fin, &img, &n1, &n2, &x};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) dl_tensor_free(ts[i]);
    dl_image_free(&pic);
    dl_st_close(&g);
    sd_pipeline_free(&p);
}

TEST(sd_img2img, ddim_run_matches_diffusers) { golden_run(0); }
TEST(sd_img2img, ddim_run_with_recorded_draws) { golden_run(1); }

/* our generator draws exactly diffusers' two noise tensors, in order */
TEST(sd_img2img, generator_draws_in_diffusers_order)
{
    dl_safetensors g;
    if (!CHECK(dl_st_open(&g, GOLDEN "img2img_ddim.safetensors") == DL_OK, "%s", dl_error_message())) return;
    dl_tensor n1 = {0}, n2 = {0};
    if (load(&g, "vae_sample_noise", &n1) && load(&g, "add_noise_noise", &n2)) {
        dl_rng rng;
        dl_rng_seed(&rng, 1234);
        float *a = malloc((size_t)n1.numel * sizeof(float)), *b = malloc((size_t)n2.numel * sizeof(float));
        if (CHECK(a && b, "malloc")) {
            dl_rng_randn(&rng, a, n1.numel);
            dl_rng_randn(&rng, b, n2.numel);
            CHECK_CLOSE("first draw = vae_sample_noise", a, n1.data, (size_t)n1.numel, 0.0);
            CHECK_CLOSE("second draw = add_noise_noise", b, n2.data, (size_t)n2.numel, 0.0);
        }
        free(a); free(b);
    }
    dl_tensor_free(&n1); dl_tensor_free(&n2);
    dl_st_close(&g);
}

/* moments computed once and reused give the same run; errors name the problem */
TEST(sd_img2img, moments_reuse_and_errors)
{
    sd_pipeline p;
    if (!CHECK(sd_pipeline_load(&p, TINY, NULL) == DL_OK, "%s", dl_error_message())) return;
    dl_image pic = {0};
    dl_tensor x = {0}, mom = {0}, odd = {0};
    sd_run_result r1, r2;
    memset(&r1, 0, sizeof r1);
    memset(&r2, 0, sizeof r2);
    if (CHECK(dl_image_load(&pic, GOLDEN "test_image.png", 3) == DL_OK, "%s", dl_error_message()) &&
        CHECK(dl_tensor_alloc(&x, 4, DL_SHAPE(1, 3, 64, 64)) == DL_OK, "alloc") &&
        CHECK(sd_img2img_preprocess(&x, &pic) == DL_OK, "%s", dl_error_message()) &&
        CHECK(sd_img2img_encode(&p, &x, &mom) == DL_OK, "%s", dl_error_message())) {
        CHECK(mom.shape[1] == 8 && mom.shape[2] == 32 && mom.shape[3] == 32, "moments [1, 8, 32, 32] (f = %d)", p.downscale);
        sd_run_opts o = sd_run_opts_default();
        o.prompt = "a cat";
        o.steps = 4;
        o.scheduler = DL_SAMPLER_EULER_A;   /* draws noise: the generator must be continued */
        o.width = o.height = 64;
        o.seed = 3;
        sd_img2img_input a = {&x, NULL, 0.5, NULL, NULL}, b = {NULL, &mom, 0.5, NULL, NULL};
        if (CHECK(sd_img2img_run(&p, &o, &a, NULL, NULL, &r1, NULL) == DL_OK, "%s", dl_error_message()) &&
            CHECK(sd_img2img_run(&p, &o, &b, NULL, NULL, &r2, NULL) == DL_OK, "%s", dl_error_message())) {
            CHECK(r1.calls == 2 && r2.calls == 2, "calls %d %d", r1.calls, r2.calls);
            CHECK_CLOSE("same run from the moments", r2.latents.data, r1.latents.data, (size_t)r1.latents.numel, 0.0);
        }
        sd_run_result_free(&r1);
        sd_run_result_free(&r2);
        o.width = 65;
        EXPECT_FAIL(sd_img2img_run(&p, &o, &a, NULL, NULL, &r1, NULL), DL_ERR_ARG, "multiples of 2", "odd size");
        sd_run_result_free(&r1);
        o.width = 64;
        a.strength = 0.2;   /* int(4 * 0.2) = 0 */
        EXPECT_FAIL(sd_img2img_run(&p, &o, &a, NULL, NULL, &r1, NULL), DL_ERR_ARG, "strength", "no step");
        sd_run_result_free(&r1);
        if (CHECK(dl_tensor_alloc(&odd, 4, DL_SHAPE(1, 3, 63, 64)) == DL_OK, "alloc")) {
            dl_tensor m2 = {0};
            EXPECT_FAIL(sd_img2img_encode(&p, &odd, &m2), DL_ERR_ARG, "multiples of 2", "63 rows");
            dl_tensor_free(&m2);
        }
    }
    dl_tensor_free(&x); dl_tensor_free(&mom); dl_tensor_free(&odd);
    dl_image_free(&pic);
    sd_pipeline_free(&p);
}
