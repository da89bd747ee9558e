/* dl_error.c - see dl_error.h */
#include "dl_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char dl_message[1024];

dl_status dl_fail(dl_status code, const char *fmt, ...)
{
    /* Format into a scratch buffer first: callers often wrap the previous
     * message, dl_fail(s, "loading %s: %s", path, dl_error_message()),
     * and vsnprintf must not read the buffer it writes. */
    char tmp[sizeof dl_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    memcpy(dl_message, tmp, sizeof dl_message);
    return code;
}

const char *dl_error_message(void) { return dl_message; }

const char *dl_status_name(dl_status code)
{
    switch (code) {
    case DL_OK:         return "ok";
    case DL_ERR_ARG:    return "bad argument";
    case DL_ERR_SHAPE:  return "shape error";
    case DL_ERR_IO:     return "i/o error";
    case DL_ERR_FORMAT: return "format error";
    case DL_ERR_MEMORY: return "out of memory";
    }
    return "unknown error";
}

void dl_die(const char *hint)
{
    fprintf(stderr, "error: %s\n", dl_message[0] ? dl_message : "(no message)");
    if (hint && hint[0]) fprintf(stderr, "hint: %s\n", hint);
    exit(1);
}

void dl_die_msg(const char *hint, const char *fmt, ...)
{
    char tmp[sizeof dl_message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    memcpy(dl_message, tmp, sizeof dl_message);
    dl_die(hint);
}
