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

/* One key (the toy U-Net's cross-attention on a single class token): the
 * softmax over one score is exactly 1 whatever q and k are, so every
 * query's output is that key's value, and the scores pass no gradient back
 * (dq, dk get 0); dv sums dout over the queries. No GEMMs needed. */
static void single_key_forward(float *out, const float *v, int B, int Lq, int HD)
{
    #pragma omp parallel for schedule(static) if (dl_parallel_ok() && (int64_t)B * Lq * HD >= 65536)
    for (int b = 0; b < B; b++)
        for (int i = 0; i < Lq; i++) memcpy(out + ((size_t)b * Lq + i) * HD, v + (size_t)b * HD, sizeof(float) * HD);
}

static void single_key_backward(float *dv, const float *dout, int B, int Lq, int HD)
{
    #pragma omp parallel for schedule(static) if (dl_parallel_ok() && (int64_t)B * Lq * HD >= 65536)
    for (int b = 0; b < B; b++)
        for (int i = 0; i < Lq; i++) {
            const float *g = dout + ((size_t)b * Lq + i) * HD;
            float *d = dv + (size_t)b * HD;
            for (int c = 0; c < HD; c++) d[c] += g[c];
        }
}

dl_status attention_forward(dl_tensor *out, const dl_tensor *q, const dl_tensor *k,
                            const dl_tensor *v, int heads, int causal)
{
    DL_TRY(check_attention(out, q, k, v, heads, causal));
    int B = (int)q->shape[0], Lq = (int)q->shape[1], Lk = (int)k->shape[1], HD = (int)q->shape[2];
    if (Lk == 1) {
        single_key_forward(out->data, v->data, B, Lq, HD);
        return DL_OK;
    }
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

/* ================================================================== */
/* Backward                                                            */
/* ================================================================== */

/* The forward's checks (dout in out's place), then dq/dk/dv like q/k/v,
 * none overlapping an input or another gradient. */
static dl_status check_attention_backward(const char *op, const dl_tensor *dq, const dl_tensor *dk,
                                          const dl_tensor *dv, const dl_tensor *dout, const dl_tensor *q,
                                          const dl_tensor *k, const dl_tensor *v, int heads, int causal)
{
    /* q, k, v as the forward checks them (q stands in for out: same shape) */
    if (!q || !q->data) return dl_fail(DL_ERR_ARG, "%s: q is missing (NULL tensor)", op);
    DL_TRY(check_attention(q, q, k, v, heads, causal));
    DL_TRY(dl_check_shape(dout, op, "dout", 3, q->shape));
    if (dq) DL_TRY(dl_check_shape(dq, op, "dq", 3, q->shape));
    if (dk) DL_TRY(dl_check_shape(dk, op, "dk", 3, k->shape));
    if (dv) DL_TRY(dl_check_shape(dv, op, "dv", 3, v->shape));
    const dl_tensor *grads[3] = {dq, dk, dv}, *ins[4] = {dout, q, k, v};
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 4; j++)
            if (dl_tensors_overlap(grads[i], ins[j]))
                return dl_fail(DL_ERR_ARG, "%s: a gradient output overlaps an input; give it its own memory", op);
        for (int j = i + 1; j < 3; j++)
            if (dl_tensors_overlap(grads[i], grads[j]))
                return dl_fail(DL_ERR_ARG, "%s: two gradient outputs share memory", op);
    }
    return DL_OK;
}

/* Reference: one query at a time. Recompute its probability row p (as the
 * forward reference does), then push dO_i back through the three steps. */
dl_status attention_backward_ref(dl_tensor *dq, dl_tensor *dk, dl_tensor *dv, const dl_tensor *dout,
                                 const dl_tensor *q, const dl_tensor *k, const dl_tensor *v,
                                 int heads, int causal)
{
    DL_TRY(check_attention_backward("attention_backward_ref", dq, dk, dv, dout, q, k, v, heads, causal));
    int64_t B = q->shape[0], Lq = q->shape[1], Lk = k->shape[1], HD = q->shape[2];
    int64_t D = HD / heads;
    float scale = 1.0f / sqrtf((float)D);
    float *p = malloc((size_t)Lk * sizeof(float));       /* probabilities of one query */
    float *dp = malloc((size_t)Lk * sizeof(float));      /* dL/dp, then dL/ds */
    if (!p || !dp) {
        free(p);
        free(dp);
        return dl_fail(DL_ERR_MEMORY, "attention_backward: cannot allocate two rows of %lld floats", (long long)Lk);
    }
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t i = 0; i < Lq; i++) {
                const float *qi = q->data + (b * Lq + i) * HD + h * D;     /* [D] */
                const float *doi = dout->data + (b * Lq + i) * HD + h * D; /* dL/dout_i [D] */
                int64_t nk = causal ? i + 1 : Lk;                        /* visible keys */
                /* p = softmax(s), s_j = q_i . k_j * scale */
                float mx = -INFINITY, sum = 0.0f;
                for (int64_t j = 0; j < nk; j++) {
                    const float *kj = k->data + (b * Lk + j) * HD + h * D;
                    float dot = 0.0f;
                    for (int64_t d = 0; d < D; d++) dot += qi[d] * kj[d];
                    p[j] = dot * scale;
                    if (p[j] > mx) mx = p[j];
                }
                for (int64_t j = 0; j < nk; j++) { p[j] = expf(p[j] - mx); sum += p[j]; }
                for (int64_t j = 0; j < nk; j++) p[j] /= sum;
                /* out_i = sum_j p_j v_j:  dv_j += p_j dO_i,  dp_j = dO_i . v_j */
                float pdp = 0.0f;                                        /* sum_j p_j dp_j */
                for (int64_t j = 0; j < nk; j++) {
                    const float *vj = v->data + (b * Lk + j) * HD + h * D;
                    float dot = 0.0f;
                    for (int64_t d = 0; d < D; d++) {
                        dot += doi[d] * vj[d];
                        if (dv) dv->data[(b * Lk + j) * HD + h * D + d] += p[j] * doi[d];
                    }
                    dp[j] = dot;
                    pdp += p[j] * dot;
                }
                /* softmax backward: ds_j = p_j (dp_j - sum_l p_l dp_l); then
                 * s_j = scale q_i . k_j:  dq_i += scale ds_j k_j,  dk_j += scale ds_j q_i */
                for (int64_t j = 0; j < nk; j++) {
                    float ds = p[j] * (dp[j] - pdp) * scale;
                    const float *kj = k->data + (b * Lk + j) * HD + h * D;
                    for (int64_t d = 0; d < D; d++) {
                        if (dq) dq->data[(b * Lq + i) * HD + h * D + d] += ds * kj[d];
                        if (dk) dk->data[(b * Lk + j) * HD + h * D + d] += ds * qi[d];
                    }
                }
            }
    free(p);
    free(dp);
    return DL_OK;
}

size_t attention_backward_scratch_floats(int Lq, int Lk, int threads)
{
    return 2 * attention_scratch_floats(Lq, Lk, threads);
}

/* All query chunks of one (batch, head) pair, in order. P and dP are this
 * thread's [chunk, Lk] blocks. Pointers are to the whole tensors; every
 * matrix below is a [rows, D] slice with row stride HD. */
static void attention_backward_pair(float *P, float *dP, float *dq, float *dk, float *dv,
                                    const float *dout, const float *q, const float *k, const float *v,
                                    int Lq, int Lk, int HD, int D, int chunk, int causal, int64_t b, int64_t h)
{
    const float scale = 1.0f / sqrtf((float)D);
    const float *K = k + (int64_t)b * Lk * HD + h * D;          /* [Lk, D] */
    const float *V = v + (int64_t)b * Lk * HD + h * D;          /* [Lk, D] */
    float *dK = dk ? dk + (int64_t)b * Lk * HD + h * D : NULL;  /* [Lk, D] */
    float *dV = dv ? dv + (int64_t)b * Lk * HD + h * D : NULL;  /* [Lk, D] */
    for (int64_t i0 = 0; i0 < Lq; i0 += chunk) {
        int m = (int)(i0 + chunk <= Lq ? chunk : Lq - i0);     /* queries in this chunk */
        int nk = causal ? (int)(i0 + m) : Lk;                  /* keys any of them can see */
        const float *Qc = q + ((int64_t)b * Lq + i0) * HD + h * D;     /* [m, D] */
        const float *dOc = dout + ((int64_t)b * Lq + i0) * HD + h * D; /* [m, D] */

        /* P[m, nk] = softmax(scale Qc K^T), hidden keys set to 0 (as in the forward) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, D,
                    scale, Qc, HD, K, HD, 0.0f, P, nk);
        for (int r = 0; r < m; r++) {
            float *row = P + (int64_t)r * nk;
            int visible = causal ? (int)(i0 + r + 1) : nk;
            softmax_row_inplace(row, visible);
            if (visible < nk) memset(row + visible, 0, (size_t)(nk - visible) * sizeof(float));
        }
        /* dV[nk, D] += P^T dOc */
        if (dV)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, m,
                        1.0f, P, nk, dOc, HD, 1.0f, dV, HD);
        if (!dq && !dK) continue;
        /* dP[m, nk] = dOc V^T */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nk, D,
                    1.0f, dOc, HD, V, HD, 0.0f, dP, nk);
        /* dS = scale * P * (dP - rowsum(P * dP)), in place in dP (hidden keys: P = 0 -> dS = 0) */
        for (int r = 0; r < m; r++) {
            const float *pr = P + (int64_t)r * nk;
            float *dr = dP + (int64_t)r * nk;
            float dot = 0.0f;
            #pragma omp simd reduction(+:dot)
            for (int j = 0; j < nk; j++) dot += pr[j] * dr[j];
            #pragma omp simd
            for (int j = 0; j < nk; j++) dr[j] = scale * pr[j] * (dr[j] - dot);
        }
        /* dQc[m, D] += dS K   (these rows belong to this chunk only) */
        if (dq)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, D, nk,
                        1.0f, dP, nk, K, HD, 1.0f, dq + ((int64_t)b * Lq + i0) * HD + h * D, HD);
        /* dK[nk, D] += dS^T Qc */
        if (dK)
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, D, m,
                        1.0f, dP, nk, Qc, HD, 1.0f, dK, HD);
    }
}

dl_status attention_backward(dl_tensor *dq, dl_tensor *dk, dl_tensor *dv, const dl_tensor *dout,
                             const dl_tensor *q, const dl_tensor *k, const dl_tensor *v,
                             int heads, int causal)
{
    DL_TRY(check_attention_backward("attention_backward", dq, dk, dv, dout, q, k, v, heads, causal));
    if (!dq && !dk && !dv) return DL_OK;
    int B = (int)q->shape[0], Lq = (int)q->shape[1], Lk = (int)k->shape[1], HD = (int)q->shape[2];
    if (Lk == 1) {                              /* dq, dk: += 0 */
        if (dv) single_key_backward(dv->data, dout->data, B, Lq, HD);
        return DL_OK;
    }
    int D = HD / heads;
    int chunk = attention_query_chunk(Lq, Lk);
    int64_t pairs = (int64_t)B * heads;
    int threads = dl_get_threads();
    /* Too few pairs to share, or too little work to wake a thread team
     * (~ the flops of the five GEMMs): one pair after another, with
     * OpenBLAS threading each GEMM as it sees fit. */
    if (threads > pairs || (double)pairs * Lq * Lk * D < 65536.0) threads = 1;
    float *dqd = dq ? dq->data : NULL, *dkd = dk ? dk->data : NULL, *dvd = dv ? dv->data : NULL;

    /* All scratch up front, so a failure leaves the gradients untouched:
     * per thread a P block and (for dq / dk) a dP block of chunk x Lk. */
    const size_t block = (size_t)chunk * (size_t)Lk, per_thread = (dq || dk) ? 2 * block : block;
    float *scratch = malloc((size_t)threads * per_thread * sizeof(float));
    if (!scratch)
        return dl_fail(DL_ERR_MEMORY, "attention_backward: cannot allocate %d x %zu floats of scratch",
                       threads, per_thread);

    int blas_threads = openblas_get_num_threads();
    if (threads > 1) openblas_set_num_threads(1);
    #pragma omp parallel num_threads(threads) if (threads > 1)
    {
#ifdef _OPENMP
        float *P = scratch + (size_t)omp_get_thread_num() * per_thread;
#else
        float *P = scratch;
#endif
        float *dP = (dq || dk) ? P + block : NULL;
        #pragma omp for schedule(static)
        for (int64_t t = 0; t < pairs; t++)
            attention_backward_pair(P, dP, dqd, dkd, dvd, dout->data, q->data, k->data, v->data,
                                    Lq, Lk, HD, D, chunk, causal, t / heads, t % heads);
    }
    if (threads > 1) openblas_set_num_threads(blas_threads);
    free(scratch);
    return DL_OK;
}
