"""A/B sweep of the split decode kernel's knobs in one process: the ring decode
step of bench/bench_decode.py (append + attention, CUDA-graph timed, several
caches so the working set exceeds L2) at one batch size, for every variant of

  combine   SWAA_DECODE_GLOBAL_COMBINE = kernel (second launch) | fused (the
            last CTA of a row merges its splits; no second launch)
  tiling    SWAA_DECODE_TILE x SWAA_DECODE_STAGES: keys per tile x tiles in
            flight (64x3 is the default at D = 128)
  balance   SWAA_DECODE_BALANCE = 0 (splits of whole tiles) | 1 (equal key
            counts)
  splits    SWAA_DECODE_SPLITS = 2 .. 8 with SWAA_DECODE_COMBINE=global, and
            the automatic plan ("auto", whatever it picks)

The knobs are read at every launch, so one process serves all variants: each
variant sets them, captures a fresh graph and times its replays.  Variants
run in `--rounds` interleaved rounds (drift of clocks or of the machine hits
every variant alike); the summary gives the median over rounds.  Rows:
bench "decode", impl "ring", plus combine / tile / stages / splits / round.

    python bench/bench_decode_sweep.py --batch 8 --out /tmp/sweep.jsonl
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode  # noqa: E402
import common  # noqa: E402

KNOBS = ("SWAA_DECODE_GLOBAL_COMBINE", "SWAA_DECODE_TILE", "SWAA_DECODE_STAGES",
         "SWAA_DECODE_BALANCE", "SWAA_DECODE_SPLITS", "SWAA_DECODE_COMBINE")


def variants(combines, tilings, balances, splits):
    for tile, stages in tilings:
        for combine in combines:
            for balance in balances:
                for s in ["auto"] + splits:
                    yield {"combine": combine, "tile": tile, "stages": stages,
                           "balance": balance, "splits": s}


def set_knobs(v):
    for name in KNOBS:
        os.environ.pop(name, None)
    os.environ["SWAA_DECODE_GLOBAL_COMBINE"] = v["combine"]
    os.environ["SWAA_DECODE_TILE"] = str(v["tile"])
    os.environ["SWAA_DECODE_STAGES"] = str(v["stages"])
    os.environ["SWAA_DECODE_BALANCE"] = str(v["balance"])
    if v["splits"] != "auto":
        os.environ["SWAA_DECODE_SPLITS"] = str(v["splits"])
        os.environ["SWAA_DECODE_COMBINE"] = "global"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--splits", default="2,3,4,5,6,7,8")
    ap.add_argument("--combines", default="kernel,fused")
    ap.add_argument("--tilings", default="64x3,64x2,32x4,32x6", help="TILExSTAGES,...")
    ap.add_argument("--balances", default="0,1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.1, help="seconds of timing per variant")
    ap.add_argument("--out", default=None, help="JSONL path (default bench/results/...)")
    ap.add_argument("--run", default=None, help="run label stored in every row")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_decode_sweep: needs a CUDA GPU")

    device = torch.device("cuda")
    B, Hq, Hkv, D, W, S, dtype = args.batch, 32, 8, 128, 4096, 4, torch.bfloat16
    es = torch.empty((), dtype=dtype).element_size()
    nbytes = 2 * B * Hkv * (S + W) * D * es + 2 * B * Hkv * D * es
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    copy_bw = bench_decode.copy_bandwidth(device, 1 << 30)
    meta = common.run_metadata(device)
    if args.run:
        meta["run"] = args.run
    meta["copy_gbps"] = copy_bw / 1e9
    out_path = Path(args.out) if args.out else \
        common.RESULTS_DIR / f"decode_sweep_{meta['gpu'].replace(' ', '_')}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tilings = [tuple(int(x) for x in t.split("x")) for t in args.tilings.split(",")]
    splits = [int(s) for s in args.splits.split(",") if s]
    balances = [int(x) for x in args.balances.split(",")]
    todo = list(variants(args.combines.split(","), tilings, balances, splits))
    print(f"{meta['gpu']}: copy bandwidth {copy_bw / 1e9:.0f} GB/s; B={B} Hq={Hq} Hkv={Hkv} D={D} "
          f"W={W} S={S} {dtype}; {len(todo)} variants x {args.rounds} rounds; "
          f"{nbytes / 1e6:.2f} MB per step")

    steps = bench_decode.make_ring(B, Hq, Hkv, D, W, S, dtype, device,
                                   bench_decode.n_sets_for(nbytes, l2))
    rows = []
    for round_ in range(args.rounds):
        for v in todo:
            set_knobs(v)
            sec, mode = bench_decode.time_steps(steps, device, args.budget, graph=True)
            row = dict(bench="decode", impl="ring", B=B, Hq=Hq, Hkv=Hkv, W=W, S=S, D=D,
                       dtype=str(dtype).replace("torch.", ""), ms=sec * 1e3,
                       gbps=nbytes / sec / 1e9, bw_fraction=nbytes / sec / copy_bw,
                       bytes=nbytes, timing=mode, round=round_, **v, **meta,
                       knobs={k: os.environ[k] for k in KNOBS if k in os.environ})
            rows.append(row)
        print(f"  round {round_ + 1}/{args.rounds} done")
    for name in KNOBS:
        os.environ.pop(name, None)
    common.append_rows(out_path, rows)

    # Median over rounds per variant, fastest first.
    table = []
    for v in todo:
        ms = [r["ms"] for r in rows if all(r[k] == v[k] for k in v)]
        med = statistics.median(ms)
        table.append((med, v, min(ms), max(ms)))
    table.sort(key=lambda t: t[0])
    print(f"\nB={B}: median over {args.rounds} rounds (ms per decode step; 0.8 of copy bandwidth "
          f"= {nbytes / (0.8 * copy_bw) * 1e3:.4f} ms)")
    print(f"{'combine':8s} {'tile':>4s} {'stages':>6s} {'balance':>7s} {'splits':>6s} {'ms':>8s} "
          f"{'min':>8s} {'max':>8s} {'bw_fraction':>11s}")
    for med, v, lo, hi in table:
        print(f"{v['combine']:8s} {v['tile']:4d} {v['stages']:6d} {v['balance']:7d} "
              f"{v['splits']!s:>6s} {med:8.4f} {lo:8.4f} {hi:8.4f} "
              f"{nbytes / (med / 1e3) / copy_bw:11.3f}")
    print(f"rows appended to {out_path}")


if __name__ == "__main__":
    main()
