#!/usr/bin/env bash
# One GPU call that checks this checkout and times one probe build against it:
#   1. builds this checkout (with the compiler's report) and, at the same time, the probe tree's
#      bench (a `git archive` tarball);
#   2. smoke decode cases, then compute-sanitizer (scripts/sanitize.sh) on this checkout;
#   3. the A/B of the probe (base) against this checkout (tree) on PROBE_GRID, PROBE_REPS times
#      alternated (scripts/ab_bench.sh);
#   4. DTYPE_ROWS of the grid (a case name, default "compute") in bf16 and fp16 alternated
#      DTYPE_REPS times by the method's warm-up (DTYPE_WARMUP_MS, 1000), and a ratio table;
#   5. "l2": scripts/l2_traffic.sh on the probe's bench and this checkout's (DRAM bytes, L2 sectors
#      and hit rate per shape); "peers": scripts/profile_peers.sh on PROFILE_PEERS_SHAPES
#      (';'-separated bench.py shape flags, default the s_q=2 compute row at s_k=8192);
#   6. gpu_check.sh's steps bench (the full grid by the method), ctest and pytest, in that order.
# Steps: VERIFY_STEPS (default "build smoke sanitize ab dtype"; add "l2", "peers", "bench", "ctest",
# "pytest").
# Environment otherwise as for gpu_check.sh (FLASHMLA_DEPS_DIR, FLASHMLA_LOG_DIR); the A/B takes
# its flashmla_bench options from PROBE_BENCH_ARGS (default --warmup-ms 300), the grid of step
# bench runs with the bench's defaults.
#
# Usage: scripts/verify_and_probe.sh PROBE_TAR
set -uo pipefail
cd "$(dirname "$0")/.."
PROBE_TAR=$(realpath "${1:?usage: scripts/verify_and_probe.sh PROBE_TAR}")
LOG=$(realpath -m "${FLASHMLA_LOG_DIR:-gpu_logs}")
STEPS=${VERIFY_STEPS:-build smoke sanitize ab dtype}
BUILD_DIR=${BUILD_DIR:-build-gpu}
mkdir -p "$LOG"
step() { [[ " $STEPS " == *" $1 "* ]]; }
source scripts/offline_deps.sh
status=0

probe=$(mktemp -d)/probe
mkdir -p "$probe" && tar xf "$PROBE_TAR" -C "$probe" || exit 1
if step build; then
  FLASHMLA_LOG_DIR="$LOG/probe" AB_BUILD_ONLY=1 bash scripts/ab_bench.sh "$probe" &
  probe_pid=$!
  FLASHMLA_GPU_STEPS=build bash scripts/gpu_check.sh | grep -E '^==|sm90_decode|spill' | head -6
  ((status |= PIPESTATUS[0]))
  wait "$probe_pid" || { echo "probe build failed"; exit 1; }
fi
for s in smoke sanitize; do
  if step $s; then
    FLASHMLA_GPU_STEPS=$s bash scripts/gpu_check.sh | grep -E '^=='
    ((status |= PIPESTATUS[0]))
  fi
done
((status == 0)) || exit $status

if step ab; then
  FLASHMLA_BENCH_ARGS="${PROBE_BENCH_ARGS:---warmup-ms 300}" AB_BASE_BENCH="$probe/build-ab/bench/flashmla_bench" \
    bash scripts/ab_bench.sh "$probe" \
    "${PROBE_GRID:-bench/grid_flashmla.txt}" "${PROBE_REPS:-2}" | grep -v '^ab '
  ((status |= PIPESTATUS[0]))
fi

if step dtype; then
  rows="$LOG/dtype_grid.txt"
  grep -E "^(#|${DTYPE_ROWS:-compute} )" bench/grid_flashmla.txt >"$rows"
  for rep in $(seq 1 "${DTYPE_REPS:-2}"); do
    for dtype in bf16 fp16; do
      "$BUILD_DIR/bench/flashmla_bench" --grid "$rows" --dtype "$dtype" --warmup-ms "${DTYPE_WARMUP_MS:-1000}" \
        --json "$LOG/dtype_${dtype}_rep$rep.json" >"$LOG/dtype_${dtype}_rep$rep.txt" 2>&1
      ((status |= $?))
    done
  done
  python3 scripts/ab_table.py "$LOG" dtype bf16 fp16 "${DTYPE_REPS:-2}" --ratio --width 18 | tee "$LOG/dtype.txt"
fi

if step l2; then
  bash scripts/l2_traffic.sh "$LOG/l2" "probe=$probe/build-ab/bench/flashmla_bench" "tree=$BUILD_DIR/bench/flashmla_bench"
fi
if step peers; then
  IFS=';' read -r -a shapes <<<"${PROFILE_PEERS_SHAPES:---s-q 2 --s-k 8192}"
  bash scripts/profile_peers.sh "$BUILD_DIR" "$LOG/peers" "${shapes[@]}"
fi

for s in bench ctest pytest; do
  if step $s; then
    FLASHMLA_BENCH_ARGS= FLASHMLA_GPU_STEPS=$s bash scripts/gpu_check.sh | grep -E '^==|^(compute|memory|latency) '
    ((status |= PIPESTATUS[0]))
  fi
done
exit $status
