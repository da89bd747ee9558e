/* sample_metrics.h - two numbers for a batch of generated digits.
 *
 *   judged accuracy  the share of samples that the project's MNIST
 *                    classifier (core/mnist_classifier.h, 98.7% on the test
 *                    set) labels as the class they were asked to be;
 *   diversity        the mean over pairs (i < j) of the RMS distance
 *                    ||x_i - x_j|| / sqrt(dim), pixels in [-1, 1]: 0 when
 *                    all samples are the same picture.
 *
 * Guidance trades one for the other: lesson 05 and bench_toy_quality plot
 * both against the guidance scale.
 */
#ifndef DL_SAMPLE_METRICS_H
#define DL_SAMPLE_METRICS_H

#include "mnist_classifier.h"
#include "tensor.h"

/* x [n, 1, S, S]; how many samples i the classifier labels as labels[i]. */
dl_status sample_judge_count(mnist_classifier *clf, const dl_tensor *x, const int *labels, int *correct);

/* x: n samples of dim floats each. */
double sample_diversity(const float *x, int n, int dim);

#endif
