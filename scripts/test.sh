#!/usr/bin/env bash
# The test command: builds libflashmla with every kernel, the C++ tests and the Python module in
# ${BUILD_DIR:-build}, then runs CTest (GoogleTest + the install/consumer test) and pytest. Tests that
# need a GPU skip with a reason on machines without one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUILD_DIR=${BUILD_DIR:-build}

bash scripts/setup.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DFLASHMLA_BUILD_PYTHON=ON -DPython_EXECUTABLE="$(command -v "$PYTHON")" -DPython3_EXECUTABLE="$(command -v "$PYTHON")" \
  ${FLASHMLA_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR"
ctest --test-dir "$BUILD_DIR" --output-on-failure
PYTHONPATH="$PWD/$BUILD_DIR/python${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m pytest tests -rs -q
