/* sampler_calls.h - where a sampler spends its model calls.
 *
 * For plots and tables: the timestep and the noise level (as a sigma) of
 * every model call a sampler makes for N steps, from the first call to the
 * last, exactly as dl_sampler_current_timestep / dl_sampler_current_sigma
 * report them before each call. Heun and KDPM2 make 2N-1 calls (KDPM2's
 * second stages sit at interpolated sigmas), PNDM N+1 (its second timestep
 * twice); every sigma is sqrt((1 - abar_t) / abar_t), the Euler family's own.
 *
 *     float t[64], sigma[64];
 *     int calls;
 *     DL_TRY(dl_sampler_call_schedule(DL_SAMPLER_HEUN, &sched, &cfg, 10, 0.0f, t, sigma, 64, &calls));
 *     // calls == 19
 */
#ifndef DL_SAMPLER_CALLS_H
#define DL_SAMPLER_CALLS_H

#include "sampling.h"

/* Runs the sampler on one value with a model that predicts zero (the
 * schedule does not depend on the model) and records each call's
 * timestep and sigma into timesteps_out / sigmas_out (either may be NULL),
 * at most `capacity` of them. *num_calls gets the number of calls; more
 * calls than capacity is an error naming both. */
dl_status dl_sampler_call_schedule(dl_sampler_kind kind, const dl_schedule *sched, const dl_sampler_config *cfg,
                                   int num_steps, float eta, float *timesteps_out, float *sigmas_out,
                                   int capacity, int *num_calls);

#endif
