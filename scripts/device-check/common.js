// What every mode of the device check shares: the package, seeded inputs
// (the test suite's generator, test/shared/rng.js, one fresh seed per draw),
// disposal, the grouped GEMM kernel switch, and memory at rest.
"use strict";
const path = require("path");
const shared = require("../../test/shared/rng");

const moe = require(path.join(__dirname, "..", "..", "dist"));
const { Tensor, synchronize, memoryStats } = moe;

// ---- data ---------------------------------------------------------------------------
const seed0 = Number(process.env.MOE_EP_CHECK_SEED ?? Date.now() % 1000000007);
let seedNext = seed0;
/** The seed of the next draw: every draw gets its own, all following from seed0. */
function nextSeed() {
  seedNext = (seedNext + 0x9e3779b9) >>> 0;
  return seedNext;
}
/** n normal values (float32) with standard deviation std. */
function normal(n, std = 1) {
  return Float32Array.from(shared.normal(n, nextSeed(), std));
}
/** k distinct experts per token from `allowed`, skewed toward its start. */
function experts(t, k, allowed) {
  return shared.pickExperts(t, k, allowed, nextSeed());
}
/** Weights with ties: a few distinct values. */
function tiedWeights(n) {
  const r = shared.rng(nextSeed());
  return Float32Array.from({ length: n }, () => Math.floor(r() * 6) / 8);
}
/** Uniform numbers in [0, 1). */
function uniform() {
  return shared.rng(nextSeed());
}

function dispose(v) {
  if (v instanceof Tensor) v.dispose();
  else if (v && typeof v === "object") for (const x of Object.values(v)) dispose(x);
}

// Runs fn with the grouped GEMM kernel `kernel` (MOE_EP_GG_KERNEL: "auto", the
// best for the device, wgmma on Hopper; "sm80", the mma.sync kernel, which a
// Hopper GPU runs only when asked), then goes back to "auto".
async function withGemmKernel(kernel, fn) {
  process.env.MOE_EP_GG_KERNEL = kernel;
  try {
    return await fn();
  } finally {
    process.env.MOE_EP_GG_KERNEL = "auto";
  }
}

/** memoryStats once collected garbage has been finalized (node --expose-gc), so tensors dropped by earlier checks do not count. */
async function atRest(dev) {
  for (let i = 0; i < 3 && global.gc; i++) {
    global.gc();
    await new Promise((r) => setTimeout(r, 0));
  }
  await synchronize();
  return memoryStats(dev);
}

module.exports = {
  moe,
  seed0,
  normal,
  experts,
  tiedWeights,
  uniform,
  range: shared.range,
  dispose,
  withGemmKernel,
  atRest,
};
