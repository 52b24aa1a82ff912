"""Cost of a fine-tuning step with packed rows against right-padded rows (issue 6, `--pack`).

The same examples go through one forward + backward of the LoRA model with the SWAA plan active
(no optimizer step) in two layouts:

  padded  one row per example, right-padded to the longest (swaa_ext.train.collate)
  packed  examples concatenated into rows of at most --pack-len tokens (train.pack_examples +
          train.collate_packed; one kernel call per layer over the padded view of the examples)

Examples are random tokens with prompt lengths uniform in [--min-len, --max-len] and answers of
1 .. --answer-len tokens, --examples per step, --sets input sets cycled through.  Per layout: the
rows and row length, tokens computed (rows x row length) against real tokens, median step time,
real tokens per second, and the loss of the first set (packed and padded must agree: their
relative difference is in every row).  Rows (bench: "pack") go to bench/results/pack_<gpu>.jsonl.

    python bench/bench_pack.py                                   # CUDA: bf16, 8 layers
    python bench/bench_pack.py --device cpu --examples 8 --max-len 256 --layers 2 --reps 3
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from swaa_ext import SWAAConfig, train  # noqa: E402
from swaa_ext.models import default_model  # noqa: E402


def make_examples(n, min_len, max_len, answer_len, vocab, seed):
    rng = random.Random(seed)
    encoded = []
    for _ in range(n):
        prompt = rng.randint(min_len, max_len)
        answer = rng.randint(1, answer_len)
        ids = [1] + [rng.randrange(3, vocab) for _ in range(prompt + answer - 1)]
        encoded.append((ids, prompt))
    return encoded


def build_model(args, device, dtype):
    model = default_model(device, dtype, num_hidden_layers=args.layers)
    has_sink = "sink" in args.preset.split("+")
    cfg = None if args.preset == "full" else SWAAConfig.preset(
        args.preset, window=args.window, sink=args.sink if has_sink else None)
    plan = cfg if cfg is not None else train.full_attention_config(args.layers)
    torch.manual_seed(0)
    peft_model = train.prepare_model(model, plan, train.LoraOptions(dropout=0.0),
                                     answer_full=args.answer_full)
    for p in peft_model.parameters():  # adapters in float32 over the base, as finetune --bf16
        if p.requires_grad:
            p.data = p.data.float()
    return peft_model.train()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bf16 on CUDA, "
                    "float32 on CPU")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--preset", default="sink", help="SWAA preset, or 'full' (full attention in "
                    "every layer through the swaa kernels)")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--sink", type=int, default=4)
    ap.add_argument("--answer-full", action="store_true")
    ap.add_argument("--examples", type=int, default=32, help="examples per step")
    ap.add_argument("--min-len", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=4096)
    ap.add_argument("--answer-len", type=int, default=32)
    ap.add_argument("--pack-len", type=int, help="tokens per packed row (default: the longest "
                    "possible example, --max-len + --answer-len)")
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", type=Path, help="JSONL (default bench/results/pack_<gpu>.jsonl)")
    args = ap.parse_args()

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    meta = common.run_metadata(device)
    model = build_model(args, device, dtype)
    vocab = model.get_input_embeddings().num_embeddings
    pack_len = args.pack_len or args.max_len + args.answer_len
    sets = [make_examples(args.examples, args.min_len, args.max_len, args.answer_len, vocab, s)
            for s in range(args.sets)]
    layouts = {
        "padded": [train.collate(ex, 0) for ex in sets],
        "packed": [train.collate_packed(train.pack_examples(ex, pack_len), 0) for ex in sets],
    }

    def step(batch):
        model.zero_grad(set_to_none=True)
        loss, count = train.forward_loss(model, batch, device)
        (loss / count).backward()
        return loss.detach()

    first_loss = {name: float(step(batches[0])) for name, batches in layouts.items()}
    loss_rel_diff = abs(first_loss["packed"] - first_loss["padded"]) / abs(first_loss["padded"])
    rows = []
    for name, batches in layouts.items():
        ms = common.time_ms(lambda i, b=batches: step(b[i]), device, warmup=args.warmup,
                            reps=args.reps, n_inputs=len(batches))
        real = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
        computed = sum(b["input_ids"].numel() for b in batches) / len(batches)
        rows.append({
            **meta, "bench": "pack", "layout": name, "preset": args.preset,
            "window": args.window, "sink": args.sink, "answer_full": args.answer_full,
            "layers": args.layers, "dtype": str(dtype).replace("torch.", ""),
            "examples": args.examples, "min_len": args.min_len, "max_len": args.max_len,
            "pack_len": pack_len if name == "packed" else None,
            "rows": sum(b["input_ids"].shape[0] for b in batches) / len(batches),
            "row_len": sum(b["input_ids"].shape[1] for b in batches) / len(batches),
            "tokens_real": real, "tokens_computed": computed, "step_ms": ms,
            "real_tokens_per_s": real / ms * 1e3, "loss_first_set": first_loss[name],
            "loss_rel_diff": loss_rel_diff,
        })
    rows[1]["speedup_vs_padded"] = rows[0]["step_ms"] / rows[1]["step_ms"]
    out = args.out or common.default_results_path(f"pack_{meta['gpu'].replace(' ', '_')}")
    common.append_rows(out, rows)
    common.print_table(rows, ["layout", "rows", "row_len", "tokens_real", "tokens_computed",
                              "step_ms", "real_tokens_per_s", "speedup_vs_padded",
                              "loss_rel_diff"])
    print(f"rows appended to {out}")
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    if loss_rel_diff > tol:
        print(f"FAIL: packed and padded losses differ by {loss_rel_diff:.2e} (> {tol})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
