#!/usr/bin/python3
"""The toy U-Net of core/toy_unet.c written with torch.nn modules.

The same architecture as diffusers' UNet2DConditionModel with
CrossAttnDownBlock2D / DownBlock2D, UNetMidBlock2DCrossAttn and
CrossAttnUpBlock2D / UpBlock2D, small, and with the same parameter names,
so that state_dict() keys equal the C parameter names. Written from the
diffusers definitions (not imported: Debian has no diffusers package).

    /usr/bin/python3 bench/toy_unet_torch.py --bench [--config JSON] [--batch 64] [--threads 2]

times one training step (forward, MSE loss, backward, AdamW step) and
prints {"ms_per_step": ...} as JSON (bench/bench_toy_step.c runs it).
tests/torch_refs/gen_toy_unet_refs.py imports ToyUNet for the test fixtures.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

NORM_EPS = 1e-5          # UNet2DConditionModel norm_eps: ResBlocks, conv_norm_out
TRANSFORMER_GN_EPS = 1e-6  # Transformer2DModel's GroupNorm

DEFAULT_CONFIG = {  # = toy_unet_config_default("mnist")
    "in_channels": 1, "image_size": 32, "levels": 3, "block_out_channels": [16, 32, 64],
    "layers_per_block": 1, "attention_levels": 4, "num_classes": 10, "cross_attention_dim": 64,
    "heads": 4, "norm_groups": 8, "time_embed_dim": 64,
}


def timestep_embedding(t, dim, flip_sin_to_cos=True, shift=0.0, max_period=10000):
    """diffusers' get_timestep_embedding."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32)
    exponent = exponent / (half - shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


class ResnetBlock2D(nn.Module):
    def __init__(self, cin, cout, temb, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=NORM_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Attention(nn.Module):
    def __init__(self, dim, heads, ctx_dim=None):
        super().__init__()
        ctx_dim = ctx_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(ctx_dim, dim, bias=False)
        self.to_v = nn.Linear(ctx_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        B, Lq, C = x.shape
        H, D = self.heads, C // self.heads
        split = lambda t: t.reshape(B, t.shape[1], H, D).transpose(1, 2)      # [B, H, L, D]
        q, k, v = split(self.to_q(x)), split(self.to_k(ctx)), split(self.to_v(ctx))
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), dim=-1)
        out = (p @ v).transpose(1, 2).reshape(B, Lq, C)
        return self.to_out[0](out)


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x):
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim)])

    def forward(self, x):
        for m in self.net:
            x = m(x)
        return x


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, ctx_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, ctx_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x, ctx):
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), ctx)
        return x + self.ff(self.norm3(x))


class Transformer2DModel(nn.Module):
    """use_linear_projection=False (SD 1.x): proj_in / proj_out are 1x1 convs."""

    def __init__(self, dim, heads, ctx_dim, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim, eps=TRANSFORMER_GN_EPS)
        self.proj_in = nn.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(dim, heads, ctx_dim)])
        self.proj_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x, ctx):
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x))
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, C)
        for blk in self.transformer_blocks:
            h = blk(h, ctx)
        h = h.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()
        return self.proj_out(h) + x


class Downsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample2D(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Block(nn.Module):
    """A down or up block: resnets (+ attentions) (+ down/upsamplers)."""

    def __init__(self, resnets, attentions, sampler, up):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions:
            self.attentions = nn.ModuleList(attentions)
        else:
            self.attentions = None
        if sampler is not None:
            if up:
                self.upsamplers = nn.ModuleList([sampler])
            else:
                self.downsamplers = nn.ModuleList([sampler])


class MidBlock(nn.Module):
    def __init__(self, ch, temb, heads, ctx_dim, groups):
        super().__init__()
        self.attentions = nn.ModuleList([Transformer2DModel(ch, heads, ctx_dim, groups)])
        self.resnets = nn.ModuleList([ResnetBlock2D(ch, ch, temb, groups), ResnetBlock2D(ch, ch, temb, groups)])

    def forward(self, h, temb, ctx):
        h = self.resnets[0](h, temb)
        h = self.attentions[0](h, ctx)
        return self.resnets[1](h, temb)


class TimestepEmbedding(nn.Module):
    def __init__(self, cin, dim):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ToyUNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        L, lpb, ch = cfg["levels"], cfg["layers_per_block"], cfg["block_out_channels"]
        TE, G, X, heads = cfg["time_embed_dim"], cfg["norm_groups"], cfg["cross_attention_dim"], cfg["heads"]
        attn = lambda l: (cfg["attention_levels"] >> l) & 1
        self.conv_in = nn.Conv2d(cfg["in_channels"], ch[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(ch[0], TE)
        self.class_embedding = nn.Embedding(cfg["num_classes"] + 1, X)
        self.down_blocks = nn.ModuleList()
        for l in range(L):
            cin = ch[l - 1] if l else ch[0]
            res = [ResnetBlock2D(cin if j == 0 else ch[l], ch[l], TE, G) for j in range(lpb)]
            att = [Transformer2DModel(ch[l], heads, X, G) for _ in range(lpb)] if attn(l) else []
            self.down_blocks.append(Block(res, att, Downsample2D(ch[l]) if l < L - 1 else None, up=False))
        self.mid_block = MidBlock(ch[L - 1], TE, heads, X, G)
        self.up_blocks = nn.ModuleList()
        for i in range(L):
            l = L - 1 - i
            prev = ch[l + 1] if i else ch[L - 1]
            skip_last = ch[l - 1] if l else ch[0]
            res, att = [], []
            for j in range(lpb + 1):
                res_in = ch[l] if j else prev
                skip = skip_last if j == lpb else ch[l]
                res.append(ResnetBlock2D(res_in + skip, ch[l], TE, G))
                if attn(l):
                    att.append(Transformer2DModel(ch[l], heads, X, G))
            self.up_blocks.append(Block(res, att, Upsample2D(ch[l]) if l > 0 else None, up=True))
        self.conv_norm_out = nn.GroupNorm(G, ch[0], eps=NORM_EPS)
        self.conv_out = nn.Conv2d(ch[0], cfg["in_channels"], 3, padding=1)

    def forward(self, x, t, class_ids):
        temb = self.time_embedding(timestep_embedding(t, self.cfg["block_out_channels"][0]))
        ctx = self.class_embedding(class_ids)[:, None, :]          # [B, 1, X]: one "text" token
        h = self.conv_in(x)
        skips = [h]
        for blk in self.down_blocks:
            for j, res in enumerate(blk.resnets):
                h = res(h, temb)
                if blk.attentions is not None:
                    h = blk.attentions[j](h, ctx)
                skips.append(h)
            if hasattr(blk, "downsamplers"):
                h = blk.downsamplers[0](h)
                skips.append(h)
        h = self.mid_block(h, temb, ctx)
        for blk in self.up_blocks:
            for j, res in enumerate(blk.resnets):
                h = res(torch.cat([h, skips.pop()], dim=1), temb)
                if blk.attentions is not None:
                    h = blk.attentions[j](h, ctx)
            if hasattr(blk, "upsamplers"):
                h = blk.upsamplers[0](h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def bench(cfg, batch, threads, steps):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = ToyUNet(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    S, C = cfg["image_size"], cfg["in_channels"]
    x = torch.randn(batch, C, S, S)
    eps = torch.randn(batch, C, S, S)
    t = torch.randint(0, 1000, (batch,))
    y = torch.randint(0, cfg["num_classes"] + 1, (batch,))

    def step():
        opt.zero_grad(set_to_none=False)
        loss = F.mse_loss(net(x, t, y), eps)
        loss.backward()
        opt.step()

    for _ in range(2):   # warm-up
        step()
    best = float("inf")
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    params = sum(p.numel() for p in net.parameters())
    print(json.dumps({"ms_per_step": best * 1e3, "batch": batch, "threads": threads,
                      "params": params, "torch": torch.__version__}))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", action="store_true", help="time one training step, print JSON")
    ap.add_argument("--config", default=None, help="model config as JSON (default: the mnist config)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="timed steps (the best one is reported)")
    a = ap.parse_args()
    cfg = json.loads(a.config) if a.config else DEFAULT_CONFIG
    if a.bench:
        bench(cfg, a.batch, a.threads, a.steps)
    else:
        net = ToyUNet(cfg)
        for name, p in net.named_parameters():
            print(f"{name:70s} {list(p.shape)}")
        print("parameters:", sum(p.numel() for p in net.parameters()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
