"""One backward call of the Hopper kernels for Nsight Compute: the `profile` step of
bench/gpu_check.sh runs it under `ncu --profile-from-start off`, once per backward (v6, the
default two passes: SWAA_BWD_HOPPER=1; v7, the single pass: SWAA_BWD_HOPPER=4), to attribute
v7's loss against v6 (docs/cuda_kernels.md "v7": its kernel took 1.59-2.17x v6's dk/dv kernel
and no profile said why).  The forward and a first backward (compile caches, allocations) run
outside the profiled range; only the second backward is inside it.

    python bench/ncu_case.py --bwd 4 --D 128 --N 32768 --W 4096 --S 0
    ncu --profile-from-start off --clock-control none -k regex:bwd_ python bench/ncu_case.py ...
"""
from __future__ import annotations

import argparse
import os

import torch

import swaa_ext  # noqa: F401  (registers torch.ops.swaa)

HQ, HKV = 32, 8  # issue 3's shapes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bwd", type=int, choices=(1, 4), default=1,
                    help="SWAA_BWD_HOPPER: 1 = v6 (two passes), 4 = v7 (single pass)")
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--N", type=int, default=32768)
    ap.add_argument("--W", type=int, default=4096)
    ap.add_argument("--S", type=int, default=0)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("ncu_case.py needs a CUDA GPU")
    os.environ["SWAA_BWD_HOPPER"] = str(args.bwd)
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = lambda heads: (1, heads, args.N, args.D)  # noqa: E731
    q = torch.randn(shape(HQ), device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(shape(HKV), device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(shape(HKV), device="cuda", dtype=torch.bfloat16, generator=g)
    do = torch.randn(shape(HQ), device="cuda", dtype=torch.bfloat16, generator=g)
    fwd_args = (args.W, args.S, None, args.D ** -0.5)
    out, lse = torch.ops.swaa.fwd(q, k, v, *fwd_args)
    torch.ops.swaa.bwd(do, q, k, v, out, lse, *fwd_args)  # warm-up, not profiled
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    torch.ops.swaa.bwd(do, q, k, v, out, lse, *fwd_args)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()
    print(f"profiled one backward: SWAA_BWD_HOPPER={args.bwd} D={args.D} N={args.N} "
          f"W={args.W} S={args.S}", flush=True)


if __name__ == "__main__":
    main()
