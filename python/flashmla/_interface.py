"""FlashMLA's decode entry points, with its names and argument order.

Checks here are only the ones the C API cannot make: Python types, host arrays, names that exist
only in Python (backend, the keyword arguments). Shapes, dtypes, devices and values are checked by
libflashmla, whose message (naming the argument) surfaces as ValueError.

PyTorch tensors go through the torch.library operators of flashmla._torch_ops (so torch.compile
and CUDA graphs see one op); everything else through DLPack here. The torch branch comes first
and stays simple, because TorchDynamo traces it.
"""

from __future__ import annotations

import sys

from . import _C
from ._arguments import (
    BACKENDS,
    head_dim_v as head_dim_v_arg,
    backend_id,
    output_shapes,
    positive_int,
    softmax_scale as scale_for_c_api,
    workspace_bytes,
)
from ._arrays import check_array, device_id, export, framework_of, prepare, stream_handle, wait_if_jax

__all__ = ["BACKENDS", "flash_mla_with_kvcache", "get_mla_metadata"]


def _torch_ops_for(arrays):
    """flashmla._torch_ops when every array is a torch tensor and the ops exist, else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    for array in arrays:
        if not isinstance(array, torch.Tensor):
            return None
    from . import _torch_ops  # registers the operators on first use

    return _torch_ops if _torch_ops.AVAILABLE else None


def _launch_stream(handle, arrays, device: int):
    """(stream handle, whether it is the allocating framework's current stream)."""
    current = arrays.current_stream(device)
    if handle is None:
        return current, True
    return handle, handle == current


def _caller_output(value, name: str, arrays):
    check_array(value, name)
    if arrays.name == "jax":
        raise TypeError(
            f"{name}: JAX arrays are immutable, so flashmla cannot write into one; leave {name} to "
            f"flashmla, or use flashmla.jax inside jax.jit"
        )
    return value


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
    torch_ops = _torch_ops_for((cache_seqlens,))
    if torch_ops is not None:
        return torch_ops.get_mla_metadata(cache_seqlens, num_heads_per_head_k, num_heads_k, stream)

    check_array(cache_seqlens, "cache_seqlens")
    rows_per_kv_head = positive_int(num_heads_per_head_k, "num_heads_per_head_k")
    num_kv_heads = positive_int(num_heads_k, "num_heads_k")
    handle = None if stream is None else stream_handle(stream)
    arrays = framework_of(cache_seqlens, "cache_seqlens")
    cache_seqlens = prepare(cache_seqlens, "cache_seqlens")
    device = device_id(cache_seqlens)

    num_sm_parts = _C.get_num_sm_parts(device, rows_per_kv_head, num_kv_heads)
    shape = tuple(cache_seqlens.shape)
    batch = shape[0] if len(shape) == 1 else 0
    handle, _ = _launch_stream(handle, arrays, device)
    metadata = arrays.empty((num_sm_parts, _C.METADATA_WORDS), "int32", device)
    num_splits = arrays.empty((batch + 1,), "int32", device)
    _C.get_metadata(*(export(a, handle) for a in (cache_seqlens, metadata, num_splits)), handle)
    wait_if_jax((cache_seqlens,), device)
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
    out=None,
    lse=None,
    validate=False,
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
        out, lse: optional arrays [b, s_q, h_q, 512] (dtype of q) and [b, h_q, s_q] float32 to
            write into instead of allocating (not for JAX arrays); they are returned as given.
        validate: check on the GPU that every block id used is inside k_cache and every length
            fits its block-table row, failing the call instead of reading out of bounds.

    Returns:
        (out [b, s_q, h_q, 512] dtype of q, softmax_lse [b, h_q, s_q] float32), arrays of q's
        framework on its device. Requests with no tokens get out = 0 and lse = +inf.
    """
    inputs = (q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits)
    torch_ops = _torch_ops_for(inputs)
    if torch_ops is not None:
        return torch_ops.flash_mla_with_kvcache(
            inputs, head_dim_v, softmax_scale, causal, backend, stream, out, lse, validate)

    names = ("q", "k_cache", "block_table", "cache_seqlens", "tile_scheduler_metadata", "num_splits")
    for name, value in zip(names, inputs):
        check_array(value, name)
    head_dim_v = head_dim_v_arg(head_dim_v)
    scale = scale_for_c_api(softmax_scale)
    backend_number = backend_id(backend)
    handle = None if stream is None else stream_handle(stream)
    arrays = framework_of(q, "q")
    if out is not None:
        out = _caller_output(out, "out", arrays)
    if lse is not None:
        lse = _caller_output(lse, "lse", arrays)
    q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits = (
        prepare(value, name) for name, value in zip(names, inputs)
    )

    device = device_id(q)
    handle, on_current_stream = _launch_stream(handle, arrays, device)
    shape = tuple(q.shape)
    out_shape, lse_shape = output_shapes(shape, head_dim_v)
    out_array = arrays.empty(out_shape, q.dtype, device) if out is None else out
    lse_array = arrays.empty(lse_shape, "float32", device) if lse is None else lse
    # Memory from a framework's pool is safe only on the stream the pool orders it by (the
    # current one) and outside graph capture; otherwise the library allocates it stream-ordered.
    nbytes = workspace_bytes(shape, tile_scheduler_metadata.shape)
    use_pool = nbytes > 0 and on_current_stream and arrays.pool_is_safe(device)
    workspace = arrays.empty((nbytes,), "uint8", device) if use_pool else None
    arrays_in_order = (q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits,
                       out_array, lse_array)
    _C.decode(
        *(export(a, handle) for a in arrays_in_order),
        head_dim_v,
        scale,
        bool(causal),
        export(workspace, handle),
        backend_number,
        handle,
        bool(validate),
    )
    wait_if_jax((q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits), device)
    return (
        arrays.finish(out_array) if out is None else out,
        arrays.finish(lse_array) if lse is None else lse,
    )
