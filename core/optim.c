/* optim.c - AdamW, gradient clipping, EMA, learning-rate schedule (see optim.h).
 *
 * The scalar factors (1 - lr*wd, bias corrections, step size) are computed
 * in double, as PyTorch computes them in Python, and rounded to float once;
 * the per-element arithmetic is float32 in the same order as torch's
 * kernels (mul_, add_, addcmul_, sqrt, div, add_, addcdiv_).
 */
#include "optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Parallel loops only pay off for big tensors. */
#define OPTIM_PARALLEL_MIN 32768

static dl_status alloc_like_params(dl_tensor **out, const dl_param_list *params, const char *what)
{
    *out = NULL;
    if (params->count <= 0) return DL_OK;
    dl_tensor *ts = calloc((size_t)params->count, sizeof *ts);
    if (!ts) return dl_fail(DL_ERR_MEMORY, "%s: out of memory", what);
    for (int i = 0; i < params->count; i++) {
        const dl_tensor *v = &params->items[i]->value;
        if (dl_tensor_alloc(&ts[i], v->ndim, v->shape) != DL_OK) {
            for (int j = 0; j < i; j++) dl_tensor_free(&ts[j]);
            free(ts);
            return dl_fail(DL_ERR_MEMORY, "%s: cannot allocate state for '%s'", what,
                           params->items[i]->name);
        }
    }
    *out = ts;
    return DL_OK;
}

static void free_tensors(dl_tensor *ts, int count)
{
    if (!ts) return;
    for (int i = 0; i < count; i++) dl_tensor_free(&ts[i]);
    free(ts);
}

/* The optimizer/EMA state must match the list it was made for. */
static dl_status check_same_list(const dl_tensor *state, int count, const dl_param_list *params,
                                 const char *what)
{
    if (count != params->count)
        return dl_fail(DL_ERR_ARG, "%s: made for %d parameters, given %d", what, count, params->count);
    for (int i = 0; i < count; i++)
        if (state[i].numel != params->items[i]->value.numel)
            return dl_fail(DL_ERR_SHAPE, "%s: parameter '%s' has %lld values, state has %lld", what,
                           params->items[i]->name, (long long)params->items[i]->value.numel,
                           (long long)state[i].numel);
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* AdamW */

dl_status dl_adamw_init(dl_adamw *opt, const dl_param_list *params, float lr, float beta1,
                        float beta2, float eps, float weight_decay)
{
    memset(opt, 0, sizeof *opt);
    if (!(lr >= 0) || !(beta1 >= 0 && beta1 < 1) || !(beta2 >= 0 && beta2 < 1) || !(eps >= 0) ||
        !(weight_decay >= 0))
        return dl_fail(DL_ERR_ARG, "adamw: bad hyperparameters lr %g betas (%g, %g) eps %g weight_decay %g",
                       lr, beta1, beta2, eps, weight_decay);
    opt->lr = lr;
    opt->beta1 = beta1;
    opt->beta2 = beta2;
    opt->eps = eps;
    opt->weight_decay = weight_decay;
    DL_TRY(alloc_like_params(&opt->m, params, "adamw"));
    dl_status s = alloc_like_params(&opt->v, params, "adamw");
    if (s != DL_OK) {
        free_tensors(opt->m, params->count);
        opt->m = NULL;
        return s;
    }
    opt->count = params->count;
    return DL_OK;
}

dl_status dl_adamw_step(dl_adamw *opt, dl_param_list *params, float lr)
{
    DL_TRY(check_same_list(opt->m, opt->count, params, "adamw"));
    if (lr < 0) lr = opt->lr;
    opt->step++;
    double step = (double)opt->step;
    /* Scalars as torch computes them in Python (double), rounded once. */
    const float decay_factor = (float)(1.0 - (double)lr * opt->weight_decay);
    const float b1 = opt->beta1, one_minus_b1 = (float)(1.0 - (double)opt->beta1);
    const float b2 = opt->beta2, one_minus_b2 = (float)(1.0 - (double)opt->beta2);
    const double bias_correction1 = 1.0 - pow(opt->beta1, step);
    const double bias_correction2 = 1.0 - pow(opt->beta2, step);
    const float neg_step_size = (float)(-(double)lr / bias_correction1);
    const float bc2_sqrt = (float)sqrt(bias_correction2);
    const float eps = opt->eps;

    for (int i = 0; i < params->count; i++) {
        float *p = params->items[i]->value.data;
        const float *g = params->items[i]->grad.data;
        float *m = opt->m[i].data, *v = opt->v[i].data;
        int64_t n = params->items[i]->value.numel;
#pragma omp parallel for if (n >= OPTIM_PARALLEL_MIN && dl_parallel_ok())
        for (int64_t j = 0; j < n; j++) {
            float pj = p[j] * decay_factor;                       /* decoupled weight decay */
            float mj = m[j] * b1 + one_minus_b1 * g[j];           /* mean of g   */
            float vj = v[j] * b2 + one_minus_b2 * g[j] * g[j];    /* mean of g^2 */
            float denom = sqrtf(vj) / bc2_sqrt + eps;             /* sqrt(v_hat) + eps */
            p[j] = pj + neg_step_size * mj / denom;               /* - lr m_hat / denom */
            m[j] = mj;
            v[j] = vj;
        }
    }
    return DL_OK;
}

void dl_adamw_free(dl_adamw *opt)
{
    free_tensors(opt->m, opt->count);
    free_tensors(opt->v, opt->count);
    memset(opt, 0, sizeof *opt);
}

/* ------------------------------------------------------------------ */
/* Gradient clipping */

float dl_grad_clip(dl_param_list *params, float max_norm)
{
    /* Sum of squares in double: millions of small terms. */
    double sumsq = 0.0;
    for (int i = 0; i < params->count; i++) {
        const float *g = params->items[i]->grad.data;
        int64_t n = params->items[i]->grad.numel;
        double s = 0.0;
#pragma omp parallel for reduction(+ : s) if (n >= OPTIM_PARALLEL_MIN && dl_parallel_ok())
        for (int64_t j = 0; j < n; j++) s += (double)g[j] * g[j];
        sumsq += s;
    }
    float total = (float)sqrt(sumsq);
    if (max_norm > 0) {
        float coef = max_norm / (total + 1e-6f);   /* torch: clamp(coef, max = 1) */
        if (coef < 1.0f) {
            for (int i = 0; i < params->count; i++) {
                float *g = params->items[i]->grad.data;
                int64_t n = params->items[i]->grad.numel;
                for (int64_t j = 0; j < n; j++) g[j] *= coef;
            }
        }
    }
    return total;
}

/* ------------------------------------------------------------------ */
/* EMA */

dl_status dl_ema_init(dl_ema *ema, const dl_param_list *params, float decay)
{
    memset(ema, 0, sizeof *ema);
    if (!(decay >= 0 && decay <= 1)) return dl_fail(DL_ERR_ARG, "ema: decay %g is not in [0, 1]", decay);
    DL_TRY(alloc_like_params(&ema->shadow, params, "ema"));
    ema->count = params->count;
    ema->decay = decay;
    for (int i = 0; i < params->count; i++)
        memcpy(ema->shadow[i].data, params->items[i]->value.data,
               sizeof(float) * (size_t)ema->shadow[i].numel);
    return DL_OK;
}

dl_status dl_ema_update_decay(dl_ema *ema, const dl_param_list *params, float decay)
{
    DL_TRY(check_same_list(ema->shadow, ema->count, params, "ema"));
    if (!(decay >= 0 && decay <= 1)) return dl_fail(DL_ERR_ARG, "ema: decay %g is not in [0, 1]", decay);
    const float keep = decay, take = (float)(1.0 - (double)decay);
    for (int i = 0; i < ema->count; i++) {
        float *s = ema->shadow[i].data;
        const float *p = params->items[i]->value.data;
        int64_t n = ema->shadow[i].numel;
#pragma omp parallel for if (n >= OPTIM_PARALLEL_MIN && dl_parallel_ok())
        for (int64_t j = 0; j < n; j++) s[j] = keep * s[j] + take * p[j];
    }
    return DL_OK;
}

dl_status dl_ema_update(dl_ema *ema, const dl_param_list *params)
{
    return dl_ema_update_decay(ema, params, ema->decay);
}

float dl_ema_warmup_decay(int64_t step, float max_decay)
{
    if (step < 0) step = 0;
    double d = (1.0 + (double)step) / (10.0 + (double)step);
    return d < max_decay ? (float)d : max_decay;
}

void dl_ema_swap(dl_ema *ema, dl_param_list *params)
{
    if (check_same_list(ema->shadow, ema->count, params, "ema") != DL_OK) return;
    for (int i = 0; i < ema->count; i++) {
        float *s = ema->shadow[i].data, *p = params->items[i]->value.data;
        int64_t n = ema->shadow[i].numel;
        for (int64_t j = 0; j < n; j++) {
            float t = s[j];
            s[j] = p[j];
            p[j] = t;
        }
    }
}

void dl_ema_free(dl_ema *ema)
{
    free_tensors(ema->shadow, ema->count);
    memset(ema, 0, sizeof *ema);
}

/* ------------------------------------------------------------------ */
/* Learning-rate schedule */

float dl_lr_warmup_cosine(int64_t step, int64_t warmup, int64_t total, float base_lr, float min_lr)
{
    if (step < 0) step = 0;
    if (warmup > 0 && step < warmup) return (float)((double)base_lr * (double)(step + 1) / (double)warmup);
    double span = (double)(total - warmup);
    double p = span > 0 ? (double)(step - warmup) / span : 1.0;
    if (p > 1.0) p = 1.0;
    return (float)(min_lr + ((double)base_lr - min_lr) * 0.5 * (1.0 + cos(M_PI * p)));
}
