/* png_text.h - PNG files that carry text: the generation parameters other
 * Stable Diffusion tools write into their images (key "parameters").
 *
 * A PNG is an 8-byte signature followed by chunks:
 *
 *     [4 bytes length N, big-endian] [4 bytes type] [N bytes data] [4 bytes CRC-32 of type + data]
 *
 * IHDR (size, colour type) comes first, IDAT holds the pixels, IEND ends the
 * file. Text lives in its own chunks, placed anywhere before IEND:
 *
 *     tEXt   keyword NUL text                         (Latin-1 text)
 *     iTXt   keyword NUL 0 0 NUL NUL text             (UTF-8, uncompressed;
 *                                                      no language, no translation)
 *
 * stb_image_write knows nothing of text chunks, so dl_png_save_with_text lets
 * it encode the image into memory and inserts the chunk before IEND (ASCII
 * text as tEXt, anything else as iTXt, as PIL does), then writes atomically.
 *
 *     DL_TRY(dl_png_save_with_text(&img, "out.png", "parameters", "a cat\nSteps: 25, ..."));
 *     char *text;
 *     DL_TRY(dl_png_read_text("out.png", "parameters", &text));   // free(text)
 */
#ifndef DL_PNG_TEXT_H
#define DL_PNG_TEXT_H

#include <stddef.h>

#include "dl_error.h"
#include "image.h"

/* Encode img as PNG with one text chunk (key: 1..79 Latin letters, digits,
 * spaces; text: UTF-8) and write it to path via "<path>.<pid>.tmp" + rename.
 * key == NULL writes a plain PNG. Errors name the path. */
dl_status dl_png_save_with_text(const dl_image *img, const char *path, const char *key, const char *text);

/* The same into memory: *png (malloc'ed, free it) of *size bytes. */
dl_status dl_png_encode_with_text(const dl_image *img, const char *key, const char *text,
                                  unsigned char **png, size_t *size);

/* The text of the first tEXt or iTXt (uncompressed) chunk called `key` in the
 * PNG file at path: *text is malloc'ed and NUL-terminated. A missing key is
 * DL_ERR_FORMAT naming it; a file that is not a PNG or has a bad chunk CRC is
 * DL_ERR_FORMAT naming the file. */
dl_status dl_png_read_text(const char *path, const char *key, char **text);
/* The same on PNG bytes in memory (`source` names them in messages). */
dl_status dl_png_find_text(const unsigned char *png, size_t size, const char *source, const char *key, char **text);

#endif
