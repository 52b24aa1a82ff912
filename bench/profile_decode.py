"""CUDA time of each kernel in one ring decode step (torch.profiler), at B = 1, 8, 64.

Issue 4's shape: Hkv=8, Hq=32, D=128, W=4096, S=4, bfloat16, every row far past the window.
Prints, per kernel, the average device time per call and the bandwidth it would reach if all
of the ring's bytes were charged to it: tells the split kernel's own bandwidth from the time of
the combine kernel and of the position update, which bench/bench_decode.py measures together.
GPU only. Session 5's output: bench/results/logs/decode_floor_profile_H200_session5.log.
"""
import collections

import torch

from swaa_ext import RingKVCache


def main():
    if not torch.cuda.is_available():
        raise SystemExit("profile_decode.py needs a CUDA GPU")
    for B in (1, 8, 64):
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
            for _ in range(50):
                c.attend(q, k, v)
            torch.cuda.synchronize()
        t = collections.defaultdict(float)
        n = collections.Counter()
        for e in p.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                t[e.name] += e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
                n[e.name] += 1
        byt = 2 * B * 8 * 4100 * 128 * 2
        for name in t:
            us = t[name] / n[name]
            print(f"B={B} {name[:70]:70s} calls/step {n[name]/50:.0f} {us:8.2f} us  "
                  f"({byt/us/1e3:.0f} GB/s if all bytes)")


if __name__ == "__main__":
    main()
