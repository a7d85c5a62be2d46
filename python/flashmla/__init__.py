"""flashmla: Multi-head Latent Attention (MLA) decoding on NVIDIA GPUs.

A drop-in for FlashMLA's decode API (same names, same argument order)::

    from flashmla import get_mla_metadata, flash_mla_with_kvcache

    tile_scheduler_metadata, num_splits = get_mla_metadata(
        cache_seqlens, s_q * h_q // h_kv, h_kv)
    out, lse = flash_mla_with_kvcache(
        q, k_cache, block_table, cache_seqlens, 512,
        tile_scheduler_metadata, num_splits, causal=True)

Arrays may be PyTorch tensors, CuPy arrays or (eager) JAX arrays on a CUDA device; outputs come
back in the framework of the first array argument. Extra keyword-only arguments: ``backend``
(one of ``BACKENDS``), ``stream``, ``out``/``lse`` (write into the caller's arrays) and
``validate`` (check block ids and lengths on the GPU). Invalid arguments raise ValueError (or
TypeError for wrong Python types and host arrays) with a message naming the argument.

With PyTorch the two functions are the custom operators ``torch.ops.flashmla.get_mla_metadata``
and ``torch.ops.flashmla.flash_mla_with_kvcache`` (registered here when torch is already
imported, otherwise at the first call with torch tensors), so they work under
``torch.compile(fullgraph=True)`` and ``torch.cuda.graph``. ``flashmla.jax`` has the same
functions for ``jax.jit``, through XLA's FFI. ``flashmla._C`` holds the raw bindings of the C API.
"""

import sys as _sys

from . import _C
from ._interface import BACKENDS, flash_mla_with_kvcache, get_mla_metadata

__version__ = _C.version()

__all__ = ["BACKENDS", "__version__", "flash_mla_with_kvcache", "get_mla_metadata"]

if "torch" in _sys.modules:
    # torch is loaded already, so this costs nothing and torch.ops.flashmla exists from now on.
    from . import _torch_ops  # noqa: F401
