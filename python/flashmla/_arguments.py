"""Checks of the scalar arguments, shared by every entry point (plain, torch ops, flashmla.jax).

Only what exists solely in Python is checked here: Python types, the names of backends, the
meaning Python gives to None. Values the C API understands are left to it, so that C and Python
callers see the same messages.
"""

from __future__ import annotations

import math
import operator
import struct

from . import _C

# The C API takes these integers as int32; nanobind refuses a larger Python int with a message
# that names no argument, so the range is checked here.
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

BACKENDS = ("auto", "reference", "sm90")
_BACKEND_IDS = {
    "auto": _C.BACKEND_AUTO,
    "reference": _C.BACKEND_REFERENCE,
    "sm90": _C.BACKEND_SM90,
}


def as_int(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}") from None


def positive_int(value, name: str) -> int:
    number = as_int(value, name)
    if number < 1:
        raise ValueError(f"{name}: must be >= 1, got {number}")
    if number > _INT32_MAX:
        raise ValueError(f"{name}: must be below 2^31, got {number}")
    return number


def head_dim_v(value) -> int:
    number = as_int(value, "head_dim_v")
    if not _INT32_MIN <= number <= _INT32_MAX:
        raise ValueError(f"head_dim_v: must be {_C.HEAD_DIM_V}, got {number}")
    return number


def _as_float32(value: float) -> float:
    """`value` as the C API's float will hold it (inf past float32's range)."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def softmax_scale(value) -> float:
    """The C API's encoding: 0.0 selects 1/sqrt(576)."""
    if value is None:
        return 0.0
    if isinstance(value, (str, bytes, bytearray)):  # float() would parse "0.5"
        raise TypeError(f"softmax_scale: expected a float, got {type(value).__name__}")
    try:
        scale = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"softmax_scale: expected a float, got {type(value).__name__}") from None
    if _as_float32(scale) == 0.0:
        # The C API reads 0 as "default"; an explicit 0 (or one that float32 rounds to 0) must not
        # silently become 1/sqrt(576).
        raise ValueError(f"softmax_scale: must be finite and > 0, got {scale!r} (0 in float32)"
                         if scale != 0.0 else "softmax_scale: must be finite and > 0, got 0.0")
    return scale


def backend_id(backend) -> int:
    try:
        return _BACKEND_IDS[backend]
    except (KeyError, TypeError):
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}; got {backend!r}") from None


def workspace_bytes(q_shape, metadata_shape) -> int:
    """Bytes of decode workspace, or 0 where the shapes are wrong (flashmla_decode then names the
    argument at fault, which a size computed here could not)."""
    q_shape, metadata_shape = tuple(q_shape), tuple(metadata_shape)
    if len(q_shape) != 4 or q_shape[0] == 0 or len(metadata_shape) != 2:
        return 0
    batch, s_q, h_q = q_shape[:3]
    try:
        return _C.decode_workspace_size(batch, s_q, h_q, metadata_shape[0])
    except ValueError:
        return 0


def output_shapes(q_shape, head_dim_v: int):
    """(out shape, lse shape). A q of the wrong rank still gets (empty) outputs, and a wrong
    head_dim_v an empty last dimension, so that libflashmla reports q or head_dim_v itself rather
    than out."""
    q_shape = tuple(q_shape)
    batch, s_q, h_q = q_shape[:3] if len(q_shape) == 4 else (0, 1, 1)
    out_dim = head_dim_v if head_dim_v == _C.HEAD_DIM_V else 0
    return (batch, s_q, h_q, out_dim), (batch, h_q, s_q)
