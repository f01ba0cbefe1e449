#!/bin/bash
# The one-call GPU check. Run from the project root on the GPU machine after
# `source .device/env.sh` (scripts/device-pack.sh prepares what
# travels). In under 5 minutes:
#   1. the capability report (npx moe-ep info);
#   2. every CUDA op against the CPU op on fresh random inputs, several shapes
#      and the edge cases, and the NCCL process group at world size 1
#      (scripts/device-check.js --mode check);
#   3. compute-sanitizer memcheck and racecheck on a small case of each kernel;
#   4. the dense bf16 GEMM rate with PyTorch (the grouped GEMM's limit);
#   5. timings with CUDA events, in a table with the limit beside each figure.
# With OUT set, the logs and the table land in $OUT. Exit status: 0 when every
# stage passed, 1 when one failed, 2 when CUDA is unavailable, 3 when the
# package cannot load.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 3

out=${OUT:-}
if [[ -n "$out" ]]; then mkdir -p "$out"; else out=$(mktemp -d); fi
budget_start=$SECONDS
failed=()

# Libraries too large to travel plain come as .xz (scripts/device-pack.sh);
# .device/lib is on LD_LIBRARY_PATH (env.sh), so unpack them there first.
for f in .device/lib/*.xz; do
  [[ -e "$f" && ! -e "${f%.xz}" ]] || continue
  if command -v xz >/dev/null; then xz -dc "$f" > "${f%.xz}"
  else python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$f" "${f%.xz}"
  fi
done

step() { printf '\n== %s (%ds)\n' "$*" "$((SECONDS - budget_start))"; }

step "status"
if ! node -e 'const m = require("./dist"); console.log(m.formatInfo())' | tee "$out/info.txt"; then
  echo "device-check: the package does not load (is dist/ built and the addon in build/Release?)"
  exit 3
fi

# NCCL for the world-size-1 process-group rows of the check: the library
# MOE_EP_NCCL_LIBRARY names, else libnccl.so.2 on the loader's path, else the
# copy PyTorch's pip wheels bring (nvidia-nccl-cu*).
if [[ -z "${MOE_EP_NCCL_LIBRARY:-}" ]] && ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2'; then
  nccl=$(python3 -c 'import glob, nvidia.nccl as m; print(next(iter(glob.glob(list(m.__path__)[0] + "/lib/libnccl.so.2")), ""))' 2>/dev/null)
  if [[ -n "$nccl" ]]; then export MOE_EP_NCCL_LIBRARY=$nccl; echo "NCCL from $nccl"; fi
fi

step "CUDA ops against CPU ops (and the NCCL process group at world size 1)"
timeout 120 node --expose-gc scripts/device-check.js --mode check --out "$out/check.tsv" 2>&1 | tee "$out/check.log"
rc=${PIPESTATUS[0]}
if [[ $rc -eq 2 ]]; then exit 2; fi
[[ $rc -eq 0 ]] || failed+=("check (exit $rc)")

sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for tool in memcheck racecheck; do
  step "compute-sanitizer --tool $tool"
  if [[ ! -x "$sanitizer" ]]; then
    echo "compute-sanitizer not found"; failed+=("$tool (no compute-sanitizer)"); continue
  fi
  timeout 90 "$sanitizer" --tool "$tool" --error-exitcode 9 --print-limit 20 \
    node scripts/device-check.js --mode sanitize 2>&1 | tail -n 40 | tee "$out/$tool.log"
  rc=${PIPESTATUS[0]}
  [[ $rc -eq 0 ]] || failed+=("$tool (exit $rc)")
done

step "dense bf16 GEMM with PyTorch (8 x 4096 rows = 32768 x 4096 x 14336)"
dense=$(timeout 45 python3 - <<'PY' 2>"$out/dense.err"
import statistics, torch
M, K, N = 8 * 4096, 4096, 14336
a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
b = torch.randn(K, N, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    a @ b
torch.cuda.synchronize()
ms = []
for _ in range(10):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); a @ b; e.record(); e.synchronize()
    ms.append(s.elapsed_time(e))
print(f"{2 * M * K * N / (statistics.median(ms) * 1e-3) / 1e12:.1f}")
PY
)
echo "dense bf16: ${dense:-unmeasured} TFLOP/s"
[[ -n "$dense" ]] || { cat "$out/dense.err"; dense=nan; }

step "MoE layer on CUDA: glue ops and the layer against the CPU, layer timing (scripts/device-layer.js)"
timeout 120 node scripts/device-layer.js --dense-tflops "${dense/nan/786}" 2>&1 | tee "$out/layer.log"
rc=${PIPESTATUS[0]}
[[ $rc -eq 0 ]] || failed+=("layer (exit $rc)")

step "timings"
timeout 150 node scripts/device-check.js --mode bench --dense-tflops "$dense" --out "$out/table.txt" 2>&1 | tee "$out/bench.log"
rc=${PIPESTATUS[0]}
[[ $rc -eq 0 ]] || failed+=("bench (exit $rc)")

step "per-op floor on cuda:0 (BENCHMARKS.md, per-op floor)"
timeout 60 node dist/cli.js bench ops --floor --device cuda:0 2>&1 | tail -5 | tee "$out/floor.log"
rc=${PIPESTATUS[0]}
[[ $rc -eq 0 ]] || failed+=("floor (exit $rc)")

step "summary"
{
  cat "$out/table.txt" 2>/dev/null
  cat "$out/floor.log" 2>/dev/null
  echo
  grep -c '^ok' "$out/check.tsv" 2>/dev/null | sed 's/^/cases agreeing with the CPU op: /'
  grep '^FAIL' "$out/check.tsv" 2>/dev/null
  for tool in memcheck racecheck; do
    grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$tool.log" 2>/dev/null | sed "s/^/$tool: /"
  done
  if [[ ${#failed[@]} -eq 0 ]]; then echo "every stage passed"; else printf 'FAILED: %s\n' "${failed[@]}"; fi
  echo "took $((SECONDS - budget_start)) s"
} | tee "$out/device-check.txt"
[[ ${#failed[@]} -eq 0 ]]
