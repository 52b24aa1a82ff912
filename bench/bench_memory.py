"""Streaming prefill memory: a RingKVCache against a full (growing) cache.

Streams T tokens (default 8k, 128k and 1M on the GPU) in chunks of 4096
through one attention layer with sliding-window attention (window W, S sinks):

  ring  RingKVCache.attend: exactly S + W slots, whatever T
  full  a cache that keeps every position (torch.cat per chunk, as Hugging
        Face's DynamicCache does); attention of each chunk through SDPA over
        the sink keys plus the keys still in the window (same outputs)

Per (impl, T): bytes held by the cache at the end, peak GPU memory above the
starting point (torch.cuda.max_memory_allocated), seconds and tokens/s.
Rows (bench: "memory") go to bench/results/<name>.jsonl, a PNG plot next to
it, and a Markdown table is printed.

    python bench/bench_memory.py
    python bench/bench_memory.py --cpu --out /tmp/memory.jsonl   # small CPU smoke run
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from swaa_ext import RingKVCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_cache_attention(q, K, V, start, W, S):
    """SWA of the chunk queries (positions start .. start+Lc-1) over a full
    cache K, V holding positions 0 .. start+Lc-1: SDPA over the sink keys and
    the keys of the window, with the visibility mask."""
    B, Hq, Lc, D = q.shape
    Hkv = K.shape[1]
    end = start + Lc
    lo = max(0, start - W + 1)
    sink_end = min(S, lo)
    pos_k = torch.cat([torch.arange(0, sink_end), torch.arange(lo, end)]).to(q.device)
    keys = torch.cat([K[:, :, :sink_end], K[:, :, lo:end]], 2)
    values = torch.cat([V[:, :, :sink_end], V[:, :, lo:end]], 2)
    p = torch.arange(start, end, device=q.device).view(Lc, 1)
    mask = (pos_k <= p) & ((p - pos_k < W) | (pos_k < S))
    g = Hq // Hkv
    return F.scaled_dot_product_attention(q, keys.repeat_interleave(g, 1),
                                          values.repeat_interleave(g, 1), attn_mask=mask)


def stream(impl, T, chunk, B, Hq, Hkv, D, W, S, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    # One chunk of inputs reused for every step: only the cache grows.
    q = torch.randn(B, Hq, chunk, D, dtype=dtype, device=device, generator=gen)
    k = torch.randn(B, Hkv, chunk, D, dtype=dtype, device=device, generator=gen)
    v = torch.randn(B, Hkv, chunk, D, dtype=dtype, device=device, generator=gen)
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    if impl == "ring":
        cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=dtype, device=device)
        for start in range(0, T, chunk):
            n = min(chunk, T - start)
            cache.attend(q[:, :, :n], k[:, :, :n], v[:, :, :n])
        held = cache.nbytes
    else:
        K = torch.empty(B, Hkv, 0, D, dtype=dtype, device=device)
        V = torch.empty_like(K)
        for start in range(0, T, chunk):
            n = min(chunk, T - start)
            K = torch.cat([K, k[:, :, :n]], 2)
            V = torch.cat([V, v[:, :, :n]], 2)
            full_cache_attention(q[:, :, :n], K, V, start, W, S)
        held = K.nbytes + V.nbytes
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    return held, peak, seconds


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for impl, style in (("ring", "o-"), ("full", "s--")):
        sel = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["tokens"])
        if not sel:
            continue
        xs = [r["tokens"] for r in sel]
        mem = [(r["peak_bytes"] if r["peak_bytes"] is not None else r["bytes_held"]) / 2**20
               for r in sel]
        axes[0].plot(xs, mem, style, label=impl)
        axes[1].plot(xs, [r["seconds"] for r in sel], style, label=impl)
    gpu = rows[0]["gpu"] if rows else ""
    axes[0].set(xscale="log", yscale="log", xlabel="tokens streamed",
                ylabel="peak memory (MiB)" if rows and rows[0]["peak_bytes"] is not None
                else "bytes held (MiB)", title=f"memory ({gpu})")
    axes[1].set(xscale="log", yscale="log", xlabel="tokens streamed", ylabel="seconds",
                title="time")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="small sizes on the CPU (smoke test)")
    ap.add_argument("--tokens", default=None, help="comma-separated token counts")
    ap.add_argument("--chunk", type=int, default=None)
    ap.add_argument("--heads", default=None, help="Hq,Hkv,D")
    ap.add_argument("--name", default=None)
    ap.add_argument("--out", default=None, help="explicit .jsonl path (overrides --name)")
    ap.add_argument("--run", default=None)
    args = ap.parse_args()

    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        tokens, chunk, (Hq, Hkv, D), W, S, dtype = [8192, 131072, 1 << 20], 4096, (8, 2, 64), \
            4096, 4, torch.bfloat16
    else:
        tokens, chunk, (Hq, Hkv, D), W, S, dtype = [1024, 4096, 16384], 512, (2, 1, 32), 256, 4, \
            torch.float32
    if args.tokens:
        tokens = [int(x) for x in args.tokens.split(",")]
    if args.chunk:
        chunk = args.chunk
    if args.heads:
        Hq, Hkv, D = (int(x) for x in args.heads.split(","))
    B = 1
    meta = common.run_metadata(device)
    if args.run:
        meta["run"] = args.run
    gpu = meta["gpu"]
    out_path = Path(args.out) if args.out else \
        ROOT / "bench" / "results" / f"{args.name or 'memory_' + gpu.replace(' ', '_')}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Warm-up (kernel loading, allocator) outside the measurements. The ring takes a different
    # path once it is full (the window gathered in position order), so the warm-up streams until
    # it has wrapped: every path a measured row takes has run once before.
    warm_chunks = 2 + -(-(S + W) // chunk)
    for impl in ("ring", "full"):
        stream(impl, warm_chunks * chunk, chunk, B, Hq, Hkv, D, W, S, dtype, device)
    rows = []
    for T in tokens:
        for impl in ("ring", "full"):
            held, peak, sec = stream(impl, T, chunk, B, Hq, Hkv, D, W, S, dtype, device)
            row = dict(bench="memory", impl=impl, tokens=T, chunk=chunk, B=B, Hq=Hq, Hkv=Hkv, D=D,
                       W=W, S=S, dtype=str(dtype).replace("torch.", ""), bytes_held=held,
                       peak_bytes=peak, seconds=sec, tokens_per_s=T / sec, **meta)
            rows.append(row)
            common.append_rows(out_path, [row])  # row by row: a killed run keeps what it measured
            print(f"  {impl:5s} T={T:8d} held {held / 2**20:9.1f} MiB  peak "
                  f"{'-' if peak is None else f'{peak / 2**20:9.1f} MiB'}  {sec:8.3f} s")
    png = out_path.with_suffix(".png")
    try:
        plot(rows, png)
    except ImportError:
        print("matplotlib is not installed: no plot")
        png = None
    print(f"\n{gpu}, B={B} Hq={Hq} Hkv={Hkv} D={D} W={W} S={S} {dtype}, chunks of {chunk}\n")
    print("| tokens | impl | bytes held (MiB) | peak memory (MiB) | seconds | tokens/s |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:.1f}"
        print(f"| {r['tokens']} | {r['impl']} | {r['bytes_held'] / 2**20:.1f} | {peak} | "
              f"{r['seconds']:.3f} | {r['tokens_per_s']:.0f} |")
    print(f"\nrows appended to {out_path}; plot {png}")


if __name__ == "__main__":
    main()
