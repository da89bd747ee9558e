/* unicode_tables.c - lookups over the generated Unicode tables and the two
 * algorithms built on them: Python-style lower-casing and NFC. */
#include "unicode_tables.h"

#include <string.h>

#include "unicode_tables.inc"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* Is cp inside one of the sorted, disjoint [lo, hi] ranges? */
static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}

int uni_is_letter(uint32_t cp) { return in_ranges(uni_letter_ranges, COUNT(uni_letter_ranges), cp); }
int uni_is_number(uint32_t cp) { return in_ranges(uni_number_ranges, COUNT(uni_number_ranges), cp); }
int uni_is_space(uint32_t cp)  { return in_ranges(uni_space_ranges, COUNT(uni_space_ranges), cp); }
static int is_cased(uint32_t cp)          { return in_ranges(uni_cased_ranges, COUNT(uni_cased_ranges), cp); }
static int is_case_ignorable(uint32_t cp)
{
    /* Word_Break MidLetter / MidNumLet / Single_Quote characters count too. */
    if (cp == '\'' || cp == '.' || cp == ':' || cp == 0xB7 || cp == 0x2018 || cp == 0x2019 || cp == 0x2024 ||
        cp == 0xFE52 || cp == 0xFE55 || cp == 0xFF07 || cp == 0xFF0E || cp == 0xFF1A)
        return 1;
    return in_ranges(uni_mark_ranges, COUNT(uni_mark_ranges), cp);
}

int uni_ccc(uint32_t cp)
{
    size_t lo = 0, hi = COUNT(uni_ccc_runs);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < uni_ccc_runs[mid][0]) hi = mid;
        else if (cp > uni_ccc_runs[mid][1]) lo = mid + 1;
        else return (int)uni_ccc_runs[mid][2];
    }
    return 0;
}

uint32_t uni_lower_simple(uint32_t cp)
{
    size_t lo = 0, hi = COUNT(uni_lower_runs);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const int32_t *r = uni_lower_runs[mid];
        if ((int64_t)cp < r[0]) hi = mid;
        else if ((int64_t)cp > r[1]) lo = mid + 1;
        else return ((cp - (uint32_t)r[0]) % (uint32_t)r[2]) == 0 ? (uint32_t)((int32_t)cp + r[3]) : cp;
    }
    return cp;
}

/* Python's final-sigma rule: a capital sigma becomes final 'ς' when a cased
 * letter precedes it and none follows (skipping case-ignorable characters). */
static int final_sigma(const uint32_t *s, size_t n, size_t i)
{
    size_t j = i;
    while (j > 0 && is_case_ignorable(s[j - 1])) j--;
    if (j == 0 || !is_cased(s[j - 1])) return 0;
    j = i + 1;
    while (j < n && is_case_ignorable(s[j])) j++;
    return !(j < n && is_cased(s[j]));
}

size_t uni_lower(const uint32_t *in, size_t n, uint32_t *out)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = in[i];
        if (c < 0x80) { out[m++] = (c >= 'A' && c <= 'Z') ? c + 32 : c; continue; }
        if (c == 0x130) { out[m++] = 'i'; out[m++] = 0x307; continue; }           /* İ -> i + dot above */
        if (c == 0x3A3) { out[m++] = final_sigma(in, n, i) ? 0x3C2 : 0x3C3; continue; }
        out[m++] = uni_lower_simple(c);
    }
    return m;
}

/* ---- NFC ---------------------------------------------------------------- */

/* Hangul syllables are composed/decomposed arithmetically (Unicode ch. 3.12). */
enum { H_SBASE = 0xAC00, H_LBASE = 0x1100, H_VBASE = 0x1161, H_TBASE = 0x11A7,
       H_LCOUNT = 19, H_VCOUNT = 21, H_TCOUNT = 28, H_NCOUNT = H_VCOUNT * H_TCOUNT,
       H_SCOUNT = H_LCOUNT * H_NCOUNT };

static const uint32_t *find_decomp(uint32_t cp)
{
    size_t lo = 0, hi = COUNT(uni_decomp);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < uni_decomp[mid][0]) hi = mid;
        else if (cp > uni_decomp[mid][0]) lo = mid + 1;
        else return uni_decomp[mid];
    }
    return NULL;
}

/* Full canonical decomposition of cp appended to out; returns the count. */
static size_t decompose(uint32_t cp, uint32_t *out)
{
    if (cp >= H_SBASE && cp < H_SBASE + H_SCOUNT) {
        uint32_t s = cp - H_SBASE, t = s % H_TCOUNT;
        out[0] = H_LBASE + s / H_NCOUNT;
        out[1] = H_VBASE + (s % H_NCOUNT) / H_TCOUNT;
        if (t) { out[2] = H_TBASE + t; return 3; }
        return 2;
    }
    const uint32_t *d = find_decomp(cp);
    if (!d) { out[0] = cp; return 1; }
    size_t k = decompose(d[1], out);
    if (d[2]) k += decompose(d[2], out + k);
    return k;
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b)
{
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 &&
        b > H_TBASE && b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    size_t lo = 0, hi = COUNT(uni_compose);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const uint32_t *e = uni_compose[mid];
        if (a < e[0] || (a == e[0] && b < e[1])) hi = mid;
        else if (a > e[0] || b > e[1]) lo = mid + 1;
        else return e[2];
    }
    return 0;
}

size_t uni_nfc(const uint32_t *in, size_t n, uint32_t *out)
{
    /* 1. canonical decomposition */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) m += decompose(in[i], out + m);
    /* 2. canonical ordering: stable insertion sort of each run of non-starters */
    for (size_t i = 1; i < m; i++) {
        uint32_t c = out[i];
        int cc = uni_ccc(c);
        if (cc == 0) continue;
        size_t j = i;
        while (j > 0 && uni_ccc(out[j - 1]) > cc) { out[j] = out[j - 1]; j--; }
        out[j] = c;
    }
    /* 3. canonical composition: a character joins the last starter unless a
     * character of the same or a higher class (or a starter) sits between. */
    if (m == 0) return 0;
    size_t starter = 0, k = 1;
    int starter_ok = uni_ccc(out[0]) == 0, last_cc = starter_ok ? 0 : 256;
    for (size_t i = 1; i < m; i++) {
        uint32_t c = out[i];
        int cc = uni_ccc(c);
        int blocked = (k - 1 != starter) && (last_cc == 0 || last_cc >= cc);
        uint32_t p = (starter_ok && !blocked) ? compose(out[starter], c) : 0;
        if (p) { out[starter] = p; continue; }
        if (cc == 0) { starter = k; starter_ok = 1; }
        last_cc = cc;
        out[k++] = c;
    }
    return k;
}

/* ---- ftfy helper tables ------------------------------------------------- */

int uni_width_fix(uint32_t cp, uint32_t rep[2])
{
    if (cp != 0x3000 && (cp < 0xFF01 || cp > 0xFFEF)) return 0;
    size_t lo = 0, hi = COUNT(uni_width_map);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < uni_width_map[mid][0]) hi = mid;
        else if (cp > uni_width_map[mid][0]) lo = mid + 1;
        else {
            rep[0] = uni_width_map[mid][1];
            rep[1] = uni_width_map[mid][2];
            return rep[1] ? 2 : 1;
        }
    }
    return 0;
}

uint32_t uni_html_entity(const char *name, size_t len)
{
    size_t lo = 0, hi = COUNT(uni_html_entities);
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const char *e = uni_html_entities[mid].name;
        int c = strncmp(name, e, len);
        if (c == 0 && e[len] != '\0') c = -1;     /* name is a proper prefix of e */
        if (c < 0) hi = mid;
        else if (c > 0) lo = mid + 1;
        else return uni_html_entities[mid].cp;
    }
    return 0;
}

/* ---- UTF-8 -------------------------------------------------------------- */

size_t uni_utf8_decode(const char *s, size_t len, uint32_t *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, m = 0;
    while (i < len) {
        unsigned b = p[i];
        uint32_t cp;
        size_t need;
        if (b < 0x80) { out[m++] = b; i++; continue; }
        else if (b >= 0xC2 && b <= 0xDF) { cp = b & 0x1F; need = 1; }
        else if (b >= 0xE0 && b <= 0xEF) { cp = b & 0x0F; need = 2; }
        else if (b >= 0xF0 && b <= 0xF4) { cp = b & 0x07; need = 3; }
        else { out[m++] = 0xFFFD; i++; continue; }
        size_t j = 1;
        for (; j <= need && i + j < len && (p[i + j] & 0xC0) == 0x80; j++) cp = (cp << 6) | (p[i + j] & 0x3F);
        int overlong = (need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF));
        if (j <= need || overlong || (cp >= 0xD800 && cp <= 0xDFFF)) { out[m++] = 0xFFFD; i++; continue; }
        out[m++] = cp;
        i += need + 1;
    }
    return m;
}

int uni_utf8_put(uint32_t cp, char out[4])
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
    if (cp < 0x800) { o[0] = 0xC0 | (cp >> 6); o[1] = 0x80 | (cp & 0x3F); return 2; }
    if (cp < 0x10000) {
        o[0] = 0xE0 | (cp >> 12); o[1] = 0x80 | ((cp >> 6) & 0x3F); o[2] = 0x80 | (cp & 0x3F);
        return 3;
    }
    o[0] = 0xF0 | (cp >> 18); o[1] = 0x80 | ((cp >> 12) & 0x3F);
    o[2] = 0x80 | ((cp >> 6) & 0x3F); o[3] = 0x80 | (cp & 0x3F);
    return 4;
}

size_t uni_utf8_encode(const uint32_t *cps, size_t n, char *out)
{
    size_t m = 0;
    for (size_t i = 0; i < n; i++) m += (size_t)uni_utf8_put(cps[i], out + m);
    out[m] = '\0';
    return m;
}
