/* test_lesson02.c - lesson 02 (U-Net blocks): the program, and the
 * exercises of docs/02_unet_blocks.md.
 *
 *   make test K=lesson02                      everything here
 *   make test K=lesson02/resblock_weights     exercise 1
 *   make test K=lesson02/skip_channels        exercise 2
 *   make test K=lesson02/one_token            exercise 3
 *   make test K=silu_backward                 exercise 4 (tests/test_grad_elementwise.c)
 *
 * The EXERCISE functions below are where a student writes the answer (the
 * repository ships a solution so that the tests pass; delete the body and
 * write your own).
 */
#include "testing.h"
#include "../core/attention.h"
#include "../core/image.h"
#include "../core/linear.h"
#include "../core/rng.h"
#include "../core/toy_unet.h"
#include "../core/toy_unet_blocks.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the exercises ------------------------------------------------------ */

/* EXERCISE 1. How many weights does a ResnetBlock2D have? in_ch -> out_ch
 * channels, a time embedding of temb_dim: two GroupNorms (weight + bias),
 * two 3x3 convs (weight + bias), time_emb_proj (a Linear with bias) and,
 * when the channel count changes, a 1x1 conv_shortcut with bias. */
static int64_t resblock_weights(int64_t in_ch, int64_t out_ch, int64_t temb_dim)
{
    int64_t n = 2 * in_ch + (in_ch * 9 + 1) * out_ch;      /* norm1, conv1 */
    n += (temb_dim + 1) * out_ch;                          /* time_emb_proj */
    n += 2 * out_ch + (out_ch * 9 + 1) * out_ch;           /* norm2, conv2 */
    if (in_ch != out_ch) n += (in_ch + 1) * out_ch;        /* conv_shortcut */
    return n;
}

/* EXERCISE 2. The skip connections. Up block i works at level l = levels-1-i
 * (up_blocks.0 is the lowest resolution). Its ResBlock j (0 .. layers_per_block)
 * gets torch.cat([h, skip]): h has the channels of what came before (the mid
 * block or the previous up block for j = 0, this level's channels after),
 * and skip is the matching down-path output, taken from the END of the list
 * conv_in, down level 0 outputs..., down level 1 outputs..., ... (a stack).
 * How many channels does that concatenation have? */
static int up_resblock_in_channels(const toy_unet_config *c, int i, int j)
{
    const int L = c->levels, lpb = c->layers_per_block, l = L - 1 - i;
    const int *ch = c->block_out_channels;
    int h = j > 0 ? ch[l] : (i == 0 ? ch[L - 1] : ch[l + 1]);
    /* the last ResBlock of the level takes the skip that entered the level:
     * the previous level's downsampler output (or conv_in's at level 0) */
    int skip = j < lpb ? ch[l] : (l > 0 ? ch[l - 1] : ch[0]);
    return h + skip;
}

/* EXERCISE 3. The toy U-Net's cross-attention sees ONE class token. Then the
 * softmax over the keys is 1 for every query, and every token's output is the
 * same vector, whatever the queries are: out = W_o (W_v ctx) + b_o.
 * ctx [X], Wv [C, X], Wo [C, C], bo [C] -> out [C]. */
static void one_token_cross_attention(float *out, const float *ctx, const float *Wv, const float *Wo,
                                      const float *bo, int C, int X)
{
    float *v = malloc(sizeof(float) * C);
    for (int c = 0; c < C; c++) {
        v[c] = 0;
        for (int x = 0; x < X; x++) v[c] += Wv[c * X + x] * ctx[x];
    }
    for (int c = 0; c < C; c++) {
        out[c] = bo[c];
        for (int k = 0; k < C; k++) out[c] += Wo[c * C + k] * v[k];
    }
    free(v);
}

/* ---- exercise tests ----------------------------------------------------- */

TEST(lesson02, resblock_weights)
{
    const int cases[][3] = {{16, 32, 64}, {32, 32, 128}, {96, 32, 128}, {64, 64, 128}, {8, 12, 32}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        dl_param_list ps = {0};
        dl_rng rng;
        dl_rng_seed(&rng, 0);
        toy_resblock rb;
        CHECK(toy_resblock_init(&rb, &ps, &rng, "rb", cases[k][0], cases[k][1], cases[k][2], 4, 1e-5f, 4, 4) == DL_OK,
              "%s", dl_error_message());
        int64_t want = dl_params_numel(&ps), got = resblock_weights(cases[k][0], cases[k][1], cases[k][2]);
        CHECK(got == want, "ResnetBlock2D %d -> %d, temb %d: you say %lld weights, the block has %lld",
              cases[k][0], cases[k][1], cases[k][2], (long long)got, (long long)want);
        dl_params_free(&ps);
    }
}

typedef struct { char names[128][112]; int64_t channels[128]; int count; } shape_log;

static void log_shapes(void *ctx, const char *block, const dl_tensor *t)
{
    shape_log *s = ctx;
    if (s->count >= 128) return;
    snprintf(s->names[s->count], sizeof s->names[0], "%s", block);
    s->channels[s->count++] = t->ndim == 4 ? t->shape[1] : 0;
}

TEST(lesson02, skip_channels)
{
    toy_unet_config cfgs[3];
    toy_unet_config_default(&cfgs[0], "mnist");
    toy_unet_config_default(&cfgs[1], "mnist");   /* 4 levels, 2 layers, all different widths */
    cfgs[1].levels = 4;
    cfgs[1].image_size = 16;
    cfgs[1].layers_per_block = 2;
    int w[4] = {8, 16, 24, 32};
    memcpy(cfgs[1].block_out_channels, w, sizeof w);
    cfgs[1].attention_levels = 0;
    cfgs[1].time_embed_dim = 32;
    cfgs[2] = cfgs[1];
    cfgs[2].levels = 2;
    for (int k = 0; k < 3; k++) {
        toy_unet *net;
        if (!CHECK(toy_unet_create(&net, &cfgs[k], 1, 0) == DL_OK, "%s", dl_error_message())) continue;
        shape_log log = {0};
        toy_unet_set_trace(net, log_shapes, &log);
        int S = cfgs[k].image_size, ids[1] = {0};
        float t[1] = {10};
        dl_tensor x, eps;
        dl_tensor_alloc(&x, 4, DL_SHAPE(1, 1, S, S));
        dl_tensor_alloc(&eps, 4, DL_SHAPE(1, 1, S, S));
        CHECK(toy_unet_forward(net, &x, t, ids, &eps) == DL_OK, "%s", dl_error_message());
        int seen = 0;
        for (int r = 0; r < log.count; r++) {
            int i, j;
            if (sscanf(log.names[r], "up_blocks.%d.resnets.%d input", &i, &j) != 2 || !strstr(log.names[r], "[h, skip]")) continue;
            seen++;
            int got = up_resblock_in_channels(&cfgs[k], i, j);
            CHECK(got == log.channels[r], "config %d, up_blocks.%d.resnets.%d: you say %d channels, the network has %lld",
                  k, i, j, got, (long long)log.channels[r]);
        }
        CHECK(seen == cfgs[k].levels * (cfgs[k].layers_per_block + 1), "config %d: %d concatenations traced", k, seen);
        dl_tensor_free(&x);
        dl_tensor_free(&eps);
        toy_unet_free(net);
    }
}

TEST(lesson02, one_token_cross_attention)
{
    enum { B = 1, L = 20, C = 16, X = 12, HEADS = 4 };
    dl_test_rng r = {7};
    dl_tensor tok, ctx, Wq, Wk, Wv, Wo, bo, q, k, v, a, out;
    dl_test_rand_tensor(&tok, &r, 3, DL_SHAPE(B, L, C));
    dl_test_rand_tensor(&ctx, &r, 3, DL_SHAPE(B, 1, X));
    dl_test_rand_tensor(&Wq, &r, 2, DL_SHAPE(C, C));
    dl_test_rand_tensor(&Wk, &r, 2, DL_SHAPE(C, X));
    dl_test_rand_tensor(&Wv, &r, 2, DL_SHAPE(C, X));
    dl_test_rand_tensor(&Wo, &r, 2, DL_SHAPE(C, C));
    dl_test_rand_tensor(&bo, &r, 1, DL_SHAPE(C));
    dl_tensor_alloc(&q, 3, DL_SHAPE(B, L, C));
    dl_tensor_alloc(&k, 3, DL_SHAPE(B, 1, C));
    dl_tensor_alloc(&v, 3, DL_SHAPE(B, 1, C));
    dl_tensor_alloc(&a, 3, DL_SHAPE(B, L, C));
    dl_tensor_alloc(&out, 3, DL_SHAPE(B, L, C));
    /* the real thing: attn2 of a BasicTransformerBlock */
    CHECK(linear_forward(&q, &tok, &Wq, NULL) == DL_OK && linear_forward(&k, &ctx, &Wk, NULL) == DL_OK &&
          linear_forward(&v, &ctx, &Wv, NULL) == DL_OK && attention_forward(&a, &q, &k, &v, HEADS, 0) == DL_OK &&
          linear_forward(&out, &a, &Wo, &bo) == DL_OK, "%s", dl_error_message());
    float mine[C];
    one_token_cross_attention(mine, ctx.data, Wv.data, Wo.data, bo.data, C, X);
    for (int i = 0; i < L; i++) {
        char what[64];
        snprintf(what, sizeof what, "token %d", i);
        CHECK_CLOSE(what, out.data + i * C, mine, C, 1e-5);
    }
    dl_tensor *all[] = {&tok, &ctx, &Wq, &Wk, &Wv, &Wo, &bo, &q, &k, &v, &a, &out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) dl_tensor_free(all[i]);
}

/* ---- the program ---------------------------------------------------------- */

TEST(lesson02, headless_checks_pass_and_writes_pictures)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson02"));
    const char *names[] = {"02_shapes.png", "02_features_conv_in.png", "02_features_mid_block_attentions_0.png",
                           "02_features_up_blocks_2_resnets_1.png"};
    char cmd[1024], path[700];
    for (int i = 0; i < 4; i++) { snprintf(path, sizeof path, "%s/%s", dir, names[i]); remove(path); }
    snprintf(cmd, sizeof cmd, "%s/02_unet_blocks --headless --out %s", dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "'%s' exited with %d", cmd, rc)) dl_test_show_log();
    CHECK(dl_test_log_contains("all checks against PyTorch passed") && !dl_test_log_contains("MISMATCH"), "checks against PyTorch");
    CHECK(dl_test_log_contains("up_blocks.2.resnets.1 input [h, skip]") && dl_test_log_contains("mid_block.attentions.0"),
          "the shape table shows every block and the concatenated skips");
    CHECK(dl_test_log_contains("total: "), "the parameter count is printed");
    for (int i = 0; i < 4; i++) {
        dl_image img = {0};
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (!CHECK(dl_image_load(&img, path, 3) == DL_OK, "%s", dl_error_message())) continue;
        CHECK(img.w >= 400 && img.h >= 200 && img.w <= 4096 && img.h <= 4096, "%s is %dx%d", names[i], img.w, img.h);
        /* feature maps are drawn in colour (red / blue), the table in black and colour */
        long coloured = 0;
        for (int p = 0; p < img.w * img.h; p++) {
            const unsigned char *c = &img.px[p * 3];
            coloured += abs(c[0] - c[2]) > 60;
        }
        CHECK(coloured > 500, "%s: only %ld coloured pixels", names[i], coloured);
        dl_image_free(&img);
    }
}

TEST(lesson02, help_and_bad_arguments)
{
    char cmd[1024];
    const char *bin = dl_test_bin_dir();
    snprintf(cmd, sizeof cmd, "%s/02_unet_blocks --help", bin);
    CHECK(dl_test_run(cmd) == 0, "--help should exit 0");
    CHECK(dl_test_log_contains("--checkpoint") && dl_test_log_contains("--headless"), "--help lists the options");
    const struct { const char *args, *says; } bad[] = {
        {"--t 1000", "1000"},
        {"--digit-index -1", "-1"},
        {"--checkpoint no/such/file.safetensors", "no/such/file.safetensors"},
        {"--frobnicate", "--frobnicate"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, "%s/02_unet_blocks --headless --out %s %s", bin, dl_test_out_dir("lesson02/bad"), bad[i].args);
        int rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "'%s' should fail cleanly, exit status %d", bad[i].args, rc);
        if (!CHECK(dl_test_log_contains(bad[i].says) && dl_test_log_contains("error"), "'%s': the message should mention '%s'",
                   bad[i].args, bad[i].says))
            dl_test_show_log();
    }
}
