// `npm run demo`: trains an MoE layer with its 8 experts sharded over 4 CPU
// ranks (moe-ep launch -n 4) on a task where experts must specialise: a
// mixture of 8 regression rules, the rule chosen by where the token lies
// (examples/demo/task.js). A dense FFN with the same active compute (one
// FFN as wide as the two experts a token uses) trains beside it on the same
// data. Rank 0 draws a progress bar, prints each expert's load as it goes and
// which expert each rule ended up with, and writes an SVG plot of both losses
// and of the load.
//
//   node dist/cli.js launch -n 4 examples/demo/train.js [--steps 300] [--out moe-demo.svg]
const path = require("path");
const { AdamW, MoELayer, Tensor, ops, initProcessGroup } = require("moe-ep");
const { MixtureTask } = require("./task");
const { renderSvg } = require("./plot");

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i > 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1] : fallback;
}

const D = 16; // model width
const F = 32; // expert width
const E = 8; // experts
const K = 8; // rules in the task
const TOKENS = 192; // tokens per rank per step
const STEPS = Number(arg("--steps", 300));
const OUT = path.resolve(arg("--out", "moe-demo.svg"));

const rank = Number(process.env.RANK ?? 0);
const worldSize = Number(process.env.WORLD_SIZE ?? 1);
const log = (line) => rank === 0 && console.log(line);

/** Mean squared error of `out` against y; turns `out` into the loss gradient in place. */
async function mseAndGradient(out, y) {
  const n = out.numel;
  await ops.axpby(out, y, { alpha: 1, beta: -1 }); // out - y
  const sq = await ops.sumSquares([out]);
  const loss = sq.item() / n;
  sq.dispose();
  await ops.scaleInPlace(out, 2 / n); // d loss / d out
  return loss;
}

function bar(fraction, width = 30) {
  const full = Math.round(fraction * width);
  return "[" + "#".repeat(full) + ".".repeat(width - full) + "]";
}

/** Each expert's share of the routed tokens, one bar per expert (full: twice the fair share or more). */
const LEVELS = " ▁▂▃▄▅▆▇█";
function loadRow(counts) {
  const total = counts.reduce((a, b) => a + b, 0) || 1;
  return counts.map((c) => LEVELS[Math.min(8, Math.round(((c / total) * counts.length * 8) / 2))]).join("");
}

async function main() {
  const pg = worldSize > 1 ? await initProcessGroup() : undefined;
  const epSize = worldSize;
  const init = { initStd: 1 / Math.sqrt(D), outputInitStd: 1 / Math.sqrt(F) };
  const moe = new MoELayer(
    {
      dModel: D,
      dFF: F,
      numExperts: E,
      topK: 2,
      epSize,
      activation: "relu",
      auxLossCoef: 1e-2,
      seed: 1,
      name: "moe",
      ...init,
    },
    pg,
  );
  // The baseline: one FFN of width 2F (a one-expert layer routes every token to it with weight 1),
  // replicated on every rank and trained data-parallel.
  const dense = new MoELayer(
    { dModel: D, dFF: 2 * F, numExperts: 1, topK: 1, activation: "relu", seed: 2, name: "dense", ...init },
    pg,
  );
  await Promise.all([moe.ready, dense.ready]);
  const optMoe = new AdamW(moe.parameters(), { lr: 1e-2, weightDecay: 0 });
  const optDense = new AdamW(dense.parameters(), { lr: 1e-2, weightDecay: 0 });
  const task = new MixtureTask({ dModel: D, clusters: K, seed: 42 });

  log(
    `moe-ep demo: ${worldSize} rank(s), ${E} experts (${E / epSize} per rank), top-2, D=${D}, F=${F}; ` +
      `dense baseline width ${2 * F}; ${TOKENS} tokens per rank per step, ${STEPS} steps`,
  );
  log(`(load per expert: one bar per expert, half height = its fair share of the tokens)`);
  const history = { steps: [], moe: [], dense: [], load: [] };
  const t0 = Date.now();
  let lastShown = -1;
  for (let step = 1; step <= STEPS; step++) {
    const b = task.batch(TOKENS, 1000 + step * worldSize + rank);
    const x = Tensor.from(b.x, [TOKENS, D]);
    const y = Tensor.from(b.y, [TOKENS, D]);
    const losses = new Float32Array(2);
    let counts;
    for (const [i, model, opt] of [
      [0, moe, optMoe],
      [1, dense, optDense],
    ]) {
      const r = await model.forward(x);
      const out = r.output;
      losses[i] = await mseAndGradient(out, y);
      (await model.backward(out)).dispose();
      out.dispose();
      await opt.step();
      await model.zeroGrad();
      if (i === 0) counts = r.stats.tokensPerExpert;
    }
    // The losses averaged over the ranks, for the report.
    x.dispose();
    y.dispose();
    if (pg) {
      const l = Tensor.from(losses, [2]);
      await pg.allReduce(l, "avg");
      losses.set(l.toFloat32());
      l.dispose();
    }
    const total = counts.reduce((a, b) => a + b, 0);
    history.steps.push(step);
    history.moe.push(losses[0]);
    history.dense.push(losses[1]);
    history.load.push(counts.map((c) => c / total));
    const shown = Math.floor((step / STEPS) * 20);
    if (shown !== lastShown) {
      lastShown = shown;
      const s = ((Date.now() - t0) / 1000).toFixed(0);
      log(
        `${bar(step / STEPS)} ${String(Math.round((100 * step) / STEPS)).padStart(3)}% step ${String(step).padStart(4)}  ` +
          `loss MoE ${losses[0].toFixed(4)}  dense ${losses[1].toFixed(4)}  load per expert |${loadRow(counts)}|  ${s}s`,
      );
    }
  }

  // Which expert took each rule: route one batch of each rule alone (evaluation mode).
  moe.eval();
  const table = [];
  for (let c = 0; c < K; c++) {
    const b = task.batch(64, 7 + c, c);
    const x = Tensor.from(b.x, [64, D]);
    const r = await moe.forward(x);
    r.output.dispose();
    x.dispose();
    table.push(r.stats.tokensPerExpert);
  }
  const tail = (a) =>
    a.slice(-Math.max(1, Math.floor(a.length / 10))).reduce((s, v) => s + v, 0) /
    Math.max(1, Math.floor(a.length / 10));
  const [lm, ld] = [tail(history.moe), tail(history.dense)];
  if (rank === 0) {
    log("");
    log("tokens of each rule (rows) routed to each expert (columns), over all ranks:");
    log("        " + Array.from({ length: E }, (_, e) => `e${e}`.padStart(5)).join(""));
    table.forEach((row, c) => log(`rule ${c} ` + row.map((n) => String(n).padStart(5)).join("")));
    log("");
    log(
      `final loss (mean of the last 10% of steps): MoE ${lm.toFixed(4)}, dense ${ld.toFixed(4)} ` +
        `(${(ld / lm).toFixed(1)}x lower with experts)`,
    );
    require("fs").writeFileSync(
      OUT,
      renderSvg(history, `moe-ep demo: ${E} experts on ${worldSize} ranks vs a dense FFN`),
    );
    log(`plot of the losses and the per-expert load: ${OUT}`);
    log(`${((Date.now() - t0) / 1000).toFixed(1)} s`);
  }
  for (const o of [optMoe, optDense]) o.dispose();
  moe.dispose();
  dense.dispose();
  pg?.destroy();
}

main().catch((e) => {
  console.error(e.code ? `${e.code}: ${e.message}` : e.stack);
  process.exit(1);
});
