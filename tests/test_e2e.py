"""bench/bench_e2e.py (issue 7): rows with exactly the issue's fields, speedups within a run,
table/plot from saved rows, argument errors, and that `hf-swa` really is transformers' own
sliding window with the same attention as our `swa`."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_e2e", ROOT / "bench" / "bench_e2e.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_e2e"] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
WINDOW, PROMPT, NEW = 16, 64, 4
TINY = ["--models", "tiny", "--prompts", str(PROMPT), "--new-tokens", str(NEW), "--window",
        str(WINDOW), "--device", "cpu"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One CPU run of the tiny model with hf-sdpa, swa and full; its rows, plot and stdout."""
    tmp = tmp_path_factory.mktemp("e2e")
    out, png = tmp / "rows.jsonl", tmp / "e2e.png"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = bench.main(TINY + ["--configs", "hf-sdpa,swa,full", "--out", str(out),
                                "--plot", str(png)])
    return dict(rc=rc, out=out, png=png, stdout=buf.getvalue(), tmp=tmp)


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _per_position_bytes(key="tiny", dtype_bytes=4):
    c = bench.MODELS[key]["config"]
    return 2 * c["num_key_value_heads"] * c["head_dim"] * dtype_bytes * c["num_hidden_layers"]


def test_cpu_smoke_rows_have_exactly_the_fields(smoke):
    assert smoke["rc"] == 0, smoke["stdout"][-2000:]
    rows = _rows(smoke["out"])
    assert [r["config"] for r in rows] == ["full", "hf-sdpa", "swa"]  # baselines first
    for r in rows:
        assert tuple(r) == bench.ROW_FIELDS
        assert r["bench"] == "e2e" and r["model"] == "tiny" and r["gpu"] == "cpu"
        assert (r["prompt"], r["new_tokens"], r["batch"]) == (PROMPT, NEW, 1)
        for key in ("run", "torch", "commit", "date"):
            assert r[key]
        assert r["prefill_s"] > 0 and r["decode_ms_per_token"] > 0
        assert r["total_s"] >= r["prefill_s"]
        assert r["peak_gb"] == 0.0  # CPU
    assert len({r["run"] for r in rows}) == 1
    by = {r["config"]: r for r in rows}
    per_pos = _per_position_bytes()
    assert by["swa"]["kv_bytes"] == WINDOW * per_pos               # rings of `window` slots
    assert by["hf-sdpa"]["kv_bytes"] == (PROMPT + NEW - 1) * per_pos  # DynamicCache at the end
    assert by["full"]["kv_bytes"] >= (PROMPT + NEW - 1) * per_pos   # a never-wrapping ring
    assert by["full"]["kv_bytes"] / by["swa"]["kv_bytes"] > (PROMPT + NEW - 1) / WINDOW - 1e-9


def test_speedups_within_the_run(smoke):
    by = {r["config"]: r for r in _rows(smoke["out"])}
    full, hf = by["full"]["total_s"], by["hf-sdpa"]["total_s"]
    assert by["full"]["speedup_vs_full"] == pytest.approx(1.0)
    assert by["full"]["speedup_vs_hf_sdpa"] is None  # hf-sdpa had not run yet when it was written
    assert by["swa"]["speedup_vs_full"] == pytest.approx(full / by["swa"]["total_s"])
    assert by["swa"]["speedup_vs_hf_sdpa"] == pytest.approx(hf / by["swa"]["total_s"])
    again = {r["config"]: r for r in bench.add_speedups(list(by.values()))}
    assert again["full"]["speedup_vs_hf_sdpa"] == pytest.approx(hf / full)


def test_table_plot_and_progress_printed(smoke):
    text = smoke["stdout"]
    assert "| config | speedup vs full | vs hf-sdpa |" in text
    for config in ("full", "hf-sdpa", "swa"):
        assert f"| {config} |" in text
    assert "(1/3)" in text and "(3/3)" in text  # a progress line per configuration
    assert "same attention as full" in text      # hf-sdpa tokens compared with ours
    assert smoke["png"].stat().st_size > 1000


def test_plot_from_saved_rows_and_run_selection(smoke, capsys):
    rows = _rows(smoke["out"])
    other = [dict(r, run=r["run"] + "-later", total_s=r["total_s"] * 2) for r in rows]
    path = smoke["tmp"] / "two_runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + other))
    assert bench.main(["--plot-from", str(path)]) == 2
    assert "--run" in capsys.readouterr().err
    assert bench.main(["--plot-from", str(path), "--run", "nope"]) == 2
    assert "--run 'nope' not found" in capsys.readouterr().err
    png = smoke["tmp"] / "again.png"
    assert bench.main(["--plot-from", str(path), "--run", "latest", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert other[0]["run"] in out and f"run {rows[0]['run']})" not in out
    assert png.stat().st_size > 1000


def test_goal_checks(smoke):
    rows = [dict(r, prompt=bench.GOAL_PROMPT) for r in _rows(smoke["out"])]
    full = next(r for r in rows if r["config"] == "full")
    hf = next(r for r in rows if r["config"] == "hf-sdpa")
    swa = next(r for r in rows if r["config"] == "swa")
    swa.update(total_s=full["total_s"] / 10, kv_bytes=full["kv_bytes"] // 20)
    half = dict(swa, config="swa+half-full", total_s=full["total_s"] / 1.5)
    hf["total_s"] = full["total_s"] * 1.1
    text = " ".join("\n".join(bench.goal_checks(rows + [half])).split())  # spaces collapsed
    assert "swa 10.00x vs full (paper 8.00x) MET" in text
    assert "swa+half-full 1.50x vs full (paper 1.79x) MISSED" in text
    assert "swa+full-decode not measured" in text
    assert "KV swa 20.0x less than full (goal >= 10x for SWA decode) MET" in text
    assert "full vs hf-sdpa 1.10x (goal >= 1) MET" in text
    assert bench.goal_checks(_rows(smoke["out"]))[0].startswith("goals: no rows at prompt")


@pytest.mark.parametrize("argv, names", [
    (["--configs", "full,bogus"], "--configs"),
    (["--models", "gpt5"], "--models"),
    (["--new-tokens", "1"], "--new-tokens"),
    (["--prompts", "0"], "--prompts"),
    (["--batches", "x"], "--batches"),
    (["--window", "0"], "--window"),
    (["--run", "abc"], "--run"),
    (["--plot-from", "/nonexistent/rows.jsonl"], "--plot-from"),
    (["--preset", "huge"], "--preset"),
])
def test_bad_arguments(argv, names, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    assert names in capsys.readouterr().err


def test_presets_and_estimate(capsys):
    assert bench.main(["--preset", "quick", "--estimate-only"]) == 0
    out = capsys.readouterr().out
    runs = [line for line in out.splitlines() if line.startswith("  Qwen3-4B")]
    assert {line.split()[2] for line in runs} == {"131072", "32768"}
    configs = {line.split()[5] for line in runs}
    assert configs == set(bench.CONFIGS)
    # hf-static-compile only at the 32k prompt, hf-swa after everything else
    assert [line.split()[2] for line in runs if "hf-static-compile" in line] == ["32768"]
    assert all("hf-swa" in line for line in runs[-2:])
    assert bench.main(["--preset", "full", "--estimate-only"]) == 0
    out = capsys.readouterr().out
    assert "Llama-3.1-8B" in out and "batch 8" in out and "split it" in out


@pytest.mark.parametrize("key", ["tiny", "tiny-llama"])
def test_hf_swa_is_transformers_sliding_window_with_our_semantics(key):
    """hf-swa: transformers types every layer sliding, builds DynamicSlidingWindowLayer caches,
    shares the base model's weights, and its greedy tokens equal our SWA (window 8, sink 0)
    while its logits differ from full attention (the window matters at this length)."""
    from transformers.cache_utils import DynamicCache

    from swaa_ext import SWAAConfig

    window, prompt = 8, 40
    model = bench.build_model(key, torch.device("cpu"), torch.float32, max_positions=4096)
    twin = bench.sliding_twin(model, key, window, max_positions=4096)
    assert "DynamicSlidingWindowLayer" in bench.check_hf_sliding(twin, window)
    assert twin.model.embed_tokens.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert twin.lm_head.weight.data_ptr() == model.lm_head.weight.data_ptr()
    ids = torch.randint(0, model.config.vocab_size, (2, prompt),
                        generator=torch.Generator().manual_seed(1))
    hf = bench.run_hf(twin, ids, 6, DynamicCache(config=twin.config))
    ours = bench.run_ours(model, ids, 6, SWAAConfig(window=window))
    assert torch.equal(hf["sequences"], ours["sequences"])
    with torch.no_grad():
        sliding = twin(ids).logits[:, -1]
        full = model(ids).logits[:, -1]
    assert not torch.allclose(sliding, full, atol=1e-4)
    assert hf["kv_bytes"] == 2 * (window - 1) * _per_position_bytes(key)  # HF keeps window - 1


def test_cli_forwards_to_the_benchmark(capfd):
    from swaa_ext.cli import main

    assert main(["bench", "e2e", "--preset", "quick", "--estimate-only"]) == 0
    out = capfd.readouterr().out
    assert "Qwen3-4B" in out and "hf-static-compile" in out


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_smoke(tmp_path):
    """Every configuration but hf-static-compile (compile time) on the GPU, tiny model, bf16."""
    out = tmp_path / "rows.jsonl"
    configs = [c for c in bench.CONFIGS if c != "hf-static-compile"]
    rc = bench.main(["--models", "tiny", "--prompts", "300", "--batches", "1,2", "--new-tokens",
                     "8", "--window", "64", "--device", "cuda", "--configs", ",".join(configs),
                     "--out", str(out)])
    assert rc == 0
    rows = _rows(out)
    assert {r["config"] for r in rows} == set(configs) and {r["batch"] for r in rows} == {1, 2}
    for r in rows:
        assert tuple(r) == bench.ROW_FIELDS and r["peak_gb"] > 0 and r["gpu"] != "cpu"
    by = {(r["config"], r["batch"]): r for r in rows}
    per_pos = _per_position_bytes(dtype_bytes=2)
    assert by[("swa", 2)]["kv_bytes"] == 2 * 64 * per_pos


def test_compile_rows_carry_the_flag(tmp_path, capsys):
    """--compile: our configurations run generate(compile=True) (CPU inductor here); their rows
    carry "compile": true and compile_s, HF rows do not, and total_s leaves compile_s out."""
    out = tmp_path / "rows.jsonl"
    rc = bench.main(TINY + ["--configs", "full,hf-sdpa", "--compile", "--out", str(out)])
    assert rc == 0, capsys.readouterr().out[-2000:]
    by = {r["config"]: r for r in _rows(out)}
    assert tuple(by["full"]) == bench.ROW_FIELDS + bench.OPTIONAL_FIELDS
    assert by["full"]["compile"] is True and by["full"]["compile_s"] > 0
    assert by["full"]["decode_ms_per_token"] > 0
    assert by["full"]["total_s"] >= by["full"]["prefill_s"]
    assert tuple(by["hf-sdpa"]) == bench.ROW_FIELDS
