/* tensor.c - see tensor.h */
#include "tensor.h"

#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

int64_t dl_shape_numel(int ndim, const int64_t shape[])
{
    if (ndim < 1 || ndim > DL_MAX_DIMS) {
        dl_fail(DL_ERR_SHAPE, "tensor: %d dimensions requested, difflab tensors have 1 to %d", ndim, DL_MAX_DIMS);
        return -1;
    }
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 0) {
            dl_fail(DL_ERR_SHAPE, "tensor: dimension %d is %lld, must be positive", i, (long long)shape[i]);
            return -1;
        }
        if (shape[i] > DL_MAX_NUMEL || n > DL_MAX_NUMEL / shape[i]) {
            dl_fail(DL_ERR_ARG, "tensor: shape too large (more than %lld elements)", (long long)DL_MAX_NUMEL);
            return -1;
        }
        n *= shape[i];
    }
    return n;
}

static void set_shape(dl_tensor *t, int ndim, const int64_t shape[], int64_t numel)
{
    t->ndim = ndim;
    for (int i = 0; i < DL_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
    t->numel = numel;
}

dl_status dl_tensor_alloc(dl_tensor *t, int ndim, const int64_t shape[])
{
    memset(t, 0, sizeof *t);
    int64_t n = dl_shape_numel(ndim, shape);
    if (n < 0) return DL_ERR_SHAPE;
    size_t bytes = ((size_t)n * sizeof(float) + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes);
    if (!p) return dl_fail(DL_ERR_MEMORY, "tensor: cannot allocate %zu MiB", bytes >> 20);
    memset(p, 0, bytes);
    t->data = p;
    t->owns_data = 1;
    set_shape(t, ndim, shape, n);
    return DL_OK;
}

dl_status dl_tensor_view(dl_tensor *t, float *data, int ndim, const int64_t shape[])
{
    memset(t, 0, sizeof *t);
    int64_t n = dl_shape_numel(ndim, shape);
    if (n < 0) return DL_ERR_SHAPE;
    t->data = data;
    set_shape(t, ndim, shape, n);
    return DL_OK;
}

dl_status dl_tensor_reshape(dl_tensor *view, const dl_tensor *t, int ndim, const int64_t shape[])
{
    int64_t n = dl_shape_numel(ndim, shape);
    if (n < 0) return DL_ERR_SHAPE;
    if (n != t->numel) {
        char a[64];
        return dl_fail(DL_ERR_SHAPE, "reshape: tensor %s has %lld elements, new shape has %lld",
                       dl_shape_str(t, a, sizeof a), (long long)t->numel, (long long)n);
    }
    float *data = t->data;
    memset(view, 0, sizeof *view);
    view->data = data;
    set_shape(view, ndim, shape, n);
    return DL_OK;
}

void dl_tensor_free(dl_tensor *t)
{
    if (t->owns_data) free(t->data);
    memset(t, 0, sizeof *t);
}

dl_status dl_tensor_copy(dl_tensor *dst, const dl_tensor *src)
{
    if (dst->numel != src->numel) {
        char a[64], b[64];
        return dl_fail(DL_ERR_SHAPE, "copy: destination %s and source %s differ in size",
                       dl_shape_str(dst, a, sizeof a), dl_shape_str(src, b, sizeof b));
    }
    memmove(dst->data, src->data, (size_t)src->numel * sizeof(float));
    return DL_OK;
}

void dl_zero_floats(float *p, int64_t n)
{
    const int64_t chunk = 1 << 16;
    const int64_t chunks = (n + chunk - 1) / chunk;
    #pragma omp parallel for schedule(static) if (dl_parallel_ok() && chunks > 1)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t len = c == chunks - 1 ? n - c * chunk : chunk;
        memset(p + c * chunk, 0, (size_t)len * sizeof(float));
    }
}

void dl_tensor_zero(dl_tensor *t) { dl_zero_floats(t->data, t->numel); }

void dl_tensor_fill(dl_tensor *t, float value)
{
    for (int64_t i = 0; i < t->numel; i++) t->data[i] = value;
}

int dl_tensors_overlap(const dl_tensor *a, const dl_tensor *b)
{
    if (!a || !b || !a->data || !b->data) return 0;
    return a->data < b->data + b->numel && b->data < a->data + a->numel;
}

static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t k = 0;
    k += (size_t)snprintf(buf + k, size - k, "[");
    for (int i = 0; i < ndim && k < size; i++) {
        if (shape[i] < 0) k += (size_t)snprintf(buf + k, size - k, "%s*", i ? ", " : "");
        else k += (size_t)snprintf(buf + k, size - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    }
    if (k < size) snprintf(buf + k, size - k, "]");
    return buf;
}

const char *dl_shape_str(const dl_tensor *t, char *buf, size_t size)
{
    return shape_str(t->ndim, t->shape, buf, size);
}

dl_status dl_check_shape(const dl_tensor *t, const char *op, const char *name,
                         int ndim, const int64_t want[])
{
    int ok = t && t->data && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (want[i] >= 0 && t->shape[i] != want[i]) ok = 0;
    if (ok) return DL_OK;
    char a[64], b[64];
    if (!t || !t->data) return dl_fail(DL_ERR_ARG, "%s: %s is missing (NULL tensor)", op, name);
    return dl_fail(DL_ERR_SHAPE, "%s: %s has shape %s, expected %s", op, name,
                   dl_shape_str(t, a, sizeof a), shape_str(ndim, want, b, sizeof b));
}

/* ------------------------------------------------------------------ */

dl_status dl_arena_init(dl_arena *a, size_t capacity_floats)
{
    memset(a, 0, sizeof *a);
    if (capacity_floats == 0 || capacity_floats > (size_t)DL_MAX_NUMEL * 4)
        return dl_fail(DL_ERR_ARG, "arena: capacity of %zu floats is not sensible", capacity_floats);
    size_t bytes = (capacity_floats * sizeof(float) + 63) & ~(size_t)63;
    a->base = aligned_alloc(64, bytes);
    if (!a->base) return dl_fail(DL_ERR_MEMORY, "arena: cannot allocate %zu MiB", bytes >> 20);
    a->capacity = capacity_floats;
    return DL_OK;
}

void dl_arena_free(dl_arena *a)
{
    free(a->base);
    memset(a, 0, sizeof *a);
}

dl_status dl_arena_tensor(dl_arena *a, dl_tensor *t, int ndim, const int64_t shape[])
{
    int64_t n = dl_shape_numel(ndim, shape);
    if (n < 0) return DL_ERR_SHAPE;
    size_t start = (a->used + 15) & ~(size_t)15;       /* 16 floats = 64 bytes */
    if (start > a->capacity || (size_t)n > a->capacity - start) {
        char b[64];
        return dl_fail(DL_ERR_MEMORY, "arena: no room for tensor %s (%lld floats); %zu of %zu floats used",
                       shape_str(ndim, shape, b, sizeof b), (long long)n, a->used, a->capacity);
    }
    dl_tensor_view(t, a->base + start, ndim, shape);
    memset(t->data, 0, (size_t)n * sizeof(float));
    a->used = start + (size_t)n;
    if (a->used > a->peak) a->peak = a->used;
    return DL_OK;
}

/* ------------------------------------------------------------------ */

static int dl_threads = 0;

void dl_set_threads(int n)
{
#ifdef _OPENMP
    if (n <= 0) n = omp_get_num_procs();
    omp_set_num_threads(n);
#else
    if (n <= 0) n = 1;
#endif
    openblas_set_num_threads(n);
    dl_threads = n;
}

int dl_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int dl_get_threads(void)
{
#ifdef _OPENMP
    return dl_threads > 0 ? dl_threads : omp_get_max_threads();
#else
    return dl_threads > 0 ? dl_threads : 1;
#endif
}

int dl_parallel_ok(void)
{
    /* not cached: tests switch OMP_WAIT_POLICY to exercise both paths */
    const char *policy = getenv("OMP_WAIT_POLICY");
    return openblas_get_parallel() == 2 || (policy && !strcasecmp(policy, "passive"));
}

/* ------------------------------------------------------------------ */

/* Reuse freed scratch memory instead of returning it to the system.
 *
 * Kernels allocate their workspaces (im2col tiles, padded planes: a few MB)
 * at the start of every call and free them at the end. glibc serves blocks
 * that big with mmap and gives them back with munmap, so every call would
 * fault in fresh zero-filled pages: page faults and page clearing took ~3%
 * of a toy U-Net training step. Blocks up to 64 MiB now come from the heap,
 * and up to 256 MiB of free heap is kept for the next call. */
__attribute__((constructor)) static void dl_malloc_keep_scratch(void)
{
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

/* ------------------------------------------------------------------ */

/* Keep idle OpenMP threads from spinning for long.
 *
 * Why: by default libgomp's worker threads busy-wait for a while after
 * every parallel loop, hoping for the next one. On a quiet machine that
 * saves the cost of waking them; on a student's laptop with a browser open
 * (or while a test runs next to a training job) the spinning threads fight
 * the real work for the cores: a DDIM sampling run took 146 s instead of
 * 27 s. Sleeping at once (OMP_WAIT_POLICY=passive) fixes that but made a
 * quiet training step 1.6x slower (974 ms vs 620 ms: the U-Net runs many
 * short parallel loops). A short spin, GOMP_SPINCOUNT=20000 (microseconds),
 * measured 653 ms quiet and gives the cores back soon under load.
 *
 * libgomp reads its settings when it is loaded, before main(), so setting
 * them from main() is too late. Instead, before main() runs, a program that
 * was started without OMP_WAIT_POLICY or GOMP_SPINCOUNT sets GOMP_SPINCOUNT
 * and restarts itself once (exec of /proc/self/exe with the same
 * arguments). Set either variable yourself to choose otherwise (e.g.
 * OMP_WAIT_POLICY=active to compare). If the restart fails, the program
 * simply runs on.
 */
__attribute__((constructor)) static void dl_omp_short_spin(void)
{
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;   /* the user chose */
    /* rebuild argv from /proc/self/cmdline (NUL-separated arguments) */
    static char buf[1 << 16];
    FILE *f = fopen("/proc/self/cmdline", "rb");
    if (!f) return;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int complete = feof(f);
    fclose(f);
    if (n == 0 || !complete) return;            /* too long to restart safely */
    buf[n] = '\0';
    static char *argv[1024];
    int argc = 0;
    for (size_t i = 0; i < n && argc < 1023; i += strlen(buf + i) + 1) argv[argc++] = buf + i;
    argv[argc] = NULL;
    if (setenv("GOMP_SPINCOUNT", "20000", 1) != 0) return;
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with libgomp's default (spinning) policy */
}
