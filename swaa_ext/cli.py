"""The ``swaa`` command.

  swaa demo [--task retrieval|agree] [--prompt-len N] [--docs N] [--new-tokens N]
            [--preset NAME ...] [--config FILE] [--window W] [--sink S] [--model PATH|random]
            [--device cpu|cuda] [--json FILE]
      retrieval (default, packaged trained model): long documents with key/value facts and a
      question; per configuration (full attention and SWAA recipes): accuracy, an answer, ms per
      document, KV cache bytes.  agree (default with --model): one random-token prompt; prefill
      time, decode ms/token, KV cache bytes, how many generated tokens agree with full attention.
  swaa info
      Build (version, CUDA kernels in or not), devices, the swaa ops and where they have kernels.
  swaa bench NAME [args ...]
      Runs bench/bench_NAME.py of the source checkout with the given arguments.
  swaa finetune --data FILE --out DIR [--model PATH] [--preset NAME] [--window W] [--answer-full]
                [--pack [--pack-len N]] ...
      LoRA fine-tuning with the SWAA plan active (swaa_ext.train); under torchrun with DDP.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from .config import SWAAConfig

__all__ = ["main"]

DEFAULT_PRESETS = ("naive", "sink", "sink+fa_decode", "sink+half_full")  # --task agree
RETRIEVAL_PRESETS = ("naive", "sink", "half_full", "quarter_full", "fa_decode", "sink+fa_decode",
                     "sink+fa_decode+half_full")


class CliError(Exception):
    """A user error: printed as ``swaa: error: ...`` with exit status 2."""


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- demo
def _demo_configs(args) -> List[Tuple[str, SWAAConfig]]:
    configs = []
    try:
        if args.config:
            cfg = SWAAConfig.load(args.config)
            changes = {k: v for k, v in (("window", args.window), ("sink", args.sink)) if v is not None}
            if changes:
                cfg = SWAAConfig.from_dict({**cfg.to_dict(), **changes})
            configs.append((Path(args.config).stem, cfg))
        names = args.preset or []
        window = args.window if args.window is not None else 256
        for name in names:
            has_sink = "sink" in name.split("+")
            sink = (args.sink if args.sink is not None else 16) if has_sink else None
            configs.append((name, SWAAConfig.preset(name, window=window, sink=sink)))
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from None
    return configs


def _cache_kwarg(model) -> str:
    """transformers renamed past_key_values -> cache in 5.2x; use what this version takes."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_bytes(cache) -> int:
    if hasattr(cache, "nbytes"):
        return int(cache.nbytes)
    total = 0
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None:
            total += layer.keys.nbytes + layer.values.nbytes
    return total


@torch.no_grad()
def _run_greedy(model, ids: torch.Tensor, cache, new_tokens: int, label: str,
                quiet: bool = False, stop_ids: Sequence[int] = ()) -> dict:
    """Greedy generation for a batch of equally long prompts ``ids`` (B, T): prefill, then one
    token per call.  ``tokens`` is a list per row; a row stops at a token of ``stop_ids`` (not
    kept), the loop when every row has stopped or after ``new_tokens`` tokens."""
    device = ids.device
    kw = _cache_kwarg(model)
    if not quiet:
        _progress(f"  {label}: prefill {ids.shape[1]} tokens" +
                  (f" x {ids.shape[0]} documents" if ids.shape[0] > 1 else "") + " ...")
    _sync(device)
    t0 = time.perf_counter()
    logits = model(ids, use_cache=True, **{kw: cache}).logits[:, -1]
    _sync(device)
    prefill_s = time.perf_counter() - t0
    tokens: List[List[int]] = [[] for _ in range(ids.shape[0])]
    done = [False] * ids.shape[0]
    steps = 0
    t0 = time.perf_counter()
    while True:
        nxt = logits.argmax(-1).tolist()  # the greedy loop needs the tokens on the host anyway
        for b, t in enumerate(nxt):
            if t in stop_ids:
                done[b] = True
            if not done[b]:
                tokens[b].append(t)
        if all(done) or max(len(t) for t in tokens) >= new_tokens:
            break
        logits = model(torch.tensor(nxt, device=device)[:, None], use_cache=True,
                       **{kw: cache}).logits[:, -1]
        steps += 1
        if steps % 64 == 0 and not quiet:
            _progress(f"  {label}: decoded {steps}/{new_tokens - 1} tokens")
    _sync(device)
    decode_s = time.perf_counter() - t0
    return {"prefill_s": prefill_s, "decode_s": decode_s,
            "decode_ms_per_token": 1e3 * decode_s / max(steps, 1),
            "kv_cache_bytes": _cache_bytes(cache), "tokens": tokens}


def _agreement(tokens: Sequence[int], ref: Sequence[int]) -> Tuple[float, int]:
    same = sum(a == b for a, b in zip(tokens, ref))
    prefix = next((i for i, (a, b) in enumerate(zip(tokens, ref)) if a != b), len(ref))
    return same / max(len(ref), 1), prefix


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(rows: List[dict]) -> str:
    head = ["configuration", "prefill s", "decode ms/tok", "KV cache", "agree", "same prefix"]
    body = [[r["name"], f"{r['prefill_s']:.3f}", f"{r['decode_ms_per_token']:.2f}",
             _fmt_bytes(r["kv_cache_bytes"]), f"{100 * r['agreement']:.0f}%",
             str(r["same_prefix"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def _load_model(path: str, device: torch.device, layers: Optional[int]):
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        config = AutoConfig.from_pretrained(path)
        if layers:
            config.num_hidden_layers = layers
        model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=dtype)
    except (OSError, ValueError) as e:
        raise CliError(f"--model {path}: cannot load it: {e}") from None
    model.generation_config.eos_token_id = None
    return model.to(device).eval()


def _demo_model(args, device: torch.device):
    """(model, name): the packaged trained model (default), the random-weight one (``--model
    random``) or a transformers model (``--model PATH``)."""
    from .models import default_model, demo_model

    if args.model == "random":
        overrides = {"num_hidden_layers": args.layers} if args.layers else {}
        return default_model(device, **overrides), "random-weight model"
    if args.model:
        return _load_model(args.model, device, args.layers), args.model
    try:
        model = demo_model(device)
    except (OSError, ValueError) as e:
        raise CliError(f"cannot load the packaged demo model: {e}") from None
    if args.layers:  # keep the first layers (quietly: from_pretrained would list the others)
        if args.layers > model.config.num_hidden_layers:
            raise CliError(f"--layers {args.layers}: the demo model has "
                           f"{model.config.num_hidden_layers} layers")
        model.model.layers = model.model.layers[: args.layers]
        model.config.num_hidden_layers = args.layers
    return model, "demo model (trained)"


def _retrieval_docs(args) -> list:
    """``--docs`` retrieval documents of ``--prompt-len`` tokens, the asked fact of document i at
    depth (i + 0.5) / docs, filler from the standard library's Python files."""
    import random

    from .demo_data import make_retrieval, stdlib_corpus

    try:
        corpus = stdlib_corpus()
        return [make_retrieval(random.Random(f"swaa-demo:{args.seed}:{i}"), corpus,
                               args.prompt_len, round((i + 0.5) / args.docs, 4))
                for i in range(args.docs)]
    except ValueError as e:
        raise CliError(f"--prompt-len {args.prompt_len}: {e}") from None


def _clip(text: str, width: int = 40) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 3] + "..."


def _retrieval_table(rows: List[dict]) -> str:
    head = ["configuration", "accuracy", "answer to document 1", "ms/doc", "KV cache"]
    body = [[r["name"], f"{r['correct']}/{len(r['answers'])}", repr(_clip(r["answers"][0])),
             f"{r['ms_per_doc']:.0f}", _fmt_bytes(r["kv_cache_bytes"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.rjust(w) if i in (1, 3, 4) else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])


def _demo_retrieval(args, model, model_name, configs, device, dtype) -> dict:
    from transformers import DynamicCache

    from . import hf
    from .demo_data import extract_value
    from .train import ByteTokenizer

    tok = ByteTokenizer()
    if model.config.vocab_size < tok.vocab_size:
        raise CliError(f"--task retrieval needs a model with the byte vocabulary of "
                       f"swaa_ext.train.ByteTokenizer ({tok.vocab_size} tokens); --model has "
                       f"{model.config.vocab_size} (use --task agree)")
    docs = _retrieval_docs(args)
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(d.prompt) for d in docs], device=device)
    new_tokens = args.new_tokens or len(docs[0].answer) + 2
    stop_ids = (tok.eos_token_id, *tok.encode("\n"))  # the answer is one line
    _progress(f"swaa demo: {model_name} ({model.config.num_hidden_layers} layers, {dtype}, "
              f"{device}), {len(docs)} retrieval documents of {args.prompt_len} tokens, "
              f"{len(configs) + 1} configurations")
    rows = []
    for i, (name, cfg) in enumerate([("full attention", None)] + configs, 1):
        _progress(f"[{i}/{len(configs) + 1}] {name}" + (f": {cfg.to_dict()}" if cfg else ""))
        if cfg is None:
            res = _run_greedy(model, ids, DynamicCache(), new_tokens, name,
                              stop_ids=stop_ids)
        else:
            hf.apply_swaa(model, cfg)
            try:
                res = _run_greedy(model, ids, hf.SWAACache(model), new_tokens, name,
                                  stop_ids=stop_ids)
            finally:
                hf.remove_swaa(model)
        answers = [tok.decode(t) for t in res["tokens"]]
        hits = [extract_value(a) == d.value for a, d in zip(answers, docs)]
        rows.append({"name": name, "config": cfg.to_dict() if cfg else None, **res,
                     "answers": answers, "hits": hits, "correct": sum(hits),
                     "accuracy": sum(hits) / len(hits),
                     "ms_per_doc": 1e3 * (res["prefill_s"] + res["decode_s"]) / len(docs)})
    window = configs[0][1].window if configs else None
    print(f"swaa demo  model={model_name}  device={device}  dtype={str(dtype).replace('torch.', '')}  "
          f"layers={model.config.num_hidden_layers}  context={args.prompt_len}"
          + (f"  window={window}" if window is not None else ""))
    print(f"task: {len(docs)} documents of {args.prompt_len} tokens (Python standard-library text "
          f"with {docs[0].prompt.count(chr(10) + 'the value of key')} key/value facts each); the "
          f"question at the end asks for the fact at depth "
          + ", ".join(f"{d.depth:g}" for d in docs) + ".")
    print(f"document 1 asks: {docs[0].prompt[docs[0].prompt.rindex('question:'):].strip()!r}  "
          f"expected: {docs[0].answer!r}")
    print(_retrieval_table(rows))
    print("accuracy: documents whose answer gives the asked value; ms/doc: prefill + generation "
          "time per document (one batch).")
    if window is not None and 4 * window <= args.prompt_len and not args.model:
        print(f"With a window of {window} the question cannot see most facts: naive SWA (and "
              "sinks or interleaved full layers alone) answer with a wrong value; with FA decode "
              "the generated answer tokens attend to the whole prompt and copy the value.")
    return {"task": "retrieval", "rows": rows,
            "documents": [{"depth": d.depth, "key": d.key, "value": d.value} for d in docs]}


def _demo_agree(args, model, model_name, configs, device, dtype) -> dict:
    from transformers import DynamicCache

    from . import hf

    n_layers = model.config.num_hidden_layers
    new_tokens = args.new_tokens or 32
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, model.config.vocab_size, (1, args.prompt_len), generator=g).to(device)
    _progress(f"swaa demo: {model_name} ({n_layers} layers, {dtype}, {device}), prompt "
              f"{args.prompt_len} tokens, {new_tokens} generated tokens, "
              f"{len(configs) + 1} configurations")
    rows = []
    _progress(f"[1/{len(configs) + 1}] full attention")
    full = _run_greedy(model, ids, DynamicCache(), new_tokens, "full attention")
    full["tokens"] = full["tokens"][0]
    rows.append({"name": "full attention", "config": None, **full})
    for i, (name, cfg) in enumerate(configs, 2):
        _progress(f"[{i}/{len(configs) + 1}] {name}: {cfg.to_dict()}")
        hf.apply_swaa(model, cfg)
        try:
            res = _run_greedy(model, ids, hf.SWAACache(model), new_tokens, name)
        finally:
            hf.remove_swaa(model)
        res["tokens"] = res["tokens"][0]
        rows.append({"name": name, "config": cfg.to_dict(), **res})
    for r in rows:
        r["agreement"], r["same_prefix"] = _agreement(r["tokens"], full["tokens"])

    print(f"swaa demo  model={model_name}  device={device}  dtype={str(dtype).replace('torch.', '')}  "
          f"prompt={args.prompt_len}  generated={new_tokens}  layers={n_layers}")
    print(_table(rows))
    print("agree: generated tokens equal to full attention's at the same step; same prefix: "
          "tokens before the first difference.")
    if args.model == "random":
        print("The random-weight model: agreement only shows how far each recipe moves its greedy "
              "choices, not language quality.")
    return {"task": "agree", "rows": rows}


def cmd_demo(args) -> int:
    if args.prompt_len < 1:
        raise CliError(f"--prompt-len must be >= 1, got {args.prompt_len}")
    if args.new_tokens is not None and args.new_tokens < 1:
        raise CliError(f"--new-tokens must be >= 1, got {args.new_tokens}")
    if args.docs < 1:
        raise CliError("--docs must be >= 1")
    task = args.task or ("agree" if args.model else "retrieval")
    if args.preset is None and not args.config:
        args.preset = list(RETRIEVAL_PRESETS if task == "retrieval" else DEFAULT_PRESETS)
    configs = _demo_configs(args)
    try:
        from transformers import DynamicCache

        from . import hf
    except ImportError as e:
        raise CliError(f"swaa demo needs transformers (pip install 'swaa_ext[hf]'): {e}") from None
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t_start = time.perf_counter()
    model, model_name = _demo_model(args, device)
    n_layers = model.config.num_hidden_layers
    for name, cfg in configs:  # plan errors (layer indices) before any long work
        try:
            cfg.plan(n_layers)
        except ValueError as e:
            raise CliError(f"{name}: {e}") from None
    dtype = next(model.parameters()).dtype

    # warm-up (allocator, thread pools, kernel loading) so the first timed row pays nothing extra
    warm = torch.randint(3, model.config.vocab_size, (1, min(64, args.prompt_len)),
                         generator=torch.Generator().manual_seed(0)).to(device)
    _run_greedy(model, warm, DynamicCache(), 2, "warm-up", quiet=True)
    if configs:
        hf.apply_swaa(model, configs[0][1])
        try:
            _run_greedy(model, warm, hf.SWAACache(model), 2, "warm-up", quiet=True)
        finally:
            hf.remove_swaa(model)

    run = _demo_retrieval if task == "retrieval" else _demo_agree
    result = run(args, model, model_name, configs, device, dtype)
    total_s = time.perf_counter() - t_start
    _progress(f"swaa demo: done in {total_s:.1f} s")
    if args.json:
        meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "model": model_name, "task": task, "dtype": str(dtype).replace("torch.", ""),
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                "total_s": total_s, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, **result}, f, indent=1)
    return 0


# ----------------------------------------------------------------------------------------- info
def cmd_info(args) -> int:
    import swaa_ext

    info = swaa_ext.build_info()
    print(f"swaa_ext {info['version']} ({Path(swaa_ext.__file__).parent})")
    print(f"  CUDA kernels built: {info['cuda']}"
          + (f" (archs {info['cuda_archs']})" if info.get("cuda") else
             f" ({info.get('cuda_reason', 'not built')})"))
    try:
        import transformers
        tf = transformers.__version__
    except ImportError:
        tf = "not installed (swaa demo and swaa_ext.hf need it)"
    print(f"  torch {torch.__version__}, transformers {tf}, python {platform.python_version()}")
    print("devices:")
    print(f"  cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        print("  cuda: none")
    print("kernels (op: dispatch keys with a kernel):")
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("swaa::"))
    for op in ops:
        keys = [k for k in ("CPU", "CUDA")
                if torch._C._dispatch_has_kernel_for_dispatch_key(op, k)]
        print(f"  {op}: {', '.join(keys) or 'none'}")
    return 0


# ---------------------------------------------------------------------------------------- bench
def _bench_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "bench"


def cmd_bench(args) -> int:
    bench_dir = _bench_dir()
    available = sorted(p.stem[len("bench_"):] for p in bench_dir.glob("bench_*.py"))
    if not bench_dir.is_dir() or not available:
        raise CliError(f"no benchmarks found: {bench_dir} does not exist or holds no bench_*.py "
                       "(swaa bench runs from a source checkout, not an installed wheel)")
    script = bench_dir / f"bench_{args.name}.py"
    if not script.is_file():
        raise CliError(f"no benchmark {args.name!r} (looked for {script}); available: "
                       f"{', '.join(available)}")
    env = dict(os.environ)
    root = str(bench_dir.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.call([sys.executable, str(script), *args.args], env=env)


# ------------------------------------------------------------------------------------- finetune
def _finetune_config(args) -> Optional[SWAAConfig]:
    if args.full_attention:
        if args.preset or args.config or args.window is not None or args.sink is not None:
            raise CliError("--full-attention excludes --preset, --config, --window and --sink")
        return None
    try:
        if args.config:
            if args.preset:
                raise CliError("give --preset or --config, not both")
            cfg = SWAAConfig.load(args.config)
            changes = {k: v for k, v in (("window", args.window), ("sink", args.sink)) if v is not None}
            return SWAAConfig.from_dict({**cfg.to_dict(), **changes}) if changes else cfg
        name = args.preset or "sink"
        has_sink = "sink" in name.split("+")
        return SWAAConfig.preset(name, window=args.window if args.window is not None else 2048,
                                 sink=args.sink if has_sink or args.sink is not None else None)
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from None


def _finetune_model(args, device: torch.device):
    if not args.model:
        from .models import default_model

        return default_model(device, torch.float32)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise CliError(f"--model {args.model}: cannot load it: {e}") from None
    return model.to(device)


def _finetune_tokenizer(args):
    from . import train

    spec = args.tokenizer
    if spec is None and args.model and (Path(args.model) / "tokenizer_config.json").is_file():
        spec = args.model
    try:
        return train.load_tokenizer(spec)
    except (OSError, ValueError) as e:
        raise CliError(f"--tokenizer {spec}: cannot load it: {e}") from None


def cmd_finetune(args) -> int:
    try:
        from . import train
    except ImportError as e:
        raise CliError(f"swaa finetune needs transformers and peft (pip install "
                       f"'swaa_ext[train]'): {e}") from None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda: no CUDA device is available")
    use_cuda = args.device == "cuda" or (args.device is None and torch.cuda.is_available())
    device = torch.device("cpu")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if args.merge_adapter:
        model = _finetune_model(args, device)
        merged = train.merge_adapter(train.load_adapter(model, args.merge_adapter), args.out)
        _progress(f"swaa finetune: merged {args.merge_adapter} into "
                  f"{args.model or 'the embedded model'}: {args.out}")
        del merged
        return 0
    if not args.data:
        raise CliError("--data is required (JSONL of prompt/answer pairs or chat messages)")
    cfg = _finetune_config(args)
    try:
        examples = train.load_examples(args.data)
    except (ValueError, OSError) as e:
        raise CliError(str(e)) from None
    lora = train.LoraOptions(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                             rslora=not args.no_rslora,
                             target_modules=tuple(args.target_modules.split(",")))
    opts = train.TrainOptions(
        out_dir=args.out, answer_full=args.answer_full, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
        warmup_ratio=args.warmup_ratio, max_len=args.max_len, pack=args.pack,
        pack_len=args.pack_len, gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16, seed=args.seed,
        merge=args.merge, progress=not args.no_progress, rank_summary=args.rank_summary, lora=lora)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        model = _finetune_model(args, device)
        tokenizer = _finetune_tokenizer(args)
        try:
            result = train.finetune(model, tokenizer, examples, cfg, opts)
        except ValueError as e:
            raise CliError(str(e)) from None
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        if rank == 0:
            print(f"swaa finetune: {result.steps} steps, {world} process(es), final loss "
                  f"{result.losses[-1]:.4f}; adapter: {result.adapter_dir}"
                  + (f"; merged model: {result.merged_dir}" if result.merged_dir else ""))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swaa", description="Sliding-window attention adaptation: "
                                "kernels, ring KV cache and Hugging Face integration.")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="compare full attention with SWAA recipes on the packaged "
                          "trained model", description="Long-context retrieval with the packaged "
                          "trained model (or --task agree: one random prompt, agreement with full "
                          "attention) under full attention and SWAA recipes; print a table.")
    demo.add_argument("--task", choices=["retrieval", "agree"], help="retrieval: documents with "
                      "facts and a question, accuracy of the answers (default without --model); "
                      "agree: one random-token prompt, generated tokens equal to full attention's "
                      "(default with --model)")
    demo.add_argument("--preset", action="append", metavar="NAME",
                      help="SWAA preset to run (repeatable; default retrieval: "
                      f"{', '.join(RETRIEVAL_PRESETS)}; agree: {', '.join(DEFAULT_PRESETS)}). "
                      "Presets: " + ", ".join(SWAAConfig.presets()))
    demo.add_argument("--config", metavar="FILE", help="SWAA config JSON (ours or the SWAA "
                      "toolkit's keys) to run")
    demo.add_argument("--window", type=int, help="sliding window (default 256; overrides --config)")
    demo.add_argument("--sink", type=int, help="sink tokens for presets with 'sink' (default 16; "
                      "overrides --config)")
    demo.add_argument("--prompt-len", type=int, default=2048, help="prompt tokens (retrieval: "
                      "tokens per document; default 2048)")
    demo.add_argument("--docs", type=int, default=5, help="retrieval documents, the asked fact of "
                      "document i at depth (i + 0.5) / docs (default 5)")
    demo.add_argument("--new-tokens", type=int, help="generated tokens at most (default: "
                      "retrieval: the answer's length + 2; agree: 32)")
    demo.add_argument("--layers", type=int, help="use only this many layers of the model")
    demo.add_argument("--model", metavar="PATH", help="a transformers causal LM (local directory "
                      "or hub name) instead of the packaged trained model, or 'random': the "
                      "random-weight model of swaa_ext.models.default_model")
    demo.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if present")
    demo.add_argument("--seed", type=int, default=0, help="seed of the documents / random prompt")
    demo.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    demo.set_defaults(func=cmd_demo)

    info = sub.add_parser("info", help="build, devices and available kernels")
    info.set_defaults(func=cmd_info)

    bench = sub.add_parser("bench", help="run bench/bench_NAME.py of the source checkout")
    bench.add_argument("name", help="benchmark name, e.g. attention")
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.set_defaults(func=cmd_bench)

    ft = sub.add_parser("finetune", help="LoRA fine-tuning with an SWAA plan active (runs under "
                        "torchrun too)", description="LoRA fine-tuning (PEFT, q/k/v) of a causal LM "
                        "with the SWAA plan active; the loss covers answer tokens only. Under "
                        "torchrun it trains with DDP. With --merge-adapter DIR it only merges a "
                        "saved adapter into --model and writes the result to --out.")
    ft.add_argument("--data", metavar="FILE", help="JSONL: {\"prompt\", \"answer\"} or "
                    "{\"messages\": [{\"role\", \"content\"}, ...]} (last message = answer)")
    ft.add_argument("--out", metavar="DIR", required=True, help="adapter directory (or merged "
                    "model with --merge-adapter)")
    ft.add_argument("--model", metavar="PATH", help="transformers causal LM directory (default: "
                    "the embedded model)")
    ft.add_argument("--tokenizer", metavar="PATH", help="'bytes' (built-in byte tokenizer) or a "
                    "transformers tokenizer; default: the model directory's, else bytes")
    ft.add_argument("--preset", metavar="NAME", help="SWAA preset trained with (default sink). "
                    "Presets: " + ", ".join(SWAAConfig.presets()))
    ft.add_argument("--config", metavar="FILE", help="SWAA config JSON (ours or the SWAA toolkit's)")
    ft.add_argument("--full-attention", action="store_true", help="no SWAA plan (full-attention "
                    "baseline fine-tuning)")
    ft.add_argument("--window", type=int, help="sliding window (default 2048; overrides --config)")
    ft.add_argument("--sink", type=int, help="sink tokens for presets with 'sink' (default 100)")
    ft.add_argument("--answer-full", action="store_true", help="answer tokens attend to the whole "
                    "context (FA decode on every SWA layer), prompt tokens use SWA")
    ft.add_argument("--epochs", type=int, default=1)
    ft.add_argument("--max-steps", type=int, help="train this many optimizer steps (overrides --epochs)")
    ft.add_argument("--batch-size", type=int, default=1, help="examples per process and "
                    "micro-batch")
    ft.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step "
                    "(gradient accumulation)")
    ft.add_argument("--lr", type=float, default=1e-4)
    ft.add_argument("--warmup-ratio", type=float, default=0.05, help="linear warm-up share, then "
                    "linear decay (default 0.05)")
    ft.add_argument("--max-len", type=int, help="truncate examples to this many tokens")
    ft.add_argument("--pack", action="store_true", help="pack several examples into each row "
                    "(no padding between them, positions restarting per example, examples never "
                    "see each other); --batch-size then counts packed rows")
    ft.add_argument("--pack-len", type=int, help="tokens per packed row (default: --max-len, else "
                    "the longest example); a longer example is an error (use --max-len to "
                    "truncate)")
    ft.add_argument("--lora-r", type=int, default=16)
    ft.add_argument("--lora-alpha", type=int, default=32)
    ft.add_argument("--lora-dropout", type=float, default=0.1)
    ft.add_argument("--no-rslora", action="store_true", help="plain LoRA scaling alpha/r instead "
                    "of rsLoRA's alpha/sqrt(r)")
    ft.add_argument("--target-modules", default="q_proj,k_proj,v_proj",
                    help="comma-separated module names that get LoRA (default q_proj,k_proj,v_proj)")
    ft.add_argument("--gradient-checkpointing", action="store_true")
    ft.add_argument("--bf16", action="store_true", help="base weights in bfloat16, adapters in "
                    "float32")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--merge", action="store_true", help="also write the merged model to OUT/merged")
    ft.add_argument("--merge-adapter", metavar="DIR", help="merge this saved adapter into --model "
                    "and write the merged model to --out (no training)")
    ft.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if present")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.add_argument("--rank-summary", action="store_true", help="each rank writes OUT/rankR.json "
                    "(losses, sums of the trained weights)")
    ft.set_defaults(func=cmd_finetune)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CliError as e:
        parser.exit(2, f"swaa: error: {e}\n")


if __name__ == "__main__":
    sys.exit(main())
