"""Plain explicit-mask attention: the reference every kernel is tested against.

Deliberately simple (materialises the full Lq x Lk score matrix); used by the
tests and as the ``sdpa_mask`` competitor of the benchmarks.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

__all__ = ["visibility_mask", "reference_attention", "plan_mask", "masked_attention"]


def visibility_mask(
    q_len: int,
    k_len: int,
    *,
    window: Optional[int] = None,
    sink: int = 0,
    full_from: Union[None, int, torch.Tensor] = None,
    batch: int = 1,
    device=None,
) -> torch.Tensor:
    """Boolean mask (batch, 1, q_len, k_len), True where key j is visible to
    query i (at position k_len - q_len + i):
    ``j <= p and (window is None or p - j < window or j < sink or p >= full_from)``.
    """
    p = torch.arange(k_len - q_len, k_len, device=device).view(1, q_len, 1)
    j = torch.arange(k_len, device=device).view(1, 1, k_len)
    if full_from is None:
        full = torch.zeros(batch, 1, 1, dtype=torch.bool, device=device)
    else:
        f = torch.as_tensor(full_from, device=device).reshape(-1, 1, 1)
        full = p >= f
    visible = (j <= p) & ((p - j < window if window is not None else True) | (j < sink) | full)
    return visible.expand(batch, q_len, k_len).unsqueeze(1)


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: Optional[int] = None,
    sink: int = 0,
    full_from: Union[None, int, torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype = torch.float64,
):
    """Attention with an explicit visibility mask, computed in ``compute_dtype``
    and returned in q.dtype (lse in float32)."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    group = Hq // Hkv
    qc, kc, vc = (t.to(compute_dtype) for t in (q, k, v))
    kc = kc.repeat_interleave(group, dim=1)
    vc = vc.repeat_interleave(group, dim=1)
    scores = torch.matmul(qc, kc.transpose(-1, -2)) * scale
    mask = visibility_mask(Lq, Lk, window=window, sink=sink, full_from=full_from, batch=B,
                           device=q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.softmax(scores, dim=-1), vc).to(q.dtype)
    return (out, lse.float()) if return_lse else out


def plan_mask(plan, length: int, prompt_len: int, device=None) -> torch.Tensor:
    """Boolean (length, length) visibility that one layer's plan (an entry of
    ``SWAAConfig.plan``) gives a sequence whose positions >= ``prompt_len`` are
    generated (or answer) tokens: prompt rows follow ``plan.prefill`` (with the
    last ``plan.full_tail`` prompt tokens seeing everything), later rows follow
    ``plan.decode``."""
    def rule(mode, full_from=None):
        if mode == "full":
            return visibility_mask(length, length, device=device)[0, 0]
        return visibility_mask(length, length, window=plan.window, sink=plan.sink,
                               full_from=full_from, device=device)[0, 0]

    tail_from = prompt_len - plan.full_tail if plan.full_tail else None
    prompt_rows = rule(plan.prefill, tail_from)
    generated_rows = rule(plan.decode)
    is_generated = (torch.arange(length, device=device) >= prompt_len).view(length, 1)
    return torch.where(is_generated, generated_rows, prompt_rows)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: Optional[float] = None,
                     compute_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Attention with any boolean mask broadcastable to (B, Hq, Lq, Lk), GQA by
    repeating K/V, computed in ``compute_dtype`` and returned in q.dtype."""
    group = q.shape[1] // k.shape[1]
    kc = k.to(compute_dtype).repeat_interleave(group, 1)
    vc = v.to(compute_dtype).repeat_interleave(group, 1)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = q.to(compute_dtype) @ kc.transpose(-1, -2) * scale
    return (scores.masked_fill(~mask, float("-inf")).softmax(-1) @ vc).to(q.dtype)


def tile_rel_err(a: torch.Tensor, b: torch.Tensor, rows: int = 64) -> float:
    """Largest difference of ``a`` from ``b`` (both (..., L, D)) per tile of ``rows`` rows,
    relative to the largest ``|b|`` of that tile (1e-6 at least): a global bound can miss one
    lost contribution to a tile that sums many (tests of the single-pass backward's dq)."""
    pad = (-b.shape[-2]) % rows
    a, b = (torch.nn.functional.pad(x.float(), (0, 0, 0, pad)).unflatten(-2, (-1, rows))
            for x in (a, b))
    err = (a - b).abs().amax((-1, -2)) / b.abs().amax((-1, -2)).clamp_min(1e-6)
    return err.max().item() if err.numel() else 0.0
