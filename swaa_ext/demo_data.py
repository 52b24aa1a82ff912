"""Long-context retrieval documents: the task of ``swaa demo`` and of the quality benchmark.

A document is filler text with key/value facts ("the value of key k3491 is 72805.") inserted at
chosen depths, then a question about one of them.  The answer restates the key, then gives the
value ("the value of key k3491 is 72805."), so the value is *generated* after several answer
tokens (where FA decode changes what the model sees).  The templates, :class:`Corpus`,
:func:`make_retrieval` and :func:`extract_value` live here, in the package, so that ``swaa demo``
needs nothing from ``bench/``; ``bench/quality/data.py`` imports them from here and adds the
site-packages train/held-out split used for pretraining and the benchmark.

Lengths are in byte tokens of :class:`swaa_ext.train.ByteTokenizer`: a prompt of ``context``
tokens is ``[bos]`` + ``context - 1`` ASCII characters.  The demo's filler is
:func:`stdlib_corpus`: Python files of the standard library (always installed; the demo model was
pretrained on site-packages files, not on these).
"""
from __future__ import annotations

import dataclasses
import random
import re
import sysconfig
from pathlib import Path
from typing import List, Optional

__all__ = ["FACT_TEMPLATE", "QUESTION_TEMPLATE", "ANSWER_TEMPLATE", "BOS_TOKENS", "Corpus",
           "RetrievalExample", "to_ascii", "read_source", "make_retrieval", "extract_value",
           "stdlib_corpus"]

FACT_TEMPLATE = "\nthe value of key k{key} is {value}.\n"
QUESTION_TEMPLATE = "\nquestion: what is the value of key k{key}?\nanswer: "
ANSWER_TEMPLATE = "the value of key k{key} is {value}."
_VALUE_RE = re.compile(r"the value of key k(\d+) is (\d+)")
BOS_TOKENS = 1  # ByteTokenizer's [bos] in front of every prompt


def to_ascii(text: str) -> str:
    """``text`` without non-ASCII characters and with ``\\n`` line ends: one character = one
    byte token."""
    return text.encode("ascii", "ignore").decode("ascii").replace("\r\n", "\n")


def read_source(path: Path, min_chars: int, max_chars: int) -> Optional[str]:
    """The ASCII text of the source file ``path`` (:func:`to_ascii`), or ``None`` when it cannot be
    read or its length lies outside ``[min_chars, max_chars]``."""
    try:
        text = to_ascii(path.read_text(encoding="utf-8", errors="ignore"))
    except OSError:
        return None
    return text if min_chars <= len(text) <= max_chars else None


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


def extract_value(generated: str, key: Optional[int] = None) -> Optional[int]:
    """The value the model gave: the number after "the value of key k<key> is" (the first such
    statement, for ``key`` when given), else ``None``."""
    for m in _VALUE_RE.finditer(generated):
        if key is None or int(m.group(1)) == key:
            return int(m.group(2))
    return None


def stdlib_corpus(max_chars: int = 2_000_000, *, min_file_chars: int = 2000,
                  max_file_chars: int = 200_000, root: Optional[str] = None) -> Corpus:
    """The top-level ``*.py`` files of the standard library (``root``, default this interpreter's
    ``stdlib`` directory), in sorted order, made ASCII, until ``max_chars`` characters.  Only the
    top level: no ``site-packages`` (the demo model's pretraining text) and no test suites."""
    base = Path(root if root is not None else sysconfig.get_paths()["stdlib"])
    paths, texts, total = [], [], 0
    for path in sorted(base.glob("*.py")):
        text = read_source(path, min_file_chars, max_file_chars)
        if text is None:
            continue
        paths.append(path.name)
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not texts:
        raise ValueError(f"stdlib_corpus: no *.py files of at least {min_file_chars} characters "
                         f"in {base}")
    return Corpus("stdlib", paths, texts)
