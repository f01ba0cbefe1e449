#!/usr/bin/env bash
# Where a MoE layer step's time goes, by native function: `perf record` of the
# one-process layer benchmark (both threads), then the top symbols.
#   scripts/profile-layer.sh [extra bench layer options]     e.g. --tokens 1024
# Needs perf (Debian: apt-get install linux-perf) and permission to sample
# (root, or kernel.perf_event_paranoid <= 1). By stage and by op, without
# perf: `moe-ep bench layer --profile` (BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "perf not found (Debian: apt-get install linux-perf)" >&2; exit 1; }
out=${PERF_DATA:-/tmp/moe-layer.perf.data}
MOE_EP_NUM_THREADS=${MOE_EP_NUM_THREADS:-2} perf record -F 499 -g -o "$out" -- \
  node dist/cli.js bench layer --nproc 1 --runs 3 --profile "$@"
perf report -i "$out" --no-children --sort symbol --percent-limit 0.5 --stdio 2>/dev/null | grep -v '^$' | head -60
