/* sd_weights.c - see sd_weights.h
 *
 * Two layouts, one question: "give me tensor NAME of PART with SHAPE".
 *
 *   diffusers folder: one safetensors file per part, the names are already
 *                     the diffusers names -> look them up directly.
 *   single file:      one safetensors file with the original CompVis/LDM
 *                     names -> translate the diffusers name first
 *                     (unet_to_ldm, vae_to_ldm, text_to_ldm below).
 *
 * The translation is the inverse of the module layout of the original
 * latent-diffusion code. The UNet there is a flat list of blocks:
 *
 *   input_blocks.0            conv_in
 *   input_blocks.1 .. n       level 0: n x [ResBlock (, SpatialTransformer)]
 *   input_blocks.n+1          level 0's downsampler (".0.op")
 *   input_blocks.n+2 ...      level 1, and so on: n+1 entries per level
 *   middle_block.0/1/2        ResBlock, SpatialTransformer, ResBlock
 *   output_blocks.0 .. n      deepest level first: (n+1) x [ResBlock (, ST)]
 *                             and its upsampler in the last entry, slot 1
 *                             (no attention) or slot 2 (after the ST)
 *
 * where n = layers_per_block (2 in SD 1.5). n is read off the file (the
 * first downsampler sits at input_blocks.n+1), so SD 1.5's 4 levels and a
 * tiny 2-level model translate with the same code.
 */
#include "sd_weights.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"

const char *const sd_part_names[SD_PART_COUNT] = {"text_encoder", "unet", "vae"};

/* The weight files of a diffusers folder, in order of preference. */
static const char *const part_files[SD_PART_COUNT][2] = {
    {"model.safetensors", "model.fp16.safetensors"},
    {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"},
    {"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors"},
};

/* LDM key prefixes of the three parts in a single file. */
#define LDM_UNET "model.diffusion_model."
#define LDM_VAE  "first_stage_model."
#define LDM_TEXT "cond_stage_model.transformer."
#define LDM_OPEN_CLIP "cond_stage_model.model."   /* SD 2.x: OpenCLIP ViT-H text tower */

struct sd_weights_impl {
    dl_safetensors files[SD_PART_COUNT];   /* folder: one per part; single file: files[0] only */
    char *config[SD_PART_COUNT];           /* config.json text, or NULL                        */
    int unet_layers;                       /* single file: layers_per_block of the UNet        */
    int vae_levels;                        /* single file: number of VAE levels                */
    int text_has_text_model;               /* single file: "...transformer.text_model.*" keys  */
    int open_clip;                         /* single file: SD 2.x's OpenCLIP text encoder       */
    sd_weights_patch_fn patch;             /* sd_weights_set_patch (LoRA), or NULL              */
    void *patch_ctx;
    /* the float32 cache (sd_weights_set_cache); zeroed = OFF */
    sd_cache_mode cache_mode[SD_PART_COUNT];
    int    cache_decided[SD_PART_COUNT];   /* AUTO resolved into cache_on                      */
    int    cache_on[SD_PART_COUNT];
    float **widened[SD_PART_COUNT];        /* per file: the copy of each entry, or NULL        */
    float  *slab[SD_PART_COUNT];           /* per part: one mapping holding all its copies     */
    size_t  slab_floats[SD_PART_COUNT], slab_used[SD_PART_COUNT];
    size_t cache_bytes;
};

/* ------------------------------------------------------------------ */
/* Small file helpers                                                  */

static int is_dir(const char *p)  { struct stat s; return stat(p, &s) == 0 && S_ISDIR(s.st_mode); }
static int is_file(const char *p) { struct stat s; return stat(p, &s) == 0 && S_ISREG(s.st_mode); }

/* The whole file as a NUL-terminated string (malloc'd), or NULL. */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && n < (16L << 20) && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1))) {
        if (fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
        else buf[n] = 0;
    }
    fclose(f);
    return buf;
}

/* Keep the current error message while adding context in front of it. */
static dl_status fail_with_context(dl_status st, const char *context)
{
    char msg[768];
    snprintf(msg, sizeof msg, "%s", dl_error_message());
    return dl_fail(st, "%s: %s", context, msg);
}

/* ------------------------------------------------------------------ */
/* Opening                                                             */

static dl_status open_folder(sd_weights *w)
{
    sd_weights_impl *m = w->impl;
    char path[1200];
    for (int p = 0; p < SD_PART_COUNT; p++) {
        const char *chosen = NULL;
        for (int k = 0; k < 2 && !chosen; k++) {
            snprintf(path, sizeof path, "%s/%s/%s", w->path, sd_part_names[p], part_files[p][k]);
            if (is_file(path)) chosen = path;
        }
        if (!chosen) {
            snprintf(path, sizeof path, "%s/%s/%s", w->path, sd_part_names[p], part_files[p][0]);
            return dl_fail(DL_ERR_IO, "sd_weights: missing file %s (nor the %s variant): an incomplete "
                           "diffusers folder", path, part_files[p][1]);
        }
        dl_status st = dl_st_open(&m->files[p], chosen);
        if (st != DL_OK) return st;   /* dl_st_open names the file */

        snprintf(path, sizeof path, "%s/%s/config.json", w->path, sd_part_names[p]);
        m->config[p] = read_text(path);
        if (!m->config[p]) return dl_fail(DL_ERR_IO, "sd_weights: missing file %s", path);
    }
    return DL_OK;
}

/* Does the single file have tensor LDM name `fmt`...? */
static int ldm_has(const sd_weights_impl *m, const char *fmt, int a, int b)
{
    char name[256];
    snprintf(name, sizeof name, fmt, a, b);
    return dl_st_find(&m->files[0], name) != NULL;
}

static dl_status open_single_file(sd_weights *w)
{
    sd_weights_impl *m = w->impl;
    DL_TRY(dl_st_open(&m->files[0], w->path));
    const dl_safetensors *f = &m->files[0];

    int has_unet = 0;
    for (int i = 0; i < f->count && !has_unet; i++)
        has_unet = strncmp(f->entries[i].name, LDM_UNET, strlen(LDM_UNET)) == 0;
    if (!has_unet)
        return dl_fail(DL_ERR_FORMAT, "sd_weights: %s has no " LDM_UNET "* tensors: not a Stable Diffusion "
                       "checkpoint in the original CompVis/LDM naming", w->path);

    /* layers_per_block: the first downsampler is input_blocks.{n+1}.0.op */
    m->unet_layers = 2;   /* SD 1.5, and the answer for a model without downsamplers */
    for (int k = 2; k < 64; k++)
        if (ldm_has(m, LDM_UNET "input_blocks.%d.0.op.weight", k, 0)) { m->unet_layers = k - 1; break; }

    /* VAE levels: decoder.up.0 .. up.{L-1} */
    m->vae_levels = 0;
    while (m->vae_levels < 64 && ldm_has(m, LDM_VAE "decoder.up.%d.block.0.conv1.weight", m->vae_levels, 0))
        m->vae_levels++;
    if (m->vae_levels == 0) m->vae_levels = 4;   /* no VAE in the file: gets will name what is missing */

    m->text_has_text_model =
        dl_st_find(f, LDM_TEXT "text_model.embeddings.token_embedding.weight") != NULL ||
        dl_st_find(f, LDM_TEXT "embeddings.token_embedding.weight") == NULL;
    m->open_clip = dl_st_find(f, LDM_OPEN_CLIP "token_embedding.weight") != NULL;
    return DL_OK;
}

dl_status sd_weights_open(sd_weights *w, const char *path)
{
    memset(w, 0, sizeof *w);
    if (!path) return dl_fail(DL_ERR_ARG, "sd_weights: NULL path");
    if (strlen(path) >= sizeof w->path) return dl_fail(DL_ERR_ARG, "sd_weights: path too long: %s", path);
    snprintf(w->path, sizeof w->path, "%s", path);
    w->impl = calloc(1, sizeof *w->impl);
    if (!w->impl) return dl_fail(DL_ERR_MEMORY, "sd_weights: out of memory");

    dl_status st;
    if (is_dir(path)) {
        char probe[1200], probe2[1200];
        snprintf(probe, sizeof probe, "%s/model_index.json", path);
        snprintf(probe2, sizeof probe2, "%s/unet", path);
        if (!is_file(probe) && !is_dir(probe2)) {
            st = dl_fail(DL_ERR_IO, "sd_weights: %s is a folder without model_index.json or unet/: "
                         "not a diffusers model folder", path);
        } else {
            w->layout = SD_LAYOUT_DIFFUSERS;
            st = open_folder(w);
        }
    } else if (is_file(path)) {
        w->layout = SD_LAYOUT_SINGLE_FILE;
        st = open_single_file(w);
    } else {
        st = dl_fail(DL_ERR_IO, "sd_weights: missing file or folder %s", path);
    }
    if (st != DL_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", dl_error_message());
        sd_weights_close(w);
        return dl_fail(st, "%s", msg);   /* close must not lose the message */
    }
    return DL_OK;
}

static void cache_drop(sd_weights *w, int file, int part);

void sd_weights_close(sd_weights *w)
{
    if (!w) return;
    if (w->impl) {
        for (int p = 0; p < SD_PART_COUNT; p++) {
            cache_drop(w, p, -1);
            dl_st_close(&w->impl->files[p]);
            free(w->impl->config[p]);
        }
        free(w->impl);
    }
    w->impl = NULL;
}

/* ------------------------------------------------------------------ */
/* diffusers name -> LDM name (single files)                           */

/* If s starts with prefix, return the rest, else NULL. */
static const char *after(const char *s, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(s, prefix, n) == 0 ? s + n : NULL;
}

/* Parse "<a>.<rest>" (a a decimal number) -> rest, or NULL. */
static const char *take_index(const char *s, int *a)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '.' || v < 0 || v > 999) return NULL;
    *a = (int)v;
    return end + 1;
}

/* "down_blocks.3.resnets.1.conv1.weight" with head "down_blocks." and mid
 * ".resnets." -> i = 3, j = 1, returns "conv1.weight". */
static const char *take_two(const char *s, const char *head, const char *mid, int *i, int *j)
{
    const char *r = after(s, head);
    if (!r || !(r = take_index(r, i)) || !(r = after(r, mid + 1)) || !(r = take_index(r, j))) return NULL;
    return r;
}

/* Renames inside a resnet: the names of LDM's ResBlock (in_layers = [norm,
 * SiLU, conv], out_layers = [norm, SiLU, dropout, conv], emb_layers =
 * [SiLU, linear]). */
static const char *unet_resnet_part(const char *rest, const char **tail)
{
    static const char *const map[][2] = {
        {"norm1.", "in_layers.0."},  {"conv1.", "in_layers.2."},
        {"norm2.", "out_layers.0."}, {"conv2.", "out_layers.3."},
        {"time_emb_proj.", "emb_layers.1."}, {"conv_shortcut.", "skip_connection."},
    };
    for (size_t k = 0; k < sizeof map / sizeof map[0]; k++)
        if ((*tail = after(rest, map[k][0]))) return map[k][1];
    *tail = rest;
    return "";
}

static int unet_to_ldm(const sd_weights_impl *m, const char *name, char *out, size_t size)
{
    static const char *const top[][2] = {
        {"time_embedding.linear_1.", "time_embed.0."}, {"time_embedding.linear_2.", "time_embed.2."},
        {"conv_in.", "input_blocks.0.0."}, {"conv_norm_out.", "out.0."}, {"conv_out.", "out.2."},
    };
    const int n = m->unet_layers, per_level = n + 1;
    const char *r, *tail;
    int i, j;
    for (size_t k = 0; k < sizeof top / sizeof top[0]; k++)
        if ((r = after(name, top[k][0]))) return snprintf(out, size, LDM_UNET "%s%s", top[k][1], r);

    if ((r = take_two(name, "down_blocks.", ".resnets.", &i, &j))) {
        const char *rn = unet_resnet_part(r, &tail);
        return snprintf(out, size, LDM_UNET "input_blocks.%d.0.%s%s", 1 + i * per_level + j, rn, tail);
    }
    if ((r = take_two(name, "down_blocks.", ".attentions.", &i, &j)))
        return snprintf(out, size, LDM_UNET "input_blocks.%d.1.%s", 1 + i * per_level + j, r);
    if ((r = take_two(name, "down_blocks.", ".downsamplers.", &i, &j)) && j == 0 && (r = after(r, "conv.")))
        return snprintf(out, size, LDM_UNET "input_blocks.%d.0.op.%s", (i + 1) * per_level, r);

    if ((r = take_two(name, "up_blocks.", ".resnets.", &i, &j))) {
        const char *rn = unet_resnet_part(r, &tail);
        return snprintf(out, size, LDM_UNET "output_blocks.%d.0.%s%s", i * per_level + j, rn, tail);
    }
    if ((r = take_two(name, "up_blocks.", ".attentions.", &i, &j)))
        return snprintf(out, size, LDM_UNET "output_blocks.%d.1.%s", i * per_level + j, r);
    if ((r = take_two(name, "up_blocks.", ".upsamplers.", &i, &j)) && j == 0) {
        /* slot 2 if this up block has attentions (the ST sits in slot 1) */
        int idx = i * per_level + n;
        int slot = ldm_has(m, LDM_UNET "output_blocks.%d.%d.conv.weight", idx, 2) ? 2 : 1;
        return snprintf(out, size, LDM_UNET "output_blocks.%d.%d.%s", idx, slot, r);
    }

    if ((r = after(name, "mid_block.resnets.")) && (r = take_index(r, &j))) {
        const char *rn = unet_resnet_part(r, &tail);
        return snprintf(out, size, LDM_UNET "middle_block.%d.%s%s", 2 * j, rn, tail);
    }
    if ((r = after(name, "mid_block.attentions.0.")))
        return snprintf(out, size, LDM_UNET "middle_block.1.%s", r);
    return snprintf(out, size, LDM_UNET "%s", name);   /* unknown: as is (the lookup names it) */
}

/* VAE resnets keep norm1/conv1/norm2/conv2; only the shortcut is renamed. */
static const char *vae_resnet_part(const char *rest, const char **tail)
{
    if ((*tail = after(rest, "conv_shortcut."))) return "nin_shortcut.";
    *tail = rest;
    return "";
}

/* The VAE mid-block attention: GroupNorm + q/k/v/proj_out 1x1 convs. Both
 * current (to_q) and older (query) diffusers names are accepted. */
static const char *vae_attention_part(const char *rest, const char **tail)
{
    static const char *const map[][2] = {
        {"group_norm.", "norm."}, {"to_q.", "q."}, {"to_k.", "k."}, {"to_v.", "v."},
        {"to_out.0.", "proj_out."}, {"query.", "q."}, {"key.", "k."}, {"value.", "v."},
        {"proj_attn.", "proj_out."},
    };
    for (size_t k = 0; k < sizeof map / sizeof map[0]; k++)
        if ((*tail = after(rest, map[k][0]))) return map[k][1];
    *tail = rest;
    return "";
}

static int vae_to_ldm(const sd_weights_impl *m, const char *name, char *out, size_t size)
{
    const char *r, *tail, *part;
    int i, j;
    const char *coder = after(name, "encoder.") ? "encoder." : after(name, "decoder.") ? "decoder." : NULL;
    if (!coder) return snprintf(out, size, LDM_VAE "%s", name);   /* quant_conv, post_quant_conv */
    const char *s = name + strlen(coder);

    if ((r = take_two(s, "down_blocks.", ".resnets.", &i, &j))) {
        part = vae_resnet_part(r, &tail);
        return snprintf(out, size, LDM_VAE "%sdown.%d.block.%d.%s%s", coder, i, j, part, tail);
    }
    if ((r = take_two(s, "down_blocks.", ".downsamplers.", &i, &j)) && j == 0)
        return snprintf(out, size, LDM_VAE "%sdown.%d.downsample.%s", coder, i, r);
    /* the decoder's up blocks are numbered the other way round in LDM */
    if ((r = take_two(s, "up_blocks.", ".resnets.", &i, &j))) {
        part = vae_resnet_part(r, &tail);
        return snprintf(out, size, LDM_VAE "%sup.%d.block.%d.%s%s", coder, m->vae_levels - 1 - i, j, part, tail);
    }
    if ((r = take_two(s, "up_blocks.", ".upsamplers.", &i, &j)) && j == 0)
        return snprintf(out, size, LDM_VAE "%sup.%d.upsample.%s", coder, m->vae_levels - 1 - i, r);
    if ((r = after(s, "mid_block.resnets.")) && (r = take_index(r, &j))) {
        part = vae_resnet_part(r, &tail);
        return snprintf(out, size, LDM_VAE "%smid.block_%d.%s%s", coder, j + 1, part, tail);
    }
    if ((r = after(s, "mid_block.attentions.0."))) {
        part = vae_attention_part(r, &tail);
        return snprintf(out, size, LDM_VAE "%smid.attn_1.%s%s", coder, part, tail);
    }
    if ((r = after(s, "conv_norm_out.")))
        return snprintf(out, size, LDM_VAE "%snorm_out.%s", coder, r);
    return snprintf(out, size, LDM_VAE "%s", name);   /* conv_in, conv_out */
}

/* SD 2.x single files keep OpenCLIP's own names. Its attention has ONE
 * input projection in_proj_weight [3 hidden, hidden] = [q; k; v] stacked
 * by rows, so q/k/v are a third of it each (*third = 0, 1, 2). */
static int open_clip_to_ldm(const char *name, char *out, size_t size, int *third)
{
    static const char *const top[][2] = {
        {"text_model.embeddings.token_embedding.", "token_embedding."},
        {"text_model.final_layer_norm.", "ln_final."},
    };
    static const char *const in_layer[][2] = {
        {"self_attn.out_proj.", "attn.out_proj."}, {"layer_norm1.", "ln_1."}, {"layer_norm2.", "ln_2."},
        {"mlp.fc1.", "mlp.c_fc."}, {"mlp.fc2.", "mlp.c_proj."},
    };
    static const char *const qkv[3] = {"self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj."};
    const char *r;
    int l;
    if (strcmp(name, "text_model.embeddings.position_embedding.weight") == 0)
        return snprintf(out, size, LDM_OPEN_CLIP "positional_embedding");
    for (size_t k = 0; k < sizeof top / sizeof top[0]; k++)
        if ((r = after(name, top[k][0]))) return snprintf(out, size, LDM_OPEN_CLIP "%s%s", top[k][1], r);
    if ((r = after(name, "text_model.encoder.layers.")) && (r = take_index(r, &l))) {
        for (int t = 0; t < 3; t++) {
            const char *p = after(r, qkv[t]);
            if (p) {
                *third = t;
                return snprintf(out, size, LDM_OPEN_CLIP "transformer.resblocks.%d.attn.in_proj_%s", l, p);
            }
        }
        for (size_t k = 0; k < sizeof in_layer / sizeof in_layer[0]; k++) {
            const char *p = after(r, in_layer[k][0]);
            if (p) return snprintf(out, size, LDM_OPEN_CLIP "transformer.resblocks.%d.%s%s", l, in_layer[k][1], p);
        }
    }
    return snprintf(out, size, LDM_OPEN_CLIP "%s", name);
}

/* The text encoder keeps its transformers names; old checkpoints (written
 * with transformers < 4.x) lack the "text_model." level. */
static int text_to_ldm(const sd_weights_impl *m, const char *name, char *out, size_t size, int *third)
{
    if (m->open_clip) return open_clip_to_ldm(name, out, size, third);
    const char *r = after(name, "text_model.");
    if (r && !m->text_has_text_model) return snprintf(out, size, LDM_TEXT "%s", r);
    return snprintf(out, size, LDM_TEXT "%s", name);
}

/* The file and the name to look up for (part, diffusers name); *third is
 * set to 0/1/2 if the tensor is that third (by rows) of the named one. */
static const dl_safetensors *locate(sd_weights *w, sd_part part, const char *name, char *key, size_t size,
                                    int *third)
{
    sd_weights_impl *m = w->impl;
    *third = -1;
    if (w->layout == SD_LAYOUT_DIFFUSERS) {
        snprintf(key, size, "%s", name);
        return &m->files[part];
    }
    int n = part == SD_PART_UNET ? unet_to_ldm(m, name, key, size)
          : part == SD_PART_VAE  ? vae_to_ldm(m, name, key, size)
                                 : text_to_ldm(m, name, key, size, third);
    if (n < 0 || (size_t)n >= size) key[0] = 0;   /* absurdly long name: not found */
    return &m->files[0];
}

/* The entry of (part, name), or NULL. For a third of a stacked tensor it is
 * a copy in *tmp narrowed to those rows (same dtype, offset moved). */
static const dl_st_entry *find_entry(sd_weights *w, sd_part part, const char *name, char *key, size_t size,
                                     const dl_safetensors **file, dl_st_entry *tmp)
{
    int third;
    *file = locate(w, part, name, key, size, &third);
    const dl_st_entry *e = key[0] ? dl_st_find(*file, key) : NULL;
    if (!e || third < 0 || e->ndim < 1 || e->shape[0] % 3 != 0) return e;   /* (bad stacks: shape error) */
    *tmp = *e;
    tmp->shape[0] /= 3;
    tmp->nbytes = e->nbytes / 3;
    tmp->offset = e->offset + (size_t)third * tmp->nbytes;
    return tmp;
}

dl_status sd_weights_ldm_name(sd_weights *w, sd_part part, const char *name, char *out, size_t size)
{
    if (!w || !w->impl || !name || !out || size == 0 || (unsigned)part >= SD_PART_COUNT)
        return dl_fail(DL_ERR_ARG, "sd_weights_ldm_name: bad argument");
    int third;
    locate(w, part, name, out, size, &third);
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Lookups                                                             */

int sd_weights_has(sd_weights *w, sd_part part, const char *name)
{
    if (!w || !w->impl || !name || (unsigned)part >= SD_PART_COUNT) return 0;
    char key[512];
    int third;
    const dl_safetensors *f = locate(w, part, name, key, sizeof key, &third);
    return key[0] && dl_st_find(f, key) != NULL;
}

/* The "not found" error, with the file's own name for single files. */
static dl_status not_found(sd_weights *w, sd_part part, const char *name, const char *key, const char *file)
{
    if (w->layout == SD_LAYOUT_DIFFUSERS)
        return dl_fail(DL_ERR_FORMAT, "sd_weights: %s tensor '%s' not found in %s", sd_part_names[part], name, file);
    return dl_fail(DL_ERR_FORMAT, "sd_weights: %s tensor '%s' (single-file name '%s') not found in %s",
                   sd_part_names[part], name, key, file);
}

dl_status sd_weights_shape(sd_weights *w, sd_part part, const char *name, int *ndim, int64_t shape[8])
{
    if (!w || !w->impl || !name || !ndim || !shape || (unsigned)part >= SD_PART_COUNT)
        return dl_fail(DL_ERR_ARG, "sd_weights_shape: bad argument");
    char key[512];
    const dl_safetensors *f;
    dl_st_entry tmp;
    const dl_st_entry *e = find_entry(w, part, name, key, sizeof key, &f, &tmp);
    if (!e) return not_found(w, part, name, key, f->path);
    *ndim = e->ndim;
    for (int d = 0; d < e->ndim && d < 8; d++) shape[d] = e->shape[d];
    return DL_OK;
}

/* Shapes match if they agree after dropping trailing size-1 dimensions:
 * a [C, C] linear request is served by a [C, C, 1, 1] 1x1 conv in the file
 * (and the other way round): the values are laid out identically. */
static int shapes_match(int na, const int64_t *a, int nb, const int64_t *b)
{
    while (na > 0 && a[na - 1] == 1) na--;
    while (nb > 0 && b[nb - 1] == 1) nb--;
    if (na != nb) return 0;
    for (int d = 0; d < na; d++)
        if (a[d] != b[d]) return 0;
    return 1;
}

static void shape_text(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < ndim && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (used < size) snprintf(buf + used, size - used, "]");
}

/* ------------------------------------------------------------------ */
/* Widened float32 copies: the cache (sd_weights_set_cache)            */

/* Like dl_tensor_alloc (owned, 64-byte aligned) without the zero fill. */
static dl_status alloc_unfilled(dl_tensor *t, int ndim, const int64_t shape[])
{
    int64_t n = dl_shape_numel(ndim, shape);
    if (n < 0) return DL_ERR_SHAPE;
    float *p = aligned_alloc(64, ((size_t)n * sizeof(float) + 63) & ~(size_t)63);
    if (!p) return dl_fail(DL_ERR_MEMORY, "sd_weights: cannot allocate %lld MiB", (long long)(n >> 18));
    dl_status st = dl_tensor_view(t, p, ndim, shape);
    if (st != DL_OK) { free(p); return st; }
    t->owns_data = 1;
    return DL_OK;
}

/* The file index (into impl->files) a part's tensors come from. */
static int part_file(const sd_weights *w, sd_part part) { return w->layout == SD_LAYOUT_DIFFUSERS ? (int)part : 0; }

/* Does entry `e` of the part's file belong to the part (a single file holds all three)? */
static int entry_in_part(const sd_weights *w, sd_part part, const dl_st_entry *e)
{
    if (w->layout == SD_LAYOUT_DIFFUSERS) return 1;
    if (part == SD_PART_UNET) return after(e->name, LDM_UNET) != NULL;
    if (part == SD_PART_VAE) return after(e->name, LDM_VAE) != NULL;
    return after(e->name, LDM_TEXT) != NULL || after(e->name, LDM_OPEN_CLIP) != NULL;
}

/* Is entry e served as a copy (anything but 4-byte aligned float32, which is a view)? */
static int needs_copy(const dl_safetensors *f, const dl_st_entry *e)
{
    return e->dtype != DL_DTYPE_F32 || ((uintptr_t)(f->data + e->offset) % sizeof(float)) != 0;
}

size_t sd_weights_widened_bytes(sd_weights *w, sd_part part)
{
    if (!w || !w->impl || (unsigned)part >= SD_PART_COUNT) return 0;
    const dl_safetensors *f = &w->impl->files[part_file(w, part)];
    size_t bytes = 0;
    for (int i = 0; i < f->count; i++) {
        const dl_st_entry *e = &f->entries[i];
        if (needs_copy(f, e) && entry_in_part(w, part, e)) bytes += (size_t)dl_st_numel(e) * sizeof(float);
    }
    return bytes;
}

/* MemAvailable from /proc/meminfo in bytes (free pages where there is none). */
static size_t available_memory(void)
{
    FILE *fp = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    while (fp && fgets(line, sizeof line, fp))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    if (fp) fclose(fp);
    if (kb) return (size_t)kb * 1024;
    long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    return pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0;
}

/* Free the copies of `part` made from file `file` (part < 0: every part). */
static void cache_drop(sd_weights *w, int file, int part)
{
    sd_weights_impl *m = w->impl;
    float **c = m->widened[file];
    const dl_safetensors *f = &m->files[file];
    int kept = 0;
    for (int i = 0; c && i < f->count; i++) {
        if (!c[i]) continue;
        if (part >= 0 && !entry_in_part(w, (sd_part)part, &f->entries[i])) { kept = 1; continue; }
        m->cache_bytes -= (size_t)dl_st_numel(&f->entries[i]) * sizeof(float);
        c[i] = NULL;
    }
    if (c && !kept) {
        free(c);
        m->widened[file] = NULL;
    }
    for (int p = 0; p < SD_PART_COUNT; p++)
        if ((part < 0 || p == part) && m->slab[p] && (part >= 0 || part_file(w, (sd_part)p) == file)) {
            munmap(m->slab[p], m->slab_floats[p] * sizeof(float));
            m->slab[p] = NULL;
            m->slab_floats[p] = m->slab_used[p] = 0;
        }
}

/* Room for n floats (64-byte aligned) in the part's slab: one anonymous
 * mapping as large as the whole part widened, made at the first copy. Huge
 * pages where the kernel offers them on request: the first call writes
 * gigabytes of fresh memory, and 2 MB pages take 512x fewer page faults. */
static float *slab_take(sd_weights *w, sd_part part, int64_t n)
{
    sd_weights_impl *m = w->impl;
    if (!m->slab[part]) {
        const dl_safetensors *f = &m->files[part_file(w, part)];
        size_t floats = 0;
        for (int i = 0; i < f->count; i++)
            if (needs_copy(f, &f->entries[i]) && entry_in_part(w, part, &f->entries[i]))
                floats += ((size_t)dl_st_numel(&f->entries[i]) + 15) & ~(size_t)15;
        if (floats == 0) return NULL;
        void *p = mmap(NULL, floats * sizeof(float), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
#ifdef MADV_HUGEPAGE
        madvise(p, floats * sizeof(float), MADV_HUGEPAGE);
#endif
        m->slab[part] = p;
        m->slab_floats[part] = floats;
        m->slab_used[part] = 0;
    }
    size_t need = ((size_t)n + 15) & ~(size_t)15;
    if (need > m->slab_floats[part] - m->slab_used[part]) return NULL;
    float *p = m->slab[part] + m->slab_used[part];
    m->slab_used[part] += need;
    return p;
}

/* Should tensors of this part be kept? AUTO is decided at the first fetch. */
static int cache_wanted(sd_weights *w, sd_part part)
{
    sd_weights_impl *m = w->impl;
    if (m->cache_mode[part] == SD_CACHE_AUTO && !m->cache_decided[part]) {
        size_t need = sd_weights_widened_bytes(w, part);
        m->cache_on[part] = need > 0 && need <= available_memory() / 2;
        m->cache_decided[part] = 1;
    }
    return m->cache_on[part];
}

/* The float32 copy of entry e, made on first use. A row third of a stacked
 * tensor (OpenCLIP's q/k/v) is served from the copy of the whole tensor `key`. */
static dl_status cache_get(sd_weights *w, sd_part part, const dl_safetensors *f, const dl_st_entry *e,
                           const char *key, const float **data)
{
    sd_weights_impl *m = w->impl;
    const int file = (int)(f - m->files);
    const dl_st_entry *whole = dl_st_find(f, key);
    if (!whole) return dl_fail(DL_ERR_FORMAT, "sd_weights: tensor '%s' not found in %s", key, f->path);
    if (!m->widened[file]) {
        m->widened[file] = calloc((size_t)f->count, sizeof(float *));
        if (!m->widened[file]) return dl_fail(DL_ERR_MEMORY, "sd_weights: out of memory");
    }
    float **slot = &m->widened[file][whole - f->entries];
    if (!*slot) {
        const int64_t n = dl_st_numel(whole);
        float *p = slab_take(w, part, n);
        if (!p) return dl_fail(DL_ERR_MEMORY, "sd_weights: cannot keep '%s' widened (%lld MiB)", key, (long long)(n >> 18));
        DL_TRY(dl_st_read_f32(f, whole, p));   /* (on failure the slab space is simply not reused) */
        *slot = p;
        m->cache_bytes += (size_t)n * sizeof(float);
        /* The narrow copy is not needed any more: drop its pages from this
         * process (the whole pages inside the tensor; they are clean file
         * pages, a later read would simply map them in again). */
        const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
        uintptr_t a = ((uintptr_t)(f->data + whole->offset) + page - 1) & ~(page - 1);
        uintptr_t b = (uintptr_t)(f->data + whole->offset + whole->nbytes) & ~(page - 1);
        if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
    }
    *data = *slot + (e->offset - whole->offset) / (size_t)dl_dtype_sizes[e->dtype];
    return DL_OK;
}

dl_status sd_weights_set_cache(sd_weights *w, sd_part part, sd_cache_mode mode)
{
    if (!w || !w->impl || (unsigned)part >= SD_PART_COUNT || (unsigned)mode > SD_CACHE_AUTO)
        return dl_fail(DL_ERR_ARG, "sd_weights_set_cache: bad argument");
    sd_weights_impl *m = w->impl;
    m->cache_mode[part] = mode;
    m->cache_decided[part] = mode != SD_CACHE_AUTO;
    m->cache_on[part] = mode == SD_CACHE_ON;
    if (mode == SD_CACHE_OFF) cache_drop(w, part_file(w, part), (int)part);
    return DL_OK;
}

int sd_weights_cache_on(sd_weights *w, sd_part part)
{
    if (!w || !w->impl || (unsigned)part >= SD_PART_COUNT) return 0;
    return cache_wanted(w, part) && sd_weights_widened_bytes(w, part) > 0;
}

size_t sd_weights_cache_bytes(const sd_weights *w)
{
    return w && w->impl ? w->impl->cache_bytes : 0;
}

/* The tensor as read from the file, through the patch if one is set. */
static dl_status apply_patch(sd_weights *w, sd_part part, const char *name, dl_tensor *out)
{
    if (!w->impl->patch) return DL_OK;
    dl_status st = w->impl->patch(w->impl->patch_ctx, part, name, out);
    if (st != DL_OK) dl_tensor_free(out);
    return st;
}

dl_status sd_weights_get(sd_weights *w, sd_part part, const char *name,
                         int ndim, const int64_t shape[], dl_tensor *out)
{
    if (out) memset(out, 0, sizeof *out);
    if (!w || !w->impl || !name || !shape || !out || (unsigned)part >= SD_PART_COUNT)
        return dl_fail(DL_ERR_ARG, "sd_weights_get: bad argument");
    if (ndim < 1 || ndim > DL_MAX_DIMS)
        return dl_fail(DL_ERR_ARG, "sd_weights_get: %s tensor '%s': ndim %d outside 1..%d",
                       sd_part_names[part], name, ndim, DL_MAX_DIMS);

    char key[512];
    const dl_safetensors *f;
    dl_st_entry tmp;
    const dl_st_entry *e = find_entry(w, part, name, key, sizeof key, &f, &tmp);
    if (!e) return not_found(w, part, name, key, f->path);

    char want[160], have[160];
    shape_text(ndim, shape, want, sizeof want);
    shape_text(e->ndim, e->shape, have, sizeof have);
    if (!shapes_match(ndim, shape, e->ndim, e->shape))
        return dl_fail(DL_ERR_SHAPE, "sd_weights: %s tensor '%s' in %s has shape %s, expected %s",
                       sd_part_names[part], name, f->path, have, want);
    if (e->dtype != DL_DTYPE_F32 && e->dtype != DL_DTYPE_F16 && e->dtype != DL_DTYPE_BF16 &&
        e->dtype != DL_DTYPE_F64)
        return dl_fail(DL_ERR_FORMAT, "sd_weights: %s tensor '%s' in %s has dtype %s, expected a float type",
                       sd_part_names[part], name, f->path, dl_dtype_names[e->dtype]);

    const unsigned char *src = f->data + e->offset;
    if (e->dtype == DL_DTYPE_F32 && ((uintptr_t)src % sizeof(float)) == 0) {
        /* a view of the mapping: nothing copied (the pages are read on first use) */
        dl_status st = dl_tensor_view(out, (float *)(uintptr_t)src, ndim, shape);
        if (st != DL_OK) return fail_with_context(st, name);
        return apply_patch(w, part, name, out);
    }
    if (cache_wanted(w, part)) {                       /* a view of the kept float32 copy */
        const float *c = NULL;
        dl_status st = cache_get(w, part, f, e, key, &c);
        if (st == DL_OK) st = dl_tensor_view(out, (float *)(uintptr_t)c, ndim, shape);
        if (st != DL_OK) return fail_with_context(st, name);
        return apply_patch(w, part, name, out);
    }
    dl_status st = alloc_unfilled(out, ndim, shape);   /* every value is written below */
    if (st != DL_OK) return fail_with_context(st, name);
    st = dl_st_read_f32(f, e, out->data);   /* widen fp16/bf16, narrow f64 */
    if (st != DL_OK) {
        dl_tensor_free(out);
        return st;
    }
    return apply_patch(w, part, name, out);
}

void sd_weights_set_patch(sd_weights *w, sd_weights_patch_fn fn, void *ctx)
{
    if (!w || !w->impl) return;
    w->impl->patch = fn;
    w->impl->patch_ctx = fn ? ctx : NULL;
}

const char *sd_weights_config_json(sd_weights *w, sd_part part)
{
    if (!w || !w->impl || (unsigned)part >= SD_PART_COUNT) return NULL;
    return w->impl->config[part];
}

const char *sd_weights_file(sd_weights *w, sd_part part)
{
    if (!w || !w->impl || (unsigned)part >= SD_PART_COUNT) return NULL;
    return w->layout == SD_LAYOUT_DIFFUSERS ? w->impl->files[part].path : w->impl->files[0].path;
}

dl_status sd_weights_set_config_dir(sd_weights *w, const char *folder)
{
    if (!w || !w->impl || !folder) return dl_fail(DL_ERR_ARG, "sd_weights_set_config_dir: bad argument");
    char path[1200];
    char *text[SD_PART_COUNT] = {0};
    for (int p = 0; p < SD_PART_COUNT; p++) {
        snprintf(path, sizeof path, "%s/%s/config.json", folder, sd_part_names[p]);
        text[p] = read_text(path);
        if (!text[p]) {
            for (int q = 0; q < p; q++) free(text[q]);
            return dl_fail(DL_ERR_IO, "sd_weights: missing file %s", path);
        }
    }
    for (int p = 0; p < SD_PART_COUNT; p++) {
        free(w->impl->config[p]);
        w->impl->config[p] = text[p];
    }
    return DL_OK;
}

dl_status sd_weights_open_component(sd_weights *w, const char *folder, sd_part as_part)
{
    memset(w, 0, sizeof *w);
    if (!folder || (unsigned)as_part >= SD_PART_COUNT)
        return dl_fail(DL_ERR_ARG, "sd_weights_open_component: bad argument");
    if (strlen(folder) >= sizeof w->path) return dl_fail(DL_ERR_ARG, "sd_weights: path too long: %s", folder);
    if (!is_dir(folder)) return dl_fail(DL_ERR_IO, "sd_weights: missing folder %s", folder);
    snprintf(w->path, sizeof w->path, "%s", folder);
    w->layout = SD_LAYOUT_DIFFUSERS;
    w->impl = calloc(1, sizeof *w->impl);
    if (!w->impl) return dl_fail(DL_ERR_MEMORY, "sd_weights: out of memory");

    char path[1200];
    const char *chosen = NULL;
    for (int k = 0; k < 2 && !chosen; k++) {
        snprintf(path, sizeof path, "%s/%s", folder, part_files[as_part][k]);
        if (is_file(path)) chosen = path;
    }
    dl_status st = DL_OK;
    if (!chosen) {
        snprintf(path, sizeof path, "%s/%s", folder, part_files[as_part][0]);
        st = dl_fail(DL_ERR_IO, "sd_weights: missing file %s (nor the %s variant)", path, part_files[as_part][1]);
    } else {
        st = dl_st_open(&w->impl->files[as_part], chosen);   /* names the file on failure */
    }
    if (st == DL_OK) {
        snprintf(path, sizeof path, "%s/config.json", folder);
        w->impl->config[as_part] = read_text(path);
        if (!w->impl->config[as_part]) st = dl_fail(DL_ERR_IO, "sd_weights: missing file %s", path);
    }
    if (st != DL_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", dl_error_message());
        sd_weights_close(w);
        return dl_fail(st, "%s", msg);
    }
    return DL_OK;
}
