/* resample.h - changing the size of NCHW feature maps, and joining them.
 *
 * upsample_nearest2x: every pixel becomes a 2x2 block (PyTorch
 *     F.interpolate(x, scale_factor=2, mode="nearest"), the first half of
 *     diffusers' Upsample2D; a 3x3 conv follows in the U-Net).
 *         x [N, C, H, W] -> out [N, C, 2H, 2W],  out[n, c, oh, ow] = x[n, c, oh/2, ow/2]
 *
 * avg_pool2d: the mean of each kernel x kernel window, windows `stride`
 *     apart, no padding, windows that would stick out are dropped (PyTorch
 *     nn.AvgPool2d(kernel, stride), floor mode).
 *         x [N, C, H, W] -> out [N, C, (H - kernel)/stride + 1, (W - kernel)/stride + 1]
 *
 * concat_channels: the U-Net's skip connections, torch.cat([a, b], dim=1).
 *         a [N, Ca, H, W], b [N, Cb, H, W] -> out [N, Ca + Cb, H, W]
 *
 * Each op has a plain reference (*_ref) and a fast version with the same
 * signature. `out` is preallocated by the caller with exactly the shape
 * above and must not overlap an input.
 */
#ifndef DL_RESAMPLE_H
#define DL_RESAMPLE_H

#include "tensor.h"

dl_status upsample_nearest2x_forward_ref(dl_tensor *out, const dl_tensor *x);
dl_status upsample_nearest2x_forward(dl_tensor *out, const dl_tensor *x);

dl_status avg_pool2d_forward_ref(dl_tensor *out, const dl_tensor *x, int kernel, int stride);
dl_status avg_pool2d_forward(dl_tensor *out, const dl_tensor *x, int kernel, int stride);

dl_status concat_channels_forward_ref(dl_tensor *out, const dl_tensor *a, const dl_tensor *b);
dl_status concat_channels_forward(dl_tensor *out, const dl_tensor *a, const dl_tensor *b);

/* ------------------------------------------------------------------ */
/* Backward (training). dout has the forward output's shape; the gradients
 * have the inputs' shapes, ACCUMULATE (+=), may be NULL (skipped) and must
 * not overlap dout.
 *
 *   upsample_nearest2x_backward  dx[n, c, h, w] += sum of the 2x2 block
 *                                dout[n, c, 2h..2h+1, 2w..2w+1] it was copied to
 *   avg_pool2d_backward          every window spreads dout / (kernel*kernel)
 *                                evenly over its pixels (overlapping windows add;
 *                                pixels no window covers get nothing)
 *   concat_channels_backward     da += dout[:, :Ca], db += dout[:, Ca:]  (Ca from da,
 *                                or C - Cb when only db is given)
 */
dl_status upsample_nearest2x_backward_ref(dl_tensor *dx, const dl_tensor *dout);
dl_status upsample_nearest2x_backward(dl_tensor *dx, const dl_tensor *dout);

dl_status avg_pool2d_backward_ref(dl_tensor *dx, const dl_tensor *dout, int kernel, int stride);
dl_status avg_pool2d_backward(dl_tensor *dx, const dl_tensor *dout, int kernel, int stride);

dl_status concat_channels_backward_ref(dl_tensor *da, dl_tensor *db, const dl_tensor *dout);
dl_status concat_channels_backward(dl_tensor *da, dl_tensor *db, const dl_tensor *dout);
/* The same with da and db SET (a split of dout) instead of added to. */
dl_status concat_channels_backward_set(dl_tensor *da, dl_tensor *db, const dl_tensor *dout);

#endif
