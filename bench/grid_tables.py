"""The markdown tables and summary numbers of one kernel-grid run
(`bash bench/gpu_check.sh bench`, rows in bench/results/cuda_kernels_h200.jsonl):
docs/cuda_kernels.md's 36-row "Measured" table, the README's S=4 table and the
figures its "Where we stand" paragraph quotes.  tests/test_readme_numbers.py
checks the committed text against the same rows, so paste what this prints.

    python bench/grid_tables.py 20261128T220939 --previous 20261128T204233
    python bench/grid_tables.py --rows OUT/bench/cuda_kernels.jsonl   # a file's last run
(`bash bench/gpu_check.sh bench` runs the latter after the grid; a partial grid, e.g. with
BENCH_ARGS, gets the table of its complete shapes and the figures they allow.)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROWS = Path(__file__).resolve().parent / "results" / "cuda_kernels_h200.jsonl"
# the README's shapes (S=4): (D, N, W)
README_SHAPES = [(128, 8192, 4096), (128, 32768, 1024), (128, 32768, 4096), (128, 131072, 1024),
                 (128, 131072, 4096), (64, 8192, 4096), (64, 32768, 1024), (64, 131072, 4096)]
BWD_KERNEL = {"sm90": "v6", "sm90-fused": "v7"}


def load(path: Path, run: str | None) -> dict:
    """The rows of `run` by (impl, pass, D, N, W, S); run None: the file's last run."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if run is None and rows:
        run = rows[-1].get("run")
    by = {(r["impl"], r["pass"], r["D"], r["N"], r["W"], r["S"]): r
          for r in rows if r.get("run") == run}
    if not by:
        sys.exit(f"grid_tables: no rows of run {run} in {path}")
    return by


def sig(x: float, digits: int = 4) -> str:
    """x with `digits` significant digits, at most 3 decimals (0.354, 2.091, 17.03)."""
    decimals = min(3, max(0, digits - 1 - math.floor(math.log10(abs(x)))))
    return f"{x:.{decimals}f}"


IMPL_PASSES = [(impl, pass_) for impl in ("swaa", "flex", "sdpa") for pass_ in ("fwd", "fwd+bwd")]


def shapes_of(by: dict) -> list[tuple]:
    """The run's shapes that have all six rows (swaa, flex, sdpa x fwd, fwd+bwd)."""
    shapes = {k[2:] for k in by}
    return sorted((s for s in shapes if all((*ip, *s) in by for ip in IMPL_PASSES)),
                  key=lambda s: (-s[0], s[1], s[2], s[3]))


def ratio(by, shape, pass_, other="flex"):
    return by[(other, pass_, *shape)]["ms"] / by[("swaa", pass_, *shape)]["ms"]


def kernel_table(by, shapes, with_s: bool, fwd_ms) -> str:
    """One markdown row per shape: swaa's times and TFLOP/s, Flex's, the ratios, the backward
    kernel that ran and SDPA's times; `fwd_ms` formats the forward times."""
    if with_s:
        lines = [("| D | N | W | S | fwd ms (TFLOP/s) | flex fwd ms | fwd vs flex "
                  "| fwd+bwd ms (TFLOP/s) | bwd | flex fwd+bwd ms | fwd+bwd vs flex "
                  "| sdpa fwd / fwd+bwd ms |"),
                 "|---:|---:|---:|---:|---|---:|---:|---|---|---:|---:|---|"]
    else:
        lines = [("| D | N | W | fwd ms (TFLOP/s) | flex fwd ms | fwd vs flex | fwd+bwd ms (TFLOP/s) "
                  "| bwd kernel | flex fwd+bwd ms | fwd+bwd vs flex | sdpa causal fwd / fwd+bwd ms |"),
                 "|---|---|---|---|---:|---:|---|---|---:|---:|---|"]
    for s in shapes:
        f, fb = by[("swaa", "fwd", *s)], by[("swaa", "fwd+bwd", *s)]
        s_cell = f"| {s[3]} " if with_s else ""
        lines.append(
            f"| {s[0]} | {s[1]} | {s[2]} {s_cell}| {fwd_ms(f['ms'])} ({f['tflops']:.0f}) "
            f"| {fwd_ms(by[('flex', 'fwd', *s)]['ms'])} | {ratio(by, s, 'fwd'):.2f}x "
            f"| {fb['ms']:.2f} ({fb['tflops']:.0f}) | {BWD_KERNEL[fb['swaa_bwd_path']]} "
            f"| {by[('flex', 'fwd+bwd', *s)]['ms']:.2f} | {ratio(by, s, 'fwd+bwd'):.2f}x "
            f"| {by[('sdpa', 'fwd', *s)]['ms']:.2f} / {by[('sdpa', 'fwd+bwd', *s)]['ms']:.2f} |")
    return "\n".join(lines)


def docs_table(by) -> str:
    """docs/cuda_kernels.md's table: all shapes, an S column, 4-digit forward times."""
    return kernel_table(by, shapes_of(by), True, sig)


def readme_table(by) -> str:
    """The README's table: README_SHAPES at S=4, no S column, forward times in 2 decimals."""
    return kernel_table(by, [(D, N, W, 4) for D, N, W in README_SHAPES], False,
                        lambda ms: f"{ms:.2f}")


def span(values) -> str:
    return f"{min(values):.2f}-{max(values):.2f}x"


def summary(by, previous=None) -> str:
    shapes = shapes_of(by)
    fb = {s: ratio(by, s, "fwd+bwd") for s in shapes}
    f = {s: ratio(by, s, "fwd") for s in shapes}
    out = [(f"forward+backward vs flex: {span(fb.values())}, >= 1.3x on "
            f"{sum(x >= 1.3 for x in fb.values())} of {len(shapes)}")]
    out += [f"  below 1.3x: D={s[0]} N={s[1]} W={s[2]} S={s[3]}: {x:.3f}x"
            for s, x in fb.items() if x < 1.3]
    for S in (0, 4, 128):
        out.append(f"  S={S}: {span([x for s, x in fb.items() if s[3] == S])}")
    out.append(f"forward vs flex: {span(f.values())}, >= 1.5x on "
               f"{sum(x >= 1.5 for x in f.values())} of {len(shapes)}")
    tf = {S: by[("swaa", "fwd", 128, 32768, 4096, S)]["tflops"] for S in (0, 4, 128)
          if (128, 32768, 4096, S) in shapes}
    if len(tf) == 3:
        out.append(f"forward TFLOP/s at N=32k, W=4096, D=128: {tf[4]:.0f} at S=4 ({tf[0]:.0f} at "
                   f"S=0, {tf[128]:.0f} at S=128)")
    for D in (64, 128):
        for pass_ in ("fwd", "fwd+bwd"):
            r = [ratio(by, s, pass_, "sdpa") for s in shapes if s[:3] == (D, 8192, 4096)]
            if r:
                out.append(f"vs SDPA full causal, N=8192, W=4096, D={D}, {pass_}: "
                           f"{min(r):.2f}-{max(r):.2f}x")
    rest = [ratio(by, s, "fwd+bwd", "sdpa") for s in shapes if s[1:3] != (8192, 4096)]
    if rest:
        out.append(f"vs SDPA full causal elsewhere, fwd+bwd: {min(rest):.1f}-{max(rest):.0f}x")
    if previous is not None:
        for impl in ("swaa", "flex"):
            for pass_ in ("fwd", "fwd+bwd"):
                r = [previous[(impl, pass_, *s)]["ms"] / by[(impl, pass_, *s)]["ms"]
                     for s in shapes if (impl, pass_, *s) in previous]
                if not r:
                    continue
                geo = math.exp(sum(math.log(x) for x in r) / len(r))
                out.append(f"{impl} {pass_} speed vs the previous run: geometric mean {geo:.3f}x, "
                           f"{min(r):.2f}-{max(r):.2f}x")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", nargs="?", default=None,
                    help="the run id of the grid (rows' `run`; default: the last row's)")
    ap.add_argument("--previous", default=None, help="a run to compare speeds with")
    ap.add_argument("--rows", type=Path, default=ROWS)
    args = ap.parse_args()
    by = load(args.rows, args.run)
    run = next(iter(by.values()))["run"]
    previous = load(args.rows, args.previous) if args.previous else None
    if not shapes_of(by):
        sys.exit(f"grid_tables: run {run} has no shape with all six rows")
    print(f"## docs/cuda_kernels.md (run {run})\n\n{docs_table(by)}\n")
    if all((D, N, W, 4) in shapes_of(by) for D, N, W in README_SHAPES):
        print(f"## README (S=4)\n\n{readme_table(by)}\n")
    print(f"## summary\n\n{summary(by, previous)}")


if __name__ == "__main__":
    main()
