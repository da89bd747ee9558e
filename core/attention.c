/* attention.c - see attention.h */
#include "attention.h"
#include "elementwise.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static dl_status check_attention(const dl_tensor *out, const dl_tensor *q, const dl_tensor *k,
                                 const dl_tensor *v, int heads, int causal)
{
    const char *op = "attention";
    if (!q || !q->data) return dl_fail(DL_ERR_ARG, "%s: q is missing (NULL tensor)", op);
    DL_TRY(dl_check_shape(q, op, "q", 3, DL_SHAPE(-1, -1, -1)));
    int64_t B = q->shape[0], Lq = q->shape[1], HD = q->shape[2];
    if (heads < 1 || HD % heads != 0)
        return dl_fail(DL_ERR_ARG, "%s: %lld channels cannot be split into %d heads", op, (long long)HD, heads);
    DL_TRY(dl_check_shape(k, op, "k", 3, DL_SHAPE(B, -1, HD)));
    int64_t Lk = k->shape[1];
    DL_TRY(dl_check_shape(v, op, "v", 3, DL_SHAPE(B, Lk, HD)));
    DL_TRY(dl_check_shape(out, op, "out", 3, DL_SHAPE(B, Lq, HD)));
    if (causal && Lq != Lk)
        return dl_fail(DL_ERR_SHAPE, "%s: causal masking needs as many queries as keys (Lq %lld, Lk %lld)",
                       op, (long long)Lq, (long long)Lk);
    if (Lq > INT32_MAX || Lk > INT32_MAX)
        return dl_fail(DL_ERR_ARG, "%s: sequence too long for BLAS int sizes", op);
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Reference: one query at a time, one score row of Lk floats. */

dl_status attention_forward_ref(dl_tensor *out, const dl_tensor *q, const dl_tensor *k,
                                const dl_tensor *v, int heads, int causal)
{
    DL_TRY(check_attention(out, q, k, v, heads, causal));
    int64_t B = q->shape[0], Lq = q->shape[1], Lk = k->shape[1], HD = q->shape[2];
    int64_t D = HD / heads;
    float scale = 1.0f / sqrtf((float)D);
    float *s = malloc((size_t)Lk * sizeof(float));
    if (!s) return dl_fail(DL_ERR_MEMORY, "attention: cannot allocate a score row of %lld floats", (long long)Lk);

    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t i = 0; i < Lq; i++) {
                const float *qi = q->data + (b * Lq + i) * HD + h * D;     /* [D] */
                int64_t nk = causal ? i + 1 : Lk;                        /* visible keys */
                /* scores s_j = q_i . k_j / sqrt(D) */
                float mx = -INFINITY;
                for (int64_t j = 0; j < nk; j++) {
                    const float *kj = k->data + (b * Lk + j) * HD + h * D;
                    float dot = 0.0f;
                    for (int64_t d = 0; d < D; d++) dot += qi[d] * kj[d];
                    s[j] = dot * scale;
                    if (s[j] > mx) mx = s[j];
                }
                /* softmax over the keys */
                float sum = 0.0f;
                for (int64_t j = 0; j < nk; j++) { s[j] = expf(s[j] - mx); sum += s[j]; }
                /* out_i = sum_j p_j v_j */
                float *oi = out->data + (b * Lq + i) * HD + h * D;
                for (int64_t d = 0; d < D; d++) {
                    float acc = 0.0f;
                    for (int64_t j = 0; j < nk; j++) acc += s[j] * v->data[(b * Lk + j) * HD + h * D + d];
                    oi[d] = acc / sum;
                }
            }
    free(s);
    return DL_OK;
}

/* ------------------------------------------------------------------ */
/* Fast: chunks of queries, two GEMMs per chunk. */

int attention_query_chunk(int Lq, int Lk)
{
    int64_t chunk = DL_ATTN_SCORE_BUDGET / (Lk > 0 ? Lk : 1);
    if (chunk > DL_ATTN_MAX_CHUNK) chunk = DL_ATTN_MAX_CHUNK;
    if (chunk < DL_ATTN_MIN_CHUNK) chunk = DL_ATTN_MIN_CHUNK;
    if (chunk > Lq) chunk = Lq;
    return (int)(chunk > 0 ? chunk : 1);
}

size_t attention_scratch_floats(int Lq, int Lk, int threads)
{
    if (threads < 1) threads = 1;
    return (size_t)threads * (size_t)attention_query_chunk(Lq, Lk) * (size_t)(Lk > 0 ? Lk : 0);
}

/* One (batch, head, chunk) task. S is this thread's [chunk, Lk] block. */
static void attention_chunk(float *S, const float *q, const float *k, const float *v, float *out,
                            int Lq, int Lk, int HD, int D, int chunk, int causal,
                            int64_t b, int64_t h, int64_t i0)
{
    int m = (int)(i0 + chunk <= Lq ? chunk : Lq - i0);     /* queries in this chunk */
    int nk = causal ? (int)(i0 + m) : Lk;                  /* keys any of them can see */
    const float *Qc = q + ((int64_t)b * Lq + i0) * HD + h * D;   /* [m, D], row stride HD */
    const float *K = k + (int64_t)b * Lk * HD + h * D;           /* [nk, D], row stride HD */
    const float *V = v + (int64_t)b * Lk * HD + h * D;           /* [nk, D], row stride HD */
    float *Oc = out + ((int64_t)b * Lq + i0) * HD + h * D;       /* [m, D], row stride HD */

    /* S[m, nk] = scale * Qc K^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, D,
                1.0f / sqrtf((float)D), Qc, HD, K, HD, 0.0f, S, nk);
    for (int r = 0; r < m; r++) {
        float *row = S + (int64_t)r * nk;
        int visible = causal ? (int)(i0 + r + 1) : nk;    /* keys j <= query i */
        softmax_row_inplace(row, visible);
        if (visible < nk) memset(row + visible, 0, (size_t)(nk - visible) * sizeof(float));
    }
    /* Oc[m, D] = S V */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, nk,
                1.0f, S, nk, V, HD, 0.0f, Oc, HD);
}

dl_status attention_forward(dl_tensor *out, const dl_tensor *q, const dl_tensor *k,
                            const dl_tensor *v, int heads, int causal)
{
    DL_TRY(check_attention(out, q, k, v, heads, causal));
    int B = (int)q->shape[0], Lq = (int)q->shape[1], Lk = (int)k->shape[1], HD = (int)q->shape[2];
    int D = HD / heads;
    int chunk = attention_query_chunk(Lq, Lk);
    int64_t nchunks = (Lq + chunk - 1) / chunk;
    int64_t tasks = (int64_t)B * heads * nchunks;
    int threads = dl_get_threads();
    if (threads > tasks) threads = (int)tasks;

    int blas_threads = openblas_get_num_threads();
    if (threads > 1) openblas_set_num_threads(1);
    int failed = 0;

    #pragma omp parallel num_threads(threads)
    {
        float *S = malloc((size_t)chunk * (size_t)Lk * sizeof(float));
        if (!S) {
            #pragma omp atomic write
            failed = 1;
        }
        /* dynamic: causal chunks near the end do more work than early ones */
        #pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < tasks; t++) {
            if (!S) continue;
            int64_t c = t % nchunks, bh = t / nchunks;
            attention_chunk(S, q->data, k->data, v->data, out->data, Lq, Lk, HD, D, chunk, causal,
                            bh / heads, bh % heads, c * chunk);
        }
        free(S);
    }
    if (threads > 1) openblas_set_num_threads(blas_threads);
    if (failed)
        return dl_fail(DL_ERR_MEMORY, "attention: cannot allocate %d x %d floats of score scratch", chunk, Lk);
    return DL_OK;
}
