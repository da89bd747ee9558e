/* gradcheck.h - finite-difference gradient checks for backward kernels.
 *
 * The loss is L = sum_i r_i out_i with fixed random r (so dL/dout = r), summed
 * in double. For an input value x_i the numeric gradient is the central
 * difference
 *     (L(x_i + h) - L(x_i - h)) / (x_i+h - x_i-h)
 * where x_i +- h are the float values actually stored (so the rounding of
 * x_i + h to float does not bias the step). It is compared with what the
 * _ref backward kernel computes for dout = r.
 *
 * How exact is that? Only the outputs that depend on x_i change between the
 * two runs; everything else is bit-identical and cancels in double. Each
 * changed output carries float32 rounding of about 6e-8 |out|, divided by
 * 2h: with h = 1e-2 and O(1) values that is ~1e-5 per output, ~1e-4 for
 * sums of a few hundred outputs. The truncation error h^2 f''' / 6 is 0 for
 * linear ops and ~1e-5 for the smooth ones at h = 1e-2. Tests use
 * atol ~ 1e-3 and rtol ~ 1e-2 (numbers per test); a wrong gradient (a
 * missing term, a wrong index, a transposed weight) is off by 1e-1 or more.
 * DL_GRADCHECK_VERBOSE=1 prints the measured error of every check.
 *
 * One call, gc_check_op, runs every check of the contract on one op:
 *   1. numeric vs the _ref backward, for every input that has a gradient
 *   2. fast backward vs _ref backward
 *   3. += : gradients pre-filled with random values end at prefill + gradient
 *      (ref and fast)
 *   4. NULL: each gradient alone (the others NULL) equals the full result,
 *      and all-NULL succeeds (ref and fast)
 */
#ifndef DL_GRADCHECK_H
#define DL_GRADCHECK_H

#include "testing.h"
#include "../core/tensor.h"

#define GC_MAX_INPUTS 4

typedef struct gc_op gc_op;
struct gc_op {
    char label[160];                       /* names the case in failure messages */
    int ninputs;                           /* tensors that get a gradient */
    dl_tensor *inputs[GC_MAX_INPUTS];      /* read by forward; perturbed by the check */
    const char *names[GC_MAX_INPUTS];      /* their gradients' names: "dx", "dweight", ... */
    dl_tensor *out;                        /* forward output, preallocated */
    /* reference forward: inputs -> out */
    dl_status (*forward)(gc_op *op);
    /* backward (fast = 0: *_backward_ref, 1: *_backward); grads[i] may be NULL */
    dl_status (*backward)(gc_op *op, int fast, dl_tensor *grads[], const dl_tensor *dout);
    void *ctx;                             /* the op's other arguments */
};

typedef struct {
    double h;          /* central-difference step */
    double atol, rtol; /* numeric check: |analytic - numeric| <= atol + rtol |numeric| */
    double fast_rtol;  /* fast vs ref: max diff <= fast_rtol * max(1, max |ref|) */
} gc_tol;

/* modes of gc_check_op */
enum {
    GC_NUMERIC = 1,     /* all checks (small shapes)                                   */
    GC_NO_NUMERIC = 0,  /* checks 2-4, no finite differences                           */
    GC_BIG = 2,         /* checks 2-4, but 3-4 on the fast version only: the reference
                           runs once (big shapes where it is slow)                       */
};

/* Run the checks of `mode` on op; failures are recorded with CHECK and name
 * op->label. Returns 1 if everything passed. */
int gc_check_op(gc_op *op, dl_test_rng *r, gc_tol tol, int mode);

/* L = sum_i r_i out_i, in double. */
double gc_loss(const dl_tensor *out, const float *r);

#endif
