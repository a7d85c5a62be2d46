"""The caller's arrays: checking them, allocating outputs beside them, finding their stream.

Frameworks are recognised by type through ``sys.modules``, so none is imported just to ask
whether an argument belongs to it. Outputs are allocated by the framework of the array they
accompany (``q`` for decode, ``cache_seqlens`` for metadata), which keeps its caching allocator in
charge of the memory, and the work is enqueued on that framework's current stream.

JAX arrays are immutable, so the outputs of a JAX call are allocated with PyTorch (or CuPy when
PyTorch is missing; CuPy may lack bfloat16), written on that framework's current stream, and handed
to JAX with ``jax.numpy.from_dlpack``. JAX inputs are waited for (``block_until_ready``) first, and
a call with any JAX array waits for its kernel before it returns (``wait_if_jax``): JAX frees an
array's memory, and orders the outputs it takes in, only against its own streams. Inside
``jax.jit`` there are no arrays to hand over: flashmla.jax serves that case through XLA's FFI.

PyTorch tensors normally bypass this module (flashmla._torch_ops); the torch adapter here serves
JAX outputs and calls that mix torch tensors with other arrays.
"""

from __future__ import annotations

import importlib
import sys

# DLPack's handle for CUDA's legacy default stream (0 is reserved as ambiguous).
_DLPACK_LEGACY_STREAM = 1

# DLPack device types (dlpack.h, DLDeviceType) of memory that lives on the host.
_HOST_DEVICE_TYPES = {1: "cpu", 3: "cuda_host"}


def _type_name(value) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _dtype_name(dtype) -> str:
    """'bfloat16' for torch.bfloat16, numpy/ml_dtypes dtypes and plain names alike."""
    name = getattr(dtype, "name", None)
    if isinstance(name, str):
        return name
    return str(dtype).rsplit(".", 1)[-1]


def dlpack_device(array):
    """(device_type, device_id) from __dlpack_device__, or None when the array does not say."""
    query = getattr(array, "__dlpack_device__", None)
    if query is None:
        return None
    device_type, device_id = query()
    return int(device_type), int(device_id)


def check_array(value, name: str) -> None:
    """TypeError unless `value` exports device memory through DLPack."""
    if value is None:
        raise TypeError(f"{name}: expected a CUDA array, got None")
    if "Tracer" in type(value).__name__ and type(value).__module__.startswith("jax"):
        raise TypeError(
            f"{name}: flashmla runs eagerly on concrete arrays; under jax.jit or another JAX "
            f"transformation use flashmla.jax, whose functions run inside XLA"
        )
    if not hasattr(value, "__dlpack__"):
        raise TypeError(
            f"{name}: expected a CUDA array exposing __dlpack__ (torch.Tensor, cupy.ndarray, "
            f"jax.Array), got {_type_name(value)}"
        )
    device = dlpack_device(value)
    if device is not None and device[0] in _HOST_DEVICE_TYPES:
        raise TypeError(
            f"{name}: expected a CUDA array, got a host ({_HOST_DEVICE_TYPES[device[0]]}) array"
        )


class _Torch:
    name = "torch"

    def __init__(self, module):
        self.module = module

    def owns(self, array) -> bool:
        return isinstance(array, self.module.Tensor)

    def prepare(self, array, name: str):
        # DLPack refuses tensors that require grad; decode is inference-only.
        return array.detach() if array.requires_grad else array

    def empty(self, shape, dtype, device_id: int):
        torch = self.module
        if not isinstance(dtype, torch.dtype):
            dtype = getattr(torch, _dtype_name(dtype))
        return torch.empty(shape, dtype=dtype, device=torch.device("cuda", device_id))

    def current_stream(self, device_id: int) -> int:
        return self.module.cuda.current_stream(device_id).cuda_stream

    def pool_is_safe(self, device_id: int) -> bool:
        # During torch.cuda.graph capture the caching allocator serves the graph's private pool,
        # which outlives the capture.
        return True

    def device_scope(self, device_id: int):
        return self.module.cuda.device(device_id)

    def synchronize(self, device_id: int) -> None:
        self.module.cuda.synchronize(device_id)

    def finish(self, array):
        return array

    def export(self, array, stream: int):
        """A DLPack capsule made with the stream handshake, as for CuPy: exported without a stream,
        torch orders its pending work before the legacy stream, not before the kernel's. Torch
        exports only from its current device."""
        with self.device_scope(array.device.index):
            return array.__dlpack__(stream=stream if stream != 0 else _DLPACK_LEGACY_STREAM)


class _CuPy:
    name = "cupy"

    def __init__(self, module):
        self.module = module

    def owns(self, array) -> bool:
        return isinstance(array, self.module.ndarray)

    def prepare(self, array, name: str):
        return array

    def empty(self, shape, dtype, device_id: int):
        with self.module.cuda.Device(device_id):
            return self.module.empty(shape, dtype=dtype)

    def current_stream(self, device_id: int) -> int:
        with self.module.cuda.Device(device_id):
            return self.module.cuda.get_current_stream().ptr

    def device_scope(self, device_id: int):
        return self.module.cuda.Device(device_id)

    def synchronize(self, device_id: int) -> None:
        self.module.cuda.Device(device_id).synchronize()

    def pool_is_safe(self, device_id: int) -> bool:
        """False while the current stream captures a CUDA graph: a workspace from CuPy's pool would
        go back to the pool after the call while the graph keeps its address, so the library
        allocates it stream-ordered instead, which the graph records as its own allocation."""
        with self.module.cuda.Device(device_id):
            stream = self.module.cuda.get_current_stream()
            try:
                return not stream.is_capturing()
            except Exception:  # the legacy stream while another captures; an old CuPy
                return False

    def finish(self, array):
        return array

    def export(self, array, stream: int):
        """A DLPack capsule made with the stream handshake. Without a stream CuPy orders the
        array for the legacy stream (an event on its current stream that the legacy stream
        waits for), which is illegal while the current stream captures a graph; naming the
        stream the kernel runs on makes that a no-op when it is CuPy's current stream."""
        return array.__dlpack__(stream=stream if stream != 0 else _DLPACK_LEGACY_STREAM)


class _Jax:
    name = "jax"
    # Frameworks that can allocate JAX's outputs, in order of preference.
    _ALLOCATORS = (("torch", _Torch), ("cupy", _CuPy))

    def __init__(self, module):
        self.module = module
        self._allocator = None

    def owns(self, array) -> bool:
        return isinstance(array, self.module.Array)

    def prepare(self, array, name: str):
        array.block_until_ready()  # its producers ran on JAX's streams
        return array

    def allocator(self):
        if self._allocator is None:
            self._allocator = self._find_allocator()
        return self._allocator

    def _find_allocator(self):
        for module_name, kind in self._ALLOCATORS:
            if module_name in sys.modules:
                return kind(sys.modules[module_name])
        for module_name, kind in self._ALLOCATORS:
            try:
                return kind(importlib.import_module(module_name))
            except ImportError:
                continue
        raise ImportError(
            "flashmla needs PyTorch or CuPy to allocate the outputs of a JAX call "
            "(JAX arrays are immutable); install one of them"
        )

    def empty(self, shape, dtype, device_id: int):
        return self.allocator().empty(shape, _dtype_name(dtype), device_id)

    def current_stream(self, device_id: int) -> int:
        return self.allocator().current_stream(device_id)

    def pool_is_safe(self, device_id: int) -> bool:
        return self.allocator().pool_is_safe(device_id)

    def synchronize(self, device_id: int) -> None:
        self.allocator().synchronize(device_id)

    def export(self, array, stream: int):
        return array  # computed in prepare()

    def finish(self, array):
        """The allocator's output as a JAX array. JAX has the allocator export it, which (torch)
        works only from the array's device."""
        jnp = self.module.numpy
        if hasattr(jnp, "from_dlpack"):
            from_dlpack = jnp.from_dlpack
        else:
            from_dlpack = importlib.import_module("jax.dlpack").from_dlpack
        with self.allocator().device_scope(dlpack_device(array)[1]):
            return from_dlpack(array)


_FRAMEWORKS = (("torch", _Torch), ("cupy", _CuPy), ("jax", _Jax))
_adapters: dict = {}


def _adapter_of(array):
    """The adapter of `array`'s framework, or None for other DLPack producers."""
    for module_name, kind in _FRAMEWORKS:
        module = sys.modules.get(module_name)
        if module is None:
            continue
        adapter = _adapters.get(module_name)
        if adapter is None or adapter.module is not module:
            adapter = _adapters[module_name] = kind(module)
        if adapter.owns(array):
            return adapter
    return None


def framework_of(array, name: str):
    """The adapter that allocates beside `array` (already through check_array)."""
    adapter = _adapter_of(array)
    if adapter is None:
        raise TypeError(
            f"{name}: flashmla allocates its outputs with the framework of {name}, which must be "
            f"PyTorch, CuPy or JAX; got {_type_name(array)} (flashmla._C takes preallocated "
            f"outputs from any DLPack producer)"
        )
    return adapter


def prepare(array, name: str):
    """Makes a checked input ready to export: detached (torch), computed (JAX)."""
    adapter = _adapter_of(array)
    return array if adapter is None else adapter.prepare(array, name)


def export(array, stream: int):
    """What flashmla._C receives for `array` when the kernel runs on `stream` (a handle)."""
    if array is None:
        return None
    adapter = _adapter_of(array)
    return array if adapter is None else adapter.export(array, stream)


def wait_if_jax(inputs, device: int) -> None:
    """Returns once the work enqueued on `device` has run (the kernel included, whichever stream it
    ran on), if any of `inputs` is a JAX array. JAX reuses an array's memory as soon as its last
    reference goes, ordered only against JAX's own streams, so an input must outlive the kernel
    that reads it; waiting also completes the outputs handed to JAX. The whole device is waited for
    because the launch stream may be a raw handle no framework object stands for."""
    jax_adapter = _adapters.get("jax")
    if jax_adapter is not None and any(jax_adapter.owns(array) for array in inputs):
        jax_adapter.synchronize(device)


def device_id(array) -> int:
    return dlpack_device(array)[1]


def stream_handle(stream) -> int:
    """cudaStream_t as an int from an int or a stream object (torch .cuda_stream, cupy .ptr)."""
    handle = stream
    if not isinstance(handle, int):
        for attribute in ("cuda_stream", "ptr"):
            handle = getattr(stream, attribute, None)
            if isinstance(handle, int):
                break
    if not isinstance(handle, int) or isinstance(handle, bool):
        raise TypeError(
            f"stream: expected a cudaStream_t handle (int) or a stream with .cuda_stream (torch) "
            f"or .ptr (cupy), got {_type_name(stream)}"
        )
    if handle < 0:
        raise ValueError(f"stream: expected a non-negative handle, got {handle}")
    return handle
