"""CUDA time of each kernel in one ring decode step (torch.profiler), at B = 1, 8, 64.

Issue 4's shape: Hkv=8, Hq=32, D=128, W=4096, S=4, bfloat16, every row far past the window.
Prints, per kernel, the average device time per call and the bandwidth it would reach if all
of the ring's bytes were charged to it: tells the split kernel's own bandwidth from the time of
the combine kernel and of the position update, which bench/bench_decode.py measures together.
The split decode's knobs are read at every launch, so they come from the environment, or, one
profile each, from `--variant` (repeatable: `--variant SWAA_DECODE_ADVANCE=kernel,SWAA_DECODE_PDL=1`;
`--variant default` is the environment as it is).  GPU only.  Session 5's output:
bench/results/logs/decode_floor_profile_H200_session5.log.

    python bench/profile_decode.py --batches 1,8 --variant default \
        --variant SWAA_DECODE_COMBINE_LOADS=staged,SWAA_DECODE_ADVANCE=kernel,SWAA_DECODE_PDL=1
"""
import argparse
import collections
import os

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


def profile(B, steps=50):
    """{kernel name: (calls per step, us per call)} of `steps` eager decode steps."""
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
    for e in p.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            t[e.name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
            n[e.name] += 1
    return {name: (n[name] / steps, t[name] / n[name]) for name in t}


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
        for B in (int(b) for b in args.batches.split(",")):
            byt = 2 * B * 8 * 4100 * 128 * 2
            total = 0.0
            for name, (calls, us) in profile(B).items():
                total += calls * us
                print(f"B={B} {name[:70]:70s} calls/step {calls:.0f} {us:8.2f} us  "
                      f"({byt/us/1e3:.0f} GB/s if all bytes)")
            print(f"B={B} kernels per step: {total:.2f} us of device time (gaps not counted)")
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


if __name__ == "__main__":
    main()
