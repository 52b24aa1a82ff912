"""Builds the host programs of tests/native/ with nvcc (no GPU needed): the
checks that run a kernel's own device-side index code on the CPU."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = Path(home) / "bin" / "nvcc"
    return str(cand) if cand.exists() else shutil.which("nvcc")


def build_native(name: str, out_dir: Path) -> Path:
    """Compiles tests/native/<name>.cu for sm_90a; asserts it built, returns the executable."""
    exe = out_dir / name
    cmd = [find_nvcc(), "-std=c++20", "-O2", "--expt-relaxed-constexpr",
           "-gencode=arch=compute_90a,code=sm_90a", f"-I{ROOT / 'csrc'}",
           f"-I{ROOT / 'csrc' / 'include'}", str(ROOT / "tests" / "native" / f"{name}.cu"),
           "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    return exe
