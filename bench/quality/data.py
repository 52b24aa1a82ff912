"""Offline data of the quality benchmark: real text and synthetic long-context retrieval.

(a) Real text: the Python source files of installed packages (site-packages), one document per
    file, made ASCII (non-ASCII characters dropped) so that one character is one byte token of
    :class:`swaa_ext.train.ByteTokenizer`.  Each file goes to the train or the held-out split by a
    hash of its path relative to its root, so the split is the same on every machine that has the
    same packages, and no file is in both.
(b) Retrieval: a document of that text with key/value facts ("the value of key k3491 is 72805.")
    inserted at chosen depths, then a question about one of them.  The answer restates the key,
    then gives the value ("the value of key k3491 is 72805."), so the value is *generated* after
    several answer tokens (where FA decode changes what the model sees).  The templates and the
    generator live in the package (:mod:`swaa_ext.demo_data`, also used by ``swaa demo``) and are
    imported from there.

Lengths are in byte tokens of ``ByteTokenizer``: a prompt of ``context`` tokens is ``[bos]`` +
``context - 1`` characters.  Every generator takes a seed (``random.Random``), so the same
arguments give the same examples.  :func:`write_jsonl` writes ``{"prompt", "answer"}`` lines that
``swaa_ext.train.load_examples`` (``swaa finetune --data``) reads.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import site
import sysconfig
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from swaa_ext.demo_data import (ANSWER_TEMPLATE, BOS_TOKENS, FACT_TEMPLATE,  # noqa: F401
                                QUESTION_TEMPLATE, Corpus, RetrievalExample, extract_value,
                                make_retrieval, read_source)

__all__ = ["Corpus", "RetrievalExample", "default_roots", "split_of", "load_corpus",
           "make_retrieval", "retrieval_set", "text_windows", "write_jsonl", "extract_value",
           "FACT_TEMPLATE", "QUESTION_TEMPLATE", "ANSWER_TEMPLATE"]


def default_roots() -> List[Path]:
    """site-packages directories of this interpreter (purelib, platlib, site.getsitepackages)."""
    roots = []
    for p in [sysconfig.get_paths().get("purelib"), sysconfig.get_paths().get("platlib"),
              *getattr(site, "getsitepackages", lambda: [])()]:
        if p and Path(p).is_dir() and Path(p).resolve() not in roots:
            roots.append(Path(p).resolve())
    return roots


def split_of(rel_path: str, heldout_percent: int = 5) -> str:
    """``"heldout"`` or ``"train"``: SHA-1 of the path (relative to its root, '/' separators)."""
    h = int.from_bytes(hashlib.sha1(rel_path.replace(os.sep, "/").encode()).digest()[:8], "big")
    return "heldout" if h % 100 < heldout_percent else "train"


def load_corpus(split: str, roots: Optional[Sequence[os.PathLike]] = None, *,
                heldout_percent: int = 5, max_files: Optional[int] = None,
                max_chars: Optional[int] = None, min_file_chars: int = 200,
                max_file_chars: int = 200_000) -> Corpus:
    """The ``split`` ("train" or "heldout") of the ``*.py`` files under ``roots`` (default: the
    site-packages directories), in sorted path order.  ``max_files`` / ``max_chars`` stop early
    (for tests); files outside [min_file_chars, max_file_chars] characters are skipped."""
    if split not in ("train", "heldout"):
        raise ValueError(f"load_corpus: split must be 'train' or 'heldout', got {split!r}")
    roots = [Path(r) for r in (roots if roots is not None else default_roots())]
    paths, texts, total = [], [], 0
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if split_of(rel, heldout_percent) != split:
                continue
            text = read_source(path, min_file_chars, max_file_chars)
            if text is None:
                continue
            paths.append(rel)
            texts.append(text)
            total += len(text)
            if (max_files is not None and len(texts) >= max_files) or \
                    (max_chars is not None and total >= max_chars):
                return Corpus(split, paths, texts)
    if not texts:
        raise ValueError(f"load_corpus: no {split} *.py files under {[str(r) for r in roots]}")
    return Corpus(split, paths, texts)


def retrieval_set(corpus: Corpus, contexts: Sequence[int], depths: Sequence[float],
                  per_cell: int, seed: int, **kwargs) -> List[RetrievalExample]:
    """``per_cell`` examples for every (context, depth), each cell seeded from (seed, context,
    depth) so a cell does not change when others are added."""
    out = []
    for context in contexts:
        for depth in depths:
            rng = random.Random(f"{seed}:{context}:{depth:.6f}")
            out.extend(make_retrieval(rng, corpus, context, depth, **kwargs)
                       for _ in range(per_cell))
    return out


def text_windows(corpus: Corpus, length: int, count: int, seed: int) -> List[str]:
    """``count`` strings of exactly ``length`` characters of corpus text (perplexity inputs and
    pretraining sequences)."""
    rng = random.Random(f"text:{seed}:{length}")
    return [corpus.stream(rng, length) for _ in range(count)]


def write_jsonl(path: os.PathLike, examples: Iterable[RetrievalExample]) -> int:
    """``{"prompt", "answer"}`` lines for ``swaa finetune --data``; returns the number written."""
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex.to_json()) + "\n")
            n += 1
    return n


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Export a retrieval training set as JSONL (for ``swaa finetune --data``)."""
    import argparse

    p = argparse.ArgumentParser(description="write retrieval prompt/answer pairs as JSONL")
    p.add_argument("--out", required=True)
    p.add_argument("--split", default="train", choices=["train", "heldout"])
    p.add_argument("--contexts", default="2048,4096,8192")
    p.add_argument("--depths", default="0.05,0.25,0.5,0.75,0.95")
    p.add_argument("--per-cell", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", action="append", help="directory of *.py files (default: site-packages)")
    args = p.parse_args(argv)
    corpus = load_corpus(args.split, args.root)
    examples = retrieval_set(corpus, [int(c) for c in args.contexts.split(",")],
                             [float(d) for d in args.depths.split(",")], args.per_cell, args.seed)
    n = write_jsonl(args.out, examples)
    print(f"wrote {n} examples ({args.split}, {len(corpus)} files) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
