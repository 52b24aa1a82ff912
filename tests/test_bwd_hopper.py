"""GPU tests of the Hopper backward (csrc/cuda/hopper/bwd_sm90.*: wgmma + TMA,
sm_90a, head dims 64 and 128; docs/cuda_kernels.md "v6").  SWAA_BWD_HOPPER
picks it per call: 1 = both passes (dq and dk/dv) on Hopper ("v6"; unset: v6
or the single pass by shape, tested in tests/test_bwd_fused.py),
2 = dk/dv only, 3 = dq only, 0 = the sm_80 backward; 4 = the single pass
("v7") is tested in tests/test_bwd_fused.py (its own process in the GPU test
step, so a trap there cannot spoil these), which runs the tests of this file
taking `both_passes` / `bwd_hopper` again with 4.  Gradients are checked against the float64
reference with the FlashAttention tolerance (tests/test_attention_cuda.py), and
against the sm_80 backward; run-to-run bitwise equality, the split sink blocks,
the stride fallback and poisoned outputs are covered too.  Skipped without a
GPU, and (except the path test) where the device or build has no Hopper
backward.  The backward tests of tests/test_attention_cuda.py that pin
SWAA_BWD_HOPPER=1 run through it too; those that leave it unset take v6 or v7 by
shape.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import swaa_ext
from swaa_ext.reference import reference_attention
from test_attention_hopper import SHAPE_GRID  # (B, Hq, Hkv, Lq, Lk): the forward's shape grid

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not swaa_ext.build_info()["cuda"], reason="built without CUDA kernels"),
]

PATHS = {"1": "sm90", "2": "sm90-dkdv", "3": "sm90-dq", "4": "sm90-fused"}
_CACHE = {}


def inputs(B, Hq, Hkv, Lq, Lk, dtype=torch.bfloat16, seed=0, D=128):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=dtype, generator=g)
    dout = torch.randn(B, Hq, Lq, D, device="cuda", dtype=dtype, generator=g)
    return q, k, v, dout


def hopper_bwd_available():
    """A compute-capability 9.0 device and a build with the Hopper backward."""
    if "hopper" not in _CACHE:
        q = torch.randn(1, 1, 128, 128, device="cuda", dtype=torch.bfloat16)
        old = os.environ.get("SWAA_BWD_HOPPER")
        os.environ["SWAA_BWD_HOPPER"] = "1"
        try:
            _CACHE["hopper"] = (torch.cuda.get_device_capability() == (9, 0)
                                and torch.ops.swaa.bwd_path(q, q, q, q) == "sm90")
        finally:
            if old is None:
                del os.environ["SWAA_BWD_HOPPER"]
            else:
                os.environ["SWAA_BWD_HOPPER"] = old
    return _CACHE["hopper"]


@pytest.fixture(params=["1", "2", "3"], ids=["sm90", "sm90-dkdv", "sm90-dq"])
def bwd_hopper(request, monkeypatch):
    """The three Hopper settings: both passes, dk/dv only, dq only."""
    if not hopper_bwd_available():
        pytest.skip("no Hopper backward on this device / in this build")
    monkeypatch.setenv("SWAA_BWD_HOPPER", request.param)
    return PATHS[request.param]


@pytest.fixture(params=["1"], ids=["sm90"])
def both_passes(request, monkeypatch):
    """dq and dk/dv on Hopper: the two passes (SWAA_BWD_HOPPER=1; 4 in test_bwd_fused.py)."""
    if not hopper_bwd_available():
        pytest.skip("no Hopper backward on this device / in this build")
    monkeypatch.setenv("SWAA_BWD_HOPPER", request.param)
    return PATHS[request.param]


def bwd(dout, q, k, v, out, lse, window=None, sink=0, full_from=None, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.swaa.bwd(dout, q, k, v, out, lse, window, sink, full_from, scale)


def fwd(q, k, v, window=None, sink=0, full_from=None, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.swaa.fwd(q, k, v, window, sink, full_from, scale)


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def reference_grads(q, k, v, dout, compute_dtype, **mask):
    qs, ks, vs = (t.detach().to(compute_dtype).requires_grad_(True) for t in (q, k, v))
    out = reference_attention(qs, ks, vs, compute_dtype=compute_dtype, **mask)
    out.backward(dout.to(compute_dtype))
    return qs.grad, ks.grad, vs.grad


def check_grads(q, k, v, dout, grads, compute_dtype=torch.float64, **mask):
    """FlashAttention-style bound on dq, dk, dv: err(ours) <= 2 err(torch in
    q's dtype) + 1e-3, both against the high-precision reference."""
    ref = reference_grads(q, k, v, dout, compute_dtype, **mask)
    low = reference_grads(q, k, v, dout, q.dtype, **mask)
    for name, o, r, lp in zip(("dq", "dk", "dv"), grads, ref, low):
        assert not torch.isnan(o).any(), f"{name} has NaN (unwritten or bad) elements"
        bound = 2 * max_err(lp, r) + 1e-3
        err = max_err(o, r)
        assert err <= bound, f"{name}: err {err:.3g} > bound {bound:.3g}"


def mask_kwargs(window, sink, ff, scale):
    return dict(window=window, sink=sink, full_from=ff, softmax_scale=scale)


def test_bwd_path_selection(monkeypatch):
    """bwd_path names the kernels swaa::bwd takes: sm80 with SWAA_BWD_HOPPER=0,
    sm90 / sm90-dkdv / sm90-dq / sm90-fused with 1 / 2 / 3 / 4 (unset: 1 without a
    window, the shape rule of test_bwd_fused.py otherwise) on a 9.0 device with a
    Hopper build (contiguous or (B, L, H, D) views, D 64 and 128,
    bf16 and fp16), the sm_80 kernels with a reason for stride-0 (expanded) K/V."""
    q, k, v, dout = inputs(2, 4, 2, 300, 300)
    monkeypatch.setenv("SWAA_BWD_HOPPER", "0")
    assert torch.ops.swaa.bwd_path(dout, q, k, v) == "sm80: SWAA_BWD_HOPPER=0"
    if not hopper_bwd_available():
        monkeypatch.setenv("SWAA_BWD_HOPPER", "1")
        assert torch.ops.swaa.bwd_path(dout, q, k, v).startswith("sm80: ")
        pytest.skip("no Hopper backward here: only the sm80 answers are checked")
    for knob, path in PATHS.items():
        monkeypatch.setenv("SWAA_BWD_HOPPER", knob)
        assert torch.ops.swaa.bwd_path(dout, q, k, v) == path
    monkeypatch.delenv("SWAA_BWD_HOPPER")  # the default, no window given: both passes
    assert torch.ops.swaa.bwd_path(dout, q, k, v) == "sm90"
    monkeypatch.setenv("SWAA_BWD_HOPPER", "1")
    for shape in [(1, 1, 1, 1, 1), (2, 4, 1, 97, 300), (1, 2, 1, 4096, 4100)]:
        for dtype in (torch.bfloat16, torch.float16):
            for D in (64, 128):
                q, k, v, dout = inputs(*shape, dtype=dtype, D=D)
                assert torch.ops.swaa.bwd_path(dout, q, k, v) == "sm90", (shape, dtype, D)
    qt = torch.randn(2, 300, 4, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    kt = torch.randn(2, 300, 2, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    assert torch.ops.swaa.bwd_path(qt, qt, kt, kt) == "sm90"
    q, k, v, dout = inputs(2, 4, 2, 300, 300)
    k1 = k[:1].expand(2, -1, -1, -1)  # batch stride 0
    assert "strides" in torch.ops.swaa.bwd_path(dout, q, k1, k1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_window_one_dv_is_dout(bwd_hopper, dtype):
    """Diagnostic for the dk/dv kernel: with window 1 every query sees only its
    own key with probability exactly 1, so dv = P^T dO = dout bitwise (no GQA,
    Lq = Lk): TMA of Q, K, dO, the S^T wgmma, exp2 against the staged lse, the
    register-A dV wgmma and the epilogue.  dk and dq are tiny (dS ~ 0)."""
    for D in (64, 128):
        q, k, v, dout = inputs(2, 4, 4, 300, 300, dtype, seed=1, D=D)
        out, lse = fwd(q, k, v, 1, 0, None, 0.1)
        dq, dk, dv = bwd(dout, q, k, v, out, lse, 1, 0, None, 0.1)
        if bwd_hopper != "sm90-dq":
            assert torch.equal(dv, dout), f"D={D}: dv != dout with window 1 (P^T dO is wrong)"
        assert dq.abs().max().item() < 0.05 and dk.abs().max().item() < 0.05


MASK_GRID = [  # (window, sink, full_from): edges of the 64-row / 64-key / 128-key tiles
    (None, 0, None),
    (1, 0, None),
    (63, 0, None),
    (64, 0, None),
    (129, 1, None),
    (300, 128, None),
    (64, 129, None),
    (256, 4, 384),
    (200, 2, "per"),
]


def full_from_of(ff, B, Lk):
    if ff == "per":
        return torch.tensor([1 << 40, Lk // 2][:B], dtype=torch.int64, device="cuda")
    if ff is not None:
        return torch.full((B,), ff, dtype=torch.int64, device="cuda")
    return None


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPE_GRID, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", MASK_GRID, ids=lambda m: f"w{m[0]}s{m[1]}f{m[2]}")
def test_mask_grid_matches_reference(both_passes, dtype, shape, mask, D):
    B, Hq, Hkv, Lq, Lk = shape
    window, sink, ff = mask
    ff = full_from_of(ff, B, Lk)
    q, k, v, dout = inputs(B, Hq, Hkv, Lq, Lk, dtype, seed=Lq + Lk + (window or 0), D=D)
    assert torch.ops.swaa.bwd_path(dout, q, k, v) == both_passes
    out, lse = fwd(q, k, v, window, sink, ff, 0.1)
    grads = bwd(dout, q, k, v, out, lse, window, sink, ff, 0.1)
    check_grads(q, k, v, dout, grads, **mask_kwargs(window, sink, ff, 0.1))


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("case", [(2, 8, 2, 700, 700, 100, 4, "per"),
                                  (1, 4, 1, 300, 1000, 64, 130, None),
                                  (2, 4, 4, 520, 520, None, 0, 260)],
                         ids=["gqa4-per", "mqa-short-q", "gqa1-ff"])
def test_single_pass_settings_match_reference(bwd_hopper, case, D):
    """SWAA_BWD_HOPPER=2 and 3 (one pass on Hopper, the other on sm_80, delta
    from the Hopper preprocessing) give the reference gradients too."""
    B, Hq, Hkv, Lq, Lk, window, sink, ff = case
    ff = full_from_of(ff, B, Lk)
    q, k, v, dout = inputs(B, Hq, Hkv, Lq, Lk, torch.bfloat16, seed=Lq + D, D=D)
    assert torch.ops.swaa.bwd_path(dout, q, k, v) == bwd_hopper
    out, lse = fwd(q, k, v, window, sink, ff, 0.125)
    grads = bwd(dout, q, k, v, out, lse, window, sink, ff, 0.125)
    check_grads(q, k, v, dout, grads, **mask_kwargs(window, sink, ff, 0.125))


@pytest.mark.parametrize("split", ["1", "2", "7", "64"])
@pytest.mark.parametrize("case", [(2, 8, 2, 1500, 1500, 64, 4, None),
                                  (2, 4, 2, 1500, 1500, 64, 200, None),
                                  (2, 8, 2, 1500, 1500, 64, 4, "per")],
                         ids=["gqa4", "sink200", "per"])
def test_split_sink_blocks_match_reference(both_passes, case, split, monkeypatch):
    """The split sink key blocks (partials + fixed-order reduce, shared with
    sm_80) with automatic, 2, 7 and 64 pieces (64: empty trailing pieces)."""
    B, Hq, Hkv, Lq, Lk, window, sink, ff = case
    monkeypatch.setenv("SWAA_BWD_SPLIT", split)
    ff = full_from_of(ff, B, Lk)
    for D, dtype in ((128, torch.bfloat16), (64, torch.float16)):
        q, k, v, dout = inputs(B, Hq, Hkv, Lq, Lk, dtype, seed=Lq + sink + D, D=D)
        out, lse = fwd(q, k, v, window, sink, ff, 0.1)
        grads = bwd(dout, q, k, v, out, lse, window, sink, ff, 0.1)
        check_grads(q, k, v, dout, grads, **mask_kwargs(window, sink, ff, 0.1))


def test_long_8k(both_passes):
    """8k tokens, GQA 4, window + sink, one sequence switching to full attention."""
    B, Hq, Hkv, L = 2, 4, 1, 8192
    ff = torch.tensor([1 << 40, 6000], dtype=torch.int64, device="cuda")
    q, k, v, dout = inputs(B, Hq, Hkv, L, L, seed=8)
    out, lse = fwd(q, k, v, 1024, 4, ff)
    grads = bwd(dout, q, k, v, out, lse, 1024, 4, ff)
    check_grads(q, k, v, dout, grads, torch.float32,
                **mask_kwargs(1024, 4, ff, 128 ** -0.5))


def test_long_32k_against_sm80(both_passes, monkeypatch):
    """32k tokens, W=4096, sink 4: dq on row slices against the float32
    reference of those rows; dk, dv against the sm_80 backward (itself tested
    against the reference)."""
    B, Hq, Hkv, L = 1, 2, 1, 32768
    q, k, v, dout = inputs(B, Hq, Hkv, L, L, seed=32)
    out, lse = fwd(q, k, v, 4096, 4)
    dq, dk, dv = bwd(dout, q, k, v, out, lse, 4096, 4)
    for r0, r1 in [(0, 256), (4000, 4200), (L - 300, L)]:
        sl = (slice(None), slice(None), slice(r0, r1))
        kw = mask_kwargs(4096, 4, None, 128 ** -0.5)
        ref = reference_grads(q[sl], k[:, :, :r1], v[:, :, :r1], dout[sl], torch.float32, **kw)[0]
        low = reference_grads(q[sl], k[:, :, :r1], v[:, :, :r1], dout[sl], q.dtype, **kw)[0]
        err, bound = max_err(dq[sl], ref), 2 * max_err(low, ref) + 1e-3
        assert err <= bound, f"dq rows {r0}:{r1}: err {err:.3g} > bound {bound:.3g}"
    monkeypatch.setenv("SWAA_BWD_HOPPER", "0")
    _, dk8, dv8 = bwd(dout, q, k, v, out, lse, 4096, 4)
    for name, a, b in (("dk", dk, dk8), ("dv", dv, dv8)):
        scale = b.float().abs().max().item()
        err = max_err(a, b)
        assert err <= 2e-2 * scale, f"{name}: Hopper vs sm_80 err {err:.3g} (max |x| {scale:.3g})"


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_agrees_with_sm80_backward(both_passes, monkeypatch, dtype, D):
    """Both backwards compute the same function: close in dq, dk, dv."""
    q, k, v, dout = inputs(2, 8, 2, 1500, 1600, dtype, seed=5, D=D)
    ff = torch.tensor([700, 1 << 40], dtype=torch.int64, device="cuda")
    out, lse = fwd(q, k, v, 333, 5, ff)
    g9 = bwd(dout, q, k, v, out, lse, 333, 5, ff)
    monkeypatch.setenv("SWAA_BWD_HOPPER", "0")
    g8 = bwd(dout, q, k, v, out, lse, 333, 5, ff)
    for name, a, b in zip(("dq", "dk", "dv"), g9, g8):
        scale = b.float().abs().max().item()
        assert max_err(a, b) <= 2e-2 * scale, name


@pytest.mark.parametrize("D", [64, 128])
def test_bitwise_repeatable(both_passes, monkeypatch, D):
    """Two runs are bitwise equal (no atomics; split pieces summed in a fixed
    order), with the automatic split, a forced one and both CTA orders."""
    q, k, v, dout = inputs(2, 8, 2, 2049, 2049, seed=9, D=D)
    ff = torch.tensor([1000, 1 << 40], dtype=torch.int64, device="cuda")
    out, lse = fwd(q, k, v, 200, 4, ff)
    for split, order in (("1", "1"), ("3", "1"), ("1", "0")):
        monkeypatch.setenv("SWAA_BWD_SPLIT", split)
        monkeypatch.setenv("SWAA_BWD_ORDER", order)
        first = bwd(dout, q, k, v, out, lse, 200, 4, ff)
        for _ in range(2):
            again = bwd(dout, q, k, v, out, lse, 200, 4, ff)
            for name, a, b in zip(("dq", "dk", "dv"), first, again):
                assert torch.equal(a, b), f"{name} differs between runs (split {split}, order {order})"
    # the CTA order does not change dq (each row block is one CTA either way)
    monkeypatch.setenv("SWAA_BWD_SPLIT", "1")
    monkeypatch.setenv("SWAA_BWD_ORDER", "0")
    dq0 = bwd(dout, q, k, v, out, lse, 200, 4, ff)[0]
    monkeypatch.setenv("SWAA_BWD_ORDER", "1")
    assert torch.equal(dq0, bwd(dout, q, k, v, out, lse, 200, 4, ff)[0])


def kernels_of(run):
    """Names of the CUDA kernels run() launches (torch.profiler)."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return [e.key for e in prof.key_averages()]


def template_args(name):
    """The template arguments of a kernel name as the profiler gives it
    (`void ns::kernel<__nv_bfloat16, 128, true>(...)` -> ['__nv_bfloat16', '128', 'true'])."""
    head = name.split("(")[0]
    return head[head.index("<") + 1:head.rindex(">")].split(", ")


def assert_same_bits_on_a_side_stream_and_in_a_graph(run, want):
    """run() (a backward: dq, dk, dv) gives want's bits on a caller stream of its
    own and in the replays of a CUDA graph that captured it (outputs poisoned
    before each replay)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        got = run()
    torch.cuda.current_stream().wait_stream(side)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert torch.equal(a, b), f"{name} differs on a caller stream of its own"
    graph = torch.cuda.CUDAGraph()
    warm = torch.cuda.Stream()
    warm.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warm):
        run()
    torch.cuda.current_stream().wait_stream(warm)
    with torch.cuda.graph(graph):
        captured = run()
    for _ in range(3):
        for t in captured:
            t.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for name, a, b in zip(("dq", "dk", "dv"), captured, want):
            assert torch.equal(a, b), f"{name} differs in a graph replay"


@pytest.mark.parametrize("D", [64, 128])
def test_concurrent_passes_same_bits(both_passes, monkeypatch, D):
    """SWAA_BWD_CONCURRENT=1 runs the dq pass on a second stream beside the dk/dv
    pass: the same kernels, so dq, dk, dv are bitwise those of the one-stream
    default, with split sink blocks (the reduce after dk/dv) and per-sequence
    full_from; on a non-default caller stream; and captured in a CUDA graph
    (the fork and join become graph edges) whose replays match eager."""
    q, k, v, dout = inputs(2, 8, 2, 3000, 3000, seed=21, D=D)
    ff = torch.tensor([1 << 40, 1700], dtype=torch.int64, device="cuda")
    out, lse = fwd(q, k, v, 300, 130, ff)
    for split in ("1", "3"):
        monkeypatch.setenv("SWAA_BWD_SPLIT", split)
        monkeypatch.setenv("SWAA_BWD_CONCURRENT", "0")
        want = bwd(dout, q, k, v, out, lse, 300, 130, ff)
        monkeypatch.setenv("SWAA_BWD_CONCURRENT", "1")
        got = bwd(dout, q, k, v, out, lse, 300, 130, ff)
        for name, a, b in zip(("dq", "dk", "dv"), got, want):
            assert torch.equal(a, b), f"{name} differs with the concurrent passes (split {split})"
    assert_same_bits_on_a_side_stream_and_in_a_graph(
        lambda: bwd(dout, q, k, v, out, lse, 300, 130, ff), want)


def pipelined_kernel(name):
    """A backward kernel instantiated with its pipelined schedule: its last
    template argument (kPipe of the dq and dk/dv kernels) or the single pass's
    PIPE (after COLS) is `true`."""
    kernel = name.split("<")[0].split("::")[-1]
    if kernel == "bwd_fused_sm90_kernel":  # <T, D, COLS, PIPE, STSM, ITEM_SPAN>
        return template_args(name)[3] == "true"
    return (kernel in ("bwd_dq_sm90_kernel", "bwd_dkdv_sm90_kernel")
            and template_args(name)[-1] == "true")


def want_pipelined(both_passes, D, setting):
    """The kernels SWAA_BWD_PIPELINE = setting (None: unset) runs pipelined:
    by default (1) the dq kernel of the two passes at both head dims and the
    single pass at D=64; 2 adds the dk/dv kernel at D=64; 0 none."""
    level = int(setting) if setting in ("0", "2") else 1  # unset, "1", anything else: 1
    if level == 0:
        return set()
    if both_passes == "sm90":
        return {"bwd_dq_sm90_kernel"} | ({"bwd_dkdv_sm90_kernel"} if D == 64 and level == 2
                                         else set())
    return {"bwd_fused_sm90_kernel"} if D == 64 else set()


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", [(2, 8, 2, 1500, 1500, 64, 40, None, "1"),
                                  (2, 8, 2, 1500, 1500, 64, 40, None, "3"),
                                  (2, 8, 2, 2049, 2049, 200, 4, "per", "1"),
                                  (1, 4, 1, 300, 1000, 100, 130, None, "1"),
                                  (2, 4, 4, 520, 520, None, 0, 260, "1"),
                                  (1, 2, 1, 64, 64, 1, 0, None, "1"),
                                  (1, 4, 2, 700, 700, 63, 0, None, "1")],
                         ids=["sink40", "sink40-split3", "per-ff", "short-q-sink130", "full-ff",
                              "one-item", "w63"])
def test_pipelined_kernels_same_bits(both_passes, monkeypatch, dtype, case, D):
    """The pipelined kernels (consumer groups that compute the next item's or
    tile's probabilities while this one's last products run; in the single
    pass, test_bwd_fused.py runs this test with SWAA_BWD_HOPPER=4, an item's dQ
    product issued with its dV, dK) issue the same products in the same order:
    with SWAA_BWD_PIPELINE unset (the default), 1, 2 and a value it does
    not take ("on": the default, not 0), dq, dk, dv are bitwise those of 0
    (no pipelined kernel), and the profiler sees exactly the kernels each
    setting is for run pipelined.  The cases cover
    items a dk/dv group skips (sink 40 < the block's second 64 keys: the far
    rows see none of them), split sink blocks, per-sequence full_from, a short
    query, a single item or tile and windows of 1 and 63."""
    B, Hq, Hkv, Lq, Lk, window, sink, ff, split = case
    monkeypatch.setenv("SWAA_BWD_SPLIT", split)
    ff = full_from_of(ff, B, Lk)
    q, k, v, dout = inputs(B, Hq, Hkv, Lq, Lk, dtype, seed=Lq + sink, D=D)
    out, lse = fwd(q, k, v, window, sink, ff, 0.1)

    def run():
        return bwd(dout, q, k, v, out, lse, window, sink, ff, 0.1)

    def pipelined_set():
        return {n.split("<")[0].split("::")[-1] for n in kernels_of(run) if pipelined_kernel(n)}

    monkeypatch.setenv("SWAA_BWD_PIPELINE", "0")
    want = run()
    assert pipelined_set() == set()
    for setting in (None, "1", "2", "on"):
        if setting is None:
            monkeypatch.delenv("SWAA_BWD_PIPELINE")
        else:
            monkeypatch.setenv("SWAA_BWD_PIPELINE", setting)
        got = run()
        assert pipelined_set() == want_pipelined(both_passes, D, setting), setting
        for name, a, b in zip(("dq", "dk", "dv"), got, want):
            assert torch.equal(a, b), f"{name} differs with SWAA_BWD_PIPELINE={setting}"
    if D == 64 and case[-1] == "1" and window == 64:
        check_grads(q, k, v, dout, got, **mask_kwargs(window, sink, ff, 0.1))


def test_stride_fallback_and_strided_views(both_passes):
    """K/V expanded over the batch (stride 0) take the sm_80 backward; (B, L, H, D)
    views take the Hopper one; both give the reference gradients."""
    q, k, v, dout = inputs(2, 4, 2, 257, 257, seed=6)
    k1, v1 = k[:1].expand(2, -1, -1, -1), v[:1].expand(2, -1, -1, -1)
    assert torch.ops.swaa.bwd_path(dout, q, k1, v1).startswith("sm80")
    out, lse = fwd(q, k1, v1, 50, 3)
    grads = bwd(dout, q, k1, v1, out, lse, 50, 3)
    check_grads(q, k1.contiguous(), v1.contiguous(), dout,
                (grads[0], grads[1], grads[2]), **mask_kwargs(50, 3, None, 128 ** -0.5))
    # (B, L, H, D) memory: non-contiguous (B, H, L, D) views
    qt, kt, vt, dt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v, dout))
    assert torch.ops.swaa.bwd_path(dt, qt, kt, vt) == both_passes
    out, lse = fwd(qt, kt, vt, 50, 3)
    grads = bwd(dt, qt, kt, vt, out, lse, 50, 3)
    check_grads(q, k, v, dout, grads, **mask_kwargs(50, 3, None, 128 ** -0.5))


def test_autograd_through_swa_attention(both_passes):
    """The public autograd path (swa_attention + backward) uses the Hopper backward."""
    q, k, v, dout = inputs(1, 4, 2, 500, 500, seed=12, D=64)
    qs, ks, vs = (t.detach().requires_grad_(True) for t in (q, k, v))
    out = swaa_ext.swa_attention(qs, ks, vs, window=77, sink=2)
    out.backward(dout)
    check_grads(q, k, v, dout, (qs.grad, ks.grad, vs.grad),
                **mask_kwargs(77, 2, None, None))


def test_poisoned_outputs_are_all_written(both_passes):
    """Outputs start as NaN (SWAA_POISON_OUTPUTS=1): the Hopper backward writes
    every row of dq, dk, dv, also past the last full block, for Lq < Lk, for
    key blocks no query sees, and for split sink blocks."""
    script = textwrap.dedent("""
        import os, torch, swaa_ext
        torch.manual_seed(0)
        for (B, Hq, Hkv, Lq, Lk, w, s, D) in [(1, 4, 1, 97, 97, 16, 4, 128),
                                              (2, 8, 2, 1, 1025, None, 0, 64),
                                              (2, 4, 4, 1025, 1025, 7, 1, 128),
                                              (1, 2, 1, 130, 800, 1, 0, 64),
                                              (1, 4, 2, 3000, 3000, 64, 4, 128)]:
            q = torch.randn(B, Hq, Lq, D, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=torch.bfloat16)
            dout = torch.randn_like(q)
            assert torch.ops.swaa.bwd_path(dout, q, k, v) == os.environ["EXPECTED_PATH"]
            out, lse = torch.ops.swaa.fwd(q, k, v, w, s, None, 0.1)
            grads = torch.ops.swaa.bwd(dout, q, k, v, out, lse, w, s, None, 0.1)
            for name, g in zip(("dq", "dk", "dv"), grads):
                assert not torch.isnan(g).any(), (name, B, Hq, Lq, Lk)
        print("ok")
    """)
    # SWAA_BWD_HOPPER from the fixture
    env = dict(os.environ, SWAA_POISON_OUTPUTS="1", EXPECTED_PATH=both_passes)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
