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

import subprocess

import pytest
from native_build import build_native, find_nvcc


@pytest.mark.skipif(find_nvcc() is None, reason="needs nvcc")
def test_fused_backward_schedule(tmp_path):
    exe = build_native("fused_schedule_check", tmp_path)
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "OK: 0 failure(s) in 77 cases" in res.stdout, res.stdout[-3000:]
