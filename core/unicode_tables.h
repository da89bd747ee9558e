/* unicode_tables.h - the bits of the Unicode Character Database the CLIP
 * tokenizer needs, as compact range tables (core/unicode_tables.inc, written
 * by tests/fixtures/clip-tokenizer/gen_unicode_tables.py from Python's
 * unicodedata, Unicode 14.0).
 *
 * Text is handled as arrays of code points (uint32_t, "UTF-32"). What is here:
 *   - character classes: \p{L} (letters), \p{N} (numbers), Python's \s;
 *   - lower-casing exactly like Python's str.lower() (one-to-one mappings from
 *     UnicodeData, U+0130 -> "i" + U+0307, and the final-sigma rule, whose
 *     "cased" / "case-ignorable" context uses categories Lu/Ll/Lt and
 *     Mn/Me/Cf/Lm/Sk - a close approximation of the derived properties);
 *   - NFC: full canonical decomposition (all scripts, Hangul algorithmic),
 *     canonical reordering by combining class, canonical composition with the
 *     composition exclusions. Limit: the tables are Unicode 14.0, so characters
 *     assigned later are treated as unassigned (no class, no decomposition);
 *   - two small ftfy helper tables: half/full-width forms -> NFKC and the
 *     HTML 4 named character references.
 * Lookups are binary searches over sorted ranges: O(log n), no allocation.
 */
#ifndef DL_UNICODE_TABLES_H
#define DL_UNICODE_TABLES_H

#include <stddef.h>
#include <stdint.h>

int uni_is_letter(uint32_t cp);          /* \p{L}: Lu Ll Lt Lm Lo          */
int uni_is_number(uint32_t cp);          /* \p{N}: Nd Nl No                */
int uni_is_space(uint32_t cp);           /* Python str.isspace()           */
int uni_ccc(uint32_t cp);                /* canonical combining class      */

/* One-to-one lower-case mapping (cp itself if none). */
uint32_t uni_lower_simple(uint32_t cp);

/* Python str.lower() of in[0..n): writes at most 2*n code points to out,
 * returns how many. */
size_t uni_lower(const uint32_t *in, size_t n, uint32_t *out);

/* Unicode NFC of in[0..n): writes at most 4*n code points to out (canonical
 * decompositions are at most 4 long), returns how many. */
size_t uni_nfc(const uint32_t *in, size_t n, uint32_t *out);

/* ftfy fix_character_width: the NFKC form of U+3000 / U+FF01..U+FFEF.
 * Returns how many code points (0 = not a width form, else 1 or 2) in rep[]. */
int uni_width_fix(uint32_t cp, uint32_t rep[2]);

/* HTML 4 named character reference (name without '&' and ';', case
 * sensitive), e.g. "amp" -> '&'. Returns the code point or 0. */
uint32_t uni_html_entity(const char *name, size_t len);

/* UTF-8 <-> code points. uni_utf8_decode writes at most strlen(s) code points
 * (malformed bytes become U+FFFD) and returns how many; uni_utf8_encode
 * writes at most 4 bytes per code point plus a NUL and returns the length. */
size_t uni_utf8_decode(const char *s, size_t len, uint32_t *out);
size_t uni_utf8_encode(const uint32_t *cps, size_t n, char *out);
int    uni_utf8_put(uint32_t cp, char out[4]);   /* bytes written (1-4) */

#endif
