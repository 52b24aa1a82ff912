"""Which tile settings of the CUDA kernels are fastest, and where does the
backward spend its time?  Times swaa::fwd under SWAA_FWD_WARPS = 4 / 8 and
swaa::bwd under SWAA_BWD_KV_BLOCK_M = 32 / 64 (knobs read at each launch, so
one process compares them on the same inputs), then prints the per-kernel
CUDA time of one backward (torch.profiler).  JSON rows to --out.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
from pathlib import Path

import torch

import swaa_ext  # noqa: F401


def median_ms(fn, reps=10, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/results/cuda_tuning.jsonl"))
    args = ap.parse_args()
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    rows = []
    for D, N, W, S in [(128, 32768, 4096, 4), (64, 32768, 4096, 4), (128, 8192, 1024, 128), (128, 131072, 1024, 4)]:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(1, 32, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, 8, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, 8, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
        do = torch.randn_like(q)
        scale = D ** -0.5
        pairs = W * (W + 1) // 2 + (N - W) * W + max(0, N - W - S) * S
        fwd_flop = 4 * D * pairs * 32
        out, lse = torch.ops.swaa.fwd(q, k, v, W, S, None, scale)
        for warps in ("4", "8"):
            os.environ["SWAA_FWD_WARPS"] = warps
            o2, _ = torch.ops.swaa.fwd(q, k, v, W, S, None, scale)
            same = torch.equal(o2, out) if warps != "8" else None
            ms = median_ms(lambda: torch.ops.swaa.fwd(q, k, v, W, S, None, scale))
            rows.append(dict(meta, what="fwd", knob=f"SWAA_FWD_WARPS={warps}", D=D, N=N, W=W,
                             S=S, ms=round(ms, 4), tflops=round(fwd_flop / ms / 1e9, 1),
                             equal_to_default=same))
        os.environ.pop("SWAA_FWD_WARPS")
        for bm, stage in (("32", "1"), ("64", "1"), ("64", "0")):
            os.environ["SWAA_BWD_KV_BLOCK_M"] = bm
            os.environ["SWAA_BWD_STAGE"] = stage
            ms = median_ms(lambda: torch.ops.swaa.bwd(do, q, k, v, out, lse, W, S, None, scale))
            rows.append(dict(meta, what="bwd", knob=f"SWAA_BWD_KV_BLOCK_M={bm},SWAA_BWD_STAGE={stage}",
                             D=D, N=N, W=W, S=S, ms=round(ms, 4),
                             tflops=round(2.5 * fwd_flop / ms / 1e9, 1)))
        os.environ.pop("SWAA_BWD_KV_BLOCK_M")
        os.environ.pop("SWAA_BWD_STAGE")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            torch.ops.swaa.fwd(q, k, v, W, S, None, scale)
            torch.ops.swaa.bwd(do, q, k, v, out, lse, W, S, None, scale)
            torch.cuda.synchronize()
        kernels = {}
        for e in prof.key_averages():
            if "swaa" in e.key:
                name = e.key.split("(")[0].split("<")[0].replace("void swaa::cuda::", "")
                kernels[name] = round(e.device_time_total / 1000, 3)
        rows.append(dict(meta, what="kernel_ms", D=D, N=N, W=W, S=S, kernels=kernels))
        for r in rows[-6:]:
            print(json.dumps(r), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
