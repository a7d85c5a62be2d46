#!/usr/bin/env bash
# DRAM and L2 traffic of the main kernel, one Nsight Compute launch per shape and bench binary
# (this tree's flashmla_bench and a probe's, say): the figures that tell whether a change moved a
# kernel's reads between DRAM and L2. ncu flushes the caches before the launch and serialises it,
# so compare bytes and hit rates; cycles only roughly (clocks are not locked).
# Usage: scripts/l2_traffic.sh LOG_DIR LABEL=BENCH [LABEL=BENCH ...]
#   L2_TRAFFIC_SHAPES: shapes, ';'-separated flashmla_bench flags (default: the compute rows at
#   s_k=8192, s_q 1 and 2)
set -uo pipefail
LOG=${1:?usage: scripts/l2_traffic.sh LOG_DIR LABEL=BENCH ...}
shift
mkdir -p "$LOG"
METRICS=gpu__time_duration.sum,sm__cycles_elapsed.max,dram__bytes_read.sum,lts__t_sectors_op_read.sum,\
lts__t_sector_op_read_hit_rate.pct,lts__throughput.avg.pct_of_peak_sustained_elapsed,\
sm__pipe_tensor_op_gmma_cycles_active.avg.pct_of_peak_sustained_elapsed
IFS=';' read -r -a shapes <<<"${L2_TRAFFIC_SHAPES:---batch 128 --s-q 1 --s-k 8192;--batch 128 --s-q 2 --s-k 8192}"
for shape in "${shapes[@]}"; do
  name=$(echo "$shape" | tr -d '-' | tr ' ' '_')
  for labelled in "$@"; do
    label=${labelled%%=*}
    bench=${labelled#*=}
    # shellcheck disable=SC2086
    ncu --clock-control none -k regex:sm90_decode -c 1 --metrics "$METRICS" --csv \
      "$bench" $shape --iters 1 --warmup-ms 0 >"$LOG/${label}_$name.csv" 2>&1
    echo "== $label: $shape"
    python3 "$(dirname "$0")/ncu_csv.py" "$LOG/${label}_$name.csv" --metrics "$METRICS"
  done
done
