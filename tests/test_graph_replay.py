"""CUDA graph replay, the serving pattern: metadata + every layer's decode captured once, then each
step writes new lengths, block tables, queries and cache contents into the captured buffers in
place and replays. Each replay must equal an eager call on the same buffers bit for bit (same plan,
same kernels), and the float64 oracle within tolerance.

Every step draws new lengths (zero and full-capacity requests among them) and a new permutation of
the cache blocks, and poisons every cache position no request owns with NaN, so a replay that kept
the lengths, the table or the plan of the capture reads NaN or the wrong tokens.
"""

import math

import numpy as np
import pytest

import flashmla
from mla_testing import HEAD_DIM, HEAD_DIM_V, check_decode, random_normal_numpy, reference_numpy, reference_torch

pytestmark = pytest.mark.gpu

BATCH, S_Q, H_Q, H_KV, PAGE = 5, 2, 64, 1, 64
ROWS_PER_KV_HEAD = S_Q * H_Q // H_KV
MAX_BLOCKS = 6  # per request: capacity MAX_BLOCKS * PAGE tokens
SPARE_BLOCKS = 3  # never referenced, always NaN
NUM_BLOCKS = BATCH * MAX_BLOCKS + SPARE_BLOCKS
LAYERS = 2
STEPS = 4
CAUSAL = True


class StepLayout:
    """One decode step's lengths, block table and the cache positions they own (host)."""

    def __init__(self, rng):
        capacity = MAX_BLOCKS * PAGE
        lengths = rng.integers(1, capacity + 1, size=BATCH)
        lengths[0] = capacity
        lengths[rng.integers(1, BATCH)] = 0
        self.lengths = lengths.astype(np.int32)
        self.block_table = rng.permutation(NUM_BLOCKS)[: BATCH * MAX_BLOCKS].reshape(BATCH, MAX_BLOCKS).astype(np.int32)
        positions = np.arange(capacity).reshape(MAX_BLOCKS, PAGE)
        self.valid = np.zeros((NUM_BLOCKS, PAGE), dtype=bool)
        for request, length in enumerate(self.lengths):
            self.valid[self.block_table[request]] = positions < length


def host_step_values(rng, layout, dtype):
    """Per layer: q and a cache holding values where the layout owns positions, NaN elsewhere."""
    values = []
    for _ in range(LAYERS):
        q = random_normal_numpy(rng, (BATCH, S_Q, H_Q, HEAD_DIM), np.float32).astype(dtype)
        k = random_normal_numpy(rng, (NUM_BLOCKS, PAGE, H_KV, HEAD_DIM), np.float32).astype(dtype)
        k[~layout.valid] = np.nan
        values.append((q, k))
    return values


# ---- PyTorch ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_torch_graph_replay_after_in_place_updates(torch_cuda, backend):
    torch = torch_cuda
    rng = np.random.default_rng(500)
    dtype = torch.bfloat16
    cache_seqlens = torch.zeros(BATCH, dtype=torch.int32, device="cuda")
    block_table = torch.zeros(BATCH, MAX_BLOCKS, dtype=torch.int32, device="cuda")
    qs = [torch.zeros(BATCH, S_Q, H_Q, HEAD_DIM, dtype=dtype, device="cuda") for _ in range(LAYERS)]
    caches = [torch.zeros(NUM_BLOCKS, PAGE, H_KV, HEAD_DIM, dtype=dtype, device="cuda") for _ in range(LAYERS)]

    def load(layout):
        cache_seqlens.copy_(torch.from_numpy(layout.lengths))
        block_table.copy_(torch.from_numpy(layout.block_table))
        generator = torch.Generator(device="cuda").manual_seed(int(rng.integers(1 << 30)))
        invalid = torch.from_numpy(~layout.valid).cuda()
        for q, k_cache in zip(qs, caches):
            q.copy_((torch.randn(q.shape, generator=generator, device="cuda") / 10).clamp_(-1, 1))
            k_cache.copy_((torch.randn(k_cache.shape, generator=generator, device="cuda") / 10).clamp_(-1, 1))
            k_cache[invalid] = math.nan

    def step():
        metadata, num_splits = flashmla.get_mla_metadata(cache_seqlens, ROWS_PER_KV_HEAD, H_KV)
        return [
            flashmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V, metadata,
                                            num_splits, causal=CAUSAL, backend=backend)
            for q, k_cache in zip(qs, caches)
        ]

    load(StepLayout(rng))
    warmup = torch.cuda.Stream()
    warmup.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(warmup):
        step()
    torch.cuda.current_stream().wait_stream(warmup)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()

    for step_index in range(STEPS):
        layout = StepLayout(rng)
        load(layout)
        for out, lse in captured:
            out.fill_(math.nan)
            lse.fill_(math.nan)
        graph.replay()
        replayed = [(out.clone(), lse.clone()) for out, lse in captured]
        eager = step()
        torch.cuda.synchronize()
        lengths = [int(x) for x in layout.lengths]
        for layer, ((out, lse), (eager_out, eager_lse)) in enumerate(zip(replayed, eager)):
            label = f"torch-replay/{backend}/step{step_index}/layer{layer}"
            assert torch.equal(out, eager_out), f"{label}: out differs from the eager call"
            assert torch.equal(lse, eager_lse), f"{label}: lse differs from the eager call"
            ref_out, ref_lse = reference_torch(torch, qs[layer], caches[layer], block_table, lengths, CAUSAL)
            check_decode(out.double().cpu().numpy(), lse.double().cpu().numpy(),
                         ref_out.cpu().numpy(), ref_lse.cpu().numpy(), label)


# ---- CuPy ---------------------------------------------------------------------------------------


def test_cupy_graph_replay_after_in_place_updates(cupy_cuda):
    """CuPy stream capture (Stream.begin_capture / end_capture, Graph.launch); float16, since CuPy
    has no bfloat16. The library allocates the workspace stream-ordered during capture, so the
    graph owns it."""
    cupy = cupy_cuda
    rng = np.random.default_rng(501)
    dtype = np.float16
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        cache_seqlens = cupy.zeros(BATCH, dtype=np.int32)
        block_table = cupy.zeros((BATCH, MAX_BLOCKS), dtype=np.int32)
        qs = [cupy.zeros((BATCH, S_Q, H_Q, HEAD_DIM), dtype=dtype) for _ in range(LAYERS)]
        caches = [cupy.zeros((NUM_BLOCKS, PAGE, H_KV, HEAD_DIM), dtype=dtype) for _ in range(LAYERS)]

    def load(layout):
        host = host_step_values(rng, layout, dtype)
        with stream:
            cache_seqlens[...] = cupy.asarray(layout.lengths)
            block_table[...] = cupy.asarray(layout.block_table)
            for (q_host, k_host), q, k_cache in zip(host, qs, caches):
                q[...] = cupy.asarray(q_host)
                k_cache[...] = cupy.asarray(k_host)
        return host

    plans = []  # a captured plan lives in CuPy's pool: it must outlive the graph's replays

    def step():
        metadata, num_splits = flashmla.get_mla_metadata(cache_seqlens, ROWS_PER_KV_HEAD, H_KV)
        plans.append((metadata, num_splits))
        return [
            flashmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V, metadata,
                                            num_splits, causal=CAUSAL)
            for q, k_cache in zip(qs, caches)
        ]

    load(StepLayout(rng))
    with stream:
        step()
        stream.synchronize()
        stream.begin_capture()
        captured = step()
        graph = stream.end_capture()

    for step_index in range(STEPS):
        layout = StepLayout(rng)
        host = load(layout)
        with stream:
            for out, lse in captured:
                out.fill(np.nan)
                lse.fill(np.nan)
            graph.launch(stream)
            replayed = [(out.copy(), lse.copy()) for out, lse in captured]
            eager = step()
        stream.synchronize()
        for layer, ((out, lse), (eager_out, eager_lse)) in enumerate(zip(replayed, eager)):
            label = f"cupy-replay/step{step_index}/layer{layer}"
            out_host, lse_host = cupy.asnumpy(out), cupy.asnumpy(lse)
            assert np.array_equal(out_host, cupy.asnumpy(eager_out), equal_nan=True), f"{label}: out differs from eager"
            assert np.array_equal(lse_host, cupy.asnumpy(eager_lse), equal_nan=True), f"{label}: lse differs from eager"
            q_host, k_host = host[layer]
            ref_out, ref_lse = reference_numpy(q_host, k_host, layout.block_table, list(layout.lengths), CAUSAL)
            check_decode(out_host.astype(np.float64), lse_host.astype(np.float64), ref_out, ref_lse, label)
