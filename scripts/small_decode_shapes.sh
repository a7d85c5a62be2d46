# Sourced by scripts/latency_breakdown.sh and scripts/phase_trace.sh: the small decodes whose fixed
# cost they take apart, as flashmla_bench options (each run with --no-varlen).
small_decode_shapes=(
  "--batch 1 --h-q 64 --s-k 64"                  # one CTA, one tile, direct write
  "--batch 1 --h-q 128 --s-k 64"                 # two CTAs (two 64-row tiles), one tile each
  "--batch 2 --h-q 128 --s-k 64 --sm-parts 1"    # two visits per CTA: stamps are the second's, its code warm
  "--batch 1 --h-q 128 --s-k 128 --sm-parts 2"   # two parts of one tile each: the combine merges 2 slots
  "--batch 1 --h-q 128 --s-k 1024 --sm-parts 1"  # 16 tiles on one part, direct write
  "--batch 1 --h-q 128 --s-k 4096 --sm-parts 1"  # 64 tiles on one part: the per-tile period of one CTA pair
  "--batch 1 --h-q 128 --s-k 1024"               # the latency rows
  "--batch 1 --h-q 128 --s-k 8192"
  "--batch 1 --h-q 128 --s-k 65536"
  "--batch 8 --h-q 128 --s-k 8192"
  "--batch 32 --h-q 128 --s-k 8192"
)
