// --mode sanitize: one small case of every kernel, for compute-sanitizer.
"use strict";
const { moe, normal, dispose, withGemmKernel } = require("./common");

const { Tensor, ops, synchronize } = moe;

/** Runs each kernel once on `dev`; resolves with 0. */
module.exports = async function sanitize(dev) {
  const to = (t) => t.to(dev);
  const x = await to(Tensor.from(normal(37 * 64), [37, 64], { dtype: "bfloat16" }));
  const wg = await to(Tensor.from(normal(64 * 64, 0.1), [64, 64]));
  const logits = await ops.gate(x, wg);
  const gg = await ops.gateBackward(x, wg, logits);
  const r = await ops.route(logits, {
    topK: 8,
    scoreFunction: "sigmoid",
    renormalize: true,
    numGroups: 8,
    topkGroups: 4,
  });
  const r2 = await ops.route(logits, { topK: 2, expertBias: await to(Tensor.from(normal(64, 0.01), [64])) });
  const dl = await ops.routeBackward(logits, r.indices, r.tokensPerExpert, r.weights, {
    scoreFunction: "sigmoid",
    renormalize: true,
    auxLossGrad: 0.01,
    zLossGrad: 0.001,
  });
  const outs = [logits, gg, r, r2, dl];
  for (const o of [
    {},
    { capacityFactor: 0.5, dropPolicy: "position" },
    { capacityFactor: 0.5, dropPolicy: "probs" },
    { capacityFactor: 1.5, dropPolicy: "probs", padToCapacity: true },
  ]) {
    const p = await ops.permute(x, r.indices, r.weights, { numExperts: 64, ...o });
    const y = await ops.unpermute(p.rows, p.pairToRow, r.weights);
    const b = await ops.permuteBackward(p.rows, p.pairToRow);
    const u = await ops.unpermuteBackward(y, p.rows, p.pairToRow, r.weights);
    outs.push(p, y, b, u);
  }
  const odd = await to(Tensor.from(normal(5 * 7), [5, 7]));
  const p3 = await ops.permute(
    odd,
    await to(Tensor.from(new Int32Array([0, 1, 2, 0, 1]), [5, 1])),
    await to(Tensor.from([1, 1, 1, 1, 1], [5, 1])),
    { numExperts: 3 },
  );
  outs.push(
    p3,
    await ops.unpermuteBackward(
      await ops.unpermute(p3.rows, p3.pairToRow, await to(Tensor.from([1, 1, 1, 1, 1], [5, 1]))),
      p3.rows,
      p3.pairToRow,
      await to(Tensor.from([1, 1, 1, 1, 1], [5, 1])),
    ),
  );
  {
    // Rows read by several pairs and by none (unpermuteBackward's row pass).
    const map = await to(
      Tensor.from(
        Int32Array.from({ length: 37 * 2 }, (_, i) => ((i * 7) % 21) - 1),
        [37, 2],
      ),
    );
    const rw = await to(Tensor.from(normal(37 * 2), [37, 2]));
    const rows = await to(Tensor.from(normal(20 * 64), [20, 64], { dtype: "bfloat16" }));
    outs.push(map, rw, rows, await ops.unpermuteBackward(x, rows, map, rw));
  }
  for (const kind of ["relu", "gelu", "silu", "swiglu", "geglu"]) {
    const h = await ops.activation(x, kind);
    outs.push(h, await ops.activationBackward(h, x, kind));
  }
  const gx = await to(Tensor.from(normal(70 * 64), [70, 64], { dtype: "bfloat16" }));
  const gw = await to(Tensor.from(normal(3 * 64 * 136, 0.1), [3, 64, 136], { dtype: "bfloat16" }));
  const gcnt = await to(Tensor.from(new Int32Array([33, 0, 37]), [3]));
  for (const kernel of ["auto", "sm80"]) {
    await withGemmKernel(kernel, async () => {
      const gy = await ops.groupedGemm(gx, gw, gcnt);
      outs.push(gy, await ops.groupedGemmBackward(gy, gx, gw, gcnt));
    });
  }
  const param = await to(Tensor.from(normal(1000), [1000], { dtype: "bfloat16" }));
  await ops.adamw(
    param,
    await to(Tensor.from(normal(1000), [1000])),
    await to(Tensor.zeros([1000])),
    await to(Tensor.zeros([1000])),
    { lr: 1e-3, step: 1 },
  );
  outs.push(await x.clone(), await (await x.to("cpu")).to(dev));
  await synchronize();
  console.log(`sanitize: every kernel ran once on small inputs (${outs.length} results)`);
  dispose(outs);
  await synchronize();
  return 0;
};
