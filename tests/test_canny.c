/* test_canny.c - the Canny edge detector (core/canny.h) against OpenCV's
 * cv2.Canny(img, 100, 200) on the fixture image, plus hand-made cases whose
 * answer follows from the definition, and the bin/canny program.
 *
 *   make test K=canny
 *
 * Fixtures: tests/fixtures/canny/ (see its README.md). Integer images, so
 * the comparison is exact: the number of differing pixels must be 0.
 */
#include "testing.h"
#include "../core/canny.h"
#include "../core/image.h"
#include "../core/safetensors.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIX "tests/fixtures/canny"
#define N 64   /* the fixture image is 64 x 64 */

/* A uint8 tensor of the fixture, checked to have `numel` entries. */
static int load_u8(const dl_safetensors *f, const char *name, uint8_t *out, int64_t numel)
{
    const dl_st_entry *e = dl_st_find(f, name);
    if (!CHECK(e && e->dtype == DL_DTYPE_U8 && dl_st_numel(e) == numel, "%s: missing or not U8 with %lld values",
               name, (long long)numel))
        return 0;
    int64_t *tmp = malloc(sizeof *tmp * (size_t)numel);
    int ok = tmp && dl_st_read_i64(f, e, tmp) == DL_OK;
    if (ok)
        for (int64_t i = 0; i < numel; i++) out[i] = (uint8_t)tmp[i];
    free(tmp);
    return CHECK(ok, "%s: %s", name, dl_error_message());
}

typedef struct {
    uint8_t rgb[N * N * 3], grey[N * N], edges_grey[N * N], edges_rgb[N * N];
} fixture;

static int load_fixture(fixture *fx)
{
    dl_safetensors f;
    if (!CHECK(dl_st_open(&f, FIX "/canny.safetensors") == DL_OK, "%s", dl_error_message())) return 0;
    int ok = load_u8(&f, "image_rgb_u8", fx->rgb, N * N * 3) && load_u8(&f, "gray_u8", fx->grey, N * N) &&
             load_u8(&f, "edges_from_gray_u8", fx->edges_grey, N * N) &&
             load_u8(&f, "edges_from_rgb_u8", fx->edges_rgb, N * N);
    dl_st_close(&f);
    return ok;
}

static int count_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
    int d = 0;
    for (size_t i = 0; i < n; i++) d += a[i] != b[i];
    return d;
}

static int count_edges(const uint8_t *e, size_t n)
{
    int c = 0;
    for (size_t i = 0; i < n; i++) c += e[i] == 255;
    return c;
}

/* Compare an edge map with OpenCV's, print the agreement, fail on any difference. */
static void check_edges(const char *what, const uint8_t *got, const uint8_t *want)
{
    int diff = count_diff(got, want, N * N), only_values = 1;
    for (int i = 0; i < N * N; i++) only_values &= got[i] == 0 || got[i] == 255;
    printf("    canny %-16s %d / %d pixels agree with OpenCV (%d differ); edge pixels: ours %d, OpenCV %d\n", what,
           N * N - diff, N * N, diff, count_edges(got, N * N), count_edges(want, N * N));
    CHECK(only_values, "%s: output has values other than 0 and 255", what);
    if (!CHECK(diff == 0, "%s: %d pixels differ from cv2.Canny", what, diff))
        for (int i = 0, shown = 0; i < N * N && shown < 10; i++)
            if (got[i] != want[i]) { printf("      (x %d, y %d): ours %d, OpenCV %d\n", i % N, i / N, got[i], want[i]); shown++; }
}

/* ---- the OpenCV fixture ----------------------------------------------------- */

TEST(canny, grey_matches_cvtColor)
{
    static fixture fx;
    if (!load_fixture(&fx)) return;
    uint8_t grey[N * N];
    CHECK(canny_rgb_to_grey(fx.rgb, N, N, grey) == DL_OK, "%s", dl_error_message());
    int diff = count_diff(grey, fx.grey, N * N);
    printf("    canny grey: %d / %d pixels agree with cv2.cvtColor(RGB2GRAY)\n", N * N - diff, N * N);
    CHECK(diff == 0, "%d grey pixels differ from cv2.cvtColor", diff);
    /* OpenCV's formula on single colours, worked by hand:
     * (255 * 9798 + 16384) >> 15 = 76, (255 * 19235 + 16384) >> 15 = 150,
     * (255 * 3735 + 16384) >> 15 = 29, and white stays 255. */
    const uint8_t px[5 * 3] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255, 0, 0, 0};
    uint8_t g[5];
    CHECK(canny_rgb_to_grey(px, 5, 1, g) == DL_OK, "%s", dl_error_message());
    CHECK(g[0] == 76 && g[1] == 150 && g[2] == 29 && g[3] == 255 && g[4] == 0, "red/green/blue/white/black -> %d %d %d %d %d",
          g[0], g[1], g[2], g[3], g[4]);
}

TEST(canny, edges_from_gray_match_opencv)
{
    static fixture fx;
    if (!load_fixture(&fx)) return;
    uint8_t edges[N * N];
    if (CHECK(canny_edges(fx.grey, N, N, 100, 200, edges) == DL_OK, "%s", dl_error_message()))
        check_edges("edges_from_gray", edges, fx.edges_grey);
    /* the whole chain from the RGB image: our grey, then Canny */
    uint8_t grey[N * N];
    if (CHECK(canny_rgb_to_grey(fx.rgb, N, N, grey) == DL_OK && canny_edges(grey, N, N, 100, 200, edges) == DL_OK,
              "%s", dl_error_message()))
        CHECK(count_diff(edges, fx.edges_grey, N * N) == 0, "rgb -> our grey -> Canny differs from OpenCV");
}

TEST(canny, edges_from_rgb_match_opencv)
{
    static fixture fx;
    if (!load_fixture(&fx)) return;
    uint8_t edges[N * N];
    if (CHECK(canny_edges_color(fx.rgb, N, N, 3, 100, 200, edges) == DL_OK, "%s", dl_error_message()))
        check_edges("edges_from_rgb", edges, fx.edges_rgb);
}

/* The PNG copies are the same pictures (what bin/canny and the lesson read). */
TEST(canny, fixture_pngs_are_the_tensors)
{
    static fixture fx;
    if (!load_fixture(&fx)) return;
    dl_image in = {0}, eg = {0}, er = {0};
    if (CHECK(dl_image_load(&in, FIX "/input.png", 3) == DL_OK, "%s", dl_error_message()))
        CHECK(in.w == N && in.h == N && count_diff(in.px, fx.rgb, N * N * 3) == 0, "input.png != image_rgb_u8");
    if (CHECK(dl_image_load(&eg, FIX "/edges_from_gray.png", 1) == DL_OK, "%s", dl_error_message()))
        CHECK(eg.w == N && eg.h == N && count_diff(eg.px, fx.edges_grey, N * N) == 0, "edges_from_gray.png differs");
    if (CHECK(dl_image_load(&er, FIX "/edges_from_rgb.png", 1) == DL_OK, "%s", dl_error_message()))
        CHECK(er.w == N && er.h == N && count_diff(er.px, fx.edges_rgb, N * N) == 0, "edges_from_rgb.png differs");
    dl_image_free(&in);
    dl_image_free(&eg);
    dl_image_free(&er);
}

/* More OpenCV references (extra/, see gen_extra.py): noise, flat blocks
 * (plateaus = suppression ties, 45-degree edges), a smooth photo-like
 * picture and 1xN / Nx1 / 2x3 images, at six threshold pairs, grey and RGB. */
TEST(canny, extra_pictures_match_opencv)
{
    FILE *f = fopen(FIX "/extra/cases.txt", "r");
    if (!CHECK(f != NULL, "cannot open " FIX "/extra/cases.txt")) return;
    char line[512], name[64], mode[16], file[256], last_name[64] = "";
    float low, high;
    int want_count, maps = 0, maps_exact = 0, greys = 0;
    long pixels = 0, differ = 0;
    dl_image rgb = {0}, grey_cv = {0};
    uint8_t *grey = NULL, *edges = NULL;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        if (!CHECK(sscanf(line, "%63s %15s %f %f %255s %d", name, mode, &low, &high, file, &want_count) == 6,
                   "bad line in cases.txt: %s", line))
            break;
        char path[600];
        if (strcmp(name, last_name)) {   /* a new picture: load it, check the grey conversion */
            dl_image_free(&rgb);
            dl_image_free(&grey_cv);
            free(grey);
            free(edges);
            snprintf(path, sizeof path, FIX "/extra/%s.png", name);
            int ok = CHECK(dl_image_load(&rgb, path, 3) == DL_OK, "%s", dl_error_message());
            snprintf(path, sizeof path, FIX "/extra/%s_grey.png", name);
            ok = ok && CHECK(dl_image_load(&grey_cv, path, 1) == DL_OK, "%s", dl_error_message());
            grey = ok ? malloc((size_t)rgb.w * rgb.h) : NULL;
            edges = ok ? malloc((size_t)rgb.w * rgb.h) : NULL;
            if (!CHECK(grey && edges, "could not load picture %s", name)) break;
            snprintf(last_name, sizeof last_name, "%s", name);
            CHECK(canny_rgb_to_grey(rgb.px, rgb.w, rgb.h, grey) == DL_OK, "%s", dl_error_message());
            int d = count_diff(grey, grey_cv.px, (size_t)rgb.w * rgb.h);
            CHECK(d == 0, "%s: %d grey pixels differ from cv2.cvtColor", name, d);
            greys++;
        }
        dl_image want = {0};
        snprintf(path, sizeof path, FIX "/extra/%s", file);
        if (!CHECK(dl_image_load(&want, path, 1) == DL_OK, "%s", dl_error_message())) break;
        size_t n = (size_t)rgb.w * rgb.h;
        int is_rgb = !strcmp(mode, "rgb");
        /* grey mode starts from OpenCV's own grey, so this checks Canny alone */
        dl_status s = is_rgb ? canny_edges_color(rgb.px, rgb.w, rgb.h, 3, low, high, edges)
                             : canny_edges(grey_cv.px, rgb.w, rgb.h, low, high, edges);
        if (CHECK(s == DL_OK && want.w == rgb.w && want.h == rgb.h, "%s: %s", file, dl_error_message())) {
            int d = count_diff(edges, want.px, n);
            CHECK(d == 0, "%s: %d of %zu pixels differ from cv2.Canny (edge pixels: ours %d, OpenCV %d)", file, d, n,
                  count_edges(edges, n), count_edges(want.px, n));
            CHECK(count_edges(want.px, n) == want_count, "%s: the reference has %d edge pixels, cases.txt says %d", file,
                  count_edges(want.px, n), want_count);
            maps++;
            maps_exact += d == 0;
            pixels += (long)n;
            differ += d;
        }
        dl_image_free(&want);
    }
    fclose(f);
    dl_image_free(&rgb);
    dl_image_free(&grey_cv);
    free(grey);
    free(edges);
    printf("    canny extra pictures: %d / %d edge maps identical to OpenCV, %ld / %ld pixels agree; %d grey conversions\n",
           maps_exact, maps, pixels - differ, pixels, greys);
    CHECK(maps == 72 && greys == 6, "expected 72 edge maps of 6 pictures, read %d of %d", maps, greys);
}

/* The live lesson prepares once and re-runs only the hysteresis when the
 * thresholds change: that must give what the one-call version gives. */
TEST(canny, prepare_once_then_hysteresis)
{
    static fixture fx;
    if (!load_fixture(&fx)) return;
    canny_gradients g;
    if (!CHECK(canny_prepare(&g, fx.rgb, N, N, 3) == DL_OK, "%s", dl_error_message())) return;
    const float th[4][2] = {{100, 200}, {10, 20}, {0, 0}, {500, 1000}};
    int last = -1;
    for (int t = 0; t < 4; t++) {
        uint8_t a[N * N], b[N * N];
        CHECK(canny_hysteresis(g.thin, N, N, th[t][0], th[t][1], a) == DL_OK, "%s", dl_error_message());
        CHECK(canny_edges_color(fx.rgb, N, N, 3, th[t][0], th[t][1], b) == DL_OK, "%s", dl_error_message());
        CHECK(count_diff(a, b, N * N) == 0, "thresholds %g/%g: prepare+hysteresis != canny_edges_color", th[t][0], th[t][1]);
        if (t == 0) CHECK(count_diff(a, fx.edges_rgb, N * N) == 0, "prepare+hysteresis at 100/200 != OpenCV");
        /* lower thresholds keep more edges than 100/200, higher ones fewer */
        int c = count_edges(a, N * N);
        if (t == 1) CHECK(c > last, "10/20 should give more edges (%d) than 100/200 (%d)", c, last);
        if (t == 3) CHECK(c < count_edges(fx.edges_rgb, N * N), "500/1000 should give fewer edges (%d)", c);
        if (t == 0) last = c;
    }
    canny_gradients_free(&g);
    canny_gradients_free(&g);   /* safe twice */
}

/* ---- hand-made cases -------------------------------------------------------- */

/* A vertical step 10 | 210 between columns 5 and 6: Sobel gives 4 * 200 = 800
 * in columns 5 and 6 (both see the step), 0 elsewhere. Non-maximum
 * suppression keeps exactly one of the two equal columns, the left one
 * (m > left, m >= right), so the edge is column 5 on every row. Turned by
 * 90 degrees, the edge is row 3. */
TEST(canny, step_edge_gives_one_pixel_line)
{
    enum { W = 12, H = 10 };
    uint8_t img[W * H], edges[W * H];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) img[y * W + x] = x < 6 ? 10 : 210;
    CHECK(canny_edges(img, W, H, 100, 200, edges) == DL_OK, "%s", dl_error_message());
    int bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) bad += edges[y * W + x] != (x == 5 ? 255 : 0);
    CHECK(bad == 0, "vertical step: %d pixels off the expected line x = 5", bad);

    int16_t gx[W * H], gy[W * H];
    CHECK(canny_sobel(img, W, H, 1, gx, gy) == DL_OK, "%s", dl_error_message());
    CHECK(gx[3 * W + 5] == 800 && gx[3 * W + 6] == 800 && gx[3 * W + 4] == 0 && gy[3 * W + 5] == 0 && gx[0] == 0,
          "Sobel of the step: gx %d %d %d, gy %d", gx[3 * W + 4], gx[3 * W + 5], gx[3 * W + 6], gy[3 * W + 5]);

    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) img[y * W + x] = y < 4 ? 210 : 10;   /* bright above: gy < 0 */
    CHECK(canny_edges(img, W, H, 100, 200, edges) == DL_OK, "%s", dl_error_message());
    bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) bad += edges[y * W + x] != (y == 3 ? 255 : 0);
    CHECK(bad == 0, "horizontal step: %d pixels off the expected line y = 3", bad);

    /* a weaker step, 10 | 40: magnitude 4 * 30 = 120, above low but never
     * above high, so hysteresis has nothing to start from: no edges. With
     * high 110 the same line is strong. A flat image has no edges at all. */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) img[y * W + x] = x < 6 ? 10 : 40;
    CHECK(canny_edges(img, W, H, 100, 200, edges) == DL_OK && count_edges(edges, W * H) == 0,
          "weak-only step gave %d edge pixels", count_edges(edges, W * H));
    CHECK(canny_edges(img, W, H, 100, 110, edges) == DL_OK && count_edges(edges, W * H) == H && edges[5] == 255,
          "weak step with high 110: %d edge pixels, want the column x = 5", count_edges(edges, W * H));
    memset(img, 77, sizeof img);
    CHECK(canny_edges(img, W, H, 0, 0, edges) == DL_OK && count_edges(edges, W * H) == 0, "flat image has edges");
}

/* Hysteresis alone on a hand-made "thin" map (low 100, high 200):
 * a strong pixel, a diagonal chain of weak ones (8-connected, so kept), an
 * isolated weak pixel (dropped), a pixel exactly at low (not weak: the
 * comparison is strict) next to the chain. */
TEST(canny, hysteresis_by_hand)
{
    enum { W = 5, H = 4 };
    const int32_t thin[W * H] = {
        250, 0,   0,   0, 150,
        0,   150, 0,   0, 0,
        0,   0,   150, 100, 0,
        0,   0,   0,   0, 101,
    };
    const uint8_t want[W * H] = {
        255, 0,   0,   0, 0,
        0,   255, 0,   0, 0,
        0,   0,   255, 0, 0,
        0,   0,   0,   0, 0,
    };
    uint8_t edges[W * H];
    CHECK(canny_hysteresis(thin, W, H, 100, 200, edges) == DL_OK, "%s", dl_error_message());
    CHECK(count_diff(edges, want, W * H) == 0, "hysteresis: %d pixels differ", count_diff(edges, want, W * H));
    /* a pixel exactly at high is not strong; thresholds are rounded down
     * like OpenCV's cvFloor, so high 199.5 acts as 199 and 200 is strong */
    const int32_t two[2] = {200, 150};
    CHECK(canny_hysteresis(two, 2, 1, 100, 200, edges) == DL_OK && edges[0] == 0 && edges[1] == 0, "200 is not > 200");
    CHECK(canny_hysteresis(two, 2, 1, 100, 199.5f, edges) == DL_OK && edges[0] == 255 && edges[1] == 255,
          "high 199.5 should act as 199");
}

/* The direction bins: a pixel whose gradient is diagonal compares with its
 * diagonal neighbours, not with left/right. Centre magnitude 10, larger
 * left/right neighbours: kept only when the gradient is diagonal. */
TEST(canny, nms_direction_bins)
{
    const int32_t mag[9] = {0, 0, 0, 50, 10, 50, 0, 0, 0};
    int16_t gx[9] = {0}, gy[9] = {0};
    int32_t thin[9];
    gx[4] = 5; gy[4] = 5;          /* 45 degrees: compares (0,0) and (2,2) */
    CHECK(canny_nms(mag, gx, gy, 3, 3, thin) == DL_OK && thin[4] == 10, "45-degree gradient suppressed: %d", thin[4]);
    gx[4] = 5; gy[4] = 2;          /* 21.8 degrees: horizontal bin, compares left/right */
    CHECK(canny_nms(mag, gx, gy, 3, 3, thin) == DL_OK && thin[4] == 0, "21.8-degree gradient kept: %d", thin[4]);
    gx[4] = 5; gy[4] = 3;          /* 31 degrees: diagonal bin */
    CHECK(canny_nms(mag, gx, gy, 3, 3, thin) == DL_OK && thin[4] == 10, "31-degree gradient suppressed: %d", thin[4]);
    /* opposite signs: the other diagonal, (2,0) and (0,2) */
    const int32_t mag2[9] = {0, 0, 50, 0, 10, 0, 50, 0, 0};
    gx[4] = 5; gy[4] = 5;
    CHECK(canny_nms(mag2, gx, gy, 3, 3, thin) == DL_OK && thin[4] == 10, "same signs must not look at / diagonal");
    gx[4] = -5; gy[4] = 5;
    CHECK(canny_nms(mag2, gx, gy, 3, 3, thin) == DL_OK && thin[4] == 0, "opposite signs must look at / diagonal");
}

TEST(canny, errors)
{
    uint8_t img[16] = {0}, out[16];
    int16_t gx[16] = {0}, gy[16] = {0};
    int32_t mag[16] = {0};
    EXPECT_FAIL(canny_edges(img, 0, 4, 100, 200, out), DL_ERR_ARG, "canny", "width 0");
    EXPECT_FAIL(canny_edges(img, 4, -1, 100, 200, out), DL_ERR_ARG, "canny", "height -1");
    EXPECT_FAIL(canny_edges(img, 4, CANNY_MAX_SIDE + 1, 100, 200, out), DL_ERR_ARG, "canny", "huge height");
    EXPECT_FAIL(canny_edges(img, 4, 4, 200, 100, out), DL_ERR_ARG, "canny_edges", "low > high");
    EXPECT_FAIL(canny_edges(img, 4, 4, -1, 100, out), DL_ERR_ARG, "canny_edges", "negative low");
    EXPECT_FAIL(canny_edges(img, 4, 4, NAN, 100, out), DL_ERR_ARG, "canny_edges", "NaN low");
    EXPECT_FAIL(canny_edges(NULL, 4, 4, 100, 200, out), DL_ERR_ARG, "canny", "NULL image");
    EXPECT_FAIL(canny_edges(img, 4, 4, 100, 200, NULL), DL_ERR_ARG, "canny", "NULL output");
    EXPECT_FAIL(canny_edges_color(img, 2, 2, 5, 100, 200, out), DL_ERR_ARG, "canny", "5 channels");
    EXPECT_FAIL(canny_rgb_to_grey(img, 0, 1, out), DL_ERR_ARG, "canny_rgb_to_grey", "grey width 0");
    EXPECT_FAIL(canny_sobel(img, 4, 4, 0, gx, gy), DL_ERR_ARG, "canny_sobel", "0 channels");
    EXPECT_FAIL(canny_hysteresis(mag, 4, 4, 300, 200, out), DL_ERR_ARG, "canny_hysteresis", "hysteresis low > high");
    canny_gradients g;
    EXPECT_FAIL(canny_prepare(&g, img, 4, 0, 1), DL_ERR_ARG, "canny_prepare", "prepare height 0");
    CHECK(g.gx == NULL && g.thin == NULL, "failed prepare leaves arrays allocated");
    /* 1-pixel images are fine (replicated borders): no edges */
    CHECK(canny_edges(img, 1, 1, 0, 0, out) == DL_OK && out[0] == 0, "1x1 image: %s", dl_error_message());
}

/* ---- bin/canny ---------------------------------------------------------------- */

static int png_equals(const char *path, const uint8_t *want)
{
    dl_image img = {0};
    int ok = dl_image_load(&img, path, 0) == DL_OK && img.w == N && img.h == N && img.c == 1 &&
             count_diff(img.px, want, N * N) == 0;
    dl_image_free(&img);
    return ok;
}

TEST(canny, program)
{
    static fixture fx;
    if (!load_fixture(&fx)) return;
    char dir[512], out[700], cmd[2048];
    snprintf(dir, sizeof dir, "%s", dl_test_out_dir("canny"));
    snprintf(out, sizeof out, "%s/edges.png", dir);
    remove(out);
    snprintf(cmd, sizeof cmd, "%s/canny " FIX "/input.png %s", dl_test_bin_dir(), out);
    int rc = dl_test_run(cmd);
    if (!CHECK(rc == 0, "'%s' exited with %d", cmd, rc)) { dl_test_show_log(); return; }
    CHECK(png_equals(out, fx.edges_rgb), "bin/canny (RGB input, default 100/200) != cv2.Canny(img_rgb, 100, 200)");
    CHECK(dl_test_log_contains("260 edge pixels"), "bin/canny should report the edge pixel count");
    snprintf(cmd, sizeof cmd, "%s/canny --grey " FIX "/input.png %s --low 100 --high 200", dl_test_bin_dir(), out);
    rc = dl_test_run(cmd);
    CHECK(rc == 0 && png_equals(out, fx.edges_grey), "bin/canny --grey != cv2.Canny(gray, 100, 200)");

    snprintf(cmd, sizeof cmd, "%s/canny --help", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) == 0 && dl_test_log_contains("usage"), "--help");
    snprintf(cmd, sizeof cmd, "%s/canny " FIX "/input.png %s --low 200 --high 100", dl_test_bin_dir(), out);
    CHECK(dl_test_run(cmd) != 0 && dl_test_log_contains("low"), "low > high accepted");
    snprintf(cmd, sizeof cmd, "%s/canny " FIX "/input.png %s --low abc", dl_test_bin_dir(), out);
    CHECK(dl_test_run(cmd) != 0 && dl_test_log_contains("--low"), "--low abc accepted");
    snprintf(cmd, sizeof cmd, "%s/canny " FIX "/no_such.png %s", dl_test_bin_dir(), out);
    CHECK(dl_test_run(cmd) != 0 && dl_test_log_contains("no_such.png"), "a missing input should be named");
    snprintf(cmd, sizeof cmd, "%s/canny " FIX "/input.png", dl_test_bin_dir());
    CHECK(dl_test_run(cmd) != 0, "a missing OUT accepted");
}
