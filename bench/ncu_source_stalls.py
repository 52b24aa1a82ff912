"""Where a kernel's warps stall, per CUDA source line: reads the source page that
`bash bench/gpu_check.sh profile` exports (`ncu --import R.ncu-rep --page source --csv
--print-source cuda,sass`, profile/*.csv) and prints the stall reasons over the whole kernel
and the source lines with the most warp samples, each with its top three reasons.

    python bench/ncu_source_stalls.py profile/decode_source_b8.csv [--top 25]

The CSV has one section per source file (a "File Path" line, a "Function Name" line, a header
row, then one row per source line followed by the SASS rows ncu attributes to it).  Only the
source-line rows (a line number in the first column) are counted; ncu repeats an inlined
instruction under every line of its inline stack, so lines of inlined helpers overlap the lines
that call them and the percentages are shares of the line rows, not of distinct instructions.
ncu's reasons include `selected` (the warp was issuing) and `not_selected` (eligible, another
warp issued): the share of samples that are not waits.
"""
from __future__ import annotations

import argparse
import collections
import csv
from pathlib import Path


def read_sections(path: Path):
    """[(file, header, rows)] of the source page CSV."""
    sections, file = [], None
    for row in csv.reader(path.open()):
        if not row:
            continue
        if row[0] == "File Path":
            file = row[1]
        elif row[0] == "Line No":
            sections.append((file, row, []))
        elif row[0] != "Function Name" and sections:
            sections[-1][2].append(row)
    return sections


def line_stalls(sections):
    """{(file, line): (samples, Counter of stall reasons, source text)} of the source-line rows."""
    lines = {}
    for file, header, rows in sections:
        col = {name: i for i, name in enumerate(header)}
        if "Warp Stall Sampling (All Samples)" not in col:
            continue
        reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
        for row in rows:
            if not row[0].strip().isdigit() or len(row) < len(header):
                continue
            try:
                samples = float(row[col["Warp Stall Sampling (All Samples)"]] or 0)
            except ValueError:
                continue
            stalls = collections.Counter(
                {h[len("stall_"):]: float(row[col[h]] or 0) for h in reasons})
            lines[(file, int(row[0]))] = (samples, stalls, row[1].strip())
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("csv", type=Path)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    lines = line_stalls(read_sections(args.csv))
    if not lines:
        raise SystemExit(f"{args.csv}: no source-line rows with warp stall samples")
    total = sum(samples for samples, _, _ in lines.values())
    reasons = collections.Counter()
    for _, stalls, _ in lines.values():
        reasons.update(stalls)
    print(f"{args.csv.name}: {total:.0f} warp samples on {len(lines)} source lines")
    print("stall reasons: " + ", ".join(f"{k} {100 * v / total:.1f}%"
                                         for k, v in reasons.most_common(10)))
    print(f"\n{'share':>6s}  {'line':30s} top reasons | source")
    ranked = sorted(lines.items(), key=lambda kv: -kv[1][0])[:args.top]
    for (file, line), (samples, stalls, text) in ranked:
        name = f"{Path(file).name}:{line}"
        top = ", ".join(f"{k} {100 * v / samples:.0f}%" for k, v in stalls.most_common(3)
                        if v and samples)
        print(f"{100 * samples / total:5.1f}%  {name:30s} {top} | {text[:100]}")


if __name__ == "__main__":
    main()
