/* tokenize.c - bin/tokenize: the 77 token ids Stable Diffusion's text encoder
 * gets for a prompt (BOS, the BPE tokens, EOS, padding).
 *
 *     bin/tokenize --model PATH "a photo of a cat"
 *     49406 320 1125 539 320 2368 49407 49407 ... (77 ids on one line)
 *
 * PATH is a diffusers model folder (its tokenizer/ is used) or a tokenizer
 * folder itself (vocab.json, merges.txt, optional special_tokens_map.json).
 * With --tokens it also prints each token, its id, and where 77 cuts.
 */
#include "../core/clip_tokenizer.h"
#include "../core/dl_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bin/tokenize --model PATH [--tokens] TEXT\n"
            "  Prints the 77 CLIP token ids of TEXT (as Stable Diffusion's pipeline uses them),\n"
            "  space-separated on one line.\n"
            "  --model PATH  a diffusers model folder (uses PATH/tokenizer/) or a tokenizer folder\n"
            "                (vocab.json + merges.txt; the pad token comes from special_tokens_map.json)\n"
            "  --tokens      also list each token with its id, and what the 77-token limit cuts off\n");
}

int main(int argc, char **argv)
{
    const char *model = NULL, *text = NULL;
    int show_tokens = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(a, "--tokens")) show_tokens = 1;
        else if (a[0] == '-' && a[1] == '-') { usage(stderr); dl_die_msg("see --help", "unknown or incomplete option '%s'", a); }
        else if (!text) text = a;
        else { usage(stderr); dl_die_msg("quote the prompt so that it is one argument", "more than one TEXT given"); }
    }
    if (!model) { usage(stderr); dl_die_msg("see --help", "--model PATH is required"); }
    if (!text) { usage(stderr); dl_die_msg("see --help", "no TEXT given"); }

    /* A diffusers folder has tokenizer/; otherwise PATH is the tokenizer folder. */
    char dir[1024], probe[1100];
    snprintf(probe, sizeof probe, "%s/tokenizer/vocab.json", model);
    if (access(probe, R_OK) == 0) snprintf(dir, sizeof dir, "%s/tokenizer", model);
    else snprintf(dir, sizeof dir, "%s", model);

    clip_tokenizer tok;
    if (clip_tokenizer_load(&tok, dir) != DL_OK)
        dl_die("--model must be a diffusers model folder (with tokenizer/) or a folder with vocab.json and merges.txt");
    int ids[CLIP_MAX_TOKENS], n_real = 0;
    if (clip_tokenize(&tok, text, ids, &n_real) != DL_OK) dl_die(NULL);
    for (int i = 0; i < CLIP_MAX_TOKENS; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");

    if (show_tokens) {
        int n = 0;
        if (clip_encode(&tok, text, NULL, 0, &n) != DL_OK) dl_die(NULL);
        int *all = malloc((size_t)(n > 0 ? n : 1) * sizeof *all);
        if (!all || clip_encode(&tok, text, all, n, &n) != DL_OK) dl_die("out of memory");
        char piece[256];
        printf("%3d  %5d  %s\n", 0, tok.bos_id, clip_token_str(&tok, tok.bos_id));
        for (int i = 0; i < n; i++) {
            if (i == CLIP_MAX_TOKENS - 2)
                printf("---- the 77-token limit: the %d token(s) below are cut off ----\n", n - i);
            int eow = clip_token_text(&tok, all[i], piece, sizeof piece);
            printf("%3d  %5d  %s%s\n", i + 1, all[i], piece, eow == 1 ? " |" : "");
        }
        printf("%3s  %5d  %s   (%d real tokens, then %d x pad %d \"%s\")\n", "", tok.eos_id,
               clip_token_str(&tok, tok.eos_id), n_real, CLIP_MAX_TOKENS - n_real, tok.pad_id, tok.pad_token);
        free(all);
    }
    clip_tokenizer_free(&tok);
    return 0;
}
