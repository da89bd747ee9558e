/* param.h - named parameters (weights + gradients) of a trainable model.
 *
 * Each parameter carries its diffusers state-dict name, so a student can
 * look the same tensor up in a PyTorch checkpoint:
 *
 *     dl_param *w;
 *     dl_params_add(&list, "down_blocks.0.resnets.0.conv1.weight", 4, DL_SHAPE(32, 32, 3, 3), &w);
 *     conv2d_forward(&y, &x, &w->value, ...);
 *     conv2d_backward(&dx, &w->grad, ...);          // gradients accumulate (+=)
 *
 * The list owns value and grad tensors. Pointers returned by dl_params_add
 * stay valid until dl_params_free (the list never moves its items: they are
 * allocated one by one).
 */
#ifndef DL_PARAM_H
#define DL_PARAM_H

#include "tensor.h"

#define DL_PARAM_NAME_MAX 128

typedef struct {
    char      name[DL_PARAM_NAME_MAX];
    dl_tensor value;   /* the weights */
    dl_tensor grad;    /* same shape; backward kernels add into it */
} dl_param;

typedef struct {
    dl_param **items;
    int        count, capacity;
} dl_param_list;

/* Add a zero-initialised parameter (and its zero gradient). Names must be unique. */
dl_status dl_params_add(dl_param_list *list, const char *name, int ndim, const int64_t shape[],
                        dl_param **out);
/* NULL if absent. */
dl_param *dl_params_find(const dl_param_list *list, const char *name);
void      dl_params_zero_grad(dl_param_list *list);
/* Total number of scalars in all values. */
int64_t   dl_params_numel(const dl_param_list *list);
void      dl_params_free(dl_param_list *list);

#endif
