"""CUDA time of each kernel in one ring decode step (torch.profiler), at B = 1, 8, 64.

Issue 4's shape: Hkv=8, Hq=32, D=128, W=4096, S=4, bfloat16, every row far past the window.
Prints, per kernel, the average device time per call and the bandwidth it would reach if all
of the ring's bytes were charged to it: tells the split kernel's own bandwidth from the time of
the combine kernel and of the position update, which bench/bench_decode.py measures together.
The split decode's knobs are read at every launch, so they come from the environment, or, one
profile each, from `--variant` (repeatable: `--variant SWAA_DECODE_ADVANCE=op,SWAA_DECODE_PDL=0`;
`--variant default` is the environment as it is).  GPU only.  Session 5's output:
bench/results/logs/decode_floor_profile_H200_session5.log.

Besides the sum of the kernels' device times, each batch prints the step span: the median over
steps of (end of the step's last kernel - start of its first), gaps included.  Under PDL (the
default; SWAA_DECODE_PDL=0 turns it off) the combine kernel is launched while the split kernel runs and its CTAs wait
at griddepcontrol.wait, so its record starts early: its "us per call" includes that wait and the
sum counts the overlap twice.  Compare PDL variants by the span (or bench_decode.py's step time),
not by the sum.

    python bench/profile_decode.py --batches 1,8 --variant default \
        --variant SWAA_DECODE_COMBINE_LOADS=serial,SWAA_DECODE_ADVANCE=op,SWAA_DECODE_PDL=0
"""
import argparse
import collections
import os
import statistics

import torch

from swaa_ext import RingKVCache


def parse_variant(text):
    """'default' -> {}; 'NAME=VALUE,NAME=VALUE' -> {NAME: VALUE}."""
    if text == "default":
        return {}
    knobs = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("SWAA_"):
            raise SystemExit(f"profile_decode.py: --variant wants NAME=VALUE,..., got {item!r}")
        knobs[name] = value
    return knobs


def short_name(name):
    """A kernel's name without `void ` and the anonymous namespace, so that the template arguments
    (staged or serial combine, dtype, head dim) survive the table's width."""
    for prefix in ("void ", "swaa::", "(anonymous namespace)::"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


def step_spans(records, steps):
    """Per-step device spans (us) of `records` [(name, start_us, end_us)], the CUDA kernels of
    `steps` identical steps: sorted by start, cut into `steps` runs of equal length (each step
    launches the same kernels in the same order), span = max(end) - min(start) per run."""
    records = sorted(records, key=lambda r: r[1])
    per_step, rest = divmod(len(records), steps)
    if per_step == 0 or rest:
        raise ValueError(f"{len(records)} kernel records are not {steps} equal steps")
    runs = [records[i * per_step:(i + 1) * per_step] for i in range(steps)]
    first = [r[0] for r in runs[0]]
    if any([r[0] for r in run] != first for run in runs):
        raise ValueError("the steps did not launch the same kernels in the same order")
    return [max(r[2] for r in run) - min(r[1] for r in run) for run in runs]


def profile(B, steps=50):
    """({kernel name: (calls per step, us per call)}, median step span in us) of `steps` eager
    decode steps."""
    c = RingKVCache(B, 8, 128, window=4096, sink=4, dtype=torch.bfloat16, device="cuda")
    c.keys.normal_()
    c.values.normal_()
    c.seqlens.fill_(20000)
    q = torch.randn(B, 32, 1, 128, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, 8, 1, 128, dtype=torch.bfloat16, device="cuda")
    v = torch.randn_like(k)
    for _ in range(5):
        c.attend(q, k, v)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
        for _ in range(steps):
            c.attend(q, k, v)
        torch.cuda.synchronize()
    assert c.seqlens.tolist() == [20000 + 5 + steps] * B  # advanced once per step
    t = collections.defaultdict(float)
    n = collections.Counter()
    records = []
    for e in p.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            t[e.name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            n[e.name] += 1
            records.append((e.name, e.time_range.start, e.time_range.end))
    per_kernel = {name: (n[name] / steps, t[name] / n[name]) for name in t}
    try:
        span = statistics.median(step_spans(records, steps))
    except ValueError as err:  # the per-kernel table still stands
        print(f"B={B} no step span: {err}")
        span = None
    return per_kernel, span


def pdl_on(value):
    """SWAA_DECODE_PDL as csrc/cuda/ring.cu reads it (strtoll, 0 or 1; anything else, or unset:
    the default, on)."""
    if value is None or value != value.rstrip():  # strtoll must consume the whole string
        return True
    try:
        v = int(value.lstrip())
    except ValueError:
        return True
    return v != 0 if v in (0, 1) else True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--variant", action="append", default=None,
                    help="knobs of one profile, NAME=VALUE,... or 'default' (repeatable)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_decode.py needs a CUDA GPU")
    variants = [parse_variant(v) for v in (args.variant or ["default"])]
    for knobs in variants:
        saved = {name: os.environ.get(name) for name in knobs}
        os.environ.update(knobs)
        env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("SWAA_DECODE")}
        print(f"--- knobs: {env or 'none (defaults)'}")
        pdl = pdl_on(os.environ.get("SWAA_DECODE_PDL"))
        for B in (int(b) for b in args.batches.split(",")):
            byt = 2 * B * 8 * 4100 * 128 * 2
            total = 0.0
            per_kernel, span = profile(B)
            # the PDL notes apply only where a combine kernel runs (not B = 64's cluster plan)
            pdl_here = pdl and any("ring_decode_combine_kernel" in name for name in per_kernel)
            for name, (calls, us) in per_kernel.items():
                total += calls * us
                print(f"B={B} {short_name(name)[:100]:100s} calls/step {calls:.0f} {us:8.2f} us  "
                      f"({byt/us/1e3:.0f} GB/s if all bytes)")
            print(f"B={B} kernels per step: {total:.2f} us of device time (gaps not counted"
                  f"{'; PDL: the combine includes its wait, the overlap counts twice' if pdl_here else ''})")
            if span is not None:
                print(f"B={B} step span: {span:.2f} us (median, first kernel start to last kernel "
                      f"end, gaps included{'; compare PDL variants by this' if pdl_here else ''})")
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


if __name__ == "__main__":
    main()
