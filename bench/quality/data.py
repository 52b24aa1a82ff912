"""Offline data of the quality benchmark: real text and synthetic long-context retrieval.

(a) Real text: the Python source files of installed packages (site-packages), one document per
    file, made ASCII (non-ASCII characters dropped) so that one character is one byte token of
    :class:`swaa_ext.train.ByteTokenizer`.  Each file goes to the train or the held-out split by a
    hash of its path relative to its root, so the split is the same on every machine that has the
    same packages, and no file is in both.
(b) Retrieval: a document of that text with key/value facts ("the value of key k3491 is 72805.")
    inserted at chosen depths, then a question about one of them.  The answer restates the key,
    then gives the value ("the value of key k3491 is 72805."), so the value is *generated* after
    several answer tokens (where FA decode changes what the model sees).

Lengths are in byte tokens of ``ByteTokenizer``: a prompt of ``context`` tokens is ``[bos]`` +
``context - 1`` characters.  Every generator takes a seed (``random.Random``), so the same
arguments give the same examples.  :func:`write_jsonl` writes ``{"prompt", "answer"}`` lines that
``swaa_ext.train.load_examples`` (``swaa finetune --data``) reads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import site
import sysconfig
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

__all__ = ["Corpus", "RetrievalExample", "default_roots", "split_of", "load_corpus",
           "make_retrieval", "retrieval_set", "text_windows", "write_jsonl", "extract_value",
           "FACT_TEMPLATE", "QUESTION_TEMPLATE"]

FACT_TEMPLATE = "\nthe value of key k{key} is {value}.\n"
QUESTION_TEMPLATE = "\nquestion: what is the value of key k{key}?\nanswer: "
ANSWER_TEMPLATE = "the value of key k{key} is {value}."
_VALUE_RE = re.compile(r"the value of key k(\d+) is (\d+)")
BOS_TOKENS = 1  # ByteTokenizer's [bos] in front of every prompt


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


def _ascii(text: str) -> str:
    return text.encode("ascii", "ignore").decode("ascii").replace("\r\n", "\n")


@dataclasses.dataclass
class Corpus:
    """Documents of one split: ``texts[i]`` came from ``paths[i]`` (relative to its root)."""

    split: str
    paths: List[str]
    texts: List[str]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def chars(self) -> int:
        return sum(len(t) for t in self.texts)

    def stream(self, rng: random.Random, n_chars: int, separator: str = "\n\n") -> str:
        """``n_chars`` characters of documents in random order, joined by ``separator``, starting
        at a random place of the first one; exactly ``n_chars`` long."""
        if not self.texts:
            raise ValueError(f"Corpus({self.split}): no documents")
        out: List[str] = []
        have = 0
        first = True
        while have < n_chars:
            text = self.texts[rng.randrange(len(self.texts))]
            if first:
                text = text[rng.randrange(max(1, len(text) // 2)):]
                first = False
            piece = text + separator
            out.append(piece)
            have += len(piece)
        return "".join(out)[:n_chars]


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
            try:
                text = _ascii(path.read_text(encoding="utf-8", errors="ignore"))
            except OSError:
                continue
            if not min_file_chars <= len(text) <= max_file_chars:
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


@dataclasses.dataclass(frozen=True)
class RetrievalExample:
    prompt: str                  # context text + question (no bos)
    answer: str                  # "the value of key k<key> is <value>."
    key: int
    value: int
    depth: float                 # requested depth of the asked fact (0 = start, 1 = end)
    fact_offset: int             # character offset of the asked fact in prompt
    context: int                 # tokens of [bos] + prompt

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "answer": self.answer}


def _fact(key: int, value: int) -> str:
    return FACT_TEMPLATE.format(key=key, value=value)


def make_retrieval(rng: random.Random, corpus: Corpus, context: int, depth: float, *,
                   n_distractors: int = 3) -> RetrievalExample:
    """One example of exactly ``context`` tokens ([bos] + prompt): filler text from ``corpus``
    with the asked fact starting at ``depth`` of the filler (character offset
    ``round(depth * filler_len)``) and ``n_distractors`` other facts (other keys) at random depths,
    then the question.  Keys are 4 digits, values 5 digits."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"make_retrieval: depth must be in [0, 1], got {depth}")
    keys = rng.sample(range(1000, 10000), n_distractors + 1)
    key, value = keys[0], rng.randrange(10000, 100000)
    facts = [(depth, _fact(key, value))]
    for k in keys[1:]:
        facts.append((rng.random(), _fact(k, rng.randrange(10000, 100000))))
    question = QUESTION_TEMPLATE.format(key=key)
    filler_len = context - BOS_TOKENS - len(question) - sum(len(f) for _, f in facts)
    if filler_len < 1:
        raise ValueError(f"make_retrieval: context {context} is too short for {len(facts)} facts "
                         "and the question")
    filler = corpus.stream(rng, filler_len)
    # insert the facts in order of depth; offsets refer to the filler, shifted by facts before
    cuts = sorted(((round(d * filler_len), i, f) for i, (d, f) in enumerate(facts)),
                  key=lambda t: (t[0], t[1]))
    parts, prev, shift, asked_at = [], 0, 0, -1
    for cut, i, fact in cuts:
        parts.append(filler[prev:cut])
        if i == 0:
            asked_at = cut + shift
        parts.append(fact)
        shift += len(fact)
        prev = cut
    parts.append(filler[prev:])
    prompt = "".join(parts) + question
    assert len(prompt) + BOS_TOKENS == context
    return RetrievalExample(prompt=prompt, answer=ANSWER_TEMPLATE.format(key=key, value=value),
                            key=key, value=value, depth=depth, fact_offset=asked_at,
                            context=context)


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


def extract_value(generated: str, key: Optional[int] = None) -> Optional[int]:
    """The value the model gave: the number after "the value of key k<key> is" (the first such
    statement, for ``key`` when given), else ``None``."""
    for m in _VALUE_RE.finditer(generated):
        if key is None or int(m.group(1)) == key:
            return int(m.group(2))
    return None


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
