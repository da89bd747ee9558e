/* test_lesson06.c - lesson 06 (the scheduler race): the exercises of
 * docs/06_schedulers.md checked against diffusers' recorded runs
 * (tests/fixtures/schedulers/, see its README) and the library, the
 * per-call schedule the lesson plots, and bin/06_schedulers headless on
 * the shipped toy model (tiny settings), --help and bad arguments. */
#include "testing.h"
#include "../core/safetensors.h"
#include "../core/sampler_calls.h"
#include "../core/sampling.h"
#include "../core/schedule.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENV "OMP_WAIT_POLICY=passive "
#define FIX "tests/fixtures/schedulers/"

/* ---- the exercises -------------------------------------------------------- */

/* EXERCISE 2. One Euler step of the probability-flow ODE in the "VE" view
 * x = x0 + sigma eps, for n values: predict the clean sample, take the
 * slope d = dx/dsigma, walk from sigma to sigma_next along it. */
static void my_euler_step(const float *x, const float *eps, float sigma, float sigma_next, float *x_next, int n)
{
    for (int i = 0; i < n; i++) {
        float x0 = x[i] - sigma * eps[i];
        float d = (x[i] - x0) / sigma;
        x_next[i] = x[i] + (sigma_next - sigma) * d;
    }
}

/* EXERCISE 3. Karras et al. (2022) sigmas: N values from sigma_max down to
 * sigma_min, evenly spaced in sigma^(1/rho), rho = 7. */
static void my_karras_sigmas(float sigma_min, float sigma_max, int N, float *out)
{
    const double rho = 7.0, lo = pow(sigma_min, 1.0 / rho), hi = pow(sigma_max, 1.0 / rho);
    for (int i = 0; i < N; i++) out[i] = (float)pow(hi + (double)i / (N - 1) * (lo - hi), rho);
}

/* A recorded diffusers run: one tensor of tests/fixtures/schedulers/<name>.safetensors,
 * flattened (some have 5 dims) into a malloc'd array; NULL (and a failed check) if absent. */
static float *load(const char *name, const char *tensor, int64_t *numel)
{
    char path[256];
    snprintf(path, sizeof path, FIX "%s.safetensors", name);
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, path) == DL_OK, "%s: %s", path, dl_error_message())) return NULL;
    const dl_st_entry *e = dl_st_find(&f, tensor);
    float *out = e ? malloc(sizeof(float) * (size_t)dl_st_numel(e)) : NULL;
    if (!CHECK(out && dl_st_read_f32(&f, e, out) == DL_OK, "%s: tensor %s", path, tensor)) { free(out); out = NULL; }
    else *numel = dl_st_numel(e);
    dl_st_close(&f);
    return out;
}

/* The fixtures' stand-in model (their README): eps = 0.3 x cos(t/1000) + 0.1 sin(x) */
static void analytic_eps(const float *x, float t, float *eps, int n)
{
    float c = cosf((float)((double)t / 1000.0));
    for (int i = 0; i < n; i++) eps[i] = 0.3f * x[i] * c + 0.1f * sinf(x[i]);
}
static dl_status analytic_model(void *ctx, const dl_tensor *x, const float *t, dl_tensor *eps)
{
    (void)ctx;
    int64_t per = x->numel / x->shape[0];
    for (int64_t b = 0; b < x->shape[0]; b++) analytic_eps(x->data + b * per, t[b], eps->data + b * per, (int)per);
    return DL_OK;
}

TEST(lesson06, exercise_euler_step)
{
    /* diffusers' EulerDiscreteScheduler, 10 steps: replay every call with
     * the recorded model input (from which eps is recomputed), the recorded
     * sigmas and the recorded sample before the step */
    int64_t nsig = 0, K = 0, n0 = 0, nl = 0, ni = 0;
    float *sig = load("euler_steps10", "sigmas", &nsig), *ts = load("euler_steps10", "timesteps", &K),
          *lat0 = load("euler_steps10", "latents_0", &n0), *lat = load("euler_steps10", "latents", &nl),
          *inp = load("euler_steps10", "model_inputs", &ni);
    if (!sig || !ts || !lat0 || !lat || !inp) goto done;
    enum { N = 256 };
    float eps[N], mine[N];
    if (!CHECK(K == 10 && nsig == 11 && n0 == N && nl == K * N && ni == K * N, "10 calls, 11 sigmas, [1, 4, 8, 8] latents"))
        goto done;
    for (int k = 0; k < K; k++) {
        const float *x = k == 0 ? lat0 : lat + (size_t)(k - 1) * N;
        analytic_eps(inp + (size_t)k * N, ts[k], eps, N);
        my_euler_step(x, eps, sig[k], sig[k + 1], mine, N);
        char what[64];
        snprintf(what, sizeof what, "euler call %d (sigma %g -> %g)", k, sig[k], sig[k + 1]);
        if (!CHECK_CLOSE(what, mine, lat + (size_t)k * N, N, 2e-5)) break;
    }
    /* and the library's sampler, on the same run */
    dl_schedule sched;
    dl_sampler s;
    dl_sampler_config cfg = dl_sampler_config_sd();
    if (CHECK(dl_schedule_init_default(&sched, DL_SCHEDULE_SCALED_LINEAR) == DL_OK, "%s", dl_error_message())) {
        if (CHECK(dl_sampler_init(&s, DL_SAMPLER_EULER, &sched, &cfg, 10, 0, 4, DL_SHAPE(1, 4, 8, 8)) == DL_OK, "%s",
                  dl_error_message())) {
            dl_tensor x_T;
            dl_tensor_view(&x_T, lat0, 4, DL_SHAPE(1, 4, 8, 8));
            dl_sampler_set_x(&s, &x_T);
            for (int k = 0; k < 3; k++) {
                float before[N];
                memcpy(before, s.x.data, sizeof before);
                float sigma = s.sigmas[k], sigma_next = s.sigmas[k + 1];
                dl_rng rng;
                dl_rng_seed(&rng, 1);
                CHECK(dl_sampler_step(&s, analytic_model, NULL, &rng) == DL_OK, "%s", dl_error_message());
                my_euler_step(before, s.eps.data, sigma, sigma_next, mine, N);
                CHECK_CLOSE("my step vs dl_sampler_step", mine, s.x.data, N, 1e-5);
            }
            dl_sampler_free(&s);
        }
        dl_schedule_free(&sched);
    }
done:
    free(sig); free(ts); free(lat0); free(lat); free(inp);
}

TEST(lesson06, exercise_karras_sigmas)
{
    /* DPM-Solver++ 2M Karras in diffusers: sigma_min and sigma_max are the
     * ends of the whole training table, sigma = sqrt((1 - abar) / abar) */
    const int steps[3] = {4, 10, 25};
    for (int r = 0; r < 3; r++) {
        char name[64];
        snprintf(name, sizeof name, "dpmpp_2m_karras_steps%d", steps[r]);
        int64_t nsig = 0, nab = 0;
        float *sig = load(name, "sigmas", &nsig), *ab = load(name, "alphas_cumprod", &nab);
        if (sig && ab && CHECK(nab == 1000, "1000 alphas_cumprod")) {
            int N = steps[r];
            float smin = sqrtf((1 - ab[0]) / ab[0]), smax = sqrtf((1 - ab[999]) / ab[999]);
            float mine[32];
            my_karras_sigmas(smin, smax, N, mine);
            CHECK(nsig == N + 1 && sig[N] == 0.0f, "%s: N sigmas and a final 0", name);
            for (int i = 0; i < N; i++)
                CHECK(fabsf(mine[i] - sig[i]) <= 1e-5f * sig[i], "%s sigma %d: mine %.8g, diffusers %.8g", name, i,
                      mine[i], sig[i]);
            /* the library agrees with both */
            dl_schedule sched;
            dl_sampler s;
            dl_sampler_config cfg = dl_sampler_config_sd();
            if (dl_schedule_init_default(&sched, DL_SCHEDULE_SCALED_LINEAR) == DL_OK &&
                CHECK(dl_sampler_init(&s, DL_SAMPLER_DPMPP_2M_KARRAS, &sched, &cfg, N, 0, 1, DL_SHAPE(1)) == DL_OK,
                      "%s", dl_error_message())) {
                for (int i = 0; i < N; i++)
                    CHECK(fabsf(mine[i] - s.sigmas[i]) <= 1e-5f * s.sigmas[i], "library sigma %d: %.8g vs %.8g", i,
                          s.sigmas[i], mine[i]);
                dl_sampler_free(&s);
            }
            dl_schedule_free(&sched);
        }
        free(sig);
        free(ab);
    }
}

/* ---- facts the lesson relies on ------------------------------------------- */

/* DDIM (eta 0, no clipping) and Euler are the same ODE solver in two views:
 * divide DDIM's update by sqrt(abar_prev) and it is an Euler step in sigma.
 * With the same timesteps (leading spacing) and x_Euler = x_DDIM * init_noise_sigma
 * = x_DDIM / sqrt(abar_t0), they end at the same picture, for ANY model. */
TEST(lesson06, euler_is_ddim)
{
    dl_schedule sched;
    if (!CHECK(dl_schedule_init_default(&sched, DL_SCHEDULE_LINEAR) == DL_OK, "%s", dl_error_message())) return;
    dl_sampler_config cfg = dl_sampler_config_default();     /* leading, clip off, set_alpha_to_one */
    enum { N = 64 };
    float z[N];
    dl_rng rng;
    dl_rng_seed(&rng, 3);
    dl_rng_randn(&rng, z, N);
    const int steps[3] = {5, 20, 50};
    for (int r = 0; r < 3; r++) {
        dl_sampler a, b;
        if (!CHECK(dl_sampler_init(&a, DL_SAMPLER_DDIM, &sched, &cfg, steps[r], 0, 2, DL_SHAPE(2, 32)) == DL_OK &&
                   dl_sampler_init(&b, DL_SAMPLER_EULER, &sched, &cfg, steps[r], 0, 2, DL_SHAPE(2, 32)) == DL_OK,
                   "%s", dl_error_message()))
            break;
        dl_sampler_set_noise_from(&a, z);
        dl_sampler_set_noise_from(&b, z);
        CHECK(a.num_calls == b.num_calls && a.timesteps[0] == b.timesteps[0], "same timesteps");
        dl_rng ra = rng, rb = rng;
        CHECK(dl_sampler_run(&a, analytic_model, NULL, &ra) == DL_OK && dl_sampler_run(&b, analytic_model, NULL, &rb) == DL_OK,
              "%s", dl_error_message());
        char what[64];
        snprintf(what, sizeof what, "ddim vs euler, %d steps", steps[r]);
        CHECK_CLOSE(what, a.x.data, b.x.data, N, 1e-4);
        dl_sampler_free(&a);
        dl_sampler_free(&b);
    }
    dl_schedule_free(&sched);
}

TEST(lesson06, call_schedule)
{
    dl_schedule sched;
    if (!CHECK(dl_schedule_init_default(&sched, DL_SCHEDULE_LINEAR) == DL_OK, "%s", dl_error_message())) return;
    dl_sampler_config cfg = dl_sampler_config_default();
    float t[64], sg[64];
    int n = 0;
    /* DDIM: one call per step, sigma = sqrt((1 - abar) / abar) at its integer t */
    CHECK(dl_sampler_call_schedule(DL_SAMPLER_DDIM, &sched, &cfg, 10, 0, t, sg, 64, &n) == DL_OK && n == 10, "ddim");
    for (int i = 0; i < n; i++) {
        int ti = 900 - 100 * i;
        double ab = sched.alphas_cumprod[ti];
        CHECK(t[i] == (float)ti && fabs(sg[i] - sqrt((1 - ab) / ab)) < 1e-4 * sg[i], "ddim call %d: t %g sigma %g", i, t[i], sg[i]);
    }
    /* Heun: 2N-1 calls, sigma_0, then every later sigma twice (second stages) */
    CHECK(dl_sampler_call_schedule(DL_SAMPLER_HEUN, &sched, &cfg, 10, 0, t, sg, 64, &n) == DL_OK && n == 19, "heun: %d calls", n);
    for (int i = 1; i + 1 < n; i += 2) CHECK(sg[i] == sg[i + 1] && sg[i] < sg[i - 1], "heun calls %d, %d", i, i + 1);
    /* PNDM: N+1 calls, the second timestep twice */
    CHECK(dl_sampler_call_schedule(DL_SAMPLER_PNDM, &sched, &cfg, 10, 0, t, sg, 64, &n) == DL_OK && n == 11, "pndm: %d calls", n);
    CHECK(t[1] == t[2] && t[0] > t[1] && t[2] > t[3], "pndm repeats its second timestep: %g %g %g %g", t[0], t[1], t[2], t[3]);
    /* KDPM2: 2N-1 calls; the second stages sit between two steps */
    CHECK(dl_sampler_call_schedule(DL_SAMPLER_KDPM2, &sched, &cfg, 5, 0, t, sg, 64, &n) == DL_OK && n == 9, "kdpm2: %d calls", n);
    CHECK(sg[1] < sg[0] && sg[1] > sg[2], "kdpm2 midpoint %g between %g and %g", sg[1], sg[0], sg[2]);
    /* the Euler family's own sigmas */
    dl_sampler s;
    if (CHECK(dl_sampler_init(&s, DL_SAMPLER_EULER, &sched, &cfg, 7, 0, 1, DL_SHAPE(1)) == DL_OK, "%s", dl_error_message())) {
        CHECK(dl_sampler_call_schedule(DL_SAMPLER_EULER, &sched, &cfg, 7, 0, NULL, sg, 64, &n) == DL_OK && n == 7, "euler");
        CHECK_CLOSE("euler sigmas", sg, s.sigmas, 7, 0);
        dl_sampler_free(&s);
    }
    EXPECT_FAIL(dl_sampler_call_schedule(DL_SAMPLER_HEUN, &sched, &cfg, 10, 0, t, sg, 5, &n), DL_ERR_ARG, "19", "too small");
    dl_schedule_free(&sched);
}

/* ---- the program ---------------------------------------------------------- */

TEST(lesson06, headless_writes_the_figures)
{
    char dir[512], cmd[1024], path[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson06"));
    const char *files[] = {"06_race.png", "06_schedules.png", "06_distance_vs_calls.png"};
    for (int i = 0; i < 3; i++) { snprintf(path, sizeof path, "%s/%s", dir, files[i]); remove(path); }
    snprintf(cmd, sizeof cmd, ENV "%s/06_schedulers --headless --steps 3 --steps-list 2,3 --digits 2 --ref-steps 10 --out %s",
             dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "exit status %d", rc)) { dl_test_show_log(); return; }
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        CHECK(dl_test_file_ok(path), "%s missing", path);
    }
    /* the table: one row per sampler, the reference named */
    CHECK(dl_test_log_contains("DDIM 10 steps"), "the table names the reference");
    for (int k = 0; k < DL_SAMPLER_COUNT; k++) {
        char row[64];
        snprintf(row, sizeof row, "\n%-16s", dl_sampler_names[k]);
        if (!CHECK(dl_test_log_contains(row), "no table row for %s", dl_sampler_names[k])) { dl_test_show_log(); break; }
    }
}

TEST(lesson06, help_and_bad_arguments)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/06_schedulers --help", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0 && dl_test_log_contains("--steps-list"), "--help");
    const struct { const char *args, *says; } bad[] = {
        {"--steps 0", "--steps"},
        {"--steps-list 5,x", "--steps-list"},
        {"--steps-list 0", "--steps-list"},
        {"--spacing sideways", "sideways"},
        {"--guidance lots", "--guidance"},
        {"--class 12", "--class 12"},
        {"--checkpoint /nonexistent.safetensors", "nonexistent"},
        {"--bogus", "--bogus"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, ENV "%s/06_schedulers --headless --digits 0 --out %s %s", dl_test_bin_dir(),
                 dl_test_out_dir("lesson06/bad"), bad[i].args);
        int rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "'%s' should fail cleanly, exit status %d", bad[i].args, rc);
        if (!CHECK(dl_test_log_contains(bad[i].says) && dl_test_log_contains("error"), "'%s': message should name '%s'",
                   bad[i].args, bad[i].says))
            dl_test_show_log();
    }
}
