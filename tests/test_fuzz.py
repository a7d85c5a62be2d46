"""Fuzzing the Python surface with seeded random argument sets: every call ends in a correct result
or a clean error, a ValueError or TypeError whose message starts with the name of an argument at
fault.

Host part (no GPU, runs in CI):
- flashmla._C.decode on NumPy arrays: random well-formed calls broken by 1 to 3 mutations (wrong
  dtypes, ranks, sizes, zero-size dimensions, non-contiguous and reversed views, enormous claimed
  shapes, bad scalars). Every mutation is invalid on its own and no two touch the same argument,
  so libflashmla must name one of them before it reaches its device check.
- flash_mla_with_kvcache / get_mla_metadata with Python-level garbage (None, lists, strings,
  host arrays, floats for ints, bad backends and streams).
- The host plan (flashmla._C.get_metadata) on random lengths: invariants, or a named error.
- flashmla._C.decode_workspace_size on random and extreme integers.

GPU part (torch): random valid problems in random layouts and on random streams, compared with the
float64 oracle; single mutations of valid torch arguments; and, when validate= exists, corrupted
block ids, lengths and plans. After every call the CUDA context must still run work.

FLASHMLA_FUZZ_SEED changes the seed (printed on failure).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import flashmla
from flashmla import _C
from mla_testing import HEAD_DIM, HEAD_DIM_V, METADATA_WORDS, DecodeCase, check_plan, make_torch_inputs
from reliability_testing import (
    check_against_reference,
    context_is_healthy,
    host_plan_on_device,
    named_argument,
    validate_supported,
)

SEED = int(os.environ.get("FLASHMLA_FUZZ_SEED", "20261123"))
HOST_CASES = 1500
GPU_CASES = 1000
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_SM_PARTS = 1 << 16

INPUTS = ("q", "k_cache", "block_table", "cache_seqlens", "tile_scheduler_metadata", "num_splits")
ARRAYS = INPUTS + ("out", "lse")


# ---- _C.decode on host arrays ------------------------------------------------------------------


def random_host_call(rng):
    """A _C.decode call that is valid in every respect except living in host memory."""
    b, s_q = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    h_kv = int(rng.choice([1, 2]))
    h_q = h_kv * int(rng.choice([1, 2, 4, 8]))
    page = int(rng.choice([64, 128]))
    blocks, max_blocks, parts = int(rng.integers(1, 7)), int(rng.integers(2, 7)), int(rng.integers(2, 7))
    half = np.float16
    return dict(
        q=np.empty((b, s_q, h_q, HEAD_DIM), half),
        k_cache=np.empty((blocks, page, h_kv, HEAD_DIM), half),
        block_table=np.empty((b, max_blocks), np.int32),
        cache_seqlens=np.empty(b, np.int32),
        tile_scheduler_metadata=np.empty((parts, METADATA_WORDS), np.int32),
        num_splits=np.empty(b + 1, np.int32),
        out=np.empty((b, s_q, h_q, HEAD_DIM_V), half),
        lse=np.empty((b, h_q, s_q), np.float32),
        head_dim_v=HEAD_DIM_V,
        softmax_scale=float(rng.choice([0.0, 0.05, 1.0])),
        causal=bool(rng.integers(0, 2)),
        workspace=None,
        backend=int(rng.choice([_C.BACKEND_AUTO, _C.BACKEND_REFERENCE, _C.BACKEND_SM90])),
        stream=0,
    )


def wrong_dtype(name, rng):
    if name in ("q", "k_cache", "out"):  # both 16-bit float types are left out: they could pair up
        return rng.choice([np.float32, np.float64, np.int16, np.uint16, np.int8, np.bool_, np.complex64])
    if name == "lse":
        return rng.choice([np.float16, np.float64, np.int32])
    return rng.choice([np.int64, np.uint32, np.float32, np.int16, np.int8])


def claimed(array, shape):
    """A view claiming `shape` over `array`'s first bytes (never read: the call is rejected first)."""
    strides = [array.itemsize] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * max(shape[d + 1], 1)
    return np.lib.stride_tricks.as_strided(array, shape=shape, strides=strides, writeable=array.flags.writeable)


def wrong_size(name, array, rng):
    """(new array, description) with one dimension of a size that is invalid whatever else holds."""
    shape = list(array.shape)
    if name == "q":  # q defines b, s_q and h_q for everyone: only values outside every range
        d = int(rng.choice([1, 2, 3]))
        shape[d] = 0 if d < 3 else int(rng.choice([0, 512, 575, 577]))
    elif name == "k_cache":
        d = int(rng.choice([1, 2, 3]))
        if d == 1:
            shape[1] = int(rng.choice([0, 32, 63, 65, 96]))
        elif d == 2:
            shape[2] = 9  # divides no h_q of random_host_call (at most 8)
        else:
            shape[3] = int(rng.choice([0, 512, 577]))
    elif name == "block_table" and rng.integers(0, 2) == 0:
        d, shape[1] = 1, INT32_MAX // 64 + 1  # claimed, far beyond the buffer
        return claimed(array, tuple(shape)), f"block_table width {shape[1]}"
    elif name == "tile_scheduler_metadata":
        d = int(rng.integers(0, 2))
        if d == 0:
            shape[0] = int(rng.choice([0, MAX_SM_PARTS + 1]))
            if shape[0]:
                return claimed(array, tuple(shape)), f"{name} with {shape[0]} parts"
        else:
            shape[1] = int(rng.choice([0, 4, 7, 9, 16]))
    else:  # every other dimension must equal what q or head_dim_v says (max_blocks_per_seq is free)
        d = 0 if name == "block_table" else int(rng.integers(0, len(shape)))
        shape[d] = max(0, shape[d] + int(rng.choice([-1, 1, 3])))
        if shape[d] == array.shape[d]:
            shape[d] += 1
    return np.empty(tuple(shape), array.dtype), f"{name} shape {tuple(shape)}"


def mutate_array(name, array, rng):
    """(new array, description), or None when the drawn kind does not apply."""
    kind = int(rng.integers(0, 7))
    if kind == 0:
        return np.empty(array.shape, wrong_dtype(name, rng)), f"{name} dtype"
    if kind == 1:
        if rng.integers(0, 2) == 0 or array.ndim == 1:
            return array[None], f"{name} rank +1"
        return array.reshape(array.shape[:-2] + (-1,)), f"{name} rank -1"
    if kind == 2:
        if array.size == 0 or array.shape[-1] < 2:
            return None
        wide = np.empty(array.shape[:-1] + (array.shape[-1] * 2,), array.dtype)
        return wide[..., ::2], f"{name} inner stride 2"
    if kind == 3:
        axes = [d for d in range(array.ndim) if array.shape[d] >= 2]
        if array.size == 0 or not axes:
            return None
        return np.flip(array, axis=int(rng.choice(axes))), f"{name} reversed"
    if kind == 6:
        # An output whose requests all share one row of memory.
        if name not in ("out", "lse") or array.size == 0 or array.shape[0] < 2:
            return None
        strides = (0,) + array.strides[1:]
        return np.lib.stride_tricks.as_strided(array, strides=strides), f"{name} repeated over b"
    return wrong_size(name, array, rng)


def mutate_scalar(name, rng):
    if name == "head_dim_v":
        return int(rng.choice([0, 576, 256, -512, 511])), "head_dim_v"
    if name == "softmax_scale":
        return float(rng.choice([math.nan, math.inf, -math.inf, -1.0, -1e-30])), "softmax_scale"
    if name == "backend":
        return int(rng.choice([3, 99, -1])), "backend"
    return np.empty(1 << 12, np.uint8), "workspace on the host"  # workspace


def mutate_host_call(call, rng):
    """Applies 1..3 mutations on distinct arguments; returns their names and descriptions."""
    names, labels = set(), []
    wanted = int(rng.integers(1, 4))
    for _ in range(50):
        if len(names) == wanted:
            break
        # The binding checks the workspace before libflashmla sees anything: drawn rarely, or its
        # message would hide most others.
        name = str(rng.choice(3 * ARRAYS + ("head_dim_v", "softmax_scale", "backend", "workspace")))
        if name in names:
            continue
        if name in ARRAYS:
            mutated = mutate_array(name, call[name], rng)
            if mutated is None:
                continue
            call[name], label = mutated
        else:
            call[name], label = mutate_scalar(name, rng)
        names.add(name)
        labels.append(label)
    return names, labels


def test_raw_decode_names_what_is_wrong_with_host_arrays():
    rng = np.random.default_rng(SEED)
    unbroken = "q: expected a CUDA device tensor, got cpu"
    for case in range(HOST_CASES):
        call = random_host_call(rng)
        names, labels = mutate_host_call(call, rng)
        with pytest.raises(ValueError) as error:
            _C.decode(**call)
        message = str(error.value)
        where = f"case {case} (seed {SEED}): {labels} gave {message!r}"
        assert message != unbroken, f"{where}: the mutations were not caught"
        assert named_argument(message) in names, where


# ---- The public functions with Python-level garbage ---------------------------------------------


class FakeCudaArray:
    """Claims to live on CUDA device 0 but belongs to no framework; exporting it is a bug."""

    def __init__(self, device_type=2):
        self.shape = (2, 1, 2, HEAD_DIM)
        self._device_type = device_type

    def __dlpack__(self, *args, **kwargs):
        raise AssertionError("an array was exported before the Python checks finished")

    def __dlpack_device__(self):
        return (self._device_type, 0)


BAD_ARRAYS = (
    lambda: None,
    lambda: [[1.0, 2.0]],
    lambda: 3,
    lambda: "q",
    lambda: object(),
    lambda: np.zeros((2, 1, 2, HEAD_DIM), np.float16),
    lambda: FakeCudaArray(device_type=1),
    lambda: FakeCudaArray(device_type=3),
)
GOOD_SCALARS = {
    "head_dim_v": (512, np.int64(512)),
    "softmax_scale": (None, 0.1, 1, np.float32(0.2)),
    "backend": ("auto", "reference", "sm90"),
    "stream": (None, 0, 12345),
    "num_heads_per_head_k": (1, 128, np.int32(16)),
    "num_heads_k": (1, 8),
}
BAD_SCALARS = {
    "head_dim_v": ("512", 512.0, None, [512], object()),
    "softmax_scale": ("x", [0.1], 0, 0.0, object()),
    "backend": ("fast", 1, None, "AUTO", ("auto",), ["auto"]),
    "stream": ("0", 1.5, -1, object(), True),
    "num_heads_per_head_k": (0, -3, "2", 2.0, None),
    "num_heads_k": (0, -1, "1", 1.5, None),
}


def draw(rng, values):
    return values[int(rng.integers(0, len(values)))]


def test_public_functions_name_the_first_bad_python_value():
    """Only arrays that claim a CUDA device pass the array checks; the framework check comes after
    every scalar, so a call whose scalars are fine fails by naming its first array."""
    rng = np.random.default_rng(SEED + 1)
    for case in range(HOST_CASES):
        bad = set()
        if rng.integers(0, 3) == 0:
            arguments = {"cache_seqlens": FakeCudaArray()}
            scalars = ("num_heads_per_head_k", "num_heads_k", "stream")
            function, first_array = flashmla.get_mla_metadata, "cache_seqlens"
            if rng.integers(0, 3) == 0:
                arguments["cache_seqlens"] = draw(rng, BAD_ARRAYS)()
                bad.add("cache_seqlens")
        else:
            arguments = {name: FakeCudaArray() for name in INPUTS}
            scalars = ("head_dim_v", "softmax_scale", "backend", "stream")
            function, first_array = flashmla.flash_mla_with_kvcache, "q"
            for name in INPUTS:
                if rng.integers(0, 6) == 0:
                    arguments[name] = draw(rng, BAD_ARRAYS)()
                    bad.add(name)
        for name in scalars:
            if rng.integers(0, 4) == 0:
                arguments[name] = draw(rng, BAD_SCALARS[name])
                bad.add(name)
            else:
                arguments[name] = draw(rng, GOOD_SCALARS[name])
        with pytest.raises((TypeError, ValueError)) as error:
            function(**arguments)
        message = str(error.value)
        # The framework check (naming the first array) may come before or after the scalars'.
        expected = bad | {first_array}
        assert named_argument(message) in expected, (
            f"case {case} (seed {SEED}): bad {sorted(bad)} gave {type(error.value).__name__}: {message!r}"
        )


# ---- The host plan and the size queries ---------------------------------------------------------


def test_host_plan_is_valid_or_names_the_bad_argument():
    rng = np.random.default_rng(SEED + 2)
    for case in range(HOST_CASES):
        batch, parts = int(rng.integers(0, 40)), int(rng.integers(1, 300))
        choices = [0, int(rng.integers(1, 5000)), int(rng.integers(1, INT32_MAX))]
        lengths = np.asarray([draw(rng, choices) for _ in range(batch)], np.int64).astype(np.int32)
        metadata = np.full((parts, METADATA_WORDS), -7, np.int32)
        num_splits = np.full(batch + 1, -7, np.int32)
        kind, expected = int(rng.integers(0, 6)), None
        if kind == 0 and batch:
            lengths[int(rng.integers(0, batch))] = -int(rng.integers(1, INT32_MAX))
            expected = "cache_seqlens"
        elif kind == 1:
            lengths = lengths.astype(draw(rng, (np.int64, np.uint32, np.float32, np.int16)))
            expected = "cache_seqlens"
        elif kind == 2:
            metadata = np.full((parts, int(draw(rng, (4, 7, 16)))), -7, np.int32)
            expected = "tile_scheduler_metadata"
        elif kind == 3:
            num_splits = np.full(batch + int(draw(rng, (0, 2, 5))), -7, np.int32)
            expected = "num_splits"
        if expected is None:
            _C.get_metadata(lengths, metadata, num_splits)
            check_plan(lengths, metadata, num_splits)
            again = np.full_like(metadata, -9), np.full_like(num_splits, -9)
            _C.get_metadata(lengths, *again)
            assert np.array_equal(again[0], metadata) and np.array_equal(again[1], num_splits), (
                f"case {case}: the host plan does not repeat"
            )
        else:
            with pytest.raises(ValueError) as error:
                _C.get_metadata(lengths, metadata, num_splits)
            assert named_argument(str(error.value)) == expected, f"case {case}: {error.value}"


def test_workspace_size_is_a_value_or_names_the_bad_argument():
    rng = np.random.default_rng(SEED + 3)
    extremes = (INT64_MAX, INT64_MAX // 2, -(2**63), 2**31, -(2**40), 0, 1, -1)
    names = {"batch", "s_q", "h_q", "num_sm_parts", "batch, s_q, h_q, num_sm_parts"}
    for case in range(HOST_CASES):
        args = [int(draw(rng, extremes)) if rng.integers(0, 2) else int(rng.integers(-2, 300)) for _ in range(4)]
        batch, s_q, h_q, parts = args
        try:
            nbytes = _C.decode_workspace_size(*args)
        except ValueError as error:
            assert named_argument(str(error)) in names, f"{args}: {error}"
            continue
        assert batch >= 0 and s_q >= 1 and h_q >= 1 and parts >= 1, f"{args} accepted"
        # The partials alone: (batch + parts) * s_q * h_q rows of 513 floats.
        assert nbytes >= (batch + parts) * s_q * h_q * (HEAD_DIM_V + 1) * 4, f"{args}: {nbytes} bytes"


# ---- GPU -------------------------------------------------------------------------------------


def random_case(rng):
    h_kv = int(rng.choice([1, 1, 2, 3]))
    return DecodeCase(
        b=int(rng.integers(1, 6)),
        s_q=int(rng.integers(1, 5)),
        s_k=int(rng.choice([20, 70, 200, 400])),
        h_q=h_kv * int(rng.choice([1, 2, 3, 8, 16, 32])),
        h_kv=h_kv,
        varlen=bool(rng.integers(0, 2)),
        causal=bool(rng.integers(0, 2)),
        dtype=str(rng.choice(["bfloat16", "float16"])),
        page=int(rng.choice([64, 64, 128])),
        zero_requests=int(rng.integers(0, 2)),
        seed=int(rng.integers(0, 2**31)),
    )


def padded(torch, tensor, dim, extra, fill):
    """The same values in a view whose dimension `dim` sits inside a wider buffer."""
    shape = list(tensor.shape)
    shape[dim] += extra
    wide = torch.full(shape, fill, dtype=tensor.dtype, device=tensor.device)
    index = [slice(None)] * tensor.dim()
    index[dim] = slice(0, tensor.shape[dim])
    wide[tuple(index)] = tensor
    return wide[tuple(index)]


def layout_variant(torch, inputs, rng):
    """Strided views of the inputs (inner dimensions contiguous), chosen at random."""
    q, k_cache, block_table = inputs.q, inputs.k_cache, inputs.block_table
    if rng.integers(0, 2):
        q = padded(torch, q, 3, int(rng.choice([8, 64])), math.nan)
    if rng.integers(0, 2):
        k_cache = padded(torch, k_cache, 2, 1, math.nan)  # a spare head between tokens
    if rng.integers(0, 2):
        block_table = padded(torch, block_table, 1, int(rng.integers(1, 5)), -1)
    return q, k_cache, block_table


def decode_with(inputs, q, k_cache, block_table, cache_seqlens, metadata, num_splits, **keywords):
    return flashmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V,
                                           metadata, num_splits, **keywords)


def torch_mutation(torch, args, rng):
    """One invalid change of valid public arguments: (new args, names that may be named, label)."""
    args = dict(args)
    q = args["q"]
    kind = int(rng.integers(0, 12))
    if kind == 0:
        args["q"] = q.float()
        return args, {"q"}, "q float32"
    if kind == 1:
        other = torch.float16 if q.dtype == torch.bfloat16 else torch.bfloat16
        args["k_cache"] = args["k_cache"].to(other)
        return args, {"k_cache"}, "k_cache other half type"
    if kind == 2:
        args["block_table"] = args["block_table"].long()
        return args, {"block_table"}, "block_table int64"
    if kind == 3:
        args["cache_seqlens"] = args["cache_seqlens"].cpu()
        return args, {"cache_seqlens"}, "cache_seqlens on the host"
    if kind == 4:
        args["q"] = q[..., :HEAD_DIM_V]
        return args, {"q"}, "q head_dim 512"
    if kind == 5:
        if q.shape[2] < 2:
            args["q"] = q[:, :0]
            return args, {"q"}, "q s_q 0"
        args["q"] = q.transpose(2, 3).contiguous().transpose(2, 3)
        return args, {"q"}, "q inner stride"
    if kind == 6:
        args["tile_scheduler_metadata"] = args["tile_scheduler_metadata"][:, :4]
        return args, {"tile_scheduler_metadata"}, "metadata 4 words"
    if kind == 7:
        args["num_splits"] = args["num_splits"][:-1]
        return args, {"num_splits"}, "num_splits short"
    if kind == 8:
        name = str(rng.choice(list(("q", "k_cache", "block_table", "cache_seqlens"))))
        args[name] = None
        return args, {name}, f"{name} None"
    if kind == 9:
        args["head_dim_v"] = int(rng.choice([256, 576, 0]))
        return args, {"head_dim_v"}, "head_dim_v"
    if kind == 10:
        args["softmax_scale"] = float(rng.choice([-0.5, math.inf, math.nan]))
        return args, {"softmax_scale"}, "softmax_scale"
    args["k_cache"] = args["k_cache"][:, :32]  # a page of 32 tokens
    return args, {"k_cache"}, "k_cache page 32"


def corrupt(torch, inputs, metadata, num_splits, rng):
    """Device values validating mode must reject: (block_table, cache_seqlens, metadata, num_splits,
    expected message pattern, label)."""
    table, seqlens = inputs.block_table.clone(), inputs.cache_seqlens.clone()
    metadata, num_splits = metadata.clone(), num_splits.clone()
    lengths, page = inputs.lengths, inputs.k_cache.shape[1]
    used = [(i, math.ceil(length / page)) for i, length in enumerate(lengths) if length > 0]
    num_blocks = inputs.k_cache.shape[0]
    kind = int(rng.integers(0, 4)) if used else 3
    if kind == 0:
        i, pages = used[int(rng.integers(0, len(used)))]
        j = int(rng.integers(0, pages))
        value = int(rng.choice([-1, num_blocks, num_blocks + 99, INT32_MAX, -(2**31)]))
        table[i, j] = value
        expected = f"block_table[{i}][{j}] = {value} is outside k_cache's {num_blocks} blocks"
        return table, seqlens, metadata, num_splits, expected, "block id"
    if kind == 1:
        i = int(rng.integers(0, len(lengths)))
        value = int(rng.choice([-1, -(2**31)]))
        seqlens[i] = value
        return table, seqlens, metadata, num_splits, f"cache_seqlens[{i}] = {value} is negative", "negative length"
    if kind == 2:
        i = int(rng.integers(0, len(lengths)))
        capacity = table.shape[1] * page
        seqlens[i] = capacity + 1
        expected = (f"cache_seqlens[{i}] = {capacity + 1} does not fit its block_table row: "
                    f"{table.shape[1]} blocks of {page} tokens hold {capacity}")
        return table, seqlens, metadata, num_splits, expected, "length beyond the row"
    i = int(rng.integers(0, num_splits.shape[0]))
    num_splits[i] += int(rng.choice([1, -1, 1000]))
    return table, seqlens, metadata, num_splits, None, "num_splits corrupted"


@pytest.mark.gpu
def test_gpu_results_match_the_oracle_or_errors_are_clean(torch_cuda):
    torch = torch_cuda
    rng = np.random.default_rng(SEED + 4)
    has_validate = validate_supported()
    side = torch.cuda.Stream()
    counts = {"valid": 0, "broken": 0, "corrupted": 0}
    for case_number in range(GPU_CASES):
        case = random_case(rng)
        inputs = make_torch_inputs(torch, case)
        backend = str(rng.choice(["reference", "auto"]))
        if rng.integers(0, 3) == 0:
            parts = int(rng.integers(1, 200))
            metadata, num_splits = host_plan_on_device(torch, inputs.cache_seqlens, parts)
        else:
            metadata, num_splits = flashmla.get_mla_metadata(inputs.cache_seqlens, case.rows_per_kv_head, case.h_kv)
        where = f"case {case_number} (seed {SEED}): {case.id}/{backend}"
        kind = int(rng.integers(0, 10))
        if kind < 3:
            counts["valid"] += 1
            q, k_cache, block_table = layout_variant(torch, inputs, rng)
            keywords = dict(causal=case.causal, backend=backend)
            if has_validate and rng.integers(0, 2):
                keywords["validate"] = True
            scale = None if rng.integers(0, 2) else float(rng.choice([0.03, 0.2]))
            if scale is not None:
                keywords["softmax_scale"] = scale
            if rng.integers(0, 2):
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    out, lse = decode_with(inputs, q, k_cache, block_table, inputs.cache_seqlens,
                                           metadata, num_splits, **keywords)
                torch.cuda.current_stream().wait_stream(side)
            else:
                out, lse = decode_with(inputs, q, k_cache, block_table, inputs.cache_seqlens,
                                       metadata, num_splits, **keywords)
            check_against_reference(torch, inputs, out, lse, case.causal, scale, where)
        elif kind < 8 or not has_validate:
            counts["broken"] += 1
            args = dict(q=inputs.q, k_cache=inputs.k_cache, block_table=inputs.block_table,
                        cache_seqlens=inputs.cache_seqlens, head_dim_v=HEAD_DIM_V,
                        tile_scheduler_metadata=metadata, num_splits=num_splits)
            args, names, label = torch_mutation(torch, args, rng)
            with pytest.raises((TypeError, ValueError)) as error:
                flashmla.flash_mla_with_kvcache(**args, causal=case.causal, backend=backend)
            assert named_argument(str(error.value)) in names, f"{where}: {label} gave {error.value!r}"
        else:
            counts["corrupted"] += 1
            table, seqlens, bad_metadata, bad_splits, expected, label = corrupt(torch, inputs, metadata, num_splits, rng)
            with pytest.raises(ValueError) as error:
                flashmla.flash_mla_with_kvcache(inputs.q, inputs.k_cache, table, seqlens, HEAD_DIM_V,
                                                bad_metadata, bad_splits, causal=case.causal,
                                                backend=backend, validate=True)
            message = str(error.value)
            if expected is None:
                assert message.startswith("num_splits[") and message.endswith("lengths change"), f"{where}: {message}"
            else:
                assert message == expected, f"{where}: {label}: {message!r}"
        context_is_healthy(torch)
    assert counts["valid"] > 0 and counts["broken"] > 0
