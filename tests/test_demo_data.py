"""The retrieval documents of `swaa demo` (swaa_ext.demo_data), shared with bench/quality."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from swaa_ext import demo_data

ROOT = Path(__file__).resolve().parents[1]


def test_stdlib_corpus_is_ascii_top_level_and_deterministic():
    c = demo_data.stdlib_corpus(max_chars=300_000)
    assert len(c) > 3 and c.chars >= 300_000
    assert all(t.isascii() and "\r\n" not in t for t in c.texts)
    assert all("/" not in p and p.endswith(".py") for p in c.paths)  # no site-packages, no tests
    again = demo_data.stdlib_corpus(max_chars=300_000)
    assert again.paths == c.paths and again.texts == c.texts
    with pytest.raises(ValueError, match="stdlib_corpus"):
        demo_data.stdlib_corpus(root=str(ROOT / "docs"))


@pytest.mark.parametrize("context,depth", [(2048, 0.125), (2048, 0.875), (700, 0.5)])
def test_document_on_stdlib_text(context, depth):
    c = demo_data.stdlib_corpus(max_chars=300_000)
    ex = demo_data.make_retrieval(random.Random(f"{context}:{depth}"), c, context, depth)
    assert len(ex.prompt) + demo_data.BOS_TOKENS == context and ex.prompt.isascii()
    assert ex.prompt.endswith(demo_data.QUESTION_TEMPLATE.format(key=ex.key))
    assert ex.prompt[ex.fact_offset:].startswith(demo_data.FACT_TEMPLATE.format(key=ex.key,
                                                                                value=ex.value))
    assert demo_data.extract_value(ex.answer, ex.key) == ex.value


def test_bench_quality_uses_the_package_templates():
    sys.path.insert(0, str(ROOT))
    from bench.quality import data as qdata

    for name in ("FACT_TEMPLATE", "QUESTION_TEMPLATE", "ANSWER_TEMPLATE", "Corpus",
                 "RetrievalExample", "make_retrieval", "extract_value"):
        assert getattr(qdata, name) is getattr(demo_data, name), name
