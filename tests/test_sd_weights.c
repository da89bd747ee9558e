/* test_sd_weights.c - loading Stable Diffusion weights from a diffusers
 * folder and from a CompVis/LDM single file (tests/fixtures/tiny-sd/).
 *
 * The single file tiny-sd.safetensors holds the same three models as the
 * folder, each tensor the fp32 folder tensor rounded to fp16. So after
 * rounding the folder values to fp16 the two must agree bit for bit - for
 * every tensor of every part, which checks the whole name translation. */
#include "testing.h"
#include "../core/safetensors.h"
#include "../core/sd_weights.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TINY_DIR    "tests/fixtures/tiny-sd"
#define TINY_SINGLE "tests/fixtures/tiny-sd/tiny-sd.safetensors"

static const char *const part_file[SD_PART_COUNT] = {
    TINY_DIR "/text_encoder/model.safetensors",
    TINY_DIR "/unet/diffusion_pytorch_model.safetensors",
    TINY_DIR "/vae/diffusion_pytorch_model.safetensors",
};

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

TEST(sd_weights, folder_and_single_file_agree_on_every_tensor)
{
    sd_weights folder, single;
    if (!CHECK(sd_weights_open(&folder, TINY_DIR) == DL_OK, "open folder: %s", dl_error_message())) return;
    if (!CHECK(sd_weights_open(&single, TINY_SINGLE) == DL_OK, "open single: %s", dl_error_message())) {
        sd_weights_close(&folder);
        return;
    }
    CHECK(folder.layout == SD_LAYOUT_DIFFUSERS, "folder layout");
    CHECK(single.layout == SD_LAYOUT_SINGLE_FILE, "single-file layout");

    int total = 0, mismatched = 0, failed = 0, n_keys = 0;
    char *keys[1024];   /* the single-file keys the translation produced */
    for (int p = 0; p < SD_PART_COUNT; p++) {
        dl_safetensors ref;   /* only to enumerate the diffusers names */
        if (!CHECK(dl_st_open(&ref, part_file[p]) == DL_OK, "%s", dl_error_message())) continue;
        for (int i = 0; i < ref.count; i++) {
            const dl_st_entry *e = &ref.entries[i];
            dl_tensor a, b;
            total++;
            if (!CHECK(sd_weights_get(&folder, (sd_part)p, e->name, e->ndim, e->shape, &a) == DL_OK,
                       "folder %s: %s", e->name, dl_error_message())) { failed++; continue; }
            if (!CHECK(sd_weights_get(&single, (sd_part)p, e->name, e->ndim, e->shape, &b) == DL_OK,
                       "single %s: %s", e->name, dl_error_message())) { failed++; dl_tensor_free(&a); continue; }
            CHECK(a.owns_data == 0, "%s: an fp32 folder tensor should be a view of the mapping", e->name);
            CHECK(b.owns_data == 1, "%s: an fp16 tensor should be an owned fp32 copy", e->name);
            int bad = 0;
            for (int64_t k = 0; k < a.numel; k++)
                if (dl_f32_to_f16(a.data[k]) != dl_f32_to_f16(b.data[k]) || (float)b.data[k] !=
                    dl_f16_to_f32(dl_f32_to_f16(b.data[k]))) bad = 1;
            if (bad) mismatched++;
            CHECK(!bad, "%s tensor %s: single file differs from fp16(folder)", sd_part_names[p], e->name);
            char key[512];
            if (sd_weights_ldm_name(&single, (sd_part)p, e->name, key, sizeof key) == DL_OK && n_keys < 1024)
                keys[n_keys++] = strdup(key);
            dl_tensor_free(&a);
            dl_tensor_free(&b);
        }
        dl_st_close(&ref);
    }
    printf("    sd_weights: %d tensors (text encoder + unet + vae), %d differ, %d failed to load\n",
           total, mismatched, failed);
    CHECK(total == 512, "expected 52 + 304 + 156 = 512 tensors, got %d", total);

    /* The translation must be one-to-one onto the file's 512 keys. */
    qsort(keys, (size_t)n_keys, sizeof keys[0], cmp_str);
    int distinct = 0;
    for (int i = 0; i < n_keys; i++)
        if (i == 0 || strcmp(keys[i], keys[i - 1]) != 0) distinct++;
    dl_safetensors sf;
    if (CHECK(dl_st_open(&sf, TINY_SINGLE) == DL_OK, "%s", dl_error_message())) {
        CHECK(distinct == sf.count, "%d distinct single-file names used, the file has %d", distinct, sf.count);
        dl_st_close(&sf);
    }
    for (int i = 0; i < n_keys; i++) free(keys[i]);
    sd_weights_close(&folder);
    sd_weights_close(&single);
}

/* Names of the LDM layout as documented for this checkpoint. */
TEST(sd_weights, single_file_names)
{
    sd_weights w;
    if (!CHECK(sd_weights_open(&w, TINY_SINGLE) == DL_OK, "open: %s", dl_error_message())) return;
    static const struct { sd_part part; const char *diffusers, *ldm; } cases[] = {
        {SD_PART_UNET, "conv_in.weight", "model.diffusion_model.input_blocks.0.0.weight"},
        {SD_PART_UNET, "time_embedding.linear_2.bias", "model.diffusion_model.time_embed.2.bias"},
        {SD_PART_UNET, "down_blocks.1.resnets.0.conv1.weight", "model.diffusion_model.input_blocks.4.0.in_layers.2.weight"},
        {SD_PART_UNET, "down_blocks.1.resnets.0.conv_shortcut.weight", "model.diffusion_model.input_blocks.4.0.skip_connection.weight"},
        {SD_PART_UNET, "down_blocks.0.downsamplers.0.conv.weight", "model.diffusion_model.input_blocks.3.0.op.weight"},
        {SD_PART_UNET, "down_blocks.1.attentions.1.proj_out.weight", "model.diffusion_model.input_blocks.5.1.proj_out.weight"},
        {SD_PART_UNET, "mid_block.resnets.1.time_emb_proj.weight", "model.diffusion_model.middle_block.2.emb_layers.1.weight"},
        {SD_PART_UNET, "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight",
         "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight"},
        {SD_PART_UNET, "up_blocks.0.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.2.2.conv.weight"},
        {SD_PART_UNET, "up_blocks.1.resnets.2.norm2.bias", "model.diffusion_model.output_blocks.5.0.out_layers.0.bias"},
        {SD_PART_UNET, "conv_norm_out.weight", "model.diffusion_model.out.0.weight"},
        {SD_PART_VAE, "decoder.up_blocks.0.resnets.0.conv1.weight", "first_stage_model.decoder.up.1.block.0.conv1.weight"},
        {SD_PART_VAE, "decoder.up_blocks.0.upsamplers.0.conv.weight", "first_stage_model.decoder.up.1.upsample.conv.weight"},
        {SD_PART_VAE, "encoder.down_blocks.1.resnets.0.conv_shortcut.bias", "first_stage_model.encoder.down.1.block.0.nin_shortcut.bias"},
        {SD_PART_VAE, "encoder.mid_block.attentions.0.to_out.0.weight", "first_stage_model.encoder.mid.attn_1.proj_out.weight"},
        {SD_PART_VAE, "decoder.mid_block.resnets.1.norm2.weight", "first_stage_model.decoder.mid.block_2.norm2.weight"},
        {SD_PART_VAE, "post_quant_conv.weight", "first_stage_model.post_quant_conv.weight"},
        {SD_PART_TEXT_ENCODER, "text_model.final_layer_norm.weight",
         "cond_stage_model.transformer.text_model.final_layer_norm.weight"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char key[512] = "";
        CHECK(sd_weights_ldm_name(&w, cases[i].part, cases[i].diffusers, key, sizeof key) == DL_OK, "ldm_name");
        CHECK(strcmp(key, cases[i].ldm) == 0, "%s -> %s, expected %s", cases[i].diffusers, key, cases[i].ldm);
        CHECK(sd_weights_has(&w, cases[i].part, cases[i].diffusers), "has(%s)", cases[i].diffusers);
    }
    CHECK(!sd_weights_has(&w, SD_PART_UNET, "down_blocks.0.attentions.0.proj_in.weight"),
          "level 0 of the tiny unet has no attention");
    CHECK(sd_weights_config_json(&w, SD_PART_UNET) == NULL, "single files carry no config");
    CHECK(sd_weights_set_config_dir(&w, TINY_DIR) == DL_OK, "set_config_dir: %s", dl_error_message());
    const char *cfg = sd_weights_config_json(&w, SD_PART_UNET);
    CHECK(cfg && strstr(cfg, "UNet2DConditionModel"), "config from the folder");
    EXPECT_FAIL(sd_weights_set_config_dir(&w, "tests/fixtures/no-such-dir"), DL_ERR_IO,
                "no-such-dir/text_encoder/config.json", "set_config_dir on a missing folder");

    /* VAE attention: [C, C, 1, 1] in the file, [C, C] and [C, C, 1, 1] both accepted */
    dl_tensor a;
    CHECK(sd_weights_get(&w, SD_PART_VAE, "decoder.mid_block.attentions.0.to_q.weight", 2, DL_SHAPE(64, 64), &a) == DL_OK,
          "linear shape: %s", dl_error_message());
    CHECK(a.ndim == 2 && a.shape[0] == 64 && a.shape[1] == 64, "returned with the asked shape");
    dl_tensor_free(&a);
    CHECK(sd_weights_get(&w, SD_PART_VAE, "decoder.mid_block.attentions.0.to_q.weight", 4, DL_SHAPE(64, 64, 1, 1), &a) == DL_OK,
          "conv shape: %s", dl_error_message());
    dl_tensor_free(&a);
    sd_weights_close(&w);
}

TEST(sd_weights, folder_configs)
{
    sd_weights w;
    if (!CHECK(sd_weights_open(&w, TINY_DIR) == DL_OK, "open: %s", dl_error_message())) return;
    const char *te = sd_weights_config_json(&w, SD_PART_TEXT_ENCODER);
    const char *un = sd_weights_config_json(&w, SD_PART_UNET);
    const char *va = sd_weights_config_json(&w, SD_PART_VAE);
    CHECK(te && strstr(te, "\"quick_gelu\""), "text encoder config");
    CHECK(un && strstr(un, "\"UNet2DConditionModel\""), "unet config");
    CHECK(va && strstr(va, "\"AutoencoderKL\""), "vae config");
    CHECK(strstr(sd_weights_file(&w, SD_PART_UNET), "unet/diffusion_pytorch_model.safetensors") != NULL,
          "fp32 file preferred: %s", sd_weights_file(&w, SD_PART_UNET));
    sd_weights_close(&w);
}

/* ------------------------------------------------------------------ */
/* Folders assembled from symlinks: fp16 variant only, missing parts    */

static void link_into(const char *dir, const char *target_rel, const char *name)
{
    char target[PATH_MAX], link[2048];
    if (!realpath(target_rel, target)) return;
    snprintf(link, sizeof link, "%s/%s", dir, name);
    unlink(link);
    if (symlink(target, link) != 0) CHECK(0, "symlink %s: %s", link, strerror(errno));
}

/* build/test_out/sd_weights/<name>/ with model_index.json, text_encoder/,
 * vae/ linked from the fixture and unet/ holding config.json plus, if
 * unet_weights, that weight file. */
static const char *make_folder(const char *name, const char *unet_weights)
{
    static char dir[512];
    char unet[600], path[700];
    snprintf(dir, sizeof dir, "%s/%s", dl_test_out_dir("sd_weights"), name);
    mkdir(dir, 0755);
    link_into(dir, TINY_DIR "/model_index.json", "model_index.json");
    link_into(dir, TINY_DIR "/text_encoder", "text_encoder");
    link_into(dir, TINY_DIR "/vae", "vae");
    snprintf(unet, sizeof unet, "%s/unet", dir);
    mkdir(unet, 0755);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", unet);
    unlink(path);
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.fp16.safetensors", unet);
    unlink(path);
    link_into(unet, TINY_DIR "/unet/config.json", "config.json");
    if (unet_weights) {
        snprintf(path, sizeof path, TINY_DIR "/unet/%s", unet_weights);
        link_into(unet, path, unet_weights);
    }
    return dir;
}

TEST(sd_weights, fp16_variant_fallback)
{
    const char *dir = make_folder("fp16_only", "diffusion_pytorch_model.fp16.safetensors");
    sd_weights half, full;
    if (!CHECK(sd_weights_open(&half, dir) == DL_OK, "open fp16-only folder: %s", dl_error_message())) return;
    if (!CHECK(sd_weights_open(&full, TINY_DIR) == DL_OK, "open: %s", dl_error_message())) {
        sd_weights_close(&half);
        return;
    }
    CHECK(strstr(sd_weights_file(&half, SD_PART_UNET), "fp16.safetensors") != NULL, "uses the fp16 variant");
    dl_safetensors ref;
    int bad = 0, n = 0;
    if (CHECK(dl_st_open(&ref, part_file[SD_PART_UNET]) == DL_OK, "%s", dl_error_message())) {
        for (int i = 0; i < ref.count; i++) {
            const dl_st_entry *e = &ref.entries[i];
            dl_tensor a, b;
            if (sd_weights_get(&full, SD_PART_UNET, e->name, e->ndim, e->shape, &a) != DL_OK) { bad++; continue; }
            if (sd_weights_get(&half, SD_PART_UNET, e->name, e->ndim, e->shape, &b) != DL_OK) {
                CHECK(0, "%s", dl_error_message());
                bad++;
                dl_tensor_free(&a);
                continue;
            }
            for (int64_t k = 0; k < a.numel; k++)
                if (dl_f16_to_f32(dl_f32_to_f16(a.data[k])) != b.data[k]) { bad++; break; }
            n++;
            dl_tensor_free(&a);
            dl_tensor_free(&b);
        }
        dl_st_close(&ref);
    }
    CHECK(n == 304 && bad == 0, "fp16 variant: %d of %d unet tensors differ from fp16(fp32 file)", bad, n);
    sd_weights_close(&half);
    sd_weights_close(&full);
}

TEST(sd_weights, error_messages)
{
    sd_weights w;
    /* a folder without any unet weights: names the file that is missing */
    const char *dir = make_folder("no_unet_weights", NULL);
    EXPECT_FAIL(sd_weights_open(&w, dir), DL_ERR_IO, "no_unet_weights/unet/diffusion_pytorch_model.safetensors",
                "missing unet weights");
    CHECK(w.impl == NULL, "a failed open leaves nothing to close");
    sd_weights_close(&w);   /* harmless */

    EXPECT_FAIL(sd_weights_open(&w, "tests/fixtures/no-such-model"), DL_ERR_IO, "no-such-model", "missing path");
    EXPECT_FAIL(sd_weights_open(&w, "tests/fixtures"), DL_ERR_IO, "not a diffusers model folder", "plain folder");
    EXPECT_FAIL(sd_weights_open(&w, "tests/fixtures/tiny-sd/text_encoder/model.safetensors"), DL_ERR_FORMAT,
                "not a Stable Diffusion checkpoint", "a safetensors file that is no SD checkpoint");

    if (!CHECK(sd_weights_open(&w, TINY_DIR) == DL_OK, "open: %s", dl_error_message())) return;
    dl_tensor t;
    EXPECT_FAIL(sd_weights_get(&w, SD_PART_UNET, "down_blocks.0.attentions.0.proj_in.weight", 4,
                               DL_SHAPE(32, 32, 1, 1), &t),
                DL_ERR_FORMAT, "down_blocks.0.attentions.0.proj_in.weight", "missing tensor");
    CHECK(strstr(dl_error_message(), "unet") && strstr(dl_error_message(), "diffusion_pytorch_model.safetensors"),
          "missing tensor names part and file: %s", dl_error_message());
    EXPECT_FAIL(sd_weights_get(&w, SD_PART_UNET, "conv_in.weight", 4, DL_SHAPE(32, 4, 3, 2), &t),
                DL_ERR_SHAPE, "[32, 4, 3, 2]", "wrong shape");
    CHECK(strstr(dl_error_message(), "[32, 4, 3, 3]") && strstr(dl_error_message(), "conv_in.weight"),
          "wrong shape gives both shapes: %s", dl_error_message());
    EXPECT_FAIL(sd_weights_get(&w, SD_PART_VAE, "decoder.mid_block.attentions.0.to_q.weight", 2, DL_SHAPE(64, 32), &t),
                DL_ERR_SHAPE, "[64, 64]", "wrong shape of a linear");
    sd_weights_close(&w);

    if (!CHECK(sd_weights_open(&w, TINY_SINGLE) == DL_OK, "open: %s", dl_error_message())) return;
    EXPECT_FAIL(sd_weights_get(&w, SD_PART_VAE, "decoder.up_blocks.1.upsamplers.0.conv.weight", 4,
                               DL_SHAPE(32, 32, 3, 3), &t),
                DL_ERR_FORMAT, "first_stage_model.decoder.up.0.upsample.conv.weight", "missing tensor (single file)");
    CHECK(strstr(dl_error_message(), "tiny-sd.safetensors") && strstr(dl_error_message(), "vae"),
          "names part and file: %s", dl_error_message());
    sd_weights_close(&w);
}

/* SD 1.5's real single files have 4 levels (and a VAE with 4 levels whose
 * decoder numbering is reversed). A stand-in file with SD 1.5's key names
 * (1-element tensors) checks the translation at that size: expected names
 * from the published SD 1.5 conversion tables (input_blocks.3/6/9.0.op,
 * upsamplers at output_blocks.2.1, 5.2, 8.2 ...). It also has an old-style
 * text encoder (no "text_model." level, transformers < 4.x). */
TEST(sd_weights, sd15_single_file_names)
{
    static const struct { sd_part part; const char *diffusers, *ldm; } cases[] = {
        {SD_PART_UNET, "down_blocks.0.resnets.0.norm1.weight", "model.diffusion_model.input_blocks.1.0.in_layers.0.weight"},
        {SD_PART_UNET, "down_blocks.0.attentions.1.proj_in.weight", "model.diffusion_model.input_blocks.2.1.proj_in.weight"},
        {SD_PART_UNET, "down_blocks.0.downsamplers.0.conv.weight", "model.diffusion_model.input_blocks.3.0.op.weight"},
        {SD_PART_UNET, "down_blocks.1.downsamplers.0.conv.weight", "model.diffusion_model.input_blocks.6.0.op.weight"},
        {SD_PART_UNET, "down_blocks.2.attentions.1.proj_in.weight", "model.diffusion_model.input_blocks.8.1.proj_in.weight"},
        {SD_PART_UNET, "down_blocks.2.downsamplers.0.conv.weight", "model.diffusion_model.input_blocks.9.0.op.weight"},
        {SD_PART_UNET, "down_blocks.3.resnets.1.conv2.weight", "model.diffusion_model.input_blocks.11.0.out_layers.3.weight"},
        {SD_PART_UNET, "mid_block.resnets.0.norm1.bias", "model.diffusion_model.middle_block.0.in_layers.0.bias"},
        {SD_PART_UNET, "mid_block.attentions.0.proj_out.bias", "model.diffusion_model.middle_block.1.proj_out.bias"},
        {SD_PART_UNET, "up_blocks.0.resnets.2.conv1.weight", "model.diffusion_model.output_blocks.2.0.in_layers.2.weight"},
        {SD_PART_UNET, "up_blocks.0.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.2.1.conv.weight"},
        {SD_PART_UNET, "up_blocks.1.attentions.0.norm.weight", "model.diffusion_model.output_blocks.3.1.norm.weight"},
        {SD_PART_UNET, "up_blocks.1.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.5.2.conv.weight"},
        {SD_PART_UNET, "up_blocks.2.upsamplers.0.conv.weight", "model.diffusion_model.output_blocks.8.2.conv.weight"},
        {SD_PART_UNET, "up_blocks.3.resnets.0.conv_shortcut.weight", "model.diffusion_model.output_blocks.9.0.skip_connection.weight"},
        {SD_PART_UNET, "up_blocks.3.attentions.2.transformer_blocks.0.attn1.to_q.weight",
         "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn1.to_q.weight"},
        {SD_PART_VAE, "decoder.up_blocks.0.resnets.2.conv1.weight", "first_stage_model.decoder.up.3.block.2.conv1.weight"},
        {SD_PART_VAE, "decoder.up_blocks.2.upsamplers.0.conv.weight", "first_stage_model.decoder.up.1.upsample.conv.weight"},
        {SD_PART_VAE, "decoder.up_blocks.3.resnets.0.conv_shortcut.weight", "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight"},
        {SD_PART_VAE, "encoder.down_blocks.2.downsamplers.0.conv.weight", "first_stage_model.encoder.down.2.downsample.conv.weight"},
        {SD_PART_VAE, "decoder.mid_block.attentions.0.group_norm.weight", "first_stage_model.decoder.mid.attn_1.norm.weight"},
        {SD_PART_TEXT_ENCODER, "text_model.embeddings.token_embedding.weight",
         "cond_stage_model.transformer.embeddings.token_embedding.weight"},
    };
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    dl_st_writer wr;
    dl_st_writer_init(&wr);
    const float one = 1.0f;
    char name[256];
    for (int i = 0; i < n_cases; i++)
        dl_st_writer_add_raw(&wr, cases[i].ldm, DL_DTYPE_F32, 1, DL_SHAPE(1), &one);
    for (int lvl = 0; lvl < 4; lvl++) {   /* the VAE decoder's 4 levels */
        snprintf(name, sizeof name, "first_stage_model.decoder.up.%d.block.0.conv1.weight", lvl);
        dl_st_writer_add_raw(&wr, name, DL_DTYPE_F32, 1, DL_SHAPE(1), &one);
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/sd15_names.safetensors", dl_test_out_dir("sd_weights"));
    CHECK(dl_st_writer_save(&wr, path) == DL_OK, "save: %s", dl_error_message());
    dl_st_writer_free(&wr);

    sd_weights w;
    if (!CHECK(sd_weights_open(&w, path) == DL_OK, "open: %s", dl_error_message())) return;
    for (int i = 0; i < n_cases; i++) {
        char key[512] = "";
        sd_weights_ldm_name(&w, cases[i].part, cases[i].diffusers, key, sizeof key);
        CHECK(strcmp(key, cases[i].ldm) == 0, "%s -> %s, expected %s", cases[i].diffusers, key, cases[i].ldm);
        CHECK(sd_weights_has(&w, cases[i].part, cases[i].diffusers), "has(%s)", cases[i].diffusers);
    }
    sd_weights_close(&w);
}
