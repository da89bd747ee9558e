/* optim.h - what turns gradients into better weights: AdamW, gradient
 * clipping, an exponential moving average (EMA) of the weights and a
 * learning-rate schedule (linear warmup, then cosine decay).
 *
 * One training step of a diffusion model, in this order:
 *
 *     dl_params_zero_grad(params);
 *     ... forward, loss, backward (gradients accumulate into p->grad) ...
 *     float norm = dl_grad_clip(params, 1.0f);               // tame rare huge steps
 *     float lr = dl_lr_warmup_cosine(opt.step, 500, 20000, 1e-3f, 1e-5f);
 *     dl_adamw_step(&opt, params, lr);                       // the weights move
 *     dl_ema_update(&ema, params);                           // a smoothed copy follows
 *
 * and for sampling with the smoothed weights:
 *
 *     dl_ema_swap(&ema, params);  ... sample ...  dl_ema_swap(&ema, params);
 *
 * All formulas are PyTorch's (torch.optim.AdamW, clip_grad_norm_), so a
 * training run can be compared with a PyTorch one step by step.
 */
#ifndef DL_OPTIM_H
#define DL_OPTIM_H

#include <stdint.h>

#include "param.h"

/* ------------------------------------------------------------------ */
/* AdamW (Loshchilov & Hutter), exactly as torch.optim.AdamW (amsgrad off).
 * For every parameter p with gradient g, at step s = 1, 2, 3, ...:
 *
 *     p  = p * (1 - lr * weight_decay)        decoupled weight decay: shrink the
 *                                             weights, independent of the gradient
 *     m  = beta1 * m + (1 - beta1) * g        running mean of the gradient
 *     v  = beta2 * v + (1 - beta2) * g^2      running mean of its square
 *     m_hat = m / (1 - beta1^s)               bias correction: m and v start at 0,
 *     v_hat = v / (1 - beta2^s)               so early averages are too small
 *     p  = p - lr * m_hat / (sqrt(v_hat) + eps)
 *
 * Each weight gets its own step size ~ lr / (typical |g|), so weights with
 * tiny gradients still learn. Typical: lr 1e-3 .. 1e-4, betas 0.9 / 0.999,
 * eps 1e-8, weight_decay 0.01 (PyTorch's default) or 0.
 */
typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    int64_t step;            /* steps taken so far (the s of the last step) */
    dl_tensor *m, *v;        /* [count] moments, same order and shapes as the params */
    int count;
} dl_adamw;

/* Zero moments for every parameter of the list (the list must not change
 * afterwards). lr is the default for dl_adamw_step when it is given lr < 0. */
dl_status dl_adamw_init(dl_adamw *opt, const dl_param_list *params, float lr, float beta1,
                        float beta2, float eps, float weight_decay);
/* One update of all parameters with their current gradients; step++. lr < 0
 * means opt->lr. The list must be the one given to init (same count/shapes). */
dl_status dl_adamw_step(dl_adamw *opt, dl_param_list *params, float lr);
void      dl_adamw_free(dl_adamw *opt);

/* ------------------------------------------------------------------ */
/* torch.nn.utils.clip_grad_norm_(params, max_norm): the L2 norm of ALL
 * gradients together (as if concatenated into one vector),
 *     total = sqrt(sum over params and elements of g^2),
 * and if total > max_norm every gradient is scaled by max_norm / (total + 1e-6)
 * (so the new total is just under max_norm; the direction is unchanged).
 * Returns the total norm BEFORE clipping (worth plotting: spikes show
 * instabilities). max_norm <= 0 only measures. */
float dl_grad_clip(dl_param_list *params, float max_norm);

/* ------------------------------------------------------------------ */
/* EMA of the weights: after each optimizer step
 *     shadow = decay * shadow + (1 - decay) * param
 * The shadow averages the last ~1 / (1 - decay) steps of weights (decay
 * 0.999: ~1000 steps). Its samples are smoother and better than the live
 * weights', which jitter with every minibatch. The shadow starts as a copy
 * of the params. */
typedef struct {
    dl_tensor *shadow;   /* [count], same shapes as the params */
    int count;
    float decay;         /* used by dl_ema_update */
} dl_ema;

dl_status dl_ema_init(dl_ema *ema, const dl_param_list *params, float decay);
/* shadow = decay * shadow + (1 - decay) * param, with ema->decay. */
dl_status dl_ema_update(dl_ema *ema, const dl_param_list *params);
/* The same with an explicit decay (for a warmup, see below). */
dl_status dl_ema_update_decay(dl_ema *ema, const dl_param_list *params, float decay);
/* Optional warmup of the decay: min(max_decay, (1 + step) / (10 + step)).
 * In a short run a decay of 0.999 would keep the random initial weights in
 * the average for too long; this starts at 0.1 and reaches 0.99 after ~900
 * steps, 0.999 after ~9000 (the formula of diffusers' EMAModel without
 * power warmup). step = the number of updates done before this one. */
float dl_ema_warmup_decay(int64_t step, float max_decay);
/* Exchange the shadow and the live weights (values copied, no pointer
 * changes). Call twice to get back where you were. */
void dl_ema_swap(dl_ema *ema, dl_param_list *params);
void dl_ema_free(dl_ema *ema);

/* ------------------------------------------------------------------ */
/* Learning rate at `step` (0-based: the step about to be taken):
 *   warmup:  step < warmup   -> base_lr * (step + 1) / warmup   (linear ramp up:
 *            Adam's first steps are large because v is still small)
 *   then:    p = (step - warmup) / (total - warmup), clamped to [0, 1]
 *            lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2
 *            (cosine decay from base_lr down to min_lr at step `total`,
 *            then it stays at min_lr). */
float dl_lr_warmup_cosine(int64_t step, int64_t warmup, int64_t total, float base_lr, float min_lr);

#endif
