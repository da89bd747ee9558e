/* test_image.c - core/image: files, resampling, tensors, drawing, grids. */
#include "testing.h"
#include "../core/image.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void write_bytes(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (f) { fwrite(data, 1, n, f); fclose(f); }
}

static int count_pixels_not(const dl_image *img, unsigned char v)
{
    int n = 0;
    for (int i = 0; i < img->w * img->h; i++) {
        int differs = 0;
        for (int k = 0; k < img->c; k++) differs |= img->px[i * img->c + k] != v;
        n += differs;
    }
    return n;
}

TEST(image, save_load_round_trip)
{
    char path[600];
    snprintf(path, sizeof path, "%s/round_trip.png", dl_test_out_dir("image"));
    dl_test_rng rng = {12345};
    const int channels[3] = {1, 3, 4};
    for (int k = 0; k < 3; k++) {
        dl_image a, b;
        CHECK(dl_image_alloc(&a, 13, 7, channels[k]) == DL_OK, "alloc");
        for (int i = 0; i < 13 * 7 * channels[k]; i++) a.px[i] = (unsigned char)dl_test_int(&rng, 0, 255);
        CHECK(dl_image_save_png(&a, path) == DL_OK, "save: %s", dl_error_message());
        CHECK(dl_image_load(&b, path, 0) == DL_OK, "load: %s", dl_error_message());
        CHECK(b.w == 13 && b.h == 7 && b.c == channels[k], "loaded %dx%dx%d", b.w, b.h, b.c);
        CHECK(b.px && !memcmp(a.px, b.px, 13 * 7 * (size_t)channels[k]), "pixels differ after PNG round trip (c=%d)", channels[k]);
        dl_image_free(&a);
        dl_image_free(&b);
    }
    char tmp[620];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    CHECK(!dl_test_file_ok(tmp), "temporary file left behind");
}

TEST(image, load_shipped_photo)
{
    dl_image cat;
    CHECK(dl_image_load(&cat, "data/images/chelsea.png", 3) == DL_OK, "%s", dl_error_message());
    CHECK(cat.w == 451 && cat.h == 300 && cat.c == 3, "chelsea is 451x300 RGB, got %dx%dx%d", cat.w, cat.h, cat.c);
    dl_image gray;
    CHECK(dl_image_load(&gray, "data/images/chelsea.png", 1) == DL_OK && gray.c == 1, "load as gray");
    dl_image_free(&cat);
    dl_image_free(&gray);
}

TEST(image, bad_files_name_the_file)
{
    dl_image img;
    dl_status s = dl_image_load(&img, "no/such/picture.png", 3);
    CHECK(s == DL_ERR_IO, "missing file gave %s", dl_status_name(s));
    CHECK(strstr(dl_error_message(), "no/such/picture.png") != NULL, "message lacks the name: %s", dl_error_message());

    char path[600];
    snprintf(path, sizeof path, "%s/garbage.png", dl_test_out_dir("image"));
    write_bytes(path, "this is not a picture at all", 28);
    s = dl_image_load(&img, path, 3);
    CHECK(s == DL_ERR_FORMAT, "garbage gave %s", dl_status_name(s));
    CHECK(strstr(dl_error_message(), "garbage.png") != NULL, "message lacks the name: %s", dl_error_message());

    /* A PNG signature and an IHDR claiming 100000 x 100000 pixels. */
    const unsigned char huge[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n',
                                  0, 0, 0, 13, 'I', 'H', 'D', 'R',
                                  0, 1, 0x86, 0xa0, 0, 1, 0x86, 0xa0, 8, 2, 0, 0, 0,
                                  0, 0, 0, 0};
    snprintf(path, sizeof path, "%s/huge.png", dl_test_out_dir("image"));
    write_bytes(path, huge, sizeof huge);
    s = dl_image_load(&img, path, 3);
    CHECK(s == DL_ERR_FORMAT, "absurd size gave %s", dl_status_name(s));
    CHECK(strstr(dl_error_message(), "huge.png") != NULL, "message lacks the name: %s", dl_error_message());
    CHECK(img.px == NULL, "failed load leaves no pixels");

    /* A real PNG cut in half. */
    dl_image a;
    dl_image_alloc(&a, 64, 64, 3);
    for (int i = 0; i < 64 * 64 * 3; i++) a.px[i] = (unsigned char)(i * 7);
    snprintf(path, sizeof path, "%s/whole.png", dl_test_out_dir("image"));
    dl_image_save_png(&a, path);
    FILE *f = fopen(path, "rb");
    unsigned char buf[8192];
    size_t n = f ? fread(buf, 1, sizeof buf, f) : 0;
    if (f) fclose(f);
    snprintf(path, sizeof path, "%s/cut.png", dl_test_out_dir("image"));
    write_bytes(path, buf, n / 2);
    s = dl_image_load(&img, path, 3);
    CHECK(s == DL_ERR_FORMAT, "truncated PNG gave %s", dl_status_name(s));
    dl_image_free(&a);

    CHECK(dl_image_save_png(&img, "build/test_out/image/x.png") == DL_ERR_ARG, "saving an empty image");
    dl_image_alloc(&a, 4, 4, 3);
    s = dl_image_save_png(&a, "no/such/dir/x.png");
    CHECK(s == DL_ERR_IO && strstr(dl_error_message(), "no/such/dir/x.png"), "unwritable path: %s", dl_error_message());
    dl_image_free(&a);
}

TEST(image, resize_constant_stays_constant)
{
    dl_image a, b;
    dl_image_alloc(&a, 37, 23, 3);
    dl_image_fill(&a, 10, 200, 77);
    const int sizes[][2] = {{13, 7}, {50, 40}, {37, 23}, {1, 1}, {36, 5}};
    for (int k = 0; k < 5; k++) {
        CHECK(dl_image_resize(&b, &a, sizes[k][0], sizes[k][1]) == DL_OK, "resize");
        int bad = 0;
        for (int i = 0; i < b.w * b.h; i++)
            bad += b.px[i * 3] != 10 || b.px[i * 3 + 1] != 200 || b.px[i * 3 + 2] != 77;
        CHECK(bad == 0, "%d pixels changed when resizing a constant image to %dx%d", bad, b.w, b.h);
        dl_image_free(&b);
    }
    dl_image_free(&a);
}

TEST(image, resize_is_an_area_average)
{
    /* 1-D: [0, 90, 180] -> 2 pixels covering [0, 1.5) and [1.5, 3):
     * (0 + 0.5*90) / 1.5 = 30 and (0.5*90 + 180) / 1.5 = 150. */
    dl_image a, b;
    dl_image_alloc(&a, 3, 1, 1);
    a.px[0] = 0; a.px[1] = 90; a.px[2] = 180;
    dl_image_resize(&b, &a, 2, 1);
    CHECK(b.px[0] == 30 && b.px[1] == 150, "got %d %d, want 30 150", b.px[0], b.px[1]);
    dl_image_free(&a); dl_image_free(&b);
    /* A 0/255 checkerboard halves to flat 128 (127.5 rounded): no aliasing. */
    dl_image_alloc(&a, 8, 6, 1);
    for (int y = 0; y < 6; y++) for (int x = 0; x < 8; x++) a.px[y * 8 + x] = ((x + y) & 1) ? 255 : 0;
    dl_image_resize(&b, &a, 4, 3);
    int bad = 0;
    for (int i = 0; i < 12; i++) bad += b.px[i] != 128;
    CHECK(bad == 0, "checkerboard downscale not flat (%d pixels off, first %d)", bad, b.px[0]);
    dl_image_free(&a); dl_image_free(&b);
}

TEST(image, tensor_conversions)
{
    dl_test_rng rng = {7};
    dl_image img, back;
    dl_image_alloc(&img, 5, 4, 3);
    for (int i = 0; i < 5 * 4 * 3; i++) img.px[i] = (unsigned char)dl_test_int(&rng, 0, 255);
    img.px[0] = 0; img.px[1] = 255;
    dl_tensor t;
    dl_tensor_alloc(&t, 4, DL_SHAPE(1, 3, 4, 5));
    CHECK(dl_image_to_tensor(&t, &img) == DL_OK, "%s", dl_error_message());
    /* pixel (x=2, y=3) channel 1 sits at [0, 1, 3, 2] in CHW order */
    float want = img.px[(3 * 5 + 2) * 3 + 1] / 127.5f - 1.0f;
    CHECK(t.data[(1 * 4 + 3) * 5 + 2] == want, "CHW layout / scaling: %g vs %g", t.data[(1 * 4 + 3) * 5 + 2], want);
    CHECK(t.data[0] == -1.0f && t.data[4 * 5] == 1.0f, "0 -> -1 and 255 -> 1");
    CHECK(dl_tensor_to_image(&back, &t, 0) == DL_OK, "%s", dl_error_message());
    CHECK(back.w == 5 && back.h == 4 && back.c == 3 && !memcmp(back.px, img.px, 60), "round trip image -> tensor -> image");
    dl_image_free(&back);

    dl_tensor bad;
    dl_tensor_alloc(&bad, 4, DL_SHAPE(1, 1, 4, 5));
    CHECK(dl_image_to_tensor(&bad, &img) == DL_ERR_SHAPE, "channel mismatch not caught");
    dl_tensor_free(&bad);

    /* Clamping and rounding, and picking one item of a batch. */
    dl_tensor b;
    dl_tensor_alloc(&b, 4, DL_SHAPE(2, 1, 1, 4));
    const float vals[8] = {9, 9, 9, 9, 2.0f, -3.0f, 0.0f, 0.5f};
    memcpy(b.data, vals, sizeof vals);
    CHECK(dl_tensor_to_image(&back, &b, 1) == DL_OK && back.c == 1, "gray tensor");
    CHECK(back.px[0] == 255 && back.px[1] == 0 && back.px[2] == 128 && back.px[3] == 191,
          "clamp/round: %d %d %d %d (want 255 0 128 191)", back.px[0], back.px[1], back.px[2], back.px[3]);
    dl_image_free(&back);
    CHECK(dl_tensor_to_image(&back, &b, 2) == DL_ERR_ARG, "batch index out of range");
    dl_tensor two;
    dl_tensor_alloc(&two, 4, DL_SHAPE(1, 2, 3, 3));
    CHECK(dl_tensor_to_image(&back, &two, 0) == DL_ERR_SHAPE, "2 channels accepted");
    dl_tensor_free(&two);
    dl_tensor_free(&b);
    dl_tensor_free(&t);
    dl_image_free(&img);
}

TEST(image, text_draws_inside_its_box)
{
    dl_image img;
    dl_image_alloc(&img, 200, 60, 3);
    int w1 = dl_image_draw_text(&img, 10, 5, "t = 999", 255, 255, 255, 1);
    int n1 = count_pixels_not(&img, 0);
    CHECK(w1 == dl_text_width("t = 999", 1) && w1 > 20, "width %d", w1);
    CHECK(n1 > 20, "text drew only %d pixels", n1);
    /* every lit pixel lies inside the text box */
    int outside = 0;
    for (int y = 0; y < img.h; y++)
        for (int x = 0; x < img.w; x++)
            if (img.px[(y * img.w + x) * 3] && (x < 10 || x >= 10 + w1 || y < 5 || y >= 5 + 12)) outside++;
    CHECK(outside == 0, "%d pixels outside the text box", outside);
    dl_image_fill(&img, 0, 0, 0);
    dl_image_draw_text(&img, 10, 5, "t = 999", 255, 255, 255, 2);
    int n2 = count_pixels_not(&img, 0);
    CHECK(n2 == 4 * n1, "scale 2 should light 4x the pixels: %d vs %d", n2, n1);
    /* non-ASCII and control bytes must not crash (stb_easy_font indexes a table) */
    dl_image_draw_text(&img, -5, -3, "\x01\xff\xc3\xa9 ok\n2nd line\t", 255, 0, 0, 3);
    CHECK(dl_text_height("a\nb", 2) == 48, "two lines at scale 2 are 48 px, got %d", dl_text_height("a\nb", 2));
    dl_image_free(&img);
}

TEST(image, drawing_clips_and_blits)
{
    dl_image img, tile, big;
    dl_image_alloc(&img, 10, 8, 3);
    dl_image_fill_rect(&img, -5, -5, 8, 7, 255, 0, 0);   /* only 3x2 inside */
    CHECK(count_pixels_not(&img, 0) == 6, "clipped fill touched %d pixels", count_pixels_not(&img, 0));
    dl_image_fill_rect(&img, 8, 7, 100, 100, 0, 255, 0);
    CHECK(count_pixels_not(&img, 0) == 8, "clipped fill at the far corner");
    dl_image_alloc(&tile, 3, 2, 1);
    memset(tile.px, 200, 6);
    dl_image_blit(&img, &tile, 4, 3);                     /* gray into RGB */
    CHECK(img.px[(3 * 10 + 4) * 3 + 0] == 200 && img.px[(4 * 10 + 6) * 3 + 2] == 200, "gray blit");
    dl_image_blit(&img, &tile, 9, -1);                    /* mostly outside */
    CHECK(img.px[(0 * 10 + 9) * 3 + 1] == 200, "clipped blit");
    CHECK(dl_image_scale_nearest(&big, &tile, 3) == DL_OK && big.w == 9 && big.h == 6, "scale x3");
    CHECK(count_pixels_not(&big, 200) == 0, "nearest scale keeps values");
    dl_image_free(&big);
    CHECK(dl_image_scale_nearest(&big, &tile, 0) == DL_ERR_ARG, "factor 0 accepted");
    dl_image pad;
    CHECK(dl_image_pad(&pad, &tile, 2, 0) == DL_OK && pad.w == 7 && pad.h == 6, "pad");
    CHECK(pad.px[2 * 7 + 2] == 200 && pad.px[0] == 0 && pad.px[5 * 7 + 6] == 0, "pad placement");
    dl_image rgb;
    CHECK(dl_image_convert(&rgb, &tile, 3) == DL_OK && rgb.c == 3 && rgb.px[1] == 200, "gray -> rgb");
    dl_image gray;
    dl_image_fill(&rgb, 255, 0, 0);
    CHECK(dl_image_convert(&gray, &rgb, 1) == DL_OK, "rgb -> gray");
    CHECK(gray.px && gray.px[0] == 76, "red luma 0.299*255 = 76, got %d", gray.px ? gray.px[0] : -1);
    dl_image_free(&gray); dl_image_free(&rgb); dl_image_free(&pad);
    dl_image_free(&tile); dl_image_free(&img);
    CHECK(dl_image_alloc(&img, 0, 5, 3) == DL_ERR_ARG && dl_image_alloc(&img, 5, 5, 2) == DL_ERR_ARG, "bad alloc accepted");
}

TEST(image, grid_layout)
{
    const char *rows[2] = {"linear", "cosine"};
    const char *cols[3] = {"t=0", "t=500", "t=999"};
    dl_grid g = {.rows = 2, .cols = 3, .tile_w = 20, .tile_h = 10, .pad = 4, .text_scale = 1,
                 .title = "title", .row_labels = rows, .col_labels = cols};
    dl_image canvas, tile;
    CHECK(dl_grid_create(&canvas, &g) == DL_OK, "%s", dl_error_message());
    CHECK(canvas.w >= 3 * 20 + 2 * 4 + dl_text_width("linear", 1) && canvas.h >= 2 * 10 + 4 + 12 * 2,
          "canvas %dx%d too small", canvas.w, canvas.h);
    CHECK(count_pixels_not(&canvas, 255) > 30, "labels and title drawn");
    dl_image_alloc(&tile, 20, 10, 3);
    dl_image_fill(&tile, 0, 0, 255);
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 3; c++) dl_grid_place(&canvas, &g, r, c, &tile);
    int blue = 0;
    for (int i = 0; i < canvas.w * canvas.h; i++)
        blue += canvas.px[i * 3] == 0 && canvas.px[i * 3 + 1] == 0 && canvas.px[i * 3 + 2] == 255;
    CHECK(blue == 6 * 200, "six tiles of 200 pixels, found %d blue pixels (overlap or clipping)", blue);
    /* cell (1, 2) starts where the layout says */
    int x = g.origin_x + 2 * (20 + 4), y = g.origin_y + 1 * (10 + 4);
    CHECK(canvas.px[(y * canvas.w + x) * 3 + 2] == 255 && canvas.px[(y * canvas.w + x) * 3] == 0, "cell position");
    dl_image_free(&tile);
    dl_image_free(&canvas);
    dl_grid bad = {.rows = 0, .cols = 3, .tile_w = 5, .tile_h = 5};
    CHECK(dl_grid_create(&canvas, &bad) == DL_ERR_ARG, "0 rows accepted");
}
