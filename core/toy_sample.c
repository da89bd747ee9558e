/* toy_sample.c - see toy_sample.h */
#include "toy_sample.h"

#include <stdlib.h>
#include <string.h>

dl_status toy_eps_model(void *ctx, const dl_tensor *x_t, const float *t, dl_tensor *eps_out)
{
    toy_eps_ctx *c = ctx;
    return toy_unet_forward(c->net, x_t, t, c->class_ids, eps_out);
}

dl_status toy_guided_init(toy_guided *g, toy_unet *net, const int *labels, int batch, float guidance)
{
    memset(g, 0, sizeof *g);
    const toy_unet_config *cfg = toy_unet_get_config(net);
    int need = guidance == 1.0f ? batch : 2 * batch;
    if (batch < 1 || need > toy_unet_max_batch(net))
        return dl_fail(DL_ERR_ARG, "toy_guided_init: %d images%s need a batch of %d, the net was built for %d",
                       batch, guidance == 1.0f ? "" : " with guidance", need, toy_unet_max_batch(net));
    for (int i = 0; i < batch; i++)
        if (labels[i] < 0 || labels[i] > cfg->num_classes)
            return dl_fail(DL_ERR_ARG, "toy_guided_init: class %d outside 0..%d (%d = null class)",
                           labels[i], cfg->num_classes, cfg->num_classes);
    g->ids = malloc(sizeof(int) * 2 * (size_t)batch);
    if (!g->ids) return dl_fail(DL_ERR_MEMORY, "toy_guided_init: out of memory");
    g->batch = batch;
    g->guidance = guidance;
    g->inner.net = net;
    if (guidance == 1.0f) {   /* conditional model alone */
        memcpy(g->ids, labels, sizeof(int) * (size_t)batch);
        g->inner.class_ids = g->ids;
        return DL_OK;
    }
    for (int i = 0; i < batch; i++) {
        g->ids[i] = cfg->num_classes;          /* first half: the null class */
        g->ids[batch + i] = labels[i];         /* second half: the labels    */
    }
    g->inner.class_ids = g->ids;
    int S = cfg->image_size;
    dl_status st = dl_cfg_init(&g->cfg, toy_eps_model, &g->inner, guidance, 4, DL_SHAPE(batch, cfg->in_channels, S, S));
    if (st != DL_OK) { toy_guided_free(g); return st; }
    return DL_OK;
}

dl_status toy_guided_eps(void *ctx, const dl_tensor *x_t, const float *t, dl_tensor *eps_out)
{
    toy_guided *g = ctx;
    if (g->guidance == 1.0f) return toy_eps_model(&g->inner, x_t, t, eps_out);
    return dl_cfg_eps(&g->cfg, x_t, t, eps_out);
}

void toy_guided_free(toy_guided *g)
{
    free(g->ids);
    dl_cfg_free(&g->cfg);
    memset(g, 0, sizeof *g);
}

toy_sample_opts toy_sample_opts_default(void)
{
    /* The toy U-Net works in pixel space, where every image lies in [-1, 1]:
     * clamping the predicted x0 there (diffusers' DDPM/DDIM default,
     * clip_sample=True) keeps the early, very noisy steps from overshooting,
     * and DDIM then moves on with the noise that matches the clamped x0. */
    dl_sampler_config config = dl_sampler_config_default();
    config.clip_sample = 1;
    config.clip_sample_range = 1.0f;
    config.use_clipped_model_output = 1;
    return (toy_sample_opts){ .kind = DL_SAMPLER_DDIM, .steps = 50, .eta = 0.0f, .guidance = 3.0f,
                              .config = config };
}

dl_status toy_sample(toy_unet *net, const dl_schedule *sched, const toy_sample_opts *o,
                     const int *labels, int count, dl_rng *rng, dl_tensor *out)
{
    const toy_unet_config *cfg = toy_unet_get_config(net);
    const int C = cfg->in_channels, S = cfg->image_size;
    DL_TRY(dl_check_shape(out, "toy_sample", "out", 4, DL_SHAPE(count, C, S, S)));
    /* x_T for every sample at once: torch.randn((count, C, S, S)) */
    DL_TRY(dl_rng_randn_tensor(rng, out));
    int chunk = toy_unet_max_batch(net) / (o->guidance == 1.0f ? 1 : 2);
    if (chunk < 1) return dl_fail(DL_ERR_ARG, "toy_sample: the net's max_batch %d is too small for guidance", toy_unet_max_batch(net));
    int64_t per = (int64_t)C * S * S;
    for (int first = 0; first < count; first += chunk) {
        int B = count - first < chunk ? count - first : chunk;
        dl_sampler s;
        toy_guided g;
        DL_TRY(dl_sampler_init(&s, o->kind, sched, &o->config, o->steps, o->eta, 4, DL_SHAPE(B, C, S, S)));
        dl_status st = toy_guided_init(&g, net, labels + first, B, o->guidance);
        if (st == DL_OK) {
            dl_tensor x_T;
            dl_tensor_view(&x_T, out->data + first * per, 4, DL_SHAPE(B, C, S, S));
            st = dl_sampler_set_x(&s, &x_T);
            if (st == DL_OK) st = dl_sampler_run(&s, toy_guided_eps, &g, rng);
            if (st == DL_OK) memcpy(out->data + first * per, s.x.data, sizeof(float) * (size_t)(B * per));
            toy_guided_free(&g);
        }
        dl_sampler_free(&s);
        if (st != DL_OK) return st;
    }
    return DL_OK;
}
