#!/usr/bin/env node
/**
 * A fixed workload on cuda:0 that prints one SHA-256 per stage of every
 * output's bytes: routing (sigmoid, groups, expert bias) and its backward,
 * permutation with a capacity and the probs policy, unpermute and both
 * backwards, the sum of squares, random fills, and a bf16 MoELayer forward +
 * backward. test/emulated/emulator.test.ts runs it under every thread order
 * of the CUDA emulator (MOE_EP_EMU_SCHEDULE): the kernels promise results
 * that do not depend on scheduling, so every order must print the same lines.
 *
 * Plain node on the built package (./dist); the addon is MOE_EP_ADDON.
 */
"use strict";
const crypto = require("crypto");
const path = require("path");

const dist = path.resolve(__dirname, "..", "..", "dist");
const { Tensor, ops, MoELayer, info } = require(dist);
const { sumSquares } = require(path.join(dist, "ops", "elementwise"));
const { fillRandom } = require(path.join(dist, "ops", "random"));
const { rng } = require("../shared/rng");

const data = (n, seed, scale = 1) => {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => (r() * 2 - 1) * scale);
};
const dev = (array, shape, dtype = "float32") => Tensor.from(array, shape, { dtype }).to("cuda:0");

function digest(...tensors) {
  const h = crypto.createHash("sha256");
  for (const t of tensors) h.update(Buffer.from(t.handle.read(t.dtype)));
  return h.digest("hex").slice(0, 16);
}

async function main() {
  if (!info().cuda.available) throw new Error(`CUDA unavailable: ${info().cuda.reason}`);
  const lines = [];
  const T = 1024,
    D = 64,
    E = 64,
    K = 8;

  const logits = await dev(data(T * E, 1, 3), [T, E]);
  const bias = await dev(data(E, 2, 0.1), [E]);
  const r = await ops.route(logits, {
    topK: K,
    scoreFunction: "sigmoid",
    renormalize: true,
    numGroups: 8,
    topkGroups: 4,
    expertBias: bias,
  });
  lines.push(`route ${digest(r.indices, r.weights, r.scores, r.tokensPerExpert, r.auxLoss, r.zLoss)}`);
  const dW = await dev(data(T * K, 3), [T, K]);
  const dl = await ops.routeBackward(logits, r.indices, r.tokensPerExpert, dW, {
    scoreFunction: "sigmoid",
    renormalize: true,
    auxLossGrad: 0.3,
    zLossGrad: 0.05,
  });
  lines.push(`routeBackward ${digest(dl)}`);

  const x = await dev(data(T * D, 4), [T, D], "bfloat16");
  const p = await ops.permute(x, r.indices, r.weights, { numExperts: E, capacityFactor: 0.8, dropPolicy: "probs" });
  lines.push(`permute ${digest(p.rows, p.pairToRow, p.rowToPair, p.rowsPerExpert)}`);
  const y = await ops.unpermute(p.rows, p.pairToRow, r.weights);
  lines.push(`unpermute ${digest(y)}`);
  const g = await ops.unpermuteBackward(y, p.rows, p.pairToRow, r.weights);
  lines.push(`unpermuteBackward ${digest(g.dRows, g.dWeights)}`);
  const dx = await ops.permuteBackward(g.dRows, p.pairToRow);
  lines.push(`permuteBackward ${digest(dx)}`);

  const ss = await sumSquares([x, logits, y]);
  lines.push(`sumSquares ${digest(ss)}`);
  const noise = await dev(new Float32Array(70001), [70001]);
  await fillRandom(noise, { seed: 9, distribution: "normal" });
  lines.push(`fillRandom ${digest(noise)}`);

  const layer = await MoELayer.create({
    dModel: 32,
    dFF: 32,
    numExperts: 8,
    topK: 2,
    seed: 5,
    initStd: 0.3,
    auxLossCoef: 0.01,
    zLossCoef: 0.001,
    activation: "swiglu",
    dtype: "bfloat16",
    device: "cuda:0",
  });
  const lx = await dev(data(128 * 32, 6), [128, 32], "bfloat16");
  const res = await layer.forward(lx);
  const ldx = await layer.backward(await dev(data(128 * 32, 7), [128, 32], "bfloat16"));
  lines.push(`layer ${digest(res.output, ldx, ...layer.parameters().map((q) => q.grad))}`);
  layer.dispose();
  console.log(lines.join("\n"));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
