"""Validating mode from Python (flash_mla_with_kvcache(..., validate=True)): the same bits as the
trusted path on valid input; a ValueError naming the first bad length, block id or plan word
otherwise, with the CUDA context intact; refused inside CUDA graph capture without breaking the
capture. Skipped when the keyword does not exist yet or there is no GPU.
"""

from __future__ import annotations

import math
import re

import pytest

import flashmla
from mla_testing import HEAD_DIM_V, DecodeCase, make_torch_inputs
from reliability_testing import (
    CAPTURE_REFUSAL,
    STALE_PLAN,
    check_against_reference,
    context_is_healthy,
    host_plan_on_device,
    validate_supported,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not validate_supported(), reason="flash_mla_with_kvcache has no validate= keyword"),
]

BACKENDS = ("reference", "auto")
INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)

# Requests of 300, 0, 128 and 517 tokens in pages of 64: 5, 0, 2 and 9 pages.
LENGTHS = (300, 0, 128, 517)
CASE = DecodeCase(4, 2, 0, 32, 2, False, True, "bfloat16", seed=5, lengths=LENGTHS)


class Problem:
    def __init__(self, torch, case=CASE):
        self.torch = torch
        self.case = case
        self.inputs = make_torch_inputs(torch, case)
        self.metadata, self.num_splits = flashmla.get_mla_metadata(
            self.inputs.cache_seqlens, case.rows_per_kv_head, case.h_kv
        )

    def run(self, backend, block_table=None, cache_seqlens=None, metadata=None, num_splits=None, **keywords):
        i = self.inputs
        return flashmla.flash_mla_with_kvcache(
            i.q, i.k_cache, i.block_table if block_table is None else block_table,
            i.cache_seqlens if cache_seqlens is None else cache_seqlens, HEAD_DIM_V,
            self.metadata if metadata is None else metadata,
            self.num_splits if num_splits is None else num_splits,
            causal=self.case.causal, backend=backend, **keywords,
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_valid_input_gives_the_trusted_paths_bits(torch_cuda, backend):
    torch = torch_cuda
    problem = Problem(torch)
    trusted = problem.run(backend)
    checked = problem.run(backend, validate=True)
    assert torch.equal(trusted[0], checked[0]) and torch.equal(trusted[1], checked[1])
    check_against_reference(torch, problem.inputs, *checked, CASE.causal, label="validated")
    # The host plan is the device plan, so it passes too.
    metadata, num_splits = host_plan_on_device(torch, problem.inputs.cache_seqlens, problem.metadata.shape[0])
    again = problem.run(backend, metadata=metadata, num_splits=num_splits, validate=True)
    assert torch.equal(again[0], checked[0]) and torch.equal(again[1], checked[1])


def block_case(request, column, value=None):
    """Block id `value` (default: the number of blocks) at a used entry."""

    def apply(problem):
        table = problem.inputs.block_table.clone()
        blocks = problem.inputs.k_cache.shape[0]
        value_ = blocks if value is None else value
        table[request, column] = value_
        return dict(block_table=table), (
            f"block_table[{request}][{column}] = {value_} is outside k_cache's {blocks} blocks"
        )

    return apply


def length_case(request, value):
    def apply(problem):
        lengths = problem.inputs.cache_seqlens.clone()
        lengths[request] = value
        at = f"cache_seqlens[{request}] = {value}"
        if value < 0:
            return dict(cache_seqlens=lengths), f"{at} is negative"
        columns, page = problem.inputs.block_table.shape[1], problem.inputs.k_cache.shape[1]
        return dict(cache_seqlens=lengths), (
            f"{at} does not fit its block_table row: {columns} blocks of {page} tokens hold {columns * page}"
        )

    return apply


def stale_plan(problem):
    """Request 0 grows from 300 to 520 tokens after planning: its row of 9 pages still holds it
    (every entry of the test layout is a real block), but the plan no longer covers it."""
    lengths = problem.inputs.cache_seqlens.clone()
    lengths[0] = 520
    return dict(cache_seqlens=lengths), None


def corrupt_split(problem):
    splits = problem.num_splits.clone()
    was = int(splits[2])
    splits[2] = was + 1000
    return dict(num_splits=splits), f"num_splits[2] = {was + 1000}, expected {was}{STALE_PLAN}"


CORRUPTIONS = {
    "block-is-num-blocks": block_case(3, 8),
    "block-minus-one": block_case(0, 0, -1),
    "block-int32-max": block_case(2, 1, INT32_MAX),
    "block-int32-max-minus-one": block_case(3, 4, INT32_MAX - 1),
    "block-int32-min": block_case(0, 4, INT32_MIN),
    "length-negative": length_case(2, -1),
    "length-int32-min": length_case(1, INT32_MIN),
    "length-past-row": length_case(0, 9 * 64 + 1),
    "length-int32-max": length_case(3, INT32_MAX),
    "stale-plan": stale_plan,
    "num-splits": corrupt_split,
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_bad_values_are_named(torch_cuda, name, backend):
    torch = torch_cuda
    problem = Problem(torch)
    overrides, expected = CORRUPTIONS[name](problem)
    with pytest.raises(ValueError) as error:
        problem.run(backend, validate=True, **overrides)
    message = str(error.value)
    if expected is None:
        assert message.startswith(("tile_scheduler_metadata[", "num_splits[")), message
        assert message.endswith(STALE_PLAN), message
    else:
        assert message == expected
    context_is_healthy(torch)
    # The unbroken inputs still run, validated.
    out, lse = problem.run(backend, validate=True)
    check_against_reference(torch, problem.inputs, out, lse, CASE.causal, label=f"after {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unused_entries_may_hold_anything(torch_cuda, backend):
    """Block-table entries past a request's pages are never read, validating or not."""
    torch = torch_cuda
    problem = Problem(torch)
    table = problem.inputs.block_table.clone()
    junk = (-1, INT32_MAX, INT32_MIN, problem.inputs.k_cache.shape[0])
    for request, length in enumerate(LENGTHS):
        pages = math.ceil(length / 64)
        for column in range(pages, table.shape[1]):
            table[request, column] = junk[(request + column) % len(junk)]
    for validate in (False, True):
        out, lse = problem.run(backend, block_table=table, validate=validate)
        check_against_reference(torch, problem.inputs, out, lse, CASE.causal, label=f"validate={validate}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_refused_inside_graph_capture(torch_cuda, backend):
    torch = torch_cuda
    problem = Problem(torch)
    problem.run(backend)  # warm-up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(ValueError, match="^" + re.escape(CAPTURE_REFUSAL) + "$"):
        with torch.cuda.graph(graph):
            problem.run(backend, validate=True)
    context_is_healthy(torch)
    # A capture of the trusted path still works and replays correctly.
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = problem.run(backend)
    out.fill_(math.nan)
    graph.replay()
    torch.cuda.synchronize()
    check_against_reference(torch, problem.inputs, out, lse, CASE.causal, label="replay")


@pytest.mark.parametrize("backend", BACKENDS)
def test_validating_a_large_batch(torch_cuda, backend):
    """4096 requests: the check scales, and the first of many faults is the one reported."""
    torch = torch_cuda
    case = DecodeCase(4096, 1, 64, 16, 1, True, False, "bfloat16", seed=9)
    problem = Problem(torch, case)
    out, lse = problem.run(backend, validate=True)
    check_against_reference(torch, problem.inputs, out, lse, False, label="b=4096")
    table = problem.inputs.block_table.clone()
    lengths = problem.inputs.lengths
    bad = [r for r in range(100, 4096, 37) if lengths[r] > 0]
    for r in bad:
        table[r, 0] = -1 - r
    with pytest.raises(ValueError) as error:
        problem.run(backend, block_table=table, validate=True)
    first = bad[0]
    assert str(error.value) == (
        f"block_table[{first}][0] = {-1 - first} is outside k_cache's {problem.inputs.k_cache.shape[0]} blocks"
    )
    context_is_healthy(torch)

