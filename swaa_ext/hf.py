"""Hugging Face transformers integration: run an SWAA recipe on a causal LM.

    from swaa_ext import SWAAConfig, hf
    model = hf.apply_swaa(model, SWAAConfig.preset("sink+fa_decode", window=2048))
    cache = hf.SWAACache(model)
    out = model.generate(ids, past_key_values=cache, max_new_tokens=64)
    hf.remove_swaa(model)

How it hooks in (transformers' own extension points only, all reversible):

* ``"swaa"`` is registered in ``AttentionInterface`` (the attention function) and in
  ``AttentionMaskInterface`` (the mask function) and the model is switched to it with
  ``set_attn_implementation``.  The per-layer plan lives in a table keyed by the attention module
  (found by its ``layer_idx``); no module class or function of transformers is replaced.
* The mask function does not build an Lq x Lk mask: it hands the 2D padding mask through, tagged
  with each row's number of left-padding tokens.  The attention function then works in *real*
  positions per row: the keys of a row with ``pad`` left pads are ``key[..., pad:, :]`` (so sink
  tokens are the row's first real tokens, and padding is never attended), and rows with the same
  padding are served by one kernel call.  Trailing (right) padding needs nothing: causal queries
  never see later keys.  Holes in the mask are refused.
* Prompt and generated tokens: in a call on an empty cache (or without a cache) every token is a
  prompt token; in a later call every token is a generated one.  ``swaa_prompt_len=N`` passed to
  the model's forward overrides this (tokens at padded index >= N are generated), so one call over
  prompt + answer computes exactly what prefill + decode would.  FA decode and ``full_tail`` map onto
  the kernel's ``full_from``: a layer with FA decode uses ``full_from = prompt_end - full_tail``.
  ``swaa_prompt_len`` may also be a (B,) int tensor, one prompt end per row (training on
  prompt/answer pairs, :mod:`swaa_ext.train`): the kernel's per-sequence ``full_from`` then serves
  the whole batch in one call (not with SWAACache ring layers).
* :class:`SWAACache` keeps a ring buffer of ``sink + window`` slots for layers that are SWA in both
  prefill and decode and a growing cache for the others.  Its ring layers return only the new keys
  from ``update``; the attention function (which must be ``"swaa"``) sends the queries to the ring.

* Packed rows (several sequences concatenated in one row, :mod:`swaa_ext.train` ``pack``) are
  served only when described explicitly: ``swaa_packed=PackedLayout(...)`` passed to the model's
  forward (with ``position_ids`` restarting at 0 for each sequence, which RoPE needs).  Each layer
  gathers the sequences into a right-padded ``(n_sequences, H, L_max, D)`` view, makes one kernel
  call with each sequence's prompt end as per-sequence ``full_from``, and scatters the result back;
  the index tensors are built once per batch.  Sequences never see each other.

Not supported (refused with a message): attention dropout, softcapping, learned sink logits,
non-causal attention, 4D custom masks, cropping ring layers (assisted generation), torch.compile of
the ring path, packed sequences told apart only by ``position_ids`` (transformers' implicit
packing: pass a :class:`PackedLayout`, or one row per sequence with a padding mask).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import weakref
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface

from .cache import RingKVCache
from .config import LayerPlan, SWAAConfig
from .ops import swa_attention

__all__ = ["apply_swaa", "remove_swaa", "SWAACache", "PackedLayout", "is_swaa_applied",
           "applied_config", "ATTN_IMPLEMENTATION"]

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "swaa"
_ABSENT = object()

# attention module -> its LayerPlan; model -> state needed to undo apply_swaa
_PLANS: "weakref.WeakKeyDictionary[nn.Module, LayerPlan]" = weakref.WeakKeyDictionary()
_APPLIED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


# ---------------------------------------------------------------------------------------------
# padding
def _left_padding(attention_mask: torch.Tensor) -> List[int]:
    """Left pads per row of a 2D (B, T) mask; raises on holes (a 0 after the row's first 1 that is
    followed by a 1 again)."""
    mask = attention_mask.to(torch.bool)
    B, T = mask.shape
    idx = torch.arange(T, device=mask.device)
    has_token = mask.any(-1)
    first = torch.where(has_token, mask.to(torch.int8).argmax(-1), torch.full_like(has_token, T,
                                                                                   dtype=torch.long))
    last = torch.where(has_token, T - 1 - mask.flip(-1).to(torch.int8).argmax(-1),
                       torch.full_like(first, -1))
    expected = (idx >= first[:, None]) & (idx <= last[:, None])
    if not torch.equal(mask, expected):
        raise ValueError("swaa attention: attention_mask may only pad on the left (and on the "
                         "right); it has zeros between real tokens, which is not supported")
    return first.tolist()


def _swaa_mask(batch_size=None, q_length=None, kv_length=None, *args, attention_mask=None,
               **kwargs):
    """Mask function registered as AttentionMaskInterface["swaa"]: returns None without padding,
    else the 2D padding mask tagged with the left pads of each row (``_swaa_left_pad``)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise ValueError("swaa attention: only a 2D padding attention_mask is supported, got "
                         f"shape {tuple(attention_mask.shape)}")
    if bool(attention_mask.all()):
        return None
    pads = _left_padding(attention_mask)
    if not any(pads):
        return None
    tagged = attention_mask.view_as(attention_mask)
    tagged._swaa_left_pad = pads
    return tagged


def _pads_of(attention_mask, batch: int) -> List[int]:
    if attention_mask is None:
        return [0] * batch
    pads = getattr(attention_mask, "_swaa_left_pad", None)
    if pads is None:
        if attention_mask.dim() != 2:
            raise ValueError("swaa attention: got a prepared attention mask of shape "
                             f"{tuple(attention_mask.shape)}; only 2D padding masks are supported")
        pads = _left_padding(attention_mask)
    if len(pads) != batch:
        raise ValueError(f"swaa attention: attention_mask has {len(pads)} rows, batch is {batch}")
    return pads


def _groups(pads: List[int], device) -> List[Tuple[int, Optional[torch.Tensor]]]:
    """[(pad, rows)] with rows None when every row has that pad."""
    distinct = sorted(set(pads))
    if len(distinct) == 1:
        return [(distinct[0], None)]
    return [(p, torch.tensor([b for b, x in enumerate(pads) if x == p], device=device))
            for p in distinct]


# ---------------------------------------------------------------------------------------------
# the attention computation in real positions
def _segments(plan: LayerPlan, key_len: int, q_len: int, prompt_end: int):
    """Kernel calls for queries at positions key_len-q_len .. key_len-1 (keys at 0 .. key_len-1),
    prompt tokens before ``prompt_end``: [(q_begin, q_end, window, sink, full_from)]."""
    q0 = key_len - q_len
    if plan.prefill == "full":
        return [(q0, key_len, None, 0, None)]
    W, S, tail = plan.window, plan.sink, plan.full_tail
    if plan.decode == "full":
        return [(q0, key_len, W, S, max(prompt_end - tail, 0))]
    if tail == 0 or prompt_end <= q0:  # no prompt tail among these queries
        return [(q0, key_len, W, S, None)]
    split = min(max(prompt_end, q0), key_len)
    calls = [(q0, split, W, S, max(prompt_end - tail, 0))]
    if split < key_len:
        calls.append((split, key_len, W, S, None))
    return calls


def _attend_real_per_row(q, k, v, plan: LayerPlan, prompt_end: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """:func:`_attend_real` with one prompt end per row (``prompt_end`` (b,) int tensor): the
    per-row ``full_from`` of the kernel serves the whole batch in one call (two when the plan has
    a ``full_tail`` and SWA decode: the tail queries then take the full_from call's rows)."""
    if plan.prefill == "full":
        return swa_attention(q, k, v, window=None, softmax_scale=scale)
    W, S, tail = plan.window, plan.sink, plan.full_tail
    full_from = (prompt_end.to(device=q.device, dtype=torch.int64) - tail).clamp_min(0)
    if plan.decode == "full":
        return swa_attention(q, k, v, window=W, sink=S, full_from=full_from, softmax_scale=scale)
    swa = swa_attention(q, k, v, window=W, sink=S, softmax_scale=scale)
    if tail == 0:
        return swa
    with_tail = swa_attention(q, k, v, window=W, sink=S, full_from=full_from, softmax_scale=scale)
    key_len, q_len = k.shape[2], q.shape[2]
    pos = torch.arange(key_len - q_len, key_len, device=q.device)
    in_prompt = pos[None, :] < prompt_end.to(q.device)[:, None]  # (b, lq)
    return torch.where(in_prompt[:, None, :, None], with_tail, swa)


def _attend_real(q, k, v, plan: LayerPlan, prompt_end, scale: float) -> torch.Tensor:
    """q (b, H, lq, D) at the last lq of the key positions 0 .. Lk-1 of k, v (no padding).
    ``prompt_end``: an int, or a (b,) int tensor (one prompt end per row)."""
    if isinstance(prompt_end, torch.Tensor):
        return _attend_real_per_row(q, k, v, plan, prompt_end, scale)
    key_len, q_len = k.shape[2], q.shape[2]
    parts = []
    for begin, end, window, sink, full_from in _segments(plan, key_len, q_len, prompt_end):
        qs = q[:, :, begin - (key_len - q_len): end - (key_len - q_len)]
        parts.append(swa_attention(qs, k[:, :, :end], v[:, :, :end], window=window, sink=sink,
                                   full_from=full_from, softmax_scale=scale))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


# ---------------------------------------------------------------------------------------------
# packed rows
@dataclasses.dataclass
class PackedLayout:
    """Where the sequences of a packed batch lie: ``rows`` rows of ``row_len`` tokens, each row
    holding one or more sequences back to back (no padding between them; a row may end with
    padding).  Build it with :meth:`build`, once per batch; pass it to the model's forward as
    ``swaa_packed=layout`` together with ``position_ids=layout.position_ids``.

    The padded view has ``n_seq`` rows of ``max_len`` slots; slot ``(s, j)`` is token ``j`` of
    sequence ``s`` (slots past the sequence's end repeat its last token: they sit after every real
    query, so causal attention never shows them to one).  Token indices are flat: packed token
    ``(r, t)`` is ``r * row_len + t``, slot ``(s, j)`` is ``s * max_len + j``; all int64."""

    rows: int
    row_len: int
    n_seq: int
    max_len: int
    slot_token: torch.Tensor     # (n_seq * max_len,) packed token of each slot of the padded view
    token_flat: torch.Tensor     # (n_tokens,) each real packed token
    token_slot: torch.Tensor     # (n_tokens,) its slot in the padded view
    token_position: torch.Tensor  # (n_tokens,) its position in its sequence
    prompt_len: torch.Tensor     # (n_seq,) prompt end of each sequence (its full_from)
    position_ids: torch.Tensor   # (rows, row_len) restarting at 0 per sequence, 0 on padding

    @classmethod
    def build(cls, lengths: List[List[int]], prompt_lens: List[List[int]],
              row_len: Optional[int] = None, device=None) -> "PackedLayout":
        """``lengths[r]``: the lengths of the sequences of row ``r`` in order; ``prompt_lens[r]``:
        their prompt ends (0 <= prompt_len <= length).  ``row_len`` defaults to the fullest row."""
        if not lengths or len(lengths) != len(prompt_lens):
            raise ValueError("PackedLayout: lengths and prompt_lens must be non-empty lists of "
                             "the same number of rows")
        fill = [sum(row) for row in lengths]
        row_len = max(fill) if row_len is None else row_len
        seqs = [(r, start, n, p) for r, (row, prompts) in enumerate(zip(lengths, prompt_lens))
                for start, n, p in _starts(row, prompts, r)]
        if not seqs:
            raise ValueError("PackedLayout: no sequences")
        if max(fill) > row_len:
            raise ValueError(f"PackedLayout: row {fill.index(max(fill))} holds {max(fill)} tokens, "
                             f"more than row_len={row_len}")
        max_len = max(n for _, _, n, _ in seqs)
        j = torch.arange(max_len)
        first = torch.tensor([r * row_len + start for r, start, _, _ in seqs])
        length = torch.tensor([n for _, _, n, _ in seqs])
        real = j[None, :] < length[:, None]                               # (n_seq, max_len)
        slot_token = first[:, None] + torch.minimum(j[None, :], length[:, None] - 1)
        token_flat = slot_token[real]
        token_position = j.expand_as(slot_token)[real]
        position_ids = torch.zeros(len(lengths) * row_len, dtype=torch.long)
        position_ids[token_flat] = token_position
        to = dict(device=device, dtype=torch.long)
        return cls(rows=len(lengths), row_len=row_len, n_seq=len(seqs), max_len=max_len,
                   slot_token=slot_token.reshape(-1).to(**to), token_flat=token_flat.to(**to),
                   token_slot=real.reshape(-1).nonzero().squeeze(1).to(**to),
                   token_position=token_position.to(**to),
                   prompt_len=torch.tensor([p for _, _, _, p in seqs], **to),
                   position_ids=position_ids.view(len(lengths), row_len).to(device))

    def to(self, device) -> "PackedLayout":
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, H, row_len, D) -> the padded view (n_seq, H, max_len, D).  transformers' q, k, v
        are (rows, row_len, H, D) in memory, so the flattening is a view."""
        R, H, T, D = x.shape
        g = x.transpose(1, 2).reshape(R * T, H, D).index_select(0, self.slot_token)
        return g.view(self.n_seq, self.max_len, H, D).transpose(1, 2)

    def scatter(self, o: torch.Tensor) -> torch.Tensor:
        """Padded view (n_seq, H, max_len, D) -> (rows, row_len, H, D), zeros on row padding."""
        N, H, L, D = o.shape
        values = o.transpose(1, 2).reshape(N * L, H, D).index_select(0, self.token_slot)
        out = o.new_zeros(self.rows * self.row_len, H, D).index_copy(0, self.token_flat, values)
        return out.view(self.rows, self.row_len, H, D)

    def check_positions(self, position_ids: Optional[torch.Tensor]) -> None:
        """position_ids must restart at 0 for each sequence (RoPE); checked once per tensor."""
        if position_ids is None:
            raise ValueError("swaa attention: swaa_packed needs position_ids restarting at 0 for "
                             "each packed sequence (pass position_ids=layout.position_ids)")
        if position_ids is self.position_ids or \
                getattr(position_ids, "_swaa_packed_checked", None) is self:
            return
        pos = position_ids.expand(self.rows, -1) if position_ids.shape[0] == 1 else position_ids
        if pos.shape != (self.rows, self.row_len) or not torch.equal(
                pos.reshape(-1)[self.token_flat.to(pos.device)],
                self.token_position.to(pos.device)):
            raise ValueError("swaa attention: position_ids disagree with swaa_packed: each packed "
                             "sequence's positions must restart at 0 (pass "
                             "position_ids=layout.position_ids)")
        position_ids._swaa_packed_checked = self


def _starts(row: List[int], prompts: List[int], r: int):
    if len(row) != len(prompts):
        raise ValueError(f"PackedLayout: row {r} has {len(row)} lengths and {len(prompts)} "
                         "prompt lengths")
    start = 0
    for n, p in zip(row, prompts):
        if n < 1 or not 0 <= p <= n:
            raise ValueError(f"PackedLayout: row {r}: sequence of length {n} with prompt length "
                             f"{p} (need length >= 1 and 0 <= prompt length <= length)")
        yield start, n, p
        start += n


def _attend_packed(query, key, value, layout: PackedLayout, plan: LayerPlan, pads: List[int],
                   kwargs, scale: float) -> torch.Tensor:
    """query (rows, Hq, row_len, D), key/value (rows, Hkv, row_len, D) of packed rows ->
    (rows, row_len, Hq, D): one kernel call over the padded view of the sequences."""
    if not isinstance(layout, PackedLayout):
        raise ValueError(f"swaa attention: swaa_packed must be a PackedLayout, got "
                         f"{type(layout).__name__}")
    if kwargs.get("swaa_prompt_len") is not None:
        raise ValueError("swaa attention: give either swaa_prompt_len or swaa_packed (whose "
                         "prompt_len holds each packed sequence's prompt end), not both")
    if any(pads):
        raise ValueError("swaa attention: packed rows (swaa_packed) may only be padded on the "
                         "right")
    B, Lq, Lk = query.shape[0], query.shape[2], key.shape[2]
    if (B, Lq, Lk) != (layout.rows, layout.row_len, layout.row_len):
        raise ValueError(f"swaa attention: swaa_packed describes {layout.rows} rows of "
                         f"{layout.row_len} tokens, got {B} rows of {Lq} queries and {Lk} keys "
                         "(packed rows need one call without a KV cache)")
    layout.check_positions(kwargs.get("position_ids"))
    out = _attend_real(layout.gather(query), layout.gather(key), layout.gather(value), plan,
                       layout.prompt_len.to(query.device), scale)
    return layout.scatter(out)


def _refuse_packed(position_ids: Optional[torch.Tensor]) -> None:
    """Packed sequences told apart only by position_ids (restarting inside a row) are refused:
    they are served only with an explicit :class:`PackedLayout` (``swaa_packed``).  Checked once
    per position_ids tensor (once per forward)."""
    if position_ids is None or getattr(position_ids, "_swaa_not_packed", False):
        return
    if position_ids.shape[-1] > 1 and not bool((position_ids.diff(dim=-1) == 1).all()):
        raise ValueError("swaa attention: position_ids restart inside a row (packed sequences) "
                         "but no swaa_packed layout says where each sequence lies: pass "
                         "swaa_packed=hf.PackedLayout(...) (see swaa_ext.train.collate_packed), "
                         "or one document per row with a padding mask")
    position_ids._swaa_not_packed = True


def _check_supported(module, dropout, kwargs):
    if dropout:
        raise ValueError(f"swaa attention: attention dropout ({dropout}) is not supported; set "
                         "config.attention_dropout=0 or call model.eval()")
    for name in ("softcap", "s_aux", "sinks"):
        if kwargs.get(name) is not None:
            raise ValueError(f"swaa attention: {name} is not supported by the swaa kernels")
    if kwargs.get("is_causal") is False or getattr(module, "is_causal", True) is False:
        raise ValueError("swaa attention: only causal (decoder) self-attention is supported")


def _swaa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                    scaling: Optional[float] = None, dropout: float = 0.0, **kwargs):
    """AttentionInterface["swaa"]. Returns (out (B, Lq, Hq, D), None)."""
    plan = _PLANS.get(module)
    if plan is None:
        raise RuntimeError(f"swaa attention: {type(module).__name__} has no SWAA plan; use "
                           "swaa_ext.hf.apply_swaa(model, cfg) instead of setting the attention "
                           "implementation by hand")
    _check_supported(module, dropout, kwargs)
    scale = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    pads = _pads_of(attention_mask, query.shape[0])
    prompt_len = kwargs.get("swaa_prompt_len")
    if isinstance(prompt_len, torch.Tensor):
        if prompt_len.dim() != 1 or prompt_len.shape[0] != query.shape[0] or \
                prompt_len.is_floating_point():
            raise ValueError("swaa attention: swaa_prompt_len must be an int or an int tensor of "
                             f"shape (B,) = ({query.shape[0]},), got {prompt_len.dtype} tensor of "
                             f"shape {tuple(prompt_len.shape)}")

    ring = getattr(key, "_swaa_ring", None)
    if ring is not None:
        if kwargs.get("swaa_packed") is not None:
            raise ValueError("swaa attention: packed rows (swaa_packed) are not supported with "
                             "SWAACache ring layers; call the model without a cache")
        if isinstance(prompt_len, torch.Tensor):
            raise ValueError("swaa attention: a per-row swaa_prompt_len tensor is not supported "
                             "with SWAACache ring layers; pass an int or use no cache")
        if ring.plan != plan:
            raise RuntimeError(f"SWAACache layer {plan.layer} was built for another SWAA plan; "
                               "create a new SWAACache after apply_swaa")
        out = ring.attend(query, key, value, pads, prompt_len, scale)
        return out.transpose(1, 2), None

    packed = kwargs.get("swaa_packed")
    if packed is not None:
        return _attend_packed(query, key, value, packed, plan, pads, kwargs, scale), None

    Lq, Lk = query.shape[2], key.shape[2]
    if Lq > Lk:
        raise ValueError(f"swaa attention: {Lq} queries but only {Lk} keys")
    if attention_mask is None and Lq == Lk > 1:
        _refuse_packed(kwargs.get("position_ids"))
    prompt_end = prompt_len if prompt_len is not None else (Lk if Lq == Lk else Lk - Lq)
    return _attend_padded(query, key, value, pads, plan, prompt_end, scale).transpose(1, 2), None


def _attend_padded(query, key, value, pads: List[int], plan: LayerPlan, prompt_end: int,
                   scale: float) -> torch.Tensor:
    """query (B, Hq, Lq, D) at the last Lq of the padded indices 0 .. Lk-1 of key/value, row b
    starting with pads[b] padding positions; prompt tokens before padded index prompt_end.
    Rows with the same padding share one kernel call; queries on padding give zeros."""
    Lq, Lk = query.shape[2], key.shape[2]
    out = query.new_zeros(query.shape) if any(pads) else None
    for pad, rows in _groups(pads, query.device):
        q_begin = max(0, pad - (Lk - Lq))
        if q_begin >= Lq:
            continue
        q, k, v = (query, key, value) if rows is None else (query[rows], key[rows], value[rows])
        row_end = prompt_end[rows] if isinstance(prompt_end, torch.Tensor) and rows is not None \
            else prompt_end
        o = _attend_real(q[:, :, q_begin:], k[:, :, pad:], v[:, :, pad:], plan,
                         row_end - pad, scale)
        if out is None:
            return o
        if rows is None:
            out[:, :, q_begin:] = o
        else:
            out[rows, :, q_begin:] = o
    return out


AttentionInterface.register(ATTN_IMPLEMENTATION, _swaa_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _swaa_mask)


# ---------------------------------------------------------------------------------------------
# apply / remove
def _text_config(model):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _attention_modules(model) -> Dict[int, List[nn.Module]]:
    found: Dict[int, List[nn.Module]] = {}
    for module in model.modules():
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int) and not isinstance(idx, bool) and "Attention" in type(module).__name__:
            found.setdefault(idx, []).append(module)
    return found


def _refusal(model) -> Optional[str]:
    """Why apply_swaa cannot serve this model, or None."""
    if not isinstance(model, PreTrainedModel):
        return f"{type(model).__name__} is not a transformers PreTrainedModel"
    if getattr(model.config, "is_encoder_decoder", False):
        return "encoder-decoder models are not supported (SWAA adapts causal decoder LMs)"
    can_set = getattr(model, "_can_set_attn_implementation", None)
    if can_set is not None and not can_set():
        return (f"{type(model).__name__} does not route its attention through transformers' "
                "AttentionInterface, so its attention cannot be replaced")
    if not _attention_modules(model):
        return (f"{type(model).__name__} has no attention modules with a layer_idx "
                "(no *Attention module that goes through AttentionInterface)")
    return None


def is_swaa_applied(model) -> bool:
    return model in _APPLIED


def apply_swaa(model, cfg: SWAAConfig):
    """Switch ``model`` (in place) to SWAA attention following ``cfg.plan(num_layers)``; returns
    the model.  Applying again replaces the plan; :func:`remove_swaa` undoes it exactly.  The
    model's own sliding-window layers (``config.sliding_window``, ``config.layer_types``) are set
    aside while SWAA is on (``layer_types`` reads all "full_attention", so transformers' caches
    keep every key), since the plan decides every layer's window."""
    if not isinstance(cfg, SWAAConfig):
        raise TypeError(f"apply_swaa: cfg must be an SWAAConfig, got {type(cfg).__name__}")
    why = _refusal(model)
    if why is not None:
        raise ValueError(f"apply_swaa: cannot serve this model: {why}")
    text_config = _text_config(model)
    num_layers = getattr(text_config, "num_hidden_layers", None)
    if not isinstance(num_layers, int):
        raise ValueError("apply_swaa: cannot serve this model: its config has no num_hidden_layers")
    plans = cfg.plan(num_layers)
    modules = _attention_modules(model)
    outside = sorted(i for i in modules if not 0 <= i < num_layers)
    if outside:
        raise ValueError(f"apply_swaa: cannot serve this model: attention modules with layer_idx "
                         f"{outside} outside 0 .. {num_layers - 1}")
    for mods in modules.values():
        for module in mods:
            if getattr(module, "is_causal", True) is False:
                raise ValueError(f"apply_swaa: cannot serve this model: {type(module).__name__} "
                                 "is not causal attention")

    if model not in _APPLIED:
        # the model's own sliding-window layers would make transformers' caches drop keys that
        # sink tokens and full layers need: while SWAA is on every layer counts as full attention
        # for transformers (layer_types), and the plan alone decides the windows
        _APPLIED[model] = {"attn": model.config._attn_implementation,
                           "layer_types": text_config.__dict__.get("layer_types", _ABSENT)}
        own = getattr(text_config, "layer_types", None)
        if getattr(text_config, "sliding_window", None) is not None or (
                own and any(t != "full_attention" for t in own)):
            logger.info("apply_swaa: the model's own sliding-window layers are set aside while SWAA "
                        "is on")
        text_config.layer_types = ["full_attention"] * num_layers
        try:
            model.set_attn_implementation(ATTN_IMPLEMENTATION)
            refused = model.config._attn_implementation != ATTN_IMPLEMENTATION
            reason = "it kept " + repr(model.config._attn_implementation)
        except (ValueError, KeyError, NotImplementedError) as e:
            refused, reason = True, str(e)
        if refused:
            _restore(model)
            raise ValueError("apply_swaa: cannot serve this model: transformers refused to switch "
                             f"its attention implementation to {ATTN_IMPLEMENTATION!r}: {reason}")
    for idx, mods in modules.items():
        for module in mods:
            _PLANS[module] = plans[idx]
    _APPLIED[model]["cfg"] = cfg
    return model


def applied_config(model) -> Optional[SWAAConfig]:
    """The SWAAConfig applied to ``model``, or None."""
    state = _APPLIED.get(model)
    return None if state is None else state["cfg"]


def _restore(model):
    saved = _APPLIED.pop(model)
    text_config = _text_config(model)
    if saved["layer_types"] is _ABSENT:
        del text_config.layer_types
    else:
        text_config.layer_types = saved["layer_types"]
    model.set_attn_implementation(saved["attn"])


def remove_swaa(model):
    """Undo :func:`apply_swaa`: the previous attention implementation and config values come back."""
    if model not in _APPLIED:
        raise ValueError("remove_swaa: SWAA is not applied to this model")
    for mods in _attention_modules(model).values():
        for module in mods:
            _PLANS.pop(module, None)
    _restore(model)
    return model


# ---------------------------------------------------------------------------------------------
# ring buffer and cache
def _shift_rows(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, D): row b moved left by shift[b] (negative: right); vacated places hold
    copies of an edge element (callers ignore them)."""
    L = x.shape[2]
    idx = (torch.arange(L, device=x.device)[None, :] + shift[:, None]).clamp(0, L - 1)
    return x.gather(2, idx[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))


class SWAARingLayer(CacheLayerMixin):
    """Cache layer of a layer that is SWA in prefill and decode: a
    :class:`swaa_ext.RingKVCache` of ``sink + window`` slots per row.  ``update`` returns only the
    new keys/values (tagged); the ``"swaa"`` attention function then calls :meth:`attend`.
    Left-padded prompts enter the ring as right-padded rows with per-row ``lengths``, so each row's
    positions (and sink tokens) are its real ones."""

    is_sliding = True
    is_compileable = False
    is_croppable = False

    def __init__(self, plan: LayerPlan):
        super().__init__()
        self.plan = plan
        self.ring: Optional[RingKVCache] = None
        self.cumulative_length = 0
        self._pending = False

    def lazy_initialization(self, key_states, value_states):
        self.device, self.dtype = key_states.device, key_states.dtype
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if self._pending:
            raise RuntimeError(f"SWAACache layer {self.plan.layer}: the keys of the previous step were "
                               "never attended; the model's attention implementation must be 'swaa' "
                               "(use swaa_ext.hf.apply_swaa)")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.cumulative_length += key_states.shape[-2]
        self._pending = True
        key_states = key_states.view_as(key_states)
        key_states._swaa_ring = self
        return key_states, value_states

    def attend(self, query, key, value, pads: List[int], prompt_len: Optional[int], scale: float):
        """Append key, value (B, Hkv, Lc, D) and attend query (B, Hq, Lc, D) over the history."""
        self._pending = False
        n = key.shape[2]
        first = self.ring is None
        if first:
            B, Hkv, _, D = key.shape
            self.ring = RingKVCache(B, Hkv, D, window=self.plan.window, sink=self.plan.sink,
                                    dtype=key.dtype, device=key.device)
        elif prompt_len is not None and prompt_len > self.cumulative_length - n and self.plan.full_tail:
            raise NotImplementedError(f"SWAACache layer {self.plan.layer}: a full_tail prompt split "
                                      "over several calls cannot be served by a ring buffer")
        if first and any(pads):
            shift = torch.tensor(pads, device=key.device)
            lengths = n - shift
            out = self.ring.attend(*(_shift_rows(t, shift) for t in (query, key, value)),
                                   softmax_scale=scale, lengths=lengths)
            out = _shift_rows(out, -shift)
            keep = torch.arange(n, device=key.device)[None, :] >= shift[:, None]
            out = out * keep[:, None, :, None].to(out.dtype)
        else:
            out = self.ring.attend(query, key, value, softmax_scale=scale)
        tail = self.plan.full_tail
        prompt_end = n if prompt_len is None else prompt_len
        if first and tail and prompt_end > 0:
            # the tail sees the whole prompt, which is all here: recompute its queries in full
            begin = max(prompt_end - tail, 0)
            full = dataclasses.replace(self.plan, prefill="full", decode="full")
            out[:, :, begin:prompt_end] = _attend_padded(
                query[:, :, begin:prompt_end], key[:, :, :prompt_end], value[:, :, :prompt_end],
                pads, full, prompt_end, scale)
        return out

    # --- transformers Cache layer protocol
    def get_seq_length(self) -> int:
        return self.cumulative_length

    def get_mask_sizes(self, query_length: int) -> Tuple[int, int]:
        return self.cumulative_length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def get_max_cache_shape(self) -> int:
        return -1

    @property
    def nbytes(self) -> int:
        return 0 if self.ring is None else self.ring.nbytes

    def reset(self) -> None:
        self.ring = None
        self.cumulative_length = 0
        self._pending = False
        self.is_initialized = False

    def offload(self):
        pass

    def prefetch(self):
        pass

    def _refuse(self, what):
        raise NotImplementedError(f"SWAACache: {what} is not supported with ring-buffer layers "
                                  f"(layer {self.plan.layer}); use greedy search, sampling or "
                                  "beam search, or a DynamicCache")

    def reorder_cache(self, beam_idx):
        """Beam search: row i continues from row beam_idx[i].  Beams of one prompt sit at the same
        position, so only the ring contents move (in place: the buffers keep their addresses)."""
        if self.ring is None:
            return
        beam_idx = beam_idx.to(self.ring.keys.device)
        if not torch.equal(self.ring.seqlens.index_select(0, beam_idx), self.ring.seqlens):
            self._refuse("reordering rows that sit at different positions")
        self.ring.keys.copy_(self.ring.keys.index_select(0, beam_idx))
        self.ring.values.copy_(self.ring.values.index_select(0, beam_idx))

    def crop(self, tokens_to_remove):
        if tokens_to_remove:
            self._refuse("cropping the cache (assisted generation)")

    def batch_repeat_interleave(self, repeats):
        if self.ring is not None:
            self._refuse("expanding the batch of a filled cache")

    def batch_select_indices(self, indices):
        if self.ring is not None:
            self._refuse("selecting rows of a filled cache")


class SWAACache(Cache):
    """KV cache for a model under :func:`apply_swaa`: a ring buffer of ``sink + window`` slots per
    layer whose plan is SWA in prefill and decode, a growing full cache for the others."""

    def __init__(self, model):
        if model not in _APPLIED:
            raise ValueError("SWAACache: call swaa_ext.hf.apply_swaa(model, cfg) first")
        num_layers = _text_config(model).num_hidden_layers
        modules = _attention_modules(model)
        missing = [i for i in range(num_layers) if i not in modules]
        if missing:
            raise ValueError(f"SWAACache: layers {missing} have no attention module (hybrid or "
                             "linear-attention layers); use the model's own cache")
        self.plan = [_PLANS[modules[i][0]] for i in range(num_layers)]
        layers = [SWAARingLayer(p) if p.ring else DynamicLayer() for p in self.plan]
        super().__init__(layers=layers)

    @property
    def ring_layers(self) -> List[int]:
        return [p.layer for p in self.plan if p.ring]

    @property
    def nbytes(self) -> int:
        """Bytes of K/V storage held now (ring layers: their fixed slots; full layers: the keys
        seen so far)."""
        total = 0
        for layer in self.layers:
            if isinstance(layer, SWAARingLayer):
                total += layer.nbytes
            elif layer.is_initialized and layer.keys is not None:
                total += layer.keys.nbytes + layer.values.nbytes
        return total
