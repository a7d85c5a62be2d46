"""Eager JAX arrays in, JAX arrays out; oracle in float64 NumPy on host copies of the inputs."""

import numpy as np
import pytest

import flashmla
from mla_testing import HEAD_DIM_V, DecodeCase, check_decode, make_host_inputs, reference_numpy

pytestmark = pytest.mark.gpu

CASES = [
    DecodeCase(3, 2, 500, 32, 1, True, True, "bfloat16", zero_requests=1, seed=90),
    DecodeCase(2, 1, 2000, 128, 1, False, False, "float16", seed=91),
]


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_jax_matches_reference(jax_gpu, case, backend):
    jax, device = jax_gpu
    jnp = jax.numpy
    dtype = jnp.dtype(case.dtype)
    host = make_host_inputs(case, lambda a: a.astype(dtype))
    q = jax.device_put(host.q, device)
    k_cache = jax.device_put(host.k_cache, device)
    block_table = jax.device_put(host.block_table, device)
    cache_seqlens = jax.device_put(np.asarray(host.lengths, dtype=np.int32), device)

    metadata, num_splits = flashmla.get_mla_metadata(cache_seqlens, case.rows_per_kv_head, case.h_kv)
    assert isinstance(metadata, jax.Array) and isinstance(num_splits, jax.Array)
    assert metadata.dtype == jnp.int32 and num_splits.shape == (case.b + 1,)

    out, lse = flashmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V,
                                               metadata, num_splits, causal=case.causal, backend=backend)
    assert isinstance(out, jax.Array) and isinstance(lse, jax.Array)
    assert out.dtype == dtype and lse.dtype == jnp.float32
    assert out.devices() == {device} and lse.devices() == {device}

    ref_out, ref_lse = reference_numpy(host.q, host.k_cache, host.block_table, host.lengths, case.causal)
    out_host = np.asarray(out).astype(np.float64)
    check_decode(out_host, np.asarray(lse).astype(np.float64), ref_out, ref_lse, f"jax/{case.id}/{backend}")
    # The outputs are ordinary JAX arrays: JAX computations read what the kernel wrote.
    total = float(jnp.sum(out.astype(jnp.float32)))
    assert total == pytest.approx(float(out_host.sum()), rel=1e-3, abs=1e-3)


def test_jax_inside_jit_is_type_error(jax_gpu):
    jax, device = jax_gpu
    jnp = jax.numpy
    case = CASES[0]
    host = make_host_inputs(case, lambda a: a.astype(jnp.bfloat16))
    args = [jax.device_put(x, device) for x in (host.q, host.k_cache, host.block_table,
                                                np.asarray(host.lengths, dtype=np.int32))]
    metadata, num_splits = flashmla.get_mla_metadata(args[3], case.rows_per_kv_head, case.h_kv)

    @jax.jit
    def decode(q):
        return flashmla.flash_mla_with_kvcache(q, args[1], args[2], args[3], HEAD_DIM_V, metadata, num_splits)

    with pytest.raises(TypeError, match=r"^q: flashmla runs eagerly"):
        decode(args[0])


def test_jax_out_is_type_error(jax_gpu):
    jax, device = jax_gpu
    case = CASES[0]
    host = make_host_inputs(case, lambda a: a.astype(jax.numpy.bfloat16))
    q, k_cache, block_table, lengths = [jax.device_put(x, device) for x in (
        host.q, host.k_cache, host.block_table, np.asarray(host.lengths, dtype=np.int32))]
    metadata, num_splits = flashmla.get_mla_metadata(lengths, case.rows_per_kv_head, case.h_kv)
    with pytest.raises(TypeError, match=r"^out: JAX arrays are immutable"):
        flashmla.flash_mla_with_kvcache(q, k_cache, block_table, lengths, HEAD_DIM_V, metadata, num_splits,
                                        out=jax.numpy.zeros((case.b, case.s_q, case.h_q, HEAD_DIM_V)))
