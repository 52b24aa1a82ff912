"""The small model of the quality benchmark: a Llama-style config built with transformers.

RoPE with base 500000 (positions up to 16k stay far below one period of the slowest frequencies),
GQA (4 query heads sharing 2 KV heads, head dim 64 so the CUDA kernels serve it), a byte
vocabulary of 384 entries (ByteTokenizer uses 259; padded to a multiple of 128), tied
embeddings.  About 6.4M parameters: 12.8 MB of safetensors in bfloat16, the dtype the weights
are exported in (:func:`weight_bytes` checks it; the issue caps the shipped weights at 16 MB).
"""
from __future__ import annotations

import torch

__all__ = ["QUALITY_CONFIG", "TINY_CONFIG", "WEIGHT_LIMIT_BYTES", "make_config", "build_model",
           "weight_bytes"]

WEIGHT_LIMIT_BYTES = 16 * 1024 * 1024

QUALITY_CONFIG = dict(
    vocab_size=384,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=16384,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

# for tests and CPU smoke runs: same shape rules, a few thousand times less compute
TINY_CONFIG = dict(QUALITY_CONFIG, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=2, num_key_value_heads=1, head_dim=32)


def make_config(name_or_overrides=None, **overrides):
    """A ``LlamaConfig``: ``"quality"`` (default) or ``"tiny"``, or a dict of fields, plus
    ``overrides``."""
    from transformers import LlamaConfig

    if name_or_overrides is None or name_or_overrides == "quality":
        base = QUALITY_CONFIG
    elif name_or_overrides == "tiny":
        base = TINY_CONFIG
    elif isinstance(name_or_overrides, dict):
        base = {**QUALITY_CONFIG, **name_or_overrides}
    else:
        raise ValueError(f"make_config: expected 'quality', 'tiny' or a dict, got "
                         f"{name_or_overrides!r}")
    return LlamaConfig(**{**base, **overrides})


def build_model(config=None, *, seed: int = 0, attn_implementation: str = "sdpa"):
    """A freshly initialised ``LlamaForCausalLM`` (float32, CPU) from ``config`` (a LlamaConfig
    or anything :func:`make_config` takes), weights from ``seed``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not isinstance(config, LlamaConfig):
        config = make_config(config)
    config._attn_implementation = attn_implementation
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    return model


def weight_bytes(config=None, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes of the model's unique tensors in ``dtype`` (tied embeddings counted once), i.e. the
    payload of its safetensors file; built on the meta device (no memory, no time)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if not isinstance(config, LlamaConfig):
        config = make_config(config)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    seen, total = set(), 0
    for p in model.state_dict(keep_vars=True).values():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * torch.empty((), dtype=dtype).element_size()
    return total


if __name__ == "__main__":
    for name in ("quality", "tiny"):
        print(f"{name}: {weight_bytes(name) / 2**20:.2f} MiB in bfloat16")
