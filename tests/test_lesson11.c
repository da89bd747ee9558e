/* test_lesson11.c - lesson 11 (prompts): the exercises of docs/11_prompts.md
 * checked against transformers' tokenizer outputs
 * (tests/fixtures/clip-tokenizer/tokenizer_golden.json) and the tiny text
 * encoder, and bin/11_prompts: the token view without any model (ids of known
 * prompts, the cut at 77), the template, the grid on the tiny model, the live
 * window, --help and bad arguments. */
#include "testing.h"
#include "../core/clip_tokenizer.h"
#include "../core/image.h"
#include "../core/sd_pipeline.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ENV     "OMP_WAIT_POLICY=passive OMP_NUM_THREADS=1 "
#define TINY    "tests/fixtures/tiny-sd"
#define TOK_DIR "tests/fixtures/tiny-sd/tokenizer"
#define GOLDEN  "tests/fixtures/clip-tokenizer/tokenizer_golden.json"

/* ---- the exercises -------------------------------------------------------- */

/* EXERCISE 1. The template: the non-empty parts joined by ", ". */
static void my_build_prompt(char *out, size_t n, const char *const parts[5])
{
    size_t len = 0;
    out[0] = 0;
    for (int i = 0; i < 5; i++)
        if (parts[i][0] && len < n) len += (size_t)snprintf(out + len, n - len, "%s%s", len ? ", " : "", parts[i]);
}

/* EXERCISE 2. How many of the 77 positions the prompt fills before the
 * padding: BOS + its tokens + EOS, at most 77. */
static int my_count_tokens(const clip_tokenizer *tok, const char *text)
{
    int n = 0;
    if (clip_encode(tok, text, NULL, 0, &n) != DL_OK) return -1;
    return n + 2 < CLIP_MAX_TOKENS ? n + 2 : CLIP_MAX_TOKENS;
}

/* EXERCISE 3. Where the window cuts: the number of tokens dropped, and the
 * id of the first one (-1 if none). The encoder keeps BOS + 75 + EOS. */
static int my_dropped(const clip_tokenizer *tok, const char *text, int *first_dropped)
{
    int n = 0;
    *first_dropped = -1;
    if (clip_encode(tok, text, NULL, 0, &n) != DL_OK) return -1;
    if (n <= CLIP_MAX_TOKENS - 2) return 0;
    int *ids = malloc((size_t)n * sizeof *ids);
    if (!ids || clip_encode(tok, text, ids, n, &n) != DL_OK) { free(ids); return -1; }
    *first_dropped = ids[CLIP_MAX_TOKENS - 2];
    free(ids);
    return n - (CLIP_MAX_TOKENS - 2);
}

static cJSON *golden_prompts(char **buf)
{
    FILE *f = fopen(GOLDEN, "rb");
    *buf = NULL;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *buf = malloc((size_t)n + 1);
    if (*buf && fread(*buf, 1, (size_t)n, f) == (size_t)n) (*buf)[n] = 0;
    fclose(f);
    return *buf ? cJSON_Parse(*buf) : NULL;
}

/* the golden entry whose prompt starts with `start` */
static const cJSON *golden_find(const cJSON *root, const char *start)
{
    const cJSON *p;
    cJSON_ArrayForEach(p, cJSON_GetObjectItem(root, "prompts")) {
        const cJSON *t = cJSON_GetObjectItem(p, "prompt");
        if (cJSON_IsString(t) && !strncmp(t->valuestring, start, strlen(start))) return p;
    }
    return NULL;
}

TEST(lesson11, exercise_count_tokens_and_cut)
{
    clip_tokenizer tok;
    if (!CHECK(clip_tokenizer_load(&tok, TOK_DIR) == DL_OK, "%s", dl_error_message())) return;
    char *buf;
    cJSON *root = golden_prompts(&buf);
    int n_checked = 0;
    const cJSON *p;
    if (CHECK(root != NULL, "cannot read %s", GOLDEN))
        cJSON_ArrayForEach(p, cJSON_GetObjectItem(root, "prompts")) {
            const char *text = cJSON_GetObjectItem(p, "prompt")->valuestring;
            const cJSON *ids = cJSON_GetObjectItem(p, "input_ids"), *un = cJSON_GetObjectItem(p, "untruncated_ids");
            /* transformers: BOS ... EOS without truncation, at most 77; the padded ids agree there */
            int want = cJSON_GetArraySize(un) < CLIP_MAX_TOKENS ? cJSON_GetArraySize(un) : CLIP_MAX_TOKENS;
            CHECK(cJSON_GetArraySize(ids) == CLIP_MAX_TOKENS &&
                  cJSON_GetArrayItem(ids, want - 1)->valueint == tok.eos_id, "'%s': golden ids", text);
            CHECK(my_count_tokens(&tok, text) == want, "'%s': %d tokens, transformers %d", text, my_count_tokens(&tok, text), want);
            int first, d = my_dropped(&tok, text, &first), total = cJSON_GetArraySize(un);
            int want_dropped = total > CLIP_MAX_TOKENS ? total - CLIP_MAX_TOKENS : 0;
            CHECK(d == want_dropped, "'%s': %d dropped, transformers' untruncated ids say %d", text, d, want_dropped);
            if (want_dropped)   /* untruncated = BOS, tokens..., EOS: the first dropped one is at 76 */
                CHECK(first == cJSON_GetArrayItem(un, CLIP_MAX_TOKENS - 1)->valueint, "'%s': first dropped id %d", text, first);
            n_checked++;
        }
    printf("    %d golden prompts counted and cut like transformers\n", n_checked);
    CHECK(n_checked >= 30, "only %d golden prompts", n_checked);
    cJSON_Delete(root);
    free(buf);
    clip_tokenizer_free(&tok);
}

/* What is cut never reaches the model: the over-long prompt and the text
 * without its dropped words give the same 77 context vectors. */
TEST(lesson11, dropped_words_change_nothing)
{
    sd_pipeline p;
    if (!CHECK(sd_pipeline_load(&p, TINY, NULL) == DL_OK, "%s", dl_error_message())) return;
    const char *kept = "A cat, watercolor painting, highly detailed, vibrant colors, soft golden hour lighting, by John "
        "Singer Sargent, masterpiece, best quality, ultra detailed, intricate details, sharp focus, 8k resolution, "
        "trending on artstation, award winning, cinematic composition, depth of field, soft shadows, subtle film grain, "
        "delicate brush strokes, textured cold-press paper, muted background,";
    char longer[2048], other[2048];
    snprintf(longer, sizeof longer, "%s a small red collar with a golden bell", kept);
    snprintf(other, sizeof other, "%s a small blue collar", kept);
    int first;
    CHECK(my_dropped(&p.tokenizer, longer, &first) == 8 && first == 320, "the default long prompt drops 8 tokens from 'a'");
    CHECK(my_dropped(&p.tokenizer, kept, &first) == 0 && my_count_tokens(&p.tokenizer, kept) == 77, "the kept part fills 77");
    dl_tensor a = {0}, b = {0}, c = {0};
    if (dl_tensor_alloc(&a, 3, DL_SHAPE(1, 77, p.context_dim)) == DL_OK && dl_tensor_alloc(&b, 3, a.shape) == DL_OK &&
        dl_tensor_alloc(&c, 3, a.shape) == DL_OK && CHECK(sd_pipeline_encode(&p, longer, &a, NULL) == DL_OK, "%s", dl_error_message()) &&
        CHECK(sd_pipeline_encode(&p, kept, &b, NULL) == DL_OK && sd_pipeline_encode(&p, other, &c, NULL) == DL_OK, "%s", dl_error_message())) {
        CHECK(!memcmp(a.data, b.data, (size_t)a.numel * sizeof(float)), "the dropped words changed the context");
        CHECK(!memcmp(a.data, c.data, (size_t)a.numel * sizeof(float)), "other dropped words changed the context");
    }
    dl_tensor_free(&a); dl_tensor_free(&b); dl_tensor_free(&c);
    sd_pipeline_free(&p);
}

/* ---- the program ----------------------------------------------------------- */

/* the k-th (0-based) line starting with `key` in the log, parsed as ids; returns how many */
static int log_ids(const char *log, const char *key, int k, int *ids, int cap)
{
    const char *s = log;
    for (int i = 0; s && i <= k; i++) { s = strstr(s, key); if (s && i < k) s += strlen(key); }
    if (!s) return -1;
    s += strlen(key);
    int n = 0;
    while (n < cap && *s && *s != '\n') {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s) break;
        ids[n++] = (int)v;
        s = end;
    }
    return n;
}

TEST(lesson11, token_view_without_a_model)
{
    char *buf;
    cJSON *root = golden_prompts(&buf);
    const cJSON *cat = root ? golden_find(root, "A majestic cat sitting") : NULL;
    const cJSON *the = root ? golden_find(root, "the the the") : NULL;
    if (!CHECK(cat && the, "golden prompts missing")) { cJSON_Delete(root); free(buf); return; }
    char dir[512], cmd[4096], png[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson11/tokens"));
    snprintf(png, sizeof png, "%s/11_tokens.png", dir);
    remove(png);
    /* the template rebuilds the golden prompt; the golden 80-token prompt is the over-long one */
    snprintf(cmd, sizeof cmd, "%s/11_prompts --tokenizer " TOK_DIR " --subject \"A majestic cat sitting on a throne\" "
             "--style \"watercolor painting\" --quality \"highly detailed\" --lighting \"golden hour lighting\" "
             "--artist \"by Studio Ghibli, masterpiece, 4k\" --long-prompt \"%s\" --out %s",
             dl_test_bin_dir(), cJSON_GetObjectItem(the, "prompt")->valuestring, dir);
    int rc = dl_test_run(cmd);
    char *log = dl_test_read_log();
    if (!CHECK(rc == 0 && log, "exit status %d", rc)) { dl_test_show_log(); free(log); cJSON_Delete(root); free(buf); return; }
    CHECK(strstr(log, cJSON_GetObjectItem(cat, "prompt")->valuestring) != NULL, "the template builds the golden prompt");
    CHECK(strstr(log, "token view only") != NULL, "no model: token view only");
    CHECK(dl_test_file_ok(png), "%s missing", png);
    int ids[100];
    const cJSON *want = cJSON_GetObjectItem(cat, "untruncated_ids");
    int n = log_ids(log, "    ids:", 3, ids, 100), same = n == cJSON_GetArraySize(want);
    for (int i = 0; same && i < n; i++) same = ids[i] == cJSON_GetArrayItem(want, i)->valueint;
    CHECK(same, "ids of the full prompt (%d of them) differ from transformers'", n);
    want = cJSON_GetObjectItem(the, "input_ids");   /* 77, truncated by transformers */
    n = log_ids(log, "    ids:", 4, ids, 100);
    same = n == CLIP_MAX_TOKENS;
    for (int i = 0; same && i < n; i++) same = ids[i] == cJSON_GetArrayItem(want, i)->valueint;
    CHECK(same, "the over-long prompt: the %d ids shown are not transformers' 77", n);
    CHECK(strstr(log, "78 tokens + BOS/EOS = 80 > 77: the last 3 token(s) are DROPPED") != NULL &&
          strstr(log, "dropped: the(518) the(518) the(518)\n") != NULL, "the cut at 77");
    dl_image img;
    if (CHECK(dl_image_load(&img, png, 3) == DL_OK, "%s", dl_error_message())) {
        int red = 0;     /* the dropped tokens are drawn on red */
        for (int i = 0; i < img.w * img.h; i++) red += img.px[i * 3] == 150 && img.px[i * 3 + 1] == 40 && img.px[i * 3 + 2] == 40;
        CHECK(img.w == 1100 && red > 100, "token view %dx%d, %d red pixels", img.w, img.h, red);
        dl_image_free(&img);
    }
    free(log);
    cJSON_Delete(root);
    free(buf);
}

TEST(lesson11, exercise_template_and_grid_on_tiny)
{
    const char *parts[5] = {"a lighthouse", "oil painting", "", "dramatic storm light", "by J. M. W. Turner"};
    char mine[512], dir[512], cmd[2048], path[700];
    my_build_prompt(mine, sizeof mine, parts);
    CHECK(!strcmp(mine, "a lighthouse, oil painting, dramatic storm light, by J. M. W. Turner"), "template: '%s'", mine);
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson11/grid"));
    snprintf(path, sizeof path, "%s/11_prompts_grid.png", dir);
    remove(path);
    snprintf(cmd, sizeof cmd, ENV "%s/11_prompts --headless --model " TINY " --subject \"%s\" --style \"%s\" --quality \"\" "
             "--lighting \"%s\" --artist \"%s\" --steps 2 --seed 3 --out %s", dl_test_bin_dir(), parts[0], parts[1], parts[3],
             parts[4], dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "exit status %d", rc)) { dl_test_show_log(); return; }
    char line[700];
    snprintf(line, sizeof line, "full: + lighting, artist: \"%s\"", mine);
    CHECK(dl_test_log_contains(line), "the program builds '%s'", mine);
    CHECK(!dl_test_log_contains("+ quality:"), "an empty [quality] adds no grid column");
    CHECK(dl_test_log_contains("RANDOM"), "the tiny model is announced as random");
    CHECK(dl_test_file_ok(path), "%s missing", path);
    /* one seed, three prompts: three different pictures (64x64: the VAE's factor 2 times sample size 32) */
    dl_image im[3];
    int loaded = 0;
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/11_prompt_%d.png", dir, k + 1);
        if (CHECK(dl_image_load(&im[k], path, 3) == DL_OK, "%s", dl_error_message())) loaded++;
        else break;
    }
    if (loaded == 3) {
        CHECK(im[0].w == 64 && im[0].h == 64, "native size %dx%d", im[0].w, im[0].h);
        CHECK(memcmp(im[0].px, im[1].px, 64 * 64 * 3) && memcmp(im[1].px, im[2].px, 64 * 64 * 3), "the prompt must change the picture");
    }
    for (int k = 0; k < loaded; k++) dl_image_free(&im[k]);
}

TEST(lesson11, live_window_runs)
{
    char dir[512], cmd[2048], path[700];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("lesson11/live"));
    snprintf(path, sizeof path, "%s/11_prompts_window.png", dir);
    remove(path);
    snprintf(cmd, sizeof cmd, ENV "env -u DISPLAY -u WAYLAND_DISPLAY SDL_VIDEODRIVER=dummy %s/11_prompts --model " TINY
             " --steps 1 --max-frames 2 --out %s", dl_test_bin_dir(), dir);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0 && dl_test_file_ok(path), "exit %d, %s %s", rc, path, dl_test_file_ok(path) ? "written" : "missing"))
        dl_test_show_log();
}

TEST(lesson11, help_and_bad_arguments)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s/11_prompts --help", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0 && dl_test_log_contains("--subject") && dl_test_log_contains("--tokenizer"), "--help");
    if (access("models/sd15", R_OK) != 0) {   /* no model: what to download; the token view still works */
        snprintf(cmd, sizeof cmd, "%s/11_prompts --tokens-only --out %s", dl_test_bin_dir(), dl_test_out_dir("lesson11/nomodel"));
        CHECK(dl_test_run(cmd) == 0 && dl_test_log_contains("models/sd15") && dl_test_log_contains("RANDOM") &&
              dl_test_log_contains("ids: 49406 320 2368 49407"), "without --model: the download advice and the token view");
    }
    const struct { const char *args, *says; } bad[] = {
        {"--tokenizer /nonexistent/tok", "vocab.json"},
        {"--tokenizer " TOK_DIR " --bogus", "--bogus"},
        {"--tokenizer " TOK_DIR " --subject \"\"", "--subject"},
        {"--tokenizer " TOK_DIR " --prompt a --prompt b --prompt c --prompt d --prompt e", "at most 4"},
        {"--model " TINY " --steps 0", "--steps"},
        {"--model " TINY " --width 65 --height 64", "multiples of 2"},
        {"--model /nonexistent/sd15", "/nonexistent/sd15"},
        {"--model " TINY " --scheduler bogus", "bogus"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(cmd, sizeof cmd, ENV "%s/11_prompts --headless --steps 1 --out %s %s", dl_test_bin_dir(),
                 dl_test_out_dir("lesson11/bad"), bad[i].args);
        int rc = dl_test_run(cmd);
        CHECK(rc != 0 && rc < 128, "'%s' should fail cleanly, exit status %d", bad[i].args, rc);
        if (!CHECK(dl_test_log_contains(bad[i].says) && dl_test_log_contains("error"), "'%s': message should name '%s'",
                   bad[i].args, bad[i].says))
            dl_test_show_log();
    }
}
