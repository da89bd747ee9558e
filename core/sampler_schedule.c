/* sampler_schedule.c - timesteps and sigmas for every sampler family,
 * computed the way diffusers' set_timesteps computes them (numpy in
 * double, torch in float32), so they match to the last bit.
 */
#include "sampler_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void dl__sigma_table(const dl_schedule *s, float *sig)
{
    /* torch: ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, all float32 */
    for (int t = 0; t < s->num_train_timesteps; t++) {
        float ab = s->alphas_cumprod[t];
        sig[t] = sqrtf((1.0f - ab) / ab);
    }
}

double dl__np_interp(const float *fp, int T, double x)
{
    if (x <= 0) return fp[0];
    if (x >= T - 1) return fp[T - 1];
    int j = (int)floor(x);                                  /* xp[j] <= x < xp[j+1] */
    double slope = ((double)fp[j + 1] - (double)fp[j]) / 1.0;
    return slope * (x - j) + (double)fp[j];
}

void dl__karras_sigmas(double sigma_min, double sigma_max, int n, double *out)
{
    const double rho = 7.0;
    double min_inv_rho = pow(sigma_min, 1 / rho), max_inv_rho = pow(sigma_max, 1 / rho);
    for (int i = 0; i < n; i++) {
        /* numpy's linspace(0, 1, n): i * (1 / (n - 1)), the last one exactly 1 */
        double ramp = n > 1 ? (i == n - 1 ? 1.0 : i * (1.0 / (n - 1))) : 0.0;
        out[i] = pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho);
    }
}

double dl__sigma_to_t(double sigma, const float *log_sig, int T)
{
    double log_sigma = log(sigma > 1e-10 ? sigma : 1e-10);
    /* the last table index whose log sigma is <= ours (0 if none), at most T-2 */
    int low = 0;
    for (int t = 0; t < T; t++)
        if (log_sig[t] <= log_sigma) low = t;
    if (low > T - 2) low = T - 2;
    float lo = log_sig[low], hi = log_sig[low + 1];
    double w = ((double)lo - log_sigma) / (double)(lo - hi);  /* numpy: lo - hi stays float32 */
    w = w < 0 ? 0 : (w > 1 ? 1 : w);
    return (1 - w) * low + w * (low + 1);
}

dl_status dl__euler_timesteps(const dl_sampler_config *cfg, int T, int N, double *out)
{
    if (cfg->timestep_spacing == DL_SPACING_LINSPACE) {
        /* np.linspace(0, T-1, N, dtype=float32)[::-1]: i * step in double, then float32 */
        if (N < 1 || N > T) return dl_fail(DL_ERR_ARG, "sampler timesteps: %d steps, must be in 1..%d", N, T);
        double step = N > 1 ? (double)(T - 1) / (N - 1) : 0;
        for (int i = 0; i < N; i++) {
            double v = (N > 1 && i == N - 1) ? (double)(T - 1) : i * step;
            out[N - 1 - i] = (float)v;
        }
        return DL_OK;
    }
    int *ts = malloc((size_t)N * sizeof(int));
    if (!ts) return dl_fail(DL_ERR_MEMORY, "sampler timesteps: out of memory");
    dl_status st = dl_sampler_timesteps(cfg, T, N, ts);
    for (int i = 0; st == DL_OK && i < N; i++) out[i] = ts[i];
    free(ts);
    return st;
}

dl_status dl__dpm_timesteps(const dl_sampler_config *cfg, int T, int N, int *out)
{
    if (N < 1 || N >= T) return dl_fail(DL_ERR_ARG, "sampler timesteps: %d steps, must be in 1..%d", N, T - 1);
    switch (cfg->timestep_spacing) {
    case DL_SPACING_LINSPACE: {        /* round(linspace(0, T-1, N+1))[::-1][:-1] */
        double step = (double)(T - 1) / N;
        for (int i = 0; i < N; i++) {
            int k = N - i;                                  /* point k of 0..N */
            double v = k == N ? (double)(T - 1) : k * step;
            out[i] = (int)nearbyint(v);
        }
        break;
    }
    case DL_SPACING_LEADING: {         /* (arange(0, N+1) * (T // (N+1)))[::-1][:-1] + offset */
        int ratio = T / (N + 1);
        for (int i = 0; i < N; i++) out[i] = (N - i) * ratio + cfg->steps_offset;
        break;
    }
    case DL_SPACING_TRAILING:          /* the same as DDIM's */
        return dl_sampler_timesteps(cfg, T, N, out);
    default:
        return dl_fail(DL_ERR_ARG, "sampler timesteps: bad spacing %d", (int)cfg->timestep_spacing);
    }
    for (int i = 0; i < N; i++)
        if (out[i] < 0 || out[i] >= T)
            return dl_fail(DL_ERR_ARG, "sampler timesteps: %s spacing with %d steps and steps_offset %d gives t = %d, "
                           "outside [0, %d)", dl_spacing_names[cfg->timestep_spacing], N, cfg->steps_offset, out[i], T);
    return DL_OK;
}

dl_status dl__lcm_timesteps(const dl_sampler_config *cfg, int T, int N, int *out)
{
    int orig = cfg->original_inference_steps;
    if (orig < 1 || orig > T)
        return dl_fail(DL_ERR_ARG, "lcm timesteps: original_inference_steps = %d, must be in 1..%d", orig, T);
    if (N < 1 || N > orig)
        return dl_fail(DL_ERR_ARG, "lcm timesteps: %d steps, must be in 1..%d (original_inference_steps)", N, orig);
    /* the distillation grid, descending: k*orig - 1, ..., 2k - 1, k - 1 with k = T // orig */
    int k = T / orig;
    for (int i = 0; i < N; i++) {
        /* index floor(linspace(0, orig, N, endpoint=False)[i]) = floor(i * orig / N) */
        int idx = (int)floor(i * ((double)orig / N));
        out[i] = (orig - idx) * k - 1;
    }
    return DL_OK;
}

void dl__x0_sigma_view(dl_prediction_type type, float sigma, const float *x, const float *model_out,
                       float *x0, int64_t n)
{
    if (type == DL_PREDICT_V) {
        float c_out = -sigma / sqrtf(sigma * sigma + 1.0f), c_in = sigma * sigma + 1.0f;
        for (int64_t i = 0; i < n; i++) x0[i] = model_out[i] * c_out + x[i] / c_in;
    } else {
        for (int64_t i = 0; i < n; i++) x0[i] = x[i] - sigma * model_out[i];
    }
}

float *dl__hist_push(dl_sampler *s, int cap)
{
    if (s->hist_len < cap) return s->hist[s->hist_len++].data;
    dl_tensor oldest = s->hist[0];                      /* recycle the oldest buffer */
    memmove(&s->hist[0], &s->hist[1], (size_t)(cap - 1) * sizeof(dl_tensor));
    s->hist[cap - 1] = oldest;
    return oldest.data;
}

dl_status dl__alloc_sigmas(dl_sampler *s, int n)
{
    free(s->sigmas);
    s->sigmas = malloc((size_t)n * sizeof(float));
    s->num_sigmas = s->sigmas ? n : 0;
    return s->sigmas ? DL_OK : dl_fail(DL_ERR_MEMORY, "sampler: out of memory");
}
