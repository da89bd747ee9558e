/* sd_controlnet_pipe.c - see sd_controlnet_pipe.h. */
#include "sd_controlnet_pipe.h"

#include <stdlib.h>
#include <string.h>

dl_status sd_controlnet_plugin_load(sd_controlnet_plugin *pl, const char *folder)
{
    memset(pl, 0, sizeof *pl);
    pl->scale = 1.0f;
    if (!folder) return dl_fail(DL_ERR_ARG, "controlnet: no folder");
    DL_TRY(sd_weights_open_component(&pl->weights, folder, SD_PART_UNET));
    dl_status s = sd_controlnet_init(&pl->cn, &pl->weights);
    if (s != DL_OK) {
        sd_weights_close(&pl->weights);
        return s;
    }
    pl->loaded = 1;
    return DL_OK;
}

dl_status sd_controlnet_plugin_set_image(sd_controlnet_plugin *pl, const uint8_t *rgb, int w, int h, float scale)
{
    if (!rgb || w < 1 || h < 1) return dl_fail(DL_ERR_ARG, "controlnet: bad control image (%dx%d)", w, h);
    uint8_t *copy = malloc((size_t)w * h * 3);
    if (!copy) return dl_fail(DL_ERR_MEMORY, "controlnet: out of memory for the control image");
    memcpy(copy, rgb, (size_t)w * h * 3);
    free(pl->rgb);
    pl->rgb = copy;
    pl->w = w;
    pl->h = h;
    pl->scale = scale;
    dl_tensor_free(&pl->cond);      /* rebuilt at the next call */
    return DL_OK;
}

dl_status sd_controlnet_plugin_residuals(void *ctx, const dl_tensor *sample, const float *timesteps,
                                         const dl_tensor *context, sd_unet_residuals *res)
{
    sd_controlnet_plugin *pl = ctx;
    if (!pl->loaded || !pl->rgb) return dl_fail(DL_ERR_ARG, "controlnet: no model or no control image");
    const int B = (int)sample->shape[0], h = (int)sample->shape[2], w = (int)sample->shape[3];
    if (!pl->cond.data || pl->cond.shape[0] != B) {
        /* the control image once per run, one copy per batch item ([negative, positive]) */
        dl_tensor_free(&pl->cond);
        DL_TRY(dl_tensor_alloc(&pl->cond, 4, DL_SHAPE(B, 3, pl->h, pl->w)));
        DL_TRY(sd_controlnet_image_to_tensor(&pl->cond, pl->rgb, pl->w, pl->h));
    }
    if (pl->out_b != B || pl->out_h != h || pl->out_w != w) {
        sd_controlnet_output_free(&pl->out);
        DL_TRY(sd_controlnet_output_alloc(&pl->out, &pl->cn.cfg, B, h, w));
        pl->out_b = B, pl->out_h = h, pl->out_w = w;
    }
    DL_TRY(sd_controlnet_forward(&pl->cn, &pl->out, sample, timesteps, context, &pl->cond, pl->scale, 0));
    pl->calls++;
    *res = sd_controlnet_residuals(&pl->out);
    return DL_OK;
}

void sd_controlnet_plugin_attach(sd_controlnet_plugin *pl, sd_run_opts *o)
{
    o->residuals = sd_controlnet_plugin_residuals;
    o->residuals_ctx = pl;
}

void sd_controlnet_plugin_free(sd_controlnet_plugin *pl)
{
    if (pl->loaded) {
        sd_controlnet_free(&pl->cn);
        sd_weights_close(&pl->weights);
    }
    sd_controlnet_output_free(&pl->out);
    dl_tensor_free(&pl->cond);
    free(pl->rgb);
    memset(pl, 0, sizeof *pl);
}
