/* clip_tokenizer.c - CLIP BPE tokenizer (see clip_tokenizer.h for the pipeline).
 *
 * Sections: code-point buffers | ftfy-style clean-up | loading vocab/merges |
 * BPE | pre-tokenisation and the public entry points.
 * Text is worked on as arrays of code points; BPE works on vocab ids: every
 * symbol BPE ever holds (a byte character, a byte character + "</w>", or the
 * concatenation of a merge) is a vocabulary entry, so merging two ids gives an
 * id, found with one hash lookup.
 */
#include "clip_tokenizer.h"
#include "unicode_tables.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLIP_MAX_MERGES (49152 - 256 - 2)   /* transformers reads at most this many merge lines */

static const char BOS_STR[] = "<|startoftext|>";
static const char EOS_STR[] = "<|endoftext|>";

/* ---- code-point buffers ------------------------------------------------- */

typedef struct { uint32_t *v; size_t n, cap; } cpbuf;

static int cp_reserve(cpbuf *b, size_t extra)
{
    if (b->n + extra <= b->cap) return 1;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra) cap *= 2;
    uint32_t *v = realloc(b->v, cap * sizeof *v);
    if (!v) return 0;
    b->v = v;
    b->cap = cap;
    return 1;
}
static int cp_push(cpbuf *b, uint32_t c)
{
    if (!cp_reserve(b, 1)) return 0;
    b->v[b->n++] = c;
    return 1;
}
static void cp_swap(cpbuf *a, cpbuf *b) { cpbuf t = *a; *a = *b; *b = t; }

static int cp_equal(const cpbuf *a, const cpbuf *b)
{
    return a->n == b->n && (a->n == 0 || !memcmp(a->v, b->v, a->n * sizeof *a->v));
}

/* Does s[i..] start with the ASCII string lit? */
static int starts_with(const uint32_t *s, size_t n, size_t i, const char *lit)
{
    size_t k = 0;
    for (; lit[k]; k++)
        if (i + k >= n || s[i + k] != (unsigned char)lit[k]) return 0;
    return 1;
}

/* ---- ftfy-style clean-up -------------------------------------------------
 * ftfy.fix_text (6.1, default config) as transformers calls it. Per line,
 * repeated until nothing changes: unescape_html, fix_encoding, fix_c1_controls,
 * fix_latin_ligatures, fix_character_width, uncurl_quotes, fix_line_breaks,
 * remove_terminal_escapes, remove_control_chars, NFC. */

/* Windows-1252 characters of bytes 0x80..0x9F (0 = undefined byte). */
static const uint16_t cp1252_high[32] = {
    0x20AC, 0, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0, 0x017D, 0,
    0, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0, 0x017E, 0x0178,
};

/* The byte a character had in "sloppy" Windows-1252 (C1 controls stand for
 * themselves), or -1 if it has none. ASCII is excluded: it never takes part
 * in a multi-byte UTF-8 sequence. */
static int sloppy1252_byte(uint32_t c)
{
    if (c >= 0x80 && c <= 0xFF) return (int)c;
    for (int i = 0; i < 32; i++)
        if (cp1252_high[i] == c) return 0x80 + i;
    return -1;
}

static int in_list(uint32_t c, const uint32_t *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] == c) return 1;
    return 0;
}

/* Punctuation that is common in real text next to accented capitals. */
static const uint32_t common_punct[] = { 0x2026, 0x201D, 0x201C, 0x2019, 0x2018, 0x2013, 0x2014, 0xBB, 0xAB,
                                         0x203A, 0x2039, 0x2122, 0x2022, 0xA1, 0xBF, 0xB0, 0xA0 };
/* Second characters that give away Windows-1252 mojibake after Î or Ð (ftfy). */
static const uint32_t after_lead_bad[] = { 0x20AC, 0x153, 0x160, 0x161, 0xA2, 0xA3, 0x178, 0x17E, 0xA0, 0xAD, 0xAE,
                                           0xA9, 0xB0, 0xB7, 0xBB, 0x2018, 0x2019, 0x201C, 0x201D, 0x201A, 0x201E,
                                           0x2039, 0x203A, 0xAB, 0xA1, 0xBF, 0x2013, 0x2014, 0xB4 };
static const uint32_t lone_diacritics[] = { 0xA8, 0xAC, 0xAF, 0xB4, 0xB8, 0xA6 };
#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* Is the k-character candidate at s[i] (already known to be one UTF-8
 * character in disguise) convincing enough to decode? A small subset of
 * ftfy's "badness" rules; see the header for the limits. */
static int looks_like_mojibake(const uint32_t *s, size_t n, size_t i, int k)
{
    uint32_t lead = s[i], c1 = s[i + 1];
    if (k == 2) {
        if (lead == 0xC2 || lead == 0xC3) return 1;                       /* Â, Ã */
        if (lead == 0xCE || lead == 0xD0) return in_list(c1, after_lead_bad, N_OF(after_lead_bad));
        if ((c1 >= 0x80 && c1 <= 0x9F) || in_list(c1, lone_diacritics, N_OF(lone_diacritics))) return 1;
        return i + 2 < n && uni_is_letter(s[i + 2]);                      /* inside a word */
    }
    if (k == 3 && lead == 0xE2 && c1 == 0x20AC) return 1;                 /* â€ : U+2000 punctuation */
    if (k == 4 && lead == 0xF0 && c1 == 0x178) return 1;                  /* ðŸ : emoji */
    for (int j = 1; j < k; j++)
        if (!in_list(s[i + j], common_punct, N_OF(common_punct))) return 1;
    return 0;
}

/* fix_encoding (subset): decode UTF-8 that was read as Windows-1252. */
static int fix_mojibake(const cpbuf *in, cpbuf *out)
{
    const uint32_t *s = in->v;
    size_t n = in->n;
    out->n = 0;
    for (size_t i = 0; i < n;) {
        int b0 = sloppy1252_byte(s[i]), k = 0;
        if (b0 >= 0xC2 && b0 <= 0xDF) k = 2;
        else if (b0 >= 0xE0 && b0 <= 0xEF) k = 3;
        else if (b0 >= 0xF0 && b0 <= 0xF4) k = 4;
        uint32_t cp = 0;
        if (k && i + (size_t)k <= n) {
            cp = (uint32_t)b0 & (k == 2 ? 0x1F : k == 3 ? 0x0F : 0x07);
            int b1 = -1;
            for (int j = 1; j < k && cp; j++) {
                int b = sloppy1252_byte(s[i + j]);
                if (b < 0x80 || b > 0xBF) { cp = 0; break; }
                if (j == 1) b1 = b;
                cp = (cp << 6) | (uint32_t)(b & 0x3F);
            }
            /* reject overlong forms, surrogates and > U+10FFFF */
            if (cp && ((b0 == 0xE0 && b1 < 0xA0) || (b0 == 0xED && b1 >= 0xA0) ||
                       (b0 == 0xF0 && b1 < 0x90) || (b0 == 0xF4 && b1 >= 0x90)))
                cp = 0;
            if (cp && !looks_like_mojibake(s, n, i, k)) cp = 0;
        }
        if (cp) { if (!cp_push(out, cp)) return 0; i += (size_t)k; }
        else    { if (!cp_push(out, s[i])) return 0; i++; }
    }
    return 1;
}

static uint32_t simple_upper(uint32_t c)   /* enough for the HTML 4 entity letters */
{
    if ((c >= 0xE0 && c <= 0xFE && c != 0xF7) || (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2)) return c - 32;
    if (c >= 'a' && c <= 'z') return c - 32;
    switch (c) {
    case 0xFF: return 0x178;  case 0x153: return 0x152;  case 0x161: return 0x160;
    case 0x192: return 0x191; case 0x3C2: return 0x3A3;
    default: return c;
    }
}

/* A numeric reference's value as html.unescape gives it: 0 = drop it,
 * UINT32_MAX = leave the text as it is. */
static uint32_t numeric_ref(const uint32_t *s, size_t len)
{
    int hex = len > 0 && (s[0] == 'x' || s[0] == 'X');
    size_t i = (size_t)hex;
    if (i == len) return UINT32_MAX;
    uint64_t v = 0;
    for (; i < len; i++) {
        uint32_t c = s[i];
        int d = (c >= '0' && c <= '9') ? (int)(c - '0')
              : (hex && c >= 'a' && c <= 'f') ? (int)(c - 'a' + 10)
              : (hex && c >= 'A' && c <= 'F') ? (int)(c - 'A' + 10) : -1;
        if (d < 0) return UINT32_MAX;
        v = v * (hex ? 16 : 10) + (uint64_t)d;
        if (v > 0x110000) v = 0x110000;
    }
    if (v == 0 || v >= 0x110000 || (v >= 0xD800 && v <= 0xDFFF)) return 0xFFFD;
    if (v == 0x0D) return '\r';
    if (v >= 0x80 && v <= 0x9F) return cp1252_high[v - 0x80] ? cp1252_high[v - 0x80] : (uint32_t)v;
    if ((v >= 0x1 && v <= 0x8) || v == 0xB || (v >= 0xE && v <= 0x1F) || v == 0x7F ||
        (v >= 0xFDD0 && v <= 0xFDEF) || (v & 0xFFFE) == 0xFFFE)
        return 0;
    return (uint32_t)v;
}

/* unescape_html: "&#?[0-9A-Za-z]{1,24};" references. */
static int unescape_html(const cpbuf *in, cpbuf *out)
{
    const uint32_t *s = in->v;
    size_t n = in->n;
    out->n = 0;
    for (size_t i = 0; i < n;) {
        if (s[i] == '&') {
            size_t a = i + 1 + (i + 1 < n && s[i + 1] == '#'), e = a;
            while (e < n && e - a < 25 && s[e] < 128 &&
                   ((s[e] >= '0' && s[e] <= '9') || ((s[e] | 32) >= 'a' && (s[e] | 32) <= 'z')))
                e++;
            if (e > a && e - a <= 24 && e < n && s[e] == ';') {
                uint32_t rep = UINT32_MAX;
                if (a == i + 2) {
                    rep = numeric_ref(s + a, e - a);
                } else {
                    char name[32], lower[32];
                    size_t len = e - a;
                    int all_upper = 1;
                    for (size_t k = 0; k < len; k++) {
                        name[k] = (char)s[a + k];
                        lower[k] = (char)(name[k] >= 'A' && name[k] <= 'Z' ? name[k] + 32 : name[k]);
                        if (name[k] >= 'a' && name[k] <= 'z') all_upper = 0;
                    }
                    uint32_t c = uni_html_entity(name, len);
                    if (c) rep = c;
                    else if (all_upper && (c = uni_html_entity(lower, len)) != 0) rep = simple_upper(c);
                }
                if (rep != UINT32_MAX) {
                    if (rep && !cp_push(out, rep)) return 0;
                    i = e + 1;
                    continue;
                }
            }
        }
        if (!cp_push(out, s[i++])) return 0;
    }
    return 1;
}

/* ftfy's Latin ligatures and legacy digraphs -> separate letters. */
static const uint32_t ligatures[][4] = {
    {0x132, 'I', 'J', 0}, {0x133, 'i', 'j', 0}, {0x149, 0x2BC, 'n', 0}, {0x1C4, 'D', 0x17D, 0}, {0x1C5, 'D', 0x17E, 0},
    {0x1C6, 'd', 0x17E, 0}, {0x1C7, 'L', 'J', 0}, {0x1C8, 'L', 'j', 0}, {0x1C9, 'l', 'j', 0}, {0x1CA, 'N', 'J', 0},
    {0x1CB, 'N', 'j', 0}, {0x1CC, 'n', 'j', 0}, {0x1F1, 'D', 'Z', 0}, {0x1F2, 'D', 'z', 0}, {0x1F3, 'd', 'z', 0},
    {0xFB00, 'f', 'f', 0}, {0xFB01, 'f', 'i', 0}, {0xFB02, 'f', 'l', 0}, {0xFB03, 'f', 'f', 'i'},
    {0xFB04, 'f', 'f', 'l'}, {0xFB05, 0x17F, 't', 0}, {0xFB06, 's', 't', 0},
};

static int is_removed_control(uint32_t c)
{
    return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F || (c >= 0x206A && c <= 0x206F) ||
           c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

/* The per-character fixes, in ftfy's order, each a full pass over the text. */
static int simple_fixes(cpbuf *t, cpbuf *tmp)
{
    /* fix_c1_controls: U+0080..U+009F -> the Windows-1252 character */
    for (size_t i = 0; i < t->n; i++)
        if (t->v[i] >= 0x80 && t->v[i] <= 0x9F && cp1252_high[t->v[i] - 0x80]) t->v[i] = cp1252_high[t->v[i] - 0x80];
    /* fix_latin_ligatures, fix_character_width */
    tmp->n = 0;
    for (size_t i = 0; i < t->n; i++) {
        uint32_t c = t->v[i], rep[2];
        size_t k = 0;
        for (; k < N_OF(ligatures) && ligatures[k][0] != c; k++) {}
        if (k < N_OF(ligatures)) {
            for (int j = 1; j < 4 && ligatures[k][j]; j++)
                if (!cp_push(tmp, ligatures[k][j])) return 0;
            continue;
        }
        int w = uni_width_fix(c, rep);
        for (int j = 0; j < w; j++)
            if (!cp_push(tmp, rep[j])) return 0;
        if (!w && !cp_push(tmp, c)) return 0;
    }
    cp_swap(t, tmp);
    /* uncurl_quotes, fix_line_breaks, remove_terminal_escapes, remove_control_chars */
    tmp->n = 0;
    for (size_t i = 0; i < t->n; i++) {
        uint32_t c = t->v[i];
        if (c == 0x2BC || (c >= 0x2018 && c <= 0x201B)) c = '\'';
        else if (c >= 0x201C && c <= 0x201F) c = '"';
        if (!cp_push(tmp, c)) return 0;
    }
    cp_swap(t, tmp);
    tmp->n = 0;
    for (size_t i = 0; i < t->n; i++) {
        uint32_t c = t->v[i];
        if (c == '\r' && i + 1 < t->n && t->v[i + 1] == '\n') continue;
        if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
        if (!cp_push(tmp, c)) return 0;
    }
    cp_swap(t, tmp);
    tmp->n = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (t->v[i] == 0x1B && i + 1 < t->n && t->v[i + 1] == '[') {        /* ESC [ digits/; letter */
            size_t j = i + 2;
            while (j < t->n && ((t->v[j] >= '0' && t->v[j] <= '9') || t->v[j] == ';')) j++;
            if (j < t->n && t->v[j] < 128 && (t->v[j] | 32) >= 'a' && (t->v[j] | 32) <= 'z') { i = j; continue; }
        }
        if (!cp_push(tmp, t->v[i])) return 0;
    }
    cp_swap(t, tmp);
    size_t m = 0;
    for (size_t i = 0; i < t->n; i++)
        if (!is_removed_control(t->v[i])) t->v[m++] = t->v[i];
    t->n = m;
    /* NFC */
    tmp->n = 0;
    if (!cp_reserve(tmp, 4 * t->n + 1)) return 0;
    tmp->n = uni_nfc(t->v, t->n, tmp->v);
    cp_swap(t, tmp);
    return 1;
}

/* fix_and_explain on one line: all fixes until the text stops changing. */
static int fix_segment(cpbuf *t, int html)
{
    cpbuf prev = {0}, tmp = {0};
    int ok = 1;
    for (int round = 0; ok && round < 16; round++) {
        prev.n = 0;
        ok = cp_reserve(&prev, t->n);
        if (!ok) break;
        if (t->n) memcpy(prev.v, t->v, t->n * sizeof *t->v);
        prev.n = t->n;
        if (html) { ok = unescape_html(t, &tmp); cp_swap(t, &tmp); }
        for (int r = 0; ok && r < 8; r++) {                     /* fix_encoding until stable */
            ok = fix_mojibake(t, &tmp);
            int same = cp_equal(t, &tmp);
            cp_swap(t, &tmp);
            if (same) break;
        }
        if (ok) ok = simple_fixes(t, &tmp);
        if (ok && cp_equal(t, &prev)) break;
    }
    free(prev.v);
    free(tmp.v);
    return ok;
}

/* ftfy.fix_text + whitespace_clean + lower, on code points (in place). */
static int clean_codepoints(cpbuf *t)
{
    cpbuf out = {0}, seg = {0};
    int html = 1, ok = 1;
    /* fix_text works line by line; once a line contains '<' the text may be
     * HTML and entities are left alone from then on. */
    for (size_t pos = 0; ok && pos < t->n;) {
        size_t end = pos;
        while (end < t->n && t->v[end] != '\n') end++;
        if (end < t->n) end++;
        seg.n = 0;
        ok = cp_reserve(&seg, end - pos);
        if (!ok) break;
        memcpy(seg.v, t->v + pos, (end - pos) * sizeof *t->v);
        seg.n = end - pos;
        for (size_t i = 0; i < seg.n; i++)
            if (seg.v[i] == '<') html = 0;
        ok = fix_segment(&seg, html) && cp_reserve(&out, seg.n);
        if (ok && seg.n) { memcpy(out.v + out.n, seg.v, seg.n * sizeof *seg.v); out.n += seg.n; }
        pos = end;
    }
    /* whitespace_clean: runs of \s -> one space, then strip */
    size_t m = 0;
    for (size_t i = 0; ok && i < out.n; i++) {
        if (uni_is_space(out.v[i])) {
            if (m > 0 && out.v[m - 1] != ' ') out.v[m++] = ' ';
        } else {
            out.v[m++] = out.v[i];
        }
    }
    while (m > 0 && out.v[m - 1] == ' ') m--;
    /* lower-case */
    t->n = 0;
    if (ok) ok = cp_reserve(t, 2 * m + 1);
    if (ok) t->n = uni_lower(out.v, m, t->v);
    free(out.v);
    free(seg.v);
    return ok;
}

dl_status clip_clean_text(const char *text, char **out)
{
    *out = NULL;
    size_t len = strlen(text);
    cpbuf t = {0};
    if (!cp_reserve(&t, len + 1)) return dl_fail(DL_ERR_MEMORY, "clip_clean_text: out of memory");
    t.n = uni_utf8_decode(text, len, t.v);
    char *s = NULL;
    if (clean_codepoints(&t) && (s = malloc(4 * t.n + 1)) != NULL) uni_utf8_encode(t.v, t.n, s);
    free(t.v);
    if (!s) return dl_fail(DL_ERR_MEMORY, "clip_clean_text: out of memory");
    *out = s;
    return DL_OK;
}

/* ---- loading ------------------------------------------------------------ */

static char *read_whole_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    long sz = -1;
    if (fseek(f, 0, SEEK_END) == 0) sz = ftell(f);
    if (sz >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)sz + 1)) != NULL) {
        if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) { free(buf); buf = NULL; }
        else { buf[sz] = '\0'; *len = (size_t)sz; }
    }
    fclose(f);
    return buf;
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int vocab_find(const clip_tokenizer *tok, const char *s)
{
    for (size_t h = fnv1a(s) & tok->vocab_mask;; h = (h + 1) & tok->vocab_mask) {
        int id = tok->vocab_slots[h];
        if (id < 0) return -1;
        if (!strcmp(tok->id_to_token[id], s)) return id;
    }
}

static size_t merge_slot(const clip_tokenizer *tok, uint64_t key)
{
    size_t h = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & tok->merge_mask;
    while (tok->merge_rank[h] >= 0 && tok->merge_keys[h] != key) h = (h + 1) & tok->merge_mask;
    return h;
}

/* Parse a JSON string at *p (just after the opening quote) into out (UTF-8).
 * Returns the end pointer (after the closing quote) or NULL. */
static const char *json_string(const char *p, const char *end, char *out, size_t *out_len)
{
    size_t m = 0;
    while (p < end && *p != '"') {
        if ((unsigned char)*p < 0x20) return NULL;
        if (*p != '\\') { out[m++] = *p++; continue; }
        if (++p >= end) return NULL;
        char e = *p++;
        switch (e) {
        case '"': case '\\': case '/': out[m++] = e; break;
        case 'b': out[m++] = '\b'; break;
        case 'f': out[m++] = '\f'; break;
        case 'n': out[m++] = '\n'; break;
        case 'r': out[m++] = '\r'; break;
        case 't': out[m++] = '\t'; break;
        case 'u': {
            uint32_t cp = 0;
            for (int k = 0; k < 4; k++, p++) {
                if (p >= end) return NULL;
                char c = *p;
                int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                      : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
                if (d < 0) return NULL;
                cp = cp * 16 + (uint32_t)d;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                uint32_t lo = (uint32_t)strtoul((char[5]){p[2], p[3], p[4], p[5], 0}, NULL, 16);
                if (lo >= 0xDC00 && lo <= 0xDFFF) { cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00); p += 6; }
            }
            if (cp == 0) return NULL;                   /* a NUL would cut the C string */
            m += (size_t)uni_utf8_put(cp, out + m);
            break;
        }
        default: return NULL;
        }
    }
    if (p >= end) return NULL;
    out[m] = '\0';
    *out_len = m;
    return p + 1;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* vocab.json: one flat object {"token": id, ...}, parsed by hand (49408
 * entries in a few milliseconds). buf holds len bytes plus a NUL (owned:
 * freed here); NULL means the file could not be read. */
static dl_status load_vocab(clip_tokenizer *tok, const char *path, char *buf, size_t len)
{
    if (!buf) return dl_fail(DL_ERR_IO, "clip tokenizer: cannot read %s", path);
    const char *p = buf, *end = buf + len;
    size_t cap = 1024, count = 0;
    int *ids = malloc(cap * sizeof *ids);
    size_t *offs = malloc(cap * sizeof *offs);
    tok->pool = malloc(len + 1);                          /* decoded keys are never longer */
    dl_status st = DL_OK;
    size_t pool_n = 0;
    long max_id = -1;
    if (!ids || !offs || !tok->pool) { st = dl_fail(DL_ERR_MEMORY, "clip tokenizer: out of memory"); goto done; }
    p = skip_ws(p, end);
    if (p >= end || *p++ != '{') { st = dl_fail(DL_ERR_FORMAT, "%s: not a JSON object", path); goto done; }
    for (;;) {
        p = skip_ws(p, end);
        if (p < end && *p == '}' && count == 0) { p++; break; }
        size_t klen = 0;
        if (p >= end || *p != '"' || !(p = json_string(p + 1, end, tok->pool + pool_n, &klen))) {
            st = dl_fail(DL_ERR_FORMAT, "%s: bad token string near byte %zu", path, (size_t)(p ? p - buf : 0));
            goto done;
        }
        p = skip_ws(p, end);
        char *num_end = NULL;
        long id = (p < end && *p == ':') ? strtol(p + 1, &num_end, 10) : -1;
        if (!num_end || num_end == p + 1 || id < 0 || id > 10000000) {
            st = dl_fail(DL_ERR_FORMAT, "%s: token '%s' has no valid id", path, tok->pool + pool_n);
            goto done;
        }
        if (count == cap) {
            cap *= 2;
            int *ni = realloc(ids, cap * sizeof *ids);
            if (ni) ids = ni;
            size_t *no = realloc(offs, cap * sizeof *offs);
            if (no) offs = no;
            if (!ni || !no) { st = dl_fail(DL_ERR_MEMORY, "clip tokenizer: out of memory"); goto done; }
        }
        ids[count] = (int)id;
        offs[count++] = pool_n;
        pool_n += klen + 1;
        if (id > max_id) max_id = id;
        p = skip_ws(num_end, end);
        if (p < end && *p == ',') { p++; continue; }
        if (p < end && *p == '}') { p++; break; }
        st = dl_fail(DL_ERR_FORMAT, "%s: expected ',' or '}' near byte %zu", path, (size_t)(p - buf));
        goto done;
    }
    if (count == 0) { st = dl_fail(DL_ERR_FORMAT, "%s: empty vocabulary", path); goto done; }
    tok->n_vocab = (int)max_id + 1;
    size_t slots = 1;
    while (slots < 2 * count) slots *= 2;
    tok->vocab_mask = slots - 1;
    tok->id_to_token = calloc((size_t)tok->n_vocab, sizeof *tok->id_to_token);
    tok->vocab_slots = malloc(slots * sizeof *tok->vocab_slots);
    if (!tok->id_to_token || !tok->vocab_slots) { st = dl_fail(DL_ERR_MEMORY, "clip tokenizer: out of memory"); goto done; }
    memset(tok->vocab_slots, 0xFF, slots * sizeof *tok->vocab_slots);
    for (size_t i = 0; i < count; i++) {
        const char *s = tok->pool + offs[i];
        if (tok->id_to_token[ids[i]]) {
            st = dl_fail(DL_ERR_FORMAT, "%s: id %d is used twice ('%s' and '%s')", path, ids[i],
                         tok->id_to_token[ids[i]], s);
            goto done;
        }
        size_t h = fnv1a(s) & tok->vocab_mask;
        while (tok->vocab_slots[h] >= 0) {
            if (!strcmp(tok->id_to_token[tok->vocab_slots[h]], s)) {
                st = dl_fail(DL_ERR_FORMAT, "%s: token '%s' appears twice", path, s);
                goto done;
            }
            h = (h + 1) & tok->vocab_mask;
        }
        tok->vocab_slots[h] = ids[i];
        tok->id_to_token[ids[i]] = (char *)s;
    }
done:
    free(ids);
    free(offs);
    free(buf);
    return st;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the
 * other 68 bytes get the code points 256, 257, ... in byte order. */
static uint32_t byte_to_unicode(int b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return (uint32_t)b;
    int k = 0;
    for (int x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) k++;
    return 256u + (uint32_t)k;
}

/* merges.txt: a "#version" line, then "left right" per line, rank = order.
 * buf as for load_vocab (owned, NUL-terminated, cut into lines in place). */
static dl_status load_merges(clip_tokenizer *tok, const char *path, char *buf, size_t len)
{
    if (!buf) return dl_fail(DL_ERR_IO, "clip tokenizer: cannot read %s", path);
    size_t slots = 1;
    while (slots < 2 * CLIP_MAX_MERGES) slots *= 2;
    tok->merge_mask = slots - 1;
    tok->merge_keys = malloc(slots * sizeof *tok->merge_keys);
    tok->merge_rank = malloc(slots * sizeof *tok->merge_rank);
    tok->merge_result = malloc(slots * sizeof *tok->merge_result);
    dl_status st = DL_OK;
    if (!tok->merge_keys || !tok->merge_rank || !tok->merge_result) {
        st = dl_fail(DL_ERR_MEMORY, "clip tokenizer: out of memory");
        goto done;
    }
    memset(tok->merge_rank, 0xFF, slots * sizeof *tok->merge_rank);
    /* As transformers: strip the file, drop its first line, keep at most CLIP_MAX_MERGES lines. */
    char *p = buf, *end = buf + len;
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) p++;
    char *nl = memchr(p, '\n', (size_t)(end - p));
    p = nl ? nl + 1 : end;
    char joined[1024];
    for (int line = 0; p < end && line < CLIP_MAX_MERGES; line++) {
        nl = memchr(p, '\n', (size_t)(end - p));
        char *eol = nl ? nl : end;
        *eol = '\0';
        char *parts[3] = {0};
        int np = 0;
        for (char *q = p; *q && np < 3;) {
            while (*q == ' ' || *q == '\t' || *q == '\r' || *q == '\v' || *q == '\f') *q++ = '\0';
            if (!*q) break;
            parts[np++] = q;
            while (*q && *q != ' ' && *q != '\t' && *q != '\r' && *q != '\v' && *q != '\f') q++;
        }
        p = eol + 1;
        if (np != 2) continue;                     /* never a pair: transformers ignores it too */
        int a = vocab_find(tok, parts[0]), b = vocab_find(tok, parts[1]);
        size_t la = strlen(parts[0]), lb = strlen(parts[1]);
        int ab = -1;
        if (la + lb < sizeof joined) {
            memcpy(joined, parts[0], la);
            memcpy(joined + la, parts[1], lb + 1);
            ab = vocab_find(tok, joined);
        }
        if (a < 0 || b < 0 || ab < 0) {
            st = dl_fail(DL_ERR_FORMAT, "%s line %d: merge '%s %s' uses or makes a token not in vocab.json",
                         path, line + 2, parts[0], parts[1]);
            goto done;
        }
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        size_t h = merge_slot(tok, key);
        if (tok->merge_rank[h] < 0) tok->n_merges++;
        tok->merge_keys[h] = key;
        tok->merge_rank[h] = line;                 /* a repeated pair keeps its last rank */
        tok->merge_result[h] = ab;
    }
done:
    free(buf);
    return st;
}

/* pad_token etc. from a tokenizer JSON: a string or {"content": string}. */
static int json_token(const char *path, const char *key, char *out, size_t cap)
{
    size_t len = 0;
    char *buf = read_whole_file(path, &len);
    if (!buf) return 0;
    cJSON *root = cJSON_Parse(buf);
    free(buf);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
    int ok = cJSON_IsString(v) && strlen(v->valuestring) < cap;
    if (ok) strcpy(out, v->valuestring);
    cJSON_Delete(root);
    return ok;
}

/* Every byte's character (alone and with "</w>") must be in the vocabulary:
 * BPE starts from them. */
static dl_status find_byte_tokens(clip_tokenizer *tok, const char *path)
{
    for (int b = 0; b < 256; b++) {
        char s[16];
        int k = uni_utf8_put(byte_to_unicode(b), s);
        s[k] = '\0';
        tok->byte_id[b] = vocab_find(tok, s);
        strcpy(s + k, "</w>");
        tok->byte_end_id[b] = vocab_find(tok, s);
        if (tok->byte_id[b] < 0 || tok->byte_end_id[b] < 0)
            return dl_fail(DL_ERR_FORMAT, "%s: the byte-level token of byte 0x%02X (or with </w>) is missing", path, b);
    }
    return DL_OK;
}

static dl_status find_special_ids(clip_tokenizer *tok, const char *path, const char *bos, const char *eos)
{
    tok->bos_id = vocab_find(tok, bos);
    tok->eos_id = vocab_find(tok, eos);
    tok->pad_id = vocab_find(tok, tok->pad_token);
    if (tok->bos_id < 0 || tok->eos_id < 0 || tok->pad_id < 0) {
        const char *which = tok->bos_id < 0 ? bos : tok->eos_id < 0 ? eos : tok->pad_token;
        return dl_fail(DL_ERR_FORMAT, "%s: special token '%s' is not in the vocabulary", path, which);
    }
    return DL_OK;
}

dl_status clip_tokenizer_load(clip_tokenizer *tok, const char *dir)
{
    memset(tok, 0, sizeof *tok);
    char path[1024];
    size_t len = 0;
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    char *buf = read_whole_file(path, &len);
    dl_status st = load_vocab(tok, path, buf, len);
    if (st == DL_OK) st = find_byte_tokens(tok, path);
    if (st != DL_OK) { clip_tokenizer_free(tok); return st; }
    char bos[64] = "<|startoftext|>", eos[64] = "<|endoftext|>", map[1024], cfg[1024];
    snprintf(map, sizeof map, "%s/special_tokens_map.json", dir);
    snprintf(cfg, sizeof cfg, "%s/tokenizer_config.json", dir);
    strcpy(tok->pad_token, "<|endoftext|>");
    if (!json_token(map, "pad_token", tok->pad_token, sizeof tok->pad_token))
        json_token(cfg, "pad_token", tok->pad_token, sizeof tok->pad_token);
    if (!json_token(map, "bos_token", bos, sizeof bos)) json_token(cfg, "bos_token", bos, sizeof bos);
    if (!json_token(map, "eos_token", eos, sizeof eos)) json_token(cfg, "eos_token", eos, sizeof eos);
    st = find_special_ids(tok, path, bos, eos);
    if (st != DL_OK) { clip_tokenizer_free(tok); return st; }
    snprintf(path, sizeof path, "%s/merges.txt", dir);
    buf = read_whole_file(path, &len);
    st = load_merges(tok, path, buf, len);
    if (st != DL_OK) clip_tokenizer_free(tok);
    return st;
}

/* A NUL-terminated malloc'ed copy of n bytes (NULL if out of memory). */
static char *copy_bytes(const char *s, size_t n)
{
    char *c = malloc(n + 1);
    if (!c) return NULL;
    if (n) memcpy(c, s, n);
    c[n] = '\0';
    return c;
}

dl_status clip_tokenizer_load_memory(clip_tokenizer *tok, const char *vocab_json, size_t vocab_len,
                                     const char *merges_txt, size_t merges_len)
{
    memset(tok, 0, sizeof *tok);
    if ((!vocab_json && vocab_len) || (!merges_txt && merges_len))
        return dl_fail(DL_ERR_ARG, "clip tokenizer: NULL buffer");
    char *buf = copy_bytes(vocab_json, vocab_len);
    if (!buf) return dl_fail(DL_ERR_MEMORY, "clip tokenizer: out of memory");
    dl_status st = load_vocab(tok, "vocab.json", buf, vocab_len);
    if (st == DL_OK) st = find_byte_tokens(tok, "vocab.json");
    if (st == DL_OK) {
        strcpy(tok->pad_token, EOS_STR);
        st = find_special_ids(tok, "vocab.json", BOS_STR, EOS_STR);
    }
    if (st == DL_OK) {
        buf = copy_bytes(merges_txt, merges_len);
        st = buf ? load_merges(tok, "merges.txt", buf, merges_len) : dl_fail(DL_ERR_MEMORY, "clip tokenizer: out of memory");
    }
    if (st != DL_OK) clip_tokenizer_free(tok);
    return st;
}

void clip_tokenizer_free(clip_tokenizer *tok)
{
    free(tok->pool);
    free(tok->id_to_token);
    free(tok->vocab_slots);
    free(tok->merge_keys);
    free(tok->merge_rank);
    free(tok->merge_result);
    memset(tok, 0, sizeof *tok);
}

/* ---- BPE ---------------------------------------------------------------- */

/* BPE of one pre-token (its UTF-8 bytes): sym[] starts as one symbol per
 * byte, the last carrying "</w>"; then the adjacent pair with the lowest merge
 * rank is merged everywhere (left to right), until no pair has a rank.
 * Returns the number of symbols left in sym[]. */
static size_t bpe(const clip_tokenizer *tok, const unsigned char *bytes, size_t nb, int *sym)
{
    for (size_t i = 0; i < nb; i++) sym[i] = (i + 1 == nb) ? tok->byte_end_id[bytes[i]] : tok->byte_id[bytes[i]];
    size_t n = nb;
    while (n > 1) {
        int best_rank = INT_MAX, merged = -1, left = -1, right = -1;
        for (size_t i = 0; i + 1 < n; i++) {
            size_t h = merge_slot(tok, ((uint64_t)(uint32_t)sym[i] << 32) | (uint32_t)sym[i + 1]);
            if (tok->merge_rank[h] >= 0 && tok->merge_rank[h] < best_rank) {
                best_rank = tok->merge_rank[h];
                merged = tok->merge_result[h];
                left = sym[i];
                right = sym[i + 1];
            }
        }
        if (merged < 0) break;
        size_t m = 0;
        for (size_t i = 0; i < n;) {
            if (i + 1 < n && sym[i] == left && sym[i + 1] == right) { sym[m++] = merged; i += 2; }
            else sym[m++] = sym[i++];
        }
        n = m;
    }
    return n;
}

/* ---- pre-tokenisation and the entry points ------------------------------ */

typedef struct { int *ids; int cap, n; } id_sink;

static void sink_put(id_sink *s, int id)
{
    if (s->n < s->cap) s->ids[s->n] = id;
    s->n++;
}

/* The CLIP regex over cleaned, lower-cased text; BPE each piece into sink. */
static int tokenize_clean(const clip_tokenizer *tok, const uint32_t *s, size_t n, id_sink *sink)
{
    unsigned char *bytes = malloc(4 * n + 8);
    int *sym = malloc((4 * n + 8) * sizeof *sym);
    if (!bytes || !sym) { free(bytes); free(sym); return 0; }
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        if (starts_with(s, n, i, BOS_STR)) { sink_put(sink, tok->bos_id); i += sizeof BOS_STR - 1; continue; }
        if (starts_with(s, n, i, EOS_STR)) { sink_put(sink, tok->eos_id); i += sizeof EOS_STR - 1; continue; }
        if (s[i] == '\'' && i + 1 < n) {
            uint32_t c = s[i + 1], d = i + 2 < n ? s[i + 2] : 0;
            if (c == 's' || c == 0x17F || c == 't' || c == 'm' || c == 'd') j = i + 2;   /* ſ matches s (ignore case) */
            else if ((c == 'r' || c == 'v') && d == 'e') j = i + 3;
            else if (c == 'l' && d == 'l') j = i + 3;
        }
        if (j == i && uni_is_letter(s[i])) {
            while (j < n && uni_is_letter(s[j])) j++;
        } else if (j == i && uni_is_number(s[i])) {
            j = i + 1;
        } else if (j == i && !uni_is_space(s[i])) {
            while (j < n && !uni_is_space(s[j]) && !uni_is_letter(s[j]) && !uni_is_number(s[j])) j++;
        }
        if (j == i) { i++; continue; }                 /* whitespace between pieces */
        size_t nb = 0;
        for (size_t k = i; k < j; k++) nb += (size_t)uni_utf8_put(s[k], (char *)bytes + nb);
        size_t ns = bpe(tok, bytes, nb, sym);
        for (size_t k = 0; k < ns; k++) sink_put(sink, sym[k]);
        i = j;
    }
    free(bytes);
    free(sym);
    return 1;
}

dl_status clip_encode(const clip_tokenizer *tok, const char *text, int *ids, int cap, int *n)
{
    *n = 0;
    if (!tok || !tok->id_to_token) return dl_fail(DL_ERR_ARG, "clip_encode: tokenizer not loaded");
    if (!text) return dl_fail(DL_ERR_ARG, "clip_encode: text is NULL");
    size_t len = strlen(text);
    cpbuf all = {0}, chunk = {0};
    id_sink sink = { ids, cap < 0 ? 0 : cap, 0 };
    int ok = cp_reserve(&all, len + 1);
    if (ok) all.n = uni_utf8_decode(text, len, all.v);
    /* The literal special tokens are split off first (transformers' added-token
     * trie); each stretch of text between them is cleaned and tokenized alone. */
    for (size_t pos = 0; ok && pos <= all.n;) {
        size_t end = pos;
        int special = -1;
        size_t special_len = 0;
        for (; end < all.n; end++) {
            if (starts_with(all.v, all.n, end, BOS_STR)) { special = tok->bos_id; special_len = sizeof BOS_STR - 1; break; }
            if (starts_with(all.v, all.n, end, EOS_STR)) { special = tok->eos_id; special_len = sizeof EOS_STR - 1; break; }
        }
        chunk.n = 0;
        ok = cp_reserve(&chunk, end - pos + 1);
        if (!ok) break;
        memcpy(chunk.v, all.v + pos, (end - pos) * sizeof *all.v);
        chunk.n = end - pos;
        ok = clean_codepoints(&chunk) && tokenize_clean(tok, chunk.v, chunk.n, &sink);
        if (special >= 0) sink_put(&sink, special);
        else break;
        pos = end + special_len;
    }
    free(all.v);
    free(chunk.v);
    if (!ok) return dl_fail(DL_ERR_MEMORY, "clip_encode: out of memory");
    *n = sink.n;
    return DL_OK;
}

dl_status clip_tokenize(const clip_tokenizer *tok, const char *text, int ids[CLIP_MAX_TOKENS], int *n_real)
{
    int body[CLIP_MAX_TOKENS - 2], n = 0;
    DL_TRY(clip_encode(tok, text, body, CLIP_MAX_TOKENS - 2, &n));
    int keep = n < CLIP_MAX_TOKENS - 2 ? n : CLIP_MAX_TOKENS - 2;   /* truncation: BOS + 75 + EOS */
    ids[0] = tok->bos_id;
    memcpy(ids + 1, body, (size_t)keep * sizeof *ids);
    ids[keep + 1] = tok->eos_id;
    for (int i = keep + 2; i < CLIP_MAX_TOKENS; i++) ids[i] = tok->pad_id;
    if (n_real) *n_real = keep + 2;
    return DL_OK;
}

const char *clip_token_str(const clip_tokenizer *tok, int id)
{
    return (tok && id >= 0 && id < tok->n_vocab) ? tok->id_to_token[id] : NULL;
}

int clip_token_text(const clip_tokenizer *tok, int id, char *buf, size_t cap)
{
    if (cap == 0) return -1;
    buf[0] = '\0';
    const char *s = clip_token_str(tok, id);
    if (!s) return -1;
    if (id == tok->bos_id || id == tok->eos_id) {          /* specials are shown as they are */
        snprintf(buf, cap, "%s", s);
        return 1;
    }
    size_t len = strlen(s), m = 0;
    int end_of_word = len >= 4 && !strcmp(s + len - 4, "</w>");
    if (end_of_word) len -= 4;
    uint32_t cps[64];
    size_t n = uni_utf8_decode(s, len < 64 ? len : 64, cps);
    for (size_t i = 0; i < n && m + 1 < cap; i++) {
        int b = -1;
        for (int x = 0; x < 256 && b < 0; x++)
            if (byte_to_unicode(x) == cps[i]) b = x;
        buf[m++] = (char)(b < 0 ? '?' : b);
    }
    buf[m] = '\0';
    return end_of_word;
}
