#!/usr/bin/env bash
# The leak checks under load: runs every test with a leak check (each file's
# leak tests; with --whole, the whole files, so that earlier tests leave
# garbage behind) RUNS times, default 20, while two busy loops take CPU time,
# and prints how many runs passed. The busy loops are this script's own
# children and end with it. Needs the addon built.
#   scripts/leak-soak.sh [--whole] [RUNS]
set -uo pipefail
cd "$(dirname "$0")/.."
filter=(-t "leak|left behind|leave no tensor|a disposed tensor refuses reads|scope disposes|same device is a new handle|to/clone round trips")
if [ "${1:-}" = "--whole" ]; then
  filter=()
  shift
fi
runs=${1:-20}
mapfile -t files < <(grep -l "leakCheck(" test/*.test.ts)
hogs=()
for _ in 1 2; do
  node -e 'for (;;);' &
  hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
trap 'exit 130' INT TERM
passed=0
for i in $(seq "$runs"); do
  log="/tmp/leak-soak.$i.log"
  if node --expose-gc node_modules/jest/bin/jest.js --selectProjects=cpu "${filter[@]}" -- "${files[@]}" >"$log" 2>&1; then
    passed=$((passed + 1))
    echo "run $i: passed ($(grep -m1 '^Tests:' "$log"))"
  else
    echo "run $i: FAILED ($log)"
  fi
done
echo "leak checks under two CPU hogs: $passed of $runs runs passed"
[ "$passed" -eq "$runs" ]
