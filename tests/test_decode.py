"""Decode correctness with PyTorch arrays against a float64 oracle (mla_testing.reference_torch).

Every run: random data, NaN in every cache position no request owns, randomly permuted block
tables. Each case runs twice: through flash_mla_with_kvcache, and through the raw binding with
NaN-poisoned out, lse and workspace; the two results must be bit-identical (the plan fixes split
boundaries and merge order, and nothing may depend on what the buffers held before).
"""

import itertools
import math
import os

import pytest

import flashmla
from flashmla import _C
from mla_testing import (
    HEAD_DIM_V,
    SHARP_DATA_SCALE,
    DecodeCase,
    check_decode,
    make_torch_inputs,
    record_accuracy,
    reference_torch,
)

pytestmark = pytest.mark.gpu

BATCHES = (1, 2, 6, 64)
S_Q = (1, 2, 4)
S_K = (20, 140, 4096)
H_Q = (1, 3, 9, 63, 64, 126, 128)
H_KV = (1, 2, 3, 8)
BACKENDS = ("reference", "auto")
# A stride coprime with the number of (b, s_k, varlen) combinations walks through all of them.
COMBO_STRIDE = 7
FP16_EVERY = 3  # fp16 runs on every third case of the grid (bf16 on all)


def grid_cases():
    """FlashMLA's test grid, pruned: every (h_q, h_kv) pair x s_q x causal, each paired with a
    rotating (b, s_k, varlen) so that every value of every axis appears, plus the DeepSeek-V3
    shapes at b=64, s_k=4096, h_q=128."""
    head_pairs = [(h_q, h_kv) for h_q in H_Q for h_kv in H_KV if h_q % h_kv == 0]
    combos = list(itertools.product(BATCHES, S_K, (False, True)))
    cases = []
    for index, ((h_q, h_kv), s_q, causal) in enumerate(itertools.product(head_pairs, S_Q, (False, True))):
        b, s_k, varlen = combos[(index * COMBO_STRIDE) % len(combos)]
        zero_requests = 1 if varlen and b >= 6 and index % 2 == 0 else 0
        dtypes = ["bfloat16"] + (["float16"] if index % FP16_EVERY == 0 else [])
        for dtype in dtypes:
            cases.append(DecodeCase(b, s_q, s_k, h_q, h_kv, varlen, causal, dtype,
                                    zero_requests=zero_requests, seed=index))
    cases += [
        DecodeCase(64, 1, 4096, 128, 1, True, False, "bfloat16", zero_requests=2, seed=1001),
        DecodeCase(64, 2, 4096, 128, 1, False, True, "bfloat16", seed=1002),
        DecodeCase(64, 1, 4096, 128, 1, True, True, "float16", seed=1003),
    ]
    # Scores that matter (mla_testing.SHARP_DATA_SCALE): grouped, odd and many heads, causal s_q=4,
    # both schedules of the SM90 kernel (h_q=128 with s_q=1 and s_q=2), both dtypes.
    sharp = dict(data_scale=SHARP_DATA_SCALE)
    cases += [
        DecodeCase(6, 4, 140, 9, 3, True, True, "bfloat16", zero_requests=1, seed=2001, **sharp),
        DecodeCase(2, 1, 4096, 64, 8, False, False, "bfloat16", seed=2002, **sharp),
        DecodeCase(2, 2, 4096, 128, 1, True, True, "bfloat16", seed=2003, **sharp),
        DecodeCase(64, 1, 4096, 128, 1, True, False, "float16", zero_requests=2, seed=2004, **sharp),
        DecodeCase(1, 4, 20, 63, 1, False, True, "float16", seed=2005, **sharp),
        DecodeCase(6, 2, 140, 126, 2, True, False, "bfloat16", zero_requests=1, seed=2006, **sharp),
        DecodeCase(2, 2, 140, 128, 1, False, False, "float16", page=128, seed=2007, **sharp),
    ]
    return cases


GRID = grid_cases()


def _covers_every_axis_value():
    seen = {axis: {getattr(case, axis) for case in GRID} for axis in ("b", "s_q", "s_k", "h_q", "h_kv", "varlen", "causal", "dtype")}
    assert seen["b"] == set(BATCHES) and seen["s_q"] == set(S_Q) and seen["s_k"] == set(S_K)
    assert seen["h_q"] == set(H_Q) and seen["h_kv"] == set(H_KV)
    assert seen["varlen"] == {False, True} and seen["causal"] == {False, True}
    assert seen["dtype"] == {"bfloat16", "float16"}
    assert any(c.b == 64 and c.s_k == 4096 and c.h_q == 128 for c in GRID)


_covers_every_axis_value()


class Prepared:
    """Inputs, plan and oracle of one case; the grid runs each case once per backend."""

    def __init__(self, torch, case: DecodeCase):
        self.case = case
        self.inputs = make_torch_inputs(torch, case)
        self.metadata, self.num_splits = flashmla.get_mla_metadata(
            self.inputs.cache_seqlens, case.rows_per_kv_head, case.h_kv
        )
        ref_out, ref_lse = reference_torch(
            torch, self.inputs.q, self.inputs.k_cache, self.inputs.block_table,
            self.inputs.lengths, case.causal,
        )
        self.ref_out = ref_out.cpu().numpy()
        self.ref_lse = ref_lse.cpu().numpy()


_last_prepared = {}


def prepared(torch, case):
    # One entry: parameters are ordered case-major, so each case is built once, and large
    # caches do not pile up.
    if _last_prepared.get("case") != case:
        _last_prepared.clear()
        _last_prepared["data"] = Prepared(torch, case)
        _last_prepared["case"] = case
    return _last_prepared["data"]


def to_numpy(tensor):
    return tensor.double().cpu().numpy()


def run_public(data, backend, **kwargs):
    i = data.inputs
    return flashmla.flash_mla_with_kvcache(
        i.q, i.k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V, data.metadata,
        data.num_splits, causal=data.case.causal, backend=backend, **kwargs,
    )


BACKEND_IDS = {"auto": _C.BACKEND_AUTO, "reference": _C.BACKEND_REFERENCE, "sm90": _C.BACKEND_SM90}
NAN_BYTE = 0xFF  # 0xFFFFFFFF is a float32 NaN


def run_raw_poisoned(torch, data, backend):
    """The raw binding with every output and the workspace full of NaN beforehand."""
    i, case = data.inputs, data.case
    out = torch.full((case.b, case.s_q, case.h_q, HEAD_DIM_V), math.nan, dtype=i.q.dtype, device="cuda")
    lse = torch.full((case.b, case.h_q, case.s_q), math.nan, dtype=torch.float32, device="cuda")
    nbytes = _C.decode_workspace_size(case.b, case.s_q, case.h_q, data.metadata.shape[0])
    workspace = torch.full((nbytes,), NAN_BYTE, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    _C.decode(i.q, i.k_cache, i.block_table, i.cache_seqlens, data.metadata, data.num_splits,
              out, lse, HEAD_DIM_V, 0.0, case.causal, workspace, BACKEND_IDS[backend], stream)
    return out, lse


def check_against_oracle(torch, data, out, lse, backend):
    case = data.case
    assert isinstance(out, torch.Tensor) and isinstance(lse, torch.Tensor)
    assert out.dtype == data.inputs.q.dtype and lse.dtype == torch.float32
    assert out.device == data.inputs.q.device and lse.device == data.inputs.q.device
    assert tuple(out.shape) == (case.b, case.s_q, case.h_q, HEAD_DIM_V)
    assert tuple(lse.shape) == (case.b, case.h_q, case.s_q)
    rel = check_decode(to_numpy(out), to_numpy(lse), data.ref_out, data.ref_lse, f"{case.id}/{backend}",
                       out_tol=case.out_tolerance)
    record_accuracy((case.dtype, backend), rel)
    return rel


def check_case(torch, case, backend):
    data = prepared(torch, case)
    out, lse = run_public(data, backend)
    check_against_oracle(torch, data, out, lse, backend)
    raw_out, raw_lse = run_raw_poisoned(torch, data, backend)
    assert torch.equal(raw_out, out), "out differs between runs (poisoned buffers or nondeterminism)"
    assert torch.equal(raw_lse, lse), "lse differs between runs (poisoned buffers or nondeterminism)"


GRID_PARAMS = [pytest.param(case, backend, id=f"{case.id}-{backend}") for case in GRID for backend in BACKENDS]


@pytest.mark.parametrize("case, backend", GRID_PARAMS)
def test_grid_matches_reference(torch_cuda, case, backend):
    check_case(torch_cuda, case, backend)


SPECIAL_CASES = [
    # Zero-length requests among others, at the start, the end, and all of them.
    DecodeCase(6, 1, 0, 128, 1, False, False, "bfloat16", lengths=(0, 100, 0, 4096, 0, 1)),
    DecodeCase(6, 2, 0, 64, 1, False, True, "bfloat16", lengths=(4096, 0, 0, 0, 0, 0)),
    DecodeCase(5, 1, 0, 16, 1, False, False, "float16", lengths=(0, 0, 0, 0, 0)),
    # Causal rows that see no key (L < s_q) next to rows that do.
    DecodeCase(5, 4, 0, 32, 1, False, True, "bfloat16", lengths=(1, 2, 3, 0, 70)),
    # Lengths on and around tile / page boundaries.
    DecodeCase(8, 1, 0, 128, 1, False, False, "bfloat16", lengths=(63, 64, 65, 127, 128, 129, 1, 640)),
    # Pages of 128 and 256 tokens (a multiple of the 64-token tile).
    DecodeCase(4, 2, 300, 64, 1, True, True, "bfloat16", page=128, seed=7),
    DecodeCase(3, 1, 1000, 16, 2, True, False, "float16", page=256, seed=8),
    # One long request split across many SMs, and many short ones.
    DecodeCase(1, 1, 65536, 128, 1, False, False, "bfloat16", seed=9),
    DecodeCase(128, 1, 64, 16, 1, True, False, "bfloat16", seed=10),
    # A batch large enough that each combine CTA walks several rows, with one request split into
    # more pieces than the combine loads in one batch (its per-row path) beside unsplit ones.
    DecodeCase(32, 1, 0, 128, 1, False, False, "bfloat16", lengths=(64,) * 20 + (16384,) + (200,) * 11),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SPECIAL_CASES, ids=[c.id for c in SPECIAL_CASES])
def test_special_cases(torch_cuda, case, backend):
    check_case(torch_cuda, case, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_softmax_scale(torch_cuda, backend):
    torch = torch_cuda
    case = DecodeCase(2, 2, 300, 32, 1, True, True, "bfloat16", seed=11)
    scale = 0.11
    i = make_torch_inputs(torch, case)
    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
    out, lse = flashmla.flash_mla_with_kvcache(
        i.q, i.k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V, metadata, num_splits,
        softmax_scale=scale, causal=True, backend=backend,
    )
    ref_out, ref_lse = reference_torch(torch, i.q, i.k_cache, i.block_table, i.lengths, True, scale)
    check_decode(to_numpy(out), to_numpy(lse), ref_out.cpu().numpy(), ref_lse.cpu().numpy(), "scale")


# Scores that climb along each sequence by ~1.5 exp2 units per 64-token tile, so that the kernel's
# stale row max (slack 8 exp2 units) moves every few tiles and P approaches 256 on the tiles in
# between, plus one key halfway that jumps ~12 exp2 units above its neighbours; the last tiles
# still outscore it, so the output depends on every regime.
RAMP_SHARED_Q = 0.25  # weight of the shared direction u in every q row
RAMP_TOP = 3.0        # weight of u in the last token's key; the first token's is 0
RAMP_JUMP = 1.4       # extra weight of u in the halfway key (x 0.25 x 576 / 24 x log2(e) = 12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ("bfloat16", "float16"))
def test_rising_scores_move_the_row_max(torch_cuda, dtype, backend):
    torch = torch_cuda
    case = DecodeCase(3, 2, 1031, 128, 1, True, True, dtype, seed=13)
    i = make_torch_inputs(torch, case)
    u = torch.ones(576, device="cuda")
    u[1::2] = -1.0
    weight = torch.zeros(i.k_cache.shape[:2], device="cuda")
    page = i.k_cache.shape[1]
    for r, length in enumerate(i.lengths):
        if length == 0:
            continue
        tokens = torch.arange(length, device="cuda")
        ramp = RAMP_TOP * tokens / max(length - 1, 1)
        ramp[length // 2] += RAMP_JUMP
        blocks = i.block_table[r, tokens // page].long()
        weight[blocks, tokens % page] = ramp
    k_cache = (i.k_cache.float() + weight[:, :, None, None] * u).to(i.k_cache.dtype)
    q = (i.q.float() + RAMP_SHARED_Q * u).to(i.q.dtype)

    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
    out, lse = flashmla.flash_mla_with_kvcache(q, k_cache, i.block_table, i.cache_seqlens, HEAD_DIM_V,
                                               metadata, num_splits, causal=True, backend=backend)
    ref_out, ref_lse = reference_torch(torch, q, k_cache, i.block_table, i.lengths, True)
    check_decode(to_numpy(out), to_numpy(lse), ref_out.cpu().numpy(), ref_lse.cpu().numpy(), "rising")


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_inputs(torch_cuda, backend):
    """q, k_cache and block_table as views with gaps between rows/heads (inner dim contiguous)."""
    torch = torch_cuda
    case = DecodeCase(3, 2, 500, 16, 2, True, False, "bfloat16", seed=12)
    i = make_torch_inputs(torch, case)
    q_wide = torch.full((case.b, case.s_q, case.h_q * 2, 576 + 64), math.nan, dtype=i.q.dtype, device="cuda")
    q_wide[:, :, ::2, :576] = i.q
    q = q_wide[:, :, ::2, :576]
    k_wide = torch.full((i.k_cache.shape[0], i.k_cache.shape[1], case.h_kv + 1, 576), math.nan,
                        dtype=i.k_cache.dtype, device="cuda")
    k_wide[:, :, 1:] = i.k_cache
    k_cache = k_wide[:, :, 1:]
    table_wide = torch.full((case.b, i.block_table.shape[1] + 5), -1, dtype=torch.int32, device="cuda")
    table_wide[:, 2 : 2 + i.block_table.shape[1]] = i.block_table
    block_table = table_wide[:, 2 : 2 + i.block_table.shape[1]]
    assert not q.is_contiguous() and not k_cache.is_contiguous() and not block_table.is_contiguous()

    metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
    out, lse = flashmla.flash_mla_with_kvcache(q, k_cache, block_table, i.cache_seqlens, HEAD_DIM_V,
                                               metadata, num_splits, backend=backend)
    ref_out, ref_lse = reference_torch(torch, i.q, i.k_cache, i.block_table, i.lengths, False)
    check_decode(to_numpy(out), to_numpy(lse), ref_out.cpu().numpy(), ref_lse.cpu().numpy(), "strided")


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_plan_serves_several_layers(torch_cuda, backend):
    torch = torch_cuda
    lengths = (1640, 3204, 0, 2317)
    layers = [DecodeCase(4, 1, 0, 128, 1, False, False, "bfloat16", seed=20 + n, lengths=lengths)
              for n in range(2)]
    inputs = [make_torch_inputs(torch, case) for case in layers]
    # The plan depends only on the lengths: the first layer's serves every layer of the step.
    metadata, num_splits = flashmla.get_mla_metadata(inputs[0].cache_seqlens, 128, 1)
    for case, i in zip(layers, inputs):
        out, lse = flashmla.flash_mla_with_kvcache(i.q, i.k_cache, i.block_table, i.cache_seqlens,
                                                   HEAD_DIM_V, metadata, num_splits, backend=backend)
        ref_out, ref_lse = reference_torch(torch, i.q, i.k_cache, i.block_table, i.lengths, False)
        check_decode(to_numpy(out), to_numpy(lse), ref_out.cpu().numpy(), ref_lse.cpu().numpy(), case.id)


@pytest.mark.parametrize("how", ["stream-argument", "current-stream"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_side_stream(torch_cuda, backend, how):
    """On a non-default stream: explicitly (the library allocates the workspace stream-ordered) or
    as torch's current stream (torch allocates it)."""
    torch = torch_cuda
    case = DecodeCase(6, 2, 3000, 64, 1, True, True, "bfloat16", seed=30)
    data = Prepared(torch, case)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    if how == "stream-argument":
        out, lse = run_public(data, backend, stream=side)
    else:
        with torch.cuda.stream(side):
            out, lse = run_public(data, backend)
    torch.cuda.current_stream().wait_stream(side)
    check_against_oracle(torch, data, out, lse, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuda_graph_capture_and_replay(torch_cuda, backend):
    """Metadata + decode captured into a CUDA graph, replayed on new q values."""
    torch = torch_cuda
    case = DecodeCase(8, 1, 2000, 128, 1, True, False, "bfloat16", seed=40)
    i = make_torch_inputs(torch, case)

    def step():
        metadata, num_splits = flashmla.get_mla_metadata(i.cache_seqlens, case.rows_per_kv_head, case.h_kv)
        return flashmla.flash_mla_with_kvcache(i.q, i.k_cache, i.block_table, i.cache_seqlens,
                                               HEAD_DIM_V, metadata, num_splits, backend=backend)

    warmup = torch.cuda.Stream()
    warmup.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warmup):
        step()
    torch.cuda.current_stream().wait_stream(warmup)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = step()

    fresh = make_torch_inputs(torch, DecodeCase(8, 1, 2000, 128, 1, True, False, "bfloat16", seed=41))
    i.q.copy_(fresh.q)
    out.fill_(math.nan)
    graph.replay()
    torch.cuda.synchronize()
    ref_out, ref_lse = reference_torch(torch, i.q, i.k_cache, i.block_table, i.lengths, False)
    check_decode(to_numpy(out), to_numpy(lse), ref_out.cpu().numpy(), ref_lse.cpu().numpy(), "graph")


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_that_requires_grad(torch_cuda, backend):
    torch = torch_cuda
    case = DecodeCase(2, 1, 200, 16, 1, False, False, "bfloat16", seed=50)
    data = Prepared(torch, case)
    data.inputs.q.requires_grad_(True)
    out, lse = run_public(data, backend)
    assert not out.requires_grad
    check_against_oracle(torch, data, out, lse, backend)


# Cache elements per block of 64 tokens x 1 KV head.
ELEMENTS_PER_BLOCK = 64 * 576


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_beyond_2_31_elements(torch_cuda, backend):
    """Every page of the request lies beyond element 2^31 of the cache: 32-bit offsets wrap."""
    torch = torch_cuda
    length, pages = 1000, 16
    num_blocks = 2**31 // ELEMENTS_PER_BLOCK + 1 + pages
    try:
        k_cache = torch.full((num_blocks, 64, 1, 576), math.nan, dtype=torch.bfloat16, device="cuda")
    except torch.cuda.OutOfMemoryError:
        pytest.skip("not enough GPU memory for a 4.3 GB cache")
    generator = torch.Generator(device="cuda").manual_seed(60)
    # The request's pages are the last blocks, in random order: all beyond element 2^31.
    block_ids = (num_blocks - 1 - torch.randperm(pages, device="cuda", generator=generator)).to(torch.int32)
    values = (torch.randn((pages, 64, 1, 576), generator=generator, device="cuda") / 10).clamp_(-1, 1)
    k_cache[block_ids.long()] = values.to(torch.bfloat16)
    tail = length - (pages - 1) * 64
    k_cache[block_ids[-1].long(), tail:] = math.nan
    q = (torch.randn((1, 2, 128, 576), generator=generator, device="cuda") / 10).clamp_(-1, 1).to(torch.bfloat16)
    block_table = block_ids.view(1, pages)
    seqlens = torch.tensor([length], dtype=torch.int32, device="cuda")
    assert int(block_ids.min()) * ELEMENTS_PER_BLOCK >= 2**31

    metadata, num_splits = flashmla.get_mla_metadata(seqlens, 2 * 128, 1)
    out, lse = flashmla.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, HEAD_DIM_V,
                                               metadata, num_splits, causal=True, backend=backend)
    ref_out, ref_lse = reference_torch(torch, q, k_cache, block_table, [length], True)
    check_decode(to_numpy(out), to_numpy(lse), ref_out.cpu().numpy(), ref_lse.cpu().numpy(), "2^31")


SM90_CASES = [
    DecodeCase(4, 1, 4096, 128, 1, True, False, "bfloat16", seed=70),
    DecodeCase(4, 2, 4096, 128, 1, True, True, "bfloat16", seed=71),
    DecodeCase(8, 1, 2048, 16, 1, False, False, "bfloat16", seed=72),
    DecodeCase(2, 1, 8192, 64, 1, True, False, "float16", seed=73),
]
# NOT_SUPPORTED reasons that mean "this build or GPU has no Hopper kernel", not a defect. A build
# known to include the kernel (scripts/gpu_check.sh sets FLASHMLA_BUILT_WITH_SM90=1) may not lack it.
SM90_ABSENT = ("needs an sm_90 GPU",) + (
    () if os.environ.get("FLASHMLA_BUILT_WITH_SM90") == "1" else ("built without the SM90 kernel",)
)


@pytest.mark.parametrize("case", SM90_CASES, ids=[c.id for c in SM90_CASES])
def test_sm90_backend_explicitly(torch_cuda, case):
    data = Prepared(torch_cuda, case)
    try:
        out, lse = run_public(data, "sm90")
    except RuntimeError as error:
        if any(reason in str(error) for reason in SM90_ABSENT):
            pytest.skip(str(error))
        raise
    check_against_oracle(torch_cuda, data, out, lse, "sm90")
