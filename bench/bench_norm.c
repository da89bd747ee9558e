/* bench_norm.c - normalisation and elementwise kernels against memory bandwidth.
 *
 * These kernels do little arithmetic per byte, so their ceiling is the
 * memory system. Each is reported in GB/s of MINIMUM traffic (every input
 * element read once, every output element written once) and compared with
 * this machine's copy and triad bandwidth measured in the same run.
 *
 *   group_norm  [2, 320, 64, 64], 32 groups      (SD ResBlock at 64x64)
 *   layer_norm  [2*4096, 320]                     (SD transformer block)
 *   silu, gelu_erf, gelu_tanh   [2, 320, 64, 64]
 *   add         [2, 320, 64, 64] + [2, 320, 1, 1] (time embedding per channel)
 *   softmax     [8*4096, 77]                      (cross-attention probabilities)
 */
#include "bench_util.h"
#include "../core/elementwise.h"
#include "../core/norm.h"

#include <stdio.h>
#include <string.h>

typedef enum { K_COPY, K_GROUP_NORM, K_LAYER_NORM, K_SILU, K_GELU_ERF, K_GELU_TANH, K_ADD, K_SOFTMAX } kernel_id;

typedef struct {
    kernel_id id;
    int ref;                 /* 1: time the *_ref version */
    dl_tensor *x, *y, *w, *b, *bcast;
} ctx;

static void run(void *p)
{
    ctx *c = p;
    dl_status s = DL_OK;
    switch (c->id) {
    case K_COPY: {         /* the same-size baseline: y = x, split like the kernels */
        const float *x = c->x->data;
        float *y = c->y->data;
        int64_t n = c->x->numel;
        #pragma omp parallel for simd schedule(static)
        for (int64_t i = 0; i < n; i++) y[i] = x[i];
        break;
    }
    case K_GROUP_NORM: s = (c->ref ? group_norm_forward_ref : group_norm_forward)(c->y, c->x, c->w, c->b, 32, 1e-5f); break;
    case K_LAYER_NORM: s = (c->ref ? layer_norm_forward_ref : layer_norm_forward)(c->y, c->x, c->w, c->b, 1e-5f); break;
    case K_SILU:       s = (c->ref ? silu_forward_ref : silu_forward)(c->y, c->x); break;
    case K_GELU_ERF:   s = (c->ref ? gelu_erf_forward_ref : gelu_erf_forward)(c->y, c->x); break;
    case K_GELU_TANH:  s = (c->ref ? gelu_tanh_forward_ref : gelu_tanh_forward)(c->y, c->x); break;
    case K_ADD:        s = (c->ref ? add_forward_ref : add_forward)(c->y, c->x, c->bcast); break;
    case K_SOFTMAX:    s = (c->ref ? softmax_forward_ref : softmax_forward)(c->y, c->x); break;
    }
    if (s != DL_OK) dl_die("bench_norm");
}

static void fill(dl_tensor *t, unsigned seed)
{
    for (int64_t i = 0; i < t->numel; i++) {
        seed = seed * 1664525u + 1013904223u;
        t->data[i] = (float)(seed >> 8) / 16777216.0f * 4.0f - 2.0f;
    }
}

static double copy_gbs, triad_gbs, tensor_copy_gbs;

static void report(const char *name, const char *shape, ctx *c, double bytes)
{
    c->ref = 0;
    double t = bench_time(run, c, 0.5);
    c->ref = 1;
    double tr = bench_time(run, c, 0.2);
    double gbs = bytes / t * 1e-9;
    printf("%-10s %-26s %7.3f ms %6.1f GB/s %5.0f%% %5.0f%% %5.0f%%   (ref %7.3f ms, fast %4.1fx)\n",
           name, shape, t * 1e3, gbs, 100 * gbs / copy_gbs, 100 * gbs / triad_gbs, 100 * gbs / tensor_copy_gbs,
           tr * 1e3, tr / t);
}

int main(int argc, char **argv)
{
    bench_init(argc, argv, "bench_norm",
               "GroupNorm, LayerNorm, activations, broadcast add and softmax at SD 64x64 shapes,\n"
               "in GB/s of minimum memory traffic against copy / triad bandwidth measured in the same run.");
    copy_gbs = bench_copy_gbs();
    triad_gbs = bench_triad_gbs();
    printf("machine: copy %.1f GB/s, triad %.1f GB/s\n", copy_gbs, triad_gbs);

    dl_tensor x, y, w, b, temb, xl, yl, wl, bl, xs, ys;
    if (dl_tensor_alloc(&x, 4, DL_SHAPE(2, 320, 64, 64)) || dl_tensor_alloc(&y, 4, DL_SHAPE(2, 320, 64, 64)) ||
        dl_tensor_alloc(&w, 1, DL_SHAPE(320)) || dl_tensor_alloc(&b, 1, DL_SHAPE(320)) ||
        dl_tensor_alloc(&temb, 4, DL_SHAPE(2, 320, 1, 1)) ||
        dl_tensor_alloc(&xl, 2, DL_SHAPE(2 * 4096, 320)) || dl_tensor_alloc(&yl, 2, DL_SHAPE(2 * 4096, 320)) ||
        dl_tensor_alloc(&wl, 1, DL_SHAPE(320)) || dl_tensor_alloc(&bl, 1, DL_SHAPE(320)) ||
        dl_tensor_alloc(&xs, 2, DL_SHAPE(8 * 4096, 77)) || dl_tensor_alloc(&ys, 2, DL_SHAPE(8 * 4096, 77)))
        dl_die("bench_norm: allocation");
    fill(&x, 1); fill(&w, 2); fill(&b, 3); fill(&temb, 4); fill(&xl, 5); fill(&wl, 6); fill(&bl, 7); fill(&xs, 8);

    double img = (double)x.numel * sizeof(float);        /* one [2, 320, 64, 64] tensor */
    ctx c = {.id = K_COPY, .x = &x, .y = &y, .w = &w, .b = &b, .bcast = &temb};
    tensor_copy_gbs = 2 * img / bench_time(run, &c, 0.5) * 1e-9;
    printf("copy of one [2,320,64,64] tensor (%.0f MiB, same working set as the kernels): %.1f GB/s\n"
           "(above 100%% of the big-array copy means the tensors stay in this machine's cache)\n\n",
           img / 1048576, tensor_copy_gbs);
    printf("%-10s %-26s %10s %11s %6s %6s %6s\n", "kernel", "shape", "time", "traffic", "%copy", "%triad", "%same");
    c.id = K_GROUP_NORM; report("group_norm", "[2,320,64,64] g32", &c, 2 * img);
    c.id = K_SILU;       report("silu", "[2,320,64,64]", &c, 2 * img);
    c.id = K_GELU_ERF;   report("gelu_erf", "[2,320,64,64]", &c, 2 * img);
    c.id = K_GELU_TANH;  report("gelu_tanh", "[2,320,64,64]", &c, 2 * img);
    c.id = K_ADD;        report("add", "[2,320,64,64]+[2,320,1,1]", &c, 2 * img);
    ctx cl = {.id = K_LAYER_NORM, .x = &xl, .y = &yl, .w = &wl, .b = &bl};
    report("layer_norm", "[8192,320]", &cl, 2.0 * xl.numel * sizeof(float));
    ctx cs = {.id = K_SOFTMAX, .x = &xs, .y = &ys};
    report("softmax", "[32768,77]", &cs, 2.0 * xs.numel * sizeof(float));

    dl_tensor *all[] = {&x, &y, &w, &b, &temb, &xl, &yl, &wl, &bl, &xs, &ys};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
    return 0;
}
