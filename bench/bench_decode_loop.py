"""Decode ms/token of swaa_ext.generate (one CUDA graph per step) against transformers' generate.

impls (per batch size):
  ours-graph-<cfg>   swaa_ext.generate.generate, cuda_graph=True   (cfg: full, or an SWAA preset)
  ours-eager-<cfg>   the same step without the graph
  ours-graph-compiled-<cfg>
                     (--compile) generate(compile=True): the step's tensor code through
                     torch.compile (inductor, no cudagraphs of its own), captured in our graph;
                     compile_s = the first call's compile time (later calls reuse the graphs)
  ours-graph-compiled-step-<cfg>
                     (--compile --compile-scope step|both) the whole step as one compiled graph
  hf-sdpa            stock model.generate, DynamicCache, attn_implementation="sdpa"
  hf-static-compile  model.generate(cache_implementation="static"): transformers compiles the
                     decode step with torch.compile (its default compile_config)

Models have a real architecture's shape (default Qwen3-4B: 36 layers, hidden 2560, 32/8 heads,
head dim 128, MLP 9728) with random bfloat16 weights built directly on the GPU.  ours reports its
own synchronised decode time (the warm-up step before the capture excluded: warmup_s); for
transformers decode ms/token = (t(N new) - t(1 new)) / (N - 1),
each time the median of --reps calls after one warm-up call (which compiles).

    python bench/bench_decode_loop.py --out $OUT/decode_loop.jsonl
    python bench/bench_decode_loop.py --layers 4 --prompt 1024 --new 32   # quick
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from swaa_ext import SWAAConfig  # noqa: E402
from swaa_ext import generate as gen_module  # noqa: E402
from swaa_ext.generate import generate  # noqa: E402

QWEN3_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                max_position_embeddings=262144, rope_theta=1000000.0, tie_word_embeddings=True)


TINY = dict(QWEN3_4B, vocab_size=512, hidden_size=128, intermediate_size=256,
            num_attention_heads=4, num_key_value_heads=2, head_dim=64)


def build(layers: int, device: torch.device, tiny: bool):
    from transformers import Qwen3Config, Qwen3ForCausalLM
    config = Qwen3Config(**{**(TINY if tiny else QWEN3_4B), "num_hidden_layers": layers})
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(config).to(dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sync_time(fn) -> float:
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def hf_decode_ms(model, ids, new: int, reps: int, **kw) -> dict:
    def run(n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, **kw)
    cuda = ids.device.type == "cuda"
    run(new)  # warm-up (and compilation), outside the peak memory like ours
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t1 = statistics.median(sync_time(lambda: run(1)) for _ in range(reps))
    tn = statistics.median(sync_time(lambda: run(new)) for _ in range(reps))
    return {"prefill_s": t1, "decode_ms_per_token": 1000 * (tn - t1) / (new - 1),
            "total_s": tn, "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0}


def ours(model, ids, new: int, reps: int, cfg, graph: bool, compile: bool = False) -> dict:
    kw = dict(swaa=cfg, cuda_graph=graph, compile=compile)
    first = generate(model, ids, new, **kw)  # warm-up (compiles with compile=True)
    outs = [generate(model, ids, new, **kw) for _ in range(reps)]
    best = sorted(outs, key=lambda o: o.decode_s)[(len(outs) - 1) // 2]  # the (lower) median
    row = {"prefill_s": best.prefill_s, "decode_ms_per_token": best.decode_ms_per_token,
           "total_s": best.prefill_s + best.warmup_s + best.capture_s + best.decode_s,
           "warmup_s": best.warmup_s, "capture_s": best.capture_s,
           "peak_gb": best.peak_bytes / 2**30, "kv_bytes": best.kv_bytes}
    if compile:
        row.update(compile=True, compile_s=first.compile_s)
        if not first.compiled:
            raise RuntimeError("generate(compile=True) did not compile the step")
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--prompt", type=int, default=4096)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--presets", nargs="*", default=["naive"],
                    help="SWAA presets measured besides full attention")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--cpu", action="store_true", help="smoke run: tiny model on the CPU, eager")
    ap.add_argument("--no-hf-compile", action="store_true")
    ap.add_argument("--compile", action="store_true",
                    help="also ours-graph-compiled-<cfg>: generate(compile=True)")
    ap.add_argument("--compile-scope", choices=["layer", "step", "both"], default="layer",
                    help="with --compile: one compiled layer function reused by every layer "
                    "(generate's default; impl ours-graph-compiled-<cfg>), the whole step as one "
                    "graph (ours-graph-compiled-step-<cfg>), or both")
    ap.add_argument("--only-ours", action="store_true", help="skip the transformers rows")
    ap.add_argument("--out", type=Path, default=common.default_results_path("decode_loop"))
    args = ap.parse_args()
    device = torch.device("cpu" if args.cpu else "cuda")
    meta = common.run_metadata(device)
    model = build(args.layers, device, args.cpu)
    vocab = model.config.vocab_size
    rows = []
    for batch in args.batch:
        g = torch.Generator().manual_seed(batch)
        ids = torch.randint(3, vocab, (batch, args.prompt), generator=g).to(device)
        base = dict(bench="decode_loop", model=f"qwen3-4b-shape/{args.layers}L" if not args.cpu
                    else f"tiny-qwen3/{args.layers}L", prompt=args.prompt, new_tokens=args.new,
                    batch=batch, **meta)
        cases = [("full", None)] + [(p, SWAAConfig.preset(p, window=args.window))
                                    for p in args.presets]
        first = len(rows)
        for name, cfg in cases:
            # eager only for full attention: the graph's gain is the same for every recipe
            modes = [False] if args.cpu else ([True, False] if name == "full" else [True])
            variants = [("graph" if graph else "eager", graph, False) for graph in modes]
            if args.compile:
                kind = "graph-compiled" if not args.cpu else "eager-compiled"
                if args.compile_scope in ("layer", "both"):
                    variants.append((kind, not args.cpu, "layer"))
                if args.compile_scope in ("step", "both"):
                    variants.append((kind + "-step", not args.cpu, "step"))
            for label, graph, compiled in variants:
                t0 = time.perf_counter()
                gen_module._COMPILE_SCOPE = compiled or "layer"
                try:
                    row = {**base, "impl": f"ours-{label}-{name}",
                           **ours(model, ids, args.new, args.reps, cfg, graph, bool(compiled))}
                    if compiled:
                        row["compile_scope"] = compiled
                except Exception as e:  # noqa: BLE001  (record why it did not run, go on)
                    if not compiled:
                        raise
                    row = {**base, "impl": f"ours-{label}-{name}", "compile": True,
                           "error": f"{type(e).__name__}: {str(e)[:500]}"}
                rows.append(row)
                print(row["impl"], batch, f"{row['decode_ms_per_token']:.3f} ms/token"
                      if "error" not in row else row["error"],
                      f"(compile {row['compile_s']:.1f} s)" if "compile_s" in row else "",
                      f"[{time.perf_counter() - t0:.0f} s]", flush=True)
        if args.only_ours:
            common.append_rows(args.out, rows[first:])
            continue
        row = {**base, "impl": "hf-sdpa", **hf_decode_ms(model, ids, args.new, args.reps)}
        rows.append(row)
        print(row["impl"], batch, f"{row['decode_ms_per_token']:.3f} ms/token", flush=True)
        if not args.no_hf_compile and not args.cpu:
            try:
                row = {**base, "impl": "hf-static-compile",
                       **hf_decode_ms(model, ids, args.new, args.reps,
                                      cache_implementation="static")}
            except Exception as e:  # noqa: BLE001  (record why the competitor did not run)
                row = {**base, "impl": "hf-static-compile", "error": f"{type(e).__name__}: {e}"}
            rows.append(row)
            print(row["impl"], batch, row.get("decode_ms_per_token", row.get("error")), flush=True)
        common.append_rows(args.out, rows[first:])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    common.print_table(rows, ["impl", "batch", "prefill_s", "decode_ms_per_token", "peak_gb",
                              "kv_bytes", "compile_s"])


if __name__ == "__main__":
    main()
