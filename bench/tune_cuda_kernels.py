"""Which settings of the CUDA kernels are fastest, and where does the backward
spend its time?  Every knob is read at each launch, so one process compares
them on the same inputs.  Six parts (--parts, default the first three):

  fwd-variants  the Hopper forwards side by side: SWAA_FWD_HOPPER = 1, 2 (v5, v5
                overlapped), 3, 4, 5, 6 (v5.1, v5.1 ping-pong, both with
                persistent CTAs; docs/cuda_kernels.md "v5.1"), 7 (6 with the lean
                softmax and issue path, session 9), 8 (7 with fewer instructions
                per key tile, session 14), 9 (8 with one-clause masks on
                boundary tiles, session 15; the default since), 10 (9
                freeing a stage's K and V apart), 11 (10 with each group's
                softmax overlapping its own P V; both session 15)
                on the issue's shapes (B=1, Hq=32, Hkv=8, bf16, D 128/64, N 8k/
                32k/128k, W 1024/4096, S=4): time, effective TFLOP/s, bitwise
                equality to the first variant, a table and the fastest variant per
                head dim (geometric mean of the speed-up over the first variant).
  bwd-variants  the backwards: SWAA_BWD_HOPPER = 0 (sm_80), 1 (Hopper two passes; the default where the shape rule does not pick 4), 2
                (Hopper dk/dv pass only), 3 (Hopper dq pass only), 1 without the
                sink split; then the per-kernel CUDA time of one forward + backward
                with the Hopper and with the sm_80 backward (torch.profiler).
  knobs         the sm_80 kernels' tile knobs (the fallback off Hopper and for
                inputs the Hopper kernels do not take): forward SWAA_FWD_WARPS 4/8,
                SWAA_FWD_ORDER=0, SWAA_WARP_SKIP=0; backward SWAA_BWD_SPLIT,
                SWAA_BWD_ORDER, SWAA_WARP_SKIP, SWAA_BWD_KV_BLOCK_M=32; per-kernel
                times of the sm_80 pair; then SWAA_FWD_ORDER=0 and SWAA_BWD_ORDER=0
                with the default (Hopper) kernels, which read them too.
  bwd-fused     the single-pass Hopper backward (SWAA_BWD_HOPPER=4, docs/
                cuda_kernels.md "v7") against the two passes (1), also with its dQ
                split by columns (SWAA_BWD_FUSED_DQ=1), and both with the KV heads
                one after the other (SWAA_BWD_ORDER=0), and v6 with its two passes
                on two streams (SWAA_BWD_CONCURRENT=1), v6 and v7 without the
                pipelined kernels (SWAA_BWD_PIPELINE=0) and v6 with the pipelined
                dk/dv kernel (2), with per-kernel times (one profile per setting,
                one setting after the other: bwd-ab times kernels in rounds), on
                FUSED_SHAPES: the shapes below 1.3x Flex first (S=0, W=4096, D=64).
  bwd-ab        an A/B of backward settings in interleaved rounds (--ab, default v6
                and v7 each with SWAA_BWD_PIPELINE=0 and as default) on FUSED_SHAPES:
                the backward's median time and each kernel's median CUDA time over
                --rounds rounds that take the settings in turn, so a drift of the
                clocks during the part moves every setting alike (session 11: in
                bwd-fused, timed one setting after the other, the unchanged D=128
                dk/dv kernel ran 1-15% faster in its later rows); a table of each
                setting over the first one (a kernel's over the first setting that
                runs it).
  bwd-rule      the default's choice between v6 and v7 (prefer_single_pass in
                csrc/cuda/attention.cpp: v7 when the keys are >= 7 x (W + S) long)
                checked across it: v6, v7 with each CTA order, and the default, at
                N = 2, 3, 4, 6 and 8 windows (W 1024 and 4096, D 128 and 64, S=4),
                then a table of v7 / v6 per shape and whether the default took the
                faster one.

bwd-variants and knobs time six shapes (D, N, W, S, full_from) chosen to move the
knobs.  Backward times (`what` = "bwd", every part) are medians over five
interleaved rounds of the part's settings (since session 11); the per-kernel
profiles of bwd-variants, knobs and bwd-fused are one run per setting.  JSON rows (`what`: fwd_variant, fwd, bwd, kernel_ms) are appended to --out.

  python bench/tune_cuda_kernels.py --parts fwd-variants --out /tmp/tuning.jsonl
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cuda_kernels import interleaved_ms, time_ms  # noqa: E402  (rotates over input sets)
from common import append_rows, run_metadata  # noqa: E402

import swaa_ext  # noqa: F401, E402  (registers torch.ops.swaa)

PARTS = ("fwd-variants", "bwd-variants", "knobs", "bwd-fused", "bwd-rule", "bwd-ab")
KNOBS = ("SWAA_FWD_HOPPER", "SWAA_BWD_HOPPER", "SWAA_FWD_WARPS", "SWAA_FWD_ORDER", "SWAA_BWD_ORDER",
         "SWAA_BWD_SPLIT", "SWAA_BWD_KV_BLOCK_M", "SWAA_WARP_SKIP", "SWAA_BWD_FUSED_DQ",
         "SWAA_BWD_CONCURRENT", "SWAA_BWD_PIPELINE", "SWAA_BWD_FUSED_STSM",
         "SWAA_BWD_FUSED_DQ_BUFS", "SWAA_BWD_FUSED_ITEM")
# (D, N, W, S, full_from) of the bwd-variants and knobs parts
TUNING_SHAPES = [(128, 32768, 4096, 4, None), (64, 32768, 4096, 4, None),
                 (128, 8192, 1024, 128, None), (128, 32768, 1024, 4, None),
                 (128, 32768, 4096, 4, 24576), (128, 131072, 1024, 4, None)]
# (D, N, W, S, full_from) of the bwd-fused part: the one shape group still slower than SDPA
# full causal in fwd+bwd (D=64, N=8192, W=4096), then the shapes below 1.3x Flex
FUSED_SHAPES = [(64, 8192, 4096, 0, None), (128, 32768, 4096, 0, None), (64, 32768, 1024, 0, None),
                (128, 8192, 4096, 0, None), (128, 32768, 4096, 4, None),
                (64, 32768, 4096, 4, None), (128, 32768, 1024, 4, None),
                (128, 8192, 1024, 128, None), (128, 32768, 4096, 4, 24576),
                (64, 131072, 1024, 0, None)]
# (D, N, W, S, full_from) of the bwd-rule part: N = 2 .. 8 windows around the rule's 7 x (W + S)
# (4 x (W + S) until session 9's run of this part)
RULE_SHAPES = [(D, r * W, W, 4, None) for D in (128, 64) for W in (1024, 4096)
               for r in (2, 3, 4, 6, 8)]
# the shapes (S=4) of the fwd-variants part
VARIANT_D, VARIANT_N, VARIANT_W, VARIANT_S = (128, 64), (8192, 32768, 131072), (1024, 4096), 4
HQ, HKV = 32, 8


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


@contextlib.contextmanager
def knob_env(setting):
    """The knobs of one setting, for the duration of a `with` block."""
    os.environ.update(setting)
    try:
        yield
    finally:
        for key in setting:
            os.environ.pop(key, None)


def random_qkv(D, N, seed=0, grad_out=False):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(1, HQ, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(1, HKV, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(1, HKV, N, D, device="cuda", dtype=torch.bfloat16, generator=g)
    if grad_out:
        return q, k, v, torch.randn(q.shape, device="cuda", dtype=q.dtype, generator=g)
    return q, k, v


def fwd_variant_rows(meta, variants, reps):
    """SWAA_FWD_HOPPER=<variant> side by side on the issue's shapes; prints a table."""
    rows = []
    for D, N, W in itertools.product(VARIANT_D, VARIANT_N, VARIANT_W):
        S, scale = VARIANT_S, D ** -0.5
        sets = [random_qkv(D, N, seed) for seed in range(2)]
        flop = 4 * D * visible_pairs(N, W, S) * HQ

        def fn(q, k, v, W=W, S=S, scale=scale):
            torch.ops.swaa.fwd(q, k, v, W, S, None, scale)

        first = None
        for variant in variants:
            with knob_env({"SWAA_FWD_HOPPER": variant}):
                path = torch.ops.swaa.fwd_path(*sets[0])
                out, lse = torch.ops.swaa.fwd(*sets[0], W, S, None, scale)
                if first is None:
                    first = (out, lse, variant)
                ms = time_ms(fn, sets, 3, reps)
            row = dict(meta, what="fwd_variant", knob=f"SWAA_FWD_HOPPER={variant}", path=path,
                       B=1, Hq=HQ, Hkv=HKV, D=D, N=N, W=W, S=S, dtype="bfloat16",
                       ms=round(ms, 4), tflops=round(flop / ms / 1e9, 1),
                       equal_to_first=bool(torch.equal(out, first[0])
                                           and torch.equal(lse, first[1])),
                       first=f"SWAA_FWD_HOPPER={first[2]}",
                       max_diff_to_first=(out.float() - first[0].float()).abs().max().item())
            print(json.dumps(row), flush=True)
            rows.append(row)
        del sets, first, out, lse
        torch.cuda.empty_cache()
    print_variant_table(rows, variants)
    return rows


def print_variant_table(rows, variants):
    """ms (TFLOP/s) per shape and variant; the fastest variant per head dim."""
    print(f"\n{'D':>4} {'N':>7} {'W':>5} " + " ".join(f"{'v=' + x + ' ms (TF/s)':>18}"
                                                     for x in variants))
    for D in VARIANT_D:
        logs = {x: [] for x in variants}
        for N, W in itertools.product(VARIANT_N, VARIANT_W):
            by = {r["knob"].split("=")[1]: r for r in rows if (r["D"], r["N"], r["W"]) == (D, N, W)}
            print(f"{D:>4} {N:>7} {W:>5} " + " ".join(
                f"{by[x]['ms']:>9.3f} ({by[x]['tflops']:>5.0f})" for x in variants))
            for x in variants:
                logs[x].append(math.log(by[variants[0]]["ms"] / by[x]["ms"]))
        gm = {x: math.exp(sum(v) / len(v)) for x, v in logs.items()}
        best = max(gm, key=gm.get)
        print(f"D={D}: speed-up over SWAA_FWD_HOPPER={variants[0]} (geometric mean): " +
              ", ".join(f"{x}: {gm[x]:.3f}x" for x in variants) + f"; fastest: {best}")


def fwd_rows(meta, fwd_settings, q, k, v, shape, ff):
    W, S, scale = shape["W"], shape["S"], shape["D"] ** -0.5
    flop = 4 * shape["D"] * visible_pairs(shape["N"], W, S, shape["full_from"]) * HQ
    out, _ = torch.ops.swaa.fwd(q, k, v, W, S, ff, scale)
    rows = []
    for setting in fwd_settings:
        with knob_env(setting):
            o2, _ = torch.ops.swaa.fwd(q, k, v, W, S, ff, scale)
            ms = median_ms(lambda: torch.ops.swaa.fwd(q, k, v, W, S, ff, scale))
            path = torch.ops.swaa.fwd_path(q, k, v)
        rows.append(dict(meta, what="fwd", knob=label(setting), path=path, **shape,
                         ms=round(ms, 4), tflops=round(flop / ms / 1e9, 1),
                         equal_to_default=torch.equal(o2, out),
                         max_diff_to_default=(o2.float() - out.float()).abs().max().item()))
    return rows


def bwd_path(do, q, k, v, W, S, ff):
    """The backward kernel a call takes (torch.ops.swaa.bwd_path; CUDA builds)."""
    return torch.ops.swaa.bwd_path(do, q, k, v, W, S, ff)


def bwd_rows(meta, bwd_settings, q, k, v, do, shape, ff, rounds=5, reps=10):
    """Each setting's backward: its difference to the default's gradients, its
    path, and its median time over `rounds` interleaved rounds (every setting
    timed in each round, so a drift of the clocks moves them alike)."""
    W, S, scale = shape["W"], shape["S"], shape["D"] ** -0.5
    flop = 2.5 * 4 * shape["D"] * visible_pairs(shape["N"], W, S, shape["full_from"]) * HQ
    out, lse = torch.ops.swaa.fwd(q, k, v, W, S, ff, scale)
    ref = torch.ops.swaa.bwd(do, q, k, v, out, lse, W, S, ff, scale)
    checks = {}
    for setting in bwd_settings:
        with knob_env(setting):
            grads = torch.ops.swaa.bwd(do, q, k, v, out, lse, W, S, ff, scale)
            # the split changes the summation order of the sink keys' dk/dv only
            diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(grads, ref))
            checks[label(setting)] = (diff, bwd_path(do, q, k, v, W, S, ff))
        del grads

    def bwd(q, k, v):
        torch.ops.swaa.bwd(do, q, k, v, out, lse, W, S, ff, scale)

    ms = interleaved_ms({label(s): (bwd, [(q, k, v)], s) for s in bwd_settings},
                        warmup=3, reps=reps, rounds=rounds)
    rows = []
    for setting in bwd_settings:
        name = label(setting)
        diff, path = checks[name]
        rows.append(dict(meta, what="bwd", knob=name, path=path, **shape,
                         ms=round(ms[name], 4), tflops=round(flop / ms[name] / 1e9, 1),
                         rounds=rounds, max_diff_to_default=diff))
    return rows


def profiled_kernel_ms(q, k, v, do, W, S, ff, scale):
    """CUDA time (ms) of each swaa kernel in one forward + backward (torch.profiler)."""
    out, lse = torch.ops.swaa.fwd(q, k, v, W, S, ff, scale)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        torch.ops.swaa.fwd(q, k, v, W, S, ff, scale)
        torch.ops.swaa.bwd(do, q, k, v, out, lse, W, S, ff, scale)
        torch.cuda.synchronize()
    kernels = {}
    for e in prof.key_averages():
        if "swaa" in e.key:
            name = e.key.split("(")[0].split("<")[0].replace("void swaa::cuda::", "")
            kernels[name] = e.device_time_total / 1000
    return kernels


def kernel_ms_rows(meta, profile_settings, q, k, v, do, shape, ff):
    """CUDA time of each swaa kernel in one forward + backward per setting."""
    W, S, scale = shape["W"], shape["S"], shape["D"] ** -0.5
    rows = []
    for setting in profile_settings:
        with knob_env(setting):
            kernels = profiled_kernel_ms(q, k, v, do, W, S, ff, scale)
        rows.append(dict(meta, what="kernel_ms", knob=label(setting), **shape,
                         kernels={name: round(ms, 3) for name, ms in kernels.items()}))
    return rows


def parse_setting(text):
    """'SWAA_BWD_HOPPER=1,SWAA_BWD_PIPELINE=1' -> {knob: value}; 'defaults' -> {}."""
    if text == "defaults":
        return {}
    items = text.split(",")
    if not all("=" in item for item in items):
        raise SystemExit(f"--ab: {text!r} is not KNOB=VALUE[,KNOB=VALUE...] or 'defaults'")
    setting = dict(item.split("=", 1) for item in items)
    unknown = sorted(set(setting) - set(KNOBS))
    if unknown:
        raise SystemExit(f"--ab: unknown knob(s) {unknown}; known: {', '.join(KNOBS)}")
    return setting


def parse_shape(text):
    """'128,8192,1024,4' -> (128, 8192, 1024, 4, None); a fifth number is full_from."""
    try:
        numbers = [int(x) for x in text.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) not in (4, 5) or numbers[0] not in (64, 128) or min(numbers[1:4]) < 0 \
            or numbers[1] < 1:
        raise SystemExit(f"--shapes: {text!r} is not D,N,W,S[,FULL_FROM] with D 64 or 128")
    return tuple(numbers) + (None,) * (5 - len(numbers))


def ab_rows(meta, settings, rounds, reps, shapes=FUSED_SHAPES):
    """The backward of each setting (bwd_rows: interleaved rounds) and its
    kernels' CUDA times, also in interleaved rounds (see the bwd-ab part); rows
    `what` = "bwd_ab" with ms and kernels."""
    rows = []
    for D, N, W, S, F in shapes:
        q, k, v, do = random_qkv(D, N, grad_out=True)
        ff = None if F is None else torch.full((1,), F, dtype=torch.int64, device="cuda")
        shape = dict(D=D, N=N, W=W, S=S, full_from=F)
        timed = bwd_rows(meta, settings, q, k, v, do, shape, ff, rounds=rounds, reps=reps)
        kernel_times = {label(s): {} for s in settings}
        for _ in range(rounds):
            for s in settings:
                with knob_env(s):
                    for name, t in profiled_kernel_ms(q, k, v, do, W, S, ff, D ** -0.5).items():
                        kernel_times[label(s)].setdefault(name, []).append(t)
        for row in timed:
            row.update(what="bwd_ab", kernels={k_: round(statistics.median(t), 3)
                                               for k_, t in kernel_times[row["knob"]].items()})
            print(json.dumps(row), flush=True)
            rows.append(row)
        del q, k, v, do
        torch.cuda.empty_cache()
    print_ab_table(rows, [label(s) for s in settings])
    return rows


def print_ab_table(rows, names):
    """Per shape: each setting's backward ms and its kernels' ms over the first setting's."""
    base = names[0]
    print(f"\nbwd-ab: median over interleaved rounds; x = {base} / setting (> 1: faster)")
    by = {}
    for r in rows:
        by.setdefault((r["D"], r["N"], r["W"], r["S"], r["full_from"]), {})[r["knob"]] = r
    for shape, m in by.items():
        print("D={} N={} W={} S={} full_from={}".format(*shape))
        for name in names:
            r, b = m[name], m[base]
            # a kernel's time over the first setting that runs it
            first = {k: next(m[n]["kernels"][k] for n in names if k in m[n]["kernels"])
                     for k in r["kernels"]}
            ks = ", ".join(f"{k.split('::')[-1]} {t:.3f} ({first[k] / t:.3f}x)"
                           for k, t in r["kernels"].items() if t >= 0.02)
            print(f"  {name:<45} {r['ms']:>8.3f} ms ({b['ms'] / r['ms']:.3f}x)  {ks}")


def shape_rows(meta, fwd_settings, bwd_settings, profile_settings, shapes=TUNING_SHAPES):
    """Forward, backward and per-kernel rows of the knob settings on `shapes`."""
    rows = []
    for D, N, W, S, F in shapes:
        q, k, v, do = random_qkv(D, N, grad_out=True)
        ff = None if F is None else torch.full((1,), F, dtype=torch.int64, device="cuda")
        shape = dict(D=D, N=N, W=W, S=S, full_from=F)
        new = fwd_rows(meta, fwd_settings, q, k, v, shape, ff)
        new += bwd_rows(meta, bwd_settings, q, k, v, do, shape, ff)
        new += kernel_ms_rows(meta, profile_settings, q, k, v, do, shape, ff)
        for r in new:
            print(json.dumps(r), flush=True)
        rows += new
        del q, k, v, do
        torch.cuda.empty_cache()
    return rows


# bwd-rule: the two passes, the single pass in each CTA order, and the default's choice
RULE_SETTINGS = [{"SWAA_BWD_HOPPER": "1"},
                 {"SWAA_BWD_HOPPER": "4", "SWAA_BWD_ORDER": "1"},
                 {"SWAA_BWD_HOPPER": "4", "SWAA_BWD_ORDER": "0"}, {}]


def print_rule_table(rows):
    """v7 / v6 per shape (the better v7 order) and the default's pick."""
    by = {}
    for r in rows:
        by.setdefault((r["D"], r["W"], r["N"]), {})[r["knob"]] = r
    print(f"{'D':>4} {'W':>5} {'N':>6} {'N/W':>4} {'v6 ms':>8} {'v7 o1':>8} {'v7 o0':>8} "
          f"{'v6/v7':>6}  default")
    for (D, W, N), m in sorted(by.items()):
        v6 = m["SWAA_BWD_HOPPER=1"]["ms"]
        o1 = m["SWAA_BWD_HOPPER=4,SWAA_BWD_ORDER=1"]["ms"]
        o0 = m["SWAA_BWD_HOPPER=4,SWAA_BWD_ORDER=0"]["ms"]
        default = m["defaults"]
        best = "sm90-fused" if min(o0, o1) < v6 else "sm90"
        verdict = "the faster" if default["path"] == best else "the SLOWER"
        print(f"{D:>4} {W:>5} {N:>6} {N // W:>4} {v6:>8.3f} {o1:>8.3f} {o0:>8.3f} "
              f"{v6 / min(o0, o1):>5.2f}x  {default['path']} ({default['ms']:.3f} ms, {verdict})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS[:3]))
    ap.add_argument("--variants", nargs="+", default=["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"],
                    help="fwd-variants: the SWAA_FWD_HOPPER values, the first is the baseline")
    ap.add_argument("--reps", type=int, default=10,
                    help="fwd-variants: timed runs per row; bwd-ab: timed runs per setting (x2)")
    ap.add_argument("--ab", nargs="+", metavar="KNOB=V[,KNOB=V]", default=None,
                    help="bwd-ab: the settings, the first the baseline ('defaults' for none; "
                         "default: v6 and v7, each unpipelined and as default)")
    ap.add_argument("--rounds", type=int, default=5, help="bwd-ab: interleaved rounds")
    ap.add_argument("--shapes", nargs="+", metavar="D,N,W,S[,FULL_FROM]", default=None,
                    help="bwd-ab: the shapes (default: the bwd-fused part's ten)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/cuda_tuning.jsonl"))
    args = ap.parse_args()
    for key in KNOBS:  # "defaults" means the built-in defaults
        os.environ.pop(key, None)
    meta = run_metadata(torch.device("cuda"))
    rows = []
    if "fwd-variants" in args.parts:
        rows += fwd_variant_rows(meta, args.variants, args.reps)
    if "bwd-variants" in args.parts:
        rows += shape_rows(
            meta, fwd_settings=[{}],
            bwd_settings=[{"SWAA_BWD_HOPPER": "0"}, {"SWAA_BWD_HOPPER": "1"},
                          {"SWAA_BWD_HOPPER": "2"}, {"SWAA_BWD_HOPPER": "3"},
                          {"SWAA_BWD_HOPPER": "1", "SWAA_BWD_SPLIT": "0"}],
            profile_settings=[{}, {"SWAA_BWD_HOPPER": "0"}])
    if "knobs" in args.parts:
        sm80_fwd, sm80_bwd = {"SWAA_FWD_HOPPER": "0"}, {"SWAA_BWD_HOPPER": "0"}
        rows += shape_rows(
            meta,
            fwd_settings=[sm80_fwd, {**sm80_fwd, "SWAA_FWD_WARPS": "4"},
                          {**sm80_fwd, "SWAA_FWD_WARPS": "8"}, {**sm80_fwd, "SWAA_FWD_ORDER": "0"},
                          {**sm80_fwd, "SWAA_WARP_SKIP": "0"}, {"SWAA_FWD_ORDER": "0"}],
            bwd_settings=[sm80_bwd,  # then the v3 kernels' layout, then one knob at a time
                          {**sm80_bwd, "SWAA_BWD_SPLIT": "0", "SWAA_BWD_ORDER": "0"},
                          {**sm80_bwd, "SWAA_BWD_SPLIT": "0"}, {**sm80_bwd, "SWAA_BWD_ORDER": "0"},
                          {**sm80_bwd, "SWAA_WARP_SKIP": "0"},
                          {**sm80_bwd, "SWAA_BWD_KV_BLOCK_M": "32"}, {"SWAA_BWD_ORDER": "0"}],
            profile_settings=[{**sm80_fwd, **sm80_bwd}])
    if "bwd-fused" in args.parts:
        # dQ split by columns (D=128; its default there since session 10, so the
        # key split is timed explicitly beside it)
        cols = {"SWAA_BWD_HOPPER": "4", "SWAA_BWD_FUSED_DQ": "1"}
        keys = {"SWAA_BWD_HOPPER": "4", "SWAA_BWD_FUSED_DQ": "0"}
        # SWAA_BWD_ORDER=0 (the KV heads one after the other): the CTAs running at
        # once then add into the float32 dQ of one KV head's query heads only, a
        # working set that can stay in L2 (ncu, session 6: with heads inner v7's
        # kernel ran at 70% of DRAM bandwidth, L2 hit rate 34%)
        # (v7's order when SWAA_BWD_ORDER is unset depends on the window since session 8:
        # both orders are set explicitly here)
        settings = [{"SWAA_BWD_HOPPER": "1"}, {"SWAA_BWD_HOPPER": "4"}, cols, keys,
                    {"SWAA_BWD_HOPPER": "4", "SWAA_BWD_ORDER": "0"},
                    {"SWAA_BWD_HOPPER": "4", "SWAA_BWD_ORDER": "1"},
                    {"SWAA_BWD_HOPPER": "1", "SWAA_BWD_ORDER": "0"},
                    # v6 and v7 without the pipelined kernels (the default since
                    # session 11: v6's dq kernel, v7 at D=64), and v6 with the
                    # pipelined dk/dv kernel too (D=64; 0.87-0.90x in session 11)
                    {"SWAA_BWD_HOPPER": "1", "SWAA_BWD_PIPELINE": "0"},
                    {"SWAA_BWD_HOPPER": "4", "SWAA_BWD_PIPELINE": "0"},
                    {"SWAA_BWD_HOPPER": "1", "SWAA_BWD_PIPELINE": "2"}]
        # v6 with its dq pass on a second stream beside the dk/dv pass (no kernel profile:
        # the two overlap, so per-kernel times would not add up to the call)
        concurrent = {"SWAA_BWD_HOPPER": "1", "SWAA_BWD_CONCURRENT": "1"}
        rows += shape_rows(meta, fwd_settings=[{}], bwd_settings=settings + [concurrent],
                           profile_settings=settings, shapes=FUSED_SHAPES)
    if "bwd-rule" in args.parts:
        new = shape_rows(meta, fwd_settings=[], bwd_settings=RULE_SETTINGS,
                         profile_settings=[], shapes=RULE_SHAPES)
        print_rule_table(new)
        rows += new
    if "bwd-ab" in args.parts:
        settings = [parse_setting(t) for t in (args.ab or [
            "SWAA_BWD_HOPPER=1,SWAA_BWD_PIPELINE=0", "SWAA_BWD_HOPPER=1",
            "SWAA_BWD_HOPPER=4,SWAA_BWD_PIPELINE=0", "SWAA_BWD_HOPPER=4"])]
        shapes = FUSED_SHAPES if args.shapes is None else [parse_shape(t) for t in args.shapes]
        rows += ab_rows(meta, settings, args.rounds, 2 * args.reps, shapes)
    append_rows(args.out, rows)
    print(f"{len(rows)} rows appended to {args.out}")


if __name__ == "__main__":
    main()
