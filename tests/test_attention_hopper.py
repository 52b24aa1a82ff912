"""GPU tests of the Hopper forward (csrc/cuda/hopper: wgmma + TMA, sm_90a,
head dims 64 and 128; docs/cuda_kernels.md "v5").  The general forward tests of
tests/test_attention_cuda.py run through it too (fixture `fwd_kernel`); these
add long sequences, a denser mask grid around the 128-key tile edges, the
stride fallback, agreement with the sm_80 kernel and run-to-run equality.
Skipped without a GPU, and (except the path test) where the device or build
has no Hopper forward.
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

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not swaa_ext.build_info()["cuda"], reason="built without CUDA kernels"),
]

def is_hopper_device():
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def build_has_hopper():
    """The build has the sm_90a forward: on a 9.0 device a plain call takes it."""
    q = torch.randn(1, 1, 128, 128, device="cuda", dtype=torch.bfloat16)
    env = os.environ.pop("SWAA_FWD_HOPPER", None)
    try:
        return torch.ops.swaa.fwd_path(q, q, q) == DEFAULT_PATH
    finally:
        if env is not None:
            os.environ["SWAA_FWD_HOPPER"] = env


# SWAA_FWD_HOPPER value -> the path name swaa::fwd_path reports for it.
HOPPER_VARIANTS = {"1": "sm90", "2": "sm90-overlap", "3": "sm90-v51", "4": "sm90-v51-pingpong",
                   "5": "sm90-v51-persistent", "6": "sm90-v51-pingpong-persistent",
                   "7": "sm90-v51-pingpong-persistent-lean",
                   "8": "sm90-v51-pingpong-persistent-lean-pinned",
                   "9": "sm90-v51-pingpong-persistent-lean-masks",
                   "10": "sm90-v51-pingpong-persistent-lean-split",
                   "11": "sm90-v51-pingpong-persistent-lean-overlap"}


# The path a call takes with SWAA_FWD_HOPPER unset (kFwdHopperDefault in
# csrc/cuda/attention.cpp).
DEFAULT_PATH = HOPPER_VARIANTS["11"]

# Variants a plain run tests: all of them (SWAA_TEST_HOPPER_VARIANTS="6", say,
# restricts a run to one).
DEFAULT_TEST_VARIANTS = "1,2,3,4,5,6,7,8,9,10,11"


@pytest.fixture(params=list(HOPPER_VARIANTS), ids=list(HOPPER_VARIANTS.values()))
def hopper(request, monkeypatch):
    """Every Hopper variant: 1 (v5: S, softmax, P V in turn), 2 (v5, softmax of
    tile i overlapping P V of tile i - 1), 3 (v5.1: 192-row CTAs at D=64, deeper
    K/V ring, group tile skipping, TMA-store epilogue), 4 (v5.1 with ping-pong
    of the consumer warp groups), 5, 6 (3, 4 with persistent CTAs), 7 (6 with the
    lean softmax: one FFMA per score, O rescaled only when a row's max rises by more
    than 2^8), 8 (7 with LEAN level 2: fewer instructions per turn, fwd51_sm90.cuh), 9 (8 with
    one-bound masks on most boundary tiles, LEAN level 3), 10 (9 freeing a stage's K once the
    tile's S is done and its V after P V, LEAN level 4), 11 (10 whose softmax of tile i runs
    while its own P V of tile i - 1 does, LEAN level 5)."""
    if not (is_hopper_device() and build_has_hopper()):
        pytest.skip("no Hopper forward on this device / in this build")
    only = os.environ.get("SWAA_TEST_HOPPER_VARIANTS", DEFAULT_TEST_VARIANTS)
    if request.param not in only.split(","):
        pytest.skip(f"variant {request.param} not in SWAA_TEST_HOPPER_VARIANTS={only}")
    monkeypatch.setenv("SWAA_FWD_HOPPER", request.param)
    return HOPPER_VARIANTS[request.param]


def inputs(B, Hq, Hkv, Lq, Lk, dtype=torch.bfloat16, seed=0, D=128):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=dtype, generator=g)
    return q, k, v


def fwd(q, k, v, window=None, sink=0, full_from=None, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return torch.ops.swaa.fwd(q, k, v, window, sink, full_from, scale)


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def check_against_reference(q, k, v, out, lse, compute_dtype=torch.float64, **mask):
    """FlashAttention-style bound: err(ours) <= 2 err(torch in q's dtype) + 1e-3
    for out; lse (float32 everywhere) within 1e-3 + 1e-5 max|lse|."""
    kw = dict(window=mask.get("window"), sink=mask.get("sink", 0),
              full_from=mask.get("full_from"), softmax_scale=mask.get("scale"))
    ref_out, ref_lse = reference_attention(q.to(compute_dtype), k.to(compute_dtype),
                                           v.to(compute_dtype), return_lse=True,
                                           compute_dtype=compute_dtype, **kw)
    low_out, _ = reference_attention(q, k, v, return_lse=True, compute_dtype=q.dtype, **kw)
    assert not torch.isnan(out).any() and not torch.isnan(lse).any()
    bound = 2 * max_err(low_out, ref_out) + 1e-3
    err = max_err(out, ref_out)
    assert err <= bound, f"out: err {err:.3g} > bound {bound:.3g}"
    lse_bound = 1e-3 + 1e-5 * ref_lse.abs().max().item()
    lse_err = max_err(lse, ref_lse)
    assert lse_err <= lse_bound, f"lse: err {lse_err:.3g} > bound {lse_bound:.3g}"


def test_path_selection(monkeypatch):
    """fwd_path says which kernel runs: the default Hopper variant (v5.1,
    ping-pong, persistent) for D=128 and D=64 16-bit inputs on a 9.0 device
    with a Hopper build (contiguous or (B, L, H, D) views, any length); the
    sm_80 kernel with SWAA_FWD_HOPPER=0 and for stride-0 (expanded) K/V, with
    the reason."""
    monkeypatch.delenv("SWAA_FWD_HOPPER", raising=False)
    q, k, v = inputs(2, 4, 2, 300, 300)
    if not (is_hopper_device() and build_has_hopper()):
        assert torch.ops.swaa.fwd_path(q, k, v).startswith("sm80: ")
        pytest.skip("no Hopper forward here: only the sm80 answer is checked")
    for shape in [(1, 1, 1, 1, 1), (2, 4, 1, 97, 300), (1, 8, 8, 1025, 1025), (1, 2, 1, 4096, 4100)]:
        for dtype in (torch.bfloat16, torch.float16):
            for D in (64, 128):
                path = torch.ops.swaa.fwd_path(*inputs(*shape, dtype=dtype, D=D))
                assert path == DEFAULT_PATH, (shape, dtype, D, path)
    qt = torch.randn(2, 300, 4, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    kt = torch.randn(2, 300, 2, 128, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    assert torch.ops.swaa.fwd_path(qt, kt, kt) == DEFAULT_PATH
    k1 = k[:1].expand(2, -1, -1, -1)  # batch stride 0
    assert "strides" in torch.ops.swaa.fwd_path(q, k1, k1)
    for knob, name in HOPPER_VARIANTS.items():
        monkeypatch.setenv("SWAA_FWD_HOPPER", knob)
        assert torch.ops.swaa.fwd_path(q, k, v) == name
        for D in (64, 128):  # v5.1 also needs out describable by a tensor map: always here
            assert torch.ops.swaa.fwd_path(*inputs(1, 2, 1, 193, 193, D=D)) == name
    monkeypatch.setenv("SWAA_FWD_HOPPER", "0")
    assert torch.ops.swaa.fwd_path(q, k, v) == "sm80: SWAA_FWD_HOPPER=0"


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_window_one_isolates_the_two_products(hopper, dtype, D):
    """Diagnostics that point at one half of the kernel when something is off.
    With window 1 every row sees only its own key: P = 1 exactly, so out must
    equal V bitwise (TMA of V, the MN-major V descriptor, the register-A wgmma,
    the mask and the epilogue), and lse must equal scale * q.k of the row
    (TMA of Q and K, their K-major descriptors, the S wgmma)."""
    B, Hq, Hkv, L = 2, 4, 2, 300
    q, k, v = inputs(B, Hq, Hkv, L, L, dtype, seed=1, D=D)
    out, lse = fwd(q, k, v, 1, 0, None, 0.1)
    kv_of_q = torch.arange(Hq, device="cuda") // (Hq // Hkv)
    v_rep, k_rep = v[:, kv_of_q], k[:, kv_of_q]
    assert torch.equal(out, v_rep), "P V is wrong (out != v with window 1)"
    qk = (q.float() * k_rep.float()).sum(-1) * 0.1
    assert max_err(lse, qk) <= 1e-3 * max(1.0, qk.abs().max().item()), "Q K^T is wrong"


MASK_GRID = [  # (window, sink, full_from): edges of the 128-key tiles and 64-row groups
    (None, 0, None),
    (1, 0, None),
    (127, 0, None),
    (128, 0, None),
    (129, 1, None),
    (300, 128, None),
    (64, 129, None),
    (256, 4, 384),
    (200, 2, "per"),
]
SHAPE_GRID = [  # (B, Hq, Hkv, Lq, Lk)
    (1, 2, 1, 1, 1),
    (2, 4, 2, 63, 63),
    (1, 4, 1, 129, 129),
    (2, 4, 4, 383, 383),
    (1, 8, 2, 100, 777),     # Lq < Lk, GQA 4
    (2, 2, 1, 640, 1000),
]


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("shape", SHAPE_GRID, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", MASK_GRID, ids=lambda m: f"w{m[0]}s{m[1]}f{m[2]}")
def test_mask_grid_matches_reference(hopper, dtype, shape, mask, D):
    B, Hq, Hkv, Lq, Lk = shape
    window, sink, ff = mask
    if ff == "per":
        ff = torch.tensor([1 << 40, Lk // 2][:B], dtype=torch.int64, device="cuda")
    elif ff is not None:
        ff = torch.full((B,), ff, dtype=torch.int64, device="cuda")
    q, k, v = inputs(B, Hq, Hkv, Lq, Lk, dtype, seed=Lq + Lk + (window or 0), D=D)
    assert torch.ops.swaa.fwd_path(q, k, v) == hopper
    out, lse = fwd(q, k, v, window, sink, ff, 0.1)
    check_against_reference(q, k, v, out, lse, window=window, sink=sink, full_from=ff, scale=0.1)


def test_long_8k(hopper):
    """8k tokens, GQA 4, window + sink, one sequence switching to full attention."""
    B, Hq, Hkv, L = 2, 4, 1, 8192
    ff = torch.tensor([1 << 40, 6000], dtype=torch.int64, device="cuda")
    q, k, v = inputs(B, Hq, Hkv, L, L, seed=8)
    out, lse = fwd(q, k, v, 1024, 4, ff)
    check_against_reference(q, k, v, out, lse, torch.float32, window=1024, sink=4, full_from=ff,
                            scale=128 ** -0.5)


def test_long_32k_row_slices(hopper):
    """32k tokens, W=4096, sink 4: row slices against the float32 reference of
    those rows (keys past a slice's last row are invisible to it)."""
    B, Hq, Hkv, L = 1, 2, 1, 32768
    q, k, v = inputs(B, Hq, Hkv, L, L, seed=32)
    out, lse = fwd(q, k, v, 4096, 4)
    for r0, r1 in [(0, 256), (4000, 4200), (L - 300, L)]:
        sl = (slice(None), slice(None), slice(r0, r1))
        check_against_reference(q[sl], k[:, :, :r1], v[:, :, :r1], out[sl], lse[sl],
                                torch.float32, window=4096, sink=4, scale=128 ** -0.5)


@pytest.mark.parametrize("D", [64, 128])
def test_agrees_with_sm80_kernel(hopper, monkeypatch, D):
    """Both forwards compute the same function: close in out, lse."""
    q, k, v = inputs(2, 8, 2, 1500, 1500, seed=5, D=D)
    ff = torch.tensor([700, 1 << 40], dtype=torch.int64, device="cuda")
    out9, lse9 = fwd(q, k, v, 333, 5, ff)
    monkeypatch.setenv("SWAA_FWD_HOPPER", "0")
    out8, lse8 = fwd(q, k, v, 333, 5, ff)
    assert max_err(out9, out8) <= 2e-2
    assert max_err(lse9, lse8) <= 1e-3


def test_stride_fallback_is_correct(hopper):
    """K/V expanded over the batch (stride 0) take the sm_80 kernel and give
    what the Hopper kernel gives on materialised copies."""
    q, k, v = inputs(2, 4, 2, 257, 257, seed=6)
    k1, v1 = k[:1].expand(2, -1, -1, -1), v[:1].expand(2, -1, -1, -1)
    assert torch.ops.swaa.fwd_path(q, k1, v1).startswith("sm80")
    out_f, lse_f = fwd(q, k1, v1, 50, 3)
    kc, vc = k1.contiguous(), v1.contiguous()
    assert torch.ops.swaa.fwd_path(q, kc, vc) == hopper
    out_h, lse_h = fwd(q, kc, vc, 50, 3)
    check_against_reference(q, kc, vc, out_f, lse_f, window=50, sink=3, scale=128 ** -0.5)
    check_against_reference(q, kc, vc, out_h, lse_h, window=50, sink=3, scale=128 ** -0.5)


@pytest.mark.parametrize("D", [64, 128])
def test_bitwise_repeatable_and_order_free(hopper, monkeypatch, D):
    """Two runs are bitwise equal; so are both CTA orders (SWAA_FWD_ORDER)."""
    q, k, v = inputs(2, 8, 2, 2049, 2049, seed=9, D=D)
    ff = torch.tensor([1000, 1 << 40], dtype=torch.int64, device="cuda")
    first = fwd(q, k, v, 500, 4, ff)
    for order in ("1", "0"):
        monkeypatch.setenv("SWAA_FWD_ORDER", order)
        again = fwd(q, k, v, 500, 4, ff)
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_poisoned_outputs_are_all_written(hopper):
    """Outputs start as NaN (SWAA_POISON_OUTPUTS=1): the Hopper kernel writes
    every row, also past the last full 128-row block and for Lq < Lk."""
    script = textwrap.dedent("""
        import torch, swaa_ext
        torch.manual_seed(0)
        for (B, Hq, Hkv, Lq, Lk, w, s, D) in [(1, 4, 1, 97, 97, 16, 4, 128),
                                              (2, 8, 2, 1, 1025, None, 0, 64),
                                              (2, 4, 4, 1025, 1025, 7, 1, 128),
                                              (1, 2, 1, 130, 257, 1, 0, 64)]:
            q = torch.randn(B, Hq, Lq, D, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=torch.bfloat16)
            assert torch.ops.swaa.fwd_path(q, k, v).startswith("sm90")
            out, lse = torch.ops.swaa.fwd(q, k, v, w, s, None, 0.1)
            assert not torch.isnan(out).any() and not torch.isnan(lse).any(), (B, Hq, Lq, Lk)
        print("ok")
    """)
    env = dict(os.environ, SWAA_POISON_OUTPUTS="1")  # SWAA_FWD_HOPPER from the fixture
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_agrees_with_v5(hopper, monkeypatch, dtype, D):
    """Every variant computes what v5 (SWAA_FWD_HOPPER=1) computes: per row the
    same tiles in the same order with the same instructions (tiles a row cannot
    see add exactly nothing), so only the CTA shape, the pipeline and the
    epilogue differ.  Lengths straddle the 192-row CTAs of v5.1 at D=64 and
    the 128-row ones, GQA 4, a sink, full_from for one sequence."""
    knob = os.environ["SWAA_FWD_HOPPER"]  # set by the fixture
    ff = torch.tensor([1 << 40, 900], dtype=torch.int64, device="cuda")
    for L, window in [(191, 64), (193, 129), (385, 200), (1500, 333)]:
        q, k, v = inputs(2, 8, 2, L, L, dtype, seed=L, D=D)
        assert torch.ops.swaa.fwd_path(q, k, v) == hopper
        out, lse = fwd(q, k, v, window, 4, ff)
        monkeypatch.setenv("SWAA_FWD_HOPPER", "1")
        out1, lse1 = fwd(q, k, v, window, 4, ff)
        monkeypatch.setenv("SWAA_FWD_HOPPER", knob)
        assert max_err(out, out1) <= 1e-2, (L, window, max_err(out, out1))
        assert max_err(lse, lse1) <= 1e-4, (L, window, max_err(lse, lse1))


@pytest.mark.parametrize("D", [64, 128])
def test_row_blocks_of_every_size(hopper, D):
    """Lq around multiples of 64, 128 and 192 (the consumer groups and CTAs of
    every variant), Lq < Lk, windows that make the groups of one CTA skip
    different tiles (window 1: each group sees only its own diagonal keys),
    against the float64 reference."""
    for Lq, Lk, window, sink in [(64, 64, 1, 0), (65, 320, 1, 1), (192, 192, 1, 0),
                                 (193, 193, 70, 3), (320, 500, 128, 0), (577, 577, 1, 0),
                                 (575, 700, 190, 130)]:
        q, k, v = inputs(1, 4, 2, Lq, Lk, seed=Lq + Lk, D=D)
        assert torch.ops.swaa.fwd_path(q, k, v) == hopper
        out, lse = fwd(q, k, v, window, sink, None, 0.1)
        check_against_reference(q, k, v, out, lse, window=window, sink=sink, scale=0.1)


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_scores_that_keep_rising(hopper, dtype, D):
    """Keys scaled by a ramp (0 .. 12 along the sequence), so a row's running max
    rises by several log2 units per 128-key tile, over and over (55-69 in all
    after the first tile, full causal): the lean softmax (variant 7) must rescale
    O and the sum whenever its stale reference falls more than 8 (log2 units)
    behind, and keep the reference in between (probabilities up to 2^8).  Random
    scores barely move the max after the first tile, so the other tests hardly
    reach that path.  In float16 a reference that never moved would make
    probabilities past 65504 (inf, then NaN); in bfloat16 it would still fit, so
    there the test catches a wrong rescale but not a missing one.  Every variant
    against the float64 reference, full causal and windowed."""
    B, Hq, Hkv, L = 1, 4, 2, 1100
    q, k, v = inputs(B, Hq, Hkv, L, L, dtype=dtype, seed=77, D=D)
    ramp = torch.linspace(0.0, 12.0, L, device="cuda")
    k = (k.float() * ramp[:, None]).to(k.dtype)
    assert torch.ops.swaa.fwd_path(q, k, v) == hopper
    for window, sink in ((None, 0), (700, 4)):
        out, lse = fwd(q, k, v, window, sink, None, 0.1)
        check_against_reference(q, k, v, out, lse, window=window, sink=sink, scale=0.1)


@pytest.mark.parametrize("D", [64, 128])
def test_many_units_per_cta(hopper, monkeypatch, D):
    """Several work units per CTA for the persistent variants (672 / 1024
    units on ~132 SMs: the Q double buffer, the K/V ring and the ping-pong
    turns all run on across units), both CTA orders, per-sequence full_from:
    equal to v5 and to the float32 reference on row slices."""
    knob = os.environ["SWAA_FWD_HOPPER"]
    B, Hq, Hkv, L = 2, 16, 4, 4000
    ff = torch.tensor([1 << 40, 2500], dtype=torch.int64, device="cuda")
    q, k, v = inputs(B, Hq, Hkv, L, L, seed=44, D=D)
    assert torch.ops.swaa.fwd_path(q, k, v) == hopper
    monkeypatch.setenv("SWAA_FWD_HOPPER", "1")
    out1, lse1 = fwd(q, k, v, 700, 4, ff)
    monkeypatch.setenv("SWAA_FWD_HOPPER", knob)
    for order in ("1", "0"):
        monkeypatch.setenv("SWAA_FWD_ORDER", order)
        out, lse = fwd(q, k, v, 700, 4, ff)
        assert max_err(out, out1) <= 1e-2 and max_err(lse, lse1) <= 1e-4, order
    for r0, r1 in [(0, 300), (2400, 2700), (L - 200, L)]:
        sl = (slice(None), slice(None), slice(r0, r1))
        check_against_reference(q[sl], k[:, :, :r1], v[:, :, :r1], out[sl], lse[sl],
                                torch.float32, window=700, sink=4, full_from=ff,
                                scale=D ** -0.5)


@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_lean_levels_same_bits(monkeypatch, dtype, D):
    """Variants 8-11 (LEAN levels 2-5 in fwd51_sm90.cuh: the warps'
    fully-visible tile ranges pinned in registers, unsigned stage arithmetic,
    the row max from the first pair; then masks of the one bound that can reject
    on most boundary tiles; then a stage's K and V freed apart; then the softmax
    of a tile while the group's own P V of the previous one runs) change how the
    kernel finds what to compute, or when, not what it computes: out and lse
    equal variant 7's bit for bit.  Masked and
    unmasked tiles, a sink, full_from for one sequence, rows that see no tile
    of a group (window 1), rising scores (O rescaled mid-row), several units
    per CTA, and one key whose scores jump far above the rest (x40, x200: the
    reference moves by far more than the lazy 2^8 in one tile)."""
    if not (is_hopper_device() and build_has_hopper()):
        pytest.skip("no Hopper forward on this device / in this build")
    ff = torch.tensor([1 << 40, 900], dtype=torch.int64, device="cuda")
    # (B, Hq, Hkv, Lq, Lk, window, sink, full_from): sink tiles, a sink that ends
    # inside a tile (130), windows on and one past or short of the 128-key tile
    # edges (so that some warp's window starts exactly on a tile), Lq < Lk with an
    # offset that is not a multiple of 16
    cases = [(2, 8, 2, 1500, 1500, 333, 4, ff), (1, 4, 2, 577, 577, 1, 0, None),
             (2, 16, 4, 4000, 4000, 700, 4, ff), (1, 4, 2, 1100, 1100, None, 0, None),
             (1, 4, 2, 2000, 2000, 200, 130, None), (1, 4, 2, 1000, 1000, 256, 0, None),
             (1, 4, 2, 700, 1500, 300, 4, None), (1, 4, 2, 1500, 1500, 129, 4, None),
             (1, 4, 2, 1500, 1500, 257, 4, None), (1, 4, 2, 1500, 1500, 130, 4, None),
             (1, 4, 2, 700, 1501, 129, 4, None), (1, 4, 2, 1500, 1500, "x40", 0, None),
             (1, 4, 2, 1500, 1500, "x200", 4, None)]
    for B, Hq, Hkv, Lq, Lk, window, sink, full_from in cases:
        q, k, v = inputs(B, Hq, Hkv, Lq, Lk, dtype, seed=Lq + Lk, D=D)
        if window is None:  # keys on a ramp: the running max keeps rising
            ramp = torch.linspace(0.0, 12.0, Lk, device="cuda")
            k = (k.float() * ramp[:, None]).to(k.dtype)
        elif isinstance(window, str):  # one key (900) far above the others, full causal
            k[:, :, 900] *= float(window[1:])
            window = None
        results = {}
        for knob in ("7", "8", "9", "10", "11"):
            monkeypatch.setenv("SWAA_FWD_HOPPER", knob)
            assert torch.ops.swaa.fwd_path(q, k, v) == HOPPER_VARIANTS[knob]
            results[knob] = fwd(q, k, v, window, sink, full_from, 0.1)
        for knob in ("8", "9", "10", "11"):
            for name, a, b in zip(("out", "lse"), results["7"], results[knob]):
                assert torch.equal(a, b), f"{name} of {knob} differs from 7: {(Lq, Lk, window)}"
