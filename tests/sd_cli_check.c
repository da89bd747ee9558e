/* sd_cli_check.c - see sd_cli_check.h */
#include "sd_cli_check.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "testing.h"
#include "../core/image.h"
#include "../core/safetensors.h"

static int load(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    return CHECK(dl_st_load_tensor(f, name, t) == DL_OK, "tensor %s: %s", name, dl_error_message());
}

void sd_check_cli_run(const char *golden, const char *latents, const char *png)
{
    dl_safetensors g, f;
    dl_tensor want = {0}, got = {0}, img = {0};
    if (!CHECK(dl_st_open(&g, golden) == DL_OK, "%s", dl_error_message())) return;
    if (load(&g, "latents_final", &want) && load(&g, "image", &img) &&
        CHECK(dl_st_open(&f, latents) == DL_OK, "%s", dl_error_message())) {
        if (load(&f, "latents_final", &got)) {
            printf("    latents_final via the command line: max diff %.2e\n",
                   dl_max_abs_diff(got.data, want.data, (size_t)want.numel));
            CHECK_CLOSE("latents_final", got.data, want.data, (size_t)want.numel, 1e-3);
        }
        dl_st_close(&f);
    }
    dl_image pic;   /* the PNG's bytes are diffusers' image * 255, rounded (one level of slack) */
    if (img.data && CHECK(dl_image_load(&pic, png, 3) == DL_OK, "%s", dl_error_message())) {
        int worst = 0;
        for (int64_t i = 0; i < img.numel; i++) {
            int d = abs(pic.px[i] - (int)nearbyintf(img.data[i] * 255.0f));
            worst = d > worst ? d : worst;
        }
        CHECK(worst <= 1, "PNG differs from diffusers' image by %d levels", worst);
        dl_image_free(&pic);
    }
    dl_st_close(&g);
    dl_tensor_free(&want); dl_tensor_free(&got); dl_tensor_free(&img);
}
