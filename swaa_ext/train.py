"""SWA-aware LoRA fine-tuning: the model adapts to exactly the attention it will run with.

    from swaa_ext import SWAAConfig, train
    tok = train.ByteTokenizer()
    examples = train.load_examples("data.jsonl")
    result = train.finetune(model, tok, examples, SWAAConfig.preset("sink", window=2048),
                            train.TrainOptions(out_dir="adapter", answer_full=True))

* The SWAA plan is applied to the base model (:func:`swaa_ext.hf.apply_swaa`) *before* PEFT wraps
  it.  PEFT only replaces the q/k/v ``nn.Linear`` layers inside the attention modules; the
  attention modules themselves (which carry the plan) and the ``"swaa"`` attention implementation
  stay, so every training forward goes through the swaa kernels (tested against an explicit mask).
* Data: JSONL, one example per line, ``{"prompt": str, "answer": str}`` or
  ``{"messages": [{"role": ..., "content": ...}, ...]}`` whose last message is the assistant's
  answer.  Tokens: ``[bos] prompt answer [eos]``; the loss covers the answer tokens and the eos only
  (labels are -100 on the prompt and on padding).
* Batches are right-padded; the model gets ``swaa_prompt_len`` as a (B,) tensor (each row's prompt
  end), so the plan's decode mode applies to the answer tokens exactly as in prefill + decode at
  inference.  ``answer_full`` turns on FA decode for every SWA layer: answer tokens attend to the
  whole context while prompt tokens use SWA, in one kernel call per layer through the kernel's
  per-sequence ``full_from`` (batches of any size).
* ``pack``: several examples are concatenated into one row of at most ``pack_len`` tokens
  (:func:`pack_examples`, :func:`collate_packed`), positions restarting at 0 for each example; the
  model gets ``swaa_packed`` (a :class:`swaa_ext.hf.PackedLayout`, built once per batch), and each
  layer attends all examples of the batch in one kernel call over a padded view of them, with each
  example's prompt end as its ``full_from``.  Examples never see each other; the loss and the
  gradients are those of the padded batch of the same examples.
* Runs under ``torchrun`` (DDP; gloo on CPU, nccl on CUDA), with gradient checkpointing, bf16
  (base weights in bf16, adapters in float32), a tqdm progress bar, the adapter saved as
  safetensors, and :func:`merge_adapter` to fold it into the base weights.

Needs ``peft`` (``pip install 'swaa_ext[train]'``); ``import swaa_ext`` does not import it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from .config import SWAAConfig

__all__ = ["ByteTokenizer", "HFTokenizer", "load_tokenizer", "Example", "load_examples",
           "encode_example", "collate", "pack_examples", "collate_packed", "answer_loss",
           "LoraOptions", "TrainOptions", "FinetuneResult", "training_config", "prepare_model",
           "full_attention_config", "lr_lambda", "finetune", "merge_adapter", "IGNORE_INDEX"]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj")


# ------------------------------------------------------------------------------------ tokenizers
class ByteTokenizer:
    """Byte-level tokenizer built into the package (nothing to download): token ``b + 3`` for each
    UTF-8 byte ``b``; 0 = padding, 1 = bos, 2 = eos.  ``vocab_size`` = 259, so any model with a
    vocabulary of at least 259 tokens can use it (the embedded model has 2048)."""

    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    offset = 3
    vocab_size = 256 + offset

    def encode(self, text: str) -> List[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) - self.offset for i in ids
                     if self.offset <= int(i) < self.vocab_size).decode("utf-8", errors="replace")

    def render_chat(self, messages: Sequence[dict]) -> str:
        return _plain_chat(messages)


class HFTokenizer:
    """A transformers tokenizer seen through the same small interface (``encode`` without special
    tokens, ``bos/eos/pad_token_id``, ``render_chat``).  The chat template is used when it has one."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_id or 0)
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> List[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def render_chat(self, messages: Sequence[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                      add_generation_prompt=True)
        return _plain_chat(messages)


def _plain_chat(messages: Sequence[dict]) -> str:
    """Chat rendering without a template: ``role: content`` lines, then ``assistant: ``."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def load_tokenizer(spec: Optional[str]):
    """``None`` or ``"bytes"``: :class:`ByteTokenizer`; else a transformers tokenizer
    (local directory or hub name)."""
    if spec is None or spec == "bytes":
        return ByteTokenizer()
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(spec))


# ------------------------------------------------------------------------------------------ data
@dataclasses.dataclass(frozen=True)
class Example:
    """One training example: ``prompt`` (text, or ``None`` for chat) and ``answer``; chat examples
    keep the ``messages`` before the answer."""

    answer: str
    prompt: Optional[str] = None
    messages: Optional[Tuple[dict, ...]] = None


def _parse_example(obj, where: str) -> Example:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}: 'messages' must be a non-empty list")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or \
                    not isinstance(m.get("content"), str):
                raise ValueError(f"{where}: messages[{i}] must be an object with string 'role' and "
                                 "'content'")
        if msgs[-1]["role"] != "assistant":
            raise ValueError(f"{where}: the last message is the answer and must have role "
                             f"'assistant', got {msgs[-1]['role']!r}")
        prior = tuple({"role": m["role"], "content": m["content"]} for m in msgs[:-1])
        return Example(answer=msgs[-1]["content"], messages=prior)
    prompt, answer = obj.get("prompt"), obj.get("answer")
    if not isinstance(prompt, str) or not isinstance(answer, str):
        raise ValueError(f"{where}: expected string 'prompt' and 'answer' (or 'messages'), got "
                         f"keys {sorted(obj)}")
    return Example(answer=answer, prompt=prompt)


def load_examples(path) -> List[Example]:
    """Read a JSONL file of ``{"prompt", "answer"}`` or ``{"messages"}`` objects (blank lines are
    skipped).  Errors name the file and line."""
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON: {e}") from None
            examples.append(_parse_example(obj, where))
    if not examples:
        raise ValueError(f"{path}: no examples")
    return examples


def encode_example(example: Example, tokenizer, max_len: Optional[int] = None
                   ) -> Tuple[List[int], int]:
    """Token ids ``[bos] prompt answer [eos]`` and the prompt length (bos included).  Longer than
    ``max_len``: the prompt loses tokens from its start (bos stays), then the answer its end."""
    text = example.prompt if example.messages is None else tokenizer.render_chat(example.messages)
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    prompt = tokenizer.encode(text)
    answer = tokenizer.encode(example.answer)
    if tokenizer.eos_token_id is not None:
        answer.append(tokenizer.eos_token_id)
    if not answer:
        raise ValueError("encode_example: the answer is empty (no tokens to learn)")
    if max_len is not None:
        if max_len < len(head) + 1:
            raise ValueError(f"encode_example: max_len must be >= {len(head) + 1}, got {max_len}")
        excess = len(head) + len(prompt) + len(answer) - max_len
        if excess > 0:
            cut = min(excess, len(prompt))
            prompt = prompt[cut:]
            excess -= cut
            if excess > 0:
                answer = answer[: len(answer) - excess]
    ids = head + prompt + answer
    return ids, len(head) + len(prompt)


def collate(encoded: Sequence[Tuple[List[int], int]], pad_token_id: int) -> Dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids``, ``attention_mask``, ``labels`` (-100 on prompt and
    padding) and ``prompt_len`` (B,)."""
    T = max(len(ids) for ids, _ in encoded)
    B = len(encoded)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    prompt_len = torch.empty(B, dtype=torch.long)
    for b, (ids, n_prompt) in enumerate(encoded):
        row = torch.tensor(ids, dtype=torch.long)
        input_ids[b, : len(ids)] = row
        attention_mask[b, : len(ids)] = 1
        labels[b, n_prompt: len(ids)] = row[n_prompt:]
        prompt_len[b] = n_prompt
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "prompt_len": prompt_len}


def pack_examples(encoded: Sequence[Tuple[List[int], int]], pack_len: int
                  ) -> List[List[Tuple[List[int], int]]]:
    """Rows of encoded examples, each row at most ``pack_len`` tokens: first fit in the given order
    (each example goes to the first row with room, else opens a new row; order within a row is
    kept), O(n log n).  An example longer than ``pack_len`` is refused (not truncated): truncate
    it with ``max_len`` (:func:`encode_example`), which the padded path applies the same way."""
    if pack_len < 1:
        raise ValueError(f"pack_examples: pack_len must be >= 1, got {pack_len}")
    # room[node]: the most room of any row under node of a binary tree whose leaves are the rows
    # (at most one per example; rows not opened yet have all of pack_len), so the first row with
    # room for n tokens is found by walking down from the root, always left when the left has it
    leaves = 1
    while leaves < len(encoded):
        leaves *= 2
    room = [pack_len] * (2 * leaves)
    rows: List[List[Tuple[List[int], int]]] = []
    for i, example in enumerate(encoded):
        n = len(example[0])
        if n > pack_len:
            raise ValueError(f"pack_examples: example {i} has {n} tokens, more than "
                             f"pack_len={pack_len}; raise pack_len or set max_len <= pack_len to "
                             "truncate it (the prompt loses its start, as without packing)")
        node = 1
        while node < leaves:
            node = 2 * node if room[2 * node] >= n else 2 * node + 1
        r = node - leaves
        room[node] -= n
        while node > 1:
            node //= 2
            room[node] = max(room[2 * node], room[2 * node + 1])
        if r == len(rows):
            rows.append([])
        rows[r].append(example)
    return rows


def collate_packed(rows: Sequence[Sequence[Tuple[List[int], int]]], pad_token_id: int
                   ) -> Dict[str, object]:
    """Packed batch: each row the concatenation of its examples, right-padded to the fullest row.
    ``input_ids``, ``attention_mask`` (0 on the trailing padding only), ``labels`` (-100 on each
    example's prompt, on its first token, so no example predicts the next one's start, and on
    padding), ``position_ids`` restarting at 0 for each example, and ``packed``: the
    :class:`swaa_ext.hf.PackedLayout` the attention follows (each example's prompt end included)."""
    from .hf import PackedLayout

    layout = PackedLayout.build([[len(ids) for ids, _ in row] for row in rows],
                                [[n_prompt for _, n_prompt in row] for row in rows])
    R, T = layout.rows, layout.row_len
    input_ids = torch.full((R, T), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((R, T), dtype=torch.long)
    labels = torch.full((R, T), IGNORE_INDEX, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for ids, n_prompt in row:
            end = start + len(ids)
            input_ids[r, start:end] = torch.tensor(ids, dtype=torch.long)
            attention_mask[r, start:end] = 1
            labels[r, start + max(n_prompt, 1): end] = input_ids[r, start + max(n_prompt, 1): end]
            start = end
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "position_ids": layout.position_ids, "packed": layout}


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over the labelled tokens, their count); position t predicts t + 1."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:].to(logits.device)
    total = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                              target.reshape(-1), ignore_index=IGNORE_INDEX,
                                              reduction="sum")
    return total, (target != IGNORE_INDEX).sum()


# ----------------------------------------------------------------------------------------- model
@dataclasses.dataclass
class LoraOptions:
    """The paper's defaults: LoRA on q/k/v, r=16, alpha=32, rsLoRA, dropout 0.1."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.1
    rslora: bool = True
    target_modules: Tuple[str, ...] = DEFAULT_TARGET_MODULES


@dataclasses.dataclass
class TrainOptions:
    out_dir: Optional[str] = None     # adapter (+ merged model with merge) written here
    answer_full: bool = False         # answer tokens attend to the whole context (FA decode)
    epochs: int = 1
    max_steps: Optional[int] = None   # this many optimizer steps (overrides epochs)
    batch_size: int = 1               # per process and micro-batch
    grad_accum: int = 1               # micro-batches per optimizer step (gradient accumulation)
    lr: float = 1e-4
    warmup_ratio: float = 0.05        # linear warm-up over this share of the steps, then linear decay
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    max_len: Optional[int] = None
    pack: bool = False                # several examples per row (batch_size then counts rows)
    pack_len: Optional[int] = None    # tokens per packed row (default: max_len, else the longest)
    gradient_checkpointing: bool = False
    bf16: bool = False
    seed: int = 0
    merge: bool = False               # also write the merged model to out_dir/merged
    progress: bool = True
    rank_summary: bool = False        # each rank writes out_dir/rank{R}.json (loss, weight sums)
    lora: LoraOptions = dataclasses.field(default_factory=LoraOptions)


@dataclasses.dataclass
class FinetuneResult:
    model: torch.nn.Module            # the PEFT model (unwrapped from DDP), SWAA applied
    losses: List[float]               # per optimizer step (averaged over ranks)
    steps: int
    adapter_dir: Optional[str] = None
    merged_dir: Optional[str] = None


def training_config(cfg: Optional[SWAAConfig], answer_full: bool) -> Optional[SWAAConfig]:
    """The plan used in training: ``cfg``, with FA decode on every SWA layer when ``answer_full``
    (the answer tokens are the 'generated' ones)."""
    if cfg is None or not answer_full:
        return cfg
    return SWAAConfig.from_dict({**cfg.to_dict(), "full_decode": True})


def _require_peft():
    try:
        import peft
    except ImportError as e:
        raise ImportError("swaa_ext.train needs peft: pip install 'swaa_ext[train]' "
                          f"(peft>=0.18) ({e})") from None
    return peft


def prepare_model(model, cfg: Optional[SWAAConfig], lora: Optional[LoraOptions] = None, *,
                  answer_full: bool = False, gradient_checkpointing: bool = False):
    """Apply the SWAA plan (``None``: keep the model's attention, i.e. full-attention fine-tuning)
    to ``model`` in place, then wrap it with PEFT LoRA; returns the PEFT model.  LoRA weights are
    initialised from torch's global RNG (seed it for reproducibility)."""
    peft = _require_peft()
    lora = lora or LoraOptions()
    plan_cfg = training_config(cfg, answer_full)
    if plan_cfg is not None:
        from . import hf

        hf.apply_swaa(model, plan_cfg)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        raise ValueError(f"prepare_model: target modules {missing} not found in "
                         f"{type(model).__name__} (LoRA targets q/k/v projections by name)")
    config = peft.LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha,
                             lora_dropout=lora.dropout, use_rslora=lora.rslora,
                             target_modules=list(lora.target_modules))
    return peft.get_peft_model(model, config)


def lr_lambda(total_steps: int, warmup_ratio: float):
    """Linear warm-up over ``ceil(warmup_ratio * total_steps)`` steps, then linear decay to 0."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))
    return factor


# -------------------------------------------------------------------------------------- training
def _dist_info() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rounds(encoded, batch_size: int, accum: int, rank: int, world: int, seed: int, epoch: int):
    """This rank's micro-batches of each optimizer step of one epoch: a seeded shuffle shared by
    all ranks, cut into rounds of ``batch_size * accum * world`` examples; each rank takes its
    slice, split into ``accum`` micro-batches.  With world > 1 the last incomplete round is
    dropped (every rank then has the same number of micro-batches)."""
    order = list(range(len(encoded)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    per_rank = batch_size * accum
    per_round = per_rank * world
    for r in range(_steps_per_epoch(len(order), batch_size, accum, world)):
        mine = order[r * per_round: (r + 1) * per_round][rank * per_rank: (rank + 1) * per_rank]
        yield [[encoded[i] for i in mine[m: m + batch_size]]
               for m in range(0, len(mine), batch_size)]


def _steps_per_epoch(n: int, batch_size: int, accum: int, world: int) -> int:
    per_round = batch_size * accum * world
    return n // per_round if world > 1 else math.ceil(n / per_round)


def forward_loss(model, batch: Dict[str, torch.Tensor], device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(summed answer-token loss, answer-token count) of one batch of :func:`collate` or
    :func:`collate_packed`."""
    if "packed" in batch:
        layout = batch["packed"].to(device)
        extra = {"swaa_packed": layout, "position_ids": layout.position_ids}
    else:
        extra = {"swaa_prompt_len": batch["prompt_len"].to(device)}
    out = model(input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device), use_cache=False, **extra)
    return answer_loss(out.logits, batch["labels"])


def full_attention_config(num_layers: int) -> SWAAConfig:
    """A plan with full attention in every layer: what packed rows use when no SWAA plan is given
    (the model's own attention cannot keep packed examples apart explicitly)."""
    return SWAAConfig(window=1, full_layers=tuple(range(num_layers)))


def _pack_for_training(encoded, opts: "TrainOptions", rank: int):
    """Packed rows of the examples: a seeded shuffle (the same on every rank), then
    :func:`pack_examples` with ``pack_len`` (default ``max_len``, else the longest example).
    Packed once: :func:`_rounds` shuffles the rows each epoch."""
    pack_len = opts.pack_len or opts.max_len or max((len(ids) for ids, _ in encoded), default=1)
    order = list(range(len(encoded)))
    random.Random(opts.seed).shuffle(order)
    rows = pack_examples([encoded[i] for i in order], pack_len)
    if rank == 0:
        tokens = sum(len(ids) for ids, _ in encoded)
        logger.info("finetune: packed %d examples (%d tokens) into %d rows of at most %d tokens "
                    "(%.0f%% full)", len(encoded), tokens, len(rows), pack_len,
                    100.0 * tokens / (len(rows) * pack_len))
    return rows


def _trainable_sums(model) -> Dict[str, float]:
    return {n: float(p.detach().double().sum()) for n, p in model.named_parameters()
            if p.requires_grad}


def finetune(model, tokenizer, examples: Sequence[Example], cfg: Optional[SWAAConfig],
             options: Optional[TrainOptions] = None) -> FinetuneResult:
    """LoRA fine-tuning of ``model`` (a transformers causal LM, modified in place: SWAA applied,
    LoRA layers inserted) on ``examples`` with the SWAA plan ``cfg`` active.  Under torchrun
    (torch.distributed initialised) the model is wrapped in DDP and each rank takes its share of
    every batch round; the loss is the mean over the round's answer tokens (all micro-batches of
    ``grad_accum``, all ranks), so ``world`` processes with ``batch_size`` b and ``grad_accum`` a
    compute what one process with ``world * b * a`` examples per batch computes (without
    dropout).  Writes the adapter (safetensors) to ``options.out_dir`` on rank 0."""
    opts = options or TrainOptions()
    if opts.batch_size < 1 or opts.epochs < 1 or opts.grad_accum < 1:
        raise ValueError("finetune: batch_size, grad_accum and epochs must be >= 1")
    if opts.max_steps is not None and opts.max_steps < 1:
        raise ValueError(f"finetune: max_steps must be >= 1, got {opts.max_steps}")
    if opts.pack_len is not None and (not opts.pack or opts.pack_len < 1):
        raise ValueError(f"finetune: pack_len ({opts.pack_len}) needs pack=True and must be >= 1")
    rank, world = _dist_info()
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().num_embeddings
    tok_vocab = getattr(tokenizer, "vocab_size", None)
    if tok_vocab is not None and tok_vocab > vocab:
        raise ValueError(f"finetune: the tokenizer has {tok_vocab} tokens but the model's "
                         f"embedding only {vocab}")
    encoded = [encode_example(ex, tokenizer, opts.max_len) for ex in examples]
    if opts.max_len is not None and rank == 0:
        long_ = sum(len(encode_example(ex, tokenizer)[0]) > opts.max_len for ex in examples)
        if long_:
            logger.warning("finetune: %d of %d examples are longer than max_len=%d and were "
                           "truncated (the prompt loses its start first)", long_, len(examples),
                           opts.max_len)
    units, unit_name = encoded, "examples"
    if opts.pack:
        units, unit_name = _pack_for_training(encoded, opts, rank), "packed rows"
    per_epoch = _steps_per_epoch(len(units), opts.batch_size, opts.grad_accum, world)
    if per_epoch == 0:
        raise ValueError(f"finetune: {len(units)} {unit_name} are fewer than one batch round "
                         f"({opts.batch_size} per micro-batch x {opts.grad_accum} micro-batches x "
                         f"{world} processes)")
    total = per_epoch * opts.epochs if opts.max_steps is None else opts.max_steps

    if opts.bf16:
        model.to(torch.bfloat16)
    torch.manual_seed(opts.seed)  # same LoRA initialisation on every rank
    plan_cfg = cfg
    if opts.pack and cfg is None:
        from .hf import _text_config

        plan_cfg = full_attention_config(_text_config(model).num_hidden_layers)
    peft_model = prepare_model(model, plan_cfg, opts.lora, answer_full=opts.answer_full,
                               gradient_checkpointing=opts.gradient_checkpointing)
    if opts.bf16:  # adapters train in float32 over the bf16 base
        for p in peft_model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    peft_model.train()
    torch.manual_seed(opts.seed + 1 + rank)  # dropout differs per rank
    trained = peft_model
    if world > 1:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        trained = torch.nn.parallel.DistributedDataParallel(peft_model, **ddp_kwargs)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, opts.warmup_ratio))

    bar = None
    if opts.progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="finetune", unit="step", dynamic_ncols=True)
    losses: List[float] = []
    log = None
    if opts.out_dir and rank == 0:
        os.makedirs(opts.out_dir, exist_ok=True)
        log = open(Path(opts.out_dir) / "train_log.jsonl", "w")
    step = 0
    start = time.perf_counter()
    try:
        epochs = itertools.count() if opts.max_steps is not None else range(opts.epochs)
        for epoch in epochs:
            for micro in _rounds(units, opts.batch_size, opts.grad_accum, rank, world,
                                 opts.seed, epoch):
                if step >= total:
                    break
                batches = [collate_packed(part, tokenizer.pad_token_id) if opts.pack
                           else collate(part, tokenizer.pad_token_id) for part in micro]
                # the loss is the mean over the answer tokens of the whole round (all micro-batches,
                # all ranks; counts are known from the labels before any forward); DDP averages
                # the gradients over ranks, hence the factor world
                round_count = torch.tensor(
                    [float(sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches))],
                    device=device)
                if world > 1:
                    dist.all_reduce(round_count)
                optimizer.zero_grad(set_to_none=True)
                loss_total = torch.zeros(1, device=device)
                for i, batch in enumerate(batches):
                    sync = world == 1 or i == len(batches) - 1
                    with contextlib.nullcontext() if sync else trained.no_sync():
                        loss_sum, _ = forward_loss(trained, batch, device)
                        (loss_sum * world / round_count.clamp_min(1)).backward()
                    loss_total += loss_sum.detach().float()
                if opts.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                value = loss_total
                if world > 1:
                    dist.all_reduce(value)
                losses.append(float(value / round_count.clamp_min(1)))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
                if log is not None:
                    log.write(json.dumps({"step": step, "epoch": epoch, "loss": losses[-1],
                                          "lr": scheduler.get_last_lr()[0],
                                          "tokens": sum(int(b["attention_mask"].sum())
                                                        for b in batches),
                                          "elapsed_s": round(time.perf_counter() - start, 4)})
                              + "\n")
            if step >= total:
                break
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()

    result = FinetuneResult(model=peft_model, losses=losses, steps=step)
    if opts.out_dir:
        if opts.rank_summary:
            with open(Path(opts.out_dir) / f"rank{rank}.json", "w") as f:
                json.dump({"rank": rank, "world": world, "steps": step, "losses": losses,
                           "weights": _trainable_sums(peft_model)}, f)
        if rank == 0:
            result.adapter_dir = save_adapter(peft_model, opts.out_dir, cfg, opts)
            if opts.merge:
                result.merged_dir = str(Path(opts.out_dir) / "merged")
                merge_adapter(peft_model, result.merged_dir)
        if world > 1:
            dist.barrier()
    return result


def save_adapter(peft_model, out_dir: str, cfg: Optional[SWAAConfig],
                 opts: Optional[TrainOptions] = None) -> str:
    """PEFT adapter as safetensors (``adapter_model.safetensors`` + ``adapter_config.json``), the
    SWAA plan trained with (``swaa_config.json``) and the training options (``train_args.json``)."""
    os.makedirs(out_dir, exist_ok=True)
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    if cfg is not None:
        training_config(cfg, opts.answer_full if opts else False).save(
            str(Path(out_dir) / "swaa_config.json"))
    if opts is not None:
        with open(Path(out_dir) / "train_args.json", "w") as f:
            json.dump(dataclasses.asdict(opts), f, indent=1)
    return out_dir


def merge_adapter(peft_model, out_dir: Optional[str] = None):
    """Fold the LoRA weights into the base weights (PEFT ``merge_and_unload``); returns the plain
    transformers model (SWAA still applied if it was).  With ``out_dir`` the merged model is saved
    there (safetensors) with its original attention implementation in the config."""
    merged = peft_model.merge_and_unload()
    if out_dir is not None:
        from . import hf

        cfg = hf.applied_config(merged) if hf.is_swaa_applied(merged) else None
        if cfg is not None:
            hf.remove_swaa(merged)
        try:
            merged.save_pretrained(out_dir, safe_serialization=True)
        finally:
            if cfg is not None:
                hf.apply_swaa(merged, cfg)
    return merged


def load_adapter(model, adapter_dir: str, cfg: Optional[SWAAConfig] = None):
    """Base ``model`` + saved adapter; the SWAA plan is ``cfg`` or the adapter's
    ``swaa_config.json`` (if any).  Returns the PEFT model in eval mode."""
    peft = _require_peft()
    path = Path(adapter_dir) / "swaa_config.json"
    if cfg is None and path.is_file():
        cfg = SWAAConfig.load(str(path))
    if cfg is not None:
        from . import hf

        hf.apply_swaa(model, cfg)
    return peft.PeftModel.from_pretrained(model, adapter_dir).eval()
