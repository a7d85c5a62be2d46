#!/usr/bin/env bash
# Installs what building and testing flashmla needs, from Debian's packages and PyPI: GoogleTest and
# the DLPack header (apt), a CUDA-13-aware CMake, ninja, nanobind, scikit-build-core, numpy, pytest,
# the CUTLASS/CuTe headers (the nvidia-cutlass wheel), and PyTorch and JAX for the CPU-only tests of
# the framework integrations (JAX's headers also build flashmla.jax's XLA FFI handlers). The CUDA toolkit itself (nvcc 12.8+) is a
# prerequisite. Idempotent; set FLASHMLA_SKIP_SETUP=1 to skip on machines prepared otherwise.
set -euo pipefail
[[ "${FLASHMLA_SKIP_SETUP:-0}" == 1 ]] && exit 0

PYTHON=${PYTHON:-python3}

need_apt=()
[[ -f /usr/include/gtest/gtest.h ]] || need_apt+=(libgtest-dev)
[[ -f /usr/include/dlpack/dlpack.h || -n "${DLPACK_ROOT:-}" ]] || need_apt+=(libdlpack-dev)
if ((${#need_apt[@]})); then
  if command -v apt-get >/dev/null; then
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq "${need_apt[@]}"
  else
    echo "setup: please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

"$PYTHON" -m pip install -q --disable-pip-version-check -r "$(dirname "$0")/requirements-dev.txt"
