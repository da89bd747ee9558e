/* sd_pipeline.c - see sd_pipeline.h. */
#include "sd_pipeline.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int readable(const char *path) { return access(path, R_OK) == 0; }

/* ------------------------------------------------------------------------ */
/* Loading                                                                  */

/* "models/v1-5-pruned-emaonly.safetensors" -> "v1-5-pruned-emaonly"; "models/sd15/" -> "sd15" */
static void model_name(char *out, size_t n, const char *path)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    size_t len = strlen(buf);
    while (len > 1 && buf[len - 1] == '/') buf[--len] = 0;
    const char *base = strrchr(buf, '/');
    base = base ? base + 1 : buf;
    snprintf(out, n, "%s", base);
    size_t bl = strlen(out);
    if (bl > 12 && !strcmp(out + bl - 12, ".safetensors")) out[bl - 12] = 0;
}

/* The tokenizer folder: the option, the folder's tokenizer/, the config
 * folder's, or tokenizer/ next to a single file. "" if none has vocab.json. */
static void find_tokenizer(char *out, size_t n, const sd_pipeline *p, const sd_load_opts *o)
{
    const char *bases[3];
    char dir[1024];
    int k = 0;
    out[0] = 0;
    if (o && o->tokenizer_dir) { snprintf(out, n, "%s", o->tokenizer_dir); return; }
    if (p->weights.layout == SD_LAYOUT_DIFFUSERS) bases[k++] = p->path;
    if (o && o->config_dir) bases[k++] = o->config_dir;
    if (p->weights.layout == SD_LAYOUT_SINGLE_FILE) {
        snprintf(dir, sizeof dir, "%s", p->path);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
        bases[k++] = dir;
    }
    for (int i = 0; i < k; i++) {
        char probe[4096];
        if (snprintf(probe, sizeof probe, "%s/tokenizer/vocab.json", bases[i]) >= (int)sizeof probe) continue;
        if (readable(probe) && snprintf(out, n, "%s/tokenizer", bases[i]) < (int)n) return;
        out[0] = 0;
    }
}

/* SD 2.x's UNet (stabilityai/stable-diffusion-2-1): heads 5 10 20 20 (64 wide),
 * 1024-dim context, linear proj_in/out. Used for single files whose text
 * encoder is OpenCLIP ViT-H-sized. */
static void unet_config_sd2(sd_unet_config *c)
{
    sd_unet_config_sd15(c);
    const int heads[4] = {5, 10, 20, 20};
    for (int i = 0; i < 4; i++) c->heads[i] = heads[i];
    c->cross_attention_dim = 1024;
    c->use_linear_projection = 1;
}

static dl_status load_scheduler(sd_pipeline *p, const sd_load_opts *o)
{
    char path[1100];
    const char *dirs[2] = {p->weights.layout == SD_LAYOUT_DIFFUSERS ? p->path : NULL, o ? o->config_dir : NULL};
    for (int i = 0; i < 2; i++) {
        if (!dirs[i]) continue;
        snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dirs[i]);
        if (readable(path)) {
            DL_TRY(dl_scheduler_config_load(path, &p->scheduler));
            snprintf(p->scheduler_source, sizeof p->scheduler_source, "%s", path);
            goto loaded;
        }
    }
    /* a folder without scheduler/ or a single file: SD 1.5's (as diffusers' from_single_file) */
    dl_scheduler_config_sd15(&p->scheduler);
    snprintf(p->scheduler_source, sizeof p->scheduler_source, "SD 1.5's scheduler_config.json (built in)");
loaded:
    if (o && o->prediction_type) {
        DL_TRY(dl_prediction_from_name(o->prediction_type, &p->scheduler.values.prediction_type));
        p->scheduler.present |= DL_KEY_PREDICTION_TYPE;
    }
    return dl_scheduler_config_schedule(&p->scheduler, &p->schedule);
}

static dl_status load_parts(sd_pipeline *p, const sd_load_opts *o)
{
    if (o && o->config_dir) DL_TRY(sd_weights_set_config_dir(&p->weights, o->config_dir));
    DL_TRY(clip_text_load(&p->text, &p->weights));
    p->have_text = 1;
    p->context_dim = p->text.config.hidden_size;
    if (!sd_weights_config_json(&p->weights, SD_PART_UNET) && p->context_dim == 1024) {
        sd_unet_config c;
        unet_config_sd2(&c);
        DL_TRY(sd_unet_init_config(&p->unet, &p->weights, &c));
    } else {
        DL_TRY(sd_unet_init(&p->unet, &p->weights));
    }
    DL_TRY(sd_vae_init(&p->vae, &p->weights));
    if (p->unet.cfg.cross_attention_dim != p->context_dim)
        return dl_fail(DL_ERR_FORMAT, "%s: the unet expects %d-dim text context (cross_attention_dim) but the text "
                       "encoder gives %d", p->path, p->unet.cfg.cross_attention_dim, p->context_dim);
    if (p->unet.cfg.in_channels != p->vae.cfg.latent_channels || p->unet.cfg.out_channels != p->vae.cfg.latent_channels)
        return dl_fail(DL_ERR_FORMAT, "%s: the unet has %d/%d in/out channels but the vae %d latent channels",
                       p->path, p->unet.cfg.in_channels, p->unet.cfg.out_channels, p->vae.cfg.latent_channels);
    p->latent_channels = p->vae.cfg.latent_channels;
    p->downscale = sd_vae_downscale(&p->vae.cfg);
    DL_TRY(load_scheduler(p, o));

    find_tokenizer(p->tokenizer_dir, sizeof p->tokenizer_dir, p, o);
    if (!p->tokenizer_dir[0])
        return dl_fail(DL_ERR_IO, "%s: no tokenizer: a single-file checkpoint does not contain one; give a tokenizer "
                       "folder (vocab.json + merges.txt, e.g. the tokenizer/ folder of the model's diffusers "
                       "repository) or put it next to the file as tokenizer/", p->path);
    DL_TRY(clip_tokenizer_load(&p->tokenizer, p->tokenizer_dir));
    return DL_OK;
}

dl_status sd_pipeline_load(sd_pipeline *p, const char *path, const sd_load_opts *o)
{
    memset(p, 0, sizeof *p);
    if (!path || !path[0]) return dl_fail(DL_ERR_ARG, "sd_pipeline: no model path");
    snprintf(p->path, sizeof p->path, "%s", path);
    model_name(p->name, sizeof p->name, path);
    if (!is_dir(path) && !readable(path))
        return dl_fail(DL_ERR_IO, "model '%s' not found (give a diffusers folder or a .safetensors checkpoint)", path);
    DL_TRY(sd_weights_open(&p->weights, path));
    dl_status s = sd_weights_set_cache(&p->weights, SD_PART_UNET, o && o->keep_weights ? SD_CACHE_AUTO : SD_CACHE_OFF);
    if (s == DL_OK) s = load_parts(p, o);
    if (s != DL_OK) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", dl_error_message());
        sd_pipeline_free(p);
        return dl_fail(s, "%s", msg);
    }
    return DL_OK;
}

void sd_pipeline_release_text_encoder(sd_pipeline *p)
{
    if (p->have_text) clip_text_free(&p->text);
    p->have_text = 0;
}

dl_status sd_pipeline_reload_text_encoder(sd_pipeline *p)
{
    sd_pipeline_release_text_encoder(p);
    DL_TRY(clip_text_load(&p->text, &p->weights));   /* sees the weights' current patch */
    p->have_text = 1;
    return DL_OK;
}

void sd_pipeline_free(sd_pipeline *p)
{
    sd_pipeline_release_text_encoder(p);
    clip_tokenizer_free(&p->tokenizer);
    sd_unet_free(&p->unet);
    sd_vae_free(&p->vae);
    dl_schedule_free(&p->schedule);
    if (p->weights.impl) sd_weights_close(&p->weights);
    memset(p, 0, sizeof *p);
}

dl_status sd_pipeline_encode(sd_pipeline *p, const char *prompt, dl_tensor *out, int ids_out[CLIP_MAX_TOKENS])
{
    if (!p->have_text)
        return dl_fail(DL_ERR_ARG, "sd_pipeline: the text encoder was released; encode the prompts before");
    DL_TRY(dl_check_shape(out, "sd_pipeline_encode", "out", 3, DL_SHAPE(1, CLIP_MAX_TOKENS, p->context_dim)));
    int ids[CLIP_MAX_TOKENS];
    DL_TRY(clip_tokenize(&p->tokenizer, prompt ? prompt : "", ids, NULL));
    if (ids_out) memcpy(ids_out, ids, sizeof ids);
    return clip_text_forward(&p->text, ids, 1, CLIP_MAX_TOKENS, out, NULL, NULL);
}

/* ------------------------------------------------------------------------ */
/* The small steps                                                          */

dl_status sd_cfg_context(dl_tensor *out, const dl_tensor *negative, const dl_tensor *positive)
{
    DL_TRY(dl_check_shape(negative, "sd_cfg_context", "negative", 3, DL_SHAPE(1, -1, -1)));
    DL_TRY(dl_check_shape(positive, "sd_cfg_context", "positive", 3, negative->shape));
    DL_TRY(dl_check_shape(out, "sd_cfg_context", "out", 3, DL_SHAPE(2, negative->shape[1], negative->shape[2])));
    /* batch item 0 = unconditional (negative prompt), item 1 = the prompt */
    memcpy(out->data, negative->data, (size_t)negative->numel * sizeof(float));
    memcpy(out->data + negative->numel, positive->data, (size_t)positive->numel * sizeof(float));
    return DL_OK;
}

dl_status sd_latents_to_vae_input(dl_tensor *z, const dl_tensor *latents, float scaling_factor)
{
    if (z->numel != latents->numel)
        return dl_fail(DL_ERR_SHAPE, "sd_latents_to_vae_input: z has %lld values, latents %lld",
                       (long long)z->numel, (long long)latents->numel);
    if (!(scaling_factor > 0)) return dl_fail(DL_ERR_ARG, "sd_latents_to_vae_input: scaling_factor %g", scaling_factor);
    for (int64_t i = 0; i < z->numel; i++) z->data[i] = latents->data[i] / scaling_factor;
    return DL_OK;
}

void sd_postprocess(dl_tensor *x)
{
    for (int64_t i = 0; i < x->numel; i++) {
        float v = x->data[i] / 2.0f + 0.5f;
        x->data[i] = v < 0.0f ? 0.0f : v > 1.0f ? 1.0f : v;
    }
}

dl_status sd_image_from_decoded(const dl_tensor *x, int b, dl_image *out)
{
    DL_TRY(dl_check_shape(x, "sd_image_from_decoded", "image", 4, DL_SHAPE(-1, 3, -1, -1)));
    if (b < 0 || b >= x->shape[0]) return dl_fail(DL_ERR_ARG, "sd_image_from_decoded: no batch item %d", b);
    const int H = (int)x->shape[2], W = (int)x->shape[3];
    DL_TRY(dl_image_alloc(out, W, H, 3));
    const float *src = x->data + (size_t)b * 3 * H * W;
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < H * W; i++) {
            float v = nearbyintf(src[(size_t)c * H * W + i] * 255.0f);   /* numpy's round: half to even */
            out->px[(size_t)i * 3 + c] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    return DL_OK;
}

/* ------------------------------------------------------------------------ */
/* Preview                                                                  */

sd_preview_map sd_preview_map_sd(void)
{
    /* rows: latent channels 0..3; columns: R, G, B. A least-squares fit of
     * SD 1.x's VAE decoder published by the community (it also suits 2.x,
     * which shares the VAE). */
    sd_preview_map m = {{{0.298f, 0.207f, 0.208f},
                         {0.187f, 0.286f, 0.173f},
                         {-0.158f, 0.189f, 0.264f},
                         {-0.184f, -0.271f, -0.473f}},
                        {0.0f, 0.0f, 0.0f}};
    return m;
}

dl_status sd_preview_fit(sd_preview_map *map, const dl_tensor *lat, const dl_tensor *img)
{
    DL_TRY(dl_check_shape(lat, "sd_preview_fit", "latents", 4, DL_SHAPE(1, 4, -1, -1)));
    const int h = (int)lat->shape[2], w = (int)lat->shape[3];
    DL_TRY(dl_check_shape(img, "sd_preview_fit", "image", 4, DL_SHAPE(1, 3, -1, -1)));
    const int H = (int)img->shape[2], W = (int)img->shape[3];
    if (H % h || W % w || H / h != W / w)
        return dl_fail(DL_ERR_SHAPE, "sd_preview_fit: image %dx%d is not a multiple of the latents' %dx%d", W, H, w, h);
    const int f = H / h;
    /* normal equations A^T A beta = A^T y with A = [l0 l1 l2 l3 1] per latent pixel, y = 2 rgb - 1 */
    double ata[5][5] = {{0}}, aty[5][3] = {{0}};
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            double a[5], t[3];
            for (int k = 0; k < 4; k++) a[k] = lat->data[((size_t)k * h + y) * w + x];
            a[4] = 1.0;
            for (int c = 0; c < 3; c++) {
                double s = 0;
                for (int dy = 0; dy < f; dy++)
                    for (int dx = 0; dx < f; dx++) s += img->data[((size_t)c * H + y * f + dy) * W + x * f + dx];
                t[c] = 2.0 * s / (f * f) - 1.0;
            }
            for (int i = 0; i < 5; i++) {
                for (int j = 0; j < 5; j++) ata[i][j] += a[i] * a[j];
                for (int c = 0; c < 3; c++) aty[i][c] += a[i] * t[c];
            }
        }
    for (int i = 0; i < 5; i++) ata[i][i] += 1e-6 * (double)h * w;   /* a little ridge: never singular */
    /* Gaussian elimination with partial pivoting */
    for (int col = 0; col < 5; col++) {
        int piv = col;
        for (int r = col + 1; r < 5; r++) if (fabs(ata[r][col]) > fabs(ata[piv][col])) piv = r;
        for (int j = 0; j < 5; j++) { double tmp = ata[col][j]; ata[col][j] = ata[piv][j]; ata[piv][j] = tmp; }
        for (int c = 0; c < 3; c++) { double tmp = aty[col][c]; aty[col][c] = aty[piv][c]; aty[piv][c] = tmp; }
        for (int r = col + 1; r < 5; r++) {
            double q = ata[r][col] / ata[col][col];
            for (int j = col; j < 5; j++) ata[r][j] -= q * ata[col][j];
            for (int c = 0; c < 3; c++) aty[r][c] -= q * aty[col][c];
        }
    }
    double beta[5][3];
    for (int r = 4; r >= 0; r--)
        for (int c = 0; c < 3; c++) {
            double s = aty[r][c];
            for (int j = r + 1; j < 5; j++) s -= ata[r][j] * beta[j][c];
            beta[r][c] = s / ata[r][r];
        }
    for (int k = 0; k < 4; k++)
        for (int c = 0; c < 3; c++) map->m[k][c] = (float)beta[k][c];
    for (int c = 0; c < 3; c++) map->bias[c] = (float)beta[4][c];
    return DL_OK;
}

dl_status sd_preview_image(const sd_preview_map *map, const dl_tensor *lat, int b, dl_image *out)
{
    DL_TRY(dl_check_shape(lat, "sd_preview_image", "latents", 4, DL_SHAPE(-1, 4, -1, -1)));
    if (b < 0 || b >= lat->shape[0]) return dl_fail(DL_ERR_ARG, "sd_preview_image: no batch item %d", b);
    const int h = (int)lat->shape[2], w = (int)lat->shape[3];
    DL_TRY(dl_image_alloc(out, w, h, 3));
    const float *l = lat->data + (size_t)b * 4 * h * w;
    for (int i = 0; i < h * w; i++)
        for (int c = 0; c < 3; c++) {
            float v = map->bias[c];
            for (int k = 0; k < 4; k++) v += l[(size_t)k * h * w + i] * map->m[k][c];
            v = (v + 1.0f) * 127.5f;                    /* [-1, 1] -> [0, 255] */
            out->px[(size_t)i * 3 + c] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5f);
        }
    return DL_OK;
}

int sd_parameters_text(char *buf, size_t n, const sd_run_opts *o, const char *model)
{
    const char *neg = o->negative_prompt ? o->negative_prompt : "";
    return snprintf(buf, n, "%s\n%s%s%sSteps: %d, Sampler: %s, CFG scale: %g, Seed: %llu, Size: %dx%d, Model: %s",
                    o->prompt ? o->prompt : "", neg[0] ? "Negative prompt: " : "", neg, neg[0] ? "\n" : "",
                    o->steps, (unsigned)o->scheduler < DL_SAMPLER_COUNT ? dl_sampler_names[o->scheduler] : "?",
                    (double)o->guidance, (unsigned long long)o->seed, o->width, o->height, model ? model : "");
}

/* ------------------------------------------------------------------------ */
/* One run                                                                  */

sd_run_opts sd_run_opts_default(void)
{
    sd_run_opts o;
    memset(&o, 0, sizeof o);
    o.negative_prompt = "";
    o.steps = 25;
    o.guidance = 7.5f;
    o.scheduler = DL_SAMPLER_DPMPP_2M;
    o.seed = 42;
    o.width = o.height = 512;
    return o;
}

void sd_run_result_free(sd_run_result *r)
{
    dl_tensor_free(&r->latents);
    dl_tensor_free(&r->image);
    dl_tensor_free(&r->context);
}

/* The UNet as the samplers' model callback. */
typedef struct {
    sd_unet *unet;
    const dl_tensor *context;        /* [B, 77, D], B = the sample's batch */
    sd_residuals_fn residuals;
    void *residuals_ctx;
} unet_model;

static dl_status unet_eps(void *ctx, const dl_tensor *x, const float *t, dl_tensor *eps)
{
    unet_model *m = ctx;
    if (!m->residuals) return sd_unet_forward(m->unet, eps, x, t, m->context, NULL);
    sd_unet_residuals res;
    memset(&res, 0, sizeof res);
    DL_TRY(m->residuals(m->residuals_ctx, x, t, m->context, &res));
    return sd_unet_forward(m->unet, eps, x, t, m->context, res.n_down || res.mid ? &res : NULL);
}

static dl_status check_opts(const sd_pipeline *p, const sd_run_opts *o)
{
    const int f = p->downscale;
    if (!o->prompt && !o->prompt_embeds) return dl_fail(DL_ERR_ARG, "sd_pipeline: no prompt");
    if (o->steps < 1 || o->steps > 1000) return dl_fail(DL_ERR_ARG, "sd_pipeline: steps %d (1..1000)", o->steps);
    if (!isfinite(o->guidance) || !isfinite(o->guidance_rescale) || o->guidance_rescale < 0 || o->guidance_rescale > 1)
        return dl_fail(DL_ERR_ARG, "sd_pipeline: guidance %g / guidance_rescale %g", o->guidance, o->guidance_rescale);
    if ((unsigned)o->scheduler >= DL_SAMPLER_COUNT) return dl_fail(DL_ERR_ARG, "sd_pipeline: bad scheduler %d", o->scheduler);
    if (o->width < f || o->height < f || o->width % f || o->height % f || o->width > 4096 || o->height > 4096)
        return dl_fail(DL_ERR_ARG, "sd_pipeline: size %dx%d: width and height must be multiples of %d (the VAE's "
                       "downscale factor) between %d and 4096", o->width, o->height, f, f);
    return DL_OK;
}

static dl_status check_latents(const sd_pipeline *p, const dl_tensor *t, const char *what, int h, int w)
{
    return dl_check_shape(t, "sd_pipeline", what, 4, DL_SHAPE(1, p->latent_channels, h, w));
}

/* The UNet's context into r->context: [negative, positive] with guidance, [positive] without. */
static dl_status make_context(sd_pipeline *p, const sd_run_opts *o, int use_cfg, sd_run_result *r)
{
    const int D = p->context_dim, L = CLIP_MAX_TOKENS;
    DL_TRY(dl_tensor_alloc(&r->context, 3, DL_SHAPE(use_cfg ? 2 : 1, L, D)));
    if (o->prompt_embeds) {
        DL_TRY(dl_check_shape(o->prompt_embeds, "sd_pipeline", "prompt_embeds", 3, DL_SHAPE(2, L, D)));
        const size_t half = (size_t)L * D;
        memcpy(r->context.data, o->prompt_embeds->data + (use_cfg ? 0 : half), (size_t)r->context.numel * sizeof(float));
        return DL_OK;
    }
    dl_tensor neg = {0}, pos = {0};
    dl_status s = dl_tensor_alloc(&neg, 3, DL_SHAPE(1, L, D));
    if (s == DL_OK) s = dl_tensor_alloc(&pos, 3, DL_SHAPE(1, L, D));
    if (s == DL_OK) s = sd_pipeline_encode(p, o->prompt, &pos, r->ids[1]);
    if (s == DL_OK) s = sd_pipeline_encode(p, o->negative_prompt ? o->negative_prompt : "", &neg, r->ids[0]);
    if (s == DL_OK) s = use_cfg ? sd_cfg_context(&r->context, &neg, &pos) : dl_tensor_copy(&r->context, &pos);
    dl_tensor_free(&neg);
    dl_tensor_free(&pos);
    for (int k = 0; k < 2 && s == DL_OK; k++) {
        r->n_real[k] = CLIP_MAX_TOKENS;
        for (int i = 1; i < CLIP_MAX_TOKENS; i++)
            if (r->ids[k][i] == p->tokenizer.eos_id) { r->n_real[k] = i + 1; break; }
    }
    return s;
}

/* latents [1, C, h, w] / scaling_factor -> VAE -> [1, 3, H, W] in [0, 1] */
static dl_status decode(sd_pipeline *p, const dl_tensor *latents, dl_tensor *image)
{
    dl_tensor z = {0};
    dl_status s = dl_tensor_alloc(&z, 4, latents->shape);
    if (s == DL_OK) s = sd_latents_to_vae_input(&z, latents, p->vae.cfg.scaling_factor);
    if (s == DL_OK && !image->data)
        s = dl_tensor_alloc(image, 4, DL_SHAPE(1, 3, latents->shape[2] * p->downscale, latents->shape[3] * p->downscale));
    if (s == DL_OK) s = sd_vae_decode(&p->vae, image, &z);
    if (s == DL_OK) sd_postprocess(image);
    dl_tensor_free(&z);
    return s;
}

static dl_status run(sd_pipeline *p, const sd_run_opts *o, sd_step_fn cb, void *cb_ctx, sd_run_result *r,
                     dl_sampler *s, dl_cfg *g, dl_tensor *x0_img)
{
    DL_TRY(check_opts(p, o));
    const int h = o->height / p->downscale, w = o->width / p->downscale, C = p->latent_channels;
    const int use_cfg = o->guidance > 1.0f;           /* diffusers: do_classifier_free_guidance */

    double t0 = now_seconds();
    DL_TRY(make_context(p, o, use_cfg, r));
    if (o->release_text_encoder) sd_pipeline_release_text_encoder(p);
    r->seconds_text = now_seconds() - t0;

    /* the scheduler, configured as Cls.from_config(the model's scheduler config) */
    dl_sampler_config cfg;
    DL_TRY(dl_scheduler_config_for(&p->scheduler, o->scheduler, &cfg));
    DL_TRY(dl_sampler_init(s, o->scheduler, &p->schedule, &cfg, o->steps, o->eta, 4, DL_SHAPE(1, C, h, w)));
    r->init_noise_sigma = s->init_noise_sigma;

    /* the starting latents; the generator then goes on feeding the sampler's noise */
    dl_rng own_rng, *rng = o->rng ? o->rng : &own_rng;
    if (!o->rng) dl_rng_seed(&own_rng, o->seed);
    if (o->start_latents) {
        DL_TRY(check_latents(p, o->start_latents, "start_latents", h, w));
        if (o->start_step < 0 || o->start_step >= s->num_calls)
            return dl_fail(DL_ERR_ARG, "sd_pipeline: start_step %d outside 0..%d", o->start_step, s->num_calls - 1);
        DL_TRY(dl_sampler_set_start(s, o->start_step, o->start_latents));   /* img2img: the first calls are skipped */
    } else if (o->init_latents) {
        DL_TRY(check_latents(p, o->init_latents, "init_latents", h, w));
        DL_TRY(dl_sampler_set_noise_from(s, o->init_latents->data));   /* latents * init_noise_sigma */
    } else {
        DL_TRY(dl_sampler_set_noise(s, rng));   /* randn_tensor((1, C, h, w), generator) * init_noise_sigma */
    }

    unet_model um = {&p->unet, &r->context, o->residuals, o->residuals_ctx};
    dl_eps_model model = unet_eps;
    void *model_ctx = &um;
    if (use_cfg) {
        DL_TRY(dl_cfg_init(g, unet_eps, &um, o->guidance, 4, DL_SHAPE(1, C, h, w)));
        g->guidance_rescale = o->guidance_rescale;
        model = dl_cfg_eps;
        model_ctx = g;
    }

    const int calls = s->num_calls - s->step_index;
    int used_noise = 0;
    double start = now_seconds();
    for (int call = 1; !dl_sampler_done(s); call++) {
        double ts = now_seconds();
        float t = dl_sampler_current_timestep(s);
        DL_TRY(dl_sampler_predict(s, model, model_ctx));
        const float *noise = NULL;
        if (o->noise && dl_sampler_update_draws_noise(s)) {
            if (used_noise >= o->n_noise)
                return dl_fail(DL_ERR_ARG, "sd_pipeline: the sampler wants noise draw %d but only %d were given",
                               used_noise + 1, o->n_noise);
            noise = o->noise + (size_t)used_noise++ * (size_t)s->x.numel;
        }
        DL_TRY(dl_sampler_update(s, rng, noise));
        r->calls++;
        int decoded = 0;
        if (o->decode_every > 0 && (call % o->decode_every == 0 || dl_sampler_done(s))) {
            DL_TRY(decode(p, &s->x0, x0_img));
            decoded = 1;
        }
        if (cb) {
            double tn = now_seconds();
            sd_step_info info = {call, calls, t, &s->x, &s->x0, decoded ? x0_img : NULL, s, tn - ts, tn - start};
            if (cb(cb_ctx, &info)) { r->stopped = 1; break; }
        }
    }
    r->seconds_sampling = now_seconds() - start;
    DL_TRY(dl_tensor_alloc(&r->latents, 4, DL_SHAPE(1, C, h, w)));
    DL_TRY(dl_tensor_copy(&r->latents, &s->x));
    if (r->stopped || o->skip_decode) return DL_OK;

    t0 = now_seconds();
    DL_TRY(decode(p, &r->latents, &r->image));
    r->seconds_decode = now_seconds() - t0;
    return DL_OK;
}

dl_status sd_pipeline_run(sd_pipeline *p, const sd_run_opts *o, sd_step_fn cb, void *cb_ctx, sd_run_result *r)
{
    memset(r, 0, sizeof *r);
    dl_sampler s;
    dl_cfg g;
    dl_tensor x0_img = {0};
    memset(&s, 0, sizeof s);
    memset(&g, 0, sizeof g);
    dl_status st = run(p, o, cb, cb_ctx, r, &s, &g, &x0_img);
    dl_tensor_free(&x0_img);
    dl_cfg_free(&g);
    dl_sampler_free(&s);
    return st;
}

void sd_fit_size(int pic_w, int pic_h, int factor, int max_latent, int *w, int *h)
{
    double k = (double)max_latent * factor / (pic_w > pic_h ? pic_w : pic_h);
    if (k > 1) k = 1;
    if (!*w) *w = (int)(pic_w * k) / factor * factor;
    if (!*h) *h = (int)(pic_h * k) / factor * factor;
}
