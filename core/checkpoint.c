/* checkpoint.c - training checkpoints as safetensors (see checkpoint.h).
 *
 * Loading checks everything first (names, shapes, dtypes, sizes) and only
 * then copies, so a bad file leaves the model as it was.
 */
#include "checkpoint.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

#define NAME_MAX_LEN (DL_PARAM_NAME_MAX + 16)

/* ------------------------------------------------------------------ */
/* Saving */

static dl_status add_prefixed(dl_st_writer *w, const char *prefix, const char *name, const dl_tensor *t)
{
    char full[NAME_MAX_LEN];
    snprintf(full, sizeof full, "%s%s", prefix, name);
    return dl_st_writer_add(w, full, t);
}

static dl_status set_meta_i64(dl_st_writer *w, const char *key, int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%" PRId64, v);
    return dl_st_writer_set_metadata(w, key, buf);
}

/* The rng struct with its padding bytes zeroed, so the file is deterministic. */
static void rng_bytes(const dl_rng *r, dl_rng *clean)
{
    memset(clean, 0, sizeof *clean);
    memcpy(clean->state, r->state, sizeof r->state);
    clean->index = r->index;
    clean->seed = r->seed;
    clean->has_next_normal_f64 = r->has_next_normal_f64;
    clean->next_normal_f64 = r->next_normal_f64;
}

static dl_status fill_writer(dl_st_writer *w, const dl_param_list *params, const dl_ema *ema,
                             const dl_adamw *opt, const dl_rng *rng, int64_t step,
                             const char *config_json, int ema_as_weights)
{
    if (ema && ema->count != params->count)
        return dl_fail(DL_ERR_ARG, "checkpoint: EMA has %d tensors, the model %d parameters", ema->count,
                       params->count);
    if (opt && opt->count != params->count)
        return dl_fail(DL_ERR_ARG, "checkpoint: AdamW has %d moments, the model %d parameters", opt->count,
                       params->count);
    for (int i = 0; i < params->count; i++) {
        const dl_param *p = params->items[i];
        DL_TRY(add_prefixed(w, "", p->name, ema_as_weights ? &ema->shadow[i] : &p->value));
        if (ema && !ema_as_weights) DL_TRY(add_prefixed(w, "ema.", p->name, &ema->shadow[i]));
        if (opt) {
            DL_TRY(add_prefixed(w, "optim.m.", p->name, &opt->m[i]));
            DL_TRY(add_prefixed(w, "optim.v.", p->name, &opt->v[i]));
        }
    }
    if (rng) {
        dl_rng clean;
        rng_bytes(rng, &clean);
        DL_TRY(dl_st_writer_add_raw(w, "rng_state", DL_DTYPE_U8, 1, (const int64_t[]){(int64_t)sizeof clean},
                                    &clean));
    }
    DL_TRY(dl_st_writer_set_metadata(w, "format", DL_CHECKPOINT_FORMAT));
    DL_TRY(dl_st_writer_set_metadata(w, "difflab_config", config_json ? config_json : "{}"));
    DL_TRY(dl_st_writer_set_metadata(w, "weights", ema_as_weights ? "ema" : "live"));
    DL_TRY(set_meta_i64(w, "step", step));
    if (opt) DL_TRY(set_meta_i64(w, "optim_step", opt->step));
    return DL_OK;
}

static dl_status save_common(const char *path, const dl_param_list *params, const dl_ema *ema,
                             const dl_adamw *opt, const dl_rng *rng, int64_t step,
                             const char *config_json, int ema_as_weights)
{
    dl_st_writer w;
    DL_TRY(dl_st_writer_init(&w));
    dl_status s = fill_writer(&w, params, ema, opt, rng, step, config_json, ema_as_weights);
    if (s == DL_OK) s = dl_st_writer_save(&w, path);
    dl_st_writer_free(&w);
    return s;
}

dl_status dl_checkpoint_save(const char *path, const dl_param_list *params, const dl_ema *ema,
                             const dl_adamw *opt, const dl_rng *rng, int64_t step,
                             const char *config_json)
{
    return save_common(path, params, ema, opt, rng, step, config_json, 0);
}

dl_status dl_checkpoint_save_ema_weights(const char *path, const dl_param_list *params,
                                         const dl_ema *ema, int64_t step, const char *config_json)
{
    if (!ema) return dl_fail(DL_ERR_ARG, "checkpoint: no EMA to save to %s", path);
    return save_common(path, params, ema, NULL, NULL, step, config_json, 1);
}

/* ------------------------------------------------------------------ */
/* Loading */

static const char *shape_text(int ndim, const int64_t *shape, char *buf, size_t size)
{
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
    return buf;
}

/* The entry prefix+name must exist, hold floats and have the tensor's shape. */
static dl_status check_entry(const dl_safetensors *f, const char *prefix, const dl_param *p,
                             const dl_st_entry **out)
{
    char full[NAME_MAX_LEN];
    snprintf(full, sizeof full, "%s%s", prefix, p->name);
    const dl_st_entry *e = dl_st_find(f, full);
    if (!e)
        return dl_fail(DL_ERR_FORMAT, "checkpoint %s: wrong architecture: tensor '%s' is missing "
                       "(the checkpoint was made for another model config)", f->path, full);
    int same = e->ndim == p->value.ndim;
    for (int d = 0; same && d < e->ndim; d++) same = e->shape[d] == p->value.shape[d];
    if (!same) {
        char a[96], b[96];
        return dl_fail(DL_ERR_FORMAT, "checkpoint %s: wrong architecture: tensor '%s' has shape %s in "
                       "the file, the model wants %s", f->path, full, shape_text(e->ndim, e->shape, a, sizeof a),
                       shape_text(p->value.ndim, p->value.shape, b, sizeof b));
    }
    if (e->dtype != DL_DTYPE_F32 && e->dtype != DL_DTYPE_F16 && e->dtype != DL_DTYPE_BF16 &&
        e->dtype != DL_DTYPE_F64)
        return dl_fail(DL_ERR_FORMAT, "checkpoint %s: tensor '%s' has dtype %s, expected floats", f->path,
                       full, dl_dtype_names[e->dtype]);
    *out = e;
    return DL_OK;
}

static int has_prefix(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

/* Does the file hold any tensor whose name starts with prefix? */
static int file_has_prefix(const dl_safetensors *f, const char *prefix)
{
    for (int i = 0; i < f->count; i++)
        if (has_prefix(f->entries[i].name, prefix)) return 1;
    return 0;
}

/* All entries for one "prefix": [count] pointers, checked. */
static dl_status check_group(const dl_safetensors *f, const char *prefix, const dl_param_list *params,
                             const dl_st_entry **entries)
{
    for (int i = 0; i < params->count; i++) DL_TRY(check_entry(f, prefix, params->items[i], &entries[i]));
    return DL_OK;
}

static dl_status read_i64_meta(const dl_safetensors *f, const char *key, int64_t *out)
{
    char buf[64];
    *out = 0;
    if (!dl_st_metadata_get(f, key, buf, sizeof buf)) return DL_OK;
    char *end;
    long long v = strtoll(buf, &end, 10);
    if (end == buf || *end) return dl_fail(DL_ERR_FORMAT, "checkpoint %s: metadata '%s' = '%s' is not an integer",
                                           f->path, key, buf);
    *out = v;
    return DL_OK;
}

static dl_status get_config(const dl_safetensors *f, char *config_json, size_t config_size, int required)
{
    if (!config_json || !config_size) return DL_OK;
    config_json[0] = 0;
    if (!dl_st_metadata_get(f, "difflab_config", config_json, config_size)) {
        if (required) return dl_fail(DL_ERR_FORMAT, "checkpoint %s: no 'difflab_config' metadata", f->path);
        return DL_OK;
    }
    if (strlen(config_json) + 1 >= config_size)
        return dl_fail(DL_ERR_ARG, "checkpoint %s: the config does not fit in %zu bytes", f->path, config_size);
    return DL_OK;
}

static dl_status load_checked(dl_safetensors *f, dl_param_list *params, dl_ema *ema, dl_adamw *opt,
                              dl_rng *rng, int64_t *step, char *config_json, size_t config_size,
                              const dl_st_entry **ents /* [4 * count] */)
{
    const int n = params->count;
    if (ema && ema->count != n)
        return dl_fail(DL_ERR_ARG, "checkpoint: EMA has %d tensors, the model %d parameters", ema->count, n);
    if (opt && opt->count != n)
        return dl_fail(DL_ERR_ARG, "checkpoint: AdamW has %d moments, the model %d parameters", opt->count, n);

    /* 1. every parameter is there with its shape ... */
    const dl_st_entry **w = ents, **e = ents + n, **m = ents + 2 * n, **v = ents + 3 * n;
    DL_TRY(check_group(f, "", params, w));
    /* ... and every plain tensor of the file is a parameter */
    for (int i = 0; i < f->count; i++) {
        const char *name = f->entries[i].name;
        if (has_prefix(name, "ema.") || has_prefix(name, "optim.") || !strcmp(name, "rng_state")) continue;
        if (!dl_params_find(params, name))
            return dl_fail(DL_ERR_FORMAT, "checkpoint %s: wrong architecture: the file has tensor '%s' "
                           "that the model does not have", f->path, name);
    }
    /* 2. optional parts: all or nothing */
    int has_ema = ema && file_has_prefix(f, "ema.");
    int has_opt = opt && file_has_prefix(f, "optim.");
    if (has_ema) DL_TRY(check_group(f, "ema.", params, e));
    if (has_opt) {
        DL_TRY(check_group(f, "optim.m.", params, m));
        DL_TRY(check_group(f, "optim.v.", params, v));
    }
    const dl_st_entry *r = rng ? dl_st_find(f, "rng_state") : NULL;
    dl_rng loaded_rng;
    if (r) {
        if (r->dtype != DL_DTYPE_U8 || r->nbytes != sizeof loaded_rng)
            return dl_fail(DL_ERR_FORMAT, "checkpoint %s: 'rng_state' has %zu bytes of %s, expected %zu of U8 "
                           "(saved by another build?)", f->path, r->nbytes, dl_dtype_names[r->dtype],
                           sizeof loaded_rng);
        memcpy(&loaded_rng, f->data + r->offset, sizeof loaded_rng);
        if (loaded_rng.index < 0 || loaded_rng.index > DL_MT_N)
            return dl_fail(DL_ERR_FORMAT, "checkpoint %s: 'rng_state' is corrupt (index %d)", f->path,
                           loaded_rng.index);
    }
    int64_t file_step, optim_step;
    DL_TRY(read_i64_meta(f, "step", &file_step));
    DL_TRY(read_i64_meta(f, "optim_step", &optim_step));
    DL_TRY(get_config(f, config_json, config_size, 0));

    /* 3. everything checked: copy */
    for (int i = 0; i < n; i++) {
        DL_TRY(dl_st_read_f32(f, w[i], params->items[i]->value.data));
        if (ema) {
            if (has_ema) DL_TRY(dl_st_read_f32(f, e[i], ema->shadow[i].data));
            else DL_TRY(dl_tensor_copy(&ema->shadow[i], &params->items[i]->value));
        }
        if (opt) {
            if (has_opt) {
                DL_TRY(dl_st_read_f32(f, m[i], opt->m[i].data));
                DL_TRY(dl_st_read_f32(f, v[i], opt->v[i].data));
            } else {
                dl_tensor_fill(&opt->m[i], 0.0f);
                dl_tensor_fill(&opt->v[i], 0.0f);
            }
        }
    }
    if (opt) opt->step = has_opt ? optim_step : 0;
    if (r) *rng = loaded_rng;
    if (step) *step = file_step;
    return DL_OK;
}

dl_status dl_checkpoint_load(const char *path, dl_param_list *params, dl_ema *ema, dl_adamw *opt,
                             dl_rng *rng, int64_t *step, char *config_json, size_t config_size)
{
    if (!params) return dl_fail(DL_ERR_ARG, "checkpoint: no parameters to load %s into", path);
    dl_safetensors f;
    DL_TRY(dl_st_open(&f, path));
    const dl_st_entry **ents = calloc((size_t)4 * (size_t)(params->count + 1), sizeof *ents);
    if (!ents) {
        dl_st_close(&f);
        return dl_fail(DL_ERR_MEMORY, "checkpoint: out of memory");
    }
    dl_status s = load_checked(&f, params, ema, opt, rng, step, config_json, config_size, ents);
    free(ents);
    dl_st_close(&f);
    return s;
}

dl_status dl_checkpoint_read_config(const char *path, char *config_json, size_t config_size)
{
    if (!config_json || !config_size) return dl_fail(DL_ERR_ARG, "checkpoint: no buffer for the config");
    dl_safetensors f;
    DL_TRY(dl_st_open(&f, path));
    dl_status s = get_config(&f, config_json, config_size, 1);
    dl_st_close(&f);
    return s;
}
