"""CuPy arrays in, CuPy arrays out; oracle in float64 NumPy on host copies of the inputs."""

import numpy as np
import pytest

import flashmla
from mla_testing import HEAD_DIM_V, DecodeCase, check_decode, make_host_inputs, reference_numpy

pytestmark = pytest.mark.gpu

# CuPy has no native bfloat16, so these run in float16.
CASES = [
    DecodeCase(3, 1, 300, 16, 1, True, False, "float16", zero_requests=1, seed=80),
    DecodeCase(2, 2, 1000, 64, 1, False, True, "float16", seed=81),
    DecodeCase(4, 1, 140, 9, 3, True, False, "float16", seed=82),
]


def to_cupy(cupy, case):
    host = make_host_inputs(case, lambda a: a.astype(np.float16))
    arrays = dict(
        q=cupy.asarray(host.q),
        k_cache=cupy.asarray(host.k_cache),
        block_table=cupy.asarray(host.block_table),
        cache_seqlens=cupy.asarray(np.asarray(host.lengths, dtype=np.int32)),
    )
    return host, arrays


def run(cupy, case, backend, **kwargs):
    host, a = to_cupy(cupy, case)
    metadata, num_splits = flashmla.get_mla_metadata(a["cache_seqlens"], case.rows_per_kv_head, case.h_kv)
    assert isinstance(metadata, cupy.ndarray) and isinstance(num_splits, cupy.ndarray)
    assert metadata.dtype == np.int32 and num_splits.dtype == np.int32
    assert metadata.shape[1] == 8 and num_splits.shape == (case.b + 1,)
    out, lse = flashmla.flash_mla_with_kvcache(
        a["q"], a["k_cache"], a["block_table"], a["cache_seqlens"], HEAD_DIM_V, metadata, num_splits,
        causal=case.causal, backend=backend, **kwargs,
    )
    return host, a, out, lse


def check(cupy, case, host, a, out, lse, label):
    assert isinstance(out, cupy.ndarray) and isinstance(lse, cupy.ndarray)
    assert out.dtype == np.float16 and lse.dtype == np.float32
    assert out.device.id == a["q"].device.id and lse.device.id == a["q"].device.id
    ref_out, ref_lse = reference_numpy(host.q, host.k_cache, host.block_table, host.lengths, case.causal)
    check_decode(cupy.asnumpy(out).astype(np.float64), cupy.asnumpy(lse).astype(np.float64),
                 ref_out, ref_lse, label)


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cupy_matches_reference(cupy_cuda, case, backend):
    host, a, out, lse = run(cupy_cuda, case, backend)
    check(cupy_cuda, case, host, a, out, lse, f"cupy/{case.id}/{backend}")


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_cupy_on_a_non_blocking_stream(cupy_cuda, backend):
    cupy = cupy_cuda
    case = CASES[1]
    with cupy.cuda.Stream(non_blocking=True) as stream:
        host, a, out, lse = run(cupy, case, backend)
        stream.synchronize()
    check(cupy, case, host, a, out, lse, f"cupy-stream/{backend}")


def test_cupy_explicit_stream_argument(cupy_cuda):
    cupy = cupy_cuda
    case = CASES[0]
    stream = cupy.cuda.Stream(non_blocking=True)
    host, a = to_cupy(cupy, case)
    cupy.cuda.get_current_stream().synchronize()  # inputs were written on the current stream
    metadata, num_splits = flashmla.get_mla_metadata(a["cache_seqlens"], case.rows_per_kv_head, case.h_kv, stream=stream)
    out, lse = flashmla.flash_mla_with_kvcache(
        a["q"], a["k_cache"], a["block_table"], a["cache_seqlens"], HEAD_DIM_V, metadata, num_splits,
        causal=case.causal, stream=stream,
    )
    stream.synchronize()
    check(cupy, case, host, a, out, lse, "cupy-stream-argument")


@pytest.mark.parametrize("given", ["out+lse", "out", "lse"])
def test_cupy_out_and_lse_are_written_in_place(cupy_cuda, given):
    cupy = cupy_cuda
    case = CASES[1]
    host, a = to_cupy(cupy, case)
    metadata, num_splits = flashmla.get_mla_metadata(a["cache_seqlens"], case.rows_per_kv_head, case.h_kv)
    buffers = {}
    if "out" in given.split("+"):
        buffers["out"] = cupy.full((case.b, case.s_q, case.h_q, HEAD_DIM_V), np.nan, dtype=np.float16)
    if "lse" in given.split("+"):
        buffers["lse"] = cupy.full((case.b, case.h_q, case.s_q), np.nan, dtype=np.float32)
    pointers = {name: array.data.ptr for name, array in buffers.items()}
    out, lse = flashmla.flash_mla_with_kvcache(
        a["q"], a["k_cache"], a["block_table"], a["cache_seqlens"], HEAD_DIM_V, metadata, num_splits,
        causal=case.causal, **buffers,
    )
    results = {"out": out, "lse": lse}
    for name, array in buffers.items():
        assert results[name] is array, f"{name}: not the caller's array"
        assert results[name].data.ptr == pointers[name], f"{name}: data was copied"
    check(cupy, case, host, a, out, lse, f"cupy-out={given}")


def two_devices(cupy):
    count = cupy.cuda.runtime.getDeviceCount()
    if count < 2:
        pytest.skip(f"needs 2 GPUs, found {count}")


def test_cupy_arrays_on_a_non_default_gpu(cupy_cuda):
    cupy = cupy_cuda
    two_devices(cupy)
    case = CASES[0]
    with cupy.cuda.Device(1):
        host, a = to_cupy(cupy, case)
    assert cupy.cuda.runtime.getDevice() == 0
    metadata, num_splits = flashmla.get_mla_metadata(a["cache_seqlens"], case.rows_per_kv_head, case.h_kv)
    out, lse = flashmla.flash_mla_with_kvcache(
        a["q"], a["k_cache"], a["block_table"], a["cache_seqlens"], HEAD_DIM_V, metadata, num_splits,
        causal=case.causal,
    )
    assert cupy.cuda.runtime.getDevice() == 0, "the current device was not restored"
    assert metadata.device.id == 1 and out.device.id == 1
    with cupy.cuda.Device(1):
        cupy.cuda.get_current_stream().synchronize()
    check(cupy, case, host, a, out, lse, "cupy-device1")


def test_cupy_arrays_on_different_gpus_are_an_error(cupy_cuda):
    cupy = cupy_cuda
    two_devices(cupy)
    case = CASES[0]
    host, a = to_cupy(cupy, case)
    metadata, num_splits = flashmla.get_mla_metadata(a["cache_seqlens"], case.rows_per_kv_head, case.h_kv)
    with cupy.cuda.Device(1):
        k_cache = cupy.asarray(host.k_cache)
    with pytest.raises(ValueError, match=r"^k_cache: is on cuda:1 but q is on cuda:0"):
        flashmla.flash_mla_with_kvcache(a["q"], k_cache, a["block_table"], a["cache_seqlens"], HEAD_DIM_V,
                                        metadata, num_splits)
