#!/usr/bin/python3
"""PyTorch references for the toy U-Net (core/toy_unet.c) and lesson 02.

Run from the repository root with Debian's python3-torch (1.13):
    /usr/bin/python3 tests/torch_refs/gen_toy_unet_refs.py
Writes
  tests/fixtures/toy_unet/refs.safetensors      a tiny toy U-Net: all weights under their
        names, inputs, the output eps, and for loss = sum(r * eps) the gradient of every
        parameter ("grad.<name>") and of the input ("grad.input.x"); config in the metadata
  tests/fixtures/toy_unet/lesson02.safetensors  the two blocks of lesson 02 (a ResnetBlock2D
        and a cross-attention) with inputs and outputs, and the small U-Net of the lesson's
        shape table with its output for one input
  data/lesson02_reference.safetensors           the same file for bin/02_unet_blocks
`make test` only reads them (tests/test_toy_unet.c, tests/test_lesson02.c).
The model is bench/toy_unet_torch.py (same architecture, same parameter names).
"""
import json
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from toy_unet_torch import Attention, ResnetBlock2D, ToyUNet  # noqa: E402
from st_io import write_safetensors  # noqa: E402

OUT_DIR = "tests/fixtures/toy_unet"

# Small, but with every structural case: 3 levels, 2 ResBlocks per level (so up
# blocks have 3), attention only in the middle level (plus the mid block),
# channel changes (conv_shortcut) and none, in_channels 3, odd-ish widths.
TINY = {
    "in_channels": 3, "image_size": 8, "levels": 3, "block_out_channels": [8, 12, 16],
    "layers_per_block": 2, "attention_levels": 2, "num_classes": 3, "cross_attention_dim": 12,
    "heads": 2, "norm_groups": 4, "time_embed_dim": 32,
}

# lesson 02: a narrow version of the mnist config (the full one has ~1M weights,
# too many for a fixture), with its output for one input
LESSON_NET = {
    "in_channels": 1, "image_size": 32, "levels": 3, "block_out_channels": [8, 16, 16],
    "layers_per_block": 1, "attention_levels": 4, "num_classes": 10, "cross_attention_dim": 16,
    "heads": 2, "norm_groups": 4, "time_embed_dim": 32,
}


def randomize(net, g):
    """Weights away from the init (norm weights not all 1, biases not 0), so
    every parameter matters for the comparison."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "norm" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif name == "class_embedding.weight":
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.dim() > 1 else p.shape[0]
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def unet_refs(g):
    net = ToyUNet(TINY)
    randomize(net, g)
    S, C = TINY["image_size"], TINY["in_channels"]
    x = torch.randn(2, C, S, S, generator=g).requires_grad_(True)
    t = torch.tensor([3.0, 950.0])
    ids = torch.tensor([1, TINY["num_classes"]])            # a class and the null class
    r = torch.randn(2, C, S, S, generator=g)
    eps = net(x, t, ids)
    (r * eps).sum().backward()
    out = {}
    for name, p in net.named_parameters():
        out[name] = p.detach()
    for name, p in net.named_parameters():
        out["grad." + name] = p.grad
    out.update({"input.x": x.detach(), "input.t": t, "input.class_ids": ids, "input.r": r,
                "output.eps": eps.detach(), "grad.input.x": x.grad})
    write_safetensors(f"{OUT_DIR}/refs.safetensors", out,
                      {"config": json.dumps(TINY), "params": str(len(list(net.parameters())))})
    print("toy unet: %d parameters (%d tensors), eps |max| %.3f" %
          (sum(p.numel() for p in net.parameters()), len(list(net.parameters())), eps.abs().max()))


def lesson_refs(g):
    out = {}
    # 1. a ResidualBlock with time embedding: 16 -> 32 channels at 8x8, temb 64
    rb = ResnetBlock2D(16, 32, 64, 8)
    randomize(rb, g)
    x = torch.randn(2, 16, 8, 8, generator=g)
    temb = torch.randn(2, 64, generator=g)
    for name, p in rb.named_parameters():
        out["resblock." + name] = p.detach()
    out.update({"resblock.x": x, "resblock.temb": temb, "resblock.out": rb(x, temb).detach()})
    # 2. a CrossAttention: 16 image tokens of width 32 look at 3 context tokens of width 24, 4 heads
    ca = Attention(32, 4, 24)
    randomize(ca, g)
    xt = torch.randn(2, 16, 32, generator=g)
    ctx = torch.randn(2, 3, 24, generator=g)
    for name, p in ca.named_parameters():
        out["crossattn." + name] = p.detach()
    out.update({"crossattn.x": xt, "crossattn.ctx": ctx, "crossattn.out": ca(xt, ctx).detach()})
    # 3. a narrow toy U-Net, one input
    net = ToyUNet(LESSON_NET)
    randomize(net, g)
    for name, p in net.named_parameters():
        out["unet." + name] = p.detach()
    S = LESSON_NET["image_size"]
    xu = torch.randn(1, 1, S, S, generator=g)
    tu = torch.tensor([500.0])
    idu = torch.tensor([7])
    out.update({"unet.input.x": xu, "unet.input.t": tu, "unet.input.class_ids": idu,
                "unet.output.eps": net(xu, tu, idu).detach()})
    meta = {"unet_config": json.dumps(LESSON_NET)}
    write_safetensors(f"{OUT_DIR}/lesson02.safetensors", out, meta)
    os.makedirs("data", exist_ok=True)
    shutil.copyfile(f"{OUT_DIR}/lesson02.safetensors", "data/lesson02_reference.safetensors")
    print("lesson 02: %d tensors" % len(out))


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT_DIR, exist_ok=True)
    g = torch.Generator().manual_seed(20261126)
    unet_refs(g)
    lesson_refs(g)
    for f in ("refs.safetensors", "lesson02.safetensors"):
        print(f, os.path.getsize(f"{OUT_DIR}/{f}"), "bytes")


if __name__ == "__main__":
    main()
