#!/usr/bin/env bash
# One GPU call for an experiment: this checkout against a probe tree, then where the bytes and
# cycles go.
#   1. scripts/verify_and_probe.sh PROBE_TAR with VERIFY_STEPS (default "build smoke ab"): both
#      builds, the smoke cases, the A/B on PROBE_GRID;
#   2. scripts/l2_traffic.sh on this tree's bench and the probe's (L2_TRAFFIC_SHAPES; skipped with
#      PROBE_CALL_L2=0);
#   3. scripts/profile_peers.sh on PROFILE_PEERS_SHAPES (';'-separated bench.py shape flags, default
#      the s_q=2 compute row at s_k=8192; skipped with PROBE_CALL_PEERS=0).
# Each step's output is appended to LOG_DIR/call.txt as it runs, so a call cut by its time limit
# still leaves what finished.
# Usage: scripts/probe_call.sh PROBE_TAR LOG_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
PROBE_TAR=$(realpath "${1:?usage: scripts/probe_call.sh PROBE_TAR LOG_DIR}")
LOG=$(realpath -m "${2:?usage: scripts/probe_call.sh PROBE_TAR LOG_DIR}")
mkdir -p "$LOG"
export FLASHMLA_LOG_DIR="$LOG" BUILD_DIR=${BUILD_DIR:-build-gpu}
# verify_and_probe.sh unpacks the probe under a fresh TMPDIR; keep it findable for step 2.
export TMPDIR
TMPDIR=$(mktemp -d)
: "${VERIFY_STEPS:=build smoke ab}"
export VERIFY_STEPS
log() { tee -a "$LOG/call.txt"; }

bash scripts/verify_and_probe.sh "$PROBE_TAR" 2>&1 | log
status=${PIPESTATUS[0]}
((status == 0)) || { echo "verify_and_probe failed: $status" | log; exit "$status"; }

probe_bench=$(ls "$TMPDIR"/*/probe/build-ab/bench/flashmla_bench 2>/dev/null | head -1)
if [[ "${PROBE_CALL_L2:-1}" != 0 && -n "$probe_bench" ]]; then
  bash scripts/l2_traffic.sh "$LOG/l2" "probe=$probe_bench" "tree=$BUILD_DIR/bench/flashmla_bench" 2>&1 | log
fi
if [[ "${PROBE_CALL_PEERS:-1}" != 0 ]]; then
  IFS=';' read -r -a shapes <<<"${PROFILE_PEERS_SHAPES:---s-q 2 --s-k 8192}"
  bash scripts/profile_peers.sh "$BUILD_DIR" "$LOG/peers" "${shapes[@]}" 2>&1 | log
fi
exit 0
