"""Which Hopper forward variant is fastest on the issue's shapes?

Times swaa::fwd under SWAA_FWD_HOPPER = 1, 2 (v5, v5 overlapped), 3, 4, 5, 6
(v5.1, v5.1 ping-pong, and both with persistent CTAs; docs/cuda_kernels.md
"v5.1") side by side in one process, on
the same inputs: B=1, Hq=32, Hkv=8, bfloat16, D in {128, 64}, N in {8192,
32768, 131072}, W in {1024, 4096}, S=4 (override with the flags).  Each row
names the path that ran (swaa::fwd_path), the time (median of --reps CUDA-event
timings rotating over two input sets), effective TFLOP/s (visible pairs only,
4 D flops each) and whether the output equals v5's bitwise.  Prints a table and
the fastest variant per head dim (geometric mean of the speed-up over v5 across
that head dim's shapes), which bench/fwd51_gpu.sh passes on to
bench/bench_cuda_kernels.py; --best-out writes it as lines "D variant".

  python bench/fwd51_compare.py --out bench/results/fwd51_variants.jsonl
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cuda_kernels import time_ms, visible_pairs
from common import append_rows, run_metadata

import swaa_ext  # noqa: F401


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=["1", "2", "3", "4", "5", "6"])
    ap.add_argument("--D", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--N", type=int, nargs="+", default=[8192, 32768, 131072])
    ap.add_argument("--W", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--S", type=int, nargs="+", default=[4])
    ap.add_argument("--Hq", type=int, default=32)
    ap.add_argument("--Hkv", type=int, default=8)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/fwd51_variants.jsonl"))
    ap.add_argument("--best-out", type=Path, default=None)
    args = ap.parse_args()
    meta = run_metadata(torch.device("cuda"))
    rows = []
    for D, N, W, S in itertools.product(args.D, args.N, args.W, args.S):
        scale = D ** -0.5
        sets = []
        for seed in range(2):
            g = torch.Generator(device="cuda").manual_seed(seed)
            q = torch.randn(1, args.Hq, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
            k = torch.randn(1, args.Hkv, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
            v = torch.randn(1, args.Hkv, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
            sets.append((q, k, v))
        flop = 4 * D * visible_pairs(N, W, S) * args.Hq

        def fn(q, k, v, W=W, S=S, scale=scale):
            torch.ops.swaa.fwd(q, k, v, W, S, None, scale)

        ref = None
        for variant in args.variants:
            os.environ["SWAA_FWD_HOPPER"] = variant
            path = torch.ops.swaa.fwd_path(*sets[0])
            out, lse = torch.ops.swaa.fwd(*sets[0], W, S, None, scale)
            if ref is None:
                ref = (out, lse, variant)
            ms = time_ms(fn, sets, args.warmup, args.reps)
            row = dict(meta, what="fwd_variant", knob=f"SWAA_FWD_HOPPER={variant}", path=path,
                       B=1, Hq=args.Hq, Hkv=args.Hkv, D=D, N=N, W=W, S=S, dtype="bfloat16",
                       ms=round(ms, 4), tflops=round(flop / ms / 1e9, 1),
                       equal_to_first=bool(torch.equal(out, ref[0]) and torch.equal(lse, ref[1])),
                       first=f"SWAA_FWD_HOPPER={ref[2]}",
                       max_diff_to_first=(out.float() - ref[0].float()).abs().max().item())
            print(json.dumps(row), flush=True)
            rows.append(row)
        os.environ.pop("SWAA_FWD_HOPPER", None)
        del sets, ref, out, lse
        torch.cuda.empty_cache()
    append_rows(args.out, rows)

    # Table and the fastest variant per head dim.
    print(f"\n{'D':>4} {'N':>7} {'W':>5} " + " ".join(f"{'v=' + x + ' ms (TF/s)':>18}"
                                                     for x in args.variants))
    best_lines = []
    for D in args.D:
        logs = {x: [] for x in args.variants}
        for N, W, S in itertools.product(args.N, args.W, args.S):
            by = {r["knob"][-1]: r for r in rows if (r["D"], r["N"], r["W"], r["S"]) == (D, N, W, S)}
            print(f"{D:>4} {N:>7} {W:>5} " + " ".join(
                f"{by[x]['ms']:>9.3f} ({by[x]['tflops']:>5.0f})" for x in args.variants))
            for x in args.variants:
                logs[x].append(math.log(by[args.variants[0]]["ms"] / by[x]["ms"]))
        gm = {x: math.exp(sum(v) / len(v)) for x, v in logs.items()}
        best = max(gm, key=gm.get)
        print(f"D={D}: speed-up over SWAA_FWD_HOPPER={args.variants[0]} (geometric mean): " +
              ", ".join(f"{x}: {gm[x]:.3f}x" for x in args.variants) + f"; fastest: {best}")
        best_lines.append(f"{D} {best}")
    if args.best_out is not None:
        args.best_out.write_text("\n".join(best_lines) + "\n")


if __name__ == "__main__":
    main()
