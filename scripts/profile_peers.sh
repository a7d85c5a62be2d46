#!/usr/bin/env bash
# Nsight Compute's view of our main kernel and of FlashMLA's on the same rows, for the performance
# log: one launch of each (the correctness call bench/bench.py makes before timing), with the
# sections that say where the cycles go (tensor pipe, memory, issue, warp stalls). Clocks are not
# locked, so compare cycles, not µs. Needs the flash_mla peer importable (install_peer_wheels).
# First, each kernel of one decode call (plan, main kernel, combine) with its duration; then the
# main kernels' sections. PROFILE_PEERS_SECTIONS=0 skips the sections.
# Usage: scripts/profile_peers.sh BUILD_DIR LOG_DIR [shape flags of bench.py ...]
#        (default: the compute rows s_q=1 and s_q=2 at s_k=8192)
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${1:?build dir}
LOG=$(realpath -m "${2:?log dir}")
shift 2
mkdir -p "$LOG"
source scripts/offline_deps.sh
export PYTHONPATH="$PWD/$BUILD_DIR/python:$(install_peer_wheels)"
SECTIONS=(--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
          --section MemoryWorkloadAnalysis_Tables --section SchedulerStats --section WarpStateStats
          --section LaunchStats --print-details all
          --metrics dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_op_read.sum,lts__t_sectors_op_write.sum,smsp__inst_executed.sum)
declare -A KERNEL=([ours]='regex:sm90_decode_kernel' [flash_mla]='regex:flash_fwd_splitkv_mla_kernel')
# Every kernel of one decode call (plan, main kernel, combine), for the per-kernel split of a row.
declare -A CALL_KERNELS=([ours]='regex:plan_splits|sm90_decode|combine_kernel' [flash_mla]='regex:get_mla|flash_fwd')

shapes=("$@")
((${#shapes[@]} == 0)) && shapes=("--s-q 1 --s-k 8192" "--s-q 2 --s-k 8192")
for shape in "${shapes[@]}"; do
  name=$(echo "$shape" | tr -d '-' | tr ' ' '_')
  for who in ours flash_mla; do
    peers=$([[ $who == ours ]] && echo "" || echo flash_mla)
    # shellcheck disable=SC2086
    ncu --clock-control none -k "${CALL_KERNELS[$who]}" -c 3 --csv \
      --metrics gpu__time_duration.sum,sm__cycles_elapsed.max,launch__grid_size \
      python3 bench/bench.py $shape --peers "$peers" --iters 1 --warmup-ms 0 >"$LOG/${who}_${name}_kernels.csv" 2>&1
    echo "== $who, $shape: each kernel of one call (name, metric, value)"
    python3 scripts/ncu_csv.py "$LOG/${who}_${name}_kernels.csv"
    [[ "${PROFILE_PEERS_SECTIONS:-1}" == 0 ]] && continue
    # shellcheck disable=SC2086
    ncu --clock-control none -k "${KERNEL[$who]}" -c 1 "${SECTIONS[@]}" \
      python3 bench/bench.py $shape --peers "$peers" --iters 1 --warmup-ms 0 >"$LOG/${who}_$name.txt" 2>&1
    echo "== $who, $shape"
    grep -E "^\s+(Duration|Elapsed Cycles|SM Frequency|DRAM Throughput|L2 Cache Throughput|Compute \(SM\) Throughput|Executed Ipc Active|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Registers Per Thread|Block Size|Grid Size|Dynamic Shared Memory Per Block|Threads)\b" \
      "$LOG/${who}_$name.txt" | head -20
    grep -E "Pipe Tensor Cycles Active|Pipe Shared Cycles Active|dram__bytes|lts__t_sectors_op|smsp__inst_executed.sum" \
      "$LOG/${who}_$name.txt" | head -8
  done
done
