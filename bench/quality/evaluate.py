"""The quality benchmark: retrieval accuracy and perplexity of SWAA configurations on one model.

    python bench/quality/evaluate.py --model runs/quality_model --window 512 [--finetune]
    swaa bench quality --model runs/quality_model --window 512

For each configuration (``full``; ``naive-swa``; every preset of ``SWAAConfig.presets()`` but
``naive``, i.e. the paper's table: sink, FA decode, 1/2 and 1/4 full layers and their
combinations; ``full_tail``: SWA with the last ``--full-tail`` prompt tokens attending to the
whole prompt), with ``swaa_ext.hf.apply_swaa`` and generation through ``swaa_ext.hf.SWAACache``
(``full``: the model's own attention and ``DynamicCache``):

* retrieval accuracy on held-out documents (:mod:`bench.quality.data`) at each context and depth:
  greedy generation after the prompt; correct when the first "the value of key k... is N" the
  model writes has N equal to the inserted value (exact match);
* perplexity on held-out text windows of each context length (prefill, all tokens);
* with ``--finetune``, again after LoRA fine-tuning (``swaa_ext.train.finetune``, the paper's LoRA
  defaults) on train-split retrieval examples with that configuration active, adapter merged.

Rows (one per configuration, finetuned, context) are appended to
``bench/results/<name>.jsonl`` with exactly the fields ``bench, config, finetuned, context,
window, sink, accuracy, ppl, run, gpu, commit, date``; the per-depth accuracies go to
``<name>_depth.jsonl`` (bench ``quality_depth``, plus ``depth``).  The summary table, the plot
(accuracy vs context) and the ratios of the issue's goals are computed from the rows read back
(``--summary-only --rows FILE`` redoes them for earlier runs).
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.quality import data as qdata  # noqa: E402
from swaa_ext.config import SWAAConfig  # noqa: E402
from swaa_ext.train import ByteTokenizer  # noqa: E402

TOK = ByteTokenizer()
ROW_FIELDS = ("bench", "config", "finetuned", "context", "window", "sink", "accuracy", "ppl",
              "run", "gpu", "commit", "date")
FULL, NAIVE, FULL_TAIL = "full", "naive-swa", "full_tail"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- configurations
def configurations(window: int, sink: Optional[int] = None, full_tail: int = 64
                   ) -> Dict[str, Optional[SWAAConfig]]:
    """Every configuration of the benchmark by name; ``full`` is ``None`` (no SWAA)."""
    out: Dict[str, Optional[SWAAConfig]] = {FULL: None, NAIVE: SWAAConfig.preset("naive", window=window)}
    for name in SWAAConfig.presets():
        if name == "naive":
            continue
        has_sink = "sink" in name.split("+")
        out[name] = SWAAConfig.preset(name, window=window, sink=sink if has_sink else None)
    out[FULL_TAIL] = SWAAConfig(window=window, full_tail=full_tail)
    return out


def _sink_of(cfg: Optional[SWAAConfig]) -> int:
    return 0 if cfg is None else cfg.sink


# ------------------------------------------------------------------------------------ the model
def load_model(path: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device).eval()


def _cache_kwarg(model) -> str:
    """transformers renamed past_key_values -> cache in 5.2x; use what this version takes."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _new_cache(model, cfg: Optional[SWAAConfig]):
    from transformers import DynamicCache

    from swaa_ext import hf

    return DynamicCache() if cfg is None else hf.SWAACache(model)


@torch.no_grad()
def greedy(model, cfg: Optional[SWAAConfig], prompts: Sequence[str], max_new: int,
           device: torch.device) -> List[str]:
    """Greedy continuations of equally long prompts ([bos] + prompt), one batch: prefill, then
    one token per call (the decode phase of the plan), until eos or ``max_new`` tokens."""
    ids = [[TOK.bos_token_id] + TOK.encode(p) for p in prompts]
    if len({len(x) for x in ids}) != 1:
        raise ValueError("greedy: prompts of one batch must have the same token length")
    x = torch.tensor(ids, device=device)
    cache = _new_cache(model, cfg)
    kw = _cache_kwarg(model)
    logits = model(input_ids=x, use_cache=True, **{kw: cache}).logits[:, -1]
    out = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for step in range(max_new):
        nxt = logits.argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, TOK.eos_token_id), nxt)
        for b, t in enumerate(nxt.tolist()):  # the greedy loop needs the tokens on the host anyway
            if not done[b] and t != TOK.eos_token_id:
                out[b].append(t)
        done |= nxt == TOK.eos_token_id
        if bool(done.all()) or step == max_new - 1:
            break
        logits = model(input_ids=nxt[:, None], use_cache=True, **{kw: cache}).logits[:, -1]
    return [TOK.decode(t) for t in out]


@torch.no_grad()
def perplexity(model, texts: Sequence[str], device: torch.device, batch_size: int) -> float:
    """exp(mean next-token NLL) over every token of [bos] + text (one prefill per batch)."""
    total, count = 0.0, 0
    for i in range(0, len(texts), batch_size):
        ids = torch.tensor([[TOK.bos_token_id] + TOK.encode(t) for t in texts[i: i + batch_size]],
                           device=device)
        logits = model(input_ids=ids, use_cache=False).logits
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1),
                                                ids[:, 1:].flatten(), reduction="sum")
        total += float(nll)
        count += ids[:, 1:].numel()
    return math.exp(total / count)


def evaluate_model(model, cfg: Optional[SWAAConfig], examples, ppl_texts: Dict[int, List[str]],
                   device: torch.device, batch_size: int):
    """(accuracy by (context, depth) as [correct, total], ppl by context) with ``cfg`` applied
    (``None``: the model as it is).  SWAA is applied for the evaluation and removed after."""
    from swaa_ext import hf

    applied_before = hf.is_swaa_applied(model)
    if cfg is not None:
        hf.apply_swaa(model, cfg)
    try:
        hits: Dict[Tuple[int, float], List[int]] = {}
        groups: Dict[int, list] = {}
        for ex in examples:
            groups.setdefault(ex.context, []).append(ex)
        max_new = len(examples[0].answer) + 4 if examples else 0
        for context, group in groups.items():
            for i in range(0, len(group), batch_size):
                chunk = group[i: i + batch_size]
                texts = greedy(model, cfg, [ex.prompt for ex in chunk], max_new, device)
                for ex, text in zip(chunk, texts):
                    cell = hits.setdefault((ex.context, ex.depth), [0, 0])
                    cell[0] += int(qdata.extract_value(text) == ex.value)
                    cell[1] += 1
        ppl = {ctx: perplexity(model, texts, device, batch_size) for ctx, texts in ppl_texts.items()}
    finally:
        if cfg is not None and not applied_before:
            hf.remove_swaa(model)
    return hits, ppl


def finetune_model(model_path: str, cfg: Optional[SWAAConfig], examples, args, device):
    """LoRA fine-tuning of a fresh copy of the model with ``cfg`` active; returns the merged
    model (SWAA still applied when ``cfg`` is not None) in eval mode."""
    from swaa_ext import train

    model = load_model(model_path, device, torch.float32).train()
    opts = train.TrainOptions(max_steps=args.ft_steps, batch_size=args.ft_batch_size,
                              grad_accum=args.ft_grad_accum, lr=args.ft_lr,
                              bf16=device.type == "cuda",
                              gradient_checkpointing=args.gradient_checkpointing,
                              seed=args.seed, progress=not args.no_progress)
    ex = [train.Example(answer=e.answer, prompt=e.prompt) for e in examples]
    result = train.finetune(model, TOK, ex, cfg, opts)
    merged = train.merge_adapter(result.model)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return merged.to(dtype).eval()


# ------------------------------------------------------------------------------------- summary
def read_rows(path: Path, run: Optional[str] = None) -> List[dict]:
    """The quality rows of ``path`` of run ``run`` (several: comma-separated, e.g. an untrained
    and a fine-tuned run; ``all``: every run), default the latest run in the file."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("bench") == "quality"]
    if run == "all":
        pass
    elif run is not None:
        runs = set(run.split(","))
        rows = [r for r in rows if r["run"] in runs]
    elif rows:  # the latest run in the file
        rows = [r for r in rows if r["run"] == rows[-1]["run"]]
    return rows


def _cell(rows, config, finetuned, context, field):
    for r in rows:
        if r["config"] == config and r["finetuned"] == finetuned and r["context"] == context:
            return r[field]
    return None


def summary_table(rows: List[dict]) -> str:
    """Markdown table in the paper's shape: one line per configuration, retrieval accuracy per
    context without and with fine-tuning, perplexity at the longest context."""
    contexts = sorted({r["context"] for r in rows})
    configs = list(dict.fromkeys(r["config"] for r in rows))
    tuned = sorted({r["finetuned"] for r in rows})
    head = ["config"]
    for ft in tuned:
        head += [f"acc@{c // 1024 if c % 1024 == 0 else c}{'k' if c % 1024 == 0 else ''}"
                 f"{' FT' if ft else ''}" for c in contexts]
    head += [f"ppl@{contexts[-1]}" + (" FT" if ft else "") for ft in tuned]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cfg in configs:
        cells = [cfg]
        for ft in tuned:
            for c in contexts:
                a = _cell(rows, cfg, ft, c, "accuracy")
                cells.append("-" if a is None else f"{100 * a:.0f}%")
        for ft in tuned:
            p = _cell(rows, cfg, ft, contexts[-1], "ppl")
            cells.append("-" if p is None else f"{p:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def depth_table(depth_rows: List[dict]) -> str:
    """Markdown table: accuracy by depth of the asked fact (pooled over contexts), one line per
    (configuration, finetuned)."""
    depths = sorted({r["depth"] for r in depth_rows})
    keys = list(dict.fromkeys((r["config"], r["finetuned"]) for r in depth_rows))
    head = ["config"] + [f"depth {d:g}" for d in depths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cfg, ft in keys:
        cells = [cfg + (" FT" if ft else "")]
        for d in depths:
            sel = [r for r in depth_rows if (r["config"], r["finetuned"], r["depth"]) == (cfg, ft, d)]
            n = sum(r["n"] for r in sel)
            cells.append("-" if not n else f"{100 * sum(r['accuracy'] * r['n'] for r in sel) / n:.0f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal_ratios(rows: List[dict]) -> dict:
    """The issue's goals at contexts >= 4x the window: mean accuracy over those contexts of each
    configuration, as a share of full attention's (untrained)."""
    window = rows[0]["window"]
    long_ = sorted({r["context"] for r in rows if r["context"] >= 4 * window})
    if not long_:
        return {"contexts": [], "note": f"no context >= 4 x window ({4 * window})"}

    def mean_acc(config, ft):
        vals = [_cell(rows, config, ft, c, "accuracy") for c in long_]
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else None

    full = mean_acc(FULL, False)
    out = {"contexts": long_, "full": full}
    if full is None:
        out["note"] = ("no untrained full-attention rows among these rows (a --no-untrained run?): "
                       "combine runs with --summary-only --run RUN1,RUN2 to get the ratios")
        return out
    if not full:
        out["note"] = "full attention has accuracy 0 at these contexts: ratios undefined"
        return out
    naive = mean_acc(NAIVE, False)
    if naive is not None:
        out["naive_ratio"] = naive / full
    for ft, key in ((False, "best_untrained"), (True, "best_finetuned")):
        scores = {r["config"]: mean_acc(r["config"], ft) for r in rows
                  if r["finetuned"] == ft and r["config"] != FULL}
        scores = {k: v for k, v in scores.items() if v is not None}
        if scores:
            best = max(scores, key=scores.get)
            out[key] = {"config": best, "ratio": scores[best] / full}
    return out


def print_goals(g: dict) -> None:
    if not g.get("contexts") or "note" in g:
        print(f"goals: {g.get('note', 'no rows')}")
        return
    print(f"goals at contexts {g['contexts']} (>= 4x window), ratios to full attention's accuracy "
          f"{100 * g['full']:.1f}%:")
    if "naive_ratio" in g:
        ok = "met" if g["naive_ratio"] <= 0.30 else "NOT met"
        print(f"  naive-swa / full = {g['naive_ratio']:.2f}   (goal <= 0.30: {ok})")
    if "best_untrained" in g:
        b = g["best_untrained"]
        ok = "met" if b["ratio"] >= 0.80 else "NOT met"
        print(f"  best untrained ({b['config']}) / full = {b['ratio']:.2f}   (goal >= 0.80: {ok})")
    if "best_finetuned" in g:
        b = g["best_finetuned"]
        ok = "met" if b["ratio"] >= 0.95 else "NOT met"
        print(f"  best finetuned ({b['config']}) / full = {b['ratio']:.2f}   (goal >= 0.95: {ok})")


def plot(rows: List[dict], path: Path) -> Optional[Path]:
    """Accuracy vs context (dashed: fine-tuned).  Configurations with identical curves share one
    line, labelled with all their names (many configurations of the grid coincide)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _log("plot: matplotlib is not installed, no plot")
        return None
    import textwrap

    groups: Dict[Tuple[bool, tuple], List[str]] = {}
    for cfg in dict.fromkeys(r["config"] for r in rows):
        for ft in (False, True):
            pts = tuple(sorted((r["context"], r["accuracy"]) for r in rows
                               if r["config"] == cfg and r["finetuned"] == ft))
            if pts:
                groups.setdefault((ft, pts), []).append(cfg)
    fig, ax = plt.subplots(figsize=(10, 6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, ((ft, pts), names) in enumerate(groups.items()):
        label = textwrap.fill(", ".join(names) + (" (FT)" if ft else ""), 60)
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="os^vD<>"[i % 7],
                color=colors[i % len(colors)], linestyle="--" if ft else "-", label=label,
                markersize=7 if ft else 5, alpha=0.85)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("retrieval accuracy (%)")
    r0 = rows[0]
    runs = ", ".join(dict.fromkeys(r["run"] for r in rows))
    ax.set_title(f"quality: window {r0['window']}, {r0['gpu']}, run {runs}", fontsize=9)
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def report(rows: List[dict], plot_path: Optional[Path]) -> None:
    print(summary_table(rows))
    print_goals(goal_ratios(rows))
    if plot_path is not None:
        saved = plot(rows, plot_path)
        if saved:
            print(f"plot: {saved}")


# ----------------------------------------------------------------------------------------- main
def _ints(s: str) -> List[int]:
    return [int(x) for x in s.split(",") if x]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="directory of a transformers causal LM (pretrain.py's export)")
    p.add_argument("--contexts", default="2048,4096,8192,16384")
    p.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--per-cell", type=int, default=8, help="examples per (context, depth)")
    p.add_argument("--ppl-samples", type=int, default=4, help="held-out text windows per context")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--sink", type=int, default=None, help="sink tokens of the sink presets "
                   "(default: the presets' 100)")
    p.add_argument("--full-tail", type=int, default=64, help="full_tail of the full_tail config")
    p.add_argument("--configs", default=None,
                   help="comma-separated names (default: all; see --list-configs)")
    p.add_argument("--list-configs", action="store_true")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per generation batch")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--root", action="append", help="directory of *.py files (default: site-packages)")
    p.add_argument("--max-corpus-chars", type=int, default=50_000_000)
    p.add_argument("--finetune", action="store_true", help="also evaluate after LoRA fine-tuning "
                   "with each configuration active")
    p.add_argument("--no-untrained", action="store_true", help="with --finetune: skip the rows "
                   "without fine-tuning")
    p.add_argument("--ft-steps", type=int, default=200)
    p.add_argument("--ft-examples", type=int, default=800)
    p.add_argument("--ft-contexts", default=None, help="default: the evaluated contexts <= 8192")
    p.add_argument("--ft-batch-size", type=int, default=1)
    p.add_argument("--ft-grad-accum", type=int, default=4)
    p.add_argument("--ft-lr", type=float, default=1e-4)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--name", default=None, help="results file bench/results/NAME.jsonl "
                   "(default: quality_<device>)")
    p.add_argument("--summary-only", action="store_true",
                   help="only print the table, goals and plot of --rows (latest run, or --run)")
    p.add_argument("--rows", default=None, help="rows file for --summary-only")
    p.add_argument("--run", default=None, help="with --summary-only: run id(s) of the rows, "
                   "comma-separated, or 'all' (default: the latest run in the file)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    all_configs = configurations(args.window, args.sink, args.full_tail)
    if args.list_configs:
        for name, cfg in all_configs.items():
            print(f"{name:32s} {cfg.to_dict() if cfg else 'full attention'}")
        return 0
    if args.summary_only:
        if not args.rows:
            raise SystemExit("--summary-only needs --rows FILE")
        rows = read_rows(Path(args.rows), args.run)
        if not rows:
            raise SystemExit(f"{args.rows}: no quality rows" + (f" of run {args.run}" if args.run else ""))
        report(rows, None if args.no_plot else Path(args.rows).with_suffix(".png"))
        return 0
    if not args.model:
        raise SystemExit("--model is required")
    names = args.configs.split(",") if args.configs else list(all_configs)
    unknown = [n for n in names if n not in all_configs]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; known: {', '.join(all_configs)}")

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    meta = common.run_metadata(device)
    hw = "cpu" if device.type == "cpu" else next(
        (t for t in meta["gpu"].split() if t[:1] in "ABHL" and t[1:].isdigit()), "gpu")
    name = args.name or f"quality_{hw}"
    out_path = common.default_results_path(name)
    depth_path = out_path.with_name(out_path.stem + "_depth.jsonl")
    contexts, depths = _ints(args.contexts), [float(d) for d in args.depths.split(",")]

    t0 = time.perf_counter()
    heldout = qdata.load_corpus("heldout", args.root, max_chars=args.max_corpus_chars)
    examples = qdata.retrieval_set(heldout, contexts, depths, args.per_cell, args.seed)
    ppl_texts = {c: qdata.text_windows(heldout, c - 1, args.ppl_samples, args.seed)
                 for c in contexts}
    ft_examples = []
    if args.finetune:
        train_corpus = qdata.load_corpus("train", args.root, max_chars=args.max_corpus_chars)
        ft_ctx = _ints(args.ft_contexts) if args.ft_contexts else [c for c in contexts if c <= 8192]
        ft_ctx = ft_ctx or contexts[:1]
        ft_depths = [round(0.02 + 0.96 * i / 9, 4) for i in range(10)]
        per_cell = max(1, math.ceil(args.ft_examples / (len(ft_ctx) * len(ft_depths))))
        ft_examples = qdata.retrieval_set(train_corpus, ft_ctx, ft_depths, per_cell, args.seed + 1)
    _log(f"quality: {len(examples)} retrieval examples, {len(heldout)} held-out files; "
         f"{len(names)} configurations on {meta['gpu']} ({time.perf_counter() - t0:.1f} s)")

    base = load_model(args.model, device, dtype)
    passes = ([] if args.no_untrained and args.finetune else [False]) + ([True] if args.finetune else [])
    for ft in passes:
        for name_ in names:
            cfg = all_configs[name_]
            t1 = time.perf_counter()
            model = finetune_model(args.model, cfg, ft_examples, args, device) if ft else base
            t_ft = time.perf_counter() - t1
            hits, ppl = evaluate_model(model, cfg, examples, ppl_texts, device, args.batch_size)
            rows, depth_rows = [], []
            for c in contexts:
                cells = [hits[(c, d)] for d in depths]
                acc = sum(h for h, _ in cells) / sum(n for _, n in cells)
                rows.append({"bench": "quality", "config": name_, "finetuned": ft, "context": c,
                             "window": args.window, "sink": _sink_of(cfg), "accuracy": acc,
                             "ppl": ppl[c], **{k: meta[k] for k in ("run", "gpu", "commit", "date")}})
                for d, (h, n) in zip(depths, cells):
                    depth_rows.append({**rows[-1], "bench": "quality_depth", "depth": d,
                                       "accuracy": h / n, "n": n})
            common.append_rows(out_path, rows)
            common.append_rows(depth_path, depth_rows)
            _log(f"  {name_}{' (finetuned)' if ft else ''}: accuracy "
                 + ", ".join(f"{r['context']}: {100 * r['accuracy']:.0f}%" for r in rows)
                 + f"; ppl@{contexts[-1]} {ppl[contexts[-1]]:.3f}"
                 + (f"; fine-tuning {t_ft:.1f} s" if ft else "")
                 + f"; total {time.perf_counter() - t1:.1f} s")
            if ft:
                del model
    print(f"quality: rows appended to {out_path} (run {meta['run']}), per depth to {depth_path}")
    rows = read_rows(out_path, meta["run"])
    depth_rows = [r for r in (json.loads(line) for line in depth_path.read_text().splitlines()
                              if line.strip()) if r["run"] == meta["run"]]
    print("retrieval accuracy by depth of the asked fact (all contexts):")
    print(depth_table(depth_rows))
    report(rows, None if args.no_plot else out_path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
