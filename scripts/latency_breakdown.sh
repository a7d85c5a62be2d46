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

shapes=(
  "--batch 1 --h-q 64 --s-k 64"                  # one CTA, one tile, direct write
  "--batch 1 --h-q 128 --s-k 64"                 # two CTAs (two 64-row tiles), one tile each
  "--batch 1 --h-q 128 --s-k 128 --sm-parts 2"   # two parts of one tile each: the combine merges 2 slots
  "--batch 1 --h-q 128 --s-k 1024 --sm-parts 1"  # 16 tiles on one part, direct write
  "--batch 1 --h-q 128 --s-k 4096 --sm-parts 1"  # 64 tiles on one part: the per-tile period of one CTA pair
  "--batch 1 --h-q 128 --s-k 1024"               # the latency rows
  "--batch 1 --h-q 128 --s-k 8192"
  "--batch 1 --h-q 128 --s-k 65536"
  "--batch 8 --h-q 128 --s-k 8192"
)
for flush in write read; do
  for shape in "${shapes[@]}"; do
    # shellcheck disable=SC2086
    t=$("$BENCH" $shape --no-varlen --flush "$flush" --warmup-ms 300 2>>"$LOG/latency_breakdown.err" |
      awk '$1 == "custom" {print $10}')
    printf '%-6s %-48s %s us\n' "$flush" "$shape" "${t:-?}"
  done
done | tee "$LOG/latency_breakdown.txt"
