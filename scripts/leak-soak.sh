#!/usr/bin/env bash
# The leak checks under load: runs the test files that have one RUNS times
# (default 20) while two busy loops take CPU time, and prints how many runs
# passed. The busy loops are this script's own children and end with it.
#   scripts/leak-soak.sh [RUNS]
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
files=$(grep -l "leakCheck(" test/*.test.ts)
hogs=()
for _ in 1 2; do
  node -e 'for (;;);' &
  hogs+=($!)
done
trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
passed=0
for i in $(seq "$runs"); do
  # shellcheck disable=SC2086
  if node --expose-gc node_modules/jest/bin/jest.js --selectProjects=cpu -- $files >"/tmp/leak-soak.$i.log" 2>&1; then
    passed=$((passed + 1))
    echo "run $i: passed"
  else
    echo "run $i: FAILED (/tmp/leak-soak.$i.log)"
  fi
done
echo "leak checks under two CPU hogs: $passed of $runs runs passed"
[ "$passed" -eq "$runs" ]
