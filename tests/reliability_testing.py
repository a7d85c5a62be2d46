"""Helpers shared by the reliability tests (fuzzing, validating mode, determinism, scale).

Never calls a GPU by itself; the GPU helpers take the torch module from the torch_cuda fixture.
"""

from __future__ import annotations

import inspect

import numpy as np

import flashmla
from flashmla import _C
from mla_testing import HEAD_DIM_V, METADATA_WORDS, check_decode, reference_torch

# The argument names libflashmla and the Python layer put first in their messages.
ARGUMENT_NAMES = (
    "q",
    "k_cache",
    "block_table",
    "cache_seqlens",
    "tile_scheduler_metadata",
    "num_splits",
    "out",
    "lse",
    "head_dim_v",
    "softmax_scale",
    "causal",
    "backend",
    "stream",
    "workspace",
    "validate",
    "num_heads_per_head_k",
    "num_heads_k",
)

STALE_PLAN = (
    ": it is not the plan of these cache_seqlens; call flashmla_get_metadata again whenever the "
    "lengths change"
)
CAPTURE_REFUSAL = (
    "validate: validating mode synchronises the stream, so it cannot run while the stream is being "
    "captured into a CUDA graph; validate outside the capture"
)


def named_argument(message: str) -> str:
    """The argument an error message names: the text before the first ':' or '['."""
    cut = len(message)
    for mark in (":", "["):
        position = message.find(mark)
        if position >= 0:
            cut = min(cut, position)
    return message[:cut]


def validate_supported() -> bool:
    """Whether flash_mla_with_kvcache takes validate= (validating mode from Python)."""
    return "validate" in inspect.signature(flashmla.flash_mla_with_kvcache).parameters


def context_is_healthy(torch) -> None:
    """Asserts that the CUDA context still runs work after a call."""
    torch.cuda.synchronize()
    probe = torch.ones(4, device="cuda")
    probe.add_(1)
    assert float(probe.sum().item()) == 8.0, "a kernel after the call computed garbage"


def host_plan(lengths, num_sm_parts: int):
    """The plan on the host path (NumPy in, NumPy out)."""
    seqlens = np.asarray(lengths, dtype=np.int32)
    metadata = np.full((num_sm_parts, METADATA_WORDS), -7, dtype=np.int32)
    num_splits = np.full(len(seqlens) + 1, -7, dtype=np.int32)
    _C.get_metadata(seqlens, metadata, num_splits)
    return metadata, num_splits


def host_plan_on_device(torch, cache_seqlens, num_sm_parts: int):
    """The host plan of a CUDA lengths tensor, copied to the device."""
    metadata, num_splits = host_plan(cache_seqlens.cpu().numpy(), num_sm_parts)
    return torch.from_numpy(metadata).cuda(), torch.from_numpy(num_splits).cuda()


def to_numpy(tensor):
    return tensor.double().cpu().numpy()


def check_against_reference(torch, inputs, out, lse, causal, scale=None, label=""):
    """check_decode against the float64 torch oracle on the original (compact) inputs."""
    kwargs = {} if scale is None else {"scale": scale}
    ref_out, ref_lse = reference_torch(
        torch, inputs.q, inputs.k_cache, inputs.block_table, inputs.lengths, causal, **kwargs
    )
    return check_decode(to_numpy(out), to_numpy(lse), ref_out.cpu().numpy(), ref_lse.cpu().numpy(), label)


def decode(inputs, metadata, num_splits, **keywords):
    return flashmla.flash_mla_with_kvcache(
        inputs.q, inputs.k_cache, inputs.block_table, inputs.cache_seqlens, HEAD_DIM_V,
        metadata, num_splits, **keywords,
    )
