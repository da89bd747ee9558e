/* fuzz_safetensors.c - libFuzzer harness for the safetensors reader.
 *
 * The input is a whole .safetensors file. dl_st_open_memory must either
 * refuse it with an error or accept a header whose every entry can then be
 * found, counted and read (in all three conversions) without touching a
 * byte outside the buffer - AddressSanitizer checks that part.
 *
 *     make fuzz                     (all harnesses, FUZZ_SECONDS each)
 *     build/fuzz/fuzz_safetensors fuzz/corpus/safetensors   (by hand)
 */
#include "../core/safetensors.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Reading allocates numel values; the data section bounds nbytes, but keep
 * the harness fast on large (valid) inputs. */
#define MAX_READ_BYTES ((size_t)1 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly `size` bytes, so ASan sees any read past the end */
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);

    dl_safetensors f;
    if (dl_st_open_memory(&f, buf, size, "fuzz.safetensors") == DL_OK) {
        for (int i = 0; i < f.count; i++) {
            const dl_st_entry *e = &f.entries[i];
            if (dl_st_find(&f, e->name) != e) __builtin_trap();   /* the name index must agree */
            int64_t n = dl_st_numel(e);
            if (n < 0 || e->nbytes != (size_t)n * (size_t)dl_dtype_sizes[e->dtype]) __builtin_trap();
            if (e->nbytes > MAX_READ_BYTES) continue;
            size_t slots = (size_t)n ? (size_t)n : 1;
            float *f32 = malloc(slots * sizeof *f32);
            double *f64 = malloc(slots * sizeof *f64);
            int64_t *i64 = malloc(slots * sizeof *i64);
            if (f32 && f64 && i64) {
                dl_st_read_f32(&f, e, f32);
                dl_st_read_f64(&f, e, f64);   /* fails cleanly for integer dtypes */
                dl_st_read_i64(&f, e, i64);   /* ... and for float dtypes */
            }
            free(f32);
            free(f64);
            free(i64);
            dl_tensor t;
            if (dl_st_load_tensor(&f, e->name, &t) == DL_OK) dl_tensor_free(&t);
        }
        char value[64];
        dl_st_metadata_get(&f, "format", value, sizeof value);
        dl_st_find(&f, "");
    }
    dl_st_close(&f);
    free(buf);
    return 0;
}
