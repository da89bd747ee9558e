/* canny.c - bin/canny: the Canny edge map ControlNet's Canny model expects.
 *
 *     bin/canny data/images/chelsea.png out/edges.png
 *     bin/canny photo.jpg out/edges.png --low 50 --high 150 --grey
 *
 * By default this is cv2.Canny(rgb_image, low, high) on the RGB picture, as
 * the diffusers ControlNet examples do (per pixel the colour channel with
 * the strongest gradient counts). With --grey the picture is first turned
 * grey as cv2.cvtColor(RGB2GRAY) does. The output is a one-channel PNG with
 * edges 255 on 0 (ControlNet pipelines stack it to three channels).
 */
#include "../core/canny.h"
#include "../core/dl_error.h"
#include "../core/image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bin/canny IMAGE OUT.png [--low 100] [--high 200] [--grey]\n"
            "  Writes the Canny edge map of IMAGE (PNG/JPEG/BMP) as a one-channel PNG, pixel for pixel\n"
            "  what OpenCV's cv2.Canny(image, low, high) gives (Sobel 3x3, L1 magnitude, no blur).\n"
            "  --low T    hysteresis low threshold: weaker edge pixels are dropped (default 100)\n"
            "  --high T   high threshold: stronger pixels start an edge (default 200); need 0 <= low <= high\n"
            "  --grey     convert to grey first (cv2.cvtColor RGB2GRAY) instead of using all three channels\n");
}

/* A threshold from the command line: a plain number, nothing else. */
static float parse_threshold(const char *opt, const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !(v >= 0) || v > 1e6)
        dl_die_msg("thresholds are numbers like 100 (gradient magnitudes reach 2040)",
                   "%s '%s' is not a number in 0..1000000", opt, s);
    return (float)v;
}

int main(int argc, char **argv)
{
    const char *in_path = NULL, *out_path = NULL;
    float low = 100, high = 200;
    int grey = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else if (!strcmp(a, "--low") && has) low = parse_threshold("--low", argv[++i]);
        else if (!strcmp(a, "--high") && has) high = parse_threshold("--high", argv[++i]);
        else if (!strcmp(a, "--grey") || !strcmp(a, "--gray")) grey = 1;
        else if (a[0] == '-' && a[1] != '\0') { usage(stderr); dl_die_msg("see --help", "unknown or incomplete option '%s'", a); }
        else if (!in_path) in_path = a;
        else if (!out_path) out_path = a;
        else { usage(stderr); dl_die_msg("see --help", "unexpected extra argument '%s'", a); }
    }
    if (!in_path || !out_path) { usage(stderr); dl_die_msg("see --help", "need an input IMAGE and an OUT.png"); }
    if (low > high) dl_die_msg("for example --low 100 --high 200", "--low %g is above --high %g", (double)low, (double)high);

    dl_image img = {0}, edges = {0};
    if (dl_image_load(&img, in_path, 3) != DL_OK) dl_die("IMAGE must be a readable PNG, JPEG or BMP file");
    if (dl_image_alloc(&edges, img.w, img.h, 1) != DL_OK) dl_die(NULL);
    if (grey) {
        /* grey first, then Canny on that one channel */
        uint8_t *g = malloc((size_t)img.w * img.h);
        if (!g) dl_die_msg(NULL, "out of memory for a %d x %d image", img.w, img.h);
        if (canny_rgb_to_grey(img.px, img.w, img.h, g) != DL_OK ||
            canny_edges(g, img.w, img.h, low, high, edges.px) != DL_OK)
            dl_die(NULL);
        free(g);
    } else if (canny_edges_color(img.px, img.w, img.h, 3, low, high, edges.px) != DL_OK) {
        dl_die(NULL);
    }
    if (dl_image_save_png(&edges, out_path) != DL_OK) dl_die("check that the output folder exists and is writable");

    long count = 0;
    for (long i = 0; i < (long)img.w * img.h; i++) count += edges.px[i] == 255;
    printf("%s: %d x %d, %s, low %g, high %g: %ld edge pixels -> %s\n", in_path, img.w, img.h,
           grey ? "grey" : "RGB", (double)low, (double)high, count, out_path);
    dl_image_free(&img);
    dl_image_free(&edges);
    return 0;
}
