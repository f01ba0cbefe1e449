// Routes 512 random tokens over 8 experts (top-2) and runs a ReLU expert FFN
// on each expert's rows: the single-rank forward of one MoE layer, op by op.
const { Tensor, ops, scope, memoryStats } = require("moe-ep");

const T = 512,
  D = 256,
  F = 512,
  E = 8,
  K = 2;

function randn(n, std = 1) {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++)
    a[i] = std * Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
  return a;
}

async function main() {
  const x = Tensor.from(randn(T * D), [T, D]);
  const wg = Tensor.from(randn(D * E, 0.05), [D, E]);
  const w1 = Tensor.from(randn(E * D * F, 1 / Math.sqrt(D)), [E, D, F]);
  const w2 = Tensor.from(randn(E * F * D, 1 / Math.sqrt(F)), [E, F, D]);

  const y = await scope(async () => {
    const logits = await ops.gate(x, wg);
    const r = await ops.route(logits, { topK: K, scoreFunction: "softmax" });
    const p = await ops.permute(x, r.indices, r.weights, { numExperts: E, capacityFactor: 1.25, dropPolicy: "probs" });
    const h = await ops.activation(await ops.groupedGemm(p.rows, w1, p.rowsPerExpert), "relu");
    const out = await ops.groupedGemm(h, w2, p.rowsPerExpert);
    console.log("tokens per expert:", Array.from(r.tokensPerExpert.toInt32()).join(" "));
    console.log(`capacity ${p.capacity} rows per expert, ${p.dropped} of ${T * K} choices dropped`);
    console.log(`aux loss ${r.auxLoss.item().toFixed(4)} (1.0 when balanced), z-loss ${r.zLoss.item().toFixed(4)}`);
    return ops.unpermute(out, p.pairToRow, r.weights);
  });
  console.log(`output ${y}, first values ${Array.from(y.toFloat32().subarray(0, 4), (v) => v.toFixed(4)).join(", ")}`);
  y.dispose();
  console.log(`live tensors after the layer: ${memoryStats().tensors} (x, wg, w1, w2)`);
  for (const t of [x, wg, w1, w2]) t.dispose();
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
