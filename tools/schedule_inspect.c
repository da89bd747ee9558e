/* schedule_inspect.c - print the timesteps, sigmas and init_noise_sigma a
 * diffusers scheduler uses for N steps (core/sampling.h), to explain why
 * two tools give different pictures for "the same" sampler.
 *
 *     bin/schedule_inspect --scheduler euler --steps 10
 *     bin/schedule_inspect --scheduler dpmpp_2m_karras --steps 20 --config scheduler_config.json
 *     bin/schedule_inspect --config scheduler_config.json --steps 25     # the class the file names
 *
 * Without --config the schedule is Stable Diffusion 1.5's (leading spacing,
 * steps_offset 1), as every scheduler of an SD 1.5 pipeline inherits it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/sampling.h"
#include "../core/scheduler_config.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bin/schedule_inspect [--scheduler NAME] --steps N [--config scheduler_config.json]\n"
            "Prints the timesteps, sigmas and init_noise_sigma diffusers (v0.27) would use.\n"
            "  --scheduler NAME   ddpm ddim pndm lms euler euler_a heun kdpm2 kdpm2_a dpmpp_2m\n"
            "                     dpmpp_2m_karras unipc lcm (default: the class the config names)\n"
            "  --steps N          inference steps (model calls may differ: heun/kdpm2 2N-1, pndm N+1)\n"
            "  --config FILE      a diffusers scheduler_config.json (default: Stable Diffusion 1.5's)\n");
}

int main(int argc, char **argv)
{
    const char *name = NULL, *config = NULL;
    int steps = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        if (i + 1 >= argc && (!strcmp(a, "--scheduler") || !strcmp(a, "--steps") || !strcmp(a, "--config")))
            dl_die_msg("see --help", "%s needs a value", a);
        if (!strcmp(a, "--scheduler")) name = argv[++i];
        else if (!strcmp(a, "--config")) config = argv[++i];
        else if (!strcmp(a, "--steps")) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 100000) dl_die_msg("give a whole number of steps, e.g. --steps 25",
                                                        "--steps %s: must be an integer >= 1", argv[i]);
            steps = (int)v;
        } else dl_die_msg("see --help", "unknown option '%s'", a);
    }
    if (!steps) dl_die_msg("e.g. bin/schedule_inspect --scheduler euler --steps 25", "--steps is required");

    dl_scheduler_config file;
    if (config) {
        if (dl_scheduler_config_load(config, &file) != DL_OK) dl_die("is it a diffusers scheduler_config.json?");
    } else {
        dl_scheduler_config_sd15(&file);
    }
    dl_sampler_kind kind;
    if (name) {
        if (dl_sampler_kind_from_name(name, &kind) != DL_OK) dl_die("see --help for the names");
    } else if (file.has_kind) {
        kind = file.kind;
    } else {
        dl_die_msg("name one with --scheduler", "%s: class \"%s\" is not one of the supported schedulers",
                   config, file.class_name);
    }
    dl_sampler_config cfg;
    if (dl_scheduler_config_for(&file, kind, &cfg) != DL_OK) dl_die(NULL);
    dl_schedule sched;
    if (dl_scheduler_config_schedule(&file, &sched) != DL_OK) dl_die("check the config's beta_* keys");
    dl_sampler s;
    if (dl_sampler_init(&s, kind, &sched, &cfg, steps, 0.0f, 1, DL_SHAPE(1)) != DL_OK) dl_die(NULL);
    printf("config: %s (%s spacing, steps_offset %d, %s, %s %d train steps)\n",
           config ? config : "Stable Diffusion 1.5", dl_spacing_names[cfg.timestep_spacing], cfg.steps_offset,
           dl_prediction_names[cfg.prediction_type], dl_schedule_names[sched.kind], sched.num_train_timesteps);
    int need = dl_sampler_describe(&s, NULL, 0);
    char *text = malloc((size_t)need + 1);
    if (!text) dl_die_msg(NULL, "out of memory");
    dl_sampler_describe(&s, text, (size_t)need + 1);
    fputs(text, stdout);
    free(text);
    dl_sampler_free(&s);
    dl_schedule_free(&sched);
    return 0;
}
