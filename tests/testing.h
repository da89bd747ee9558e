/* testing.h - difflab's tiny test harness.
 *
 *     TEST(conv2d, fast_matches_reference) {
 *         ...
 *         CHECK(y.numel == 12, "numel is %lld", (long long)y.numel);
 *         CHECK_CLOSE("conv2d", got, want, n, 1e-4f);
 *     }
 *
 * Each TEST registers itself (a constructor), so a new test file only
 * needs to be added to tests/. `bin/run_tests K` runs the tests whose
 * "group/name" contains K; `make test K=conv2d` does the same.
 * Tests run from the repository root, so fixture paths are relative:
 * "tests/fixtures/...". Lesson binaries are found in dl_test_bin_dir().
 */
#ifndef DL_TESTING_H
#define DL_TESTING_H

#include <stddef.h>
#include <stdint.h>

typedef void (*dl_test_fn)(void);
void dl_test_register(const char *group, const char *name, dl_test_fn fn);

#define TEST(group, name)                                                     \
    static void test_##group##_##name(void);                                  \
    __attribute__((constructor)) static void register_##group##_##name(void)  \
    { dl_test_register(#group, #name, test_##group##_##name); }               \
    static void test_##group##_##name(void)

/* Record a failure (and keep going) unless cond holds. Returns 1 if it
 * holds. The message arguments are evaluated only after cond, and only if
 * it failed, so CHECK(p != NULL, "%d", p->x) is safe. */
#define CHECK(cond, ...) ((cond) ? 1 : dl_test_check(0, __FILE__, __LINE__, __VA_ARGS__))
int dl_test_check(int ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Compare two float arrays: passes if max |got - want| <= atol.
 * Prints the max abs diff and where it is on failure. Returns 1 on pass. */
#define CHECK_CLOSE(what, got, want, n, atol) \
    dl_test_close(__FILE__, __LINE__, (what), (got), (want), (n), (atol))
int dl_test_close(const char *file, int line, const char *what,
                  const float *got, const float *want, size_t n, double atol);

/* Tensors: got ~ want within rtol times the largest |want| (at least 1). */
#define CHECK_CLOSE_REL(what, got, want, rtol) \
    dl_test_close_rel(__FILE__, __LINE__, (what), (got), (want), (rtol))
int dl_test_close_rel(const char *file, int line, const char *what,
                      const void *got, const void *want, double rtol);

/* The call must fail with `code` and a message that names `op`. */
#define EXPECT_FAIL(call, code, op, what)                                                   \
    do {                                                                                    \
        dl_status s_ = (call);                                                              \
        CHECK(s_ == (code), "%s: got status %s, want %s", what, dl_status_name(s_),         \
              dl_status_name(code));                                                        \
        CHECK(strstr(dl_error_message(), op) != NULL, "%s: message '%s' does not name %s",  \
              what, dl_error_message(), op);                                                \
    } while (0)

/* Max |a - b| over n floats (handy for printing). */
double dl_max_abs_diff(const float *a, const float *b, size_t n);

/* A small deterministic generator for test inputs (NOT the torch RNG). */
typedef struct { uint64_t s; } dl_test_rng;
uint32_t dl_test_u32(dl_test_rng *r);
float    dl_test_uniform(dl_test_rng *r, float lo, float hi);
int      dl_test_int(dl_test_rng *r, int lo, int hi);          /* inclusive */
void     dl_test_fill(dl_test_rng *r, float *x, size_t n, float lo, float hi);
/* Allocate a dl_tensor (passed as void* to keep this header free of core/)
 * filled with uniform values in [-1, 1]; records a failure and returns 0
 * if the allocation fails. */
int      dl_test_rand_tensor(void *tensor, dl_test_rng *r, int ndim, const int64_t shape[]);

/* Where lesson binaries live: DL_BIN_DIR from the environment, else the
 * folder run_tests was started from ("bin" for bin/run_tests). */
const char *dl_test_bin_dir(void);
/* A scratch directory for outputs, created if missing: <out>/<sub>, where
 * <out> is build/test_out for bin/ and build/x/test_out for build/x/bin/.
 * The returned buffer is reused by the next call: copy it if you keep it. */
const char *dl_test_out_dir(const char *sub);
/* Run a shell command, return its exit status (or -1); output goes to
 * <out>/last_cmd.log and is shown on failure by the caller. */
int dl_test_run(const char *cmd);
/* The whole output of the last dl_test_run, NUL-terminated; free() it. NULL if none. */
char *dl_test_read_log(void);
/* Does the output of the last dl_test_run contain `needle`? */
int dl_test_log_contains(const char *needle);
/* Print the output of the last dl_test_run (the first 3000 characters). */
void dl_test_show_log(void);
/* Does this file exist and is it non-empty? */
int dl_test_file_ok(const char *path);

#endif
