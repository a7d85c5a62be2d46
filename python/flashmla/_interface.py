"""FlashMLA's decode entry points, with its names and argument order.

Checks here are only the ones the C API cannot make: Python types, host arrays, names that exist
only in Python (backend, the keyword arguments). Shapes, dtypes, devices and values are checked by
libflashmla, whose message (naming the argument) surfaces as ValueError.
"""

from __future__ import annotations

import operator

from . import _C
from ._arrays import check_array, device_id, framework_of, prepare, stream_handle

BACKENDS = ("auto", "reference", "sm90")
_BACKEND_IDS = {
    "auto": _C.BACKEND_AUTO,
    "reference": _C.BACKEND_REFERENCE,
    "sm90": _C.BACKEND_SM90,
}


def _as_int(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}") from None


def _positive_int(value, name: str) -> int:
    number = _as_int(value, name)
    if number < 1:
        raise ValueError(f"{name}: must be >= 1, got {number}")
    return number


def _softmax_scale(value) -> float:
    if value is None:
        return 0.0  # the C API's default, 1/sqrt(576)
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"softmax_scale: expected a float, got {type(value).__name__}") from None
    if scale == 0.0:
        # The C API reads 0 as "default"; an explicit 0 must not silently become 1/sqrt(576).
        raise ValueError("softmax_scale: must be finite and > 0, got 0.0")
    return scale


def _backend_id(backend) -> int:
    try:
        return _BACKEND_IDS[backend]
    except (KeyError, TypeError):
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}; got {backend!r}") from None


def _launch_stream(handle, arrays, device: int):
    """(stream handle, whether it is the allocating framework's current stream)."""
    current = arrays.current_stream(device)
    if handle is None:
        return current, True
    return handle, handle == current


def _workspace(arrays, device: int, shape, tile_scheduler_metadata):
    """Workspace from the caller's framework, or None to let the library allocate it.

    Memory from a framework's pool is safe only on the stream the pool orders it by (the current
    one); the caller decides that and passes None otherwise. Sizes that cannot be computed are
    left to flashmla_decode, which reports the argument at fault.
    """
    metadata_shape = tuple(tile_scheduler_metadata.shape)
    if len(shape) != 4 or shape[0] == 0 or len(metadata_shape) != 2:
        return None
    batch, s_q, h_q = shape[:3]
    try:
        nbytes = _C.decode_workspace_size(batch, s_q, h_q, metadata_shape[0])
    except ValueError:
        return None
    return arrays.empty((nbytes,), "uint8", device) if nbytes else None


def get_mla_metadata(cache_seqlens, num_heads_per_head_k, num_heads_k, *, stream=None):
    """Split-KV plan of one decode step, shared by every layer of the step.

    Args:
        cache_seqlens: [b] int32 CUDA array of sequence lengths.
        num_heads_per_head_k: query rows per KV head, s_q * h_q // h_kv.
        num_heads_k: number of KV heads, h_kv.
        stream: optional stream (int handle or stream object); default: the current stream of
            cache_seqlens' framework.

    Returns:
        (tile_scheduler_metadata [num_sm_parts, 8] int32, num_splits [b + 1] int32), arrays of
        cache_seqlens' framework on its device.
    """
    check_array(cache_seqlens, "cache_seqlens")
    rows_per_kv_head = _positive_int(num_heads_per_head_k, "num_heads_per_head_k")
    num_kv_heads = _positive_int(num_heads_k, "num_heads_k")
    handle = None if stream is None else stream_handle(stream)
    arrays = framework_of(cache_seqlens, "cache_seqlens")
    cache_seqlens = prepare(cache_seqlens, "cache_seqlens")
    device = device_id(cache_seqlens)

    num_sm_parts = _C.get_num_sm_parts(device, rows_per_kv_head, num_kv_heads)
    shape = tuple(cache_seqlens.shape)
    batch = shape[0] if shape else 0
    handle, _ = _launch_stream(handle, arrays, device)
    metadata = arrays.empty((num_sm_parts, _C.METADATA_WORDS), "int32", device)
    num_splits = arrays.empty((batch + 1,), "int32", device)
    _C.get_metadata(cache_seqlens, metadata, num_splits, handle)
    return arrays.finish(metadata), arrays.finish(num_splits)


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
    stream=None,
):
    """Paged MLA decode.

    Args:
        q: [b, s_q, h_q, 576] bfloat16 or float16 CUDA array.
        k_cache: [num_blocks, page_block_size, h_kv, 576], dtype of q; V is its first 512 columns.
        block_table: [b, max_blocks_per_seq] int32; logical page j of request i is
            k_cache[block_table[i, j]].
        cache_seqlens: [b] int32 tokens per request.
        head_dim_v: 512.
        tile_scheduler_metadata, num_splits: from get_mla_metadata.
        softmax_scale: default 1/sqrt(576).
        causal: query position i of a request with L tokens sees keys [0, L - s_q + i].
        backend: "auto" (Hopper kernel on sm_90, reference elsewhere), "reference" or "sm90".
        stream: optional stream (int handle or stream object); default: the current stream of
            q's framework (for JAX: of the framework that allocates the outputs).

    Returns:
        (out [b, s_q, h_q, 512] dtype of q, softmax_lse [b, h_q, s_q] float32), arrays of q's
        framework on its device. Requests with no tokens get out = 0 and lse = +inf.
    """
    inputs = {
        "q": q,
        "k_cache": k_cache,
        "block_table": block_table,
        "cache_seqlens": cache_seqlens,
        "tile_scheduler_metadata": tile_scheduler_metadata,
        "num_splits": num_splits,
    }
    for name, value in inputs.items():
        check_array(value, name)
    head_dim_v = _as_int(head_dim_v, "head_dim_v")
    scale = _softmax_scale(softmax_scale)
    backend_id = _backend_id(backend)
    handle = None if stream is None else stream_handle(stream)
    arrays = framework_of(q, "q")
    q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits = (
        prepare(value, name) for name, value in inputs.items()
    )

    device = device_id(q)
    handle, on_current_stream = _launch_stream(handle, arrays, device)
    shape = tuple(q.shape)
    # A q of the wrong rank still gets (empty) outputs, so that libflashmla reports q itself.
    batch, s_q, h_q = shape[:3] if len(shape) == 4 else (0, 1, 1)
    # Likewise a wrong head_dim_v: libflashmla names it before it looks at out's shape.
    out_dim = head_dim_v if head_dim_v == _C.HEAD_DIM_V else 0
    out = arrays.empty((batch, s_q, h_q, out_dim), q.dtype, device)
    lse = arrays.empty((batch, h_q, s_q), "float32", device)
    workspace = (
        _workspace(arrays, device, shape, tile_scheduler_metadata) if on_current_stream else None
    )
    _C.decode(
        q,
        k_cache,
        block_table,
        cache_seqlens,
        tile_scheduler_metadata,
        num_splits,
        out,
        lse,
        head_dim_v,
        scale,
        bool(causal),
        workspace,
        backend_id,
        handle,
    )
    return arrays.finish(out), arrays.finish(lse)
