#!/usr/bin/python3
"""References for core/schedule.c (tests/test_schedule.c).

Run from the repository root with Debian's python3-torch (1.13):
    /usr/bin/python3 tests/torch_refs/gen_schedule_refs.py PATH/TO/SHARED/fixtures
(the reference-data folder beside the checkout, holding schedulers/). Writes
tests/fixtures/schedules/schedules.safetensors; `make test` only reads it.

diffusers is not installed here, so its formulas (v0.27, DDPMScheduler) are
re-implemented below with the same torch ops in the same order:
  betas: linear        torch.linspace(beta_start, beta_end, T, dtype=float32)
         scaled_linear torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=float32) ** 2
         squaredcos_cap_v2  betas_for_alpha_bar(T): Python floats, then torch.tensor(float32)
  alphas = 1.0 - betas; alphas_cumprod = torch.cumprod(alphas, dim=0)
  add_noise and the DDPM step as in DDPMScheduler.add_noise / .step
  (variance_type "fixed_small", prediction_type "epsilon", clip_sample False,
  all 1000 training steps, so the previous timestep is t - 1).
The one tensor taken from diffusers itself is `diffusers_alphas_cumprod`, copied
from the shared scheduler goldens (schedulers/ddim_steps4.safetensors).
"""
import math
import sys

import torch

from st_io import read_safetensors, write_safetensors

OUT = "tests/fixtures/schedules/schedules.safetensors"

# (name, kind, T, beta_start, beta_end) -- the same table is in test_schedule.c
CONFIGS = [
    ("linear_T1000", "linear", 1000, 1e-4, 0.02),
    ("scaled_linear_T1000", "scaled_linear", 1000, 0.00085, 0.012),
    ("cosine_T1000", "squaredcos_cap_v2", 1000, None, None),
    ("linear_T37", "linear", 37, 0.001, 0.05),
    ("scaled_linear_T100", "scaled_linear", 100, 0.0001, 0.02),
    ("cosine_T50", "squaredcos_cap_v2", 50, None, None),
    ("linear_T1", "linear", 1, 0.1, 0.2),
    ("linear_T2", "linear", 2, 0.1, 0.2),
    ("scaled_linear_T23", "scaled_linear", 23, 0.00085, 0.012),
]
ADD_NOISE = [("scaled_linear_T1000", t) for t in (0, 1, 10, 500, 999)] + \
            [("linear_T1000", t) for t in (250, 999)] + [("cosine_T1000", t) for t in (0, 999)]
DDPM = [("scaled_linear_T1000", t) for t in (999, 500, 10, 1, 0)] + \
       [("linear_T1000", 100)] + [("cosine_T1000", t) for t in (999, 1)]
SHAPE = (2, 4, 5, 7)   # 280 values, not a multiple of 8 or 16


def betas_for_alpha_bar(T, max_beta=0.999):
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    betas = []
    for i in range(T):
        t1, t2 = i / T, (i + 1) / T
        betas.append(min(1 - alpha_bar(t2) / alpha_bar(t1), max_beta))
    return torch.tensor(betas, dtype=torch.float32)


def schedule(kind, T, b0, b1):
    if kind == "linear":
        betas = torch.linspace(b0, b1, T, dtype=torch.float32)
    elif kind == "scaled_linear":
        betas = torch.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=torch.float32) ** 2
    else:
        betas = betas_for_alpha_bar(T)
    alphas = 1.0 - betas
    return betas, alphas, torch.cumprod(alphas, dim=0)


def add_noise(alphas_cumprod, x0, noise, t):
    timesteps = torch.tensor([t])
    sqrt_alpha_prod = (alphas_cumprod[timesteps] ** 0.5).flatten()
    sqrt_one_minus_alpha_prod = ((1 - alphas_cumprod[timesteps]) ** 0.5).flatten()
    while len(sqrt_alpha_prod.shape) < len(x0.shape):
        sqrt_alpha_prod = sqrt_alpha_prod.unsqueeze(-1)
        sqrt_one_minus_alpha_prod = sqrt_one_minus_alpha_prod.unsqueeze(-1)
    return sqrt_alpha_prod * x0 + sqrt_one_minus_alpha_prod * noise


def ddpm_step(alphas_cumprod, model_output, t, sample, z):
    one = torch.tensor(1.0)
    prev_t = t - 1
    alpha_prod_t = alphas_cumprod[t]
    alpha_prod_t_prev = alphas_cumprod[prev_t] if prev_t >= 0 else one
    beta_prod_t = 1 - alpha_prod_t
    beta_prod_t_prev = 1 - alpha_prod_t_prev
    current_alpha_t = alpha_prod_t / alpha_prod_t_prev
    current_beta_t = 1 - current_alpha_t
    pred_original_sample = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
    # (no clipping: clip_sample=False)
    pred_original_sample_coeff = (alpha_prod_t_prev ** (0.5) * current_beta_t) / beta_prod_t
    current_sample_coeff = current_alpha_t ** (0.5) * beta_prod_t_prev / beta_prod_t
    pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample
    if t > 0:
        variance = (1 - alpha_prod_t_prev) / (1 - alpha_prod_t) * current_beta_t
        variance = torch.clamp(variance, min=1e-20)
        pred_prev_sample = pred_prev_sample + (variance ** 0.5) * z
    return pred_prev_sample




def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_schedule_refs.py PATH/TO/SHARED/fixtures")
    shared = sys.argv[1]
    out = {}
    golden = read_safetensors(shared + "/schedulers/ddim_steps4.safetensors")
    out["diffusers_alphas_cumprod"] = golden["alphas_cumprod"]

    sched = {}
    for name, kind, T, b0, b1 in CONFIGS:
        betas, alphas, ac = schedule(kind, T, b0, b1)
        sched[name] = ac
        out[name + ".betas"] = betas
        out[name + ".alphas"] = alphas
        out[name + ".alphas_cumprod"] = ac
    same = torch.equal(sched["scaled_linear_T1000"], out["diffusers_alphas_cumprod"])
    print("torch re-implementation == diffusers alphas_cumprod:", same)

    x0 = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(11))
    noise = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(12))
    out["add_noise.x0"], out["add_noise.noise"] = x0, noise
    for name, t in ADD_NOISE:
        out[f"add_noise.{name}.t{t}"] = add_noise(sched[name], x0, noise, t)

    x_t = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(21))
    eps = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(22))
    z = torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(23))
    out["ddpm.x_t"], out["ddpm.eps"], out["ddpm.z"] = x_t, eps, z
    for name, t in DDPM:
        out[f"ddpm.{name}.t{t}"] = ddpm_step(sched[name], eps, t, x_t, z)

    write_safetensors(OUT, out, {"generator": "tests/torch_refs/gen_schedule_refs.py",
                                 "torch": torch.__version__,
                                 "diffusers_alphas_cumprod_matches": str(same)})
    print("wrote", OUT, len(out), "tensors")


if __name__ == "__main__":
    main()
