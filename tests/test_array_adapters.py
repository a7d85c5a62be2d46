"""flashmla._arrays' framework adapters against stand-in torch and JAX modules (no GPU): the stream a
torch array is exported for and the device it is exported from, that a call with a JAX array waits
for its kernel before returning, and that JAX takes its outputs from their own device. The GPU
behaviour these stand for is exercised by test_jax.py and test_cupy.py on a GPU machine.
"""

import contextlib
import types

import pytest

from flashmla import _arrays

DLPACK_CUDA = 2


class FakeTorch:
    """Keeps a current device like torch.cuda, and logs exports and synchronisations."""

    def __init__(self):
        self.current_device = 0
        self.log = []
        fake = self

        class Tensor:
            def __init__(self, device_index):
                self.device = types.SimpleNamespace(index=device_index)

            def __dlpack__(self, stream=None):
                # Like torch: no export from a device other than the current one.
                if self.device.index != fake.current_device:
                    raise BufferError("Can't export tensors on a different CUDA device index")
                fake.log.append(("export", stream, fake.current_device))
                return f"capsule of a tensor on {self.device.index}"

            def __dlpack_device__(self):
                return (DLPACK_CUDA, self.device.index)

        def synchronize(index):
            fake.log.append(("synchronize", index))

        @contextlib.contextmanager
        def device(index):
            previous, fake.current_device = fake.current_device, index
            try:
                yield
            finally:
                fake.current_device = previous

        self.Tensor = Tensor
        self.cuda = types.SimpleNamespace(device=device, synchronize=synchronize)


class FakeJax:
    def __init__(self, torch):
        class Array:
            pass

        def from_dlpack(array):
            torch.log.append(("from_dlpack", torch.current_device))
            return array.__dlpack__(stream=None)

        self.Array = Array
        self.numpy = types.SimpleNamespace(from_dlpack=from_dlpack)


@pytest.fixture
def fakes(monkeypatch):
    torch = FakeTorch()
    jax = _arrays._Jax(FakeJax(torch))
    jax._allocator = _arrays._Torch(torch)
    # As if a call had met a JAX array: wait_if_jax finds the adapter there.
    monkeypatch.setitem(_arrays._adapters, "jax", jax)
    return torch, jax


@pytest.mark.parametrize("stream, handshake", [(0, 1), (1, 1), (0x7F00, 0x7F00)])
def test_torch_exports_for_the_kernel_stream_from_the_tensor_device(fakes, stream, handshake):
    torch, _ = fakes
    adapter = _arrays._Torch(torch)
    adapter.export(torch.Tensor(device_index=1), stream)
    # The legacy stream (0) is DLPack's 1; the export ran on the tensor's device, which is current
    # again afterwards.
    assert torch.log == [("export", handshake, 1)]
    assert torch.current_device == 0


def test_jax_takes_outputs_from_their_device(fakes):
    torch, jax = fakes
    jax.finish(torch.Tensor(device_index=1))
    assert torch.log == [("from_dlpack", 1), ("export", None, 1)]


def test_a_call_with_a_jax_input_waits_for_its_kernel(fakes):
    torch, jax = fakes
    inputs = (torch.Tensor(device_index=1), jax.module.Array(), None)
    _arrays.wait_if_jax(inputs, device=1)
    assert torch.log == [("synchronize", 1)]


def test_a_call_without_jax_arrays_does_not_wait(fakes):
    torch, _ = fakes
    _arrays.wait_if_jax((torch.Tensor(device_index=0), None), device=0)
    assert torch.log == []
