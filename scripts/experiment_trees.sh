#!/usr/bin/env bash
# One GPU call for several kernel variants against this checkout: each variant comes as a
# `git archive` tarball. All variants and this checkout's bench are built at once, each variant
# runs the smoke decode cases, then the grid is timed alternately this checkout / variant for each
# (scripts/ab_bench.sh, run from the variant). Steps "ctest", "sanitize" and "pytest" (run in that
# order, quickest first) add each variant's C++ tests, compute-sanitizer pass and Python tests;
# step "trace" the phase trace of this checkout (scripts/phase_trace.sh) under each L2 flush mode
# of TRACE_FLUSHES (default "write none").
#
# Usage: scripts/experiment_trees.sh TREE_TAR...
# Environment: as for gpu_check.sh (FLASHMLA_DEPS_DIR, FLASHMLA_LOG_DIR, FLASHMLA_BENCH_ARGS),
# AB_REPS (2), AB_GRID (bench/grid_flashmla.txt), EXPERIMENT_STEPS (default "ab").
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=$(realpath -m "${FLASHMLA_LOG_DIR:-gpu_logs}")
STEPS=${EXPERIMENT_STEPS:-ab}
GRID=$(realpath "${AB_GRID:-bench/grid_flashmla.txt}")
BASE=$PWD
mkdir -p "$LOG"
step() { [[ " $STEPS " == *" $1 "* ]]; }
source scripts/offline_deps.sh  # unpacks CUTLASS once for every build below

trees=()
pids=()
for tarball in "$@"; do
  name=$(basename "$tarball" .tar)
  dir=$(mktemp -d)/$name
  mkdir -p "$dir" && tar xf "$tarball" -C "$dir" || exit 1
  trees+=("$dir")
  (cd "$dir" && FLASHMLA_LOG_DIR="$LOG/$name" FLASHMLA_GPU_STEPS=build bash scripts/gpu_check.sh >/dev/null) &
  pids+=($!)
done
AB_BUILD_ONLY=1 bash scripts/ab_bench.sh "$BASE" &
pids+=($!)
for pid in "${pids[@]}"; do wait "$pid" || { echo "a build failed (logs under $LOG)"; exit 1; }; done

status=0
for dir in "${trees[@]}"; do
  name=$(basename "$dir")
  echo "== $name"
  grep -iE 'sm90_decode|spill' "$LOG/$name/resources.txt" | head -4
  (cd "$dir" && FLASHMLA_LOG_DIR="$LOG/$name" FLASHMLA_GPU_STEPS=smoke bash scripts/gpu_check.sh | grep '^==') ||
    { status=1; continue; }
  if step ab; then
    (cd "$dir" && FLASHMLA_LOG_DIR="$LOG/$name" bash scripts/ab_bench.sh "$BASE" "$GRID" "${AB_REPS:-2}" | grep -v '^ab ')
    ((status |= $?))
  fi
  for tests in ctest sanitize pytest; do
    if step $tests; then
      (cd "$dir" && FLASHMLA_LOG_DIR="$LOG/$name" FLASHMLA_GPU_STEPS=$tests bash scripts/gpu_check.sh | grep '^==')
      ((status |= $?))
    fi
  done
done

if step trace; then
  # The floor graphs come from the first variant's regular bench: the same code as this checkout's.
  for flush in ${TRACE_FLUSHES:-write none}; do
    echo "== trace, flush $flush"
    TRACE_BENCH_ARGS="--flush $flush" bash scripts/phase_trace.sh "${trees[0]}/build-gpu" build-trace \
      "$LOG/trace_$flush" >/dev/null
    grep -E '^(==|trace  (main|combine)|trace  event)' "$LOG/trace_$flush/trace.txt"
  done
fi
exit $status
