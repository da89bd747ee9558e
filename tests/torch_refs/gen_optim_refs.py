#!/usr/bin/python3
"""References for core/optim.c (tests/test_optim.c): torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_.

Run from the repository root with Debian's python3-torch (1.13):
    /usr/bin/python3 tests/torch_refs/gen_optim_refs.py
Writes tests/fixtures/optim/optim.safetensors; `make test` only reads it.

Hyperparameters are rounded to float32 first (the C API takes floats), so
torch's Python-double scalar math sees the very same numbers as the C code.
Two AdamW runs over three parameters of odd shapes, 6 steps each, with the
gradients of every step given (drawn here, stored in the file), and the
learning rate changed between steps (as a warmup schedule does):
  adamw_a: betas (0.9, 0.999), eps 1e-8, weight_decay 0.01
  adamw_b: betas (0.8, 0.95),  eps 1e-3, weight_decay 0.5 (big, so the decay shows)
Names: <run>.p<i>.init, <run>.grad.s<k>.p<i>, <run>.after.s<k>.p<i> (params
after step k), <run>.m.p<i> / <run>.v.p<i> (exp_avg / exp_avg_sq at the end),
<run>.lr [6]. Clip cases: clip_<case>.grad.p<i> (before), clip_<case>.clipped.p<i>
(after), clip_<case>.total_norm [1]; max_norm in clip_<case>.max_norm [1].
"""
import torch

from st_io import write_safetensors

OUT = "tests/fixtures/optim/optim.safetensors"
SHAPES = [(3, 5), (7,), (2, 3, 2, 2)]
STEPS = 6


def f32(x):
    return float(torch.tensor(x, dtype=torch.float32))


def adamw_run(name, betas, eps, wd, gen, out):
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    for i, p in enumerate(params):
        out[f"{name}.p{i}.init"] = p.detach().clone()
    lrs = [f32(x) for x in (1e-3, 5e-3, 1e-2, 2e-2, 1e-2, 3e-3)]
    opt = torch.optim.AdamW(params, lr=lrs[0], betas=(f32(betas[0]), f32(betas[1])),
                            eps=f32(eps), weight_decay=f32(wd), foreach=False)
    for k in range(STEPS):
        for g in opt.param_groups:
            g["lr"] = lrs[k]
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=gen) * (0.1 if k % 2 else 3.0)
            out[f"{name}.grad.s{k}.p{i}"] = p.grad.clone()
        opt.step()
        for i, p in enumerate(params):
            out[f"{name}.after.s{k}.p{i}"] = p.detach().clone()
    for i, p in enumerate(params):
        st = opt.state[p]
        out[f"{name}.m.p{i}"] = st["exp_avg"].clone()
        out[f"{name}.v.p{i}"] = st["exp_avg_sq"].clone()
    out[f"{name}.lr"] = torch.tensor(lrs, dtype=torch.float32)


def clip_case(name, scale, max_norm, gen, out):
    params = [torch.nn.Parameter(torch.zeros(s)) for s in SHAPES]
    for i, p in enumerate(params):
        p.grad = torch.randn(p.shape, generator=gen) * scale
        out[f"{name}.grad.p{i}"] = p.grad.clone()
    total = torch.nn.utils.clip_grad_norm_(params, f32(max_norm))
    for i, p in enumerate(params):
        out[f"{name}.clipped.p{i}"] = p.grad.clone()
    out[f"{name}.total_norm"] = total.reshape(1).to(torch.float32)
    out[f"{name}.max_norm"] = torch.tensor([f32(max_norm)], dtype=torch.float32)


def main():
    gen = torch.Generator().manual_seed(1234)
    out = {}
    adamw_run("adamw_a", (0.9, 0.999), 1e-8, 0.01, gen, out)
    adamw_run("adamw_b", (0.8, 0.95), 1e-3, 0.5, gen, out)
    clip_case("clip_big", 2.0, 1.0, gen, out)     # norm ~ 13 > 1: clipped
    clip_case("clip_small", 0.05, 1.0, gen, out)  # norm ~ 0.3 < 1: unchanged
    write_safetensors(OUT, out, {"torch_version": torch.__version__})
    print(f"wrote {OUT}: {len(out)} tensors")


if __name__ == "__main__":
    main()
