/* timestep_embedding.c - see timestep_embedding.h */
#include "timestep_embedding.h"

#include <math.h>

/* exp(x) rounded the way PyTorch's CPU torch.exp rounds float32 (it uses
 * SLEEF's 1-ulp expf, which differs from the correctly rounded value for
 * about 1 input in 10). Same recipe: x = q ln2 + s with q = round(x / ln2)
 * and ln2 split in a high and a low part; e^s by a degree-6 polynomial
 * evaluated with fused multiply-adds; then scale by 2^q.
 * Valid for the frequencies here (x in [-104, 88]). */
static float torch_like_expf(float x)
{
    float q = rintf(x * 1.442695040888963407f);
    float s = fmaf(q, -0.693145751953125f, x);
    s = fmaf(q, -1.428606765330187045e-06f, s);
    float u = 0.000198527617612853646278381f;
    u = fmaf(u, s, 0.00139304355252534151077271f);
    u = fmaf(u, s, 0.00833336077630519866943359f);
    u = fmaf(u, s, 0.0416664853692054748535156f);
    u = fmaf(u, s, 0.166666671633720397949219f);
    u = fmaf(u, s, 0.5f);
    u = 1.0f + fmaf(s * s, u, s);
    return ldexpf(u, (int)q);
}

dl_status timestep_embedding_forward(dl_tensor *out, const float *timesteps, int n, int dim,
                                     int flip_sin_to_cos, float downscale_freq_shift,
                                     float scale, int max_period)
{
    const char *op = "timestep_embedding";
    if (!timesteps) return dl_fail(DL_ERR_ARG, "%s: timesteps is NULL", op);
    if (n < 1 || dim < 2) return dl_fail(DL_ERR_ARG, "%s: need n >= 1 and dim >= 2 (got n %d, dim %d)", op, n, dim);
    if (max_period < 2) return dl_fail(DL_ERR_ARG, "%s: max_period %d must be >= 2", op, max_period);
    int half = dim / 2;
    /* computed in double then rounded, as Python computes it before torch sees it */
    float denom = (float)((double)half - (double)downscale_freq_shift);
    if (!(denom != 0.0f)) return dl_fail(DL_ERR_ARG, "%s: half_dim - downscale_freq_shift is 0", op);
    DL_TRY(dl_check_shape(out, op, "out", 2, DL_SHAPE(n, dim)));

    /* Python's -math.log(max_period) is a double; torch uses it as float32. */
    float neg_log_period = (float)-log((double)max_period);
    for (int i = 0; i < n; i++) {
        float *row = out->data + (int64_t)i * dim;
        for (int j = 0; j < half; j++) {
            float exponent = (float)j * neg_log_period / denom;   /* two float32 ops, in torch's order */
            float freq = torch_like_expf(exponent);
            float arg = timesteps[i] * freq * scale;
            int sin_at = flip_sin_to_cos ? half + j : j;          /* flip: [cos, sin] */
            int cos_at = flip_sin_to_cos ? j : half + j;
            row[sin_at] = sinf(arg);
            row[cos_at] = cosf(arg);
        }
        if (dim % 2) row[dim - 1] = 0.0f;                         /* zero padding column */
    }
    return DL_OK;
}
