/* test_sampling.c - DDPM and DDIM against diffusers, and classifier-free
 * guidance (core/sampling.h).
 *
 * References: tests/fixtures/schedulers/ (diffusers v0.27.2 runs of the
 * scheduler alone, with an analytic stand-in for the UNet; see its README).
 * For every run we replay the pipeline loop in C:
 *
 *     x = latents_0;  for t in timesteps:  eps = model(x, t);  x = step(eps, t, x)
 *
 * and compare the timesteps exactly and every intermediate latent within
 * 1e-5 (latents reach |x| ~ 28; the fixture's own fp32-vs-fp64 spread is
 * <= 8.5e-6). DDPM is checked twice: with the recorded noise draws injected,
 * and with our torch-identical RNG seeded 1234 (which must draw the same).
 *
 *   make test K=sampling        everything here
 *   make test K=ddim            the DDIM runs (the lesson 04 exercise)
 */
#include "testing.h"
#include "../core/safetensors.h"
#include "../core/sampling.h"
#include "../core/schedule.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIX_DIR "tests/fixtures/schedulers"
#define LATENT_TOL 1e-5

/* The fixture's stand-in model: eps = 0.3 x cos(t/1000) + 0.1 sin(x), with
 * t/1000 in double (Python), then cos in float32 (torch). */
static dl_status analytic_model(void *ctx, const dl_tensor *x, const float *t, dl_tensor *eps)
{
    int *calls = ctx;
    if (calls) (*calls)++;
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

typedef struct {
    dl_safetensors f;
    int n;                  /* steps (model calls) */
    int64_t ts[32];
    float *latents_0;       /* [256] */
    float *latents;         /* [n, 256] after each step */
    float *noise;           /* [draws, 256] or NULL */
    int draws;
    dl_schedule sched;      /* SD's scaled_linear; checked against the fixture's alphas_cumprod */
} fixture;

#define NLAT 256   /* [1, 4, 8, 8] */

static float *read_f32(const dl_safetensors *f, const char *name, int64_t *numel)
{
    const dl_st_entry *e = dl_st_find(f, name);
    if (!e) return NULL;
    *numel = dl_st_numel(e);
    float *p = malloc((size_t)*numel * sizeof(float));
    if (p && dl_st_read_f32(f, e, p) != DL_OK) { free(p); return NULL; }
    return p;
}

static void fixture_free(fixture *fx)
{
    free(fx->latents_0);
    free(fx->latents);
    free(fx->noise);
    dl_schedule_free(&fx->sched);
    dl_st_close(&fx->f);
    memset(fx, 0, sizeof *fx);
}

static int fixture_load(fixture *fx, const char *run, int steps)
{
    memset(fx, 0, sizeof *fx);
    char path[256];
    snprintf(path, sizeof path, FIX_DIR "/%s_steps%d.safetensors", run, steps);
    if (!CHECK(dl_st_open(&fx->f, path) == DL_OK, "%s", dl_error_message())) return 0;
    const dl_st_entry *te = dl_st_find(&fx->f, "timesteps");
    if (!CHECK(te && dl_st_numel(te) == steps, "%s: timesteps missing or not %d long", path, steps)) return 0;
    fx->n = steps;
    dl_st_read_i64(&fx->f, te, fx->ts);
    int64_t n0 = 0, n1 = 0, nn = 0, nac = 0;
    fx->latents_0 = read_f32(&fx->f, "latents_0", &n0);
    fx->latents = read_f32(&fx->f, "latents", &n1);
    fx->noise = read_f32(&fx->f, "noise_draws", &nn);
    fx->draws = (int)(nn / NLAT);
    if (!CHECK(fx->latents_0 && n0 == NLAT && fx->latents && n1 == (int64_t)steps * NLAT,
               "%s: latents_0 / latents missing or of the wrong size", path)) return 0;
    /* the schedule: ours must equal the one diffusers used */
    if (!CHECK(dl_schedule_init_default(&fx->sched, DL_SCHEDULE_SCALED_LINEAR) == DL_OK, "%s", dl_error_message())) return 0;
    float *ac = read_f32(&fx->f, "alphas_cumprod", &nac);
    int same = ac && nac == 1000 && !memcmp(ac, fx->sched.alphas_cumprod, sizeof(float) * 1000);
    free(ac);
    return CHECK(same, "%s: alphas_cumprod differs from dl_schedule scaled_linear", path);
}

/* Run the sampler over the fixture's loop; noise from `draws` (injected) or rng. */
static void replay(const char *run, dl_sampler_kind kind, dl_timestep_spacing spacing, int steps, int use_rng)
{
    fixture fx;
    if (!fixture_load(&fx, run, steps)) { fixture_free(&fx); return; }
    dl_sampler_config cfg = dl_sampler_config_sd();   /* the fixture's base config */
    cfg.timestep_spacing = spacing;
    dl_sampler s;
    if (!CHECK(dl_sampler_init(&s, kind, &fx.sched, &cfg, steps, 0.0f, 4, DL_SHAPE(1, 4, 8, 8)) == DL_OK,
               "%s", dl_error_message())) { fixture_free(&fx); return; }
    int ts_ok = 1;
    for (int i = 0; i < steps; i++) ts_ok &= s.timesteps[i] == fx.ts[i];
    CHECK(ts_ok, "%s_steps%d: timesteps differ from diffusers' (first: ours %g, theirs %lld)", run, steps,
          s.timesteps[0], (long long)fx.ts[0]);

    dl_tensor x0;
    dl_tensor_view(&x0, fx.latents_0, 4, DL_SHAPE(1, 4, 8, 8));
    dl_sampler_set_x(&s, &x0);
    dl_rng rng;
    dl_rng_seed(&rng, 1234);   /* the fixture's step generator */
    int calls = 0, draws = 0;
    double worst = 0;
    int worst_step = -1;
    for (int i = 0; i < steps && ts_ok; i++) {
        int needs = dl_sampler_update_draws_noise(&s);
        if (!CHECK(dl_sampler_predict(&s, analytic_model, &calls) == DL_OK, "%s", dl_error_message())) break;
        const float *z = NULL;
        if (needs && !use_rng) {
            if (!CHECK(draws < fx.draws, "%s: more noise draws than diffusers made (%d)", run, fx.draws)) break;
            z = fx.noise + (size_t)draws * NLAT;
        }
        draws += needs;
        if (!CHECK(dl_sampler_update(&s, use_rng ? &rng : NULL, z) == DL_OK, "%s", dl_error_message())) break;
        double d = dl_max_abs_diff(s.x.data, fx.latents + (size_t)i * NLAT, NLAT);
        if (d > worst) { worst = d; worst_step = i; }
    }
    CHECK(calls == steps, "%s: %d model calls, want %d", run, calls, steps);
    CHECK(draws == fx.draws, "%s_steps%d: %d noise draws, diffusers made %d", run, steps, draws, fx.draws);
    CHECK(worst <= LATENT_TOL, "%s_steps%d (%s noise): max |latent - diffusers| = %.3g at step %d (tolerance %.1g)",
          run, steps, use_rng ? "seeded rng" : "injected", worst, worst_step, LATENT_TOL);
    CHECK(dl_sampler_done(&s), "%s: sampler not done after %d steps", run, steps);
    dl_sampler_free(&s);
    fixture_free(&fx);
}

TEST(sampling, ddim_matches_diffusers)
{
    const int n[3] = {4, 10, 25};
    for (int k = 0; k < 3; k++) replay("ddim", DL_SAMPLER_DDIM, DL_SPACING_LEADING, n[k], 0);
}

TEST(sampling, ddim_trailing_matches_diffusers)
{
    const int n[3] = {4, 10, 25};
    for (int k = 0; k < 3; k++) replay("ddim_trailing", DL_SAMPLER_DDIM, DL_SPACING_TRAILING, n[k], 0);
}

TEST(sampling, ddpm_injected_noise_matches_diffusers)
{
    const int n[3] = {4, 10, 25};
    for (int k = 0; k < 3; k++) replay("ddpm", DL_SAMPLER_DDPM, DL_SPACING_LEADING, n[k], 0);
}

TEST(sampling, ddpm_seeded_rng_matches_diffusers)
{
    /* The same runs with noise from dl_rng seeded 1234: our RNG must draw
     * exactly diffusers' noise, in the same order (after each model call). */
    const int n[3] = {4, 10, 25};
    for (int k = 0; k < 3; k++) replay("ddpm", DL_SAMPLER_DDPM, DL_SPACING_LEADING, n[k], 1);
    fixture fx;
    if (fixture_load(&fx, "ddpm", 10) && CHECK(fx.noise && fx.draws == 10, "noise_draws missing")) {
        dl_rng rng;
        dl_rng_seed(&rng, 1234);
        float z[NLAT];
        int same = 1;
        for (int d = 0; d < fx.draws; d++) {
            dl_rng_randn(&rng, z, NLAT);
            same &= !memcmp(z, fx.noise + (size_t)d * NLAT, sizeof z);
        }
        CHECK(same, "dl_rng seeded 1234 does not reproduce diffusers' noise draws bit for bit");
    }
    fixture_free(&fx);
}

/* ---- timesteps -------------------------------------------------------- */

TEST(sampling, timesteps)
{
    dl_sampler_config sd = dl_sampler_config_sd(), def = dl_sampler_config_default();
    int ts[1000];
    /* leading + offset 1 (SD), from the shared fixture README */
    CHECK(dl_sampler_timesteps(&sd, 1000, 8, ts) == DL_OK, "%s", dl_error_message());
    const int want8[8] = {876, 751, 626, 501, 376, 251, 126, 1};
    CHECK(!memcmp(ts, want8, sizeof want8), "leading/offset 1, N=8: got %d %d ... %d", ts[0], ts[1], ts[7]);
    /* leading, offset 0, all 1000 steps: 999 .. 0 */
    CHECK(dl_sampler_timesteps(&def, 1000, 1000, ts) == DL_OK, "%s", dl_error_message());
    int full = 1;
    for (int i = 0; i < 1000; i++) full &= ts[i] == 999 - i;
    CHECK(full, "leading, N=1000 should be 999..0");
    /* 50 steps (lesson 04's DDIM): 980, 960, ..., 0 */
    CHECK(dl_sampler_timesteps(&def, 1000, 50, ts) == DL_OK && ts[0] == 980 && ts[49] == 0, "leading N=50: %d .. %d", ts[0], ts[49]);
    /* trailing, from the scheduler notes: N=10 -> 999, 899, ..., 99 */
    dl_sampler_config tr = def;
    tr.timestep_spacing = DL_SPACING_TRAILING;
    CHECK(dl_sampler_timesteps(&tr, 1000, 10, ts) == DL_OK && ts[0] == 999 && ts[1] == 899 && ts[9] == 99,
          "trailing N=10: %d %d .. %d", ts[0], ts[1], ts[9]);
    /* numpy's float arange makes N=61 produce 62 values in diffusers: refused */
    CHECK(dl_sampler_timesteps(&tr, 1000, 61, ts) == DL_ERR_ARG && strstr(dl_error_message(), "61"),
          "trailing N=61 should fail: %s", dl_error_message());
    /* linspace N=10 -> 999, 888, ..., 111, 0 */
    dl_sampler_config ls = def;
    ls.timestep_spacing = DL_SPACING_LINSPACE;
    CHECK(dl_sampler_timesteps(&ls, 1000, 10, ts) == DL_OK && ts[0] == 999 && ts[1] == 888 && ts[8] == 111 && ts[9] == 0,
          "linspace N=10: %d %d .. %d %d", ts[0], ts[1], ts[8], ts[9]);
    CHECK(dl_sampler_timesteps(&ls, 1000, 1, ts) == DL_OK && ts[0] == 0, "linspace N=1: %d", ts[0]);
    /* errors: offset pushing t to T, zero steps, more steps than T */
    CHECK(dl_sampler_timesteps(&sd, 1000, 1000, ts) == DL_ERR_ARG && strstr(dl_error_message(), "1000"),
          "leading + offset 1 with N = 1000 reaches t = 1000: %s", dl_error_message());
    CHECK(dl_sampler_timesteps(&def, 1000, 0, ts) == DL_ERR_ARG, "0 steps accepted");
    CHECK(dl_sampler_timesteps(&def, 1000, 1001, ts) == DL_ERR_ARG, "1001 steps accepted");
    dl_sampler_kind k;
    CHECK(dl_sampler_kind_from_name("ddim", &k) == DL_OK && k == DL_SAMPLER_DDIM, "ddim by name");
    CHECK(dl_sampler_kind_from_name("euler", &k) == DL_OK && k == DL_SAMPLER_EULER, "euler by name");
    CHECK(dl_sampler_kind_from_name("eulr", &k) == DL_ERR_ARG && strstr(dl_error_message(), "eulr"), "unknown name");
}

/* ---- properties that need no fixture ----------------------------------- */

TEST(sampling, ddim_eta1_and_ddpm_agree_on_the_posterior)
{
    /* With eta = 1, DDIM's sigma equals DDPM's fixed_small posterior std and
     * the mean coincides too (Song et al., section 4.1): same noise, same x. */
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    dl_sampler_config cfg = dl_sampler_config_default();
    dl_test_rng r = {7};
    enum { N = 97 };
    float x[N], e[N], z[N], a[N], b[N];
    dl_test_fill(&r, x, N, -2, 2);
    dl_test_fill(&r, e, N, -2, 2);
    dl_test_fill(&r, z, N, -2, 2);
    const int pairs[4][2] = {{999, 979}, {500, 499}, {20, 0}, {5, -1}};
    for (int p = 0; p < 4; p++) {
        int t = pairs[p][0], tp = pairs[p][1];
        CHECK(ddpm_step(&s, &cfg, t, tp, x, e, z, a, NULL, N) == DL_OK, "%s", dl_error_message());
        CHECK(ddim_step(&s, &cfg, t, tp, 1.0f, x, e, z, b, NULL, N) == DL_OK, "%s", dl_error_message());
        char what[64];
        snprintf(what, sizeof what, "DDPM vs DDIM eta=1, t %d -> %d", t, tp);
        CHECK_CLOSE(what, a, b, N, 2e-5);
    }
    /* DDPM over the full schedule equals the existing one-step posterior */
    CHECK(ddpm_step(&s, &cfg, 400, 399, x, e, z, a, NULL, N) == DL_OK, "%s", dl_error_message());
    CHECK(ddpm_posterior_step(&s, b, x, e, z, N, 400) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE("ddpm_step vs ddpm_posterior_step", a, b, N, 0);
    /* the last DDIM step with set_alpha_to_one returns x0_hat itself */
    float x0[N];
    CHECK(ddim_step(&s, &cfg, 19, -1, 0.0f, x, e, NULL, a, x0, N) == DL_OK, "%s", dl_error_message());
    CHECK_CLOSE("DDIM final step = x0_hat", a, x0, N, 0);
    /* clip_sample clamps x0_hat */
    cfg.clip_sample = 1;
    CHECK(dl_predict_x0(&s, &cfg, 900, x, e, x0, N) == DL_OK, "%s", dl_error_message());
    float lo = 0, hi = 0;
    for (int i = 0; i < N; i++) { lo = fminf(lo, x0[i]); hi = fmaxf(hi, x0[i]); }
    CHECK(lo >= -1 && hi <= 1 && (lo == -1 || hi == 1), "clip_sample: x0_hat in [%g, %g]", lo, hi);
    /* argument errors */
    EXPECT_FAIL(ddpm_step(&s, &cfg, 10, 9, x, e, NULL, a, NULL, N), DL_ERR_ARG, "ddpm_step", "missing noise");
    EXPECT_FAIL(ddim_step(&s, &cfg, 1000, 980, 0, x, e, NULL, a, NULL, N), DL_ERR_ARG, "ddim_step", "t = T");
    EXPECT_FAIL(ddim_step(&s, &cfg, 10, 20, 0, x, e, NULL, a, NULL, N), DL_ERR_ARG, "ddim_step", "t_prev > t");
    dl_schedule_free(&s);
}

/* A model whose answer depends on which half of the doubled batch an item is
 * in: item b gets eps = (b < B ? 1 : 3) * x + t/1000 (a "null class" and a
 * "class" prediction). */
static dl_status halves_model(void *ctx, const dl_tensor *x, const float *t, dl_tensor *eps)
{
    int *calls = ctx;
    (*calls)++;
    int64_t B2 = x->shape[0], per = x->numel / B2;
    for (int64_t b = 0; b < B2; b++)
        for (int64_t i = 0; i < per; i++)
            eps->data[b * per + i] = (b < B2 / 2 ? 1.0f : 3.0f) * x->data[b * per + i] + t[b] / 1000.0f;
    return DL_OK;
}

TEST(sampling, cfg_one_call_on_doubled_batch)
{
    enum { B = 3, C = 2, S = 4, N = B * C * S * S };
    int calls = 0;
    dl_cfg g;
    CHECK(dl_cfg_init(&g, halves_model, &calls, 2.5f, 4, DL_SHAPE(B, C, S, S)) == DL_OK, "%s", dl_error_message());
    dl_tensor x, eps;
    dl_tensor_alloc(&x, 4, DL_SHAPE(B, C, S, S));
    dl_tensor_alloc(&eps, 4, DL_SHAPE(B, C, S, S));
    dl_test_rng r = {3};
    dl_test_fill(&r, x.data, N, -1, 1);
    float t[B] = {999, 500, 0};
    CHECK(dl_cfg_eps(&g, &x, t, &eps) == DL_OK, "%s", dl_error_message());
    CHECK(calls == 1, "the model should run once per step on the doubled batch, ran %d times", calls);
    float want[N];
    for (int i = 0; i < N; i++) {
        float tt = t[i / (C * S * S)] / 1000.0f;
        float u = x.data[i] + tt, c = 3 * x.data[i] + tt;
        want[i] = u + 2.5f * (c - u);
    }
    CHECK_CLOSE("cfg eps", eps.data, want, N, 1e-6);
    CHECK(fabsf(dl_cfg_eps_cond(&g)[0] - dl_cfg_eps_uncond(&g)[0] - 2 * x.data[0]) < 1e-6, "uncond/cond halves");
    /* g = 1 is the conditional model alone, g = 0 the unconditional one */
    g.guidance = 1;
    dl_cfg_eps(&g, &x, t, &eps);
    CHECK_CLOSE("g = 1", eps.data, dl_cfg_eps_cond(&g), N, 1e-6);
    g.guidance = 0;
    dl_cfg_eps(&g, &x, t, &eps);
    CHECK_CLOSE("g = 0", eps.data, dl_cfg_eps_uncond(&g), N, 0);
    /* wrong batch size */
    dl_tensor x2;
    dl_tensor_alloc(&x2, 4, DL_SHAPE(B + 1, C, S, S));
    EXPECT_FAIL(dl_cfg_eps(&g, &x2, t, &x2), DL_ERR_SHAPE, "dl_cfg_eps", "wrong batch");
    /* and it plugs into a sampler */
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    dl_sampler_config cfg = dl_sampler_config_default();
    dl_sampler sm;
    CHECK(dl_sampler_init(&sm, DL_SAMPLER_DDIM, &s, &cfg, 10, 0.0f, 4, DL_SHAPE(B, C, S, S)) == DL_OK, "%s", dl_error_message());
    dl_rng rng;
    dl_rng_seed(&rng, 0);
    dl_sampler_set_noise(&sm, &rng);
    calls = 0;
    CHECK(dl_sampler_run(&sm, dl_cfg_eps, &g, &rng) == DL_OK, "%s", dl_error_message());
    CHECK(calls == 10 && sm.model_calls == 10, "10 DDIM steps with CFG: %d model calls", calls);
    dl_sampler_free(&sm);
    dl_schedule_free(&s);
    dl_tensor_free(&x);
    dl_tensor_free(&x2);
    dl_tensor_free(&eps);
    dl_cfg_free(&g);
}

TEST(sampling, sampler_api_errors_and_restart)
{
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    dl_sampler_config cfg = dl_sampler_config_default();
    dl_sampler sm;
    EXPECT_FAIL(dl_sampler_init(&sm, DL_SAMPLER_DDPM, &s, &cfg, 0, 0, 4, DL_SHAPE(1, 1, 2, 2)), DL_ERR_ARG, "ddpm", "0 steps");
    EXPECT_FAIL(dl_sampler_init(&sm, DL_SAMPLER_DDIM, &s, &cfg, 10, -1, 4, DL_SHAPE(1, 1, 2, 2)), DL_ERR_ARG, "eta", "eta < 0");
    CHECK(dl_sampler_init(&sm, DL_SAMPLER_DDPM, &s, &cfg, 1000, 0, 4, DL_SHAPE(2, 1, 2, 2)) == DL_OK, "%s", dl_error_message());
    EXPECT_FAIL(dl_sampler_update(&sm, NULL, NULL), DL_ERR_ARG, "predict", "update before predict");
    int calls = 0;
    dl_rng rng;
    dl_rng_seed(&rng, 5);
    dl_sampler_set_noise(&sm, &rng);
    CHECK(dl_sampler_current_t(&sm) == 999 && dl_sampler_prev_t(&sm, 999) == 998, "DDPM 1000 steps: 999 -> 998");
    CHECK(dl_sampler_predict(&sm, analytic_model, &calls) == DL_OK, "%s", dl_error_message());
    EXPECT_FAIL(dl_sampler_update(&sm, NULL, NULL), DL_ERR_ARG, "noise", "DDPM step without rng or noise");
    CHECK(dl_sampler_run(&sm, analytic_model, &calls, &rng) == DL_OK, "%s", dl_error_message());
    CHECK(calls == 1000 && dl_sampler_done(&sm) && dl_sampler_current_t(&sm) == -1, "1000 calls (%d)", calls);
    EXPECT_FAIL(dl_sampler_step(&sm, analytic_model, &calls, &rng), DL_ERR_ARG, "done", "step after the end");
    /* same seed, same result; restart works */
    float first[8];
    memcpy(first, sm.x.data, sizeof first);
    dl_rng_seed(&rng, 5);
    dl_sampler_set_noise(&sm, &rng);
    CHECK(sm.step_index == 0 && !sm.have_prediction, "restart");
    dl_sampler_run(&sm, analytic_model, &calls, &rng);
    CHECK_CLOSE("same seed, same DDPM sample", sm.x.data, first, 8, 0);
    dl_sampler_free(&sm);
    dl_schedule_free(&s);
}

/* ---- a model that knows the data exactly ----------------------------------
 * Data = two points a and b (D values each), equally likely. Then the best
 * possible noise prediction is known in closed form: the posterior over
 * {a, b} given x_t has weights w ~ exp(-|x_t - sqrt(abar) x_i|^2 / (2 (1 - abar))),
 * x0_hat = w_a a + w_b b and eps = (x_t - sqrt(abar) x0_hat) / sqrt(1 - abar).
 * A correct sampler driven by it must land on a or b, about half the time
 * each: a test that DDPM / DDIM really sample the data distribution. */
enum { ORACLE_D = 16 };
typedef struct { const dl_schedule *s; float a[ORACLE_D], b[ORACLE_D]; } oracle;

static dl_status oracle_model(void *ctx, const dl_tensor *x, const float *t, dl_tensor *eps)
{
    const oracle *o = ctx;
    for (int64_t n = 0; n < x->shape[0]; n++) {
        double ab = o->s->alphas_cumprod[(int)t[n]], sa = sqrt(ab), sb = sqrt(1 - ab);
        const float *xn = x->data + n * ORACLE_D;
        double da = 0, db = 0;
        for (int i = 0; i < ORACLE_D; i++) {
            da += (xn[i] - sa * o->a[i]) * (xn[i] - sa * o->a[i]);
            db += (xn[i] - sa * o->b[i]) * (xn[i] - sa * o->b[i]);
        }
        double wa = 1 / (1 + exp((da - db) / (2 * (1 - ab))));   /* softmax of the two */
        for (int i = 0; i < ORACLE_D; i++) {
            double x0 = wa * o->a[i] + (1 - wa) * o->b[i];
            eps->data[n * ORACLE_D + i] = (float)((xn[i] - sa * x0) / sb);
        }
    }
    return DL_OK;
}

TEST(sampling, oracle_model_samples_the_data)
{
    enum { CHAINS = 256 };
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    oracle o = { .s = &s };
    dl_test_rng r = {21};
    dl_test_fill(&r, o.a, ORACLE_D, -1, 1);
    dl_test_fill(&r, o.b, ORACLE_D, -1, 1);
    const struct { dl_sampler_kind kind; int steps; float eta; } runs[4] = {
        {DL_SAMPLER_DDPM, 1000, 0}, {DL_SAMPLER_DDPM, 100, 0}, {DL_SAMPLER_DDIM, 50, 0}, {DL_SAMPLER_DDIM, 50, 1}};
    dl_sampler_config cfg = dl_sampler_config_default();
    for (int k = 0; k < 4; k++) {
        dl_sampler sm;
        if (!CHECK(dl_sampler_init(&sm, runs[k].kind, &s, &cfg, runs[k].steps, runs[k].eta, 2, DL_SHAPE(CHAINS, ORACLE_D)) == DL_OK,
                   "%s", dl_error_message())) continue;
        dl_rng rng;
        dl_rng_seed(&rng, 100 + k);
        dl_sampler_set_noise(&sm, &rng);
        CHECK(dl_sampler_run(&sm, oracle_model, &o, &rng) == DL_OK, "%s", dl_error_message());
        int at_a = 0, off = 0;
        double worst = 0;
        for (int n = 0; n < CHAINS; n++) {
            double da = 0, db = 0;
            for (int i = 0; i < ORACLE_D; i++) {
                da = fmax(da, fabs(sm.x.data[n * ORACLE_D + i] - o.a[i]));
                db = fmax(db, fabs(sm.x.data[n * ORACLE_D + i] - o.b[i]));
            }
            double d = fmin(da, db);
            worst = fmax(worst, d);
            off += d > 1e-3;
            at_a += da < db;
        }
        CHECK(off == 0, "%s %d steps eta %g: %d of %d samples are not on a data point (worst distance %.3g)",
              dl_sampler_names[runs[k].kind], runs[k].steps, runs[k].eta, off, CHAINS, worst);
        /* half and half, within ~4 standard deviations (8 for 256 fair coins) */
        CHECK(abs(at_a - CHAINS / 2) <= 32, "%s %d steps eta %g: %d of %d samples at a, want about half",
              dl_sampler_names[runs[k].kind], runs[k].steps, runs[k].eta, at_a, CHAINS);
        dl_sampler_free(&sm);
    }
    dl_schedule_free(&s);
}

/* Data ~ N(mu, s^2 I): the best denoiser is linear, x0_hat = mu + k (x_t - sqrt(abar) mu)
 * with k = sqrt(abar) s^2 / (abar s^2 + 1 - abar). Then every DDPM / DDIM step is
 * affine, x_prev = A x_t + B mu + sigma z, and the mean and variance of the
 * samples follow exactly from m' = A m + B mu, v' = A^2 v + sigma^2 (computed
 * below in double from the papers' formulas, in this affine form). 16384
 * samples must match them within 4.5 standard errors. Few-step samplers do
 * NOT reproduce the data's spread s exactly: DDIM with 50 steps gives about
 * 6% less (eta 0) and 11% less (eta 1) - a property of the samplers. */
typedef struct { const dl_schedule *s; float mu, sd; } gauss_oracle;

static double gauss_k(double ab, double v) { return sqrt(ab) * v / (ab * v + 1 - ab); }

static dl_status gauss_model(void *ctx, const dl_tensor *x, const float *t, dl_tensor *eps)
{
    const gauss_oracle *o = ctx;
    int64_t per = x->numel / x->shape[0];
    for (int64_t n = 0; n < x->shape[0]; n++) {
        double ab = o->s->alphas_cumprod[(int)t[n]], sa = sqrt(ab), sb = sqrt(1 - ab);
        double k = gauss_k(ab, (double)o->sd * o->sd);
        for (int64_t i = n * per; i < (n + 1) * per; i++) {
            double x0 = o->mu + k * (x->data[i] - sa * o->mu);
            eps->data[i] = (float)((x->data[i] - sa * x0) / sb);
        }
    }
    return DL_OK;
}

/* The exact mean and variance after the sampler's steps, starting from N(0, 1). */
static void gauss_expected(const dl_sampler *sm, const gauss_oracle *o, double *mean, double *var)
{
    double m = 0, v = 1, mu = o->mu, vd = (double)o->sd * o->sd;
    for (int i = 0; i < sm->num_steps; i++) {
        int t = sm->timesteps[i], tp = t - sm->sched->num_train_timesteps / sm->num_steps;
        double ab = sm->sched->alphas_cumprod[t], sa = sqrt(ab), sb = sqrt(1 - ab);
        double ap = tp >= 0 ? sm->sched->alphas_cumprod[tp] : (sm->kind == DL_SAMPLER_DDIM && !sm->cfg.set_alpha_to_one
                                                               ? sm->sched->alphas_cumprod[0] : 1.0);
        double k = gauss_k(ab, vd);
        /* x0_hat = kx x + kmu mu;  eps_hat = ex x + emu mu */
        double kx = k, kmu = 1 - k * sa, ex = (1 - sa * kx) / sb, emu = -sa * kmu / sb;
        double A, B, sig2;
        if (sm->kind == DL_SAMPLER_DDPM) {
            double alpha = ab / ap, beta = 1 - alpha;
            double c0 = sqrt(ap) * beta / (1 - ab), c1 = sqrt(alpha) * (1 - ap) / (1 - ab);
            A = c0 * kx + c1;
            B = c0 * kmu;
            sig2 = t > 0 ? fmax((1 - ap) / (1 - ab) * beta, 1e-20) : 0;
        } else {
            double sd = sm->eta * sqrt((1 - ap) / (1 - ab)) * sqrt(1 - ab / ap), dir = sqrt(1 - ap - sd * sd);
            A = sqrt(ap) * kx + dir * ex;
            B = sqrt(ap) * kmu + dir * emu;
            sig2 = sd * sd;
        }
        m = A * m + B * mu;
        v = A * A * v + sig2;
    }
    *mean = m;
    *var = v;
}

TEST(sampling, gaussian_oracle_matches_the_exact_moments)
{
    enum { CHAINS = 4096, D = 4, N = CHAINS * D };
    dl_schedule s;
    dl_schedule_init_default(&s, DL_SCHEDULE_LINEAR);
    gauss_oracle o = { .s = &s, .mu = 0.3f, .sd = 0.5f };
    const struct { dl_sampler_kind kind; int steps; float eta; } runs[5] = {
        {DL_SAMPLER_DDPM, 1000, 0}, {DL_SAMPLER_DDPM, 250, 0}, {DL_SAMPLER_DDIM, 50, 0}, {DL_SAMPLER_DDIM, 50, 1},
        {DL_SAMPLER_DDIM, 10, 0.5f}};
    dl_sampler_config cfg = dl_sampler_config_default();
    for (int k = 0; k < 5; k++) {
        dl_sampler sm;
        if (!CHECK(dl_sampler_init(&sm, runs[k].kind, &s, &cfg, runs[k].steps, runs[k].eta, 2, DL_SHAPE(CHAINS, D)) == DL_OK,
                   "%s", dl_error_message())) continue;
        dl_rng rng;
        dl_rng_seed(&rng, 7 + k);
        dl_sampler_set_noise(&sm, &rng);
        CHECK(dl_sampler_run(&sm, gauss_model, &o, &rng) == DL_OK, "%s", dl_error_message());
        double m = 0, v = 0, em, ev;
        for (int64_t i = 0; i < N; i++) m += sm.x.data[i];
        m /= N;
        for (int64_t i = 0; i < N; i++) v += (sm.x.data[i] - m) * (sm.x.data[i] - m);
        v /= N;
        gauss_expected(&sm, &o, &em, &ev);
        double se_m = sqrt(ev / N), se_sd = sqrt(ev / (2.0 * N));
        CHECK(fabs(m - em) < 4.5 * se_m && fabs(sqrt(v) - sqrt(ev)) < 4.5 * se_sd,
              "%s %d steps eta %g: samples have mean %.4f, sd %.4f; exact %.4f, %.4f (data: %.2f, %.2f)",
              dl_sampler_names[runs[k].kind], runs[k].steps, runs[k].eta, m, sqrt(v), em, sqrt(ev), o.mu, o.sd);
        /* and close to the data with many steps */
        if (runs[k].steps == 1000) CHECK(fabs(sqrt(ev) - o.sd) < 0.01, "DDPM 1000: exact sd %.4f, data %.2f", sqrt(ev), o.sd);
        dl_sampler_free(&sm);
    }
    dl_schedule_free(&s);
}
