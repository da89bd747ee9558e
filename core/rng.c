/* rng.c - see rng.h. Everything here was checked value by value against
 * torch 1.13 (see tests/test_rng.c and tests/fixtures/torch_rng/README.md).
 */
#include "rng.h"

#include <math.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* mt19937: the standard 32-bit Mersenne Twister (Matsumoto & Nishimura). */

#define MT_M 397
#define MT_UPPER 0x80000000u   /* most significant bit */
#define MT_LOWER 0x7fffffffu   /* the other 31 bits    */

void dl_rng_seed(dl_rng *r, uint64_t seed)
{
    memset(r, 0, sizeof *r);
    r->seed = seed;
    r->state[0] = (uint32_t)seed;   /* torch keeps only the low 32 bits here */
    for (int i = 1; i < DL_MT_N; i++)
        r->state[i] = 1812433253u * (r->state[i - 1] ^ (r->state[i - 1] >> 30)) + (uint32_t)i;
    r->index = DL_MT_N;             /* twist before the first word */
}

/* Regenerate all 624 words at once. */
static void mt_twist(dl_rng *r)
{
    uint32_t *s = r->state;
    for (int i = 0; i < DL_MT_N; i++) {
        uint32_t y = (s[i] & MT_UPPER) | (s[(i + 1) % DL_MT_N] & MT_LOWER);
        s[i] = s[(i + MT_M) % DL_MT_N] ^ (y >> 1) ^ ((y & 1) ? 0x9908b0dfu : 0);
    }
    r->index = 0;
}

uint32_t dl_rng_u32(dl_rng *r)
{
    if (r->index >= DL_MT_N) mt_twist(r);
    uint32_t y = r->state[r->index++];
    y ^= y >> 11;                   /* tempering */
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

uint64_t dl_rng_u64(dl_rng *r)
{
    uint64_t hi = dl_rng_u32(r);
    uint64_t lo = dl_rng_u32(r);
    return (hi << 32) | lo;
}

/* ------------------------------------------------------------------ */
/* Uniforms: keep as many low bits as the mantissa holds, scale to [0, 1). */

static float uniform_f32(dl_rng *r)
{
    return (float)(dl_rng_u32(r) & 0xffffffu) * 0x1p-24f;            /* 24 bits */
}

static double uniform_f64(dl_rng *r)
{
    return (double)(dl_rng_u64(r) & 0x1fffffffffffffull) * 0x1p-53;  /* 53 bits */
}

void dl_rng_rand(dl_rng *r, float *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++) out[i] = uniform_f32(r);
}

void dl_rng_rand_f64(dl_rng *r, double *out, int64_t n)
{
    for (int64_t i = 0; i < n; i++) out[i] = uniform_f64(r);
}

/* ------------------------------------------------------------------ */
/* torch's vectorised float log and sincos (ATen/native/cpu/avx_mathfun.h,
 * after the Cephes logf/sinf/cosf polynomials), one lane at a time.
 *
 * Why not logf/sinf/cosf from libm? They are more accurate, and so they
 * differ from torch in about 1 value in 5000 (by 1-2 ulp). torch's AVX2 build
 * also lets the compiler fuse some "a * b + c" into one FMA instruction (a
 * single rounding). fmaf() below marks exactly those places and plain "*",
 * "+" the places where no fusion happens (the Makefile's -ffp-contract=off
 * keeps our compiler from fusing anything else). The rule GCC follows: a
 * product is fused into the add or subtract that uses it, the first product
 * in program order winning when both operands of the add are products.
 * With this, over 8 million values from many seeds and sizes match torch
 * bit for bit (see tests/fixtures/torch_rng/README.md). */

static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Polynomial for log(1 + x), x in [sqrt(1/2) - 1, sqrt(2) - 1] (Cephes logf). */
static const double LOG_P[9] = {
    7.0376836292E-2, -1.1514610310E-1, 1.1676998740E-1, -1.2420140846E-1, 1.4249322787E-1,
    -1.6668057665E-1, 2.0000714765E-1, -2.4999993993E-1, 3.3333331174E-1,
};
/* ln 2 split in two: a short head (exact times small integers) + a tail. */
#define LN2_HI 0.693359375
#define LN2_LO -2.12194440e-4
#define SQRT_HALF 0.707106781186547524

float dl_rng_logf(float x)
{
    /* x = m * 2^e with m in [0.5, 1). Inputs are never denormal here
     * (x >= 2^-24), so the exponent field tells e directly. */
    uint32_t u = f32_bits(x);
    float e = (float)((int32_t)(u >> 23) - 127) + 1.0f;
    float m = bits_f32((u & ~0x7f800000u) | f32_bits(0.5f));
    /* Move m to [sqrt(1/2), sqrt(2)) so that log(m) is small, then f = m - 1. */
    float f;
    if (m < (float)SQRT_HALF) { e = e - 1.0f; f = (m - 1.0f) + m; }
    else f = (m - 1.0f) + 0.0f;
    float z = f * f;
    float y = (float)LOG_P[0];
    for (int k = 1; k < 9; k++) y = fmaf(y, f, (float)LOG_P[k]);   /* Horner */
    y = y * f;
    y = fmaf(y, z, e * (float)LN2_LO);          /* y = f^3 P(f) + e ln2_lo (the first
                                                   product is the fused one) */
    y = fmaf(-z, 0.5f, y);                      /* log(1+f) = f - f^2/2 + f^3 P(f) */
    return fmaf(e, (float)LN2_HI, f + y);
}

/* 4/pi, and pi/4 split in three parts for an accurate x - j*pi/4. */
#define FOUR_OVER_PI 1.27323954473516
#define PIO4_A -0.78515625
#define PIO4_B -2.4187564849853515625e-4
#define PIO4_C -3.77489497744594108e-8
static const double SIN_P[3] = {-1.9515295891E-4, 8.3321608736E-3, -1.6666654611E-1};
static const double COS_P[3] = {2.443315711809948E-005, -1.388731625493765E-003, 4.166664568298827E-002};

void dl_rng_sincosf(float x, float *s, float *c)
{
    float sign_sin = x < 0 ? -1.0f : 1.0f;
    x = fabsf(x);
    /* Octant: j = floor(x * 4/pi), rounded up to an even number. */
    int32_t j = (int32_t)(x * (float)FOUR_OVER_PI);
    j = (j + 1) & ~1;
    float y = (float)j;
    if (j & 4) sign_sin = -sign_sin;
    float sign_cos = ((j - 2) & 4) ? 1.0f : -1.0f;
    int use_sin_poly = (j & 2) == 0;            /* reduced angle near 0: sin ~ x */
    /* x - j*pi/4 in three steps (extended precision reduction). */
    x = fmaf(y, (float)PIO4_A, x);
    x = fmaf(y, (float)PIO4_B, x);
    x = fmaf(y, (float)PIO4_C, x);
    float z = x * x;
    /* cos(x) ~ 1 - z/2 + z^2 Q(z) */
    float pc = fmaf((float)COS_P[0], z, (float)COS_P[1]);
    pc = fmaf(pc, z, (float)COS_P[2]);
    pc = pc * z;
    pc = fmaf(pc, z, -(z * 0.5f));
    pc = pc + 1.0f;
    /* sin(x) ~ x + x z P(z) */
    float ps = fmaf((float)SIN_P[0], z, (float)SIN_P[1]);
    ps = fmaf(ps, z, (float)SIN_P[2]);
    ps = ps * z;
    ps = fmaf(ps, x, x);
    float sv = use_sin_poly ? ps : pc, cv = use_sin_poly ? pc : ps;
    /* torch selects with masks and adds +0.0: same value, except -0 -> +0 */
    *s = (sv + 0.0f) * sign_sin;
    *c = (cv + 0.0f) * sign_cos;
}

/* ------------------------------------------------------------------ */
/* Normal samples */

/* Box-Muller on 16 uniforms in place: pairs (u[j], u[j+8]) -> two normals. */
static void normal_fill_16(float *data, float mean, float std)
{
    const float two_pi = (float)(2.0 * M_PI);
    for (int j = 0; j < 8; j++) {
        float radius = sqrtf(-2.0f * dl_rng_logf(1.0f - data[j]));   /* 1-u in (0, 1] */
        float theta = two_pi * data[j + 8];
        float s, c;
        dl_rng_sincosf(theta, &s, &c);
        data[j] = fmaf(radius * c, std, mean);
        data[j + 8] = fmaf(radius * s, std, mean);
    }
}

/* One standard normal from the scalar double path (torch's
 * normal_distribution<double>): each Box-Muller pair gives r cos(theta)
 * now and keeps r sin(theta) for the next call. */
static double normal_scalar_f64(dl_rng *r)
{
    if (r->has_next_normal_f64) {
        r->has_next_normal_f64 = 0;
        return r->next_normal_f64;
    }
    double u1 = uniform_f64(r);
    double u2 = uniform_f64(r);
    /* torch 1.13 writes log(1 - u2) here (later versions log1p(-u2), which
     * differs in the last bit now and then). */
    double radius = sqrt(-2.0 * log(1.0 - u2));
    double theta = 2.0 * M_PI * u1;
    r->next_normal_f64 = radius * sin(theta);
    r->has_next_normal_f64 = 1;
    return radius * cos(theta);
}

void dl_rng_randn(dl_rng *r, float *out, int64_t n)
{
    if (n < 16) {                    /* torch's scalar path, in double, then rounded */
        for (int64_t i = 0; i < n; i++) out[i] = (float)normal_scalar_f64(r);
        return;
    }
    /* All uniforms first, then blocks of 16. If n is not a multiple of 16 the
     * LAST 16 values are redrawn from 16 fresh uniforms (overlapping the
     * previous block), exactly as torch does. */
    dl_rng_rand(r, out, n);
    for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16(out + i, 0.0f, 1.0f);
    if (n % 16 != 0) {
        dl_rng_rand(r, out + n - 16, 16);
        normal_fill_16(out + n - 16, 0.0f, 1.0f);
    }
}

/* Box-Muller in double for 16 values (torch's generic normal_fill<double>,
 * which uses libm's log/cos/sin). */
static void normal_fill_16_f64(double *data)
{
    for (int j = 0; j < 8; j++) {
        double radius = sqrt(-2.0 * log(1.0 - data[j]));   /* 1-u in (0, 1] */
        double theta = 2.0 * M_PI * data[j + 8];
        data[j] = radius * cos(theta);
        data[j + 8] = radius * sin(theta);
    }
}

void dl_rng_randn_f64(dl_rng *r, double *out, int64_t n)
{
    if (n < 16) {
        for (int64_t i = 0; i < n; i++) out[i] = normal_scalar_f64(r);
        return;
    }
    dl_rng_rand_f64(r, out, n);
    for (int64_t i = 0; i + 16 <= n; i += 16) normal_fill_16_f64(out + i);
    if (n % 16 != 0) {
        dl_rng_rand_f64(r, out + n - 16, 16);
        normal_fill_16_f64(out + n - 16);
    }
}

dl_status dl_rng_randn_tensor(dl_rng *r, dl_tensor *t)
{
    if (!r || !t || !t->data) return dl_fail(DL_ERR_ARG, "randn: NULL generator or tensor");
    dl_rng_randn(r, t->data, t->numel);
    return DL_OK;
}
