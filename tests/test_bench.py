"""The benchmark scripts run end to end (small CPU sizes) and write rows with
the metadata every result needs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path, timeout=300):
    env = dict(os.environ, SWAA_RESULTS_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def _rows(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    assert rows
    for row in rows:
        for key in ("run", "gpu", "torch", "commit", "date"):
            assert row[key], key
    return rows


def test_bench_attention_tiny(tmp_path):
    out = _run(["bench/bench_attention.py", "--preset", "tiny", "--N", "256", "--name", "t"],
               tmp_path)
    rows = _rows(tmp_path / "t.jsonl")
    assert {r["impl"] for r in rows} == {"swaa", "sdpa_mask"}
    assert {r["pass"] for r in rows} == {"fwd", "fwd+bwd"}
    assert all(r["rel_err"] < 1e-5 and r["tflops"] > 0 for r in rows)
    assert "swaa is" in out and "time ~ N^" not in out  # one N: no growth exponent


def test_bench_attention_plot_from_saved_rows(tmp_path):
    _run(["bench/bench_attention.py", "--preset", "tiny", "--name", "t", "--passes", "fwd"], tmp_path)
    png = tmp_path / "p.png"
    _run(["bench/bench_attention.py", "--plot-from", str(tmp_path / "t.jsonl"), "--plot", str(png)],
         tmp_path)
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("script", ["bench/bench_decode.py", "bench/bench_memory.py"])
def test_ring_benchmarks_cpu_smoke(tmp_path, script):
    out = tmp_path / "rows.jsonl"
    _run([script, "--cpu", "--out", str(out)], tmp_path)
    rows = _rows(out)
    assert {r["impl"] for r in rows} >= {"ring"}
