"""One backward call of the Hopper kernels for Nsight Compute: the `profile` step of
bench/gpu_check.sh runs it under `ncu --profile-from-start off`, once per backward (v6, the
two passes: SWAA_BWD_HOPPER=1; v7, the single pass: SWAA_BWD_HOPPER=4; the default picks one by
shape since session 8), to attribute
v7's loss against v6 (sessions 6-7) (docs/cuda_kernels.md "v7": its kernel took 1.59-2.17x v6's dk/dv kernel
and no profile said why).  The forward and a first backward (compile caches, allocations) run
outside the profiled range; only the second backward is inside it.

With `--fwd swaa` (or `--fwd sdpa`) it profiles one forward call instead: ours (the default
Hopper forward) or torch's SDPA full causal over the same q, k, v (K/V repeated to Hq heads, as
the benchmark does), to compare the two kernels' pipes and stalls where they tie (N=8192,
W=4096: the SDPA goal; docs/cuda_kernels.md "Next steps").

With `--sdpa-bwd` it profiles one backward of torch's SDPA full causal instead (the forward and
its autograd graph made outside the profiled range), to put beside ours (`--bwd 1`) where our
forward+backward still loses to SDPA's (N=8192, W=4096, D=64: docs/cuda_kernels.md "Next
steps").

With `--decode B` it profiles one ring decode step instead (issue 4's shape: Hq=32, Hkv=8,
D=128, W=4096, S=4, bfloat16, a full ring, the default plan): the split kernel and the combine,
to find where the split kernel at B=8 loses the ~8 us it spends beyond its steady bandwidth
(docs/ring_cache.md "Session 7").

    python bench/ncu_case.py --bwd 4 --D 128 --N 32768 --W 4096 --S 0
    ncu --profile-from-start off --clock-control none -k regex:bwd_ python bench/ncu_case.py ...
    python bench/ncu_case.py --decode 8
    python bench/ncu_case.py --fwd sdpa --D 128 --N 8192 --W 4096 --S 0
    python bench/ncu_case.py --sdpa-bwd --D 64 --N 8192
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

import swaa_ext  # noqa: F401  (registers torch.ops.swaa)

HQ, HKV = 32, 8  # issue 3's shapes


def inputs(D: int, N: int):
    """q, k, v, dout of the issue's shapes (B=1, Hq=32, Hkv=8, bf16), the same every call."""
    g = torch.Generator(device="cuda").manual_seed(0)
    make = lambda heads: torch.randn(1, heads, N, D, device="cuda", dtype=torch.bfloat16,  # noqa: E731
                                     generator=g)
    return make(HQ), make(HKV), make(HKV), make(HQ)


def profile_once(call, what: str, warmups: int = 3, warmup=None) -> None:
    """`warmups` runs of warmup (default: call) outside the profiled range (compile caches,
    allocations), then one call inside it (torch.cuda.profiler.start/stop: ncu
    --profile-from-start off sees only that)."""
    for _ in range(warmups):
        (warmup or call)()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"profiled one {what}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bwd", type=int, choices=(1, 4), default=1,
                    help="SWAA_BWD_HOPPER: 1 = v6 (two passes), 4 = v7 (single pass)")
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--N", type=int, default=32768)
    ap.add_argument("--W", type=int, default=4096)
    ap.add_argument("--S", type=int, default=0)
    ap.add_argument("--fwd", choices=("swaa", "sdpa"), default=None,
                    help="profile one forward call (ours, or SDPA full causal) instead")
    ap.add_argument("--sdpa-bwd", action="store_true",
                    help="profile one backward of SDPA full causal (K/V repeated) instead")
    ap.add_argument("--decode", type=int, metavar="B", default=None,
                    help="profile one ring decode step at batch B instead of a backward")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("ncu_case.py needs a CUDA GPU")
    if args.decode is not None:
        profile_decode_step(args.decode)
        return
    if args.fwd is not None:
        profile_forward(args.fwd, args.D, args.N, args.W, args.S)
        return
    if args.sdpa_bwd:
        profile_sdpa_backward(args.D, args.N)
        return
    os.environ["SWAA_BWD_HOPPER"] = str(args.bwd)
    q, k, v, do = inputs(args.D, args.N)
    fwd_args = (args.W, args.S, None, args.D ** -0.5)
    out, lse = torch.ops.swaa.fwd(q, k, v, *fwd_args)
    profile_once(lambda: torch.ops.swaa.bwd(do, q, k, v, out, lse, *fwd_args),
                 f"backward: SWAA_BWD_HOPPER={args.bwd} D={args.D} N={args.N} W={args.W} "
                 f"S={args.S}", warmups=1)


def profile_forward(impl: str, D: int, N: int, W: int, S: int) -> None:
    q, k, v, _ = inputs(D, N)
    if impl == "sdpa":
        k = k.repeat_interleave(HQ // HKV, dim=1)
        v = v.repeat_interleave(HQ // HKV, dim=1)
        call = lambda: torch.nn.functional.scaled_dot_product_attention(  # noqa: E731
            q, k, v, is_causal=True)
    else:
        call = lambda: torch.ops.swaa.fwd(q, k, v, W, S, None, D ** -0.5)  # noqa: E731
        print("swaa forward path:", torch.ops.swaa.fwd_path(q, k, v), flush=True)
    profile_once(call, f"forward: {impl} D={D} N={N} W={W} S={S}")


def profile_sdpa_backward(D: int, N: int) -> None:
    q, k, v, do = inputs(D, N)
    k = k.repeat_interleave(HQ // HKV, dim=1)
    v = v.repeat_interleave(HQ // HKV, dim=1)
    for t in (q, k, v):
        t.requires_grad_(True)

    def forward():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    out = forward()  # the graph of the profiled backward, made outside the range
    profile_once(lambda: out.backward(do), f"SDPA backward (full causal): D={D} N={N}",
                 warmup=lambda: forward().backward(do))


def profile_decode_step(B: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_decode

    (step,) = bench_decode.make_ring(B, 32, 8, 128, 4096, 4, torch.bfloat16,
                                     torch.device("cuda"), 1)
    profile_once(step, f"decode step: B={B} Hq=32 Hkv=8 D=128 W=4096 S=4")


if __name__ == "__main__":
    main()
