"""Fixtures for flashmla's pytest suite.

GPU fixtures (torch_cuda, cupy_cuda, jax_gpu) skip the test with the reason when the framework or
a CUDA device is missing, so the suite runs, and means something, on a machine without a GPU.
Build-tree use: PYTHONPATH=<build>/python python -m pytest tests
"""

from __future__ import annotations

import os
import sys

import pytest

# JAX would otherwise reserve 75% of GPU memory at import, starving the PyTorch tests.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# The helpers module sits beside this file; make it importable under any --import-mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mla_testing  # noqa: E402


def pytest_configure(config):
    # Registered here rather than in pyproject.toml so that the suite also runs outside the repo
    # (e.g. against an installed wheel).
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped with a reason without one)")


@pytest.fixture(scope="session")
def torch_cuda():
    """The torch module, with a CUDA device."""
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    if not torch.cuda.is_available():
        mla_testing.no_gpu("no CUDA device: torch.cuda.is_available() is False")
    # The oracle runs in float64; keep any float32 matmul in the tests exact as well.
    torch.backends.cuda.matmul.allow_tf32 = False
    return torch


@pytest.fixture(scope="session")
def cupy_cuda():
    """The cupy module, with a CUDA device."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError without a driver
        mla_testing.no_gpu(f"no CUDA device for CuPy: {error}")
    if count == 0:
        mla_testing.no_gpu("no CUDA device for CuPy")
    return cupy


@pytest.fixture(scope="session")
def jax_gpu():
    """(jax, its first GPU device)."""
    jax = pytest.importorskip("jax", reason="JAX is not installed")
    try:
        devices = jax.devices("gpu")
    except RuntimeError as error:
        mla_testing.no_gpu(f"JAX has no GPU backend: {error}")
    if not devices:
        mla_testing.no_gpu("JAX has no GPU device")
    return jax, devices[0]


def pytest_terminal_summary(terminalreporter):
    if not mla_testing.ACCURACY:
        return
    terminalreporter.section("flashmla decode accuracy (worst out relative L2 per dtype/backend)")
    for key in sorted(mla_testing.ACCURACY):
        worst, count = mla_testing.ACCURACY[key]
        terminalreporter.write_line(
            f"{'/'.join(key):32s} worst {worst:.3e} over {count} runs "
            f"(tolerance {mla_testing.out_tolerance(key[0]):.0e})"
        )
