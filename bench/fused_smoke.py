"""Smoke test of the single-pass Hopper backward (SWAA_BWD_HOPPER=4, docs/cuda_kernels.md
"v7"), the first thing the `fused` step of bench/gpu_check.sh runs, under a short time limit
(a deadlock of the turn counters must not eat the device call; the turn watchdog is set short
here, SWAA_BWD_FUSED_WATCHDOG = 2^22 polls, ~2-4 s, unless set, so a wrong turn shows up as a
trap, not as the time limit).  Outputs and the float32 dQ accumulator start as NaN
(SWAA_POISON_OUTPUTS=1), so a tile left unstored cannot show a previous call's values.

On six shapes (D 128/64, GQA, sinks > a block, S=0) it compares knob 4 (both dQ splits,
SWAA_BWD_FUSED_DQ=0/1) against knob 1 (the v6 two passes) and 0 (sm_80); then on the shapes
that most likely expose a wrong turn rank or total: Lq < Lk with GQA 4 and sinks > a block
(fp16), and two sequences with full_from per sequence and the sink blocks split in 64 pieces
(SWAA_BWD_SPLIT=64: empty trailing pieces).  Each: the path is "sm90-fused", no NaN, two runs
bitwise equal, dk/dv equal knob 1's bitwise, dq within 1e-2 of knob 1's per 64-row tile
(relative to the tile's largest value), dq/dk/dv within 2e-2 of the sm_80 backward's largest
value.  Exit code 0 when all hold.

  python bench/fused_smoke.py
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["SWAA_POISON_OUTPUTS"] = "1"  # read once per process, at the first call
os.environ.setdefault("SWAA_BWD_FUSED_WATCHDOG", str(1 << 22))

import torch  # noqa: E402

import swaa_ext  # noqa: E402,F401  (registers torch.ops.swaa)
from swaa_ext.reference import tile_rel_err  # noqa: E402

# (B, Hq, Hkv, Lq, Lk, W, S, full_from, dtype, SWAA_BWD_SPLIT or None), each at D 128 and 64
SHAPES = [
    (1, 4, 2, 1000, 1000, 300, 4, None, torch.bfloat16, None),
    (1, 8, 2, 4096, 4096, 1024, 130, None, torch.bfloat16, None),
    (1, 2, 1, 8192, 8192, 4096, 0, None, torch.bfloat16, None),
    (1, 8, 2, 100, 777, 64, 129, None, torch.float16, None),      # Lq < Lk, GQA 4, sinks > a block
    (2, 8, 2, 1500, 1500, 64, 200, [1 << 40, 750], torch.bfloat16, "64"),  # split, full_from
]
DQ_TILE_TOL = 1e-2  # single pass vs two passes per 64-row tile (tests/test_bwd_fused.py)


def bwd(knob, args, dq_split="0"):
    os.environ["SWAA_BWD_HOPPER"] = knob
    os.environ["SWAA_BWD_FUSED_DQ"] = dq_split
    grads = torch.ops.swaa.bwd(*args)
    torch.cuda.synchronize()
    return grads


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def check(D, B, Hq, Hkv, Lq, Lk, W, S, ff, dtype, split) -> bool:
    if split is None:
        os.environ.pop("SWAA_BWD_SPLIT", None)
    else:
        os.environ["SWAA_BWD_SPLIT"] = split
    g = torch.Generator(device="cuda").manual_seed(D + Lq + Lk)
    q = torch.randn(B, Hq, Lq, D, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=dtype, generator=g)
    do = torch.randn(q.shape, device="cuda", dtype=dtype, generator=g)
    ff_t = None if ff is None else torch.tensor(ff, dtype=torch.int64, device="cuda")
    out, lse = torch.ops.swaa.fwd(q, k, v, W, S, ff_t, 0.088)
    args = (do, q, k, v, out, lse, W, S, ff_t, 0.088)
    os.environ["SWAA_BWD_HOPPER"] = "4"
    path = torch.ops.swaa.bwd_path(do, q, k, v, W, S, ff_t)
    t0 = time.time()
    g4 = bwd("4", args)
    first_s = time.time() - t0
    g4b = bwd("4", args)
    g4c = bwd("4", args, dq_split="1")  # dQ split by columns (D=128; ignored at 64)
    g4d = bwd("4", args, dq_split="1")
    g1 = bwd("1", args)
    g0 = bwd("0", args)
    no_nan = not any(torch.isnan(x).any().item() for x in (*g4, *g4c))
    same = all(torch.equal(a, b) for a, b in zip((*g4, *g4c), (*g4b, *g4d)))
    dkdv = all(torch.equal(g[i], g1[i]) for g in (g4, g4c) for i in (1, 2))
    tile_err = max(tile_rel_err(g4[0], g1[0]), tile_rel_err(g4c[0], g1[0]))
    print(f"D={D} B={B} Hq={Hq} Hkv={Hkv} Lq={Lq} Lk={Lk} W={W} S={S} ff={ff} "
          f"{str(dtype)[6:]} split={split}: path {path}, first call {first_s:.2f} s, no NaN "
          f"{no_nan}, runs bitwise equal {same}, dk/dv == SWAA_BWD_HOPPER=1: {dkdv}, "
          f"dq tile err vs 1 {tile_err:.3g}")
    ok = no_nan and same and dkdv and tile_err <= DQ_TILE_TOL and path == "sm90-fused"
    for name, a, c, b, z in zip(("dq", "dk", "dv"), g4, g4c, g1, g0):
        m = z.float().abs().max().item()
        print(f"  {name}: |4 - 1| {max_diff(a, b):.3g}, |4 cols - 4| {max_diff(c, a):.3g}, "
              f"|4 - 0| {max_diff(a, z):.3g}, |1 - 0| {max_diff(b, z):.3g} "
              f"(max |{name}| {m:.3g})")
        ok = ok and max(max_diff(a, z), max_diff(c, z), max_diff(b, z)) <= 2e-2 * m
    return ok


def main() -> int:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    ok = True
    for shape in SHAPES:
        for D in (128, 64):
            ok = check(D, *shape) and ok
    print("smoke ok" if ok else "smoke FAILED: the single pass disagrees")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
