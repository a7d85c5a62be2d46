"""flashmla.jax: the metadata and decode calls inside jax.jit, through XLA's FFI.

CPU part (CI, with jax[cpu]): why the import fails when it fails, output shapes from
jax.eval_shape, and the lowering for CUDA (XLA custom calls with their attributes and the
workspace result), all without a GPU. GPU part: jit results against the float64 oracle, the plan
against the host scheduler, eager calls, several layers in one jit, validate=True reaching the
library, a runtime error naming the argument, a second GPU.
"""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import flashmla
from flashmla import _C
from mla_testing import (
    HEAD_DIM,
    HEAD_DIM_V,
    METADATA_WORDS,
    DecodeCase,
    check_decode,
    check_plan,
    make_host_inputs,
    random_normal_numpy,
    reference_numpy,
)

# Metadata rows assumed by the CPU tests, which have no GPU to ask.
FAKE_SM_PARTS = 9


def run_python(code: str):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


# ---- Import behaviour (CPU) ------------------------------------------------------------------------


def test_import_without_jax_says_why():
    result = run_python("import sys; sys.modules['jax'] = None\nimport flashmla.jax")
    assert result.returncode != 0
    assert "ImportError: flashmla.jax needs JAX" in result.stderr, result.stderr


def test_import_without_the_handlers_says_why():
    pytest.importorskip("jax", reason="JAX is not installed")
    code = "import sys; sys.modules['flashmla._jax_ffi'] = None\nimport flashmla.jax"
    result = run_python(code)
    assert result.returncode != 0
    assert "built without its XLA FFI handlers" in result.stderr, result.stderr
    assert "FLASHMLA_XLA_FFI_INCLUDE_DIR" in result.stderr


def test_import_flashmla_does_not_import_the_jax_module():
    result = run_python("import sys, flashmla; print('flashmla.jax' in sys.modules, 'jax' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False"


# ---- Shapes and lowering (CPU) -----------------------------------------------------------------------

try:
    import jax
    import jax.numpy as jnp
except ImportError:
    jax = jnp = None
try:
    import flashmla.jax as fmla

    UNAVAILABLE = ""
except ImportError as error:  # no JAX, or a build that found no XLA FFI headers
    fmla, UNAVAILABLE = None, str(error)
    # The handlers were built but do not load (a missing symbol, a JAX that moved on): a defect,
    # which a skip would hide.
    if jax is not None and any(pathlib.Path(flashmla.__file__).parent.glob("_jax_ffi*")):
        raise

needs_flashmla_jax = pytest.mark.skipif(fmla is None, reason=f"flashmla.jax unavailable: {UNAVAILABLE}")


@pytest.fixture
def fake_parts(monkeypatch):
    monkeypatch.setattr(fmla, "num_sm_parts", lambda cache_seqlens, rows, heads: FAKE_SM_PARTS)


def abstract_inputs(b=3, s_q=2, h_q=32, h_kv=1, dtype="bfloat16", blocks=20, page=64, max_blocks=5):
    dtype = jnp.dtype(dtype)
    return (
        jax.ShapeDtypeStruct((b, s_q, h_q, HEAD_DIM), dtype),
        jax.ShapeDtypeStruct((blocks, page, h_kv, HEAD_DIM), dtype),
        jax.ShapeDtypeStruct((b, max_blocks), jnp.int32),
        jax.ShapeDtypeStruct((b,), jnp.int32),
    )


def make_step(rows, h_kv, **keywords):
    def step(q, k_cache, block_table, cache_seqlens):
        metadata, num_splits = fmla.get_mla_metadata(cache_seqlens, rows, h_kv)
        out, lse = fmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V,
                                               metadata, num_splits, **keywords)
        return out, lse, metadata, num_splits

    return step


@needs_flashmla_jax
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("b, s_q, h_q, h_kv", [(3, 1, 128, 1), (1, 4, 16, 2), (6, 2, 9, 3)])
def test_eval_shape(fake_parts, dtype, b, s_q, h_q, h_kv):
    step = make_step(s_q * h_q // h_kv, h_kv, causal=True)
    out, lse, metadata, num_splits = jax.eval_shape(step, *abstract_inputs(b, s_q, h_q, h_kv, dtype))
    assert (out.shape, out.dtype) == ((b, s_q, h_q, HEAD_DIM_V), jnp.dtype(dtype))
    assert (lse.shape, lse.dtype) == ((b, h_q, s_q), jnp.float32)
    assert (metadata.shape, metadata.dtype) == ((FAKE_SM_PARTS, METADATA_WORDS), jnp.int32)
    assert (num_splits.shape, num_splits.dtype) == ((b + 1,), jnp.int32)


def cuda_lowering(step, *args):
    return jax.jit(step).trace(*args).lower(lowering_platforms=("cuda",)).as_text()


def custom_calls(text):
    return [line for line in text.splitlines() if "stablehlo.custom_call" in line]


@needs_flashmla_jax
def test_lowering_for_cuda(fake_parts):
    b, s_q, h_q = 3, 2, 32
    step = make_step(s_q * h_q, 1, causal=True, backend="reference", softmax_scale=0.125, validate=True)
    calls = custom_calls(cuda_lowering(step, *abstract_inputs(b, s_q, h_q)))
    assert len(calls) == 2, calls
    metadata_call, decode_call = calls
    assert "@flashmla_get_metadata" in metadata_call
    assert "@flashmla_decode" in decode_call
    # The typed FFI: attributes in a dictionary, as the handler binds them; row-major buffers, as
    # the handler assumes when it passes no strides.
    assert "mhlo.backend_config = {" in decode_call
    assert "operand_layouts = [dense<[3, 2, 1, 0]> : tensor<4xindex>, dense<[3, 2, 1, 0]>" in decode_call
    for attribute in ("backend = 1 : i32", "causal = 1 : i32", "head_dim_v = 512 : i32",
                      "softmax_scale = 1.250000e-01 : f32", "validate = 1 : i32"):
        assert attribute in decode_call, (attribute, decode_call)
    # Results: out, lse and the workspace, padded so the handler can align its start.
    nbytes = _C.decode_workspace_size(b, s_q, h_q, FAKE_SM_PARTS)
    assert f"tensor<{nbytes + 256}xui8>" in decode_call, decode_call
    assert f"tensor<{b}x{s_q}x{h_q}x512xbf16>" in decode_call
    assert f"tensor<{b}x{h_q}x{s_q}xf32>" in decode_call


@needs_flashmla_jax
def test_default_attributes(fake_parts):
    calls = custom_calls(cuda_lowering(make_step(64, 1), *abstract_inputs(2, 2, 32)))
    decode_call = calls[1]
    for attribute in ("backend = 0 : i32", "causal = 0 : i32", "softmax_scale = 0.000000e+00 : f32",
                      "validate = 0 : i32"):
        assert attribute in decode_call, (attribute, decode_call)


@needs_flashmla_jax
@pytest.mark.parametrize(
    "keywords, error, message",
    [
        (dict(backend="fastest"), ValueError, r"^backend: expected one of auto, reference, sm90"),
        (dict(softmax_scale=0.0), ValueError, r"^softmax_scale: must be finite and > 0"),
        (dict(softmax_scale="big"), TypeError, r"^softmax_scale: expected a float"),
    ],
)
def test_argument_errors_at_trace_time(fake_parts, keywords, error, message):
    with pytest.raises(error, match=message):
        jax.eval_shape(make_step(64, 1, **keywords), *abstract_inputs(2, 2, 32))


@needs_flashmla_jax
def test_array_and_head_count_errors_at_trace_time(fake_parts):
    q, k_cache, block_table, cache_seqlens = abstract_inputs()
    with pytest.raises(TypeError, match=r"^cache_seqlens: expected an array, got None"):
        fmla.get_mla_metadata(None, 64, 1)
    with pytest.raises(ValueError, match=r"^num_heads_k: must be >= 1, got 0"):
        jax.eval_shape(lambda s: fmla.get_mla_metadata(s, 64, 0), cache_seqlens)
    with pytest.raises(TypeError, match=r"^head_dim_v: expected an int"):
        fmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, 512.0, cache_seqlens, cache_seqlens)
    with pytest.raises(TypeError, match=r"^block_table: expected a JAX array, got list"):
        fmla.flash_mla_with_kvcache(q, k_cache, [1], cache_seqlens, 512, cache_seqlens, cache_seqlens)


@needs_flashmla_jax
def test_metadata_without_a_gpu_says_why():
    try:
        if jax.devices("gpu"):
            pytest.skip("a GPU is present")
    except RuntimeError:
        pass
    with pytest.raises(RuntimeError, match=r"JAX has no GPU backend"):
        jax.eval_shape(lambda s: fmla.get_mla_metadata(s, 64, 1), jax.ShapeDtypeStruct((4,), jnp.int32))


# ---- GPU ----------------------------------------------------------------------------------------------

CASES = [
    DecodeCase(4, 1, 800, 128, 1, True, False, "bfloat16", zero_requests=1, seed=400),
    DecodeCase(3, 2, 500, 32, 1, True, True, "bfloat16", seed=401),
    DecodeCase(2, 1, 300, 16, 2, False, False, "float16", seed=402),
]


def device_inputs(jax_module, device, case):
    dtype = jax_module.numpy.dtype(case.dtype)
    host = make_host_inputs(case, lambda a: a.astype(dtype))
    arrays = [jax_module.device_put(x, device) for x in
              (host.q, host.k_cache, host.block_table, np.asarray(host.lengths, dtype=np.int32))]
    return host, arrays


def check_against_reference(case, host, out, lse, label):
    ref_out, ref_lse = reference_numpy(host.q, host.k_cache, host.block_table, host.lengths, case.causal)
    check_decode(np.asarray(out).astype(np.float64), np.asarray(lse).astype(np.float64), ref_out, ref_lse, label)


@needs_flashmla_jax
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_jit_matches_reference(jax_gpu, case, backend):
    jax_module, device = jax_gpu
    host, args = device_inputs(jax_module, device, case)
    step = jax_module.jit(make_step(case.rows_per_kv_head, case.h_kv, causal=case.causal, backend=backend))
    out, lse, metadata, num_splits = step(*args)
    assert out.dtype == jax_module.numpy.dtype(case.dtype) and lse.dtype == jax_module.numpy.float32
    assert out.devices() == {device}
    check_against_reference(case, host, out, lse, f"jax-jit/{case.id}/{backend}")
    # The device plan equals the host scheduler's for the same number of parts.
    parts = metadata.shape[0]
    host_metadata = np.zeros((parts, METADATA_WORDS), np.int32)
    host_splits = np.zeros(case.b + 1, np.int32)
    _C.get_metadata(np.asarray(host.lengths, dtype=np.int32), host_metadata, host_splits)
    assert np.array_equal(np.asarray(metadata), host_metadata)
    assert np.array_equal(np.asarray(num_splits), host_splits)
    check_plan(host.lengths, np.asarray(metadata), np.asarray(num_splits))


@needs_flashmla_jax
@pytest.mark.gpu
def test_eager_calls_without_jit(jax_gpu):
    jax_module, device = jax_gpu
    case = CASES[1]
    host, (q, k_cache, block_table, cache_seqlens) = device_inputs(jax_module, device, case)
    metadata, num_splits = fmla.get_mla_metadata(cache_seqlens, case.rows_per_kv_head, case.h_kv)
    out, lse = fmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V, metadata,
                                           num_splits, causal=case.causal)
    check_against_reference(case, host, out, lse, "jax-eager-ffi")


@needs_flashmla_jax
@pytest.mark.gpu
def test_several_layers_in_one_jit(jax_gpu):
    """One plan and one block table, three layers (each its own q and cache), JAX arithmetic
    between them."""
    jax_module, device = jax_gpu
    case = DecodeCase(4, 1, 0, 64, 1, False, False, "bfloat16", lengths=(900, 0, 1500, 37), seed=410)
    dtype = jax_module.numpy.dtype(case.dtype)
    first = make_host_inputs(case, lambda a: a.astype(dtype))
    rng = np.random.default_rng(411)
    layers = [first]
    for _ in range(2):
        q = random_normal_numpy(rng, first.q.shape, np.float32).astype(dtype)
        k_cache = random_normal_numpy(rng, first.k_cache.shape, np.float32).astype(dtype)
        k_cache[np.isnan(first.k_cache.astype(np.float32))] = np.nan  # the same unowned positions
        layers.append(type(first)(q, k_cache, first.block_table, first.lengths))
    put = lambda x: jax_module.device_put(x, device)  # noqa: E731
    block_table = put(first.block_table)
    cache_seqlens = put(np.asarray(first.lengths, dtype=np.int32))

    @jax_module.jit
    def step(qs, caches, block_table, cache_seqlens):
        metadata, num_splits = fmla.get_mla_metadata(cache_seqlens, case.rows_per_kv_head, case.h_kv)
        outs, lses = [], []
        for q, k_cache in zip(qs, caches):
            out, lse = fmla.flash_mla_with_kvcache(q, k_cache, block_table, cache_seqlens, HEAD_DIM_V,
                                                   metadata, num_splits)
            outs.append(out.astype(jax_module.numpy.float32) * 2)
            lses.append(lse)
        return outs, lses

    outs, lses = step([put(h.q) for h in layers], [put(h.k_cache) for h in layers], block_table, cache_seqlens)
    for n, host in enumerate(layers):
        check_against_reference(case, host, np.asarray(outs[n]) / 2, lses[n], f"jax-layers/{n}")


@needs_flashmla_jax
@pytest.mark.gpu
def test_validate_in_jit_gives_the_same_result(jax_gpu):
    jax_module, device = jax_gpu
    case = CASES[0]
    host, args = device_inputs(jax_module, device, case)
    plain = jax_module.jit(make_step(case.rows_per_kv_head, case.h_kv))(*args)
    checked = jax_module.jit(make_step(case.rows_per_kv_head, case.h_kv, validate=True))(*args)
    assert np.array_equal(np.asarray(plain[0]), np.asarray(checked[0]))
    assert np.array_equal(np.asarray(plain[1]), np.asarray(checked[1]))


@needs_flashmla_jax
@pytest.mark.gpu
def test_validate_in_jit_reaches_the_library(jax_gpu):
    """validate=True through XLA: a block id outside the cache fails the call, naming it."""
    jax_module, device = jax_gpu
    case = CASES[0]
    _, (q, k_cache, block_table, cache_seqlens) = device_inputs(jax_module, device, case)
    outside = jax_module.numpy.full_like(block_table, k_cache.shape[0] + 5)
    step = jax_module.jit(make_step(case.rows_per_kv_head, case.h_kv, validate=True))
    with pytest.raises(Exception, match=r"block_table\["):
        jax_module.block_until_ready(step(q, k_cache, outside, cache_seqlens))


@needs_flashmla_jax
@pytest.mark.gpu
def test_bad_dtype_fails_at_run_time_naming_the_argument(jax_gpu):
    jax_module, device = jax_gpu
    case = CASES[0]
    _, (q, k_cache, block_table, cache_seqlens) = device_inputs(jax_module, device, case)
    step = jax_module.jit(make_step(case.rows_per_kv_head, case.h_kv))
    with pytest.raises(Exception, match=r"q: expected bfloat16 or float16, got float32"):
        outputs = step(q.astype(jax_module.numpy.float32), k_cache, block_table, cache_seqlens)
        jax_module.block_until_ready(outputs)
    # The failed call enqueued nothing: the next one works.
    host, args = device_inputs(jax_module, device, case)
    out, lse, _, _ = step(*args)
    check_against_reference(case, host, out, lse, "jax-after-error")


@needs_flashmla_jax
@pytest.mark.gpu
def test_jit_on_a_second_gpu(jax_gpu):
    jax_module, _ = jax_gpu
    gpus = jax_module.devices("gpu")
    if len(gpus) < 2:
        pytest.skip(f"needs 2 GPUs, JAX sees {len(gpus)}")
    case = CASES[1]
    host, args = device_inputs(jax_module, gpus[1], case)
    out, lse, _, _ = jax_module.jit(make_step(case.rows_per_kv_head, case.h_kv, causal=case.causal))(*args)
    assert out.devices() == {gpus[1]}
    check_against_reference(case, host, out, lse, "jax-gpu1")
