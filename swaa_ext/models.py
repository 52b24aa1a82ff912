"""The models built into the package (nothing to download).  Both need ``transformers``.

* :func:`demo_model`: the *trained* model that ``swaa demo`` uses by default.  A Llama-style causal
  LM (8 layers, hidden 256, 4 query / 2 KV heads of dim 64 so the CUDA kernels serve it, RoPE base
  500000, byte vocabulary of 384 for :class:`swaa_ext.train.ByteTokenizer`), pretrained with full
  attention by ``bench/quality/pretrain.py`` on an H200 (126M tokens of Python source and
  long-context key/value retrieval documents, contexts up to 16k).  Shipped as package data in
  ``swaa_ext/data/demo_model/`` (safetensors, bfloat16, 12.8 MB; ``pretrain.json`` records how it
  was trained).  It retrieves facts from long documents with full attention, fails with naive
  SWA, and retrieves again with FA decode: see docs/quality.md.
* :func:`default_model`: random weights from a fixed config and seed, with config ``overrides``
  (e.g. ``num_hidden_layers=2``).  Cheap to build at any size, so tests use it; it shows speed and
  memory of the SWAA recipes and how far their greedy choices drift from full attention, not
  language quality (``swaa demo --model random``).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional, Union

import torch

__all__ = ["DEFAULT_MODEL_CONFIG", "DEFAULT_MODEL_SEED", "default_model", "demo_model",
           "demo_model_dir"]

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


def demo_model_dir() -> Path:
    """Directory of the packaged trained model (config.json, generation_config.json,
    model.safetensors, pretrain.json), found through ``importlib.resources``."""
    path = Path(str(resources.files("swaa_ext").joinpath("data", "demo_model")))
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"demo_model_dir: {path} has no model.safetensors (the package "
                                "data was not installed)")
    return path


def demo_model(device: Union[str, torch.device, None] = None,
               dtype: Optional[torch.dtype] = None, *, attn_implementation: str = "sdpa", **kwargs):
    """The packaged trained model (``from_pretrained`` of :func:`demo_model_dir`), in eval mode, on
    ``device`` (default: CUDA if present, else CPU) in ``dtype`` (default: bfloat16 on CUDA,
    float32 on CPU).  ``kwargs`` go to ``from_pretrained`` (e.g. ``num_hidden_layers=2``)."""
    from transformers import AutoModelForCausalLM

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(demo_model_dir()), dtype=dtype,
                                                 attn_implementation=attn_implementation, **kwargs)
    return model.to(device).eval()
