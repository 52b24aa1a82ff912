"""The decode kernel that takes its work from a queue (SWAA_DECODE_QUEUE=N: pieces of N key tiles
per (row, KV head), taken in turn by a persistent grid; each piece's partial in its own slot,
merged by the combine kernel in piece order): against the float64 reference, deterministic
whichever CTA takes which piece, the same bits in a CUDA graph replayed many times (its counter is
put back to 0 by the combine kernel), and the plans it does not take.  CUDA only (sm_90)."""
import math
import re

import pytest
import torch
from test_decode_fused import check_against_reference, random_ring, set_knobs

from swaa_ext import RingKVCache

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9,
                       reason="needs an sm_90 GPU (the bf16 / fp16 split decode kernel)"),
]

QUEUE = re.compile(r"-> queue of (\d+) items \((\d+) pieces of (\d+) tiles per row\), (\d+) CTAs")


def decode(case, W, S, capfd):
    """One ring_decode call on copies of the case's caches: (out, lse, k_cache, v_cache, plan
    lines)."""
    q, k, v, kc0, vc0, seqlens, lengths = case
    kc, vc = kc0.clone(), vc0.clone()
    capfd.readouterr()
    out, lse = torch.ops.swaa.ring_decode(q, k, v, kc, vc, seqlens, lengths, W, S,
                                          1 / math.sqrt(q.shape[-1]), 0)
    torch.cuda.synchronize()
    lines = [x for x in capfd.readouterr().err.splitlines() if x.startswith("swaa ring_decode:")]
    return out, lse, kc, vc, lines


@pytest.mark.parametrize("B,Hq,Hkv,D,W,S,dtype,piece", [
    (8, 32, 8, 128, 4096, 4, torch.bfloat16, 4),     # the B = 8 benchmark shape
    (8, 32, 8, 128, 1000, 4, torch.bfloat16, 1),     # one tile per piece
    (5, 32, 8, 128, 40, 300, torch.bfloat16, 2),     # sink > window
    (3, 16, 2, 64, 200, 300, torch.float16, 3),      # D = 64, 8 query heads per KV head
    (6, 16, 16, 128, 1000, 4, torch.bfloat16, 16),   # no GQA; pieces longer than most rows
    (1, 32, 8, 128, 4096, 4, torch.bfloat16, 4),
    (2, 32, 2, 128, 300, 4, torch.bfloat16, 2),      # 16 query heads per KV head
])
def test_queue_matches_the_reference(B, Hq, Hkv, D, W, S, dtype, piece, monkeypatch, capfd):
    case = random_ring(B, Hq, Hkv, D, W, S, dtype, seed=B * 100 + W + S + piece)
    set_knobs(monkeypatch, QUEUE=piece, VERBOSE=2)
    result = decode(case, W, S, capfd)
    (line,) = result[4]
    m = QUEUE.search(line)
    assert m, line
    pieces = -(-(W + S) // (64 * piece))
    assert (int(m[1]), int(m[2]), int(m[3])) == (B * Hkv * pieces, pieces, piece), line
    check_against_reference(case, result, W, S, range(B), tol=2e-2 if dtype == torch.bfloat16
                            else 4e-3)
    again = decode(case, W, S, capfd)
    for x, y in zip(result[:4], again[:4]):  # the same bits, whichever CTA took which piece
        assert torch.equal(x, y)


def test_queue_replays_in_a_cuda_graph(monkeypatch, capfd):
    # 60 replays of a graph of two queue decodes (two caches: the counter is used twice per
    # replay and must be back at 0 each time), each on new inputs, against eager twins.
    torch.manual_seed(5)
    B, Hq, Hkv, D, W, S = 8, 32, 8, 128, 1000, 4
    set_knobs(monkeypatch, QUEUE=2, VERBOSE=2)

    def make():
        caches = []
        for i in range(2):
            c = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
            g = torch.Generator(device="cpu").manual_seed(70 + i)
            c.keys.copy_(torch.randn(c.keys.shape, generator=g))
            c.values.copy_(torch.randn(c.values.shape, generator=g))
            c.seqlens.copy_(torch.arange(B, device="cuda") * 337 + i)
            caches.append(c)
        return caches

    graph_caches, eager_caches = make(), make()
    static = [torch.randn(B, h, 1, D, dtype=torch.bfloat16, device="cuda") for h in (Hq, Hkv, Hkv)]

    def step(caches, x):
        return [c.attend(*x) for c in caches]

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step(graph_caches, static)
    torch.cuda.current_stream().wait_stream(side)
    step(eager_caches, static)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step(graph_caches, static)
    assert sum(bool(QUEUE.search(x)) for x in capfd.readouterr().err.splitlines()) >= 2
    graph_outs, eager_outs = [], []
    for _ in range(60):
        new = [torch.randn_like(t) for t in static]
        for t, u in zip(static, new):
            t.copy_(u)
        graph.replay()
        graph_outs.append([o.clone() for o in static_out])
        eager_outs.append(step(eager_caches, new))
    torch.cuda.synchronize()
    for i, (a, b) in enumerate(zip(graph_outs, eager_outs)):
        for x, y in zip(a, b):
            assert torch.equal(x, y), i
            assert not torch.isnan(x.float()).any(), i
    for g, e in zip(graph_caches, eager_caches):
        assert torch.equal(g.keys, e.keys) and torch.equal(g.values, e.values)
        assert torch.equal(g.seqlens, e.seqlens)


@pytest.mark.parametrize("B,Hq,Hkv,knobs", [
    (2, 40, 2, {}),                          # 20 query heads per KV head: two head chunks
    (200, 32, 8, {}),                        # more batch rows than the kernel caches
    (8, 32, 8, {"SPLITS": 4}),               # a forced split count
    (8, 32, 8, {"GLOBAL_COMBINE": "fused"}),
    (8, 32, 8, {"COMBINE": "cluster"}),
])
def test_queue_leaves_the_plans_it_cannot_take(B, Hq, Hkv, knobs, monkeypatch, capfd):
    W, S, D = 500, 4, 128
    case = random_ring(B, Hq, Hkv, D, W, S, torch.bfloat16, seed=B + Hq)
    set_knobs(monkeypatch, QUEUE=4, VERBOSE=2, **knobs)
    result = decode(case, W, S, capfd)
    assert result[4] and not any(QUEUE.search(x) for x in result[4]), result[4]
    check_against_reference(case, result, W, S, range(min(B, 6)), tol=2e-2)
