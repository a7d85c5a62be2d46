#!/usr/bin/env bash
# Splits the fixed cost of a small decode into its parts with flashmla_bench alone (no profiler,
# so programmatic-launch overlap is as in a real run): one 64-token tile on one CTA or two, direct
# write (the combine launches and exits at once), the same tile split in two (the combine merges
# two slots), a request walked by one part without a split, and the latency rows as the grid has
# them. Each shape runs under both flushes: the write flush is the method of the tables, the read
# flush shows what the dirty lines it leaves cost. Median µs per line, for bench/PERFORMANCE.md.
# Usage: scripts/latency_breakdown.sh BUILD_DIR LOG_DIR
set -uo pipefail
BUILD_DIR=${1:?build dir}
LOG=${2:?log dir}
mkdir -p "$LOG"
BENCH="$BUILD_DIR/bench/flashmla_bench"

source "$(dirname "$0")/small_decode_shapes.sh"
for flush in write read; do
  for shape in "${small_decode_shapes[@]}"; do
    # shellcheck disable=SC2086
    t=$("$BENCH" $shape --no-varlen --flush "$flush" --warmup-ms 300 2>>"$LOG/latency_breakdown.err" |
      awk '$1 == "custom" {print $10}')
    printf '%-6s %-48s %s us\n' "$flush" "$shape" "${t:-?}"
  done
done | tee "$LOG/latency_breakdown.txt"
