/* viz.c - see viz.h. Everything SDL lives in this one file. */
#include "viz.h"

#include <SDL.h>
#include <stdlib.h>
#include <string.h>

struct viz_window {
    SDL_Window   *window;
    SDL_Renderer *renderer;
    SDL_Texture  *texture;       /* streaming RGB24, frame-sized */
    int           frame_w, frame_h;
    SDL_Rect      dst;           /* where the frame lands in the window */
    unsigned char *rgb;          /* conversion buffer for 1- and 4-channel frames */
};

int viz_display_available(void)
{
    if (!getenv("DISPLAY") && !getenv("WAYLAND_DISPLAY") && !getenv("SDL_VIDEODRIVER")) return 0;
    if (SDL_InitSubSystem(SDL_INIT_VIDEO) != 0) return 0;
    SDL_QuitSubSystem(SDL_INIT_VIDEO);
    return 1;
}

viz_window *viz_open(const char *title, int w, int h, int scale)
{
    if (w <= 0 || h <= 0 || w > DL_IMAGE_MAX_SIDE || h > DL_IMAGE_MAX_SIDE) {
        dl_fail(DL_ERR_ARG, "viz_open: frame size %dx%d", w, h);
        return NULL;
    }
    if (SDL_InitSubSystem(SDL_INIT_VIDEO) != 0) {
        dl_fail(DL_ERR_IO, "cannot start the display (SDL: %s)", SDL_GetError());
        return NULL;
    }
    /* Nearest-neighbour scaling: pixels stay crisp squares. */
    SDL_SetHint(SDL_HINT_RENDER_SCALE_QUALITY, "0");
    if (scale < 1) scale = 1;
    SDL_Rect usable;
    if (SDL_GetDisplayUsableBounds(0, &usable) == 0)
        while (scale > 1 && (w * scale > usable.w || h * scale > usable.h)) scale--;
    viz_window *v = calloc(1, sizeof *v);
    if (!v) { SDL_QuitSubSystem(SDL_INIT_VIDEO); dl_fail(DL_ERR_MEMORY, "viz_open: out of memory"); return NULL; }
    v->window = SDL_CreateWindow(title, SDL_WINDOWPOS_CENTERED, SDL_WINDOWPOS_CENTERED,
                                 w * scale, h * scale, SDL_WINDOW_RESIZABLE);
    if (v->window) v->renderer = SDL_CreateRenderer(v->window, -1, 0);   /* best available, software as last resort */
    if (!v->window || !v->renderer) {
        dl_fail(DL_ERR_IO, "cannot open a window (SDL: %s)", SDL_GetError());
        viz_close(v);
        return NULL;
    }
    SDL_SetWindowMinimumSize(v->window, w < 160 ? w : 160, h < 100 ? h : 100);
    return v;
}

/* The frame's place in the window: the largest integer scale that fits
 * (crisp), or, if the window is smaller than the frame, a fractional fit;
 * centred either way (letterbox bars keep the aspect ratio). */
static void layout(viz_window *v)
{
    int ow, oh;
    SDL_GetRendererOutputSize(v->renderer, &ow, &oh);
    int k = ow / v->frame_w < oh / v->frame_h ? ow / v->frame_w : oh / v->frame_h;
    int dw, dh;
    if (k >= 1) { dw = v->frame_w * k; dh = v->frame_h * k; }
    else {
        double s = (double)ow / v->frame_w < (double)oh / v->frame_h ? (double)ow / v->frame_w : (double)oh / v->frame_h;
        dw = (int)(v->frame_w * s); dh = (int)(v->frame_h * s);
        if (dw < 1) dw = 1;
        if (dh < 1) dh = 1;
    }
    v->dst = (SDL_Rect){ (ow - dw) / 2, (oh - dh) / 2, dw, dh };
}

static void draw(viz_window *v)
{
    layout(v);
    SDL_SetRenderDrawColor(v->renderer, 24, 24, 24, 255);
    SDL_RenderClear(v->renderer);
    if (v->texture) SDL_RenderCopy(v->renderer, v->texture, NULL, &v->dst);
}

void viz_present(viz_window *v, const dl_image *f)
{
    if (!v || !f || !f->px) return;
    if (!v->texture || f->w != v->frame_w || f->h != v->frame_h) {
        if (v->texture) SDL_DestroyTexture(v->texture);
        free(v->rgb);
        v->texture = SDL_CreateTexture(v->renderer, SDL_PIXELFORMAT_RGB24, SDL_TEXTUREACCESS_STREAMING, f->w, f->h);
        v->rgb = malloc((size_t)f->w * f->h * 3);
        v->frame_w = f->w; v->frame_h = f->h;
        if (!v->texture || !v->rgb) return;
    }
    const unsigned char *src = f->px;
    if (f->c != 3) {   /* gray or RGBA -> RGB */
        size_t n = (size_t)f->w * f->h;
        for (size_t i = 0; i < n; i++)
            for (int k = 0; k < 3; k++) v->rgb[i * 3 + k] = f->px[i * f->c + (f->c == 1 ? 0 : k)];
        src = v->rgb;
    }
    SDL_UpdateTexture(v->texture, NULL, src, f->w * 3);
    draw(v);
    SDL_RenderPresent(v->renderer);
}

/* Window pixel -> frame pixel (through the letterboxed, scaled rect). */
static void to_frame(const viz_window *v, int wx, int wy, int *fx, int *fy)
{
    if (v->dst.w <= 0 || v->dst.h <= 0) { *fx = wx; *fy = wy; return; }
    *fx = (int)((long)(wx - v->dst.x) * v->frame_w / v->dst.w);
    *fy = (int)((long)(wy - v->dst.y) * v->frame_h / v->dst.h);
    if (wx < v->dst.x) *fx = -1;   /* integer division rounds toward 0 */
    if (wy < v->dst.y) *fy = -1;
}

static int translate_key(SDL_Keycode k)
{
    switch (k) {
    case SDLK_LEFT:     return VIZ_KEY_LEFT;
    case SDLK_RIGHT:    return VIZ_KEY_RIGHT;
    case SDLK_UP:       return VIZ_KEY_UP;
    case SDLK_DOWN:     return VIZ_KEY_DOWN;
    case SDLK_HOME:     return VIZ_KEY_HOME;
    case SDLK_END:      return VIZ_KEY_END;
    case SDLK_PAGEUP:   return VIZ_KEY_PAGEUP;
    case SDLK_PAGEDOWN: return VIZ_KEY_PAGEDOWN;
    case SDLK_RETURN:
    case SDLK_KP_ENTER: return VIZ_KEY_ENTER;
    case SDLK_KP_1: return '1';
    case SDLK_KP_2: return '2';
    case SDLK_KP_3: return '3';
    default: break;
    }
    if (k > 0 && k < 128) return (k >= 'A' && k <= 'Z') ? k - 'A' + 'a' : (int)k;
    return 0;   /* a key we do not report */
}

int viz_poll(viz_window *v, viz_event *ev)
{
    SDL_Event e;
    memset(ev, 0, sizeof *ev);
    while (SDL_PollEvent(&e)) {
        switch (e.type) {
        case SDL_QUIT:
            ev->type = VIZ_QUIT;
            return 1;
        case SDL_KEYDOWN: {
            int key = translate_key(e.key.keysym.sym);
            if (!key) break;
            ev->type = VIZ_KEY;
            ev->key = key;
            ev->shift = (e.key.keysym.mod & KMOD_SHIFT) != 0;
            ev->ctrl = (e.key.keysym.mod & KMOD_CTRL) != 0;
            return 1;
        }
        case SDL_MOUSEBUTTONDOWN:
        case SDL_MOUSEBUTTONUP:
            ev->type = e.type == SDL_MOUSEBUTTONDOWN ? VIZ_MOUSE_DOWN : VIZ_MOUSE_UP;
            ev->button = e.button.button == SDL_BUTTON_LEFT ? 1 : e.button.button == SDL_BUTTON_MIDDLE ? 2 : 3;
            to_frame(v, e.button.x, e.button.y, &ev->x, &ev->y);
            return 1;
        case SDL_MOUSEMOTION:
            ev->type = VIZ_MOUSE_MOVE;
            ev->buttons = (e.motion.state & SDL_BUTTON_LMASK ? 1 : 0) | (e.motion.state & SDL_BUTTON_MMASK ? 2 : 0) |
                          (e.motion.state & SDL_BUTTON_RMASK ? 4 : 0);
            to_frame(v, e.motion.x, e.motion.y, &ev->x, &ev->y);
            return 1;
        case SDL_WINDOWEVENT:
            /* Resized or uncovered: show the last frame again at the new size. */
            if (v->texture && (e.window.event == SDL_WINDOWEVENT_SIZE_CHANGED || e.window.event == SDL_WINDOWEVENT_EXPOSED)) {
                draw(v);
                SDL_RenderPresent(v->renderer);
            }
            break;
        default:
            break;
        }
    }
    return 0;
}

void viz_wait(viz_window *v, int ms)
{
    (void)v;
    if (ms > 0) SDL_Delay((Uint32)ms);
}

dl_status viz_read_window(viz_window *v, dl_image *out)
{
    int ow, oh;
    if (SDL_GetRendererOutputSize(v->renderer, &ow, &oh) != 0)
        return dl_fail(DL_ERR_IO, "viz_read_window: %s", SDL_GetError());
    DL_TRY(dl_image_alloc(out, ow, oh, 3));
    draw(v);   /* read the back buffer before presenting it */
    if (SDL_RenderReadPixels(v->renderer, NULL, SDL_PIXELFORMAT_RGB24, out->px, ow * 3) != 0) {
        dl_image_free(out);
        return dl_fail(DL_ERR_IO, "viz_read_window: %s", SDL_GetError());
    }
    SDL_RenderPresent(v->renderer);
    return DL_OK;
}

void viz_close(viz_window *v)
{
    if (!v) return;
    if (v->texture) SDL_DestroyTexture(v->texture);
    if (v->renderer) SDL_DestroyRenderer(v->renderer);
    if (v->window) SDL_DestroyWindow(v->window);
    free(v->rgb);
    free(v);
    SDL_QuitSubSystem(SDL_INIT_VIDEO);
}

/* ---- slider ------------------------------------------------------------- */

static int slider_value_at(const viz_slider *s, int x)
{
    if (s->w <= 1 || s->max <= s->min) return s->min;
    long v = s->min + ((long)(x - s->x) * (s->max - s->min) + (s->w - 1) / 2) / (s->w - 1);
    return v < s->min ? s->min : v > s->max ? s->max : (int)v;
}

int viz_slider_event(viz_slider *s, const viz_event *ev)
{
    int old = s->value;
    if (ev->type == VIZ_MOUSE_DOWN && ev->button == 1 &&
        ev->x >= s->x - s->h / 2 && ev->x < s->x + s->w + s->h / 2 && ev->y >= s->y && ev->y < s->y + s->h) {
        s->dragging = 1;
        s->value = slider_value_at(s, ev->x);
    } else if (ev->type == VIZ_MOUSE_MOVE && s->dragging) {
        if (!(ev->buttons & 1)) s->dragging = 0;   /* released outside the window */
        else s->value = slider_value_at(s, ev->x);
    } else if (ev->type == VIZ_MOUSE_UP && ev->button == 1) {
        s->dragging = 0;
    }
    return s->value != old;
}

void viz_slider_draw(const viz_slider *s, dl_image *f)
{
    int track_h = s->h / 4 > 2 ? s->h / 4 : 2;
    int ty = s->y + (s->h - track_h) / 2;
    int range = s->max > s->min ? s->max - s->min : 1;
    int kx = s->x + (int)((long)(s->value - s->min) * (s->w - 1) / range);
    dl_image_fill_rect(f, s->x, ty, s->w, track_h, 170, 170, 170);          /* track */
    dl_image_fill_rect(f, s->x, ty, kx - s->x + 1, track_h, 31, 119, 180);  /* filled part */
    int kw = s->h / 2 > 4 ? s->h / 2 : 4;
    dl_image_fill_rect(f, kx - kw / 2, s->y, kw, s->h, s->dragging ? 214 : 40, s->dragging ? 39 : 40, 40);
}
