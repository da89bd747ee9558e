/* test_st_widen.c - the fast fp16 / bf16 -> float32 array widening
 * (F16C + threads) against the reference conversion, value by value. */
#include "testing.h"
#include "../core/safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Same float, bit for bit; NaNs only need to be NaN with the same sign
 * (F16C quiets signalling NaNs, the reference keeps the payload as is). */
static int same(float a, float b)
{
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b) && !signbit(a) == !signbit(b);
    return bits(a) == bits(b);
}

/* n halves: every one of the 65536 bit patterns in turn, from `start`. */
static void fill_all_halves(unsigned char *p, int64_t n, uint32_t start)
{
    for (int64_t i = 0; i < n; i++) {
        uint16_t h = (uint16_t)(start + (uint32_t)i);
        memcpy(p + 2 * i, &h, 2);
    }
}

/* Compare fast and reference on n values read from byte offset `skew`
 * (0 or 1: the data of a mapped file need not be aligned). */
static int compare(int bf16, int64_t n, int skew, uint32_t start)
{
    unsigned char *src = malloc((size_t)(2 * n + 1));
    float *fast = malloc((size_t)(n + 1) * sizeof(float)), *ref = malloc((size_t)(n + 1) * sizeof(float));
    if (!CHECK(src && fast && ref, "out of memory")) { free(src); free(fast); free(ref); return 0; }
    fill_all_halves(src + skew, n, start);
    fast[n] = ref[n] = 12345.0f;                                   /* must stay untouched */
    if (bf16) {
        dl_bf16_to_f32_array(fast, src + skew, n);
        dl_bf16_to_f32_array_ref(ref, src + skew, n);
    } else {
        dl_f16_to_f32_array(fast, src + skew, n);
        dl_f16_to_f32_array_ref(ref, src + skew, n);
    }
    int64_t bad = 0, first = -1;
    for (int64_t i = 0; i < n; i++)
        if (!same(fast[i], ref[i])) { bad++; if (first < 0) first = i; }
    CHECK(bad == 0, "%s, n %lld, skew %d: %lld values differ, first at %lld (0x%04x: fast %08x, ref %08x)",
          bf16 ? "bf16" : "f16", (long long)n, skew, (long long)bad, (long long)first,
          (unsigned)((start + (uint32_t)first) & 0xffff), first >= 0 ? (unsigned)bits(fast[first]) : 0u,
          first >= 0 ? (unsigned)bits(ref[first]) : 0u);
    CHECK(fast[n] == 12345.0f, "wrote past the end (n %lld)", (long long)n);
    free(src); free(fast); free(ref);
    return bad == 0;
}

TEST(safetensors, f16_array_fast_matches_reference)
{
    /* all 65536 halves: zeros, subnormals, normals, infinities, NaNs */
    compare(0, 65536, 0, 0);
    compare(0, 65536, 1, 0);
    /* the reference itself: a few known values */
    const uint16_t h[6] = {0x3c00, 0x0001, 0x03ff, 0xfc00, 0x7bff, 0x8000};
    float f[6];
    dl_f16_to_f32_array(f, h, 6);
    CHECK(f[0] == 1.0f && f[1] == 0x1p-24f && f[2] == 1023 * 0x1p-24f && isinf(f[3]) && f[3] < 0 &&
          f[4] == 65504.0f && f[5] == 0.0f && signbit(f[5]), "1, subnormals, -inf, max, -0");
    /* lengths around the 8-wide vector and the thread split; large enough
     * for several threads (every pattern many times over) */
    const int64_t lens[] = {0, 1, 3, 7, 8, 9, 15, 17, 65535, 65536 + 7, 5 * 65536 + 3};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) compare(0, lens[i], (int)(i & 1), 0x7bf0);
}

TEST(safetensors, bf16_array_fast_matches_reference)
{
    compare(1, 65536, 0, 0);
    compare(1, 65536, 1, 0);
    const int64_t lens[] = {1, 7, 9, 65536 + 7, 5 * 65536 + 3};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) compare(1, lens[i], (int)(i & 1), 0x7f70);
}
