"""Scale: correct results where 32-bit arithmetic would break.

- A cache of more than 2^32 elements (over 8 GiB) whose pages lie below 2^31 elements, between
  2^31 and 2^32, and beyond 2^32 (the byte offsets cross 4 GiB and 8 GiB).
- 4.4 million requests: q, out and the workspace partials all extend beyond 2^31 elements.
- The longest request the API accepts: a block-table row of INT32_MAX // 64 pages, 2147483584
  tokens, cycling over 257 distinct pages so that the exact result is known; half the query rows
  are zero, so every score is 0 and the log-sum-exp must be exactly log(2147483584): a lost or
  repeated stretch of tiles shows.
- Block ids near INT32_MAX: a k_cache view of INT32_MAX blocks whose block stride is 16 bytes
  (blocks overlap, 34 GB back them), with each request's pages spaced so that they do not.

Each test needs the free GPU memory it says and skips otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import flashmla
from mla_testing import HEAD_DIM, HEAD_DIM_V, OUT_REL_L2_TOL, check_decode
from reliability_testing import check_against_reference, to_numpy, validate_supported

pytestmark = pytest.mark.gpu

BACKENDS = ("reference", "auto")
INT32_MAX = 2**31 - 1
PAGE = 64
ELEMENTS_PER_BLOCK = PAGE * HEAD_DIM  # one KV head
GIB = 2**30


def require_free_memory(torch, gib):
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    if free < gib * GIB:
        pytest.skip(f"needs {gib} GiB of free GPU memory, {free / GIB:.1f} GiB free")


def random_data(torch, shape, dtype, generator):
    x = torch.randn(shape, dtype=dtype, device="cuda", generator=generator)
    return x.div_(10).clamp_(-1, 1)


class Inputs:
    """Just what reliability_testing.check_against_reference reads."""

    def __init__(self, q, k_cache, block_table, lengths):
        self.q, self.k_cache, self.block_table, self.lengths = q, k_cache, block_table, lengths


def run(torch, q, k_cache, block_table, lengths, backend, causal=False, **keywords):
    seqlens = torch.tensor(lengths, dtype=torch.int32, device="cuda") if isinstance(lengths, list) else lengths
    s_q, h_q, h_kv = q.shape[1], q.shape[2], k_cache.shape[2]
    metadata, num_splits = flashmla.get_mla_metadata(seqlens, s_q * h_q // h_kv, h_kv)
    out, lse = flashmla.flash_mla_with_kvcache(q, k_cache, block_table, seqlens, HEAD_DIM_V, metadata,
                                               num_splits, causal=causal, backend=backend, **keywords)
    return out, lse, num_splits


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_beyond_2_32_elements(torch_cuda, backend):
    torch = torch_cuda
    require_free_memory(torch, 12)
    generator = torch.Generator(device="cuda").manual_seed(1)
    lengths = [700, 1000, 333]
    pages = [math.ceil(length / PAGE) for length in lengths]
    num_blocks = (2**32 + 2**28) // ELEMENTS_PER_BLOCK
    k_cache = torch.full((num_blocks, PAGE, 1, HEAD_DIM), math.nan, dtype=torch.float16, device="cuda")
    # Pages from three regions of the cache, in random order.
    rng = np.random.default_rng(1)
    bounds = [0, 2**31 // ELEMENTS_PER_BLOCK, 2**32 // ELEMENTS_PER_BLOCK + 1, num_blocks]
    ids = np.concatenate([rng.choice(np.arange(bounds[r], bounds[r + 1]), size=sum(pages) // 3 + 1, replace=False)
                          for r in range(3)])
    ids = rng.permutation(ids)[: sum(pages)]
    assert (ids >= bounds[2]).any() and (ids < bounds[1]).any()
    block_table = torch.zeros((len(lengths), max(pages)), dtype=torch.int32, device="cuda")
    start = 0
    for i, (length, count) in enumerate(zip(lengths, pages)):
        row = torch.from_numpy(ids[start : start + count].astype(np.int32)).cuda()
        start += count
        block_table[i, :count] = row
        k_cache[row.long()] = random_data(torch, (count, PAGE, 1, HEAD_DIM), torch.float16, generator)
        k_cache[row[-1].long(), length - (count - 1) * PAGE :] = math.nan  # the tail is never read
    q = random_data(torch, (len(lengths), 2, 32, HEAD_DIM), torch.float16, generator)
    out, lse, _ = run(torch, q, k_cache, block_table, lengths, backend, causal=True)
    check_against_reference(torch, Inputs(q, k_cache, block_table, lengths), out, lse, True, label="2^32")


@pytest.mark.parametrize("backend", BACKENDS)
def test_millions_of_requests_past_2_31_output_elements(torch_cuda, backend):
    torch = torch_cuda
    batch = 2**22 + 2**18  # out holds batch * 512 > 2^31 elements; q and the partials more
    pool = 4096
    require_free_memory(torch, 26)
    generator = torch.Generator(device="cuda").manual_seed(2)
    lengths = torch.randint(1, 4 * PAGE + 1, (batch,), generator=generator, device="cuda", dtype=torch.int32)
    lengths[torch.randint(0, batch, (batch // 8,), generator=generator, device="cuda")] = 0
    # Requests share pages of one pool, as prefix caching does.
    block_table = torch.randint(0, pool, (batch, 4), generator=generator, device="cuda", dtype=torch.int32)
    k_cache = random_data(torch, (pool, PAGE, 1, HEAD_DIM), torch.bfloat16, generator)
    q = random_data(torch, (batch, 1, 1, HEAD_DIM), torch.bfloat16, generator)
    assert batch * HEAD_DIM_V > 2**31

    out, lse, num_splits = run(torch, q, k_cache, block_table, lengths, backend)
    torch.cuda.synchronize()
    empty = lengths == 0
    assert torch.isfinite(out).all(), "non-finite outputs"
    assert (out[empty] == 0).all() and torch.isinf(lse[empty]).all(), "empty requests: out 0, lse +inf"
    assert torch.isfinite(lse[~empty]).all()

    # The oracle on a sample: ends, where out crosses 2^31 elements, and the last split requests
    # (whose partials sit beyond 2^31 elements of the workspace).
    pieces = (num_splits[1:] - num_splits[:-1]).cpu()
    split = torch.nonzero(pieces > 1).flatten()
    assert split.numel() > 0, "no request was split: the workspace offsets were not exercised"
    crossing = 2**31 // HEAD_DIM_V
    rng = np.random.default_rng(2)
    sample = {0, batch - 1, crossing - 1, crossing, crossing + 1, *split[-8:].tolist(),
              *rng.choice(batch, size=200, replace=False).tolist()}
    index = torch.tensor(sorted(sample), device="cuda")
    sub = Inputs(q[index], k_cache, block_table[index], lengths[index].cpu().tolist())
    check_against_reference(torch, sub, out[index], lse[index], False, label="sample")


def cycled_oracle(torch, q, pages, count):
    """float64 decode of a request whose block table cycles over `pages` ([P, 64, 576]) for
    `count` pages: page p appears n // P times, plus once more if p < n % P."""
    num_pages = pages.shape[0]
    multiplicity = torch.full((num_pages,), count // num_pages, dtype=torch.float64, device=pages.device)
    multiplicity[: count % num_pages] += 1
    k = pages.double()  # [P, 64, 576]
    scores = torch.einsum("rd,ptd->rpt", q.double(), k) * HEAD_DIM**-0.5
    peak = scores.amax(dim=(1, 2), keepdim=True)
    weights = torch.exp(scores - peak)  # [rows, P, 64]
    per_page = weights.sum(dim=2)  # [rows, P]
    total = (per_page * multiplicity).sum(dim=1)  # [rows]
    weighted_v = torch.einsum("rpt,ptd->rpd", weights, k[..., :HEAD_DIM_V])
    out = (weighted_v * multiplicity[None, :, None]).sum(dim=1) / total[:, None]
    lse = peak.flatten() + torch.log(total)
    return out, lse


@pytest.mark.parametrize("backend", BACKENDS)
def test_longest_length_the_api_accepts(torch_cuda, backend):
    torch = torch_cuda
    require_free_memory(torch, 2)
    columns = INT32_MAX // PAGE
    length = columns * PAGE  # 2147483584
    num_pages, rows, zero_rows = 257, 16, 8
    generator = torch.Generator(device="cuda").manual_seed(3)
    k_cache = random_data(torch, (num_pages, PAGE, 1, HEAD_DIM), torch.bfloat16, generator)
    block_table = (torch.arange(columns, device="cuda", dtype=torch.int64) % num_pages).to(torch.int32)[None]
    q = random_data(torch, (1, 1, rows, HEAD_DIM), torch.bfloat16, generator)
    q[:, :, zero_rows:] = 0  # scores of exactly 0: the sum of weights counts the tokens

    keywords = {"validate": True} if validate_supported() else {}
    out, lse, num_splits = run(torch, q, k_cache, block_table, [length], backend, **keywords)
    torch.cuda.synchronize()
    ref_out, ref_lse = cycled_oracle(torch, q[0, 0], k_cache[:, :, 0], columns)
    got_out, got_lse = to_numpy(out[0, 0]), to_numpy(lse[0, :, 0])
    assert abs(ref_lse[zero_rows].item() - math.log(length)) < 1e-9
    counted = np.abs(got_lse[zero_rows:] - math.log(length)).max()
    # fp32: a few ulps of log(2^31) ~ 21.5; a lost or doubled part of the 2^25 tiles moves it by
    # at least log(1 + 1/num_sm_parts) ~ 1e-3.
    assert counted < 2e-5, f"lse of the all-zero rows is off log(L) by {counted:.3g}"
    # The Hopper kernel accumulates P.V in the tensor cores' fp32 accumulators, whose additions
    # lose less than an ulp each and, as measured here, consistently toward zero (out 1.67% small
    # with 132 pieces of 254k tiles, about 2^-24 per tile, while lse, summed on the CUDA cores
    # with compensation, is exact to 1e-6). So its bound is 2^-23 per tile of the longest piece;
    # the reference kernel's fp32 FMAs round to nearest and meet the usual tolerance.
    pieces = int(num_splits[1].item() - num_splits[0].item())
    tiles_per_piece = math.ceil(columns / pieces)
    out_tol = OUT_REL_L2_TOL if backend == "reference" else max(OUT_REL_L2_TOL, tiles_per_piece * 2.0**-23)
    check_decode(got_out[None, None], got_lse[None, :, None], ref_out.cpu().numpy()[None, None],
                 ref_lse.cpu().numpy()[None, :, None], f"L={length}", out_tol=out_tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_ids_near_int32_max(torch_cuda, backend):
    torch = torch_cuda
    require_free_memory(torch, 36)
    stride = 8  # elements: the 16 bytes TMA asks of every stride
    spacing = ELEMENTS_PER_BLOCK // stride  # ids this far apart own disjoint memory
    storage = torch.full(((INT32_MAX - 1) * stride + ELEMENTS_PER_BLOCK,), math.nan, dtype=torch.bfloat16,
                         device="cuda")
    k_cache = storage.as_strided((INT32_MAX, PAGE, 1, HEAD_DIM), (stride, HEAD_DIM, HEAD_DIM, 1))
    generator = torch.Generator(device="cuda").manual_seed(4)
    lengths = [300, 200]
    pages = [math.ceil(length / PAGE) for length in lengths]
    rng = np.random.default_rng(4)
    ids = (INT32_MAX - 1 - spacing * rng.permutation(sum(pages))).astype(np.int64)
    compact = torch.full((sum(pages), PAGE, 1, HEAD_DIM), math.nan, dtype=torch.bfloat16, device="cuda")
    big_table = torch.zeros((len(lengths), max(pages)), dtype=torch.int32, device="cuda")
    small_table = torch.zeros_like(big_table)
    start = 0
    for i, (length, count) in enumerate(zip(lengths, pages)):
        values = random_data(torch, (count, PAGE, 1, HEAD_DIM), torch.bfloat16, generator)
        values[-1, length - (count - 1) * PAGE :] = math.nan
        compact[start : start + count] = values
        small_table[i, :count] = torch.arange(start, start + count, dtype=torch.int32)
        for j in range(count):
            block = int(ids[start + j])
            big_table[i, j] = block
            k_cache[block] = values[j]
        start += count
    assert ids.min() > INT32_MAX - 1 - spacing * sum(pages)
    q = random_data(torch, (len(lengths), 1, 16, HEAD_DIM), torch.bfloat16, generator)

    out, lse, _ = run(torch, q, k_cache, big_table, lengths, backend)
    check_against_reference(torch, Inputs(q, compact, small_table, lengths), out, lse, False, label="ids")
    if validate_supported():
        checked = run(torch, q, k_cache, big_table, lengths, backend, validate=True)
        assert torch.equal(checked[0], out) and torch.equal(checked[1], lse)
        big_table[1, 0] = INT32_MAX  # one past the last block
        with pytest.raises(ValueError, match=r"^block_table\[1\]\[0\] = 2147483647 is outside k_cache's 2147483647 blocks$"):
            run(torch, q, k_cache, big_table, lengths, backend, validate=True)
