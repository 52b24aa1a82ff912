"""swaa_ext: sliding-window attention adaptation for long-context LLMs.

Kernels (CPU and CUDA) for sliding-window attention with sink tokens and
per-sequence full attention, a ring-buffer KV cache, SWAA schedules and the
Hugging Face integration.  See ../shared/API.md for the contract.
"""
import torch  # noqa: F401  (before _C: torch must load its libraries first)

from . import _C
from .ops import swa_attention
from .cache import RingKVCache
from .config import SWAAConfig

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """What this build contains: version, whether CUDA kernels are in, archs."""
    return dict(_C.build_info())


def __getattr__(name):
    # the Hugging Face integration imports transformers: load it only when asked for
    # (generate: the CUDA-graph decode loop for Hugging Face models, swaa_ext/generate.py)
    if name in ("hf", "generate"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module 'swaa_ext' has no attribute {name!r}")


__all__ = ["swa_attention", "RingKVCache", "SWAAConfig", "build_info", "__version__"]
