#!/usr/bin/env bash
# The MoE layer's targets against its GEMM roofline (BENCHMARKS.md), each case
# with OpenBLAS core SkylakeX and with Haswell, one table line each:
#   case, core, % of the GEMM roofline, minor page faults per step, bytes zeroed per step, ms per step.
# A core the CPU lacks (SkylakeX without AVX-512) is reported as skipped, not run.
#   scripts/bench-layer-targets.sh            (RUNS=7 rounds per case by default)
#   RUNS=3 CLI="npx moe-ep" scripts/bench-layer-targets.sh
set -uo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-node dist/cli.js}
RUNS=${RUNS:-7}
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
supports() {
  case "$1" in
    SkylakeX) for f in avx512f avx512vl avx512bw avx512dq; do grep -qw "$f" <<<"$flags" || return 1; done ;;
    Haswell) for f in avx2 fma; do grep -qw "$f" <<<"$flags" || return 1; done ;;
  esac
}
cases=(
  "ep2-top2|--nproc 2"
  "ep1-2threads|--nproc 1"
  "ep4|--nproc 4"
  "ep2-top8-of-64-dff512|--nproc 2 --experts 64 --top-k 8 --d-ff 512"
  "ep2-eval-128-tokens|--nproc 2 --tokens 128 --forward-only"
)
printf '%-24s %-9s %12s %12s %16s %10s\n' case core roofline faults/step "zeroed B/step" "ms/step"
for core in SkylakeX Haswell; do
  for c in "${cases[@]}"; do
    name=${c%%|*}
    args=${c#*|}
    if ! supports "$core"; then
      printf '%-24s %-9s %12s\n' "$name" "$core" "skipped (CPU lacks it)"
      continue
    fi
    threads=()
    [ "$name" = "ep1-2threads" ] && threads=(MOE_EP_NUM_THREADS=2)
    # shellcheck disable=SC2086
    out=$(env "${threads[@]}" OPENBLAS_CORETYPE="$core" $CLI bench layer $args --runs "$RUNS" 2>&1)
    line=$(grep -m1 'summary:' <<<"$out")
    if [ -z "$line" ]; then
      printf '%-24s %-9s %12s\n' "$name" "$core" "failed"
      tail -5 <<<"$out" >&2
      continue
    fi
    pct=$(sed -E 's/.*summary: ([0-9.]+%) of roofline.*/\1/' <<<"$line")
    faults=$(sed -E 's/.* ([0-9]+) faults\/step.*/\1/' <<<"$line")
    zeroed=$(sed -E 's/.* ([0-9]+) bytes zeroed\/step.*/\1/' <<<"$line")
    ms=$(sed -E 's/.* ([0-9.]+) ms\/step.*/\1/' <<<"$line")
    printf '%-24s %-9s %12s %12s %16s %10s\n' "$name" "$core" "$pct" "$faults" "$zeroed" "$ms"
    # Evaluation: the latency's split by stage (forward ms, rank 0).
    if [ "$name" = "ep2-eval-128-tokens" ]; then
      grep -E '^(\[rank 0\])? +(route|permute|dispatch|experts|combine|unpermute|shared|reduce) +[0-9.]+ ' <<<"$out" |
        awk '{ if ($1 == "[rank") { s = $3; v = $4 } else { s = $1; v = $2 } printf "    %-12s %8s ms\n", s, v }'
    fi
  done
done
