/* safetensors.h - read and write .safetensors files (the format of HF weights).
 *
 * File layout (all little-endian):
 *
 *     [8 bytes]  N = length of the JSON header (uint64)
 *     [N bytes]  JSON: {"name": {"dtype": "F32", "shape": [2, 3],
 *                                "data_offsets": [begin, end]}, ...,
 *                       "__metadata__": {"key": "value", ...}}   (optional)
 *     [rest]     the data section; offsets are relative to its start
 *
 * Reading maps the file (no copy) and checks the header thoroughly, so a
 * corrupt or truncated file gives a clear DL_ERR_FORMAT naming the file:
 *
 *     dl_safetensors f;
 *     if (dl_st_open(&f, "unet.safetensors") != DL_OK) dl_die("...");
 *     dl_tensor w;
 *     if (dl_st_load_tensor(&f, "conv_in.weight", &w) != DL_OK) dl_die("...");
 *     dl_st_close(&f);
 *
 * Writing collects tensors, then saves atomically (temp file + rename):
 *
 *     dl_st_writer w;  dl_st_writer_init(&w);
 *     dl_st_writer_add(&w, "x", &x);
 *     dl_st_writer_set_metadata(&w, "step", "100");
 *     dl_st_writer_save(&w, "out.safetensors");
 *     dl_st_writer_free(&w);
 */
#ifndef DL_SAFETENSORS_H
#define DL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dl_error.h"
#include "tensor.h"

typedef enum {
    DL_DTYPE_F32, DL_DTYPE_F16, DL_DTYPE_BF16, DL_DTYPE_F64,
    DL_DTYPE_I64, DL_DTYPE_I32, DL_DTYPE_U8,
    DL_DTYPE_COUNT
} dl_dtype;

/* "F32", "F16", "BF16", "F64", "I64", "I32", "U8" (the names in the header). */
extern const char *const dl_dtype_names[DL_DTYPE_COUNT];
/* Bytes per element: 4, 2, 2, 8, 8, 4, 1. */
extern const int dl_dtype_sizes[DL_DTYPE_COUNT];

#define DL_ST_MAX_DIMS 8

typedef struct {
    char    *name;
    dl_dtype dtype;
    int      ndim;                   /* 0 for a scalar */
    int64_t  shape[DL_ST_MAX_DIMS];
    size_t   offset;                 /* byte offset inside the data section */
    size_t   nbytes;
} dl_st_entry;

typedef struct {
    char                 path[512];
    void                *map;        /* the whole file, mapped read-only (NULL from memory) */
    size_t               size;       /* file size in bytes */
    const unsigned char *data;       /* start of the data section */
    int                  count;      /* number of tensors */
    dl_st_entry         *entries;    /* sorted by offset */
    char                *metadata;   /* raw JSON of "__metadata__", or NULL */
    int                 *by_name;    /* entry indices sorted by name (for dl_st_find) */
} dl_safetensors;

/* Open and validate. On failure f is left closed (safe to dl_st_close). */
dl_status dl_st_open(dl_safetensors *f, const char *path);
/* The same checks on a whole file already in memory (`name` stands for the
 * path in messages). Nothing is copied: the bytes must outlive f. */
dl_status dl_st_open_memory(dl_safetensors *f, const void *bytes, size_t size, const char *name);
void      dl_st_close(dl_safetensors *f);

/* The entry called `name`, or NULL. */
const dl_st_entry *dl_st_find(const dl_safetensors *f, const char *name);

/* The string value of "__metadata__"[key] copied into out (truncated to
 * size); returns 1 if the key exists with a string value, else 0. */
int dl_st_metadata_get(const dl_safetensors *f, const char *key, char *out, size_t size);

/* Number of elements of an entry (1 for a scalar). */
int64_t dl_st_numel(const dl_st_entry *e);

/* Convert an entry to float / double / int64 (dst has dl_st_numel(e) slots).
 * read_f32 accepts every dtype; read_f64 accepts F64/F32/F16/BF16;
 * read_i64 accepts I64/I32/U8. */
dl_status dl_st_read_f32(const dl_safetensors *f, const dl_st_entry *e, float *dst);
dl_status dl_st_read_f64(const dl_safetensors *f, const dl_st_entry *e, double *dst);
dl_status dl_st_read_i64(const dl_safetensors *f, const dl_st_entry *e, int64_t *dst);

/* Allocate `out` (owned, 1..4 dims; a scalar becomes shape [1]) and fill it
 * with the tensor converted to float32. */
dl_status dl_st_load_tensor(const dl_safetensors *f, const char *name, dl_tensor *out);

/* ------------------------------------------------------------------ */
/* Writer. Tensors are copied when added, so the caller may free them. */

typedef struct {
    char    *name;
    dl_dtype dtype;
    int      ndim;
    int64_t  shape[DL_ST_MAX_DIMS];
    void    *data;                   /* owned copy */
    size_t   nbytes;
} dl_st_writer_item;

typedef struct {
    dl_st_writer_item *items;
    int                count, cap;
    char             **meta_keys, **meta_values;
    int                meta_count, meta_cap;
} dl_st_writer;

dl_status dl_st_writer_init(dl_st_writer *w);
/* Add a float32 tensor (shape and data are copied). Duplicate names fail. */
dl_status dl_st_writer_add(dl_st_writer *w, const char *name, const dl_tensor *t);
/* Add raw data of any dtype; ndim 0..8 (0 = scalar). Data is copied. */
dl_status dl_st_writer_add_raw(dl_st_writer *w, const char *name, dl_dtype dtype,
                               int ndim, const int64_t *shape, const void *data);
/* A string key/value in "__metadata__" (setting a key again replaces it). */
dl_status dl_st_writer_set_metadata(dl_st_writer *w, const char *key, const char *value);
/* Write "path.tmp.<pid>", fsync, rename to path. */
dl_status dl_st_writer_save(dl_st_writer *w, const char *path);
void      dl_st_writer_free(dl_st_writer *w);

/* ------------------------------------------------------------------ */
/* Half-precision conversions (exact, incl. subnormals, inf and nan).
 * f32 -> f16 rounds to nearest even and overflows to inf. */
float    dl_f16_to_f32(uint16_t h);
uint16_t dl_f32_to_f16(float f);
float    dl_bf16_to_f32(uint16_t h);
uint16_t dl_f32_to_bf16(float f);

/* Widen n packed half (or bfloat16) values at src (any alignment) to
 * float32. The plain versions are the fast ones: F16C instructions (8 values
 * per instruction) when the build targets a CPU that has them, and several
 * threads for large n. The _ref versions are the definition, one value at a
 * time through dl_f16_to_f32 / dl_bf16_to_f32. Both give the same floats,
 * bit for bit, except that F16C turns a signalling NaN into a quiet one (it
 * stays a NaN with the same sign). dl_st_read_f32 uses the fast ones. */
void dl_f16_to_f32_array(float *dst, const void *src, int64_t n);
void dl_f16_to_f32_array_ref(float *dst, const void *src, int64_t n);
void dl_bf16_to_f32_array(float *dst, const void *src, int64_t n);
void dl_bf16_to_f32_array_ref(float *dst, const void *src, int64_t n);

#endif
