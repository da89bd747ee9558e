/* test_safetensors.c - reader, writer, half-precision conversions, and
 * corrupt files (each one must give DL_ERR_FORMAT naming the file). */
#include "testing.h"
#include "../core/safetensors.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char out_dir[512];
static const char *out_path(const char *file)
{
    static char buf[1024];
    snprintf(out_dir, sizeof out_dir, "%s", dl_test_out_dir("safetensors"));
    snprintf(buf, sizeof buf, "%s/%s", out_dir, file);
    return buf;
}

/* Number of "<prefix>.tmp.*" files left in the output directory. */
static int count_temp_files(const char *prefix)
{
    DIR *d = opendir(out_dir);
    if (!d) return -1;
    int n = 0;
    char want[256];
    snprintf(want, sizeof want, "%s.tmp.", prefix);
    for (struct dirent *e; (e = readdir(d));)
        if (!strncmp(e->d_name, want, strlen(want))) n++;
    closedir(d);
    return n;
}

static float f32_from_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

TEST(safetensors, round_trip_all_dtypes)
{
    dl_st_writer w;
    dl_st_writer_init(&w);
    dl_tensor x;
    CHECK(dl_tensor_alloc(&x, 3, DL_SHAPE(2, 3, 5)) == DL_OK, "alloc");
    for (int i = 0; i < 30; i++) x.data[i] = (float)i * 0.25f - 3.0f;
    CHECK(dl_st_writer_add(&w, "x", &x) == DL_OK, "add f32: %s", dl_error_message());

    const uint16_t h16[4] = {0x3c00, 0x0001, 0xfc00, 0x7bff};             /* 1, 2^-24, -inf, 65504 */
    const uint16_t b16[3] = {0x3f80, 0xc040, 0x0001};                     /* 1, -3, tiny subnormal */
    const double f64[2] = {0.1, -1e300};
    const int64_t i64[3] = {-5, 999, (int64_t)1 << 40};
    const int32_t i32[2] = {-7, 123456};
    const uint8_t u8[5] = {0, 1, 2, 254, 255};
    const double scalar = 2.5;
    CHECK(dl_st_writer_add_raw(&w, "half", DL_DTYPE_F16, 2, DL_SHAPE(2, 2), h16) == DL_OK, "add f16");
    CHECK(dl_st_writer_add_raw(&w, "bf", DL_DTYPE_BF16, 1, DL_SHAPE(3), b16) == DL_OK, "add bf16");
    CHECK(dl_st_writer_add_raw(&w, "dbl", DL_DTYPE_F64, 1, DL_SHAPE(2), f64) == DL_OK, "add f64");
    CHECK(dl_st_writer_add_raw(&w, "timesteps", DL_DTYPE_I64, 1, DL_SHAPE(3), i64) == DL_OK, "add i64");
    CHECK(dl_st_writer_add_raw(&w, "ints", DL_DTYPE_I32, 2, DL_SHAPE(1, 2), i32) == DL_OK, "add i32");
    CHECK(dl_st_writer_add_raw(&w, "bytes", DL_DTYPE_U8, 1, DL_SHAPE(5), u8) == DL_OK, "add u8");
    CHECK(dl_st_writer_add_raw(&w, "scalar", DL_DTYPE_F64, 0, NULL, &scalar) == DL_OK, "add scalar");
    CHECK(dl_st_writer_add_raw(&w, "empty", DL_DTYPE_F32, 2, DL_SHAPE(0, 3), NULL) == DL_OK, "add empty");
    CHECK(dl_st_writer_add_raw(&w, "five_d", DL_DTYPE_U8, 5, DL_SHAPE(1, 1, 1, 1, 2), u8) == DL_OK, "add 5-d");
    CHECK(dl_st_writer_add(&w, "x", &x) == DL_ERR_ARG, "duplicate name accepted");
    CHECK(strstr(dl_error_message(), "'x'") != NULL, "duplicate message names the tensor: %s", dl_error_message());
    CHECK(dl_st_writer_set_metadata(&w, "format", "pt") == DL_OK, "metadata");
    CHECK(dl_st_writer_set_metadata(&w, "note", "quote \" and \\ and\nnewline") == DL_OK, "metadata 2");
    CHECK(dl_st_writer_set_metadata(&w, "format", "difflab") == DL_OK, "metadata replace");
    /* the writer keeps a copy: changing x now must not change the file */
    float keep = x.data[0];
    x.data[0] = 1234.0f;

    const char *path = out_path("round_trip.safetensors");
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", path);
    CHECK(dl_st_writer_save(&w, saved) == DL_OK, "save: %s", dl_error_message());
    CHECK(count_temp_files("round_trip.safetensors") == 0, "temporary file left behind");
    dl_st_writer_free(&w);

    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, saved) == DL_OK, "open: %s", dl_error_message())) { dl_tensor_free(&x); return; }
    CHECK(f.count == 10, "count %d", f.count);
    CHECK((f.data - (const unsigned char *)f.map) % 8 == 0, "data section is 8-byte aligned");
    CHECK(f.metadata && strstr(f.metadata, "\"format\":\"difflab\"") && !strstr(f.metadata, "\"pt\""),
          "metadata JSON: %s", f.metadata ? f.metadata : "(null)");
    char mv[64];
    CHECK(dl_st_metadata_get(&f, "note", mv, sizeof mv) && !strcmp(mv, "quote \" and \\ and\nnewline"),
          "escaped metadata survives: %s", mv);
    CHECK(dl_st_metadata_get(&f, "format", mv, sizeof mv) && !strcmp(mv, "difflab"), "metadata_get");
    CHECK(!dl_st_metadata_get(&f, "missing", mv, sizeof mv), "missing metadata key");

    dl_tensor y;
    CHECK(dl_st_load_tensor(&f, "x", &y) == DL_OK, "load x: %s", dl_error_message());
    CHECK(y.ndim == 3 && y.shape[0] == 2 && y.shape[1] == 3 && y.shape[2] == 5, "shape of x");
    x.data[0] = keep;
    CHECK(y.data && !memcmp(x.data, y.data, 30 * sizeof(float)), "f32 data round trip");
    dl_tensor_free(&y);

    float v[5];
    const dl_st_entry *e = dl_st_find(&f, "half");
    CHECK(e && e->dtype == DL_DTYPE_F16 && e->ndim == 2 && e->nbytes == 8, "half entry");
    if (e) {
        CHECK(!memcmp(f.data + e->offset, h16, 8), "f16 bytes round trip");
        dl_st_read_f32(&f, e, v);
        CHECK(v[0] == 1.0f && v[1] == 0x1p-24f && isinf(v[2]) && v[2] < 0 && v[3] == 65504.0f,
              "f16 -> f32: %g %g %g %g", v[0], v[1], v[2], v[3]);
    }
    e = dl_st_find(&f, "bf");
    if (CHECK(e && e->dtype == DL_DTYPE_BF16, "bf16 entry")) {
        dl_st_read_f32(&f, e, v);
        CHECK(v[0] == 1.0f && v[1] == -3.0f && v[2] == f32_from_bits(0x00010000u), "bf16 -> f32");
    }
    double d[3];
    e = dl_st_find(&f, "dbl");
    if (CHECK(e && e->dtype == DL_DTYPE_F64, "f64 entry")) {
        CHECK(dl_st_read_f64(&f, e, d) == DL_OK && d[0] == 0.1 && d[1] == -1e300, "f64 exact");
        dl_st_read_f32(&f, e, v);
        CHECK(v[0] == 0.1f && isinf(v[1]), "f64 -> f32 rounds (and overflows to -inf)");
    }
    int64_t iv[3];
    e = dl_st_find(&f, "timesteps");
    if (CHECK(e && e->dtype == DL_DTYPE_I64, "i64 entry")) {
        CHECK(dl_st_read_i64(&f, e, iv) == DL_OK && iv[0] == -5 && iv[1] == 999 && iv[2] == (int64_t)1 << 40, "i64");
        CHECK(dl_st_read_f64(&f, e, d) == DL_ERR_FORMAT, "read_f64 of an int tensor refused");
        dl_st_read_f32(&f, e, v);
        CHECK(v[0] == -5.0f && v[1] == 999.0f, "i64 -> f32");
    }
    e = dl_st_find(&f, "ints");
    if (CHECK(e && e->dtype == DL_DTYPE_I32, "i32 entry")) {
        CHECK(dl_st_read_i64(&f, e, iv) == DL_OK && iv[0] == -7 && iv[1] == 123456, "i32 -> i64");
        CHECK(dl_st_read_i64(&f, dl_st_find(&f, "dbl"), iv) == DL_ERR_FORMAT, "read_i64 of a float refused");
    }
    e = dl_st_find(&f, "bytes");
    if (CHECK(e && e->dtype == DL_DTYPE_U8, "u8 entry")) {
        dl_st_read_f32(&f, e, v);
        CHECK(v[0] == 0 && v[3] == 254 && v[4] == 255, "u8 -> f32");
    }
    CHECK(dl_st_load_tensor(&f, "scalar", &y) == DL_OK && y.ndim == 1 && y.shape[0] == 1 && y.data[0] == 2.5f,
          "0-d scalar loads as shape [1]");
    dl_tensor_free(&y);
    e = dl_st_find(&f, "empty");
    CHECK(e && e->nbytes == 0 && dl_st_numel(e) == 0, "zero-size tensor kept");
    CHECK(dl_st_load_tensor(&f, "five_d", &y) == DL_ERR_SHAPE && strstr(dl_error_message(), "five_d"),
          "5-d tensor refused by load_tensor: %s", dl_error_message());
    CHECK(dl_st_load_tensor(&f, "nope", &y) != DL_OK && strstr(dl_error_message(), "tensor 'nope' not found in") &&
          strstr(dl_error_message(), "round_trip.safetensors"), "missing tensor message: %s", dl_error_message());
    CHECK(dl_st_find(&f, "x") && dl_st_find(&f, "bytes") && !dl_st_find(&f, "__metadata__"), "find");
    dl_st_close(&f);
    dl_tensor_free(&x);
}

TEST(safetensors, writer_errors_and_atomic_save)
{
    dl_st_writer w;
    dl_st_writer_init(&w);
    float one = 1.0f;
    CHECK(dl_st_writer_add_raw(&w, "__metadata__", DL_DTYPE_F32, 1, DL_SHAPE(1), &one) == DL_ERR_ARG, "reserved name");
    CHECK(dl_st_writer_add_raw(&w, "", DL_DTYPE_F32, 1, DL_SHAPE(1), &one) == DL_ERR_ARG, "empty name");
    CHECK(dl_st_writer_add_raw(&w, "neg", DL_DTYPE_F32, 1, DL_SHAPE(-1), &one) == DL_ERR_ARG, "negative dim");
    CHECK(dl_st_writer_add_raw(&w, "a", DL_DTYPE_F32, 1, DL_SHAPE(1), &one) == DL_OK, "add");
    /* saving into a directory that does not exist fails cleanly */
    CHECK(dl_st_writer_save(&w, "build/test_out/no/such/dir/x.safetensors") == DL_ERR_IO, "bad dir");
    /* an existing file is replaced in one step */
    const char *path = out_path("atomic.safetensors");
    char saved[1024];
    snprintf(saved, sizeof saved, "%s", path);
    FILE *fp = fopen(saved, "wb");
    if (fp) { fputs("old contents", fp); fclose(fp); }
    CHECK(dl_st_writer_save(&w, saved) == DL_OK, "save: %s", dl_error_message());
    CHECK(count_temp_files("atomic.safetensors") == 0, "temporary file left behind");
    dl_safetensors f;
    CHECK(dl_st_open(&f, saved) == DL_OK && f.count == 1 && f.metadata == NULL, "replaced file reads back");
    dl_st_close(&f);
    dl_st_writer_free(&w);
}

TEST(safetensors, reads_torch_made_file)
{
    /* Written by torch-side Python; values are known torch facts. */
    dl_safetensors f;
    const char *path = "tests/fixtures/torch_rng/torch_rng.safetensors";
    if (!CHECK(dl_st_open(&f, path) == DL_OK, "%s", dl_error_message())) return;
    CHECK(f.count == 52, "count %d", f.count);
    const dl_st_entry *e = dl_st_find(&f, "randn_seed42_1x4x64x64");
    CHECK(e && e->dtype == DL_DTYPE_F32 && e->ndim == 4 && e->shape[1] == 4 && e->shape[3] == 64, "4-d entry");
    dl_tensor t;
    CHECK(dl_st_load_tensor(&f, "rand_seed0_4", &t) == DL_OK, "load: %s", dl_error_message());
    /* torch.manual_seed(0); torch.rand(4)[0] == 0.4962566 (a widely quoted value) */
    CHECK(t.numel == 4 && fabsf(t.data[0] - 0.4962566f) < 1e-6f, "rand seed 0 first value %.7f", t.data[0]);
    dl_tensor_free(&t);
    e = dl_st_find(&f, "rand_f64_seed0_4");
    double d[4];
    CHECK(e && e->dtype == DL_DTYPE_F64 && dl_st_read_f64(&f, e, d) == DL_OK && d[0] >= 0 && d[0] < 1, "f64 entry");
    dl_st_close(&f);

    /* the extra fixture carries __metadata__ */
    CHECK(dl_st_open(&f, "tests/fixtures/torch_rng/torch_rng_extra.safetensors") == DL_OK, "%s", dl_error_message());
    CHECK(f.metadata && strstr(f.metadata, "gen_rng_refs.py"), "metadata: %s", f.metadata ? f.metadata : "(null)");
    dl_st_close(&f);
    CHECK(dl_st_open(&f, "tests/fixtures/no_such_file.safetensors") == DL_ERR_IO &&
          strstr(dl_error_message(), "no_such_file"), "missing file: %s", dl_error_message());
}

/* Write a file with the given header text (length field = hlen_override
 * unless 0) followed by data_bytes zero bytes. */
static void write_raw(const char *path, const char *header, uint64_t hlen_override, size_t data_bytes)
{
    FILE *fp = fopen(path, "wb");
    if (!fp) return;
    uint64_t n = hlen_override ? hlen_override : strlen(header);
    fwrite(&n, 8, 1, fp);
    fwrite(header, 1, strlen(header), fp);
    for (size_t i = 0; i < data_bytes; i++) fputc(0, fp);
    fclose(fp);
}

TEST(safetensors, corrupt_files_are_format_errors)
{
    static const struct { const char *file, *header; uint64_t hlen; size_t data; const char *tensor; } cases[] = {
        {"bad_json.st", "{\"a\": {\"dtype\": \"F32\", ", 0, 0, NULL},
        {"not_object.st", "[1, 2, 3]", 0, 0, NULL},
        {"huge_hlen.st", "{}", (uint64_t)1 << 40, 0, NULL},
        {"hlen_past_end.st", "{}", 1000, 16, NULL},
        {"no_offsets.st", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 0, 8, "a"},
        {"unknown_dtype.st", "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 0, 2, "w"},
        {"wrong_length.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 0, 24, "w"},
        {"outside.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 0, 12, "w"},
        {"begin_after_end.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 0, 12, "w"},
        {"overlap.st", "{\"p\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                       "\"q\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 0, 16, "q"},
        {"shape_2p62.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,16],\"data_offsets\":[0,0]}}", 0, 0, "w"},
        {"shape_overflow.st", "{\"w\":{\"dtype\":\"F64\",\"shape\":[1099511627776,1099511627776,1024],"
                              "\"data_offsets\":[0,0]}}", 0, 0, "w"},
        {"negative_dim.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, 0, "w"},
        {"fractional_dim.st", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 0, 4, "w"},
        {"duplicate.st", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                         "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 0, 2, "w"},
        {"bad_metadata.st", "{\"__metadata__\":[1]}", 0, 0, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = out_path(cases[i].file);
        char p[1024];
        snprintf(p, sizeof p, "%s", path);
        write_raw(p, cases[i].header, cases[i].hlen, cases[i].data);
        dl_safetensors f;
        dl_status st = dl_st_open(&f, p);
        const char *msg = dl_error_message();
        CHECK(st == DL_ERR_FORMAT, "%s: expected a format error, got '%s' (%s)", cases[i].file, dl_status_name(st), msg);
        CHECK(strstr(msg, cases[i].file) != NULL, "%s: message does not name the file: %s", cases[i].file, msg);
        if (cases[i].tensor) {
            char quoted[64];
            snprintf(quoted, sizeof quoted, "'%s'", cases[i].tensor);
            CHECK(strstr(msg, quoted) != NULL, "%s: message does not name tensor %s: %s", cases[i].file, quoted, msg);
        }
        CHECK(f.map == NULL && f.entries == NULL, "%s: failed open leaves the struct closed", cases[i].file);
        dl_st_close(&f);   /* harmless after failure */
    }

    /* A valid file cut short: the offsets now point past the end. */
    dl_st_writer w;
    dl_st_writer_init(&w);
    float data[64] = {0};
    dl_st_writer_add_raw(&w, "big", DL_DTYPE_F32, 2, DL_SHAPE(8, 8), data);
    char p[1024];
    snprintf(p, sizeof p, "%s", out_path("truncated.safetensors"));
    CHECK(dl_st_writer_save(&w, p) == DL_OK, "save");
    dl_st_writer_free(&w);
    FILE *fp = fopen(p, "r+b");
    long size = 0;
    if (fp) { fseek(fp, 0, SEEK_END); size = ftell(fp); fclose(fp); }
    CHECK(size > 100 && truncate(p, size - 10) == 0, "truncate");
    dl_safetensors f;
    CHECK(dl_st_open(&f, p) == DL_ERR_FORMAT && strstr(dl_error_message(), "truncated.safetensors") &&
          strstr(dl_error_message(), "'big'"), "truncated file: %s", dl_error_message());
    CHECK(truncate(p, 5) == 0, "truncate to 5 bytes");
    CHECK(dl_st_open(&f, p) == DL_ERR_FORMAT && strstr(dl_error_message(), "truncated.safetensors"),
          "5-byte file: %s", dl_error_message());
}

TEST(safetensors, half_precision_conversions)
{
    /* every half value survives f16 -> f32 -> f16 (nan stays nan) */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = dl_f16_to_f32((uint16_t)h);
        uint16_t back = dl_f32_to_f16(f);
        int is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (is_nan ? !isnan(f) || !isnan(dl_f16_to_f32(back)) : back != h) bad++;
    }
    CHECK(bad == 0, "%d half values do not round-trip", bad);
    CHECK(dl_f16_to_f32(0x3555) == 0.333251953125f && dl_f16_to_f32(0x8000) == 0 && signbit(dl_f16_to_f32(0x8000)),
          "0x3555 and -0");
    CHECK(dl_f16_to_f32(0x03ff) == 1023 * 0x1p-24f, "largest subnormal");
    /* rounding: nearest, ties to even; overflow to inf; underflow to 0 */
    CHECK(dl_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "tie rounds down to even");
    CHECK(dl_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "tie rounds up to even");
    CHECK(dl_f32_to_f16(65519.0f) == 0x7bff && dl_f32_to_f16(65520.0f) == 0x7c00, "overflow threshold");
    CHECK(dl_f32_to_f16(-1e10f) == 0xfc00, "-inf");
    CHECK(dl_f32_to_f16(0x1p-25f) == 0x0000 && dl_f32_to_f16(0x1.000002p-25f) == 0x0001, "smallest subnormal");
    CHECK(dl_f32_to_f16(3 * 0x1p-25f) == 0x0002, "subnormal tie to even");
    CHECK(dl_f32_to_f16(0x1.ffcp-15f) == 0x0400, "rounds up into the normal range");
    /* nearest for random floats: no neighbour of the result is closer */
    dl_test_rng r = {12345};
    bad = 0;
    for (int i = 0; i < 200000; i++) {
        float x = ldexpf(dl_test_uniform(&r, -1.0f, 1.0f), dl_test_int(&r, -26, 16));
        uint16_t h = dl_f32_to_f16(x);
        if ((h & 0x7fff) == 0x7c00) {          /* inf exactly when |x| >= 65520 */
            if (fabsf(x) < 65520.0f) bad++;
            continue;
        }
        double err = fabs((double)dl_f16_to_f32(h) - x);
        for (int k = -1; k <= 1; k += 2) {
            uint16_t nb = (uint16_t)(h + k);
            if ((nb & 0x7fff) >= 0x7c00 || ((nb ^ h) & 0x8000)) continue;
            if (fabs((double)dl_f16_to_f32(nb) - x) < err) bad++;
        }
    }
    CHECK(bad == 0, "%d floats not rounded to the nearest half", bad);
    /* bfloat16 */
    CHECK(dl_bf16_to_f32(0x3f80) == 1.0f && dl_f32_to_bf16(1.0f) == 0x3f80, "bf16 one");
    CHECK(dl_f32_to_bf16(f32_from_bits(0x3f808000u)) == 0x3f80 && dl_f32_to_bf16(f32_from_bits(0x3f818000u)) == 0x3f82,
          "bf16 ties to even");
    CHECK(isnan(dl_bf16_to_f32(dl_f32_to_bf16(NAN))), "bf16 nan");
}
