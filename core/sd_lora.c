/* sd_lora.c - see sd_lora.h
 *
 * Loading a LoRA file is three steps:
 *
 *   1. read every key as  <prefix><module><suffix>
 *        prefix  lora_unet_ | lora_te_        (kohya: module flattened with '_')
 *                unet.      | text_encoder.   (diffusers: module with its dots)
 *        suffix  .lora_down.weight | .lora_A.weight | .lora.down.weight | ...  -> "down"
 *                .lora_up.weight   | .lora_B.weight | .lora.up.weight   | ...  -> "up"
 *                .alpha                                                        -> "alpha"
 *   2. group the keys by (part, module): each group is one low-rank update
 *   3. resolve the module to the weight it changes ("<module>.weight" in the
 *      diffusers names of the model), check the shapes, copy up and down
 *
 * Anything that fails on the way becomes an "unmatched" entry with a reason.
 */
#include "sd_lora.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

const char *const sd_lora_format_names[2] = {"kohya", "diffusers"};

/* ------------------------------------------------------------------ */
/* The delta: W += coef * up @ down                                    */

void sd_lora_add_delta_ref(float *W, const float *up, const float *down, int64_t out, int64_t in, int rank,
                           float coef)
{
    for (int64_t o = 0; o < out; o++)             /* W [out, in] */
        for (int64_t i = 0; i < in; i++) {
            float acc = 0.0f;
            for (int r = 0; r < rank; r++)        /* up [out, rank] @ down [rank, in] */
                acc += up[o * rank + r] * down[(int64_t)r * in + i];
            W[o * in + i] += coef * acc;
        }
}

void sd_lora_add_delta(float *W, const float *up, const float *down, int64_t out, int64_t in, int rank,
                       float coef)
{
    /* C = coef * A @ B + 1 * C with A = up [out, rank], B = down [rank, in], C = W [out, in] */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out, (int)in, rank, coef, up, rank, down,
                (int)in, 1.0f, W, (int)in);
}

/* ------------------------------------------------------------------ */
/* Step 1: what a key says                                             */

typedef enum { ROLE_DOWN, ROLE_UP, ROLE_ALPHA } key_role;

typedef struct {
    sd_part  part;
    int      flat;           /* kohya: module path flattened with '_' */
    key_role role;
    size_t   stem;           /* length of the key without its suffix   */
    char     module[256];    /* diffusers spelling for dotted keys     */
} key_info;

static int ends_with(const char *s, const char *suffix, size_t *stem)
{
    size_t n = strlen(s), m = strlen(suffix);
    if (n <= m || strcmp(s + n - m, suffix) != 0) return 0;
    *stem = n - m;
    return 1;
}

/* 1 and *k filled if `key` is a LoRA tensor name this loader knows; else 0
 * and a reason. */
static int parse_key(const char *key, key_info *k, char *reason, size_t rsize)
{
    static const struct { const char *suffix; key_role role; int processor; } suffixes[] = {
        {".lora_down.weight", ROLE_DOWN, 0}, {".lora_up.weight", ROLE_UP, 0},           /* kohya        */
        {".lora_A.weight", ROLE_DOWN, 0},    {".lora_B.weight", ROLE_UP, 0},            /* PEFT         */
        {".lora.down.weight", ROLE_DOWN, 0}, {".lora.up.weight", ROLE_UP, 0},           /* diffusers 0.2x */
        {".lora_linear_layer.down.weight", ROLE_DOWN, 0},
        {".lora_linear_layer.up.weight", ROLE_UP, 0},
        {"_lora.down.weight", ROLE_DOWN, 1}, {"_lora.up.weight", ROLE_UP, 1},           /* attn processors */
        {".alpha", ROLE_ALPHA, 0},
    };
    static const struct { const char *prefix; sd_part part; int flat; } prefixes[] = {
        {"lora_unet_", SD_PART_UNET, 1}, {"lora_te_", SD_PART_TEXT_ENCODER, 1},
        {"unet.", SD_PART_UNET, 0},      {"text_encoder.", SD_PART_TEXT_ENCODER, 0},
    };
    size_t stem = 0, s, p;
    for (s = 0; s < sizeof suffixes / sizeof suffixes[0]; s++)
        if (ends_with(key, suffixes[s].suffix, &stem)) break;
    if (s == sizeof suffixes / sizeof suffixes[0]) {
        snprintf(reason, rsize, "not a LoRA tensor this loader knows (.lora_down/.lora_up/.lora_A/.lora_B/"
                 ".alpha; LyCORIS and DoRA tensors are not supported)");
        return 0;
    }
    for (p = 0; p < sizeof prefixes / sizeof prefixes[0]; p++)
        if (strncmp(key, prefixes[p].prefix, strlen(prefixes[p].prefix)) == 0) break;
    if (p == sizeof prefixes / sizeof prefixes[0]) {
        snprintf(reason, rsize, "unknown model part (expected lora_unet_, lora_te_, unet. or text_encoder.; "
                 "e.g. lora_te2_ is SDXL's second text encoder, absent in SD 1.x/2.x)");
        return 0;
    }
    size_t plen = strlen(prefixes[p].prefix);
    if (stem <= plen || stem - plen >= sizeof k->module - 8) {
        snprintf(reason, rsize, "module name empty or too long");
        return 0;
    }
    k->part = prefixes[p].part;
    k->flat = prefixes[p].flat;
    k->role = suffixes[s].role;
    k->stem = stem;
    memcpy(k->module, key + plen, stem - plen);
    k->module[stem - plen] = 0;

    if (suffixes[s].processor) {
        /* "...attn1.processor.to_q" -> "...attn1.to_q"; "to_out" -> "to_out.0" */
        char *proc = strstr(k->module, ".processor.");
        if (!proc) {
            snprintf(reason, rsize, "'_lora.down/up' outside an attention processor");
            return 0;
        }
        memmove(proc, proc + strlen(".processor"), strlen(proc + strlen(".processor")) + 1);
        size_t n = strlen(k->module);
        if (n >= 7 && strcmp(k->module + n - 7, ".to_out") == 0) strcat(k->module, ".0");
    }
    return 1;
}

/* ------------------------------------------------------------------ */
/* Step 3: which weight a module changes                               */

/* kohya wrote the module path with every '.' replaced by '_'. Undo it by
 * trying, at each '_', both readings, and keep the one name the model has:
 * "down_blocks_1_attentions_0_proj_in" -> ... -> "down_blocks.1.attentions.0.proj_in".
 * 2^(number of '_') candidates: 2048 for the longest SD 1.5 names, cheap
 * next to loading anything. Returns the number of matches (the first one in
 * *out): 0 = nothing, >1 = ambiguous. */
#define MAX_UNDERSCORES 20

static int resolve_flat(sd_weights *w, sd_part part, const char *flat, char *out, size_t size)
{
    int pos[MAX_UNDERSCORES], k = 0;
    size_t n = strlen(flat);
    if (n + 8 >= size) return 0;
    for (size_t i = 0; i < n; i++)
        if (flat[i] == '_') {
            if (k == MAX_UNDERSCORES) return 0;
            pos[k++] = (int)i;
        }
    char cand[300];
    int matches = 0;
    for (long mask = 0; mask < (1L << k); mask++) {
        memcpy(cand, flat, n);
        for (int j = 0; j < k; j++)
            if (mask & (1L << j)) cand[pos[j]] = '.';
        memcpy(cand + n, ".weight", 8);
        if (sd_weights_has(w, part, cand)) {
            if (matches++ == 0) memcpy(out, cand, n + 8);   /* n + 8 < size: checked above */
        }
    }
    return matches;
}

/* ------------------------------------------------------------------ */
/* Loading                                                             */

typedef struct {
    key_info           info;
    const dl_st_entry *down, *up, *alpha;
    const char        *keys[3];    /* the file keys of this group (for the unmatched list) */
    int                n_keys;
} group;

static void add_unmatched(sd_lora *l, const char *key, const char *reason)
{
    sd_lora_unmatched *u = &l->unmatched[l->n_unmatched++];
    snprintf(u->key, sizeof u->key, "%s", key);
    snprintf(u->reason, sizeof u->reason, "%s", reason);
}

static void shape_str(const dl_st_entry *e, char *buf, size_t size)
{
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int d = 0; d < e->ndim && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", d ? ", " : "", (long long)e->shape[d]);
    if (used < size) snprintf(buf + used, size - used, "]");
}

/* Resolve one group into l->modules[l->n_modules], or give the reason. */
static dl_status resolve_group(sd_lora *l, const dl_safetensors *f, const group *g, sd_weights *model,
                               char *reason, size_t rsize, int *ok)
{
    *ok = 0;
    const char *pname = sd_part_names[g->info.part];
    if (!g->down || !g->up) {
        snprintf(reason, rsize, "%s without its %s half", g->down ? "lora_down" : "lora_up",
                 g->down ? "lora_up" : "lora_down");
        return DL_OK;
    }
    sd_lora_module m;
    memset(&m, 0, sizeof m);
    m.part = g->info.part;
    snprintf(m.key, sizeof m.key, "%.*s", (int)g->info.stem, g->keys[0]);   /* the file's module key */

    if (g->info.flat) {
        int n = resolve_flat(model, m.part, g->info.module, m.target, sizeof m.target);
        if (n != 1) {
            snprintf(reason, rsize, n == 0 ? "no %s weight is named like '%.120s' (read with '.' or '_')"
                                           : "%s weight name '%.120s' is ambiguous", pname, g->info.module);
            return DL_OK;
        }
    } else {
        snprintf(m.target, sizeof m.target, "%s.weight", g->info.module);
        if (!sd_weights_has(model, m.part, m.target)) {
            snprintf(reason, rsize, "no %s weight '%.150s' in this model", pname, m.target);
            return DL_OK;
        }
    }

    /* down [rank, in] or [rank, C, kh, kw]; up [out, rank] or [out, rank, 1, 1] */
    const dl_st_entry *d = g->down, *u = g->up;
    char ds[96], us[96], ts[96];
    shape_str(d, ds, sizeof ds);
    shape_str(u, us, sizeof us);
    int tnd;
    int64_t tsh[8];
    DL_TRY(sd_weights_shape(model, m.part, m.target, &tnd, tsh));
    int64_t tnumel = 1;
    size_t used = (size_t)snprintf(ts, sizeof ts, "[");
    for (int i = 0; i < tnd; i++) {
        tnumel *= tsh[i];
        if (used < sizeof ts) used += (size_t)snprintf(ts + used, sizeof ts - used, "%s%lld", i ? ", " : "",
                                                       (long long)tsh[i]);
    }
    if (used < sizeof ts) snprintf(ts + used, sizeof ts - used, "]");

    int shapes_ok = (d->ndim == 2 || d->ndim == 4) && (u->ndim == 2 || (u->ndim == 4 && u->shape[2] == 1 &&
                                                                         u->shape[3] == 1));
    if (shapes_ok) {
        m.rank = (int)d->shape[0];
        m.out = u->shape[0];
        m.in = dl_st_numel(d) / (d->shape[0] > 0 ? d->shape[0] : 1);
        shapes_ok = m.rank > 0 && u->shape[1] == m.rank && tnd >= 1 && tsh[0] == m.out && m.out * m.in == tnumel &&
                    m.out < (1L << 30) && m.in < (1L << 30);
    }
    if (!shapes_ok) {
        snprintf(reason, rsize, "shapes do not fit: up %.30s, down %.30s, %s weight '%.70s' %.30s", us, ds, pname,
                 m.target, ts);
        return DL_OK;
    }
    m.alpha = (float)m.rank;
    if (g->alpha) {
        float a[1];
        if (dl_st_numel(g->alpha) != 1) {
            snprintf(reason, rsize, "alpha is not a single number");
            return DL_OK;
        }
        DL_TRY(dl_st_read_f32(f, g->alpha, a));
        m.alpha = a[0];
    }
    m.up = malloc((size_t)(m.out * m.rank) * sizeof(float));
    m.down = malloc((size_t)(m.rank * m.in) * sizeof(float));
    dl_status st = (!m.up || !m.down) ? dl_fail(DL_ERR_MEMORY, "sd_lora: out of memory for '%s'", m.key) : DL_OK;
    if (st == DL_OK) st = dl_st_read_f32(f, u, m.up);
    if (st == DL_OK) st = dl_st_read_f32(f, d, m.down);
    if (st != DL_OK) {
        free(m.up);
        free(m.down);
        return st;
    }
    l->modules[l->n_modules++] = m;
    *ok = 1;
    return DL_OK;
}

static int module_cmp(const void *a, const void *b)
{
    const sd_lora_module *x = a, *y = b;
    if (x->part != y->part) return x->part < y->part ? -1 : 1;
    return strcmp(x->target, y->target);
}

static dl_status load_groups(sd_lora *l, const dl_safetensors *f, sd_weights *model, group *groups, int *n_groups,
                             int *n_lora_keys, int *n_flat)
{
    char reason[256];
    for (int i = 0; i < f->count; i++) {
        const dl_st_entry *e = &f->entries[f->by_name[i]];
        key_info k;
        if (!parse_key(e->name, &k, reason, sizeof reason)) {
            add_unmatched(l, e->name, reason);
            continue;
        }
        (*n_lora_keys)++;
        *n_flat += k.flat;
        /* the keys of one module are neighbours in name order: search from the end */
        int gi = *n_groups - 1;
        while (gi >= 0 && !(groups[gi].info.part == k.part && groups[gi].info.flat == k.flat &&
                            strcmp(groups[gi].info.module, k.module) == 0))
            gi--;
        if (gi < 0) {
            gi = (*n_groups)++;
            memset(&groups[gi], 0, sizeof groups[gi]);
            groups[gi].info = k;
        }
        group *g = &groups[gi];
        const dl_st_entry **slot = k.role == ROLE_DOWN ? &g->down : k.role == ROLE_UP ? &g->up : &g->alpha;
        if (*slot || g->n_keys == 3) {
            add_unmatched(l, e->name, "a second tensor for the same module and role");
            continue;
        }
        *slot = e;
        g->keys[g->n_keys++] = e->name;
    }
    for (int gi = 0; gi < *n_groups; gi++) {
        int ok;
        DL_TRY(resolve_group(l, f, &groups[gi], model, reason, sizeof reason, &ok));
        if (!ok)
            for (int j = 0; j < groups[gi].n_keys; j++) add_unmatched(l, groups[gi].keys[j], reason);
    }
    return DL_OK;
}

dl_status sd_lora_load(sd_lora *l, const char *path, sd_weights *model, float scale)
{
    memset(l, 0, sizeof *l);
    if (!path || !model) return dl_fail(DL_ERR_ARG, "sd_lora_load: NULL argument");
    snprintf(l->path, sizeof l->path, "%s", path);
    l->scale = scale;
    dl_safetensors f;
    DL_TRY(dl_st_open(&f, path));
    l->n_keys = f.count;
    /* at most one module and one unmatched entry per key */
    group *groups = calloc((size_t)f.count + 1, sizeof *groups);
    l->modules = calloc((size_t)f.count + 1, sizeof *l->modules);
    l->unmatched = calloc((size_t)f.count + 1, sizeof *l->unmatched);
    dl_status st = DL_OK;
    int n_groups = 0, n_lora_keys = 0, n_flat = 0;
    if (!groups || !l->modules || !l->unmatched) st = dl_fail(DL_ERR_MEMORY, "sd_lora: out of memory (%s)", path);
    if (st == DL_OK) st = load_groups(l, &f, model, groups, &n_groups, &n_lora_keys, &n_flat);
    if (st == DL_OK && n_lora_keys == 0)
        st = dl_fail(DL_ERR_FORMAT, "sd_lora: %s has no LoRA tensors (%d tensors, e.g. '%s'): not a LoRA file",
                     path, f.count, f.count ? f.entries[0].name : "none");
    free(groups);
    dl_st_close(&f);
    if (st != DL_OK) {
        sd_lora_free(l);
        return st;
    }
    l->format = 2 * n_flat >= n_lora_keys ? SD_LORA_KOHYA : SD_LORA_DIFFUSERS;
    qsort(l->modules, (size_t)l->n_modules, sizeof *l->modules, module_cmp);
    return DL_OK;
}

void sd_lora_free(sd_lora *l)
{
    if (!l) return;
    for (int i = 0; i < l->n_modules; i++) {
        free(l->modules[i].up);
        free(l->modules[i].down);
    }
    free(l->modules);
    free(l->unmatched);
    memset(l, 0, sizeof *l);
}

int sd_lora_find(const sd_lora *l, sd_part part, const char *name, int *first)
{
    /* lower bound of (part, name) in the sorted modules */
    int lo = 0, hi = l->n_modules;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        const sd_lora_module *m = &l->modules[mid];
        int c = m->part != part ? (m->part < part ? -1 : 1) : strcmp(m->target, name);
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    int n = 0;
    while (lo + n < l->n_modules && l->modules[lo + n].part == part && strcmp(l->modules[lo + n].target, name) == 0)
        n++;
    if (first) *first = lo;
    return n;
}

dl_status sd_lora_parse_spec(const char *spec, char *path, size_t size, float *scale)
{
    if (!spec || !path || !scale || size == 0) return dl_fail(DL_ERR_ARG, "sd_lora_parse_spec: NULL argument");
    const char *colon = strrchr(spec, ':');
    size_t n = strlen(spec);
    *scale = 1.0f;
    if (colon && !strchr(colon, '/')) {   /* a ':' inside a folder name is part of the path */
        char *end;
        float v = strtof(colon + 1, &end);
        if (end == colon + 1 || *end || !isfinite(v))
            return dl_fail(DL_ERR_ARG, "LoRA spec '%s': the scale after ':' must be a number (FILE[:scale])", spec);
        *scale = v;
        n = (size_t)(colon - spec);
    }
    if (n == 0) return dl_fail(DL_ERR_ARG, "LoRA spec '%s': no file name (FILE[:scale])", spec);
    if (n >= size) return dl_fail(DL_ERR_ARG, "LoRA spec '%s': path too long", spec);
    memcpy(path, spec, n);
    path[n] = 0;
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Lists, merging, the two ways of applying                            */

void sd_lora_list_init(sd_lora_list *L) { memset(L, 0, sizeof *L); }

dl_status sd_lora_list_add_loaded(sd_lora_list *L, sd_lora *l)
{
    if (L->count == SD_LORA_MAX) return dl_fail(DL_ERR_ARG, "sd_lora: more than %d LoRAs", SD_LORA_MAX);
    sd_lora *copy = malloc(sizeof *copy);
    if (!copy) return dl_fail(DL_ERR_MEMORY, "sd_lora: out of memory");
    *copy = *l;
    memset(l, 0, sizeof *l);
    L->items[L->count++] = copy;
    return DL_OK;
}

dl_status sd_lora_list_add(sd_lora_list *L, const char *spec, sd_weights *model)
{
    char path[512];
    float scale = 1.0f;
    DL_TRY(sd_lora_parse_spec(spec, path, sizeof path, &scale));
    if (L->count == SD_LORA_MAX) return dl_fail(DL_ERR_ARG, "sd_lora: more than %d LoRAs", SD_LORA_MAX);
    sd_lora l;
    DL_TRY(sd_lora_load(&l, path, model, scale));
    dl_status st = sd_lora_list_add_loaded(L, &l);
    if (st != DL_OK) sd_lora_free(&l);
    return st;
}

void sd_lora_list_free(sd_lora_list *L)
{
    sd_lora_remove(L);
    for (int i = 0; i < L->count; i++) {
        sd_lora_free(L->items[i]);
        free(L->items[i]);
    }
    memset(L, 0, sizeof *L);
}

int sd_lora_list_unmatched(const sd_lora_list *L)
{
    int n = 0;
    for (int i = 0; i < L->count; i++) n += L->items[i]->n_unmatched;
    return n;
}

dl_status sd_lora_merge_into(const sd_lora_list *L, sd_part part, const char *name, dl_tensor *W, int *applied)
{
    if (applied) *applied = 0;
    for (int i = 0; i < L->count; i++) {
        const sd_lora *l = L->items[i];
        int first, n = sd_lora_find(l, part, name, &first);
        for (int j = first; j < first + n; j++) {
            const sd_lora_module *m = &l->modules[j];
            if (W->numel != m->out * m->in || W->shape[0] != m->out)
                return dl_fail(DL_ERR_SHAPE, "sd_lora: %s weight '%s' has %lld values, the LoRA of %s makes "
                               "[%lld, %lld]", sd_part_names[part], name, (long long)W->numel, l->path,
                               (long long)m->out, (long long)m->in);
            float coef = l->scale * m->alpha / (float)m->rank;
            if (coef == 0.0f) continue;   /* scale 0: exactly the original */
            sd_lora_add_delta(W->data, m->up, m->down, m->out, m->in, m->rank, coef);
            if (applied) (*applied)++;
        }
    }
    return DL_OK;
}

static int list_targets(const sd_lora_list *L, sd_part part, const char *name)
{
    for (int i = 0; i < L->count; i++)
        if (sd_lora_find(L->items[i], part, name, NULL) > 0) return 1;
    return 0;
}

/* On the fly: replace the fetched tensor by an owned copy + deltas. */
static dl_status patch_on_the_fly(void *ctx, sd_part part, const char *name, dl_tensor *t)
{
    const sd_lora_list *L = ctx;
    if (!list_targets(L, part, name)) return DL_OK;
    dl_tensor copy;
    DL_TRY(dl_tensor_alloc(&copy, t->ndim, t->shape));
    memcpy(copy.data, t->data, (size_t)t->numel * sizeof(float));
    dl_status st = sd_lora_merge_into(L, part, name, &copy, NULL);
    if (st != DL_OK) {
        dl_tensor_free(&copy);
        return st;
    }
    dl_tensor_free(t);
    *t = copy;
    return DL_OK;
}

/* Merged: the precomputed copies, sorted by (part, name). */
typedef struct {
    sd_part   part;
    char      name[256];
    dl_tensor w;
} fused_weight;

struct sd_lora_fused {
    int           n;
    fused_weight *items;
};

static int fused_cmp(const void *a, const void *b)
{
    const fused_weight *x = a, *y = b;
    if (x->part != y->part) return x->part < y->part ? -1 : 1;
    return strcmp(x->name, y->name);
}

static dl_status patch_fused(void *ctx, sd_part part, const char *name, dl_tensor *t)
{
    const sd_lora_fused *F = ((const sd_lora_list *)ctx)->fused;
    fused_weight key;
    key.part = part;
    snprintf(key.name, sizeof key.name, "%s", name);
    const fused_weight *fw = bsearch(&key, F->items, (size_t)F->n, sizeof *F->items, fused_cmp);
    if (!fw) return DL_OK;
    dl_tensor view;
    DL_TRY(dl_tensor_view(&view, fw->w.data, t->ndim, t->shape));   /* same numel: checked at fuse time */
    dl_tensor_free(t);
    *t = view;
    return DL_OK;
}

static void free_fused(sd_lora_fused *F)
{
    if (!F) return;
    for (int i = 0; i < F->n; i++) dl_tensor_free(&F->items[i].w);
    free(F->items);
    free(F);
}

void sd_lora_remove(sd_lora_list *L)
{
    if (L->attached) sd_weights_set_patch(L->attached, NULL, NULL);
    L->attached = NULL;
    free_fused(L->fused);
    L->fused = NULL;
}

void sd_lora_unfuse(sd_lora_list *L) { sd_lora_remove(L); }

dl_status sd_lora_apply(sd_lora_list *L, sd_weights *w)
{
    if (!L || !w) return dl_fail(DL_ERR_ARG, "sd_lora_apply: NULL argument");
    sd_lora_remove(L);
    L->attached = w;
    sd_weights_set_patch(w, patch_on_the_fly, L);
    return DL_OK;
}

/* Every weight any LoRA of the list changes, read from the checkpoint and
 * merged into an owned copy. */
static dl_status build_fused(const sd_lora_list *L, sd_weights *w, sd_lora_fused *F)
{
    int total = 0;
    for (int i = 0; i < L->count; i++) total += L->items[i]->n_modules;
    F->items = calloc((size_t)total + 1, sizeof *F->items);
    if (!F->items) return dl_fail(DL_ERR_MEMORY, "sd_lora_fuse: out of memory");
    for (int i = 0; i < L->count; i++)
        for (int j = 0; j < L->items[i]->n_modules; j++) {
            const sd_lora_module *m = &L->items[i]->modules[j];
            fused_weight *fw = &F->items[F->n];
            fw->part = m->part;
            snprintf(fw->name, sizeof fw->name, "%s", m->target);
            int seen = 0;   /* already merged (another LoRA, or a duplicate module)? */
            for (int k = 0; k < F->n && !seen; k++) seen = fused_cmp(&F->items[k], fw) == 0;
            if (seen) continue;
            int ndim;
            int64_t shape[8];
            DL_TRY(sd_weights_shape(w, m->part, m->target, &ndim, shape));
            if (ndim < 1 || ndim > DL_MAX_DIMS)
                return dl_fail(DL_ERR_SHAPE, "sd_lora_fuse: %s weight '%s' has %d dims", sd_part_names[m->part],
                               m->target, ndim);
            dl_tensor orig;
            DL_TRY(sd_weights_get(w, m->part, m->target, ndim, shape, &orig));   /* unpatched: view or copy */
            dl_status st = dl_tensor_alloc(&fw->w, ndim, shape);
            if (st == DL_OK) {
                memcpy(fw->w.data, orig.data, (size_t)orig.numel * sizeof(float));
                F->n++;   /* owned by F from here on */
                st = sd_lora_merge_into(L, m->part, m->target, &fw->w, NULL);
            }
            dl_tensor_free(&orig);
            DL_TRY(st);
        }
    qsort(F->items, (size_t)F->n, sizeof *F->items, fused_cmp);
    return DL_OK;
}

dl_status sd_lora_fuse(sd_lora_list *L, sd_weights *w)
{
    if (!L || !w) return dl_fail(DL_ERR_ARG, "sd_lora_fuse: NULL argument");
    sd_lora_remove(L);   /* read the checkpoint's own values */
    sd_lora_fused *F = calloc(1, sizeof *F);
    if (!F) return dl_fail(DL_ERR_MEMORY, "sd_lora_fuse: out of memory");
    dl_status st = build_fused(L, w, F);
    if (st != DL_OK) {
        free_fused(F);
        return st;
    }
    L->fused = F;
    L->attached = w;
    sd_weights_set_patch(w, patch_fused, L);
    return DL_OK;
}
