/* sample_metrics.c - see sample_metrics.h */
#include "sample_metrics.h"

#include <math.h>
#include <stdlib.h>

dl_status sample_judge_count(mnist_classifier *clf, const dl_tensor *x, const int *labels, int *correct)
{
    DL_TRY(dl_check_shape(x, "sample_judge_count", "x", 4, DL_SHAPE(-1, 1, -1, -1)));
    const int n = (int)x->shape[0];
    int *pred = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (!pred) return dl_fail(DL_ERR_MEMORY, "sample_judge_count: out of memory for %d labels", n);
    dl_status s = mnist_classifier_predict(clf, x, pred, NULL);
    if (s == DL_OK) {
        *correct = 0;
        for (int i = 0; i < n; i++) *correct += pred[i] == labels[i];
    }
    free(pred);
    return s;
}

double sample_diversity(const float *x, int n, int dim)
{
    double sum = 0;
    long pairs = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            double d = 0;
            for (int k = 0; k < dim; k++) {
                double e = (double)x[(size_t)i * dim + k] - x[(size_t)j * dim + k];
                d += e * e;
            }
            sum += sqrt(d / dim);
            pairs++;
        }
    return pairs ? sum / pairs : 0;
}
