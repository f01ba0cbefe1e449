#!/usr/bin/env bash
# clang-format over the C++ and CUDA sources (.clang-format at the root).
#   scripts/clang-format.sh          check: lists unformatted files, exits 1 if any
#   scripts/clang-format.sh --write  formats them in place
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null || { echo "clang-format not found (Debian: apt-get install clang-format)" >&2; exit 1; }
mapfile -t files < <(git ls-files 'cpp/*' 'cmake/*' 'binding/*' 'cuda/*' 'emu/*' 'test/c/*' 'test/emulated/*' 'test/fuzz/*' | grep -E '\.(c|cc|cpp|h|hpp|cu|cuh)$')
if [ "${1:-}" = "--write" ]; then
  clang-format -i "${files[@]}"
else
  # Each finding is "file:line:column: error: ..."; list each file once.
  bad=$(clang-format --dry-run --Werror "${files[@]}" 2>&1 | grep -oE '^[^: ]+:[0-9]+:[0-9]+: ' | cut -d: -f1 | sort -u || true)
  if [ -n "$bad" ]; then
    sed 's/$/: not formatted (scripts\/clang-format.sh --write)/' <<<"$bad" >&2
    exit 1
  fi
  echo "clang-format: ${#files[@]} files formatted"
fi
