"""The Python surface: import, version, FlashMLA-compatible signatures, and the checks the Python
layer makes before anything reaches the C API. None of these needs a GPU."""

import importlib.metadata
import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import flashmla
from flashmla import _arrays, _C

# FlashMLA's positional parameters (flash_mla_interface.py), in order.
FLASHMLA_GET_MLA_METADATA = ["cache_seqlens", "num_heads_per_head_k", "num_heads_k"]
FLASHMLA_WITH_KVCACHE = [
    "q",
    "k_cache",
    "block_table",
    "cache_seqlens",
    "head_dim_v",
    "tile_scheduler_metadata",
    "num_splits",
    "softmax_scale",
    "causal",
]
ARRAY_ARGUMENTS = [
    "q",
    "k_cache",
    "block_table",
    "cache_seqlens",
    "tile_scheduler_metadata",
    "num_splits",
]


class FakeDeviceArray:
    """Says it lives on a CUDA device (DLPack device type 2) but belongs to no known framework;
    exporting it would be a bug, since every Python-level check must come first."""

    def __init__(self, shape=(2, 1, 2, 576), device_type=2):
        self.shape = shape
        self._device_type = device_type

    def __dlpack__(self, *args, **kwargs):
        raise AssertionError("flashmla exported an array before finishing its Python checks")

    def __dlpack_device__(self):
        return (self._device_type, 0)


def decode_arguments(**overrides):
    arguments = {name: FakeDeviceArray() for name in ARRAY_ARGUMENTS}
    arguments.update(head_dim_v=512)
    arguments.update(overrides)
    return arguments


def call_decode(**overrides):
    arguments = decode_arguments(**overrides)
    keywords = {k: arguments.pop(k) for k in ("softmax_scale", "causal", "backend", "stream") if k in arguments}
    positional = [arguments[name] for name in FLASHMLA_WITH_KVCACHE[:7]]
    return flashmla.flash_mla_with_kvcache(*positional, **keywords)


def test_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", flashmla.__version__)
    assert flashmla.__version__ == _C.version() == "0.1.0"


def test_installed_distribution_version_matches():
    try:
        installed = importlib.metadata.version("flashmla")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("flashmla is imported from a build tree, not an installed distribution")
    assert installed == flashmla.__version__


def test_import_does_not_import_array_frameworks():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    code = "import sys, flashmla; print(sorted(m for m in ('torch', 'cupy', 'jax') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_public_names():
    assert set(flashmla.__all__) >= {"get_mla_metadata", "flash_mla_with_kvcache", "BACKENDS", "__version__"}
    assert flashmla.BACKENDS == ("auto", "reference", "sm90")
    # Nothing the package imports for itself leaks as a public name; flashmla.jax is the one
    # documented submodule, present once something imported it.
    public = {name for name in dir(flashmla) if not name.startswith("_")}
    assert public <= set(flashmla.__all__) | {"jax"}, public - set(flashmla.__all__)


def test_raw_module_constants():
    assert (_C.HEAD_DIM, _C.HEAD_DIM_V, _C.BLOCK_N, _C.METADATA_WORDS) == (576, 512, 64, 8)
    assert (_C.BACKEND_AUTO, _C.BACKEND_REFERENCE, _C.BACKEND_SM90) == (0, 1, 2)


def positional_names(function):
    return [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def test_get_mla_metadata_signature_matches_flashmla():
    assert positional_names(flashmla.get_mla_metadata) == FLASHMLA_GET_MLA_METADATA
    parameters = inspect.signature(flashmla.get_mla_metadata).parameters
    assert parameters["stream"].kind is inspect.Parameter.KEYWORD_ONLY


def test_flash_mla_with_kvcache_signature_matches_flashmla():
    assert positional_names(flashmla.flash_mla_with_kvcache) == FLASHMLA_WITH_KVCACHE
    parameters = inspect.signature(flashmla.flash_mla_with_kvcache).parameters
    assert parameters["softmax_scale"].default is None
    assert parameters["causal"].default is False
    for extra in ("backend", "stream"):
        assert parameters[extra].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["backend"].default == "auto"
    assert parameters["stream"].default is None


@pytest.mark.parametrize("name", ARRAY_ARGUMENTS)
def test_none_array_is_type_error(name):
    with pytest.raises(TypeError, match=f"^{name}: expected a CUDA array, got None"):
        call_decode(**{name: None})


@pytest.mark.parametrize("name", ARRAY_ARGUMENTS)
def test_numpy_array_is_type_error(name):
    host = np.zeros((2, 3), dtype=np.int32)
    with pytest.raises(TypeError, match=rf"^{name}: expected a CUDA array, got a host \(cpu\) array"):
        call_decode(**{name: host})


def test_all_numpy_inputs_name_q_first():
    q = np.zeros((1, 1, 1, 576), dtype=np.float16)
    k = np.zeros((1, 64, 1, 576), dtype=np.float16)
    table = np.zeros((1, 1), dtype=np.int32)
    lengths = np.ones(1, dtype=np.int32)
    metadata = np.zeros((1, 8), dtype=np.int32)
    splits = np.zeros(2, dtype=np.int32)
    with pytest.raises(TypeError, match=r"^q: expected a CUDA array, got a host \(cpu\) array"):
        flashmla.flash_mla_with_kvcache(q, k, table, lengths, 512, metadata, splits)


def test_pinned_host_array_is_type_error():
    with pytest.raises(TypeError, match=r"^k_cache: expected a CUDA array, got a host \(cuda_host\)"):
        call_decode(k_cache=FakeDeviceArray(device_type=3))


@pytest.mark.parametrize("value", [[1, 2, 3], "q", 3.0])
def test_object_without_dlpack_is_type_error(value):
    with pytest.raises(TypeError, match=r"^block_table: expected a CUDA array exposing __dlpack__"):
        call_decode(block_table=value)


def test_unknown_framework_is_type_error():
    with pytest.raises(TypeError, match=r"^q: flashmla allocates its outputs with the framework of q"):
        call_decode()


@pytest.mark.parametrize("backend", ["bogus", "SM90", 1, None])
def test_unknown_backend_is_value_error(backend):
    with pytest.raises(ValueError, match=r"^backend: expected one of auto, reference, sm90"):
        call_decode(backend=backend)


@pytest.mark.parametrize("value", [512.0, "512", None])
def test_head_dim_v_must_be_int(value):
    with pytest.raises(TypeError, match=r"^head_dim_v: expected an int"):
        call_decode(head_dim_v=value)


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**63])
def test_head_dim_v_past_int32_is_named(value):
    with pytest.raises(ValueError, match=rf"^head_dim_v: must be 512, got {value}$"):
        call_decode(head_dim_v=value)


def test_softmax_scale_that_float32_rounds_to_zero_is_rejected():
    # float32 holds nothing below ~1.4e-45: the C API would read the 0 as "use the default".
    with pytest.raises(ValueError, match=r"^softmax_scale: must be finite and > 0, got 1e-50 \(0 in float32\)$"):
        call_decode(softmax_scale=1e-50)


@pytest.mark.parametrize("value", ["0.5", b"0.5"])
def test_softmax_scale_as_text_is_type_error(value):
    with pytest.raises(TypeError, match=rf"^softmax_scale: expected a float, got {type(value).__name__}$"):
        call_decode(softmax_scale=value)


def test_explicit_zero_softmax_scale_is_rejected():
    # The C API reads 0 as "use the default": Python must not pass an explicit 0 through.
    with pytest.raises(ValueError, match=r"^softmax_scale: must be finite and > 0"):
        call_decode(softmax_scale=0.0)


def test_softmax_scale_must_be_a_number():
    with pytest.raises(TypeError, match=r"^softmax_scale: expected a float"):
        call_decode(softmax_scale="big")


@pytest.mark.parametrize("stream", ["0", 1.5, object()])
def test_stream_of_wrong_type_is_type_error(stream):
    with pytest.raises(TypeError, match=r"^stream: expected a cudaStream_t handle"):
        call_decode(stream=stream)


def test_negative_stream_is_value_error():
    with pytest.raises(ValueError, match=r"^stream: expected a non-negative handle"):
        call_decode(stream=-1)


def test_stream_handles_from_framework_objects():
    class TorchLikeStream:
        cuda_stream = 1234

    class CuPyLikeStream:
        ptr = 5678

    assert _arrays.stream_handle(0) == 0
    assert _arrays.stream_handle(42) == 42
    assert _arrays.stream_handle(TorchLikeStream()) == 1234
    assert _arrays.stream_handle(CuPyLikeStream()) == 5678
    with pytest.raises(TypeError):
        _arrays.stream_handle(True)


def test_get_mla_metadata_rejects_none_and_host_arrays():
    with pytest.raises(TypeError, match=r"^cache_seqlens: expected a CUDA array, got None"):
        flashmla.get_mla_metadata(None, 128, 1)
    with pytest.raises(TypeError, match=r"^cache_seqlens: expected a CUDA array, got a host \(cpu\)"):
        flashmla.get_mla_metadata(np.ones(4, dtype=np.int32), 128, 1)


@pytest.mark.parametrize(
    "rows, heads, error, message",
    [
        (0, 1, ValueError, r"^num_heads_per_head_k: must be >= 1, got 0"),
        (128, 0, ValueError, r"^num_heads_k: must be >= 1, got 0"),
        (128.0, 1, TypeError, r"^num_heads_per_head_k: expected an int"),
        (128, "1", TypeError, r"^num_heads_k: expected an int"),
        # Past int32 nanobind would refuse them without a name, or the C API name another.
        (2**31, 1, ValueError, r"^num_heads_per_head_k: must be below 2\^31, got 2147483648$"),
        (128, 2**63, ValueError, r"^num_heads_k: must be below 2\^31, got 9223372036854775808$"),
    ],
)
def test_get_mla_metadata_head_counts(rows, heads, error, message):
    with pytest.raises(error, match=message):
        flashmla.get_mla_metadata(FakeDeviceArray(shape=(4,)), rows, heads)


def test_get_mla_metadata_unknown_framework_is_type_error():
    with pytest.raises(TypeError, match=r"^cache_seqlens: flashmla allocates its outputs"):
        flashmla.get_mla_metadata(FakeDeviceArray(shape=(4,)), 128, 1)


def test_numpy_integers_are_accepted_as_head_counts():
    # operator.index semantics: NumPy integers are ints; the call then fails on the fake array.
    with pytest.raises(TypeError, match=r"^cache_seqlens: flashmla allocates its outputs"):
        flashmla.get_mla_metadata(FakeDeviceArray(shape=(4,)), np.int64(128), np.int32(1))


def test_torch_cpu_tensor_is_type_error():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    q = torch.zeros(1, 1, 1, 576, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"^q: expected a CUDA array, got a host \(cpu\) array"):
        call_decode(q=q)
    with pytest.raises(TypeError, match=r"^cache_seqlens: expected a CUDA array, got a host \(cpu\)"):
        flashmla.get_mla_metadata(torch.ones(3, dtype=torch.int32), 128, 1)


def test_jax_tracer_is_type_error():
    # What jax.jit hands a traced function: an abstract value, not memory.
    tracer_type = type("DynamicJaxprTracer", (), {"__module__": "jax._src.interpreters.partial_eval"})
    with pytest.raises(TypeError, match=r"^q: flashmla runs eagerly on concrete arrays"):
        call_decode(q=tracer_type())
