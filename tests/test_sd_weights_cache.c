/* test_sd_weights_cache.c - keeping widened fp16 weights (sd_weights_set_cache):
 * the UNet gives bit-identical outputs with the cache off, on (first call
 * fills it) and on again (second call reads it), the cache holds exactly
 * the part's widened size, and switching it off frees it. Runs on the tiny
 * checkpoint's single file, which stores fp16. */
#include "testing.h"
#include "../core/sd_unet.h"
#include "../core/sd_weights.h"

#include <stdio.h>
#include <string.h>

#define TINY_SD "tests/fixtures/tiny-sd"
#define TINY_SINGLE TINY_SD "/tiny-sd.safetensors"

/* A fixed input: latents [2, 4, 16, 16], context [2, 77, D], t = 999 and 1. */
static int run(sd_unet *u, dl_tensor *out)
{
    const sd_unet_config *c = &u->cfg;
    dl_tensor x, ctx;
    dl_test_rng r = {7};
    if (!dl_test_rand_tensor(&x, &r, 4, DL_SHAPE(2, c->in_channels, 16, 16))) return 0;
    if (!dl_test_rand_tensor(&ctx, &r, 3, DL_SHAPE(2, 77, c->cross_attention_dim))) { dl_tensor_free(&x); return 0; }
    const float t[2] = {999, 1};
    int ok = CHECK(dl_tensor_alloc(out, 4, DL_SHAPE(2, c->out_channels, 16, 16)) == DL_OK, "alloc") &&
             CHECK(sd_unet_forward(u, out, &x, t, &ctx, NULL) == DL_OK, "forward: %s", dl_error_message());
    dl_tensor_free(&x);
    dl_tensor_free(&ctx);
    return ok;
}

static int same_bits(const dl_tensor *a, const dl_tensor *b)
{
    return a->numel == b->numel && memcmp(a->data, b->data, (size_t)a->numel * sizeof(float)) == 0;
}

TEST(sd_weights, cache_gives_identical_unet_outputs)
{
    sd_weights w;
    sd_unet u;
    if (!CHECK(sd_weights_open(&w, TINY_SINGLE) == DL_OK, "open: %s", dl_error_message())) return;
    if (!CHECK(sd_weights_set_config_dir(&w, TINY_SD) == DL_OK, "%s", dl_error_message()) ||
        !CHECK(sd_unet_init(&u, &w) == DL_OK, "init: %s", dl_error_message())) {
        sd_weights_close(&w);
        return;
    }
    const size_t unet_bytes = sd_weights_widened_bytes(&w, SD_PART_UNET);
    CHECK(unet_bytes > 0 && sd_weights_widened_bytes(&w, SD_PART_VAE) > 0, "widened sizes of a fp16 file");
    CHECK(!sd_weights_cache_on(&w, SD_PART_UNET), "the default is off");

    dl_tensor off, cold, warm;
    memset(&cold, 0, sizeof cold);
    memset(&warm, 0, sizeof warm);
    if (run(&u, &off)) {
        CHECK(sd_weights_cache_bytes(&w) == 0, "off: nothing kept (%zu bytes)", sd_weights_cache_bytes(&w));
        CHECK(sd_weights_set_cache(&w, SD_PART_UNET, SD_CACHE_ON) == DL_OK, "%s", dl_error_message());
        CHECK(sd_weights_cache_on(&w, SD_PART_UNET), "on");
        if (run(&u, &cold) && run(&u, &warm)) {
            CHECK(same_bits(&off, &cold), "first call with the cache differs from the uncached call");
            CHECK(same_bits(&off, &warm), "call from the cache differs from the uncached call");
            CHECK(sd_weights_cache_bytes(&w) == unet_bytes, "cache holds %zu bytes, the UNet widened is %zu",
                  sd_weights_cache_bytes(&w), unet_bytes);
        }
        /* a VAE tensor from the same single file is not affected by the UNet's cache */
        dl_tensor v;
        if (CHECK(sd_weights_get(&w, SD_PART_VAE, "decoder.conv_in.bias", 1, DL_SHAPE(64), &v) == DL_OK,
                  "vae get: %s", dl_error_message())) {
            CHECK(v.owns_data == 1, "vae (cache off) tensor is an owned copy");
            dl_tensor_free(&v);
        }
        CHECK(sd_weights_set_cache(&w, SD_PART_UNET, SD_CACHE_OFF) == DL_OK, "%s", dl_error_message());
        CHECK(sd_weights_cache_bytes(&w) == 0, "off again: %zu bytes still kept", sd_weights_cache_bytes(&w));
        CHECK(sd_weights_set_cache(&w, SD_PART_UNET, SD_CACHE_AUTO) == DL_OK, "%s", dl_error_message());
        CHECK(sd_weights_cache_on(&w, SD_PART_UNET), "auto: a tiny model fits in memory");
        CHECK(sd_weights_set_cache(&w, SD_PART_UNET, (sd_cache_mode)99) == DL_ERR_ARG, "bad mode rejected");
    }
    dl_tensor_free(&off); dl_tensor_free(&cold); dl_tensor_free(&warm);
    sd_unet_free(&u);
    sd_weights_close(&w);
}

TEST(sd_weights, cache_changes_nothing_for_float32_files)
{
    sd_weights w;
    if (!CHECK(sd_weights_open(&w, TINY_SD) == DL_OK, "open: %s", dl_error_message())) return;
    CHECK(sd_weights_widened_bytes(&w, SD_PART_UNET) == 0, "fp32 folder: nothing to widen");
    CHECK(sd_weights_set_cache(&w, SD_PART_UNET, SD_CACHE_ON) == DL_OK, "%s", dl_error_message());
    CHECK(!sd_weights_cache_on(&w, SD_PART_UNET), "nothing to cache in a float32 file");
    dl_tensor t;
    if (CHECK(sd_weights_get(&w, SD_PART_UNET, "conv_in.bias", 1, DL_SHAPE(32), &t) == DL_OK, "%s", dl_error_message())) {
        CHECK(t.owns_data == 0, "float32: a view of the mapping");
        dl_tensor_free(&t);
    }
    CHECK(sd_weights_cache_bytes(&w) == 0, "nothing kept");
    sd_weights_close(&w);
}
