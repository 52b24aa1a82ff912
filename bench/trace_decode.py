"""Where one ring decode step spends its time, CTA by CTA (CUDA, sm_90).

Runs decode steps of a full RingKVCache (bench/bench_decode.py's shape: Hq=32, Hkv=8, D=128,
W=4096, S=4, bf16) with SWAA_DECODE_TRACE=1: thread 0 of every CTA of the split kernel and of
the combine kernel writes the GPU's global timer (ns) at fixed points (csrc/cuda/ring.cu,
`CtaTrace`).  The last step of each batch size is read back (swaa_ext._C.decode_trace) and
summarised, all times from the first split CTA's start:

  split   start     when the CTA began (its spread is the launch's rasterisation)
          first     when its first tile had landed (start .. first: the pipeline's fill)
          loop      when all its tiles were done
          written   when its partial results were written
  combine start     when the CTA began (under PDL: while the split kernel runs)
          released  when griddepcontrol.wait let it go (the split grid complete)
          written   when its output (and seqlens) were written

The global timer ticks in steps of some tens of ns on recent GPUs (printed as `tick`).  The
trace costs a register test per point when off and a few stores per CTA when on; compare the
step's length with and without it (printed).

    python bench/trace_decode.py --batches 1,8,64 --out trace.jsonl --raw raw.jsonl
    python bench/trace_decode.py --timeline-from bench/results/decode_trace_raw_H200.jsonl.gz

`--timeline-from` (no GPU) turns saved --raw rows into the step's read rate over time: each
split CTA's bytes are spread evenly, its first tile over [start, first] and the others over
[first, loop done], and summed over CTAs in 2 us windows (an estimate: the trace does not see
single tiles).
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import swaa_ext  # noqa: E402
from swaa_ext import RingKVCache  # noqa: E402

SLOTS, MAX_CTAS = 8, 8192  # csrc/cuda/ring.cu: kTraceSlots, kTraceMaxCtas
SPLIT_FIELDS = ("start", "first", "loop", "written", "sm", "tiles")
COMBINE_FIELDS = ("start", "released", "written", "sm")


def read_trace():
    """(split CTAs, combine CTAs): lists of dicts of the CTAs that ran."""
    flat = swaa_ext._C.decode_trace()
    out = []
    for kernel, fields in ((0, SPLIT_FIELDS), (1, COMBINE_FIELDS)):
        ctas = []
        for c in range(MAX_CTAS):
            row = flat[(kernel * MAX_CTAS + c) * SLOTS:(kernel * MAX_CTAS + c + 1) * SLOTS]
            if row[0] == 0:
                continue
            ctas.append(dict(zip(fields, row)))
        out.append(ctas)
    return out


def stats(values):
    values = sorted(values)
    if not values:
        return dict(min=math.nan, p50=math.nan, p90=math.nan, max=math.nan)
    pick = lambda q: values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]  # noqa: E731
    return dict(min=values[0], p50=pick(0.5), p90=pick(0.9), max=values[-1])


def summarise(split, combine):
    t0 = min(c["start"] for c in split)
    us = lambda t: (t - t0) / 1e3  # noqa: E731
    rows = {
        "split start": [us(c["start"]) for c in split],
        "split first tile": [us(c["first"]) for c in split if c["first"]],
        "split fill (first - start)": [(c["first"] - c["start"]) / 1e3 for c in split if c["first"]],
        "split loop done": [us(c["loop"]) for c in split],
        "split per tile after the first": [(c["loop"] - c["first"]) / 1e3 / (c["tiles"] - 1)
                                           for c in split if c["first"] and c["tiles"] > 1],
        "split written": [us(c["written"]) for c in split],
        "split epilogue (written - loop)": [(c["written"] - c["loop"]) / 1e3 for c in split],
    }
    if combine:
        rows.update({
            "combine start": [us(c["start"]) for c in combine],
            "combine released": [us(c["released"]) for c in combine],
            "combine written": [us(c["written"]) for c in combine],
            "combine work (written - released)": [(c["written"] - c["released"]) / 1e3
                                                  for c in combine],
        })
    ticks = sorted({c[k] for c in split for k in ("start", "first", "loop", "written") if c[k]})
    tick = min((b - a for a, b in zip(ticks, ticks[1:]) if b > a), default=0)
    return {name: stats(v) for name, v in rows.items()}, tick, len({c["sm"] for c in split})


def timeline(path: Path, window_us: float = 2.0) -> None:
    """The read rate over time of each (label, B) in saved --raw rows (see the module doc)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    D, es = 128, 2  # the traced shape: bf16, D = 128
    for key in sorted({(r["label"], r["B"]) for r in rows}):
        split = [r for r in rows if (r["label"], r["B"]) == key and r["kernel"] == "split"]
        tile_keys = 32 if "SWAA_DECODE_TILE=32" in key[0] else 64
        tile_bytes = 2 * tile_keys * D * es
        end = max(r["loop"] for r in split) / 1e3
        n = int(math.ceil(end / window_us))
        rate = [0.0] * n  # bytes per us, per window
        for r in split:
            s, f, l, t = r["start"] / 1e3, r["first"] / 1e3, r["loop"] / 1e3, r["tiles"]
            spans = [(s, f, tile_bytes)] if t >= 1 and f > s else []
            if t > 1 and l > f:
                spans.append((f, l, (t - 1) * tile_bytes))
            for a, b, nbytes in spans:
                for w in range(n):
                    lo, hi = max(a, w * window_us), min(b, (w + 1) * window_us)
                    if hi > lo:
                        rate[w] += nbytes * (hi - lo) / (b - a) / window_us
        total = sum(r["tiles"] for r in split) * tile_bytes
        peak = max(rate)
        print(f"{key[0] or 'default'} B={key[1]}: {total / 1e6:.1f} MB of tiles, last tile done "
              f"at {end:.1f} us; at the peak rate ({peak / 1e6:.2f} TB/s) they take "
              f"{total / peak:.1f} us")
        print("  TB/s per " + f"{window_us:g} us: " + " ".join(f"{x / 1e6:.1f}" for x in rate))


def step_fn(B, Hq, Hkv, D, W, S, dtype, device, n_caches=2):
    caches = []
    for _ in range(n_caches):
        cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=dtype, device=device)
        cache.keys.normal_()
        cache.values.normal_()
        cache.seqlens.fill_(10 * (W + S))  # a full ring that has wrapped
        caches.append(cache)
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, Hq, 1, D, device=device, dtype=dtype, generator=gen)
    k = torch.randn(B, Hkv, 1, D, device=device, dtype=dtype, generator=gen)
    v = torch.randn(B, Hkv, 1, D, device=device, dtype=dtype, generator=gen)

    def step():
        for cache in caches:
            cache.attend(q, k, v)
    return step


def time_steps(step, reps=50):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    step()
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps * 1e3  # us per step (eager, includes launches)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--window", type=int, default=4096)
    ap.add_argument("--sink", type=int, default=4)
    ap.add_argument("--out", type=Path, help="append one JSON row per batch size")
    ap.add_argument("--raw", type=Path,
                    help="append every CTA's trace (ns from the first split start) as JSON rows")
    ap.add_argument("--label", default="", help="stored in the rows (e.g. the knobs under test)")
    ap.add_argument("--timeline-from", type=Path, metavar="RAW",
                    help="measure nothing: the read rate over time of saved --raw rows")
    args = ap.parse_args(argv)
    if args.timeline_from:
        timeline(args.timeline_from)
        return 0
    if not torch.cuda.is_available() or not hasattr(swaa_ext._C, "decode_trace"):
        sys.exit("trace_decode: needs a CUDA build and GPU")
    device = torch.device("cuda")
    Hq, Hkv, D, dtype = 32, 8, 128, torch.bfloat16
    meta = common.run_metadata(device)
    print(f"run {meta['run']} on {meta['gpu']}, torch {meta['torch']}", flush=True)
    for B in (int(b) for b in args.batches.split(",")):
        step = step_fn(B, Hq, Hkv, D, args.window, args.sink, dtype, device)
        os.environ.pop("SWAA_DECODE_TRACE", None)
        plain = time_steps(step)
        os.environ["SWAA_DECODE_TRACE"] = "1"
        traced = time_steps(step)
        step()  # the last cache's step is the one left in the buffer
        split, combine = read_trace()
        os.environ.pop("SWAA_DECODE_TRACE", None)
        table, tick, sms = summarise(split, combine)
        t0 = min(c["start"] for c in split)
        # the CTAs that share an SM: does a late first tile go with its neighbour's early one?
        by_sm = {}
        for c in split:
            by_sm.setdefault(c["sm"], []).append(c)
        late = sorted(split, key=lambda c: c["first"] or 0)[-max(1, len(split) // 10):]
        late_ids = {id(c) for c in late}
        firsts = sorted((c["first"] - t0) / 1e3 for c in split if c["first"])
        neighbours = [(o["first"] - t0) / 1e3 for c in late for o in by_sm[c["sm"]]
                      if o is not c and id(o) not in late_ids and o["first"]]
        finish = {n: [(c["loop"] - t0) / 1e3 for c in split if c["tiles"] == n]
                  for n in sorted({c["tiles"] for c in split})}
        print(f"\nB={B} W={args.window} S={args.sink}: {len(split)} split CTAs on {sms} SMs, "
              f"{len(combine)} combine CTAs; tiles per split CTA "
              f"{sorted({c['tiles'] for c in split})}; global timer tick {tick} ns; eager step "
              f"(2 caches) {plain:.1f} us, traced {traced:.1f} us", flush=True)
        print(f"  {'us from the first split start':36s} {'min':>8s} {'p50':>8s} {'p90':>8s} "
              f"{'max':>8s}")
        for name, st in table.items():
            print(f"  {name:36s} " + " ".join(f"{st[k]:8.2f}" for k in ("min", "p50", "p90", "max")))
        if firsts:
            print(f"  the latest tenth of first tiles ({len(late)} CTAs, from "
                  f"{(min(c['first'] for c in late) - t0) / 1e3:.2f} us): the other CTAs on their "
                  f"SMs had theirs at median {statistics.median(neighbours) if neighbours else math.nan:.2f} us "
                  f"(all CTAs: {statistics.median(firsts):.2f}); CTAs per SM "
                  f"{sorted({len(v) for v in by_sm.values()})}")
        for n, f in finish.items():
            print(f"  CTAs of {n} tiles: loop done at {min(f):.2f} .. {statistics.median(f):.2f} .. "
                  f"{max(f):.2f} us")
        if args.raw:
            with open(args.raw, "a") as f:
                for kernel, ctas in (("split", split), ("combine", combine)):
                    for c in ctas:
                        f.write(json.dumps(dict(B=B, label=args.label, kernel=kernel, run=meta["run"],
                                                **{k: (v - t0 if k not in ("sm", "tiles") and v
                                                       else v) for k, v in c.items()})) + "\n")
        if args.out:
            row = dict(bench="decode_trace", label=args.label, B=B, Hq=Hq, Hkv=Hkv, D=D, W=args.window, S=args.sink,
                       dtype="bfloat16", split_ctas=len(split), combine_ctas=len(combine),
                       sms=sms, tick_ns=tick, eager_step_us=plain, eager_step_traced_us=traced,
                       table=table, **meta)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
