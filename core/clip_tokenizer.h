/* clip_tokenizer.h - the CLIP BPE tokenizer of Stable Diffusion, matching
 * transformers' (slow) CLIPTokenizer with ftfy installed, as the pipeline calls
 * it: padding to 77, truncation keeping BOS + 75 tokens + EOS.
 *
 *     clip_tokenizer tok;
 *     if (clip_tokenizer_load(&tok, "model/tokenizer") != DL_OK) dl_die(NULL);
 *     int ids[CLIP_MAX_TOKENS], n_real;
 *     clip_tokenize(&tok, "a photo of a cat", ids, &n_real);
 *     // ids = 49406 320 1125 539 320 2368 49407 49407 ... (77), n_real = 7
 *     clip_tokenizer_free(&tok);
 *
 * The pipeline, step by step (each step is a function below or in clip_tokenizer.c):
 *  1. split off the literal special tokens "<|startoftext|>" / "<|endoftext|>"
 *     (they become their ids; the text between them is processed on its own);
 *  2. ftfy-style clean-up (clip_clean_text): per line, HTML entities (only when
 *     the text has no '<'), mojibake, C1 controls, Latin ligatures (ﬁ -> fi),
 *     full/half-width forms (Ａ -> A), curly quotes -> straight, line breaks,
 *     terminal escapes, control characters, then NFC; whitespace runs -> one
 *     space, strip; lower-case (Python's str.lower);
 *  3. the CLIP pre-tokenisation regex, in this order at each position:
 *       <|startoftext|> | <|endoftext|> | 's|'t|'re|'ve|'m|'ll|'d |
 *       [\p{L}]+ | [\p{N}] | [^\s\p{L}\p{N}]+        (anything else is skipped)
 *  4. each piece -> UTF-8 bytes -> GPT-2's byte-to-unicode characters, the
 *     last one with "</w>" appended -> BPE: repeatedly merge the adjacent pair
 *     with the lowest rank in merges.txt -> vocab ids;
 *  5. BOS 49406, the ids, EOS 49407; truncate to BOS + 75 + EOS; pad with the
 *     pad token of the tokenizer config (SD 1.x: "<|endoftext|>" = 49407;
 *     SD 2.x: "!" = 0).
 *
 * Known limits (all 40 reference prompts match; see tests/test_clip_tokenizer.c):
 *  - ftfy's encoding repair is a subset: a 2-4 character sequence whose
 *    Windows-1252 bytes form one UTF-8 character is decoded when it looks like
 *    mojibake (the usual "Ã©" / "â€™" / "ðŸ˜€" shapes); ftfy's full badness
 *    heuristic, its other single-byte encodings (Latin-2, Cyrillic, MacRoman)
 *    and its "byte A0 became a space" repair are not implemented.
 *  - HTML: the 252 HTML 4 entity names + &apos; and all numeric references;
 *    the rarer HTML5-only names (e.g. &NewLine;) are left as they are.
 *  - Unicode data is version 14.0; the pattern's case-insensitive flag is
 *    modelled only for 'ſ' (which matches the s of 's).
 */
#ifndef DL_CLIP_TOKENIZER_H
#define DL_CLIP_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "dl_error.h"

#define CLIP_MAX_TOKENS 77          /* the text encoder's context length */

typedef struct {
    int    n_vocab;                 /* 49408 for CLIP                              */
    char  *pool;                    /* all token strings, NUL-separated            */
    char **id_to_token;             /* id -> token string ("cat</w>", "Ġ" ...)     */
    int   *vocab_slots;             /* open-addressing hash: string -> id (-1 free)*/
    size_t vocab_mask;
    uint64_t *merge_keys;           /* hash: (left id << 32 | right id) ->         */
    int      *merge_rank;           /*   rank (line order in merges.txt) and       */
    int      *merge_result;         /*   the id of the merged symbol               */
    size_t    merge_mask;
    int    n_merges;
    int    byte_id[256];            /* id of byte b's character                    */
    int    byte_end_id[256];        /* id of byte b's character + "</w>"           */
    int    bos_id, eos_id, pad_id;  /* 49406, 49407, 49407 (SD 1.x) or 0 (SD 2.x)  */
    char   pad_token[64];
} clip_tokenizer;

/* Load dir/vocab.json and dir/merges.txt, and the pad token from
 * dir/special_tokens_map.json or dir/tokenizer_config.json (default
 * "<|endoftext|>"). Missing or corrupt files give an error naming them. */
dl_status clip_tokenizer_load(clip_tokenizer *tok, const char *dir);
/* The same from the two files' bytes in memory (copied; lengths without any
 * NUL), with the default special tokens ("<|startoftext|>", "<|endoftext|>"
 * also as padding). Messages name "vocab.json" / "merges.txt". */
dl_status clip_tokenizer_load_memory(clip_tokenizer *tok, const char *vocab_json, size_t vocab_len,
                                     const char *merges_txt, size_t merges_len);
void      clip_tokenizer_free(clip_tokenizer *tok);

/* The 77 ids the pipeline feeds the text encoder; *n_real (may be NULL) gets
 * the number before the padding (BOS .. EOS, at most 77). */
dl_status clip_tokenize(const clip_tokenizer *tok, const char *text,
                        int ids[CLIP_MAX_TOKENS], int *n_real);

/* All token ids of text, without BOS/EOS and without truncation: writes at
 * most `cap` ids and sets *n to the full count (which may exceed cap, so a
 * caller can show what the 77-token limit cuts off). */
dl_status clip_encode(const clip_tokenizer *tok, const char *text, int *ids, int cap, int *n);

/* The vocabulary string of an id ("cat</w>", byte-level characters), or NULL. */
const char *clip_token_str(const clip_tokenizer *tok, int id);

/* Readable text of a token for display: the byte-level characters turned back
 * into bytes and "</w>" dropped. A token may hold only part of a multi-byte
 * UTF-8 character. Returns 1 if the token ends a word ("</w>"), 0 if not,
 * -1 for a bad id; buf always gets a NUL-terminated string. */
int clip_token_text(const clip_tokenizer *tok, int id, char *buf, size_t cap);

/* Step 2 alone: ftfy-style fixes, whitespace clean-up and lower-casing of a
 * UTF-8 string. *out is malloc'ed UTF-8 (free it). */
dl_status clip_clean_text(const char *text, char **out);

#endif
