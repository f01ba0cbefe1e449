#!/usr/bin/env node
/**
 * The bench's row ops, each run twice (the second run is the one to read),
 * for a kernel profiler on the GPU machine:
 *   ncu --clock-control none --metrics gpu__time_duration.sum --csv node scripts/device-prof.js
 * Shapes as in device-check.js --mode bench: route 8192 x 64 top-8; permute
 * and the row-map ops 8192 x 4096 bf16, top-2 of 8.
 */
"use strict";
const path = require("path");
const { Tensor, ops, synchronize } = require(path.join(__dirname, "..", "dist"));

const DEV = process.argv[2] || "cuda:0";
function pseudo(n, scale = 1) {
  const a = new Float32Array(n);
  let s = 12345;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = scale * (s / 4294967296 - 0.5);
  }
  return a;
}
function dispose(v) {
  if (v instanceof Tensor) v.dispose();
  else if (v && typeof v === "object") for (const x of Object.values(v)) dispose(x);
}

async function main() {
  const [T, D, k, E] = [8192, 4096, 2, 8];
  const L = await Tensor.from(pseudo(8192 * 64, 4), [8192, 64]).to(DEV);
  const X = await Tensor.from(pseudo(T * D), [T, D], { dtype: "bfloat16" }).to(DEV);
  const idx = new Int32Array(T * k);
  for (let t = 0; t < T; t++) {
    idx[t * k] = (t * 7) % E;
    idx[t * k + 1] = (t * 7 + 1 + (t % 3)) % E;
  }
  const I = await Tensor.from(idx, [T, k]).to(DEV);
  const W = await Tensor.from(
    pseudo(T * k).map((v) => Math.floor((v + 0.5) * 6) / 8),
    [T, k],
  ).to(DEV);
  for (let rep = 0; rep < 2; rep++) {
    dispose(await ops.route(L, { topK: 8, renormalize: true }));
    dispose(await ops.permute(X, I, W, { numExperts: E }));
    dispose(await ops.permute(X, I, W, { numExperts: E, capacityFactor: 1.25, dropPolicy: "probs" }));
    const p = await ops.permute(X, I, W, { numExperts: E });
    dispose(await ops.unpermute(p.rows, p.pairToRow, W));
    dispose(await ops.permuteBackward(p.rows, p.pairToRow));
    dispose(await ops.unpermuteBackward(X, p.rows, p.pairToRow, W));
    dispose(p);
    await synchronize();
  }
  dispose([L, X, I, W]);
}
main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
