"""Typed Python front of the swaa attention ops: argument handling, fake
(meta) kernels for torch.compile, and autograd.

The kernels are registered in C++ (csrc/ops.cpp declares the schemas; csrc/cpu
and csrc/cuda implement them) and reached as ``torch.ops.swaa.*``.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

from . import _C  # noqa: F401  (loads the library: registers torch.ops.swaa)

__all__ = ["swa_attention"]

FullFrom = Union[None, int, torch.Tensor]


# Positions and lengths beyond this mean "unlimited" / "never" to the kernels
# (kNoWindow, kNever in csrc/include/swaa/visibility.h); larger Python ints
# are clamped to it so they never overflow the op's int64 arguments.
_UNLIMITED = 1 << 60


def _check_int(name: str, value, minimum: int, allow_none: bool = False):
    """Validates an int argument and returns it clamped to _UNLIMITED."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"swa_attention: {name} must be an int{' or None' if allow_none else ''}, "
                        f"got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"swa_attention: {name} must be >= {minimum}"
                         f"{' or None' if allow_none else ''}, got {value}")
    return min(value, _UNLIMITED)


def _full_from_tensor(full_from: FullFrom, q: torch.Tensor) -> Optional[torch.Tensor]:
    if full_from is None:
        return None
    if isinstance(full_from, torch.Tensor):
        if full_from.dim() != 1 or full_from.shape[0] != q.shape[0]:
            raise ValueError(f"swa_attention: full_from must be an int or a tensor of shape (B,) = "
                             f"({q.shape[0]},), got shape {tuple(full_from.shape)}")
        return full_from
    if isinstance(full_from, bool) or not isinstance(full_from, int):
        raise TypeError("swa_attention: full_from must be None, an int or an int tensor of shape "
                        f"(B,), got {type(full_from).__name__}")
    full_from = max(-_UNLIMITED, min(full_from, _UNLIMITED))
    return torch.full((q.shape[0],), full_from, dtype=torch.int64, device=q.device)


def swa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: Optional[int] = None,
    sink: int = 0,
    full_from: FullFrom = None,
    softmax_scale: Optional[float] = None,
    return_lse: bool = False,
):
    """Sliding-window attention with sink tokens and per-sequence full attention.

    q: (B, Hq, Lq, D); k, v: (B, Hkv, Lk, D) with Hq % Hkv == 0 and Lq <= Lk.
    Query i sits at position Lk - Lq + i; key j is visible to the query at p iff
    ``j <= p and (window is None or p - j < window or j < sink or p >= full_from)``.
    full_from: None, an int, or an int tensor (B,) (one value per sequence).
    Returns out (B, Hq, Lq, D) in q.dtype, and with ``return_lse`` also the
    float32 log-sum-exp (B, Hq, Lq) of the scaled scores (no gradient flows
    through lse).
    """
    window = _check_int("window", window, 1, allow_none=True)
    sink = _check_int("sink", sink, 0)
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"swa_attention: {name} must be a tensor, got {type(t).__name__}")
    for name, t in (("k", k), ("v", v)):
        # checked here too: a tensor on another device would route the whole
        # call to that device's kernel (or to the fake kernel for meta)
        if t.device != q.device:
            raise ValueError(f"swa_attention: {name} is on {t.device} but q is on {q.device}")
    if isinstance(full_from, torch.Tensor) and full_from.device != q.device:
        raise ValueError(f"swa_attention: full_from is on {full_from.device} but q is on {q.device}")
    if q.dim() != 4:
        raise ValueError(f"swa_attention: q must have rank 4 (B, Hq, Lq, D), got rank {q.dim()}")
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1] or 1)
    out, lse = torch.ops.swaa.fwd(q, k, v, window, sink, _full_from_tensor(full_from, q),
                                  float(scale))
    return (out, lse) if return_lse else out


# ---------------------------------------------------------------------------
# fake kernels: shapes and dtypes only, for torch.compile / FakeTensor tracing
@torch.library.register_fake("swaa::fwd")
def _fwd_fake(q, k, v, window, sink, full_from, scale):
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    return out, lse


@torch.library.register_fake("swaa::bwd")
def _bwd_fake(dout, q, k, v, out, lse, window, sink, full_from, scale):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


# ---------------------------------------------------------------------------
# autograd: the backward op recomputes the probabilities from lse
def _fwd_setup_context(ctx, inputs, output):
    q, k, v, window, sink, full_from, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, full_from)
    ctx.args = (window, sink, scale)
    ctx.mark_non_differentiable(lse)


def _fwd_backward(ctx, dout, _dlse):
    q, k, v, out, lse, full_from = ctx.saved_tensors
    window, sink, scale = ctx.args
    dq, dk, dv = torch.ops.swaa.bwd(dout.contiguous(), q, k, v, out, lse, window, sink, full_from,
                                    scale)
    return dq, dk, dv, None, None, None, None


torch.library.register_autograd("swaa::fwd", _fwd_backward, setup_context=_fwd_setup_context)
