#!/usr/bin/env bash
# Why fp16 runs 2-6% slower than bf16 on the compute rows when the two kernels differ only in the
# element type of their HGMMA and F2FP instructions: cycles or clock? For each shape, the main
# kernel's cycles of one cold launch per dtype under Nsight Compute (no clock control, so
# unthrottled). Equal cycles here and a lower sustained clock under fp16 at the power cap
# (bench/power_draw.py) mean more energy per cycle; more cycles mean the tensor pipe's rate.
# Usage: scripts/dtype_cycles.sh BUILD_DIR LOG_DIR [shape flags of flashmla_bench ...]
#        (default: the compute row s_q=1 s_k=8192)
set -uo pipefail
cd "$(dirname "$0")/.."
BENCH=${1:?build dir}/bench/flashmla_bench
LOG=$(realpath -m "${2:?log dir}")
shift 2
mkdir -p "$LOG"
shapes=("$@")
((${#shapes[@]} == 0)) && shapes=("--s-q 1 --s-k 8192")

for shape in "${shapes[@]}"; do
  name=$(echo "$shape" | tr -d '-' | tr ' ' '_')
  echo "== $shape: main kernel, one cold launch per dtype (ncu, unthrottled)"
  for dtype in bf16 fp16; do
    # shellcheck disable=SC2086
    ncu --clock-control none -k regex:sm90_decode_kernel -c 1 --csv \
      --metrics sm__cycles_elapsed.max,gpu__time_duration.sum,smsp__cycles_active.avg,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active \
      "$BENCH" $shape --dtype "$dtype" --iters 1 --warmup-ms 0 >"$LOG/ncu_${name}_$dtype.csv" 2>&1
    python3 scripts/ncu_csv.py "$LOG/ncu_${name}_$dtype.csv" --label "$dtype"
  done
done
