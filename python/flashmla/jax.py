"""flashmla for jax.jit: the metadata and decode calls as XLA FFI custom calls.

    import jax, flashmla.jax as fmla

    @jax.jit
    def step(q, k_cache, block_table, cache_seqlens):
        metadata, num_splits = fmla.get_mla_metadata(cache_seqlens, s_q * h_q // h_kv, h_kv)
        return fmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512,
                                           metadata, num_splits, causal=True)

Same names, arguments and results as flashmla's, minus ``stream`` and ``out``/``lse``: XLA picks
the stream and owns every buffer, the decode's workspace included (an extra result XLA allocates
and frees, sized at trace time). The functions also work outside jit, on concrete arrays.

Tracing asks the GPU one thing: its SM count, which sets the number of metadata rows. Shapes and
dtypes are checked by libflashmla when the call runs, so a bad argument surfaces as an XLA
runtime error (INVALID_ARGUMENT) carrying the C API's message, which names the argument.

Importing this module registers the handlers with jax.ffi for the CUDA platform. It raises
ImportError, saying why, when JAX is missing or when this flashmla was built without the
handlers (jaxlib's FFI headers were not found at build time).
"""

from __future__ import annotations

try:
    import jax
    import jax.numpy as jnp
except ImportError as error:
    raise ImportError(f"flashmla.jax needs JAX with its CUDA plugin ({error})") from error

if not hasattr(jax, "ffi") or not hasattr(jax.ffi, "ffi_call"):
    raise ImportError(f"flashmla.jax needs jax.ffi (JAX 0.4.38 or newer); this is JAX {jax.__version__}")

try:
    from . import _jax_ffi
except ImportError as error:
    raise ImportError(
        "flashmla.jax is unavailable: this flashmla was built without its XLA FFI handlers "
        "because jaxlib's headers (jax.ffi.include_dir()) were not found at build time. Rebuild "
        "with JAX installed for the building Python (pip install --no-build-isolation .), or "
        "point FLASHMLA_XLA_FFI_INCLUDE_DIR at those headers"
    ) from error

import numpy as np

from . import _C
from ._arguments import (
    as_int,
    backend_id,
    output_shapes,
    positive_int,
    softmax_scale as scale_for_c_api,
    workspace_bytes,
)

__all__ = ["flash_mla_with_kvcache", "get_mla_metadata"]

METADATA_TARGET = "flashmla_get_metadata"
DECODE_TARGET = "flashmla_decode"
_INT32_MAX = np.iinfo(np.int32).max

jax.ffi.register_ffi_target(METADATA_TARGET, _jax_ffi.get_metadata_handler(), platform="CUDA")
jax.ffi.register_ffi_target(DECODE_TARGET, _jax_ffi.decode_handler(), platform="CUDA")


def _check_array(value, name: str) -> None:
    if value is None:
        raise TypeError(f"{name}: expected an array, got None")
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise TypeError(f"{name}: expected a JAX array, got {type(value).__name__}")


def _cuda_ordinal(array) -> int:
    """The CUDA device of a concrete array; under tracing, JAX's first GPU."""
    try:
        devices = list(array.devices())
    except Exception:  # a tracer (or a NumPy array) has no device yet
        devices = []
    if not devices:
        try:
            devices = jax.local_devices(backend="gpu")
        except RuntimeError as error:
            raise RuntimeError(
                f"flashmla.jax: JAX has no GPU backend, which sizing the plan needs ({error})"
            ) from None
    device = devices[0]
    if device.platform != "gpu":
        raise ValueError(f"cache_seqlens: expected an array on a CUDA GPU, got one on {device}")
    ordinal = getattr(device, "local_hardware_id", None)
    return device.id if ordinal is None else ordinal


def num_sm_parts(cache_seqlens, rows_per_kv_head: int, num_kv_heads: int) -> int:
    """Rows of the metadata for a decode on cache_seqlens' GPU (read from the device)."""
    return _C.get_num_sm_parts(_cuda_ordinal(cache_seqlens), rows_per_kv_head, num_kv_heads)


def get_mla_metadata(cache_seqlens, num_heads_per_head_k, num_heads_k):
    """Split-KV plan of one decode step, shared by every layer of the step.

    Args:
        cache_seqlens: [b] int32 array of sequence lengths.
        num_heads_per_head_k: query rows per KV head, s_q * h_q // h_kv.
        num_heads_k: number of KV heads, h_kv.

    Returns:
        (tile_scheduler_metadata [num_sm_parts, 8] int32, num_splits [b + 1] int32).
    """
    _check_array(cache_seqlens, "cache_seqlens")
    rows = positive_int(num_heads_per_head_k, "num_heads_per_head_k")
    heads = positive_int(num_heads_k, "num_heads_k")
    parts = num_sm_parts(cache_seqlens, rows, heads)
    shape = tuple(cache_seqlens.shape)
    # A cache_seqlens of the wrong rank still gets outputs, so that libflashmla names it.
    batch = shape[0] if len(shape) == 1 else 0
    call = jax.ffi.ffi_call(
        METADATA_TARGET,
        (
            jax.ShapeDtypeStruct((parts, _C.METADATA_WORDS), jnp.int32),
            jax.ShapeDtypeStruct((batch + 1,), jnp.int32),
        ),
    )
    metadata, num_splits = call(cache_seqlens)
    return metadata, num_splits


def flash_mla_with_kvcache(
    q,
    k_cache,
    block_table,
    cache_seqlens,
    head_dim_v,
    tile_scheduler_metadata,
    num_splits,
    softmax_scale=None,
    causal=False,
    *,
    backend="auto",
    validate=False,
):
    """Paged MLA decode inside XLA; arguments as flashmla.flash_mla_with_kvcache.

    softmax_scale, causal, backend and validate are static (Python values, not traced).

    Returns:
        (out [b, s_q, h_q, 512] dtype of q, softmax_lse [b, h_q, s_q] float32).
    """
    names = ("q", "k_cache", "block_table", "cache_seqlens", "tile_scheduler_metadata", "num_splits")
    inputs = (q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits)
    for name, value in zip(names, inputs):
        _check_array(value, name)
    head_dim_v = as_int(head_dim_v, "head_dim_v")
    if not 0 <= head_dim_v <= _INT32_MAX:
        raise ValueError(f"head_dim_v: must be {_C.HEAD_DIM_V}, got {head_dim_v}")
    scale = scale_for_c_api(softmax_scale)
    backend_number = backend_id(backend)

    q_shape = tuple(q.shape)
    out_shape, lse_shape = output_shapes(q_shape, head_dim_v)
    nbytes = workspace_bytes(q_shape, tile_scheduler_metadata.shape)
    # Room to align the start: XLA guarantees less than flashmla's 256 bytes.
    workspace = nbytes + _jax_ffi.WORKSPACE_ALIGNMENT if nbytes else 0
    call = jax.ffi.ffi_call(
        DECODE_TARGET,
        (
            jax.ShapeDtypeStruct(out_shape, q.dtype),
            jax.ShapeDtypeStruct(lse_shape, jnp.float32),
            jax.ShapeDtypeStruct((workspace,), jnp.uint8),
        ),
    )
    out, lse, _ = call(
        *inputs,
        head_dim_v=np.int32(head_dim_v),
        softmax_scale=np.float32(scale),
        causal=np.int32(bool(causal)),
        backend=np.int32(backend_number),
        validate=np.int32(bool(validate)),
    )
    return out, lse
