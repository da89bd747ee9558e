#!/usr/bin/python3
"""PyTorch references for the conv/linear/resample kernels.

Run from the repository root with Debian's python3-torch (1.13):
    /usr/bin/python3 tests/torch_refs/gen_kernel_refs_conv.py
Writes tests/fixtures/torch_kernels/conv_linear.safetensors (inputs and
outputs side by side, float32). `make test` only reads the file.
"""

import torch

from st_io import write_safetensors
import torch.nn.functional as F

OUT = "tests/fixtures/torch_kernels/conv_linear.safetensors"




def main():
    g = torch.Generator().manual_seed(20261126)
    r = lambda *s: torch.randn(*s, generator=g)
    t = {}
    # conv2d 3x3 pad 1 (a ResBlock conv), with bias
    x = r(2, 5, 9, 7); w = r(6, 5, 3, 3) * 0.2; b = r(6)
    t.update({"conv3.x": x, "conv3.w": w, "conv3.b": b, "conv3.out": F.conv2d(x, w, b, stride=1, padding=1)})
    # strided downsample conv: stride 2, pad 1 (diffusers Downsample2D)
    w2 = r(5, 5, 3, 3) * 0.2; b2 = r(5)
    t.update({"down.w": w2, "down.b": b2, "down.out": F.conv2d(x, w2, b2, stride=2, padding=1)})
    # 1x1 conv without bias (skip projection)
    w1 = r(3, 5, 1, 1)
    t.update({"conv1.w": w1, "conv1.out": F.conv2d(x, w1, None)})
    # non-square kernel, stride 3, pad 2
    w5 = r(4, 5, 5, 2) * 0.1
    t.update({"conv52.w": w5, "conv52.out": F.conv2d(x, w5, None, stride=3, padding=2)})
    # linear on [B, L, in]
    xl = r(2, 11, 13); wl = r(17, 13) * 0.3; bl = r(17)
    t.update({"linear.x": xl, "linear.w": wl, "linear.b": bl, "linear.out": F.linear(xl, wl, bl)})
    # nearest 2x upsample and 2x2 average pooling
    t["upsample.out"] = F.interpolate(x, scale_factor=2.0, mode="nearest")
    t["avgpool.out"] = F.avg_pool2d(x, kernel_size=2, stride=2)
    write_safetensors(OUT, t, {"generator": "tests/torch_refs/gen_kernel_refs_conv.py",
                               "torch": torch.__version__, "seed": "20261126"})
    print("wrote", OUT, sum(v.numel() for v in t.values()) * 4, "bytes of data")


if __name__ == "__main__":
    main()
