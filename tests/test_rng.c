/* test_rng.c - the torch-identical generator against torch's own outputs.
 *
 * Fixtures (see tests/fixtures/torch_rng/README.md):
 *   torch_rng.safetensors        shared golden file (randn/rand for 3 seeds, many shapes)
 *   torch_rng_extra.safetensors  tests/torch_refs/gen_rng_refs.py (sizes 1..40, big seeds,
 *                                a mixed call sequence)
 * Comparisons are bit-exact: a failure reports how many values differ and the
 * largest difference in ulp.
 */
#include "testing.h"
#include "../core/rng.h"
#include "../core/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RNG_FIXTURE   "tests/fixtures/torch_rng/torch_rng.safetensors"
#define EXTRA_FIXTURE "tests/fixtures/torch_rng/torch_rng_extra.safetensors"

/* Distance in units in the last place between two floats (same sign line). */
static int64_t ulp_diff_f32(float a, float b)
{
    int32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    int64_t ix = x < 0 ? (int64_t)INT32_MIN - x : x, iy = y < 0 ? (int64_t)INT32_MIN - y : y;
    return ix > iy ? ix - iy : iy - ix;
}
static int64_t ulp_diff_f64(double a, double b)
{
    int64_t x, y;
    memcpy(&x, &a, 8);
    memcpy(&y, &b, 8);
    if ((x < 0) != (y < 0)) return INT64_MAX;
    return x > y ? x - y : y - x;
}

/* Bit-exact comparison; prints count and max ulp on failure. */
static int check_bits_f32(const char *what, const float *got, const float *want, int64_t n)
{
    int64_t bad = 0, worst = 0, at = -1;
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], 4) != 0) {
            int64_t u = ulp_diff_f32(got[i], want[i]);
            if (bad++ == 0 || u > worst) { worst = u; at = i; }
        }
    return CHECK(bad == 0, "%s: %lld of %lld values differ, max %lld ulp (index %lld: got %.9g, torch %.9g)",
                 what, (long long)bad, (long long)n, (long long)worst, (long long)at,
                 at >= 0 ? got[at] : 0.0, at >= 0 ? want[at] : 0.0);
}
static int check_bits_f64(const char *what, const double *got, const double *want, int64_t n)
{
    int64_t bad = 0, worst = 0, at = -1;
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], 8) != 0) {
            int64_t u = ulp_diff_f64(got[i], want[i]);
            if (bad++ == 0 || u > worst) { worst = u; at = i; }
        }
    return CHECK(bad == 0, "%s: %lld of %lld doubles differ, max %lld ulp (index %lld: got %.17g, torch %.17g)",
                 what, (long long)bad, (long long)n, (long long)worst, (long long)at,
                 at >= 0 ? got[at] : 0.0, at >= 0 ? want[at] : 0.0);
}

/* Load a fixture entry as float32 or float64 (NULL + failed check if absent). */
static float *load_f32(const dl_safetensors *f, const char *name, int64_t *n)
{
    const dl_st_entry *e = dl_st_find(f, name);
    if (!CHECK(e && e->dtype == DL_DTYPE_F32, "%s: no F32 tensor '%s'", f->path, name)) return NULL;
    *n = dl_st_numel(e);
    float *p = malloc((size_t)*n * sizeof *p);
    if (p) dl_st_read_f32(f, e, p);
    return p;
}
static double *load_f64(const dl_safetensors *f, const char *name, int64_t *n)
{
    const dl_st_entry *e = dl_st_find(f, name);
    if (!CHECK(e && e->dtype == DL_DTYPE_F64, "%s: no F64 tensor '%s'", f->path, name)) return NULL;
    *n = dl_st_numel(e);
    double *p = malloc((size_t)*n * sizeof *p);
    if (p) dl_st_read_f64(f, e, p);
    return p;
}

TEST(rng, mt19937_known_answer)
{
    /* The C++ standard fixes this: the 10000th output of mt19937 with the
     * default seed 5489 is 4123659995. */
    dl_rng r;
    dl_rng_seed(&r, 5489);
    uint32_t v = 0;
    for (int i = 0; i < 10000; i++) v = dl_rng_u32(&r);
    CHECK(v == 4123659995u, "10000th mt19937 word is %u, expected 4123659995", v);
    /* only the low 32 bits of the seed reach the engine, as in torch */
    dl_rng a, b;
    dl_rng_seed(&a, 5);
    dl_rng_seed(&b, ((uint64_t)1 << 32) + 5);
    CHECK(dl_rng_u32(&a) == dl_rng_u32(&b), "seed 2^32+5 should behave like seed 5");
    CHECK(b.seed == ((uint64_t)1 << 32) + 5, "the full seed is remembered");
    /* random64 = two words, the first one high */
    dl_rng_seed(&a, 9);
    dl_rng_seed(&b, 9);
    uint64_t hi = dl_rng_u32(&a), lo = dl_rng_u32(&a);
    CHECK(dl_rng_u64(&b) == ((hi << 32) | lo), "u64 is (first << 32) | second");
}

/* Parse "1x4x64x64" -> numel. */
static int64_t parse_numel(const char *s)
{
    int64_t n = 1;
    while (*s) {
        char *end;
        n *= strtoll(s, &end, 10);
        if (end == s) return -1;
        s = *end == 'x' ? end + 1 : end;
    }
    return n;
}

/* Every tensor of the shared fixture, dispatched on its name. */
TEST(rng, torch_fixture_all_tensors)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, RNG_FIXTURE) == DL_OK, "%s", dl_error_message())) return;
    int handled = 0;
    char what[256];
    for (int i = 0; i < f.count; i++) {
        const char *name = f.entries[i].name;
        unsigned long long s1, s2;
        char shape[64], which[16];
        int64_t n = 0;
        dl_rng r;
        snprintf(what, sizeof what, "%s", name);
        if (sscanf(name, "randn_f64_seed%llu_%63s", &s1, shape) == 2) {
            double *want = load_f64(&f, name, &n), *got = malloc((size_t)n * sizeof *got);
            dl_rng_seed(&r, s1);
            dl_rng_randn_f64(&r, got, n);
            check_bits_f64(what, got, want, n);
            free(want); free(got); handled++;
        } else if (sscanf(name, "rand_f64_seed%llu_%63s", &s1, shape) == 2) {
            double *want = load_f64(&f, name, &n), *got = malloc((size_t)n * sizeof *got);
            dl_rng_seed(&r, s1);
            dl_rng_rand_f64(&r, got, n);
            check_bits_f64(what, got, want, n);
            free(want); free(got); handled++;
        } else if (sscanf(name, "randn_seed%llu_%63s", &s1, shape) == 2 ||
                   sscanf(name, "diffusers_randn_tensor_seed%llu_%63s", &s1, shape) == 2) {
            float *want = load_f32(&f, name, &n), *got = malloc((size_t)n * sizeof *got);
            CHECK(parse_numel(shape) == n, "%s: name and shape disagree", name);
            dl_rng_seed(&r, s1);
            dl_rng_randn(&r, got, n);
            check_bits_f32(what, got, want, n);
            free(want); free(got); handled++;
        } else if (sscanf(name, "rand_seed%llu_%63s", &s1, shape) == 2) {
            float *want = load_f32(&f, name, &n), *got = malloc((size_t)n * sizeof *got);
            dl_rng_seed(&r, s1);
            dl_rng_rand(&r, got, n);
            check_bits_f32(what, got, want, n);
            free(want); free(got); handled++;
        } else if (sscanf(name, "seq_seed%llu_%15[a-z]_%63s", &s1, which, shape) == 3) {
            /* two consecutive draws from one generator: draw both, compare one */
            float *want = load_f32(&f, name, &n), *got = malloc(2 * (size_t)n * sizeof *got);
            dl_rng_seed(&r, s1);
            dl_rng_randn(&r, got, n);
            dl_rng_randn(&r, got + n, n);
            check_bits_f32(what, !strcmp(which, "first") ? got : got + n, want, n);
            free(want); free(got); handled++;
        } else if (sscanf(name, "diffusers_randn_tensor_seeds%llu_%llu_%63s", &s1, &s2, shape) == 3) {
            /* a batch of 2 with one generator per sample: each sample is a
             * separate randn of the per-sample shape */
            float *want = load_f32(&f, name, &n), *got = malloc((size_t)n * sizeof *got);
            dl_rng_seed(&r, s1);
            dl_rng_randn(&r, got, n / 2);
            dl_rng_seed(&r, s2);
            dl_rng_randn(&r, got + n / 2, n / 2);
            check_bits_f32(what, got, want, n);
            free(want); free(got); handled++;
        } else {
            CHECK(0, "fixture tensor '%s' not understood by this test", name);
        }
    }
    CHECK(handled == f.count && handled >= 50, "handled %d of %d fixture tensors", handled, f.count);
    dl_st_close(&f);
}

TEST(rng, extra_sizes_and_big_seeds)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, EXTRA_FIXTURE) == DL_OK, "%s", dl_error_message())) return;
    char name[64];
    float *got = malloc(5000 * sizeof *got);
    for (int n = 1; n <= 40; n++) {   /* both sides of the 16-value switch */
        snprintf(name, sizeof name, "sizes_seed3_n%d", n);
        int64_t m = 0;
        float *want = load_f32(&f, name, &m);
        if (!want) continue;
        dl_rng r;
        dl_rng_seed(&r, 3);
        dl_rng_randn(&r, got, m);
        check_bits_f32(name, got, want, m);
        free(want);
    }
    const uint64_t seeds[3] = {7, ((uint64_t)1 << 32) + 5, ((uint64_t)1 << 63) - 1};
    for (int k = 0; k < 3; k++) {
        snprintf(name, sizeof name, "big_seed%llu", (unsigned long long)seeds[k]);
        int64_t m = 0;
        float *want = load_f32(&f, name, &m);
        if (!want) continue;
        dl_rng r;
        dl_rng_seed(&r, seeds[k]);
        dl_rng_randn(&r, got, m);
        check_bits_f32(name, got, want, m);
        free(want);
    }
    free(got);
    dl_st_close(&f);
}

TEST(rng, extra_mixed_call_sequence)
{
    /* Same sequence as MIXED in tests/torch_refs/gen_rng_refs.py. The scalar
     * path's cached second normal must carry over between calls and dtypes. */
    static const struct { const char *op; int n; } seq[] = {
        {"randn", 3}, {"randn", 1}, {"rand", 5}, {"randn", 33}, {"randn_f64", 7},
        {"randn", 2}, {"randn_f64", 17}, {"rand_f64", 3}, {"randn", 16}, {"randn", 5},
    };
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, EXTRA_FIXTURE) == DL_OK, "%s", dl_error_message())) return;
    for (int s = 0; s < 5; s++) {
        dl_rng r;
        dl_rng_seed(&r, (uint64_t)s);
        for (int k = 0; k < (int)(sizeof seq / sizeof seq[0]); k++) {
            char name[64];
            snprintf(name, sizeof name, "mixed_seed%d_%d_%s", s, k, seq[k].op);
            int is_f64 = strstr(seq[k].op, "f64") != NULL;
            int64_t m = 0;
            if (is_f64) {
                double *want = load_f64(&f, name, &m), got[64];
                if (!want) continue;
                if (!strcmp(seq[k].op, "randn_f64")) dl_rng_randn_f64(&r, got, m);
                else dl_rng_rand_f64(&r, got, m);
                check_bits_f64(name, got, want, m);
                free(want);
            } else {
                float *want = load_f32(&f, name, &m), got[64];
                if (!want) continue;
                if (!strcmp(seq[k].op, "randn")) dl_rng_randn(&r, got, m);
                else dl_rng_rand(&r, got, m);
                check_bits_f32(name, got, want, m);
                free(want);
            }
        }
    }
    dl_st_close(&f);
}

TEST(rng, state_is_plain_data)
{
    /* Copying the struct saves the generator's position, cached normal included. */
    dl_rng a, b;
    dl_rng_seed(&a, 77);
    float x[3], y[40], z[40];
    dl_rng_randn(&a, x, 3);            /* leaves a cached second value */
    b = a;
    dl_rng_randn(&a, y, 40);
    dl_rng_randn(&b, z, 40);
    CHECK(!memcmp(y, z, sizeof y), "a copied generator continues identically");
    CHECK(a.has_next_normal_f64 == 1 || a.has_next_normal_f64 == 0, "flag is 0/1");
    /* the tensor wrapper is the flat draw */
    dl_tensor t;
    CHECK(dl_tensor_alloc(&t, 4, DL_SHAPE(1, 2, 3, 5)) == DL_OK, "alloc");
    dl_rng_seed(&a, 5);
    dl_rng_seed(&b, 5);
    CHECK(dl_rng_randn_tensor(&a, &t) == DL_OK, "randn_tensor");
    dl_rng_randn(&b, z, 30);
    CHECK(!memcmp(t.data, z, 30 * sizeof(float)), "randn_tensor == randn of numel");
    CHECK(dl_rng_randn_tensor(&a, NULL) == DL_ERR_ARG, "NULL tensor rejected");
    dl_tensor_free(&t);
}

TEST(rng, vector_math_accuracy)
{
    /* Independent sanity check of the emulated log/sincos: within a few ulp
     * of libm in double over the ranges randn uses. */
    double worst_log = 0, worst_sc = 0;
    for (int i = 1; i <= 100000; i++) {
        float u = (float)i / 100000.0f;                  /* (0, 1] */
        double d = fabs((double)dl_rng_logf(u) - log((double)u));
        double ulp = ldexp(1.0, ilogb(log((double)u) == 0 ? 1.0 : log((double)u)) - 23);
        if (u < 1.0f && d / ulp > worst_log) worst_log = d / ulp;
        float th = (float)(2.0 * M_PI) * ((float)i / 100000.0f), s, c;
        dl_rng_sincosf(th, &s, &c);
        double es = fabs(s - sin((double)th)), ec = fabs(c - cos((double)th));
        if (es > worst_sc) worst_sc = es;
        if (ec > worst_sc) worst_sc = ec;
    }
    CHECK(dl_rng_logf(1.0f) == 0.0f, "log(1) = %g", dl_rng_logf(1.0f));
    CHECK(worst_log < 4, "log: worst error %.2f ulp", worst_log);
    CHECK(worst_sc < 3e-7, "sin/cos: worst abs error %.3g", worst_sc);
}
