"""The split decode's fused global combine (SWAA_DECODE_GLOBAL_COMBINE=fused: the CTA that finishes a
(row, KV head) last merges its splits, no second kernel) and the alternative tilings of the global
kernel (SWAA_DECODE_TILE / SWAA_DECODE_STAGES), against the combine kernel and the float64
reference.  The fused combine must give the combine kernel's bits: it runs the same arithmetic in
the same split order.  CUDA only (sm_90 for the bf16 / fp16 split kernel)."""
import math
import re

import pytest
import torch
from test_cache import decode_reference, ring_slot

from swaa_ext import RingKVCache

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                       reason="needs an sm_90 GPU (the bf16 / fp16 split decode kernel)"),
]

PLAN = re.compile(r"-> (\d+) splits, (\w+) combine \(([^,]+(?:, fused not available)?), "
                  r"tile (\d+) x (\d+) stages, \d+ B smem(, balanced)?(?:, [^)]*)?\)")


def plans_of(text):
    """(splits, combine, mode, tile keys, stages, balanced) of each launch SWAA_DECODE_VERBOSE=2
    printed."""
    return [(int(m[1]), m[2], m[3], int(m[4]), int(m[5]), m[6] is not None)
            for m in map(PLAN.search, text.splitlines()) if m]


def set_knobs(monkeypatch, **knobs):
    for name, value in knobs.items():
        monkeypatch.setenv(f"SWAA_DECODE_{name}", str(value))


def random_ring(B, Hq, Hkv, D, W, S, dtype, seed):
    """A ring filled at random, rows at different positions (wrapped many times, 0, 1, inside the
    first window, ...), the last row padded (lengths = 0) when B > 1."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).cuda()  # noqa: E731
    kc, vc = mk(B, Hkv, S + W, D), mk(B, Hkv, S + W, D)
    q, k, v = mk(B, Hq, 1, D), mk(B, Hkv, 1, D), mk(B, Hkv, 1, D)
    fixed = [7 * (S + W) + 3, 0, 1, S + W, W // 2 + S]
    positions = (fixed + torch.randint(0, 9 * (S + W), (max(B - len(fixed), 0),),
                                       generator=g).tolist())[:B]
    lengths = torch.ones(B, dtype=torch.int64)
    if B > 1:
        lengths[-1] = 0
    return q, k, v, kc, vc, torch.tensor(positions).cuda(), lengths.cuda()


def twin_rings(B, Hkv, D, W, S, seed, seqlens):
    """Two bf16 CUDA rings with the same random contents (torch.manual_seed(seed) before each
    fill) and the same positions: a graph or knob twin against an eager one."""
    caches = [RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
              for _ in range(2)]
    for c in caches:
        torch.manual_seed(seed)
        c.keys.normal_()
        c.values.normal_()
        c.seqlens.copy_(torch.tensor(seqlens, device="cuda"))
    return caches


def refill(static):
    """New random values for a graph's static inputs (lists of tensors), copied into them; the
    new values are returned for the eager twin."""
    new = [[torch.randn_like(t) for t in x] for x in static]
    for x, n in zip(static, new):
        for t, u in zip(x, n):
            t.copy_(u)
    return new


def decode(case, W, S, capfd=None):
    """One ring_decode call on copies of the case's caches: (out, lse, k_cache, v_cache, plans)."""
    q, k, v, kc0, vc0, seqlens, lengths = case
    kc, vc = kc0.clone(), vc0.clone()
    if capfd is not None:
        capfd.readouterr()
    out, lse = torch.ops.swaa.ring_decode(q, k, v, kc, vc, seqlens, lengths, W, S,
                                          1 / math.sqrt(q.shape[-1]), 0)
    torch.cuda.synchronize()
    plans = plans_of(capfd.readouterr().err) if capfd is not None else []
    return out, lse, kc, vc, plans


def check_against_reference(case, result, W, S, rows, tol):
    q, k, v, kc0, vc0, seqlens, lengths = case
    out, lse, kc, vc, _ = result
    scale = 1 / math.sqrt(q.shape[-1])
    for b in rows:
        if lengths[b] == 0:  # padding: zero output, -inf lse, nothing written
            assert torch.all(out[b] == 0) and torch.all(torch.isneginf(lse[b]))
            assert torch.equal(kc[b], kc0[b])
            continue
        position = int(seqlens[b])
        ref, ref_lse = decode_reference(q[b], k[b], v[b], kc0[b], vc0[b], position, W, S, scale)
        err = (out[b, :, 0].double() - ref).abs().max().item()
        assert math.isfinite(err) and err <= tol, (b, err)
        torch.testing.assert_close(lse[b, :, 0].double(), ref_lse, atol=1e-4, rtol=1e-4)
        slot = ring_slot(position, W, S)
        assert torch.equal(kc[b, :, slot], k[b, :, 0]) and torch.equal(vc[b, :, slot], v[b, :, 0])


def assert_same_bits(a, b):
    for x, y, name in zip(a[:4], b[:4], ("out", "lse", "k_cache", "v_cache")):
        assert torch.equal(x, y), name


def run_fused_in_subprocess(tmp_path, script, shape, seed, splits, slices):
    """Runs `script` (it gets the saved case's path) in a fresh process with the fused global
    combine forced at `splits` splits and SWAA_DECODE_ARRIVAL_SLICES=`slices`, plans logged: the
    counter slices it takes stay free for the other tests.  Returns the finished process."""
    import os
    import subprocess
    import sys
    B, Hq, Hkv, D, W, S = shape
    case = random_ring(B, Hq, Hkv, D, W, S, torch.bfloat16, seed=seed)
    torch.save((*case, W, S), tmp_path / "case.pt")
    env = dict(os.environ, SWAA_DECODE_COMBINE="global", SWAA_DECODE_SPLITS=str(splits),
               SWAA_DECODE_VERBOSE="2", SWAA_DECODE_GLOBAL_COMBINE="fused",
               SWAA_DECODE_ARRIVAL_SLICES=str(slices))
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "case.pt")],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.mark.parametrize("balance", [0, 1])  # splits of whole tiles | of equal key counts
@pytest.mark.parametrize("window,sink", [(1000, 4), (40, 300)])  # (40, 300): sink > window
@pytest.mark.parametrize("batch,splits", [(1, 1), (1, 2), (1, 5), (1, 17), (1, 33), (8, 1), (8, 2),
                                          (8, 4), (8, 7), (64, 2), (64, 3)])
def test_fused_combine_same_bits_as_combine_kernel(batch, splits, window, sink, balance,
                                                   monkeypatch, capfd):
    Hq, Hkv, D, W, S = 32, 8, 128, window, sink
    case = random_ring(batch, Hq, Hkv, D, W, S, torch.bfloat16, seed=batch * 100 + splits + W)
    set_knobs(monkeypatch, COMBINE="global", SPLITS=splits, VERBOSE=2, BALANCE=balance)
    tiles = (S + W + 1 + 63) // 64  # a split holds whole 64-key tiles
    expected_splits = min(splits, tiles)
    results = {}
    for mode in ("kernel", "fused", "fused"):  # fused twice: its counters were reset
        set_knobs(monkeypatch, GLOBAL_COMBINE=mode)
        result = decode(case, W, S, capfd)
        assert [p[:3] for p in result[4]] == [(expected_splits, "global", mode)]
        if mode in results:
            assert_same_bits(result, results[mode])
        results[mode] = result
    assert_same_bits(results["fused"], results["kernel"])
    out = results["fused"][0]
    assert not torch.isnan(out.float()).any()  # SWAA_POISON_OUTPUTS=1 would show gaps as NaN
    check_against_reference(case, results["fused"], W, S, rows=range(min(batch, 6)), tol=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tile,stages", [(64, 3), (64, 2), (32, 4), (32, 6)])
def test_tilings_match_reference_and_fuse_bitwise(dtype, tile, stages, monkeypatch, capfd):
    # Each tiling of the global kernel (D = 128) under two global plans, the
    # automatic split count (12 here: one split per 64 keys) and a forced 9,
    # kernel and fused combine: right against the reference, and the two
    # combines give the same bits.  (COMBINE=global: the automatic plan of the
    # default tiling would otherwise be a cluster, with no fused combine to
    # compare.)  Query heads 24 per KV head: two CTAs of 16 and 8 heads (a
    # partial head chunk).
    B, Hq, Hkv, D, W, S = 5, 48, 2, 128, 700, 5
    case = random_ring(B, Hq, Hkv, D, W, S, dtype, seed=tile * 10 + stages)
    set_knobs(monkeypatch, TILE=tile, STAGES=stages, VERBOSE=2, COMBINE="global")
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    split_counts = []
    for splits in ("", "9"):
        set_knobs(monkeypatch, SPLITS=splits)
        results = {}
        for mode in ("kernel", "fused"):
            set_knobs(monkeypatch, GLOBAL_COMBINE=mode)
            results[mode] = decode(case, W, S, capfd)
            [(n, combine, used, tile_keys, used_stages, _)] = results[mode][4]
            assert (tile_keys, used_stages, combine, used) == (tile, stages, "global", mode)
            split_counts.append(n)
        assert_same_bits(results["fused"], results["kernel"])
        check_against_reference(case, results["fused"], W, S, rows=range(B), tol=tol)
    # one plan per half, the same for both combines, and two different plans
    assert split_counts[0] == split_counts[1] and split_counts[2:] == [9, 9], split_counts
    assert split_counts[0] != 9, split_counts


@pytest.mark.parametrize("tile,stages", [(64, 3), (32, 4)])
def test_balanced_splits(tile, stages, monkeypatch, capfd):
    # SWAA_DECODE_BALANCE=1: splits of equal key counts (every split's last
    # tile partial) against whole-tile splits: both right, close to each other,
    # and the cluster plan (default tiling) balances too.
    B, Hq, Hkv, D, W, S = 6, 32, 8, 128, 4096, 4
    case = random_ring(B, Hq, Hkv, D, W, S, torch.bfloat16, seed=tile + stages)
    set_knobs(monkeypatch, TILE=tile, STAGES=stages, VERBOSE=2)
    combines = ["global", "cluster"] if tile == 64 else ["global"]
    for combine in combines:
        results = []
        for balance in (0, 1):
            set_knobs(monkeypatch, BALANCE=balance, COMBINE=combine, SPLITS=7)
            results.append(decode(case, W, S, capfd))
            [plan] = results[-1][4]
            assert plan[:2] == (7, combine) and plan[5] == bool(balance)
            check_against_reference(case, results[-1], W, S, rows=range(B), tol=2e-2)
        assert (results[0][0].float() - results[1][0].float()).abs().max().item() <= 2e-2
        assert torch.equal(results[0][2], results[1][2])  # the same slot written


def test_tiling_knobs_fall_back_to_the_default(monkeypatch, capfd):
    # Pairs that are not built, and D = 64 (alternatives are built for D = 128 only), run the
    # default tiling: 64-key tiles, 3 stages at D = 128, 4 at D = 64.
    for D, tile, stages, expected in [(128, 64, 4, (64, 3)), (128, 16, 2, (64, 3)),
                                      (64, 32, 6, (64, 4))]:
        B, Hq, Hkv, W, S = 2, 8, 2, 300, 2
        case = random_ring(B, Hq, Hkv, D, W, S, torch.bfloat16, seed=D + tile + stages)
        set_knobs(monkeypatch, TILE=tile, STAGES=stages, VERBOSE=2, COMBINE="global", SPLITS=3)
        result = decode(case, W, S, capfd)
        assert [p[3:5] for p in result[4]] == [expected]
        check_against_reference(case, result, W, S, rows=range(B), tol=2e-2)


def test_fused_combine_with_shapes_and_split_counts_interleaved(monkeypatch):
    # Launches of different shapes and split counts share the arrival counters
    # of a stream one after another: each must leave them at zero for the next.
    set_knobs(monkeypatch, COMBINE="global")
    cases = [(3, 16, 4, 128, 900, 4, 6), (9, 8, 8, 64, 200, 0, 3), (3, 16, 4, 128, 900, 4, 11),
             (1, 32, 8, 128, 4096, 4, 33), (9, 8, 8, 64, 200, 0, 2)]
    for i, (B, Hq, Hkv, D, W, S, splits) in enumerate(cases * 2):
        case = random_ring(B, Hq, Hkv, D, W, S, torch.float16, seed=i)
        set_knobs(monkeypatch, SPLITS=splits)
        got = {}
        for mode in ("fused", "kernel"):
            set_knobs(monkeypatch, GLOBAL_COMBINE=mode)
            got[mode] = decode(case, W, S)
        assert_same_bits(got["fused"], got["kernel"])


def test_fused_combine_back_to_back_many_ctas(monkeypatch, capfd):
    # 64 fused launches queued with no host sync in between (as a model's layers run), the split
    # count changing from launch to launch (the same counters, other targets), 16896 CTAs at 33
    # splits (many waves: the last arrival lands on any SM), a new query per launch (a partial read
    # before it is published gives other bits; under SWAA_POISON_OUTPUTS=1, as bench/gpu_check.sh's
    # test step runs, the workspace starts as NaN).  The same queue with the combine kernel gives
    # the same bits.  The repeated calls leave the cache as it was after the first: the same new
    # key and value go to the same (invisible) slot, and the raw op does not advance seqlens.
    B, Hq, Hkv, D, W, S = 64, 32, 8, 128, 2044, 4
    q, k, v, kc, vc, seqlens, lengths = random_ring(B, Hq, Hkv, D, W, S, torch.bfloat16, seed=77)
    qs = torch.randn(64, *q.shape, device="cuda").to(q.dtype)
    split_counts = (2, 7, 33, 5)
    set_knobs(monkeypatch, COMBINE="global", VERBOSE=2)
    got = {}
    for mode in ("fused", "kernel"):
        set_knobs(monkeypatch, GLOBAL_COMBINE=mode)
        capfd.readouterr()
        got[mode] = []
        for i in range(len(qs)):
            set_knobs(monkeypatch, SPLITS=split_counts[i % 4])
            got[mode].append(torch.ops.swaa.ring_decode(qs[i], k, v, kc, vc, seqlens, lengths, W, S,
                                                        D ** -0.5, 0))
        plans = plans_of(capfd.readouterr().err)
        assert [p[:3] for p in plans] == [(split_counts[i % 4], "global", mode)
                                          for i in range(len(qs))]
    torch.cuda.synchronize()
    for i, (a, b) in enumerate(zip(got["fused"], got["kernel"])):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), i
        assert not torch.isnan(a[0].float()).any(), i
    # the cache now holds the new key in its slot, which the reference never reads
    last_case = (qs[-1], k, v, kc, vc, seqlens, lengths)
    check_against_reference(last_case, (*got["fused"][-1], kc, vc, None), W, S, rows=range(6),
                            tol=2e-2)


def test_cuda_graph_of_several_fused_layers(monkeypatch, capfd):
    # Four fused decodes (the layers of a model: other caches, other split counts, one of them with
    # two head chunks) captured in ONE graph, so each replay reuses the graph's counters four times
    # in a row; 100 replays queued with no host sync, each on new inputs, against eager twins that
    # combine with the second kernel.
    # W = 500: 8 key tiles of 64, so every requested split count is kept (the planner clamps
    # splits to the tile count; at W = 300 the 7 became 5).
    torch.manual_seed(31)
    B, D, W, S = 3, 128, 500, 4
    layers = [(32, 8, 5), (32, 8, 2), (48, 2, 7), (32, 8, 3)]  # (Hq, Hkv, splits)
    set_knobs(monkeypatch, COMBINE="global", VERBOSE=2)

    def make_caches():
        caches = []
        for i, (Hq, Hkv, _) in enumerate(layers):
            c = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
            g = torch.Generator(device="cpu").manual_seed(40 + i)
            c.keys.copy_(torch.randn(c.keys.shape, generator=g))
            c.values.copy_(torch.randn(c.values.shape, generator=g))
            c.seqlens.copy_(torch.tensor([0, 280 + i, 5 * W + 9 * i], device="cuda"))
            caches.append(c)
        return caches

    graph_caches, eager_caches = make_caches(), make_caches()
    static = [[torch.randn(B, h, 1, D, dtype=torch.bfloat16, device="cuda") for h in (Hq, Hkv, Hkv)]
              for Hq, Hkv, _ in layers]

    def step(caches, inputs):
        outs = []
        for (_, _, splits), c, x in zip(layers, caches, inputs):
            set_knobs(monkeypatch, SPLITS=splits)
            outs.append(c.attend(*x))
        return outs

    set_knobs(monkeypatch, GLOBAL_COMBINE="fused")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up step, on both sets of caches
        step(graph_caches, static)
    torch.cuda.current_stream().wait_stream(side)
    set_knobs(monkeypatch, GLOBAL_COMBINE="kernel")
    step(eager_caches, static)
    set_knobs(monkeypatch, GLOBAL_COMBINE="fused")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step(graph_caches, static)
    modes = [p[:3] for p in plans_of(capfd.readouterr().err)]
    assert modes[-4:] == [(n, "global", "fused") for _, _, n in layers], modes
    set_knobs(monkeypatch, GLOBAL_COMBINE="kernel")
    graph_outs, eager_outs = [], []
    for _ in range(100):
        new = refill(static)
        graph.replay()
        graph_outs.append([o.clone() for o in static_out])
        eager_outs.append(step(eager_caches, new))
    torch.cuda.synchronize()
    for i, (a, b) in enumerate(zip(graph_outs, eager_outs)):
        for layer, (x, y) in enumerate(zip(a, b)):
            assert torch.equal(x, y), (i, layer)
            assert not torch.isnan(x.float()).any(), (i, layer)
    for g, e in zip(graph_caches, eager_caches):
        assert torch.equal(g.keys, e.keys) and torch.equal(g.values, e.values)
        assert torch.equal(g.seqlens, e.seqlens)


def test_too_many_pairs_for_the_counters_falls_back_to_the_combine_kernel(monkeypatch, capfd):
    # 2049 rows x 8 KV heads = 16392 (row, KV head) pairs: more than a slice of counters holds
    # (16384), so a fused request runs the combine kernel (logged) and gives its bits.
    B, Hq, Hkv, D, W, S = 2049, 8, 8, 64, 60, 4
    case = random_ring(B, Hq, Hkv, D, W, S, torch.bfloat16, seed=2049)
    set_knobs(monkeypatch, COMBINE="global", SPLITS=2, VERBOSE=2)
    got = {}
    for mode in ("kernel", "fused"):
        set_knobs(monkeypatch, GLOBAL_COMBINE=mode)
        got[mode] = decode(case, W, S, capfd)
        expected = "kernel" if mode == "kernel" else "kernel, fused not available"
        assert [p[:3] for p in got[mode][4]] == [(2, "global", expected)]
    assert_same_bits(got["fused"], got["kernel"])
    check_against_reference(case, got["fused"], W, S, rows=[0, 1, 2, 3, 1000, 2047, 2048],
                            tol=2e-2)


MANY_STREAMS_SCRIPT = """
import math, re, sys, torch
import swaa_ext  # noqa: F401
q, k, v, kc, vc, seqlens, lengths, W, S = torch.load(sys.argv[1])
def decode():
    out, lse = torch.ops.swaa.ring_decode(q, k, v, kc.clone(), vc.clone(), seqlens, lengths, W, S,
                                          1 / math.sqrt(q.shape[-1]), 0)
    return out, lse
expected = decode()
streams = [torch.cuda.Stream() for _ in range(12)]
assert len({s.cuda_stream for s in streams}) == 12
results = []
for stream in streams:
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        results.append(decode())
torch.cuda.synchronize()
for out, lse in results:
    assert torch.equal(out, expected[0]) and torch.equal(lse, expected[1])
print("same bits on", len(results), "streams")
"""


def test_fused_combine_on_many_streams(tmp_path):
    # Each stream gets its own arrival counters; past the slices a device has
    # (SWAA_DECODE_ARRIVAL_SLICES=8 here, 32 by default), a stream falls back
    # to the combine kernel (logged).  Every stream's result has the combine
    # kernel's bits.  In a subprocess, so that the slices this uses up stay
    # available to the other tests.
    run = run_fused_in_subprocess(tmp_path, MANY_STREAMS_SCRIPT, (4, 16, 2, 128, 1500, 4), seed=5,
                                  splits=6, slices=8)
    assert "same bits on 12 streams" in run.stdout
    modes = [p[2] for p in plans_of(run.stderr)]
    assert len(modes) == 13 and set(modes) <= {"fused", "kernel, fused not available"}, modes
    # one slice per stream, 8 per device: the default stream and 7 new streams
    # fuse, the other 5 fall back to the kernel and give the same bits
    assert modes.count("fused") == 8


@pytest.mark.parametrize("tile,stages,balance", [(64, 3, 0), (32, 6, 1)])
def test_cuda_graph_fused_combine_matches_eager_kernel_combine(tile, stages, balance, monkeypatch,
                                                               capfd):
    # One decode step with the fused combine captured in a graph and replayed
    # 50 times (the counters must be back at zero after every replay) equals,
    # bit for bit, an eager twin that combines with the second kernel, while
    # the rows (at different positions) wrap around their rings.
    torch.manual_seed(21)
    B, Hq, Hkv, D, W, S = 3, 32, 8, 128, 300, 4
    set_knobs(monkeypatch, COMBINE="global", SPLITS=5, TILE=tile, STAGES=stages, VERBOSE=2,
              BALANCE=balance)
    graph_cache, eager_cache = twin_rings(B, Hkv, D, W, S, 22, [0, 280, 5 * W + 9])
    static = [torch.randn(B, h, 1, D, dtype=torch.bfloat16, device="cuda") for h in (Hq, Hkv, Hkv)]
    set_knobs(monkeypatch, GLOBAL_COMBINE="fused")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        warm = [t.clone() for t in static]
        graph_cache.attend(*warm)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = graph_cache.attend(*static)
    torch.cuda.synchronize()
    assert [p[2] for p in plans_of(capfd.readouterr().err)] == ["fused", "fused"]
    set_knobs(monkeypatch, GLOBAL_COMBINE="kernel")
    eager_cache.attend(*warm)
    for step in range(50):
        new = [torch.randn_like(t) for t in static]
        for s, n in zip(static, new):
            s.copy_(n)
        graph.replay()
        eager_out = eager_cache.attend(*new)
        assert torch.equal(static_out, eager_out), step
        assert not torch.isnan(static_out.float()).any(), step
    assert {p[2] for p in plans_of(capfd.readouterr().err)} == {"kernel"}
    assert graph_cache.seqlens.tolist() == [51, 280 + 51, 5 * W + 9 + 51]
    assert torch.equal(graph_cache.keys, eager_cache.keys)
    assert torch.equal(graph_cache.values, eager_cache.values)


CAPTURE_SLICES_SCRIPT = """
import math, sys, torch
import swaa_ext  # noqa: F401
q, k, v, kc, vc, seqlens, lengths, W, S = torch.load(sys.argv[1])
kc, vc = kc.clone(), vc.clone()
def decode():
    return torch.ops.swaa.ring_decode(q, k, v, kc, vc, seqlens, lengths, W, S,
                                      1 / math.sqrt(q.shape[-1]), 0)
expected = decode()                       # default stream, eager: slice 0
x, y = torch.cuda.Stream(), torch.cuda.Stream()
assert x.cuda_stream != y.cuda_stream
for s in (x, y):
    s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(x):
    eager_x = decode()                    # stream x, eager: slice 1
graphs = [torch.cuda.CUDAGraph() for _ in range(3)]
outs = []
with torch.cuda.graph(graphs[0], stream=x):
    outs.append(decode())                 # captured on x: its own slice 2, not x's eager slice
with torch.cuda.graph(graphs[1], stream=x):
    outs.append(decode())                 # captured on x again: the same capture slice 2
with torch.cuda.stream(y):
    eager_y = decode()                    # stream y, eager: no slice left, combine kernel
with torch.cuda.graph(graphs[2], stream=y):
    outs.append(decode())                 # captured on y: no slice left, combine kernel
torch.cuda.synchronize()
for _ in range(5):
    for g in graphs:
        g.replay()
torch.cuda.synchronize()
for out, lse in [eager_x, eager_y, *outs]:
    assert torch.equal(out, expected[0]) and torch.equal(lse, expected[1])
print("same bits, eager and 3 graphs")
"""


def test_captures_take_their_own_counter_slice(tmp_path):
    # Launches captured on a stream use another slice of counters than the eager launches on that
    # stream (so a pool stream that is also torch's capture stream never shares counters with
    # graphs), and every graph captured on one stream shares that capture slice.  Seen through the
    # fallback: with 3 slices, the default stream, stream x and the captures on x take them all,
    # so stream y (eager and captured) gets the combine kernel.  In a subprocess: the slices it
    # takes stay free for the other tests.
    run = run_fused_in_subprocess(tmp_path, CAPTURE_SLICES_SCRIPT, (3, 16, 2, 128, 700, 4), seed=6,
                                  splits=5, slices=3)
    assert "same bits, eager and 3 graphs" in run.stdout
    fallback = "kernel, fused not available"
    assert [p[2] for p in plans_of(run.stderr)] == ["fused"] * 4 + [fallback] * 2
