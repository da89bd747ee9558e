/* embedding.h - a lookup table of learned vectors (PyTorch nn.Embedding).
 *
 *     table [num, dim]      one row per id (e.g. the toy U-Net's class tokens:
 *                           num_classes + 1 rows, the last one the "null" class)
 *     ids   n ints          each in 0 .. num-1 (checked)
 *     out   [n, dim]        out[i] = table[ids[i]]
 *
 * Backward: the rows were copied, so their gradients are added back:
 *     dtable[ids[i]] += dout[i]      (an id used twice gets both gradients)
 * dtable [num, dim] ACCUMULATES (+=); NULL means "not needed".
 *
 *     DL_TRY(embedding_forward(&tokens, &class_table, labels, batch));   // tokens [batch, 64]
 *     DL_TRY(embedding_backward(&class_table_grad, &dtokens, labels, batch));
 *
 * Reference (*_ref, element loops) and fast (row memcpy / row adds)
 * versions share one signature. out / dtable must not overlap the other
 * tensor.
 */
#ifndef DL_EMBEDDING_H
#define DL_EMBEDDING_H

#include "tensor.h"

dl_status embedding_forward_ref(dl_tensor *out, const dl_tensor *table, const int *ids, int n);
dl_status embedding_forward(dl_tensor *out, const dl_tensor *table, const int *ids, int n);

dl_status embedding_backward_ref(dl_tensor *dtable, const dl_tensor *dout, const int *ids, int n);
dl_status embedding_backward(dl_tensor *dtable, const dl_tensor *dout, const int *ids, int n);

#endif
