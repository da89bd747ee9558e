/* conv2d_direct_kernels.h - the register-blocked loops of conv2d_direct.c,
 * for one vector width. conv2d_direct.c includes this file once per width
 * (no include guard on purpose), after defining
 *
 *     VW        floats per vector (16 = one AVX-512 register, 8 = AVX2)
 *     VCOB      output channels per register block (forward, dx)
 *     VDWCOB    output channels per register block (dweight)
 *     VNAME(f)  the function name for this width, e.g. f##_v16
 *
 * NV (vectors of pixels per tile) and the dconv_view type (how an input
 * is laid out: the pixel and tap offsets) come from conv2d_direct.c.
 * Read tile_forward first: it is the whole idea. */

typedef float VNAME(vf)  __attribute__((vector_size(VW * 4)));
typedef float VNAME(vfu) __attribute__((vector_size(VW * 4), aligned(4)));   /* unaligned access */

static inline VNAME(vf) VNAME(vload)(const float *p) { return *(const VNAME(vfu) *)p; }
static inline void VNAME(vstore)(float *p, VNAME(vf) v) { *(VNAME(vfu) *)p = v; }

/* One tile: nv vectors of output pixels (vector v is at out_off[v] in an
 * output plane and reads its input at in_off[v]) x cob output channels,
 * all in registers while ci and the taps run:
 *
 *     acc[c][v] += in[ci][in_off[v] + tap_off[t] : +VW] * w[co0+c][ci][t]
 *
 * ntaps = 9 for a 3x3 kernel, 1 for a 1x1 one (or an im2col'd input).
 * The accumulators start from bias[c] (if not NULL) plus, if init is not
 * NULL, the plane init (the same layout as out): init = out adds to out
 * (the dx pass), init = another tensor fuses a residual add. */
static inline __attribute__((always_inline))
void VNAME(tile_forward)(float *out, size_t out_plane, const float *in, size_t in_plane,
                         const float *wblk, int Cin, const int cob, const int nv, const int ntaps,
                         const int *tap_off, const int *in_off, const int *out_off, const float *bias,
                         const float *init)
{
    VNAME(vf) acc[VCOB][NV];
    for (int c = 0; c < cob; c++)
        for (int v = 0; v < nv; v++) {
            acc[c][v] = (VNAME(vf)){0} + (bias ? bias[c] : 0.0f);
            if (init) acc[c][v] += VNAME(vload)(init + c * out_plane + out_off[v]);
        }
    for (int ci = 0; ci < Cin; ci++) {
        const float *xc = in + ci * in_plane;              /* in[ci]                      */
        const float *wc = wblk + (size_t)ci * ntaps * cob; /* w[block][ci]: [taps][cob]   */
        for (int t = 0; t < ntaps; t++) {
            const float *xt = xc + tap_off[t];
            VNAME(vf) xv[NV];
            for (int v = 0; v < nv; v++) xv[v] = VNAME(vload)(xt + in_off[v]);
            for (int c = 0; c < cob; c++) {
                const float wv = wc[t * cob + c];
                for (int v = 0; v < nv; v++) acc[c][v] += xv[v] * wv;
            }
        }
    }
    for (int c = 0; c < cob; c++)
        for (int v = 0; v < nv; v++) VNAME(vstore)(out + c * out_plane + out_off[v], acc[c][v]);
}

/* out[co0 .. co0+cob-1] of one image (cob = VCOB or 1): every tile of NV
 * vectors; the last tile of the plane may have fewer. */
static void VNAME(plane_forward)(float *out_n, const float *in_n, const float *wblk, const float *bias,
                                 int Cin, const dconv_view *g, int cob, const float *init_n)
{
    const int nvec = g->P / VW;
    for (int j0 = 0; j0 < nvec; j0 += NV) {
        int in_off[NV], out_off[NV];
        const int nv = nvec - j0 < NV ? nvec - j0 : NV;
        for (int v = 0; v < nv; v++) {
            out_off[v] = (j0 + v) * VW;
            in_off[v] = dconv_in_off(g, out_off[v]);
        }
        /* constant cob, nv and ntaps in each call: every variant keeps acc in registers */
#define TILE(COB_, NV_, T_) VNAME(tile_forward)(out_n, g->P, in_n, g->in_plane, wblk, Cin, COB_, NV_, T_, \
                                                g->tap_off, in_off, out_off, bias, init_n)
#define TILES(COB_, T_)                              \
        switch (nv) {                                \
        case 4: TILE(COB_, 4, T_); break;            \
        case 3: TILE(COB_, 3, T_); break;            \
        case 2: TILE(COB_, 2, T_); break;            \
        default: TILE(COB_, 1, T_); break;           \
        }
        if (g->ntaps == 9) {
            if (cob == VCOB) { TILES(VCOB, 9) } else { TILES(1, 9) }
        } else {
            if (cob == VCOB) { TILES(VCOB, 1) } else { TILES(1, 1) }
        }
#undef TILES
#undef TILE
    }
}

/* dweight, one register tile: cob output channels x ng (1..3) inputs, over
 * `count` consecutive pixel vectors starting at position `at` (they may run
 * on into the next images). Input k is the plane at x_c + off[k]: for a
 * 3x3 kernel the three taps kw = 0, 1, 2 of one kernel row, for a 1-tap
 * view three consecutive input channels.
 *
 *     acc[c][k] += dout[n, co0+c, p : p+VW] * input_k[n, in_off(p) : +VW]
 *
 * Each input vector loaded serves cob channels (so cob is larger here than
 * in the forward). At the end acc is added to the running vector sums
 * vacc[k][c] in memory; their lanes are added up once, at the very end, by
 * dweight_view. Chunks are short (DW_CHUNK_PIXELS) so that the dout they
 * read stays in the L1 cache while every input channel goes by. */
static inline __attribute__((always_inline))
void VNAME(tile_dweight)(VNAME(vf) *vacc, const float *dout_c0, size_t dout_img, size_t dout_ch, const float *x_c,
                         size_t in_img, const ptrdiff_t *off, const dconv_view *g, dconv_pos at, int count,
                         const int cob, const int ng)
{
    VNAME(vf) acc[VDWCOB][3];
    for (int c = 0; c < cob; c++) for (int k = 0; k < ng; k++) acc[c][k] = (VNAME(vf)){0};
    for (int q = 0; q < count; q++) {
        const float *xt = x_c + at.n * in_img + at.run * (size_t)g->in_row + at.col;
        const float *dt = dout_c0 + at.n * dout_img + at.run * (size_t)g->run + at.col;
        VNAME(vf) xk[3];
        for (int k = 0; k < ng; k++) xk[k] = VNAME(vload)(xt + off[k]);
        for (int c = 0; c < cob; c++) {
            const VNAME(vf) d = VNAME(vload)(dt + c * dout_ch);
            for (int k = 0; k < ng; k++) acc[c][k] += d * xk[k];
        }
        dconv_pos_next(&at, g, VW);
    }
    for (int k = 0; k < ng; k++)
        for (int c = 0; c < cob; c++) vacc[k * cob + c] += acc[c][k];
}

/* One chunk of `count` vectors from `at`, one block of cob output channels
 * at co0, every input channel: vacc_blk [Cin][ntaps][cob] vectors. The
 * operands and their strides are in src (see dconv_dw_src). */
static void VNAME(block_dweight)(VNAME(vf) *vacc_blk, const dconv_dw_src *src, dconv_pos at, int count,
                                 int co0, int Cin, const dconv_view *g, int cob)
{
    const float *dout_c0 = src->dout + co0 * src->dout_ch;
#define DW(COB_, NG_) VNAME(tile_dweight)(v, dout_c0, src->dout_img, src->dout_ch, x_c, src->in_img, off, g, at, \
                                          count, COB_, NG_)
    if (g->ntaps == 9) {
        for (int ci = 0; ci < Cin; ci++)
            for (int kh = 0; kh < 3; kh++) {       /* one kernel row: taps kw = 0, 1, 2 */
                const float *x_c = src->in + ci * src->in_ch;
                const ptrdiff_t off[3] = {g->tap_off[kh * 3], g->tap_off[kh * 3 + 1], g->tap_off[kh * 3 + 2]};
                VNAME(vf) *v = vacc_blk + ((size_t)ci * 9 + kh * 3) * cob;
                if (cob == VDWCOB) DW(VDWCOB, 3); else DW(1, 3);
            }
    } else {
        for (int ci = 0; ci < Cin; ci += 3) {      /* three input channels at a time */
            const float *x_c = src->in + ci * src->in_ch;
            const int ng = Cin - ci < 3 ? Cin - ci : 3;
            const ptrdiff_t off[3] = {0, (ptrdiff_t)src->in_ch, 2 * (ptrdiff_t)src->in_ch};
            VNAME(vf) *v = vacc_blk + (size_t)ci * cob;
            if (cob == VDWCOB) { if (ng == 3) DW(VDWCOB, 3); else if (ng == 2) DW(VDWCOB, 2); else DW(VDWCOB, 1); }
            else               { if (ng == 3) DW(1, 3);      else if (ng == 2) DW(1, 2);      else DW(1, 1); }
        }
    }
#undef DW
}

/* The lane sums: dw_blk[c][i] += sum of the lanes of vacc_blk[i][c]
 * (i = ci * ntaps + t, cob channels, m = Cin * ntaps). */
static void VNAME(block_dweight_sum)(float *dw_blk, const VNAME(vf) *vacc_blk, int m, int cob)
{
    for (int i = 0; i < m; i++)
        for (int c = 0; c < cob; c++) {
            float s = 0.0f;
            for (int l = 0; l < VW; l++) s += vacc_blk[(size_t)i * cob + c][l];
            dw_blk[(size_t)c * m + i] += s;
        }
}
