"""GPU tests of the CUDA kernels of swaa::fwd / swaa::bwd (csrc/cuda/).

Every check compares against swaa_ext.reference computed in float64 (float32
for the long sequences) from an explicit mask, with the FlashAttention
tolerance: err(ours) <= 2 * err(torch in the same dtype) + atol, both errors
measured against the high-precision reference.  Skipped without a GPU or
without CUDA kernels in the build.
"""
from __future__ import annotations

import math
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

ATOL = {"out": 1e-3, "lse": 1e-3, "grad": 1e-3}


def make_inputs(B, Hq, Hkv, Lq, Lk, D, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(B, Hq, Lq, D, device="cuda", dtype=dtype, generator=g)
    k = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=dtype, generator=g)
    v = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=dtype, generator=g)
    dout = torch.randn(B, Hq, Lq, D, device="cuda", dtype=dtype, generator=g)
    return q, k, v, dout


def full_from_arg(kind, B, Lk):
    if kind is None:
        return None
    if kind == "mid":
        return Lk // 2
    # per-sequence: one sequence never full, the others at different points
    vals = [1 << 40] + [max(1, (Lk * (i + 1)) // (B + 1)) for i in range(B - 1)]
    return torch.tensor(vals, dtype=torch.int64, device="cuda")


def run_ours(q, k, v, dout, **mask):
    qs, ks, vs = (t.detach().requires_grad_(True) for t in (q, k, v))
    out, lse = swaa_ext.swa_attention(qs, ks, vs, return_lse=True, **mask)
    out.backward(dout)
    return out.detach(), lse, qs.grad, ks.grad, vs.grad


def run_reference(q, k, v, dout, compute_dtype, **mask):
    qs, ks, vs = (t.detach().to(compute_dtype).requires_grad_(True) for t in (q, k, v))
    out, lse = reference_attention(qs, ks, vs, return_lse=True, compute_dtype=compute_dtype,
                                   **mask)
    out.backward(dout.to(compute_dtype))
    return out.detach(), lse, qs.grad, ks.grad, vs.grad


def run_torch_lowp(q, k, v, dout, **mask):
    """The same math in q's dtype: what torch itself gets in low precision."""
    qs, ks, vs = (t.detach().requires_grad_(True) for t in (q, k, v))
    out, lse = reference_attention(qs, ks, vs, return_lse=True, compute_dtype=q.dtype, **mask)
    out.backward(dout)
    return out.detach(), lse, qs.grad, ks.grad, vs.grad


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_flash_tolerance(ours, lowp, ref, names=("out", "lse", "dq", "dk", "dv")):
    for name, o, t, r in zip(names, ours, lowp, ref):
        assert not torch.isnan(o).any(), f"{name} has NaN (unwritten or bad) elements"
        atol = ATOL["grad"] if name.startswith("d") else ATOL[name]
        if name == "lse":
            # lse is float32 in every implementation: compare directly.
            bound = 1e-3 + 1e-5 * r.abs().max().item()
        else:
            bound = 2 * max_err(t, r) + atol
        err = max_err(o, r)
        assert err <= bound, f"{name}: err {err:.3g} > bound {bound:.3g}"


def hopper_available():
    """True when swaa::fwd takes the Hopper (sm_90a wgmma) kernel for a plain
    D=128 call: a compute-capability 9.0 device and a build that has it."""
    if "hopper" not in _CACHE:
        q = torch.randn(1, 1, 128, 128, device="cuda", dtype=torch.bfloat16)
        old = os.environ.pop("SWAA_FWD_HOPPER", None)
        try:
            _CACHE["hopper"] = torch.ops.swaa.fwd_path(q, q, q).startswith("sm90")
        finally:
            if old is not None:
                os.environ["SWAA_FWD_HOPPER"] = old
    return _CACHE["hopper"]


_CACHE = {}


_HOPPER_KNOB = {"sm90": "1", "sm90-overlap": "2", "sm90-v51": "3", "sm90-v51-pingpong": "4",
                "sm90-v51-persistent": "5", "sm90-v51-pingpong-persistent": "6",
                "sm90-v51-pingpong-persistent-lean": "7",
                "sm90-v51-pingpong-persistent-lean-pinned": "8",
                "sm90-v51-pingpong-persistent-lean-masks": "9",
                "sm90-v51-pingpong-persistent-lean-split": "10",
                "sm90-v51-pingpong-persistent-lean-overlap": "11"}


@pytest.fixture(params=["sm80"] + list(_HOPPER_KNOB))
def fwd_kernel(request, monkeypatch):
    """Runs a test with the sm_80 forward (SWAA_FWD_HOPPER=0) and, where the
    device and build have them, with every Hopper forward (SWAA_FWD_HOPPER=1,
    2: docs/cuda_kernels.md, v5; 3-6: v5.1; 7: 6 with the lean softmax; 8-11:
    7 with LEAN levels 2-5)."""
    # SWAA_TEST_HOPPER_VARIANTS restricts a run to the variants it names
    # ("0" = sm80; tests/test_attention_hopper.py, DEFAULT_TEST_VARIANTS); by
    # default every one in _HOPPER_KNOB.
    only = os.environ.get("SWAA_TEST_HOPPER_VARIANTS", ",".join(["0", *_HOPPER_KNOB.values()]))
    if _HOPPER_KNOB.get(request.param, "0") not in only.split(","):
        pytest.skip(f"{request.param} not in SWAA_TEST_HOPPER_VARIANTS={only}")
    if request.param.startswith("sm90"):
        if not hopper_available():
            pytest.skip("no Hopper forward on this device / in this build")
        monkeypatch.setenv("SWAA_FWD_HOPPER", _HOPPER_KNOB[request.param])
    else:  # the whole sm_80 pipeline: its forward and its backward
        monkeypatch.setenv("SWAA_FWD_HOPPER", "0")
        monkeypatch.setenv("SWAA_BWD_HOPPER", "0")
    return request.param


def hopper_bwd_available():
    """swaa::bwd takes a Hopper backward (the default on a 9.0 device with a
    Hopper build: v6 without a window, as asked here, v6 or v7 by shape otherwise;
    tests/test_bwd_hopper.py and tests/test_bwd_fused.py test them in depth)."""
    if "hopper_bwd" not in _CACHE:
        q = torch.randn(1, 1, 128, 128, device="cuda", dtype=torch.bfloat16)
        old = os.environ.pop("SWAA_BWD_HOPPER", None)
        try:
            _CACHE["hopper_bwd"] = torch.ops.swaa.bwd_path(q, q, q, q) == "sm90"
        finally:
            if old is not None:
                os.environ["SWAA_BWD_HOPPER"] = old
    return _CACHE["hopper_bwd"]


@pytest.fixture(params=["sm80", "sm90"])
def bwd_kernel(request, monkeypatch):
    """Runs a backward test with the sm_80 backward (SWAA_BWD_HOPPER=0) and,
    where the device and build have it, the Hopper two passes (1; the default
    takes them or the single pass by shape).  Tests without this fixture leave
    the knob unset and take the default's choice."""
    if request.param == "sm90":
        if not hopper_bwd_available():
            pytest.skip("no Hopper backward on this device / in this build")
        monkeypatch.setenv("SWAA_BWD_HOPPER", "1")
    else:
        monkeypatch.setenv("SWAA_BWD_HOPPER", "0")
    return request.param


def check_fwd_kernel(fwd_kernel, q, k, v):
    """The forward of (q, k, v) runs the kernel the test is parametrized for."""
    path = torch.ops.swaa.fwd_path(q, k, v)
    if fwd_kernel.startswith("sm90"):
        assert path == fwd_kernel, path
    else:
        assert path.startswith("sm80"), path


SHAPES = [  # (B, Hq, Hkv, Lq, Lk)
    (1, 1, 1, 1, 1),
    (2, 4, 1, 97, 97),      # GQA 4
    (1, 8, 1, 97, 300),     # MQA / GQA 8, Lq < Lk (bottom-right aligned)
    (1, 8, 8, 1025, 1025),  # GQA 1
    (2, 8, 2, 1025, 1100),
]
MASKS = [  # (window, sink, full_from)
    (None, 0, None),
    (1, 0, None),
    (17, 0, None),
    (64, 4, None),
    (5000, 1, None),   # window longer than every sequence
    (8, 100, None),    # sink larger than the window
    (33, 4, "mid"),
    (40, 1, "per"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: f"w{m[0]}s{m[1]}f{m[2]}")
def test_matches_reference(dtype, D, shape, mask, fwd_kernel):
    B, Hq, Hkv, Lq, Lk = shape
    window, sink, ff = mask
    kw = dict(window=window, sink=sink, full_from=full_from_arg(ff, B, Lk))
    q, k, v, dout = make_inputs(B, Hq, Hkv, Lq, Lk, D, dtype, seed=Lq * 7 + D)
    check_fwd_kernel(fwd_kernel, q, k, v)
    ours = run_ours(q, k, v, dout, **kw)
    ref = run_reference(q, k, v, dout, torch.float64, **kw)
    lowp = run_torch_lowp(q, k, v, dout, **kw)
    assert_flash_tolerance(ours, lowp, ref)


def test_strided_inputs_and_scale(fwd_kernel):
    """(B, L, H, D) tensors viewed as (B, H, L, D): no copies needed, same result."""
    B, Hq, Hkv, L, D = 2, 8, 2, 300, 128
    g = torch.Generator(device="cuda").manual_seed(3)
    q = torch.randn(B, L, Hq, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    k = torch.randn(B, L, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    v = torch.randn(B, L, Hkv, D, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    check_fwd_kernel(fwd_kernel, q, k, v)
    dout = torch.randn(B, Hq, L, D, device="cuda", dtype=torch.bfloat16, generator=g)
    kw = dict(window=50, sink=3, softmax_scale=0.3)
    assert_flash_tolerance(run_ours(q, k, v, dout, **kw),
                           run_torch_lowp(q, k, v, dout, **kw),
                           run_reference(q, k, v, dout, torch.float64, **kw))


def test_long_8k():
    """8k tokens, GQA 4, window + sink, one sequence switching to full attention."""
    B, Hq, Hkv, L, D = 2, 4, 1, 8192, 128
    kw = dict(window=1024, sink=4,
              full_from=torch.tensor([1 << 40, 6000], dtype=torch.int64, device="cuda"))
    q, k, v, dout = make_inputs(B, Hq, Hkv, L, L, D, torch.bfloat16, seed=8)
    ours = run_ours(q, k, v, dout, **kw)
    ref = run_reference(q, k, v, dout, torch.float32, **kw)
    lowp = run_torch_lowp(q, k, v, dout, **kw)
    assert_flash_tolerance(ours, lowp, ref)


def test_long_32k_rows_and_cpu_gradients():
    """32k tokens: out, lse and dq on row slices against the reference of those
    rows; dk, dv against the CPU op (itself tested against the reference)."""
    B, Hq, Hkv, L, D = 1, 2, 1, 32768, 128
    kw = dict(window=4096, sink=4)
    q, k, v, dout = make_inputs(B, Hq, Hkv, L, L, D, torch.bfloat16, seed=32)
    out, lse, dq, dk, dv = run_ours(q, k, v, dout, **kw)
    for r0, r1 in [(0, 256), (4000, 4200), (L - 300, L)]:
        # rows r0..r1 sit at positions r0..r1; keys past r1 are invisible to them
        sl = (slice(None), slice(None), slice(r0, r1))
        args = (q[sl], k[:, :, :r1], v[:, :, :r1], dout[sl])
        ref = run_reference(*args, torch.float32, **kw)
        lowp = run_torch_lowp(*args, **kw)
        assert_flash_tolerance((out[sl], lse[sl], dq[sl]), lowp[:3], ref[:3],
                               names=("out", "lse", "dq"))
    qc, kc, vc, dc = (t.cpu() for t in (q, k, v, dout))
    _, dk_cpu, dv_cpu = torch.ops.swaa.bwd(dc, qc, kc, vc, out.cpu(), lse.cpu(), 4096, 4, None,
                                           1 / math.sqrt(D))
    for name, a, b in (("dk", dk, dk_cpu), ("dv", dv, dv_cpu)):
        scale = b.float().abs().max().item()
        err = max_err(a.cpu(), b)
        assert err <= 2e-2 * scale, f"{name}: CUDA vs CPU op err {err:.3g} (max |x| {scale:.3g})"


def test_matches_cpu_op():
    B, Hq, Hkv, L, D = 2, 4, 2, 333, 64
    ff = torch.tensor([100, 1 << 40], dtype=torch.int64)
    q, k, v, dout = make_inputs(B, Hq, Hkv, L, L, D, torch.bfloat16, seed=5)
    scale = 0.125
    out, lse = torch.ops.swaa.fwd(q, k, v, 20, 2, ff.cuda(), scale)
    grads = torch.ops.swaa.bwd(dout, q, k, v, out, lse, 20, 2, ff.cuda(), scale)
    qc, kc, vc, dc = (t.cpu() for t in (q, k, v, dout))
    out_c, lse_c = torch.ops.swaa.fwd(qc, kc, vc, 20, 2, ff, scale)
    grads_c = torch.ops.swaa.bwd(dc, qc, kc, vc, out_c, lse_c, 20, 2, ff, scale)
    torch.testing.assert_close(out.cpu(), out_c, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(lse.cpu(), lse_c, atol=1e-3, rtol=1e-4)
    for a, b in zip(grads, grads_c):
        torch.testing.assert_close(a.cpu(), b, atol=3e-2, rtol=3e-2)


def test_backward_is_deterministic(bwd_kernel):
    B, Hq, Hkv, L, D = 1, 8, 2, 1025, 128
    q, k, v, dout = make_inputs(B, Hq, Hkv, L, L, D, torch.bfloat16, seed=11)
    out, lse = torch.ops.swaa.fwd(q, k, v, 100, 4, None, 0.088)
    first = torch.ops.swaa.bwd(dout, q, k, v, out, lse, 100, 4, None, 0.088)
    for _ in range(3):
        again = torch.ops.swaa.bwd(dout, q, k, v, out, lse, 100, 4, None, 0.088)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


def test_sink_keys_get_gradient_from_every_query(bwd_kernel):
    """With window 1 a sink key is seen by every later query: its dv is the sum
    of all their probabilities times dout, far beyond the window band."""
    B, H, L, D = 1, 1, 700, 64
    q, k, v, dout = make_inputs(B, H, H, L, L, D, torch.float16, seed=4)
    kw = dict(window=1, sink=2)
    ours = run_ours(q, k, v, dout, **kw)
    ref = run_reference(q, k, v, dout, torch.float64, **kw)
    lowp = run_torch_lowp(q, k, v, dout, **kw)
    assert ref[4][0, 0, :2].abs().sum() > 0
    assert_flash_tolerance(ours, lowp, ref)


def test_poisoned_outputs_are_all_written():
    """With SWAA_POISON_OUTPUTS=1 every output starts as NaN; the kernels must
    overwrite all of it (odd lengths, GQA, all mask kinds)."""
    script = textwrap.dedent("""
        import torch, swaa_ext
        torch.manual_seed(0)
        for (B, Hq, Hkv, Lq, Lk, D, w, s, f) in [(1, 4, 1, 97, 97, 64, 16, 4, None),
                                                 (2, 8, 2, 1, 1025, 128, None, 0, None),
                                                 (2, 4, 4, 1025, 1025, 128, 7, 1, 500),
                                                 (1, 2, 1, 130, 257, 64, 1, 0, 200)]:
            q = torch.randn(B, Hq, Lq, D, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=torch.bfloat16)
            v = torch.randn(B, Hkv, Lk, D, device="cuda", dtype=torch.bfloat16)
            ff = None if f is None else torch.full((B,), f, device="cuda")
            out, lse = torch.ops.swaa.fwd(q, k, v, w, s, ff, 0.1)
            grads = torch.ops.swaa.bwd(torch.randn_like(out), q, k, v, out, lse, w, s, ff, 0.1)
            for t in (out, lse, *grads):
                assert not torch.isnan(t).any(), (B, Hq, Hkv, Lq, Lk, D, w, s, f)
        # the knob is live: outputs are filled (aten::fill_) before the kernels run
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            torch.ops.swaa.fwd(q, k, v, 4, 0, None, 0.1)
        assert any(e.key == "aten::fill_" for e in prof.key_averages()), "poison knob inactive"
        print("ok")
    """)
    env = dict(os.environ, SWAA_POISON_OUTPUTS="1")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


@pytest.mark.parametrize("dtype,D,error,needle", [
    ("float32", 64, "TypeError", "got q dtype Float"),
    ("float64", 128, "TypeError", "got q dtype Double"),
    ("bfloat16", 96, "ValueError", "got head dim 96"),
    ("float16", 256, "ValueError", "got head dim 256"),
])
def test_unsupported_inputs_raise(dtype, D, error, needle):
    """No silent fallback: a clear error naming what the CUDA kernels support.
    Run in a subprocess, so that a crash fails this test and not the suite (a
    symbol-export bug once made such error paths segfault on torch 2.11; see
    docs/cuda_kernels.md)."""
    script = textwrap.dedent(f"""
        import torch, swaa_ext
        q = torch.randn(1, 2, 8, {D}, device="cuda", dtype=torch.{dtype})
        lse = torch.zeros(1, 2, 8, device="cuda")
        for call in (lambda: torch.ops.swaa.fwd(q, q, q, 4, 0, None, 1.0),
                     lambda: torch.ops.swaa.bwd(q, q, q, q, q, lse, 4, 0, None, 1.0)):
            try:
                call()
            except {error} as e:
                msg = str(e)
                assert {needle!r} in msg, msg
                assert "bfloat16" in msg and ("head dim 64 and 128" in msg or "float16" in msg), msg
            else:
                raise AssertionError("no error raised")
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, (res.returncode, res.stderr[-3000:])


def test_bad_arguments_raise_value_error_on_cuda():
    q = torch.randn(1, 2, 8, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="window"):
        torch.ops.swaa.fwd(q, q, q, 0, 0, None, 1.0)
    with pytest.raises(ValueError, match="Lq"):
        torch.ops.swaa.fwd(q, q[:, :, :4], q[:, :, :4], 4, 0, None, 1.0)


@pytest.mark.parametrize("knobs", [{"SWAA_BWD_STAGE": "0"}, {"SWAA_BWD_KV_BLOCK_M": "32"},
                                   {"SWAA_FWD_WARPS": "4", "SWAA_FWD_HOPPER": "0"},
                                   {"SWAA_FWD_WARPS": "8", "SWAA_FWD_HOPPER": "0"},
                                   {"SWAA_BWD_SPLIT": "0"}, {"SWAA_BWD_SPLIT": "5"},
                                   {"SWAA_FWD_ORDER": "0", "SWAA_BWD_ORDER": "0"},
                                   {"SWAA_WARP_SKIP": "0"},
                                   {"SWAA_BWD_KV_BLOCK_M": "32", "SWAA_BWD_SPLIT": "3"}],
                         ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_tuning_knobs_give_the_same_values(knobs, monkeypatch):
    """Every tile setting the launcher can pick is correct (knobs read per launch).
    The knobs are the sm_80 kernels': the sm_80 backward runs."""
    monkeypatch.setenv("SWAA_BWD_HOPPER", "0")
    for key, val in knobs.items():
        monkeypatch.setenv(key, val)
    for D, dtype in ((64, torch.bfloat16), (128, torch.float16)):
        B, Hq, Hkv, L = 2, 8, 2, 1025
        kw = dict(window=100, sink=4, full_from=full_from_arg("per", B, L))
        q, k, v, dout = make_inputs(B, Hq, Hkv, L, L, D, dtype, seed=21)
        assert_flash_tolerance(run_ours(q, k, v, dout, **kw), run_torch_lowp(q, k, v, dout, **kw),
                               run_reference(q, k, v, dout, torch.float64, **kw))


# --- Split sink key blocks (dk/dv): the key blocks holding sink keys are seen by
# every later query; their work is cut into pieces (SWAA_BWD_SPLIT: 0 off, 1
# automatic, k >= 2 exactly k pieces) whose float32 partials are summed in a
# fixed order.  N >> W so the automatic split engages (it needs the sink
# block's ~N/64 query tiles to exceed the window's ~(W + 128)/64).  These tests
# are the sm_80 backward's (SWAA_BWD_HOPPER=0, set
# in each test); tests/test_bwd_hopper.py has the Hopper backward's split tests.

SPLIT_CASES = [  # (B, Hq, Hkv, Lq, Lk, window, sink, full_from)
    (2, 8, 2, 1500, 1500, 64, 4, None),      # GQA 4
    (1, 4, 1, 700, 1100, 48, 1, None),       # MQA, Lq < Lk
    (2, 4, 2, 1500, 1500, 64, 200, None),    # sink > 128: two split key blocks
    (2, 8, 2, 1500, 1500, 64, 4, "per"),     # sink + per-sequence full_from
    (1, 4, 4, 1300, 1300, 100, 3, "mid"),    # sink + full_from, GQA 1
]


@pytest.mark.parametrize("split", ["1", "2", "7", "64"])
@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: "x".join(map(str, c)))
def test_split_sink_blocks_match_reference(case, split, monkeypatch):
    """Every piece count gives the reference result: automatic (1), 2, 7 and 64
    pieces (64 leaves the last pieces of every split block with an empty item
    range: they must contribute zeros, not garbage)."""
    B, Hq, Hkv, Lq, Lk, window, sink, ff = case
    monkeypatch.setenv("SWAA_BWD_HOPPER", "0")
    monkeypatch.setenv("SWAA_BWD_SPLIT", split)
    kw = dict(window=window, sink=sink, full_from=full_from_arg(ff, B, Lk))
    for D, dtype in ((128, torch.bfloat16), (64, torch.float16)):
        q, k, v, dout = make_inputs(B, Hq, Hkv, Lq, Lk, D, dtype, seed=Lq + sink + D)
        assert_flash_tolerance(run_ours(q, k, v, dout, **kw),
                               run_torch_lowp(q, k, v, dout, **kw),
                               run_reference(q, k, v, dout, torch.float64, **kw))


def test_split_is_deterministic_and_agrees_with_unsplit(monkeypatch):
    """With the split engaged dk/dv are bitwise equal across runs (fixed-order
    reduce), and within float rounding of the one-CTA-per-block result."""
    monkeypatch.setenv("SWAA_BWD_HOPPER", "0")
    B, Hq, Hkv, L, D = 1, 8, 2, 4097, 128
    window, sink = 128, 4
    q, k, v, dout = make_inputs(B, Hq, Hkv, L, L, D, torch.bfloat16, seed=41)
    scale = D ** -0.5
    out, lse = torch.ops.swaa.fwd(q, k, v, window, sink, None, scale)
    results = {}
    for split in ("0", "1", "5"):
        monkeypatch.setenv("SWAA_BWD_SPLIT", split)
        first = torch.ops.swaa.bwd(dout, q, k, v, out, lse, window, sink, None, scale)
        again = torch.ops.swaa.bwd(dout, q, k, v, out, lse, window, sink, None, scale)
        for name, a, b in zip(("dq", "dk", "dv"), first, again):
            assert torch.equal(a, b), f"{name} differs between two runs with SWAA_BWD_SPLIT={split}"
        results[split] = first
    unsplit = results["0"]
    for split in ("1", "5"):
        dq, dk, dv = results[split]
        assert torch.equal(dq, unsplit[0])  # dq does not depend on the dk/dv layout
        # keys outside the sink blocks are computed exactly as without the split
        assert torch.equal(dk[:, :, 128:], unsplit[1][:, :, 128:])
        assert torch.equal(dv[:, :, 128:], unsplit[2][:, :, 128:])
        for name, a, b in (("dk", dk, unsplit[1]), ("dv", dv, unsplit[2])):
            a, b = a[:, :, :128].float(), b[:, :, :128].float()
            assert not torch.equal(a, torch.zeros_like(a))
            err = (a - b).abs().max().item()
            assert err <= 2e-2 * b.abs().max().item(), f"{name}: split {split} vs unsplit err {err:.3g}"


@pytest.mark.parametrize("D", [64, 128])
def test_scheduling_knobs_do_not_change_results(D, monkeypatch):
    """SWAA_FWD_ORDER / SWAA_BWD_ORDER only reorder the CTAs, SWAA_WARP_SKIP
    only skips tiles a warp's rows cannot see (they would add exact zeros):
    bitwise equal outputs and gradients (batch 2, GQA, per-sequence
    full_from, a window that is not a multiple of the tiles).  The knobs are
    the sm_80 kernels': the sm_80 backward runs."""
    monkeypatch.setenv("SWAA_BWD_HOPPER", "0")
    B, Hq, Hkv, L = 2, 8, 2, 1025
    q, k, v, dout = make_inputs(B, Hq, Hkv, L, L, D, torch.bfloat16, seed=17)
    for kw in ((100, 4, full_from_arg("per", B, L), 0.125), (1000, 0, None, 0.1)):
        res = []
        for order, skip in (("0", "0"), ("1", "0"), ("1", "1"), ("0", "1")):
            monkeypatch.setenv("SWAA_FWD_ORDER", order)
            monkeypatch.setenv("SWAA_BWD_ORDER", order)
            monkeypatch.setenv("SWAA_WARP_SKIP", skip)
            out, lse = torch.ops.swaa.fwd(q, k, v, *kw)
            res.append((out, lse, *torch.ops.swaa.bwd(dout, q, k, v, out, lse, *kw)))
        for other in res[1:]:
            for name, a, b in zip(("out", "lse", "dq", "dk", "dv"), res[0], other):
                assert torch.equal(a, b), f"{name} depends on the CTA order or warp skipping"


def _ran_reduce_kernel(args):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        torch.ops.swaa.bwd(*args)
        torch.cuda.synchronize()
    return any("bwd_dkdv_reduce_kernel" in e.key for e in prof.key_averages())


def test_split_engages_only_where_it_should(monkeypatch):
    """The automatic split runs (reduce kernel launched) for a sink with N >> W,
    not without a sink, not when the window covers the sequence, not with
    SWAA_BWD_SPLIT=0: the split tests above exercise the path they claim to."""
    monkeypatch.delenv("SWAA_BWD_SPLIT", raising=False)
    monkeypatch.setenv("SWAA_BWD_HOPPER", "0")
    B, Hq, Hkv, L, D = 1, 4, 1, 2048, 64
    q, k, v, dout = make_inputs(B, Hq, Hkv, L, L, D, torch.bfloat16, seed=2)

    def args(window, sink):
        out, lse = torch.ops.swaa.fwd(q, k, v, window, sink, None, 0.125)
        return (dout, q, k, v, out, lse, window, sink, None, 0.125)

    assert _ran_reduce_kernel(args(64, 4))
    assert not _ran_reduce_kernel(args(64, 0))
    assert not _ran_reduce_kernel(args(4096, 4))
    monkeypatch.setenv("SWAA_BWD_SPLIT", "0")
    assert not _ran_reduce_kernel(args(64, 4))
