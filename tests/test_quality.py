"""The quality benchmark's pieces (bench/quality): data generators, model size, a pretraining smoke
run that exports loadable weights, and an evaluation smoke run that writes complete rows."""
from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

pytest.importorskip("transformers")
from bench.quality import data as qdata  # noqa: E402
from bench.quality import model as qmodel  # noqa: E402
from swaa_ext import SWAAConfig, train  # noqa: E402

FACT_RE = re.compile(r"\nthe value of key k(\d+) is (\d+)\.\n")


def _write_corpus(root: Path, n_files: int = 120, seed: int = 0) -> Path:
    """Python-like files of random lengths in nested folders (a stand-in for site-packages)."""
    rng = random.Random(seed)
    words = ["def", "return", "self", "import", "value", "for", "in", "if", "else", "None",
             "x", "y", "data", "(", ")", ":", "=", "+", "1", "2", "#", "é"]
    for i in range(n_files):
        path = root / f"pkg{i % 7}" / f"mod_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [" ".join(rng.choice(words) for _ in range(rng.randrange(3, 12)))
                 for _ in range(rng.randrange(20, 120))]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory):
    return _write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def corpus(corpus_root):
    return qdata.load_corpus("train", [corpus_root], heldout_percent=20)


# ------------------------------------------------------------------------------------------ data
def test_split_is_disjoint_complete_and_deterministic(corpus_root):
    train_c = qdata.load_corpus("train", [corpus_root], heldout_percent=20)
    held = qdata.load_corpus("heldout", [corpus_root], heldout_percent=20)
    assert set(train_c.paths).isdisjoint(held.paths)
    assert len(held) > 0 and len(train_c) > len(held)
    every = {p.relative_to(corpus_root).as_posix() for p in corpus_root.rglob("*.py")
             if len(p.read_text(encoding="utf-8").encode("ascii", "ignore")) >= 200}
    assert set(train_c.paths) | set(held.paths) == every
    assert all(qdata.split_of(p, 20) == "heldout" for p in held.paths)
    again = qdata.load_corpus("heldout", [corpus_root], heldout_percent=20)
    assert again.paths == held.paths and again.texts == held.texts
    assert all(t.isascii() for t in train_c.texts)  # one character = one byte token
    with pytest.raises(ValueError, match="split"):
        qdata.load_corpus("test", [corpus_root])


def test_split_of_site_packages_files():
    roots = qdata.default_roots()
    assert roots, "no site-packages directory"
    held = qdata.load_corpus("heldout", roots, max_files=20)
    assert len(held) == 20 and all(qdata.split_of(p) == "heldout" for p in held.paths)


@pytest.mark.parametrize("context", [300, 2048, 4096, 8192, 16384])
@pytest.mark.parametrize("depth", [0.0, 0.1, 0.5, 0.93, 1.0])
def test_retrieval_length_depth_and_answer(corpus, context, depth):
    rng = random.Random(f"{context}:{depth}")
    n_distractors = 3 if context > 300 else 1
    ex = qdata.make_retrieval(rng, corpus, context, depth, n_distractors=n_distractors)
    tok = train.ByteTokenizer()
    ids, n_prompt = train.encode_example(train.Example(answer=ex.answer, prompt=ex.prompt), tok)
    assert n_prompt == context == ex.context  # [bos] + prompt, exactly
    assert len(ids) == context + len(ex.answer) + 1  # + eos
    facts = list(FACT_RE.finditer(ex.prompt))
    assert len(facts) == n_distractors + 1
    assert len({f.group(1) for f in facts}) == len(facts)  # distinct keys
    asked = [f for f in facts if int(f.group(1)) == ex.key]
    assert len(asked) == 1 and int(asked[0].group(2)) == ex.value
    assert asked[0].start() == ex.fact_offset
    # the asked fact sits at `depth` of the filler text (the prompt without facts and question)
    question = qdata.QUESTION_TEMPLATE.format(key=ex.key)
    assert ex.prompt.endswith(question)
    filler_len = context - 1 - len(question) - sum(len(f.group(0)) for f in facts)
    before = sum(len(f.group(0)) for f in facts if f.start() < ex.fact_offset)
    assert ex.fact_offset - before == round(depth * filler_len)
    # the answer restates the key, then gives the value
    assert ex.answer == f"the value of key k{ex.key} is {ex.value}."
    assert ex.answer.index(f"k{ex.key}") < ex.answer.index(str(ex.value))
    assert qdata.extract_value(ex.answer) == ex.value


def test_retrieval_is_seeded(corpus):
    a = qdata.retrieval_set(corpus, [512, 1024], [0.2, 0.7], 3, seed=5)
    b = qdata.retrieval_set(corpus, [512, 1024], [0.2, 0.7], 3, seed=5)
    c = qdata.retrieval_set(corpus, [512, 1024], [0.2, 0.7], 3, seed=6)
    assert a == b
    assert [e.prompt for e in a] != [e.prompt for e in c]
    # a cell does not depend on the others
    d = qdata.retrieval_set(corpus, [1024], [0.7], 3, seed=5)
    assert d == [e for e in a if e.context == 1024 and e.depth == 0.7]
    assert len({(e.key, e.value) for e in a}) > 1
    w = qdata.text_windows(corpus, 777, 3, seed=1)
    assert [len(t) for t in w] == [777] * 3 and w == qdata.text_windows(corpus, 777, 3, seed=1)


def test_retrieval_rejects_bad_arguments(corpus):
    with pytest.raises(ValueError, match="depth"):
        qdata.make_retrieval(random.Random(0), corpus, 1024, 1.5)
    with pytest.raises(ValueError, match="context"):
        qdata.make_retrieval(random.Random(0), corpus, 100, 0.5)


def test_extract_value():
    assert qdata.extract_value("the value of key k1234 is 56789. and more") == 56789
    assert qdata.extract_value("the value of key k1 is 5 the value of key k2 is 7", key=2) == 7
    assert qdata.extract_value("the value of key k1234 is") is None
    assert qdata.extract_value("nothing") is None


def test_jsonl_export_loads_in_finetune_loader(corpus, tmp_path):
    examples = qdata.retrieval_set(corpus, [400], [0.5], 4, seed=0)
    path = tmp_path / "ret.jsonl"
    assert qdata.write_jsonl(path, examples) == 4
    loaded = train.load_examples(path)
    assert [(e.prompt, e.answer) for e in loaded] == [(e.prompt, e.answer) for e in examples]


# ----------------------------------------------------------------------------------------- model
def test_model_config_fits_16mb():
    cfg = qmodel.make_config("quality")
    assert qmodel.weight_bytes(cfg) <= qmodel.WEIGHT_LIMIT_BYTES
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    assert cfg.head_dim == 64 and cfg.vocab_size >= train.ByteTokenizer.vocab_size
    rope = getattr(cfg, "rope_parameters", None) or {"rope_theta": cfg.rope_theta}
    assert cfg.max_position_embeddings >= 16384 and rope["rope_theta"] >= 100000
    # weight_bytes counts what a model holds (tied embeddings once)
    m = qmodel.build_model("tiny")
    unique = {id(p): p for p in m.parameters()}
    assert qmodel.weight_bytes("tiny", torch.float32) == 4 * sum(p.numel() for p in unique.values())


# ------------------------------------------------------------------------------ pretrain + eval
@pytest.fixture(scope="module")
def pretrained(corpus_root, tmp_path_factory):
    from bench.quality import pretrain

    out = tmp_path_factory.mktemp("model")
    rc = pretrain.main(["--out", str(out), "--config", "tiny", "--max-steps", "24",
                        "--seq-len", "256", "--min-seq-len", "128", "--batch-tokens", "2048",
                        "--lr", "3e-3", "--device", "cpu", "--root", str(corpus_root),
                        "--checkpoint-every", "10", "--no-progress"])
    assert rc == 0
    return out


def test_pretrain_smoke_lowers_loss_and_exports(pretrained):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    log = [json.loads(line) for line in (pretrained / "pretrain_log.jsonl").read_text().splitlines()]
    assert len(log) == 24
    assert [r["seq_len"] for r in log[:12]] == [128] * 12 and log[-1]["seq_len"] == 256
    first = sum(r["loss"] for r in log[:4]) / 4
    last = sum(r["loss"] for r in log[-4:]) / 4
    assert last < first - 0.5, (first, last)
    assert (pretrained / "checkpoint" / "model.safetensors").is_file()
    with safe_open(str(pretrained / "model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32).eval()
    ids = torch.tensor([[1] + train.ByteTokenizer().encode("def f(x):\n    return x")])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
    meta = json.loads((pretrained / "pretrain.json").read_text())
    assert meta["final"] and meta["steps"] == 24


def test_evaluate_smoke_writes_complete_rows(pretrained, corpus_root, tmp_path, monkeypatch):
    from bench.quality import evaluate

    monkeypatch.setenv("SWAA_RESULTS_DIR", str(tmp_path))
    common_args = ["--model", str(pretrained), "--contexts", "256,384", "--depths", "0.25,0.75",
                   "--per-cell", "2", "--ppl-samples", "1", "--window", "64", "--device", "cpu",
                   "--root", str(corpus_root), "--name", "q", "--no-progress"]
    rc = evaluate.main(common_args + ["--configs", "full,naive-swa", "--finetune",
                                      "--ft-steps", "2", "--ft-examples", "4",
                                      "--ft-contexts", "256"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 2  # configs x finetuned x contexts
    for r in rows:
        assert tuple(r) == evaluate.ROW_FIELDS
        assert r["bench"] == "quality" and r["gpu"] == "cpu" and r["commit"] and r["date"]
        assert 0.0 <= r["accuracy"] <= 1.0 and 1.0 < r["ppl"] < 1e4 and math.isfinite(r["ppl"])
        assert r["window"] == 64 and r["sink"] == 0
    assert {(r["config"], r["finetuned"]) for r in rows} == {
        ("full", False), ("naive-swa", False), ("full", True), ("naive-swa", True)}
    assert len({r["run"] for r in rows}) == 1
    depth_rows = [json.loads(line) for line in (tmp_path / "q_depth.jsonl").read_text().splitlines()]
    assert len(depth_rows) == 2 * len(rows)
    for r in rows:  # a context's accuracy is the mean of its depths' (equal counts)
        cells = [d for d in depth_rows if (d["config"], d["finetuned"], d["context"]) ==
                 (r["config"], r["finetuned"], r["context"])]
        assert [d["depth"] for d in cells] == [0.25, 0.75] and all(d["n"] == 2 for d in cells)
        assert r["accuracy"] == pytest.approx(sum(d["accuracy"] for d in cells) / 2)
    assert "| full | " in evaluate.depth_table(depth_rows)
    # SWA with the window over every token computes full attention: same answers, same ppl
    rc = evaluate.main(common_args + ["--configs", "full,naive-swa", "--window", "4096",
                                      "--name", "wide", "--no-plot"])
    wide = [json.loads(line) for line in (tmp_path / "wide.jsonl").read_text().splitlines()]
    by = {(r["config"], r["context"]): r for r in wide}
    for c in (256, 384):
        assert by[("naive-swa", c)]["accuracy"] == by[("full", c)]["accuracy"]
        assert by[("naive-swa", c)]["ppl"] == pytest.approx(by[("full", c)]["ppl"], rel=2e-6)
    # while a window of 64 moves the perplexity (a little: this model has seen 24 steps)
    narrow = {(r["config"], r["context"]): r for r in rows if not r["finetuned"]}
    assert narrow[("naive-swa", 384)]["ppl"] != pytest.approx(narrow[("full", 384)]["ppl"], rel=1e-5)


def test_summary_and_goals_from_rows(tmp_path):
    from bench.quality import evaluate

    def row(config, ft, context, acc):
        return {"bench": "quality", "config": config, "finetuned": ft, "context": context,
                "window": 512, "sink": 0, "accuracy": acc, "ppl": 3.0, "run": "r", "gpu": "cpu",
                "commit": "c", "date": "d"}

    accs = {"full": 0.9, "naive-swa": 0.1, "sink+fa_decode": 0.8, "fa_decode": 0.5}
    rows = [row(c, False, ctx, a) for c, a in accs.items() for ctx in (1024, 2048, 4096)]
    rows += [row("sink+fa_decode", True, ctx, 0.88) for ctx in (2048, 4096)]
    rows[0]["accuracy"] = 0.0  # context 1024 < 4 x window: not part of the goals
    g = evaluate.goal_ratios(rows)
    assert g["contexts"] == [2048, 4096]
    assert g["naive_ratio"] == pytest.approx(0.1 / 0.9)
    assert g["best_untrained"] == {"config": "sink+fa_decode", "ratio": pytest.approx(0.8 / 0.9)}
    assert g["best_finetuned"]["ratio"] == pytest.approx(0.88 / 0.9)
    table = evaluate.summary_table(rows)
    assert table.splitlines()[0].startswith("| config | acc@1k | acc@2k | acc@4k | acc@1k FT")
    assert "| naive-swa | 10% | 10% | 10% | - | - | - |" in table
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert evaluate.read_rows(path) == rows
    # a fine-tuning-only run has no untrained full rows: say so instead of "accuracy 0"
    only_ft = [r for r in rows if r["finetuned"]]
    assert "no untrained full-attention rows" in evaluate.goal_ratios(only_ft)["note"]
    zero_full = [dict(r, accuracy=0.0) if r["config"] == "full" else r for r in rows]
    assert "accuracy 0" in evaluate.goal_ratios(zero_full)["note"]


def test_swaa_bench_quality_lists_configs():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "swaa_ext.cli", "bench", "quality",
                           "--list-configs", "--window", "256"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    expected = ["full", "naive-swa"] + [n for n in SWAAConfig.presets() if n != "naive"] + ["full_tail"]
    assert names == expected
    assert "'full_layers': '1::2'" in proc.stdout and "'full_tail': 64" in proc.stdout


def test_curriculum_and_time_budget_progress():
    from bench.quality import pretrain

    stages = pretrain.curriculum(100, 512, 8192)
    assert [L for _, L in stages] == [512, 1024, 2048, 4096, 8192]
    assert [s for s, _ in stages] == [0, 20, 40, 60, 80]
    assert pretrain.length_at(stages, 0) == 512 and pretrain.length_at(stages, 99) == 8192
    assert pretrain.curriculum(10, 512, 300) == [(0, 300)]
    # no budget: steps decide; with a budget, whichever is further along
    assert pretrain.progress_step(10, 100, 50.0, None) == 10
    assert pretrain.progress_step(10, 100, 50.0, 100.0) == 50
    assert pretrain.progress_step(60, 100, 10.0, 100.0) == 60
    assert pretrain.progress_step(10, 100, 500.0, 100.0) == 99


def test_pretrain_batches_mark_answer_and_value(corpus):
    from bench.quality import pretrain

    tok = train.ByteTokenizer()
    ids, weights, values = pretrain.make_batch(random.Random(3), corpus, 400, 3, 1.0, 4.0,
                                               dense_frac=0.0)
    assert ids.shape == weights.shape == values.shape == (3, 400)
    for row, w, v in zip(ids.tolist(), weights, values):
        text = tok.decode(row)
        answer = re.search(r"answer: (the value of key k(\d+) is (\d+)\.)$", text)
        assert answer and row[0] == tok.bos_token_id and row[-1] == tok.eos_token_id
        facts = dict(FACT_RE.findall(text))
        assert facts[answer.group(2)] == answer.group(3)
        assert tok.decode(r for r, m in zip(row, v.tolist()) if m) == answer.group(3)
        n_answer = len(answer.group(1)) + 1  # + eos
        assert (w[-n_answer:] == 4.0).all() and (w[:-n_answer] == 1.0).all()
    # dense form: several questions, each answered from its fact; masks on answers and digits
    ids, weights, values = pretrain.make_batch(random.Random(4), corpus, 2048, 4, 1.0, 4.0,
                                               dense_frac=1.0)
    for row, w, v in zip(ids.tolist(), weights, values):
        text = tok.decode(row)
        assert len(row) == 2048 and row[0] == tok.bos_token_id
        facts = dict(FACT_RE.findall(text))
        qa = re.findall(r"question: what is the value of key k(\d+)\?\nanswer: "
                        r"the value of key k(\d+) is (\d+)\.\n", text)
        assert len(qa) >= 1 and text.endswith(".\n") and len(facts) >= len(qa)
        assert all(k == k2 and facts[k] == val for k, k2, val in qa)
        assert tok.decode(r for r, m in zip(row, v.tolist()) if m) == "".join(val for _, _, val in qa)
        assert int((w == 4.0).sum()) == len(qa) * len("the value of key k1234 is 12345.\n")
    ids, weights, values = pretrain.make_batch(random.Random(3), corpus, 300, 2, 0.0, 4.0)
    assert (weights == 1).all() and not values.any()
