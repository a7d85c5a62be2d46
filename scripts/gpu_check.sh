#!/usr/bin/env bash
# One pass of everything that needs a GPU: build with the compiler's resource report, the C++ tests,
# the Python tests, and the benchmark grid. Meant for an offline GPU machine: FLASHMLA_DEPS_DIR may
# hold the nvidia-cutlass wheel, an unpacked libdlpack-dev (dlpack/usr/include) and an unpacked
# googletest source package (gtest/usr/src/googletest). Logs and results go to
# ${FLASHMLA_LOG_DIR:-gpu_logs}. Steps: FLASHMLA_GPU_STEPS (default "build smoke ctest pytest bench sanitize"; "profile" adds
# Nsight Compute per-kernel times of the latency rows; "breakdown" the fixed cost of small decodes in
# parts (scripts/latency_breakdown.sh); "trace" the same from per-phase stamps of a trace build,
# plus the floor of near-empty graphs (scripts/phase_trace.sh); "store_patterns" times the epilogue's store
# patterns alone (bench/store_patterns.cu); "cluster_merge" times merging a split's partials inside
# a thread-block cluster (bench/cluster_merge.cu); "bench_fp16" and "bench_read" add the grid in
# fp16 and in bf16 under the read flush; "peers" times the grid with bench/bench.py beside the peer
# kernels it can import (install_peer_wheels in offline_deps.sh), row by row in the same sitting;
# "profile_peers" reads Nsight Compute's sections of our main kernel and FlashMLA's on compute rows
# (scripts/profile_peers.sh); "read_floor" times a plain read of each row's K-cache bytes under both
# flushes (flashmla_bench --read-floor)). FLASHMLA_BENCH_ARGS goes to every grid run (e.g. --warmup-ms 500).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=$(realpath -m "${FLASHMLA_LOG_DIR:-gpu_logs}")
STEPS=${FLASHMLA_GPU_STEPS:-build smoke ctest pytest bench sanitize}
BUILD_DIR=${BUILD_DIR:-build-gpu}
mkdir -p "$LOG"
export FLASHMLA_SKIP_SETUP=1 PYTHONUNBUFFERED=1
# This build includes the Hopper kernel and runs on a GPU: tests fail, rather than skip, if either
# turns out absent.
export FLASHMLA_BUILT_WITH_SM90=1 FLASHMLA_REQUIRE_GPU=1

cmake_args=(-DFLASHMLA_BUILD_PYTHON=ON -DFLASHMLA_PTXAS_VERBOSE=ON)
source scripts/offline_deps.sh
[[ -n "${GTEST_SOURCE_DIR:-}" ]] && cmake_args+=(-DGTEST_SOURCE_DIR="$GTEST_SOURCE_DIR")

status=0
step() { [[ " $STEPS " == *" $1 "* ]]; }
summary() { echo "== $*" | tee -a "$LOG/summary.txt"; }

nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem,driver_version --format=csv \
  >"$LOG/device.txt" 2>&1
cat "$LOG/device.txt"

if step build; then
  cmake -S . -B "$BUILD_DIR" -G Ninja "${cmake_args[@]}" >"$LOG/configure.log" 2>&1 &&
    cmake --build "$BUILD_DIR" -- -v >"$LOG/build.log" 2>&1
  rc=$?
  summary "build rc=$rc"
  python3 scripts/ptxas_report.py "$LOG/build.log" | tee "$LOG/resources.txt"
  ((rc == 0)) || { tail -50 "$LOG/build.log"; exit 1; }
fi

# A short run of the decode cases under a hard time limit, so that a kernel that deadlocks fails
# here in two minutes instead of holding every later step.
if step smoke; then
  timeout 120 "$BUILD_DIR/cpp_tests/flashmla_tests" --gtest_filter='Cases/DecodeGpuTest.MatchesCpuReference/*' \
    >"$LOG/smoke.log" 2>&1
  rc=$?
  summary "smoke rc=$rc: $(grep -E '^\[  (PASSED|FAILED)' "$LOG/smoke.log" | tr '\n' ' ')"
  ((rc == 0)) || { tail -30 "$LOG/smoke.log"; exit 1; }
fi

if step ctest; then
  ctest --test-dir "$BUILD_DIR" --output-on-failure -j1 --timeout 600 >"$LOG/ctest.log" 2>&1
  rc=$?; ((status |= rc))
  summary "ctest rc=$rc: $(grep -E 'tests passed|tests failed' "$LOG/ctest.log")"
  grep -E "\*\*\*Failed|Skipped" "$LOG/ctest.log" | head -20
fi

if step pytest; then
  PYTHONPATH="$PWD/$BUILD_DIR/python" python3 -m pytest tests -q -rs --timeout=900 \
    --junitxml="$LOG/pytest.xml" >"$LOG/pytest.log" 2>&1
  rc=$?; ((status |= rc))
  summary "pytest rc=$rc: $(tail -1 "$LOG/pytest.log")"
  grep -E "FAILED|Error" "$LOG/pytest.log" | head -20
fi

if step bench; then
  "$BUILD_DIR/bench/flashmla_bench" --check >"$LOG/bench_default.txt" 2>&1
  rc=$?; ((status |= rc)); summary "bench default rc=$rc"
  cat "$LOG/bench_default.txt"
  "$BUILD_DIR/bench/flashmla_bench" --grid bench/grid_flashmla.txt --json "$LOG/bench_grid.json" ${FLASHMLA_BENCH_ARGS:-} \
    >"$LOG/bench_grid.txt" 2>&1
  rc=$?; ((status |= rc)); summary "bench grid rc=$rc"
  cat "$LOG/bench_grid.txt"
  python3 bench/report.py "$LOG/bench_grid.json" >/dev/null 2>&1 || echo "report.py failed"
fi

# The grid again with other options: $1 names the result, the rest goes to flashmla_bench.
extra_grid() {
  local name=$1; shift
  "$BUILD_DIR/bench/flashmla_bench" --grid bench/grid_flashmla.txt --json "$LOG/bench_grid_$name.json" ${FLASHMLA_BENCH_ARGS:-} "$@" \
    >"$LOG/bench_grid_$name.txt" 2>&1
  rc=$?; ((status |= rc)); summary "bench grid $name rc=$rc"
  cat "$LOG/bench_grid_$name.txt"
}
step bench_fp16 && extra_grid fp16 --dtype fp16
step bench_read && extra_grid read --flush read

if step read_floor; then
  for flush in write read; do
    "$BUILD_DIR/bench/flashmla_bench" --read-floor --grid bench/grid_flashmla.txt --flush "$flush" \
      ${FLASHMLA_BENCH_ARGS:-} >"$LOG/read_floor_$flush.txt" 2>&1
    rc=$?; ((status |= rc)); summary "read floor, flush $flush rc=$rc"
    cat "$LOG/read_floor_$flush.txt"
  done
fi

if step peers; then
  peer_site=$(install_peer_wheels)
  PYTHONPATH="$PWD/$BUILD_DIR/python:$peer_site" python3 bench/bench.py --grid bench/grid_flashmla.txt \
    --json "$LOG/bench_peers.json" ${FLASHMLA_BENCH_ARGS:-} >"$LOG/bench_peers.txt" 2>&1
  rc=$?; ((status |= rc)); summary "bench peers rc=$rc"
  cat "$LOG/bench_peers.txt"
fi

if step profile_peers; then
  scripts/profile_peers.sh "$BUILD_DIR" "$LOG/profile_peers" | tee "$LOG/profile_peers.txt"
fi

if step profile; then
  scripts/profile.sh "$BUILD_DIR" "$LOG/profile" | tee "$LOG/profile.txt"
fi

if step breakdown; then
  scripts/latency_breakdown.sh "$BUILD_DIR" "$LOG/breakdown" | tee "$LOG/breakdown.txt"
fi

if step trace; then
  scripts/phase_trace.sh "$BUILD_DIR" "$BUILD_DIR-trace" "$LOG/trace" | tee "$LOG/trace.txt"
fi

if step store_patterns; then
  "$BUILD_DIR/bench/flashmla_store_patterns" >"$LOG/store_patterns.md" 2>&1
  rc=$?; ((status |= rc)); summary "store patterns rc=$rc"
  cat "$LOG/store_patterns.md"
fi

if step cluster_merge; then
  "$BUILD_DIR/bench/flashmla_cluster_merge" >"$LOG/cluster_merge.md" 2>&1
  rc=$?; ((status |= rc)); summary "cluster merge rc=$rc"
  cat "$LOG/cluster_merge.md"
fi

if step sanitize; then
  scripts/sanitize.sh "$BUILD_DIR" "$LOG" | tee -a "$LOG/summary.txt"
  ((status |= PIPESTATUS[0]))
fi
exit $status
