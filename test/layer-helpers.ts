/** Shared pieces of the MoE layer tests: configs, reading a layer's parameters, and comparing to the reference. */
import { MoELayer, ops, Tensor } from "../lib";
import type { MoELayerOptions } from "../lib/layer/config";
import type { MoERefConfig, MoERefParams } from "./reference/moe-layer";
import { f32, normal, values } from "./util";

/** The reference's view of a layer's resolved config. */
export function refConfig(layer: MoELayer, expertBias?: ArrayLike<number>): MoERefConfig {
  const c = layer.config;
  return {
    dModel: c.dModel,
    dFF: c.dFF,
    numExperts: c.numExperts,
    topK: c.topK,
    scoreFunction: c.scoreFunction,
    renormalize: c.renormalize,
    renormalizeKept: c.renormalizeKept,
    expertBias,
    numGroups: c.numGroups,
    topkGroups: c.topkGroups,
    capacityFactor: c.capacityFactor,
    minCapacity: c.minCapacity,
    dropPolicy: c.dropPolicy,
    padToCapacity: c.padToCapacity,
    auxLossCoef: c.auxLossCoef,
    zLossCoef: c.zLossCoef,
    activation: c.activation,
    bias: c.bias,
    sharedExpertFF: c.sharedExpertFF,
    residual: c.residual,
  };
}

/** Strips the layer's name prefix. */
export function shortName(layer: MoELayer, name: string): string {
  return layer.config.name ? name.slice(layer.config.name.length + 1) : name;
}

/** The layer's parameters as float64 arrays (this rank's experts only). */
export function readParams(layer: MoELayer): MoERefParams {
  return Object.fromEntries(layer.parameters().map((p) => [shortName(layer, p.name), values(p.param)]));
}

/** Gives biases (zero at initialisation) random values, so their paths are exercised; returns the expert bias used. */
export async function randomizeBiases(layer: MoELayer, seed: number): Promise<Float64Array | undefined> {
  for (const p of layer.parameters()) {
    if (!/\.b[12]$/.test(p.name)) continue;
    const v = f32(normal(p.param.numel, seed++, 0.1));
    using t = Tensor.from(Float32Array.from(v), p.param.shape, { dtype: p.param.dtype });
    await ops.copyInto(p.param, t);
  }
  const b = layer.buffers()[0];
  if (!b) return undefined;
  const v = f32(normal(b.tensor.numel, seed, 0.05));
  using t = Tensor.from(Float32Array.from(v), b.tensor.shape);
  await ops.copyInto(b.tensor, t);
  return v;
}

/** The configurations the parity tests cover, small enough for float64 loops. */
export function parityConfigs(): Array<[string, MoELayerOptions]> {
  const base = {
    dModel: 12,
    dFF: 10,
    numExperts: 8,
    topK: 2,
    seed: 7,
    initStd: 0.3,
    auxLossCoef: 0.01,
    zLossCoef: 0.001,
  };
  const out: Array<[string, MoELayerOptions]> = [];
  for (const scoreFunction of ["softmax", "sigmoid"] as const)
    for (const capacity of [undefined, 1.0])
      for (const activation of ["relu", "gelu", "silu", "swiglu", "geglu"] as const)
        out.push([
          `${scoreFunction}, ${capacity ? "capacity 1.0" : "dropless"}, ${activation}`,
          { ...base, scoreFunction, capacityFactor: capacity, activation },
        ]);
  return out;
}
