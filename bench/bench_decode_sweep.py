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

With `--set decode4` it sweeps instead, at each of `--batches` with the
automatic plan, every combination of decode4's knobs of the combine kernel
(the plain values first: serial, op, 0; the defaults since session 6 are auto
loads (staged above 8 splits), kernel, 1; every combination gives the same bits):

  loads     SWAA_DECODE_COMBINE_LOADS = serial | staged (lse values staged in
            shared memory, partial loads issued ahead)
  advance   SWAA_DECODE_ADVANCE = op (a separate add of seqlens) | kernel (the
            combine kernel advances seqlens: one launch fewer per step)
  pdl       SWAA_DECODE_PDL = 0 | 1 (the combine kernel as a programmatic
            dependent launch of the split kernel)

The knobs are read at every launch, so one process serves all variants: each
variant sets them, captures a fresh graph and times its replays.  Variants
run in `--rounds` interleaved rounds (drift of clocks or of the machine hits
every variant alike); the summary gives the median over rounds.  Rows:
bench "decode", impl "ring", plus the variant's keys (combine / tile / stages
/ balance / splits, or loads / advance / pdl), sweep and round.

    python bench/bench_decode_sweep.py --batch 8 --out /tmp/sweep.jsonl
    python bench/bench_decode_sweep.py --set decode4 --batches 1,8,64 --out /tmp/d4.jsonl
With `--set decode5`, the same at each of `--batches` for decode5's knob of the split kernel:
  gather    SWAA_DECODE_TILE_GATHER = 0 (one slot per key, the path before decode5) | 1 (one
            slot per tile of window keys in consecutive slots, the default; same bits)
    python bench/bench_decode_sweep.py --set decode5 --batches 1,8,64 --rounds 5
With `--set prefetch`, the split kernel's L2 prefetch distance (same bits):
  prefetch  SWAA_DECODE_PREFETCH = 0 (off, the default) | 1 | 2 | 4 tiles ahead of the stages
    python bench/bench_decode_sweep.py --set prefetch --batches 1,8,64 --rounds 5
With `--set lead`, the split kernel's launch (same bits):
  lead      SWAA_DECODE_LEAD = -1 (in stream order) | N >= 0 (a programmatic dependent of the
            kernel before it, N tiles per CTA prefetched into L2 before it waits)
    python bench/bench_decode_sweep.py --set lead --batches 1,8,64 --rounds 5
With `--set loads`, the combine kernel's loads at <= 8 splits: serial | eager (same bits; the
default since session 19).
`--between qkv` runs a (B, 4096) x (4096, 6144) bf16 projection (one weight of 50 MB per
cache, as a QKV projection of an 8B model) before every step, so the kernel before each split
kernel is a torch GEMM, as in a model's decode, and not the previous step's combine; ms then
counts the projection too.  `--sets N` steps N caches per graph replay (default: enough to
exceed the L2 four times).
"""
from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decode  # noqa: E402
import common  # noqa: E402

KNOBS = ("SWAA_DECODE_GLOBAL_COMBINE", "SWAA_DECODE_TILE", "SWAA_DECODE_STAGES",
         "SWAA_DECODE_BALANCE", "SWAA_DECODE_SPLITS", "SWAA_DECODE_COMBINE",
         "SWAA_DECODE_COMBINE_LOADS", "SWAA_DECODE_ADVANCE", "SWAA_DECODE_PDL",
         "SWAA_DECODE_TILE_GATHER", "SWAA_DECODE_PREFETCH", "SWAA_DECODE_LEAD")
# decode4: variant key -> knob; the first value of each list is the plain path (not the default)
DECODE4 = {"loads": ("SWAA_DECODE_COMBINE_LOADS", ["serial", "staged"]),
           "advance": ("SWAA_DECODE_ADVANCE", ["op", "kernel"]),
           "pdl": ("SWAA_DECODE_PDL", ["0", "1"])}


def variants(combines, tilings, balances, splits):
    for tile, stages in tilings:
        for combine in combines:
            for balance in balances:
                for s in ["auto"] + splits:
                    yield {"combine": combine, "tile": tile, "stages": stages,
                           "balance": balance, "splits": s}


# decode5: the split kernel's gather; the first value is the path before decode5
DECODE5 = {"gather": ("SWAA_DECODE_TILE_GATHER", ["0", "1"])}
# prefetch: bulk L2 prefetches N tiles ahead of the split kernel's cp.async stages; 0 is off
PREFETCH = {"prefetch": ("SWAA_DECODE_PREFETCH", ["0", "1", "2", "4"])}
# loads: the combine kernel's loads up to 8 splits, serial or eager (every load at once; auto's
# choice since session 19, whose `loads` rows at 35b63b7 name the serial loads "auto")
LOADS = {"loads": ("SWAA_DECODE_COMBINE_LOADS", ["serial", "eager"])}
# lead: the split kernel as a programmatic dependent of the kernel before it; -1 is off
LEAD = {"lead": ("SWAA_DECODE_LEAD", ["-1", "0", "2", "4", "8"])}
KNOB_SETS = {"decode4": DECODE4, "decode5": DECODE5, "prefetch": PREFETCH, "lead": LEAD,
             "loads": LOADS}


def knob_variants(knobs=DECODE4):
    """Every combination of a knob set's values (decode4's by default), the plain path
    (the first value of each knob: serial, op, 0) first."""
    keys = list(knobs)
    for values in itertools.product(*(knobs[k][1] for k in keys)):
        yield dict(zip(keys, values))


def set_knobs(v):
    for name in KNOBS:
        os.environ.pop(name, None)
    for knobs in KNOB_SETS.values():
        if set(v) == set(knobs):  # a decode4 / decode5 variant
            for key, (name, _) in knobs.items():
                os.environ[name] = v[key]
            return
    os.environ["SWAA_DECODE_GLOBAL_COMBINE"] = v["combine"]
    os.environ["SWAA_DECODE_TILE"] = str(v["tile"])
    os.environ["SWAA_DECODE_STAGES"] = str(v["stages"])
    os.environ["SWAA_DECODE_BALANCE"] = str(v["balance"])
    if v["splits"] != "auto":
        os.environ["SWAA_DECODE_SPLITS"] = str(v["splits"])
        os.environ["SWAA_DECODE_COMBINE"] = "global"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--set", choices=("decode3", "decode4", "decode5", "prefetch", "lead",
                                          "loads"),
                    default="decode3",
                    help="which knobs to sweep (decode3: combine x tiling x balance x splits at "
                         "--batch; decode4: loads x advance x pdl at each of --batches)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", default=None,
                    help="comma-separated batch sizes (default: --batch)")
    ap.add_argument("--splits", default="2,3,4,5,6,7,8")
    ap.add_argument("--combines", default="kernel,fused")
    ap.add_argument("--tilings", default="64x3,64x2,32x4,32x6", help="TILExSTAGES,...")
    ap.add_argument("--balances", default="0,1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=0.1, help="seconds of timing per variant")
    ap.add_argument("--out", default=None, help="JSONL path (default bench/results/...)")
    ap.add_argument("--run", default=None, help="run label stored in every row")
    ap.add_argument("--between", default="none", choices=("none", "qkv"),
                    help="a kernel before every step (qkv: a torch bf16 projection GEMM)")
    ap.add_argument("--sets", type=int, default=0,
                    help="caches stepped per graph replay (0: enough to exceed the L2)")
    ap.add_argument("--values", default=None,
                    help="comma-separated values of a one-knob set (e.g. --set lead --values -1,4)")
    ap.add_argument("--launch", default="queued", choices=bench_decode.LAUNCHES,
                    help="timing of bench_decode.time_steps (queued: GPU time only)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_decode_sweep: needs a CUDA GPU")

    device = torch.device("cuda")
    Hq, Hkv, D, W, S, dtype = 32, 8, 128, 4096, 4, torch.bfloat16
    es = torch.empty((), dtype=dtype).element_size()
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    copy_bw = bench_decode.copy_bandwidth(device, 1 << 30, args.launch)
    meta = common.run_metadata(device)
    if args.run:
        meta["run"] = args.run
    meta["copy_gbps"] = copy_bw / 1e9
    out_path = Path(args.out) if args.out else \
        common.RESULTS_DIR / f"decode_sweep_{meta['gpu'].replace(' ', '_')}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if args.set in KNOB_SETS:
        knobs = KNOB_SETS[args.set]
        if args.values:
            if len(knobs) != 1:
                sys.exit(f"--values needs a one-knob set, not {args.set}")
            (key, (name, _)), = knobs.items()
            knobs = {key: (name, args.values.split(","))}
        todo = list(knob_variants(knobs))
    else:
        tilings = [tuple(int(x) for x in t.split("x")) for t in args.tilings.split(",")]
        splits = [int(s) for s in args.splits.split(",") if s]
        balances = [int(x) for x in args.balances.split(",")]
        todo = list(variants(args.combines.split(","), tilings, balances, splits))
    batches = [int(b) for b in (args.batches or str(args.batch)).split(",")]

    for B in batches:
        nbytes = 2 * B * Hkv * (S + W) * D * es + 2 * B * Hkv * D * es
        print(f"{meta['gpu']}: copy bandwidth {copy_bw / 1e9:.0f} GB/s; B={B} Hq={Hq} Hkv={Hkv} "
              f"D={D} W={W} S={S} {dtype}; {args.set}: {len(todo)} variants x {args.rounds} "
              f"rounds; {nbytes / 1e6:.2f} MB per step")
        steps = bench_decode.make_ring(B, Hq, Hkv, D, W, S, dtype, device,
                                       args.sets or bench_decode.n_sets_for(nbytes, l2))
        if args.between == "qkv":
            steps = [with_projection(step, B, device) for step in steps]
        rows = []
        for round_ in range(args.rounds):
            for v in todo:
                set_knobs(v)
                sec, mode, used = bench_decode.time_steps(steps, device, args.budget,
                                                          graph=True, launch=args.launch)
                row = dict(bench="decode", impl="ring", B=B, Hq=Hq, Hkv=Hkv, W=W, S=S, D=D,
                           dtype=str(dtype).replace("torch.", ""), ms=sec * 1e3,
                           gbps=nbytes / sec / 1e9, bw_fraction=nbytes / sec / copy_bw,
                           bytes=nbytes, timing=mode, launch=used, sweep=args.set,
                           between=args.between, sets=len(steps),
                           round=round_, **v, **meta,
                           knobs={k: os.environ[k] for k in KNOBS if k in os.environ})
                rows.append(row)
            print(f"  round {round_ + 1}/{args.rounds} done")
        for name in KNOBS:
            os.environ.pop(name, None)
        common.append_rows(out_path, rows)
        del steps
        torch.cuda.empty_cache()
        print_summary(rows, todo, B, nbytes, copy_bw, args.rounds)
    print(f"rows appended to {out_path}")


def with_projection(step, B, device):
    """step() after a (B, 4096) x (4096, 6144) bf16 GEMM with its own 50 MB weight."""
    x = torch.randn(B, 4096, dtype=torch.bfloat16, device=device)
    w = torch.randn(4096, 6144, dtype=torch.bfloat16, device=device)
    y = torch.empty(B, 6144, dtype=torch.bfloat16, device=device)

    def run():
        torch.matmul(x, w, out=y)
        return step()
    return run


def print_summary(rows, todo, B, nbytes, copy_bw, rounds):
    """Median over rounds per variant, fastest first, with its speed-up over the
    first variant (the plain path of a decode4 sweep)."""
    table = []
    for v in todo:
        ms = [r["ms"] for r in rows if all(r[k] == v[k] for k in v)]
        table.append((statistics.median(ms), v, min(ms), max(ms)))
    base = table[0][0]
    table.sort(key=lambda t: t[0])
    keys = list(todo[0])
    print(f"\nB={B}: median over {rounds} rounds (ms per decode step; 0.8 of copy bandwidth "
          f"= {nbytes / (0.8 * copy_bw) * 1e3:.4f} ms; x: over {todo[0]})")
    print(" ".join(f"{k:>8s}" for k in keys) +
          f" {'ms':>8s} {'min':>8s} {'max':>8s} {'bw_fraction':>11s} {'x':>6s}")
    for med, v, lo, hi in table:
        print(" ".join(f"{v[k]!s:>8s}" for k in keys) +
              f" {med:8.4f} {lo:8.4f} {hi:8.4f} {nbytes / (med / 1e3) / copy_bw:11.3f} "
              f"{base / med:6.3f}")


if __name__ == "__main__":
    main()
