#!/usr/bin/env node
// Install step: use a prebuilt addon when one loads on this machine, else
// build from source with cmake-js. (node-gyp-build's own install command would
// fall back to node-gyp, which cannot build this CMake project.)
const { execFileSync, spawnSync } = require("child_process");
const fs = require("fs");
const path = require("path");

const root = path.join(__dirname, "..");
const dir = path.join(root, "prebuilds", `${process.platform}-${process.arch}`);

function prebuildLoads() {
  if (!fs.existsSync(dir)) return false;
  for (const f of fs.readdirSync(dir)) {
    if (!f.endsWith(".node")) continue;
    // Load in a child so a bad binary cannot take down the install.
    const r = spawnSync(process.execPath, ["-e", `require(${JSON.stringify(path.join(dir, f))})`], { stdio: "pipe" });
    if (r.status === 0) {
      console.log(`moe-ep: using prebuilt ${path.relative(root, path.join(dir, f))}`);
      return true;
    }
    console.log(`moe-ep: prebuilt ${f} does not load here (${String(r.stderr).split("\n")[0]}); building from source`);
  }
  return false;
}

if (process.env.MOE_EP_BUILD_FROM_SOURCE || !prebuildLoads()) {
  const cmakeJs = require.resolve("cmake-js/bin/cmake-js");
  const args = [cmakeJs, "compile"];
  if (process.env.MOE_EP_CUDA) args.push(`--CDMOE_EP_CUDA=${process.env.MOE_EP_CUDA}`);
  execFileSync(process.execPath, args, { cwd: root, stdio: "inherit" });
}
