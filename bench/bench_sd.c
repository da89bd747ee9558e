/* bench_sd.c - Stable Diffusion 1.5 at full size on this machine, against
 * its own sgemm ceiling measured in the same run.
 *
 * No download: the weights are random numbers in the exact shapes of SD 1.5
 * (UNet 859.5 M parameters, VAE decoder, CLIP ViT-L text encoder), stored
 * as fp16 in a temporary diffusers folder (in $TMPDIR, else /dev/shm or
 * /tmp; 2.2 GB) that is deleted at exit. The
 * models load it like a real checkpoint (diffusers names, fp16 widened).
 *
 * Timed, one call each (the calls take seconds; the machine may be shared,
 * so the sgemm ceiling is measured before and after them):
 *   text encoder   [2, 77] tokens (prompt + negative prompt)
 *   UNet           batch 2 (classifier-free guidance) at 64x64 latents
 *                  (512x512 images): widening fp16 per layer (cache off),
 *                  the first call with the cache on (widens and keeps) and
 *                  a cached call; then a cached call at 32x32 (256x256)
 *   VAE decode     1 x 4 x 64x64 latents -> 512x512 image
 * GFLOP of a call = the sum over its convolutions, linears and attention
 * matmuls, counted from their shapes (sd_profile). "% of sgemm" = achieved
 * GFLOP/s over the best cblas_sgemm GFLOP/s on the model's own GEMM shapes.
 *
 *   bin/bench_sd            full size (about 2-3 minutes on 2 cores)
 *   bin/bench_sd --quick    32x32 latents, no VAE at 512 (about a minute)
 */
#include "bench_util.h"
#include "../core/clip_text.h"
#include "../core/safetensors.h"
#include "../core/sd_unet.h"
#include "../core/sd_vae.h"
#include "../core/sd_weights.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* ======================================================================== */
/* The tensors of SD 1.5 (diffusers names and shapes), from the configs     */

typedef struct {
    char    name[160];
    int     ndim;
    int64_t shape[4];
    float   center, spread;      /* values uniform in center +- spread */
} spec;

typedef struct { spec *v; int n, cap; int64_t params; } spec_list;

static void add(spec_list *L, float center, float spread, int ndim, const int64_t *shape, const char *fmt, ...)
{
    if (L->n == L->cap) {
        L->cap = L->cap ? 2 * L->cap : 256;
        L->v = realloc(L->v, (size_t)L->cap * sizeof *L->v);
        if (!L->v) dl_die_msg("", "bench_sd: out of memory");
    }
    spec *s = &L->v[L->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->ndim = ndim;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (s->shape[d] = shape[d]);
    s->center = center;
    s->spread = spread;
    L->params += n;
}

/* Weights drawn so that activations keep about unit size (variance 1/fan_in). */
static float init_spread(int64_t fan_in) { return sqrtf(3.0f / (float)fan_in); }

static void add_norm(spec_list *L, const char *p, int64_t C)
{
    add(L, 1.0f, 0.1f, 1, DL_SHAPE(C), "%s.weight", p);
    add(L, 0.0f, 0.1f, 1, DL_SHAPE(C), "%s.bias", p);
}
static void add_linear(spec_list *L, const char *p, int64_t out, int64_t in, int bias)
{
    add(L, 0.0f, init_spread(in), 2, DL_SHAPE(out, in), "%s.weight", p);
    if (bias) add(L, 0.0f, 0.02f, 1, DL_SHAPE(out), "%s.bias", p);
}
static void add_conv(spec_list *L, const char *p, int64_t out, int64_t in, int k)
{
    add(L, 0.0f, init_spread(in * k * k), 4, DL_SHAPE(out, in, k, k), "%s.weight", p);
    add(L, 0.0f, 0.02f, 1, DL_SHAPE(out), "%s.bias", p);
}

/* ResnetBlock2D; T = 0: no time embedding (the VAE). */
static void add_resnet(spec_list *L, const char *p, int64_t Ci, int64_t Co, int64_t T)
{
    char q[200];
#define Q(s) (snprintf(q, sizeof q, "%s.%s", p, s), q)
    add_norm(L, Q("norm1"), Ci);
    add_conv(L, Q("conv1"), Co, Ci, 3);
    if (T) add_linear(L, Q("time_emb_proj"), Co, T, 1);
    add_norm(L, Q("norm2"), Co);
    add_conv(L, Q("conv2"), Co, Co, 3);
    if (Ci != Co) add_conv(L, Q("conv_shortcut"), Co, Ci, 1);
#undef Q
}

/* Transformer2DModel of SD 1.x: 1x1-conv projections, one BasicTransformerBlock. */
static void add_transformer(spec_list *L, const char *p, int64_t C, int64_t Dc)
{
    char q[200];
#define Q(s) (snprintf(q, sizeof q, "%s.%s", p, s), q)
    add_norm(L, Q("norm"), C);
    add_conv(L, Q("proj_in"), C, C, 1);
    add_norm(L, Q("transformer_blocks.0.norm1"), C);
    add_norm(L, Q("transformer_blocks.0.norm2"), C);
    add_norm(L, Q("transformer_blocks.0.norm3"), C);
    add_linear(L, Q("transformer_blocks.0.attn1.to_q"), C, C, 0);
    add_linear(L, Q("transformer_blocks.0.attn1.to_k"), C, C, 0);
    add_linear(L, Q("transformer_blocks.0.attn1.to_v"), C, C, 0);
    add_linear(L, Q("transformer_blocks.0.attn1.to_out.0"), C, C, 1);
    add_linear(L, Q("transformer_blocks.0.attn2.to_q"), C, C, 0);
    add_linear(L, Q("transformer_blocks.0.attn2.to_k"), C, Dc, 0);
    add_linear(L, Q("transformer_blocks.0.attn2.to_v"), C, Dc, 0);
    add_linear(L, Q("transformer_blocks.0.attn2.to_out.0"), C, C, 1);
    add_linear(L, Q("transformer_blocks.0.ff.net.0.proj"), 8 * C, C, 1);
    add_linear(L, Q("transformer_blocks.0.ff.net.2"), C, 4 * C, 1);
    add_conv(L, Q("proj_out"), C, C, 1);
#undef Q
}

/* UNet2DConditionModel for a config (down path, mid block, up path with skips). */
static void unet_specs(spec_list *L, const sd_unet_config *c)
{
    const int64_t C0 = c->block_out_channels[0], T = c->time_embed_dim, Dc = c->cross_attention_dim;
    int64_t skips[SD_UNET_MAX_SKIPS], C = C0;
    int ns = 0;
    char p[160];
    add_linear(L, "time_embedding.linear_1", T, C0, 1);
    add_linear(L, "time_embedding.linear_2", T, T, 1);
    add_conv(L, "conv_in", C0, c->in_channels, c->conv_in_kernel);
    skips[ns++] = C;
    for (int i = 0; i < c->levels; i++) {
        const int64_t Co = c->block_out_channels[i];
        for (int j = 0; j < c->layers_per_block; j++) {
            snprintf(p, sizeof p, "down_blocks.%d.resnets.%d", i, j);
            add_resnet(L, p, C, Co, T);
            C = Co;
            snprintf(p, sizeof p, "down_blocks.%d.attentions.%d", i, j);
            if (c->down_attn[i]) add_transformer(L, p, C, Dc);
            skips[ns++] = C;
        }
        if (i < c->levels - 1) {
            snprintf(p, sizeof p, "down_blocks.%d.downsamplers.0.conv", i);
            add_conv(L, p, C, C, 3);
            skips[ns++] = C;
        }
    }
    add_resnet(L, "mid_block.resnets.0", C, C, T);
    add_transformer(L, "mid_block.attentions.0", C, Dc);
    add_resnet(L, "mid_block.resnets.1", C, C, T);
    for (int i = 0; i < c->levels; i++) {
        const int64_t Co = c->block_out_channels[c->levels - 1 - i];
        for (int j = 0; j <= c->layers_per_block; j++) {
            snprintf(p, sizeof p, "up_blocks.%d.resnets.%d", i, j);
            add_resnet(L, p, C + skips[--ns], Co, T);
            C = Co;
            snprintf(p, sizeof p, "up_blocks.%d.attentions.%d", i, j);
            if (c->up_attn[i]) add_transformer(L, p, C, Dc);
        }
        if (i < c->levels - 1) {
            snprintf(p, sizeof p, "up_blocks.%d.upsamplers.0.conv", i);
            add_conv(L, p, C, C, 3);
        }
    }
    add_norm(L, "conv_norm_out", C0);
    add_conv(L, "conv_out", c->out_channels, C0, c->conv_out_kernel);
}

/* AutoencoderKL: what decoding needs (post_quant_conv + decoder). */
static void vae_decoder_specs(spec_list *L, const sd_vae_config *c)
{
    const int top = c->levels - 1;
    int64_t C = c->block_out_channels[top];
    char p[160];
    add_conv(L, "post_quant_conv", c->latent_channels, c->latent_channels, 1);
    add_conv(L, "decoder.conv_in", C, c->latent_channels, 3);
    add_resnet(L, "decoder.mid_block.resnets.0", C, C, 0);
    add_norm(L, "decoder.mid_block.attentions.0.group_norm", C);
    add_linear(L, "decoder.mid_block.attentions.0.to_q", C, C, 1);
    add_linear(L, "decoder.mid_block.attentions.0.to_k", C, C, 1);
    add_linear(L, "decoder.mid_block.attentions.0.to_v", C, C, 1);
    add_linear(L, "decoder.mid_block.attentions.0.to_out.0", C, C, 1);
    add_resnet(L, "decoder.mid_block.resnets.1", C, C, 0);
    for (int i = 0; i < c->levels; i++) {
        const int64_t Co = c->block_out_channels[top - i];
        for (int j = 0; j <= c->layers_per_block; j++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, j);
            add_resnet(L, p, C, Co, 0);
            C = Co;
        }
        if (i < top) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            add_conv(L, p, C, C, 3);
        }
    }
    add_norm(L, "decoder.conv_norm_out", C);
    add_conv(L, "decoder.conv_out", c->out_channels, C, 3);
}

/* CLIPTextModel (transformers names). */
static void text_specs(spec_list *L, const clip_text_config *c)
{
    const int64_t H = c->hidden_size, I = c->intermediate_size;
    char p[160];
    add(L, 0.0f, 0.02f, 2, DL_SHAPE(c->vocab_size, H), "text_model.embeddings.token_embedding.weight");
    add(L, 0.0f, 0.02f, 2, DL_SHAPE(c->max_position_embeddings, H), "text_model.embeddings.position_embedding.weight");
    for (int l = 0; l < c->num_hidden_layers; l++) {
        static const char *const proj[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
        snprintf(p, sizeof p, "text_model.encoder.layers.%d.layer_norm1", l);
        add_norm(L, p, H);
        for (int k = 0; k < 4; k++) {
            snprintf(p, sizeof p, "text_model.encoder.layers.%d.self_attn.%s", l, proj[k]);
            add_linear(L, p, H, H, 1);
        }
        snprintf(p, sizeof p, "text_model.encoder.layers.%d.layer_norm2", l);
        add_norm(L, p, H);
        snprintf(p, sizeof p, "text_model.encoder.layers.%d.mlp.fc1", l);
        add_linear(L, p, I, H, 1);
        snprintf(p, sizeof p, "text_model.encoder.layers.%d.mlp.fc2", l);
        add_linear(L, p, H, I, 1);
    }
    add_norm(L, "text_model.final_layer_norm", H);
}

/* ======================================================================== */
/* Writing them as fp16 safetensors (streamed: never the whole file in memory) */

static uint64_t mix(uint64_t x)   /* splitmix64's finaliser: a counter-based generator */
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void write_fp16_file(const char *path, const spec_list *L, uint64_t seed)
{
    /* header: {"name":{"dtype":"F16","shape":[...],"data_offsets":[a,b]},...} padded to 8 bytes */
    size_t cap = (size_t)L->n * 256 + 64, len = 0, offset = 0;
    char *h = malloc(cap);
    if (!h) dl_die_msg("", "bench_sd: out of memory");
    len += (size_t)snprintf(h + len, cap - len, "{");
    for (int i = 0; i < L->n; i++) {
        const spec *s = &L->v[i];
        int64_t n = 1;
        len += (size_t)snprintf(h + len, cap - len, "%s\"%s\":{\"dtype\":\"F16\",\"shape\":[", i ? "," : "", s->name);
        for (int d = 0; d < s->ndim; d++) {
            len += (size_t)snprintf(h + len, cap - len, "%s%lld", d ? "," : "", (long long)s->shape[d]);
            n *= s->shape[d];
        }
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%zu,%zu]}", offset, offset + 2 * (size_t)n);
        offset += 2 * (size_t)n;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';
    FILE *fp = fopen(path, "wb");
    if (!fp) dl_die_msg("set TMPDIR to a writable folder with 2 GB free", "bench_sd: cannot create %s", path);
    uint64_t hlen = len;
    int ok = fwrite(&hlen, 8, 1, fp) == 1 && fwrite(h, 1, len, fp) == len;
    free(h);
    /* Values: a table of 2^20 uniform numbers in [-1, 1), read from a random
     * start for every tensor, scaled and rounded to fp16 (a billion values
     * in a few seconds; the timings do not depend on the values). */
    enum { TABLE = 1 << 20 };
    const int64_t CH = (int64_t)1 << 22;
    uint16_t *buf = malloc((size_t)CH * sizeof *buf);
    float *table = malloc(TABLE * sizeof *table);
    if (!buf || !table) dl_die_msg("", "bench_sd: out of memory");
    for (int j = 0; j < TABLE; j++) table[j] = (float)(mix(seed + (uint64_t)j) >> 40) * 0x1p-23f - 1.0f;
    for (int i = 0; ok && i < L->n; i++) {
        const spec *s = &L->v[i];
        const uint64_t start = mix(seed ^ ((uint64_t)i << 32));
        int64_t n = 1;
        for (int d = 0; d < s->ndim; d++) n *= s->shape[d];
        for (int64_t j0 = 0; ok && j0 < n; j0 += CH) {
            const int64_t m = n - j0 < CH ? n - j0 : CH;
            #pragma omp parallel for schedule(static)
            for (int64_t j = 0; j < m; j++)
                buf[j] = dl_f32_to_f16(s->center + s->spread * table[(start + (uint64_t)(j0 + j)) & (TABLE - 1)]);
            ok = fwrite(buf, sizeof *buf, (size_t)m, fp) == (size_t)m;
        }
    }
    free(buf);
    free(table);
    if (fclose(fp) != 0) ok = 0;
    if (!ok) dl_die_msg("set TMPDIR to a folder with 2 GB free", "bench_sd: writing %s failed", path);
}

/* The temporary model folder, removed at exit (also after dl_die). */
static char g_dir[512];
static const char *const g_files[] = {
    "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
    "text_encoder/config.json", "text_encoder/model.fp16.safetensors"};

static void remove_model_dir(void)
{
    if (!g_dir[0]) return;
    if (getenv("BENCH_SD_KEEP")) {   /* e.g. to run bin/07_txt2img on the random model */
        printf("kept the random model in %s (BENCH_SD_KEEP is set)\n", g_dir);
        return;
    }
    char p[700];
    for (size_t i = 0; i < sizeof g_files / sizeof g_files[0]; i++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, g_files[i]);
        unlink(p);
    }
    static const char *const sub[] = {"unet", "vae", "text_encoder"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, sub[i]);
        rmdir(p);
    }
    rmdir(g_dir);
    g_dir[0] = 0;
}

static void write_text(const char *rel, const char *text)
{
    char p[700];
    snprintf(p, sizeof p, "%s/%s", g_dir, rel);
    FILE *fp = fopen(p, "w");
    if (!fp || fputs(text, fp) < 0 || fclose(fp) != 0) dl_die_msg("", "bench_sd: cannot write %s", p);
}

/* Make the folder; returns the three parameter counts. */
static void make_model(int64_t params[3])
{
    /* TMPDIR if set, else /dev/shm (memory: writing 2 GB to a disk takes
     * longer than the whole benchmark) if it has room, else /tmp */
    const char *tmp = getenv("TMPDIR");
    struct statvfs vs;
    if (!tmp || !tmp[0])
        tmp = statvfs("/dev/shm", &vs) == 0 && (double)vs.f_bavail * vs.f_frsize > 4e9 ? "/dev/shm" : "/tmp";
    snprintf(g_dir, sizeof g_dir, "%s/difflab_bench_sd_XXXXXX", tmp);
    if (!mkdtemp(g_dir)) {
        g_dir[0] = 0;
        dl_die_msg("set TMPDIR to a writable folder", "bench_sd: cannot create a temporary folder");
    }
    atexit(remove_model_dir);
    static const char *const sub[] = {"unet", "vae", "text_encoder"};
    for (int i = 0; i < 3; i++) {
        char p[700];
        snprintf(p, sizeof p, "%s/%s", g_dir, sub[i]);
        if (mkdir(p, 0700) != 0) dl_die_msg("", "bench_sd: cannot create %s", p);
    }
    /* "{}": every config key keeps SD 1.5's value */
    write_text("model_index.json", "{}\n");
    write_text("unet/config.json", "{}\n");
    write_text("vae/config.json", "{}\n");
    write_text("text_encoder/config.json", "{}\n");

    sd_unet_config uc;
    sd_vae_config vc;
    clip_text_config tc;
    sd_unet_config_sd15(&uc);
    sd_vae_config_sd15(&vc);
    clip_text_config_sd15(&tc);
    spec_list L[3] = {{0}};
    unet_specs(&L[0], &uc);
    vae_decoder_specs(&L[1], &vc);
    text_specs(&L[2], &tc);
    char p[700];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, g_files[2 + 2 * i]);
        write_fp16_file(p, &L[i], 1234 + (uint64_t)i);
        params[i] = L[i].params;
        free(L[i].v);
    }
}

/* ======================================================================== */
/* Measuring                                                                 */

static double peak_rss_gb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss / 1048576.0;   /* KiB -> GiB */
}

static void load_average(char *buf, size_t size)
{
    double la[3] = {0, 0, 0};
    if (getloadavg(la, 3) < 3) snprintf(buf, size, "?");
    else snprintf(buf, size, "%.2f %.2f %.2f", la[0], la[1], la[2]);
}

/* The GEMM shapes the model runs most, per image: conv im2col products at
 * the four levels ([Cout, K=9 Cin] x [K, pixels]), the feed-forward
 * projection (rows = 2 x 4096 tokens) and one attention score block. */
typedef struct { const char *what; int M, N, K; double best; } gemm_shape;
static gemm_shape g_shapes[] = {
    {"conv 320ch 64x64", 320, 4096, 2880, 0},       {"conv 640ch 32x32", 640, 1024, 5760, 0},
    {"ff 8192 rows 320->2560", 8192, 2560, 320, 0}, {"conv 1280ch 16x16", 1280, 256, 11520, 0},
    {"ff 8192 rows 1280->320", 8192, 320, 1280, 0}, {"attn scores 256x4096x40", 256, 4096, 40, 0},
};
#define N_SHAPES ((int)(sizeof g_shapes / sizeof g_shapes[0]))

/* The best cblas_sgemm GFLOP/s right now over the first n shapes (each
 * shape also keeps its best of the whole run). */
static double sgemm_now(int n)
{
    double best = 0;
    for (int i = 0; i < n; i++) {
        double gf = bench_sgemm_gflops(g_shapes[i].M, g_shapes[i].N, g_shapes[i].K);
        if (gf > g_shapes[i].best) g_shapes[i].best = gf;
        if (gf > best) best = gf;
    }
    return best;
}

/* The ceiling a timed call is judged against: sgemm measured right before
 * and right after it (the better of the two), on the three shapes that
 * carry most of the FLOPs. On a shared machine both see the same load. */
typedef struct { double before; } ceiling_probe;
static ceiling_probe probe_start(void) { return (ceiling_probe){sgemm_now(3)}; }
static double probe_end(ceiling_probe p)
{
    double after = sgemm_now(3);
    return after > p.before ? after : p.before;
}

typedef struct {
    sd_unet *u;
    dl_tensor out, x, ctx;
    float t[2];
} unet_run;

/* One timed UNet call; *ceiling = sgemm around it. */
static double unet_call(unet_run *r, sd_profile *prof, double *ceiling)
{
    memset(prof, 0, sizeof *prof);
    ceiling_probe cp = probe_start();
    sd_set_profile(prof);
    double t0 = bench_now();
    if (sd_unet_forward(r->u, &r->out, &r->x, r->t, &r->ctx, NULL) != DL_OK) dl_die("bench_sd: UNet forward");
    double t = bench_now() - t0;
    sd_set_profile(NULL);
    *ceiling = probe_end(cp);
    return t;
}

static double flops_of(const sd_profile *p)
{
    return p->flops[SD_OP_CONV] + p->flops[SD_OP_LINEAR] + p->flops[SD_OP_ATTENTION];
}

static void print_row(const char *what, double t, double gflop, double ceiling, const char *extra)
{
    printf("  %-38s %8.2f s  %7.1f GFLOP/s  %4.0f%% of sgemm %.0f%s\n", what, t, gflop / t,
           100.0 * gflop / t / ceiling, ceiling, extra ? extra : "");
}

static void print_shares(const sd_profile *p, double total, double ceiling)
{
    double known = 0;
    printf("  time shares (cached call):\n");
    for (int k = 0; k < SD_OP_KINDS; k++) {
        known += p->seconds[k];
        printf("    %-10s %6.2f s %5.1f%%", sd_op_names[k], p->seconds[k], 100.0 * p->seconds[k] / total);
        if (p->flops[k] > 0)
            printf("  %7.1f GFLOP  %6.1f GFLOP/s  %4.0f%% of sgemm", p->flops[k] * 1e-9,
                   p->flops[k] * 1e-9 / p->seconds[k], 100.0 * p->flops[k] * 1e-9 / p->seconds[k] / ceiling);
        printf("\n");
    }
    printf("    %-10s %6.2f s %5.1f%%  (copies, adds, SiLU, concat, upsample, time embedding)\n", "other",
           total - known, 100.0 * (total - known) / total);
}

/* One UNet size: cache off (widen per layer), on-cold and on-cached if `all`,
 * else only a cached call. Returns the cached call's seconds. */
static double bench_unet(sd_weights *w, sd_unet *u, int hw, int all, double *gflop_out, double *ceiling_out)
{
    double ceiling;
    unet_run r = {.u = u, .t = {999.0f, 999.0f}};
    if (dl_tensor_alloc(&r.x, 4, DL_SHAPE(2, 4, hw, hw)) || dl_tensor_alloc(&r.out, 4, DL_SHAPE(2, 4, hw, hw)) ||
        dl_tensor_alloc(&r.ctx, 3, DL_SHAPE(2, 77, u->cfg.cross_attention_dim)))
        dl_die("bench_sd: out of memory for the UNet inputs");
    for (int64_t i = 0; i < r.x.numel; i++) r.x.data[i] = (float)((i * 7919) % 2003 - 1001) / 1001.0f;
    for (int64_t i = 0; i < r.ctx.numel; i++) r.ctx.data[i] = (float)((i * 104729) % 1009 - 504) / 504.0f;
    sd_profile prof;
    char head[160], extra[160];
    printf("UNet, batch 2 (CFG), %dx%d latents (%dx%d images):\n", hw, hw, 8 * hw, 8 * hw);
    if (all) {
        sd_weights_set_cache(w, SD_PART_UNET, SD_CACHE_OFF);
        double t = unet_call(&r, &prof, &ceiling);
        snprintf(extra, sizeof extra, "  (widening %.2f s; peak RSS so far %.2f GB)", prof.seconds[SD_OP_WEIGHTS],
                 peak_rss_gb());
        print_row("cache off (fp16 widened every layer)", t, flops_of(&prof) * 1e-9, ceiling, extra);
        sd_weights_set_cache(w, SD_PART_UNET, SD_CACHE_ON);
        t = unet_call(&r, &prof, &ceiling);
        snprintf(extra, sizeof extra, "  (widening %.2f s, keeps %.2f GB)", prof.seconds[SD_OP_WEIGHTS],
                 sd_weights_cache_bytes(w) / 1073741824.0);
        print_row("cache on, first call (widen + keep)", t, flops_of(&prof) * 1e-9, ceiling, extra);
    }
    sd_weights_set_cache(w, SD_PART_UNET, SD_CACHE_ON);
    double t = unet_call(&r, &prof, &ceiling);
    const double gflop = flops_of(&prof) * 1e-9;
    snprintf(head, sizeof head, "cached call (%.1f GFLOP)", gflop);
    print_row(head, t, gflop, ceiling, NULL);
    printf("    per image %.1f GFLOP: conv %.1f, linear %.1f, attention matmuls %.1f\n", gflop / 2,
           prof.flops[SD_OP_CONV] * 0.5e-9, prof.flops[SD_OP_LINEAR] * 0.5e-9, prof.flops[SD_OP_ATTENTION] * 0.5e-9);
    print_shares(&prof, t, ceiling);
    dl_tensor_free(&r.x); dl_tensor_free(&r.out); dl_tensor_free(&r.ctx);
    *gflop_out = gflop;
    *ceiling_out = ceiling;
    return t;
}

int main(int argc, char **argv)
{
    bench_init(argc, argv, "bench_sd",
               "Stable Diffusion 1.5 at full size with random fp16 weights (written to a temporary folder):\n"
               "text encoder, UNet step with CFG at 512x512 (cache off / first / cached) and 256x256, VAE decode,\n"
               "GFLOP/s against cblas_sgemm on the model's GEMM shapes in the same run, and peak RSS.");
    setvbuf(stdout, NULL, _IOLBF, 0);   /* progress shows up line by line, also in a log file */
    const int quick = bench_quick();
    char la[64];
    load_average(la, sizeof la);
    printf("load average at start: %s%s\n", la, quick ? "   (--quick: 32x32 latents only, VAE decode at 256x256)" : "");

    sgemm_now(N_SHAPES);

    double t0 = bench_now();
    int64_t params[3];
    make_model(params);
    printf("random SD 1.5 weights (fp16) written in %.1f s: unet %.1f M params (SD 1.5: 859.5 M), "
           "vae decoder %.1f M, text encoder %.1f M\n",
           bench_now() - t0, params[0] * 1e-6, params[1] * 1e-6, params[2] * 1e-6);

    sd_weights w;
    if (sd_weights_open(&w, g_dir) != DL_OK) dl_die("bench_sd: open the model");

    /* text encoder: [negative, positive] prompts of 77 tokens */
    {
        clip_text_model te;
        t0 = bench_now();
        if (clip_text_load(&te, &w) != DL_OK) dl_die("bench_sd: text encoder");
        double tl = bench_now() - t0;
        int ids[2 * 77];
        for (int i = 0; i < 2 * 77; i++) ids[i] = i % 77 == 0 ? 49406 : i % 77 < 9 ? 320 + i % 77 : 49407;
        dl_tensor ctx;
        if (dl_tensor_alloc(&ctx, 3, DL_SHAPE(2, 77, te.config.hidden_size))) dl_die("bench_sd: out of memory");
        double best = 1e30;
        for (int k = 0; k < 3; k++) {
            t0 = bench_now();
            if (clip_text_forward(&te, ids, 2, 77, &ctx, NULL, NULL) != DL_OK) dl_die("bench_sd: text encoder forward");
            double t = bench_now() - t0;
            if (t < best) best = t;
        }
        printf("text encoder, 2 x 77 tokens: %.3f s per call (best of 3), load + widen %.2f s\n", best, tl);
        dl_tensor_free(&ctx);
        clip_text_free(&te);
    }

    sd_unet u;
    if (sd_unet_init(&u, &w) != DL_OK) dl_die("bench_sd: UNet init");
    double gflop512 = 0, gflop256 = 0, t512 = 0, t256, c512 = 1, c256 = 1, ceiling;
    if (!quick) t512 = bench_unet(&w, &u, 64, 1, &gflop512, &c512);
    t256 = bench_unet(&w, &u, 32, quick, &gflop256, &c256);
    sd_unet_free(&u);
    sd_weights_set_cache(&w, SD_PART_UNET, SD_CACHE_OFF);

    /* VAE decode of one image */
    {
        const int hw = quick ? 32 : 64;
        sd_vae v;
        if (sd_vae_init(&v, &w) != DL_OK) dl_die("bench_sd: VAE init");
        dl_tensor z, img;
        if (dl_tensor_alloc(&z, 4, DL_SHAPE(1, 4, hw, hw)) || dl_tensor_alloc(&img, 4, DL_SHAPE(1, 3, 8 * hw, 8 * hw)))
            dl_die("bench_sd: out of memory for the VAE");
        for (int64_t i = 0; i < z.numel; i++) z.data[i] = (float)((i * 7919) % 2003 - 1001) / 250.0f;
        sd_profile prof;
        memset(&prof, 0, sizeof prof);
        ceiling_probe cp = probe_start();
        sd_set_profile(&prof);
        t0 = bench_now();
        if (sd_vae_decode(&v, &img, &z) != DL_OK) dl_die("bench_sd: VAE decode");
        double t = bench_now() - t0;
        sd_set_profile(NULL);
        ceiling = probe_end(cp);
        double tstep = quick ? t256 : t512;
        char extra[96];
        snprintf(extra, sizeof extra, "  = %.2f UNet steps at this size", t / tstep);
        char what[64];
        snprintf(what, sizeof what, "VAE decode %dx%d -> %dx%d (%.0f GFLOP)", hw, hw, 8 * hw, 8 * hw, flops_of(&prof) * 1e-9);
        print_row(what, t, flops_of(&prof) * 1e-9, ceiling, extra);
        printf("    conv %.2f s (%.0f%% of sgemm), norm %.2f s, attention %.2f s, weights %.2f s\n",
               prof.seconds[SD_OP_CONV], 100.0 * prof.flops[SD_OP_CONV] * 1e-9 / prof.seconds[SD_OP_CONV] / ceiling,
               prof.seconds[SD_OP_NORM], prof.seconds[SD_OP_ATTENTION], prof.seconds[SD_OP_WEIGHTS]);
        dl_tensor_free(&z); dl_tensor_free(&img);
        sd_vae_free(&v);
    }
    sd_weights_close(&w);

    sgemm_now(N_SHAPES);
    printf("cblas_sgemm on the model's GEMM shapes, best GFLOP/s over the run (the rows above are judged against\n"
           "the best of the first three measured right before and after each call):\n");
    for (int i = 0; i < N_SHAPES; i++)
        printf("  %-26s [%5d x %5d x %5d] %7.1f\n", g_shapes[i].what, g_shapes[i].M, g_shapes[i].N, g_shapes[i].K,
               g_shapes[i].best);
    if (!quick)
        printf("summary: UNet step (CFG) 512x512 %.2f s = %.0f%% of sgemm, 256x256 %.2f s = %.0f%%\n", t512,
               100.0 * gflop512 / t512 / c512, t256, 100.0 * gflop256 / t256 / c256);
    else
        printf("summary: UNet step (CFG) 256x256 %.2f s = %.0f%% of sgemm\n", t256, 100.0 * gflop256 / t256 / c256);
    load_average(la, sizeof la);
    printf("peak RSS %.2f GB (with the UNet cache on); load average at end: %s\n", peak_rss_gb(), la);
    return 0;
}
