/* app.h - the command line every lesson shares (programs only: these
 * functions print and exit on bad arguments).
 *
 *     dl_app app;
 *     dl_app_init(&app, "01_forward_noising", USAGE);   // USAGE: lesson's own options
 *     for (int i = 1; i < argc; i++) {
 *         if (dl_app_common_arg(&app, argc, argv, &i)) continue;   // --headless --out --help ...
 *         if (!strcmp(argv[i], "--seed")) seed = dl_arg_int(&app, argc, argv, &i, 0, INT64_MAX);
 *         else dl_app_bad_arg(&app, "unknown option '%s'", argv[i]);
 *     }
 *     dl_app_choose_mode(&app);     // headless if asked or if there is no display
 *     ...
 *     dl_app_save(&app, "01_strip_cat.png", &img);     // out/01_strip_cat.png
 *
 * Common options: --headless, --out DIR (default out), --help / -h, and
 * --max-frames N (live mode quits after N frames and saves what the window
 * showed as OUT/<name>_window.png: for scripted checks under xvfb-run).
 */
#ifndef DL_APP_H
#define DL_APP_H

#include <stdint.h>

#include "../core/image.h"

typedef struct {
    const char *name;       /* program name, e.g. "01_forward_noising"      */
    const char *usage;      /* the lesson's own options, printed by --help  */
    const char *out_dir;    /* --out DIR, default "out"                     */
    int headless;           /* --headless, or chosen when there is no display */
    int64_t max_frames;     /* --max-frames N; 0 = run until the user quits */
} dl_app;

void dl_app_init(dl_app *app, const char *name, const char *usage);

/* If argv[*i] is a common option, handle it (advancing *i past its value)
 * and return 1; otherwise return 0. --help prints the usage and exits 0. */
int dl_app_common_arg(dl_app *app, int argc, char **argv, int *i);

/* The value after option argv[*i] (advances *i). A missing value, or a
 * number that is not an integer in [lo, hi], prints a message and exits 1. */
int64_t     dl_arg_int(dl_app *app, int argc, char **argv, int *i, int64_t lo, int64_t hi);
const char *dl_arg_str(dl_app *app, int argc, char **argv, int *i);

/* Print "error: <message>" and a hint to run --help, exit 1. */
void dl_app_bad_arg(dl_app *app, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 2, 3)));

/* Decide headless vs live: headless if --headless was given or no display
 * is available (then one line says so). Returns app->headless. */
int dl_app_choose_mode(dl_app *app);

/* Create app->out_dir (and parents) if needed, write `file` there as PNG,
 * print "wrote <path> (WxH)". */
dl_status dl_app_save(dl_app *app, const char *file, const dl_image *img);

/* Live mode with --max-frames N (scripted runs, tests): once frames_shown
 * reaches N, save what the window shows as OUT/<name>_window.png and return
 * 1 (the caller then leaves its loop); otherwise, or without --max-frames,
 * return 0. */
struct viz_window;
int dl_app_frame_limit(dl_app *app, struct viz_window *win, int64_t frames_shown);

/* mkdir -p */
dl_status dl_make_dirs(const char *path);

#endif
