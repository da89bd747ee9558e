/* safetensors.c - see safetensors.h
 *
 * The reader trusts nothing in the file: every number from the header is
 * checked before it is used to compute an address. The host is assumed to be
 * little-endian (x86-64, arm64), like the format.
 */
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#ifdef __F16C__
#include <immintrin.h>
#endif

const char *const dl_dtype_names[DL_DTYPE_COUNT] = {"F32", "F16", "BF16", "F64", "I64", "I32", "U8"};
const int dl_dtype_sizes[DL_DTYPE_COUNT] = {4, 2, 2, 8, 8, 4, 1};

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host (like the file format)"
#endif

#define MAX_HEADER_BYTES ((uint64_t)100 << 20)   /* 100 MB, as the reference reader */
#define MAX_EXACT_INT    9007199254740992.0      /* 2^53: JSON numbers arrive as double */

/* ------------------------------------------------------------------ */
/* Half precision                                                      */

static float bits_to_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f32_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

float dl_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (mant << 13));   /* inf / nan */
    if (exp == 0) {                                   /* zero or subnormal: mant * 2^-24 */
        float v = (float)mant * 0x1p-24f;             /* exact: mant < 2^10 */
        return sign ? -v : v;
    }
    return bits_to_f32(sign | ((exp + 112) << 23) | (mant << 13));   /* rebias 15 -> 127 */
}

uint16_t dl_f32_to_f16(float f)
{
    uint32_t x = f32_to_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00 | (uint16_t)((a >> 13) & 0x3ff);   /* nan stays nan */
    if (a >= 0x477ff000u) return sign | 0x7c00;       /* >= 65520 rounds to inf (and inf) */
    if (a < 0x38800000u) {                            /* below 2^-14: half subnormal */
        uint32_t e = a >> 23;
        if (e < 102) return sign;                     /* < 2^-25: rounds to zero */
        uint32_t mant = (a & 0x7fffff) | 0x800000, shift = 126 - e;
        uint32_t r = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;   /* nearest, ties to even */
        return sign | (uint16_t)r;
    }
    uint32_t h = (a - 0x38000000u) >> 13, rem = a & 0x1fff;   /* rebias 127 -> 15 */
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;       /* a carry may reach inf: fine */
    return sign | (uint16_t)h;
}

float dl_bf16_to_f32(uint16_t h) { return bits_to_f32((uint32_t)h << 16); }

uint16_t dl_f32_to_bf16(float f)
{
    uint32_t x = f32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);   /* quiet nan */
    x += 0x7fff + ((x >> 16) & 1);                                             /* ties to even */
    return (uint16_t)(x >> 16);
}

/* ------------------------------------------------------------------ */
/* Whole arrays of halves (the fp16 checkpoint -> float32 weights path)  */

/* Widening is pure memory traffic (2 bytes in, 4 out), so below this many
 * values the threads cost more than they bring. */
#define WIDEN_PARALLEL_MIN ((int64_t)1 << 16)

void dl_f16_to_f32_array_ref(float *dst, const void *src, int64_t n)
{
    const unsigned char *p = src;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = dl_f16_to_f32(h);
    }
}

void dl_bf16_to_f32_array_ref(float *dst, const void *src, int64_t n)
{
    const unsigned char *p = src;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = dl_bf16_to_f32(h);
    }
}

/* One thread's share [i0, i1) of the array. With F16C, vcvtph2ps widens 8
 * halves at once (exactly, subnormals included); the tail and builds for
 * CPUs without F16C take the reference conversion. */
static void f16_span(float *dst, const unsigned char *src, int64_t i0, int64_t i1)
{
    int64_t i = i0;
#ifdef __F16C__
    for (; i + 8 <= i1; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i))));
#endif
    if (i < i1) dl_f16_to_f32_array_ref(dst + i, src + 2 * i, i1 - i);
}

/* bfloat16 is the top half of a float32: a shift, which the compiler
 * vectorises by itself. */
static void bf16_span(float *dst, const unsigned char *src, int64_t i0, int64_t i1)
{
    for (int64_t i = i0; i < i1; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, 2);
        uint32_t u = (uint32_t)h << 16;
        memcpy(dst + i, &u, 4);
    }
}

static void widen(void (*span)(float *, const unsigned char *, int64_t, int64_t),
                  float *dst, const void *src, int64_t n)
{
    if (n < WIDEN_PARALLEL_MIN || !dl_parallel_ok()) {
        span(dst, src, 0, n);
        return;
    }
    /* a few blocks per thread, each a multiple of 64 values (cache lines) */
    const int64_t blocks = 4 * (int64_t)dl_get_threads();
    const int64_t per = ((n + blocks - 1) / blocks + 63) & ~(int64_t)63;
    #pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t i0 = b * per, i1 = i0 + per < n ? i0 + per : n;
        if (i0 < i1) span(dst, src, i0, i1);
    }
}

void dl_f16_to_f32_array(float *dst, const void *src, int64_t n)  { widen(f16_span, dst, src, n); }
void dl_bf16_to_f32_array(float *dst, const void *src, int64_t n) { widen(bf16_span, dst, src, n); }

/* ------------------------------------------------------------------ */
/* Reader                                                              */

static int parse_dtype(const char *s, dl_dtype *out)
{
    for (int i = 0; i < DL_DTYPE_COUNT; i++)
        if (!strcmp(s, dl_dtype_names[i])) { *out = (dl_dtype)i; return 1; }
    return 0;
}

/* A JSON number that is a non-negative integer below 2^53 (exact in double). */
static int json_uint(const cJSON *n, uint64_t *out)
{
    if (!cJSON_IsNumber(n)) return 0;
    double d = n->valuedouble;
    if (!(d >= 0 && d <= MAX_EXACT_INT) || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

static int cmp_offset(const void *a, const void *b)
{
    const dl_st_entry *x = a, *y = b;
    return (x->offset > y->offset) - (x->offset < y->offset);
}

static int cmp_name_index(const void *a, const void *b, void *ctx)   /* for qsort_r */
{
    const dl_st_entry *e = ctx;
    return strcmp(e[*(const int *)a].name, e[*(const int *)b].name);
}

int64_t dl_st_numel(const dl_st_entry *e)
{
    int64_t n = 1;
    for (int i = 0; i < e->ndim; i++) n *= e->shape[i];   /* validated at open: no overflow */
    return n;
}

/* Parse one "name": {...} header entry into e (name already set). */
static dl_status parse_entry(const char *path, const cJSON *item, dl_st_entry *e, size_t data_size)
{
    const char *name = e->name;
    if (!cJSON_IsObject(item))
        return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s': header entry is not a JSON object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(item, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(item, "shape");
    const cJSON *of = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
    if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of))
        return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s': needs \"dtype\" (string), \"shape\" and \"data_offsets\" (arrays)",
                       path, name);
    if (!parse_dtype(dt->valuestring, &e->dtype))
        return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s': unknown dtype \"%s\" (known: F32 F16 BF16 F64 I64 I32 U8)",
                       path, name, dt->valuestring);
    int nd = cJSON_GetArraySize(sh);
    if (nd > DL_ST_MAX_DIMS)
        return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s': %d dimensions, at most %d supported", path, name, nd, DL_ST_MAX_DIMS);
    e->ndim = nd;
    /* bytes = dtype size * product(shape), refusing anything that overflows;
     * the element count too, product by product as dl_st_numel forms it in
     * int64 (U8 [2^53, 1536, 0] has 0 bytes, yet its first two dims overflow) */
    uint64_t bytes = (uint64_t)dl_dtype_sizes[e->dtype], elems = 1;
    for (int i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_uint(cJSON_GetArrayItem(sh, i), &d))
            return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s': shape[%d] is not an integer in [0, 2^53] (negative or absurd)", path, name, i);
        e->shape[i] = (int64_t)d;
        if (__builtin_mul_overflow(bytes, d, &bytes) || __builtin_mul_overflow(elems, d, &elems) ||
            elems > (uint64_t)INT64_MAX)
            return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s': shape too large (byte size overflows)", path, name);
    }
    uint64_t begin, end;
    if (cJSON_GetArraySize(of) != 2 || !json_uint(cJSON_GetArrayItem(of, 0), &begin) ||
        !json_uint(cJSON_GetArrayItem(of, 1), &end))
        return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s': data_offsets must be two non-negative integers", path, name);
    if (begin > end)
        return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin",
                       path, name, (unsigned long long)begin, (unsigned long long)end);
    if (end > data_size)
        return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] outside the data section "
                       "(%zu bytes) - file truncated?",
                       path, name, (unsigned long long)begin, (unsigned long long)end, data_size);
    if (end - begin != bytes)
        return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s': %llu data bytes but dtype %s x shape needs %llu",
                       path, name, (unsigned long long)(end - begin), dl_dtype_names[e->dtype], (unsigned long long)bytes);
    e->offset = (size_t)begin;
    e->nbytes = (size_t)bytes;
    return DL_OK;
}

/* Parse and validate the JSON header; fills f->entries / count / metadata. */
static dl_status parse_header(dl_safetensors *f, const char *json, size_t data_size)
{
    const char *path = f->path;
    cJSON *root = cJSON_Parse(json);
    if (!root) return dl_fail(DL_ERR_FORMAT, "%s: header is not valid JSON", path);
    dl_status st = DL_OK;
    if (!cJSON_IsObject(root)) { st = dl_fail(DL_ERR_FORMAT, "%s: header is not a JSON object", path); goto done; }

    int n = 0;
    for (const cJSON *it = root->child; it; it = it->next) n++;
    f->entries = calloc((size_t)n + 1, sizeof *f->entries);
    if (!f->entries) { st = dl_fail(DL_ERR_MEMORY, "%s: out of memory reading the header", path); goto done; }

    for (const cJSON *it = root->child; it; it = it->next) {
        if (!strcmp(it->string, "__metadata__")) {
            if (f->metadata || !cJSON_IsObject(it)) {
                st = dl_fail(DL_ERR_FORMAT, "%s: \"__metadata__\" must be a single JSON object", path);
                goto done;
            }
            f->metadata = cJSON_PrintUnformatted(it);
            if (!f->metadata) { st = dl_fail(DL_ERR_MEMORY, "%s: out of memory", path); goto done; }
            continue;
        }
        dl_st_entry *e = &f->entries[f->count];
        e->name = strdup(it->string);
        if (!e->name) { st = dl_fail(DL_ERR_MEMORY, "%s: out of memory", path); goto done; }
        f->count++;
        if ((st = parse_entry(path, it, e, data_size)) != DL_OK) goto done;
    }

    /* Tensors must not share bytes: sort by offset, compare neighbours. */
    qsort(f->entries, (size_t)f->count, sizeof *f->entries, cmp_offset);
    for (int i = 0; i + 1 < f->count; i++) {
        const dl_st_entry *a = &f->entries[i], *b = &f->entries[i + 1];
        if (a->offset + a->nbytes > b->offset) {
            st = dl_fail(DL_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap in the data section", path, a->name, b->name);
            goto done;
        }
    }
    /* Name index for dl_st_find (binary search); also catches duplicates. */
    f->by_name = malloc(((size_t)f->count + 1) * sizeof *f->by_name);
    if (!f->by_name) { st = dl_fail(DL_ERR_MEMORY, "%s: out of memory", path); goto done; }
    for (int i = 0; i < f->count; i++) f->by_name[i] = i;
    qsort_r(f->by_name, (size_t)f->count, sizeof *f->by_name, cmp_name_index, f->entries);
    for (int i = 0; i + 1 < f->count; i++)
        if (!strcmp(f->entries[f->by_name[i]].name, f->entries[f->by_name[i + 1]].name)) {
            st = dl_fail(DL_ERR_FORMAT, "%s: tensor '%s' appears twice in the header", path, f->entries[f->by_name[i]].name);
            goto done;
        }
done:
    cJSON_Delete(root);
    return st;
}

/* Check the header length, then parse the header of the f->size bytes at
 * `bytes` (a mapped file or a caller's buffer). Closes f on failure. */
static dl_status parse_bytes(dl_safetensors *f, const unsigned char *bytes)
{
    const char *path = f->path;
    uint64_t hlen;
    memcpy(&hlen, bytes, 8);   /* little-endian host */
    dl_status st;
    if (hlen > MAX_HEADER_BYTES || hlen > f->size - 8) {
        st = dl_fail(DL_ERR_FORMAT, "%s: header length %llu is impossible (file is %zu bytes, limit 100 MB)%s",
                     path, (unsigned long long)hlen, f->size, hlen > f->size - 8 ? " - truncated or not safetensors" : "");
        goto fail;
    }
    if (hlen < 2) { st = dl_fail(DL_ERR_FORMAT, "%s: empty header", path); goto fail; }
    char *json = malloc((size_t)hlen + 1);   /* NUL-terminated copy for the parser */
    if (!json) { st = dl_fail(DL_ERR_MEMORY, "%s: cannot allocate the header", path); goto fail; }
    memcpy(json, bytes + 8, (size_t)hlen);
    json[hlen] = 0;
    if (strlen(json) != hlen) {
        free(json);
        st = dl_fail(DL_ERR_FORMAT, "%s: header contains a NUL byte", path);
        goto fail;
    }
    f->data = bytes + 8 + hlen;
    st = parse_header(f, json, f->size - 8 - (size_t)hlen);
    free(json);
    if (st == DL_OK) return DL_OK;
fail:
    dl_st_close(f);
    return st;
}

dl_status dl_st_open(dl_safetensors *f, const char *path)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path ? path : "(null)");
    if (!path) return dl_fail(DL_ERR_ARG, "safetensors: NULL path");

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return dl_fail(DL_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int err = errno;
        close(fd);
        return dl_fail(DL_ERR_IO, "%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(sb.st_mode)) { close(fd); return dl_fail(DL_ERR_IO, "%s: not a regular file", path); }
    if (sb.st_size < 8) {
        close(fd);
        return dl_fail(DL_ERR_FORMAT, "%s: only %lld bytes, a safetensors file starts with an 8-byte header length",
                       path, (long long)sb.st_size);
    }
    f->size = (size_t)sb.st_size;
    void *map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return dl_fail(DL_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
    f->map = map;
    return parse_bytes(f, map);
}

dl_status dl_st_open_memory(dl_safetensors *f, const void *bytes, size_t size, const char *name)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", name ? name : "(memory)");
    if (!bytes && size) return dl_fail(DL_ERR_ARG, "%s: NULL buffer", f->path);
    if (size < 8)
        return dl_fail(DL_ERR_FORMAT, "%s: only %zu bytes, a safetensors file starts with an 8-byte header length",
                       f->path, size);
    f->size = size;   /* f->map stays NULL: the caller owns the bytes */
    return parse_bytes(f, bytes);
}

void dl_st_close(dl_safetensors *f)
{
    if (f->map) munmap(f->map, f->size);
    if (f->entries)
        for (int i = 0; i < f->count; i++) free(f->entries[i].name);
    free(f->entries);
    free(f->by_name);
    free(f->metadata);   /* cJSON_PrintUnformatted uses malloc by default */
    char path[sizeof f->path];
    memcpy(path, f->path, sizeof path);
    memset(f, 0, sizeof *f);
    memcpy(f->path, path, sizeof path);   /* keep the name for late error messages */
}

const dl_st_entry *dl_st_find(const dl_safetensors *f, const char *name)
{
    if (!f->by_name || !name) return NULL;
    int lo = 0, hi = f->count - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const dl_st_entry *e = &f->entries[f->by_name[mid]];
        int c = strcmp(name, e->name);
        if (c == 0) return e;
        if (c < 0) hi = mid - 1; else lo = mid + 1;
    }
    return NULL;
}

int dl_st_metadata_get(const dl_safetensors *f, const char *key, char *out, size_t size)
{
    if (!f->metadata || !key) return 0;
    cJSON *m = cJSON_Parse(f->metadata);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m, key);
    int found = cJSON_IsString(v);
    if (found && out && size) snprintf(out, size, "%s", v->valuestring);
    cJSON_Delete(m);
    return found;
}

/* Element i of a tensor's bytes (memcpy: the data need not be aligned). */
static uint16_t load_u16(const unsigned char *p, int64_t i) { uint16_t v; memcpy(&v, p + 2 * i, 2); return v; }
static int32_t  load_i32(const unsigned char *p, int64_t i) { int32_t v;  memcpy(&v, p + 4 * i, 4); return v; }
static float    load_f32(const unsigned char *p, int64_t i) { float v;    memcpy(&v, p + 4 * i, 4); return v; }
static int64_t  load_i64(const unsigned char *p, int64_t i) { int64_t v;  memcpy(&v, p + 8 * i, 8); return v; }
static double   load_f64(const unsigned char *p, int64_t i) { double v;   memcpy(&v, p + 8 * i, 8); return v; }

dl_status dl_st_read_f32(const dl_safetensors *f, const dl_st_entry *e, float *dst)
{
    const unsigned char *p = f->data + e->offset;
    int64_t n = dl_st_numel(e);
    switch (e->dtype) {
    case DL_DTYPE_F32:  memcpy(dst, p, e->nbytes); break;
    case DL_DTYPE_F16:  dl_f16_to_f32_array(dst, p, n); break;
    case DL_DTYPE_BF16: dl_bf16_to_f32_array(dst, p, n); break;
    case DL_DTYPE_F64:  for (int64_t i = 0; i < n; i++) dst[i] = (float)load_f64(p, i); break;
    case DL_DTYPE_I64:  for (int64_t i = 0; i < n; i++) dst[i] = (float)load_i64(p, i); break;
    case DL_DTYPE_I32:  for (int64_t i = 0; i < n; i++) dst[i] = (float)load_i32(p, i); break;
    case DL_DTYPE_U8:   for (int64_t i = 0; i < n; i++) dst[i] = (float)p[i]; break;
    default: return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s': bad dtype", f->path, e->name);
    }
    return DL_OK;
}

dl_status dl_st_read_f64(const dl_safetensors *f, const dl_st_entry *e, double *dst)
{
    const unsigned char *p = f->data + e->offset;
    int64_t n = dl_st_numel(e);
    switch (e->dtype) {
    case DL_DTYPE_F64:  memcpy(dst, p, e->nbytes); break;
    case DL_DTYPE_F32:  for (int64_t i = 0; i < n; i++) dst[i] = load_f32(p, i); break;
    case DL_DTYPE_F16:  for (int64_t i = 0; i < n; i++) dst[i] = dl_f16_to_f32(load_u16(p, i)); break;
    case DL_DTYPE_BF16: for (int64_t i = 0; i < n; i++) dst[i] = dl_bf16_to_f32(load_u16(p, i)); break;
    default:
        return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected a float type",
                       f->path, e->name, dl_dtype_names[e->dtype]);
    }
    return DL_OK;
}

dl_status dl_st_read_i64(const dl_safetensors *f, const dl_st_entry *e, int64_t *dst)
{
    const unsigned char *p = f->data + e->offset;
    int64_t n = dl_st_numel(e);
    switch (e->dtype) {
    case DL_DTYPE_I64: memcpy(dst, p, e->nbytes); break;
    case DL_DTYPE_I32: for (int64_t i = 0; i < n; i++) dst[i] = load_i32(p, i); break;
    case DL_DTYPE_U8:  for (int64_t i = 0; i < n; i++) dst[i] = p[i]; break;
    default:
        return dl_fail(DL_ERR_FORMAT, "%s: tensor '%s' has dtype %s, expected an integer type",
                       f->path, e->name, dl_dtype_names[e->dtype]);
    }
    return DL_OK;
}

/* Like dl_tensor_alloc (owned, 64-byte aligned) but without the zero fill:
 * the caller overwrites every value at once. */
static dl_status alloc_unfilled(dl_tensor *t, int ndim, const int64_t shape[])
{
    int64_t n = dl_shape_numel(ndim, shape);
    if (n < 0) return DL_ERR_SHAPE;
    size_t bytes = ((size_t)n * sizeof(float) + 63) & ~(size_t)63;
    float *p = aligned_alloc(64, bytes);
    if (!p) return dl_fail(DL_ERR_MEMORY, "tensor: cannot allocate %zu MiB", bytes >> 20);
    dl_status st = dl_tensor_view(t, p, ndim, shape);
    if (st != DL_OK) { free(p); return st; }
    t->owns_data = 1;
    return DL_OK;
}

dl_status dl_st_load_tensor(const dl_safetensors *f, const char *name, dl_tensor *out)
{
    memset(out, 0, sizeof *out);
    const dl_st_entry *e = dl_st_find(f, name);
    if (!e) return dl_fail(DL_ERR_FORMAT, "tensor '%s' not found in %s", name ? name : "(null)", f->path);
    if (e->ndim > DL_MAX_DIMS)
        return dl_fail(DL_ERR_SHAPE, "%s: tensor '%s' has %d dimensions, difflab tensors have at most %d",
                       f->path, name, e->ndim, DL_MAX_DIMS);
    if (dl_st_numel(e) == 0)
        return dl_fail(DL_ERR_SHAPE, "%s: tensor '%s' is empty (a zero dimension)", f->path, name);
    int64_t one = 1;
    dl_status st = alloc_unfilled(out, e->ndim ? e->ndim : 1, e->ndim ? e->shape : &one);
    if (st != DL_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", dl_error_message());
        return dl_fail(st, "%s: tensor '%s': %s", f->path, name, msg);
    }
    st = dl_st_read_f32(f, e, out->data);
    if (st != DL_OK) dl_tensor_free(out);
    return st;
}

/* ------------------------------------------------------------------ */
/* Writer                                                              */

dl_status dl_st_writer_init(dl_st_writer *w)
{
    memset(w, 0, sizeof *w);
    return DL_OK;
}

static int writer_has(const dl_st_writer *w, const char *name)
{
    for (int i = 0; i < w->count; i++)
        if (!strcmp(w->items[i].name, name)) return 1;
    return 0;
}

dl_status dl_st_writer_add_raw(dl_st_writer *w, const char *name, dl_dtype dtype,
                               int ndim, const int64_t *shape, const void *data)
{
    if (!name || !name[0]) return dl_fail(DL_ERR_ARG, "safetensors writer: empty tensor name");
    if (!strcmp(name, "__metadata__")) return dl_fail(DL_ERR_ARG, "safetensors writer: '__metadata__' is reserved");
    if ((unsigned)dtype >= DL_DTYPE_COUNT) return dl_fail(DL_ERR_ARG, "safetensors writer: tensor '%s': bad dtype", name);
    if (ndim < 0 || ndim > DL_ST_MAX_DIMS)
        return dl_fail(DL_ERR_ARG, "safetensors writer: tensor '%s': %d dimensions (0..%d allowed)", name, ndim, DL_ST_MAX_DIMS);
    if (writer_has(w, name)) return dl_fail(DL_ERR_ARG, "safetensors writer: tensor '%s' added twice", name);
    size_t bytes = (size_t)dl_dtype_sizes[dtype];
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(bytes, (size_t)shape[i], &bytes))
            return dl_fail(DL_ERR_ARG, "safetensors writer: tensor '%s': bad shape", name);
    if (bytes && !data) return dl_fail(DL_ERR_ARG, "safetensors writer: tensor '%s': NULL data", name);
    if (w->count == w->cap) {
        int cap = w->cap ? 2 * w->cap : 16;
        dl_st_writer_item *p = realloc(w->items, (size_t)cap * sizeof *p);
        if (!p) return dl_fail(DL_ERR_MEMORY, "safetensors writer: out of memory");
        w->items = p;
        w->cap = cap;
    }
    dl_st_writer_item *it = &w->items[w->count];
    memset(it, 0, sizeof *it);
    it->name = strdup(name);
    it->data = malloc(bytes ? bytes : 1);
    if (!it->name || !it->data) {
        free(it->name);
        free(it->data);
        return dl_fail(DL_ERR_MEMORY, "safetensors writer: tensor '%s': out of memory (%zu bytes)", name, bytes);
    }
    if (bytes) memcpy(it->data, data, bytes);
    it->dtype = dtype;
    it->ndim = ndim;
    for (int i = 0; i < ndim; i++) it->shape[i] = shape[i];
    it->nbytes = bytes;
    w->count++;
    return DL_OK;
}

dl_status dl_st_writer_add(dl_st_writer *w, const char *name, const dl_tensor *t)
{
    if (!t || !t->data) return dl_fail(DL_ERR_ARG, "safetensors writer: tensor '%s' is NULL", name ? name : "(null)");
    return dl_st_writer_add_raw(w, name, DL_DTYPE_F32, t->ndim, t->shape, t->data);
}

dl_status dl_st_writer_set_metadata(dl_st_writer *w, const char *key, const char *value)
{
    if (!key || !value) return dl_fail(DL_ERR_ARG, "safetensors writer: NULL metadata key or value");
    for (int i = 0; i < w->meta_count; i++)
        if (!strcmp(w->meta_keys[i], key)) {
            char *v = strdup(value);
            if (!v) return dl_fail(DL_ERR_MEMORY, "safetensors writer: out of memory");
            free(w->meta_values[i]);
            w->meta_values[i] = v;
            return DL_OK;
        }
    if (w->meta_count == w->meta_cap) {
        int cap = w->meta_cap ? 2 * w->meta_cap : 8;
        char **k = realloc(w->meta_keys, (size_t)cap * sizeof *k);
        if (!k) return dl_fail(DL_ERR_MEMORY, "safetensors writer: out of memory");
        w->meta_keys = k;
        char **v = realloc(w->meta_values, (size_t)cap * sizeof *v);
        if (!v) return dl_fail(DL_ERR_MEMORY, "safetensors writer: out of memory");
        w->meta_values = v;
        w->meta_cap = cap;
    }
    char *k = strdup(key), *v = strdup(value);
    if (!k || !v) { free(k); free(v); return dl_fail(DL_ERR_MEMORY, "safetensors writer: out of memory"); }
    w->meta_keys[w->meta_count] = k;
    w->meta_values[w->meta_count] = v;
    w->meta_count++;
    return DL_OK;
}

/* A growing string for the JSON header. */
typedef struct { char *s; size_t len, cap; int oom; } strbuf;

static void sb_put(strbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) { b->oom = 1; return; }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
}
static void sb_str(strbuf *b, const char *s) { sb_put(b, s, strlen(s)); }
static void sb_fmt(strbuf *b, const char *fmt, unsigned long long v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, fmt, v);
    sb_put(b, tmp, (size_t)n);
}
/* A JSON string literal with the required escapes. */
static void sb_json_string(strbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { char e[2] = {'\\', (char)c}; sb_put(b, e, 2); }
        else if (c < 0x20) sb_fmt(b, "\\u%04llx", c);
        else sb_put(b, (const char *)&c, 1);
    }
    sb_put(b, "\"", 1);
}

/* {"__metadata__":{...},"name":{"dtype":"F32","shape":[..],"data_offsets":[b,e]},...}
 * padded with spaces so that the data section starts 8-byte aligned. */
static char *build_header(const dl_st_writer *w, size_t *len)
{
    strbuf b = {0};
    sb_str(&b, "{");
    if (w->meta_count) {
        sb_str(&b, "\"__metadata__\":{");
        for (int i = 0; i < w->meta_count; i++) {
            if (i) sb_str(&b, ",");
            sb_json_string(&b, w->meta_keys[i]);
            sb_str(&b, ":");
            sb_json_string(&b, w->meta_values[i]);
        }
        sb_str(&b, "}");
    }
    size_t offset = 0;
    for (int i = 0; i < w->count; i++) {
        const dl_st_writer_item *it = &w->items[i];
        if (i || w->meta_count) sb_str(&b, ",");
        sb_json_string(&b, it->name);
        sb_str(&b, ":{\"dtype\":\"");
        sb_str(&b, dl_dtype_names[it->dtype]);
        sb_str(&b, "\",\"shape\":[");
        for (int d = 0; d < it->ndim; d++) sb_fmt(&b, d ? ",%llu" : "%llu", (unsigned long long)it->shape[d]);
        sb_fmt(&b, "],\"data_offsets\":[%llu", offset);
        offset += it->nbytes;
        sb_fmt(&b, ",%llu]}", offset);
    }
    sb_str(&b, "}");
    while (!b.oom && (b.len % 8) != 0) sb_str(&b, " ");
    if (b.oom) { free(b.s); return NULL; }
    *len = b.len;
    return b.s;
}

dl_status dl_st_writer_save(dl_st_writer *w, const char *path)
{
    if (!path) return dl_fail(DL_ERR_ARG, "safetensors writer: NULL path");
    size_t hlen;
    char *header = build_header(w, &hlen);
    if (!header) return dl_fail(DL_ERR_MEMORY, "%s: out of memory building the header", path);

    char tmp[1024];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= sizeof tmp) {
        free(header);
        return dl_fail(DL_ERR_ARG, "%s: path too long", path);
    }
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        int err = errno;
        free(header);
        return dl_fail(DL_ERR_IO, "%s: cannot create %s: %s", path, tmp, strerror(err));
    }
    uint64_t n = hlen;   /* little-endian host */
    int ok = fwrite(&n, 8, 1, fp) == 1 && fwrite(header, 1, hlen, fp) == hlen;
    for (int i = 0; ok && i < w->count; i++)
        if (w->items[i].nbytes) ok = fwrite(w->items[i].data, 1, w->items[i].nbytes, fp) == w->items[i].nbytes;
    free(header);
    ok = ok && fflush(fp) == 0 && fsync(fileno(fp)) == 0;
    int err = errno;
    if (fclose(fp) != 0 && ok) { ok = 0; err = errno; }
    if (!ok) {
        unlink(tmp);
        return dl_fail(DL_ERR_IO, "%s: write failed: %s", path, strerror(err));
    }
    if (rename(tmp, path) != 0) {
        err = errno;
        unlink(tmp);
        return dl_fail(DL_ERR_IO, "%s: cannot rename %s into place: %s", path, tmp, strerror(err));
    }
    return DL_OK;
}

void dl_st_writer_free(dl_st_writer *w)
{
    for (int i = 0; i < w->count; i++) { free(w->items[i].name); free(w->items[i].data); }
    free(w->items);
    for (int i = 0; i < w->meta_count; i++) { free(w->meta_keys[i]); free(w->meta_values[i]); }
    free(w->meta_keys);
    free(w->meta_values);
    memset(w, 0, sizeof *w);
}
