/* conv2d_direct_kernels.h - the register-blocked loops of conv2d_direct.c,
 * for one vector width. conv2d_direct.c includes this file once per width
 * (no include guard on purpose), after defining
 *
 *     VW        floats per vector (16 = one AVX-512 register, 8 = AVX2)
 *     VCOB      output channels per register block (forward, dx)
 *     VDWCOB    output channels per register block (dweight)
 *     VNAME(f)  the function name for this width, e.g. f##_v16
 *
 * so that 32- and 16-pixel rows use 16-wide vectors and 8-pixel rows 8-wide
 * ones. NV (vectors of pixels per tile) comes from conv2d_direct.c.
 * Read tile_forward first: it is the whole idea. */

typedef float VNAME(vf)  __attribute__((vector_size(VW * 4)));
typedef float VNAME(vfu) __attribute__((vector_size(VW * 4), aligned(4)));   /* unaligned access */

static inline VNAME(vf) VNAME(vload)(const float *p) { return *(const VNAME(vfu) *)p; }
static inline void VNAME(vstore)(float *p, VNAME(vf) v) { *(VNAME(vfu) *)p = v; }

/* One tile: nv vectors of output pixels (vector v starts at out_off[v] in
 * an output plane and reads the padded input from in_off[v]) x cob output
 * channels, all in registers while ci, kh, kw run:
 *
 *     acc[c][v] += xpad[ci][in_off[v] + kh*Wp + kw : +VW] * w[co0+c][ci][kh][kw]
 *
 * accumulate: add to out (the dx pass) instead of starting from the bias. */
static inline __attribute__((always_inline))
void VNAME(tile_forward)(float *out, size_t out_plane, const float *xp, size_t xp_plane, int Wp,
                         const float *wblk, int Cin, const int cob, const int nv,
                         const int *in_off, const int *out_off, const float *bias, int accumulate)
{
    VNAME(vf) acc[VCOB][NV];
    for (int c = 0; c < cob; c++)
        for (int v = 0; v < nv; v++) {
            if (accumulate) acc[c][v] = VNAME(vload)(out + c * out_plane + out_off[v]);
            else            acc[c][v] = (VNAME(vf)){0} + (bias ? bias[c] : 0.0f);
        }
    for (int ci = 0; ci < Cin; ci++) {
        const float *xc = xp + ci * xp_plane;          /* xpad[ci]                    */
        const float *wc = wblk + (size_t)ci * 9 * cob; /* w[block][ci]: [9 taps][cob] */
        for (int kh = 0; kh < 3; kh++)
            for (int kw = 0; kw < 3; kw++) {
                const float *xt = xc + kh * Wp + kw;
                VNAME(vf) xv[NV];
                for (int v = 0; v < nv; v++) xv[v] = VNAME(vload)(xt + in_off[v]);
                for (int c = 0; c < cob; c++) {
                    const float wv = wc[(kh * 3 + kw) * cob + c];
                    for (int v = 0; v < nv; v++) acc[c][v] += xv[v] * wv;
                }
            }
    }
    for (int c = 0; c < cob; c++)
        for (int v = 0; v < nv; v++) VNAME(vstore)(out + c * out_plane + out_off[v], acc[c][v]);
}

/* out[co0 .. co0+cob-1] of one image (cob = VCOB or 1): every tile of NV
 * vectors; the last tile of the plane may have fewer. */
static void VNAME(plane_forward)(float *out_n, const float *xp_n, const float *wblk, const float *bias,
                                 int Cin, int H, int W, int cob, int accumulate)
{
    const int Wp = W + 2, vpr = W / VW, nvec = H * vpr;
    const size_t out_plane = (size_t)H * W, xp_plane = (size_t)(H + 2) * Wp;
    for (int j0 = 0; j0 < nvec; j0 += NV) {
        int in_off[NV], out_off[NV];
        const int nv = nvec - j0 < NV ? nvec - j0 : NV;
        for (int v = 0; v < nv; v++) {
            const int row = (j0 + v) / vpr, col = (j0 + v) % vpr * VW;
            in_off[v] = row * Wp + col;                 /* tap (0, 0) of out(row, col) in xpad */
            out_off[v] = row * W + col;
        }
        /* constant cob and nv in each call: every variant keeps acc in registers */
#define TILE(COB_, NV_) VNAME(tile_forward)(out_n, out_plane, xp_n, xp_plane, Wp, wblk, Cin, COB_, NV_, \
                                            in_off, out_off, bias, accumulate)
        if (cob == VCOB) {
            switch (nv) {
            case 4: TILE(VCOB, 4); break;
            case 3: TILE(VCOB, 3); break;
            case 2: TILE(VCOB, 2); break;
            default: TILE(VCOB, 1); break;
            }
        } else {
            switch (nv) {
            case 4: TILE(1, 4); break;
            case 3: TILE(1, 3); break;
            case 2: TILE(1, 2); break;
            default: TILE(1, 1); break;
            }
        }
#undef TILE
    }
}

/* dweight for a chunk of nimg images, one block of cob output channels,
 * one input channel ci: acc[c][kw] sums dout[n, co0+c] * xpad[n, ci]
 * shifted by (kh, kw) over all pixel vectors of all the chunk's images, one
 * kh at a time (3 x cob accumulators: each x vector loaded serves cob
 * channels, so cob is larger here than in the forward), then adds the lanes into
 * dw_blk[c][ci][kh][kw]. Summing several images before the lane sum keeps
 * that sum cheap for small (8x8) images.
 * dout_n0 = dout[n0, co0], xp_c0 = xpad[n0, ci]; images are dout_img /
 * xp_img floats apart. */
static inline __attribute__((always_inline))
void VNAME(tile_dweight)(float *dw_blk, const float *dout_n0, size_t dout_img, const float *xp_c0, size_t xp_img,
                         int nimg, int ci, int Cin, int H, int W, const int cob)
{
    const int Wp = W + 2, vpr = W / VW;
    const size_t plane = (size_t)H * W;
    for (int kh = 0; kh < 3; kh++) {
        VNAME(vf) acc[VDWCOB][3];
        for (int c = 0; c < cob; c++) for (int kw = 0; kw < 3; kw++) acc[c][kw] = (VNAME(vf)){0};
        for (int i = 0; i < nimg; i++) {
            const float *xp_c = xp_c0 + i * xp_img, *dout_n = dout_n0 + i * dout_img;
            for (int row = 0; row < H; row++)
                for (int j = 0; j < vpr; j++) {
                    const float *xt = xp_c + (row + kh) * Wp + j * VW;
                    const VNAME(vf) x0 = VNAME(vload)(xt), x1 = VNAME(vload)(xt + 1), x2 = VNAME(vload)(xt + 2);
                    for (int c = 0; c < cob; c++) {
                        const VNAME(vf) d = VNAME(vload)(dout_n + c * plane + row * W + j * VW);
                        acc[c][0] += d * x0;
                        acc[c][1] += d * x1;
                        acc[c][2] += d * x2;
                    }
                }
        }
        for (int c = 0; c < cob; c++)
            for (int kw = 0; kw < 3; kw++) {
                float s = 0.0f;
                for (int l = 0; l < VW; l++) s += acc[c][kw][l];
                dw_blk[((size_t)c * Cin + ci) * 9 + kh * 3 + kw] += s;
            }
    }
}

/* dw_blk (the block's rows of dweight) for images n0 .. n0+nimg-1, every
 * input channel. dout [N, Cout, H, W], xp [N, Cin, H+2, W+2]. */
static void VNAME(block_dweight)(float *dw_blk, const float *dout, const float *xp, int n0, int nimg,
                                 int Cout, int co0, int Cin, int H, int W, int cob)
{
    const size_t plane = (size_t)H * W, plane_p = (size_t)(H + 2) * (W + 2);
    const float *dout_n0 = dout + ((size_t)n0 * Cout + co0) * plane;
    for (int ci = 0; ci < Cin; ci++) {
        const float *xp_c0 = xp + ((size_t)n0 * Cin + ci) * plane_p;
        if (cob == VDWCOB) VNAME(tile_dweight)(dw_blk, dout_n0, Cout * plane, xp_c0, Cin * plane_p, nimg, ci, Cin, H, W, VDWCOB);
        else             VNAME(tile_dweight)(dw_blk, dout_n0, Cout * plane, xp_c0, Cin * plane_p, nimg, ci, Cin, H, W, 1);
    }
}
