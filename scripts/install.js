#!/usr/bin/env node
// Install step: use a prebuilt addon when one loads on this machine (the CUDA
// prebuild of the optional package @moe-ep/<platform>-<arch>-cuda, then the CPU
// prebuild in prebuilds/<platform>-<arch>/), else build from source with
// cmake-js into build/.
//
// The source build is quiet: the compiler's output goes to build/build.log and
// is printed only when the build fails, as the lines that say why (compiler
// and CMake errors, with the apt-get command for a missing tool or library).
// MOE_EP_VERBOSE_BUILD=1 streams everything, ptxas's kernel report included.
// MOE_EP_BUILD_FROM_SOURCE=1 skips the prebuilds; MOE_EP_CUDA=ON|OFF|AUTO picks
// the CUDA part of a source build, MOE_EP_CMAKE_ARGS adds cmake-js arguments
// ("--CDNAME=VALUE"). A git checkout builds from source (its prebuilds are
// what it makes, not what it uses) unless MOE_EP_USE_PREBUILD=1, and keeps its
// build folder; installed as a dependency, a successful build keeps only the
// libraries the package loads.
const { spawnSync } = require("child_process");
const fs = require("fs");
const path = require("path");
const { explainFailure } = require("./build-errors");

const root = path.join(__dirname, "..");
const platform = `${process.platform}-${process.arch}`;
const yes = (v) => /^(1|true|yes|on)$/i.test(v || "");
const verbose = yes(process.env.MOE_EP_VERBOSE_BUILD);
const checkout = fs.existsSync(path.join(root, ".git"));

// The prebuilt addons that may serve this machine, best first.
function prebuilds() {
  const list = [];
  try {
    const manifest = require.resolve(`@moe-ep/${platform}-cuda/package.json`, { paths: [root] });
    list.push(path.join(path.dirname(manifest), "moe_ep.node"));
  } catch {
    // the optional CUDA package is not installed
  }
  list.push(path.join(root, "prebuilds", platform, "moe_ep.node"));
  return list.filter((f) => fs.existsSync(f));
}

// Loads the addon in a child so a bad binary cannot take down the install;
// returns "" when it loads, else the loader's message.
function loadError(file) {
  const r = spawnSync(process.execPath, ["-e", `require(${JSON.stringify(file)})`], { encoding: "utf8" });
  if (r.status === 0) return "";
  // The message of the thrown Error: the lines between the stack's first line
  // (the require site) and its "    at" frames.
  const lines = String(r.stderr || r.error || "").split("\n");
  const message = lines.filter((l) => /^(Error|[A-Za-z]*Error):/.test(l) || /\.so|GLIBC|version/.test(l));
  return (message.length ? message : lines.filter((l) => l.trim() && !/^\s+at /.test(l))).slice(0, 3).join(" ").trim();
}

function usePrebuild() {
  for (const file of prebuilds()) {
    const error = loadError(file);
    if (!error) {
      console.log(`moe-ep: using the prebuilt addon ${path.relative(root, file)}`);
      return true;
    }
    console.log(`moe-ep: the prebuilt addon ${path.relative(root, file)} does not load here: ${error}`);
  }
  return false;
}

// Removes what the addon does not need from build/: everything but the
// libraries of build/Release (the addon, libmoe_ep.so, the Gloo plugin).
function tidy(build) {
  const keep = new Set(["moe_ep.node", "libmoe_ep.so", "moe_ep_gloo.so"]);
  for (const entry of fs.readdirSync(build)) {
    if (entry !== "Release") fs.rmSync(path.join(build, entry), { recursive: true, force: true });
  }
  const release = path.join(build, "Release");
  for (const entry of fs.existsSync(release) ? fs.readdirSync(release) : []) {
    if (!keep.has(entry)) fs.rmSync(path.join(release, entry), { recursive: true, force: true });
  }
}

function buildFromSource() {
  const build = path.join(root, "build");
  const cmakeJs = require.resolve("cmake-js/bin/cmake-js");
  const args = [cmakeJs, "compile"];
  if (process.env.MOE_EP_CUDA) args.push(`--CDMOE_EP_CUDA=${process.env.MOE_EP_CUDA}`);
  for (const a of (process.env.MOE_EP_CMAKE_ARGS || "").split(/\s+/).filter(Boolean)) args.push(a);

  const cmake = spawnSync("cmake", ["--version"], { encoding: "utf8" });
  if (cmake.error) {
    console.error(
      "moe-ep: building the addon from source needs CMake >= 3.24, which is not on PATH.\n" +
        "  Debian/Ubuntu: sudo apt-get install -y cmake g++ libopenblas-dev libgloo-dev",
    );
    return false;
  }
  console.log(
    "moe-ep: building the addon from source (a few minutes; MOE_EP_VERBOSE_BUILD=1 shows the compiler's output)",
  );
  const r = spawnSync(process.execPath, args, {
    cwd: root,
    encoding: "utf8",
    stdio: verbose ? "inherit" : "pipe",
    maxBuffer: 256 * 1024 * 1024,
  });
  if (verbose) return r.status === 0;
  const output = `${r.stdout || ""}${r.stderr || ""}`;
  fs.mkdirSync(build, { recursive: true });
  const log = path.join(build, "build.log");
  fs.writeFileSync(log, output);
  if (r.status !== 0) {
    console.error(explainFailure(output));
    console.error(`moe-ep: the build's full output is in ${log}`);
    return false;
  }
  for (const l of output.split("\n")) if (/moe-ep: |CMake Warning/.test(l)) console.log(l.replace(/^-- /, ""));
  if (!checkout) tidy(build);
  console.log("moe-ep: built build/Release/moe_ep.node");
  return true;
}

if (require.main === module) {
  const fromSource = yes(process.env.MOE_EP_BUILD_FROM_SOURCE) || (checkout && !yes(process.env.MOE_EP_USE_PREBUILD));
  if (!fromSource && usePrebuild()) process.exit(0);
  process.exit(buildFromSource() ? 0 : 1);
}

module.exports = { loadError, tidy };
