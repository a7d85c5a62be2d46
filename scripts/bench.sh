#!/usr/bin/env bash
# The main job: sets up, builds flashmla_bench and runs it on DeepSeek-V3's decode shape (b=128,
# s_q=1, h_q=128, h_kv=1, mean s_k=4096, varlen, bf16). Extra arguments go to flashmla_bench, e.g.
# `scripts/bench.sh --grid bench/grid_flashmla.txt --json results.json`.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}

bash scripts/setup.sh
cmake -S . -B "$BUILD_DIR" -G Ninja ${FLASHMLA_CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" --target flashmla_bench
"$BUILD_DIR/bench/flashmla_bench" "$@"
