"""Ring-buffer KV cache: sliding-window attention with sink tokens in
O(sink + window) memory per layer, for decode and streaming prefill.

Each (batch row, KV head) keeps exactly ``sink + window`` slots.  Position
``t`` lives in slot ``t`` if ``t < sink`` else ``sink + (t - sink) % window``;
a new key overwrites the key ``window`` positions before it, which no later
query can see.  Positions are per row and live on the device (``seqlens``), so
rows may be at different positions and nothing in :meth:`RingKVCache.attend`
synchronises with the host: a decode step can be captured in a CUDA graph.

The kernels are the ``torch.ops.swaa.ring_*`` ops (csrc/ring_ops.cpp,
csrc/cpu/ring.cpp, csrc/cuda/ring.cu).  See docs/ring_cache.md.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Union

import torch

from . import _C  # noqa: F401  (loads the library: registers torch.ops.swaa.ring_*)

__all__ = ["RingKVCache"]

# A chunk (Lc > 1) of at least GATHER_MIN_CHUNK positions attends through the tiled forward
# kernel (swa_attention: tensor cores on CUDA) over the ring's keys in position order plus the
# chunk, instead of ring_chunk (CUDA cores, fp32), whenever the host knows that order without
# reading the device: every ring full ("gather": sinks, then the window gathered in order), or
# every row at one known position short of that ("prefix": slots 0 .. n - 1; the first chunk of
# a stream is the chunk alone).  CPU, B=1, Hq=8, Hkv=2, D=64: 0.98-1.14x ring_chunk at Lc=64,
# 1.25-1.34x from 256; below 64 the copy of the window costs more than it saves.
# SWAA_RING_CHUNK (read at every call): "auto" (this rule), "kernel" (always ring_chunk),
# "gather" (the forward kernel whenever the order is known, any Lc > 1).  On CUDA only bfloat16
# and float16 (the forward kernels' dtypes) take the forward kernel.
GATHER_MIN_CHUNK = 64


def _check_positive_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"RingKVCache: {name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"RingKVCache: {name} must be >= {minimum}, got {value}")
    return value


class RingKVCache:
    """KV cache of one attention layer for sliding-window attention with sinks.

    Args:
        batch, kv_heads, head_dim: shape of the cached keys/values.
        window: keys visible to each query, counting its own position (the
            Hugging Face ``sliding_window`` convention), >= 1.
        sink: number of first positions every query always sees, >= 0.
        dtype, device: of the stored keys/values (and of q, k, v passed to
            :meth:`attend`).

    ``attend(q, k, v)`` appends the next ``Lc`` positions of every row and
    returns exactly what ``swaa_ext.swa_attention(q, K, V, window=window,
    sink=sink)`` returns for these queries over the row's whole history
    ``K, V`` (any ``Lc >= 1``, also ``Lc > window``).
    """

    def __init__(
        self,
        batch: int,
        kv_heads: int,
        head_dim: int,
        *,
        window: int,
        sink: int = 0,
        dtype: torch.dtype = torch.bfloat16,
        device: Union[str, torch.device] = "cuda",
    ) -> None:
        self.batch = _check_positive_int("batch", batch, 1)
        self.kv_heads = _check_positive_int("kv_heads", kv_heads, 1)
        self.head_dim = _check_positive_int("head_dim", head_dim, 1)
        self.window = _check_positive_int("window", window, 1)
        self.sink = _check_positive_int("sink", sink, 0)
        if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise ValueError(f"RingKVCache: dtype must be float32, float16, bfloat16 or float64, "
                             f"got {dtype}")
        self.dtype = dtype
        shape = (batch, kv_heads, sink + window, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.device = self.keys.device  # "cuda" resolved to "cuda:<current>"
        self.values = torch.zeros(shape, dtype=dtype, device=self.device)
        # (a normal tensor even when built under torch.inference_mode: inference tensors keep
        # no version counter, which _forget_if_moved reads)
        with torch.inference_mode(False):
            self._seqlens = torch.zeros(batch, dtype=torch.int64, device=self.device)
        # What the host knows of the positions without reading the device (_note_advance):
        # _min_seen, a lower bound of every row's position (calls without `lengths` add their
        # Lc, reset() zeroes it; CUDA graph replays move the rows on without it, which keeps it
        # a lower bound); _exact, the position of every row while they are all equal and known
        # (None from a call with `lengths` or a reset of some rows on, until reset(); never
        # again once a graph was captured: its replays may move the rows at any time, even
        # after a reset).  Both hold only while seqlens' version counter is the one they saw: a
        # write to seqlens from outside (or by a compiled call) makes them 0 and None
        # (_forget_if_moved).
        self._min_seen = 0
        self._exact: Optional[int] = 0
        self._captured = False
        self._version_seen = self._seqlens._version

    # ------------------------------------------------------------------ state
    @property
    def seqlens(self) -> torch.Tensor:
        """(B,) int64 on the cache device: positions each row has seen so far.
        The live tensor (its address never changes, for CUDA graphs): do not
        modify it; use :meth:`reset`.  (A write through the tensor is noticed, and
        the cache then stops trusting its host-side view of the positions; a write
        that skips the version counter, through ``.data`` or another alias, is not.)"""
        return self._seqlens

    @property
    def capacity(self) -> int:
        """Slots per (row, KV head): sink + window."""
        return self.sink + self.window

    @property
    def nbytes(self) -> int:
        """Bytes of K/V storage: 2 * B * Hkv * (sink + window) * D * element_size."""
        return self.keys.nbytes + self.values.nbytes

    def reset(self, rows: Optional[torch.Tensor] = None) -> None:
        """Forget the history of every row, or only of ``rows`` (a bool mask
        (B,) or integer indices) so a finished row can take a new sequence.
        Stored keys need no clearing: a row at position 0 sees none of them."""
        self._min_seen = 0
        self._exact = 0 if rows is None and not self._captured else None
        if rows is None:
            self._seqlens.zero_()
            self._version_seen = self._seqlens._version
            return
        if not isinstance(rows, torch.Tensor):
            rows = torch.as_tensor(rows)
        rows = rows.to(self.device)
        if rows.dtype == torch.bool:
            if rows.shape != (self.batch,):
                raise ValueError(f"RingKVCache.reset: rows mask must have shape ({self.batch},), "
                                 f"got {tuple(rows.shape)}")
            self._seqlens.masked_fill_(rows, 0)
            self._version_seen = self._seqlens._version
            return
        if rows.is_floating_point() or rows.is_complex():
            raise ValueError(f"RingKVCache.reset: rows must be a bool mask or integer row indices, "
                             f"got {rows.dtype}")
        rows = rows.long().reshape(-1)
        if rows.numel() and (rows.min() < 0 or rows.max() >= self.batch):  # reads the device once
            raise ValueError(f"RingKVCache.reset: rows must lie in [0, {self.batch}), "
                             f"got {rows.tolist()}")
        self._seqlens.index_fill_(0, rows, 0)
        self._version_seen = self._seqlens._version

    # ------------------------------------------------------------------ attend
    def _check(self, q, k, v, lengths, method: str = "attend") -> None:
        """Every check of ``attend`` (``q`` None: of ``append``) before anything is touched."""
        where = f"RingKVCache.{method}"
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t is None and name == "q":
                continue
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{where}: {name} must be a tensor, "
                                f"got {type(t).__name__}")
            if t.dim() != 4:
                raise ValueError(f"{where}: {name} must have rank 4 "
                                 f"({'B, Hq' if name == 'q' else 'B, Hkv'}, Lc, D), "
                                 f"got shape {tuple(t.shape)}")
            if t.dtype != self.dtype:
                raise ValueError(f"{where}: {name} dtype {t.dtype} differs from the "
                                 f"cache dtype {self.dtype}")
            if t.device != self.device:
                raise ValueError(f"{where}: {name} is on {t.device} but the cache is "
                                 f"on {self.device}")
            if t.shape[0] != self.batch:
                raise ValueError(f"{where}: {name} batch size {t.shape[0]} differs "
                                 f"from the cache batch size {self.batch}")
            if t.shape[3] != self.head_dim:
                raise ValueError(f"{where}: {name} head dim {t.shape[3]} differs "
                                 f"from the cache head dim {self.head_dim}")
        for name, t in (("k", k), ("v", v)):
            if t.shape[1] != self.kv_heads:
                raise ValueError(f"{where}: {name} has {t.shape[1]} heads but the "
                                 f"cache has {self.kv_heads} KV heads")
        if q is not None and q.shape[1] % self.kv_heads != 0:
            raise ValueError(f"{where}: q heads ({q.shape[1]}) must be a multiple of "
                             f"the cache's KV heads ({self.kv_heads})")
        lc = k.shape[2]
        if lc < 1:
            raise ValueError(f"{where}: k must hold at least one position (Lc >= 1)")
        if q is None and v.shape[2] != lc:
            raise ValueError(f"{where}: k and v must have the same length Lc, got k {lc}, "
                             f"v {v.shape[2]}")
        if q is not None and (v.shape[2] != lc or q.shape[2] != lc):
            raise ValueError(f"{where}: q, k, v must have the same length Lc, got "
                             f"q {q.shape[2]}, k {lc}, v {v.shape[2]}")
        if lengths is not None:
            if not isinstance(lengths, torch.Tensor):
                raise TypeError(f"{where}: lengths must be an integer tensor (B,), "
                                f"got {type(lengths).__name__}")
            if lengths.shape != (self.batch,):
                raise ValueError(f"{where}: lengths must have shape ({self.batch},), "
                                 f"got {tuple(lengths.shape)}")
            if lengths.dtype.is_floating_point or lengths.dtype in (torch.bool, torch.complex64,
                                                                    torch.complex128):
                raise ValueError(f"{where}: lengths must be an integer tensor, got "
                                 f"{lengths.dtype}")
            if lengths.device != self.device:
                raise ValueError(f"{where}: lengths is on {lengths.device} but the "
                                 f"cache is on {self.device}")
            if lengths.device.type == "cpu" and lengths.numel() and (
                    int(lengths.min()) < 0 or int(lengths.max()) > lc):
                raise ValueError(f"{where}: lengths must lie in [0, Lc = {lc}], got "
                                 f"{lengths.tolist()}")

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        softmax_scale: Optional[float] = None,
        *,
        lengths: Optional[torch.Tensor] = None,
        return_lse: bool = False,
    ):
        """Appends the next ``Lc`` positions and attends to the whole history.

        q: (B, Hq, Lc, D), k, v: (B, Hkv, Lc, D), Hq % Hkv == 0, in the cache's
        dtype and device.  Row b's queries sit at positions
        ``seqlens[b] .. seqlens[b] + Lc - 1``.

        lengths: optional (B,) integer tensor on the cache device: only the
        first ``lengths[b]`` positions of row b are real (right padding, e.g.
        prompts of different lengths in one batch); the rest are neither
        stored nor attended to, their output is zero, and ``seqlens[b]``
        advances by ``lengths[b]``.  Values must lie in [0, Lc] (checked on the
        CPU; clamped on CUDA, where checking would need a host sync).

        Returns out (B, Hq, Lc, D) in the cache dtype, and with ``return_lse``
        also the float32 log-sum-exp (B, Hq, Lc) (-inf on padding).  A call that
        raises leaves the cache unchanged.
        """
        self._check(q, k, v, lengths)
        self._forget_if_moved()
        scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(self.head_dim)
        scale = float(scale)
        lc = k.shape[2]
        if lc == 1:
            # advance=True: the op also advances seqlens (on CUDA inside its
            # combine kernel where the plan has one, saving a launch per step;
            # else, or with SWAA_DECODE_ADVANCE=op, with the same add as
            # _advance).
            out, lse = torch.ops.swaa.ring_decode(q, k, v, self.keys, self.values, self._seqlens,
                                                  lengths, self.window, self.sink, scale, 0, True)
            self._note_advance(1, lengths)
        else:
            source = self._chunk_source(lc)
            if source == "gather":
                out, lse = self._attend_gathered(q, k, v, lengths, scale)
            elif source == "prefix":
                out, lse = self._attend_prefix(q, k, v, lengths, scale)
            else:
                out, lse = torch.ops.swaa.ring_chunk(q, k, v, self.keys, self.values,
                                                     self._seqlens, lengths, self.window,
                                                     self.sink, scale)
            torch.ops.swaa.ring_append(self.keys, self.values, k, v, self._seqlens, lengths,
                                       self.window, self.sink)
            self._advance(lc, lengths)
        return (out, lse) if return_lse else out

    def append(self, k: torch.Tensor, v: torch.Tensor, *,
               lengths: Optional[torch.Tensor] = None) -> None:
        """Stores the next ``Lc`` positions of every row without attending: for keys and values
        whose attention was computed elsewhere (e.g. a prefill through ``swa_attention`` over the
        whole prompt).  Same shapes, ``lengths`` and positions as :meth:`attend`; only the
        positions that stay visible (sinks and the last ``window``) are written.  A call that
        raises leaves the cache unchanged."""
        self._check(None, k, v, lengths, "append")
        self._forget_if_moved()
        torch.ops.swaa.ring_append(self.keys, self.values, k, v, self._seqlens, lengths,
                                   self.window, self.sink)
        self._advance(k.shape[2], lengths)

    def _chunk_source(self, lc: int) -> str:
        """How a chunk of ``lc`` positions attends: "gather" or "prefix" through the forward
        kernel (see GATHER_MIN_CHUNK), else "kernel" (ring_chunk).  "gather" once every ring is
        full (``_min_seen``); "prefix" while every row sits at the same known position short of
        that (``_exact``), whose ring then holds positions 0 .. _exact - 1 in slots 0 ..
        _exact - 1.  Only "kernel" under graph capture (a captured gather or slice would replay
        at positions, e.g. after a reset, where it no longer holds) and under torch.compile (the
        compiled graph would run without _forget_if_moved's check)."""
        mode = os.environ.get("SWAA_RING_CHUNK", "auto")
        if mode not in ("auto", "kernel", "gather"):
            raise ValueError(f"SWAA_RING_CHUNK must be auto, kernel or gather, got {mode!r}")
        on_cuda = self.device.type == "cuda"
        if mode == "kernel" or (mode == "auto" and lc < GATHER_MIN_CHUNK):
            return "kernel"
        if torch.compiler.is_compiling():
            return "kernel"  # the host's view of the positions is not checked inside a trace
        if on_cuda and (self.dtype not in (torch.bfloat16, torch.float16)
                        or torch.cuda.is_current_stream_capturing()):
            return "kernel"  # the forward kernels' dtypes; and see the docstring on capture
        if self._min_seen >= self.sink + self.window:
            return "gather"
        if self._exact is not None:
            return "prefix"
        return "kernel"

    def _attend_prefix(self, q, k, v, lengths, scale):
        """A chunk's attention while every row sits at position ``_exact`` < sink + window: no
        slot has been reused yet, so slots 0 .. _exact - 1 hold positions 0 .. _exact - 1 and
        ``[those slots, the chunk]`` is each row's history (the first chunk of a stream: the
        chunk alone)."""
        n = self._exact
        keys = torch.cat([self.keys[:, :, :n], k], dim=2) if n else k
        values = torch.cat([self.values[:, :, :n], v], dim=2) if n else v
        return self._attend_history(q, keys, values, lengths, scale)

    def _attend_gathered(self, q, k, v, lengths, scale):
        """A chunk's attention when every row has seen at least ``sink + window`` positions:
        the ring holds the sinks and exactly the ``window`` positions before the chunk, so
        ``[sinks, those positions in order, the chunk]`` is the row's visible history with the
        gap between the sinks and the window removed, and swa_attention over it (same window and
        sink, queries at the end) sees, for every query, the same keys at the same distances.
        The gather reads the ring before ring_append overwrites it."""
        s, w = self.sink, self.window
        b, hkv, _, d = self.keys.shape
        # position seqlens - w + i of row b sits in slot s + (seqlens - s + i) % w
        order = torch.arange(w, device=self.device)
        slots = s + torch.remainder(self._seqlens[:, None] - s + order[None, :], w)
        slots = slots[:, None, :, None].expand(b, hkv, w, d)
        keys = torch.cat([self.keys[:, :, :s], self.keys.gather(2, slots), k], dim=2)
        values = torch.cat([self.values[:, :, :s], self.values.gather(2, slots), v], dim=2)
        return self._attend_history(q, keys, values, lengths, scale)

    def _attend_history(self, q, keys, values, lengths, scale):
        """swa_attention of the chunk's queries (the last Lc positions of ``keys``) with the
        cache's window and sink; padded queries (``lengths``) zeroed."""
        out, lse = torch.ops.swaa.fwd(q, keys, values, self.window, self.sink, None, scale)
        if lengths is not None:
            # queries past lengths[b] are padding: zero output, -inf lse (the real queries
            # before them cannot see the padded keys: causality)
            lc = q.shape[2]
            pad = (torch.arange(lc, device=self.device)[None, :]
                   >= lengths.to(torch.int64).clamp(0, lc)[:, None])
            out = out.masked_fill(pad[:, None, :, None], 0)
            lse = lse.masked_fill(pad[:, None, :], float("-inf"))
        return out, lse

    def _forget_if_moved(self) -> None:
        """Drops what the host knows of the positions if seqlens changed since it was last
        recorded: written from outside (against the docs, e.g. ``seqlens.fill_``) or by a
        compiled call.  A host-side read of the version counter, no device read."""
        if torch.compiler.is_compiling():
            return
        if self._seqlens._version != self._version_seen:
            self._min_seen, self._exact = 0, None
            self._version_seen = self._seqlens._version

    def _note_advance(self, lc: int, lengths: Optional[torch.Tensor]) -> None:
        """Updates what the host knows of the positions after a call advanced every row by
        ``lc`` (or by ``lengths``), its seqlens write included.  Under CUDA graph capture the
        write runs at each replay, not now: the lower bound stays (replays only raise the
        positions) and the exact position becomes unknown.  Under torch.compile nothing is
        recorded; the next eager call finds seqlens' version moved and forgets."""
        if torch.compiler.is_compiling():
            return
        capturing = self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        self._captured = self._captured or capturing
        if capturing or lengths is not None:
            self._exact = None
        elif self._exact is not None:
            self._exact += lc
        if not capturing and lengths is None:
            self._min_seen += lc
        self._version_seen = self._seqlens._version

    def _advance(self, lc: int, lengths: Optional[torch.Tensor]) -> None:
        if lengths is None:
            self._seqlens.add_(lc)
        else:
            self._seqlens.add_(lengths.to(torch.int64).clamp(0, lc))
        self._note_advance(lc, lengths)

    def __repr__(self) -> str:
        return (f"RingKVCache(batch={self.batch}, kv_heads={self.kv_heads}, "
                f"head_dim={self.head_dim}, window={self.window}, sink={self.sink}, "
                f"dtype={self.dtype}, device={self.device})")


# ---------------------------------------------------------------------------
# fake kernels: shapes and dtypes only, for torch.compile / FakeTensor tracing
@torch.library.register_fake("swaa::ring_append")
def _ring_append_fake(k_cache, v_cache, k, v, seqlens, lengths, window, sink):
    return None


@torch.library.register_fake("swaa::ring_decode")
def _ring_decode_fake(q, k, v, k_cache, v_cache, seqlens, lengths, window, sink, scale,
                      num_splits=0, advance=False):
    return torch.empty_like(q, memory_format=torch.contiguous_format), \
        q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.register_fake("swaa::ring_chunk")
def _ring_chunk_fake(q, k, v, k_cache, v_cache, seqlens, lengths, window, sink, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format), \
        q.new_empty(q.shape[:3], dtype=torch.float32)
