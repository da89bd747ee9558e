/* scheduler_config.h - read a diffusers scheduler_config.json.
 *
 * A model repository ships its scheduler as a small JSON file, e.g. SD 1.5's
 *
 *     {"_class_name": "PNDMScheduler", "beta_schedule": "scaled_linear",
 *      "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
 *      "steps_offset": 1, "set_alpha_to_one": false, "skip_prk_steps": true,
 *      "timestep_spacing": "leading", "prediction_type": "epsilon", ...}
 *
 * Swapping the scheduler in diffusers (Cls.from_config(pipe.scheduler.config))
 * keeps every key the file has and takes the new class's defaults for the
 * rest - which is why every scheduler of an SD 1.5 pipeline inherits
 * "leading" spacing and steps_offset 1. dl_scheduler_config_for does the same:
 *
 *     dl_scheduler_config file;
 *     DL_TRY(dl_scheduler_config_load("scheduler_config.json", &file));
 *     dl_schedule sched;
 *     DL_TRY(dl_scheduler_config_schedule(&file, &sched));          // the betas
 *     dl_sampler_config cfg;
 *     DL_TRY(dl_scheduler_config_for(&file, DL_SAMPLER_EULER_A, &cfg));
 *
 * Keys this library cannot honour (thresholding, trained_betas, PRK steps,
 * zero-SNR rescaling, ...) are errors naming the key; keys it does not know
 * are ignored, as diffusers ignores them.
 */
#ifndef DL_SCHEDULER_CONFIG_H
#define DL_SCHEDULER_CONFIG_H

#include "dl_error.h"
#include "sampling.h"
#include "schedule.h"

/* Which keys the file had (bits of dl_scheduler_config.present). */
enum {
    DL_KEY_TIMESTEP_SPACING = 1 << 0, DL_KEY_STEPS_OFFSET = 1 << 1, DL_KEY_PREDICTION_TYPE = 1 << 2,
    DL_KEY_SET_ALPHA_TO_ONE = 1 << 3, DL_KEY_CLIP_SAMPLE = 1 << 4, DL_KEY_CLIP_SAMPLE_RANGE = 1 << 5,
    DL_KEY_USE_KARRAS_SIGMAS = 1 << 6, DL_KEY_SOLVER_ORDER = 1 << 7, DL_KEY_LOWER_ORDER_FINAL = 1 << 8,
    DL_KEY_SOLVER_TYPE = 1 << 9, DL_KEY_ORIGINAL_INFERENCE_STEPS = 1 << 10, DL_KEY_TIMESTEP_SCALING = 1 << 11,
    DL_KEY_ALGORITHM_TYPE = 1 << 12, DL_KEY_SKIP_PRK_STEPS = 1 << 13, DL_KEY_FINAL_SIGMAS_TYPE = 1 << 14
};

typedef struct {
    char class_name[64];          /* "_class_name", "" if the file has none            */
    int has_kind;                 /* the class is one of ours:                         */
    dl_sampler_kind kind;         /*   ... which (DPMSolverMultistep + Karras -> dpmpp_2m_karras) */
    /* the training schedule (dl_schedule_init's arguments); keys the file
     * lacks take diffusers' defaults: linear 0.0001..0.02, 1000 steps */
    dl_schedule_kind beta_schedule;
    int num_train_timesteps;
    double beta_start, beta_end;
    /* the sampler keys as the file gives them; `present` says which it has */
    dl_sampler_config values;
    unsigned present;
    int skip_prk_steps;           /* PNDM: 1 = PLMS only (the only mode here)        */
    char solver_type[16];         /* dpmpp: "midpoint"; unipc: "bh1" / "bh2"          */
    char algorithm_type[16];      /* dpmpp: "dpmsolver++"                             */
    char final_sigmas_type[16];   /* dpmpp: "zero"                                   */
} dl_scheduler_config;

/* Parse JSON text; `source` names it in error messages (e.g. the path). */
dl_status dl_scheduler_config_parse(const char *json, const char *source, dl_scheduler_config *out);
/* Read and parse a file. */
dl_status dl_scheduler_config_load(const char *path, dl_scheduler_config *out);
/* Stable Diffusion 1.5's scheduler_config.json (PNDMScheduler, scaled_linear
 * 0.00085..0.012, 1000 steps, leading, steps_offset 1, set_alpha_to_one false,
 * skip_prk_steps true, clip_sample false, epsilon). */
void dl_scheduler_config_sd15(dl_scheduler_config *out);

/* The config the sampler `kind` runs with: its class defaults, overridden
 * by every key the file has. Fails, naming the key, when a key's value is
 * something this sampler cannot do (e.g. solver_type "heun" for dpmpp_2m). */
dl_status dl_scheduler_config_for(const dl_scheduler_config *c, dl_sampler_kind kind, dl_sampler_config *out);
/* The training schedule the file describes (free with dl_schedule_free). */
dl_status dl_scheduler_config_schedule(const dl_scheduler_config *c, dl_schedule *s);

#endif
