#!/usr/bin/env node
// Builds the prebuilt addons that ship in the npm packages (docs/architecture.md,
// "The prebuilt addon"):
//   node scripts/prebuild.js          the CPU prebuild (MOE_EP_CUDA=OFF) into
//                                     prebuilds/<platform>-<arch>/ of moe-ep
//   node scripts/prebuild.js --cuda   the CUDA prebuild into packages/<platform>-<arch>-cuda/,
//                                     the optional package @moe-ep/<platform>-<arch>-cuda
// Each is a portable build (MOE_EP_PORTABLE: libstdc++ linked in, glibc >= 2.28,
// only the entry points exported; build-prebuild/ or build-prebuild-cuda/),
// checked with scripts/check-portable.js before it is copied: the addon
// moe_ep.node, the C ABI libmoe_ep.so with its header include/moe_ep.h, and
// the Gloo plugin moe_ep_gloo.so when Gloo was found.
// --no-build copies what the build folder already holds.
const { spawnSync } = require("child_process");
const fs = require("fs");
const path = require("path");
const { check } = require("./check-portable");

const root = path.join(__dirname, "..");
const platform = `${process.platform}-${process.arch}`;
const cuda = process.argv.includes("--cuda");
const build = path.join(root, cuda ? "build-prebuild-cuda" : "build-prebuild");
const out = cuda ? path.join(root, "packages", `${platform}-cuda`) : path.join(root, "prebuilds", platform);
const LIBRARIES = ["moe_ep.node", "libmoe_ep.so", "moe_ep_gloo.so"];

function fail(message) {
  console.error(`moe-ep prebuild: ${message}`);
  process.exit(1);
}

if (platform !== "linux-x64") fail(`prebuilds are made for linux-x64 only, not ${platform}`);

if (!process.argv.includes("--no-build")) {
  const cmakeJs = require.resolve("cmake-js/bin/cmake-js");
  const args = [cmakeJs, "compile", "-O", path.relative(root, build), "--CDMOE_EP_PORTABLE=ON"];
  args.push(`--CDMOE_EP_CUDA=${cuda ? "ON" : "OFF"}`);
  const r = spawnSync(process.execPath, args, { cwd: root, stdio: "inherit" });
  if (r.status !== 0) fail(`the build in ${path.relative(root, build)} failed`);
}

const release = path.join(build, "Release");
const built = LIBRARIES.map((f) => path.join(release, f)).filter((f) => fs.existsSync(f));
if (!built.some((f) => f.endsWith(".node"))) fail(`${release}/moe_ep.node not found: build it first`);
if (!built.some((f) => f.endsWith("moe_ep_gloo.so")))
  fail("the build found no Gloo, so it has no Gloo plugin (Debian: sudo apt-get install libgloo-dev)");

const problems = built.map(check).filter((r) => r.problems.length);
for (const r of problems) console.error(`${r.file} is not portable:\n  ${r.problems.join("\n  ")}`);
if (problems.length) fail("see above (scripts/check-portable.js)");

fs.mkdirSync(path.join(out, "include"), { recursive: true });
// Only this build's files: an older prebuild's (another name) would be loaded too (lib/native.ts).
for (const f of fs.readdirSync(out))
  if (f !== "include") fs.rmSync(path.join(out, f), { force: true, recursive: true });
for (const f of built) {
  const dest = path.join(out, path.basename(f));
  fs.copyFileSync(f, dest);
  // Debug information and the static symbol table: not needed to load or link.
  spawnSync("strip", ["--strip-unneeded", dest], { stdio: "inherit" });
  console.log(`moe-ep prebuild: ${path.relative(root, dest)} (${fs.statSync(dest).size} bytes)`);
}
fs.copyFileSync(path.join(root, "cpp", "include", "moe_ep.h"), path.join(out, "include", "moe_ep.h"));
