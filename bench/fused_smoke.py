"""Smoke test of the single-pass Hopper backward (SWAA_BWD_HOPPER=4, docs/cuda_kernels.md
"v7"), the first thing the `fused` step of bench/gpu_check.sh runs, under a short time limit
(a deadlock of the turn counters must not eat the device call).  On six shapes (D 128/64, GQA,
sinks > a block, S=0) it compares knob 4 (both dQ splits, SWAA_BWD_FUSED_DQ=0/1) against knob 1
(the v6 two passes) and 0 (sm_80): the path is "sm90-fused", two runs are bitwise equal, dk/dv
equal knob 1's bitwise, dq/dk/dv agree with the sm_80 backward within 2e-2 of their largest
value.  Exit code 0 when all hold.

  python bench/fused_smoke.py
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

import swaa_ext  # noqa: F401  (registers torch.ops.swaa)

SHAPES = [(4, 2, 1000, 300, 4), (8, 2, 4096, 1024, 130), (2, 1, 8192, 4096, 0)]  # Hq Hkv L W S


def bwd(knob, args, dq_split="0"):
    os.environ["SWAA_BWD_HOPPER"] = knob
    os.environ["SWAA_BWD_FUSED_DQ"] = dq_split
    grads = torch.ops.swaa.bwd(*args)
    torch.cuda.synchronize()
    return grads


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def main() -> int:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    ok = True
    for D in (128, 64):
        for Hq, Hkv, L, W, S in SHAPES:
            g = torch.Generator(device="cuda").manual_seed(D + L)
            q = torch.randn(1, Hq, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
            k = torch.randn(1, Hkv, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
            v = torch.randn(1, Hkv, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
            do = torch.randn(q.shape, device="cuda", dtype=q.dtype, generator=g)
            out, lse = torch.ops.swaa.fwd(q, k, v, W, S, None, 0.088)
            args = (do, q, k, v, out, lse, W, S, None, 0.088)
            os.environ["SWAA_BWD_HOPPER"] = "4"
            path = torch.ops.swaa.bwd_path(do, q, k, v)
            t0 = time.time()
            g4 = bwd("4", args)
            first_s = time.time() - t0
            g4b = bwd("4", args)
            g4c = bwd("4", args, dq_split="1")  # dQ split by columns (D=128; ignored at 64)
            g1 = bwd("1", args)
            g0 = bwd("0", args)
            same = all(torch.equal(a, b) for a, b in zip(g4, g4b))
            dkdv = all(torch.equal(g[i], g1[i]) for g in (g4, g4c) for i in (1, 2))
            print(f"D={D} Hq={Hq} Hkv={Hkv} L={L} W={W} S={S}: path {path}, first call "
                  f"{first_s:.2f} s, runs bitwise equal {same}, dk/dv == SWAA_BWD_HOPPER=1: {dkdv}")
            for name, a, c, b, z in zip(("dq", "dk", "dv"), g4, g4c, g1, g0):
                m = z.float().abs().max().item()
                print(f"  {name}: |4 - 1| {max_diff(a, b):.3g}, |4 cols - 4| {max_diff(c, a):.3g}, "
                      f"|4 - 0| {max_diff(a, z):.3g}, |1 - 0| {max_diff(b, z):.3g} "
                      f"(max |{name}| {m:.3g})")
                ok = ok and max(max_diff(a, z), max_diff(c, z), max_diff(b, z)) <= 2e-2 * m
            ok = ok and same and dkdv and path == "sm90-fused"
    print("smoke ok" if ok else "smoke FAILED: the single pass disagrees")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
