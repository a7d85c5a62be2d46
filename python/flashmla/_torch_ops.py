"""flashmla's decode as PyTorch custom operators, so that torch.compile and CUDA graphs see them.

    flashmla::get_mla_metadata(Tensor cache_seqlens, int num_heads_per_head_k, int num_heads_k)
        -> (Tensor tile_scheduler_metadata, Tensor num_splits)
    flashmla::flash_mla_with_kvcache(Tensor q, Tensor k_cache, Tensor block_table,
        Tensor cache_seqlens, int head_dim_v, Tensor tile_scheduler_metadata, Tensor num_splits,
        float? softmax_scale=None, bool causal=False, str backend="auto", bool validate=False)
        -> (Tensor out, Tensor lse)
    flashmla::flash_mla_with_kvcache_out(same inputs up to num_splits, Tensor(a!) out,
        Tensor(b!) lse, the same keywords) -> ()

Importing this module registers them (flashmla imports it when torch is loaded before flashmla,
otherwise when the first torch tensor reaches it). Each has a fake implementation giving the
output shapes, so tracing needs no GPU work; the metadata's row count (SM parts) is read from the
device at trace time, the one host query tracing makes. Memory comes from torch's caching
allocator and work goes on torch's current stream of the tensors' device, which is what makes the
ops safe to capture with torch.cuda.graph and to reuse memory stream-ordered.

The public functions at the bottom are what flashmla.get_mla_metadata / flash_mla_with_kvcache
call for torch tensors; they stay traceable by TorchDynamo (no calls into flashmla._C).
"""

import functools
from typing import Optional, Tuple

import torch

from . import _C
from ._arguments import (
    head_dim_v as head_dim_v_arg,
    backend_id,
    output_shapes,
    positive_int,
    softmax_scale as scale_for_c_api,
    workspace_bytes,
)
from ._arrays import stream_handle

# torch.library.custom_op and register_fake arrived in PyTorch 2.4; older versions take the plain
# DLPack path (eager only).
AVAILABLE = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_fake")

DECODE_INPUTS = ("q", "k_cache", "block_table", "cache_seqlens", "tile_scheduler_metadata", "num_splits")


def require_cuda(tensor, name: str) -> None:
    device_type = tensor.device.type
    if device_type == "cuda":
        return
    if device_type == "cpu":
        raise TypeError(f"{name}: expected a CUDA array, got a host (cpu) array")
    raise TypeError(f"{name}: expected a CUDA array, got a tensor on {device_type}")


def device_index(device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=None)
def num_sm_parts(device: int, rows_per_kv_head: int, num_kv_heads: int) -> int:
    """Rows of the metadata; fixed per (device, shape), so asked of the driver once."""
    return _C.get_num_sm_parts(device, rows_per_kv_head, num_kv_heads)


def _empty_plan(cache_seqlens, rows_per_kv_head: int, num_kv_heads: int, make):
    device = cache_seqlens.device
    parts = num_sm_parts(device_index(device), int(rows_per_kv_head), int(num_kv_heads))
    # A cache_seqlens of the wrong rank still gets outputs, so that libflashmla names it.
    batch = cache_seqlens.shape[0] if cache_seqlens.dim() == 1 else 0
    return make((parts, _C.METADATA_WORDS)), make((batch + 1,))


def _current_stream(device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _launch_decode(inputs, head_dim_v, out, lse, softmax_scale, causal, backend, validate):
    """Enqueues the decode into out/lse on torch's current stream, workspace from torch's pool."""
    for name, tensor in zip(DECODE_INPUTS, inputs):
        require_cuda(tensor, name)
    # DLPack refuses tensors that require grad; decode is inference-only.
    q, k_cache, block_table, cache_seqlens, metadata, num_splits = (t.detach() for t in inputs)
    scale = scale_for_c_api(softmax_scale)
    backend_number = backend_id(backend)
    nbytes = workspace_bytes(q.shape, metadata.shape)
    workspace = torch.empty((nbytes,), dtype=torch.uint8, device=q.device) if nbytes else None
    _C.decode(q, k_cache, block_table, cache_seqlens, metadata, num_splits, out, lse,
              head_dim_v_arg(head_dim_v), scale, bool(causal), workspace, backend_number,
              _current_stream(q.device), bool(validate))


def _empty_outputs(q, head_dim_v: int):
    out_shape, lse_shape = output_shapes(q.shape, head_dim_v)
    return (q.new_empty(out_shape), q.new_empty(lse_shape, dtype=torch.float32))


if AVAILABLE:

    @torch.library.custom_op("flashmla::get_mla_metadata", mutates_args=())
    def _get_mla_metadata_op(
        cache_seqlens: torch.Tensor, num_heads_per_head_k: int, num_heads_k: int
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        require_cuda(cache_seqlens, "cache_seqlens")
        rows = positive_int(num_heads_per_head_k, "num_heads_per_head_k")
        heads = positive_int(num_heads_k, "num_heads_k")
        device = cache_seqlens.device
        metadata, num_splits = _empty_plan(
            cache_seqlens, rows, heads,
            lambda shape: torch.empty(shape, dtype=torch.int32, device=device))
        _C.get_metadata(cache_seqlens.detach(), metadata, num_splits, _current_stream(device))
        return metadata, num_splits

    @_get_mla_metadata_op.register_fake
    def _(cache_seqlens, num_heads_per_head_k, num_heads_k):
        return _empty_plan(cache_seqlens, num_heads_per_head_k, num_heads_k,
                           lambda shape: cache_seqlens.new_empty(shape, dtype=torch.int32))

    @torch.library.custom_op("flashmla::flash_mla_with_kvcache", mutates_args=())
    def _decode_op(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        block_table: torch.Tensor,
        cache_seqlens: torch.Tensor,
        head_dim_v: int,
        tile_scheduler_metadata: torch.Tensor,
        num_splits: torch.Tensor,
        softmax_scale: Optional[float] = None,
        causal: bool = False,
        backend: str = "auto",
        validate: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        require_cuda(q, "q")
        out, lse = _empty_outputs(q, head_dim_v)
        inputs = (q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits)
        _launch_decode(inputs, head_dim_v, out, lse, softmax_scale, causal, backend, validate)
        return out, lse

    @_decode_op.register_fake
    def _(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
          softmax_scale=None, causal=False, backend="auto", validate=False):
        return _empty_outputs(q, head_dim_v)

    @torch.library.custom_op("flashmla::flash_mla_with_kvcache_out", mutates_args=("out", "lse"))
    def _decode_out_op(
        q: torch.Tensor,
        k_cache: torch.Tensor,
        block_table: torch.Tensor,
        cache_seqlens: torch.Tensor,
        head_dim_v: int,
        tile_scheduler_metadata: torch.Tensor,
        num_splits: torch.Tensor,
        out: torch.Tensor,
        lse: torch.Tensor,
        softmax_scale: Optional[float] = None,
        causal: bool = False,
        backend: str = "auto",
        validate: bool = False,
    ) -> None:
        inputs = (q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, num_splits)
        require_cuda(out, "out")
        require_cuda(lse, "lse")
        _launch_decode(inputs, head_dim_v, out, lse, softmax_scale, causal, backend, validate)

    @_decode_out_op.register_fake
    def _(q, k_cache, block_table, cache_seqlens, head_dim_v, tile_scheduler_metadata, num_splits,
          out, lse, softmax_scale=None, causal=False, backend="auto", validate=False):
        return None


# ---- What flashmla's public functions call for torch tensors (traceable by TorchDynamo) ---------


def _stream_of(stream, device):
    """A torch stream for an explicit stream= (torch stream, int handle, or anything with .ptr)."""
    if isinstance(stream, torch.cuda.Stream):
        return stream
    handle = stream_handle(stream)
    # ExternalStream(0) would hand out a fresh pool stream, and 1 (cudaStreamLegacy) is refused:
    # both mean the legacy default stream, which is torch's default stream.
    if handle in (0, 1):
        return torch.cuda.default_stream(device)
    return torch.cuda.ExternalStream(handle, device=device)


def _caller_output(value, name: str):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor like q, got {type(value).__name__}")
    require_cuda(value, name)
    return value


def _on_stream(stream, device, function, *args):
    """function(*args) with torch's current stream set to stream= when one is given, so that its
    allocations are ordered by that stream as well."""
    if stream is None:
        return function(*args)
    with torch.cuda.stream(_stream_of(stream, device)):
        return function(*args)


def get_mla_metadata(cache_seqlens, num_heads_per_head_k, num_heads_k, stream=None):
    require_cuda(cache_seqlens, "cache_seqlens")
    rows = positive_int(num_heads_per_head_k, "num_heads_per_head_k")
    heads = positive_int(num_heads_k, "num_heads_k")
    seqlens = cache_seqlens.detach()
    return _on_stream(stream, seqlens.device, torch.ops.flashmla.get_mla_metadata, seqlens, rows, heads)


def _decode_into(q, k_cache, block_table, cache_seqlens, head_dim_v, metadata, num_splits, out,
                 lse, scale, causal, backend, validate):
    """The out= variant, allocating whichever of out and lse the caller left to flashmla."""
    out_shape, lse_shape = output_shapes(q.shape, head_dim_v)
    out = q.new_empty(out_shape) if out is None else out
    lse = q.new_empty(lse_shape, dtype=torch.float32) if lse is None else lse
    torch.ops.flashmla.flash_mla_with_kvcache_out(
        q, k_cache, block_table, cache_seqlens, head_dim_v, metadata, num_splits, out, lse,
        scale, causal, backend, validate)
    return out, lse


def flash_mla_with_kvcache(inputs, head_dim_v, softmax_scale, causal, backend, stream, out, lse,
                           validate):
    """inputs: the six tensors in DECODE_INPUTS order."""
    for name, tensor in zip(DECODE_INPUTS, inputs):
        require_cuda(tensor, name)
    head_dim_v = head_dim_v_arg(head_dim_v)
    scale_for_c_api(softmax_scale)  # raises here, at the call, rather than inside the op
    scale = None if softmax_scale is None else float(softmax_scale)
    backend_id(backend)
    causal, validate = bool(causal), bool(validate)
    q, k_cache, block_table, cache_seqlens, metadata, num_splits = inputs
    arguments = (q.detach(), k_cache.detach(), block_table.detach(), cache_seqlens.detach(),
                 head_dim_v, metadata.detach(), num_splits.detach())
    if out is None and lse is None:
        return _on_stream(stream, q.device, torch.ops.flashmla.flash_mla_with_kvcache,
                          *arguments, scale, causal, backend, validate)
    if out is not None:
        _caller_output(out, "out")
    if lse is not None:
        _caller_output(lse, "lse")
    return _on_stream(stream, q.device, _decode_into, *arguments, out, lse, scale, causal, backend,
                      validate)
