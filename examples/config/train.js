// A training config as Megatron-Core and DeepSpeed users write it (config.json beside this file):
// bf16, AdamW, ZeRO stage 2, data × tensor × pipeline parallel 4 × 2 × 1 over 8 ranks, expert
// parallel 4, and an MoE of 64 experts, top-2, capacity factor 1.25. The layer reads it completely
// (MoELayer.fromForeignConfig): expert parallelism 4, and expert tensor parallelism 2 from the
// tensor-parallel size (Megatron-Core's rule), so each expert's FFN is split over 2 ranks; the
// keys it does not apply (optimizer, ZeRO, moe.enabled) are listed with why. AdamW is built from
// the same config's optimizer section. A few steps on 8 ranks:
//
//   npx moe-ep launch -n 8 examples/config/train.js [--steps 5] [--tokens 32] [--lr 2e-4]
//
// (--lr overrides the config's learning rate, for a short run that shows the loss falling.)
const fs = require("fs");
const path = require("path");
const { AdamW, MoELayer, Tensor, initProcessGroup } = require("moe-ep");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback;
}

const STEPS = Number(arg("--steps", 5));
const TOKENS = Number(arg("--tokens", 32)); // per rank per step
const rank = Number(process.env.RANK ?? 0);
const worldSize = Number(process.env.WORLD_SIZE ?? 1);
const log = (line) => rank === 0 && console.log(line);

const config = JSON.parse(fs.readFileSync(path.join(__dirname, "config.json"), "utf8"));
const lr = arg("--lr", undefined);
if (lr !== undefined) config.optimizer.params.lr = Number(lr);

/** A deterministic batch: x uniform in [-1, 1), the target y = x with its features rotated by one. */
function batch(seed, D) {
  let s = seed >>> 0;
  const next = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const x = new Float32Array(TOKENS * D);
  for (let i = 0; i < x.length; i++) x[i] = 2 * next() - 1;
  const y = new Float32Array(x.length);
  for (let t = 0; t < TOKENS; t++) for (let i = 0; i < D; i++) y[t * D + i] = x[t * D + ((i + 1) % D)];
  return { x: Tensor.from(x, [TOKENS, D], { dtype: "bfloat16" }), y };
}

async function main() {
  const pg = await initProcessGroup();
  const moe = MoELayer.fromForeignConfig(config, pg);
  await moe.ready;
  const c = moe.config;
  log(
    `layer: hidden ${c.dModel} -> ${c.dFF} ${c.activation} ${c.dtype}, ${c.numExperts} experts, top-${c.topK}, ` +
      `capacity factor ${c.capacityFactor}, epSize ${moe.epSize} x etpSize ${moe.etpSize} on ${worldSize} ranks ` +
      `(${moe.numLocalExperts} experts per rank, each split over ${moe.etpSize})`,
  );
  for (const k of moe.ignoredConfigKeys) log(`ignored ${k.key}: ${k.reason}`);
  const opt = AdamW.fromConfig(moe.parameters(), config);
  log(`optimizer: AdamW lr ${opt.lr} weight decay ${opt.weightDecay}`);
  const losses = [];
  for (let step = 1; step <= STEPS; step++) {
    // The same batch every step (each rank its own), so that a few steps show the loss falling.
    const { x, y } = batch(7000 + rank, c.dModel);
    const r = await moe.forward(x);
    // Mean squared error against y, and its gradient, on the host (the layer's output is bfloat16).
    const out = r.output.toFloat32();
    const grad = new Float32Array(out.length);
    let loss = 0;
    for (let i = 0; i < out.length; i++) {
      const d = out[i] - y[i];
      loss += (d * d) / out.length;
      grad[i] = (2 * d) / out.length;
    }
    const dy = Tensor.from(grad, r.output.shape, { dtype: "bfloat16" });
    (await moe.backward(dy)).dispose();
    for (const t of [x, r.output, dy]) t.dispose();
    await opt.step();
    await moe.zeroGrad();
    const l = Tensor.from(Float32Array.of(loss / worldSize), [1]);
    await pg.allReduce(l, "sum");
    losses.push(l.item());
    l.dispose();
    log(
      `step ${step} loss ${losses[step - 1].toFixed(6)} aux ${r.auxLoss.toFixed(4)} ` +
        `capacity ${r.stats.capacity} dropped ${r.stats.dropped}`,
    );
  }
  log(`loss ${losses[0].toFixed(6)} -> ${losses[losses.length - 1].toFixed(6)}`);
  moe.dispose();
  pg.destroy();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
