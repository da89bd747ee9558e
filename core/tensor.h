/* tensor.h - the float32 tensor of difflab.
 *
 * A dl_tensor is a row-major float32 array with up to 4 dimensions. Images
 * and feature maps are NCHW: shape = {N, C, H, W}; sequences are
 * {B, L, C}. The data is either owned (dl_tensor_alloc) or borrowed
 * (dl_tensor_view, dl_arena_tensor): dl_tensor_free only frees owned data.
 *
 *     dl_tensor x;
 *     if (dl_tensor_alloc(&x, 4, DL_SHAPE(2, 320, 64, 64)) != DL_OK) ...
 *     x.data[((n * C + c) * H + h) * W + w] = 1.0f;
 *     dl_tensor_free(&x);
 */
#ifndef DL_TENSOR_H
#define DL_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "dl_error.h"

#define DL_MAX_DIMS 4
/* A shape literal: DL_SHAPE(2, 4, 8, 8) */
#define DL_SHAPE(...) ((const int64_t[]){__VA_ARGS__})
/* The largest tensor we agree to allocate (2^31 floats = 8 GiB). */
#define DL_MAX_NUMEL ((int64_t)1 << 31)

typedef struct {
    float  *data;
    int     ndim;
    int64_t shape[DL_MAX_DIMS];   /* unused trailing entries are 1 */
    int64_t numel;
    int     owns_data;
} dl_tensor;

/* Allocate a zeroed, 64-byte aligned tensor. Fails on ndim outside 1..4,
 * non-positive dimensions, or more than DL_MAX_NUMEL elements. */
dl_status dl_tensor_alloc(dl_tensor *t, int ndim, const int64_t shape[]);

/* Wrap existing memory (no copy, not owned). Same checks as alloc. */
dl_status dl_tensor_view(dl_tensor *t, float *data, int ndim, const int64_t shape[]);

/* Same data, another shape with the same numel (a view). */
dl_status dl_tensor_reshape(dl_tensor *view, const dl_tensor *t, int ndim, const int64_t shape[]);

/* Free owned data and zero the struct. Safe on a zeroed struct. */
void dl_tensor_free(dl_tensor *t);

/* Copy values (shapes must have the same numel). */
dl_status dl_tensor_copy(dl_tensor *dst, const dl_tensor *src);

void dl_tensor_fill(dl_tensor *t, float value);
/* Zero n floats at p / all of t, big ones on all threads. */
void dl_zero_floats(float *p, int64_t n);
void dl_tensor_zero(dl_tensor *t);

/* Do two tensors share memory? (Fast kernels that write `out` while BLAS
 * still reads the inputs reject aliasing with this.) */
int dl_tensors_overlap(const dl_tensor *a, const dl_tensor *b);

/* "[2, 320, 64, 64]" into buf; returns buf. */
const char *dl_shape_str(const dl_tensor *t, char *buf, size_t size);

/* Does `t` have this shape? Entries of -1 in `want` match anything.
 * On mismatch: DL_ERR_SHAPE with "<op>: <name> has shape [..], expected [..]". */
dl_status dl_check_shape(const dl_tensor *t, const char *op, const char *name,
                         int ndim, const int64_t want[]);

/* Element count of a shape with overflow and size checks (returns -1 and
 * sets the error message if the shape is invalid or too large). */
int64_t dl_shape_numel(int ndim, const int64_t shape[]);

/* ------------------------------------------------------------------ */
/* Arena: one big block, tensors carved off the front, reset to a mark.
 * Activations of a forward pass live here so that a UNet step does no
 * malloc at all.
 *
 *     dl_arena a;  dl_arena_init(&a, 1 << 26);       // 64 Mi floats
 *     size_t mark = dl_arena_mark(&a);
 *     dl_tensor h; dl_arena_tensor(&a, &h, 4, DL_SHAPE(1, 320, 64, 64));
 *     ...
 *     dl_arena_reset(&a, mark);                      // h is gone
 */
typedef struct {
    float *base;
    size_t capacity;   /* floats */
    size_t used;       /* floats */
    size_t peak;       /* floats, the high-water mark */
} dl_arena;

dl_status dl_arena_init(dl_arena *a, size_t capacity_floats);
void      dl_arena_free(dl_arena *a);
/* A zero-filled tensor from the arena (64-byte aligned, not owned). */
dl_status dl_arena_tensor(dl_arena *a, dl_tensor *t, int ndim, const int64_t shape[]);
static inline size_t dl_arena_mark(const dl_arena *a) { return a->used; }
static inline void   dl_arena_reset(dl_arena *a, size_t mark) { a->used = mark; }

/* ------------------------------------------------------------------ */
/* Threads: sets both OpenMP (our loops) and OpenBLAS (matmuls).
 * n <= 0 means "all cores". */
void dl_set_threads(int n);
int  dl_get_threads(void);
/* The calling thread's number inside an OpenMP parallel region (0 outside
 * one, or without OpenMP): the index of its share of a per-thread buffer. */
int  dl_thread_num(void);

/* May our own loops use OpenMP threads right next to BLAS calls?
 * Yes if OpenBLAS is the OpenMP build (one shared thread pool, which the
 * Makefile picks when libopenblas-openmp-dev is installed) or if
 * OMP_WAIT_POLICY=passive. With the pthread build, idle OpenMP threads
 * spin for milliseconds after each parallel loop and steal a core from
 * the next sgemm, so copy loops next to GEMMs then run on one thread.
 * Use it as: #pragma omp parallel for if (dl_parallel_ok()) */
int dl_parallel_ok(void);

#endif
