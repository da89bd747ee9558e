/* test_viz.c - viz/: a real SDL window on a display-less driver (dummy or
 * offscreen, so CI needs no X server), the slider, the app helpers. */
#include "testing.h"
#include "../viz/viz.h"
#include "../viz/app.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Open a window with SDL_VIDEODRIVER=dummy, else offscreen. */
static viz_window *open_headless_window(int w, int h, int scale, const char **driver)
{
    static const char *drivers[2] = {"dummy", "offscreen"};
    for (int i = 0; i < 2; i++) {
        setenv("SDL_VIDEODRIVER", drivers[i], 1);
        viz_window *win = viz_open("test", w, h, scale);
        if (win) { *driver = drivers[i]; return win; }
    }
    return NULL;
}

TEST(viz, window_present_poll_read_back)
{
    char *old = getenv("SDL_VIDEODRIVER") ? strdup(getenv("SDL_VIDEODRIVER")) : NULL;
    const char *driver = "";
    viz_window *win = open_headless_window(40, 30, 2, &driver);
    CHECK(win != NULL, "no window with the dummy or offscreen driver: %s", dl_error_message());
    if (win) {
        dl_image frame;
        dl_image_alloc(&frame, 40, 30, 3);
        dl_image_fill(&frame, 10, 20, 30);
        dl_image_fill_rect(&frame, 0, 0, 20, 15, 250, 0, 0);   /* red top-left quarter */
        viz_present(win, &frame);
        viz_event ev;
        for (int i = 0; i < 100 && viz_poll(win, &ev); i++) {}   /* drain whatever SDL queued */
        dl_image shot;
        CHECK(viz_read_window(win, &shot) == DL_OK, "read back (%s): %s", driver, dl_error_message());
        if (shot.px) {
            /* the window is 80x60 (scale 2): the frame fills it, pixels doubled */
            CHECK(shot.w == 80 && shot.h == 60, "window %dx%d, want 80x60", shot.w, shot.h);
            const unsigned char *tl = &shot.px[(5 * shot.w + 5) * 3], *br = &shot.px[(50 * shot.w + 70) * 3];
            CHECK(tl[0] == 250 && tl[1] == 0 && tl[2] == 0, "top-left shows %d,%d,%d", tl[0], tl[1], tl[2]);
            CHECK(br[0] == 10 && br[1] == 20 && br[2] == 30, "bottom-right shows %d,%d,%d", br[0], br[1], br[2]);
            const unsigned char *edge = &shot.px[(29 * shot.w + 39) * 3], *past = &shot.px[(30 * shot.w + 40) * 3];
            CHECK(edge[0] == 250 && past[0] == 10, "crisp 2x edge at (40, 30)");
            dl_image_free(&shot);
        }
        /* a frame of another size and channel count is fine too */
        dl_image gray;
        dl_image_alloc(&gray, 17, 9, 1);
        viz_present(win, &gray);
        dl_image_free(&gray);
        dl_image_free(&frame);
        viz_close(win);
    }
    if (old) { setenv("SDL_VIDEODRIVER", old, 1); free(old); }
    else unsetenv("SDL_VIDEODRIVER");
}

TEST(viz, no_display_means_headless)
{
    const char *names[3] = {"DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"};
    char *saved[3];
    for (int i = 0; i < 3; i++) {
        saved[i] = getenv(names[i]) ? strdup(getenv(names[i])) : NULL;
        unsetenv(names[i]);
    }
    CHECK(viz_display_available() == 0, "no DISPLAY/WAYLAND_DISPLAY/SDL_VIDEODRIVER, yet a display is 'available'");
    setenv("SDL_VIDEODRIVER", "dummy", 1);
    int dummy = viz_display_available();
    setenv("SDL_VIDEODRIVER", "offscreen", 1);
    int offscreen = viz_display_available();
    CHECK(dummy || offscreen, "neither the dummy nor the offscreen SDL driver starts");
    for (int i = 0; i < 3; i++) {
        if (saved[i]) { setenv(names[i], saved[i], 1); free(saved[i]); }
        else unsetenv(names[i]);
    }
}

TEST(viz, slider_mouse_and_clamping)
{
    viz_slider s = {.x = 10, .y = 50, .w = 101, .h = 20, .min = 0, .max = 1000, .value = 0};
    viz_event down = {.type = VIZ_MOUSE_DOWN, .button = 1, .x = 60, .y = 55};
    CHECK(viz_slider_event(&s, &down) == 1 && s.value == 500 && s.dragging, "click at the middle -> 500, got %d", s.value);
    viz_event move = {.type = VIZ_MOUSE_MOVE, .buttons = 1, .x = 500, .y = 0};
    CHECK(viz_slider_event(&s, &move) == 1 && s.value == 1000, "drag past the end clamps to max, got %d", s.value);
    move.x = -40;
    viz_slider_event(&s, &move);
    CHECK(s.value == 0, "drag before the start clamps to min, got %d", s.value);
    viz_event up = {.type = VIZ_MOUSE_UP, .button = 1, .x = 0, .y = 0};
    viz_slider_event(&s, &up);
    move.x = 60;
    CHECK(viz_slider_event(&s, &move) == 0 && s.value == 0, "moving after release changes nothing");
    viz_event miss = {.type = VIZ_MOUSE_DOWN, .button = 1, .x = 60, .y = 10};
    CHECK(viz_slider_event(&s, &miss) == 0, "a click above the bar is ignored");
    dl_image f;
    dl_image_alloc(&f, 130, 80, 3);
    s.value = 250;
    viz_slider_draw(&s, &f);
    int lit = 0;
    for (int i = 0; i < 130 * 80 * 3; i++) lit += f.px[i] != 0;
    CHECK(lit > 100, "slider drawn");
    dl_image_free(&f);
}

TEST(viz, app_args_and_dirs)
{
    CHECK(dl_make_dirs("build/test_out/viz/a/b/c") == DL_OK, "%s", dl_error_message());
    struct stat st;
    CHECK(stat("build/test_out/viz/a/b/c", &st) == 0 && S_ISDIR(st.st_mode), "nested directories made");
    CHECK(dl_make_dirs("build/test_out/viz/a/b/c/") == DL_OK, "existing directory with a slash");
    CHECK(dl_make_dirs("/proc/no_such_dir_here") == DL_ERR_IO, "uncreatable directory accepted");

    dl_app app;
    dl_app_init(&app, "t", "");
    char *argv[] = {"t", "--out", "build/test_out/viz/app", "--headless", "--seed", "42", "--max-frames", "7", NULL};
    int argc = 8, ours = 0;
    int64_t seed = -1;
    for (int i = 1; i < argc; i++) {
        if (dl_app_common_arg(&app, argc, argv, &i)) { ours++; continue; }
        if (!strcmp(argv[i], "--seed")) seed = dl_arg_int(&app, argc, argv, &i, 0, 100);
    }
    CHECK(ours == 3 && app.headless && app.max_frames == 7 && !strcmp(app.out_dir, "build/test_out/viz/app"), "common options");
    CHECK(seed == 42, "lesson option after common ones, got %lld", (long long)seed);
    dl_image img;
    dl_image_alloc(&img, 3, 3, 3);
    CHECK(dl_app_save(&app, "x.png", &img) == DL_OK && dl_test_file_ok("build/test_out/viz/app/x.png"), "dl_app_save");
    dl_image_free(&img);
}
