#!/usr/bin/env node
// Copies the built addon to prebuilds/<platform>-<arch>/moe-ep.napi.node, the
// layout node-gyp-build (and lib/native.ts) look in. Run after a build.
const fs = require("fs");
const path = require("path");

const root = path.join(__dirname, "..");
const built = path.join(root, "build", "Release", "moe_ep.node");
if (!fs.existsSync(built)) {
  console.error(`moe-ep prebuild: ${built} not found; run \`npm run build:native\` first`);
  process.exit(1);
}
const dir = path.join(root, "prebuilds", `${process.platform}-${process.arch}`);
fs.mkdirSync(dir, { recursive: true });
const out = path.join(dir, "moe-ep.napi.node");
fs.copyFileSync(built, out);
console.log(`moe-ep prebuild: ${path.relative(root, out)} (${fs.statSync(out).size} bytes)`);
