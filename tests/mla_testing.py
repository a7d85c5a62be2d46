"""Test data, oracles and checkers for flashmla's pytest suite (never calls the library).

- DecodeCase / make_torch_inputs: random decode problems (randn/10 clamped to +-1) with randomly
  permuted block tables and NaN in every cache position no request may read (unused blocks and
  the tail of each request's last page).
- reference_torch / reference_numpy: float64 attention on the same bf16/fp16 inputs.
- check_decode: relative L2 error, exact zeros and +inf lse where no key is visible.
- check_plan: the split-KV plan invariants stated in src/scheduler/metadata.h.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

HEAD_DIM = 576
HEAD_DIM_V = 512
BLOCK_N = 64
METADATA_WORDS = 8
DEFAULT_SCALE = HEAD_DIM**-0.5

# Tolerances (mla-decode.md section 5): bf16 output shows ~2e-3 relative L2 error in FlashMLA.
OUT_REL_L2_TOL = 1e-2
# fp16 keeps 3 more mantissa bits: ~2.6e-4 measured on the H100, the C++ tests' 2e-3 here too.
OUT_REL_L2_TOL_FLOAT16 = 2e-3
# A single wrong row hides in a large batch's global norm; rows are checked on their own, looser.
OUT_ROW_REL_TOL = 5e-2
LSE_ABS_TOL = 1e-3
DATA_SCALE = 10.0  # randn / DATA_SCALE, clamped to +-1
# randn / 10 gives scores of spread ~0.01 and an almost uniform softmax, in which out hardly depends
# on q.k; cases with this data scale give scores of spread ~0.8, where a kernel that drops the rope
# dimensions or misscales the scores is off by several percent instead of a fraction of one.
SHARP_DATA_SCALE = 1.0


def no_gpu(reason: str):
    """Skips the test, or fails it under FLASHMLA_REQUIRE_GPU=1 (set by scripts/gpu_check.sh), where a
    test that cannot see the GPU must not pass as a green run."""
    import pytest

    if os.environ.get("FLASHMLA_REQUIRE_GPU") == "1":
        pytest.fail(f"FLASHMLA_REQUIRE_GPU=1 but {reason}")
    pytest.skip(reason)


def out_tolerance(dtype: str) -> float:
    return OUT_REL_L2_TOL_FLOAT16 if dtype == "float16" else OUT_REL_L2_TOL


# Worst errors seen per (dtype, backend), printed by conftest's terminal summary.
ACCURACY: dict = {}


@dataclasses.dataclass(frozen=True)
class DecodeCase:
    b: int
    s_q: int
    s_k: int
    h_q: int
    h_kv: int
    varlen: bool
    causal: bool
    dtype: str  # "bfloat16" | "float16"
    page: int = 64
    zero_requests: int = 0  # how many requests get length 0
    seed: int = 0
    lengths: tuple = ()  # explicit sequence lengths (then b == len(lengths)); overrides s_k
    data_scale: float = DATA_SCALE  # q and K are randn / data_scale, clamped to +-1

    @property
    def rows_per_kv_head(self) -> int:
        return self.s_q * self.h_q // self.h_kv

    @property
    def id(self) -> str:
        parts = [
            f"b{self.b}",
            f"sq{self.s_q}",
            f"sk{self.s_k}",
            f"hq{self.h_q}",
            f"hkv{self.h_kv}",
            "varlen" if self.varlen else "fixed",
            "causal" if self.causal else "full",
            "bf16" if self.dtype == "bfloat16" else "fp16",
        ]
        if self.page != 64:
            parts.append(f"page{self.page}")
        if self.zero_requests:
            parts.append(f"zero{self.zero_requests}")
        if self.lengths:
            parts.append("L" + "_".join(str(x) for x in self.lengths[:8]))
        if self.data_scale != DATA_SCALE:
            parts.append(f"data{self.data_scale:g}")
        return "-".join(parts)

    @property
    def out_tolerance(self) -> float:
        return out_tolerance(self.dtype)


def sequence_lengths(case: DecodeCase) -> list:
    """FlashMLA's test distribution: s_k, or normal(s_k, s_k/2) per request when varlen."""
    if case.lengths:
        assert len(case.lengths) == case.b
        return list(case.lengths)
    rng = np.random.default_rng(case.seed)
    if case.varlen:
        lengths = np.maximum(rng.normal(case.s_k, case.s_k / 2, size=case.b).round(), 1)
    else:
        lengths = np.full(case.b, case.s_k)
    lengths = lengths.astype(np.int64)
    if case.zero_requests:
        lengths[rng.choice(case.b, size=case.zero_requests, replace=False)] = 0
    return [int(x) for x in lengths]


@dataclasses.dataclass
class PagedLayout:
    """Block table and the mask of cache positions that requests own (host, numpy)."""

    lengths: list
    block_table: np.ndarray  # [b, blocks_per_seq] int32, a random permutation of block ids
    num_blocks: int
    valid: np.ndarray  # [num_blocks, page] bool: position holds a token of some request


# Blocks beyond those the requests need, left unreferenced (and poisoned).
SPARE_BLOCKS = 3


def paged_layout(lengths, page: int, seed: int) -> PagedLayout:
    rng = np.random.default_rng(seed + 1)
    b = len(lengths)
    blocks_per_seq = max(1, max((math.ceil(length / page) for length in lengths), default=1))
    num_blocks = b * blocks_per_seq + SPARE_BLOCKS
    block_table = rng.permutation(num_blocks)[: b * blocks_per_seq].reshape(b, blocks_per_seq)
    positions = np.arange(blocks_per_seq * page).reshape(blocks_per_seq, page)
    valid = np.zeros((num_blocks, page), dtype=bool)
    for i, length in enumerate(lengths):
        valid[block_table[i]] = positions < length
    return PagedLayout(lengths, block_table.astype(np.int32), num_blocks, valid)


def random_normal_numpy(rng, shape, dtype, scale=DATA_SCALE):
    return np.clip(rng.standard_normal(shape, dtype=np.float32) / scale, -1, 1).astype(dtype)


# ---- PyTorch -----------------------------------------------------------------------------------


@dataclasses.dataclass
class TorchInputs:
    q: object
    k_cache: object
    block_table: object
    cache_seqlens: object
    lengths: list


def torch_dtype(torch, name: str):
    return getattr(torch, name)


def random_normal_torch(torch, shape, dtype, generator, device="cuda", scale=DATA_SCALE):
    x = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return (x / scale).clamp_(-1, 1).to(dtype)


def make_torch_inputs(torch, case: DecodeCase, device="cuda") -> TorchInputs:
    dtype = torch_dtype(torch, case.dtype)
    generator = torch.Generator(device=device).manual_seed(case.seed)
    lengths = sequence_lengths(case)
    layout = paged_layout(lengths, case.page, case.seed)
    k_cache = random_normal_torch(
        torch, (layout.num_blocks, case.page, case.h_kv, HEAD_DIM), dtype, generator, device, case.data_scale
    )
    invalid = torch.from_numpy(~layout.valid).to(device)
    k_cache[invalid] = float("nan")
    q = random_normal_torch(torch, (case.b, case.s_q, case.h_q, HEAD_DIM), dtype, generator, device,
                            case.data_scale)
    return TorchInputs(
        q=q,
        k_cache=k_cache,
        block_table=torch.from_numpy(layout.block_table).to(device),
        cache_seqlens=torch.tensor(lengths, dtype=torch.int32, device=device),
        lengths=lengths,
    )


def reference_torch(torch, q, k_cache, block_table, lengths, causal, scale=DEFAULT_SCALE):
    """float64 attention: (out [b, s_q, h_q, 512], lse [b, h_q, s_q]); no key: 0 and +inf."""
    b, s_q, h_q, d = q.shape
    h_kv, page = k_cache.shape[2], k_cache.shape[1]
    group = h_q // h_kv
    device = q.device
    out = torch.zeros((b, s_q, h_q, HEAD_DIM_V), dtype=torch.float64, device=device)
    lse = torch.full((b, h_q, s_q), math.inf, dtype=torch.float64, device=device)
    for i, length in enumerate(lengths):
        if length == 0:
            continue
        pages = math.ceil(length / page)
        kv = k_cache[block_table[i, :pages].long()].reshape(pages * page, h_kv, d)[:length]
        kv = kv.double()
        qi = q[i].double().reshape(s_q, h_kv, group, d)
        scores = torch.einsum("skgd,lkd->skgl", qi, kv) * scale
        if causal:
            last_key = length - s_q + torch.arange(s_q, device=device)
            hidden = torch.arange(length, device=device)[None, :] > last_key[:, None]
            scores = scores.masked_fill(hidden[:, None, None, :], -math.inf)
        row_max = scores.amax(dim=-1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        weights = torch.exp(scores - row_max)
        total = weights.sum(dim=-1, keepdim=True)
        seen = total > 0
        o = torch.einsum("skgl,lkd->skgd", weights, kv[..., :HEAD_DIM_V])
        o = o / torch.where(seen, total, torch.ones_like(total))
        row_lse = torch.where(seen, torch.log(total) + row_max, torch.full_like(total, math.inf))
        out[i] = o.reshape(s_q, h_q, HEAD_DIM_V)
        lse[i] = row_lse.reshape(s_q, h_q).transpose(0, 1)
    return out, lse


# ---- NumPy (host oracle for CuPy and JAX tests) ------------------------------------------------


@dataclasses.dataclass
class HostInputs:
    q: np.ndarray  # float32 holding values exactly representable in the test dtype
    k_cache: np.ndarray
    block_table: np.ndarray
    lengths: list


def make_host_inputs(case: DecodeCase, round_to) -> HostInputs:
    """Inputs on the host; round_to(array float32) -> array of the test dtype."""
    rng = np.random.default_rng(case.seed + 2)
    lengths = sequence_lengths(case)
    layout = paged_layout(lengths, case.page, case.seed)
    k_cache = round_to(
        random_normal_numpy(rng, (layout.num_blocks, case.page, case.h_kv, HEAD_DIM), np.float32, case.data_scale)
    )
    k_cache[~layout.valid] = np.nan
    q = round_to(random_normal_numpy(rng, (case.b, case.s_q, case.h_q, HEAD_DIM), np.float32, case.data_scale))
    return HostInputs(q, k_cache, layout.block_table, lengths)


def reference_numpy(q, k_cache, block_table, lengths, causal, scale=DEFAULT_SCALE):
    """float64 attention on host arrays; same conventions as reference_torch."""
    b, s_q, h_q, d = q.shape
    page, h_kv = k_cache.shape[1], k_cache.shape[2]
    group = h_q // h_kv
    out = np.zeros((b, s_q, h_q, HEAD_DIM_V))
    lse = np.full((b, h_q, s_q), np.inf)
    for i, length in enumerate(lengths):
        if length == 0:
            continue
        pages = math.ceil(length / page)
        kv = k_cache[block_table[i, :pages]].reshape(pages * page, h_kv, d)[:length]
        kv = kv.astype(np.float64)
        qi = q[i].astype(np.float64).reshape(s_q, h_kv, group, d)
        scores = np.einsum("skgd,lkd->skgl", qi, kv, optimize=True) * scale
        if causal:
            last_key = length - s_q + np.arange(s_q)
            hidden = np.arange(length)[None, :] > last_key[:, None]
            scores = np.where(hidden[:, None, None, :], -np.inf, scores)
        row_max = scores.max(axis=-1, keepdims=True)
        row_max = np.where(np.isfinite(row_max), row_max, 0.0)
        weights = np.exp(scores - row_max)
        total = weights.sum(axis=-1, keepdims=True)
        seen = total > 0
        o = np.einsum("skgl,lkd->skgd", weights, kv[..., :HEAD_DIM_V], optimize=True)
        o = o / np.where(seen, total, 1.0)
        with np.errstate(divide="ignore"):
            row_lse = np.where(seen, np.log(np.where(seen, total, 1.0)) + row_max, np.inf)
        out[i] = o.reshape(s_q, h_q, HEAD_DIM_V)
        lse[i] = row_lse.reshape(s_q, h_q).T
    return out, lse


# ---- Comparison ----------------------------------------------------------------------------------


def check_decode(out, lse, ref_out, ref_lse, label: str = "", out_tol: float = OUT_REL_L2_TOL) -> float:
    """Asserts the decode result matches the oracle; returns the relative L2 error of out.

    out/ref_out: float64 numpy [b, s_q, h_q, 512]; lse/ref_lse: float64 numpy [b, h_q, s_q].
    """
    assert out.shape == ref_out.shape, f"out shape {out.shape}, expected {ref_out.shape}"
    assert lse.shape == ref_lse.shape, f"lse shape {lse.shape}, expected {ref_lse.shape}"
    assert np.isfinite(out).all(), f"{label}: out has {np.count_nonzero(~np.isfinite(out))} non-finite values"

    no_key = np.isinf(ref_lse)  # [b, h_q, s_q]
    assert not np.isnan(lse).any(), f"{label}: lse has NaN"
    assert np.array_equal(np.isinf(lse), no_key), f"{label}: lse is +inf exactly where no key is visible"
    assert (lse[no_key] > 0).all(), f"{label}: lse of rows without keys must be +inf"
    if (~no_key).any():
        lse_err = float(np.abs(lse[~no_key] - ref_lse[~no_key]).max())
        assert lse_err < LSE_ABS_TOL, f"{label}: lse max abs error {lse_err:.3g}"

    rows_without_keys = no_key.transpose(0, 2, 1)  # [b, s_q, h_q]
    assert (out[rows_without_keys] == 0).all(), f"{label}: rows without keys must be exactly 0"

    ref_norm = float(np.linalg.norm(ref_out))
    diff = out - ref_out
    rel = float(np.linalg.norm(diff)) / ref_norm if ref_norm > 0 else float(np.linalg.norm(diff))
    assert rel < out_tol, f"{label}: out relative L2 error {rel:.3g}"
    row_ref = np.linalg.norm(ref_out, axis=-1)
    row_diff = np.linalg.norm(diff, axis=-1)
    seen = row_ref > 0
    if seen.any():
        worst_row = float((row_diff[seen] / row_ref[seen]).max())
        assert worst_row < OUT_ROW_REL_TOL, f"{label}: worst row relative error {worst_row:.3g}"
    return rel


def record_accuracy(key, rel: float) -> None:
    worst, count = ACCURACY.get(key, (0.0, 0))
    ACCURACY[key] = (max(worst, rel), count + 1)


# ---- Scheduler plan --------------------------------------------------------------------------------


def check_plan(lengths, metadata, num_splits) -> None:
    """Asserts the plan invariants of src/scheduler/metadata.h (host numpy int32 arrays)."""
    lengths = [int(x) for x in lengths]
    metadata = np.asarray(metadata)
    num_splits = np.asarray(num_splits)
    batch, num_parts = len(lengths), metadata.shape[0]
    assert metadata.shape == (num_parts, METADATA_WORDS)
    assert num_splits.shape == (batch + 1,)
    assert num_splits[0] == 0, "num_splits[0] must be 0"
    assert (np.diff(num_splits) >= 1).all(), "every request must be visited at least once"
    tiles = [-(-length // BLOCK_N) for length in lengths]
    total_tiles = min(sum(tiles), np.iinfo(np.int32).max)
    assert (metadata[:, 5] == total_tiles).all(), f"word 5 must be the plan's {total_tiles} tiles in every row"
    assert (metadata[:, 6:] == 0).all(), "reserved words 6..7 must be 0"

    visits = [[] for _ in range(batch)]  # per request: (part, begin_tile, end_tile, piece)
    for part, (begin_req, begin_tile, end_req, end_tile, begin_split) in enumerate(metadata[:, :5]):
        if begin_req > end_req:
            continue
        assert 0 <= begin_req and end_req < batch, f"part {part}: requests out of range"
        for req in range(begin_req, end_req + 1):
            first = begin_tile if req == begin_req else 0
            last = end_tile if req == end_req else tiles[req]
            if req == begin_req:
                piece = begin_split - num_splits[req]
            else:
                piece = 0
            visits[req].append((part, int(first), int(last), int(piece)))

    for req, request_visits in enumerate(visits):
        pieces = num_splits[req + 1] - num_splits[req]
        assert len(request_visits) == pieces, (
            f"request {req}: {len(request_visits)} visits but num_splits says {pieces}"
        )
        covered = 0
        for k, (part, first, last, piece) in enumerate(request_visits):
            assert piece == k, f"request {req}: visit by part {part} is piece {k}, plan says {piece}"
            assert first == covered, f"request {req}: piece {k} starts at tile {first}, expected {covered}"
            if lengths[req] > 0:
                assert last > first, f"request {req}: piece {k} covers no tile"
            covered = last
        assert covered == tiles[req], f"request {req}: pieces cover {covered} of {tiles[req]} tiles"
    assert num_splits[-1] <= batch + num_parts, "more partial slots than batch + num_sm_parts"
