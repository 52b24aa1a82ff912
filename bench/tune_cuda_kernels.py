"""Which tile settings of the CUDA kernels are fastest, and where does the
backward spend its time?  Times swaa::fwd under SWAA_FWD_WARPS = 4 / 8 and
SWAA_FWD_ORDER = 0 / 1, and swaa::bwd under SWAA_BWD_KV_BLOCK_M = 32 / 64,
SWAA_BWD_SPLIT = 0 / 1 (split of the sink key blocks' dk/dv work) and
SWAA_BWD_ORDER = 0 / 1 (CTA order), SWAA_WARP_SKIP = 0 / 1 (forward and dq
warps skip key tiles their rows cannot see), SWAA_FWD_HOPPER = 0 / 1 / 2 (sm_80
forward / the sm_90a wgmma forward / its variant with softmax overlapping P V, on
compute capability 9.0), SWAA_BWD_HOPPER = 0 / 1 / 2 / 3 (sm_80 backward /
the sm_90a wgmma backward / only its dk/dv pass / only its dq pass) (knobs read
at each launch, so one process compares them on the same inputs), then prints
the per-kernel CUDA time of one backward with the defaults (torch.profiler;
with --bwd-hopper also one with SWAA_BWD_HOPPER=1).  JSON rows to --out.
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


def visible_pairs(N, W, S, F=None):
    """(query, key) pairs the mask keeps (square, causal), float64-safe in Python ints."""
    p = torch.arange(N, dtype=torch.int64)
    n = torch.minimum(p + 1, torch.tensor(W)) + (p + 1 - W).clamp(min=0).clamp(max=S)
    if F is not None:
        n = torch.where(p >= F, p + 1, n)
    return int(n.sum())


def label(setting):
    return ",".join(f"{k}={v}" for k, v in setting.items()) or "defaults"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/results/cuda_tuning.jsonl"))
    ap.add_argument("--fwd-only", action="store_true", help="forward rows only (no backward)")
    ap.add_argument("--bwd-hopper", action="store_true",
                    help="backward rows of SWAA_BWD_HOPPER=0/1/2/3 only (forward: defaults)")
    ap.add_argument("--bwd-fused", action="store_true",
                    help="backward rows and per-kernel times of SWAA_BWD_HOPPER=1 (two passes) "
                         "and 4 (single pass; also with SWAA_BWD_FUSED_DQ=1), on the issue's "
                         "shapes incl. S=0 (forward: defaults)")
    args = ap.parse_args()
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    rows = []
    # First the two forwards (Hopper where it applies, sm_80); the sm_80 knobs
    # with SWAA_FWD_HOPPER=0 so they time that kernel at D=128 too.
    fwd_settings = [{"SWAA_FWD_HOPPER": "1"}, {"SWAA_FWD_HOPPER": "2"}, {"SWAA_FWD_HOPPER": "0"},
                    {"SWAA_FWD_HOPPER": "0", "SWAA_FWD_WARPS": "4"},
                    {"SWAA_FWD_HOPPER": "0", "SWAA_FWD_WARPS": "8"},
                    {"SWAA_FWD_ORDER": "0"}, {"SWAA_FWD_HOPPER": "0", "SWAA_WARP_SKIP": "0"}]
    bwd_settings = [  # first: the defaults; second: the v3 kernels' layout
        {},
        {"SWAA_BWD_SPLIT": "0", "SWAA_BWD_ORDER": "0"},
        {"SWAA_BWD_SPLIT": "0"},
        {"SWAA_BWD_ORDER": "0"},
        {"SWAA_WARP_SKIP": "0"},
        {"SWAA_BWD_KV_BLOCK_M": "32"},
    ]
    if args.fwd_only:
        bwd_settings = []
    if args.bwd_hopper:
        fwd_settings = [{}]
        bwd_settings = [{"SWAA_BWD_HOPPER": "0"}, {"SWAA_BWD_HOPPER": "1"},
                        {"SWAA_BWD_HOPPER": "2"}, {"SWAA_BWD_HOPPER": "3"},
                        {"SWAA_BWD_HOPPER": "1", "SWAA_BWD_SPLIT": "0"}]
    profile_settings = [{}] + ([{"SWAA_BWD_HOPPER": "1"}] if args.bwd_hopper else [])
    # (D, N, W, S, full_from)
    shapes = [(128, 32768, 4096, 4, None), (64, 32768, 4096, 4, None),
              (128, 8192, 1024, 128, None), (128, 32768, 1024, 4, None),
              (128, 32768, 4096, 4, 24576), (128, 131072, 1024, 4, None)]
    if args.bwd_fused:
        fwd_settings = [{}]
        cols = {"SWAA_BWD_HOPPER": "4", "SWAA_BWD_FUSED_DQ": "1"}  # dQ split by columns (D=128)
        bwd_settings = [{"SWAA_BWD_HOPPER": "1"}, {"SWAA_BWD_HOPPER": "4"}, cols]
        profile_settings = [{"SWAA_BWD_HOPPER": "1"}, {"SWAA_BWD_HOPPER": "4"}, cols]
        # the shapes below 1.3x flex (S=0, W=4096, D=64) first, then the rest of the grid
        shapes = [(128, 32768, 4096, 0, None), (64, 32768, 1024, 0, None),
                  (128, 8192, 4096, 0, None), (128, 32768, 4096, 4, None),
                  (64, 32768, 4096, 4, None), (128, 32768, 1024, 4, None),
                  (128, 8192, 1024, 128, None), (128, 32768, 4096, 4, 24576),
                  (64, 131072, 1024, 0, None)]
    knobs = {k for st in fwd_settings + bwd_settings for k in st}
    for D, N, W, S, F in shapes:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(1, 32, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, 8, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, 8, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
        do = torch.randn_like(q)
        scale = D ** -0.5
        fwd_flop = 4 * D * visible_pairs(N, W, S, F) * 32
        ff = None if F is None else torch.full((1,), F, dtype=torch.int64, device="cuda")
        shape = dict(D=D, N=N, W=W, S=S, full_from=F)
        for key in knobs:
            os.environ.pop(key, None)
        out, lse = torch.ops.swaa.fwd(q, k, v, W, S, ff, scale)
        for setting in fwd_settings:
            os.environ.update(setting)
            o2, _ = torch.ops.swaa.fwd(q, k, v, W, S, ff, scale)
            ms = median_ms(lambda: torch.ops.swaa.fwd(q, k, v, W, S, ff, scale))
            path = (torch.ops.swaa.fwd_path(q, k, v) if hasattr(torch.ops.swaa, "fwd_path")
                    else "sm80")
            rows.append(dict(meta, what="fwd", knob=label(setting), path=path, **shape,
                             ms=round(ms, 4), tflops=round(fwd_flop / ms / 1e9, 1),
                             equal_to_default=torch.equal(o2, out),
                             max_diff_to_default=(o2.float() - out.float()).abs().max().item()))
            for key in setting:
                os.environ.pop(key)
        if args.fwd_only:
            for r in rows[-len(fwd_settings):]:
                print(json.dumps(r), flush=True)
            del q, k, v, do, out, lse
            continue
        ref = torch.ops.swaa.bwd(do, q, k, v, out, lse, W, S, ff, scale)
        for setting in bwd_settings:
            os.environ.update(setting)
            grads = torch.ops.swaa.bwd(do, q, k, v, out, lse, W, S, ff, scale)
            # the split changes the summation order of the sink keys' dk/dv only
            diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(grads, ref))
            ms = median_ms(lambda: torch.ops.swaa.bwd(do, q, k, v, out, lse, W, S, ff, scale))
            bwd_path = (torch.ops.swaa.bwd_path(do, q, k, v)
                        if hasattr(torch.ops.swaa, "bwd_path") else "sm80")
            rows.append(dict(meta, what="bwd", knob=label(setting), path=bwd_path, **shape,
                             ms=round(ms, 4), tflops=round(2.5 * fwd_flop / ms / 1e9, 1),
                             max_diff_to_default=diff))
            for key in setting:
                os.environ.pop(key)
        for setting in profile_settings:
            os.environ.update(setting)
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                torch.ops.swaa.fwd(q, k, v, W, S, ff, scale)
                torch.ops.swaa.bwd(do, q, k, v, out, lse, W, S, ff, scale)
                torch.cuda.synchronize()
            for key in setting:
                os.environ.pop(key)
            kernels = {}
            for e in prof.key_averages():
                if "swaa" in e.key:
                    name = e.key.split("(")[0].split("<")[0].replace("void swaa::cuda::", "")
                    kernels[name] = round(e.device_time_total / 1000, 3)
            rows.append(dict(meta, what="kernel_ms", knob=label(setting), **shape, kernels=kernels))
        for r in rows[-(len(fwd_settings) + len(bwd_settings) + len(profile_settings)):]:
            print(json.dumps(r), flush=True)
        del q, k, v, do, out, lse, ref, grads
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
