/* test_fuzz_regressions.c - inputs that once crashed a parser (or were
 * undefined behaviour under UBSan), found by the fuzz/ harnesses or written
 * next to the bugs they found, plus malformed files the corrupt-file tests in
 * test_safetensors.c do not cover. Every one must now give a clean error
 * (DL_ERR_FORMAT with a message naming the problem), never a crash; under
 * `make test-asan` that includes no undefined behaviour.
 *
 * Also: the in-memory entry points the harnesses use (dl_st_open_memory,
 * clip_tokenizer_load_memory) agree with the file-based ones. */
#include "testing.h"
#include "../core/clip_text.h"
#include "../core/clip_tokenizer.h"
#include "../core/safetensors.h"
#include "../core/scheduler_config.h"
#include "../core/sd_unet.h"
#include "../core/sd_vae.h"
#include "../core/toy_unet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DIR "tests/fixtures/fuzz_regressions/"

/* The whole file (NUL-terminated; *len without the NUL), or NULL. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) != NULL) {
        if (fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
        else { buf[n] = '\0'; *len = (size_t)n; }
    }
    fclose(f);
    return buf;
}

TEST(fuzz_regressions, malformed_safetensors_give_format_errors)
{
    static const struct { const char *file, *says; } cases[] = {
        {"numel_overflow.safetensors", "'w': shape too large"},          /* U8 [2^53, 1536, 0]: int64 numel overflow */
        {"nul_in_header.safetensors", "NUL byte"},
        {"entry_not_object.safetensors", "'w': header entry is not a JSON object"},
        {"nine_dims.safetensors", "'w': 9 dimensions"},
        {"dtype_not_string.safetensors", "'w': needs \"dtype\""},
        {"three_offsets.safetensors", "'w': data_offsets must be two"},
        {"two_metadata.safetensors", "__metadata__"},
        {"one_byte_header.safetensors", "empty header"},
        {"short.safetensors", "only 5 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, DIR "%s", cases[i].file);
        dl_safetensors f;
        dl_status st = dl_st_open(&f, path);
        const char *msg = dl_error_message();
        CHECK(st == DL_ERR_FORMAT, "%s: want a format error, got %s (%s)", cases[i].file, dl_status_name(st), msg);
        CHECK(strstr(msg, cases[i].file) && strstr(msg, cases[i].says), "%s: message '%s' should name the file and say '%s'",
              cases[i].file, msg, cases[i].says);
        CHECK(f.map == NULL && f.entries == NULL, "%s: a failed open leaves the struct closed", cases[i].file);
        dl_st_close(&f);

        /* the in-memory reader gives the same verdict */
        size_t n = 0;
        char *bytes = slurp(path, &n);
        CHECK(bytes != NULL, "read %s", path);
        if (!bytes) continue;
        st = dl_st_open_memory(&f, bytes, n, cases[i].file);
        CHECK(st == DL_ERR_FORMAT && strstr(dl_error_message(), cases[i].says),
              "%s from memory: got %s (%s)", cases[i].file, dl_status_name(st), dl_error_message());
        dl_st_close(&f);
        free(bytes);
    }
}

TEST(fuzz_regressions, safetensors_from_memory_matches_file)
{
    const char *path = "tests/fixtures/toy_unet/lesson02.safetensors";
    size_t n = 0;
    char *bytes = slurp(path, &n);
    if (!CHECK(bytes != NULL, "read %s", path)) return;
    dl_safetensors a, b;
    CHECK(dl_st_open(&a, path) == DL_OK, "open: %s", dl_error_message());
    CHECK(dl_st_open_memory(&b, bytes, n, "lesson02 (memory)") == DL_OK, "open from memory: %s", dl_error_message());
    CHECK(a.count == b.count && a.count > 0, "tensor count %d vs %d", a.count, b.count);
    CHECK(b.map == NULL, "memory open owns no mapping");
    for (int i = 0; i < a.count && i < b.count; i++) {
        const dl_st_entry *ea = &a.entries[i], *eb = dl_st_find(&b, ea->name);
        if (!CHECK(eb != NULL, "'%s' missing from the memory open", ea->name)) continue;
        CHECK(eb->offset == ea->offset && eb->nbytes == ea->nbytes && eb->dtype == ea->dtype && eb->ndim == ea->ndim,
              "'%s': entries differ", ea->name);
    }
    if (a.count > 0) {
        dl_tensor ta, tb;
        const char *name = a.entries[a.count - 1].name;
        if (CHECK(dl_st_load_tensor(&a, name, &ta) == DL_OK && dl_st_load_tensor(&b, name, &tb) == DL_OK,
                  "load '%s': %s", name, dl_error_message())) {
            CHECK(ta.numel == tb.numel && memcmp(ta.data, tb.data, (size_t)ta.numel * sizeof(float)) == 0,
                  "'%s': values differ", name);
            dl_tensor_free(&ta);
            dl_tensor_free(&tb);
        }
    }
    char m1[256] = "", m2[256] = "";
    CHECK(dl_st_metadata_get(&a, "unet_config", m1, sizeof m1) == dl_st_metadata_get(&b, "unet_config", m2, sizeof m2) &&
          strcmp(m1, m2) == 0, "metadata differs: '%s' vs '%s'", m1, m2);
    dl_st_close(&a);
    dl_st_close(&b);
    free(bytes);
}

TEST(fuzz_regressions, out_of_range_config_numbers_are_errors)
{
    /* Before the fix each of these converted a double outside the int range
     * to int (undefined) or overflowed an int product. */
    static const struct { const char *file, *parser, *says; } cases[] = {
        {"unet_channels_1e106.json", "unet", "block_out_channels[2]"},   /* found by fuzz_json_configs */
        {"unet_heads_1e300.json", "unet", "attention_head_dim"},
        {"unet_layers_per_block_int_max.json", "unet", "too many skip connections"},
        {"unet_block_out_channels_int_max.json", "unet", "block_out_channels[0]"},
        {"vae_in_channels_1e300.json", "vae", "in_channels"},
        {"clip_text_hidden_size_1e300.json", "clip_text", "hidden_size"},
        {"toy_unet_heads_1e300.json", "toy_unet", "heads"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = 0;
        char path[256];
        snprintf(path, sizeof path, DIR "%s", cases[i].file);
        char *json = slurp(path, &n);
        if (!CHECK(json != NULL, "read %s", path)) continue;
        dl_status st = DL_OK;
        if (!strcmp(cases[i].parser, "unet")) { sd_unet_config c; st = sd_unet_config_parse(&c, json); }
        else if (!strcmp(cases[i].parser, "vae")) { sd_vae_config c; st = sd_vae_config_parse(&c, json); }
        else if (!strcmp(cases[i].parser, "clip_text")) { clip_text_config c; st = clip_text_config_from_json(&c, json); }
        else { toy_unet_config c; st = toy_unet_config_from_json(&c, json); }
        CHECK(st == DL_ERR_FORMAT, "%s (%s): want a format error, got %s (%s)", cases[i].file, cases[i].parser,
              dl_status_name(st), dl_error_message());
        CHECK(strstr(dl_error_message(), cases[i].says) != NULL, "%s: message '%s' should name %s", cases[i].file,
              dl_error_message(), cases[i].says);
        /* and every other parser survives the same text (the harness feeds them all) */
        dl_scheduler_config sc;
        sd_unet_config uc;
        sd_vae_config vc;
        clip_text_config cc;
        toy_unet_config tc;
        dl_scheduler_config_parse(json, path, &sc);
        sd_unet_config_parse(&uc, json);
        sd_vae_config_parse(&vc, json);
        clip_text_config_from_json(&cc, json);
        toy_unet_config_from_json(&tc, json);
        free(json);
    }
}

TEST(fuzz_regressions, tokenizer_from_memory_matches_files_and_rejects_garbage)
{
    const char *dir = "tests/fixtures/tiny-sd/tokenizer";
    size_t nv = 0, nm = 0;
    char *vocab = slurp("tests/fixtures/tiny-sd/tokenizer/vocab.json", &nv);
    char *merges = slurp("tests/fixtures/tiny-sd/tokenizer/merges.txt", &nm);
    if (!CHECK(vocab && merges, "read the tokenizer files")) { free(vocab); free(merges); return; }
    clip_tokenizer a, b;
    CHECK(clip_tokenizer_load(&a, dir) == DL_OK, "load: %s", dl_error_message());
    CHECK(clip_tokenizer_load_memory(&b, vocab, nv, merges, nm) == DL_OK, "load from memory: %s", dl_error_message());
    CHECK(a.n_vocab == b.n_vocab && a.n_merges == b.n_merges && a.bos_id == b.bos_id && a.eos_id == b.eos_id &&
          a.pad_id == b.pad_id, "vocab %d/%d merges %d/%d", a.n_vocab, b.n_vocab, a.n_merges, b.n_merges);
    int ia[CLIP_MAX_TOKENS] = {0}, ib[CLIP_MAX_TOKENS] = {1};
    const char *prompt = "a photograph of an astronaut riding a horse, caf\xc3\xa9 &amp; na\xc3\xafve";
    CHECK(clip_tokenize(&a, prompt, ia, NULL) == DL_OK && clip_tokenize(&b, prompt, ib, NULL) == DL_OK &&
          memcmp(ia, ib, sizeof ia) == 0, "the two loaders tokenize differently");
    clip_tokenizer_free(&a);

    /* malformed pairs: each a clean DL_ERR_FORMAT naming the file and the problem */
    static const struct { const char *vocab, *merges, *says; } bad[] = {
        {"", "", "vocab.json: not a JSON object"},
        {"{\"a\": 0, ", "", "vocab.json: bad token string"},
        {"{\"a\": -3}", "", "'a' has no valid id"},
        {"{\"a\": 0, \"b\": 0}", "", "id 0 is used twice"},
        {"{\"a\": 0, \"a\": 1}", "", "'a' appears twice"},
        {"{\"\\u0000\": 0}", "", "bad token string"},
        {"{\"a\": 0}", "", "byte-level token of byte 0x00"},
        {NULL, "#version: 0.2\nzz qq\n", "merges.txt line 2: merge 'zz qq'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *v = bad[i].vocab ? bad[i].vocab : vocab;
        size_t vl = bad[i].vocab ? strlen(v) : nv;
        clip_tokenizer t;
        dl_status st = clip_tokenizer_load_memory(&t, v, vl, bad[i].merges, strlen(bad[i].merges));
        CHECK(st == DL_ERR_FORMAT && strstr(dl_error_message(), bad[i].says),
              "case %zu: got %s '%s', want a format error saying '%s'", i, dl_status_name(st), dl_error_message(), bad[i].says);
        CHECK(t.pool == NULL && t.id_to_token == NULL, "case %zu: a failed load leaves the tokenizer empty", i);
        clip_tokenizer_free(&t);
    }
    clip_tokenizer_free(&b);
    free(vocab);
    free(merges);
}
