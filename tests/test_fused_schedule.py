"""The schedule of the single-pass Hopper backward (csrc/cuda/hopper/
bwd_fused_sm90.cuh, SWAA_BWD_HOPPER=4) on the host: a program
(tests/native/fused_schedule_check.cu, compiled here with nvcc) runs the
kernel's own fused_work() / dkdv_work_at() / dq_turn() over 77 shapes and
checks that the tickets cover every CTA's work once, that every dQ tile's
contributing key blocks get the ranks 0..k-1 in decreasing block order with
total k (k >= 1 below q_len), and that a step model of the turn counters never
stalls with 1, 3 or 132 resident CTAs (no deadlock).  Needs nvcc (CUDA_HOME or
PATH), no GPU; skipped without nvcc.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def find_nvcc():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = Path(home) / "bin" / "nvcc"
    return str(cand) if cand.exists() else shutil.which("nvcc")


@pytest.mark.skipif(find_nvcc() is None, reason="needs nvcc")
def test_fused_backward_schedule(tmp_path):
    exe = tmp_path / "fused_schedule_check"
    cmd = [find_nvcc(), "-std=c++20", "-O2", "--expt-relaxed-constexpr",
           "-gencode=arch=compute_90a,code=sm_90a", f"-I{ROOT / 'csrc'}",
           f"-I{ROOT / 'csrc' / 'include'}",
           str(ROOT / "tests" / "native" / "fused_schedule_check.cu"), "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "OK: 0 failure(s) in 77 cases" in res.stdout, res.stdout[-3000:]
