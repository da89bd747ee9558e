/* test_clip_tokenizer.c - the CLIP BPE tokenizer against transformers'
 * CLIPTokenizer (with ftfy) on the 40 reference prompts, plus its edges:
 * missing files, truncation, the SD 2.x pad token, NFC and the clean-up. */
#include "testing.h"
#include "../core/clip_tokenizer.h"
#include "../core/unicode_tables.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TOK_DIR "tests/fixtures/tiny-sd/tokenizer"     /* vocab.json, merges.txt, configs (SD 1.x) */
#define GOLDEN  "tests/fixtures/clip-tokenizer/tokenizer_golden.json"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) { free(s); s = NULL; }
    if (s) s[n] = '\0';
    fclose(f);
    return s;
}

/* All 40 prompts: the padded 77 ids, the untruncated ids and the BPE strings. */
TEST(tokenizer, golden_prompts)
{
    clip_tokenizer tok;
    double t0 = now_s();
    if (!CHECK(clip_tokenizer_load(&tok, TOK_DIR) == DL_OK, "load: %s", dl_error_message())) return;
    double load_ms = 1e3 * (now_s() - t0);
    printf("    tokenizer load: %.1f ms (%d tokens, %d merges)\n", load_ms, tok.n_vocab, tok.n_merges);
    CHECK(tok.n_vocab == 49408 && tok.n_merges == 48894, "vocab %d merges %d", tok.n_vocab, tok.n_merges);
    CHECK(tok.bos_id == 49406 && tok.eos_id == 49407 && tok.pad_id == 49407, "special ids %d %d %d",
          tok.bos_id, tok.eos_id, tok.pad_id);
    CHECK(load_ms < 1000, "loading took %.0f ms", load_ms);   /* ~20 ms normally; generous on a busy machine */

    char *json = slurp(GOLDEN);
    cJSON *root = json ? cJSON_Parse(json) : NULL;
    const cJSON *prompts = cJSON_GetObjectItemCaseSensitive(root, "prompts");
    if (!CHECK(cJSON_IsArray(prompts), "cannot read tokenizer_golden.json")) { free(json); cJSON_Delete(root); return; }
    int n_prompts = 0, n_match = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, prompts) {
        const char *text = cJSON_GetObjectItemCaseSensitive(p, "prompt")->valuestring;
        const cJSON *want = cJSON_GetObjectItemCaseSensitive(p, "input_ids");
        const cJSON *untr = cJSON_GetObjectItemCaseSensitive(p, "untruncated_ids");
        const cJSON *bpe = cJSON_GetObjectItemCaseSensitive(p, "bpe_tokens");
        n_prompts++;
        int ids[CLIP_MAX_TOKENS], n_real = 0, ok = 1;
        if (clip_tokenize(&tok, text, ids, &n_real) != DL_OK) ok = 0;
        for (int i = 0; ok && i < CLIP_MAX_TOKENS; i++)
            if (ids[i] != cJSON_GetArrayItem(want, i)->valueint) {
                ok = 0;
                CHECK(0, "prompt '%s': id %d is %d, want %d", text, i, ids[i], cJSON_GetArrayItem(want, i)->valueint);
            }
        int n_untr = cJSON_GetArraySize(untr);
        int want_real = n_untr < CLIP_MAX_TOKENS ? n_untr : CLIP_MAX_TOKENS;
        if (ok && n_real != want_real) { ok = 0; CHECK(0, "prompt '%s': n_real %d, want %d", text, n_real, want_real); }
        /* untruncated: BOS + body + EOS; the body's strings are bpe_tokens */
        int body[1024], n = 0;
        if (ok && (clip_encode(&tok, text, body, 1024, &n) != DL_OK || n != n_untr - 2)) {
            ok = 0;
            CHECK(0, "prompt '%s': %d untruncated tokens, want %d", text, n, n_untr - 2);
        }
        for (int i = 0; ok && i < n; i++) {
            const char *s = clip_token_str(&tok, body[i]);
            if (body[i] != cJSON_GetArrayItem(untr, i + 1)->valueint ||
                strcmp(s, cJSON_GetArrayItem(bpe, i)->valuestring)) {
                ok = 0;
                CHECK(0, "prompt '%s': token %d is '%s', want '%s'", text, i, s, cJSON_GetArrayItem(bpe, i)->valuestring);
            }
        }
        n_match += ok;
    }
    printf("    golden prompts matching: %d / %d\n", n_match, n_prompts);
    CHECK(n_prompts == 40 && n_match == 40, "%d of %d prompts match", n_match, n_prompts);
    cJSON_Delete(root);
    free(json);
    clip_tokenizer_free(&tok);
}

TEST(tokenizer, truncation_and_token_text)
{
    clip_tokenizer tok;
    if (!CHECK(clip_tokenizer_load(&tok, TOK_DIR) == DL_OK, "load: %s", dl_error_message())) return;
    /* 100 words "cat" -> 100 tokens 2368; the pipeline keeps BOS + 75 + EOS */
    char text[512] = "";
    for (int i = 0; i < 100; i++) strcat(text, "cat ");
    int ids[CLIP_MAX_TOKENS], n_real = 0, all[200], n = 0;
    CHECK(clip_tokenize(&tok, text, ids, &n_real) == DL_OK, "tokenize");
    CHECK(n_real == 77 && ids[0] == 49406 && ids[1] == 2368 && ids[75] == 2368 && ids[76] == 49407,
          "n_real %d first %d %d last %d %d", n_real, ids[0], ids[1], ids[75], ids[76]);
    CHECK(clip_encode(&tok, text, all, 10, &n) == DL_OK && n == 100 && all[9] == 2368,
          "clip_encode counts beyond its buffer: n = %d", n);
    /* the empty prompt (the unconditional input of CFG) */
    CHECK(clip_tokenize(&tok, "", ids, &n_real) == DL_OK && n_real == 2 && ids[0] == 49406 && ids[1] == 49407 &&
          ids[2] == 49407 && ids[76] == 49407, "empty prompt: n_real %d", n_real);
    char buf[64];
    CHECK(clip_token_text(&tok, 2368, buf, sizeof buf) == 1 && !strcmp(buf, "cat"), "token text '%s'", buf);
    /* "café" ends in the byte-level token for 0xA9 + </w>: shown as that raw byte */
    CHECK(clip_token_text(&tok, 256, buf, sizeof buf) == 1 && !strcmp(buf, "!"), "token 256 -> '%s'", buf);
    CHECK(clip_token_text(&tok, 49408, buf, sizeof buf) == -1, "bad id accepted");
    clip_tokenizer_free(&tok);
}

/* Write a tokenizer folder whose special_tokens_map.json says pad = "!". */
TEST(tokenizer, pad_token_from_config)
{
    char dir[512], path[600], cwd[400];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("clip_tokenizer_sd2"));
    if (!CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd")) return;
    const char *files[] = { "vocab.json", "merges.txt" };
    for (int i = 0; i < 2; i++) {
        char target[900];
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        snprintf(target, sizeof target, "%s/" TOK_DIR "/%s", cwd, files[i]);
        unlink(path);
        CHECK(symlink(target, path) == 0, "symlink %s", path);
    }
    snprintf(path, sizeof path, "%s/special_tokens_map.json", dir);
    FILE *f = fopen(path, "w");
    if (!CHECK(f != NULL, "write %s", path)) return;
    fputs("{\"bos_token\": {\"content\": \"<|startoftext|>\"}, \"eos_token\": \"<|endoftext|>\", \"pad_token\": \"!\"}", f);
    fclose(f);
    clip_tokenizer tok;
    if (!CHECK(clip_tokenizer_load(&tok, dir) == DL_OK, "load: %s", dl_error_message())) return;
    int ids[CLIP_MAX_TOKENS], n_real = 0;
    CHECK(tok.pad_id == 0 && !strcmp(tok.pad_token, "!"), "pad id %d '%s'", tok.pad_id, tok.pad_token);
    CHECK(clip_tokenize(&tok, "a photo of a cat", ids, &n_real) == DL_OK && n_real == 7, "n_real %d", n_real);
    CHECK(ids[6] == 49407 && ids[7] == 0 && ids[76] == 0, "EOS then pad 0: %d %d %d", ids[6], ids[7], ids[76]);
    clip_tokenizer_free(&tok);
}

TEST(tokenizer, missing_and_corrupt_files)
{
    clip_tokenizer tok;
    EXPECT_FAIL(clip_tokenizer_load(&tok, "tests/fixtures/no-such-tokenizer"), DL_ERR_IO, "vocab.json", "missing vocab");
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("clip_tokenizer_bad"));
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    FILE *f = fopen(path, "w");
    if (!CHECK(f != NULL, "write %s", path)) return;
    fputs("{\"a\": 0, \"b\": ", f);                       /* truncated JSON */
    fclose(f);
    EXPECT_FAIL(clip_tokenizer_load(&tok, dir), DL_ERR_FORMAT, "vocab.json", "truncated vocab");
    f = fopen(path, "w");
    fputs("{\"a\": 0, \"b\": 1}", f);                     /* valid JSON, but not byte-level BPE */
    fclose(f);
    EXPECT_FAIL(clip_tokenizer_load(&tok, dir), DL_ERR_FORMAT, "vocab.json", "vocab without byte tokens");
}

static int nfc_is(const uint32_t *in, size_t n, const uint32_t *want, size_t nw)
{
    uint32_t out[64];
    size_t m = uni_nfc(in, n, out);
    return m == nw && !memcmp(out, want, nw * sizeof *out);
}

TEST(tokenizer, nfc_composition)
{
    CHECK(nfc_is((uint32_t[]){'e', 0x301}, 2, (uint32_t[]){0xE9}, 1), "e + acute -> é");
    CHECK(nfc_is((uint32_t[]){0x438, 0x306}, 2, (uint32_t[]){0x439}, 1), "и + breve -> й");
    CHECK(nfc_is((uint32_t[]){0x3B1, 0x301}, 2, (uint32_t[]){0x3AC}, 1), "α + acute -> ά");
    CHECK(nfc_is((uint32_t[]){0x3C9, 0x313, 0x300, 0x345}, 4, (uint32_t[]){0x1FA2}, 1), "ω + 3 marks -> ᾢ");
    /* marks in either order: reordered by combining class, then composed */
    CHECK(nfc_is((uint32_t[]){'a', 0x302, 0x323}, 3, (uint32_t[]){0x1EAD}, 1), "a + circumflex + dot below");
    CHECK(nfc_is((uint32_t[]){'a', 0x323, 0x302}, 3, (uint32_t[]){0x1EAD}, 1), "a + dot below + circumflex");
    CHECK(nfc_is((uint32_t[]){0x212B}, 1, (uint32_t[]){0xC5}, 1), "Angstrom sign -> Å");
    CHECK(nfc_is((uint32_t[]){0x1100, 0x1161, 0x11A8}, 3, (uint32_t[]){0xAC01}, 1), "Hangul jamo -> 각");
    CHECK(nfc_is((uint32_t[]){0x915, 0x93C}, 2, (uint32_t[]){0x915, 0x93C}, 2), "excluded composite stays apart");
    CHECK(nfc_is((uint32_t[]){0x301, 'e'}, 2, (uint32_t[]){0x301, 'e'}, 2), "a leading mark composes with nothing");
}

static int clean_is(const char *in, const char *want)
{
    char *out = NULL;
    int ok = clip_clean_text(in, &out) == DL_OK && !strcmp(out, want);
    if (!ok) printf("    clean('%s') = '%s', want '%s'\n", in, out ? out : "(null)", want);
    free(out);
    return ok;
}

TEST(tokenizer, text_cleanup)
{
    CHECK(clean_is("  Fish &amp; Chips &lt;3 &#x41;&#66; &EACUTE; ", "fish & chips <3 ab é"), "html entities");
    CHECK(clean_is("<b>fish &amp; chips</b>", "<b>fish &amp; chips</b>"), "entities kept in HTML-looking text");
    CHECK(clean_is("caf\xc3\x83\xc2\xa9 don\xc3\xa2\xe2\x82\xac\xe2\x84\xa2t", "café don't"), "mojibake");
    CHECK(clean_is("Caf\xc3\xa9\xe2\x80\xa6\xe2\x80\x9d", "café…\""), "real accents + punctuation stay");
    CHECK(clean_is("\xef\xac\x81ne \xef\xbc\xa1\xef\xbc\xa2 \xe2\x80\x9cq\xe2\x80\x9d", "fine ab \"q\""),
          "ligature, full width, curly quotes");
    CHECK(clean_is("e\xcc\x81\te\xcc\x81", "é é"), "NFC and whitespace");
    CHECK(clean_is("\xce\x9f\xce\x94\xce\x9f\xce\xa3 \xce\xa3", "οδος σ"), "final sigma");
    CHECK(clean_is("\x1b[31mred\x1b[0m\x01", "red"), "terminal escapes and controls");
}

/* bin/tokenize on a tokenizer folder and on a diffusers model folder. */
TEST(tokenizer, tokenize_program)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/tokenize --model " TOK_DIR " 'a photo of a cat'", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0, "bin/tokenize failed");
    char *log = dl_test_read_log();
    CHECK(log && !strncmp(log, "49406 320 1125 539 320 2368 49407 49407 ", 40), "output: %.80s", log ? log : "");
    int count = 0;
    for (char *p = log; p && *p && *p != '\n'; p++) count += (p == log || p[-1] == ' ') && *p != ' ';
    CHECK(count == 77, "%d numbers printed", count);
    free(log);
    snprintf(cmd, sizeof cmd, "%s/tokenize --model tests/fixtures/tiny-sd 'a photo of a cat'", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0 && dl_test_log_contains("49406 320 1125 539 320 2368 49407"), "model folder");
    snprintf(cmd, sizeof cmd, "%s/tokenize --model tests/fixtures/nowhere 'x'", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) != 0 && dl_test_log_contains("vocab.json"), "a missing folder must name vocab.json");
}
