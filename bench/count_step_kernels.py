"""Kernels launched per decode step by swaa_ext.generate, compiled or not (issue 7, loopc).

The step runs eagerly (cuda_graph=False) under torch.profiler for two lengths of generation;
the difference of the CUDA kernel counts over the difference of decode steps is the number of
kernels one step launches (what a CUDA graph replay runs).  One JSON row per mode.

    python bench/count_step_kernels.py --layers 36 --out $OUT/step_kernels.jsonl
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_decode_loop import build  # noqa: E402

from swaa_ext.generate import generate  # noqa: E402


def kernels(model, ids, new: int, compile: bool) -> int:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        generate(model, ids, new, cuda_graph=False, compile=compile)
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages()
               if e.device_type == torch.autograd.DeviceType.CUDA)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--out", type=Path, default=common.default_results_path("step_kernels"))
    args = ap.parse_args()
    device = torch.device("cuda")
    model = build(args.layers, device, tiny=False)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.prompt),
                        generator=torch.Generator().manual_seed(0)).to(device)
    meta = common.run_metadata(device)
    rows = []
    for compile in (False, True):
        for new in (4, 12):  # both lengths compile (cache and output shapes differ) before
            generate(model, ids, new, cuda_graph=False, compile=compile)  # the profiled runs
        short, long = kernels(model, ids, 4, compile), kernels(model, ids, 12, compile)
        per_step = (long - short) / 8
        rows.append(dict(bench="step_kernels", model=f"qwen3-4b-shape/{args.layers}L",
                         batch=args.batch, prompt=args.prompt, compile=compile,
                         kernels_per_step=per_step, kernels_per_layer=per_step / args.layers,
                         **meta))
        print(f"compile={compile}: {per_step:.0f} kernels per decode step "
              f"({per_step / args.layers:.1f} per layer)", flush=True)
    common.append_rows(args.out, rows)


if __name__ == "__main__":
    main()
