#!/usr/bin/python3
"""Extra torch RNG references for tests/test_rng.c (beyond the shared fixture).

Run from the repository root with Debian's python3-torch (1.13):
    /usr/bin/python3 tests/torch_refs/gen_rng_refs.py
Writes tests/fixtures/torch_rng/torch_rng_extra.safetensors (< 200 KB).
`make test` only reads the file. Every tensor keeps torch's own dtype.

Contents (all from torch.Generator("cpu").manual_seed(S)):
  sizes_seed3_n{N}        torch.randn(N) for N = 1..40, one fresh generator each
  big_seed{S}             torch.randn(5000) for S in 7, 2^32+5, 2^63-1
                          (torch seeds mt19937 with the low 32 bits only)
  mixed_seed{S}_{k}_{op}  one generator, the calls below in this order, S in 0..4;
                          it checks that the scalar Box-Muller's cached second
                          value survives across calls and dtypes.
"""

import torch

from st_io import write_safetensors

OUT = "tests/fixtures/torch_rng/torch_rng_extra.safetensors"

# (op, n): the call sequence of the "mixed" records (also hard-coded in test_rng.c)
MIXED = [("randn", 3), ("randn", 1), ("rand", 5), ("randn", 33), ("randn_f64", 7),
         ("randn", 2), ("randn_f64", 17), ("rand_f64", 3), ("randn", 16), ("randn", 5)]




def gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def main():
    out = {}
    for n in range(1, 41):
        out[f"sizes_seed3_n{n}"] = torch.randn(n, generator=gen(3))
    for s in (7, 2**32 + 5, 2**63 - 1):
        out[f"big_seed{s}"] = torch.randn(5000, generator=gen(s))
    for s in range(5):
        g = gen(s)
        for k, (op, n) in enumerate(MIXED):
            if op == "randn":
                t = torch.randn(n, generator=g)
            elif op == "rand":
                t = torch.rand(n, generator=g)
            elif op == "randn_f64":
                t = torch.randn(n, generator=g, dtype=torch.float64)
            else:
                t = torch.rand(n, generator=g, dtype=torch.float64)
            out[f"mixed_seed{s}_{k}_{op}"] = t
    write_safetensors(OUT, out, {"generator": "tests/torch_refs/gen_rng_refs.py",
                                 "torch": torch.__version__})
    print("wrote", OUT, len(out), "tensors")


if __name__ == "__main__":
    main()
