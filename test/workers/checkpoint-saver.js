/**
 * Saves a small MoE layer and its AdamW state over one checkpoint again and
 * again until killed (test/checkpoint-kill.test.ts). Save number k writes the
 * state "k": every parameter, buffer and moment filled with k and the step
 * count k, so a loader can tell whether what it read was saved whole.
 * argv: dir, first k, layer options as JSON. Prints "saved" after its first save.
 */
"use strict";
const path = require("path");

const root = path.resolve(__dirname, "..", "..");
const { AdamW, MoELayer, Tensor } = require(path.join(root, "dist"));
const { copyInto } = require(path.join(root, "dist", "ops", "elementwise"));

async function fill(t, k) {
  const src = Tensor.from(new Float32Array(t.numel).fill(k), t.shape);
  try {
    await copyInto(t, src);
  } finally {
    src.dispose();
  }
}

async function main() {
  const [dir, first, options] = [process.argv[2], Number(process.argv[3]), JSON.parse(process.argv[4])];
  const layer = await MoELayer.create(options);
  const opt = new AdamW(layer.parameters(), { lr: 1e-3 });
  for (let k = first; ; k++) {
    for (const p of opt.params) {
      const s = opt.state(p);
      await Promise.all([fill(p.param, k), fill(s.expAvg, k), fill(s.expAvgSq, k)]);
    }
    for (const b of layer.buffers()) await fill(b.tensor, k);
    opt.setStepCount(k);
    await layer.save(dir, { optimizer: opt });
    if (k === first) process.stdout.write("saved\n");
  }
}

main().catch((e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exit(1);
});
