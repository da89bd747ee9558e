/* test_sd_vae.c - the Stable Diffusion VAE (core/sd_vae.h) against
 * diffusers' AutoencoderKL on the tiny checkpoint in tests/fixtures/tiny-sd
 * (goldens: tests/fixtures/tiny-sd-golden/vae.safetensors, see its README). */
#include "testing.h"
#include "../core/image.h"
#include "../core/safetensors.h"
#include "../core/sd_vae.h"
#include "../core/sd_weights.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define TINY_SD "tests/fixtures/tiny-sd"
#define GOLDEN "tests/fixtures/tiny-sd-golden/vae.safetensors"
#define VAE_TOL 1e-4

static int load(const dl_safetensors *f, const char *name, dl_tensor *t)
{
    dl_status s = dl_st_load_tensor(f, name, t);
    return CHECK(s == DL_OK, "golden tensor %s: %s", name, dl_error_message());
}

static int open_vae(sd_weights *w, sd_vae *v, dl_safetensors *g)
{
    if (!CHECK(sd_weights_open(w, TINY_SD) == DL_OK, "open: %s", dl_error_message())) return 0;
    if (!CHECK(sd_vae_init(v, w) == DL_OK, "sd_vae_init: %s", dl_error_message())) {
        sd_weights_close(w);
        return 0;
    }
    if (!CHECK(dl_st_open(g, GOLDEN) == DL_OK, "%s", dl_error_message())) {
        sd_vae_free(v);
        sd_weights_close(w);
        return 0;
    }
    return 1;
}

static void close_vae(sd_weights *w, sd_vae *v, dl_safetensors *g)
{
    dl_st_close(g);
    sd_vae_free(v);
    sd_weights_close(w);
}

static void compare(const char *what, const dl_tensor *got, const dl_tensor *want, double tol)
{
    if (!CHECK(got->numel == want->numel, "%s: %lld vs %lld values", what, (long long)got->numel,
               (long long)want->numel)) return;
    printf("    %-24s max abs diff %.3g\n", what, dl_max_abs_diff(got->data, want->data, (size_t)want->numel));
    CHECK_CLOSE(what, got->data, want->data, (size_t)want->numel, tol);
}

TEST(sd_vae, decode_matches_diffusers)
{
    sd_weights w; sd_vae v; dl_safetensors g;
    if (!open_vae(&w, &v, &g)) return;
    CHECK(sd_vae_downscale(&v.cfg) == 2 && v.cfg.scaling_factor == 0.18215f, "tiny vae config");
    dl_tensor lat, zin, want, z, img, post;
    if (load(&g, "latents", &lat) && load(&g, "decode_input", &zin) && load(&g, "decoded", &want) &&
        load(&g, "image_postprocessed_np", &post)) {
        /* the pipeline's latents / scaling_factor (a division, as torch does it) is the decoder input */
        dl_tensor_alloc(&z, 4, lat.shape);
        for (int64_t i = 0; i < lat.numel; i++) z.data[i] = lat.data[i] / v.cfg.scaling_factor;
        compare("decode_input", &z, &zin, 0.0);
        dl_tensor_alloc(&img, 4, want.shape);
        if (CHECK(sd_vae_decode(&v, &img, &zin) == DL_OK, "decode: %s", dl_error_message())) {
            compare("decoded", &img, &want, VAE_TOL);
            /* (x / 2 + 0.5).clamp(0, 1), NHWC */
            const int64_t C = 3, H = 64, W = 64;
            float worst = 0;
            for (int64_t c = 0; c < C; c++)
                for (int64_t i = 0; i < H * W; i++) {
                    float x = img.data[c * H * W + i] / 2 + 0.5f;
                    x = x < 0 ? 0 : x > 1 ? 1 : x;
                    float d = fabsf(x - post.data[i * C + c]);
                    if (d > worst) worst = d;
                }
            CHECK(worst <= VAE_TOL, "postprocessed image: max abs diff %g", worst);
            CHECK(v.scratch_peak > 0, "scratch peak recorded");
        }
        dl_tensor_free(&z); dl_tensor_free(&img);
    }
    dl_tensor_free(&lat); dl_tensor_free(&zin); dl_tensor_free(&want); dl_tensor_free(&post);
    close_vae(&w, &v, &g);
}

TEST(sd_vae, encode_matches_diffusers)
{
    sd_weights w; sd_vae v; dl_safetensors g;
    if (!open_vae(&w, &v, &g)) return;
    dl_tensor image, moments, mean, logvar, std, m, lv, sd;
    if (load(&g, "image", &image) && load(&g, "encoder_moments", &moments) && load(&g, "latent_mean", &mean) &&
        load(&g, "latent_logvar", &logvar) && load(&g, "latent_std", &std)) {
        /* the golden input is test_image.png as 2 x / 255 - 1 */
        dl_image png;
        if (CHECK(dl_image_load(&png, "tests/fixtures/tiny-sd-golden/test_image.png", 3) == DL_OK, "%s",
                  dl_error_message())) {
            float worst = 0;
            for (int c = 0; c < 3; c++)
                for (int i = 0; i < 64 * 64; i++) {
                    float x = 2.0f * png.px[i * 3 + c] / 255.0f - 1.0f;
                    float d = fabsf(x - image.data[c * 64 * 64 + i]);
                    if (d > worst) worst = d;
                }
            CHECK(worst <= 1e-6f, "test_image.png vs the golden image: %g", worst);
            dl_image_free(&png);
        }
        dl_tensor out;
        dl_tensor_alloc(&out, 4, moments.shape);
        if (CHECK(sd_vae_encode(&v, &out, &image) == DL_OK, "encode: %s", dl_error_message())) {
            compare("encoder_moments", &out, &moments, VAE_TOL);
            dl_tensor_alloc(&m, 4, mean.shape);
            dl_tensor_alloc(&lv, 4, mean.shape);
            dl_tensor_alloc(&sd, 4, mean.shape);
            if (CHECK(sd_vae_moments_split(&out, &m, &lv, &sd) == DL_OK, "%s", dl_error_message())) {
                compare("latent_mean", &m, &mean, VAE_TOL);
                compare("latent_logvar", &lv, &logvar, VAE_TOL);
                compare("latent_std", &sd, &std, VAE_TOL);
            }
            dl_tensor_free(&m); dl_tensor_free(&lv); dl_tensor_free(&sd);
        }
        dl_tensor_free(&out);
    }
    dl_tensor_free(&image); dl_tensor_free(&moments); dl_tensor_free(&mean);
    dl_tensor_free(&logvar); dl_tensor_free(&std);
    close_vae(&w, &v, &g);
}

TEST(sd_vae, logvar_is_clamped)
{
    dl_tensor mom, lv, sd;
    dl_tensor_alloc(&mom, 4, DL_SHAPE(1, 2, 1, 3));
    const float vals[6] = {0.5f, -1, 2, -100, 3, 50};       /* mean 0.5 -1 2, logvar -100 3 50 */
    memcpy(mom.data, vals, sizeof vals);
    dl_tensor_alloc(&lv, 4, DL_SHAPE(1, 1, 1, 3));
    dl_tensor_alloc(&sd, 4, DL_SHAPE(1, 1, 1, 3));
    CHECK(sd_vae_moments_split(&mom, NULL, &lv, &sd) == DL_OK, "%s", dl_error_message());
    CHECK(lv.data[0] == -30 && lv.data[1] == 3 && lv.data[2] == 20, "clamp: %g %g %g", lv.data[0], lv.data[1], lv.data[2]);
    CHECK(fabsf(sd.data[1] - expf(1.5f)) < 1e-6f, "std = exp(logvar / 2)");
    dl_tensor_free(&mom); dl_tensor_free(&lv); dl_tensor_free(&sd);
}

TEST(sd_vae, config_and_errors)
{
    sd_vae_config c;
    sd_vae_config_sd15(&c);
    CHECK(c.levels == 4 && c.block_out_channels[0] == 128 && sd_vae_downscale(&c) == 8, "sd15 vae defaults");
    CHECK(sd_vae_config_parse(&c, "{\"block_out_channels\": [32, 64], \"norm_num_groups\": 8,"
                                  "\"down_block_types\": [\"DownEncoderBlock2D\", \"DownEncoderBlock2D\"],"
                                  "\"scaling_factor\": 0.13025}") == DL_OK, "%s", dl_error_message());
    CHECK(c.levels == 2 && c.scaling_factor == 0.13025f, "parsed");
    EXPECT_FAIL(sd_vae_config_parse(&c, "{\"up_block_types\": [\"UpBlock2D\"]}"), DL_ERR_FORMAT, "up_block_types",
                "wrong block type");

    sd_weights w; sd_vae v; dl_safetensors g;
    if (!open_vae(&w, &v, &g)) return;
    dl_tensor z, img;
    dl_tensor_alloc(&z, 4, DL_SHAPE(1, 3, 8, 8));                /* 3 latent channels, not 4 */
    dl_tensor_alloc(&img, 4, DL_SHAPE(1, 3, 16, 16));
    EXPECT_FAIL(sd_vae_decode(&v, &img, &z), DL_ERR_SHAPE, "latents", "3 latent channels");
    dl_tensor im2, mom;
    dl_tensor_alloc(&im2, 4, DL_SHAPE(1, 3, 15, 16));            /* not a multiple of 2 */
    dl_tensor_alloc(&mom, 4, DL_SHAPE(1, 8, 7, 8));
    EXPECT_FAIL(sd_vae_encode(&v, &mom, &im2), DL_ERR_SHAPE, "multiple", "odd image size");
    /* a tensor the config asks for but the checkpoint lacks is named */
    v.cfg.layers_per_block = 3;
    dl_tensor z4;
    dl_tensor_alloc(&z4, 4, DL_SHAPE(1, 4, 8, 8));
    dl_status s = sd_vae_decode(&v, &img, &z4);
    CHECK(s != DL_OK && strstr(dl_error_message(), "decoder.up_blocks.0.resnets.3"),
          "missing tensor not named: %s", dl_error_message());
    dl_tensor_free(&z); dl_tensor_free(&img); dl_tensor_free(&im2); dl_tensor_free(&mom); dl_tensor_free(&z4);
    close_vae(&w, &v, &g);
}
