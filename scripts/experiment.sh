#!/usr/bin/env bash
# One GPU call for a kernel change, in the order that fails cheapest: this tree built and checked
# (scripts/gpu_check.sh steps build and smoke), the SM90 kernels' SASS and the launch shape of one
# compute row kept for the log, the grid timed alternately against a base tree
# (scripts/ab_bench.sh), the C++ GPU tests, and last (step "trace", not in the default steps) the
# per-phase trace of the small decodes for this tree and the base (scripts/phase_trace.sh). The
# base comes as a `git archive` tarball.
#
# Usage: scripts/experiment.sh [BASE_TAR]   (default .deps/base.tar)
# Environment: as for gpu_check.sh (FLASHMLA_DEPS_DIR, BUILD_DIR, FLASHMLA_LOG_DIR,
# FLASHMLA_BENCH_ARGS), AB_REPS (2), AB_GRID (the grid file; bench/grid_flashmla.txt),
# EXPERIMENT_STEPS (default "check shape ab ctest"), LAUNCH_ROW (flashmla_bench options of the
# row whose launch Nsight Compute reports).
set -uo pipefail
cd "$(dirname "$0")/.."
BASE_TAR=$(realpath "${1:-.deps/base.tar}")
LOG=$(realpath -m "${FLASHMLA_LOG_DIR:-gpu_logs}")
BUILD_DIR=${BUILD_DIR:-build-gpu}
STEPS=${EXPERIMENT_STEPS:-check shape ab ctest}
LAUNCH_ROW=${LAUNCH_ROW:---batch 128 --h-q 128 --s-k 4096}
mkdir -p "$LOG"
step() { [[ " $STEPS " == *" $1 "* ]]; }

source scripts/offline_deps.sh

base=$(mktemp -d)
tar xf "$BASE_TAR" -C "$base"
# The base's bench builds while this tree builds; ab_bench.sh then finds it up to date.
AB_BUILD_ONLY=1 bash scripts/ab_bench.sh "$base" &
base_build=$!

status=0
if step check; then
  FLASHMLA_GPU_STEPS="build smoke" bash scripts/gpu_check.sh || { wait "$base_build"; exit 1; }
fi
wait "$base_build" || exit 1

if step shape; then
  # TMA, mbarrier and wgmma instructions of each SM90 kernel instantiation, and what Nsight
  # Compute reports of the launch (cluster shape, grid, registers, shared memory).
  cuobjdump -sass "$BUILD_DIR/src/libflashmla.so" |
    grep -E "Function :|UTMALDG|UTMAPF|SYNCS|HGMMA.64x64x16|WARPGROUP" >"$LOG/sass_sm90.txt" 2>&1
  ncu --clock-control none -k regex:sm90_decode_kernel -c 1 --section LaunchStats \
    "$BUILD_DIR/bench/flashmla_bench" $LAUNCH_ROW --iters 1 --warmup-ms 0 >"$LOG/launch_shape.txt" 2>&1
  grep -E "Cluster|Grid Size|Registers|Shared Memory Config|Dynamic Shared" "$LOG/launch_shape.txt"
fi

if step ab; then
  bash scripts/ab_bench.sh "$base" "${AB_GRID:-bench/grid_flashmla.txt}" "${AB_REPS:-2}"
  ((status |= $?))
fi

if step ctest; then
  FLASHMLA_GPU_STEPS="ctest" bash scripts/gpu_check.sh
  ((status |= $?))
fi

if step trace; then
  FLASHMLA_GPU_STEPS="trace" bash scripts/gpu_check.sh
  if [[ -f "$base/scripts/phase_trace.sh" ]]; then
    # The base's own trace build; the floor graphs are the same code, so this tree's bench runs them.
    (cd "$base" && bash scripts/phase_trace.sh "$OLDPWD/$BUILD_DIR" "$base/build-trace" "$LOG/trace_base" >/dev/null)
  else
    echo "the base has no scripts/phase_trace.sh: no base trace"
  fi
fi
exit $status
