#!/usr/bin/python3
"""PyTorch references for the norm / activation / softmax / attention /
timestep-embedding kernels.

Run from the repository root with Debian's python3-torch (1.13):
    /usr/bin/python3 tests/torch_refs/gen_kernel_refs_norm_attn.py
Writes tests/fixtures/torch_kernels/norm_attn.safetensors (inputs and
outputs side by side, float32). `make test` only reads the file
(tests/test_norm.c, test_elementwise.c, test_attention.c,
test_timestep_embedding.c).
"""
import math

import torch

from st_io import write_safetensors
import torch.nn.functional as F

OUT = "tests/fixtures/torch_kernels/norm_attn.safetensors"




def attention(q, k, v, heads, causal):
    """Multi-head attention the way diffusers' attention processor does it:
    head_to_batch_dim, scores = scale * q k^T (baddbmm), softmax, bmm,
    batch_to_head_dim. q [B, Lq, H*D], k/v [B, Lk, H*D]."""
    B, Lq, HD = q.shape
    Lk = k.shape[1]
    D = HD // heads

    def to_heads(x):   # [B, L, H*D] -> [B*H, L, D]
        return x.reshape(B, x.shape[1], heads, D).permute(0, 2, 1, 3).reshape(B * heads, x.shape[1], D)

    qh, kh, vh = to_heads(q), to_heads(k), to_heads(v)
    scores = torch.baddbmm(torch.empty(B * heads, Lq, Lk), qh, kh.transpose(-1, -2),
                           beta=0, alpha=1.0 / math.sqrt(D))
    if causal:   # CLIP text encoder: key j > query i is hidden
        mask = torch.triu(torch.ones(Lq, Lk, dtype=torch.bool), diagonal=1)
        scores = scores.masked_fill(mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    out = torch.bmm(probs, vh)                       # [B*H, Lq, D]
    return out.reshape(B, heads, Lq, D).permute(0, 2, 1, 3).reshape(B, Lq, HD)


def timestep_embedding(t, dim, flip_sin_to_cos, shift, scale=1.0, max_period=10000):
    """diffusers' get_timestep_embedding, restated with torch ops."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(0, half, dtype=torch.float32)
    exponent = exponent / (half - shift)
    emb = t[:, None].float() * torch.exp(exponent)[None, :]
    emb = scale * emb
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1, 0, 0))
    return emb


def main():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(20261127)
    r = lambda *s: torch.randn(*s, generator=g)
    t = {}

    # GroupNorm, 32 groups of 2 channels, two eps values, with / without affine
    x = r(2, 64, 5, 6) * 2.0 + 0.5
    w = 1.0 + 0.3 * r(64); b = 0.2 * r(64)
    t.update({"gn.x": x, "gn.w": w, "gn.b": b,
              "gn.out_eps1e-5": F.group_norm(x, 32, w, b, eps=1e-5),
              "gn.out_eps1e-6": F.group_norm(x, 32, w, b, eps=1e-6),
              "gn.out_noaffine": F.group_norm(x, 32, None, None, eps=1e-5)})
    # 3-D input [N, C, L] with 32 groups of 3 channels
    x3 = r(1, 96, 7) + 3.0
    t.update({"gn3.x": x3, "gn3.out": F.group_norm(x3, 32, None, None, eps=1e-6)})

    # LayerNorm over the last dim
    xl = r(3, 7, 40) * 1.5 - 0.7
    wl = 1.0 + 0.3 * r(40); bl = 0.2 * r(40)
    t.update({"ln.x": xl, "ln.w": wl, "ln.b": bl,
              "ln.out": F.layer_norm(xl, (40,), wl, bl, eps=1e-5),
              "ln.out_noaffine": F.layer_norm(xl, (40,), None, None, eps=1e-5)})

    # Activations on a sweep and on random values
    xa = torch.cat([torch.linspace(-10.0, 10.0, 601), r(399) * 3.0])
    t.update({"act.x": xa,
              "act.silu": F.silu(xa),
              "act.gelu_erf": F.gelu(xa),
              "act.gelu_tanh": F.gelu(xa, approximate="tanh"),
              "act.quick_gelu": xa * torch.sigmoid(1.702 * xa)})

    # Softmax over the last dim; one row of huge values (needs max subtraction)
    xs = r(5, 77) * 3.0
    xs[4] += 1000.0
    t.update({"softmax.x": xs, "softmax.out": xs.softmax(dim=-1)})

    # Cross-attention: 4 heads of 8, 9 queries, 7 keys, batch 2
    q = r(2, 9, 32); k = r(2, 7, 32); v = r(2, 7, 32)
    t.update({"attn_cross.q": q, "attn_cross.k": k, "attn_cross.v": v,
              "attn_cross.out": attention(q, k, v, heads=4, causal=False)})
    # Causal self-attention (CLIP-like): 2 heads of 8, 6 tokens
    xc = r(1, 6, 16)
    t.update({"attn_causal.x": xc, "attn_causal.out": attention(xc, xc, xc, heads=2, causal=True)})
    # SD-like head dim 40, 2 heads, 40 queries against 77 text tokens
    q2 = r(1, 40, 80); k2 = r(1, 77, 80); v2 = r(1, 77, 80)
    t.update({"attn_sd.q": q2, "attn_sd.k": k2, "attn_sd.v": v2,
              "attn_sd.out": attention(q2, k2, v2, heads=2, causal=False)})

    # Timestep embeddings
    ts = torch.tensor([0.0, 1.0, 500.0, 999.0])
    t.update({"ts.t": ts,
              "ts.emb320": timestep_embedding(ts, 320, flip_sin_to_cos=True, shift=0),
              "ts.emb32": timestep_embedding(ts, 32, flip_sin_to_cos=True, shift=0),
              "ts.emb32_noflip_shift1": timestep_embedding(ts, 32, flip_sin_to_cos=False, shift=1),
              "ts.emb33": timestep_embedding(ts, 33, flip_sin_to_cos=True, shift=0)})

    meta = {"generator": "tests/torch_refs/gen_kernel_refs_norm_attn.py",
            "torch": torch.__version__, "seed": "20261127",
            "attn_cross": "heads 4", "attn_causal": "heads 2, causal, q=k=v=x", "attn_sd": "heads 2",
            "ts": "max_period 10000, scale 1; emb320/emb32/emb33: flip_sin_to_cos True, shift 0; "
                  "emb32_noflip_shift1: flip False, shift 1"}
    write_safetensors(OUT, t, meta)
    print("wrote", OUT, sum(v.numel() for v in t.values()) * 4, "bytes of data")


if __name__ == "__main__":
    main()
