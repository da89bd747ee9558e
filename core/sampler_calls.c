/* sampler_calls.c - see sampler_calls.h */
#include "sampler_calls.h"

#include <math.h>

static dl_status zero_model(void *ctx, const dl_tensor *x_t, const float *t, dl_tensor *eps_out)
{
    (void)ctx; (void)x_t; (void)t;
    dl_tensor_fill(eps_out, 0.0f);
    return DL_OK;
}

dl_status dl_sampler_call_schedule(dl_sampler_kind kind, const dl_schedule *sched, const dl_sampler_config *cfg,
                                   int num_steps, float eta, float *timesteps_out, float *sigmas_out,
                                   int capacity, int *num_calls)
{
    dl_sampler s;
    DL_TRY(dl_sampler_init(&s, kind, sched, cfg, num_steps, eta, 1, DL_SHAPE(1)));
    *num_calls = s.num_calls;
    dl_status st = DL_OK;
    if (s.num_calls > capacity)
        st = dl_fail(DL_ERR_ARG, "dl_sampler_call_schedule: %s with %d steps makes %d model calls, room for %d",
                     dl_sampler_names[kind], num_steps, s.num_calls, capacity);
    dl_rng rng;                 /* the stochastic samplers draw noise; it does not move the schedule */
    dl_rng_seed(&rng, 0);
    for (int i = 0; st == DL_OK && !dl_sampler_done(&s); i++) {
        float t = dl_sampler_current_timestep(&s);
        if (!isfinite(t) || t < 0 || t > (float)(sched->num_train_timesteps - 1)) {
            st = dl_fail(DL_ERR_ARG, "dl_sampler_call_schedule: %s with %d steps: call %d has timestep %g",
                         dl_sampler_names[kind], num_steps, i + 1, t);
            break;
        }
        if (timesteps_out) timesteps_out[i] = t;
        if (sigmas_out) sigmas_out[i] = dl_sampler_current_sigma(&s);
        st = dl_sampler_step(&s, zero_model, NULL, &rng);
    }
    dl_sampler_free(&s);
    return st;
}
