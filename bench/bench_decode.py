"""Decode step (append one token + attention) of RingKVCache against the caches
a user would otherwise reach for.

impls:
  ring              swaa_ext.RingKVCache.attend (fused append + split decode kernel)
  sdpa_contiguous   (a) copy the token into a contiguous (sink + window) cache, SDPA over it
  hf_static_sliding (b) transformers' StaticSlidingWindowLayer.update, then SDPA
  full_<L>          (c) a full cache of L positions, copy the token in, SDPA over all of it
  ring_full_<L>     RingKVCache with window L, sink 0 (how swaa_ext.generate decodes a
                    full-attention layer), query at position L - 1: every slot is read,
                    the ring never wraps; same bytes as full_<L>

Knobs of the decode kernel (SWAA_DECODE_SPLITS, SWAA_DECODE_SPLITS_MAX,
SWAA_DECODE_COMBINE; see csrc/cuda/ring.cu) are read at every launch and stored
in each row as `knobs`; SWAA_DECODE_VERBOSE=1 prints the plan of each shape.

All SDPA calls fold the query heads of a KV head into query rows (Lq = Hq/Hkv,
no mask: every cached key is visible to a decode query), the fastest way to
run GQA decode through SDPA.  Each impl keeps several independent caches and
steps them in turn so the working set exceeds the L2 cache; on CUDA one graph
holds one step of every cache and its replays are timed with CUDA events
(eager event timing where capture fails, recorded in `timing`).  Each timed
replay is queued behind a spin kernel that outlasts its submission, so the
events see the GPU's work and not the host's launch latency (`launch`:
"queued"; `--launch host` times the way sessions 1-6 did: the start event
fires on an idle GPU, which then waits a few us for the replay).  ms is the
median per step.  gbps = (K and V read once + the new token written) / ms;
bw_fraction = gbps / device-to-device copy bandwidth measured in the same run.

    python bench/bench_decode.py                 # GPU sizes (issue 4)
    python bench/bench_decode.py --cpu --out /tmp/decode.jsonl   # small CPU smoke run
    python bench/bench_decode.py --summary-from ROWS   # runs side by side (e.g. knob A/B)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
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


LAUNCHES = ("queued", "host")  # the timings of time_steps
_SPIN_CYCLES_PER_S: dict = {}


def spin_cycles(device, seconds: float) -> int:
    """Cycles of torch.cuda._sleep that keep `device` busy for about `seconds`."""
    key = str(device)
    if key not in _SPIN_CYCLES_PER_S:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(1000)
        rates = []
        for _ in range(3):
            start.record()
            torch.cuda._sleep(1 << 21)
            end.record()
            end.synchronize()
            rates.append((1 << 21) / (start.elapsed_time(end) / 1e3))
        _SPIN_CYCLES_PER_S[key] = statistics.median(rates)
    return max(1000, int(seconds * _SPIN_CYCLES_PER_S[key]))


def time_steps(steps, device, budget_s: float, graph: bool, launch: str = "queued"):
    """Median seconds of one call of each of `steps` (callables), run in turn.

    launch="queued" (default): every timed replay is queued behind a spin kernel
    (torch.cuda._sleep) that outlasts the host's submission of the replay, so the
    two events time the GPU's work and not the host's launch latency, as inside
    a model's decode graph where the attention step sits between other kernels.
    A sample whose submission outlasted the spin is dropped and the spin doubled.
    A step whose submission waits for the GPU (HF's eager update copies from
    pageable host memory) cannot be queued: it is timed "host" instead.
    launch="host" (sessions 1-6): the start event fires at once on an idle GPU,
    which then waits for the host to submit the replay (a few us per replay).
    Returns (seconds, "graph" | "eager" | "wall", the launch timing used).
    """
    if launch not in LAUNCHES:
        raise ValueError(f"launch must be 'queued' or 'host', got {launch!r}")

    def run_all():
        for s in steps:
            s()

    if device.type != "cuda":
        run_all()
        samples = []
        t_end = time.perf_counter() + budget_s
        while len(samples) < 5 or (time.perf_counter() < t_end and len(samples) < 200):
            t0 = time.perf_counter()
            run_all()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples) / len(steps), "wall", launch

    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            run_all()
    torch.cuda.current_stream(device).wait_stream(side)
    sync(device)
    replay, mode = run_all, "eager"
    if graph:
        try:
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                run_all()
            g.replay()
            sync(device)
            replay, mode = g.replay, "graph"
        except Exception as e:  # noqa: BLE001
            print(f"    graph capture failed ({type(e).__name__}: {str(e)[:120]}); eager timing")
            torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    spin_s = 0.0
    if launch == "queued":
        # how long the host takes to submit one replay, measured behind a long spin
        probe = 5e-3
        torch.cuda._sleep(spin_cycles(device, probe))
        t0 = time.perf_counter()
        replay()
        submit = time.perf_counter() - t0
        sync(device)
        if submit > 0.8 * probe:  # the submission waited for the spin: it synchronises
            print(f"    the step's submission waits for the GPU ({submit * 1e3:.1f} ms behind a "
                  f"{probe * 1e3:.0f} ms spin); timed with launch='host'")
            launch = "host"
        else:
            spin_s = min(0.05, max(50e-6, 3 * submit + 20e-6))

    def sample():
        """GPU seconds of one replay, or None when the spin did not cover its submission."""
        t0 = time.perf_counter()
        if spin_s:
            torch.cuda._sleep(spin_cycles(device, spin_s))
        start.record()
        replay()
        end.record()
        submitted = time.perf_counter() - t0
        end.synchronize()
        if spin_s and submitted >= spin_s:
            return None
        return start.elapsed_time(end) / 1e3

    def covered_sample():
        """sample(), doubling the spin (up to 0.1 s) after each uncovered submission."""
        nonlocal spin_s
        for _ in range(12):
            t = sample()
            if t is not None:
                return t
            spin_s = min(2 * spin_s, 0.1)
        raise RuntimeError(f"the host's submission kept outlasting a {spin_s * 1e3:.1f} ms "
                           "spin; time with launch='host'")

    first = covered_sample()
    reps = int(min(200, max(10, budget_s / max(first, 1e-6))))
    samples = [covered_sample() for _ in range(reps)]
    return statistics.median(samples) / len(steps), mode, launch


def copy_bandwidth(device, nbytes: int, launch: str = "queued") -> float:
    """Bytes/s of a device-to-device copy (read + write counted)."""
    x = torch.randn(nbytes // 4, device=device)
    y = torch.empty_like(x)
    sec, _, _ = time_steps([lambda: y.copy_(x)], device, 0.3, graph=False, launch=launch)
    return 2 * x.nbytes / sec


def grouped_sdpa(q, k, v):
    """GQA decode through SDPA: the G query heads of a KV head become G rows."""
    B, Hq, _, D = q.shape
    Hkv = k.shape[1]
    out = F.scaled_dot_product_attention(q.view(B, Hkv, Hq // Hkv, D), k, v)
    return out.view(B, Hq, 1, D)


def n_sets_for(bytes_per_set: int, l2: int) -> int:
    return int(min(16, max(1, math.ceil(4 * l2 / max(bytes_per_set, 1)))))


def make_ring(B, Hq, Hkv, D, W, S, dtype, device, n_sets):
    steps = []
    for _ in range(n_sets):
        cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=dtype, device=device)
        cache.keys.normal_()
        cache.values.normal_()
        cache.seqlens.fill_(S + W + 1000)  # a full ring: every slot is read
        q = torch.randn(B, Hq, 1, D, dtype=dtype, device=device)
        k = torch.randn(B, Hkv, 1, D, dtype=dtype, device=device)
        v = torch.randn(B, Hkv, 1, D, dtype=dtype, device=device)
        steps.append(lambda c=cache, q=q, k=k, v=v: c.attend(q, k, v))
    return steps


def make_ring_full(B, Hq, Hkv, D, L, dtype, device, n_sets):
    """A ring as long as the history (window L, no sink), query at position
    L - 1: the decode of a full-attention layer in swaa_ext.generate."""
    steps = []
    for _ in range(n_sets):
        cache = RingKVCache(B, Hkv, D, window=L, sink=0, dtype=dtype, device=device)
        cache.keys.normal_()
        cache.values.normal_()
        q = torch.randn(B, Hq, 1, D, dtype=dtype, device=device)
        k = torch.randn(B, Hkv, 1, D, dtype=dtype, device=device)
        v = torch.randn(B, Hkv, 1, D, dtype=dtype, device=device)

        def step(cache=cache, q=q, k=k, v=v):
            cache.seqlens.fill_(L - 1)  # every replay reads all L slots, never wraps
            return cache.attend(q, k, v)
        steps.append(step)
    return steps


def make_contiguous(B, Hq, Hkv, D, length, dtype, device, n_sets, ring_of=None):
    """A contiguous cache of `length` rows; the new token is copied to a slot
    computed on the device (the ring slot for (a), pos % length for (c))."""
    steps = []
    for _ in range(n_sets):
        K = torch.randn(B, Hkv, length, D, dtype=dtype, device=device)
        V = torch.randn_like(K)
        pos = torch.full((1,), length + 1000, dtype=torch.int64, device=device)
        q = torch.randn(B, Hq, 1, D, dtype=dtype, device=device)
        k = torch.randn(B, Hkv, 1, D, dtype=dtype, device=device)
        v = torch.randn(B, Hkv, 1, D, dtype=dtype, device=device)

        def step(K=K, V=V, pos=pos, q=q, k=k, v=v):
            if ring_of is not None:
                W, S = ring_of
                slot = S + (pos - S) % W
            else:
                slot = pos % length
            K.index_copy_(2, slot, k)
            V.index_copy_(2, slot, v)
            pos.add_(1)
            return grouped_sdpa(q, K, V)
        steps.append(step)
    return steps


def make_floor(kind, nbytes, dtype, device, n_sets):
    """What one stock kernel does with the same bytes, in the same harness: `read` reduces a
    buffer of `nbytes` to one value per 4096 elements (reads every byte once, as the decode
    step does); `copy` copies nbytes / 2 (nbytes of traffic). Not attention: the time a
    single launch needs to move this many bytes, so bw_fraction of the ring has a ceiling
    to be read against at small batches."""
    es = torch.empty((), dtype=dtype).element_size()
    n = nbytes // es // 4096 * 4096
    steps = []
    for _ in range(n_sets):
        if kind == "read":
            x = torch.randn(n // 4096, 4096, dtype=dtype, device=device)
            out = torch.empty(n // 4096, dtype=dtype, device=device)
            steps.append(lambda x=x, out=out: torch.amax(x, dim=1, out=out))
        else:
            x = torch.randn(n // 2, dtype=dtype, device=device)
            y = torch.empty_like(x)
            steps.append(lambda x=x, y=y: y.copy_(x))
    return steps


def make_hf(B, Hq, Hkv, D, W, S, dtype, device, n_sets):
    from transformers.cache_utils import StaticSlidingWindowLayer

    steps = []
    for _ in range(n_sets):
        try:
            layer = StaticSlidingWindowLayer(max_cache_len=S + W, sliding_window=S + W)
        except TypeError:
            layer = StaticSlidingWindowLayer(S + W, S + W)
        # Fill the window (HF keeps sliding_window positions; no separate sinks).
        layer.update(torch.randn(B, Hkv, S + W, D, dtype=dtype, device=device),
                     torch.randn(B, Hkv, S + W, D, dtype=dtype, device=device))
        q = torch.randn(B, Hq, 1, D, dtype=dtype, device=device)
        k = torch.randn(B, Hkv, 1, D, dtype=dtype, device=device)
        v = torch.randn(B, Hkv, 1, D, dtype=dtype, device=device)

        def step(layer=layer, q=q, k=k, v=v):
            keys, values = layer.update(k, v)
            return grouped_sdpa(q, keys, values)
        steps.append(step)
    return steps


def print_summary(path: Path) -> None:
    """ms per decode step and bw_fraction of every row, grouped by (impl, B): the runs
    of one shape (plan knobs, split counts, cost models) on adjacent lines."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    print(f"{'impl':18s} {'B':>3s} {'run':34s} {'launch':6s} {'ms':>8s} bw_fraction")
    for r in sorted(rows, key=lambda r: (r["impl"], r["B"])):  # stable: runs in file order
        launch = r.get("launch", "host")  # rows before session 7 were timed with "host"
        print(f"{r['impl']:18s} {r['B']:3d} {r['run']:34s} {launch:6s} {r['ms']:8.4f} "
              f"{r['bw_fraction']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="small sizes on the CPU (smoke test)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes")
    ap.add_argument("--full", default=None, help="comma-separated full-cache lengths")
    ap.add_argument("--impls", default="ring,sdpa_contiguous,hf_static_sliding,full,ring_full",
                    help="comma list; also read_floor, copy_floor (one stock kernel on the ring's bytes)")
    ap.add_argument("--budget", type=float, default=0.25, help="seconds of timing per row")
    ap.add_argument("--name", default=None, help="results file bench/results/<name>.jsonl")
    ap.add_argument("--out", default=None, help="explicit output path (overrides --name)")
    ap.add_argument("--run", default=None, help="run label stored in every row")
    ap.add_argument("--launch", default="queued",
                    help="comma list of timings: queued (each replay behind a spin kernel: GPU "
                         "time only) and/or host (sessions 1-6: the host's launch latency "
                         "included); rows carry `launch`")
    ap.add_argument("--summary-from", type=Path, metavar="ROWS",
                    help="measure nothing: print the rows of ROWS, every run of one (impl, B) "
                         "together")
    args = ap.parse_args()
    if args.summary_from:
        print_summary(args.summary_from)
        return

    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    launches = args.launch.split(",")
    for launch in launches:
        if launch not in LAUNCHES:
            ap.error(f"--launch: unknown timing {launch!r} (queued, host)")
    if device.type == "cuda":
        Hq, Hkv, D, W, S, dtype = 32, 8, 128, 4096, 4, torch.bfloat16
        batches = [1, 8, 64]
        fulls = [32768, 131072]
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
        copy_size = 1 << 30
    else:
        Hq, Hkv, D, W, S, dtype = 4, 2, 64, 256, 4, torch.float32
        batches = [1, 4]
        fulls = [2048]
        l2 = 1 << 20
        copy_size = 64 << 20
    # both timings' copy bandwidth: a step that cannot be queued is timed "host" (HF's)
    copy_bws = {launch: copy_bandwidth(device, copy_size, launch) for launch in LAUNCHES}
    if args.batches:
        batches = [int(x) for x in args.batches.split(",")]
    if args.full:
        fulls = [int(x) for x in args.full.split(",")]
    impls = args.impls.split(",")
    es = torch.empty((), dtype=dtype).element_size()
    meta = common.run_metadata(device)
    if args.run:
        meta["run"] = args.run
    gpu = meta["gpu"]
    out_path = Path(args.out) if args.out else \
        ROOT / "bench" / "results" / f"{args.name or 'decode_' + gpu.replace(' ', '_')}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta["knobs"] = {k: v for k, v in sorted(os.environ.items()) if k.startswith("SWAA_DECODE_")
                     or k == "SWAA_RING_DECODE"}
    bws = ", ".join(f"{copy_bws[launch] / 1e9:.0f} GB/s ({launch})" for launch in launches)
    print(f"{gpu}: copy bandwidth {bws}; Hq={Hq} Hkv={Hkv} D={D} W={W} S={S} "
          f"{dtype}")
    rows = []
    for B in batches:
        ring_bytes = 2 * B * Hkv * (S + W) * D * es + 2 * B * Hkv * D * es
        cases = []
        if "ring" in impls:
            cases.append(("ring", ring_bytes, lambda n: make_ring(B, Hq, Hkv, D, W, S, dtype,
                                                                  device, n), True))
        if "sdpa_contiguous" in impls:
            cases.append(("sdpa_contiguous", ring_bytes,
                          lambda n: make_contiguous(B, Hq, Hkv, D, S + W, dtype, device, n,
                                                    ring_of=(W, S)), True))
        # long caches of L positions: SDPA over a contiguous cache (full_<L>) and our decode
        # over a never-wrapping ring (ring_full_<L>), same bytes
        long_makers = {"full": lambda n, L: make_contiguous(B, Hq, Hkv, D, L, dtype, device, n),
                       "ring_full": lambda n, L: make_ring_full(B, Hq, Hkv, D, L, dtype, device, n)}
        for kind, make in long_makers.items():
            if kind not in impls:
                continue
            for L in fulls:
                full_bytes = 2 * B * Hkv * L * D * es + 2 * B * Hkv * D * es
                if device.type == "cuda" and 2.2 * full_bytes > torch.cuda.mem_get_info(device)[0]:
                    print(f"  B={B} {kind}_{L}: skipped (does not fit)")
                    continue
                cases.append((f"{kind}_{L}", full_bytes, lambda n, L=L, make=make: make(n, L), True))
        for kind in ("read", "copy"):
            if f"{kind}_floor" in impls:
                cases.append((f"{kind}_floor", ring_bytes,
                              lambda n, kind=kind: make_floor(kind, ring_bytes, dtype, device, n),
                              True))
        if "hf_static_sliding" in impls:  # last: its graph capture may fail
            cases.append(("hf_static_sliding", ring_bytes,
                          lambda n: make_hf(B, Hq, Hkv, D, W, S, dtype, device, n), True))
        for impl, nbytes, build, graph in cases:
            timed = {}
            try:
                steps = build(n_sets_for(nbytes, l2))
                for launch in launches:
                    if launch in {used for _, _, used in timed.values()}:
                        continue  # a queued request fell back to host timing: already timed
                    timed[launch] = time_steps(steps, device, args.budget, graph, launch)
            except Exception as e:  # noqa: BLE001  (e.g. a transformers API change)
                print(f"  B={B} {impl}: FAILED {type(e).__name__}: {str(e)[:200]}")
                continue
            finally:
                steps = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            for launch, (sec, mode, used) in timed.items():
                copy_bw = copy_bws[used]
                row = dict(bench="decode", impl=impl, B=B, Hq=Hq, Hkv=Hkv, W=W, S=S, D=D,
                           dtype=str(dtype).replace("torch.", ""), ms=sec * 1e3,
                           gbps=nbytes / sec / 1e9, bw_fraction=nbytes / sec / copy_bw,
                           bytes=nbytes, timing=mode, launch=used, copy_gbps=copy_bw / 1e9,
                           **meta)
                rows.append(row)
                print(f"  B={B:3d} {impl:18s} {row['ms']:8.4f} ms {row['gbps']:8.1f} GB/s "
                      f"bw_fraction {row['bw_fraction']:.2f} ({mode}, {used})")
    common.append_rows(out_path, rows)
    # Goals of issue 4, side by side.
    for launch in launches:
        # a step that could not be queued (HF's) has only its host row
        by = {(r["impl"], r["B"]): r for r in rows if r["launch"] == "host"}
        by.update({(r["impl"], r["B"]): r for r in rows if r["launch"] == launch})
        print(f"\ntiming: {launch} (rows that could not be queued: host)")
        print("B    ring_ms  vs_sdpa_contiguous  vs_hf_static_sliding  ring_bw_fraction")
        for B in batches:
            ring = by.get(("ring", B))
            if ring is None:
                continue
            a, b = by.get(("sdpa_contiguous", B)), by.get(("hf_static_sliding", B))
            print(f"{B:<4d} {ring['ms']:8.4f}  "
                  f"{(ring['ms'] / a['ms']) if a else float('nan'):18.2f}x"
                  f"  {(b['ms'] / ring['ms']) if b else float('nan'):19.2f}x faster"
                  f"  {ring['bw_fraction']:.2f}")
        pairs = [(r, by.get((r["impl"][len("ring_"):], r["B"]))) for r in by.values()
                 if r["impl"].startswith("ring_full_")]
        if pairs:
            print("B    impl               ms      vs SDPA full  bw_fraction")
            for r, f in pairs:
                print(f"{r['B']:<4d} {r['impl']:18s} {r['ms']:7.4f}  "
                      f"{(f['ms'] / r['ms']) if f else float('nan'):8.2f}x faster  "
                      f"{r['bw_fraction']:.2f}")
    print(f"rows appended to {out_path}")


if __name__ == "__main__":
    main()
