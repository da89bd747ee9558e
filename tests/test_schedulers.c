/* test_schedulers.c - every sampler of core/sampling.h against diffusers
 * v0.27.2 (tests/fixtures/schedulers/, see its README).
 *
 * 17 scheduler variants x {4, 10, 25} steps. For each run the test
 *   - builds the config the way diffusers did (Cls.from_config(SD 1.5 config,
 *     **overrides)): the run's full config from schedulers.json goes through
 *     dl_scheduler_config_parse + dl_scheduler_config_for;
 *   - checks the schedule: alphas_cumprod bit for bit, the timesteps exactly
 *     (KDPM2's fractional midpoint timesteps within 2e-4), the sigmas within
 *     1 ulp, init_noise_sigma, latents_0 = init_latent * init_noise_sigma;
 *   - replays the pipeline loop with the fixture's analytic model and
 *     compares every model input and every latent (LCM: also `denoised`),
 *     once with the recorded noise draws injected and once with dl_rng
 *     seeded 1234 (which must draw exactly the same noise).
 *
 *   make test K=schedulers
 *   DL_TEST_VERBOSE=1 bin/run_tests schedulers     also prints the max errors per run
 */
#include "testing.h"
#include "../core/safetensors.h"
#include "../core/sampling.h"
#include "../core/scheduler_config.h"
#include "../core/schedule.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIX_DIR "tests/fixtures/schedulers"
#define NLAT 256              /* [1, 4, 8, 8] */
#define LATENT_RTOL 1e-6      /* max |ours - diffusers| <= 1e-5 + 1e-6 * max |latent| (latents reach ~30) */
#define LATENT_ATOL 1e-5

static const char *const RUNS[17] = {
    "ddim", "ddim_vpred", "ddim_trailing", "pndm", "euler", "euler_vpred", "euler_linspace", "euler_ancestral",
    "dpmpp_2m", "dpmpp_2m_karras", "ddpm", "lms", "heun", "unipc", "lcm", "kdpm2", "kdpm2_ancestral"};
static const int STEPS[3] = {4, 10, 25};

/* The fixture's stand-in model: eps = 0.3 x cos(t/1000) + 0.1 sin(x), with
 * t/1000 in double (Python), then cos in float32 (torch). */
static dl_status analytic_model(void *ctx, const dl_tensor *x, const float *t, dl_tensor *eps)
{
    (void)ctx;
    int64_t per_item = x->numel / x->shape[0];
    for (int64_t b = 0; b < x->shape[0]; b++) {
        float c = cosf((float)((double)t[b] / 1000.0));
        for (int64_t i = b * per_item; i < (b + 1) * per_item; i++) {
            float v = x->data[i];
            eps->data[i] = 0.3f * v * c + 0.1f * sinf(v);
        }
    }
    return DL_OK;
}

/* schedulers.json, parsed once */
static cJSON *meta_root(void)
{
    static cJSON *root;
    static int tried;
    if (tried) return root;
    tried = 1;
    FILE *f = fopen(FIX_DIR "/schedulers.json", "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)n + 1);
    if (text && fread(text, 1, (size_t)n, f) == (size_t)n) {
        text[n] = 0;
        /* Python's json writes DPM-Solver's lambda_min_clipped as -Infinity,
         * which is not JSON: make it null (the key is ignored anyway) */
        for (char *p = text; (p = strstr(p, "-Infinity")) != NULL;) memcpy(p, "     null", 9);
        root = cJSON_Parse(text);
    }
    free(text);
    fclose(f);
    return root;
}

static float *read_f32(const dl_safetensors *f, const char *name, int64_t *numel)
{
    const dl_st_entry *e = dl_st_find(f, name);
    *numel = 0;
    if (!e) return NULL;
    *numel = dl_st_numel(e);
    float *p = malloc((size_t)*numel * sizeof(float));
    if (p && dl_st_read_f32(f, e, p) != DL_OK) { free(p); return NULL; }
    return p;
}

/* ulps between two floats of the same sign */
static int64_t ulps(float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    return llabs((long long)ia - (long long)ib);
}

typedef struct { double latent, model_in, sigma_ulps, timestep; } errors;

/* The sampler configured as the fixture run was, from its schedulers.json entry. */
static int config_of(const char *key, dl_sampler_kind *kind, dl_sampler_config *cfg, dl_schedule *sched,
                     const cJSON **entry)
{
    cJSON *root = meta_root();
    if (!CHECK(root, FIX_DIR "/schedulers.json missing or not JSON")) return 0;
    const cJSON *run = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "runs"), key);
    if (!CHECK(run, "schedulers.json has no run %s", key)) return 0;
    *entry = run;
    /* the run's full config, with its class name, through our reader */
    cJSON *conf = cJSON_Duplicate(cJSON_GetObjectItemCaseSensitive(run, "config"), 1);
    cJSON_AddStringToObject(conf, "_class_name", cJSON_GetObjectItemCaseSensitive(run, "class")->valuestring);
    char *text = cJSON_PrintUnformatted(conf);
    cJSON_Delete(conf);
    dl_scheduler_config file;
    int ok = CHECK(dl_scheduler_config_parse(text, key, &file) == DL_OK, "%s", dl_error_message());
    free(text);
    if (!ok || !CHECK(file.has_kind, "%s: class %s not recognised", key, file.class_name)) return 0;
    *kind = file.kind;
    if (!CHECK(dl_scheduler_config_for(&file, *kind, cfg) == DL_OK, "%s", dl_error_message())) return 0;
    return CHECK(dl_scheduler_config_schedule(&file, sched) == DL_OK, "%s", dl_error_message());
}

static void replay(const char *run, int steps, int use_rng, errors *err)
{
    char key[64], path[256];
    snprintf(key, sizeof key, "%s_steps%d", run, steps);
    snprintf(path, sizeof path, FIX_DIR "/%s.safetensors", key);
    dl_sampler_kind kind;
    dl_sampler_config cfg;
    dl_schedule sched = {0};
    const cJSON *entry = NULL;
    if (!config_of(key, &kind, &cfg, &sched, &entry)) { dl_schedule_free(&sched); return; }
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, path) == DL_OK, "%s", dl_error_message())) { dl_schedule_free(&sched); return; }
    int64_t n_ts, n_sig, n_ac, n_init, n_lat0, n_in, n_lat, n_noise, n_den;
    float *ts = read_f32(&f, "timesteps", &n_ts), *sig = read_f32(&f, "sigmas", &n_sig);
    float *ac = read_f32(&f, "alphas_cumprod", &n_ac), *init = read_f32(&f, "init_latent", &n_init);
    float *lat0 = read_f32(&f, "latents_0", &n_lat0), *inputs = read_f32(&f, "model_inputs", &n_in);
    float *lat = read_f32(&f, "latents", &n_lat), *noise = read_f32(&f, "noise_draws", &n_noise);
    float *den = read_f32(&f, "denoised", &n_den);
    int K = (int)n_ts, D = (int)(n_noise / NLAT);
    dl_sampler s;
    memset(&s, 0, sizeof s);
    if (!CHECK(ts && ac && init && lat0 && inputs && lat && n_lat == (int64_t)K * NLAT && n_in == n_lat,
               "%s: tensors missing or of the wrong size", path))
        goto done;
    CHECK(n_ac == 1000 && !memcmp(ac, sched.alphas_cumprod, 1000 * sizeof(float)),
          "%s: alphas_cumprod differs from the config's schedule", key);
    if (!CHECK(dl_sampler_init(&s, kind, &sched, &cfg, steps, 0.0f, 4, DL_SHAPE(1, 4, 8, 8)) == DL_OK,
               "%s: %s", key, dl_error_message()))
        goto done;
    /* --- the schedule --- */
    int fractional = kind == DL_SAMPLER_KDPM2 || kind == DL_SAMPLER_KDPM2_A;
    if (!CHECK(s.num_calls == K, "%s: %d model calls, diffusers %d", key, s.num_calls, K)) goto done;
    for (int i = 0; i < K; i++) {
        double d = fabs((double)s.timesteps[i] - ts[i]);
        err->timestep = fmax(err->timestep, d);
        if (!CHECK(fractional ? d <= 2e-4 : d == 0, "%s: timestep %d is %.9g, diffusers %.9g", key, i, s.timesteps[i], ts[i]))
            break;
    }
    if (sig) {
        CHECK(s.num_sigmas == n_sig, "%s: %d sigmas, diffusers %lld", key, s.num_sigmas, (long long)n_sig);
        for (int i = 0; i < s.num_sigmas && i < n_sig; i++) {
            int64_t u = ulps(s.sigmas[i], sig[i]);
            err->sigma_ulps = fmax(err->sigma_ulps, (double)u);
            if (!CHECK(u <= 1, "%s: sigma %d is %.9g, diffusers %.9g", key, i, s.sigmas[i], sig[i])) break;
        }
    } else {
        CHECK(!s.sigmas, "%s: diffusers has no sigmas for this scheduler", key);
    }
    double want_sigma = cJSON_GetObjectItemCaseSensitive(entry, "init_noise_sigma")->valuedouble;
    CHECK(ulps(s.init_noise_sigma, (float)want_sigma) <= 1, "%s: init_noise_sigma %.9g, diffusers %.9g", key,
          s.init_noise_sigma, want_sigma);
    /* --- the loop --- */
    dl_sampler_set_noise_from(&s, init);
    CHECK_CLOSE("latents_0 = init_latent * init_noise_sigma", s.x.data, lat0, NLAT, 0);
    dl_tensor x_T;
    dl_tensor_view(&x_T, lat0, 4, DL_SHAPE(1, 4, 8, 8));
    dl_sampler_set_x(&s, &x_T);
    dl_rng rng;
    dl_rng_seed(&rng, 1234);
    double absmax = 0;
    for (int i = 0; i < n_lat; i++) absmax = fmax(absmax, fabs(lat[i]));
    double tol = LATENT_ATOL + LATENT_RTOL * absmax;
    int draws = 0;
    for (int k = 0; k < K; k++) {
        int needs = dl_sampler_update_draws_noise(&s);
        if (!CHECK(dl_sampler_predict(&s, analytic_model, NULL) == DL_OK, "%s", dl_error_message())) break;
        err->model_in = fmax(err->model_in, dl_max_abs_diff(s.model_in.data, inputs + (size_t)k * NLAT, NLAT));
        const float *z = NULL;
        if (needs && !use_rng) {
            if (!CHECK(draws < D, "%s: more noise draws than diffusers made (%d)", key, D)) break;
            z = noise + (size_t)draws * NLAT;
        }
        draws += needs;
        if (!CHECK(dl_sampler_update(&s, use_rng ? &rng : NULL, z) == DL_OK, "%s", dl_error_message())) break;
        if (needs && use_rng && draws <= D)
            CHECK(!memcmp(s.noise.data, noise + (size_t)(draws - 1) * NLAT, NLAT * sizeof(float)),
                  "%s: seeded draw %d differs from diffusers' noise", key, draws - 1);
        err->latent = fmax(err->latent, dl_max_abs_diff(s.x.data, lat + (size_t)k * NLAT, NLAT));
        if (den) err->latent = fmax(err->latent, dl_max_abs_diff(s.x0.data, den + (size_t)k * NLAT, NLAT));
    }
    CHECK(dl_sampler_done(&s) && s.model_calls == K, "%s: %lld model calls, want %d", key, (long long)s.model_calls, K);
    CHECK(draws == D, "%s: %d noise draws, diffusers made %d", key, draws, D);
    CHECK(err->model_in <= tol && err->latent <= tol,
          "%s (%s noise): max |model input - diffusers| = %.3g, max |latent - diffusers| = %.3g (tolerance %.3g)",
          key, use_rng ? "seeded" : "injected", err->model_in, err->latent, tol);
done:
    dl_sampler_free(&s);
    free(ts); free(sig); free(ac); free(init); free(lat0); free(inputs); free(lat); free(noise); free(den);
    dl_st_close(&f);
    dl_schedule_free(&sched);
}

static void replay_all(int use_rng)
{
    int verbose = getenv("DL_TEST_VERBOSE") != NULL;
    for (int r = 0; r < 17; r++) {
        errors worst = {0};
        for (int k = 0; k < 3; k++) {
            errors e = {0};
            replay(RUNS[r], STEPS[k], use_rng, &e);
            worst.latent = fmax(worst.latent, e.latent);
            worst.model_in = fmax(worst.model_in, e.model_in);
            worst.sigma_ulps = fmax(worst.sigma_ulps, e.sigma_ulps);
            worst.timestep = fmax(worst.timestep, e.timestep);
        }
        if (verbose)
            printf("    %-16s %s: max |latent diff| %.2e, |model input diff| %.2e, sigma ulps %g, |timestep diff| %.2g\n",
                   RUNS[r], use_rng ? "seeded  " : "injected", worst.latent, worst.model_in, worst.sigma_ulps, worst.timestep);
    }
}

TEST(schedulers, every_fixture_with_injected_noise) { replay_all(0); }
TEST(schedulers, every_fixture_with_seeded_rng) { replay_all(1); }

/* ---- names, configs, errors -------------------------------------------- */

TEST(schedulers, names_and_bad_arguments)
{
    dl_sampler_kind k;
    for (int i = 0; i < DL_SAMPLER_COUNT; i++)
        CHECK(dl_sampler_kind_from_name(dl_sampler_names[i], &k) == DL_OK && (int)k == i, "name %s", dl_sampler_names[i]);
    EXPECT_FAIL(dl_sampler_kind_from_name("dpm++", &k), DL_ERR_ARG, "dpm++", "unknown scheduler name");
    CHECK(strstr(dl_error_message(), "euler_a") != NULL, "the message lists the valid names: %s", dl_error_message());
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_SCALED_LINEAR);
    dl_sampler_config sd = dl_sampler_config_sd();
    dl_sampler sm;
    for (int i = 0; i < DL_SAMPLER_COUNT; i++) {
        EXPECT_FAIL(dl_sampler_init(&sm, (dl_sampler_kind)i, &s, &sd, 0, 0, 4, DL_SHAPE(1, 4, 8, 8)), DL_ERR_ARG,
                    dl_sampler_names[i], "0 steps");
        CHECK(strstr(dl_error_message(), "0 steps") != NULL, "N = 0: %s", dl_error_message());
    }
    EXPECT_FAIL(dl_sampler_init(&sm, DL_SAMPLER_LCM, &s, &sd, 51, 0, 4, DL_SHAPE(1, 4, 8, 8)), DL_ERR_ARG,
                "original_inference_steps", "LCM with more steps than its grid");
    dl_sampler_config karras = sd;
    karras.use_karras_sigmas = 1;
    EXPECT_FAIL(dl_sampler_init(&sm, DL_SAMPLER_EULER_A, &s, &karras, 10, 0, 4, DL_SHAPE(1, 4, 8, 8)), DL_ERR_ARG,
                "use_karras_sigmas", "Karras sigmas where diffusers has none");
    dl_schedule_free(&s);
}

TEST(schedulers, config_json_reader)
{
    /* SD 1.5's file: every class inherits leading + steps_offset 1 */
    dl_scheduler_config file;
    dl_scheduler_config_sd15(&file);
    CHECK(file.has_kind && file.kind == DL_SAMPLER_PNDM && !strcmp(file.class_name, "PNDMScheduler"), "SD 1.5 is PNDM");
    CHECK(file.beta_schedule == DL_SCHEDULE_SCALED_LINEAR && file.num_train_timesteps == 1000 &&
          file.beta_start == 0.00085 && file.beta_end == 0.012, "SD 1.5 betas");
    dl_sampler_config c;
    CHECK(dl_scheduler_config_for(&file, DL_SAMPLER_EULER, &c) == DL_OK && c.timestep_spacing == DL_SPACING_LEADING &&
          c.steps_offset == 1 && !c.set_alpha_to_one && !c.clip_sample, "euler from SD 1.5's config");
    /* a class's own defaults fill what the file lacks: Euler is linspace, DDIM clips */
    CHECK(dl_scheduler_config_parse("{\"_class_name\": \"EulerDiscreteScheduler\"}", "t", &file) == DL_OK &&
          file.kind == DL_SAMPLER_EULER, "%s", dl_error_message());
    CHECK(dl_scheduler_config_for(&file, DL_SAMPLER_EULER, &c) == DL_OK && c.timestep_spacing == DL_SPACING_LINSPACE,
          "Euler's own default spacing is linspace");
    CHECK(dl_scheduler_config_for(&file, DL_SAMPLER_DDIM, &c) == DL_OK && c.clip_sample && c.set_alpha_to_one &&
          c.timestep_spacing == DL_SPACING_LEADING, "DDIM's defaults");
    CHECK(dl_scheduler_config_parse("{\"_class_name\": \"DPMSolverMultistepScheduler\", \"use_karras_sigmas\": true}",
                                    "t", &file) == DL_OK && file.kind == DL_SAMPLER_DPMPP_2M_KARRAS, "DPM++ Karras");
    /* errors name the file and the key */
    EXPECT_FAIL(dl_scheduler_config_parse("{\"steps_offset\": \"one\"}", "cfg.json", &file), DL_ERR_FORMAT,
                "steps_offset", "a string where an integer belongs");
    CHECK(strstr(dl_error_message(), "cfg.json") != NULL, "names the file: %s", dl_error_message());
    EXPECT_FAIL(dl_scheduler_config_parse("{\"steps_offset\": 1.5}", "cfg.json", &file), DL_ERR_FORMAT,
                "steps_offset", "a fractional offset");
    EXPECT_FAIL(dl_scheduler_config_parse("{\"timestep_spacing\": \"sideways\"}", "cfg.json", &file), DL_ERR_FORMAT,
                "timestep_spacing", "unknown spacing");
    EXPECT_FAIL(dl_scheduler_config_parse("{\"prediction_type\": \"sample\"}", "cfg.json", &file), DL_ERR_FORMAT,
                "prediction_type", "unsupported prediction type");
    EXPECT_FAIL(dl_scheduler_config_parse("{\"thresholding\": true}", "cfg.json", &file), DL_ERR_FORMAT,
                "thresholding", "dynamic thresholding");
    EXPECT_FAIL(dl_scheduler_config_parse("{\"beta_schedule\": \"sigmoid\"}", "cfg.json", &file), DL_ERR_FORMAT,
                "beta_schedule", "unknown beta schedule");
    EXPECT_FAIL(dl_scheduler_config_parse("{\"trained_betas\": [0.1, 0.2]}", "cfg.json", &file), DL_ERR_FORMAT,
                "trained_betas", "explicit betas");
    EXPECT_FAIL(dl_scheduler_config_parse("{\"num_train_timesteps\": 1000,", "cfg.json", &file), DL_ERR_FORMAT,
                "not valid JSON", "broken JSON");
    CHECK(dl_scheduler_config_parse("{\"solver_type\": \"heun\"}", "cfg.json", &file) == DL_OK, "%s", dl_error_message());
    EXPECT_FAIL(dl_scheduler_config_for(&file, DL_SAMPLER_DPMPP_2M, &c), DL_ERR_FORMAT, "solver_type", "DPM++ heun");
    EXPECT_FAIL(dl_scheduler_config_load("tests/fixtures/schedulers/no_such.json", &file), DL_ERR_IO, "no_such.json",
                "missing file");
}

TEST(schedulers, step_api_and_description)
{
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_SCALED_LINEAR);
    dl_sampler_config sd = dl_sampler_config_sd();
    dl_sampler sm;
    char text[1024];
    /* the fixture README's numbers, as text */
    CHECK(dl_sampler_init(&sm, DL_SAMPLER_PNDM, &s, &sd, 4, 0, 4, DL_SHAPE(1, 4, 8, 8)) == DL_OK, "%s", dl_error_message());
    dl_sampler_describe(&sm, text, sizeof text);
    CHECK(strstr(text, "timesteps: [751, 501, 501, 251, 1]") && strstr(text, "init_noise_sigma: 1\n"), "pndm:\n%s", text);
    dl_sampler_free(&sm);
    CHECK(dl_sampler_init(&sm, DL_SAMPLER_EULER, &s, &sd, 8, 0, 4, DL_SHAPE(1, 4, 8, 8)) == DL_OK, "%s", dl_error_message());
    int need = dl_sampler_describe(&sm, text, sizeof text);
    CHECK(need == (int)strlen(text) && strstr(text, "timesteps: [876, 751, 626, 501, 376, 251, 126, 1]") &&
          strstr(text, "init_noise_sigma: 7.4393"), "euler, 8 steps:\n%s", text);
    CHECK(dl_sampler_describe(&sm, text, 10) == need && strlen(text) == 9, "a short buffer truncates like snprintf");
    CHECK(dl_sampler_current_sigma(&sm) == sm.sigmas[0] && dl_sampler_x0(&sm) == NULL, "before the first call");
    dl_sampler_free(&sm);
    /* Heun: 2N - 1 calls, each one step of the API, with x0 and sigma to show */
    CHECK(dl_sampler_init(&sm, DL_SAMPLER_HEUN, &s, &sd, 5, 0, 4, DL_SHAPE(2, 4, 8, 8)) == DL_OK, "%s", dl_error_message());
    dl_rng rng;
    dl_rng_seed(&rng, 3);
    dl_sampler_set_noise(&sm, &rng);
    int steps = 0;
    while (!dl_sampler_done(&sm)) {
        float sigma = dl_sampler_current_sigma(&sm);
        CHECK(dl_sampler_step(&sm, analytic_model, NULL, &rng) == DL_OK, "%s", dl_error_message());
        CHECK(dl_sampler_x0(&sm) != NULL && sigma > 0, "call %d: x0 and sigma %g", steps, sigma);
        steps++;
    }
    CHECK(steps == 9 && sm.model_calls == 9 && dl_sampler_current_t(&sm) == -1, "Heun, 5 steps: %d calls", steps);
    dl_sampler_free(&sm);
    dl_schedule_free(&s);
}

TEST(schedulers, guidance_rescale)
{
    /* diffusers' rescale_noise_cfg, recomputed in double */
    enum { B = 2, PER = 37 };
    dl_test_rng r = {11};
    float cond[B * PER], eps[B * PER], want[B * PER];
    dl_test_fill(&r, cond, B * PER, -1, 1);
    dl_test_fill(&r, eps, B * PER, -4, 4);
    const float phi = 0.7f;
    for (int b = 0; b < B; b++) {
        double mc = 0, me = 0, vc = 0, ve = 0;
        for (int i = 0; i < PER; i++) { mc += cond[b * PER + i]; me += eps[b * PER + i]; }
        mc /= PER; me /= PER;
        for (int i = 0; i < PER; i++) {
            vc += (cond[b * PER + i] - mc) * (cond[b * PER + i] - mc);
            ve += (eps[b * PER + i] - me) * (eps[b * PER + i] - me);
        }
        double ratio = sqrt(vc / (PER - 1)) / sqrt(ve / (PER - 1));
        for (int i = 0; i < PER; i++)
            want[b * PER + i] = (float)(phi * eps[b * PER + i] * ratio + (1 - phi) * eps[b * PER + i]);
    }
    dl_cfg_rescale(eps, cond, phi, B, PER);
    CHECK_CLOSE("rescale_noise_cfg", eps, want, B * PER, 1e-5);
}

/* Every sampler, 1..6 steps, every spacing, on DDPM's linear schedule (the
 * toy model's): either a schedule of finite timesteps in [0, T) and finite
 * sigmas, or a clean error (kdpm2_a with 2 linspace steps: diffusers itself
 * computes a NaN timestep there). */
TEST(schedulers, small_step_counts_never_give_nan)
{
    dl_schedule sched;
    if (!CHECK(dl_schedule_init(&sched, DL_SCHEDULE_LINEAR, 1000, 1e-4, 0.02) == DL_OK, "%s", dl_error_message())) return;
    int refused = 0;
    for (int sp = 0; sp < DL_SPACING_COUNT; sp++)
        for (int k = 0; k < DL_SAMPLER_COUNT; k++)
            for (int n = 1; n <= 6; n++) {
                dl_sampler_config cfg = dl_sampler_config_default();
                cfg.timestep_spacing = (dl_timestep_spacing)sp;
                dl_sampler s;
                if (dl_sampler_init(&s, (dl_sampler_kind)k, &sched, &cfg, n, 0.0f, 4, DL_SHAPE(1, 1, 2, 2)) != DL_OK) {
                    CHECK(strstr(dl_error_message(), dl_sampler_names[k]) != NULL, "error does not name the sampler: %s",
                          dl_error_message());
                    refused++;
                    continue;
                }
                for (int i = 0; i < s.num_calls; i++)
                    CHECK(isfinite(s.timesteps[i]) && s.timesteps[i] >= 0 && s.timesteps[i] <= 999,
                          "%s %d %s steps: timestep %d = %g", dl_sampler_names[k], n, dl_spacing_names[sp], i,
                          (double)s.timesteps[i]);
                dl_sampler_free(&s);
            }
    CHECK(refused >= 1, "kdpm2_a with 2 linspace steps should be refused");
    dl_schedule_free(&sched);
}
