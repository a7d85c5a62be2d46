#!/usr/bin/env bash
# Per-kernel GPU time and throughput of single bench shapes under Nsight Compute, for the
# performance log (bench/PERFORMANCE.md). ncu serialises kernels, so programmatic-launch overlap
# is absent here: read durations per kernel, and wall time from flashmla_bench alone.
# Usage: scripts/profile.sh BUILD_DIR LOG_DIR [shape flags ...]   (default: the latency rows)
# PROFILE_DETAIL=1 adds, for the first shape, ncu's warp-stall, memory and source sections of the
# main kernel, and a sweep of the split count (flashmla_bench --sm-parts) on the b=1 rows.
set -uo pipefail
BUILD_DIR=${1:?build dir}
LOG=${2:?log dir}
shift 2
mkdir -p "$LOG"
BENCH="$BUILD_DIR/bench/flashmla_bench"
# Profile only the decode's own kernels, a few launches each.
KERNELS='regex:sm90_decode|combine|reference_decode'
METRICS=gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size

shapes=("$@")
if ((${#shapes[@]} == 0)); then
  shapes=("--batch 1 --s-k 1024 --no-varlen" "--batch 1 --s-k 8192 --no-varlen"
          "--batch 1 --s-k 65536 --no-varlen" "--batch 8 --s-k 8192 --no-varlen"
          "--batch 32 --s-k 8192 --no-varlen")
fi
for shape in "${shapes[@]}"; do
  name=$(echo "$shape" | tr -d '-' | tr ' ' '_')
  # shellcheck disable=SC2086
  ncu --clock-control none -k "$KERNELS" -c 4 --metrics "$METRICS" --csv \
    "$BENCH" $shape --iters 2 --warmup-ms 0 >"$LOG/ncu_$name.csv" 2>"$LOG/ncu_$name.err"
  echo "== $shape"
  python3 "$(dirname "$0")/ncu_csv.py" "$LOG/ncu_$name.csv" --metrics gpu__time_duration.sum,launch__grid_size,\
sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed,\
lts__throughput.avg.pct_of_peak_sustained_elapsed
done

if [[ "${PROFILE_DETAIL:-0}" == 1 ]]; then
  # shellcheck disable=SC2086
  ncu --clock-control none -k regex:sm90_decode -c 1 --section WarpStateStats --section SchedulerStats \
    --section MemoryWorkloadAnalysis --section SourceCounters --section LaunchStats \
    "$BENCH" ${shapes[0]} --iters 1 --warmup-ms 0 >"$LOG/ncu_detail.txt" 2>&1
  echo "== ncu detail of the main kernel (${shapes[0]}): $LOG/ncu_detail.txt"
  grep -E "Stall|Warp Cycles|Issued|Duration|Registers|Eligible|L2 Hit|Mem Busy" "$LOG/ncu_detail.txt" | head -40
  # Where the warps wait, per SASS instruction, for the first shape and for a compute row.
  for shape in "${shapes[0]}" "--batch 128 --s-k 8192"; do
    name=$(echo "$shape" | tr -d '-' | tr ' ' '_')
    # shellcheck disable=SC2086
    ncu --clock-control none -k regex:sm90_decode -c 1 --section WarpStateStats --section SourceCounters \
      --import-source yes -f -o "$LOG/sass_$name" "$BENCH" $shape --iters 1 --warmup-ms 0 \
      >"$LOG/sass_$name.log" 2>&1
    ncu -i "$LOG/sass_$name.ncu-rep" --page source --csv --print-source sass >"$LOG/sass_$name.csv" 2>&1
    echo "== SASS stall hot spots ($shape)"
    python3 "$(dirname "$0")/sass_hotspots.py" "$LOG/sass_$name.csv" 40
  done
  # How busy the tensor pipe, shared memory and the schedulers are on a compute row: the figures that
  # decide whether the kernel is bound by shared-memory bandwidth or by its schedule.
  compute_shape="--batch 128 --s-k 8192"
  # shellcheck disable=SC2086
  ncu --clock-control none -k regex:sm90_decode -c 1 --section SpeedOfLight --section ComputeWorkloadAnalysis \
    --section MemoryWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables --section SchedulerStats \
    --section WarpStateStats --print-details all "$BENCH" $compute_shape --iters 1 --warmup-ms 0 \
    >"$LOG/ncu_compute_sections.txt" 2>&1
  echo "== ncu sections of the main kernel ($compute_shape): $LOG/ncu_compute_sections.txt"
  grep -E "Duration|SM Frequency|Compute \(SM\) Throughput|Memory Throughput|Shared|Tensor|Issue Slots|Eligible|No Eligible|Bank" \
    "$LOG/ncu_compute_sections.txt" | head -60
  # shellcheck disable=SC2086
  ncu --clock-control none -k regex:sm90_decode -c 1 --metrics \
    sm__cycles_elapsed.avg,sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_elapsed,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_reads.avg.pct_of_peak_sustained_elapsed,l1tex__data_bank_writes.avg.pct_of_peak_sustained_elapsed \
    "$BENCH" $compute_shape --iters 1 --warmup-ms 0 >"$LOG/ncu_compute_pipes.txt" 2>&1
  echo "== tensor pipe and shared-memory banks ($compute_shape)"
  grep -E "sm__|l1tex__|ERR" "$LOG/ncu_compute_pipes.txt" | head -20
  echo "== split count sweep (median µs of flashmla_bench)"
  for s_k in 1024 8192 65536; do
    for parts in 8 16 33 66; do
      t=$("$BENCH" --batch 1 --s-k "$s_k" --no-varlen --sm-parts "$parts" --warmup-ms 300 2>&1 |
        awk '$1 == "custom" {print $10}')
      echo "  b=1 s_k=$s_k sm_parts=$parts: $t us"
    done
  done
fi
