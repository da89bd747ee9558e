/* rng.h - PyTorch's CPU random generator, reproduced bit for bit.
 *
 * With the same seed, dl_rng_randn gives exactly the floats that
 *
 *     torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed))
 *
 * gives (torch 1.13, x86-64 with AVX2), so a diffusion run in C starts from
 * the same initial latent as a diffusers run with the same seed.
 *
 *     dl_rng r;
 *     dl_rng_seed(&r, 42);
 *     dl_tensor x;  dl_tensor_alloc(&x, 4, DL_SHAPE(1, 4, 64, 64));
 *     dl_rng_randn_tensor(&r, &x);     // == torch.randn((1,4,64,64), generator=g)
 *
 * How torch draws numbers (see rng.c for the details):
 *   - one mt19937 (Mersenne Twister) stream of 32-bit words;
 *   - float uniforms use 24 bits of one word, double uniforms 53 bits of two;
 *   - randn of >= 16 floats: Box-Muller on blocks of 16 uniforms with torch's
 *     own vectorised log/sin/cos; fewer than 16 (or doubles < 16): a scalar
 *     Box-Muller in double precision that keeps its second value for later.
 *
 * The struct is plain data: copy it (or write it to a checkpoint) to save
 * the generator's position.
 */
#ifndef DL_RNG_H
#define DL_RNG_H

#include <stdint.h>

#include "dl_error.h"
#include "tensor.h"

#define DL_MT_N 624

typedef struct {
    uint32_t state[DL_MT_N];   /* mt19937 state words */
    int      index;            /* next word to hand out; DL_MT_N = twist first */
    uint64_t seed;             /* the seed given to dl_rng_seed */
    int      has_next_normal_f64;   /* the scalar Box-Muller's cached 2nd value */
    double   next_normal_f64;
} dl_rng;

/* = torch.Generator("cpu").manual_seed(seed) (only the low 32 bits seed
 * mt19937, as in torch). Also clears the cached normal value. */
void     dl_rng_seed(dl_rng *r, uint64_t seed);

/* Raw words: torch's generator.random() and random64() (two words, first high). */
uint32_t dl_rng_u32(dl_rng *r);
uint64_t dl_rng_u64(dl_rng *r);

/* = torch.rand(n) (float32 / float64): uniform in [0, 1). */
void dl_rng_rand(dl_rng *r, float *out, int64_t n);
void dl_rng_rand_f64(dl_rng *r, double *out, int64_t n);

/* = torch.randn(n) (float32 / float64), for a contiguous tensor of n values.
 * A tensor of any shape draws the same values as a flat one of its numel. */
void dl_rng_randn(dl_rng *r, float *out, int64_t n);
void dl_rng_randn_f64(dl_rng *r, double *out, int64_t n);

/* Fill t with torch.randn(t.shape). */
dl_status dl_rng_randn_tensor(dl_rng *r, dl_tensor *t);

/* The vectorised float math torch uses inside randn (exposed for tests):
 * natural log for x in (0, 1], and sin/cos together for x in [0, 8192). */
float dl_rng_logf(float x);
void  dl_rng_sincosf(float x, float *s, float *c);

#endif
