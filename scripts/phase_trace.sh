#!/usr/bin/env bash
# Where the time of a small decode goes: builds flashmla_bench against a trace build of the library
# (-DFLASHMLA_PHASE_TRACE=ON, kernels/common/phase_trace.cuh) in TRACE_BUILD_DIR, then runs the
# shapes of scripts/small_decode_shapes.sh with --trace, and the near-empty graphs of --floor from
# the regular build. Medians per phase, for bench/PERFORMANCE.md.
# Usage: scripts/phase_trace.sh BUILD_DIR TRACE_BUILD_DIR LOG_DIR   (extra cmake arguments in
# FLASHMLA_TRACE_CMAKE_ARGS, e.g. the GoogleTest source of an offline machine; extra flashmla_bench
# options for the traced shapes in TRACE_BENCH_ARGS, e.g. "--flush none")
set -uo pipefail
BUILD_DIR=${1:?build dir}
TRACE_DIR=${2:?trace build dir}
LOG=${3:?log dir}
mkdir -p "$LOG"
TRACE_RUNS=${TRACE_RUNS:-20}

"$BUILD_DIR/bench/flashmla_bench" --floor --warmup-ms 300 --iters 100 2>&1 | tee "$LOG/floor.txt"

# shellcheck disable=SC2086
cmake -S . -B "$TRACE_DIR" -G Ninja -DFLASHMLA_PHASE_TRACE=ON -DFLASHMLA_BUILD_TESTS=OFF \
  -DFLASHMLA_PTXAS_VERBOSE=ON ${FLASHMLA_TRACE_CMAKE_ARGS:-} >"$LOG/trace_configure.log" 2>&1 &&
  cmake --build "$TRACE_DIR" --target flashmla_bench >"$LOG/trace_build.log" 2>&1 ||
  { echo "trace build failed"; tail -30 "$LOG/trace_build.log"; exit 1; }

source "$(dirname "$0")/small_decode_shapes.sh"
for shape in "${small_decode_shapes[@]}"; do
  echo "== $shape"
  # shellcheck disable=SC2086
  "$TRACE_DIR/bench/flashmla_bench" $shape --no-varlen --warmup-ms 300 --trace "$TRACE_RUNS" ${TRACE_BENCH_ARGS:-} 2>&1 |
    grep -E '^(trace|custom)'
done | tee "$LOG/trace.txt"
