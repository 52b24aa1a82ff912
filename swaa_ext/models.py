"""The model built into the package, used by ``swaa demo`` when no model is given.

A small Llama-style causal LM (8 layers, 4 query / 2 KV heads of dim 64 so that the CUDA kernels
serve it, RoPE) built from a fixed config and a fixed seed, so every machine gets the same weights
without downloading anything.  Its weights are
random: it shows speed and memory of the SWAA recipes, and how far their generations drift from
full attention on this model, not language quality (a later issue replaces it with a trained
model).  Needs ``transformers``.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["DEFAULT_MODEL_CONFIG", "DEFAULT_MODEL_SEED", "default_model"]

DEFAULT_MODEL_SEED = 0
DEFAULT_MODEL_CONFIG = dict(
    vocab_size=2048,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=32768,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def default_model(device: Union[str, torch.device, None] = None,
                  dtype: Optional[torch.dtype] = None, *, attn_implementation: str = "sdpa",
                  **overrides):
    """The embedded model, in eval mode, on ``device`` (default: CUDA if present, else CPU) in
    ``dtype`` (default: bfloat16 on CUDA, float32 on CPU).  ``overrides`` change config fields
    (e.g. ``num_hidden_layers=2`` for tests); the weights depend only on the config and the seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = LlamaConfig(**{**DEFAULT_MODEL_CONFIG, **overrides})
    config._attn_implementation = attn_implementation
    cpu_rng = torch.random.get_rng_state()
    try:
        torch.manual_seed(DEFAULT_MODEL_SEED)
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(cpu_rng)
    model.generation_config.eos_token_id = None  # random weights: never stop early
    return model.to(device=device, dtype=dtype).eval()
