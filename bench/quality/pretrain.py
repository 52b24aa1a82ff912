"""Full-attention pretraining of the quality benchmark's small model.

    python bench/quality/pretrain.py --out runs/quality_model --max-steps 3000 --seq-len 8192

Data: a mix of (a) windows of real text (train split of :mod:`bench.quality.data`) and (b)
retrieval documents whose answer ends the sequence ([bos] prompt answer [eos]).  The loss is
next-token cross-entropy on every token; answer tokens weigh ``--answer-weight`` times more (they
are the only tokens that need the long context).  Curriculum: the sequence length doubles from
``--min-seq-len`` up to ``--seq-len`` in equal shares of the steps, at a constant number of tokens
per optimizer step (``--batch-tokens``; the batch is ``batch_tokens // length`` sequences).

AdamW, linear warm-up then cosine decay, bf16 autocast on CUDA (float32 master weights),
optional gradient checkpointing, a tqdm bar, ``pretrain_log.jsonl``, a checkpoint every
``--checkpoint-every`` steps (``OUT/checkpoint``, safetensors, replaced each time) and the final
export to ``OUT`` (``config.json`` + ``model.safetensors`` in bfloat16, loadable with
``AutoModelForCausalLM.from_pretrained(OUT)``, ``swaa demo --model OUT`` and
``bench/quality/evaluate.py --model OUT``).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.quality import data as qdata  # noqa: E402
from bench.quality import model as qmodel  # noqa: E402
from swaa_ext.train import ByteTokenizer  # noqa: E402

TOK = ByteTokenizer()


def curriculum(total_steps: int, min_len: int, max_len: int) -> List[Tuple[int, int]]:
    """(first step, sequence length) of each stage: lengths min_len, 2*min_len, ... max_len in
    equal shares of ``total_steps``."""
    lengths = []
    length = min(min_len, max_len)
    while length < max_len:
        lengths.append(length)
        length *= 2
    lengths.append(max_len)
    per = total_steps / len(lengths)
    return [(int(round(i * per)), L) for i, L in enumerate(lengths)]


def length_at(stages: Sequence[Tuple[int, int]], step: int) -> int:
    return [L for start, L in stages if start <= step][-1]


def progress_step(step: int, max_steps: int, elapsed_s: float, budget_s: Optional[float]) -> int:
    """The step the curriculum and the learning rate follow: ``step``, or further along when a
    time budget is set and time runs out faster than steps (so a run stopped by the budget has
    still gone through every stage and the decay)."""
    if not budget_s:
        return step
    return max(step, min(max_steps - 1, int(max_steps * elapsed_s / budget_s)))


def encode(text: str) -> List[int]:
    return TOK.encode(text)


def _spans_mask(length: int, spans: Sequence[Tuple[int, int]]) -> torch.Tensor:
    mask = torch.zeros(length, dtype=torch.bool)
    for a, b in spans:
        mask[a:b] = True
    return mask


def single_retrieval(rng: random.Random, corpus: qdata.Corpus, length: int):
    """The evaluation's format: [bos] document + question, answer, [eos]; ``length`` tokens.
    Returns (ids, answer spans, value-digit spans)."""
    answer_len = len(qdata.ANSWER_TEMPLATE.format(key=1000, value=10000)) + 1  # + eos
    # distractor facts (about 36 tokens each) take at most half of a short sequence
    most = max(0, min(6, (length - answer_len) // 80))
    ex = qdata.make_retrieval(rng, corpus, length - answer_len, rng.random(),
                              n_distractors=rng.randrange(0, most + 1))
    ids = [TOK.bos_token_id] + encode(ex.prompt) + encode(ex.answer) + [TOK.eos_token_id]
    value_at = ex.context + ex.answer.rindex(str(ex.value))
    return ids, [(ex.context, length)], [(value_at, value_at + len(str(ex.value)))]


def dense_retrieval(rng: random.Random, corpus: qdata.Corpus, length: int):
    """A denser training variant: many facts (up to a third of the tokens) at random places and
    several questions answered one after the other at the end, so one sequence carries several
    retrieval targets.  Same fact / question / answer strings as the evaluation.  Returns (ids,
    answer spans, value-digit spans); ``length`` tokens, no eos."""
    fact_len = len(qdata.FACT_TEMPLATE.format(key=1000, value=10000))
    qa_len = len(qdata.QUESTION_TEMPLATE.format(key=1000)) + \
        len(qdata.ANSWER_TEMPLATE.format(key=1000, value=10000)) + 1
    n_questions = rng.randint(1, max(1, min(8, length // (6 * qa_len))))
    n_facts = rng.randint(n_questions, max(n_questions, (length // 3) // fact_len))
    keys = rng.sample(range(1000, 10000), n_facts)
    facts = [(k, rng.randrange(10000, 100000)) for k in keys]
    filler_len = length - 1 - n_facts * fact_len - n_questions * qa_len
    if filler_len < 0:
        return single_retrieval(rng, corpus, length)
    filler = corpus.stream(rng, filler_len)
    cuts = sorted(rng.randrange(filler_len + 1) for _ in facts)
    parts, prev = [], 0
    for cut, (k, v) in zip(cuts, facts):
        parts += [filler[prev:cut], qdata.FACT_TEMPLATE.format(key=k, value=v)]
        prev = cut
    parts.append(filler[prev:])
    text = "".join(parts)
    answers, values = [], []
    for k, v in rng.sample(facts, n_questions):
        text += qdata.QUESTION_TEMPLATE.format(key=k)
        answer = qdata.ANSWER_TEMPLATE.format(key=k, value=v) + "\n"
        start = 1 + len(text)  # + bos
        answers.append((start, start + len(answer)))
        at = start + answer.rindex(str(v))
        values.append((at, at + len(str(v))))
        text += answer
    ids = [TOK.bos_token_id] + encode(text)
    return ids, answers, values


def sample_sequence(rng: random.Random, corpus: qdata.Corpus, length: int,
                    retrieval_frac: float, dense_frac: float = 0.5):
    """(token ids of exactly ``length`` tokens, answer mask, value-digit mask): text, or with
    probability ``retrieval_frac`` a retrieval document (``dense_frac`` of them dense)."""
    if rng.random() < retrieval_frac and length >= 200:
        make = dense_retrieval if rng.random() < dense_frac else single_retrieval
        ids, answers, values = make(rng, corpus, length)
        return ids, _spans_mask(length, answers), _spans_mask(length, values)
    ids = [TOK.bos_token_id] + encode(corpus.stream(rng, length - 1))
    none = torch.zeros(length, dtype=torch.bool)
    return ids, none, none


def make_batch(rng: random.Random, corpus: qdata.Corpus, length: int, batch: int,
               retrieval_frac: float, answer_weight: float, dense_frac: float = 0.5):
    """(ids, per-token loss weights, mask of the value digits) of ``batch`` sequences."""
    ids, weights, values = [], [], []
    for _ in range(batch):
        seq, answer, value = sample_sequence(rng, corpus, length, retrieval_frac, dense_frac)
        assert len(seq) == length
        ids.append(torch.tensor(seq))
        weights.append(torch.where(answer, answer_weight, 1.0))
        values.append(value)
    return torch.stack(ids), torch.stack(weights), torch.stack(values)


def weighted_loss(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                  values: torch.Tensor):
    """Weighted mean next-token cross-entropy; the plain means over all tokens and over the value
    digits (nan without retrieval sequences; ln 10 = 2.30 is guessing, 0 is retrieval)."""
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1),
                                            ids[:, 1:].flatten(), reduction="none")
    w = weights[:, 1:].flatten().to(nll.device)
    v = values[:, 1:].flatten().to(nll.device)
    value_nll = nll.detach()[v].mean() if bool(v.any()) else torch.tensor(float("nan"))
    return (nll * w).sum() / w.sum(), nll.detach().mean(), value_nll


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def export(model, out: Path, meta: dict) -> None:
    """``out``: config.json + model.safetensors (bfloat16) + pretrain.json (how it was made)."""
    import copy

    out.mkdir(parents=True, exist_ok=True)
    export_model = copy.deepcopy(model).to(device="cpu", dtype=torch.bfloat16)
    if getattr(export_model, "is_gradient_checkpointing", False):
        export_model.gradient_checkpointing_disable()
    export_model.config.use_cache = True
    export_model.save_pretrained(out, safe_serialization=True)
    with open(out / "pretrain.json", "w") as f:
        json.dump(meta, f, indent=1)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="export directory (checkpoints under OUT/checkpoint)")
    p.add_argument("--config", default="quality",
                   help="'quality' (default), 'tiny', or a JSON file of LlamaConfig fields")
    p.add_argument("--max-steps", type=int, default=3000, help="optimizer steps")
    p.add_argument("--seq-len", type=int, default=8192, help="longest sequence (last stage)")
    p.add_argument("--min-seq-len", type=int, default=512, help="first curriculum stage")
    p.add_argument("--batch-tokens", type=int, default=32768, help="tokens per optimizer step")
    p.add_argument("--retrieval-frac", type=float, default=0.5,
                   help="share of sequences that are retrieval documents")
    p.add_argument("--dense-frac", type=float, default=0.5,
                   help="share of retrieval documents in the dense multi-question form")
    p.add_argument("--answer-weight", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 2%% of the steps")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="stop (and export) after this many seconds of training; the curriculum "
                   "and the learning rate then follow elapsed time when it runs ahead of steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--root", action="append", help="directory of *.py files (default: site-packages)")
    p.add_argument("--max-corpus-chars", type=int, default=300_000_000)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = args.bf16 if args.bf16 is not None else device.type == "cuda"
    out = Path(args.out)
    if args.config in ("quality", "tiny"):
        config = qmodel.make_config(args.config, max_position_embeddings=max(
            qmodel.QUALITY_CONFIG["max_position_embeddings"], args.seq_len))
    else:
        config = qmodel.make_config(json.loads(Path(args.config).read_text()))
    if TOK.vocab_size > config.vocab_size:
        raise SystemExit(f"--config: vocab_size {config.vocab_size} < {TOK.vocab_size} byte tokens")
    t_load = time.perf_counter()
    corpus = qdata.load_corpus("train", args.root, max_chars=args.max_corpus_chars)
    print(f"pretrain: {len(corpus)} train files, {corpus.chars / 1e6:.1f}M chars "
          f"({time.perf_counter() - t_load:.1f} s); device {device}, bf16 {bf16}", flush=True)

    torch.manual_seed(args.seed)
    model = qmodel.build_model(config, seed=args.seed).to(device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.max_steps // 50)
    stages = curriculum(args.max_steps, args.min_seq_len, args.seq_len)
    rng = random.Random(f"pretrain:{args.seed}")

    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "pretrain_log.jsonl", "w")
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.max_steps, desc="pretrain", unit="step", dynamic_ncols=True)
    meta = {"config": config.to_diff_dict(), "args": vars(args), "stages": stages,
            "train_files": len(corpus), "train_chars": corpus.chars, "tokens": 0, "steps": 0}
    start = time.perf_counter()
    try:
        for step in range(args.max_steps):
            elapsed = time.perf_counter() - start
            if args.time_budget_s and elapsed >= args.time_budget_s:
                print(f"pretrain: time budget {args.time_budget_s} s reached after {step} steps",
                      flush=True)
                break
            at = progress_step(step, args.max_steps, elapsed, args.time_budget_s)
            length = length_at(stages, at)
            lr = args.lr * lr_factor(at, args.max_steps, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = max(1, args.batch_tokens // length)
            ids, weights, values = make_batch(rng, corpus, length, batch, args.retrieval_frac,
                                              args.answer_weight, args.dense_frac)
            ids = ids.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(input_ids=ids, use_cache=False).logits
            loss, lm_loss, value_loss = weighted_loss(logits, ids, weights, values)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            meta["tokens"] += ids.numel()
            meta["steps"] = step + 1
            row = {"step": step + 1, "seq_len": length, "batch": batch, "loss": float(loss.detach()),
                   "lm_loss": float(lm_loss), "value_loss": float(value_loss),
                   "grad_norm": float(grad_norm), "lr": lr,
                   "elapsed_s": round(time.perf_counter() - start, 3)}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(L=length, loss=f"{row['loss']:.3f}", val=f"{row['value_loss']:.3f}")
            if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0 \
                    and step + 1 < args.max_steps:
                export(model, out / "checkpoint", {**meta, "final": False})
    finally:
        if bar is not None:
            bar.close()
        log.close()
    meta["elapsed_s"] = round(time.perf_counter() - start, 3)
    meta["final_loss"] = row["loss"] if meta["steps"] else float("nan")
    export(model, out, {**meta, "final": True})
    print(f"pretrain: {meta['steps']} steps, {meta['tokens']} tokens, {meta['elapsed_s']:.1f} s; "
          f"final loss {meta['final_loss']:.4f}; exported to {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
