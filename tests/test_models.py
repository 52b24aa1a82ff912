"""The models built into the package: the trained demo model shipped as package data, and the
random-weight default model."""
from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from swaa_ext import models  # noqa: E402
from swaa_ext.train import ByteTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FILES = ("config.json", "generation_config.json", "model.safetensors", "pretrain.json")


def test_packaged_files_are_found_through_importlib_resources():
    data = resources.files("swaa_ext").joinpath("data", "demo_model")
    for name in FILES:
        assert data.joinpath(name).is_file(), name
    assert models.demo_model_dir() == Path(str(data))
    # the cap on the shipped weights
    assert data.joinpath("model.safetensors").stat().st_size <= 16 * 1024 * 1024


def test_package_data_config_ships_every_file():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else \
        pytest.importorskip("tomli")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = cfg["tool"]["setuptools"]["package-data"]["swaa_ext"]
    pkg = ROOT / "swaa_ext"
    shipped = {p.relative_to(pkg).as_posix() for pat in patterns for p in pkg.glob(pat)}
    assert {f"data/demo_model/{name}" for name in FILES} <= shipped


def test_demo_model_is_from_pretrained_of_the_packaged_dir():
    from transformers import AutoModelForCausalLM

    model = models.demo_model("cpu")
    assert not model.training and next(model.parameters()).dtype == torch.float32
    ref = AutoModelForCausalLM.from_pretrained(str(models.demo_model_dir()), dtype=torch.float32)
    a, b = model.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg = model.config
    # byte vocabulary, and heads the CUDA kernels serve
    assert cfg.vocab_size >= ByteTokenizer.vocab_size and cfg.head_dim == 64
    assert cfg.num_hidden_layers == 8 and cfg.num_key_value_heads == 2
    assert next(models.demo_model("cpu", torch.bfloat16).parameters()).dtype == torch.bfloat16


def test_demo_model_continues_a_fact_it_was_shown():
    """The weights are trained: with full attention a short document's fact is retrieved."""
    from swaa_ext.demo_data import make_retrieval, stdlib_corpus, extract_value
    import random

    tok = ByteTokenizer()
    model = models.demo_model("cpu")
    ex = make_retrieval(random.Random(3), stdlib_corpus(max_chars=200_000), 512, 0.3)
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(ex.prompt)])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=len(ex.answer), do_sample=False)
    assert extract_value(tok.decode(out[0, ids.shape[1]:].tolist())) == ex.value


def test_default_model_is_random_and_takes_overrides():
    m = models.default_model("cpu", num_hidden_layers=2)
    assert m.config.num_hidden_layers == 2 and m.config.vocab_size == 2048
    m2 = models.default_model("cpu", num_hidden_layers=2)
    assert all(torch.equal(x, y) for x, y in zip(m.state_dict().values(), m2.state_dict().values()))
