/* scheduler_config.c - see scheduler_config.h */
#include "scheduler_config.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct { const char *cls; dl_sampler_kind kind; } classes[] = {
    {"DDPMScheduler", DL_SAMPLER_DDPM}, {"DDIMScheduler", DL_SAMPLER_DDIM}, {"PNDMScheduler", DL_SAMPLER_PNDM},
    {"LMSDiscreteScheduler", DL_SAMPLER_LMS}, {"EulerDiscreteScheduler", DL_SAMPLER_EULER},
    {"EulerAncestralDiscreteScheduler", DL_SAMPLER_EULER_A}, {"HeunDiscreteScheduler", DL_SAMPLER_HEUN},
    {"KDPM2DiscreteScheduler", DL_SAMPLER_KDPM2}, {"KDPM2AncestralDiscreteScheduler", DL_SAMPLER_KDPM2_A},
    {"DPMSolverMultistepScheduler", DL_SAMPLER_DPMPP_2M}, {"UniPCMultistepScheduler", DL_SAMPLER_UNIPC},
    {"LCMScheduler", DL_SAMPLER_LCM}};

/* ---- typed access to one key, with errors that name it ----------------- */

typedef struct { const cJSON *root; const char *src; } doc;

static dl_status bad_type(const doc *d, const char *key, const char *want)
{
    return dl_fail(DL_ERR_FORMAT, "%s: \"%s\" must be %s", d->src, key, want);
}

/* 1 if the key is there (and not null), 0 if absent or null */
static const cJSON *item(const doc *d, const char *key)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(d->root, key);
    return (it && !cJSON_IsNull(it)) ? it : NULL;
}

static dl_status get_bool(const doc *d, const char *key, int *out, int *found)
{
    const cJSON *it = item(d, key);
    *found = it != NULL;
    if (!it) return DL_OK;
    if (!cJSON_IsBool(it)) return bad_type(d, key, "true or false");
    *out = cJSON_IsTrue(it);
    return DL_OK;
}

static dl_status get_number(const doc *d, const char *key, double *out, int *found)
{
    const cJSON *it = item(d, key);
    *found = it != NULL;
    if (!it) return DL_OK;
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble)) return bad_type(d, key, "a number");
    *out = it->valuedouble;
    return DL_OK;
}

static dl_status get_int(const doc *d, const char *key, int *out, int lo, int hi, int *found)
{
    double v = 0;
    DL_TRY(get_number(d, key, &v, found));
    if (!*found) return DL_OK;
    if (v != floor(v) || v < lo || v > hi)
        return dl_fail(DL_ERR_FORMAT, "%s: \"%s\" = %g, must be an integer in %d..%d", d->src, key, v, lo, hi);
    *out = (int)v;
    return DL_OK;
}

static dl_status get_string(const doc *d, const char *key, char *out, size_t n, int *found)
{
    const cJSON *it = item(d, key);
    *found = it != NULL;
    if (!it) return DL_OK;
    if (!cJSON_IsString(it)) return bad_type(d, key, "a string");
    if (strlen(it->valuestring) >= n)
        return dl_fail(DL_ERR_FORMAT, "%s: \"%s\" = \"%.40s...\" is too long", d->src, key, it->valuestring);
    snprintf(out, n, "%s", it->valuestring);
    return DL_OK;
}

/* A key that must be absent, null or `ok_value` (false / "linear" ...). */
static dl_status must_be_false(const doc *d, const char *key, const char *why)
{
    int v = 0, found;
    DL_TRY(get_bool(d, key, &v, &found));
    if (found && v) return dl_fail(DL_ERR_FORMAT, "%s: \"%s\": true is not supported (%s)", d->src, key, why);
    return DL_OK;
}

static dl_status must_be_string(const doc *d, const char *key, const char *ok1, const char *ok2)
{
    char v[64];
    int found;
    DL_TRY(get_string(d, key, v, sizeof v, &found));
    if (found && strcmp(v, ok1) && !(ok2 && !strcmp(v, ok2)))
        return dl_fail(DL_ERR_FORMAT, "%s: \"%s\": \"%s\" is not supported (only \"%s\"%s%s%s)", d->src, key, v, ok1,
                       ok2 ? " or \"" : "", ok2 ? ok2 : "", ok2 ? "\"" : "");
    return DL_OK;
}

/* ---- the whole file ---------------------------------------------------- */

static dl_status read_keys(const doc *d, dl_scheduler_config *c)
{
    int found;
    char name[64];
    DL_TRY(get_string(d, "_class_name", c->class_name, sizeof c->class_name, &found));
    /* the training schedule */
    DL_TRY(get_int(d, "num_train_timesteps", &c->num_train_timesteps, 1, 100000, &found));
    DL_TRY(get_number(d, "beta_start", &c->beta_start, &found));
    DL_TRY(get_number(d, "beta_end", &c->beta_end, &found));
    DL_TRY(get_string(d, "beta_schedule", name, sizeof name, &found));
    if (found && dl_schedule_kind_from_name(name, &c->beta_schedule) != DL_OK)
        return dl_fail(DL_ERR_FORMAT, "%s: \"beta_schedule\": \"%s\" is not supported (linear, scaled_linear, "
                       "squaredcos_cap_v2)", d->src, name);
    if (item(d, "trained_betas"))
        return dl_fail(DL_ERR_FORMAT, "%s: \"trained_betas\": explicit betas are not supported", d->src);
    /* the sampler keys */
    dl_sampler_config *v = &c->values;
    DL_TRY(get_string(d, "timestep_spacing", name, sizeof name, &found));
    if (found) {
        if (dl_spacing_from_name(name, &v->timestep_spacing) != DL_OK)
            return dl_fail(DL_ERR_FORMAT, "%s: \"timestep_spacing\": \"%s\" is not supported (leading, trailing, "
                           "linspace)", d->src, name);
        c->present |= DL_KEY_TIMESTEP_SPACING;
    }
    DL_TRY(get_string(d, "prediction_type", name, sizeof name, &found));
    if (found) {
        if (dl_prediction_from_name(name, &v->prediction_type) != DL_OK)
            return dl_fail(DL_ERR_FORMAT, "%s: \"prediction_type\": \"%s\" is not supported (epsilon, v_prediction)",
                           d->src, name);
        c->present |= DL_KEY_PREDICTION_TYPE;
    }
    double num = 0;
    DL_TRY(get_int(d, "steps_offset", &v->steps_offset, 0, 100000, &found));
    c->present |= found ? DL_KEY_STEPS_OFFSET : 0;
    DL_TRY(get_bool(d, "set_alpha_to_one", &v->set_alpha_to_one, &found));
    c->present |= found ? DL_KEY_SET_ALPHA_TO_ONE : 0;
    DL_TRY(get_bool(d, "clip_sample", &v->clip_sample, &found));
    c->present |= found ? DL_KEY_CLIP_SAMPLE : 0;
    DL_TRY(get_number(d, "clip_sample_range", &num, &found));
    if (found) { v->clip_sample_range = (float)num; c->present |= DL_KEY_CLIP_SAMPLE_RANGE; }
    DL_TRY(get_bool(d, "use_karras_sigmas", &v->use_karras_sigmas, &found));
    c->present |= found ? DL_KEY_USE_KARRAS_SIGMAS : 0;
    DL_TRY(get_int(d, "solver_order", &v->solver_order, 1, 3, &found));
    c->present |= found ? DL_KEY_SOLVER_ORDER : 0;
    DL_TRY(get_bool(d, "lower_order_final", &v->lower_order_final, &found));
    c->present |= found ? DL_KEY_LOWER_ORDER_FINAL : 0;
    DL_TRY(get_int(d, "original_inference_steps", &v->original_inference_steps, 1, 100000, &found));
    c->present |= found ? DL_KEY_ORIGINAL_INFERENCE_STEPS : 0;
    DL_TRY(get_number(d, "timestep_scaling", &num, &found));
    if (found) { v->timestep_scaling = (float)num; c->present |= DL_KEY_TIMESTEP_SCALING; }
    DL_TRY(get_bool(d, "skip_prk_steps", &c->skip_prk_steps, &found));
    c->present |= found ? DL_KEY_SKIP_PRK_STEPS : 0;
    DL_TRY(get_string(d, "solver_type", c->solver_type, sizeof c->solver_type, &found));
    c->present |= found ? DL_KEY_SOLVER_TYPE : 0;
    DL_TRY(get_string(d, "algorithm_type", c->algorithm_type, sizeof c->algorithm_type, &found));
    c->present |= found ? DL_KEY_ALGORITHM_TYPE : 0;
    DL_TRY(get_string(d, "final_sigmas_type", c->final_sigmas_type, sizeof c->final_sigmas_type, &found));
    c->present |= found ? DL_KEY_FINAL_SIGMAS_TYPE : 0;
    /* options these samplers do not have */
    DL_TRY(must_be_false(d, "thresholding", "dynamic thresholding"));
    DL_TRY(must_be_false(d, "rescale_betas_zero_snr", "zero-terminal-SNR schedules"));
    DL_TRY(must_be_false(d, "use_lu_lambdas", "Lu lambdas"));
    DL_TRY(must_be_false(d, "euler_at_final", "an Euler final step"));
    DL_TRY(must_be_false(d, "use_exponential_sigmas", "exponential sigmas"));
    DL_TRY(must_be_false(d, "use_beta_sigmas", "beta sigmas"));
    DL_TRY(must_be_string(d, "interpolation_type", "linear", NULL));
    DL_TRY(must_be_string(d, "timestep_type", "discrete", NULL));
    DL_TRY(must_be_string(d, "variance_type", "fixed_small", NULL));
    if (item(d, "sigma_min") || item(d, "sigma_max"))
        return dl_fail(DL_ERR_FORMAT, "%s: \"sigma_min\" / \"sigma_max\": custom sigma bounds are not supported", d->src);
    int px0 = 1;
    DL_TRY(get_bool(d, "predict_x0", &px0, &found));
    if (!px0) return dl_fail(DL_ERR_FORMAT, "%s: \"predict_x0\": false is not supported (UniPC predicts x0)", d->src);
    const cJSON *dc = item(d, "disable_corrector");
    if (dc && !(cJSON_IsArray(dc) && cJSON_GetArraySize(dc) == 0))
        return dl_fail(DL_ERR_FORMAT, "%s: \"disable_corrector\": only an empty list is supported", d->src);
    /* the class */
    c->has_kind = 0;
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++)
        if (!strcmp(c->class_name, classes[i].cls)) {
            c->has_kind = 1;
            c->kind = classes[i].kind;
            if (c->kind == DL_SAMPLER_DPMPP_2M && v->use_karras_sigmas) c->kind = DL_SAMPLER_DPMPP_2M_KARRAS;
        }
    return DL_OK;
}

static void defaults(dl_scheduler_config *c)
{
    memset(c, 0, sizeof *c);
    c->beta_schedule = DL_SCHEDULE_LINEAR;   /* diffusers' class defaults */
    c->num_train_timesteps = 1000;
    c->beta_start = 0.0001;
    c->beta_end = 0.02;
    c->values = dl_sampler_config_default();
    c->skip_prk_steps = 0;
}

dl_status dl_scheduler_config_parse(const char *json, const char *source, dl_scheduler_config *out)
{
    defaults(out);
    const char *src = source ? source : "scheduler config";
    if (!json) return dl_fail(DL_ERR_ARG, "%s: no text", src);
    cJSON *root = cJSON_Parse(json);
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        long off = at && at >= json ? (long)(at - json) : -1;
        return dl_fail(DL_ERR_FORMAT, "%s: not valid JSON (near character %ld)", src, off);
    }
    dl_status st = cJSON_IsObject(root) ? DL_OK : dl_fail(DL_ERR_FORMAT, "%s: not a JSON object", src);
    doc d = {root, src};
    if (st == DL_OK) st = read_keys(&d, out);
    cJSON_Delete(root);
    return st;
}

dl_status dl_scheduler_config_load(const char *path, dl_scheduler_config *out)
{
    defaults(out);
    FILE *f = fopen(path, "rb");
    if (!f) return dl_fail(DL_ERR_IO, "%s: cannot open", path);
    char *text = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size < 0 || size > (1 << 20) || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return dl_fail(DL_ERR_IO, "%s: cannot read (or larger than 1 MB)", path);
    }
    text = malloc((size_t)size + 1);
    size_t got = text ? fread(text, 1, (size_t)size, f) : 0;
    fclose(f);
    if (!text || got != (size_t)size) {
        free(text);
        return dl_fail(DL_ERR_IO, "%s: cannot read", path);
    }
    text[size] = 0;
    dl_status st = dl_scheduler_config_parse(text, path, out);
    free(text);
    return st;
}

void dl_scheduler_config_sd15(dl_scheduler_config *out)
{
    static const char *sd15 =
        "{\"_class_name\": \"PNDMScheduler\", \"_diffusers_version\": \"0.27.2\", \"beta_end\": 0.012,"
        " \"beta_schedule\": \"scaled_linear\", \"beta_start\": 0.00085, \"num_train_timesteps\": 1000,"
        " \"prediction_type\": \"epsilon\", \"set_alpha_to_one\": false, \"skip_prk_steps\": true,"
        " \"steps_offset\": 1, \"timestep_spacing\": \"leading\", \"trained_betas\": null, \"clip_sample\": false}";
    dl_scheduler_config_parse(sd15, "sd15", out);   /* a fixed, valid text */
}

dl_status dl_scheduler_config_for(const dl_scheduler_config *c, dl_sampler_kind kind, dl_sampler_config *out)
{
    if ((unsigned)kind >= DL_SAMPLER_COUNT) return dl_fail(DL_ERR_ARG, "scheduler config: bad sampler kind %d", (int)kind);
    dl_sampler_config r = dl_sampler_config_class_default(kind);
    const dl_sampler_config *v = &c->values;
    unsigned p = c->present;
    if (p & DL_KEY_TIMESTEP_SPACING) r.timestep_spacing = v->timestep_spacing;
    if (p & DL_KEY_STEPS_OFFSET) r.steps_offset = v->steps_offset;
    if (p & DL_KEY_PREDICTION_TYPE) r.prediction_type = v->prediction_type;
    if (p & DL_KEY_SET_ALPHA_TO_ONE) r.set_alpha_to_one = v->set_alpha_to_one;
    if (p & DL_KEY_CLIP_SAMPLE) r.clip_sample = v->clip_sample;
    if (p & DL_KEY_CLIP_SAMPLE_RANGE) r.clip_sample_range = v->clip_sample_range;
    if (p & DL_KEY_USE_KARRAS_SIGMAS) r.use_karras_sigmas = v->use_karras_sigmas;
    if (kind == DL_SAMPLER_DPMPP_2M_KARRAS) r.use_karras_sigmas = 1;    /* the name says so */
    if (p & DL_KEY_SOLVER_ORDER) r.solver_order = v->solver_order;
    if (p & DL_KEY_LOWER_ORDER_FINAL) r.lower_order_final = v->lower_order_final;
    if (p & DL_KEY_ORIGINAL_INFERENCE_STEPS) r.original_inference_steps = v->original_inference_steps;
    if (p & DL_KEY_TIMESTEP_SCALING) r.timestep_scaling = v->timestep_scaling;
    const int dpm = kind == DL_SAMPLER_DPMPP_2M || kind == DL_SAMPLER_DPMPP_2M_KARRAS;
    const char *name = dl_sampler_names[kind];
    if (kind == DL_SAMPLER_PNDM && (p & DL_KEY_SKIP_PRK_STEPS) && !c->skip_prk_steps)
        return dl_fail(DL_ERR_FORMAT, "scheduler config: \"skip_prk_steps\": false is not supported (pndm runs PLMS only)");
    if (dpm || kind == DL_SAMPLER_UNIPC) {
        if (r.solver_order > 2)
            return dl_fail(DL_ERR_FORMAT, "scheduler config: \"solver_order\": %d is not supported by %s (1 or 2)",
                           r.solver_order, name);
    }
    if (dpm && (p & DL_KEY_SOLVER_TYPE) && strcmp(c->solver_type, "midpoint"))
        return dl_fail(DL_ERR_FORMAT, "scheduler config: \"solver_type\": \"%s\" is not supported by %s (midpoint)",
                       c->solver_type, name);
    if (dpm && (p & DL_KEY_ALGORITHM_TYPE) && strcmp(c->algorithm_type, "dpmsolver++"))
        return dl_fail(DL_ERR_FORMAT, "scheduler config: \"algorithm_type\": \"%s\" is not supported by %s (dpmsolver++)",
                       c->algorithm_type, name);
    if (dpm && (p & DL_KEY_FINAL_SIGMAS_TYPE) && strcmp(c->final_sigmas_type, "zero"))
        return dl_fail(DL_ERR_FORMAT, "scheduler config: \"final_sigmas_type\": \"%s\" is not supported by %s (zero)",
                       c->final_sigmas_type, name);
    if (kind == DL_SAMPLER_UNIPC && (p & DL_KEY_SOLVER_TYPE)) {
        /* diffusers maps the DPM-Solver names onto bh2 */
        if (!strcmp(c->solver_type, "bh1")) r.unipc_bh1 = 1;
        else if (strcmp(c->solver_type, "bh2") && strcmp(c->solver_type, "midpoint") && strcmp(c->solver_type, "heun") &&
                 strcmp(c->solver_type, "logrho"))
            return dl_fail(DL_ERR_FORMAT, "scheduler config: \"solver_type\": \"%s\" is not supported by unipc (bh1, bh2)",
                           c->solver_type);
    }
    *out = r;
    return DL_OK;
}

dl_status dl_scheduler_config_schedule(const dl_scheduler_config *c, dl_schedule *s)
{
    return dl_schedule_init(s, c->beta_schedule, c->num_train_timesteps, c->beta_start, c->beta_end);
}
