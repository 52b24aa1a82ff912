"""Shared helpers of the benchmark scripts: run metadata, timing, JSONL rows.

Every benchmark row carries `run` (one id per invocation), `gpu` (or `cpu`),
`torch`, `commit` and `date`, so numbers from different runs are never mixed.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def run_metadata(device: torch.device) -> dict:
    """Fields common to every row of one invocation."""
    if device.type == "cuda":
        hw = torch.cuda.get_device_name(device)
    else:
        hw = "cpu"
    # SWAA_COMMIT: for machines that get the tree without its .git (the GPU machine)
    commit = os.environ.get("SWAA_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    now = _dt.datetime.now(_dt.timezone.utc)
    return {
        "run": f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}",
        "gpu": hw,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "commit": commit,
        "date": now.strftime("%Y-%m-%d"),
    }


def time_ms(fn: Callable[[int], object], device: torch.device, *, warmup: int, reps: int,
            n_inputs: int = 1) -> float:
    """Median wall time of fn(i) in milliseconds; i cycles over n_inputs input
    sets so repeated runs do not just measure a warm cache.  CUDA: events."""
    for i in range(warmup):
        fn(i % n_inputs)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for i in range(reps):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i % n_inputs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for i in range(reps):
            t0 = time.perf_counter()
            fn(i % n_inputs)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def append_rows(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def default_results_path(name: str) -> Path:
    """bench/results/<name>.jsonl, or $SWAA_RESULTS_DIR/<name>.jsonl when set."""
    root = Path(os.environ["SWAA_RESULTS_DIR"]) if os.environ.get("SWAA_RESULTS_DIR") else RESULTS_DIR
    return root / f"{name}.jsonl"


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths)))


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 100 else f"{x:.1f}"
    return "-" if x is None else str(x)
