/* attention.h - multi-head scaled-dot-product attention (diffusers layout).
 *
 *     q   [B, Lq, H*D]     queries (already projected by to_q)
 *     k   [B, Lk, H*D]     keys
 *     v   [B, Lk, H*D]     values
 *     out [B, Lq, H*D]     (preallocated; must not overlap q, k or v)
 *
 * Head h uses channels h*D .. h*D+D-1 of every token (diffusers'
 * head_to_batch_dim does exactly this split). For each batch b, head h,
 * query i:
 *
 *     s_j   = (q_i . k_j) / sqrt(D)                      j = 0 .. Lk-1
 *     p     = softmax(s)        (over the keys)
 *     out_i = sum_j p_j v_j
 *
 * causal = 1 hides the keys after the query (j > i), as in the CLIP text
 * encoder; it needs Lq == Lk. Self-attention (q, k, v from the same tokens)
 * and cross-attention (k, v from the 77 text tokens) are the same call.
 *
 * Fast version, per (batch, head, chunk of queries):
 *     S[chunk, Lk] = Qc K^T * scale   one cblas_sgemm, reading q and k in
 *                                     place (leading dimension H*D)
 *     softmax over each row of S      (vectorized exp)
 *     Oc = S V                        one cblas_sgemm, written in place
 * The (b, h, chunk) tasks are spread over the OpenMP threads, each running
 * single-threaded OpenBLAS (OpenBLAS is set to 1 thread for the duration of
 * the call and restored after: the pthread OpenBLAS build must not be
 * entered from several threads at once while it runs its own threads).
 * Measured at 4096 x 4096: ~3x faster than running the tasks one by one with
 * OpenBLAS threading each GEMM (there the softmax runs on one core).
 *
 * Scratch memory bound: each thread owns ONE score block of
 * chunk x Lk floats, never the full Lq x Lk matrix. The chunk is chosen so
 * that chunk * Lk <= DL_ATTN_SCORE_BUDGET floats, clamped to
 * [DL_ATTN_MIN_CHUNK, DL_ATTN_MAX_CHUNK] queries. Total scratch
 * <= threads * chunk * Lk floats, see attention_scratch_floats():
 *     Lq = Lk = 4096 (64x64 self-attention): chunk 256, 4 MiB per thread
 *     (the full score matrices of one image would be 8 heads x 64 MiB).
 * Why 4 MiB and not a block that fits L2 (2 MiB here)? Measured on the
 * 2-core development machine at 4096 x 4096: chunk 256 ran in ~345 ms,
 * chunk 128 in ~385 ms, chunk 64 (1 MiB, in L2) in ~405 ms: taller GEMMs
 * are more efficient, and the block is re-read from L2/L3 only twice.
 */
#ifndef DL_ATTENTION_H
#define DL_ATTENTION_H

#include <stddef.h>

#include "tensor.h"

/* (-D on the compiler command line to experiment) */
#ifndef DL_ATTN_SCORE_BUDGET
#define DL_ATTN_SCORE_BUDGET (1024 * 1024)  /* floats per thread (4 MiB) */
#endif
#ifndef DL_ATTN_MIN_CHUNK
#define DL_ATTN_MIN_CHUNK 16
#endif
#ifndef DL_ATTN_MAX_CHUNK
#define DL_ATTN_MAX_CHUNK 256
#endif

dl_status attention_forward_ref(dl_tensor *out, const dl_tensor *q, const dl_tensor *k,
                                const dl_tensor *v, int heads, int causal);
dl_status attention_forward(dl_tensor *out, const dl_tensor *q, const dl_tensor *k,
                            const dl_tensor *v, int heads, int causal);

/* Queries per block in the fast version (<= Lq). */
int attention_query_chunk(int Lq, int Lk);
/* Upper bound of the fast version's scratch, in floats, with `threads`
 * threads: threads * attention_query_chunk(Lq, Lk) * Lk. */
size_t attention_scratch_floats(int Lq, int Lk, int threads);

/* ------------------------------------------------------------------ */
/* Backward (training). Given dout = dL/dout [B, Lq, H*D], for each batch b
 * and head h, with P = softmax(S), S = scale Q K^T (recomputed, nothing is
 * cached) and O = P V:
 *
 *     dV += P^T dO                       [Lk, D]
 *     dP  = dO V^T                       [Lq, Lk]
 *     dS  = P * (dP - rowsum(dP * P))    (softmax backward, row by row)
 *     dQ += scale dS K                   [Lq, D]
 *     dK += scale dS^T Q                 [Lk, D]
 *
 * dq, dk, dv have the shapes of q, k, v, ACCUMULATE (+=) and may be NULL
 * (if dq and dk are both NULL, dP and dS are never computed). They must not
 * overlap the inputs. causal as in the forward.
 *
 * Fast version: the forward's query chunks, five sgemms per chunk. dV and
 * dK receive contributions from EVERY query chunk of a (b, h) pair, so the
 * threads split the (b, h) pairs (each walks its chunks in order, and no
 * two threads write the same rows of dk / dv); with fewer pairs than
 * threads the pairs run one after another with multi-threaded OpenBLAS.
 * Scratch bound: each thread owns a P block and a dP block of
 * chunk x Lk floats (chunk = attention_query_chunk(Lq, Lk)), so
 *     attention_backward_scratch_floats(Lq, Lk, threads) = 2 x threads x chunk x Lk
 * (SD 64x64 self-attention, 2 threads: 16 MiB; toy U-Net L 64: 64 KiB).
 */
dl_status attention_backward_ref(dl_tensor *dq, dl_tensor *dk, dl_tensor *dv, const dl_tensor *dout,
                                 const dl_tensor *q, const dl_tensor *k, const dl_tensor *v,
                                 int heads, int causal);
dl_status attention_backward(dl_tensor *dq, dl_tensor *dk, dl_tensor *dv, const dl_tensor *dout,
                             const dl_tensor *q, const dl_tensor *k, const dl_tensor *v,
                             int heads, int causal);
size_t attention_backward_scratch_floats(int Lq, int Lk, int threads);

#endif
