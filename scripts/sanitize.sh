#!/usr/bin/env bash
# compute-sanitizer (memcheck, racecheck, synccheck, initcheck) over a representative subset of the
# GPU tests: the 140-token cases of both backends (varlen, causal, zero-length, h_kv > 1, page 128,
# split requests) and the device scheduler. Usage: scripts/sanitize.sh BUILD_DIR [LOG_DIR]
# TOOLS overrides the tool list. Exits non-zero when any tool reports an error.
set -uo pipefail
BUILD_DIR=${1:?usage: scripts/sanitize.sh BUILD_DIR [LOG_DIR]}
LOG=${2:-sanitizer_logs}
TOOLS=${TOOLS:-memcheck racecheck synccheck initcheck}
FILTER=${FILTER:-'Cases/DecodeGpuTest.MatchesCpuReference/*sk140*:SchedulerDevice.*'}
mkdir -p "$LOG"
status=0
for tool in $TOOLS; do
  compute-sanitizer --tool "$tool" --error-exitcode 99 \
    "$BUILD_DIR/cpp_tests/flashmla_tests" --gtest_filter="$FILTER" >"$LOG/sanitizer_$tool.log" 2>&1
  rc=$?
  ((status |= rc))
  echo "== compute-sanitizer $tool rc=$rc: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOG/sanitizer_$tool.log" | tail -1) $(grep -E '^\[  (PASSED|FAILED)' "$LOG/sanitizer_$tool.log" | tr '\n' ' ')"
done
exit $status
