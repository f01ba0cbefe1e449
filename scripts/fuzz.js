#!/usr/bin/env node
/**
 * Builds the fuzz target (test/fuzz, CMake option MOE_EP_FUZZ) into build-fuzz/
 * with AddressSanitizer and UndefinedBehaviorSanitizer, and runs it for a
 * bounded time over the seed corpus (test/fuzz/seeds.txt). With clang and its
 * libFuzzer runtime (Debian: clang libclang-rt-14-dev) the run is coverage
 * guided; otherwise GCC builds a seeded random driver (test/fuzz/standalone.cpp).
 * Exits non-zero when the build fails or the target finds anything.
 *   npm run fuzz -- [--seconds 60] [--seed 1] [--no-build]
 */
"use strict";
const { execFileSync, spawnSync } = require("child_process");
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");
const dir = path.join(root, "build-fuzz");
const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const seconds = Number(opt("--seconds", "60"));
const seed = Number(opt("--seed", String(Date.now() % 1000000)));
if (!(seconds > 0) || !Number.isInteger(seed) || seed < 0) {
  console.error("fuzz: expected --seconds > 0 and an integer --seed >= 0");
  process.exit(2);
}

/** clang++ with libFuzzer's runtime, or undefined. */
function findClang() {
  for (const cxx of ["clang++", "clang++-16", "clang++-15", "clang++-14"]) {
    try {
      const lib = execFileSync(cxx, ["-print-file-name=libclang_rt.fuzzer-x86_64.a"], { encoding: "utf8" }).trim();
      const runtime = execFileSync(cxx, ["-print-runtime-dir"], { encoding: "utf8" }).trim();
      if (fs.existsSync(lib) || fs.existsSync(path.join(runtime, "libclang_rt.fuzzer-x86_64.a"))) {
        return { cxx, cc: cxx.replace("clang++", "clang") };
      }
    } catch {
      // not installed
    }
  }
  return undefined;
}

function run(cmd, argv, options = {}) {
  const r = spawnSync(cmd, argv, { stdio: "inherit", ...options });
  if (r.error) throw r.error;
  return r.status ?? 1;
}

const clang = findClang();
if (!args.includes("--no-build")) {
  const configure = [
    "-S",
    root,
    "-B",
    dir,
    "-G",
    "Ninja",
    "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
    "-DMOE_EP_FUZZ=ON",
    "-DMOE_EP_CUDA=OFF",
    "-DCMAKE_DISABLE_FIND_PACKAGE_Gloo=ON",
  ];
  if (clang) configure.push(`-DCMAKE_CXX_COMPILER=${clang.cxx}`, `-DCMAKE_C_COMPILER=${clang.cc}`);
  if (process.env.CMAKE_CXX_COMPILER_LAUNCHER) {
    configure.push(`-DCMAKE_CXX_COMPILER_LAUNCHER=${process.env.CMAKE_CXX_COMPILER_LAUNCHER}`);
  }
  if (run("cmake", configure) !== 0 || run("cmake", ["--build", dir, "--target", "moe_ep_fuzz"]) !== 0) {
    console.error("fuzz: the build failed");
    process.exit(1);
  }
}

// The seed corpus, one file per line of seeds.txt.
const corpus = path.join(dir, "seeds");
fs.rmSync(corpus, { recursive: true, force: true });
fs.mkdirSync(corpus, { recursive: true });
const lines = fs.readFileSync(path.join(root, "test", "fuzz", "seeds.txt"), "utf8").split("\n");
let n = 0;
for (const line of lines) {
  const hex = line.replace(/#.*/, "").replace(/\s+/g, "");
  if (hex) fs.writeFileSync(path.join(corpus, `seed-${n++}`), Buffer.from(hex, "hex"));
}

const exe = path.join(dir, "moe_ep_fuzz");
let status;
if (clang) {
  // New inputs go to a fresh directory each run; failures to build-fuzz/crash-*.
  const found = path.join(dir, "found");
  fs.rmSync(found, { recursive: true, force: true });
  fs.mkdirSync(found);
  console.log(`fuzz: libFuzzer for ${seconds} s, seed ${seed}`);
  status = run(exe, [
    `-max_total_time=${seconds}`,
    `-seed=${seed}`,
    "-timeout=30",
    "-rss_limit_mb=2560",
    "-print_final_stats=1",
    `-artifact_prefix=${dir}${path.sep}`,
    found,
    corpus,
  ]);
} else {
  console.log(`fuzz: the seeded random driver (GCC; no libFuzzer found) for ${seconds} s, seed ${seed}`);
  status = run(exe, ["--seconds", String(seconds), "--seed", String(seed), corpus], { cwd: dir });
}
if (status !== 0) {
  console.error(`fuzz: the target found a failure (exit ${status}); rerun with --seed ${seed}`);
  process.exit(1);
}
