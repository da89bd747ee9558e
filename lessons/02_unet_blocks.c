/* 02_unet_blocks.c - Lesson 02: the blocks of a diffusion U-Net.
 *
 * A diffusion model is a network eps_theta(x_t, t, class) that looks at a
 * noisy image and predicts the noise in it. Stable Diffusion's network is a
 * U-Net made of a handful of block types. This lesson builds them one at a
 * time, checks each against PyTorch, and then stacks them into the toy U-Net
 * that lesson 03 trains:
 *
 *   1. a residual block that also sees the timestep t (ResnetBlock2D)
 *   2. a cross-attention layer: image tokens look at "text" tokens
 *   3. the toy U-Net: a table of tensor shapes through every block and the
 *      parameter count of each block
 *   4. what the blocks compute: feature maps of every block for a noisy digit
 *
 * See docs/02_unet_blocks.md for the explanations and the exercises.
 *
 *   bin/02_unet_blocks                live window: feature maps, block by block
 *   bin/02_unet_blocks --headless     prints the checks and the table; writes
 *                                     out/02_shapes.png and out/02_features_*.png
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/attention.h"
#include "../core/checkpoint.h"
#include "../core/dataset.h"
#include "../core/elementwise.h"
#include "../core/image.h"
#include "../core/linear.h"
#include "../core/rng.h"
#include "../core/safetensors.h"
#include "../core/schedule.h"
#include "../core/toy_unet.h"
#include "../core/toy_unet_blocks.h"
#include "../viz/app.h"
#include "../viz/viz.h"

static const char *USAGE =
    "Lesson 02: the blocks of a diffusion U-Net (ResBlock with time embedding, cross-attention,\n"
    "the toy U-Net's shape table), checked against PyTorch, and their feature maps.\n"
    "options:\n"
    "  --checkpoint PATH  trained weights for the feature maps (default data/toy_mnist.safetensors;\n"
    "                     if it is missing, the network keeps its random initial weights)\n"
    "  --random           use random initial weights even if the checkpoint exists\n"
    "  --t N              timestep of the noisy input digit, 0..999 (default 250)\n"
    "  --digit-index N    which MNIST test image (default 0)\n"
    "  --seed N           seed of the noise and of the random weights (default 0)\n"
    "live window keys: left/right: previous/next block, up/down: t +-50, c: next class\n"
    "  (10 = the null class), n: next digit, s: screenshot, q or Esc: quit\n";

#define REFERENCE "data/lesson02_reference.safetensors"
#define DEFAULT_CHECKPOINT "data/toy_mnist.safetensors"
#define TOL 1e-4   /* float32 against PyTorch: different summation orders */

static int checks_failed = 0;

/* Compare with a PyTorch tensor of the reference file; prints one line. */
static void compare(const char *what, const dl_tensor *got, const dl_safetensors *ref, const char *name)
{
    dl_tensor want;
    if (dl_st_load_tensor(ref, name, &want) != DL_OK) dl_die("the reference file is incomplete");
    double d = 0, m = 1;
    for (int64_t i = 0; i < want.numel; i++) {
        d = fmax(d, fabs((double)got->data[i] - want.data[i]));
        m = fmax(m, fabs((double)want.data[i]));
    }
    int ok = want.numel == got->numel && d <= TOL * m;
    checks_failed += !ok;
    printf("  check %-34s max |C - PyTorch| = %.2e  %s\n", what, d, ok ? "OK" : "MISMATCH");
    dl_tensor_free(&want);
}

/* Copy every parameter of `list` from the file entry "<prefix><param name>". */
static void load_params(dl_param_list *list, const dl_safetensors *ref, const char *prefix)
{
    for (int i = 0; i < list->count; i++) {
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, list->items[i]->name);
        dl_tensor w;
        if (dl_st_load_tensor(ref, name, &w) != DL_OK) dl_die("the reference file does not fit this lesson");
        if (dl_tensor_copy(&list->items[i]->value, &w) != DL_OK) dl_die(NULL);
        dl_tensor_free(&w);
    }
}

static dl_tensor load(const dl_safetensors *ref, const char *name)
{
    dl_tensor t;
    if (dl_st_load_tensor(ref, name, &t) != DL_OK) dl_die("the reference file is incomplete");
    return t;
}

/* ------------------------------------------------------------------------ */
/* 1. A residual block that sees the timestep.                               */
/*                                                                          */
/*    h   = conv1( SiLU( GroupNorm(x) ) )           3x3, 16 -> 32 channels   */
/*    h   = h + Linear( SiLU(temb) )[:, :, None, None]   one shift per channel */
/*    h   = conv2( SiLU( GroupNorm(h) ) )           3x3, 32 -> 32            */
/*    out = h + conv_shortcut(x)                    1x1: the channels differ */
/*                                                                          */
/* The time embedding temb is how the block knows how noisy x is: at t = 900 */
/* it must remove a lot, at t = 10 almost nothing.                           */

static void lesson_resblock(const dl_safetensors *ref)
{
    printf("\n1. ResnetBlock2D: x [2, 16, 8, 8] + temb [2, 64] -> [2, 32, 8, 8]\n");
    dl_param_list params = {0};
    dl_rng rng;
    dl_rng_seed(&rng, 0);
    toy_resblock rb;
    /* named "resblock" so its parameters are "resblock.norm1.weight", ... as in the file */
    if (toy_resblock_init(&rb, &params, &rng, "resblock", 16, 32, 64, 8, 1e-5f, 8, 8) != DL_OK) dl_die(NULL);
    load_params(&params, ref, "");
    toy_planner count = {0};                       /* how much memory the saved activations need */
    toy_resblock_plan(&rb, &count, 2);
    dl_arena act, scratch;
    if (dl_arena_init(&act, count.floats) || dl_arena_init(&scratch, toy_resblock_scratch_floats(&rb, 2)))
        dl_die(NULL);
    toy_planner carve = {.arena = &act};
    if (toy_resblock_plan(&rb, &carve, 2) != DL_OK) dl_die(NULL);

    dl_tensor x = load(ref, "resblock.x"), temb = load(ref, "resblock.temb"), temb_act;
    dl_tensor_alloc(&temb_act, 2, temb.shape);
    silu_forward(&temb_act, &temb);                /* the U-Net applies SiLU once for all blocks */
    if (toy_resblock_forward(&rb, &x, &temb_act, &scratch) != DL_OK) dl_die(NULL);
    compare("ResnetBlock2D output", &rb.out, ref, "resblock.out");
    printf("  %d parameter tensors, %lld weights (conv1 %lld, conv2 %lld, time_emb_proj %lld, conv_shortcut %lld,\n"
           "  the two GroupNorms %lld)\n", params.count, (long long)dl_params_numel(&params),
           (long long)(rb.conv1_w->value.numel + rb.conv1_b->value.numel),
           (long long)(rb.conv2_w->value.numel + rb.conv2_b->value.numel),
           (long long)(rb.temb_w->value.numel + rb.temb_b->value.numel),
           (long long)(rb.short_w->value.numel + rb.short_b->value.numel),
           (long long)(rb.norm1_w->value.numel * 2 + rb.norm2_w->value.numel * 2));

    /* the time embedding really moves the output: try another temb */
    dl_tensor out1;
    dl_tensor_alloc(&out1, 4, rb.out.shape);
    dl_tensor_copy(&out1, &rb.out);
    for (int64_t i = 0; i < temb_act.numel; i++) temb_act.data[i] *= -1.0f;
    toy_resblock_forward(&rb, &x, &temb_act, &scratch);
    double diff = 0;
    for (int64_t i = 0; i < out1.numel; i++) diff += fabs(out1.data[i] - rb.out.data[i]);
    printf("  same x, another time embedding: the output moves by %.3f on average\n", diff / out1.numel);
    dl_tensor_free(&out1); dl_tensor_free(&x); dl_tensor_free(&temb); dl_tensor_free(&temb_act);
    dl_arena_free(&act); dl_arena_free(&scratch);
    dl_params_free(&params);
}

/* ------------------------------------------------------------------------ */
/* 2. Cross-attention: image tokens ask questions, context tokens answer.   */
/*                                                                          */
/*    q = x W_q^T      [B, 16, 32]   one query per pixel (token)            */
/*    k = ctx W_k^T    [B, 3, 32]    one key per context token              */
/*    v = ctx W_v^T    [B, 3, 32]    one value per context token            */
/*    per head h (4 heads of 8 channels): p = softmax(q_h k_h^T / sqrt(8))  */
/*    out = (p v) W_o^T + b_o        [B, 16, 32]                            */
/*                                                                          */
/* In Stable Diffusion the context is the 77 text tokens of the prompt; in */
/* the toy U-Net it is ONE learned token per class.                         */

static void lesson_cross_attention(const dl_safetensors *ref)
{
    printf("\n2. Cross-attention: 16 image tokens [2, 16, 32] look at 3 context tokens [2, 3, 24], 4 heads\n");
    dl_tensor x = load(ref, "crossattn.x"), ctx = load(ref, "crossattn.ctx");
    dl_tensor Wq = load(ref, "crossattn.to_q.weight"), Wk = load(ref, "crossattn.to_k.weight");
    dl_tensor Wv = load(ref, "crossattn.to_v.weight"), Wo = load(ref, "crossattn.to_out.0.weight");
    dl_tensor bo = load(ref, "crossattn.to_out.0.bias");
    dl_tensor q, k, v, o, out;
    dl_tensor_alloc(&q, 3, DL_SHAPE(2, 16, 32));
    dl_tensor_alloc(&k, 3, DL_SHAPE(2, 3, 32));
    dl_tensor_alloc(&v, 3, DL_SHAPE(2, 3, 32));
    dl_tensor_alloc(&o, 3, DL_SHAPE(2, 16, 32));
    dl_tensor_alloc(&out, 3, DL_SHAPE(2, 16, 32));
    if (linear_forward(&q, &x, &Wq, NULL) || linear_forward(&k, &ctx, &Wk, NULL) ||
        linear_forward(&v, &ctx, &Wv, NULL) || attention_forward(&o, &q, &k, &v, 4, 0) ||
        linear_forward(&out, &o, &Wo, &bo))
        dl_die(NULL);
    compare("cross-attention output", &out, ref, "crossattn.out");

    /* what one head attends to: the softmax row of a few queries (image 0, head 0) */
    printf("  head 0, image 0: how much each of the first 4 image tokens looks at the 3 context tokens\n");
    for (int i = 0; i < 4; i++) {
        float s[3];
        for (int j = 0; j < 3; j++) {
            float dot = 0;
            for (int d = 0; d < 8; d++) dot += q.data[i * 32 + d] * k.data[j * 32 + d];
            s[j] = dot / sqrtf(8.0f);
        }
        float mx = fmaxf(s[0], fmaxf(s[1], s[2])), sum = 0;
        for (int j = 0; j < 3; j++) sum += (s[j] = expf(s[j] - mx));
        printf("    token %d: p = [%.3f, %.3f, %.3f]\n", i, s[0] / sum, s[1] / sum, s[2] / sum);
    }
    printf("  (with ONE context token, as in the toy U-Net, every p is 1: each pixel simply\n"
           "   receives the class token's value vector - see the docs)\n");
    dl_tensor *all[] = {&x, &ctx, &Wq, &Wk, &Wv, &Wo, &bo, &q, &k, &v, &o, &out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

/* ------------------------------------------------------------------------ */
/* 3. The toy U-Net: shapes through every block, and who holds the weights. */

typedef struct {
    char name[112];
    dl_tensor t;              /* a copy of the block's output */
} block_output;

typedef struct {
    block_output rows[160];
    int count;
} trace_log;

/* Called by toy_unet_forward after every block (toy_unet_set_trace). */
static void record(void *ctx, const char *block, const dl_tensor *t)
{
    trace_log *log = ctx;
    if (log->count >= (int)(sizeof log->rows / sizeof log->rows[0])) return;
    block_output *r = &log->rows[log->count++];
    snprintf(r->name, sizeof r->name, "%s", block);
    if (dl_tensor_alloc(&r->t, t->ndim, t->shape) != DL_OK || dl_tensor_copy(&r->t, t) != DL_OK) dl_die(NULL);
}

static void trace_clear(trace_log *log)
{
    for (int i = 0; i < log->count; i++) dl_tensor_free(&log->rows[i].t);
    log->count = 0;
}

/* Weights of the parameters whose names start with "<block>." */
static int64_t block_params(const dl_param_list *ps, const char *block)
{
    int64_t n = 0;
    size_t len = strlen(block);
    for (int i = 0; i < ps->count; i++)
        if (!strncmp(ps->items[i]->name, block, len) && ps->items[i]->name[len] == '.') n += ps->items[i]->value.numel;
    if (!strcmp(block, "conv_out")) n += block_params(ps, "conv_norm_out");   /* the head: norm, SiLU, conv */
    return n;
}

static void print_shape_table(const trace_log *log, const dl_param_list *ps)
{
    printf("\n3. The toy U-Net, block by block (batch 1)\n");
    printf("  %-52s %-18s %10s\n", "block", "output shape", "weights");
    for (int i = 0; i < log->count; i++) {
        char shape[48];
        dl_shape_str(&log->rows[i].t, shape, sizeof shape);
        int64_t n = strstr(log->rows[i].name, "[h, skip]") ? 0 : block_params(ps, log->rows[i].name);
        if (n) printf("  %-52s %-18s %10lld\n", log->rows[i].name, shape, (long long)n);
        else printf("  %-52s %-18s %10s\n", log->rows[i].name, shape, "-");
    }
    const char *groups[] = {"conv_in", "time_embedding", "class_embedding", "down_blocks", "mid_block", "up_blocks", "conv_out"};
    printf("  weights by part:");
    for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
        int64_t n = 0;
        size_t len = strlen(groups[g]);
        for (int i = 0; i < ps->count; i++)
            if (!strncmp(ps->items[i]->name, groups[g], len)) n += ps->items[i]->value.numel;
        if (!strcmp(groups[g], "conv_out")) n += block_params(ps, "conv_norm_out");
        printf(" %s %lld%s", groups[g], (long long)n, g + 1 < sizeof groups / sizeof groups[0] ? "," : "\n");
    }
    printf("  total: %lld weights in %d tensors\n", (long long)dl_params_numel(ps), ps->count);
}

/* The shape table as a picture (headless output). */
static dl_image shape_table_picture(const trace_log *log, const dl_param_list *ps, const char *title)
{
    const int line = 22, x1 = 16, x2 = 700, x3 = 960;
    dl_image img;
    if (dl_image_alloc(&img, 1100, 90 + line * (log->count + 2), 3) != DL_OK) dl_die(NULL);
    dl_image_fill(&img, 255, 255, 255);
    dl_image_draw_text(&img, x1, 12, title, 0, 0, 0, 2);
    int y = 50;
    dl_image_draw_text(&img, x1, y, "block", 90, 90, 90, 2);
    dl_image_draw_text(&img, x2, y, "output shape", 90, 90, 90, 2);
    dl_image_draw_text(&img, x3, y, "weights", 90, 90, 90, 2);
    for (int i = 0; i < log->count; i++) {
        y += line;
        char shape[48], n[32] = "-";
        dl_shape_str(&log->rows[i].t, shape, sizeof shape);
        int skip = strstr(log->rows[i].name, "[h, skip]") != NULL;
        int64_t p = skip ? 0 : block_params(ps, log->rows[i].name);
        if (p) snprintf(n, sizeof n, "%lld", (long long)p);
        /* colour by resolution: the U shape is visible in the table */
        int64_t side = log->rows[i].t.ndim == 4 ? log->rows[i].t.shape[3] : 0;
        unsigned char r = side >= 32 ? 31 : side >= 16 ? 44 : side ? 214 : 100;
        unsigned char g = side >= 32 ? 119 : side >= 16 ? 160 : side ? 39 : 100;
        unsigned char b = side >= 32 ? 180 : side >= 16 ? 44 : side ? 40 : 100;
        if (i % 2) dl_image_fill_rect(&img, 8, y - 3, img.w - 16, line, 244, 244, 244);
        dl_image_draw_text(&img, x1, y, log->rows[i].name, skip ? 120 : 0, skip ? 120 : 0, skip ? 120 : 0, 2);
        dl_image_draw_text(&img, x2, y, shape, r, g, b, 2);
        dl_image_draw_text(&img, x3, y, n, 0, 0, 0, 2);
    }
    char total[96];
    snprintf(total, sizeof total, "total: %lld weights", (long long)dl_params_numel(ps));
    dl_image_draw_text(&img, x1, y + line + 8, total, 0, 0, 0, 2);
    int lx = x2;   /* legend of the shape colours */
    lx += dl_image_draw_text(&img, lx, y + line + 8, "32x32  ", 31, 119, 180, 2);
    lx += dl_image_draw_text(&img, lx, y + line + 8, "16x16  ", 44, 160, 44, 2);
    dl_image_draw_text(&img, lx, y + line + 8, "8x8", 214, 39, 40, 2);
    return img;
}

/* The narrow U-Net of the reference file against PyTorch's output. */
static void check_unet_against_torch(const dl_safetensors *ref)
{
    char json[1024];
    toy_unet_config cfg;
    if (!dl_st_metadata_get(ref, "unet_config", json, sizeof json) || toy_unet_config_from_json(&cfg, json) != DL_OK)
        dl_die("the reference file has no usable unet_config");
    toy_unet *net;
    if (toy_unet_create(&net, &cfg, 1, 0) != DL_OK) dl_die(NULL);
    load_params(toy_unet_params(net), ref, "unet.");
    dl_tensor x = load(ref, "unet.input.x"), t = load(ref, "unet.input.t"), id = load(ref, "unet.input.class_ids"), eps;
    dl_tensor_alloc(&eps, 4, x.shape);
    int cls = (int)id.data[0];
    if (toy_unet_forward(net, &x, t.data, &cls, &eps) != DL_OK) dl_die(NULL);
    printf("  the same U-Net code with channels [8, 16, 16] and PyTorch's weights:\n");
    compare("toy U-Net output eps", &eps, ref, "unet.output.eps");
    dl_tensor_free(&x); dl_tensor_free(&t); dl_tensor_free(&id); dl_tensor_free(&eps);
    toy_unet_free(net);
}

/* ------------------------------------------------------------------------ */
/* 4. Feature maps: what every block makes of a noisy digit.                */

typedef struct {
    toy_unet *net;
    int trained;              /* weights from a checkpoint? */
    dl_dataset digits;        /* a few MNIST test images */
    dl_schedule sched;
    int t, digit, cls;
    uint64_t seed;
    dl_tensor x0, noise, xt, eps;   /* [1, 1, 32, 32] */
    trace_log log;
} features;

/* Noise the digit to x_t and run the U-Net, recording every block's output. */
static void features_run(features *f)
{
    dl_dataset_get(&f->digits, f->digit, f->x0.data);
    dl_rng rng;
    dl_rng_seed(&rng, f->seed);
    dl_rng_randn(&rng, f->noise.data, f->noise.numel);
    if (add_noise(&f->sched, f->xt.data, f->x0.data, f->noise.data, f->x0.numel, f->t) != DL_OK) dl_die(NULL);
    trace_clear(&f->log);
    float t = (float)f->t;
    if (toy_unet_forward(f->net, &f->xt, &t, &f->cls, &f->eps) != DL_OK) dl_die(NULL);
}

/* Signed values as colour: blue < 0 < red, white = 0, each map scaled by its own max |v|. */
static dl_image map_picture(const float *m, int h, int w, int zoom)
{
    float mx = 1e-12f;
    for (int i = 0; i < h * w; i++) mx = fmaxf(mx, fabsf(m[i]));
    dl_image img, big;
    if (dl_image_alloc(&img, w, h, 3) != DL_OK) dl_die(NULL);
    for (int i = 0; i < h * w; i++) {
        float v = m[i] / mx;
        unsigned char *p = &img.px[i * 3];
        unsigned char fade = (unsigned char)lroundf(255.0f * (1.0f - fabsf(v)));
        p[0] = v > 0 ? 255 : fade;
        p[1] = fade;
        p[2] = v < 0 ? 255 : fade;
    }
    if (dl_image_scale_nearest(&big, &img, zoom) != DL_OK) dl_die(NULL);
    dl_image_free(&img);
    return big;
}

/* Up to 32 channels of block output `row` as a grid, with x_t and the predicted noise next to it. */
static dl_image feature_grid(const features *f, int row)
{
    const block_output *b = &f->log.rows[row];
    const dl_tensor *t = &b->t;
    char title[256], shape[48];
    dl_shape_str(t, shape, sizeof shape);
    int spatial = t->ndim == 4;
    int C = (int)t->shape[1], H = spatial ? (int)t->shape[2] : 1, W = spatial ? (int)t->shape[3] : (int)t->shape[t->ndim - 1];
    if (!spatial) C = 1;                       /* a vector (time / class embedding): one strip */
    int shown = C < 32 ? C : 32, cols = shown < 8 ? shown : 8, rows = (shown + cols - 1) / cols;
    int zoom = spatial ? (H >= 32 ? 3 : H >= 16 ? 6 : 12) : 3;
    int null_class = toy_unet_get_config(f->net)->num_classes;
    snprintf(title, sizeof title, "%s  %s  (%s%d of %d channels)\ninput: digit %d noised to t = %d, class %d%s, %s weights",
             b->name, shape, shown < C ? "first " : "", spatial ? shown : 1, spatial ? C : 1, f->digits.labels[f->digit], f->t,
             f->cls, f->cls == null_class ? " (null)" : "", f->trained ? "trained" : "random (untrained)");
    dl_grid g = {.rows = rows, .cols = cols, .tile_w = W * zoom, .tile_h = H * zoom, .pad = 6, .text_scale = 1, .title = title};
    if (!spatial) { g.tile_w = W * zoom > 600 ? 600 : W * zoom; g.tile_h = 24; }
    dl_image canvas;
    if (dl_grid_create(&canvas, &g) != DL_OK) dl_die(NULL);
    for (int c = 0; c < shown; c++) {
        dl_image tile = map_picture(t->data + (int64_t)c * H * W, H, W, zoom);
        if (!spatial) {                                       /* stretch the vector into a bar */
            dl_image bar;
            dl_image_resize(&bar, &tile, g.tile_w, g.tile_h);
            dl_image_free(&tile);
            tile = bar;
        }
        dl_grid_place(&canvas, &g, c / cols, c % cols, &tile);
        dl_image_free(&tile);
    }
    return canvas;
}

/* checkpoint NULL: the default one if it exists, else random weights. */
static void features_init(features *f, const char *checkpoint, int random_weights, int t, int digit, uint64_t seed)
{
    memset(f, 0, sizeof *f);
    toy_unet_config cfg;
    char json[1024];
    int explicit = checkpoint != NULL;
    if (!checkpoint) checkpoint = DEFAULT_CHECKPOINT;
    f->trained = !random_weights && dl_checkpoint_read_config(checkpoint, json, sizeof json) == DL_OK;
    if (explicit && !random_weights && !f->trained) dl_die("give a checkpoint written by bin/03_train, or leave --checkpoint out");
    if (f->trained) {
        if (toy_unet_config_from_json(&cfg, json) != DL_OK) dl_die("the checkpoint's config is not a toy U-Net");
    } else if (toy_unet_config_default(&cfg, "mnist") != DL_OK) dl_die(NULL);
    if (toy_unet_create(&f->net, &cfg, 1, seed) != DL_OK) dl_die(NULL);
    if (f->trained && dl_checkpoint_load(checkpoint, toy_unet_params(f->net), NULL, NULL, NULL, NULL, NULL, 0) != DL_OK)
        dl_die("give another --checkpoint or --random");
    if (cfg.in_channels != 1 || cfg.image_size != 32) dl_die_msg("use an MNIST checkpoint", "%s is not an MNIST model", checkpoint);
    if (dl_dataset_load_subset(&f->digits, "mnist", "data", 0, 1000) != DL_OK) dl_die("run from the repository root");
    if (digit >= f->digits.count) dl_die_msg("--digit-index is 0..999 here", "no digit %d", digit);
    if (dl_schedule_init_default(&f->sched, DL_SCHEDULE_LINEAR) != DL_OK) dl_die(NULL);
    const int64_t *shape = DL_SHAPE(1, 1, 32, 32);
    if (dl_tensor_alloc(&f->x0, 4, shape) || dl_tensor_alloc(&f->noise, 4, shape) || dl_tensor_alloc(&f->xt, 4, shape) ||
        dl_tensor_alloc(&f->eps, 4, shape))
        dl_die(NULL);
    f->t = t;
    f->digit = digit;
    f->cls = f->digits.labels[digit];
    f->seed = seed;
    toy_unet_set_trace(f->net, record, &f->log);
}

static void features_free(features *f)
{
    trace_clear(&f->log);
    toy_unet_free(f->net);
    dl_dataset_free(&f->digits);
    dl_schedule_free(&f->sched);
    dl_tensor_free(&f->x0); dl_tensor_free(&f->noise); dl_tensor_free(&f->xt); dl_tensor_free(&f->eps);
}

/* Blocks the headless run draws: the first conv, one per resolution on the way
 * down, the bottleneck's attention, and the last ResBlock before the head. */
static void save_feature_pictures(dl_app *app, const features *f)
{
    const char *want[] = {"conv_in", "down_blocks.1.resnets.0", "mid_block.attentions.0", NULL};
    int last_up = -1;
    for (int i = 0; i < f->log.count; i++)
        if (strstr(f->log.rows[i].name, "up_blocks.") && strstr(f->log.rows[i].name, ".resnets.") &&
            !strstr(f->log.rows[i].name, "[h, skip]"))
            last_up = i;
    for (int i = 0; i < f->log.count; i++) {
        int pick = i == last_up;
        for (int k = 0; want[k]; k++) pick |= !strcmp(f->log.rows[i].name, want[k]);
        if (!pick) continue;
        char file[160];
        snprintf(file, sizeof file, "02_features_%s.png", f->log.rows[i].name);
        for (char *p = file; *p; p++) if (*p == '.' && strcmp(p, ".png")) *p = '_';
        dl_image img = feature_grid(f, i);
        if (dl_app_save(app, file, &img) != DL_OK) dl_die("check --out");
        dl_image_free(&img);
    }
}

/* ------------------------------------------------------------------------ */
/* The live window: pick a block, watch its feature maps change with t.     */

#define FRAME_W 1280
#define FRAME_H 720

static void draw_frame(dl_image *frame, const features *f, int row)
{
    dl_image_fill(frame, 250, 250, 250);
    /* left: the input x_t, the predicted noise */
    dl_image small, big;
    dl_image_draw_text(frame, 16, 12, "input x_t", 0, 0, 0, 2);
    if (dl_tensor_to_image(&small, &f->xt, 0) || dl_image_scale_nearest(&big, &small, 6)) dl_die(NULL);
    dl_image_blit(frame, &big, 16, 40);
    dl_image_free(&small); dl_image_free(&big);
    dl_image_draw_text(frame, 16, 250, "predicted noise", 0, 0, 0, 2);
    if (dl_tensor_to_image(&small, &f->eps, 0) || dl_image_scale_nearest(&big, &small, 6)) dl_die(NULL);
    dl_image_blit(frame, &big, 16, 278);
    dl_image_free(&small); dl_image_free(&big);
    char line[160];
    snprintf(line, sizeof line, "t = %d  class %d", f->t, f->cls);
    dl_image_draw_text(frame, 16, 490, line, 0, 0, 0, 2);
    snprintf(line, sizeof line, "block %d / %d", row + 1, f->log.count);
    dl_image_draw_text(frame, 16, 516, line, 0, 0, 0, 2);
    /* right: the chosen block's feature maps, shrunk to fit if needed */
    dl_image grid = feature_grid(f, row);
    int bw = FRAME_W - 240, bh = FRAME_H - 70;
    if (grid.w > bw || grid.h > bh) {
        double s = fmin((double)bw / grid.w, (double)bh / grid.h);
        dl_image fit;
        if (dl_image_resize(&fit, &grid, (int)(grid.w * s), (int)(grid.h * s)) != DL_OK) dl_die(NULL);
        dl_image_free(&grid);
        grid = fit;
    }
    dl_image_blit(frame, &grid, 228, 8);
    dl_image_free(&grid);
    dl_image_draw_text(frame, 16, FRAME_H - 34,
                       "left/right: block   up/down: t -+50   c: class   n: next digit   s: save   q: quit", 80, 80, 80, 2);
}

static void run_live(dl_app *app, features *f)
{
    viz_window *win = viz_open("difflab 02 - U-Net blocks", FRAME_W, FRAME_H, 1);
    if (!win) dl_die("run with --headless to write the pictures instead");
    dl_image frame;
    if (dl_image_alloc(&frame, FRAME_W, FRAME_H, 3) != DL_OK) dl_die(NULL);
    int row = 2, shots = 0, dirty = 1;   /* start at conv_in */
    for (int64_t frame_no = 0, running = 1; running; frame_no++) {
        viz_event ev;
        int rerun = 0;
        while (viz_poll(win, &ev)) {
            if (ev.type == VIZ_QUIT) running = 0;
            if (ev.type != VIZ_KEY) continue;
            switch (ev.key) {
            case 'q': case VIZ_KEY_ESCAPE: running = 0; break;
            case VIZ_KEY_RIGHT: row = (row + 1) % f->log.count; break;
            case VIZ_KEY_LEFT: row = (row + f->log.count - 1) % f->log.count; break;
            case VIZ_KEY_UP: f->t = f->t + 50 > 999 ? 999 : f->t + 50; rerun = 1; break;
            case VIZ_KEY_DOWN: f->t = f->t - 50 < 0 ? 0 : f->t - 50; rerun = 1; break;
            case 'c': f->cls = (f->cls + 1) % (toy_unet_get_config(f->net)->num_classes + 1); rerun = 1; break;
            case 'n': f->digit = (f->digit + 1) % f->digits.count; f->cls = f->digits.labels[f->digit]; rerun = 1; break;
            case 's': {
                char name[64];
                snprintf(name, sizeof name, "02_screenshot_%03d.png", ++shots);
                dl_app_save(app, name, &frame);
                break;
            }
            default: break;
            }
            dirty = 1;
        }
        if (rerun) features_run(f);
        if (dirty) {
            draw_frame(&frame, f, row);
            viz_present(win, &frame);
            dirty = 0;
        }
        if (dl_app_frame_limit(app, win, frame_no + 1)) running = 0;   /* scripted run: keep what was shown */
        viz_wait(win, 16);
    }
    dl_image_free(&frame);
    viz_close(win);
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    dl_app app;
    dl_app_init(&app, "02_unet_blocks", USAGE);
    const char *checkpoint = NULL;
    int random_weights = 0, t = 250, digit = 0;
    uint64_t seed = 0;
    for (int i = 1; i < argc; i++) {
        if (dl_app_common_arg(&app, argc, argv, &i)) continue;
        if (!strcmp(argv[i], "--checkpoint")) checkpoint = dl_arg_str(&app, argc, argv, &i);
        else if (!strcmp(argv[i], "--random")) random_weights = 1;
        else if (!strcmp(argv[i], "--t")) t = (int)dl_arg_int(&app, argc, argv, &i, 0, 999);
        else if (!strcmp(argv[i], "--digit-index")) digit = (int)dl_arg_int(&app, argc, argv, &i, 0, 999);
        else if (!strcmp(argv[i], "--seed")) seed = (uint64_t)dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
        else dl_app_bad_arg(&app, "unknown option '%s'", argv[i]);
    }
    dl_app_choose_mode(&app);

    dl_safetensors ref;
    if (dl_st_open(&ref, REFERENCE) != DL_OK) dl_die("run from the repository root (the file is made by tests/torch_refs/gen_toy_unet_refs.py)");
    printf("Lesson 02: U-Net blocks, checked against PyTorch values in %s\n", REFERENCE);
    lesson_resblock(&ref);
    lesson_cross_attention(&ref);

    features f;
    features_init(&f, checkpoint, random_weights, t, digit, seed);
    features_run(&f);
    print_shape_table(&f.log, toy_unet_params(f.net));
    check_unet_against_torch(&ref);
    dl_st_close(&ref);
    printf("\n4. Feature maps of the %s network for MNIST test digit %d (a %d) noised to t = %d\n",
           f.trained ? "trained" : "randomly initialised", digit, f.digits.labels[digit], t);
    if (!f.trained && !random_weights)
        printf("  (%s not found: random weights; lesson 03 trains one)\n", DEFAULT_CHECKPOINT);

    if (app.headless) {
        char title[160];
        snprintf(title, sizeof title, "toy U-Net (%s weights): output of every block for one 32x32 digit",
                 f.trained ? "trained" : "random");
        dl_image table = shape_table_picture(&f.log, toy_unet_params(f.net), title);
        if (dl_app_save(&app, "02_shapes.png", &table) != DL_OK) dl_die("check --out");
        dl_image_free(&table);
        save_feature_pictures(&app, &f);
    } else {
        run_live(&app, &f);
    }
    features_free(&f);
    if (checks_failed) {
        printf("%d check(s) against PyTorch FAILED\n", checks_failed);
        return 1;
    }
    printf("all checks against PyTorch passed\n");
    return 0;
}
