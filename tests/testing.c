/* testing.c - the test runner: bin/run_tests [filter]
 * Prints one line per test and a final "N passed, M failed"; exit status 1
 * if anything failed. */
#include "testing.h"
#include "../core/tensor.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#define MAX_TESTS 1024

typedef struct { const char *group, *name; dl_test_fn fn; } test_case;
static test_case tests[MAX_TESTS];
static int ntests;
static int current_failed;
static int current_checks_failed;

void dl_test_register(const char *group, const char *name, dl_test_fn fn)
{
    if (ntests < MAX_TESTS) tests[ntests++] = (test_case){group, name, fn};
}

int dl_test_check(int ok, const char *file, int line, const char *fmt, ...)
{
    if (ok) return 1;
    current_failed = 1;
    if (++current_checks_failed > 20) return 0;   /* don't drown the log */
    fprintf(stdout, "    %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    return 0;
}

double dl_max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || d != d) m = d;
    }
    return m;
}

int dl_test_close(const char *file, int line, const char *what,
                  const float *got, const float *want, size_t n, double atol)
{
    double m = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= m)) { m = d; at = i; }   /* also catches NaN */
    }
    if (m <= atol) return 1;
    return dl_test_check(0, file, line, "%s: max abs diff %.3g > %.3g at index %zu (got %.9g, want %.9g)",
                         what, m, atol, at, (double)got[at], (double)want[at]);
}

uint32_t dl_test_u32(dl_test_rng *r)
{
    r->s ^= r->s << 13; r->s ^= r->s >> 7; r->s ^= r->s << 17;   /* xorshift64 */
    return (uint32_t)(r->s >> 32);
}
float dl_test_uniform(dl_test_rng *r, float lo, float hi)
{
    return lo + (hi - lo) * (float)(dl_test_u32(r) >> 8) * (1.0f / 16777216.0f);
}
int dl_test_int(dl_test_rng *r, int lo, int hi)
{
    return lo + (int)(dl_test_u32(r) % (uint32_t)(hi - lo + 1));
}
void dl_test_fill(dl_test_rng *r, float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) x[i] = dl_test_uniform(r, lo, hi);
}

int dl_test_rand_tensor(void *tensor, dl_test_rng *r, int ndim, const int64_t shape[])
{
    dl_tensor *t = tensor;
    if (dl_tensor_alloc(t, ndim, shape) != DL_OK) {
        CHECK(0, "alloc failed: %s", dl_error_message());
        return 0;
    }
    dl_test_fill(r, t->data, (size_t)t->numel, -1.0f, 1.0f);
    return 1;
}

int dl_test_close_rel(const char *file, int line, const char *what,
                      const void *got_tensor, const void *want_tensor, double rtol)
{
    const dl_tensor *got = got_tensor, *want = want_tensor;
    if (got->numel != want->numel)
        return dl_test_check(0, file, line, "%s: %lld values, want %lld", what,
                             (long long)got->numel, (long long)want->numel);
    double scale = 1.0;
    for (int64_t i = 0; i < want->numel; i++) scale = fmax(scale, fabs(want->data[i]));
    return dl_test_close(file, line, what, got->data, want->data, (size_t)want->numel, rtol * scale);
}

/* Where the programs under test live and where tests write: DL_BIN_DIR if
 * set, else the folder run_tests itself was started from (so that
 * build/x/bin/run_tests tests build/x/bin's programs, not bin's). Output goes
 * to a test_out folder beside that bin folder (build/test_out for bin/), so
 * two builds tested at the same time never share files. */
static char g_bin_dir[512] = "bin", g_out_root[600] = "build/test_out";

static void test_dirs_init(const char *argv0)
{
    const char *d = getenv("DL_BIN_DIR");
    if (d && d[0]) snprintf(g_bin_dir, sizeof g_bin_dir, "%s", d);
    else if (argv0 && strchr(argv0, '/')) {
        snprintf(g_bin_dir, sizeof g_bin_dir, "%s", argv0);
        *strrchr(g_bin_dir, '/') = '\0';
    }
    size_t n = strlen(g_bin_dir);
    while (n > 1 && g_bin_dir[n - 1] == '/') g_bin_dir[--n] = '\0';
    if (!strcmp(g_bin_dir, "bin") || !strcmp(g_bin_dir, "./bin")) snprintf(g_out_root, sizeof g_out_root, "build/test_out");
    else if (n > 4 && !strcmp(g_bin_dir + n - 4, "/bin"))
        snprintf(g_out_root, sizeof g_out_root, "%.*s/test_out", (int)(n - 4), g_bin_dir);
    else snprintf(g_out_root, sizeof g_out_root, "%s/test_out", g_bin_dir);
}

const char *dl_test_bin_dir(void) { return g_bin_dir; }

const char *dl_test_out_dir(const char *sub)
{
    static _Thread_local char buf[1024];
    snprintf(buf, sizeof buf, "%s/%s", g_out_root, sub);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", buf);
    if (system(cmd) != 0) fprintf(stdout, "    cannot create %s\n", buf);
    return buf;
}

int dl_test_run(const char *cmd)
{
    char full[6000];
    snprintf(full, sizeof full, "mkdir -p '%s'", g_out_root);
    if (system(full) != 0) return -1;
    snprintf(full, sizeof full, "( %s ) > '%s/last_cmd.log' 2>&1", cmd, g_out_root);
    int rc = system(full);
    if (rc == -1) return -1;
    if (WIFEXITED(rc)) return WEXITSTATUS(rc);
    return 128 + (WIFSIGNALED(rc) ? WTERMSIG(rc) : 0);
}

char *dl_test_read_log(void)
{
    char path[700];
    snprintf(path, sizeof path, "%s/last_cmd.log", g_out_root);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap + 1);
    while (buf && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) { char *b = realloc(buf, 2 * cap + 1); if (!b) break; buf = b; cap *= 2; }
    }
    fclose(f);
    if (buf) buf[n] = '\0';
    return buf;
}

int dl_test_log_contains(const char *needle)
{
    char *log = dl_test_read_log();
    int yes = log && strstr(log, needle) != NULL;
    free(log);
    return yes;
}

void dl_test_show_log(void)
{
    char *log = dl_test_read_log();
    if (log) printf("      | %.3000s\n", log);
    free(log);
}

int dl_test_file_ok(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && st.st_size > 0;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_tests(const void *a, const void *b)
{
    const test_case *x = a, *y = b;
    int c = strcmp(x->group, y->group);
    return c ? c : strcmp(x->name, y->name);
}

int main(int argc, char **argv)
{
    const char *filter = argc > 1 ? argv[1] : "";
    test_dirs_init(argv[0]);
    if (!strcmp(filter, "--help") || !strcmp(filter, "-h")) {
        printf("usage: run_tests [FILTER]\n"
               "Runs every test whose \"group/name\" contains FILTER (all if empty),\n"
               "then prints \"N passed, M failed\". Run from the repository root.\n");
        return 0;
    }
    if (!strcmp(filter, "--omp-env")) {   /* for tensor/omp_short_spin_by_default */
        const char *p = getenv("OMP_WAIT_POLICY"), *c = getenv("GOMP_SPINCOUNT");
        printf("%s %s\n", p ? p : "(unset)", c ? c : "(unset)");
        return 0;
    }
    if (!strcmp(filter, "--list")) {
        for (int i = 0; i < ntests; i++) printf("%s/%s\n", tests[i].group, tests[i].name);
        return 0;
    }
    qsort(tests, (size_t)ntests, sizeof tests[0], cmp_tests);
    setvbuf(stdout, NULL, _IOLBF, 0);
    int passed = 0, failed = 0;
    double t_all = now_seconds();
    for (int i = 0; i < ntests; i++) {
        char full[256];
        snprintf(full, sizeof full, "%s/%s", tests[i].group, tests[i].name);
        if (filter[0] && !strstr(full, filter)) continue;
        current_failed = 0;
        current_checks_failed = 0;
        double t0 = now_seconds();
        tests[i].fn();
        double dt = now_seconds() - t0;
        if (current_failed) { failed++; printf("FAIL %s (%.2f s)\n", full, dt); }
        else                { passed++; printf("ok   %s (%.2f s)\n", full, dt); }
    }
    if (passed + failed == 0) printf("no test matches \"%s\" (bin/run_tests --list shows them)\n", filter);
    printf("total time %.1f s\n", now_seconds() - t_all);
    printf("%d passed, %d failed\n", passed, failed);
    return (failed || passed == 0) ? 1 : 0;
}
