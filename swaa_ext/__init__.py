"""swaa_ext: sliding-window attention adaptation for long-context LLMs.

Kernels (CPU and CUDA) for sliding-window attention with sink tokens and
per-sequence full attention, a ring-buffer KV cache, SWAA schedules and the
Hugging Face integration.  See ../shared/API.md for the contract.
"""
from . import _C
from .ops import swa_attention
from .cache import RingKVCache

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """What this build contains: version, whether CUDA kernels are in, archs."""
    return dict(_C.build_info())


__all__ = ["swa_attention", "RingKVCache", "build_info", "__version__"]
