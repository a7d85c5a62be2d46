"""The split-KV plan (tile-scheduler metadata).

Host tests (no GPU): the host scheduler, reached through flashmla._C.get_metadata with NumPy
arrays, must satisfy the invariants of src/scheduler/metadata.h. GPU tests: the device scheduler
must be bit-identical to the host one, and get_mla_metadata must hand back that plan.
"""

import numpy as np
import pytest

import flashmla
from flashmla import _C
from mla_testing import METADATA_WORDS, check_plan

# Filled into outputs before each call: every word the plan defines must be overwritten.
POISON = -7
HUGE_LENGTH = 1 << 24


def length_sets():
    rng = np.random.default_rng(2024)
    mixed = rng.integers(0, 5000, size=37)
    mixed[rng.choice(37, size=6, replace=False)] = 0
    huge = rng.integers(1, 300, size=20)
    huge[11] = HUGE_LENGTH
    return {
        "single": [4096],
        "single-short": [1],
        "single-empty": [0],
        "all-empty": [0] * 9,
        "fixed-b64-4096": [4096] * 64,
        "mixed-with-zeros": mixed.tolist(),
        "one-huge": huge.tolist(),
        "tile-boundaries": [63, 64, 65, 127, 128, 129, 0, 640],
        "varlen-b128": np.maximum(rng.normal(8192, 4096, size=128), 1).astype(int).tolist(),
    }


LENGTH_SETS = length_sets()
NUM_SM_PARTS = [1, 2, 7, 66, 132]


def host_plan(lengths, num_sm_parts):
    seqlens = np.asarray(lengths, dtype=np.int32)
    metadata = np.full((num_sm_parts, METADATA_WORDS), POISON, dtype=np.int32)
    num_splits = np.full(len(lengths) + 1, POISON, dtype=np.int32)
    _C.get_metadata(seqlens, metadata, num_splits)
    return metadata, num_splits


@pytest.mark.parametrize("num_sm_parts", NUM_SM_PARTS)
@pytest.mark.parametrize("name", sorted(LENGTH_SETS))
def test_host_plan_invariants(name, num_sm_parts):
    lengths = LENGTH_SETS[name]
    metadata, num_splits = host_plan(lengths, num_sm_parts)
    check_plan(lengths, metadata, num_splits)


def test_host_plan_is_deterministic():
    lengths = LENGTH_SETS["mixed-with-zeros"]
    first = host_plan(lengths, 66)
    second = host_plan(lengths, 66)
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_host_plan_longest_int32_length():
    # The largest length cache_seqlens can hold: tile counts must not overflow int32 arithmetic.
    lengths = [np.iinfo(np.int32).max, 5, 0]
    metadata, num_splits = host_plan(lengths, 132)
    check_plan(lengths, metadata, num_splits)


def test_host_plan_total_tiles_saturates_at_int32_max():
    # 70 of the longest lengths hold more than 2^31 tiles together; word 5 stops at INT32_MAX.
    lengths = [np.iinfo(np.int32).max] * 70
    metadata, num_splits = host_plan(lengths, 132)
    check_plan(lengths, metadata, num_splits)
    assert metadata[0, 5] == np.iinfo(np.int32).max


def test_host_plan_rejects_metadata_rows_with_gaps():
    lengths = [100, 200]
    wide = np.full((4, 2 * METADATA_WORDS), POISON, dtype=np.int32)
    with pytest.raises(ValueError, match=r"^tile_scheduler_metadata: rows must be contiguous"):
        _C.get_metadata(np.asarray(lengths, np.int32), wide[:, :METADATA_WORDS], np.zeros(3, np.int32))


def test_host_plan_reads_a_sliced_input():
    # A view that starts inside a larger buffer: the plan must read from the view's start.
    buffer = np.asarray([999, 100, 0, 5000, 64], dtype=np.int32)
    lengths = buffer[1:]
    metadata = np.full((7, METADATA_WORDS), POISON, dtype=np.int32)
    num_splits = np.full(5, POISON, dtype=np.int32)
    _C.get_metadata(lengths, metadata, num_splits)
    check_plan(lengths.tolist(), metadata, num_splits)
    expected = host_plan(lengths.tolist(), 7)
    assert np.array_equal(metadata, expected[0]) and np.array_equal(num_splits, expected[1])


# ---- GPU -------------------------------------------------------------------------------------------

# (s_q * h_q / h_kv, h_kv) of DeepSeek-like and tensor-parallel decodes.
HEAD_CONFIGS = [(128, 1), (256, 1), (16, 1), (1, 1), (64, 2), (24, 8)]


def device_plan(torch, lengths, num_sm_parts, stream=0):
    seqlens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    metadata = torch.full((num_sm_parts, METADATA_WORDS), POISON, dtype=torch.int32, device="cuda")
    num_splits = torch.full((len(lengths) + 1,), POISON, dtype=torch.int32, device="cuda")
    _C.get_metadata(seqlens, metadata, num_splits, stream)
    torch.cuda.synchronize()
    return metadata.cpu().numpy(), num_splits.cpu().numpy()


@pytest.mark.gpu
@pytest.mark.parametrize("rows, h_kv", HEAD_CONFIGS)
@pytest.mark.parametrize("name", sorted(LENGTH_SETS))
def test_device_plan_equals_host_plan(torch_cuda, name, rows, h_kv):
    lengths = LENGTH_SETS[name]
    num_sm_parts = _C.get_num_sm_parts(0, rows, h_kv)
    assert num_sm_parts >= 1
    on_device = device_plan(torch_cuda, lengths, num_sm_parts)
    on_host = host_plan(lengths, num_sm_parts)
    assert np.array_equal(on_device[0], on_host[0]), "metadata differs between device and host"
    assert np.array_equal(on_device[1], on_host[1]), "num_splits differs between device and host"


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 33, 1000, 5000])
def test_device_plan_equals_host_plan_large_batches(torch_cuda, batch):
    rng = np.random.default_rng(batch)
    lengths = rng.integers(0, 20000, size=batch)
    lengths[rng.choice(batch, size=batch // 10, replace=False)] = 0
    lengths[0] = HUGE_LENGTH
    lengths = lengths.tolist()
    num_sm_parts = _C.get_num_sm_parts(0, 128, 1)
    on_device = device_plan(torch_cuda, lengths, num_sm_parts)
    on_host = host_plan(lengths, num_sm_parts)
    check_plan(lengths, *on_host)
    assert np.array_equal(on_device[0], on_host[0]) and np.array_equal(on_device[1], on_host[1])


@pytest.mark.gpu
def test_num_sm_parts_is_positive_and_shrinks_with_work(torch_cuda):
    few_rows = _C.get_num_sm_parts(0, 16, 1)
    many_rows = _C.get_num_sm_parts(0, 512, 1)
    many_heads = _C.get_num_sm_parts(0, 16, 8)
    assert few_rows >= many_rows >= 1
    assert few_rows >= many_heads >= 1
    assert few_rows <= torch_cuda.cuda.get_device_properties(0).multi_processor_count


@pytest.mark.gpu
@pytest.mark.parametrize("rows, h_kv", [(128, 1), (64, 2)])
def test_get_mla_metadata_returns_the_plan(torch_cuda, rows, h_kv):
    torch = torch_cuda
    lengths = LENGTH_SETS["mixed-with-zeros"]
    seqlens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    metadata, num_splits = flashmla.get_mla_metadata(seqlens, rows, h_kv)
    num_sm_parts = _C.get_num_sm_parts(0, rows, h_kv)
    assert isinstance(metadata, torch.Tensor) and isinstance(num_splits, torch.Tensor)
    assert metadata.dtype == torch.int32 and num_splits.dtype == torch.int32
    assert metadata.device == seqlens.device and num_splits.device == seqlens.device
    assert tuple(metadata.shape) == (num_sm_parts, METADATA_WORDS)
    assert tuple(num_splits.shape) == (len(lengths) + 1,)
    on_host = host_plan(lengths, num_sm_parts)
    assert np.array_equal(metadata.cpu().numpy(), on_host[0])
    assert np.array_equal(num_splits.cpu().numpy(), on_host[1])


@pytest.mark.gpu
def test_get_mla_metadata_on_a_side_stream(torch_cuda):
    torch = torch_cuda
    lengths = LENGTH_SETS["varlen-b128"]
    seqlens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    metadata, num_splits = flashmla.get_mla_metadata(seqlens, 128, 1, stream=side)
    torch.cuda.current_stream().wait_stream(side)
    on_host = host_plan(lengths, metadata.shape[0])
    assert np.array_equal(metadata.cpu().numpy(), on_host[0])
    assert np.array_equal(num_splits.cpu().numpy(), on_host[1])
