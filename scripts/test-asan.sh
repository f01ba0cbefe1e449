#!/usr/bin/env bash
# The op test files against an addon built with AddressSanitizer and
# UndefinedBehaviorSanitizer (build-asan/, CPU only). Node itself is not
# instrumented, so the ASan runtime is preloaded; leak checking is off (node
# keeps its own allocations at exit), and a failed allocation returns NULL, as
# glibc's does, so that a too-large tensor meets the core's own error.
#   npm run test:asan [-- --no-build] [-- more jest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--no-build" ]; then
  shift
else
  npm run build:asan
fi
addon=build-asan/Release/moe_ep.node
[ -f "$addon" ] || { echo "test:asan: $addon was not built" >&2; exit 1; }
libasan=$(gcc -print-file-name=libasan.so)
[ -f "$libasan" ] || { echo "test:asan: libasan.so not found (gcc -print-file-name=libasan.so)" >&2; exit 1; }
files=()
for f in route permute grouped-gemm activation gate layer-ops adamw tensor size-limits; do files+=("test/$f.test.ts"); done
MOE_EP_ADDON=$addon LD_PRELOAD=$libasan \
  ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  node --expose-gc node_modules/jest/bin/jest.js "${files[@]}" "$@" --selectProjects cpu
