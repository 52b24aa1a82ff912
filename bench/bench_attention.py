"""How fast is swaa's sliding-window attention against the alternatives?

Times the forward (and forward+backward) of `swaa_ext.swa_attention` against,
on the same inputs and in the same process:
  sdpa_mask  torch SDPA with an explicit boolean window/sink mask (same result)
  flex       FlexAttention compiled with the same mask (block mask of causal and
             q - k < W or k < S)
  sdpa       torch SDPA full causal (FlashAttention-class kernel doing more work)
  sdpa_flash, sdpa_cudnn, sdpa_efficient
             the same, forced onto one SDPA backend (FlashAttention-2, cuDNN's fused
             attention, memory-efficient); with W <= 0 these and swaa compute the
             same function, which measures how close our kernels come to each
             backend's dense causal speed (the ceiling run in docs/cuda_kernels.md)
Each implementation's output on the last query rows is checked against the
float reference before it is timed.  Effective TFLOP/s count visible
(query, key) pairs only: 4*D flops per pair forward, 2.5x that backward.

Rows go to bench/results/<--name>.jsonl; `--plot` writes TFLOP/s vs N.

  python bench/bench_attention.py                       # CPU default shapes
  python bench/bench_attention.py --preset gpu --plot bench/results/attention.png
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import swaa_ext  # noqa: E402
from swaa_ext.reference import reference_attention, visibility_mask  # noqa: E402

PRESETS = {
    # the foundation issue's CPU goal
    "cpu": dict(B=[1], Hq=[8], Hkv=[8], D=[64], N=[4096, 8192, 16384], W=[512], S=[4],
                dtype="float32", impls=["swaa", "sdpa_mask"], passes=["fwd"]),
    # the CUDA issue's shapes
    "gpu": dict(B=[1], Hq=[32], Hkv=[8], D=[128, 64], N=[8192, 32768, 131072], W=[1024, 4096],
                S=[0, 4, 128], dtype="bfloat16", impls=["swaa", "flex", "sdpa"],
                passes=["fwd", "fwd+bwd"]),
    # seconds, for smoke tests
    "tiny": dict(B=[1], Hq=[4], Hkv=[2], D=[64], N=[512, 1024], W=[128], S=[4], dtype="float32",
                 impls=["swaa", "sdpa_mask"], passes=["fwd", "fwd+bwd"]),
}

# impls that compute full causal attention whatever W is; the name after
# "sdpa_" picks torch's SDPA backend (None: torch's own choice)
FULL_CAUSAL = {"sdpa": None, "sdpa_flash": "FLASH_ATTENTION", "sdpa_cudnn": "CUDNN_ATTENTION",
               "sdpa_efficient": "EFFICIENT_ATTENTION"}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHECK_ROWS = 256  # query rows compared with the reference


def visible_pairs(n: int, window: int | None, sink: int) -> int:
    """Number of visible (query, key) pairs for Lq = Lk = n."""
    if window is None or window >= n:
        return n * (n + 1) // 2
    # rows p < window see p + 1 keys; later rows see window keys plus the sink
    # keys that fell out of the window (min(sink, p + 1 - window)).
    pairs = window * (window + 1) // 2 + (n - window) * window
    s = min(sink, n - window)
    if s > 0:
        # sum over p in [window, n) of min(sink, p + 1 - window)
        pairs += s * (s + 1) // 2 + (n - window - s) * s
    return pairs


def make_impl(name: str, window: int | None, sink: int, n: int, device: torch.device):
    """Returns f(q, k, v) -> out for one implementation."""
    if name == "swaa":
        return lambda q, k, v: swaa_ext.swa_attention(q, k, v, window=window, sink=sink)
    if name in FULL_CAUSAL:
        return _full_causal_sdpa(FULL_CAUSAL[name])
    if name == "sdpa_mask":
        mask = visibility_mask(n, n, window=window, sink=sink, device=device)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                              enable_gqa=True)
    if name == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        w = n + 1 if window is None else window

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & ((q_idx - kv_idx < w) | (kv_idx < sink))

        block_mask = create_block_mask(mask_mod, None, None, n, n, device=str(device))
        compiled = _compiled_flex(flex_attention)
        return lambda q, k, v: compiled(q, k, v, block_mask=block_mask, enable_gqa=True)
    raise ValueError(f"unknown impl {name!r}")


def _full_causal_sdpa(backend: str | None):
    """SDPA full causal, on one backend if given.  GQA goes through
    `enable_gqa`; a backend that refuses it gets K/V with the heads repeated,
    expanded once per input tensor outside the timed call (same flops; the
    only difference is K/V bytes read, which do not bound these shapes)."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    expanded = {}

    def call(q, k, v, gqa):
        with sdpa_kernel(getattr(SDPBackend, backend)) if backend else contextlib.nullcontext():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)

    def fn(q, k, v):
        if k.shape[1] == q.shape[1] or not expanded.get("refuses_gqa"):
            try:
                return call(q, k, v, True)
            except RuntimeError:
                if backend is None or k.shape[1] == q.shape[1]:
                    raise
                expanded["refuses_gqa"] = True
        g = q.shape[1] // k.shape[1]
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            # the repeat must be in the autograd graph (its backward sums the heads)
            return call(q, k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1), False)
        key = (k.data_ptr(), v.data_ptr())
        if key not in expanded:
            expanded[key] = (k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1))
        return call(q, *expanded[key], False)

    return fn


_FLEX = None


def _compiled_flex(flex_attention):
    global _FLEX
    if _FLEX is None:
        torch._dynamo.config.cache_size_limit = 256
        _FLEX = torch.compile(flex_attention, dynamic=False)
    return _FLEX


def check(out: torch.Tensor, q, k, v, window, sink) -> float:
    """Relative error of the last CHECK_ROWS rows against the float reference."""
    r = min(CHECK_ROWS, q.shape[2])
    compute = torch.float64 if q.device.type == "cpu" else torch.float32
    ref = reference_attention(q[:, :, -r:], k, v, window=window, sink=sink,
                              compute_dtype=compute).float()
    got = out[:, :, -r:].float()
    return ((got - ref).norm() / ref.norm()).item()


def bench_shape(impls, passes, B, Hq, Hkv, D, N, W, S, dtype, device, meta, args):
    rows = []
    n_inputs = 1 if device.type == "cpu" else 3
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs = []
    for _ in range(n_inputs):
        q = torch.randn(B, Hq, N, D, generator=gen).to(device=device, dtype=dtype)
        k = torch.randn(B, Hkv, N, D, generator=gen).to(device=device, dtype=dtype)
        v = torch.randn(B, Hkv, N, D, generator=gen).to(device=device, dtype=dtype)
        inputs.append((q, k, v))
    window = None if W <= 0 else W
    pairs = visible_pairs(N, window, S) * B * Hq
    for impl in impls:
        if impl == "sdpa_mask" and N > args.max_mask_n:
            continue
        try:
            fn = make_impl(impl, window, S, N, device)
            q, k, v = inputs[0]
            # full causal computes another function unless there is no window
            windowed = window is not None and window < N
            err = None if impl in FULL_CAUSAL and windowed else check(fn(q, k, v), q, k, v,
                                                                      window, S)
        except Exception as e:  # a competitor that cannot run this shape is reported, not fatal
            print(f"  {impl} failed on N={N} D={D}: {type(e).__name__}: {str(e)[:200]}")
            continue
        for pas in passes:
            if pas == "fwd":
                def run(i, fn=fn):
                    with torch.no_grad():
                        fn(*inputs[i])
                flops = 4.0 * D * pairs
            else:
                grads = [tuple(t.detach().requires_grad_(True) for t in qkv) for qkv in inputs]
                douts = [torch.randn_like(qkv[0]) for qkv in inputs]

                def run(i, fn=fn, grads=grads, douts=douts):
                    out = fn(*grads[i])
                    torch.autograd.grad(out, grads[i], douts[i])
                flops = 3.5 * 4.0 * D * pairs
            try:
                ms = common.time_ms(run, device, warmup=args.warmup, reps=args.reps,
                                    n_inputs=n_inputs)
            except Exception as e:
                print(f"  {impl} {pas} failed on N={N} D={D}: {type(e).__name__}: {str(e)[:200]}")
                continue
            rows.append(dict(bench="attention", impl=impl, **{"pass": pas}, B=B, Hq=Hq, Hkv=Hkv,
                             N=N, W=window, S=S, D=D, dtype=str(dtype).replace("torch.", ""),
                             ms=ms, tflops=flops / ms / 1e9, rel_err=err, **meta))
            print(f"  {impl:9s} {pas:7s} N={N:6d} W={W} S={S} D={D}: {ms:9.3f} ms "
                  f"{flops / ms / 1e9:7.2f} TFLOP/s" + (f"  err {err:.1e}" if err is not None else ""),
                  flush=True)
    return rows


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["pass"], r["D"], r["W"], r["S"]) for r in rows}, key=str)
    panels = sorted({(r["pass"], r["D"]) for r in rows}, key=str)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (pas, d) in zip(axes[0], panels):
        for impl in sorted({r["impl"] for r in rows}):
            for (p2, d2, w, s) in keys:
                if (p2, d2) != (pas, d):
                    continue
                pts = sorted((r["N"], r["tflops"]) for r in rows
                             if (r["impl"], r["pass"], r["D"], r["W"], r["S"]) == (impl, pas, d, w, s))
                if pts and (impl != "sdpa" or s == min(x[3] for x in keys)):
                    # sdpa computes full causal attention; its TFLOP/s count the
                    # pairs the SWA mask keeps, i.e. the useful work at that W
                    label = (f"sdpa causal (useful at W={w})" if impl == "sdpa"
                             else f"{impl} W={w} S={s}")
                    ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length N")
        ax.set_ylabel("effective TFLOP/s (visible pairs)")
        ax.set_title(f"{pas}, D={d}, {rows[0]['gpu']}")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="shape set (default: gpu on CUDA, cpu otherwise)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    for dim in ("B", "Hq", "Hkv", "D", "N", "W", "S"):
        ap.add_argument(f"--{dim}", type=int, nargs="+", help=f"override the preset's {dim}"
                        + (" (W<=0: no window, full causal)" if dim == "W" else ""))
    ap.add_argument("--dtype", choices=sorted(DTYPES))
    ap.add_argument("--impls", nargs="+", choices=["swaa", "sdpa_mask", "flex", *FULL_CAUSAL])
    ap.add_argument("--passes", nargs="+", choices=["fwd", "fwd+bwd"])
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--max-mask-n", type=int, default=32768, help="skip sdpa_mask above this N")
    ap.add_argument("--name", default="attention", help="results file bench/results/NAME.jsonl")
    ap.add_argument("--no-save", action="store_true", help="print only, append no rows")
    ap.add_argument("--plot", type=Path, help="write a PNG of TFLOP/s vs N")
    ap.add_argument("--plot-from", type=Path, metavar="JSONL",
                    help="measure nothing: plot rows of an earlier run (filtered by --D/--W/--S)")
    args = ap.parse_args(argv)
    if args.plot_from:
        return plot_saved(args)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = dict(PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")])
    for key in ("B", "Hq", "Hkv", "D", "N", "W", "S", "dtype", "impls", "passes"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    if args.warmup is None:
        args.warmup = 5 if device.type == "cuda" else 1
    if args.reps is None:
        args.reps = 30 if device.type == "cuda" else 3
    dtype = DTYPES[preset["dtype"]]
    meta = common.run_metadata(device)
    print(f"run {meta['run']} on {meta['gpu']} ({meta['threads']} threads), torch {meta['torch']}, "
          f"swaa_ext {swaa_ext.__version__}", flush=True)

    rows = []
    for B, Hq, Hkv, D, N, W, S in itertools.product(*(preset[x] for x in ("B", "Hq", "Hkv", "D", "N", "W", "S"))):
        rows += bench_shape(preset["impls"], preset["passes"], B, Hq, Hkv, D, N, W, S, dtype,
                            device, meta, args)
    if not rows:
        print("no measurement succeeded")
        return 1
    print()
    common.print_table(rows, ["impl", "pass", "N", "W", "S", "D", "ms", "tflops", "rel_err"])
    _print_ratios(rows)
    if not args.no_save:
        path = common.default_results_path(args.name)
        common.append_rows(path, rows)
        print(f"{len(rows)} rows appended to {path}")
    if args.plot:
        plot(rows, args.plot)
    return 0


def plot_saved(args) -> int:
    """Plot the rows of a results file (e.g. a GPU run) without measuring; print swaa's
    ratios to the other implementations first."""
    import json

    rows = [json.loads(line) for line in args.plot_from.read_text().splitlines() if line.strip()]
    for key in ("D", "W", "S"):
        wanted = getattr(args, key)
        if wanted:
            rows = [r for r in rows if r[key] in wanted]
    if not rows or not args.plot:
        print("nothing to plot (no rows left, or no --plot PATH)")
        return 1
    _print_ratios(rows)
    plot(rows, args.plot)
    return 0


def _print_ratios(rows) -> None:
    """swaa's speed-up over each competitor on the same shape, and the growth
    of time with N (linear for SWA, quadratic for a masked full attention)."""
    by_key = {}
    for r in rows:
        by_key[(r["pass"], r["D"], r["N"], r["W"], r["S"], r["impl"])] = r["ms"]
    print()
    for (pas, d, n, w, s, impl), ms in sorted(by_key.items(), key=str):
        if impl == "swaa":
            continue
        ours = by_key.get((pas, d, n, w, s, "swaa"))
        if ours:
            print(f"  {pas:7s} D={d} N={n} W={w} S={s}: swaa is {ms / ours:5.2f}x {impl}")
    for impl in sorted({r["impl"] for r in rows}):
        for pas, d, w, s in sorted({(r["pass"], r["D"], r["W"], r["S"]) for r in rows}, key=str):
            pts = sorted((r["N"], r["ms"]) for r in rows
                         if (r["impl"], r["pass"], r["D"], r["W"], r["S"]) == (impl, pas, d, w, s))
            if len(pts) >= 2:
                (n0, t0), (n1, t1) = pts[0], pts[-1]
                exponent = math.log(t1 / t0) / math.log(n1 / n0)
                print(f"  {impl:9s} {pas:7s} D={d} W={w} S={s}: time ~ N^{exponent:.2f} "
                      f"from N={n0} to N={n1}")


if __name__ == "__main__":
    sys.exit(main())
