"""Is swaa's CUDA sliding-window attention faster than FlexAttention and SDPA?

A minimal side-by-side timer for the CUDA kernels (issue 3): the `bench` step of
bench/gpu_check.sh (bench/bench_attention.py --preset gpu is the general benchmark).
Same process, same inputs, same GPU:
  swaa  swaa_ext.swa_attention (window W, sink S)
  flex  FlexAttention compiled, block mask of causal and (q - k < W or k < S)
  sdpa  torch SDPA full causal (does more work: every causal pair)
  swaa-v6  swaa with SWAA_BWD_HOPPER=1 (the two-pass Hopper backward; the default
           picks it or the single pass by shape)
  swaa-fused  swaa with SWAA_BWD_HOPPER=4 (the single-pass Hopper backward)
  swaa-fused-cols  the same with SWAA_BWD_FUSED_DQ=1 (its dQ split by columns, D=128;
                   the default there since session 10)
  swaa-fused-keys  the same with SWAA_BWD_FUSED_DQ=0 (its dQ split by keys)
  swaa-concurrent  swaa with SWAA_BWD_CONCURRENT=1 (the two backward passes on two streams)
Times are the median of CUDA-event timings over --reps runs that rotate over
two input sets (so L2 does not hold one set), taken in --rounds interleaved
rounds: every implementation of a shape is timed once per round, in turn, so
a drift of the GPU's clocks or temperature during the shape's timing falls on
all of them alike (between two calls session 10 saw one kernel's per-shape
times move by up to 13%: compare ratios within one call).  Effective TFLOP/s
count the visible (query, key) pairs of the SWA mask only, 4*D flops per pair
forward and 3.5x that for forward+backward, for every implementation (sdpa
included: its number says how fast it delivers the SWA result).

  python bench/bench_cuda_kernels.py --out bench/results/cuda_kernels.jsonl
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import itertools
import json
import os
import statistics
import subprocess
from pathlib import Path

import torch
import torch.nn.functional as F

import swaa_ext

# swaa run under extra environment knobs (read by swaa::bwd at each call)
IMPL_ENV = {"swaa-v6": {"SWAA_BWD_HOPPER": "1"},
            "swaa-fused": {"SWAA_BWD_HOPPER": "4"},
            "swaa-fused-cols": {"SWAA_BWD_HOPPER": "4", "SWAA_BWD_FUSED_DQ": "1"},
            "swaa-fused-keys": {"SWAA_BWD_HOPPER": "4", "SWAA_BWD_FUSED_DQ": "0"},
            "swaa-concurrent": {"SWAA_BWD_CONCURRENT": "1"}}


def visible_pairs(n: int, window: int, sink: int) -> int:
    if window >= n:
        return n * (n + 1) // 2
    pairs = window * (window + 1) // 2 + (n - window) * window
    # rows p >= window also see sink keys j < min(sink, p - window + 1)
    for p in range(window, min(n, window + sink)):
        pairs += min(sink, p - window + 1)
    pairs += max(0, n - (window + sink)) * sink
    return pairs


def event_times(fn, sets, warmup: int, reps: int, first: int = 0) -> list[float]:
    """CUDA-event times (ms) of `reps` calls of fn, input sets rotated from
    index `first`, after `warmup` untimed calls."""
    for i in range(warmup):
        fn(*sets[i % len(sets)])
    torch.cuda.synchronize()
    times = []
    for i in range(first, first + reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        args = sets[i % len(sets)]
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def time_ms(fn, sets, warmup: int, reps: int) -> float:
    return statistics.median(event_times(fn, sets, warmup, reps))


def interleaved_ms(jobs: dict, warmup: int, reps: int, rounds: int, timer=event_times) -> dict:
    """Median time (ms) of each job, timed in `rounds` rounds that take the jobs
    in turn (about reps / rounds calls of each per round, reps in all; the
    warmup calls in the first round only).  jobs: name -> (fn, sets, env), env
    the knobs set around the job's calls.  timer(fn, sets, warmup, reps, first)
    returns the times of one block (event_times; tests pass a fake)."""
    rounds = max(1, min(rounds, reps))
    times = {name: [] for name in jobs}
    for r in range(rounds):
        n = reps // rounds + (1 if r < reps % rounds else 0)
        for name, (fn, sets, env) in jobs.items():
            saved = {key: os.environ.get(key) for key in env}
            os.environ.update(env)
            try:
                times[name] += timer(fn, sets, warmup if r == 0 else 0, n, len(times[name]))
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--D", type=int, nargs="+", default=[128, 64])
    ap.add_argument("--N", type=int, nargs="+", default=[8192, 32768, 131072])
    ap.add_argument("--W", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--S", type=int, nargs="+", default=[0, 4, 128])
    ap.add_argument("--Hq", type=int, default=32)
    ap.add_argument("--Hkv", type=int, default=8)
    ap.add_argument("--impls", nargs="+", default=["swaa", "flex", "sdpa"])
    ap.add_argument("--passes", nargs="+", default=["fwd", "fwd+bwd"])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds over the implementations (1: one block each)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results/cuda_kernels.jsonl"))
    args = ap.parse_args()

    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    # one compiled graph per (shape, mask): allow many recompiles, or dynamo falls
    # back to the unfused (full-matrix) flex_attention after 8
    for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                 "accumulated_recompile_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 1024)
    flex = torch.compile(flex_attention, dynamic=False)

    # SWAA_COMMIT, as in bench/common.py: the GPU machine's tree has no
    # trustworthy .git (a run of session 4 recorded main's hash, not the tree's)
    commit = os.environ.get("SWAA_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() or "unknown"
        except OSError:
            commit = "unknown"
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, commit=commit,
                date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                run=dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16
    B = 1
    sdpa_done = {}
    for D, N, W, S in itertools.product(args.D, args.N, args.W, args.S):
        scale = D ** -0.5
        sets = []
        for seed in range(2):
            g = torch.Generator(device="cuda").manual_seed(seed)
            q = torch.randn(B, args.Hq, N, D, device="cuda", dtype=dtype, generator=g)
            k = torch.randn(B, args.Hkv, N, D, device="cuda", dtype=dtype, generator=g)
            v = torch.randn(B, args.Hkv, N, D, device="cuda", dtype=dtype, generator=g)
            do = torch.randn_like(q)
            sets.append((q, k, v, do))
        pairs = visible_pairs(N, W, S) * B * args.Hq
        fwd_flop = 4 * D * pairs

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & ((q_idx - kv_idx < W) | (kv_idx < S))

        block_mask = None
        if "flex" in args.impls:
            # _compile: build the block mask tile by tile (the dense N x N mask of
            # N = 131072 would need 128 GiB)
            block_mask = create_block_mask(mask_mod, None, None, N, N, device="cuda", _compile=True)

        def run(impl, q, k, v):
            if impl in IMPL_ENV:  # its knobs are set around its timings
                impl = "swaa"
            if impl == "swaa":
                return swaa_ext.swa_attention(q, k, v, window=W, sink=S, softmax_scale=scale)
            if impl == "flex":
                return flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale,
                                                  enable_gqa=True)

        outs = {}
        for impl in args.impls:
            with torch.no_grad():
                outs[impl] = run(impl, *sets[0][:3])[:, :, -512:].float()
        ref_impl = "flex" if "flex" in outs else None
        grad_sets = [tuple(t.detach().requires_grad_(True) for t in s[:3]) + (s[3],) for s in sets]

        def fwd_fn(q, k, v, do, impl):
            with torch.no_grad():
                run(impl, q, k, v)

        def fwd_bwd_fn(q, k, v, do, impl):
            q.grad = k.grad = v.grad = None
            run(impl, q, k, v).backward(do)

        # every (impl, pass) of the shape in interleaved rounds; SDPA once per
        # (D, N): it does not depend on W, S
        jobs = {}
        for impl in args.impls:
            for pass_ in args.passes:
                if impl == "sdpa" and (D, N, pass_) in sdpa_done:
                    continue
                fn = functools.partial(fwd_fn if pass_ == "fwd" else fwd_bwd_fn, impl=impl)
                jobs[(impl, pass_)] = (fn, sets if pass_ == "fwd" else grad_sets,
                                       IMPL_ENV.get(impl, {}))
        times = interleaved_ms(jobs, args.warmup, args.reps, args.rounds)
        for impl in args.impls:
            saved = {key: os.environ.get(key) for key in IMPL_ENV.get(impl, {})}
            os.environ.update(IMPL_ENV.get(impl, {}))
            for pass_ in args.passes:
                ms = times[(impl, pass_)] if (impl, pass_) in times else sdpa_done[(D, N, pass_)]
                if impl == "sdpa":
                    sdpa_done[(D, N, pass_)] = ms
                flop = fwd_flop * (1.0 if pass_ == "fwd" else 3.5)
                row = dict(meta, impl=impl, **{"pass": pass_}, B=B, Hq=args.Hq, Hkv=args.Hkv,
                           D=D, N=N, W=W, S=S, dtype="bfloat16", ms=round(ms, 4),
                           tflops=round(flop / ms / 1e9, 1),
                           rounds=max(1, min(args.rounds, args.reps)))
                if impl.startswith("swaa"):  # which kernels ran (SWAA_FWD_HOPPER / _BWD_HOPPER)
                    row["swaa_fwd_path"] = torch.ops.swaa.fwd_path(*sets[0][:3])
                    q0, k0, v0, do0 = sets[0]
                    row["swaa_bwd_path"] = torch.ops.swaa.bwd_path(do0, q0, k0, v0, W, S)
                if ref_impl and impl != ref_impl and impl != "sdpa":
                    row["max_diff_vs_flex_last512"] = round(
                        (outs[impl] - outs[ref_impl]).abs().max().item(), 5)
                print(json.dumps(row), flush=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        del sets, outs, block_mask
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
