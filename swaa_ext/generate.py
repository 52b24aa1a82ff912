"""Low-latency generation for Hugging Face decoder models: each decode step is one CUDA graph.

    from swaa_ext.generate import generate
    out = generate(model, input_ids, 512, swaa="sink+fa_decode")   # or an SWAAConfig, or None
    out.sequences, out.decode_ms_per_token, out.kv_bytes

How it works:

* Static caches, allocated once for ``(batch, prompt_len + max_new_tokens)``: a layer that decodes
  with SWA (``LayerPlan.decode == "swa"``) keeps a :class:`swaa_ext.RingKVCache` of
  ``sink + window`` slots; a layer that decodes with full attention (full layers, FA-decode layers,
  every layer without an SWAA config) keeps a ring whose window covers the whole length (sink 0):
  it never wraps, so position ``t`` sits in slot ``t`` and it is a plain full cache with positions
  on the device, served by the same decode kernel.
* Prefill: one pass over the prompt (or chunks of ``prefill_chunk`` tokens) through the model's own
  modules, attention by :func:`swaa_ext.swa_attention` (tensor cores on CUDA) with each layer's
  prefill plan; the keys/values then go into the caches with ``RingKVCache.append`` (which
  writes only the positions that survive a chunk longer than the window).
* Decode: a function of static tensors (token ids ``(B, 1)``, positions ``(B,)``, the step counter,
  the finished mask, all on the device) runs embed -> layers -> norm -> lm_head with attention =
  ``RingKVCache.attend`` (one position: the ``ring_decode`` kernel), picks the next token (argmax,
  or Gumbel-max sampling with noise from a counter-based hash of (seed, step, row, token), so it
  needs no generator state inside the graph) and writes it into a preallocated output buffer.
  On CUDA the first decode step runs eagerly on a side stream (warm-up), the step is then captured
  once with ``torch.cuda.graph`` and replayed per token; nothing in a step synchronises with the
  host.  ``eos_token_id`` rows keep running but emit ``pad_token_id``; the host looks at the
  finished mask only every ``eos_check_every`` tokens.

The decode path reads the modules directly (``embed_tokens``, ``layers[i].input_layernorm``,
``self_attn.{q,k,v,o}_proj``, optional ``q_norm``/``k_norm``, ``post_attention_layernorm``,
``mlp``, ``norm``, ``rotary_emb``, ``lm_head``): the Llama / Mistral / Qwen2 / Qwen3 layout.
Models that do not have it are refused.  See docs/generate.md.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Callable, List, Optional, Sequence, Union

import torch

from .cache import RingKVCache
from .config import LayerPlan, SWAAConfig
from .ops import swa_attention

__all__ = ["generate", "GenerationOutput"]


@dataclasses.dataclass
class GenerationOutput:
    """What :func:`generate` returns.

    sequences: (B, L + n) int64, the prompt as given followed by ``n`` new tokens (``n`` =
        ``max_new_tokens``, or fewer when every row met ``eos_token_id``); finished rows hold
        ``pad_token_id`` after their eos.
    prefill_s: wall time of the cache allocation, the prefill and the first token (synchronised), s.
    decode_s: wall time of the decode loop (synchronised): the ``new_tokens - 1`` decode steps
        (the first new token comes from the prefill), the graph capture excluded (``capture_s``).
    decode_ms_per_token: ``decode_s`` per decode step, milliseconds (0 when there is none).
    kv_bytes: bytes of K/V storage of all the caches.
    peak_bytes: ``torch.cuda.max_memory_allocated`` during the call (0 on CPU).
    capture_s: time to capture the CUDA graph (0 without one).
    cuda_graph: whether the decode steps were graph replays.
    warmup_s: wall time of the first decode step when it is a warm-up (with ``cuda_graph`` or
        ``compile``: it runs eagerly before the capture, or compiles), excluded from ``decode_s``
        (which then covers the remaining steps) unless it is the only decode step; 0 otherwise.
    compile_s: with ``compile``: the warm-up step's wall time, i.e. ``torch.compile`` of the step
        (tracing, inductor, Triton/C++ kernels; little when its caches are warm) plus one step.
    compiled: whether the decode step went through ``torch.compile``.
    scores: with ``output_scores``: (B, n, V) float32, what each new token is the argmax of (the
        logits when greedy; the filtered logits / temperature plus the Gumbel noise when
        sampling; -inf where filtered); else None.
    """

    sequences: torch.Tensor
    prefill_s: float
    decode_s: float
    decode_ms_per_token: float
    kv_bytes: int
    peak_bytes: int
    capture_s: float = 0.0
    cuda_graph: bool = False
    warmup_s: float = 0.0
    compile_s: float = 0.0
    compiled: bool = False
    scores: Optional[torch.Tensor] = None


# ---------------------------------------------------------------------------------------------
# the model's modules
@dataclasses.dataclass
class _Decoder:
    embed: torch.nn.Module
    layers: Sequence[torch.nn.Module]
    norm: torch.nn.Module
    rotary: torch.nn.Module
    lm_head: torch.nn.Module
    head_dim: int
    q_heads: int
    kv_heads: int
    scaling: List[float]
    own_windows: List[Optional[int]]  # the model's own sliding window per layer (None = full)


_LAYER_PARTS = ("self_attn", "input_layernorm", "post_attention_layernorm", "mlp")
# Families whose decoder is exactly what _run_layers computes. Others with the same module names
# (Granite: embedding/residual multipliers, logits scaling; OLMo: other norm placement) would
# silently compute something else, so they are refused by model_type.
_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
# rotary types whose frequencies transformers updates from the positions at run time (a host
# synchronisation per step, frozen by graph capture)
_DYNAMIC_ROPE = ("dynamic", "longrope")
_ATTN_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj")


def _text_config(model):
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _resolve(model) -> _Decoder:
    inner = getattr(model, "model", None)
    lm_head = getattr(model, "lm_head", None)
    missing = [n for n in ("embed_tokens", "layers", "norm", "rotary_emb")
               if inner is None or getattr(inner, n, None) is None]
    if lm_head is None:
        missing.append("lm_head")
    if missing:
        raise ValueError(f"generate: model {type(model).__name__} is not supported: it lacks "
                         f"{', '.join(missing)} (needs the Llama / Mistral / Qwen2 / Qwen3 "
                         "decoder layout: model.model.{embed_tokens, layers, norm, rotary_emb}, "
                         "model.lm_head)")
    config = _text_config(model)
    model_type = getattr(config, "model_type", None)
    if model_type not in _MODEL_TYPES:
        raise ValueError(f"generate: model {type(model).__name__} (model_type {model_type!r}) is "
                         f"not supported: this decode path computes the {', '.join(_MODEL_TYPES)} "
                         "decoders only")
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "attn_logit_softcapping",
                                                                    None):
        raise ValueError("generate: model uses logit softcapping, which is not supported")
    layers = list(inner.layers)
    head_dim = q_heads = kv_heads = None
    scaling = []
    for i, layer in enumerate(layers):
        lacks = [n for n in _LAYER_PARTS if getattr(layer, n, None) is None]
        attn = getattr(layer, "self_attn", None)
        if attn is not None:
            lacks += [f"self_attn.{n}" for n in _ATTN_PARTS if getattr(attn, n, None) is None]
        if lacks:
            raise ValueError(f"generate: model {type(model).__name__} is not supported: layer {i} "
                             f"lacks {', '.join(lacks)}")
        extra_norms = [n for n, _ in layer.named_children()
                       if "norm" in n and n not in ("input_layernorm", "post_attention_layernorm")]
        extra_norms += [f"self_attn.{n}" for n, _ in attn.named_children()
                        if "norm" in n and n not in ("q_norm", "k_norm")]
        if extra_norms:
            raise ValueError(f"generate: model {type(model).__name__} is not supported: layer {i} "
                             f"has {', '.join(extra_norms)}, which this decode path does not run")
        hd = getattr(attn, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if head_dim is None:
            head_dim = hd
            q_heads = attn.q_proj.out_features // hd
            kv_heads = attn.k_proj.out_features // hd
        elif hd != head_dim:
            raise ValueError(f"generate: model is not supported: layer {i} has head dim {hd}, "
                             f"layer 0 has {head_dim}")
        scaling.append(float(getattr(attn, "scaling", hd ** -0.5)))
    return _Decoder(inner.embed_tokens, layers, inner.norm, inner.rotary_emb, lm_head, head_dim,
                    q_heads, kv_heads, scaling, _own_windows(config, len(layers)))


def _own_windows(config, num_layers: int) -> List[Optional[int]]:
    """The model's own sliding-window layers (served when no SWAA config is given, so that
    ``swaa=None`` computes what stock transformers computes)."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if window is None:
        return [None] * num_layers
    if types is None:
        return [window] * num_layers
    return [window if t == "sliding_attention" else None for t in types]


def _plans(decoder: _Decoder, swaa) -> List[LayerPlan]:
    n = len(decoder.layers)
    if swaa is None:
        return [LayerPlan(i, "full", "full", 1, 0, 0) if w is None
                else LayerPlan(i, "swa", "swa", w, 0, 0)
                for i, w in enumerate(decoder.own_windows)]
    if not isinstance(swaa, (str, SWAAConfig)):
        raise ValueError(f"generate: swaa must be None, an SWAAConfig or a preset name, got "
                         f"{type(swaa).__name__}")
    try:
        return (SWAAConfig.preset(swaa) if isinstance(swaa, str) else swaa).plan(n)
    except ValueError as e:
        raise ValueError(f"generate: swaa: {e}") from e


# ---------------------------------------------------------------------------------------------
# arguments
def _is_int(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _describe(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_args(input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_k, top_p,
                prefill_chunk, eos_token_id, pad_token_id, eos_check_every):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError("generate: input_ids must be a non-empty (batch, length) tensor, got "
                         f"{_describe(input_ids)}")
    if input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"generate: input_ids must hold integer token ids, got {input_ids.dtype}")
    if not _is_int(max_new_tokens, 1):
        raise ValueError(f"generate: max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError("generate: attention_mask must be a tensor of the shape of input_ids "
                             f"{tuple(input_ids.shape)}, got "
                             f"{getattr(attention_mask, 'shape', type(attention_mask).__name__)}")
    if do_sample:
        if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or \
                not temperature > 0:
            raise ValueError(f"generate: temperature must be > 0, got {temperature!r}")
        if top_k is not None and not _is_int(top_k, 1):
            raise ValueError(f"generate: top_k must be None or an int >= 1, got {top_k!r}")
        if top_p is not None and (not isinstance(top_p, (int, float)) or isinstance(top_p, bool)
                                  or not 0 < top_p <= 1):
            raise ValueError(f"generate: top_p must be None or in (0, 1], got {top_p!r}")
    if prefill_chunk is not None and not _is_int(prefill_chunk, 1):
        raise ValueError("generate: prefill_chunk must be None or an int >= 1, got "
                         f"{prefill_chunk!r}")
    if not _is_int(eos_check_every, 1):
        raise ValueError(f"generate: eos_check_every must be an int >= 1, got {eos_check_every!r}")
    ids = [] if eos_token_id is None else (
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    if not all(_is_int(t, 0) for t in ids):
        raise ValueError(f"generate: eos_token_id must be None, a token id or a list of token ids, "
                         f"got {eos_token_id!r}")
    if pad_token_id is not None and not _is_int(pad_token_id, 0):
        raise ValueError(f"generate: pad_token_id must be None or a token id, got {pad_token_id!r}")
    return ids


def _row_lengths(attention_mask: Optional[torch.Tensor], batch: int, length: int):
    """(lengths, first): real tokens per row and the index of each row's first real token; the
    real tokens of a row must be one contiguous run (left or right padding)."""
    if attention_mask is None:
        return [length] * batch, [0] * batch
    mask = attention_mask.detach().to("cpu")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("generate: attention_mask must hold only 0 and 1")
    mask = mask.to(torch.bool)
    lengths = mask.sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError(f"generate: attention_mask has rows without any token: "
                         f"{torch.nonzero(lengths == 0).flatten().tolist()}")
    first = mask.to(torch.int8).argmax(-1)
    idx = torch.arange(length)
    expected = (idx[None, :] >= first[:, None]) & (idx[None, :] < (first + lengths)[:, None])
    if not torch.equal(mask, expected):
        raise ValueError("generate: attention_mask may pad only on the left or the right of a row; "
                         "it has zeros between real tokens")
    return lengths.tolist(), first.tolist()


# ---------------------------------------------------------------------------------------------
# token selection (graph-safe: no host sync, no generator state)
_MASK64 = (1 << 64) - 1


def _signed64(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed64(0x9E3779B97F4A7C15)
_MIX1 = _signed64(0xBF58476D1CE4E5B9)
_MIX2 = _signed64(0x94D049BB133111EB)


def _shr(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _uniform(counter: torch.Tensor) -> torch.Tensor:
    """splitmix64 of int64 counters (wrapping arithmetic) -> float32 uniforms in (0, 1)."""
    z = counter + _GOLDEN
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    z = z ^ _shr(z, 31)
    return (_shr(z, 40).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


class _Sampler:
    """Greedy argmax, or Gumbel-max sampling after temperature / top-k / top-p.  The noise of
    (step, row, token) is a hash of ``seed + (step * B + row) * V + token``: the same in eager and
    graph mode, on CPU and CUDA, with nothing to register for graph capture."""

    def __init__(self, do_sample, temperature, top_k, top_p, seed, batch, vocab, device):
        self.do_sample = do_sample
        self.temperature = float(temperature)
        self.top_k = None if top_k is None or top_k >= vocab else int(top_k)
        self.top_p = None if top_p is None or top_p >= 1 else float(top_p)
        if do_sample:
            rows = torch.arange(batch, device=device, dtype=torch.int64)[:, None] * vocab
            self.base = rows + torch.arange(vocab, device=device, dtype=torch.int64)[None, :] + seed
            self.stride = batch * vocab

    def __call__(self, logits: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return self.scores(logits, step).argmax(-1)

    def scores(self, logits: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """What the token is the argmax of: the logits (greedy), or the filtered logits / T
        plus the Gumbel noise of ``step``."""
        if not self.do_sample:
            return logits
        x = logits.float() / self.temperature
        if self.top_k is not None:
            kth = torch.topk(x, self.top_k, dim=-1).values[:, -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.top_p is not None:
            ordered, order = torch.sort(x, dim=-1, descending=True)
            probs = ordered.softmax(-1)
            before = probs.cumsum(-1) - probs  # mass of the tokens ranked above
            ordered = ordered.masked_fill(before > self.top_p, float("-inf"))
            x = torch.empty_like(x).scatter_(-1, order, ordered)
        u = _uniform(self.base + step * self.stride)
        gumbel = -torch.log(-torch.log(u))
        return x + gumbel


# ---------------------------------------------------------------------------------------------
# the forward pass over the model's modules
def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _embed(dec: _Decoder, ids: torch.Tensor, positions: torch.Tensor):
    """Embeddings (B, L, hidden) of token ids (B, L) and the RoPE cos, sin (B, 1, L, D) of
    positions (B, L)."""
    h = dec.embed(ids)
    cos, sin = dec.rotary(h, positions)
    return h, cos.unsqueeze(1), sin.unsqueeze(1)


def _layer_forward(layer: torch.nn.Module, head_dim: int, h: torch.Tensor, cos: torch.Tensor,
                   sin: torch.Tensor, attend: Callable) -> torch.Tensor:
    """One decoder layer on hidden states (B, L, hidden); ``attend(q, k, v)`` with q
    (B, Hq, L, D) after RoPE returns (B, Hq, L, D)."""
    attn = layer.self_attn
    B, L = h.shape[:2]
    x = layer.input_layernorm(h)
    shape = (B, L, -1, head_dim)
    q, k, v = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape), attn.v_proj(x).view(shape)
    if getattr(attn, "q_norm", None) is not None:
        q = attn.q_norm(q)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    o = attend(q, k, v)
    h = h + attn.o_proj(o.transpose(1, 2).reshape(B, L, -1))
    return h + layer.mlp(layer.post_attention_layernorm(h))


def _decode_layer(layer: torch.nn.Module, head_dim: int, cache: RingKVCache, scale: float,
                  h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """One decoder layer of a decode step, attention over (and append to) ``cache``.  A plain
    function of its arguments, so that ``torch.compile`` of it serves every layer with one
    compiled graph per cache shape (modules are not guarded by identity)."""
    return _layer_forward(layer, head_dim, h, cos, sin,
                          lambda q, k, v: cache.attend(q, k, v, softmax_scale=scale))


def _run_layers(dec: _Decoder, ids: torch.Tensor, positions: torch.Tensor,
                attend: Attend) -> torch.Tensor:
    """Hidden states (B, L, hidden) after the last layer (before the final norm) for token ids
    (B, L) at positions (B, L); ``attend(layer, q, k, v)`` with q (B, Hq, L, D) after RoPE."""
    h, cos, sin = _embed(dec, ids, positions)
    for i, layer in enumerate(dec.layers):
        h = _layer_forward(layer, dec.head_dim, h, cos, sin,
                           lambda q, k, v, i=i: attend(i, q, k, v))
    return h


def _full_from(lengths: torch.Tensor, first_length: int, tail: int, uniform: bool):
    """Per-row ``full_from`` of a layer whose last ``tail`` prompt tokens see everything."""
    if tail == 0:
        return None
    if uniform:
        return max(first_length - tail, 0)
    return (lengths - tail).clamp_min(0)


class _Prefill:
    """Attention of the prompt (chunk) with each layer's prefill plan, and the write of its
    keys/values into the layer's cache.  Prompts sit right-padded at positions 0 .. L-1."""

    def __init__(self, plans: List[LayerPlan], caches: List[RingKVCache], full_cache: List[bool],
                 scaling: List[float], lengths: torch.Tensor, lengths_list: List[int]):
        self.plans, self.caches, self.full_cache = plans, caches, full_cache
        self.scaling, self.lengths, self.lengths_list = scaling, lengths, lengths_list
        self.uniform = len(set(lengths_list)) == 1
        self.start = 0
        self.chunk_lengths: Optional[torch.Tensor] = None

    def set_chunk(self, start: int, size: int) -> None:
        self.start = start
        if min(self.lengths_list) >= start + size:
            self.chunk_lengths = None  # every row fills the chunk
        else:
            self.chunk_lengths = (self.lengths - start).clamp(0, size)

    def _append(self, cache: RingKVCache, k, v) -> None:
        cache.append(k, v, lengths=self.chunk_lengths)

    def __call__(self, i: int, q, k, v):
        plan, cache, s = self.plans[i], self.caches[i], self.start
        window = None if plan.prefill == "full" else plan.window
        sink = 0 if plan.prefill == "full" else plan.sink
        full_from = None if plan.prefill == "full" else _full_from(
            self.lengths, self.lengths_list[0], plan.full_tail, self.uniform)
        n = k.shape[2]
        if s == 0:
            out = swa_attention(q, k, v, window=window, sink=sink, full_from=full_from,
                                softmax_scale=self.scaling[i])
            self._append(cache, k, v)
            return out
        if self.full_cache[i]:
            # slot t holds position t: append, then attend over positions 0 .. s + n - 1
            self._append(cache, k, v)
            keys, values = cache.keys[:, :, :s + n], cache.values[:, :, :s + n]
            return swa_attention(q, keys, values, window=window, sink=sink, full_from=full_from,
                                 softmax_scale=self.scaling[i])
        # a ring: the sink slots, then the positions of the last window before s, then the chunk.
        # Non-sink keys and the queries keep their distances, so the window mask is unchanged.
        S, W = cache.sink, cache.window
        if s <= S:
            keys = torch.cat([cache.keys[:, :, :s], k], 2)
            values = torch.cat([cache.values[:, :, :s], v], 2)
        else:
            first = max(S, s - W + 1)
            slots = S + (torch.arange(first, s, device=k.device) - S) % W  # slots of first..s-1
            keys = torch.cat([cache.keys[:, :, :S], cache.keys.index_select(2, slots), k], 2)
            values = torch.cat([cache.values[:, :, :S], cache.values.index_select(2, slots), v], 2)
        out = swa_attention(q, keys, values, window=W, sink=S, softmax_scale=self.scaling[i])
        self._append(cache, k, v)
        return out


# ---------------------------------------------------------------------------------------------
def generate(
    model,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    swaa: Union[None, str, SWAAConfig] = None,
    attention_mask: Optional[torch.Tensor] = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
    eos_token_id: Union[None, int, Sequence[int]] = None,
    pad_token_id: Optional[int] = None,
    cuda_graph: Optional[bool] = None,
    prefill_chunk: Optional[int] = None,
    eos_check_every: int = 32,
    compile: Union[bool, str] = False,
    output_scores: bool = False,
) -> GenerationOutput:
    """Generates ``max_new_tokens`` tokens per row with static caches and, on CUDA, one CUDA graph
    replayed per decode step.

    Args:
        model: a Hugging Face causal LM with the Llama / Mistral / Qwen2 / Qwen3 layout, in eval
            mode; its parameters' dtype is the caches' dtype.  Not modified (no ``apply_swaa``
            needed; it ignores whether SWAA is applied).
        input_ids: (B, L) token ids.
        max_new_tokens: tokens to generate per row, >= 1.
        swaa: an :class:`SWAAConfig`, a preset name (``SWAAConfig.preset(name)``, window 2048) or
            None: full attention, except the model's own sliding-window layers (as stock
            transformers computes them).
        attention_mask: (B, L) 0/1, left or right padding (one contiguous run of real tokens per
            row): each row's real tokens sit at positions 0 .. n_b - 1, its sink tokens are its
            first real tokens.  New tokens are appended after the whole input row.
        do_sample, temperature, top_k, top_p: sampling (Gumbel-max after the filters); greedy
            argmax when ``do_sample`` is False.
        generator: draws the sampling seed (the global generator when None): results are
            reproducible with ``torch.manual_seed`` or a seeded generator.
        eos_token_id: None (never stop) or token id(s); a row that produced one emits
            ``pad_token_id`` (default: the first eos id) afterwards.  Generation stops early when
            every row is finished; the host checks every ``eos_check_every`` tokens.
        cuda_graph: capture the decode step in a CUDA graph (default: True on CUDA; False runs the
            same step eagerly; True on CPU raises).
        prefill_chunk: prefill in chunks of this many tokens (less activation memory).
        compile: run the decode step's tensor code through ``torch.compile`` (inductor, fullgraph,
            static shapes, no cudagraphs of its own; the step is then captured in our CUDA graph as
            usual): fewer, fused kernels per step.  True (inductor's default mode) or an inductor
            mode without cudagraphs: "default", "max-autotune-no-cudagraphs".  Compiled are the
            embedding + RoPE, ONE decoder-layer function reused by every layer (one graph per
            cache shape) and the final norm + lm_head + token choice; prefill stays eager.  The
            first decode step compiles (``compile_s``); later calls with the same shapes reuse it.
        output_scores: also return ``scores`` (see :class:`GenerationOutput`).

    Returns a :class:`GenerationOutput`.  Raises ValueError naming the argument for bad input.
    """
    eos_ids = _check_args(input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_k,
                          top_p, prefill_chunk, eos_token_id, pad_token_id, eos_check_every)
    compile_mode = _compile_mode(compile)
    dec = _resolve(model)
    plans = _plans(dec, swaa)
    param = dec.embed.weight
    device, dtype = param.device, param.dtype
    if cuda_graph is None:
        cuda_graph = device.type == "cuda"
    rope_type = getattr(dec.rotary, "rope_type", "default")
    if cuda_graph and any(t in rope_type for t in _DYNAMIC_ROPE):
        raise ValueError(f"generate: cuda_graph: the model's rotary embedding ({rope_type!r}) "
                         "updates its frequencies from the positions on the host at every step, "
                         "which a CUDA graph cannot replay; pass cuda_graph=False")
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"generate: cuda_graph=True needs the model on a CUDA device, it is on "
                         f"{device}")
    B, L = input_ids.shape
    lengths_list, first_list = _row_lengths(attention_mask, B, L)
    vocab = dec.lm_head.out_features
    if int(input_ids.min()) < 0 or int(input_ids.max()) >= dec.embed.num_embeddings:
        raise ValueError(f"generate: input_ids must lie in [0, {dec.embed.num_embeddings})")
    ids_in = input_ids.to(device)
    pad_id = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    seed = 0
    if do_sample:  # greedy decoding leaves the random generators alone
        seed = int(torch.randint(0, 1 << 62, (1,), generator=generator,
                                 device=generator.device if generator is not None else "cpu"))

    # prompts right-padded: row b's real tokens at 0 .. n_b - 1
    Lp = max(lengths_list)
    gather = (torch.tensor(first_list)[:, None] + torch.arange(Lp)[None, :]).clamp_max(L - 1)
    prompt = ids_in.gather(1, gather.to(device))
    lengths = torch.tensor(lengths_list, dtype=torch.int64, device=device)
    total = Lp + max_new_tokens

    with torch.no_grad():
        t0 = time.perf_counter()  # prefill time includes allocating the caches
        caches, full_cache = [], []
        for plan in plans:
            swa_decode = plan.decode == "swa" and plan.window < total
            window, sink = (plan.window, plan.sink) if swa_decode else (total, 0)
            caches.append(RingKVCache(B, dec.kv_heads, dec.head_dim, window=window, sink=sink,
                                      dtype=dtype, device=device))
            full_cache.append(not swa_decode)
        chunk = prefill_chunk or Lp
        if chunk < Lp and any(p.full_tail and not full for p, full in zip(plans, full_cache)):
            raise ValueError("generate: prefill_chunk shorter than the prompt cannot serve "
                             "full_tail on layers that decode with SWA (the tail needs keys "
                             "the ring has dropped); drop prefill_chunk or full_tail")

        # ---- prefill
        prefill = _Prefill(plans, caches, full_cache, dec.scaling, lengths, lengths_list)
        last = torch.zeros(B, dec.embed.embedding_dim, dtype=dtype, device=device)
        rows = torch.arange(B, device=device)
        for s in range(0, Lp, chunk):
            n = min(chunk, Lp - s)
            prefill.set_chunk(s, n)
            pos = torch.arange(s, s + n, device=device)[None, :].expand(B, n)
            h = _run_layers(dec, prompt[:, s:s + n], pos, prefill)
            end = lengths - 1 - s  # index of each row's last prompt token in this chunk
            here = (end >= 0) & (end < n)
            last = torch.where(here[:, None], h[rows, end.clamp(0, n - 1)], last)
            del h
        sampler = _Sampler(do_sample, temperature, top_k, top_p, seed, B, vocab, device)
        out_tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.int64, device=device)
        step = torch.zeros(1, dtype=torch.int64, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        eos_t = torch.tensor(eos_ids, dtype=torch.int64, device=device) if eos_ids else None
        token = torch.zeros(B, 1, dtype=torch.int64, device=device)
        position = lengths.clone()  # of the token fed to the next step

        scores = torch.full((B, max_new_tokens, vocab), float("nan"), dtype=torch.float32,
                            device=device) if output_scores else None

        def emit(logits):
            picked_from = sampler.scores(logits, step)
            if scores is not None:
                scores.index_copy_(1, step, picked_from[:, None].float())
            nxt = picked_from.argmax(-1)
            if eos_t is not None:
                nxt = nxt.masked_fill(finished, pad_id)
                finished.logical_or_((nxt[:, None] == eos_t).any(-1))
            out_tokens.scatter_(1, step.expand(B, 1), nxt[:, None])
            token.copy_(nxt[:, None])
            step.add_(1)

        emit(dec.lm_head(dec.norm(last[:, None]))[:, -1])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        prefill_s = time.perf_counter() - t0

        # ---- decode
        def finish(h):
            emit(dec.lm_head(dec.norm(h))[:, -1])
            position.add_(1)

        embed_fn, layer_fn, finish_fn = _embed, _decode_layer, finish
        if compile_mode is not None and _COMPILE_SCOPE == "layer":
            embed_fn, layer_fn, finish_fn = (_compiled(f, compile_mode)
                                             for f in (_embed, _decode_layer, finish))

        def decode_step():
            h, cos, sin = embed_fn(dec, token, position[:, None])
            for i, layer in enumerate(dec.layers):
                h = layer_fn(layer, dec.head_dim, caches[i], dec.scaling[i], h, cos, sin)
            finish_fn(h)

        if compile_mode is not None and _COMPILE_SCOPE == "step":
            decode_step = _compiled(decode_step, compile_mode)

        steps = max_new_tokens - 1
        capture_s, warmup_s, done, graph = 0.0, 0.0, 0, None
        if steps and (cuda_graph or compile_mode is not None):
            # warm-up: the first decode step, run eagerly (CUDA: on a side stream, so that cuBLAS
            # handles and workspaces exist before the capture) or compiled now; not timed as a step
            w0 = time.perf_counter()
            # compiling synchronises (autotuning): the sync check starts with the next step
            check = _sync_check(device) if compile_mode is None else contextlib.nullcontext()
            if cuda_graph:
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side), check:
                    decode_step()
                torch.cuda.current_stream(device).wait_stream(side)
            else:
                with check:
                    decode_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            warmup_s = time.perf_counter() - w0
            done = 1
            if cuda_graph and steps > 1:
                c0 = time.perf_counter()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    decode_step()  # recorded, not run
                torch.cuda.synchronize(device)
                capture_s = time.perf_counter() - c0
        first_timed = done
        t0 = time.perf_counter()
        run_step = graph.replay if graph is not None else decode_step
        checked = _CHECK_STEP_SYNC and device.type == "cuda"
        while done < steps:
            if eos_t is not None and done % eos_check_every == 0 and bool(finished.all()):
                break
            if checked:
                with _sync_check(device):
                    run_step()
            else:
                run_step()
            done += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        decode_s, timed = time.perf_counter() - t0, done - first_timed
        if timed == 0 and done:  # the warm-up was the only decode step
            decode_s, timed = warmup_s, done

        new = out_tokens[:, :1 + done]
        if eos_t is not None:
            # stop where the last row finished, like transformers' generate
            is_eos = (new[:, :, None] == eos_t).any(-1)
            if bool(is_eos.any(-1).all()):
                new = new[:, :int(is_eos.to(torch.int8).argmax(-1).max()) + 1]
        if scores is not None:
            scores = scores[:, :new.shape[1]]
        sequences = torch.cat([ids_in.to(torch.int64), new], 1)
        kv_bytes = sum(c.nbytes for c in caches)
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return GenerationOutput(sequences=sequences, prefill_s=prefill_s, decode_s=decode_s,
                            decode_ms_per_token=1000.0 * decode_s / timed if timed else 0.0,
                            kv_bytes=kv_bytes, peak_bytes=int(peak), capture_s=capture_s,
                            cuda_graph=graph is not None, warmup_s=warmup_s,
                            compile_s=warmup_s if compile_mode is not None else 0.0,
                            compiled=compile_mode is not None and done > 0, scores=scores)


# tests set this to True: every decode step on CUDA (eager or replay) then runs under
# torch.cuda.set_sync_debug_mode("error"), so a host synchronisation inside a step raises
_CHECK_STEP_SYNC = False


@contextlib.contextmanager
def _sync_check(device: torch.device):
    if not _CHECK_STEP_SYNC or device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


# ---------------------------------------------------------------------------------------------
# torch.compile of the decode step's pieces
_COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
# what compile=True compiles: "layer" (default): the embedding, ONE layer function reused by every
# layer, the head; "step": the whole decode step as one graph (fusion across layer boundaries,
# compile time growing with depth; for measurements: bench_decode_loop --compile-scope step)
_COMPILE_SCOPE = "layer"


def _compile_mode(compile) -> Optional[str]:
    """The inductor mode of ``generate(compile=...)``, None for no compilation."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return "default"
    if isinstance(compile, str) and compile in _COMPILE_MODES:
        return compile
    raise ValueError(f"generate: compile must be a bool or one of {', '.join(_COMPILE_MODES)} "
                     f"(modes with cudagraphs of their own do not nest in our CUDA graph), got "
                     f"{compile!r}")


def _dynamo_settings() -> dict:
    """Each compiled piece keeps one graph per shape (batch, cache lengths, window, sink): allow
    more than dynamo's default 8 of them, and fail rather than fall back to eager silently."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    settings = {limit: 64}
    if hasattr(config, "fail_on_recompile_limit_hit"):
        settings["fail_on_recompile_limit_hit"] = True
    return settings


def _compiled(fn: Callable, mode: str) -> Callable:
    """``fn`` through torch.compile (inductor, fullgraph, static shapes).  Dynamo caches per code
    object, so every generate call (and every layer, for _decode_layer) shares the compiled
    graphs whose guards (shapes, dtypes, window, sink, ...) hold."""
    compiled = torch.compile(fn, fullgraph=True, dynamic=False,
                             mode=None if mode == "default" else mode)
    settings = _dynamo_settings()

    def call(*args):
        with torch._dynamo.config.patch(**settings):
            return compiled(*args)
    return call
