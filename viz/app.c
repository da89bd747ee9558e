/* app.c - see app.h. */
#include "app.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "viz.h"

void dl_app_init(dl_app *app, const char *name, const char *usage)
{
    memset(app, 0, sizeof *app);
    app->name = name;
    app->usage = usage;
    app->out_dir = "out";
}

static void print_help(const dl_app *app)
{
    printf("usage: %s [options]\n", app->name);
    if (app->usage && app->usage[0]) printf("%s", app->usage);
    printf("common options:\n"
           "  --headless       no window: write the pictures to the output directory and exit\n"
           "                   (chosen automatically when there is no display)\n"
           "  --out DIR        output directory (default: out)\n"
           "  --max-frames N   live mode: quit after N frames and save the window as\n"
           "                   DIR/%s_window.png (for scripted checks)\n"
           "  --help, -h       this text\n", app->name);
}

void dl_app_bad_arg(dl_app *app, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: error: ", app->name);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n(run '%s --help' for the options)\n", app->name);
    exit(1);
}

const char *dl_arg_str(dl_app *app, int argc, char **argv, int *i)
{
    if (*i + 1 >= argc || argv[*i + 1][0] == '\0')
        dl_app_bad_arg(app, "option %s needs a value", argv[*i]);
    *i += 1;
    return argv[*i];
}

int64_t dl_arg_int(dl_app *app, int argc, char **argv, int *i, int64_t lo, int64_t hi)
{
    const char *opt = argv[*i];
    const char *s = dl_arg_str(app, argc, argv, i);
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0')
        dl_app_bad_arg(app, "%s wants a whole number, got '%s'", opt, s);
    if (v < lo || v > hi)
        dl_app_bad_arg(app, "%s %lld is out of range [%lld, %lld]", opt, v, (long long)lo, (long long)hi);
    return v;
}

int dl_app_common_arg(dl_app *app, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) { print_help(app); exit(0); }
    if (!strcmp(a, "--headless")) { app->headless = 1; return 1; }
    if (!strcmp(a, "--out")) { app->out_dir = dl_arg_str(app, argc, argv, i); return 1; }
    if (!strcmp(a, "--max-frames")) { app->max_frames = dl_arg_int(app, argc, argv, i, 1, INT64_MAX); return 1; }
    return 0;
}

int dl_app_choose_mode(dl_app *app)
{
    if (!app->headless && !viz_display_available()) {
        app->headless = 1;
        printf("%s: no display found (DISPLAY/WAYLAND_DISPLAY unset or SDL video failed): "
               "running headless, pictures go to %s/\n", app->name, app->out_dir);
    }
    return app->headless;
}

dl_status dl_make_dirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return dl_fail(DL_ERR_ARG, "directory name too long: '%s'", path);
    for (char *p = buf + 1; ; p++) {   /* create each prefix ending at a '/' */
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return dl_fail(DL_ERR_IO, "cannot create directory '%s': %s", buf, strerror(errno));
            *p = c;
            if (c == '\0') break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return dl_fail(DL_ERR_IO, "'%s' is not a directory", path);
    return DL_OK;
}

dl_status dl_app_save(dl_app *app, const char *file, const dl_image *img)
{
    DL_TRY(dl_make_dirs(app->out_dir));
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", app->out_dir, file);
    DL_TRY(dl_image_save_png(img, path));
    printf("wrote %s (%dx%d)\n", path, img->w, img->h);
    return DL_OK;
}

int dl_app_frame_limit(dl_app *app, viz_window *win, int64_t frames_shown)
{
    if (app->max_frames <= 0 || frames_shown < app->max_frames) return 0;
    dl_image shot;
    char name[160];
    snprintf(name, sizeof name, "%s_window.png", app->name);
    if (viz_read_window(win, &shot) == DL_OK) {
        dl_app_save(app, name, &shot);
        dl_image_free(&shot);
    }
    return 1;
}
