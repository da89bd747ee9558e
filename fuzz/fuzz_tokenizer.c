/* fuzz_tokenizer.c - libFuzzer harness for the CLIP tokenizer loader.
 *
 * The input is "<vocab.json bytes>\n#merges\n<merges.txt bytes>": the first
 * line "#merges" (a separator no vocab.json contains in practice) splits it
 * in two; without one the whole input is vocab.json and merges.txt is empty.
 * If the loader accepts the pair, a few prompts are encoded with it, which
 * walks the merge table the loader built.
 */
#include "../core/clip_tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char SEP[] = "\n#merges\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    size_t vocab_len = size, merges_off = size;
    size_t sep_len = sizeof SEP - 1;
    for (size_t i = 0; i + sep_len <= size; i++)
        if (!memcmp(text + i, SEP, sep_len)) { vocab_len = i; merges_off = i + sep_len; break; }

    clip_tokenizer tok;
    if (clip_tokenizer_load_memory(&tok, text, vocab_len, text + merges_off, size - merges_off) == DL_OK) {
        static const char *prompts[] = {"a photo of a cat", "<|startoftext|>Hello,  WORLD!! it's 42&amp;",
                                        "na\xc3\xafve caf\xc3\xa9 \xe2\x80\x94 \xf0\x9f\x98\x80", ""};
        for (size_t p = 0; p < sizeof prompts / sizeof prompts[0]; p++) {
            int ids[CLIP_MAX_TOKENS], n = 0;
            if (clip_tokenize(&tok, prompts[p], ids, &n) != DL_OK) continue;
            char piece[64];
            for (int k = 0; k < n; k++) {
                if (!clip_token_str(&tok, ids[k])) __builtin_trap();   /* every id names a token */
                clip_token_text(&tok, ids[k], piece, sizeof piece);
            }
        }
    }
    clip_tokenizer_free(&tok);
    return 0;
}
