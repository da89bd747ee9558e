/* viz.h - the live window of the lessons (the only code that uses SDL).
 *
 * Lessons draw each frame into a dl_image with core/image.h (text, plots,
 * sliders included) and hand it to viz_present, which shows it scaled by
 * an integer factor (crisp pixels) in a resizable window that keeps the
 * aspect ratio. Events come back in frame coordinates.
 *
 *     viz_window *win = viz_open("forward noising", 640, 400, 2);
 *     if (!win) dl_die("no display: run with --headless");
 *     for (int running = 1; running; ) {
 *         viz_event ev;
 *         while (viz_poll(win, &ev))
 *             if (ev.type == VIZ_QUIT || (ev.type == VIZ_KEY && ev.key == 'q')) running = 0;
 *         ... draw into frame ...
 *         viz_present(win, &frame);
 *         viz_wait(win, 16);                   // ~60 frames per second
 *     }
 *     viz_close(win);
 */
#ifndef DL_VIZ_H
#define DL_VIZ_H

#include "../core/image.h"

typedef struct viz_window viz_window;

typedef enum {
    VIZ_NONE = 0,
    VIZ_QUIT,        /* window closed                                   */
    VIZ_KEY,         /* key pressed (repeats while held)                */
    VIZ_MOUSE_DOWN,  /* button pressed at (x, y)                        */
    VIZ_MOUSE_UP,
    VIZ_MOUSE_MOVE,  /* (x, y); buttons = bit mask of held buttons      */
} viz_event_type;

/* Key codes: printable keys are their lower-case ASCII ('a', '1', ' ');
 * the others are below. Shift is reported separately. */
enum {
    VIZ_KEY_TAB = 9, VIZ_KEY_ENTER = 13, VIZ_KEY_ESCAPE = 27, VIZ_KEY_SPACE = ' ',
    VIZ_KEY_LEFT = 256, VIZ_KEY_RIGHT, VIZ_KEY_UP, VIZ_KEY_DOWN,
    VIZ_KEY_HOME, VIZ_KEY_END, VIZ_KEY_PAGEUP, VIZ_KEY_PAGEDOWN,
};

typedef struct {
    viz_event_type type;
    int key;          /* VIZ_KEY: the key code                          */
    int shift, ctrl;  /* VIZ_KEY: modifiers held                        */
    int x, y;         /* mouse events: position in FRAME pixels          */
    int button;       /* MOUSE_DOWN/UP: 1 left, 2 middle, 3 right        */
    int buttons;      /* MOUSE_MOVE: bit 0 left, bit 1 middle, bit 2 right */
} viz_event;

/* Is there anything to open a window on? False when neither DISPLAY nor
 * WAYLAND_DISPLAY is set and SDL_VIDEODRIVER is unset, or SDL's video
 * fails to start. */
int viz_display_available(void);

/* A window for frames of w x h pixels, first shown `scale` times larger
 * (shrunk to fit the screen). NULL and a dl_fail message on failure. */
viz_window *viz_open(const char *title, int w, int h, int scale);
/* Show a frame (1, 3 or 4 channels; its size may change between calls). */
void viz_present(viz_window *win, const dl_image *frame);
/* Next pending event: 1 and *ev filled, or 0 when there is none. */
int viz_poll(viz_window *win, viz_event *ev);
/* Sleep about ms milliseconds (lets the CPU rest between frames). */
void viz_wait(viz_window *win, int ms);
/* What the window really shows (after scaling), read back from the
 * renderer: for scripted checks. Allocates an RGB image. */
dl_status viz_read_window(viz_window *win, dl_image *out);
void viz_close(viz_window *win);

/* ---- a horizontal slider, drawn into the frame with core/image ------
 *
 *     viz_slider s = { .x = 20, .y = 360, .w = 600, .h = 24, .min = 0, .max = 999 };
 *     ... for each event:  if (viz_slider_event(&s, &ev)) t = s.value;
 *     ... for each frame:  viz_slider_draw(&s, &frame);
 *
 * Click or drag on the bar sets the value; the lesson can also set
 * s.value directly (e.g. from arrow keys). */
typedef struct {
    int x, y, w, h;        /* the bar, in frame pixels         */
    int min, max, value;
    int dragging;          /* internal: mouse held on the bar  */
} viz_slider;

/* Returns 1 if the event changed the value. */
int viz_slider_event(viz_slider *s, const viz_event *ev);
void viz_slider_draw(const viz_slider *s, dl_image *frame);

#endif
