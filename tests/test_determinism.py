"""Bitwise determinism of decode: the split-KV plan fixes split boundaries and merge order, so the
same inputs give the same bits across repeated runs, across streams (the framework's current one,
a side stream, an explicit stream= argument, threads with their own streams), across the host
and the device metadata paths, with the caller's or the library's workspace, and with validating
mode on or off.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

import flashmla
from flashmla import _C
from mla_testing import HEAD_DIM_V, DecodeCase, make_torch_inputs
from reliability_testing import (
    check_against_reference,
    decode,
    host_plan,
    host_plan_on_device,
    validate_supported,
)

pytestmark = pytest.mark.gpu

BACKENDS = ("reference", "auto")
BACKEND_IDS = {"reference": _C.BACKEND_REFERENCE, "auto": _C.BACKEND_AUTO}
REPEATS = 10
THREADS = 4

# Long, uneven requests at h_q = 128 and s_q = 2 with the causal mask: many parts, so requests are
# split and combined, plus an empty request.
CASE = DecodeCase(6, 2, 0, 128, 1, False, True, "bfloat16", seed=77,
                  lengths=(4096, 1031, 0, 2500, 64, 3001))


def plan(inputs, case=CASE):
    return flashmla.get_mla_metadata(inputs.cache_seqlens, case.rows_per_kv_head, case.h_kv)


def assert_same_bits(torch, first, second, what):
    # As raw bits: torch.equal would call two NaNs different and -0.0 equal to 0.0.
    assert torch.equal(first[0].view(torch.int16), second[0].view(torch.int16)), f"out differs: {what}"
    assert torch.equal(first[1].view(torch.int32), second[1].view(torch.int32)), f"lse differs: {what}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_runs(torch_cuda, backend):
    torch = torch_cuda
    inputs = make_torch_inputs(torch, CASE)
    metadata, num_splits = plan(inputs)
    first = decode(inputs, metadata, num_splits, causal=True, backend=backend)
    check_against_reference(torch, inputs, *first, True, label="first run")
    for n in range(REPEATS):
        again = decode(inputs, metadata, num_splits, causal=True, backend=backend)
        assert_same_bits(torch, first, again, f"run {n + 1}")
    # A fresh plan of the same lengths is the same plan.
    metadata_2, num_splits_2 = plan(inputs)
    assert torch.equal(metadata, metadata_2) and torch.equal(num_splits, num_splits_2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_across_streams(torch_cuda, backend):
    torch = torch_cuda
    inputs = make_torch_inputs(torch, CASE)
    metadata, num_splits = plan(inputs)
    first = decode(inputs, metadata, num_splits, causal=True, backend=backend)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the side stream as torch's current stream
        on_side = decode(inputs, metadata, num_splits, causal=True, backend=backend)
    explicit = decode(inputs, metadata, num_splits, causal=True, backend=backend, stream=side)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert_same_bits(torch, first, on_side, "current stream vs side stream")
    assert_same_bits(torch, first, explicit, "current stream vs stream=")

    # A plan made on the side stream is the same plan.
    with torch.cuda.stream(side):
        side_metadata, side_splits = plan(inputs)
    torch.cuda.current_stream().wait_stream(side)
    assert torch.equal(metadata, side_metadata) and torch.equal(num_splits, side_splits)


@pytest.mark.parametrize("backend", BACKENDS)
def test_host_and_device_plans(torch_cuda, backend):
    torch = torch_cuda
    inputs = make_torch_inputs(torch, CASE)
    metadata, num_splits = plan(inputs)
    host_metadata, host_splits = host_plan(inputs.lengths, metadata.shape[0])
    assert np.array_equal(host_metadata, metadata.cpu().numpy())
    assert np.array_equal(host_splits, num_splits.cpu().numpy())
    from_device = decode(inputs, metadata, num_splits, causal=True, backend=backend)
    uploaded = host_plan_on_device(torch, inputs.cache_seqlens, metadata.shape[0])
    from_host = decode(inputs, *uploaded, causal=True, backend=backend)
    assert_same_bits(torch, from_device, from_host, "device plan vs host plan")


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_with_their_own_streams(torch_cuda, backend):
    """Python threads (the binding releases the GIL) decoding at once on their own streams."""
    torch = torch_cuda
    inputs = make_torch_inputs(torch, CASE)
    metadata, num_splits = plan(inputs)
    expected = decode(inputs, metadata, num_splits, causal=True, backend=backend)
    torch.cuda.synchronize()
    results, errors = [None] * THREADS, []
    start = threading.Barrier(THREADS)

    def work(index):
        try:
            stream = torch.cuda.Stream()
            start.wait()
            with torch.cuda.stream(stream):
                outputs = [decode(inputs, metadata, num_splits, causal=True, backend=backend)
                           for _ in range(REPEATS)]
            stream.synchronize()
            results[index] = outputs
        except Exception as error:  # reported by the main thread
            errors.append(f"thread {index}: {error!r}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for index, outputs in enumerate(results):
        for n, output in enumerate(outputs):
            assert_same_bits(torch, expected, output, f"thread {index}, run {n}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_library_and_caller_workspace(torch_cuda, backend):
    """The raw binding with a workspace from torch's pool, and with none (libflashmla allocates
    it stream-ordered), each into NaN-poisoned outputs."""
    torch = torch_cuda
    inputs = make_torch_inputs(torch, CASE)
    metadata, num_splits = plan(inputs)
    q = inputs.q
    nbytes = _C.decode_workspace_size(q.shape[0], q.shape[1], q.shape[2], metadata.shape[0])
    results = []
    for workspace in (torch.full((nbytes,), 0xFF, dtype=torch.uint8, device="cuda"), None):
        out = torch.full((*q.shape[:3], HEAD_DIM_V), math.nan, dtype=q.dtype, device="cuda")
        lse = torch.full((q.shape[0], q.shape[2], q.shape[1]), math.nan, device="cuda")
        _C.decode(q=q, k_cache=inputs.k_cache, block_table=inputs.block_table,
                  cache_seqlens=inputs.cache_seqlens, tile_scheduler_metadata=metadata,
                  num_splits=num_splits, out=out, lse=lse, head_dim_v=HEAD_DIM_V, softmax_scale=0.0,
                  causal=True, workspace=workspace, backend=BACKEND_IDS[backend],
                  stream=torch.cuda.current_stream().cuda_stream)
        results.append((out, lse))
    torch.cuda.synchronize()
    check_against_reference(torch, inputs, *results[0], True, label="caller workspace")
    assert_same_bits(torch, results[0], results[1], "caller workspace vs library workspace")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.skipif(not validate_supported(), reason="flash_mla_with_kvcache has no validate= keyword")
def test_validating_mode_changes_no_bit(torch_cuda, backend):
    torch = torch_cuda
    inputs = make_torch_inputs(torch, CASE)
    metadata, num_splits = plan(inputs)
    trusted = decode(inputs, metadata, num_splits, causal=True, backend=backend)
    checked = decode(inputs, metadata, num_splits, causal=True, backend=backend, validate=True)
    assert_same_bits(torch, trusted, checked, "validate off vs on")


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_inputs_do_not_leak_between_calls(torch_cuda, backend):
    """A call in between on other inputs (other shapes, other plan) changes nothing."""
    torch = torch_cuda
    inputs = make_torch_inputs(torch, CASE)
    metadata, num_splits = plan(inputs)
    first = decode(inputs, metadata, num_splits, causal=True, backend=backend)
    other_case = DecodeCase(3, 1, 700, 16, 1, True, False, "float16", seed=78)
    other = make_torch_inputs(torch, other_case)
    decode(other, *plan(other, other_case), backend=backend)
    again = decode(inputs, metadata, num_splits, causal=True, backend=backend)
    assert_same_bits(torch, first, again, "after another call")
