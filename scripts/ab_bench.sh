#!/usr/bin/env bash
# A/B timing of this tree against a base tree on the same GPU in one sitting: builds the base's
# flashmla_bench (the base source tree is the first argument, e.g. unpacked from `git archive`),
# then runs the grid alternately base / this tree REPS times, so that clock and thermal drift hit
# both alike. This tree's bench must already be built in $BUILD_DIR (scripts/gpu_check.sh, step
# build). Results: $LOG/ab_{base,tree}_rep<N>.json, and a per-row table of medians in $LOG/ab.txt.
#
# Usage: scripts/ab_bench.sh BASE_SRC_DIR [GRID_FILE] [REPS]
# Environment: BUILD_DIR (build-gpu), FLASHMLA_LOG_DIR (gpu_logs), FLASHMLA_BENCH_ARGS (extra
# flashmla_bench options, e.g. --warmup-ms 300), CUTLASS_DIR / DLPACK_ROOT as for the main build,
# AB_BASE_BENCH (a flashmla_bench already built from the base tree: skips the base build).
set -uo pipefail
cd "$(dirname "$0")/.."
BASE=$(realpath "$1")
GRID=${2:-bench/grid_flashmla.txt}
REPS=${3:-2}
BUILD_DIR=${BUILD_DIR:-build-gpu}
LOG=$(realpath -m "${FLASHMLA_LOG_DIR:-gpu_logs}")
mkdir -p "$LOG"

BASE_BENCH=${AB_BASE_BENCH:-$BASE/build-ab/bench/flashmla_bench}
if [[ -z "${AB_BASE_BENCH:-}" ]]; then
  source scripts/offline_deps.sh
  cmake -S "$BASE" -B "$BASE/build-ab" -G Ninja -DFLASHMLA_BUILD_TESTS=OFF >"$LOG/ab_base_configure.log" 2>&1 &&
    cmake --build "$BASE/build-ab" --target flashmla_bench >"$LOG/ab_base_build.log" 2>&1 ||
    { echo "base build failed"; tail -30 "$LOG/ab_base_build.log"; exit 1; }
fi
# AB_BUILD_ONLY=1: build the base's bench and stop (scripts/experiment.sh builds it beside this tree).
[[ "${AB_BUILD_ONLY:-0}" == 1 ]] && exit 0

status=0
for rep in $(seq 1 "$REPS"); do
  for side in base tree; do
    if [[ $side == base ]]; then bench="$BASE_BENCH"; else bench="$BUILD_DIR/bench/flashmla_bench"; fi
    "$bench" --grid "$GRID" --json "$LOG/ab_${side}_rep$rep.json" ${FLASHMLA_BENCH_ARGS:-} \
      >"$LOG/ab_${side}_rep$rep.txt" 2>&1
    rc=$?; ((status |= rc))
    echo "ab $side rep $rep rc=$rc"
  done
done

python3 scripts/ab_table.py "$LOG" ab base tree "$REPS" >"$LOG/ab.txt"
cat "$LOG/ab.txt"
exit $status
