// DeepSpeed's MoE layer, as DeepSpeed's tutorial writes it:
//
//   deepspeed.moe.layer.MoE(
//       hidden_size=1024,
//       expert=nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024)),
//       num_experts=8, ep_size=2, k=1)
//
// built with MoELayer.fromDeepSpeed (DeepSpeed's defaults: capacity factor 1.0,
// min_capacity 4, tokens dropped, the top-1 weight the chosen softmax
// probability) and trained for a few steps with AdamW on 2 ranks, 4 experts
// each. The target is a fixed rotation of the input's features.
//
//   npx moe-ep launch -n 2 examples/deepspeed/train.js [--steps 5] [--hidden 1024] [--tokens 64]
//
// --hidden (or MOE_EP_EXAMPLE_HIDDEN) sets the width; the experts are 4 times as wide.
const { AdamW, MoELayer, Tensor, ops, initProcessGroup } = require("moe-ep");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback;
}

const HIDDEN = Number(arg("--hidden", process.env.MOE_EP_EXAMPLE_HIDDEN ?? 1024));
const STEPS = Number(arg("--steps", 5));
const TOKENS = Number(arg("--tokens", 64)); // per rank per step
const rank = Number(process.env.RANK ?? 0);
const worldSize = Number(process.env.WORLD_SIZE ?? 1);
const log = (line) => rank === 0 && console.log(line);

/** A deterministic pseudo-random batch: x uniform in [-1, 1), y = x with its features rotated by one. */
function batch(seed) {
  let s = seed >>> 0;
  const next = () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
  const x = new Float32Array(TOKENS * HIDDEN);
  for (let i = 0; i < x.length; i++) x[i] = 2 * next() - 1;
  const y = new Float32Array(x.length);
  for (let t = 0; t < TOKENS; t++)
    for (let i = 0; i < HIDDEN; i++) y[t * HIDDEN + i] = x[t * HIDDEN + ((i + 1) % HIDDEN)];
  return { x: Tensor.from(x, [TOKENS, HIDDEN]), y: Tensor.from(y, [TOKENS, HIDDEN]) };
}

/** Mean squared error of out against y; turns out into the loss gradient in place. */
async function mseAndGradient(out, y) {
  const n = out.numel;
  await ops.axpby(out, y, { alpha: 1, beta: -1 });
  const sq = await ops.sumSquares([out]);
  const loss = sq.item() / n;
  sq.dispose();
  await ops.scaleInPlace(out, 2 / n);
  return loss;
}

async function main() {
  if (worldSize !== 2) throw new Error(`expected 2 ranks (ep_size 2): run it with moe-ep launch -n 2`);
  const pg = await initProcessGroup();
  const moe = MoELayer.fromDeepSpeed(
    {
      hidden_size: HIDDEN,
      ffn_hidden_size: 4 * HIDDEN,
      activation: "relu",
      bias: true, // nn.Linear has biases
      num_experts: 8,
      ep_size: 2,
      k: 1,
      aux_loss_coef: 0.01, // DeepSpeed returns l_aux bare; the training script scales it
      init_std: 1 / Math.sqrt(HIDDEN),
    },
    pg,
  );
  await moe.ready;
  const c = moe.config;
  log(
    `DeepSpeed MoE: hidden ${c.dModel} -> ${c.dFF} -> ${c.dModel} ${c.activation}, ${c.numExperts} experts, ` +
      `ep_size ${c.epSize} (${moe.numLocalExperts} per rank), k ${c.topK}, capacity_factor ${c.capacityFactor}, ` +
      `min_capacity ${c.minCapacity}, ${worldSize} ranks`,
  );
  // The optimizer from the ds_config section DeepSpeed reads it from.
  const opt = AdamW.fromConfig(moe.parameters(), {
    optimizer: { type: "AdamW", params: { lr: 1e-3, betas: [0.9, 0.999], eps: 1e-8, weight_decay: 0.01 } },
  });
  const losses = [];
  for (let step = 1; step <= STEPS; step++) {
    // Every step sees the same batch, so that a few steps show the loss falling.
    const { x, y } = batch(1000 + rank);
    const r = await moe.forward(x);
    const loss = await mseAndGradient(r.output, y);
    (await moe.backward(r.output)).dispose();
    r.output.dispose();
    x.dispose();
    y.dispose();
    await moe.clipGradNorm(1.0);
    await opt.step();
    await moe.zeroGrad();
    // The mean loss over both ranks.
    const l = Tensor.from(Float32Array.of(loss / worldSize), [1]);
    await pg.allReduce(l, "sum");
    const mean = l.item();
    l.dispose();
    losses.push(mean);
    const s = r.stats;
    log(
      `step ${step} loss ${mean.toFixed(6)} aux ${r.auxLoss.toFixed(4)} capacity ${s.capacity} ` +
        `dropped ${s.dropped} of ${TOKENS * worldSize} tokens per expert ${s.tokensPerExpert.join(" ")}`,
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
