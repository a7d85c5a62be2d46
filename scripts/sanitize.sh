#!/usr/bin/env bash
# compute-sanitizer over a representative subset of the GPU tests, one tool at a time, with a
# summary line per tool. The subset: the 140-token decode cases of both backends (varlen, causal,
# zero-length, h_kv > 1, page 128, split requests) and the device scheduler for every tool; memcheck
# (the tool that sees out-of-bounds accesses) also runs every validating-mode test, a shortened GPU
# fuzz run, the concurrency and determinism tests; synccheck and initcheck add the main
# validating-mode tests. racecheck, the slowest, sticks to the kernels.
#
# Usage: scripts/sanitize.sh BUILD_DIR [LOG_DIR]
#   TOOLS               tools to run (default: memcheck racecheck synccheck initcheck)
#   FILTER              one gtest filter for every tool (default: the per-tool subsets above)
#   SANITIZE_PYTEST=1   also run the Python validating-mode and fuzz tests under memcheck (slow:
#                       PyTorch starts up under the tool); needs BUILD_DIR/python
# Exits non-zero when any tool reports an error or any test fails.
set -uo pipefail
BUILD_DIR=${1:?usage: scripts/sanitize.sh BUILD_DIR [LOG_DIR]}
LOG=${2:-sanitizer_logs}
TOOLS=${TOOLS:-memcheck racecheck synccheck initcheck}
mkdir -p "$LOG"

kernels='Cases/DecodeGpuTest.MatchesCpuReference/*sk140*:SchedulerDevice.*'
validating='Backends/ValidateGpu.*:Corruptions/ValidateCorruptionGpu.*:ValidateGpuScale.*'
validating_short='Backends/ValidateGpu.*:ValidateGpuScale.FirstFaultOfManyIsDeterministic'
reliability='ApiFuzzGpu.*:Backends/ApiEdgesGpu.*:ConcurrencyGpu.*:Backends/DeterminismGpu.*'
filter_for() {
  if [[ -n "${FILTER:-}" ]]; then echo "$FILTER"; return; fi
  case "$1" in
    memcheck) echo "$kernels:$validating:$reliability" ;;
    racecheck) echo "$kernels" ;;
    *) echo "$kernels:$validating_short" ;;
  esac
}

# Shorter fuzz and concurrency runs under the tools (every call is 10-100x slower there).
export FLASHMLA_FUZZ_GPU_CASES=${FLASHMLA_FUZZ_GPU_CASES:-150}
export FLASHMLA_CONCURRENCY_ROUNDS=${FLASHMLA_CONCURRENCY_ROUNDS:-2}

summary() {  # tool, rc, log, seconds
  local errors tests
  errors=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$3" | tail -1 | sed -E 's/^========= //')
  tests=$(grep -E '^\[  (PASSED  |FAILED  |SKIPPED )\] [0-9]+ test' "$3" | sed -E 's/, listed below://' | tr '\n' ' ')
  [[ -z "$tests" ]] && tests=$(grep -E '[0-9]+ (passed|failed)' "$3" | tail -1)
  echo "== compute-sanitizer $1 rc=$2 (${4}s): ${errors:-no summary} ${tests}"
}

status=0
for tool in $TOOLS; do
  start=$SECONDS
  compute-sanitizer --tool "$tool" --error-exitcode 99 \
    "$BUILD_DIR/cpp_tests/flashmla_tests" --gtest_filter="$(filter_for "$tool")" \
    >"$LOG/sanitizer_$tool.log" 2>&1
  rc=$?
  # A run in which no test ran (no GPU, a filter that matches nothing) proves nothing.
  if ! grep -qE '^\[  PASSED  \] [1-9][0-9]* test' "$LOG/sanitizer_$tool.log"; then
    echo "== compute-sanitizer $tool: no test passed under the tool"
    ((rc == 0)) && rc=1
  fi
  ((status |= rc))
  summary "$tool" "$rc" "$LOG/sanitizer_$tool.log" $((SECONDS - start))
done

if [[ "${SANITIZE_PYTEST:-0}" == 1 ]]; then
  start=$SECONDS
  PYTHONPATH="$BUILD_DIR/python${PYTHONPATH:+:$PYTHONPATH}" \
    compute-sanitizer --tool memcheck --error-exitcode 99 \
    python3 -m pytest tests/test_validate.py tests/test_fuzz.py -q -x -k "not large_batch" \
    >"$LOG/sanitizer_memcheck_pytest.log" 2>&1
  rc=$?
  ((status |= rc))
  summary "memcheck (pytest)" "$rc" "$LOG/sanitizer_memcheck_pytest.log" $((SECONDS - start))
fi
exit $status
