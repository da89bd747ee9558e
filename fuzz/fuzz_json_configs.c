/* fuzz_json_configs.c - libFuzzer harness for the JSON config readers.
 *
 * The same bytes (as a NUL-terminated string) go to every config parser:
 * scheduler_config.json, the UNet's and the VAE's config.json, the CLIP text
 * encoder's config.json and the toy U-Net's config. Each must return an error
 * or a config; the configs that come back are then used the way the loaders
 * use them (sampler configs, the beta schedule, the skip layout), which must
 * not crash either.
 */
#include "../core/clip_text.h"
#include "../core/scheduler_config.h"
#include "../core/sd_unet.h"
#include "../core/sd_vae.h"
#include "../core/toy_unet.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *json = malloc(size + 1);
    if (!json) return 0;
    if (size) memcpy(json, data, size);
    json[size] = '\0';

    dl_scheduler_config sc;
    if (dl_scheduler_config_parse(json, "fuzz_scheduler_config.json", &sc) == DL_OK) {
        for (int k = 0; k < DL_SAMPLER_COUNT; k++) {
            dl_sampler_config cfg;
            dl_scheduler_config_for(&sc, (dl_sampler_kind)k, &cfg);
        }
        dl_schedule s;
        if (dl_scheduler_config_schedule(&sc, &s) == DL_OK) dl_schedule_free(&s);
    }

    sd_unet_config uc;
    sd_unet_config_sd15(&uc);
    if (sd_unet_config_parse(&uc, json) == DL_OK) {
        int skips = sd_unet_num_skips(&uc);
        if (skips < 0 || skips > SD_UNET_MAX_SKIPS) __builtin_trap();
        for (int k = 0; k < skips; k++) {
            int ch = 0, down = 0;
            sd_unet_skip_info(&uc, k, &ch, &down);
        }
    }

    sd_vae_config vc;
    sd_vae_config_sd15(&vc);
    if (sd_vae_config_parse(&vc, json) == DL_OK) sd_vae_downscale(&vc);

    clip_text_config cc;
    clip_text_config_sd15(&cc);
    clip_text_config_from_json(&cc, json);

    toy_unet_config tc;
    if (toy_unet_config_from_json(&tc, json) == DL_OK) {
        char back[2048];
        toy_unet_config_to_json(&tc, back, sizeof back);
    }

    free(json);
    return 0;
}
