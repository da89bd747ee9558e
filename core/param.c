/* param.c - see param.h */
#include "param.h"

#include <stdlib.h>
#include <string.h>

dl_status dl_params_add(dl_param_list *list, const char *name, int ndim, const int64_t shape[],
                        dl_param **out)
{
    if (out) *out = NULL;
    if (!name || !name[0] || strlen(name) >= DL_PARAM_NAME_MAX)
        return dl_fail(DL_ERR_ARG, "params: bad parameter name '%s'", name ? name : "(null)");
    if (dl_params_find(list, name))
        return dl_fail(DL_ERR_ARG, "params: parameter '%s' added twice", name);
    if (list->count == list->capacity) {
        int cap = list->capacity ? 2 * list->capacity : 64;
        dl_param **items = realloc(list->items, sizeof *items * (size_t)cap);
        if (!items) return dl_fail(DL_ERR_MEMORY, "params: out of memory");
        list->items = items;
        list->capacity = cap;
    }
    dl_param *p = calloc(1, sizeof *p);
    if (!p) return dl_fail(DL_ERR_MEMORY, "params: out of memory");
    strcpy(p->name, name);
    dl_status s = dl_tensor_alloc(&p->value, ndim, shape);
    if (s == DL_OK) s = dl_tensor_alloc(&p->grad, ndim, shape);
    if (s != DL_OK) {
        dl_tensor_free(&p->value);
        free(p);
        return dl_fail(s, "params: cannot allocate '%s': %s", name, dl_error_message());
    }
    list->items[list->count++] = p;
    if (out) *out = p;
    return DL_OK;
}

dl_param *dl_params_find(const dl_param_list *list, const char *name)
{
    for (int i = 0; i < list->count; i++)
        if (!strcmp(list->items[i]->name, name)) return list->items[i];
    return NULL;
}

void dl_params_zero_grad(dl_param_list *list)
{
    for (int i = 0; i < list->count; i++) dl_tensor_fill(&list->items[i]->grad, 0.0f);
}

int64_t dl_params_numel(const dl_param_list *list)
{
    int64_t n = 0;
    for (int i = 0; i < list->count; i++) n += list->items[i]->value.numel;
    return n;
}

void dl_params_free(dl_param_list *list)
{
    for (int i = 0; i < list->count; i++) {
        dl_tensor_free(&list->items[i]->value);
        dl_tensor_free(&list->items[i]->grad);
        free(list->items[i]);
    }
    free(list->items);
    memset(list, 0, sizeof *list);
}
