#!/usr/bin/env bash
# Host AddressSanitizer + UndefinedBehaviorSanitizer over everything that runs without a GPU:
# configures ${BUILD_DIR:-build-asan} with FLASHMLA_SANITIZE_HOST=ON and without the SM90 kernel
# (host code is what is checked here; the SM90 translation unit adds minutes of compile time and
# no host code of note), builds libflashmla, the C++ tests and the Python module, then runs CTest
# and pytest under the sanitizers. Any report fails the run. On a GPU machine the GPU tests run as
# well (ASAN_OPTIONS keeps protect_shadow_gap=0, which the CUDA driver needs).
# Usage: scripts/asan.sh   (PYTHON, BUILD_DIR and FLASHMLA_CMAKE_ARGS as for scripts/test.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUILD_DIR=${BUILD_DIR:-build-asan}

bash scripts/setup.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFLASHMLA_SANITIZE_HOST=ON \
  -DFLASHMLA_ENABLE_SM90=OFF -DFLASHMLA_BUILD_BENCH=OFF -DFLASHMLA_BUILD_PYTHON=ON \
  -DPython_EXECUTABLE="$(command -v "$PYTHON")" -DPython3_EXECUTABLE="$(command -v "$PYTHON")" \
  ${FLASHMLA_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR"

common_asan=protect_shadow_gap=0:detect_stack_use_after_return=1:strict_string_checks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:abort_on_error=1

# install_and_consume builds an uninstrumented consumer against the instrumented library, which
# ASan refuses to load unless it comes first; that test checks packaging, not memory.
ASAN_OPTIONS=$common_asan:detect_leaks=1 \
  ctest --test-dir "$BUILD_DIR" --output-on-failure -E install_and_consume

# CPython is not instrumented: the runtime must be loaded first (with libstdc++, whose __cxa_throw
# ASan intercepts), and CPython's deliberate never-freed allocations are not leaks worth reporting.
preload="$(${CXX:-c++} -print-file-name=libasan.so) $(${CXX:-c++} -print-file-name=libstdc++.so)"
ASAN_OPTIONS=$common_asan:detect_leaks=0 LD_PRELOAD="$preload" \
  PYTHONPATH="$PWD/$BUILD_DIR/python${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m pytest tests -rs -q -p no:cacheprovider
echo "asan.sh: AddressSanitizer and UBSan found nothing"
