#!/usr/bin/env node
/**
 * The GPU check's node part (scripts/device-check.sh runs it three ways):
 *
 *   --mode check      every CUDA op against the CPU op on fresh random inputs
 *                     at several shapes, edge cases included; a #wrong count
 *                     per case (exit 1 if any is wrong); then the NCCL
 *                     process group at world size 1 (skipped, with the
 *                     reason, when NCCL is unavailable)
 *   --mode sanitize   one small case of every kernel, for compute-sanitizer
 *   --mode bench      timings with CUDA events (warm-up, median) in a table
 *                     with the limit beside each figure; --dense-tflops gives
 *                     the dense bf16 GEMM rate measured with PyTorch
 *   --out FILE        also write the table (bench) or the case list (check) there
 *   --device cuda:N   default cuda:0; MOE_EP_CHECK_SEED fixes the inputs
 *
 * Plain node on the built package (./dist and the addon): no jest, no npm.
 * Exits 2, saying why, when CUDA is unavailable. Each mode is a file of
 * scripts/device-check/; inputs come from the test suite's generator and case
 * lists (test/shared/).
 */
"use strict";
const path = require("path");

const root = path.resolve(__dirname, "..");

function parseArgs(argv) {
  const a = { mode: "check", device: "cuda:0", denseTflops: NaN, out: "" };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    if (argv[i] === "--mode") {
      a.mode = v;
      i++;
    } else if (argv[i] === "--device") {
      a.device = v;
      i++;
    } else if (argv[i] === "--dense-tflops") {
      a.denseTflops = Number(v);
      i++;
    } else if (argv[i] === "--out") {
      a.out = v;
      i++;
    } else {
      console.error(`device-check: unknown argument "${argv[i]}"`);
      process.exit(64);
    }
  }
  if (!["check", "sanitize", "bench"].includes(a.mode)) {
    console.error(`device-check: expected --mode check, sanitize or bench but received "${a.mode}"`);
    process.exit(64);
  }
  return a;
}

const args = parseArgs(process.argv.slice(2));

try {
  require(path.join(root, "dist"));
} catch (e) {
  console.error(`device-check: cannot load ${path.join(root, "dist")}: ${e.message.split("\n")[0]}`);
  console.error("  build it first: npx tsc -p tsconfig.build.json (scripts/device-pack.sh does)");
  process.exit(3);
}
const { info, formatInfo } = require(path.join(root, "dist"));

const status = info();
if (!status.cuda.available) {
  console.error(
    `device-check: CUDA unavailable: ${status.cuda.reason}${status.cuda.built ? ` (addon built for ${status.cuda.archs})` : ""}`,
  );
  process.exit(2);
}

const modes = {
  check: () => require("./device-check/check")(args.device, { out: args.out }),
  sanitize: () => require("./device-check/sanitize")(args.device),
  bench: () => require("./device-check/bench")(args.device, { denseTflops: args.denseTflops, out: args.out }),
};

if (args.mode !== "sanitize") console.log(formatInfo());
modes[args.mode]().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    console.error(`device-check: ${e.code ? e.code + ": " : ""}${e.stack || e.message}`);
    process.exitCode = 1;
  },
);
