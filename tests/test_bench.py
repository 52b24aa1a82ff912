"""The benchmark scripts run end to end (small CPU sizes) and write rows with
the metadata every result needs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def test_bench_attention_forced_sdpa_backend_is_checked_without_a_window(tmp_path):
    """W <= 0: a full-causal SDPA backend computes swaa's function, so its output
    is checked against the reference (the ceiling run compares those speeds);
    with a window it computes more and is timed unchecked."""
    _run(["bench/bench_attention.py", "--preset", "tiny", "--N", "256", "--W", "0", "64",
          "--impls", "swaa", "sdpa_flash", "--passes", "fwd", "--name", "t"], tmp_path)
    rows = {(r["impl"], r["W"]): r for r in _rows(tmp_path / "t.jsonl")}
    assert set(rows) == {("swaa", None), ("sdpa_flash", None), ("swaa", 64), ("sdpa_flash", 64)}
    assert rows[("sdpa_flash", None)]["rel_err"] < 1e-5
    assert rows[("sdpa_flash", 64)]["rel_err"] is None


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


def gpu_test(test):
    """Marked `cuda` and skipped without a CUDA GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(),
                                               reason="needs a CUDA GPU")(test))


def _bench_decode():
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_decode

    return bench_decode


def test_decode_rows_carry_each_launch_timing(tmp_path):
    out = tmp_path / "rows.jsonl"
    _run(["bench/bench_decode.py", "--cpu", "--impls", "ring", "--batches", "1", "--budget",
          "0.02", "--launch", "queued,host", "--out", str(out)], tmp_path)
    rows = _rows(out)
    assert sorted(r["launch"] for r in rows) == ["host", "queued"]
    assert all(r["copy_gbps"] > 0 for r in rows)


def test_decode_timing_rejects_an_unknown_launch(tmp_path):
    bench_decode = _bench_decode()
    with pytest.raises(ValueError, match="launch must be"):
        bench_decode.time_steps([lambda: None], torch.device("cpu"), 0.01, False, "soon")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "bench/bench_decode.py", "--cpu", "--launch", "later",
                           "--out", str(tmp_path / "r.jsonl")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown timing 'later'" in proc.stderr


@gpu_test
def test_queued_timing_sees_the_gpu_work_only():
    # A graph of one short kernel: timed "host", the idle GPU waits for the replay's
    # submission after the start event; timed "queued", the spin kernel in front hides that.
    bench_decode = _bench_decode()
    device = torch.device("cuda")
    x = torch.zeros(1, device=device)
    queued, mode, used = bench_decode.time_steps([lambda: x.add_(1)], device, 0.05, True,
                                                 "queued")
    host, _, _ = bench_decode.time_steps([lambda: x.add_(1)], device, 0.05, True, "host")
    assert (mode, used) == ("graph", "queued")
    assert queued < host, (queued, host)
    # a step of known length (a 200 us spin) is timed as such
    cycles = bench_decode.spin_cycles(device, 200e-6)
    spin, _, _ = bench_decode.time_steps([lambda: torch.cuda._sleep(cycles)], device, 0.05, True,
                                         "queued")
    assert 150e-6 < spin < 260e-6, spin


@gpu_test
def test_queued_timing_falls_back_when_the_step_waits_for_the_gpu():
    # a step that reads a value back waits for the spin in front of it: such a step
    # (HF's eager cache update synchronises) is timed "host" instead of hanging
    bench_decode = _bench_decode()
    device = torch.device("cuda")
    x = torch.ones(1024, device=device)
    sec, mode, used = bench_decode.time_steps([lambda: x.sum().item()], device, 0.02, False,
                                              "queued")
    assert (mode, used) == ("eager", "host") and sec > 0


def test_ncu_source_stalls_ranks_source_lines(tmp_path):
    # a source page CSV as ncu exports it: a section per file, source-line rows followed by
    # their SASS rows (no line number: not counted)
    header = ['"Line No"', '"Source"', '"Address"', '"Source"',
              '"Warp Stall Sampling (All Samples)"', '"stall_wait"', '"stall_long_sb"',
              '"stall_wait (Not Issued)"']
    text = "\n".join([
        '"File Path","/src/ring.cu"', '"Function Name","k"', ",".join(header),
        '"10","slot = f(pos);","","","30","25","5","1"',
        '"","","0x10","IMAD R1, R2","30","25","5","1"',
        '"11","wait();","","","90","0","90","0"',
        '"File Path","/src/ring.h"', '"Function Name","k"', ",".join(header),
        '"5","off -= window;","","","30","30","0","0"',
    ])
    path = tmp_path / "page.csv"
    path.write_text(text + "\n")
    out = _run(["bench/ncu_source_stalls.py", str(path)], tmp_path)
    lines = out.splitlines()
    assert lines[0] == "page.csv: 150 warp samples on 3 source lines"
    assert lines[1] == "stall reasons: long_sb 63.3%, wait 36.7%"
    assert lines[4].startswith(" 60.0%  ring.cu:11") and "long_sb 100%" in lines[4]
    assert lines[5].startswith(" 20.0%  ring.cu:10") and "wait 83%, long_sb 17%" in lines[5]
    assert lines[6].startswith(" 20.0%  ring.h:5")


@pytest.mark.parametrize("launches", ["queued", "queued,host"])
def test_decode_step_that_falls_back_to_host_timing_is_timed_once(launches, tmp_path,
                                                                   monkeypatch):
    # HF's step cannot be queued on a GPU: time_steps reports the "host" timing it used.
    # The rows must use the host copy bandwidth and the host request must not time it again.
    bench_decode = _bench_decode()
    calls = []

    def fake_time_steps(steps, device, budget_s, graph, launch="queued"):
        calls.append(launch)
        return 1e-3, "eager", "host"

    monkeypatch.setattr(bench_decode, "time_steps", fake_time_steps)
    monkeypatch.setattr(bench_decode, "copy_bandwidth",
                        lambda device, nbytes, launch="queued": {"queued": 2e9, "host": 1e9}[launch])
    out = tmp_path / "rows.jsonl"
    monkeypatch.setattr(sys, "argv", ["bench_decode.py", "--cpu", "--impls", "ring", "--batches",
                                      "1", "--launch", launches, "--out", str(out)])
    bench_decode.main()
    rows = _rows(out)
    assert calls == ["queued"]
    assert [(r["launch"], r["copy_gbps"]) for r in rows] == [("host", 1.0)]


def test_bwd_rule_table_says_whether_the_default_took_the_faster_kernel(capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import tune_cuda_kernels

    def rows(D, W, N, v6, o1, o0, default_path):
        times = {"SWAA_BWD_HOPPER=1": (v6, "sm90"),
                 "SWAA_BWD_HOPPER=4,SWAA_BWD_ORDER=1": (o1, "sm90-fused"),
                 "SWAA_BWD_HOPPER=4,SWAA_BWD_ORDER=0": (o0, "sm90-fused"),
                 "defaults": (v6 if default_path == "sm90" else min(o0, o1), default_path)}
        return [dict(D=D, W=W, N=N, knob=k, ms=ms, path=p) for k, (ms, p) in times.items()]

    tune_cuda_kernels.print_rule_table(
        rows(128, 4096, 8192, 2.6, 3.2, 2.8, "sm90")            # v6 faster, taken
        + rows(128, 1024, 4096, 1.2, 1.0, 1.1, "sm90")          # v7 faster, not taken
        + rows(64, 1024, 8192, 2.0, 1.6, 1.7, "sm90-fused"))    # v7 faster, taken
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["D", "W", "N", "N/W"]
    body = {tuple(line.split()[:3]): line for line in lines[1:]}
    assert body[("128", "4096", "8192")].endswith("sm90 (2.600 ms, the faster)")
    assert " 0.93x " in body[("128", "4096", "8192")]
    assert body[("128", "1024", "4096")].endswith("sm90 (1.200 ms, the SLOWER)")
    assert " 1.20x " in body[("128", "1024", "4096")]
    assert body[("64", "1024", "8192")].endswith("sm90-fused (1.600 ms, the faster)")


def test_bwd_ab_settings_and_table(capsys):
    """--ab settings parse into knob dicts (an unknown knob is refused), and the
    A/B table gives each setting's backward over the first setting's and each
    kernel's time over the first setting that runs it."""
    sys.path.insert(0, str(ROOT / "bench"))
    import tune_cuda_kernels as tune

    assert tune.parse_setting("defaults") == {}
    assert tune.parse_setting("SWAA_BWD_HOPPER=4,SWAA_BWD_PIPELINE=0") == {
        "SWAA_BWD_HOPPER": "4", "SWAA_BWD_PIPELINE": "0"}
    with pytest.raises(SystemExit, match="SWAA_BWD_PIPLINE"):
        tune.parse_setting("SWAA_BWD_PIPLINE=1")
    with pytest.raises(SystemExit, match="not KNOB=VALUE"):
        tune.parse_setting("SWAA_BWD_HOPPER")
    assert tune.parse_shape("128,8192,1024,4") == (128, 8192, 1024, 4, None)
    assert tune.parse_shape("64,32768,4096,4,24576") == (64, 32768, 4096, 4, 24576)
    for bad in ("96,8192,1024,4", "128,8192,1024", "128,8k,1024,4", "128,8192,-1,4"):
        with pytest.raises(SystemExit, match="not D,N,W,S"):
            tune.parse_shape(bad)
    shape = dict(D=64, N=8192, W=4096, S=0, full_from=None)
    rows = [dict(shape, knob="a", ms=2.0, kernels={"x::dq": 1.0, "x::dkdv": 0.9}),
            dict(shape, knob="b", ms=1.6, kernels={"x::dq": 0.8, "x::dkdv": 0.9}),
            dict(shape, knob="c", ms=2.5, kernels={"x::fused": 2.0}),
            dict(shape, knob="d", ms=2.0, kernels={"x::fused": 1.6})]
    tune.print_ab_table(rows, ["a", "b", "c", "d"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("  ")}
    assert "1.600 ms (1.250x)" in lines["b"] and "dq 0.800 (1.250x)" in lines["b"]
    assert "dkdv 0.900 (1.000x)" in lines["b"]
    assert "2.500 ms (0.800x)" in lines["c"] and "fused 2.000 (1.000x)" in lines["c"]
    assert "fused 1.600 (1.250x)" in lines["d"]


def test_tuning_backward_rows_are_timed_in_interleaved_rounds(monkeypatch):
    """tune_cuda_kernels.bwd_rows times all settings of a shape through
    interleaved_ms (one job per setting, its knobs as the job's env) and
    reports each setting's path and gradient difference (CPU ops here)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import tune_cuda_kernels as tune

    seen = {}

    def fake_interleaved(jobs, warmup, reps, rounds):
        seen.update(rounds=rounds, envs={name: env for name, (_, _, env) in jobs.items()})
        for fn, sets, _ in jobs.values():
            assert len(sets) == 1 and all(a is b for a, b in zip(sets[0], (q, k, v)))
            calls = []
            with monkeypatch.context() as m:  # the job runs the backward on the shape's inputs
                m.setattr(tune.torch.ops.swaa, "bwd", lambda *args: calls.append(args))
                fn(*sets[0])
            assert len(calls) == 1 and calls[0][0] is do and calls[0][1] is q
        return {name: 1.0 + i for i, name in enumerate(jobs)}

    monkeypatch.setattr(tune, "interleaved_ms", fake_interleaved)
    monkeypatch.setattr(tune, "bwd_path", lambda *args: "cpu")  # the op needs a CUDA build
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 96, 64, generator=g)
    k, v = torch.randn(1, 2, 96, 64, generator=g), torch.randn(1, 2, 96, 64, generator=g)
    do = torch.randn(q.shape, generator=g)
    shape = dict(D=64, N=96, W=32, S=4, full_from=None)
    settings = [{}, {"SWAA_BWD_SPLIT": "0"}]
    rows = tune.bwd_rows({"run": "r"}, settings, q, k, v, do, shape, None, rounds=3)
    assert seen == {"rounds": 3, "envs": {"defaults": {}, "SWAA_BWD_SPLIT=0": {"SWAA_BWD_SPLIT": "0"}}}
    assert [(r["knob"], r["ms"], r["rounds"]) for r in rows] == [("defaults", 1.0, 3),
                                                                  ("SWAA_BWD_SPLIT=0", 2.0, 3)]
    assert all(r["max_diff_to_default"] == 0.0 and r["path"] == "cpu" for r in rows)


def test_kernel_benchmark_interleaves_the_implementations(monkeypatch):
    """bench_cuda_kernels.interleaved_ms takes every job once per round, in turn
    (a drift of the GPU's clocks during a shape's timing then falls on every
    implementation alike), warms up in the first round only, splits the reps
    over the rounds, rotates the input sets across rounds, sets each job's knobs
    around its own calls only, and returns the median of all its samples."""
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_cuda_kernels

    monkeypatch.delenv("SWAA_TEST_KNOB", raising=False)
    calls = []
    clock = iter(range(1, 1000))

    def timer(fn, sets, warmup, reps, first):
        calls.append((fn, warmup, reps, first, os.environ.get("SWAA_TEST_KNOB")))
        return [float(next(clock)) for _ in range(reps)]

    jobs = {"a": ("fa", ["s0", "s1"], {}), "b": ("fb", ["s0", "s1"], {"SWAA_TEST_KNOB": "1"})}
    ms = bench_cuda_kernels.interleaved_ms(jobs, warmup=3, reps=7, rounds=3, timer=timer)
    assert [c[0] for c in calls] == ["fa", "fb"] * 3              # in turn, round after round
    assert [c[1] for c in calls] == [3, 3, 0, 0, 0, 0]           # warmup in round one only
    assert [c[2] for c in calls] == [3, 3, 2, 2, 2, 2]           # 7 reps over 3 rounds
    assert [c[3] for c in calls] == [0, 0, 3, 3, 5, 5]           # input sets keep rotating
    assert [c[4] for c in calls] == [None, "1"] * 3              # knobs around the job only
    assert "SWAA_TEST_KNOB" not in os.environ
    # a's samples: 1-3, 7-8, 11-12 -> median 7; b's: 4-6, 9-10, 13-14 -> median 9
    assert ms == {"a": 7.0, "b": 9.0}
    calls.clear()
    bench_cuda_kernels.interleaved_ms(jobs, warmup=2, reps=4, rounds=1, timer=timer)
    assert [(c[0], c[1], c[2]) for c in calls] == [("fa", 2, 4), ("fb", 2, 4)]


def test_trace_timeline_from_the_committed_rows(tmp_path):
    """bench/trace_decode.py --timeline-from (no GPU) on the committed trace of session 18:
    the read rate per 2 us window of each traced setting, whose peak is the plateau the docs
    quote (about 5 TB/s for the default at B = 8) and whose tiles add up to the step's bytes."""
    out = _run(["bench/trace_decode.py", "--timeline-from",
                "bench/results/decode_trace_raw_H200.jsonl.gz"], tmp_path)
    line = next(x for x in out.splitlines() if x.startswith("default B=8:"))
    mb, end, peak, ideal = (float(x) for x in re.search(
        r"([\d.]+) MB of tiles, last tile done at ([\d.]+) us; at the peak rate \(([\d.]+) TB/s\) "
        r"they take ([\d.]+) us", line).groups())
    assert 130 < mb < 140 and 4.5 < peak < 5.5 and ideal < end - 5
    rates = out.splitlines()[out.splitlines().index(line) + 1]
    assert rates.strip().startswith("TB/s per 2 us:") and len(rates.split()) > 15
