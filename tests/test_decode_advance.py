"""decode4's knobs of the split decode's global combine (on by default since the H200 run of
session 6; the staged loads above 8 splits), each required to give the plain path's bits:

  SWAA_DECODE_COMBINE_LOADS=staged  the combine kernel stages the split lse values in shared
                                    memory and loads the partials ahead (same arithmetic, same
                                    order as combine_splits; plain: serial; default: auto,
                                    staged above kStagedBatch = 8 splits);
  SWAA_DECODE_ADVANCE=kernel        ring_decode(advance=True) advances seqlens inside the combine
                                    kernel (global plan) instead of a separate add (plain: op);
  SWAA_DECODE_PDL=1                 the combine kernel is a programmatic dependent launch (plain: 0).

Every combination against the plain path (serial, op, no PDL): out, lse, both caches and seqlens,
bit for bit, at B = 1, 8, 64, with padded rows, rows at different positions, wrapped rings and
sink > window; graph capture + replays against eager; failed calls.  CUDA only (sm_90 for the
bf16 / fp16 split kernel); the CPU side of `advance` is in tests/test_cache.py."""
import itertools
import math
import re

import pytest
import torch
from test_decode_fused import check_against_reference, random_ring, refill, twin_rings

from swaa_ext import RingKVCache

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                       reason="needs an sm_90 GPU (the bf16 / fp16 split decode kernel)"),
]

KNOBS = ("SWAA_DECODE_COMBINE_LOADS", "SWAA_DECODE_ADVANCE", "SWAA_DECODE_PDL")
PLAIN = ("serial", "op", "0")
COMBOS = list(itertools.product(("serial", "staged"), ("op", "kernel"), ("0", "1")))
PLAN = re.compile(r"-> (\d+) splits, (\w+) combine \((\w+)[^)]*\)")


def set_combo(monkeypatch, combo):
    for name, value in zip(KNOBS, combo):
        monkeypatch.setenv(name, value)


def decode(case, W, S, capfd, advance=True):
    """One ring_decode(advance) on copies of the case's caches and seqlens:
    (out, lse, k_cache, v_cache, seqlens after, verbose plan lines)."""
    q, k, v, kc0, vc0, seqlens0, lengths = case
    kc, vc, seqlens = kc0.clone(), vc0.clone(), seqlens0.clone()
    capfd.readouterr()
    out, lse = torch.ops.swaa.ring_decode(q, k, v, kc, vc, seqlens, lengths, W, S,
                                          1 / math.sqrt(q.shape[-1]), 0, advance)
    torch.cuda.synchronize()
    lines = [line for line in capfd.readouterr().err.splitlines()
             if line.startswith("swaa ring_decode:")]
    return out, lse, kc, vc, seqlens, lines


def assert_same_bits(a, b, what):
    for x, y, name in zip(a[:5], b[:5], ("out", "lse", "k_cache", "v_cache", "seqlens")):
        assert torch.equal(x, y), (what, name)


# (batch, window, sink, forced splits or None for the automatic plan, combine knob)
CASES = [
    (1, 1000, 4, None, None),        # the automatic plan (whichever it is)
    (1, 1000, 4, 1, "global"),       # one split: every partial is the whole row
    (1, 1000, 4, 5, "global"),
    (1, 1000, 4, 17, "global"),      # more splits than two load batches (8 each)
    (1, 40, 300, 6, "global"),       # sink > window
    (1, 4096, 4, None, None),        # issue 4's shape at B = 1 (H200: global, 33 splits)
    (1, 16384, 4, 200, "global"),    # more splits than threads (128): strided lse loads
    (1, 70000, 4, 1030, "global"),   # above kStagedMaxSplits (1024): staged falls back
    (8, 1000, 4, 4, "global"),
    (8, 1000, 4, 7, "global"),
    (8, 40, 300, 3, "global"),
    (8, 4096, 4, None, None),        # issue 4's shape at B = 8 (H200: global, 4 splits)
    (64, 1000, 4, 2, "global"),
    (64, 1000, 4, None, None),       # auto (a cluster expected: no combine kernel, the add)
    (8, 1000, 4, 3, "cluster"),      # a cluster plan: no second kernel
]


@pytest.mark.parametrize("batch,window,sink,splits,combine", CASES)
def test_every_knob_combination_gives_the_plain_bits(batch, window, sink, splits, combine,
                                                      monkeypatch, capfd):
    Hq, Hkv, D, W, S = 32, 8, 128, window, sink
    case = random_ring(batch, Hq, Hkv, D, W, S, torch.bfloat16, seed=batch * 1000 + W + S)
    monkeypatch.setenv("SWAA_DECODE_VERBOSE", "2")
    if splits is not None:
        monkeypatch.setenv("SWAA_DECODE_SPLITS", str(splits))
    if combine is not None:
        monkeypatch.setenv("SWAA_DECODE_COMBINE", combine)
    seqlens0, lengths = case[5], case[6]
    expected_seqlens = seqlens0 + lengths.clamp(0, 1)
    results = {}
    for combo in COMBOS:
        set_combo(monkeypatch, combo)
        results[combo] = result = decode(case, W, S, capfd)
        (line,) = result[5]
        n_splits, kind, mode = PLAN.search(line).groups()
        kernel_combine = kind == "global" and mode == "kernel"
        staged = combo[0] == "staged" and kernel_combine and int(n_splits) <= 1024
        assert (", staged loads" in line) == staged, line
        assert (", advances seqlens" in line) == (combo[1] == "kernel" and kernel_combine), line
        assert torch.equal(result[4], expected_seqlens), combo  # advanced exactly once
    for combo in COMBOS:
        assert_same_bits(results[combo], results[PLAIN], combo)
    plain = results[PLAIN]
    assert not torch.isnan(plain[0].float()).any()
    check_against_reference(case, plain[:4] + (None,), W, S, rows=range(min(batch, 6)),
                            tol=2e-2)


@pytest.mark.parametrize("combo", [c for c in COMBOS if c != PLAIN])
def test_advance_false_leaves_seqlens_alone(combo, monkeypatch, capfd):
    case = random_ring(8, 32, 8, 128, 1000, 4, torch.bfloat16, seed=5)
    monkeypatch.setenv("SWAA_DECODE_COMBINE", "global")
    monkeypatch.setenv("SWAA_DECODE_SPLITS", "4")
    set_combo(monkeypatch, combo)
    result = decode(case, 1000, 4, capfd, advance=False)
    assert torch.equal(result[4], case[5])


@pytest.mark.parametrize("combo", COMBOS)
def test_fused_combine_still_advances_once(combo, monkeypatch, capfd):
    # The fused combine has no second kernel: the add advances, once.
    case = random_ring(8, 32, 8, 128, 1000, 4, torch.bfloat16, seed=6)
    for name, value in (("COMBINE", "global"), ("SPLITS", "4"), ("GLOBAL_COMBINE", "fused"),
                        ("VERBOSE", "2")):
        monkeypatch.setenv(f"SWAA_DECODE_{name}", value)
    set_combo(monkeypatch, combo)
    result = decode(case, 1000, 4, capfd)
    (line,) = result[5]
    assert PLAN.search(line).group(3) == "fused" and "advances seqlens" not in line, line
    assert torch.equal(result[4], case[5] + case[6].clamp(0, 1))


def stream_steps(cache, steps, lengths):
    outs = []
    for q, k, v in steps:
        outs.append(cache.attend(q, k, v, lengths=lengths, return_lse=True))
    return outs


@pytest.mark.parametrize("combo", [c for c in COMBOS if c != PLAIN])
def test_streamed_steps_match_the_plain_path(combo, monkeypatch):
    # 30 eager decode steps through RingKVCache.attend (row 1 wraps the ring,
    # row 3 is past it; row 2 padded throughout, row 0 starts at 0) in the plain mode and
    # with the knobs: same outputs, caches and seqlens after every step.
    torch.manual_seed(30)
    B, Hq, Hkv, D, W, S = 4, 32, 8, 128, 200, 4  # 4 key tiles: 3 splits
    monkeypatch.setenv("SWAA_DECODE_COMBINE", "global")
    monkeypatch.setenv("SWAA_DECODE_SPLITS", "3")
    caches = twin_rings(B, Hkv, D, W, S, 31, [0, 190, 500, 1000])
    lengths = torch.tensor([1, 1, 0, 1], device="cuda")
    steps = [tuple(torch.randn(B, h, 1, D, dtype=torch.bfloat16, device="cuda")
                   for h in (Hq, Hkv, Hkv)) for _ in range(30)]
    for step in steps:
        set_combo(monkeypatch, PLAIN)
        want = caches[0].attend(*step, lengths=lengths, return_lse=True)
        set_combo(monkeypatch, combo)
        got = caches[1].attend(*step, lengths=lengths, return_lse=True)
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])
        assert torch.equal(caches[0].seqlens, caches[1].seqlens)
    assert caches[1].seqlens.tolist() == [30, 220, 500, 1030]
    assert torch.equal(caches[0].keys, caches[1].keys)
    assert torch.equal(caches[0].values, caches[1].values)


@pytest.mark.parametrize("combo", COMBOS)
@pytest.mark.parametrize("batch,splits", [(1, 33), (8, 4)])
def test_graph_replays_match_eager(combo, batch, splits, monkeypatch):
    # A decode step captured with the knobs, replayed 50 times (a new token
    # each), against an eager twin in the plain mode: the same bits every
    # step, and seqlens advanced exactly once per replay (the in-kernel
    # advance is a node of the graph).  One padded row, rows at different
    # positions, the ring wraps.
    torch.manual_seed(40 + batch)
    Hq, Hkv, D, W, S = 32, 8, 128, 2000, 4
    monkeypatch.setenv("SWAA_DECODE_COMBINE", "global")
    monkeypatch.setenv("SWAA_DECODE_SPLITS", str(splits))
    caches = [RingKVCache(batch, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
              for _ in range(2)]
    start = torch.tensor([W - 20, 9000, 0, 5, 3 * W, 17, 2 * W + 7, 1][:batch], device="cuda")
    for c in caches:
        torch.manual_seed(41)
        c.keys.normal_()
        c.values.normal_()
        c.seqlens.copy_(start)
    lengths = torch.ones(batch, dtype=torch.int64, device="cuda")
    if batch > 1:
        lengths[3] = 0
    graph_cache, eager_cache = caches
    static = [torch.randn(batch, h, 1, D, dtype=torch.bfloat16, device="cuda")
              for h in (Hq, Hkv, Hkv)]
    set_combo(monkeypatch, combo)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: one step on both, same inputs
        graph_cache.attend(*static, lengths=lengths)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = graph_cache.attend(*static, lengths=lengths)
    set_combo(monkeypatch, PLAIN)  # the graph keeps its capture's knobs
    eager_cache.attend(*static, lengths=lengths)  # the warm-up's twin
    assert torch.equal(graph_cache.seqlens, eager_cache.seqlens)  # capture ran nothing
    for step in range(50):
        new = [torch.randn_like(t) for t in static]
        for s, n in zip(static, new):
            s.copy_(n)
        graph.replay()
        eager_out = eager_cache.attend(*new, lengths=lengths)
        assert torch.equal(static_out, eager_out), step
        assert torch.equal(graph_cache.seqlens, eager_cache.seqlens), step
    assert torch.equal(graph_cache.seqlens, start + 51 * lengths)
    assert torch.equal(graph_cache.keys, eager_cache.keys)
    assert torch.equal(graph_cache.values, eager_cache.values)


@pytest.mark.parametrize("advance_mode", ["op", "kernel"])
def test_failed_call_leaves_seqlens_unchanged(advance_mode, monkeypatch):
    # A call that raises (bad shape) writes nothing in either mode: the next
    # valid call gives the right answer and advances once (issue 4).
    torch.manual_seed(50)
    B, Hq, Hkv, D, W, S = 2, 32, 8, 128, 1000, 4
    monkeypatch.setenv("SWAA_DECODE_ADVANCE", advance_mode)
    monkeypatch.setenv("SWAA_DECODE_COMBINE", "global")
    monkeypatch.setenv("SWAA_DECODE_SPLITS", "4")
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
    twin = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
    mk = lambda h: torch.randn(B, h, 1, D, dtype=torch.bfloat16, device="cuda")  # noqa: E731
    for c in (cache, twin):
        c.attend(mk(Hq), mk(Hkv), mk(Hkv))
    twin.keys.copy_(cache.keys)
    twin.values.copy_(cache.values)
    before = (cache.keys.clone(), cache.values.clone(), cache.seqlens.clone())
    q, k, v = mk(Hq), mk(Hkv), mk(Hkv)
    with pytest.raises(ValueError, match="q heads"):
        torch.ops.swaa.ring_decode(q[:, :7], k, v, cache.keys, cache.values, cache.seqlens, None,
                                   W, S, 0.1, 0, True)
    with pytest.raises(ValueError, match="lengths must have shape"):
        torch.ops.swaa.ring_decode(q, k, v, cache.keys, cache.values, cache.seqlens,
                                   torch.ones(3, dtype=torch.int64, device="cuda"), W, S, 0.1, 0,
                                   True)
    with pytest.raises(ValueError):
        cache.attend(q, k[:, :, :, :64], v)
    # The checks after prepare_ring (num_splits, check_cuda_support) also run
    # before any launch (review_decode4 finding 7).
    with pytest.raises(ValueError, match="num_splits"):
        torch.ops.swaa.ring_decode(q, k, v, cache.keys, cache.values, cache.seqlens, None,
                                   W, S, 0.1, -1, True)
    torch.cuda.synchronize()
    for a, b in zip((cache.keys, cache.values, cache.seqlens), before):
        assert torch.equal(a, b)
    odd = RingKVCache(B, Hkv, 96, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
    odd.keys.normal_()
    odd.values.normal_()
    odd.seqlens.fill_(7)
    odd_before = (odd.keys.clone(), odd.values.clone(), odd.seqlens.clone())
    mk96 = lambda h: torch.randn(B, h, 1, 96, dtype=torch.bfloat16, device="cuda")  # noqa: E731
    with pytest.raises(ValueError, match=r"head dim \(D\) must be 64 or 128"):
        torch.ops.swaa.ring_decode(mk96(Hq), mk96(Hkv), mk96(Hkv), odd.keys, odd.values,
                                   odd.seqlens, None, W, S, 0.1, 0, True)
    torch.cuda.synchronize()
    for a, b in zip((odd.keys, odd.values, odd.seqlens), odd_before):
        assert torch.equal(a, b)
    monkeypatch.setenv("SWAA_DECODE_ADVANCE", "op")
    want = twin.attend(q, k, v)
    monkeypatch.setenv("SWAA_DECODE_ADVANCE", advance_mode)
    got = cache.attend(q, k, v)
    assert torch.equal(got, want)
    assert cache.seqlens.tolist() == [2, 2] == twin.seqlens.tolist()


def bits(t):
    """t's raw bits (NaN == NaN when the payloads match): torch.equal is False on NaN."""
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("poison", ["inf_value", "nan_value", "nan_key"])
def test_zero_weight_split_with_non_finite_partial(dtype, poison, monkeypatch, capfd):
    # The `w > 0` skip of the combine (review_decode4 finding 1): a split whose
    # weight exp2(lse_s - m) underflows to 0 while its partial is inf or NaN
    # must be skipped, not fused (fma(0, inf, o) is NaN).  One row at a full
    # ring, q = 4, the 4 sink keys = 4 (split 0, ~261 log2 units above every
    # other key: the other splits' weights are exactly 0), the other keys
    # small.  inf_value / nan_value: the value of position seqlens - 2 (the
    # last non-empty split: 1005 keys, 5 splits of 4 tiles, split 4 empty) is
    # inf / NaN, so that split's partial is non-finite and its weight 0; the
    # output stays finite (the mean of the sink values).  nan_key: a NaN key in
    # split 1 gives that split a NaN lse and partial; the maximum keeps the NaN
    # (max_keep_nan), so every weight is NaN (each skipped by `w > 0`) and so is
    # the weight sum: out and lse are NaN, as in swa_attention (before this
    # session the split kernel counted a NaN sum as "nothing seen" and the
    # combine dropped the split: a finite result).  serial, staged and the
    # fused combine: the same bits.
    B, Hq, Hkv, D, W, S = 1, 1, 1, 128, 1000, 4
    position = 7 * (S + W)
    g = torch.Generator(device="cuda").manual_seed(60)
    mk = lambda *s: torch.randn(*s, generator=g, device="cuda")  # noqa: E731
    kc = (0.1 * mk(B, Hkv, S + W, D)).to(dtype)
    vc = mk(B, Hkv, S + W, D).to(dtype)
    kc[:, :, :S] = 4
    q = torch.full((B, Hq, 1, D), 4.0, device="cuda").to(dtype)
    k, v = (0.1 * mk(B, Hkv, 1, D)).to(dtype), mk(B, Hkv, 1, D).to(dtype)
    slot = lambda t: t if t < S else S + (t - S) % W  # noqa: E731
    if poison == "inf_value":
        vc[0, 0, slot(position - 2)] = float("inf")
    elif poison == "nan_value":
        vc[0, 0, slot(position - 2)] = float("nan")
    else:
        kc[0, 0, slot(position - 500), 7] = float("nan")  # key 503 of 1005: split 1
    case = (q, k, v, kc, vc, torch.tensor([position], device="cuda"),
            torch.ones(B, dtype=torch.int64, device="cuda"))
    monkeypatch.setenv("SWAA_DECODE_VERBOSE", "2")
    monkeypatch.setenv("SWAA_DECODE_COMBINE", "global")
    monkeypatch.setenv("SWAA_DECODE_SPLITS", "5")
    results = {}
    for name, loads, combine in (("serial", "serial", "kernel"), ("staged", "staged", "kernel"),
                                 ("fused", "serial", "fused")):
        monkeypatch.setenv("SWAA_DECODE_COMBINE_LOADS", loads)
        monkeypatch.setenv("SWAA_DECODE_GLOBAL_COMBINE", combine)
        results[name] = result = decode(case, W, S, capfd, advance=False)
        (line,) = result[5]
        n_splits, kind, mode = PLAN.search(line).groups()
        assert (int(n_splits), kind, mode) == (5, "global", combine), line
        assert (", staged loads" in line) == (loads == "staged"), line
    serial = results["serial"]
    for name in ("staged", "fused"):
        for x, y, what in zip(results[name][:4], serial[:4], ("out", "lse", "k_cache", "v_cache")):
            assert torch.equal(bits(x), bits(y)), (name, what)
    out, lse = serial[0], serial[1]
    if poison == "nan_key":
        assert torch.isnan(lse).all() and torch.isnan(out).all(), "a NaN key must make the row NaN"
    else:  # the poisoned split was skipped: only the sinks count
        assert torch.isfinite(out).all() and torch.isfinite(lse).all()
        torch.testing.assert_close(out.float(), vc[:, :, :S].float().mean(2, keepdim=True),
                                   atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_staged_equals_serial_for_every_split_count(dtype, head_dim, monkeypatch, capfd):
    # staged == eager == serial bit for bit for splits 1..33, 64, 129 and 200 (brief
    # decode4; review_decode4 finding 2), and the default (auto, unset or
    # named) picks staged exactly above 8 splits and eager at or below: both
    # dtypes, D = 64 (threads 64-127 own no output, thread 0's weight sum gives
    # the lse) and 128, exactly one
    # load batch (8 = kStagedBatch), several, and their tails.  B = 2, the
    # second row padded; W = 16000 (250 key tiles) so no split count is
    # clamped.  The op writes the same new key into the same slot on every
    # call, so the calls share the caches (advance=False: seqlens stays).
    Hq, Hkv, W, S = 32, 8, 16000, 4
    q, k, v, kc, vc, seqlens, lengths = random_ring(2, Hq, Hkv, head_dim, W, S, dtype,
                                                     seed=head_dim + 7 * (dtype == torch.half))
    monkeypatch.setenv("SWAA_DECODE_VERBOSE", "2")
    monkeypatch.setenv("SWAA_DECODE_COMBINE", "global")
    scale = 1 / math.sqrt(head_dim)
    for splits in [*range(1, 34), 64, 129, 200]:
        monkeypatch.setenv("SWAA_DECODE_SPLITS", str(splits))
        got = {}
        for loads in ("serial", "staged", "eager", "auto", None):  # None: unset, the default
            if loads is None:
                monkeypatch.delenv("SWAA_DECODE_COMBINE_LOADS", raising=False)
            else:
                monkeypatch.setenv("SWAA_DECODE_COMBINE_LOADS", loads)
            capfd.readouterr()
            got[loads] = torch.ops.swaa.ring_decode(q, k, v, kc, vc, seqlens, lengths, W, S,
                                                    scale, 0, False)
            torch.cuda.synchronize()
            (line,) = [x for x in capfd.readouterr().err.splitlines()
                       if x.startswith("swaa ring_decode:")]
            n_splits, kind, mode = PLAN.search(line).groups()
            assert (int(n_splits), kind, mode) == (splits, "global", "kernel"), line
            # auto: staged above kStagedBatch (8) splits only (one load batch saves nothing)
            staged = loads == "staged" or (loads in ("auto", None, "eager") and splits > 8)
            assert (", staged loads" in line) == staged, (loads, line)
            # eager (and auto, the default, since session 19): every load at once up to 8
            # splits; staged above
            eager = loads in ("eager", "auto", None) and splits <= 8
            assert (", eager loads" in line) == eager, (loads, line)
        for loads in ("staged", "eager", "auto", None):
            for x, y, what in zip(got["serial"], got[loads], ("out", "lse")):
                assert torch.equal(x, y), (splits, loads, what)
        out, lse = got["serial"]
        assert torch.isfinite(out[0]).all() and torch.all(out[1] == 0), splits
        assert torch.all(torch.isneginf(lse[1])), splits


# decode5: SWAA_DECODE_TILE_GATHER=1 (default) computes one slot per tile of window keys in
# consecutive slots; 0 keeps one per key.  Same bytes to the same places: same bits, including
# rings with window 1 and 3 (no tile fits), sink > window, tiling 32 x 4 and balanced splits
# (tiles that straddle a wrap or the sink / window boundary at other offsets), the cluster plan
# and a never-wrapping long ring.
TILE_GATHER_CASES = [
    # (batch, window, sink, splits, combine, extra knobs)
    (1, 1, 0, 1, "global", {}),
    (2, 3, 5, 2, "global", {}),
    (1, 1000, 4, None, None, {}),
    (1, 4096, 4, None, None, {}),
    (8, 4096, 4, None, None, {}),
    (8, 4096, 4, None, None, {"SWAA_DECODE_BALANCE": "1"}),
    (8, 1000, 4, 5, "global", {"SWAA_DECODE_TILE": "32", "SWAA_DECODE_STAGES": "4"}),
    (8, 40, 300, 3, "global", {}),
    (8, 200, 300, 3, "global", {}),  # sink > window with whole tiles of window keys
    (8, 1000, 4, 3, "cluster", {}),
    (8, 1000, 130, 4, "global", {"SWAA_DECODE_GLOBAL_COMBINE": "fused"}),
    (64, 1000, 4, None, None, {}),
]


def set_plan(monkeypatch, splits, combine, extra):
    """A TILE_GATHER_CASES case's plan knobs, and the plan line printed at every launch."""
    monkeypatch.setenv("SWAA_DECODE_VERBOSE", "2")
    if splits is not None:
        monkeypatch.setenv("SWAA_DECODE_SPLITS", str(splits))
    if combine is not None:
        monkeypatch.setenv("SWAA_DECODE_COMBINE", combine)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("batch,window,sink,splits,combine,extra", TILE_GATHER_CASES)
@pytest.mark.parametrize("D,dtype", [(128, torch.bfloat16), (64, torch.float16)])
def test_tile_gather_gives_the_per_key_bits(batch, window, sink, splits, combine, extra, D, dtype,
                                            monkeypatch, capfd):
    Hq, Hkv, W, S = 32, 8, window, sink
    case = random_ring(batch, Hq, Hkv, D, W, S, dtype, seed=7 * batch + W + 3 * S + D)
    set_plan(monkeypatch, splits, combine, extra)
    results = {}
    for gather in ("0", "1"):
        monkeypatch.setenv("SWAA_DECODE_TILE_GATHER", gather)
        results[gather] = result = decode(case, W, S, capfd)
        (line,) = result[5]
        assert (", per-key gather" in line) == (gather == "0"), line
    assert_same_bits(results["1"], results["0"], "tile gather")
    check_against_reference(case, results["1"][:4] + (None,), W, S, rows=range(min(batch, 6)),
                            tol=2e-2)


@pytest.mark.parametrize("batch,window,sink,splits,combine,extra", TILE_GATHER_CASES)
@pytest.mark.parametrize("D,dtype", [(128, torch.bfloat16), (64, torch.float16)])
def test_l2_prefetch_gives_the_same_bits(batch, window, sink, splits, combine, extra, D, dtype,
                                         monkeypatch, capfd):
    """SWAA_DECODE_PREFETCH=N (bulk L2 prefetches of tiles ahead of the cp.async stages) moves
    no data the kernel reads: the same bits as 0 for every plan of the tile-gather cases, and
    the plan line shows the distance that ran."""
    Hq, Hkv, W, S = 32, 8, window, sink
    case = random_ring(batch, Hq, Hkv, D, W, S, dtype, seed=11 * batch + W + 5 * S + D)
    set_plan(monkeypatch, splits, combine, extra)
    results = {}
    for distance in ("0", "1", "3"):
        monkeypatch.setenv("SWAA_DECODE_PREFETCH", distance)
        results[distance] = result = decode(case, W, S, capfd)
        (line,) = result[5]
        assert f"L2 prefetch {distance})" in line, line
    assert_same_bits(results["1"], results["0"], "L2 prefetch 1")
    assert_same_bits(results["3"], results["0"], "L2 prefetch 3")


@pytest.mark.parametrize("batch,window,sink,splits,combine,extra", TILE_GATHER_CASES)
@pytest.mark.parametrize("D,dtype", [(128, torch.bfloat16), (64, torch.float16)])
def test_lead_gives_the_same_bits(batch, window, sink, splits, combine, extra, D, dtype,
                                  monkeypatch, capfd):
    """SWAA_DECODE_LEAD=N (the split kernel as a programmatic dependent of the kernel before it,
    with N tiles prefetched into L2 before its wait): the same bits as a launch in stream order
    (-1) for every plan of the tile-gather cases, and the plan line names what ran."""
    case = random_ring(batch, 32, 8, D, window, sink, dtype, seed=13 * batch + window + sink + D)
    set_plan(monkeypatch, splits, combine, extra)
    results = {}
    for lead, name in (("-1", "stream order"), ("0", "lead 0 tiles"), ("1", "lead 1 tiles"),
                       ("2", "lead 2 tiles"), ("16", "lead 16 tiles")):
        monkeypatch.setenv("SWAA_DECODE_LEAD", lead)
        results[lead] = result = decode(case, window, sink, capfd)
        (line,) = result[5]
        assert f", {name}, L2 prefetch" in line, line
    for lead in ("0", "1", "2", "16"):
        assert_same_bits(results[lead], results["-1"], f"lead {lead}")


@pytest.mark.parametrize("batch,expected", [
    (8, "lead 1 tiles"),    # one wave of 256 CTAs of 17 tiles: the first tile is prefetched
    (1, "lead 0 tiles"),    # 33 splits of 2 tiles: no prefetch (0.988x behind a GEMM)
    (64, "lead 0 tiles"),   # 512 CTAs, two waves on a 132-SM part: no prefetch
])
def test_default_lead_follows_the_plan(batch, expected, monkeypatch, capfd):
    """SWAA_DECODE_LEAD unset: the launch takes swaa::default_decode_lead's choice for issue 4's
    shape (W = 4096, S = 4, Hq = 32, Hkv = 8, D = 128; the plans of an H100 / H200), and the
    result has the bits of a launch in stream order."""
    if torch.cuda.get_device_properties(0).multi_processor_count != 132:
        pytest.skip("the expected plans are those of a 132-SM part (H100 / H200)")
    W, S = 4096, 4
    case = random_ring(batch, 32, 8, 128, W, S, torch.bfloat16, seed=70 + batch)
    monkeypatch.setenv("SWAA_DECODE_VERBOSE", "2")
    monkeypatch.delenv("SWAA_DECODE_LEAD", raising=False)
    got = decode(case, W, S, capfd)
    (line,) = got[5]
    assert f", {expected}, L2 prefetch" in line, line
    monkeypatch.setenv("SWAA_DECODE_LEAD", "-1")
    assert_same_bits(got, decode(case, W, S, capfd), "default lead")


LEAD_PLANS = [  # (splits, combine, extra knobs): each way a step can end before the next one
    (4, "global", {}),                                         # combine kernel, advances seqlens
    (3, "cluster", {}),                                        # one kernel, then the add
    (4, "global", {"SWAA_DECODE_GLOBAL_COMBINE": "fused"}),    # the last CTA combines
    (4, "global", {"SWAA_DECODE_ADVANCE": "op", "SWAA_DECODE_PDL": "0"}),
]


@pytest.mark.parametrize("splits,combine,extra", LEAD_PLANS)
def test_lead_graph_of_back_to_back_steps_matches_eager(splits, combine, extra, monkeypatch):
    """One graph of six steps, the same cache stepped three times in a row and a second cache
    in between, captured with SWAA_DECODE_LEAD=3: each split kernel may start while the step
    before it finishes, and the step before may be the same cache's (it writes the slot and
    advances the position this one reads).  Replayed 20 times against eager twins stepped in
    stream order: the same bits at every step, and the same caches and positions."""
    torch.manual_seed(50)
    B, Hq, Hkv, D, W, S = 8, 32, 8, 128, 700, 4
    monkeypatch.setenv("SWAA_DECODE_SPLITS", str(splits))
    monkeypatch.setenv("SWAA_DECODE_COMBINE", combine)
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    starts = [W - 2, 9000, 0, 5, 3 * W, 17, 2 * W + 7, 1]
    a_graph, a_eager = twin_rings(B, Hkv, D, W, S, 51, starts)
    b_graph, b_eager = twin_rings(B, Hkv, D, W, S, 52, starts[::-1])
    lengths = torch.ones(B, dtype=torch.int64, device="cuda")
    lengths[3] = 0
    order = [0, 0, 0, 1, 0, 1]  # cache a three times back to back, then a, b alternate
    static = [[torch.randn(B, h, 1, D, dtype=torch.bfloat16, device="cuda")
               for h in (Hq, Hkv, Hkv)] for _ in order]
    graph_caches, eager_caches = (a_graph, b_graph), (a_eager, b_eager)

    def steps(caches, inputs):
        return [caches[c].attend(*x, lengths=lengths, return_lse=True)
                for c, x in zip(order, inputs)]

    monkeypatch.setenv("SWAA_DECODE_LEAD", "3")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up
        steps(graph_caches, static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_outs = steps(graph_caches, static)
    monkeypatch.setenv("SWAA_DECODE_LEAD", "-1")  # the graph keeps its capture's launches
    steps(eager_caches, static)  # the warm-up's twin
    for replay in range(20):
        new = refill(static)
        graph.replay()
        want = steps(eager_caches, new)
        for i, ((out, lse), (out_e, lse_e)) in enumerate(zip(static_outs, want)):
            assert torch.equal(out, out_e) and torch.equal(lse, lse_e), (replay, i)
    for g, e in zip(graph_caches, eager_caches):
        assert torch.equal(g.seqlens, e.seqlens)
        assert torch.equal(g.keys, e.keys) and torch.equal(g.values, e.values)
    assert a_graph.seqlens.tolist() == [s + 21 * 4 * n
                                        for s, n in zip(starts, lengths.tolist())]


def test_lead_after_a_prefill_chunk_waits_for_it(monkeypatch):
    """Eager streaming with SWAA_DECODE_LEAD=4: chunks of 1, 70 and 5 positions (the chunk
    kernels write the ring that the next decode's split kernel reads once its wait returns)
    against a twin in stream order: the same outputs, caches and positions after every chunk."""
    torch.manual_seed(60)
    B, Hq, Hkv, D, W, S = 4, 32, 8, 128, 300, 4
    twins = twin_rings(B, Hkv, D, W, S, 61, [0, 290, 1000, 5])
    for n in (1, 1, 70, 1, 1, 5, 1, 1, 300, 1, 1):
        q = torch.randn(B, Hq, n, D, dtype=torch.bfloat16, device="cuda")
        k = torch.randn(B, Hkv, n, D, dtype=torch.bfloat16, device="cuda")
        v = torch.randn(B, Hkv, n, D, dtype=torch.bfloat16, device="cuda")
        outs = []
        for cache, lead in zip(twins, ("-1", "4")):
            monkeypatch.setenv("SWAA_DECODE_LEAD", lead)
            outs.append(cache.attend(q, k, v, return_lse=True))
        assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1]), n
        assert torch.equal(twins[0].seqlens, twins[1].seqlens)
    assert torch.equal(twins[0].keys, twins[1].keys)
    assert torch.equal(twins[0].values, twins[1].values)


def test_tile_gather_over_a_long_never_wrapping_ring(monkeypatch):
    # how generate decodes a full-attention layer: window = the history, sink 0, every slot read
    B, Hq, Hkv, D, L = 2, 32, 8, 128, 32768
    caches = twin_rings(B, Hkv, D, L, 0, 5, [L - 1, 20000])
    q = torch.randn(B, Hq, 1, D, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, Hkv, 1, D, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(B, Hkv, 1, D, dtype=torch.bfloat16, device="cuda")
    outs = []
    for cache, gather in zip(caches, ("0", "1")):
        monkeypatch.setenv("SWAA_DECODE_TILE_GATHER", gather)
        outs.append(cache.attend(q, k, v))
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(caches[0].keys, caches[1].keys)
    assert torch.equal(caches[0].values, caches[1].values)
    assert torch.equal(caches[0].seqlens, caches[1].seqlens)


@pytest.mark.parametrize("batch,window,sink,splits,combine,extra", [
    (8, 4096, 4, None, None, {}),                       # the automatic plan: global, 4 splits
    (8, 1000, 4, 3, "cluster", {}),                     # no combine kernel
    (2, 1000, 130, 4, "global", {"SWAA_DECODE_GLOBAL_COMBINE": "fused"}),
])
def test_decode_trace_times_every_cta_and_changes_nothing(batch, window, sink, splits, combine,
                                                          extra, monkeypatch, capfd):
    """SWAA_DECODE_TRACE=1 (bench/trace_decode.py).  In a build with SWAA_DECODE_TRACE_BUILD=ON:
    the same bits as without it, and a timeline with one entry per CTA of the launch, each CTA's
    points in order, a combine CTA per (row, query head) released after every split CTA has
    written (the combine kernel waits for the split grid).  In any other build the knob is an
    error that names the build option, and the cache is left as it was."""
    import swaa_ext
    from swaa_ext import _C

    Hq, Hkv, D = 32, 8, 128
    case = random_ring(batch, Hq, Hkv, D, window, sink, torch.bfloat16, seed=batch + window)
    set_plan(monkeypatch, splits, combine, extra)
    plain = decode(case, window, sink, capfd)
    monkeypatch.setenv("SWAA_DECODE_TRACE", "1")
    if not swaa_ext.build_info()["decode_trace"]:
        q, k, v, kc0, vc0, seqlens0, lengths = case
        kc, vc, seqlens = kc0.clone(), vc0.clone(), seqlens0.clone()
        with pytest.raises(RuntimeError, match="SWAA_DECODE_TRACE_BUILD=ON"):
            torch.ops.swaa.ring_decode(q, k, v, kc, vc, seqlens, lengths, window, sink,
                                       1 / math.sqrt(D), 0, True)
        with pytest.raises(RuntimeError, match="SWAA_DECODE_TRACE_BUILD=ON"):
            _C.decode_trace()
        torch.cuda.synchronize()
        assert torch.equal(kc, kc0) and torch.equal(vc, vc0) and torch.equal(seqlens, seqlens0)
        return
    traced = decode(case, window, sink, capfd)
    assert_same_bits(traced, plain, "trace")
    n_splits = int(re.search(r"-> (\d+) splits", plain[5][0]).group(1))
    flat = _C.decode_trace()
    slots, max_ctas = 8, 8192
    rows = [flat[i * slots:(i + 1) * slots] for i in range(2 * max_ctas)]
    split = [r for r in rows[:max_ctas] if r[0]]
    comb = [r for r in rows[max_ctas:] if r[0]]
    assert len(split) == n_splits * Hkv * batch  # one head chunk: 4 query heads per KV head
    for start, first, loop, written, sm, tiles, released, *_ in split:
        assert sm < torch.cuda.get_device_properties(0).multi_processor_count
        if tiles:
            assert start <= released <= first <= loop <= written, (start, released, first, loop)
        else:
            assert first == 0 and start <= released <= loop <= written
    kernel_combine = "combine (kernel" in plain[5][0]
    assert len(comb) == (batch * Hq if kernel_combine else 0)
    last_written = max(r[3] for r in split)
    for start, released, written, sm, *_ in comb:
        assert start <= released <= written and released >= last_written
