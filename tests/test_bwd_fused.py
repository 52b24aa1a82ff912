"""GPU tests of the single-pass Hopper backward (SWAA_BWD_HOPPER=4,
csrc/cuda/hopper/bwd_fused_sm90.cuh, docs/cuda_kernels.md "v7"): one kernel over
key blocks computes dk, dv and adds each item's dQ part into a float32
accumulator in a fixed order (turn counters).  Kept apart from
tests/test_bwd_hopper.py (the two passes): the GPU test step runs each file in
its own process, so a trap of this kernel (its turn watchdog) or a hang cannot
spoil the two-pass results.  (Since session 8 the default takes this kernel by
shape, so tests elsewhere that leave SWAA_BWD_HOPPER unset run it too; the
default's choice is tested at the end of this file.)

Here: the tests of test_bwd_hopper.py that take `both_passes` or `bwd_hopper`
again, with knob 4 (the mask grid, split sink blocks, 8k, 32k, agreement with
sm_80, repeatability, strides, autograd, poisoned outputs; imported, their
fixtures below), and the single pass's own tests: dk/dv bitwise equal to knob
1's, dq against the float64 reference and per 64-row tile against knob 1's,
dq bitwise under every CTA schedule, long turn chains in a subprocess with a
time limit.  The turn watchdog is short here (SWAA_BWD_FUSED_WATCHDOG = 2^22
polls, ~2-4 s, unless set).  Skipped without a GPU or without the kernel.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

import swaa_ext
from swaa_ext.reference import tile_rel_err

from test_bwd_hopper import (  # noqa: F401  (test_*: collected here again, with knob 4)
    PATHS,
    assert_same_bits_on_a_side_stream_and_in_a_graph,
    bwd,
    check_grads,
    full_from_of,
    fwd,
    hopper_bwd_available,
    inputs,
    kernels_of,
    mask_kwargs,
    template_args,
    test_agrees_with_sm80_backward,
    test_autograd_through_swa_attention,
    test_bitwise_repeatable,
    test_long_8k,
    test_long_32k_against_sm80,
    test_mask_grid_matches_reference,
    test_pipelined_kernels_same_bits,
    test_poisoned_outputs_are_all_written,
    test_single_pass_settings_match_reference,
    test_split_sink_blocks_match_reference,
    test_stride_fallback_and_strided_views,
    test_window_one_dv_is_dout,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(not swaa_ext.build_info()["cuda"], reason="built without CUDA kernels"),
]

WATCHDOG = str(1 << 22)  # polls of one turn before the writer traps: ~2-4 s


def fused_available():
    """A Hopper backward whose SWAA_BWD_HOPPER=4 takes the single pass."""
    if not hopper_bwd_available():
        return False
    q = torch.randn(1, 1, 128, 128, device="cuda", dtype=torch.bfloat16)
    old = os.environ.get("SWAA_BWD_HOPPER")
    os.environ["SWAA_BWD_HOPPER"] = "4"
    try:
        return torch.ops.swaa.bwd_path(q, q, q, q) == "sm90-fused"
    finally:
        if old is None:
            del os.environ["SWAA_BWD_HOPPER"]
        else:
            os.environ["SWAA_BWD_HOPPER"] = old


@pytest.fixture(autouse=True)
def short_watchdog(monkeypatch):
    """A wrong turn fails in seconds, not ~30-60 s (an explicit setting wins)."""
    monkeypatch.setenv("SWAA_BWD_FUSED_WATCHDOG",
                       os.environ.get("SWAA_BWD_FUSED_WATCHDOG", WATCHDOG))


@pytest.fixture
def fused(monkeypatch):
    if not fused_available():
        pytest.skip("no single-pass Hopper backward on this device / in this build")
    monkeypatch.setenv("SWAA_BWD_HOPPER", "4")
    return PATHS["4"]


@pytest.mark.parametrize("knob,D,cols", [(None, 128, True), (None, 64, False), ("0", 128, False),
                                         ("1", 128, True), ("1", 64, False)])
def test_dq_split_default_and_knob(fused, monkeypatch, knob, D, cols):
    """The single pass splits its dQ product by columns at D=128 (the default since
    session 10: faster in the tuning runs of sessions 5-10) and by keys at D=64;
    SWAA_BWD_FUSED_DQ=0 / 1 choose at D=128 (1 is ignored at D=64).  The kernel's
    COLS template argument, as the profiler names it, says which ran."""
    if knob is None:
        monkeypatch.delenv("SWAA_BWD_FUSED_DQ", raising=False)
    else:
        monkeypatch.setenv("SWAA_BWD_FUSED_DQ", knob)
    q, k, v, dout = inputs(1, 4, 1, 1024, 1024, seed=5, D=D)
    out, lse = fwd(q, k, v, 64, 4)
    names = [n for n in kernels_of(lambda: bwd(dout, q, k, v, out, lse, 64, 4))
             if "bwd_fused_sm90_kernel<" in n]
    assert len(names) == 1, names
    assert template_args(names[0])[1:3] == [str(D), "true" if cols else "false"], names


# The imported tests, with knob 4 where they take both passes or one Hopper setting.
@pytest.fixture(params=["4"], ids=["sm90-fused"])
def both_passes(request, fused):
    return PATHS[request.param]


@pytest.fixture(params=["4"], ids=["sm90-fused"])
def bwd_hopper(request, fused):
    return PATHS[request.param]


# ---------------------------------------------------------------------------
# The single pass's own tests: its dk/dv code is the dk/dv kernel's, so dk and
# dv equal SWAA_BWD_HOPPER=1's bitwise; dq is summed over key blocks in a fixed
# order (turn counters), so it is bitwise the same on every run and under every
# CTA schedule (split, order).

FUSED_CASES = [  # (B, Hq, Hkv, Lq, Lk, window, sink, full_from)
    (2, 4, 2, 300, 300, 64, 4, None),
    (1, 8, 2, 100, 777, 64, 129, None),      # Lq < Lk, GQA 4, sinks > a block
    (2, 8, 2, 1500, 1500, 64, 200, "per"),   # split sink blocks, full_from per sequence
    (1, 4, 1, 1000, 1000, None, 0, None),    # causal, MQA
    (2, 4, 4, 1025, 1025, 7, 1, 500),
]

# (D, SWAA_BWD_FUSED_DQ): the dQ product split over the consumer groups by keys
# (0, the default at D=64) or by columns (1, D=128 only, its default there since
# session 10; ignored at D=64)
FUSED_VARIANTS = [(64, "0"), (128, "0"), (128, "1")]

# dq of the single pass against the two passes', per 64-row tile relative to the
# tile's largest |dq|: they differ by the float32 summation order (and the odd
# 16-bit rounding flip of dS), ~1 output ulp (bf16: 0.4%); one lost
# contribution out of N moves a tile by ~1/sqrt(N) of its size (N = 256: 6%).
DQ_TILE_TOL = 1e-2


@pytest.mark.parametrize("variant", FUSED_VARIANTS, ids=["D64", "D128-keys", "D128-cols"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "x".join(map(str, c)))
def test_fused_against_two_passes(fused, monkeypatch, case, dtype, variant):
    """dk, dv bitwise equal to SWAA_BWD_HOPPER=1; dq within the reference bound
    and, per 64-row tile, close to the two-pass dq."""
    D, split_dq = variant
    monkeypatch.setenv("SWAA_BWD_FUSED_DQ", split_dq)
    B, Hq, Hkv, Lq, Lk, window, sink, ff = case
    ff = full_from_of(ff, B, Lk)
    q, k, v, dout = inputs(B, Hq, Hkv, Lq, Lk, dtype, seed=Lq + Hq + D, D=D)
    out, lse = fwd(q, k, v, window, sink, ff, 0.1)
    assert torch.ops.swaa.bwd_path(dout, q, k, v) == "sm90-fused"
    g4 = bwd(dout, q, k, v, out, lse, window, sink, ff, 0.1)
    check_grads(q, k, v, dout, g4, **mask_kwargs(window, sink, ff, 0.1))
    monkeypatch.setenv("SWAA_BWD_HOPPER", "1")
    g1 = bwd(dout, q, k, v, out, lse, window, sink, ff, 0.1)
    assert torch.equal(g4[1], g1[1]), "dk differs from the dk/dv kernel's"
    assert torch.equal(g4[2], g1[2]), "dv differs from the dk/dv kernel's"
    err = tile_rel_err(g4[0], g1[0])
    assert err <= DQ_TILE_TOL, f"dq far from the two-pass dq in some tile: {err:.3g}"


@pytest.mark.parametrize("variant", FUSED_VARIANTS, ids=["D64", "D128-keys", "D128-cols"])
def test_fused_dq_bitwise_under_every_schedule(fused, monkeypatch, variant):
    """dq is the same bits on 3 runs and with every CTA schedule: split sink
    blocks off / automatic / 3 / 64 pieces, both CTA orders and the default one.  (Under
    SWAA_POISON_OUTPUTS=1, as in the GPU test step, the accumulator starts as NaN
    on every call, so a tile some schedule fails to store cannot show the
    previous call's values.)"""
    D, split_dq = variant
    monkeypatch.setenv("SWAA_BWD_FUSED_DQ", split_dq)
    q, k, v, dout = inputs(2, 8, 2, 2049, 2049, seed=21, D=D)
    ff = torch.tensor([1000, 1 << 40], dtype=torch.int64, device="cuda")
    out, lse = fwd(q, k, v, 200, 130, ff)
    first = None
    for split in ("0", "1", "3", "64"):
        for order in ("0", "1", None):  # None: the default (fused_slices_inner)
            monkeypatch.setenv("SWAA_BWD_SPLIT", split)
            if order is None:
                monkeypatch.delenv("SWAA_BWD_ORDER", raising=False)
            else:
                monkeypatch.setenv("SWAA_BWD_ORDER", order)
            for _ in range(3):
                dq, dk, dv = bwd(dout, q, k, v, out, lse, 200, 130, ff)
                if first is None:
                    first = dq
                    check_grads(q, k, v, dout, (dq, dk, dv),
                                **mask_kwargs(200, 130, ff, D ** -0.5))
                assert torch.equal(dq, first), f"dq differs (split {split}, order {order})"


# The single pass's variants (D, SWAA_BWD_FUSED_DQ, SWAA_BWD_PIPELINE) for the tests of its
# same-bits knobs, and their case: split sink blocks, an inactive group (sink 40),
# per-sequence full_from, items of several query heads.
single_pass_variants = pytest.mark.parametrize(
    "variant", [(64, "0", "1"), (64, "0", "0"), (128, "0", "1"), (128, "1", "1")],
    ids=["D64-pipe", "D64", "D128-keys", "D128-cols"])


def single_pass_case(monkeypatch, variant, dtype, seed):
    """Sets the variant's knobs; returns run(), the backward of the knob-test case."""
    D, split_dq, pipeline = variant
    monkeypatch.setenv("SWAA_BWD_FUSED_DQ", split_dq)
    monkeypatch.setenv("SWAA_BWD_PIPELINE", pipeline)
    monkeypatch.setenv("SWAA_BWD_SPLIT", "3")
    q, k, v, dout = inputs(2, 8, 2, 1500, 1500, dtype, seed=seed, D=D)
    ff = torch.tensor([700, 1 << 40], dtype=torch.int64, device="cuda")
    out, lse = fwd(q, k, v, 200, 40, ff, 0.1)
    return lambda: bwd(dout, q, k, v, out, lse, 200, 40, ff, 0.1)


@single_pass_variants
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_stmatrix_ds_stores_same_bits(fused, monkeypatch, dtype, variant):
    """SWAA_BWD_FUSED_STSM=1 and unset (dS stored with stmatrix, the default) write
    the same bytes to the same places as =0 (16-bit stores): dq, dk, dv bitwise equal, on
    a case with split sink blocks, an inactive group (sink 40) and per-sequence
    full_from; the profiler sees the STSM kernel run."""
    run = single_pass_case(monkeypatch, variant, dtype, seed=7)

    def stsm_kernels():
        return [template_args(n)[4] for n in kernels_of(run) if "bwd_fused_sm90_kernel<" in n]

    monkeypatch.setenv("SWAA_BWD_FUSED_STSM", "0")
    want = run()
    assert stsm_kernels() == ["false"]
    for setting in (None, "1"):  # unset: the default since session 12
        if setting is None:
            monkeypatch.delenv("SWAA_BWD_FUSED_STSM")
        else:
            monkeypatch.setenv("SWAA_BWD_FUSED_STSM", setting)
        got = run()
        assert stsm_kernels() == ["true"], f"SWAA_BWD_FUSED_STSM={setting}"
        for name, a, b in zip(("dq", "dk", "dv"), got, want):
            assert torch.equal(a, b), f"{name} differs with SWAA_BWD_FUSED_STSM={setting}"


@single_pass_variants
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_dq_staging_buffers_same_bits(fused, monkeypatch, dtype, variant):
    """SWAA_BWD_FUSED_DQ_BUFS=2 and unset (D=64: the consumers stage item n's dQ part in the
    second buffer while the writer still adds item n - 1) give the bits of =1 (one buffer):
    the same parts reach the accumulator in the same turn order.  D=128 has room for one
    buffer only, so its kernels ignore 2.  Same case as the stmatrix test."""
    run = single_pass_case(monkeypatch, variant, dtype, seed=8)
    monkeypatch.setenv("SWAA_BWD_FUSED_DQ_BUFS", "1")
    want = run()
    assert all(torch.isfinite(t).all() for t in want)
    for setting in (None, "2"):  # unset: the default
        if setting is None:
            monkeypatch.delenv("SWAA_BWD_FUSED_DQ_BUFS")
        else:
            monkeypatch.setenv("SWAA_BWD_FUSED_DQ_BUFS", setting)
        for _ in range(2):
            got = run()
            for name, a, b in zip(("dq", "dk", "dv"), got, want):
                assert torch.equal(a, b), f"{name} differs with SWAA_BWD_FUSED_DQ_BUFS={setting}"


@single_pass_variants
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_item_start_same_bits(fused, monkeypatch, dtype, variant):
    """SWAA_BWD_FUSED_ITEM=0 (an item starts as in session 14: its key span, then the dQ
    writer's turn, then the products; the default at D=128) and =1 (the per-CTA item test,
    the turn worked out while the first products run; the default at D=64) give the same
    bits: the same items and sums.  The profiler sees the ITEM_SPAN kernel exactly when
    the setting, or the head dim's default, asks for it."""
    run = single_pass_case(monkeypatch, variant, dtype, seed=9)
    D = variant[0]

    def span_kernels():
        names = [n for n in kernels_of(run) if "bwd_fused_sm90_kernel<" in n]
        return [template_args(n)[5] == "true" for n in names]  # <T, D, COLS, PIPE, STSM, ITEM_SPAN>

    monkeypatch.setenv("SWAA_BWD_FUSED_ITEM", "0")
    want = run()
    assert all(torch.isfinite(t).all() for t in want)
    assert span_kernels() == [True]
    for setting, span in ((None, D == 128), ("1", False), ("0", True)):
        if setting is None:  # the head dim's default
            monkeypatch.delenv("SWAA_BWD_FUSED_ITEM")
        else:
            monkeypatch.setenv("SWAA_BWD_FUSED_ITEM", setting)
        got = run()
        assert span_kernels() == [span], f"SWAA_BWD_FUSED_ITEM={setting}"
        for name, a, b in zip(("dq", "dk", "dv"), got, want):
            assert torch.equal(a, b), f"{name} differs with SWAA_BWD_FUSED_ITEM={setting}"


def test_fused_long_chains_in_subprocess(fused):
    """Long turn chains (up to 256 contributions per dq tile): one slice (B = 1,
    one KV head) at 16k, W=2048; 32k, W=4096 with GQA, both dQ splits and D=64;
    causal 32k; full_from at half of 16k (far items of every block reach a tile
    at the same step: the adds form a convoy).  In a subprocess with a time limit
    and the accumulator poisoned, so a deadlock or a lost store fails this test
    instead of hanging the run.  Against the two passes (dk, dv bitwise; dq per
    64-row tile) and run to run bitwise."""
    script = textwrap.dedent(f"""
        import os, torch, swaa_ext
        from swaa_ext.reference import tile_rel_err
        cases = [  # (Hq, Hkv, L, W, S, full_from, D, SWAA_BWD_FUSED_DQ)
            (1, 1, 16384, 2048, 4, None, 128, "0"),
            (4, 1, 32768, 4096, 4, None, 128, "0"),
            (2, 2, 20000, 512, 0, None, 128, "0"),
            (4, 1, 32768, 4096, 4, None, 128, "1"),
            (4, 1, 32768, 4096, 4, None, 64, "0"),
            (4, 1, 32768, None, 0, None, 128, "0"),
            (4, 1, 16384, 1024, 4, 8192, 128, "0"),
        ]
        for (Hq, Hkv, L, W, S, ff, D, cols) in cases:
            os.environ["SWAA_BWD_FUSED_DQ"] = cols
            g = torch.Generator(device="cuda").manual_seed(L + D)
            q = torch.randn(1, Hq, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
            k = torch.randn(1, Hkv, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
            v = torch.randn(1, Hkv, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
            do = torch.randn(q.shape, device="cuda", dtype=q.dtype, generator=g)
            ff = None if ff is None else torch.tensor([ff], dtype=torch.int64, device="cuda")
            args = (W, S, ff, D ** -0.5)
            out, lse = torch.ops.swaa.fwd(q, k, v, *args)
            os.environ["SWAA_BWD_HOPPER"] = "4"
            a = torch.ops.swaa.bwd(do, q, k, v, out, lse, *args)
            b = torch.ops.swaa.bwd(do, q, k, v, out, lse, *args)
            os.environ["SWAA_BWD_HOPPER"] = "1"
            c = torch.ops.swaa.bwd(do, q, k, v, out, lse, *args)
            torch.cuda.synchronize()
            case = (Hq, Hkv, L, W, S, D, cols)
            assert not any(torch.isnan(x).any() for x in a), ("NaN", case)
            assert all(torch.equal(x, y) for x, y in zip(a, b)), ("runs differ", case)
            assert torch.equal(a[1], c[1]) and torch.equal(a[2], c[2]), ("dk/dv differ", case)
            err = tile_rel_err(a[0], c[0])
            assert err <= {DQ_TILE_TOL}, ("dq differs in some tile", err, case)
            print("ok", case, f"dq tile err {{err:.3g}}", flush=True)
        print("all ok")
    """)
    env = dict(os.environ, SWAA_POISON_OUTPUTS="1")
    res = subprocess.run([sys.executable, "-c", script], env=env, check=False,
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and "all ok" in res.stdout, res.stdout[-2000:] + res.stderr[-3000:]


# ---------------------------------------------------------------------------
# The default choice (SWAA_BWD_HOPPER unset): the single pass where every row is
# windowed and the keys are at least seven windows (+ sink) long
# (prefer_single_pass in csrc/cuda/attention.cpp), the two passes otherwise.

DEFAULT_PATHS = [  # (Lk, window, sink, full_from, path with SWAA_BWD_HOPPER unset)
    (1024, 128, 4, None, "sm90-fused"),    # 1024 >= 7 * 132
    (1024, 142, 4, None, "sm90-fused"),    # 1024 >= 7 * 146 = 1022: the edge
    (1024, 143, 4, None, "sm90"),          # 7 * 147 = 1029: just under seven windows
    (1024, None, 0, None, "sm90"),         # no window: rows see every key
    (1024, 128, 4, 512, "sm90"),           # full_from: long key loops
    (500, 64, 0, None, "sm90-fused"),
]


@pytest.mark.parametrize("case", DEFAULT_PATHS, ids=lambda c: "x".join(map(str, c[:4])))
def test_default_path_by_shape(fused, monkeypatch, case):
    """bwd_path with the mask names the default's choice; the knob overrides it."""
    Lk, window, sink, ff, path = case
    q, k, v, dout = inputs(1, 4, 2, Lk, Lk, torch.bfloat16, seed=1, D=128)
    ff = full_from_of(ff, 1, Lk)
    monkeypatch.delenv("SWAA_BWD_HOPPER")
    assert torch.ops.swaa.bwd_path(dout, q, k, v, window, sink, ff) == path
    assert torch.ops.swaa.bwd_path(dout, q, k, v) == "sm90"  # no mask given: no window
    for knob in ("1", "4"):
        monkeypatch.setenv("SWAA_BWD_HOPPER", knob)
        assert torch.ops.swaa.bwd_path(dout, q, k, v, window, sink, ff) == PATHS[knob]


@pytest.mark.parametrize("D", [64, 128])
def test_default_backward_takes_the_chosen_pass(fused, monkeypatch, D):
    """With SWAA_BWD_HOPPER unset the backward's bits are the single pass's where
    bwd_path says sm90-fused and the two passes' where it says sm90 (their dq
    differ in the last bit somewhere, so the comparison can tell them apart)."""
    q, k, v, dout = inputs(2, 8, 2, 1024, 1024, torch.bfloat16, seed=5, D=D)
    for window, sink, path in ((128, 4, "sm90-fused"), (300, 4, "sm90")):
        out, lse = fwd(q, k, v, window, sink, None, 0.1)
        monkeypatch.setenv("SWAA_BWD_HOPPER", "4")
        g4 = bwd(dout, q, k, v, out, lse, window, sink, None, 0.1)
        monkeypatch.setenv("SWAA_BWD_HOPPER", "1")
        g1 = bwd(dout, q, k, v, out, lse, window, sink, None, 0.1)
        assert not torch.equal(g4[0], g1[0]), "dq of the two kernels equal: no evidence"
        monkeypatch.delenv("SWAA_BWD_HOPPER")
        assert torch.ops.swaa.bwd_path(dout, q, k, v, window, sink) == path
        g = bwd(dout, q, k, v, out, lse, window, sink, None, 0.1)
        check_grads(q, k, v, dout, g, **mask_kwargs(window, sink, None, 0.1))
        expected = g4 if path == "sm90-fused" else g1
        for name, a, b in zip(("dq", "dk", "dv"), g, expected):
            assert torch.equal(a, b), f"default {name} is not the {path} kernel's ({window=})"


def test_default_takes_two_passes_when_the_accumulator_does_not_fit(fused, monkeypatch, capfd):
    """The default's single pass needs a float32 dq accumulator (4 bytes x B x Hq x
    Lq x D) that the two passes do without; when asking for it fails with an
    out-of-memory error, the backward warns and takes the two passes (their bits)
    instead of failing.  Asked for by name (SWAA_BWD_HOPPER=4), it fails.
    SWAA_TEST_FUSED_OOM makes the request fail as a full GPU would: on the H200
    machine neither set_per_process_memory_fraction nor a ballast tensor that
    left too little free memory made the allocation fail (session 9).  The
    warning is c10's (TORCH_WARN): a custom op called through torch.ops prints it
    on stderr rather than raising a Python warning (seen on the H200 in session 9),
    so the test reads stderr."""
    q, k, v, dout = inputs(2, 8, 2, 1024, 1024, torch.bfloat16, seed=9, D=128)
    window, sink = 64, 4  # 1024 keys >= 7 x (64 + 4): the default takes the single pass
    out, lse = fwd(q, k, v, window, sink, None, 0.1)
    monkeypatch.setenv("SWAA_BWD_HOPPER", "1")
    g1 = bwd(dout, q, k, v, out, lse, window, sink, None, 0.1)
    monkeypatch.delenv("SWAA_BWD_HOPPER")
    assert torch.ops.swaa.bwd_path(dout, q, k, v, window, sink) == "sm90-fused"
    g4 = bwd(dout, q, k, v, out, lse, window, sink, None, 0.1)
    assert not torch.equal(g4[0], g1[0]), "dq of the two kernels equal: no evidence"
    monkeypatch.setenv("SWAA_TEST_FUSED_OOM", "1")
    capfd.readouterr()  # drop what came before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g = bwd(dout, q, k, v, out, lse, window, sink, None, 0.1)
        torch.cuda.synchronize()
    for name, a, b in zip(("dq", "dk", "dv"), g, g1):
        assert torch.equal(a, b), f"{name} is not the two passes' after the fallback"
    said = capfd.readouterr().err + "".join(str(w.message) for w in caught)
    assert "took the two-pass backward" in said, said[-2000:]
    monkeypatch.setenv("SWAA_BWD_HOPPER", "4")
    with pytest.raises(torch.OutOfMemoryError, match="SWAA_TEST_FUSED_OOM"):
        bwd(dout, q, k, v, out, lse, window, sink, None, 0.1)


def test_default_single_pass_on_a_side_stream_and_in_a_graph(fused, monkeypatch):
    """The default's single pass (its turn counters and ticket reset by memsets
    on the caller's stream, its workspace from the caching allocator) gives the
    eager bits on a caller stream of its own and in a CUDA graph's replays, as
    training under torch.compile's CUDA graphs runs it."""
    monkeypatch.delenv("SWAA_BWD_HOPPER")
    q, k, v, dout = inputs(2, 8, 2, 3000, 3000, seed=21, D=128)
    out, lse = fwd(q, k, v, 300, 100)
    assert torch.ops.swaa.bwd_path(dout, q, k, v, 300, 100) == "sm90-fused"
    want = bwd(dout, q, k, v, out, lse, 300, 100)
    assert_same_bits_on_a_side_stream_and_in_a_graph(
        lambda: bwd(dout, q, k, v, out, lse, 300, 100), want)
