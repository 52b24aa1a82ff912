"""The measured tables in the README and docs/cuda_kernels.md come from the
committed rows (bench/results/*.jsonl) of the run they name: a table edited
without its data, or rows replaced without the table, fails here.  Every
printed number must be the row's value rounded to the digits printed; ratios
are recomputed from the rows' times."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KERNEL_ROWS = RESULTS / "cuda_kernels_h200.jsonl"
DECODE_ROWS = RESULTS / "decode_H200.jsonl"


def rows_of(path: Path, run: str) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    found = [r for r in rows if r.get("run") == run]
    assert found, f"no rows of run {run} in {path.relative_to(ROOT)}"
    return found


def section(text: str, heading_start: str) -> str:
    """The markdown section whose heading starts with heading_start, up to the next
    heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading_start)}.*$", text, re.MULTILINE)
    assert match, f"no section {heading_start!r}"
    level = len(match.group(1))
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[:end.start()] if end else rest


def first_table(text: str) -> tuple[list[str], list[list[str]]]:
    """Header cells and body rows of the first markdown table in text."""
    lines = [line.strip() for line in text.splitlines()]
    start = next(i for i, line in enumerate(lines)
                 if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|--"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip("|").split("|")])
    return table[0], table[2:]  # table[1] is the alignment row


def assert_printed(printed: str, value: float, what: str) -> None:
    """printed (e.g. '0.89', '1.40x', '465') is value rounded to its digits."""
    text = printed.strip().rstrip("x")
    decimals = len(text.split(".")[1]) if "." in text else 0
    assert abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-9, \
        f"{what}: printed {printed}, the rows give {value:.6g}"


def ms_and_tflops(cell: str) -> tuple[str, str]:
    match = re.fullmatch(r"([\d.]+) \(([\d.]+)\)", cell)
    assert match, cell
    return match.group(1), match.group(2)


def check_kernel_table(header: list[str], body: list[list[str]], rows: list[dict], S: int | None):
    """The kernel benchmark's table: D, N, W[, S], fwd ms (TFLOP/s), flex fwd ms, fwd vs
    flex, fwd+bwd ms (TFLOP/s), bwd kernel, flex fwd+bwd ms, fwd+bwd vs flex, sdpa ms."""
    by = {(r["impl"], r["pass"], r["D"], r["N"], r["W"], r["S"]): r for r in rows}
    has_s = header[3] == "S"
    assert has_s == (S is None), header
    for cells in body:
        D, N, W = (int(c) for c in cells[:3])
        s = int(cells[3]) if has_s else S
        rest = cells[4:] if has_s else cells[3:]
        where = f"D={D} N={N} W={W} S={s}"

        def row(impl, pass_, where=where, D=D, N=N, W=W, s=s):
            key = (impl, pass_, D, N, W, s)
            assert key in by, f"{where}: no {impl} {pass_} row"
            return by[key]

        swaa_f, swaa_fb = row("swaa", "fwd"), row("swaa", "fwd+bwd")
        flex_f, flex_fb = row("flex", "fwd"), row("flex", "fwd+bwd")
        sdpa_f, sdpa_fb = row("sdpa", "fwd"), row("sdpa", "fwd+bwd")
        ms, tf = ms_and_tflops(rest[0])
        assert_printed(ms, swaa_f["ms"], f"{where} fwd ms")
        assert_printed(tf, swaa_f["tflops"], f"{where} fwd TFLOP/s")
        assert_printed(rest[1], flex_f["ms"], f"{where} flex fwd ms")
        assert_printed(rest[2], flex_f["ms"] / swaa_f["ms"], f"{where} fwd vs flex")
        ms, tf = ms_and_tflops(rest[3])
        assert_printed(ms, swaa_fb["ms"], f"{where} fwd+bwd ms")
        assert_printed(tf, swaa_fb["tflops"], f"{where} fwd+bwd TFLOP/s")
        kernel = {"sm90": "v6", "sm90-fused": "v7"}[swaa_fb["swaa_bwd_path"]]
        assert rest[4] == kernel, f"{where}: bwd kernel {rest[4]}, the row ran {kernel}"
        assert_printed(rest[5], flex_fb["ms"], f"{where} flex fwd+bwd ms")
        assert_printed(rest[6], flex_fb["ms"] / swaa_fb["ms"], f"{where} fwd+bwd vs flex")
        sdpa = [c.strip() for c in rest[7].split("/")]
        assert_printed(sdpa[0], sdpa_f["ms"], f"{where} sdpa fwd ms")
        assert_printed(sdpa[1], sdpa_fb["ms"], f"{where} sdpa fwd+bwd ms")


def test_readme_cuda_attention_table_is_its_runs_rows():
    text = section((ROOT / "README.md").read_text(), "CUDA attention")
    run = re.search(r"Run (\d{8}T\d{6}) \(commit", text)
    assert run, "the README's CUDA attention section names no run"
    header, body = first_table(text)
    assert len(body) >= 8
    check_kernel_table(header, body, rows_of(KERNEL_ROWS, run.group(1)), S=4)


def test_docs_latest_measured_table_is_its_runs_rows():
    """docs/cuda_kernels.md's newest "Measured: session N" section (all 36 shapes)."""
    text = (ROOT / "docs" / "cuda_kernels.md").read_text()
    sessions = [int(n) for n in re.findall(r"^## Measured: session (\d+)", text, re.MULTILINE)]
    latest = section(text, f"Measured: session {max(sessions)}")
    run = re.search(r"run (\d{8}T\d{6})", latest)
    assert run
    header, body = first_table(latest)
    assert len(body) == 36
    check_kernel_table(header, body, rows_of(KERNEL_ROWS, run.group(1)), S=None)
    # the README quotes the same run
    readme = section((ROOT / "README.md").read_text(), "CUDA attention")
    assert f"Run {run.group(1)} " in readme


def test_readme_decode_table_is_its_runs_rows():
    text = section((ROOT / "README.md").read_text(), "Decode step with the ring cache")
    run = re.search(r"run `(\S+)`, commit \w+,\s+session \d+, launch `(\w+)`", text)
    assert run, "the README's decode section names no run and launch"
    rows = rows_of(DECODE_ROWS, run.group(1))
    # HF's step cannot be queued: it has host-timed rows only (see the section)
    by = {(r["impl"], r["B"]): r for r in rows if r["launch"] == "host"}
    by.update({(r["impl"], r["B"]): r for r in rows if r["launch"] == run.group(2)})
    header, body = first_table(text)
    impls = ["ring", "sdpa_contiguous", "hf_static_sliding", "full_131072", "ring_full_131072"]
    assert len(header) == 2 + len(impls), header
    for cells in body:
        B = int(cells[0])
        for impl, printed in zip(impls, cells[1:6]):
            assert (impl, B) in by, f"B={B}: no {impl} row"
            assert_printed(printed, by[(impl, B)]["ms"], f"B={B} {impl} ms")
        assert_printed(cells[6], by[("ring", B)]["bw_fraction"], f"B={B} ring bw_fraction")


def test_readme_streaming_table_is_its_runs_rows():
    """The streaming-memory table (ring under both SWAA_RING_CHUNK modes, the full cache of
    the `auto` run) and the 1M-token ratios in the prose after it."""
    text = section((ROOT / "README.md").read_text(), "Streaming memory")
    runs = re.search(r"runs `(\S+)` and `(\S+)` in", text)
    assert runs, "the README's streaming section names no runs"
    kernel_run, auto_run = runs.groups()
    by = {}
    for run in (kernel_run, auto_run):
        for r in rows_of(RESULTS / "memory_H200.jsonl", run):
            by[(run, r["impl"], r["tokens"])] = r
    mib = 2 ** 20
    header, body = first_table(text)
    assert len(header) == 7 and len(body) == 3, header
    for cells in body:
        T = int(cells[0])
        for cell, row in ((cells[1], by[(kernel_run, "ring", T)]),
                          (cells[2], by[(auto_run, "ring", T)]),
                          (cells[5], by[(auto_run, "full", T)])):
            held, peak = (c.strip() for c in cell.split("/"))
            assert_printed(held, row["bytes_held"] / mib, f"T={T} held")
            assert_printed(peak, row["peak_bytes"] / mib, f"T={T} peak")
        assert_printed(cells[3], by[(kernel_run, "ring", T)]["seconds"], f"T={T} kernel s")
        assert_printed(cells[4], by[(auto_run, "ring", T)]["seconds"], f"T={T} auto s")
        assert_printed(cells[6], by[(auto_run, "full", T)]["seconds"], f"T={T} full s")
    prose = re.search(r"\(([\d.]+) M\s+tokens/s: ([\d.]+)x `kernel`, ([\d.]+)x", text)
    assert prose, "the 1M-token ratios are not where this test looks"
    ring, full, slow = (by[(auto_run, "ring", 1 << 20)], by[(auto_run, "full", 1 << 20)],
                        by[(kernel_run, "ring", 1 << 20)])
    assert_printed(prose.group(1), ring["tokens_per_s"] / 1e6, "1M tokens/s")
    assert_printed(prose.group(2), slow["seconds"] / ring["seconds"], "1M vs kernel")
    assert_printed(prose.group(3), full["seconds"] / ring["seconds"], "1M vs full")


def ceiling_rows(forward_run: str, backward_run: str) -> dict:
    """The ceiling run's rows by (impl, pass, D, N, W): the forward pass from the first run,
    forward+backward from the second."""
    by = {}
    for run, pass_ in ((forward_run, "fwd"), (backward_run, "fwd+bwd")):
        for r in rows_of(RESULTS / "ceiling_h200.jsonl", run):
            if r["pass"] == pass_:
                by[(r["impl"], pass_, r["D"], r["N"], r["W"])] = r
    return by


def test_readme_ceiling_table_is_its_runs_rows():
    """The dense-causal ceiling: TFLOP/s per implementation and swaa's speed against cuDNN,
    and what 1.5x Flex's windowed forward asks at D=64, against the two runs' rows."""
    text = section((ROOT / "README.md").read_text(), "Dense causal: the ceiling")
    runs = re.search(r"Runs\s+`(\S+)` \(forward\) and `(\S+)` \(forward\+backward\)", text)
    assert runs, "the README's ceiling section names no runs"
    by = ceiling_rows(*runs.groups())
    header, body = first_table(text)
    assert len(header) == 12 and len(body) == 4, header
    impls = ("swaa", "sdpa_cudnn", "sdpa_flash", "flex")
    for cells in body:
        D, N = int(cells[0]), int(cells[1])
        for pass_, first in (("fwd", 2), ("fwd+bwd", 7)):
            for i, impl in enumerate(impls):
                assert_printed(cells[first + i], by[(impl, pass_, D, N, None)]["tflops"],
                               f"D={D} N={N} {pass_} {impl}")
            ratio = by[("sdpa_cudnn", pass_, D, N, None)]["ms"] / by[("swaa", pass_, D, N, None)]["ms"]
            assert_printed(cells[first + 4], ratio, f"D={D} N={N} {pass_} vs cuDNN")
    asks = re.findall(r"runs (\d+) TFLOP/s effective at N=(\d+), so 1.5x is (\d+):\s+([\d.]+)x "
                      r"cuDNN's dense causal forward and ([\d.]+)x ours|and (\d+) at N=(\d+), so "
                      r"1.5x is (\d+): ([\d.]+)x\s+cuDNN's and ([\d.]+)x ours", text)
    assert len(asks) == 2, "the D=64 asks are not where this test looks"
    for match in asks:
        flex, N, need, vs_cudnn, vs_ours = (x for x in match if x)
        N = int(N)
        flex_row = by[("flex", "fwd", 64, N, 4096)]
        assert_printed(flex, flex_row["tflops"], f"N={N} flex windowed")
        assert_printed(need, 1.5 * flex_row["tflops"], f"N={N} 1.5x flex")
        assert_printed(vs_cudnn, 1.5 * flex_row["tflops"] / by[("sdpa_cudnn", "fwd", 64, N, None)]["tflops"],
                       f"N={N} vs cuDNN")
        assert_printed(vs_ours, 1.5 * flex_row["tflops"] / by[("swaa", "fwd", 64, N, None)]["tflops"],
                       f"N={N} vs ours")


def test_docs_ceiling_table_is_its_runs_rows():
    """docs/cuda_kernels.md's ceiling table (every backend, both passes) and its windowed line."""
    text = section((ROOT / "docs" / "cuda_kernels.md").read_text(), "Measured: the ceiling")
    runs = re.search(r"Runs\s+`(\S+)` \(forward, W=0 and 4096\) and `(\S+)`", text)
    assert runs, "the ceiling section names no runs"
    by = ceiling_rows(*runs.groups())
    header, body = first_table(text)
    assert len(header) == 10 and len(body) == 8, header
    impls = ("swaa", "sdpa_cudnn", "sdpa", "sdpa_flash", "sdpa_efficient", "flex")
    for cells in body:
        D, N, pass_ = int(cells[0]), int(cells[1]), cells[2]
        for cell, impl in zip(cells[3:9], impls):
            key = (impl, pass_, D, N, None)
            if cell == "-":
                assert key not in by, f"D={D} N={N} {pass_} {impl} has a row"
            else:
                assert_printed(cell, by[key]["tflops"], f"D={D} N={N} {pass_} {impl}")
        assert_printed(cells[9], by[("sdpa_cudnn", pass_, D, N, None)]["ms"]
                       / by[("swaa", pass_, D, N, None)]["ms"], f"D={D} N={N} {pass_} vs cuDNN")
    windowed = re.search(r"D=128 swaa (\d+) / (\d+) \(N=8k / 32k\),\s+Flex (\d+) / (\d+); "
                         r"D=64 swaa (\d+) / (\d+), Flex (\d+) / (\d+)", text)
    assert windowed, "the windowed line is not where this test looks"
    printed = iter(windowed.groups())
    for D in (128, 64):
        for impl in ("swaa", "flex"):
            for N in (8192, 32768):
                assert_printed(next(printed), by[(impl, "fwd", D, N, 4096)]["tflops"],
                               f"windowed D={D} N={N} {impl}")


@pytest.mark.parametrize("printed, value, ok", [("0.89", 0.8912, True), ("0.89", 0.896, False),
                                                ("1.40x", 1.4049, True), ("465", 465.4, True),
                                                ("465", 466.0, False)])
def test_assert_printed_checks_the_printed_digits(printed, value, ok):
    if ok:
        assert_printed(printed, value, "x")
    else:
        with pytest.raises(AssertionError):
            assert_printed(printed, value, "x")


def test_readme_summary_of_the_grid_is_its_runs_rows():
    """The "Where we stand" paragraph's ranges and counts over the run's 36 shapes."""
    text = section((ROOT / "README.md").read_text(), "CUDA attention")
    run = re.search(r"Run (\d{8}T\d{6}) \(commit", text).group(1)
    ms = {}
    for r in rows_of(KERNEL_ROWS, run):
        ms[(r["impl"], r["pass"], r["D"], r["N"], r["W"], r["S"])] = r
    shapes = sorted({k[2:] for k in ms})
    assert len(shapes) == 36

    def ratios(pass_, other="flex", S=None):
        return [ms[(other, pass_, *s)]["ms"] / ms[("swaa", pass_, *s)]["ms"]
                for s in shapes if S is None or s[3] == S]

    def span(values):
        return f"{min(values):.2f}-{max(values):.2f}x"

    para = " ".join(text[text.index("Where we stand (issue 3)"):].split())
    fb, f = ratios("fwd+bwd"), ratios("fwd")
    assert f"forward+backward is **{span(fb)}** FlexAttention" in para
    assert f">= 1.3x on {sum(x >= 1.3 for x in fb)} of 36" in para
    for S in (0, 4, 128):
        assert f"S={S}: {span(ratios('fwd+bwd', S=S))}" in para, S
    assert f"the forward **{span(f)}** (>= 1.5x on {sum(x >= 1.5 for x in f)} of 36)" in para
    tflops = {S: ms[("swaa", "fwd", 128, 32768, 4096, S)]["tflops"] for S in (0, 4, 128)}
    assert f"**{tflops[4]:.0f} TFLOP/s** at N=32k, W=4096, D=128 ({tflops[0]:.0f} at S=0, " \
           f"{tflops[128]:.0f} at S=128" in para
    for D in (64, 128):
        sdpa = [ms[("sdpa", "fwd+bwd", *s)]["ms"] / ms[("swaa", "fwd+bwd", *s)]["ms"]
                for s in shapes if s[0] == D and s[1] == 8192 and s[2] == 4096]
        assert f"{min(sdpa):.2f}-{max(sdpa):.2f}x" in para, D


def test_grid_tables_prints_the_committed_tables():
    """bench/grid_tables.py, which the docs say to paste from, prints the README's S=4 table
    and docs/cuda_kernels.md's latest 36-row table line for line from the run they name."""
    import sys
    sys.path.insert(0, str(ROOT / "bench"))
    import grid_tables

    readme = section((ROOT / "README.md").read_text(), "CUDA attention")
    run = re.search(r"Run (\d{8}T\d{6}) \(commit", readme).group(1)
    by = grid_tables.load(KERNEL_ROWS, run)
    docs = (ROOT / "docs" / "cuda_kernels.md").read_text()
    for line in grid_tables.readme_table(by).splitlines()[2:]:
        assert line in readme, line
    for line in grid_tables.docs_table(by).splitlines()[2:]:
        assert line in docs, line
    assert len(grid_tables.docs_table(by).splitlines()) == 38
    summary = grid_tables.summary(by)
    assert "forward+backward vs flex: " in summary and "of 36" in summary
    # a partial grid (gpu_check's bench step with BENCH_ARGS): only its complete shapes
    partial = {k: r for k, r in by.items() if k[2:4] == (128, 8192) and k[:2] != ("sdpa", "fwd")
               or k[2:5] == (64, 32768, 1024)}
    assert grid_tables.shapes_of(partial) == [(64, 32768, 1024, 0), (64, 32768, 1024, 4),
                                              (64, 32768, 1024, 128)]
    assert "of 3" in grid_tables.summary(partial, previous=by)
