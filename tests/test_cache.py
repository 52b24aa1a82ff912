"""RingKVCache and the swaa::ring_* ops against swa_attention over the whole history."""
import math
import random

import pytest
import torch

import swaa_ext
from swaa_ext import RingKVCache, swa_attention
from swaa_ext.reference import reference_attention

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def chunk_sizes(window, count, seed):
    rng = random.Random(seed)
    menu = [1, 2, 3, window, window + 3, 2 * window + 1, 1, 1]
    return [rng.choice(menu) for _ in range(count)]


def stream_and_compare(batch, q_heads, kv_heads, head_dim, window, sink, sizes, dtype, device,
                       check):
    """Streams chunks of the given sizes through a cache and checks every chunk's
    output against attention over the concatenated history (check(out, q, K, V))."""
    cache = RingKVCache(batch, kv_heads, head_dim, window=window, sink=sink, dtype=dtype,
                        device=device)
    keys, values = [], []
    for lc in sizes:
        q = torch.randn(batch, q_heads, lc, head_dim, dtype=dtype, device=device)
        k = torch.randn(batch, kv_heads, lc, head_dim, dtype=dtype, device=device)
        v = torch.randn(batch, kv_heads, lc, head_dim, dtype=dtype, device=device)
        keys.append(k)
        values.append(v)
        out = cache.attend(q, k, v)
        check(out, q, torch.cat(keys, 2), torch.cat(values, 2))
    total = sum(sizes)
    assert cache.seqlens.tolist() == [total] * batch
    return cache


@pytest.mark.parametrize("window,sink", [(1, 0), (1, 3), (4, 0), (4, 2), (5, 9), (16, 4), (7, 1)])
@pytest.mark.parametrize("q_heads,kv_heads", [(2, 2), (4, 1), (6, 2)])
def test_stream_matches_swa_attention_cpu(window, sink, q_heads, kv_heads):
    torch.manual_seed(window * 100 + sink * 10 + q_heads)
    sizes = chunk_sizes(window, 10, seed=window + 7 * sink + q_heads)

    def check(out, q, K, V):
        ref = swa_attention(q, K, V, window=window, sink=sink)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)

    stream_and_compare(2, q_heads, kv_heads, 16, window, sink, sizes, torch.float32, "cpu", check)


def test_stream_long_chunk_and_head_dim_64_cpu():
    # One chunk far longer than the window (streaming prefill), then decode.
    torch.manual_seed(1)

    def check(out, q, K, V):
        ref = reference_attention(q, K, V, window=37, sink=3)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)

    stream_and_compare(1, 8, 2, 64, 37, 3, [200, 1, 1, 97, 1, 40], torch.float32, "cpu", check)


def test_lse_matches_cpu():
    torch.manual_seed(2)
    cache = RingKVCache(2, 2, 16, window=6, sink=2, dtype=torch.float32, device="cpu")
    ks, vs = [], []
    for lc in (9, 1, 4, 1):
        q, k, v = torch.randn(2, 4, lc, 16), torch.randn(2, 2, lc, 16), torch.randn(2, 2, lc, 16)
        ks.append(k), vs.append(v)
        out, lse = cache.attend(q, k, v, return_lse=True)
        ref, ref_lse = swa_attention(q, torch.cat(ks, 2), torch.cat(vs, 2), window=6, sink=2,
                                     return_lse=True)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=2e-5)


def test_softmax_scale_and_float64_cpu():
    torch.manual_seed(3)
    cache = RingKVCache(1, 1, 8, window=3, sink=1, dtype=torch.float64, device="cpu")
    ks, vs = [], []
    for lc in (5, 1, 1, 2):
        q, k, v = (torch.randn(1, h, lc, 8, dtype=torch.float64) for h in (2, 1, 1))
        ks.append(k), vs.append(v)
        out = cache.attend(q, k, v, softmax_scale=0.3)
        ref = reference_attention(q, torch.cat(ks, 2), torch.cat(vs, 2), window=3, sink=1,
                                  softmax_scale=0.3)
        # the scale travels as float32 (as in swa_attention): 1e-6, not 1e-12
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("num_splits", [1, 2, 3, 7, 64])
def test_decode_splits_combine_cpu(num_splits):
    # The flash-decoding split of the window must not change the result.
    torch.manual_seed(4)
    B, Hq, Hkv, D, W, S = 2, 4, 2, 16, 150, 3
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.float32, device="cpu")
    history = 400
    k0, v0 = torch.randn(B, Hkv, history, D), torch.randn(B, Hkv, history, D)
    cache.attend(torch.randn(B, Hq, history, D), k0, v0)
    q, k, v = torch.randn(B, Hq, 1, D), torch.randn(B, Hkv, 1, D), torch.randn(B, Hkv, 1, D)
    kc, vc = cache.keys.clone(), cache.values.clone()
    out, lse = torch.ops.swaa.ring_decode(q, k, v, kc, vc, cache.seqlens, None, W, S,
                                          1 / math.sqrt(D), num_splits)
    ref, ref_lse = swa_attention(q, torch.cat([k0, k], 2), torch.cat([v0, v], 2), window=W,
                                 sink=S, return_lse=True)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=2e-5)
    slot = S + (history - S) % W  # the new key's slot, written in place
    torch.testing.assert_close(kc[:, :, slot], k[:, :, 0], atol=0, rtol=0)
    torch.testing.assert_close(vc[:, :, slot], v[:, :, 0], atol=0, rtol=0)


def nan_key_propagates(device, dtype, nan_position, decode_variants, monkeypatch):
    """A NaN in one cached key makes exactly the outputs (and lse) of the queries
    that see it NaN, as in swa_attention / SDPA: the kernels must not drop it as
    "nothing seen" (a zero output) or through a NaN-skipping maximum in the
    split combine.  Streams chunks and then decode steps, each step under the
    next of `decode_variants` ((num_splits, env) pairs), past the step where a
    window position leaves the window (its outputs turn finite again); a sink
    position stays visible for good."""
    torch.manual_seed(31 + nan_position)
    B, Hq, Hkv, D, W, S = 2, 4, 2, 64, 300, 2
    scale = 1 / math.sqrt(D)
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=dtype, device=device)

    def check(out, lse, first):
        lc = out.shape[2]
        pos = torch.arange(first, first + lc, device=device)
        sees = (nan_position <= pos) & ((pos - nan_position < W) | (nan_position < S))
        want = torch.zeros(B, Hq, lc, dtype=torch.bool, device=device)
        want[0, 2:] = sees  # row 0, KV head 1 (query heads 2 and 3)
        assert torch.equal(lse.isnan(), want), (first, lc)
        assert torch.equal(out.isnan().all(-1), want), (first, lc)
        assert torch.isfinite(out[~want]).all(), (first, lc)
        return bool(sees.any()), bool((~sees).any())

    seen_nan = seen_finite = False
    steps = [150, 1, 1, 1, 1, 240] + [1] * 10  # the decode steps at 394..403 cross 400
    variant = 0
    for lc in steps:
        first = int(cache.seqlens[0])
        q = torch.randn(B, Hq, lc, D, dtype=dtype, device=device)
        k = torch.randn(B, Hkv, lc, D, dtype=dtype, device=device)
        v = torch.randn(B, Hkv, lc, D, dtype=dtype, device=device)
        if first <= nan_position < first + lc:
            k[0, 1, nan_position - first, 5] = float("nan")
        if lc > 1:
            out, lse = cache.attend(q, k, v, return_lse=True)
        else:
            num_splits, env = decode_variants[variant % len(decode_variants)]
            variant += 1
            with monkeypatch.context() as m:
                for name, value in env.items():
                    m.setenv(name, value)
                out, lse = torch.ops.swaa.ring_decode(q, k, v, cache.keys, cache.values,
                                                      cache.seqlens, None, W, S, scale,
                                                      num_splits, True)
        some_nan, some_finite = check(out, lse, first)
        seen_nan |= some_nan and lc == 1
        seen_finite |= some_finite and lc == 1
    assert seen_nan  # the case covers decode steps that see the NaN key
    assert seen_finite == (nan_position >= S)  # ... and, for a window key, steps past it


@pytest.mark.parametrize("nan_position", [1, 100])
def test_nan_key_propagates_cpu(nan_position, monkeypatch):
    stream_variants = [(splits, {}) for splits in (1, 3, 8)]
    nan_key_propagates("cpu", torch.float32, nan_position, stream_variants, monkeypatch)


def nan_first_score_cases(device, dtype):
    """The NaN cases where the NaN is the first score a row meets (no finite key
    before it in the row's first tile), which an online softmax that skips rows
    whose running maximum is still -inf would take for "nothing seen": a NaN new
    key at the first decode step, a NaN query, and key 0 NaN with sink = 0, in
    the chunk kernel and in swa_attention.  Exactly the queries that see the NaN
    get a NaN output and lse; the rest stays finite."""
    torch.manual_seed(7)
    B, Hq, Hkv, D, W = 2, 4, 2, 64, 300
    rnd = lambda *shape: torch.randn(*shape, dtype=dtype, device=device)  # noqa: E731

    def check(out, lse, want):
        assert torch.equal(lse.isnan(), want)
        assert torch.equal(out.isnan().all(-1), want)
        assert torch.isfinite(out[~want]).all()

    # a NaN new key at the first decode step (seqlens = 0: the only key)
    for sink in (0, 4):
        cache = RingKVCache(B, Hkv, D, window=W, sink=sink, dtype=dtype, device=device)
        k = rnd(B, Hkv, 1, D)
        k[1, 0, 0, 3] = float("nan")
        out, lse = cache.attend(rnd(B, Hq, 1, D), k, rnd(B, Hkv, 1, D), return_lse=True)
        want = torch.zeros(B, Hq, 1, dtype=torch.bool, device=device)
        want[1, :2] = True  # row 1, KV head 0 (query heads 0 and 1)
        check(out, lse, want)
    # a NaN query after 50 positions, and after 400 (a wrapped ring)
    for history in (50, 400):
        cache = RingKVCache(B, Hkv, D, window=W, sink=2, dtype=dtype, device=device)
        cache.attend(rnd(B, Hq, history, D), rnd(B, Hkv, history, D), rnd(B, Hkv, history, D))
        q = rnd(B, Hq, 1, D)
        q[0, 3, 0, 10] = float("nan")
        out, lse = cache.attend(q, rnd(B, Hkv, 1, D), rnd(B, Hkv, 1, D), return_lse=True)
        want = torch.zeros(B, Hq, 1, dtype=torch.bool, device=device)
        want[0, 3] = True
        check(out, lse, want)
    # key 0 NaN, sink = 0: a chunk from position 0 (ring_chunk) and swa_attention;
    # the queries at positions < W see it (all 40 here for W = 300; 40 < W)
    for window in (W, 16):
        q, k, v = rnd(B, Hq, 40, D), rnd(B, Hkv, 40, D), rnd(B, Hkv, 40, D)
        k[0, 1, 0, 0] = float("nan")
        want = torch.zeros(B, Hq, 40, dtype=torch.bool, device=device)
        want[0, 2:] = torch.arange(40, device=device) < window  # KV head 1: query heads 2, 3
        cache = RingKVCache(B, Hkv, D, window=window, sink=0, dtype=dtype, device=device)
        check(*cache.attend(q, k, v, return_lse=True), want)
        if device == "cpu" or dtype != torch.float32:  # the CUDA attention op is 16-bit only
            check(*swa_attention(q, k, v, window=window, sink=0, return_lse=True), want)


def test_nan_first_score_cpu():
    nan_first_score_cases("cpu", torch.float32)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_nan_first_score_cuda(dtype):
    nan_first_score_cases("cuda", dtype)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("nan_position", [1, 100])
def test_nan_key_propagates_cuda(dtype, nan_position, monkeypatch):
    # every combine of the split decode: cluster, the global kernel with serial
    # and staged loads, the fused one; and the chunk kernel for the prefill
    global_ = {"SWAA_DECODE_COMBINE": "global", "SWAA_DECODE_GLOBAL_COMBINE": "kernel"}
    variants = [(0, {}), (1, {}), (3, {"SWAA_DECODE_COMBINE": "cluster"}),
                (3, {**global_, "SWAA_DECODE_COMBINE_LOADS": "serial"}),
                (5, {**global_, "SWAA_DECODE_COMBINE_LOADS": "staged"}),
                (5, {"SWAA_DECODE_COMBINE": "global", "SWAA_DECODE_GLOBAL_COMBINE": "fused"})]
    nan_key_propagates("cuda", dtype, nan_position, variants, monkeypatch)


def test_slots_follow_the_contract_cpu():
    # Position t lives in slot t (t < sink) or sink + (t - sink) % window.
    B, Hkv, D, W, S = 1, 1, 4, 5, 2
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.float32, device="cpu")
    n = 23
    k = torch.arange(n, dtype=torch.float32).view(1, 1, n, 1).expand(B, Hkv, n, D).contiguous()
    cache.attend(torch.randn(B, 1, n, D), k, k.clone())
    for t in list(range(S)) + list(range(n - W, n)):
        slot = t if t < S else S + (t - S) % W
        assert cache.keys[0, 0, slot, 0].item() == t


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_nbytes(dtype):
    cache = RingKVCache(3, 2, 24, window=10, sink=5, dtype=dtype, device="cpu")
    elsize = torch.empty((), dtype=dtype).element_size()
    assert cache.nbytes == 2 * 3 * 2 * (5 + 10) * 24 * elsize
    assert cache.keys.shape == (3, 2, 15, 24)


def rows_at_different_positions(device, dtype, check, D=16):
    """Prompts of lengths 5, 0 and 11 in one padded chunk, then decode steps
    and a second padded chunk; each row is checked against its own history."""
    B, Hq, Hkv, W, S = 3, 4, 2, 6, 2
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=dtype, device=device)
    hist_k = [[] for _ in range(B)]
    hist_v = [[] for _ in range(B)]
    steps = [(11, [5, 0, 11]), (1, None), (1, None), (1, [1, 0, 1]), (9, [9, 2, 4]), (1, None)]
    for lc, lens in steps:
        q = torch.randn(B, Hq, lc, D, dtype=dtype, device=device)
        k = torch.randn(B, Hkv, lc, D, dtype=dtype, device=device)
        v = torch.randn(B, Hkv, lc, D, dtype=dtype, device=device)
        lengths = None if lens is None else torch.tensor(lens, device=device, dtype=torch.int32)
        out = cache.attend(q, k, v, lengths=lengths)
        for b in range(B):
            n = lc if lens is None else lens[b]
            hist_k[b].append(k[b:b + 1, :, :n])
            hist_v[b].append(v[b:b + 1, :, :n])
            assert torch.all(out[b, :, n:] == 0), "padding rows must be zero"
            if n:
                check(out[b:b + 1, :, :n], q[b:b + 1, :, :n], torch.cat(hist_k[b], 2),
                      torch.cat(hist_v[b], 2), W, S)
    expected = [sum(lc if lens is None else lens[b] for lc, lens in steps) for b in range(B)]
    assert cache.seqlens.tolist() == expected
    assert len(set(expected)) == B  # the rows really are at different positions


def test_rows_at_different_positions_cpu():
    torch.manual_seed(5)

    def check(out, q, K, V, W, S):
        torch.testing.assert_close(out, swa_attention(q, K, V, window=W, sink=S), atol=2e-5,
                                   rtol=2e-5)

    rows_at_different_positions("cpu", torch.float32, check)


def test_reset_cpu():
    torch.manual_seed(6)
    cache = RingKVCache(2, 1, 8, window=4, sink=1, dtype=torch.float32, device="cpu")
    cache.attend(torch.randn(2, 2, 9, 8), torch.randn(2, 1, 9, 8), torch.randn(2, 1, 9, 8))
    cache.reset(torch.tensor([False, True]))
    assert cache.seqlens.tolist() == [9, 0]
    cache.reset()
    assert cache.seqlens.tolist() == [0, 0]
    for bad, message in ((torch.tensor([0.0]), "bool mask or integer"), ([-1], "lie in \\[0, 2\\)"),
                         ([2], "lie in \\[0, 2\\)"), (torch.tensor([True]), "shape \\(2,\\)")):
        with pytest.raises(ValueError, match=message):
            cache.reset(bad)
    q, k, v = torch.randn(2, 2, 3, 8), torch.randn(2, 1, 3, 8), torch.randn(2, 1, 3, 8)
    torch.testing.assert_close(cache.attend(q, k, v), swa_attention(q, k, v, window=4, sink=1),
                               atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("window,sink", [(4, 0), (4, 2), (3, 5)])
def test_append_then_attend_equals_attend_cpu(window, sink):
    # append stores a chunk without attending (its attention computed elsewhere): the next
    # chunks see exactly the history that attend would have left, also for chunks > window
    torch.manual_seed(11)
    B, Hq, Hkv, D = 2, 4, 2, 8
    appended = RingKVCache(B, Hkv, D, window=window, sink=sink, dtype=torch.float32, device="cpu")
    attended = RingKVCache(B, Hkv, D, window=window, sink=sink, dtype=torch.float32, device="cpu")
    for lc, mode in ((9, "append"), (1, "attend"), (2, "append"), (3, "attend"), (1, "attend")):
        q = torch.randn(B, Hq, lc, D)
        k, v = torch.randn(B, Hkv, lc, D), torch.randn(B, Hkv, lc, D)
        ref = attended.attend(q, k, v)
        if mode == "append":
            assert appended.append(k, v) is None
        else:
            torch.testing.assert_close(appended.attend(q, k, v), ref, atol=1e-6, rtol=1e-6)
        assert torch.equal(appended.seqlens, attended.seqlens)
    # per-row lengths: padding positions are not stored and positions advance by lengths[b]
    lengths = torch.tensor([2, 0])
    k, v = torch.randn(B, Hkv, 2, D), torch.randn(B, Hkv, 2, D)
    keys_before = appended.keys.clone()
    appended.append(k, v, lengths=lengths)
    assert appended.seqlens.tolist() == [attended.seqlens[0] + 2, attended.seqlens[1]]
    assert torch.equal(appended.keys[1], keys_before[1])


def test_append_errors_name_the_argument_and_touch_nothing_cpu():
    cache = RingKVCache(2, 2, 8, window=4, sink=1, dtype=torch.float32, device="cpu")
    cache.append(torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8))
    before = (cache.keys.clone(), cache.values.clone(), cache.seqlens.clone())
    k = torch.randn(2, 2, 3, 8)
    for args, kwargs, word in (((k, k[:, :, :2]), {}, "k and v"), ((k[:, :1], k[:, :1]), {}, "k"),
                               ((k.double(), k), {}, "k"), ((k, k), {"lengths": torch.tensor([4, 0])},
                                                             "lengths")):
        with pytest.raises((ValueError, TypeError), match=f"RingKVCache.append: {word}"):
            cache.append(*args, **kwargs)
        assert torch.equal(cache.keys, before[0]) and torch.equal(cache.values, before[1])
        assert torch.equal(cache.seqlens, before[2])


def failed_call_recovery(device, dtype, bad_device, D=16):
    torch.manual_seed(7)
    B, Hq, Hkv, W, S = 2, 4, 2, 5, 1
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=dtype, device=device)
    ks, vs = [], []

    def good(lc):
        return (torch.randn(B, Hq, lc, D, dtype=dtype, device=device),
                torch.randn(B, Hkv, lc, D, dtype=dtype, device=device),
                torch.randn(B, Hkv, lc, D, dtype=dtype, device=device))

    q, k, v = good(7)
    ks.append(k), vs.append(v)
    cache.attend(q, k, v)
    before = (cache.keys.clone(), cache.values.clone(), cache.seqlens.clone())
    other = torch.float64 if dtype != torch.float64 else torch.float32
    q1, k1, v1 = good(1)
    q3, k3, v3 = good(3)
    bad_calls = [
        ((q1, k1.to(other), v1), {}, "k"),                                    # dtype
        ((q1, k1, v1[:, :1]), {}, "v"),                                        # KV head count
        ((q1[:, :3], k1, v1), {}, "q"),                                        # q heads not multiple
        ((q3, k3[..., :8], v3), {}, "k"),                                      # head dim
        ((q3, k3[:1], v3[:1]), {}, "k"),                                       # batch
        ((q3, k3, v3[:, :, :2]), {}, "v"),                                     # length
        ((q3[0], k3, v3), {}, "q"),                                            # rank
        ((q3, k3, v3), {"lengths": torch.tensor([1, 2, 3], device=device)}, "lengths"),
        ((q3, k3, v3), {"lengths": torch.tensor([1.0, 2.0], device=device)}, "lengths"),
    ]
    if bad_device is not None:
        bad_calls.append(((q1.to(bad_device), k1, v1), {}, "q"))
    if torch.device(device).type == "cpu":
        bad_calls.append(((q3, k3, v3), {"lengths": torch.tensor([1, 4])}, "lengths"))  # > Lc
    for args, kwargs, name in bad_calls:
        with pytest.raises((ValueError, TypeError)) as info:
            cache.attend(*args, **kwargs)
        assert name in str(info.value), str(info.value)
        assert torch.equal(cache.keys, before[0]) and torch.equal(cache.values, before[1])
        assert torch.equal(cache.seqlens, before[2])
    # The next valid calls are still right.
    for lc in (1, 3):
        q, k, v = good(lc)
        ks.append(k), vs.append(v)
        out = cache.attend(q, k, v)
        ref = reference_attention(q.cpu(), torch.cat(ks, 2).cpu(), torch.cat(vs, 2).cpu(),
                                  window=W, sink=S)
        tol = 2e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(out.cpu(), ref, atol=tol, rtol=tol)


def test_failed_call_leaves_cache_unchanged_cpu():
    failed_call_recovery("cpu", torch.float32, "meta")


def test_op_argument_checks_name_the_argument_cpu():
    kc = torch.zeros(2, 2, 6, 8)
    vc = torch.zeros(2, 2, 6, 8)
    seq = torch.zeros(2, dtype=torch.int64)
    k = torch.randn(2, 2, 3, 8)
    with pytest.raises(ValueError, match="k_cache must have sink \\+ window"):
        torch.ops.swaa.ring_append(kc, vc, k, k, seq, None, 5, 2)
    with pytest.raises(ValueError, match="seqlens must be int64"):
        torch.ops.swaa.ring_append(kc, vc, k, k, seq.int(), None, 4, 2)
    with pytest.raises(ValueError, match="v has 1 heads"):
        torch.ops.swaa.ring_append(kc, vc, k, k[:, :1], seq, None, 4, 2)
    with pytest.raises(ValueError, match="q must hold exactly one position"):
        torch.ops.swaa.ring_decode(torch.randn(2, 2, 3, 8), k, k, kc, vc, seq, None, 4, 2, 1.0, 0)
    with pytest.raises(ValueError, match="seqlens\\[1\\] = -3 must be >= 0"):
        torch.ops.swaa.ring_append(kc, vc, k, k, torch.tensor([0, -3]), None, 4, 2)
    with pytest.raises(ValueError, match="window and sink must be at most"):
        torch.ops.swaa.ring_append(kc, vc, k, k, seq, None, 2**62, 2)
    with pytest.raises(ValueError, match="window must be >= 1"):
        RingKVCache(1, 1, 8, window=0, device="cpu")
    with pytest.raises(ValueError, match="sink must be >= 0"):
        RingKVCache(1, 1, 8, window=4, sink=-1, device="cpu")
    assert torch.all(kc == 0)


def opcheck_inputs(device, dtype, D=16):
    B, Hq, Hkv, W, S = 2, 4, 2, 5, 2
    mk = lambda *s: torch.randn(*s, dtype=dtype, device=device)  # noqa: E731
    seq = torch.tensor([3, 11], dtype=torch.int64, device=device)
    lengths = torch.tensor([2, 3], dtype=torch.int64, device=device)
    kc, vc = mk(B, Hkv, S + W, D), mk(B, Hkv, S + W, D)
    return [
        ("ring_append", (kc.clone(), vc.clone(), mk(B, Hkv, 3, D), mk(B, Hkv, 3, D), seq, lengths,
                         W, S)),
        ("ring_chunk", (mk(B, Hq, 3, D), mk(B, Hkv, 3, D), mk(B, Hkv, 3, D), kc, vc, seq, lengths,
                        W, S, 0.25)),
        ("ring_chunk", (mk(B, Hq, 9, D), mk(B, Hkv, 9, D), mk(B, Hkv, 9, D), kc, vc, seq, None,
                        W, S, 0.25)),
        ("ring_decode", (mk(B, Hq, 1, D), mk(B, Hkv, 1, D), mk(B, Hkv, 1, D), kc.clone(),
                         vc.clone(), seq, None, W, S, 0.25, 0)),
        # advance=True: seqlens is written too (schema: Tensor(c!) seqlens)
        ("ring_decode", (mk(B, Hq, 1, D), mk(B, Hkv, 1, D), mk(B, Hkv, 1, D), kc.clone(),
                         vc.clone(), seq.clone(), None, W, S, 0.25, 0, True)),
        ("ring_decode", (mk(B, Hq, 1, D), mk(B, Hkv, 1, D), mk(B, Hkv, 1, D), kc.clone(),
                         vc.clone(), seq.clone(), torch.tensor([1, 0], device=device), W, S,
                         0.25, 0, True)),
    ]


OPCHECK_CASES = range(6)


@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_cpu(case):
    name, args = opcheck_inputs("cpu", torch.float32)[case]
    torch.library.opcheck(getattr(torch.ops.swaa, name).default, args)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_decode_advance_matches_separate_add_cpu(with_lengths):
    # ring_decode(advance=True) (what attend calls for Lc == 1) gives the bits
    # of advance=False followed by the position update attend did itself
    # before, over steps with rows at different positions, a padded row and
    # ring wraps, and advances seqlens by exactly min(max(lengths[b], 0), 1).
    torch.manual_seed(21)
    B, Hq, Hkv, D, W, S = 3, 4, 2, 16, 5, 2
    mk = lambda *shape: torch.randn(*shape)  # noqa: E731
    kc, vc = mk(B, Hkv, S + W, D), mk(B, Hkv, S + W, D)
    twins = [(kc.clone(), vc.clone(), torch.tensor([0, 6, 17])) for _ in range(2)]
    for step in range(12):
        q, k, v = mk(B, Hq, 1, D), mk(B, Hkv, 1, D), mk(B, Hkv, 1, D)
        lengths = torch.tensor([1, step % 2, 1]) if with_lengths else None
        (kc1, vc1, seq1), (kc2, vc2, seq2) = twins
        before = seq1.clone()
        out1, lse1 = torch.ops.swaa.ring_decode(q, k, v, kc1, vc1, seq1, lengths, W, S, 0.25, 0,
                                                True)
        out2, lse2 = torch.ops.swaa.ring_decode(q, k, v, kc2, vc2, seq2, lengths, W, S, 0.25, 0)
        assert torch.equal(seq2, before)  # advance=False leaves seqlens alone
        seq2.add_(lengths.clamp(0, 1) if with_lengths else 1)
        for a, b in ((out1, out2), (lse1, lse2), (kc1, kc2), (vc1, vc2), (seq1, seq2)):
            assert torch.equal(a, b), step
        step_size = lengths if with_lengths else torch.ones(B, dtype=torch.int64)
        assert torch.equal(seq1, before + step_size)


def test_decode_advance_failed_call_leaves_seqlens_cpu():
    # A call that raises (bad shape, bad lengths) advances nothing and writes
    # nothing; the next valid call advances once.
    B, Hq, Hkv, D, W, S = 2, 4, 2, 8, 4, 1
    kc, vc = torch.randn(B, Hkv, S + W, D), torch.randn(B, Hkv, S + W, D)
    seq = torch.tensor([3, 9])
    q, k, v = torch.randn(B, Hq, 1, D), torch.randn(B, Hkv, 1, D), torch.randn(B, Hkv, 1, D)
    before = (kc.clone(), vc.clone(), seq.clone())
    with pytest.raises(ValueError, match="q heads"):
        torch.ops.swaa.ring_decode(q[:, :3], k, v, kc, vc, seq, None, W, S, 1.0, 0, True)
    with pytest.raises(ValueError, match="lengths\\[1\\] = 2"):
        torch.ops.swaa.ring_decode(q, k, v, kc, vc, seq, torch.tensor([1, 2]), W, S, 1.0, 0, True)
    with pytest.raises(ValueError, match="k head dim"):
        torch.ops.swaa.ring_decode(q, k[..., :4], v, kc, vc, seq, None, W, S, 1.0, 0, True)
    with pytest.raises(ValueError, match="num_splits"):  # checked after prepare_ring
        torch.ops.swaa.ring_decode(q, k, v, kc, vc, seq, None, W, S, 1.0, -1, True)
    for a, b in zip((kc, vc, seq), before):
        assert torch.equal(a, b)
    torch.ops.swaa.ring_decode(q, k, v, kc, vc, seq, None, W, S, 1.0, 0, True)
    assert seq.tolist() == [4, 10]
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.float32, device="cpu")
    cache.attend(q, k, v)
    with pytest.raises(ValueError):
        cache.attend(q, k, v[:, :1])
    assert cache.seqlens.tolist() == [1, 1]


# ------------------------------------------------- chunks through the forward kernel (gather)
def chunk_sources(monkeypatch, mode=None):
    """Records how RingKVCache attends each chunk: "gather", "prefix" (the forward kernel) or
    "kernel" (ring_chunk); with ``mode``, also sets SWAA_RING_CHUNK to it."""
    if mode is not None:
        monkeypatch.setenv("SWAA_RING_CHUNK", mode)
    sources = []
    original = RingKVCache._chunk_source

    def spy(self, lc):
        sources.append(original(self, lc))
        return sources[-1]

    monkeypatch.setattr(RingKVCache, "_chunk_source", spy)
    return sources


@pytest.mark.parametrize("window,sink", [(1, 0), (1, 3), (5, 9), (16, 4), (7, 1), (40, 3)])
def test_chunk_gather_matches_swa_attention_cpu(window, sink, monkeypatch):
    """SWAA_RING_CHUNK=gather: chunks attend through swa_attention over the ring's slots in
    position order and the chunk, before the rings fill ("prefix": slots 0 .. n - 1) and after
    ("gather": [sinks, the window in order]); out and lse as over the history."""
    sources = chunk_sources(monkeypatch, "gather")
    torch.manual_seed(window * 10 + sink)
    B, Hq, Hkv, D = 2, 4, 2, 16
    cache = RingKVCache(B, Hkv, D, window=window, sink=sink, dtype=torch.float32, device="cpu")
    ks, vs, expected = [], [], []
    sizes = [2, 1] + chunk_sizes(window, 12, seed=window + sink) + [3 * window + 5, 2]
    seen = 0
    for lc in sizes:
        if lc > 1:
            expected.append("gather" if seen >= sink + window else "prefix")
        seen += lc
        q, k, v = torch.randn(B, Hq, lc, D), torch.randn(B, Hkv, lc, D), torch.randn(B, Hkv, lc, D)
        ks.append(k), vs.append(v)
        out, lse = cache.attend(q, k, v, return_lse=True)
        ref, ref_lse = swa_attention(q, torch.cat(ks, 2), torch.cat(vs, 2), window=window,
                                     sink=sink, return_lse=True)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=2e-5)
    assert sources == expected and "gather" in sources and sources[0] == "prefix"
    assert cache.seqlens.tolist() == [sum(sizes)] * B


def test_chunk_gather_rows_at_different_positions_and_padding_cpu(monkeypatch):
    """Rows that diverge (padded chunks) after their rings filled: the gather follows each
    row's own slots; padded queries give zero and -inf lse."""
    sources = chunk_sources(monkeypatch, "gather")
    torch.manual_seed(11)
    B, Hq, Hkv, D, W, S = 3, 4, 2, 16, 6, 2
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.float32, device="cpu")
    hist_k, hist_v = [[] for _ in range(B)], [[] for _ in range(B)]
    steps = [(9, None), (5, [5, 0, 3]), (7, [2, 7, 0]), (4, None), (1, None), (13, [13, 1, 6]),
             (8, None)]
    for lc, lens in steps:
        q, k, v = torch.randn(B, Hq, lc, D), torch.randn(B, Hkv, lc, D), torch.randn(B, Hkv, lc, D)
        lengths = None if lens is None else torch.tensor(lens)
        out, lse = cache.attend(q, k, v, lengths=lengths, return_lse=True)
        for b in range(B):
            n = lc if lens is None else lens[b]
            hist_k[b].append(k[b:b + 1, :, :n]), hist_v[b].append(v[b:b + 1, :, :n])
            assert torch.all(out[b, :, n:] == 0) and torch.all(lse[b, :, n:] == float("-inf"))
            if n:
                ref, ref_lse = swa_attention(q[b:b + 1, :, :n], torch.cat(hist_k[b], 2),
                                             torch.cat(hist_v[b], 2), window=W, sink=S,
                                             return_lse=True)
                torch.testing.assert_close(out[b:b + 1, :, :n], ref, atol=2e-5, rtol=2e-5)
                torch.testing.assert_close(lse[b:b + 1, :, :n], ref_lse, atol=2e-5, rtol=2e-5)
    # the first chunk from position 0, then every chunk (padded ones too) once the 8-slot
    # rings are full
    assert sources == ["prefix"] + ["gather"] * 5
    assert len(set(cache.seqlens.tolist())) == B


def test_chunk_gather_waits_for_full_rings_cpu(monkeypatch):
    """The host-side bound that decides the gather drops with reset: a row reset to position 0
    must not attend to its old ring contents."""
    sources = chunk_sources(monkeypatch, "gather")
    torch.manual_seed(12)
    B, Hq, Hkv, D, W, S = 2, 2, 1, 8, 4, 1
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.float32, device="cpu")
    k0, v0 = torch.randn(B, Hkv, 9, D), torch.randn(B, Hkv, 9, D)
    cache.attend(torch.randn(B, Hq, 9, D), k0, v0)
    cache.reset(torch.tensor([True, False]))
    q, k, v = torch.randn(B, Hq, 3, D), torch.randn(B, Hkv, 3, D), torch.randn(B, Hkv, 3, D)
    out = cache.attend(q, k, v)
    # row 0 is at position 0 again, row 1 at 9: neither full nor one known position
    assert sources == ["prefix", "kernel"]
    torch.testing.assert_close(out[:1], swa_attention(q[:1], k[:1], v[:1], window=W, sink=S),
                               atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out[1:], swa_attention(q[1:], torch.cat([k0[1:], k[1:]], 2),
                                                      torch.cat([v0[1:], v[1:]], 2), window=W,
                                                      sink=S), atol=2e-5, rtol=2e-5)
    cache.reset()
    assert cache._min_seen == 0 and cache._exact == 0
    out = cache.attend(q, k, v)  # both rows at 0 again: the chunk alone
    assert sources[-1] == "prefix"
    torch.testing.assert_close(out, swa_attention(q, k, v, window=W, sink=S), atol=2e-5,
                               rtol=2e-5)


def test_chunk_gather_auto_rule_and_bad_setting_cpu(monkeypatch):
    """auto: chunks of GATHER_MIN_CHUNK positions and more through the forward kernel, from an
    empty ring on; kernel: never; a bad SWAA_RING_CHUNK raises before the cache changes."""
    from swaa_ext.cache import GATHER_MIN_CHUNK
    sources = chunk_sources(monkeypatch)
    torch.manual_seed(13)
    W, S, D = 100, 2, 16
    cache = RingKVCache(1, 1, D, window=W, sink=S, dtype=torch.float32, device="cpu")

    def step(lc):
        cache.attend(torch.randn(1, 2, lc, D), torch.randn(1, 1, lc, D), torch.randn(1, 1, lc, D))

    monkeypatch.delenv("SWAA_RING_CHUNK", raising=False)
    step(GATHER_MIN_CHUNK)       # position 0: the chunk alone
    step(GATHER_MIN_CHUNK - 1)   # too short
    step(GATHER_MIN_CHUNK)       # position 127 >= 102: full
    monkeypatch.setenv("SWAA_RING_CHUNK", "kernel")
    step(GATHER_MIN_CHUNK)
    assert sources == ["prefix", "kernel", "gather", "kernel"]
    monkeypatch.setenv("SWAA_RING_CHUNK", "fast")
    before = cache.seqlens.clone(), cache.keys.clone()
    with pytest.raises(ValueError, match="SWAA_RING_CHUNK must be auto, kernel or gather"):
        step(GATHER_MIN_CHUNK)
    assert torch.equal(cache.seqlens, before[0]) and torch.equal(cache.keys, before[1])


def test_seqlens_written_from_outside_is_noticed_cpu(monkeypatch):
    """seqlens written directly (the docs say use reset, but tests and benches set positions
    this way): the host's view of the positions is dropped, so the next chunk neither gathers
    a ring that is no longer full nor slices a prefix that no longer matches."""
    sources = chunk_sources(monkeypatch, "gather")
    torch.manual_seed(17)
    B, Hq, Hkv, D, W, S = 1, 2, 1, 16, 6, 2
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.float32, device="cpu")
    cache.attend(torch.randn(B, Hq, 20, D), torch.randn(B, Hkv, 20, D), torch.randn(B, Hkv, 20, D))
    for position in (3, 0):
        cache.seqlens.fill_(position)  # positions 0 .. 2 are slots 0 .. 2 (sinks and the first)
        q, k, v = torch.randn(B, Hq, 5, D), torch.randn(B, Hkv, 5, D), torch.randn(B, Hkv, 5, D)
        history_k = torch.cat([cache.keys[:, :, :position], k], 2)
        history_v = torch.cat([cache.values[:, :, :position], v], 2)
        out = cache.attend(q, k, v)
        torch.testing.assert_close(out, swa_attention(q, history_k, history_v, window=W, sink=S),
                                   atol=2e-5, rtol=2e-5)
    assert sources == ["prefix", "kernel", "kernel"]


def test_cache_built_under_inference_mode_cpu(monkeypatch):
    """Hugging Face builds the ring inside the forward pass, often under inference_mode: the
    cache still tracks seqlens' version (inference tensors have none) and its chunks still take
    the forward kernel (session 16's second review)."""
    sources = chunk_sources(monkeypatch, "gather")
    torch.manual_seed(18)
    with torch.inference_mode():
        cache = RingKVCache(1, 1, 16, window=4, sink=1, dtype=torch.float32, device="cpu")
        ks, vs = [], []
        for lc in (3, 1, 7, 2):
            q, k, v = torch.randn(1, 2, lc, 16), torch.randn(1, 1, lc, 16), torch.randn(1, 1, lc, 16)
            ks.append(k), vs.append(v)
            torch.testing.assert_close(cache.attend(q, k, v),
                                       swa_attention(q, torch.cat(ks, 2), torch.cat(vs, 2),
                                                     window=4, sink=1), atol=2e-5, rtol=2e-5)
    assert sources == ["prefix", "prefix", "gather"]


def test_chunk_prefix_needs_one_known_position_cpu(monkeypatch):
    """A call with lengths makes the rows' positions differ and unknown to the host: the next
    chunks take ring_chunk until the rings are full."""
    sources = chunk_sources(monkeypatch, "gather")
    torch.manual_seed(16)
    B, Hq, Hkv, D, W, S = 2, 4, 2, 16, 16, 2
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.float32, device="cpu")
    hist = [([], []) for _ in range(B)]
    for lc, lens in ((5, None), (5, [3, 5]), (6, None), (9, None)):
        q, k, v = torch.randn(B, Hq, lc, D), torch.randn(B, Hkv, lc, D), torch.randn(B, Hkv, lc, D)
        out = cache.attend(q, k, v, lengths=None if lens is None else torch.tensor(lens))
        for b in range(B):
            n = lc if lens is None else lens[b]
            hist[b][0].append(k[b:b + 1, :, :n]), hist[b][1].append(v[b:b + 1, :, :n])
            ref = swa_attention(q[b:b + 1, :, :n], torch.cat(hist[b][0], 2),
                                torch.cat(hist[b][1], 2), window=W, sink=S)
            torch.testing.assert_close(out[b:b + 1, :, :n], ref, atol=2e-5, rtol=2e-5)
    # 5: from 0; 5 (padded): both rows at 5; 6: rows at 8 and 10; 9: at 14 and 16 < 18
    assert sources == ["prefix", "prefix", "kernel", "kernel"]
    assert cache._exact is None and cache._min_seen == 5 + 6 + 9


# --------------------------------------------------------------------------- CUDA
def bf16_check(window, sink):
    def check(out, q, K, V, *_):
        ref = reference_attention(q.float(), K.float(), V.float(), window=window, sink=sink,
                                  compute_dtype=torch.float64).float()
        torch_bf16 = reference_attention(q, K, V, window=window, sink=sink,
                                         compute_dtype=torch.bfloat16).float()
        err = (out.float() - ref).abs().max().item()
        err_torch = (torch_bf16 - ref).abs().max().item()
        assert math.isfinite(err) and err <= 2 * err_torch + 2e-3, (err, err_torch)
    return check


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("window,sink", [(1, 0), (1, 3), (5, 9), (16, 4), (64, 0), (300, 4)])
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(4, 1, 64), (8, 2, 128), (2, 2, 128)])
def test_stream_matches_reference_cuda_bf16(window, sink, q_heads, kv_heads, head_dim):
    torch.manual_seed(window + sink + q_heads)
    sizes = chunk_sizes(window, 10, seed=window * 3 + sink)
    stream_and_compare(2, q_heads, kv_heads, head_dim, window, sink, sizes, torch.bfloat16, "cuda",
                       bf16_check(window, sink))


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_stream_matches_cpu_cuda_other_dtypes(dtype):
    # The CUDA kernels against the CPU kernels on the same inputs.
    torch.manual_seed(8)
    W, S = 40, 3
    gpu = RingKVCache(2, 2, 64, window=W, sink=S, dtype=dtype, device="cuda")
    cpu = RingKVCache(2, 2, 64, window=W, sink=S, dtype=torch.float32, device="cpu")
    for lc in (100, 1, 1, 7, 1, 45, 1):
        q, k, v = (torch.randn(2, h, lc, 64, dtype=dtype) for h in (8, 2, 2))
        out = gpu.attend(q.cuda(), k.cuda(), v.cuda())
        ref = cpu.attend(q.float(), k.float(), v.float())
        tol = 2e-5 if dtype == torch.float32 else 2e-3
        torch.testing.assert_close(out.float().cpu(), ref, atol=tol, rtol=tol)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim,window,sink", [(64, 300, 4), (128, 1024, 0), (128, 200, 130)])
def test_chunk_gather_cuda(dtype, head_dim, window, sink, monkeypatch):
    """The default (auto) on CUDA: chunks of >= GATHER_MIN_CHUNK positions after the rings
    fill go through the tensor-core forward; each against the float64 reference, and against
    the same stream through ring_chunk (SWAA_RING_CHUNK=kernel)."""
    sources = chunk_sources(monkeypatch)
    torch.manual_seed(head_dim + window)
    B, Hq, Hkv = 2, 8, 2
    sizes = [window + sink + 5, 64, 1, 500, 3, 129, 1]
    caches = {}
    for mode in ("auto", "kernel"):
        monkeypatch.setenv("SWAA_RING_CHUNK", mode)
        caches[mode] = RingKVCache(B, Hkv, head_dim, window=window, sink=sink, dtype=dtype,
                                   device="cuda")
    ks, vs = [], []
    for lc in sizes:
        q = torch.randn(B, Hq, lc, head_dim, dtype=dtype, device="cuda")
        k = torch.randn(B, Hkv, lc, head_dim, dtype=dtype, device="cuda")
        v = torch.randn(B, Hkv, lc, head_dim, dtype=dtype, device="cuda")
        ks.append(k), vs.append(v)
        outs = {}
        for mode, cache in caches.items():
            monkeypatch.setenv("SWAA_RING_CHUNK", mode)
            outs[mode] = cache.attend(q, k, v)
        K, V = torch.cat(ks, 2).float(), torch.cat(vs, 2).float()
        ref = reference_attention(q.float(), K, V, window=window, sink=sink,
                                  compute_dtype=torch.float64).float()
        torch_err = (reference_attention(q, torch.cat(ks, 2), torch.cat(vs, 2), window=window,
                                         sink=sink, compute_dtype=dtype).float() - ref).abs().max()
        for mode, out in outs.items():
            err = (out.float() - ref).abs().max()
            assert err <= 2 * torch_err + 2e-3, (mode, lc, err.item(), torch_err.item())
    # the auto cache: the first chunk from position 0, then gathers (the kernel cache: kernel)
    assert sources[0::2] == ["prefix", "gather", "gather", "kernel", "gather"]
    assert sources[1::2] == ["kernel"] * 5


@pytest.mark.cuda
@cuda
def test_chunk_right_after_graph_capture_cuda():
    """Capturing a decode step records its seqlens add without running it, so the host-side
    bound must not count it: a chunk attended right after the capture (no replay) at
    sink + window - 1 positions would otherwise gather a slot never written.  (Written in
    session 16 after the review; not yet run on a GPU.)"""
    torch.manual_seed(17)
    B, Hq, Hkv, D, W, S = 1, 4, 2, 64, 8, 2

    def rnd(heads, lc):
        return torch.randn(B, heads, lc, D, dtype=torch.bfloat16, device="cuda")

    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
    ks, vs = [rnd(Hkv, S + W - 2)], []
    vs.append(rnd(Hkv, S + W - 2))
    cache.attend(rnd(Hq, S + W - 2), ks[0], vs[0])
    static = [rnd(Hq, 1), rnd(Hkv, 1), rnd(Hkv, 1)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: a real step (position S + W - 2)
        cache.attend(*static)
    torch.cuda.current_stream().wait_stream(side)
    ks.append(static[1].clone()), vs.append(static[2].clone())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cache.attend(*static)
    assert cache.seqlens.tolist() == [S + W - 1] and cache._min_seen == S + W - 1
    q, k, v = rnd(Hq, 64), rnd(Hkv, 64), rnd(Hkv, 64)
    ks.append(k), vs.append(v)
    bf16_check(W, S)(cache.attend(q, k, v), q, torch.cat(ks, 2), torch.cat(vs, 2))


@pytest.mark.cuda
@cuda
def test_chunk_after_reset_and_replays_cuda():
    """A captured decode step replayed after reset() moves the rows without the host knowing:
    once a graph was captured, reset() must not promise position 0 (a chunk would slice an
    empty prefix at position k).  (Written in session 16 after the second review; not yet run
    on a GPU.)"""
    torch.manual_seed(19)
    B, Hq, Hkv, D, W, S = 1, 4, 2, 64, 300, 4

    def rnd(heads, lc):
        return torch.randn(B, heads, lc, D, dtype=torch.bfloat16, device="cuda")

    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
    static = [rnd(Hq, 1), rnd(Hkv, 1), rnd(Hkv, 1)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        cache.attend(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cache.attend(*static)
    cache.reset()
    for _ in range(5):  # positions 0 .. 4 hold the static key
        graph.replay()
    assert cache.seqlens.tolist() == [5] and cache._exact is None
    q, k, v = rnd(Hq, 64), rnd(Hkv, 64), rnd(Hkv, 64)
    K = torch.cat([static[1].expand(B, Hkv, 5, D), k], 2)
    V = torch.cat([static[2].expand(B, Hkv, 5, D), v], 2)
    bf16_check(W, S)(cache.attend(q, k, v), q, K, V)


@pytest.mark.cuda
@cuda
def test_decode_many_splits_cuda():
    # B = 1 with a long window: the decode kernel splits the window across blocks.
    torch.manual_seed(9)
    B, Hq, Hkv, D, W, S = 1, 8, 2, 128, 2000, 4
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
    ks, vs = [], []
    for lc in (3000, 1, 1, 1):
        q, k, v = (torch.randn(B, h, lc, D, dtype=torch.bfloat16, device="cuda")
                   for h in (Hq, Hkv, Hkv))
        ks.append(k), vs.append(v)
        out = cache.attend(q, k, v)
        if lc == 1:
            bf16_check(W, S)(out, q, torch.cat(ks, 2), torch.cat(vs, 2))


def ring_slot(t, W, S):
    return t if t < S else S + (t - S) % W


def decode_reference(q, k, v, k_cache, v_cache, position, W, S, scale):
    """Attention of row b's single query at `position` over the keys it sees,
    gathered from their ring slots (float64): (out (Hq, D), lse (Hq,))."""
    visible = [j for j in range(position) if j < S or position - j < W]
    slots = [ring_slot(j, W, S) for j in visible]
    K = torch.cat([k_cache[:, slots], k[:, 0:1]], 1).double()  # (Hkv, n, D)
    V = torch.cat([v_cache[:, slots], v[:, 0:1]], 1).double()
    group = q.shape[0] // K.shape[0]
    K, V = K.repeat_interleave(group, 0), V.repeat_interleave(group, 0)
    scores = (q.double() @ K.transpose(1, 2)).squeeze(1) * scale  # (Hq, n)
    return torch.softmax(scores, -1).unsqueeze(1).matmul(V).squeeze(1), torch.logsumexp(scores, -1)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("window,sink", [(150, 3), (700, 5)])
@pytest.mark.parametrize("q_heads,kv_heads", [(2, 2), (3, 1), (32, 2), (24, 1)])
@pytest.mark.parametrize("num_splits", [0, 1, 3, 8, 20])
def test_decode_split_kernel_cuda(dtype, head_dim, window, sink, q_heads, kv_heads, num_splits):
    # The split decode kernel (bf16/fp16) straight through the op, on a ring
    # filled at random: rows at position 0, inside the first window, wrapped
    # many times, and one padded row (lengths = 0); capacity (sink + window)
    # is not a multiple of the 64-key tile; num_splits 8 leaves trailing
    # splits empty for the short rows; G = 3 and 24 (two CTAs of 16 and 8
    # heads) cover partial head groups.  A negative position counts as 0.
    # num_splits 20 (> 8, a cluster's limit) takes the global combine.
    torch.manual_seed(head_dim + window + q_heads + num_splits)
    B, D, W, S = 5, head_dim, window, sink
    positions = [0, 70, 10 * W + 17, 400, -3]
    lengths = torch.tensor([1, 1, 1, 0, 1], device="cuda")
    mk = lambda *s: torch.randn(*s, dtype=dtype, device="cuda")  # noqa: E731
    kc, vc = mk(B, kv_heads, S + W, D), mk(B, kv_heads, S + W, D)
    q, k, v = mk(B, q_heads, 1, D), mk(B, kv_heads, 1, D), mk(B, kv_heads, 1, D)
    seqlens = torch.tensor(positions, dtype=torch.int64, device="cuda")
    scale = 1 / math.sqrt(D)
    kc0, vc0 = kc.clone(), vc.clone()
    out, lse = torch.ops.swaa.ring_decode(q, k, v, kc, vc, seqlens, lengths, W, S, scale,
                                          num_splits)
    # Same call again: bit-identical (fixed split order), and the append is idempotent.
    kc1, vc1 = kc0.clone(), vc0.clone()
    out1, lse1 = torch.ops.swaa.ring_decode(q, k, v, kc1, vc1, seqlens, lengths, W, S, scale,
                                            num_splits)
    assert torch.equal(out, out1) and torch.equal(lse, lse1)
    assert torch.equal(kc, kc1) and torch.equal(vc, vc1)
    for b, position in enumerate(max(x, 0) for x in positions):
        if lengths[b] == 0:  # padding: zero output, -inf lse, nothing written
            assert torch.all(out[b] == 0) and torch.all(torch.isneginf(lse[b]))
            assert torch.equal(kc[b], kc0[b]) and torch.equal(vc[b], vc0[b])
            continue
        ref, ref_lse = decode_reference(q[b], k[b], v[b], kc0[b], vc0[b], position, W, S, scale)
        err = (out[b, :, 0].double() - ref).abs().max().item()
        # bf16 / fp16 output rounding plus probabilities rounded for the tensor cores
        tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
        assert math.isfinite(err) and err <= tol, (b, err)
        torch.testing.assert_close(lse[b, :, 0].double(), ref_lse, atol=1e-4, rtol=1e-4)
        slot = ring_slot(position, W, S)  # the new key, written in place
        assert torch.equal(kc[b, :, slot], k[b, :, 0]) and torch.equal(vc[b, :, slot], v[b, :, 0])
        others = [i for i in range(S + W) if i != slot]
        assert torch.equal(kc[b, :, others], kc0[b, :, others])


def decode_plans(text):
    """The (splits, combine) plans SWAA_DECODE_VERBOSE printed, in order."""
    plans = []
    for line in text.splitlines():
        if line.startswith("swaa ring_decode:"):
            tail = line.split("->")[1].split()
            plans.append((int(tail[0]), tail[2]))
    return plans


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("capacity", [20000, 70000])
@pytest.mark.parametrize("sink", [0, 4])
def test_decode_long_rows_many_splits_cuda(capacity, sink, monkeypatch, capfd):
    # B = 1 over a long ring: the automatic plan takes more splits than a
    # cluster holds (global fp32 partials + combine kernel).  sink = 0 is the
    # never-wrapping ring of a full-attention layer (window = capacity, query
    # at the last slot or a few before); sink = 4 a ring wrapped several
    # times.  Checked against the float64 reference, bit-identical on repeat,
    # and close to the cluster plan (<= 8 splits) on the same inputs.
    torch.manual_seed(capacity + sink)
    B, Hq, Hkv, D = 1, 8, 2, 128
    W, S = capacity - sink, sink
    positions = [capacity - 1, capacity - 7] if sink == 0 else [3 * capacity + 123]
    scale = 1 / math.sqrt(D)
    mk = lambda *s: torch.randn(*s, dtype=torch.bfloat16, device="cuda")  # noqa: E731
    kc0, vc0 = mk(B, Hkv, S + W, D), mk(B, Hkv, S + W, D)
    monkeypatch.setenv("SWAA_DECODE_VERBOSE", "2")  # the plan of every launch on stderr
    for position in positions:
        q, k, v = mk(B, Hq, 1, D), mk(B, Hkv, 1, D), mk(B, Hkv, 1, D)
        seqlens = torch.tensor([position], device="cuda")
        results = []
        for combine in ("", "", "cluster"):
            monkeypatch.setenv("SWAA_DECODE_COMBINE", combine)
            kc, vc = kc0.clone(), vc0.clone()
            capfd.readouterr()
            out, lse = torch.ops.swaa.ring_decode(q, k, v, kc, vc, seqlens, None, W, S, scale, 0)
            torch.cuda.synchronize()
            plans = decode_plans(capfd.readouterr().err)
            assert len(plans) == 1
            splits, kind = plans[0]
            if combine == "cluster":
                assert kind == "cluster" and splits <= 8
            else:
                assert kind == "global" and splits > 8, plans
            results.append((out, lse, kc, vc))
        (out, lse, kc, vc), (out1, lse1, kc1, vc1), (out_c, lse_c, _, _) = results
        assert torch.equal(out, out1) and torch.equal(lse, lse1)
        assert torch.equal(kc, kc1) and torch.equal(vc, vc1)
        ref, ref_lse = decode_reference(q[0], k[0], v[0], kc0[0], vc0[0], position, W, S, scale)
        err = (out[0, :, 0].double() - ref).abs().max().item()
        assert math.isfinite(err) and err <= 2e-2, err
        torch.testing.assert_close(lse[0, :, 0].double(), ref_lse, atol=1e-4, rtol=1e-4)
        assert (out.float() - out_c.float()).abs().max().item() <= 2e-2
        torch.testing.assert_close(lse, lse_c, atol=1e-4, rtol=1e-4)
        slot = ring_slot(position, W, S)
        assert torch.equal(kc[0, :, slot], k[0, :, 0]) and torch.equal(vc[0, :, slot], v[0, :, 0])
        others = torch.ones(S + W, dtype=torch.bool, device="cuda")
        others[slot] = False
        assert torch.equal(kc[0][:, others], kc0[0][:, others])


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("splits", ["3", "40"])
def test_decode_global_combine_cuda(splits, monkeypatch):
    # The global combine at a split count a cluster could also take (3) and
    # past it (40), with rows at different positions and a padded row: right
    # against the reference and within rounding of the cluster plan.
    torch.manual_seed(int(splits))
    B, Hq, Hkv, D, W, S = 4, 32, 2, 64, 3000, 4
    positions = [0, 700, 7 * W + 5, 2000]
    lengths = torch.tensor([1, 1, 1, 0], device="cuda")
    mk = lambda *s: torch.randn(*s, dtype=torch.float16, device="cuda")  # noqa: E731
    kc0, vc0 = mk(B, Hkv, S + W, D), mk(B, Hkv, S + W, D)
    q, k, v = mk(B, Hq, 1, D), mk(B, Hkv, 1, D), mk(B, Hkv, 1, D)
    seqlens = torch.tensor(positions, device="cuda")
    scale = 1 / math.sqrt(D)
    monkeypatch.setenv("SWAA_DECODE_SPLITS", splits)
    outs = {}
    for combine in ("global", "cluster"):
        monkeypatch.setenv("SWAA_DECODE_COMBINE", combine)
        kc, vc = kc0.clone(), vc0.clone()
        outs[combine] = torch.ops.swaa.ring_decode(q, k, v, kc, vc, seqlens, lengths, W, S, scale,
                                                   0)
    out, lse = outs["global"]
    for b, position in enumerate(positions):
        if b == 3:
            assert torch.all(out[b] == 0) and torch.all(torch.isneginf(lse[b]))
            continue
        ref, ref_lse = decode_reference(q[b], k[b], v[b], kc0[b], vc0[b], position, W, S, scale)
        err = (out[b, :, 0].double() - ref).abs().max().item()
        assert math.isfinite(err) and err <= 3e-3, (b, err)
        torch.testing.assert_close(lse[b, :, 0].double(), ref_lse, atol=1e-4, rtol=1e-4)
    assert (out.float() - outs["cluster"][0].float()).abs().max().item() <= 3e-3


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("pdl", ["0", "1"])
def test_cuda_graph_long_ring_global_combine(pdl, monkeypatch):
    # A long never-wrapping ring (full-attention layer) decoded through the
    # global combine inside a CUDA graph: replays equal an eager twin bit for
    # bit, across the ring's end (the ring starts to wrap).  pdl = 1 launches
    # the combine kernel as a programmatic dependent (SWAA_DECODE_PDL).
    torch.manual_seed(15)
    B, Hq, Hkv, D, W = 2, 16, 2, 128, 20000
    monkeypatch.setenv("SWAA_DECODE_PDL", pdl)
    monkeypatch.setenv("SWAA_DECODE_COMBINE", "global")
    monkeypatch.setenv("SWAA_DECODE_SPLITS", "48")
    caches = [RingKVCache(B, Hkv, D, window=W, sink=0, dtype=torch.bfloat16, device="cuda")
              for _ in range(2)]
    for c in caches:
        torch.manual_seed(16)
        c.keys.normal_()
        c.values.normal_()
        c.seqlens.copy_(torch.tensor([W - 20, 9000], device="cuda"))
    graph_cache, eager_cache = caches
    static = [torch.randn(B, h, 1, D, dtype=torch.bfloat16, device="cuda") for h in (Hq, Hkv, Hkv)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        warm = [t.clone() for t in static]
        graph_cache.attend(*warm)
        eager_cache.attend(*warm)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = graph_cache.attend(*static)
    for step in range(40):
        new = [torch.randn_like(t) for t in static]
        for s, n in zip(static, new):
            s.copy_(n)
        graph.replay()
        eager_out = eager_cache.attend(*new)
        assert torch.equal(static_out, eager_out), step
        assert torch.isfinite(eager_out.float()).all()
    assert graph_cache.seqlens.tolist() == [W - 20 + 41, 9000 + 41]
    assert torch.equal(graph_cache.keys, eager_cache.keys)
    assert torch.equal(graph_cache.values, eager_cache.values)


LEGACY_DECODE_SCRIPT = """
import sys, torch
import swaa_ext  # noqa: F401
case = torch.load(sys.argv[1])
out, lse = torch.ops.swaa.ring_decode(*case)
torch.save((out.cpu(), lse.cpu(), case[3].cpu()), sys.argv[2])
"""


@pytest.mark.cuda
@cuda
def test_decode_legacy_kernel_agrees_cuda(tmp_path):
    # SWAA_RING_DECODE=legacy (read once per process, hence the subprocess)
    # runs the previous CUDA-core kernel on bf16: same inputs, both kernels
    # close to each other and to the reference, same slot write.
    import os
    import subprocess
    import sys
    torch.manual_seed(14)
    B, Hq, Hkv, D, W, S = 2, 8, 2, 128, 1000, 4
    mk = lambda *s: torch.randn(*s, dtype=torch.bfloat16, device="cuda")  # noqa: E731
    kc, vc = mk(B, Hkv, S + W, D), mk(B, Hkv, S + W, D)
    positions = [3 * W + 11, 517]
    case = (mk(B, Hq, 1, D), mk(B, Hkv, 1, D), mk(B, Hkv, 1, D), kc, vc,
            torch.tensor(positions, device="cuda"), None, W, S, 1 / math.sqrt(D), 0)
    torch.save(tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in case),
               tmp_path / "case.pt")
    env = dict(os.environ, SWAA_RING_DECODE="legacy")
    subprocess.run([sys.executable, "-c", LEGACY_DECODE_SCRIPT, str(tmp_path / "case.pt"),
                    str(tmp_path / "legacy.pt")], env=env, check=True)
    legacy_out, legacy_lse, legacy_kc = torch.load(tmp_path / "legacy.pt")
    kc0, vc0 = kc.clone(), vc.clone()
    out, lse = torch.ops.swaa.ring_decode(*case)
    assert torch.equal(kc.cpu(), legacy_kc)
    for b, position in enumerate(positions):
        ref, ref_lse = decode_reference(case[0][b], case[1][b], case[2][b], kc0[b], vc0[b],
                                        position, W, S, 1 / math.sqrt(D))
        for o, l in ((out.cpu(), lse.cpu()), (legacy_out, legacy_lse)):
            assert (o[b, :, 0].double() - ref.cpu()).abs().max().item() <= 2e-2
            torch.testing.assert_close(l[b, :, 0].double(), ref_lse.cpu(), atol=1e-4, rtol=1e-4)
    assert (out.cpu().float() - legacy_out.float()).abs().max().item() <= 2e-2


@pytest.mark.cuda
@cuda
def test_decode_large_batch_cuda():
    # More (row, KV head) pairs than the GPU holds CTAs at once (several waves),
    # rows at different positions, through RingKVCache.attend.
    torch.manual_seed(13)
    B, Hq, Hkv, D, W, S = 96, 8, 4, 128, 300, 4
    cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
    cache.keys.normal_()
    cache.values.normal_()
    positions = torch.randint(0, 5 * W, (B,), device="cuda")
    positions[:3] = torch.tensor([0, 1, W + S], device="cuda")
    cache.seqlens.copy_(positions)
    kc0, vc0 = cache.keys.clone(), cache.values.clone()
    q = torch.randn(B, Hq, 1, D, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(B, Hkv, 1, D, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(B, Hkv, 1, D, dtype=torch.bfloat16, device="cuda")
    out = cache.attend(q, k, v)
    assert torch.equal(cache.seqlens, positions + 1)
    for b in range(B):
        ref, _ = decode_reference(q[b], k[b], v[b], kc0[b], vc0[b], int(positions[b]), W, S,
                                  1 / math.sqrt(D))
        err = (out[b, :, 0].double() - ref).abs().max().item()
        assert math.isfinite(err) and err <= 2e-2, (b, err)


@pytest.mark.cuda
@cuda
def test_rows_at_different_positions_cuda():
    torch.manual_seed(10)

    def check(out, q, K, V, W, S):
        bf16_check(W, S)(out, q, K, V)

    rows_at_different_positions("cuda", torch.bfloat16, check, D=64)  # CUDA: D in {64, 128}


@pytest.mark.cuda
@cuda
def test_failed_call_leaves_cache_unchanged_cuda():
    failed_call_recovery("cuda", torch.bfloat16, "cpu", D=64)


@pytest.mark.cuda
@cuda
def test_cuda_graph_decode_matches_eager():
    # Capture one decode step, replay it for many tokens; an eager twin fed the
    # same inputs must give bit-identical outputs and cache contents.
    torch.manual_seed(11)
    # W = 512: the decode splits the window (several blocks + combine kernel);
    # row 0 starts past the window so its ring wraps during the replays.
    B, Hq, Hkv, D, W, S = 3, 8, 2, 128, 512, 4
    graph_cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
    eager_cache = RingKVCache(B, Hkv, D, window=W, sink=S, dtype=torch.bfloat16, device="cuda")
    prompt = [torch.randn(B, h, 600, D, dtype=torch.bfloat16, device="cuda")
              for h in (Hq, Hkv, Hkv)]
    lengths = torch.tensor([600, 17, 450], device="cuda")
    for c in (graph_cache, eager_cache):
        c.attend(*prompt, lengths=lengths)
    static = [torch.randn(B, h, 1, D, dtype=torch.bfloat16, device="cuda") for h in (Hq, Hkv, Hkv)]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph
        warm = [t.clone() for t in static]
        graph_cache.attend(*warm)
        eager_cache.attend(*warm)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = graph_cache.attend(*static)
    for step in range(120):  # well past the window: the ring wraps
        new = [torch.randn_like(t) for t in static]
        for s, n in zip(static, new):
            s.copy_(n)
        graph.replay()
        eager_out = eager_cache.attend(*new)
        assert torch.equal(static_out, eager_out), step
        if step % 40 == 0:  # and both are right
            assert torch.isfinite(eager_out.float()).all()
    assert torch.equal(graph_cache.seqlens, eager_cache.seqlens)
    assert graph_cache.seqlens.tolist() == [600 + 1 + 120, 17 + 1 + 120, 450 + 1 + 120]
    assert torch.equal(graph_cache.keys, eager_cache.keys)
    assert torch.equal(graph_cache.values, eager_cache.values)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("case", OPCHECK_CASES)
def test_opcheck_cuda(case):
    name, args = opcheck_inputs("cuda", torch.bfloat16, D=64)[case]
    torch.library.opcheck(getattr(torch.ops.swaa, name).default, args)


def test_public_export():
    assert "RingKVCache" in swaa_ext.__all__ and swaa_ext.RingKVCache is RingKVCache


def test_torch_compile_compiles_each_step_kind_once_cpu():
    """Compiled decode steps and chunks reuse one graph each: nothing the host keeps of the
    positions changes inside the trace (session 16's review: an int that did recompiled every
    call).  Compiled chunks take ring_chunk; the next eager call finds seqlens moved by the
    compiled calls and forgets the positions (a gather would read a ring it cannot vouch for)."""
    from torch._dynamo.utils import counters
    torch.manual_seed(14)
    W, S, D = 5, 1, 16
    compiled = RingKVCache(1, 2, D, window=W, sink=S, dtype=torch.float32, device="cpu")
    eager = RingKVCache(1, 2, D, window=W, sink=S, dtype=torch.float32, device="cpu")
    prefill = [torch.randn(1, h, 70, D) for h in (4, 2, 2)]
    compiled.attend(*prefill), eager.attend(*prefill)  # eager: both rings full
    step = torch.compile(lambda q, k, v: compiled.attend(q, k, v), fullgraph=True,
                         backend="aot_eager")
    before = counters["stats"]["unique_graphs"]
    for lc in (1,) * 6 + (64,) * 4:
        q, k, v = torch.randn(1, 4, lc, D), torch.randn(1, 2, lc, D), torch.randn(1, 2, lc, D)
        torch.testing.assert_close(step(q, k, v), eager.attend(q, k, v), atol=1e-6, rtol=1e-6)
    assert counters["stats"]["unique_graphs"] - before <= 2
    assert torch.equal(compiled.seqlens, eager.seqlens)
    assert eager._exact == 70 + 6 + 4 * 64
    q, k, v = torch.randn(1, 4, 64, D), torch.randn(1, 2, 64, D), torch.randn(1, 2, 64, D)
    torch.testing.assert_close(compiled.attend(q, k, v), eager.attend(q, k, v), atol=1e-6,
                               rtol=1e-6)
    assert compiled._exact is None and compiled._min_seen == 64


def test_torch_compile_fullgraph_cpu():
    # attend traces into one graph (the ops' schemas declare their writes) and
    # the compiled calls update the cache exactly like eager ones.
    torch.manual_seed(12)
    compiled = RingKVCache(2, 2, 16, window=5, sink=1, dtype=torch.float32, device="cpu")
    eager = RingKVCache(2, 2, 16, window=5, sink=1, dtype=torch.float32, device="cpu")
    step = torch.compile(lambda q, k, v: compiled.attend(q, k, v), fullgraph=True,
                         backend="aot_eager")
    for lc in (7, 1, 1, 3):
        q, k, v = torch.randn(2, 4, lc, 16), torch.randn(2, 2, lc, 16), torch.randn(2, 2, lc, 16)
        torch.testing.assert_close(step(q, k, v), eager.attend(q, k, v), atol=0, rtol=0)
    assert torch.equal(compiled.seqlens, eager.seqlens)
    assert torch.equal(compiled.keys, eager.keys) and torch.equal(compiled.values, eager.values)
