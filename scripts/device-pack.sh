#!/bin/bash
# Prepares a run of scripts/device-check.sh on a GPU machine, from this
# machine:
#   - .device/ with node and env.sh, through ../shared/device/pack.sh
#     (MOE_EP_DEVICE_PACK overrides the path);
#   - dist/ (the TypeScript build) for scripts/device-check.js to require;
#   - the shared libraries the addon needs that the GPU machine lacks: Gloo
#     (linked when it was found at build time) and OpenBLAS (opened at run
#     time, cpp/core/blas.cpp), with what they need in turn (ldd), into
#     .device/lib under their sonames. Files over 4 MiB travel as .xz and
#     device-check.sh unpacks them there (the carry is limited to 64 MiB).
# The addon must be built with CUDA first: npx cmake-js compile.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"

addon=build/Release/moe_ep.node
[[ -f $addon ]] || { echo "device-pack: $addon is missing; build it first: npx cmake-js compile" >&2; exit 1; }
node -e 'process.exit(require(process.argv[1]).info().cuda.built ? 0 : 1)' "$root/$addon" ||
  { echo "device-pack: $addon was built without CUDA (is nvcc on PATH?)" >&2; exit 1; }

pack=${MOE_EP_DEVICE_PACK:-$root/../shared/device/pack.sh}
[[ -f $pack ]] || { echo "device-pack: $pack not found (set MOE_EP_DEVICE_PACK)" >&2; exit 1; }
if [[ -d .git ]]; then
  bash "$pack"
else
  # A git worktree: .git is a file, so pack.sh cannot add /.device/ to
  # .git/info/exclude; .gitignore already ignores it. Run pack.sh without that line.
  sed '/\.git\/info\/exclude/d' "$pack" | bash -s
fi

npx tsc -p tsconfig.build.json
node scripts/esm-entry.js

# Libraries every machine has (the C and C++ runtimes) stay behind.
is_base() {
  case "$1" in
    linux-vdso*|ld-linux*|libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libstdc++.so*|libgcc_s.so*) return 0 ;;
  esac
  return 1
}

declare -A want=()  # soname -> path
add_with_deps() {  # path [soname]
  local path=$1 name=${2:-}
  [[ -n $name ]] || name=$(readelf -d "$path" 2>/dev/null | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
  [[ -n $name ]] || name=$(basename "$path")
  [[ -z ${want[$name]:-} ]] || return 0
  want[$name]=$(readlink -f "$path")
  local dep dpath
  while read -r dep _ dpath _; do
    [[ $dpath == /* ]] || continue
    is_base "$dep" || add_with_deps "$dpath" "$dep"
  done < <(ldd "$path")
}

while read -r name _ path _; do
  case "$name" in libgloo*|libopenblas*) add_with_deps "$path" "$name" ;; esac
done < <(ldd "$addon")
blas=$(node -e 'const b = require("./dist").info().blas; if (b.loaded) console.log(b.library)')
if [[ -n $blas ]]; then
  add_with_deps "$blas"
  # cpp/core/blas.cpp asks for libopenblas.so.0 when the build's path is absent.
  [[ -n ${want[libopenblas.so.0]:-} ]] || want[libopenblas.so.0]=$(readlink -f "$blas")
fi

mkdir -p .device/lib
for name in "${!want[@]}"; do
  src=${want[$name]}
  rm -f ".device/lib/$name" ".device/lib/$name.xz"
  if [[ $(stat -c %s "$src") -gt $((4 << 20)) ]]; then
    xz -T0 -6 -c "$src" > ".device/lib/$name.xz"
    echo "device-pack: .device/lib/$name.xz <- $src"
  else
    cp "$src" ".device/lib/$name"
    echo "device-pack: .device/lib/$name <- $src"
  fi
done

carry=(.device "$addon" dist)
echo "device-pack: carry ${carry[*]}"
du -shc "${carry[@]}" | tail -n 1
