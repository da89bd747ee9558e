/* dl_error.h - the one error convention of difflab.
 *
 * Library functions never abort and never print. They return a dl_status
 * (DL_OK == 0) and, on failure, leave a one-line message that names the
 * problem (file, tensor, shape ...) in a thread-local buffer:
 *
 *     if (conv2d_forward(&y, &x, &w, &b, 1, 1) != DL_OK)
 *         dl_die("check the weight shape");      // programs only
 *
 * dl_die() prints "error: <message>" and "hint: <hint>" to stderr and
 * exits with status 1. Only programs (lessons/, bench/, tests/) call it.
 */
#ifndef DL_ERROR_H
#define DL_ERROR_H

typedef enum {
    DL_OK = 0,
    DL_ERR_ARG,     /* a bad argument: absurd size, unknown name, NULL */
    DL_ERR_SHAPE,   /* tensors whose shapes do not fit together        */
    DL_ERR_IO,      /* a file that cannot be opened, read or written   */
    DL_ERR_FORMAT,  /* a file that is there but corrupt or unexpected  */
    DL_ERR_MEMORY,  /* out of memory / arena full                      */
} dl_status;

/* Record a formatted message and return `code` (so: `return dl_fail(...)`). */
dl_status dl_fail(dl_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The message of the last failure on this thread ("" if none). */
const char *dl_error_message(void);

/* Name of a status code, e.g. "shape error". */
const char *dl_status_name(dl_status code);

/* Programs only: print the last error and a hint, exit(1). */
void dl_die(const char *hint) __attribute__((noreturn));

/* Programs only: print a formatted message and a hint, exit(1). */
void dl_die_msg(const char *hint, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 2, 3)));

/* Propagate a failure: DL_TRY(conv2d_forward(...)); */
#define DL_TRY(expr) do { dl_status dl_try_s_ = (expr); if (dl_try_s_ != DL_OK) return dl_try_s_; } while (0)

#endif
