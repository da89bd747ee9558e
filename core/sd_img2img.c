/* sd_img2img.c - see sd_img2img.h. */
#include "sd_img2img.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int sd_img2img_t_start(int num_steps, double strength)
{
    int init_timestep = (int)((double)num_steps * strength);   /* Python's int(): toward zero */
    if (init_timestep > num_steps) init_timestep = num_steps;
    int t_start = num_steps - init_timestep;
    return t_start > 0 ? t_start : 0;
}

dl_status sd_img2img_plan_for(const dl_sampler *s, double strength, sd_img2img_plan *plan)
{
    if (!(strength >= 0.0 && strength <= 1.0))
        return dl_fail(DL_ERR_ARG, "img2img: strength %g outside [0, 1]", strength);
    const int N = s->num_steps;
    memset(plan, 0, sizeof *plan);
    plan->num_steps = N;
    plan->strength = strength;
    plan->t_start = sd_img2img_t_start(N, strength);
    plan->init_timestep = N - plan->t_start;
    if (plan->init_timestep < 1 && strength <= 0.0)
        return dl_fail(DL_ERR_ARG, "img2img: strength 0 keeps the input unchanged and runs no step: give a strength in (0, 1]");
    if (plan->init_timestep < 1)
        return dl_fail(DL_ERR_ARG, "img2img: strength %g with %d steps runs no step (int(%d * %g) = 0): raise the "
                       "strength to at least %g or the steps to at least %d", strength, N, N, strength, 1.0 / N,
                       strength > 0 ? (int)ceil(1.0 / strength) : 1);
    plan->start_call = plan->t_start * dl_sampler_order(s->kind);
    if (plan->start_call >= s->num_calls)
        return dl_fail(DL_ERR_ARG, "img2img: start call %d past the sampler's %d calls", plan->start_call, s->num_calls);
    plan->calls = s->num_calls - plan->start_call;
    plan->start_timestep = s->timesteps[plan->start_call];
    return DL_OK;
}

dl_status sd_img2img_preprocess(dl_tensor *out, const dl_image *img)
{
    if (!img || !img->px) return dl_fail(DL_ERR_ARG, "sd_img2img_preprocess: no image");
    DL_TRY(dl_check_shape(out, "sd_img2img_preprocess", "out", 4, DL_SHAPE(1, 3, img->h, img->w)));
    const int64_t plane = (int64_t)img->w * img->h;
    for (int64_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++) {
            int k = img->c >= 3 ? c : 0;                       /* grey: the same value thrice */
            float v = (float)img->px[i * img->c + k] / 255.0f;  /* numpy: uint8 -> float32 / 255 */
            out->data[c * plane + i] = 2.0f * v - 1.0f;        /* VaeImageProcessor.normalize   */
        }
    return DL_OK;
}

dl_status sd_img2img_encode(sd_pipeline *p, const dl_tensor *image, dl_tensor *moments)
{
    DL_TRY(dl_check_shape(image, "sd_img2img_encode", "image", 4, DL_SHAPE(1, 3, -1, -1)));
    const int f = p->downscale, H = (int)image->shape[2], W = (int)image->shape[3];
    if (H % f || W % f || H < f || W < f)
        return dl_fail(DL_ERR_ARG, "img2img: the picture is %dx%d; width and height must be multiples of %d (this VAE's "
                       "downscale factor): resize it first", W, H, f);
    DL_TRY(dl_tensor_alloc(moments, 4, DL_SHAPE(1, 2 * p->latent_channels, H / f, W / f)));
    return sd_vae_encode(&p->vae, moments, image);
}

dl_status sd_img2img_sample_latents(const sd_pipeline *p, const dl_tensor *moments, dl_rng *rng, const float *noise,
                                    dl_tensor *z0)
{
    const int C = p->latent_channels;
    DL_TRY(dl_check_shape(moments, "sd_img2img_sample_latents", "moments", 4, DL_SHAPE(1, 2 * C, -1, -1)));
    const int h = (int)moments->shape[2], w = (int)moments->shape[3];
    DL_TRY(dl_check_shape(z0, "sd_img2img_sample_latents", "z0", 4, DL_SHAPE(1, C, h, w)));
    if (!rng && !noise) return dl_fail(DL_ERR_ARG, "sd_img2img_sample_latents: give an rng or the noise");
    dl_tensor mean = {0}, std = {0};
    dl_status s = dl_tensor_alloc(&mean, 4, DL_SHAPE(1, C, h, w));
    if (s == DL_OK) s = dl_tensor_alloc(&std, 4, DL_SHAPE(1, C, h, w));
    if (s == DL_OK) s = sd_vae_moments_split(moments, &mean, NULL, &std);
    if (s == DL_OK) {
        /* latent_dist.sample(generator): randn of the mean's shape, then mean + std * n */
        if (noise) memcpy(z0->data, noise, (size_t)z0->numel * sizeof(float));
        else dl_rng_randn(rng, z0->data, z0->numel);
        const float k = p->vae.cfg.scaling_factor;
        for (int64_t i = 0; i < z0->numel; i++) {
            float z = mean.data[i] + std.data[i] * z0->data[i];
            z0->data[i] = k * z;                                   /* scaling_factor * init_latents */
        }
    }
    dl_tensor_free(&mean);
    dl_tensor_free(&std);
    return s;
}

void sd_img2img_info_free(sd_img2img_info *info)
{
    if (!info) return;
    dl_tensor_free(&info->init_latents);
    dl_tensor_free(&info->noisy_latents);
}

/* Everything before the sampler loop: plan, z0, the noisy start. */
static dl_status prepare(sd_pipeline *p, const sd_run_opts *o, const sd_img2img_input *in, dl_rng *rng,
                         dl_sampler *s, dl_tensor *moments, sd_img2img_info *info)
{
    if (o->start_latents || o->init_latents || o->rng)
        return dl_fail(DL_ERR_ARG, "img2img: start_latents, init_latents and rng are set by sd_img2img_run, leave them unset");
    const int f = p->downscale, C = p->latent_channels;
    if (o->width < f || o->height < f || o->width % f || o->height % f)
        return dl_fail(DL_ERR_ARG, "img2img: size %dx%d: width and height must be multiples of %d (this VAE's downscale "
                       "factor)", o->width, o->height, f);
    const int h = o->height / f, w = o->width / f;
    const dl_tensor *mom = in->moments;
    if (!mom) {
        if (!in->image) return dl_fail(DL_ERR_ARG, "img2img: no image and no moments");
        DL_TRY(dl_check_shape(in->image, "img2img", "image", 4, DL_SHAPE(1, 3, o->height, o->width)));
        DL_TRY(sd_img2img_encode(p, in->image, moments));
        mom = moments;
    }
    DL_TRY(dl_check_shape(mom, "img2img", "moments", 4, DL_SHAPE(1, 2 * C, h, w)));

    dl_sampler_config cfg;   /* the pipeline's scheduler, to know its timesteps and add_noise */
    DL_TRY(dl_scheduler_config_for(&p->scheduler, o->scheduler, &cfg));
    DL_TRY(dl_sampler_init(s, o->scheduler, &p->schedule, &cfg, o->steps, o->eta, 4, DL_SHAPE(1, C, h, w)));
    DL_TRY(sd_img2img_plan_for(s, in->strength, &info->plan));

    /* the two draws, in diffusers' order: posterior sample, then add_noise's noise */
    DL_TRY(dl_tensor_alloc(&info->init_latents, 4, DL_SHAPE(1, C, h, w)));
    DL_TRY(dl_tensor_alloc(&info->noisy_latents, 4, DL_SHAPE(1, C, h, w)));
    DL_TRY(sd_img2img_sample_latents(p, mom, rng, in->sample_noise, &info->init_latents));
    float *n2 = info->noisy_latents.data;
    if (in->add_noise_noise) memcpy(n2, in->add_noise_noise, (size_t)info->noisy_latents.numel * sizeof(float));
    else dl_rng_randn(rng, n2, info->noisy_latents.numel);
    return dl_sampler_add_noise(s, info->plan.start_call, info->init_latents.data, n2, n2, info->noisy_latents.numel);
}

dl_status sd_img2img_run(sd_pipeline *p, const sd_run_opts *o, const sd_img2img_input *in, sd_step_fn cb,
                         void *cb_ctx, sd_run_result *r, sd_img2img_info *info)
{
    memset(r, 0, sizeof *r);
    sd_img2img_info local;
    if (!info) info = &local;
    memset(info, 0, sizeof *info);
    if (!in) return dl_fail(DL_ERR_ARG, "img2img: no input");
    dl_rng rng;
    dl_rng_seed(&rng, o->seed);                     /* one generator for every draw, as diffusers */
    dl_sampler s;
    memset(&s, 0, sizeof s);
    dl_tensor moments = {0};
    dl_status st = prepare(p, o, in, &rng, &s, &moments, info);
    dl_sampler_free(&s);
    dl_tensor_free(&moments);
    if (st == DL_OK) {
        sd_run_opts run = *o;
        run.start_latents = &info->noisy_latents;
        run.start_step = info->plan.start_call;
        run.rng = &rng;
        st = sd_pipeline_run(p, &run, cb, cb_ctx, r);
    }
    if (info == &local) sd_img2img_info_free(&local);
    return st;
}
