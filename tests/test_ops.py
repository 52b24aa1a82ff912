"""swa_attention (CPU) against the explicit-mask reference: values, lse,
gradients, op registration, torch.compile and bad input."""
from __future__ import annotations

import math

import pytest
import torch

import swaa_ext
from swaa_ext.reference import reference_attention, visibility_mask

# (B, Hq, Hkv, Lq, Lk, D): odd lengths, GQA 1/4/8, MQA, Lq < Lk, odd head dims
SHAPES = [
    (1, 1, 1, 1, 1, 64),
    (2, 4, 1, 97, 97, 64),
    (1, 8, 2, 97, 130, 128),
    (2, 8, 1, 33, 1025, 64),
    (1, 8, 8, 130, 130, 40),
    (3, 2, 2, 65, 200, 17),
]
# (window, sink, full_from) where full_from "mid" = middle of the keys, "per" = per sequence
MASKS = [
    (None, 0, None),
    (1, 0, None),
    (1, 1, None),
    (7, 0, None),
    (7, 4, None),
    (16, 1, "mid"),
    (5, 9, "per"),      # sink > window
    (10_000, 0, None),  # window longer than any sequence
    (32, 4, "per"),
]


def _full_from(kind, B, Lk, gen):
    if kind is None:
        return None
    if kind == "mid":
        return Lk // 2
    return torch.randint(0, Lk + 2, (B,), generator=gen)


def _inputs(B, Hq, Hkv, Lq, Lk, D, dtype, gen, requires_grad=False):
    q = torch.randn(B, Hq, Lq, D, generator=gen).to(dtype)
    k = torch.randn(B, Hkv, Lk, D, generator=gen).to(dtype)
    v = torch.randn(B, Hkv, Lk, D, generator=gen).to(dtype)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: f"w{m[0]}s{m[1]}f{m[2]}")
def test_forward_backward_float32(shape, mask):
    B, Hq, Hkv, Lq, Lk, D = shape
    window, sink, ff = mask
    gen = torch.Generator().manual_seed(hash((shape, mask)) % 2**31)
    full_from = _full_from(ff, B, Lk, gen)
    q, k, v = _inputs(B, Hq, Hkv, Lq, Lk, D, torch.float32, gen, requires_grad=True)
    kw = dict(window=window, sink=sink, full_from=full_from)

    out, lse = swaa_ext.swa_attention(q, k, v, return_lse=True, **kw)
    ref, ref_lse = reference_attention(q, k, v, return_lse=True, **kw)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=1e-5)

    dout = torch.randn(out.shape, generator=gen)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout)
    for name, g, r in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(g, r, atol=5e-5, rtol=1e-4, msg=lambda m: f"d{name}: {m}")


def _max_err(x, ref):
    return (x.float() - ref.float()).abs().max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask", [(None, 0, None), (7, 4, None), (16, 1, "per"), (1, 0, None)],
                         ids=lambda m: f"w{m[0]}s{m[1]}f{m[2]}")
def test_low_precision_flashattention_tolerance(dtype, mask):
    """err(ours) <= 2 * err(torch math in the same dtype) + atol, against float64."""
    B, Hq, Hkv, Lq, Lk, D = 2, 8, 2, 97, 160, 64
    window, sink, ff = mask
    gen = torch.Generator().manual_seed(7)
    full_from = _full_from(ff, B, Lk, gen)
    q, k, v = _inputs(B, Hq, Hkv, Lq, Lk, D, dtype, gen, requires_grad=True)
    kw = dict(window=window, sink=sink, full_from=full_from)
    dout = torch.randn(B, Hq, Lq, D, generator=gen).to(dtype)

    out = swaa_ext.swa_attention(q, k, v, **kw)
    gold = reference_attention(q, k, v, compute_dtype=torch.float64, **kw)
    same_dtype = reference_attention(q, k, v, compute_dtype=dtype, **kw)
    assert out.dtype == dtype
    atol = 1e-3 if dtype == torch.float16 else 8e-3
    assert _max_err(out, gold) <= 2 * _max_err(same_dtype, gold) + atol

    grads = torch.autograd.grad(out, (q, k, v), dout)
    gold_grads = torch.autograd.grad(gold, (q, k, v), dout)
    torch_grads = torch.autograd.grad(same_dtype, (q, k, v), dout)
    for name, g, r, t in zip("qkv", grads, gold_grads, torch_grads):
        assert g.dtype == dtype
        assert _max_err(g, r) <= 2 * _max_err(t, r) + atol, f"d{name}"


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(3)
    q, k, v = _inputs(1, 4, 2, 9, 12, 8, torch.float64, gen, requires_grad=True)
    for kw in (dict(window=3, sink=2), dict(window=2, sink=0, full_from=torch.tensor([10])),
               dict(window=None)):
        assert torch.autograd.gradcheck(
            lambda q, k, v: swaa_ext.swa_attention(q, k, v, **kw), (q, k, v), atol=1e-5, rtol=1e-4)


def test_float64_is_as_exact_as_a_float64_reference():
    """float64 inputs are computed with the unrounded softmax scale: with D = 8 the default
    1/sqrt(8) is not a float32, and rounding it there put ~1e-8 into float64 outputs.  The output
    agrees with the float64 reference to float64's roundings, so does the ring cache's."""
    def err(x, ref):  # in float64 (_max_err compares in float32, which would hide 1e-8)
        return (x - ref).abs().max().item()

    gen = torch.Generator().manual_seed(5)
    q, k, v = _inputs(1, 4, 2, 9, 12, 8, torch.float64, gen, requires_grad=True)
    kw = dict(window=3, sink=2)
    out = swaa_ext.swa_attention(q, k, v, **kw)
    ref = reference_attention(q, k, v, **kw)
    assert out.dtype == torch.float64 and err(out, ref) < 1e-13
    dout = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    ref_grads = torch.autograd.grad(ref, (q, k, v), dout)
    for name, g, r in zip("qkv", grads, ref_grads):
        # the backward recomputes P from the saved lse, which is float32 (the op's lse output):
        # gradients are float64 to ~1e-7, not to float64's roundings
        assert err(g, r) < 1e-6, f"d{name}"
    q, k, v = (t.detach() for t in (q, k, v))
    cache = swaa_ext.RingKVCache(1, 2, 8, window=3, sink=2, dtype=torch.float64, device="cpu")
    first = cache.attend(q[:, :, :5], k[:, :, :5], v[:, :, :5])
    rest = torch.cat([cache.attend(q[:, :, i:i + 1], k[:, :, i:i + 1], v[:, :, i:i + 1])
                      for i in range(5, 9)], dim=2)
    want = reference_attention(q, k[:, :, :9], v[:, :, :9], **kw)
    assert err(torch.cat([first, rest], dim=2), want) < 1e-13


def test_sink_keys_receive_gradient_from_every_query():
    gen = torch.Generator().manual_seed(4)
    q, k, v = _inputs(1, 1, 1, 300, 300, 16, torch.float32, gen, requires_grad=True)
    out = swaa_ext.swa_attention(q, k, v, window=4, sink=2)
    # only the last query row gets gradient: it sees keys 296..299 and the sinks 0, 1
    out[:, :, -1].sum().backward()
    nonzero = (k.grad[0, 0].abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert nonzero == [0, 1, 296, 297, 298, 299]


def test_strided_inputs_match_contiguous():
    """(B, L, H, D) memory viewed as (B, H, L, D): unit stride on D only."""
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(2, 50, 4, 32, generator=gen).transpose(1, 2)
    k = torch.randn(2, 70, 2, 32, generator=gen).transpose(1, 2)
    v = torch.randn(2, 70, 2, 32, generator=gen).transpose(1, 2)
    assert not q.is_contiguous()
    out = swaa_ext.swa_attention(q, k, v, window=9, sink=3)
    expected = swaa_ext.swa_attention(q.contiguous(), k.contiguous(), v.contiguous(), window=9, sink=3)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_backward_is_deterministic():
    gen = torch.Generator().manual_seed(6)
    q, k, v = _inputs(2, 8, 2, 200, 200, 32, torch.float32, gen, requires_grad=True)
    dout = torch.randn(2, 8, 200, 32, generator=gen)
    first = torch.autograd.grad(swaa_ext.swa_attention(q, k, v, window=20, sink=4), (q, k, v), dout)
    second = torch.autograd.grad(swaa_ext.swa_attention(q, k, v, window=20, sink=4), (q, k, v), dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_empty_query():
    q = torch.randn(2, 4, 0, 16, requires_grad=True)
    k = torch.randn(2, 2, 5, 16, requires_grad=True)
    v = torch.randn(2, 2, 5, 16, requires_grad=True)
    out, lse = swaa_ext.swa_attention(q, k, v, window=3, return_lse=True)
    assert out.shape == (2, 4, 0, 16) and lse.shape == (2, 4, 0)
    out.sum().backward()
    assert torch.equal(k.grad, torch.zeros_like(k)) and torch.equal(v.grad, torch.zeros_like(v))


def test_scale_and_full_from_int_match_reference():
    gen = torch.Generator().manual_seed(8)
    q, k, v = _inputs(2, 2, 2, 40, 40, 16, torch.float32, gen)
    out = swaa_ext.swa_attention(q, k, v, window=5, full_from=30, softmax_scale=0.3)
    ref = reference_attention(q, k, v, window=5, full_from=30, softmax_scale=0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_visibility_mask_matches_definition():
    mask = visibility_mask(3, 6, window=2, sink=1, full_from=torch.tensor([100, 5]), batch=2)
    # query rows sit at positions 3, 4, 5
    expected0 = torch.tensor([[1, 0, 1, 1, 0, 0], [1, 0, 0, 1, 1, 0], [1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    expected1 = expected0.clone()
    expected1[2] = True  # position 5 >= full_from = 5 sees everything
    assert torch.equal(mask[0, 0], expected0) and torch.equal(mask[1, 0], expected1)


# ---------------------------------------------------------------------------
# registration: opcheck, torch.compile


def test_opcheck_fwd_and_bwd():
    gen = torch.Generator().manual_seed(9)
    q, k, v = _inputs(2, 4, 2, 33, 40, 16, torch.float32, gen, requires_grad=True)
    ff = torch.tensor([10, 100])
    torch.library.opcheck(torch.ops.swaa.fwd.default, (q, k, v, 8, 2, ff, 0.25))
    torch.library.opcheck(torch.ops.swaa.fwd.default, (q, k, v, None, 0, None, 0.25))
    out, lse = torch.ops.swaa.fwd(q.detach(), k.detach(), v.detach(), 8, 2, ff, 0.25)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.swaa.bwd.default,
                          (dout, q.detach(), k.detach(), v.detach(), out, lse, 8, 2, ff, 0.25))


def test_torch_compile_fullgraph():
    gen = torch.Generator().manual_seed(10)
    q, k, v = _inputs(1, 4, 2, 64, 64, 32, torch.float32, gen, requires_grad=True)

    def layer(q, k, v):
        return (swaa_ext.swa_attention(q * 2, k, v, window=16, sink=2) * 3).sum()

    compiled = torch.compile(layer, fullgraph=True)
    loss = compiled(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    eager_grads = torch.autograd.grad(layer(q, k, v), (q, k, v))
    torch.testing.assert_close(loss, layer(q, k, v))
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)


# ---------------------------------------------------------------------------
# bad input: the error names the argument

def _good():
    return torch.randn(2, 4, 8, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)


BAD = [
    ("rank", lambda q, k, v: (q[0], k, v, {}), ValueError, "q must have rank 4"),
    ("k rank", lambda q, k, v: (q, k[0], v, {}), ValueError, "k must have rank 4"),
    ("dtype", lambda q, k, v: (q, k.double(), v, {}), ValueError, "k dtype"),
    ("int dtype", lambda q, k, v: (q.long(), k.long(), v.long(), {}), ValueError, "q must be float"),
    ("device", lambda q, k, v: (q, k.to("meta"), v, {}), ValueError, "k is on meta"),
    ("gqa", lambda q, k, v: (q[:, :3], k, v, {}), ValueError, "multiple of k/v heads"),
    ("kv heads", lambda q, k, v: (q, k, v[:, :1], {}), ValueError, "v has 1"),
    ("kv length", lambda q, k, v: (q, k, v[:, :, :7], {}), ValueError, "k length"),
    ("lq > lk", lambda q, k, v: (q, k[:, :, :4], v[:, :, :4], {}), ValueError, "must not exceed k length"),
    ("head dim", lambda q, k, v: (q, k[..., :8], v, {}), ValueError, "head dims"),
    ("batch", lambda q, k, v: (q, k[:1], v[:1], {}), ValueError, "batch sizes"),
    ("window", lambda q, k, v: (q, k, v, dict(window=0)), ValueError, "window must be >= 1"),
    ("window type", lambda q, k, v: (q, k, v, dict(window=2.5)), TypeError, "window must be an int"),
    ("sink", lambda q, k, v: (q, k, v, dict(sink=-1)), ValueError, "sink must be >= 0"),
    ("full_from shape", lambda q, k, v: (q, k, v, dict(full_from=torch.tensor([1, 2, 3]))), ValueError, "full_from"),
    ("full_from float", lambda q, k, v: (q, k, v, dict(full_from=torch.tensor([1.0, 2.0]))), ValueError, "full_from must be an integer"),
    ("full_from type", lambda q, k, v: (q, k, v, dict(full_from="3")), TypeError, "full_from"),
    ("last dim stride", lambda q, k, v: (q.transpose(2, 3).contiguous().transpose(2, 3), k, v, {}), ValueError, "q must be contiguous in its last dim"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_names_the_argument(case):
    _, make, exc, message = case
    q, k, v, kw = make(*_good())
    with pytest.raises(exc, match=message):
        swaa_ext.swa_attention(q, k, v, **kw)


def test_cpu_kernels_are_built_with_torch_s_parallel_backend():
    """at::parallel_for is a header template: with torch's OpenMP backend our
    kernels run on one thread unless they are compiled with OpenMP too."""
    if "OpenMP" in torch.__config__.parallel_info():
        assert swaa_ext.build_info()["openmp"] is True


def test_build_info():
    info = swaa_ext.build_info()
    assert info["version"] == swaa_ext.__version__
    assert isinstance(info["cuda"], bool)
    if not info["cuda"]:
        assert info["cuda_reason"]
    else:
        assert info["cuda_archs"]


def test_module_exports_only_its_init_function():
    """swaa_ext._C must not export weak copies of c10/torch inline functions:
    they can interpose on torch's own (seen as crashes when a C++ exception
    reached torch, with torch 2.11 on the GPU machine)."""
    import shutil
    import subprocess

    import swaa_ext._C as ext

    nm = shutil.which("nm")
    assert nm, "binutils' nm is needed for this check"
    symbols = subprocess.run([nm, "-D", "--defined-only", ext.__file__], capture_output=True,
                             text=True, check=True).stdout.split()
    exported = [s for s in symbols[2::3]]
    assert exported == ["PyInit__C"], exported[:10]


def test_import_before_torch_and_cpp_errors_reach_python():
    """A fresh interpreter that imports swaa_ext first, then has the C++ op
    raise: the error arrives as ValueError and the process lives on."""
    import subprocess
    import sys

    code = ("import swaa_ext, torch\n"
            "q = torch.randn(1, 2, 4, 8); k = torch.randn(1, 2, 4, 8)\n"
            "try:\n"
            "    torch.ops.swaa.fwd(q, k, k[:, :1], 2, 0, None, 1.0)\n"
            "except ValueError as e:\n"
            "    print('caught', 'v has 1' in str(e))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "caught True"


def test_head_dim_zero_is_rejected():
    q, k = torch.randn(1, 2, 3, 0), torch.randn(1, 1, 5, 0)
    with pytest.raises(ValueError, match="head dim"):
        swaa_ext.swa_attention(q, k, k, window=2)


def test_huge_ints_mean_unlimited():
    """window / sink / full_from beyond int64 range clamp to 'unlimited'."""
    gen = torch.Generator().manual_seed(11)
    q, k, v = _inputs(2, 2, 1, 20, 30, 8, torch.float32, gen)
    full = swaa_ext.swa_attention(q, k, v)
    torch.testing.assert_close(swaa_ext.swa_attention(q, k, v, window=2**70), full)
    torch.testing.assert_close(swaa_ext.swa_attention(q, k, v, window=3, sink=2**70), full)
    torch.testing.assert_close(swaa_ext.swa_attention(q, k, v, window=3, full_from=-2**70), full)
    torch.testing.assert_close(swaa_ext.swa_attention(q, k, v, window=3, full_from=2**70),
                               swaa_ext.swa_attention(q, k, v, window=3))


def test_nan_inputs_give_nan_rows_not_garbage():
    q = torch.randn(1, 1, 8, 16)
    k = torch.randn(1, 1, 8, 16)
    q[0, 0, 5] = float("nan")
    out = swaa_ext.swa_attention(q, k, k, window=3)
    assert torch.isnan(out[0, 0, 5]).all()
    assert torch.isfinite(out[0, 0, :5]).all() and torch.isfinite(out[0, 0, 6:]).all()
