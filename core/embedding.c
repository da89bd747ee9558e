/* embedding.c - see embedding.h */
#include "embedding.h"

#include <string.h>

/* table [num, dim] and rows [n, dim] (out or dout), ids[0..n-1] in range. */
static dl_status embedding_check(const char *op, const dl_tensor *table, const char *table_name,
                                 const dl_tensor *rows, const char *rows_name, const int *ids, int n)
{
    DL_TRY(dl_check_shape(table, op, table_name, 2, DL_SHAPE(-1, -1)));
    if (n < 1) return dl_fail(DL_ERR_ARG, "%s: n is %d, must be >= 1", op, n);
    if (!ids) return dl_fail(DL_ERR_ARG, "%s: ids is NULL", op);
    DL_TRY(dl_check_shape(rows, op, rows_name, 2, DL_SHAPE(n, table->shape[1])));
    if (dl_tensors_overlap(table, rows))
        return dl_fail(DL_ERR_ARG, "%s: %s overlaps %s; give it its own memory", op, rows_name, table_name);
    const int64_t num = table->shape[0];
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= num)
            return dl_fail(DL_ERR_ARG, "%s: ids[%d] = %d is outside the table's 0 .. %lld",
                           op, i, ids[i], (long long)(num - 1));
    return DL_OK;
}

dl_status embedding_forward_ref(dl_tensor *out, const dl_tensor *table, const int *ids, int n)
{
    DL_TRY(embedding_check("embedding_ref", table, "table", out, "out", ids, n));
    const int64_t dim = table->shape[1];
    for (int i = 0; i < n; i++)
        for (int64_t d = 0; d < dim; d++)
            out->data[i * dim + d] = table->data[ids[i] * dim + d];   // out[i, d] = table[ids[i], d]
    return DL_OK;
}

dl_status embedding_forward(dl_tensor *out, const dl_tensor *table, const int *ids, int n)
{
    DL_TRY(embedding_check("embedding", table, "table", out, "out", ids, n));
    const size_t dim = (size_t)table->shape[1];
    for (int i = 0; i < n; i++)
        memcpy(out->data + (size_t)i * dim, table->data + (size_t)ids[i] * dim, dim * sizeof(float));
    return DL_OK;
}

dl_status embedding_backward_ref(dl_tensor *dtable, const dl_tensor *dout, const int *ids, int n)
{
    if (!dtable) return DL_OK;
    DL_TRY(embedding_check("embedding_backward_ref", dtable, "dtable", dout, "dout", ids, n));
    const int64_t dim = dtable->shape[1];
    for (int i = 0; i < n; i++)
        for (int64_t d = 0; d < dim; d++)
            dtable->data[ids[i] * dim + d] += dout->data[i * dim + d];
    return DL_OK;
}

/* Serial on purpose: two samples with the same id add into the same row,
 * and the whole op is n x dim adds (a batch of class tokens). */
dl_status embedding_backward(dl_tensor *dtable, const dl_tensor *dout, const int *ids, int n)
{
    if (!dtable) return DL_OK;
    DL_TRY(embedding_check("embedding_backward", dtable, "dtable", dout, "dout", ids, n));
    const size_t dim = (size_t)dtable->shape[1];
    for (int i = 0; i < n; i++) {
        float *d = dtable->data + (size_t)ids[i] * dim;
        const float *g = dout->data + (size_t)i * dim;
        for (size_t j = 0; j < dim; j++) d[j] += g[j];
    }
    return DL_OK;
}
