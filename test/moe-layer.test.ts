/**
 * MoELayer in one process: output, losses, statistics and every gradient
 * against the float64 reference layer, for softmax and sigmoid routing, with
 * and without capacity, for each activation; bias terms, shared experts,
 * expert bias, group-limited routing, padding, bfloat16, jitter; EP sizes 2
 * and 4 over an in-process world; finite differences; bitwise repeatability;
 * empty inputs and idle experts; modes; training pieces; errors; leaks.
 */
import { AdamW, MoELayer, Tensor, clipGradNorm, ops, parseForeignConfig, resolveConfig } from "../lib";
import type { ForeignConfig } from "../lib";
import type { MoELayerOptions } from "../lib/layer/config";
import { fakeWorld } from "./fake-group";
import { parityConfigs, randomizeBiases, readParams, refConfig, shortName } from "./layer-helpers";
import { adamwRef } from "./reference/adamw";
import { expertBiasUpdateRef } from "./reference/expert-bias";
import { moeLayerRef, moeLossRef, type MoERefParams, type MoERefRank, type MoERefResult } from "./reference/moe-layer";
import { fnv1a, jitterNoiseRef } from "./reference/random";
import { f32, leakCheck, memoryAtRest, normal, relErr, sameBits, tensor, values, TOL } from "./util";

/** Inputs for each rank whose routing (and drops) float32 decides as float64 does. */
function inputsWithMargin(
  layerCfg: Parameters<typeof moeLayerRef>[0],
  params: MoERefParams,
  Ts: number[],
  D: number,
  seed: number,
  noise?: (r: number) => Float64Array,
) {
  for (let s = seed; ; s += 1000) {
    const ranks: MoERefRank[] = Ts.map((T, r) => ({
      x: f32(normal(T * D, s + 10 * r)),
      dy: f32(normal(T * D, s + 10 * r + 1)),
      noise: noise?.(r),
    }));
    const ref = moeLayerRef(layerCfg, params, ranks);
    if (ref.margin > 1e-4) return { ranks, ref };
  }
}

function expectClose(got: Tensor | ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  const g = got instanceof Tensor ? values(got) : got;
  const e = relErr(g, want);
  if (!(e < tol)) throw new Error(`${what}: relative error ${e} >= ${tol}`);
}

async function parity(
  options: MoELayerOptions,
  T: number,
  seed: number,
  tol: number = TOL.float32,
): Promise<MoERefResult> {
  const layer = await MoELayer.create(options);
  try {
    const expertBias = await randomizeBiases(layer, seed + 100);
    const params = readParams(layer);
    const D = layer.config.dModel;
    const { ranks, ref } = inputsWithMargin(refConfig(layer, expertBias), params, [T], D, seed);
    using x = tensor(ranks[0].x, [T, D], layer.config.dtype);
    const res = await layer.forward(x);
    using out = res.output;
    expect(out.shape).toEqual([T, D]);
    expectClose(out, ref.outputs[0], tol, "output");
    expect(Math.abs(res.auxLoss - ref.aux[0])).toBeLessThanOrEqual(tol * Math.abs(ref.aux[0]) + 1e-12);
    expect(Math.abs(res.zLoss - ref.z[0])).toBeLessThanOrEqual(tol * Math.abs(ref.z[0]) + 1e-12);
    expect(res.stats.tokensPerExpert).toEqual(ref.tokensPerExpert);
    expect(res.stats.localTokensPerExpert).toEqual(ref.localTokensPerExpert[0]);
    expect(res.stats.dropped).toBe(ref.dropped[0]);
    const mean = ref.tokensPerExpert.reduce((a, b) => a + b, 0) / ref.tokensPerExpert.length;
    expect(res.stats.imbalance).toBeCloseTo(Math.max(...ref.tokensPerExpert) / mean, 12);
    using dy = tensor(ranks[0].dy, [T, D], layer.config.dtype);
    using dx = await layer.backward(dy);
    expectClose(dx, ref.dx[0], tol, "dx");
    for (const p of layer.parameters()) {
      const name = shortName(layer, p.name);
      expectClose(p.grad, ref.grads[name], tol, `grad of ${name}`);
      // Not vacuous: every gradient has some non-zero entry.
      expect(values(p.grad).some((v) => v !== 0)).toBe(true);
    }
    return ref;
  } finally {
    layer.dispose();
  }
}

describe("MoELayer matches the float64 reference layer (EP size 1)", () => {
  test.each(parityConfigs())("%s", async (_name, options) => {
    const ref = await parity(options, 40, 1);
    if (options.capacityFactor) expect(ref.dropped[0]).toBeGreaterThan(0);
  });

  const base = { dModel: 12, dFF: 10, numExperts: 8, seed: 3, initStd: 0.3, auxLossCoef: 0.02, zLossCoef: 0.003 };
  test.each([
    ["bias terms and shared experts (swiglu)", { ...base, bias: true, sharedExpertFF: 6, activation: "swiglu" }],
    ["shared experts with bias terms (relu)", { ...base, bias: true, sharedExpertFF: 5, activation: "relu" }],
    [
      "DeepSeek-V3 style: sigmoid, expert bias, 4 groups of which 2, top-4",
      { ...base, scoreFunction: "sigmoid", expertBias: true, numGroups: 4, topkGroups: 2, topK: 4 },
    ],
    [
      "padded to capacity 0.5 with the position policy",
      { ...base, capacityFactor: 0.5, dropPolicy: "position", padToCapacity: true, activation: "silu" },
    ],
    [
      "top-1 (Switch): weights not renormalised, capacity 1.25",
      { ...base, topK: 1, capacityFactor: 1.25, activation: "relu" },
    ],
    ["softmax renormalised top-3 over 6 experts", { ...base, numExperts: 6, topK: 3, renormalize: true }],
  ] as Array<[string, MoELayerOptions]>)("%s", async (_name, options) => {
    await parity(options, 48, 5);
  });

  test("bfloat16 experts and activations match within the bf16 tolerance", async () => {
    await parity({ ...base, dtype: "bfloat16", activation: "gelu", capacityFactor: 1.5 }, 32, 9, TOL.bfloat16);
  });
});

describe("training and evaluation modes", () => {
  const options: MoELayerOptions = {
    dModel: 8,
    dFF: 6,
    numExperts: 4,
    topK: 2,
    seed: 11,
    initStd: 0.4,
    jitter: 0.1,
    auxLossCoef: 0.01,
  };
  test("training forwards multiply the gate's input by seeded U(1 − ε, 1 + ε) noise, a new draw each call; eval has none", async () => {
    const layer = await MoELayer.create(options);
    try {
      const params = readParams(layer);
      const cfg = refConfig(layer);
      const T = 20;
      const key = fnv1a("router.jitter/0");
      for (const slice of [0, 1]) {
        const noise = jitterNoiseRef(T * 8, 0.1, 11, key, slice);
        const { ranks, ref } = inputsWithMargin(cfg, params, [T], 8, 21 + slice, () => noise);
        using x = tensor(ranks[0].x, [T, 8]);
        const res = await layer.forward(x);
        using out = res.output;
        expectClose(out, ref.outputs[0], TOL.float32, "output with jitter");
        await layer.zeroGrad();
        using dx = await layer.backward(tensor(ranks[0].dy, [T, 8]));
        expectClose(dx, ref.dx[0], TOL.float32, "dx through the jitter");
        expectClose(layer.parameters()[0].grad, ref.grads["router.weight"], TOL.float32, "router grad with jitter");
      }
      // Evaluation: no noise, nothing kept for backward.
      layer.eval();
      const { ranks, ref } = inputsWithMargin(cfg, params, [T], 8, 40);
      using x = tensor(ranks[0].x, [T, 8]);
      const res = await layer.forward(x);
      expectClose(res.output, ref.outputs[0], TOL.float32, "eval output");
      res.output.dispose();
      await expect(layer.backward(tensor(ranks[0].dy, [T, 8]))).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(/training-mode forward/),
      });
      // forward(x, { training: true }) overrides the mode for one call.
      const r2 = await layer.forward(x, { training: true });
      r2.output.dispose();
      (await layer.backward(tensor(ranks[0].dy, [T, 8]))).dispose();
    } finally {
      layer.dispose();
    }
  });

  test("several forwards, then backward of each (any order, by result); lossScale scales only the loss gradients", async () => {
    const opts = { ...options, jitter: 0, zLossCoef: 0.01 };
    const layer = await MoELayer.create(opts);
    try {
      const params = readParams(layer);
      const cfg = refConfig(layer);
      const a = inputsWithMargin(cfg, params, [16], 8, 50);
      const b = inputsWithMargin(cfg, params, [24], 8, 60);
      const ra = await layer.forward(tensor(a.ranks[0].x, [16, 8]));
      const rb = await layer.forward(tensor(b.ranks[0].x, [24, 8]));
      using dxa = await layer.backward(tensor(a.ranks[0].dy, [16, 8]), { result: ra, lossScale: 0.5 });
      const refA = moeLayerRef(cfg, params, a.ranks, 0.5);
      expectClose(dxa, refA.dx[0], TOL.float32, "dx of the first forward");
      using dxb = await layer.backward(tensor(b.ranks[0].dy, [24, 8]));
      expectClose(dxb, b.ref.dx[0], TOL.float32, "dx of the second forward");
      // Gradients accumulate over both backward calls.
      const want = refA.grads["experts.w1"].map((v, i) => v + b.ref.grads["experts.w1"][i]);
      expectClose(layer.parameters()[1].grad, want, TOL.float32, "accumulated w1 grad");
      await expect(layer.backward(tensor(b.ranks[0].dy, [24, 8]), { result: rb })).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
      });
      ra.output.dispose();
      rb.output.dispose();
      await layer.zeroGrad();
      for (const p of layer.parameters()) expect(values(p.grad).every((v) => v === 0)).toBe(true);
    } finally {
      layer.dispose();
    }
  });
});

describe("expert parallelism over an in-process world of ranks", () => {
  test.each([
    [2, 2, { scoreFunction: "softmax", activation: "gelu" }],
    [4, 4, { scoreFunction: "sigmoid", activation: "swiglu", capacityFactor: 1.0 }],
    [
      4,
      2,
      {
        scoreFunction: "softmax",
        activation: "relu",
        bias: true,
        sharedExpertFF: 4,
        capacityFactor: 1.25,
        padToCapacity: true,
      },
    ],
  ] as Array<[number, number, Partial<MoELayerOptions>]>)(
    "world %i, epSize %i %j: every rank's output and gradients match the reference",
    async (W, P, extra) => {
      const world = fakeWorld(W);
      const options: MoELayerOptions = {
        dModel: 8,
        dFF: 6,
        numExperts: 8,
        topK: 2,
        seed: 5,
        initStd: 0.4,
        auxLossCoef: 0.01,
        zLossCoef: 0.001,
        epSize: P,
        ...extra,
      };
      const layers = await Promise.all(world.map((g) => MoELayer.create(options, g)));
      try {
        for (const l of layers) await randomizeBiases(l, 300);
        // The full parameters: replicated ones from rank 0, experts gathered over the first EP group.
        const params: MoERefParams = {};
        for (const p of layers[0].parameters()) {
          const name = shortName(layers[0], p.name);
          params[name] = p.expert
            ? Float64Array.from(
                layers
                  .slice(0, P)
                  .flatMap((l) => Array.from(values(l.parameters().find((q) => q.name === p.name)!.param))),
              )
            : values(p.param);
        }
        // Every rank has its own tokens; in a world of 4, one has none at all.
        const Ts = Array.from({ length: W }, (_, r) => (r === 1 && W === 4 ? 0 : 12 + 4 * r));
        const { ranks, ref } = inputsWithMargin(refConfig(layers[0]), params, Ts, 8, 70);
        const results = await Promise.all(layers.map((l, r) => l.forward(tensor(ranks[r].x, [Ts[r], 8]))));
        const dxs = await Promise.all(layers.map((l, r) => l.backward(tensor(ranks[r].dy, [Ts[r], 8]))));
        layers.forEach((l, r) => {
          expect(l.epRank).toBe(r % P);
          expectClose(results[r].output, ref.outputs[r], TOL.float32, `output of rank ${r}`);
          expect(Math.abs(results[r].auxLoss - ref.aux[r])).toBeLessThanOrEqual(TOL.float32 * ref.aux[r] + 1e-12);
          expect(results[r].stats.tokensPerExpert).toEqual(ref.tokensPerExpert);
          expect(results[r].stats.dropped).toBe(ref.dropped.reduce((a, b) => a + b, 0));
          expectClose(dxs[r], ref.dx[r], TOL.float32, `dx of rank ${r}`);
          for (const p of l.parameters()) {
            const name = shortName(l, p.name);
            const full = ref.grads[name];
            const per = full.length / 8;
            const want = p.expert
              ? full.subarray(l.firstExpert * per, (l.firstExpert + l.numLocalExperts) * per)
              : full;
            expectClose(p.grad, want, TOL.float32, `grad of ${name} on rank ${r}`);
          }
        });
        for (const r of results) r.output.dispose();
        for (const d of dxs) d.dispose();
      } finally {
        for (const l of layers) l.dispose();
      }
    },
  );

  test("expert e's initial weights are the same whatever the EP size; streams differ by name and seed", async () => {
    const options: MoELayerOptions = { dModel: 6, dFF: 5, numExperts: 4, seed: 99, initStd: 0.02 };
    const single = await MoELayer.create(options);
    const world = fakeWorld(4);
    const sharded = await Promise.all(world.map((g) => MoELayer.create({ ...options, epSize: 4 }, g)));
    try {
      const full = values(single.parameters()[1].param);
      const per = full.length / 4;
      sharded.forEach((l, r) =>
        expect(Array.from(values(l.parameters()[1].param))).toEqual(Array.from(full.subarray(r * per, (r + 1) * per))),
      );
      // Router weights replicated identically.
      expect(sameBits(sharded[3].parameters()[0].param, single.parameters()[0].param)).toBe(true);
      // The normal initialisation has the asked-for spread.
      const big = await MoELayer.create({ dModel: 64, dFF: 64, numExperts: 8, seed: 1, initStd: 0.02 });
      const w = values(big.parameters()[1].param);
      const std = Math.sqrt(w.reduce((a, b) => a + b * b, 0) / w.length);
      expect(Math.abs(std / 0.02 - 1)).toBeLessThan(0.02);
      const named = await MoELayer.create({ ...options, name: "layers.1" });
      expect(named.parameters()[1].name).toBe("layers.1.experts.w1");
      expect(sameBits(named.parameters()[1].param, single.parameters()[1].param)).toBe(false);
      const reseeded = await MoELayer.create({ ...options, seed: 100 });
      expect(sameBits(reseeded.parameters()[1].param, single.parameters()[1].param)).toBe(false);
      for (const l of [big, named, reseeded]) l.dispose();
    } finally {
      single.dispose();
      for (const l of sharded) l.dispose();
    }
  });
});

describe("gradients against finite differences", () => {
  test("the float64 reference layer's gradients are the derivatives of its loss (every parameter and x)", () => {
    const cfg = {
      dModel: 4,
      dFF: 3,
      numExperts: 4,
      topK: 2,
      scoreFunction: "softmax" as const,
      renormalize: true,
      dropPolicy: "probs" as const,
      padToCapacity: false,
      capacityFactor: 1.0,
      auxLossCoef: 0.1,
      zLossCoef: 0.05,
      activation: "swiglu" as const,
      bias: true,
      sharedExpertFF: 2,
    };
    const shapes: Record<string, number> = {
      "router.weight": 16,
      "experts.w1": 4 * 4 * 6,
      "experts.w2": 4 * 3 * 4,
      "experts.b1": 24,
      "experts.b2": 16,
      "shared_experts.w1": 16,
      "shared_experts.w2": 8,
      "shared_experts.b1": 4,
      "shared_experts.b2": 4,
    };
    const params: MoERefParams = {};
    let seed = 1;
    for (const [n, len] of Object.entries(shapes)) params[n] = normal(len, seed++, 0.5);
    const ranks: MoERefRank[] = [6, 5].map((T, r) => ({ x: normal(T * 4, 20 + r), dy: normal(T * 4, 30 + r) }));
    const ref = moeLayerRef(cfg, params, ranks);
    expect(ref.margin).toBeGreaterThan(1e-3);
    expect(ref.dropped.reduce((a, b) => a + b, 0)).toBeGreaterThan(0);
    const h = 1e-6;
    for (const [name, p] of Object.entries(params)) {
      const fd = new Float64Array(p.length);
      for (let i = 0; i < p.length; i++) {
        const v = p[i];
        p[i] = v + h;
        const up = moeLossRef(cfg, params, ranks);
        p[i] = v - h;
        const down = moeLossRef(cfg, params, ranks);
        p[i] = v;
        fd[i] = (up - down) / (2 * h);
      }
      expect([name, relErr(ref.grads[name], fd)]).toEqual([name, expect.any(Number)]);
      expect(relErr(ref.grads[name], fd)).toBeLessThan(1e-6);
    }
    ranks.forEach((rank, r) => {
      const fd = rank.x.map((v, i) => {
        rank.x[i] = v + h;
        const up = moeLossRef(cfg, params, ranks);
        rank.x[i] = v - h;
        const down = moeLossRef(cfg, params, ranks);
        rank.x[i] = v;
        return (up - down) / (2 * h);
      });
      expect(relErr(ref.dx[r], fd)).toBeLessThan(1e-6);
    });
  });

  test("the native layer's gradients predict how its float32 loss moves (directional derivatives)", async () => {
    const layer = await MoELayer.create({
      dModel: 8,
      dFF: 6,
      numExperts: 4,
      topK: 2,
      seed: 4,
      initStd: 0.5,
      auxLossCoef: 0.05,
      zLossCoef: 0.01,
      activation: "gelu",
      sharedExpertFF: 3,
      bias: true,
    });
    try {
      await randomizeBiases(layer, 9);
      const T = 16;
      const { ranks } = inputsWithMargin(refConfig(layer), readParams(layer), [T], 8, 80);
      using x = tensor(ranks[0].x, [T, 8]);
      using dy = tensor(ranks[0].dy, [T, 8]);
      const loss = async (): Promise<number> => {
        const r = await layer.forward(x, { training: false });
        const y = values(r.output);
        r.output.dispose();
        return y.reduce((a, v, i) => a + v * ranks[0].dy[i], 0) + r.auxLoss + r.zLoss;
      };
      const r = await layer.forward(x);
      r.output.dispose();
      (await layer.backward(dy)).dispose();
      const h = 1e-3;
      for (const p of layer.parameters()) {
        const g = values(p.grad);
        const v = f32(normal(g.length, 7));
        const predicted = g.reduce((a, gi, i) => a + gi * v[i], 0);
        using dir = tensor(v, p.param.shape);
        await ops.axpby(p.param, dir, { alpha: 1, beta: h });
        const up = await loss();
        await ops.axpby(p.param, dir, { alpha: 1, beta: -2 * h });
        const down = await loss();
        await ops.axpby(p.param, dir, { alpha: 1, beta: h });
        const fd = (up - down) / (2 * h);
        expect([p.name, Math.abs(fd - predicted) / Math.max(Math.abs(predicted), 1e-3)]).toEqual([
          p.name,
          expect.any(Number),
        ]);
        expect(Math.abs(fd - predicted)).toBeLessThan(2e-2 * Math.max(Math.abs(predicted), 1e-2));
      }
    } finally {
      layer.dispose();
    }
  });
});

describe("determinism and edge cases", () => {
  const options: MoELayerOptions = {
    dModel: 16,
    dFF: 12,
    numExperts: 8,
    topK: 2,
    seed: 2,
    initStd: 0.2,
    auxLossCoef: 0.01,
    capacityFactor: 1.0,
    activation: "swiglu",
    sharedExpertFF: 8,
  };

  test("the same run repeated gives bitwise the same output, input gradient and parameter gradients", async () => {
    const runs: Array<{ layer: MoELayer; out: Tensor; dx: Tensor }> = [];
    for (let i = 0; i < 2; i++) {
      const layer = await MoELayer.create(options);
      using x = tensor(normal(300 * 16, 1), [300, 16]);
      const r = await layer.forward(x);
      const dx = await layer.backward(tensor(normal(300 * 16, 2), [300, 16]));
      runs.push({ layer, out: r.output, dx });
    }
    expect(sameBits(runs[0].out, runs[1].out)).toBe(true);
    expect(sameBits(runs[0].dx, runs[1].dx)).toBe(true);
    runs[0].layer
      .parameters()
      .forEach((p, i) => expect(sameBits(p.grad, runs[1].layer.parameters()[i].grad)).toBe(true));
    for (const r of runs) {
      r.out.dispose();
      r.dx.dispose();
      r.layer.dispose();
    }
  });

  test("zero tokens give empty outputs and zero gradients; an expert that receives no tokens gets zero gradients", async () => {
    const layer = await MoELayer.create({ ...options, expertBias: true, capacityFactor: undefined, bias: true });
    try {
      using x0 = Tensor.zeros([0, 16]);
      const r0 = await layer.forward(x0);
      expect(r0.output.shape).toEqual([0, 16]);
      expect(r0.stats.tokensPerExpert).toEqual(new Array(8).fill(0));
      using dx0 = await layer.backward(Tensor.zeros([0, 16]));
      expect(dx0.shape).toEqual([0, 16]);
      r0.output.dispose();
      for (const p of layer.parameters()) expect(values(p.grad).every((v) => v === 0)).toBe(true);
      // Expert 3 is never chosen: a large negative bias on its score.
      const bias = new Float32Array(8);
      bias[3] = -10;
      using b = Tensor.from(bias, [8]);
      await ops.copyInto(layer.buffers()[0].tensor, b);
      using x = tensor(normal(64 * 16, 3), [64, 16]);
      const r = await layer.forward(x);
      expect(r.stats.tokensPerExpert[3]).toBe(0);
      r.output.dispose();
      (await layer.backward(tensor(normal(64 * 16, 4), [64, 16]))).dispose();
      for (const name of ["experts.w1", "experts.w2", "experts.b1", "experts.b2"]) {
        const p = layer.parameters().find((q) => q.name === name)!;
        const g = values(p.grad);
        const per = g.length / 8;
        expect(g.subarray(3 * per, 4 * per).every((v) => v === 0)).toBe(true);
        expect(g.subarray(2 * per, 3 * per).some((v) => v !== 0)).toBe(true);
      }
    } finally {
      layer.dispose();
    }
  });

  test("no tensors leak across 200 forward and backward passes", async () => {
    const layer = await MoELayer.create({ ...options, jitter: 0.01, expertBias: true });
    using x = tensor(normal(32 * 16, 1), [32, 16]);
    using dy = tensor(normal(32 * 16, 2), [32, 16]);
    const pass = async (i: number) => {
      const r = await layer.forward(x, { training: i % 4 !== 3 });
      r.output.dispose();
      if (i % 4 !== 3) (await layer.backward(dy)).dispose();
      await layer.updateExpertBias();
    };
    await pass(0); // the first backward replaces the zero gradients made with the layer
    const leaks = await leakCheck();
    for (let i = 0; i < 200; i++) await pass(i);
    expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
    const live = (await memoryAtRest()).tensors;
    layer.dispose();
    expect((await memoryAtRest()).tensors).toBeLessThan(live);
  });
});

describe("training pieces", () => {
  test("updateExpertBias steps each bias by rate · sign(mean − load) over the loads of the training forwards since the last update", async () => {
    const layer = await MoELayer.create({
      dModel: 8,
      dFF: 4,
      numExperts: 4,
      topK: 1,
      seed: 1,
      initStd: 0.5,
      expertBias: true,
      expertBiasUpdateRate: 0.01,
    });
    try {
      const loads = [0, 0, 0, 0];
      for (const s of [1, 2]) {
        const r = await layer.forward(tensor(normal(30 * 8, s), [30, 8]));
        r.stats.tokensPerExpert.forEach((n, e) => (loads[e] += n));
        r.output.dispose();
      }
      (await layer.forward(tensor(normal(30 * 8, 3), [30, 8]), { training: false })).output.dispose();
      await layer.updateExpertBias();
      expect(Array.from(values(layer.buffers()[0].tensor))).toEqual(
        Array.from(f32(expertBiasUpdateRef([0, 0, 0, 0], loads, 0.01))),
      );
      expect(loads.some((n) => n !== loads[0])).toBe(true);
      // The loads were consumed: a second update with no forwards moves nothing.
      const before = values(layer.buffers()[0].tensor);
      await layer.updateExpertBias();
      expect(Array.from(values(layer.buffers()[0].tensor))).toEqual(Array.from(before));
    } finally {
      layer.dispose();
    }
  });

  test("AdamW steps every parameter as the float64 AdamW does (no decay on biases); clipGradNorm scales to the global norm", async () => {
    const layer = await MoELayer.create({
      dModel: 8,
      dFF: 6,
      numExperts: 4,
      seed: 6,
      initStd: 0.3,
      bias: true,
      activation: "relu",
    });
    try {
      const opt = new AdamW(layer.parameters(), { lr: 1e-2, weightDecay: 0.1 });
      const before = layer.parameters().map((p) => values(p.param));
      const r = await layer.forward(tensor(normal(24 * 8, 1), [24, 8]));
      r.output.dispose();
      (await layer.backward(tensor(normal(24 * 8, 2), [24, 8]))).dispose();
      const grads = layer.parameters().map((p) => values(p.grad));
      const norm = Math.sqrt(grads.reduce((a, g) => a + g.reduce((s, v) => s + v * v, 0), 0));
      const got = await layer.clipGradNorm(norm / 4);
      expect(Math.abs(got / norm - 1)).toBeLessThan(1e-6);
      const coef = norm / 4 / (norm + 1e-6);
      layer.parameters().forEach((p, i) =>
        expectClose(
          p.grad,
          grads[i].map((v) => v * coef),
          TOL.float32,
          `clipped ${p.name}`,
        ),
      );
      // Below the threshold nothing changes.
      const unchanged = layer.parameters().map((p) => values(p.grad));
      expect(Math.abs((await clipGradNorm(layer.parameters(), 1e6)) - norm / 4) / (norm / 4)).toBeLessThan(1e-5);
      layer.parameters().forEach((p, i) => expect(Array.from(values(p.grad))).toEqual(Array.from(unchanged[i])));
      await opt.step();
      layer.parameters().forEach((p, i) => {
        const want = adamwRef(
          {
            param: before[i],
            expAvg: new Float64Array(before[i].length),
            expAvgSq: new Float64Array(before[i].length),
          },
          unchanged[i],
          {
            lr: 1e-2,
            weightDecay: p.weightDecay ? 0.1 : 0,
            step: 1,
          },
        );
        expectClose(p.param, want.param, TOL.float32, `AdamW on ${p.name}`);
      });
      expect(
        layer
          .parameters()
          .filter((p) => !p.weightDecay)
          .map((p) => p.name),
      ).toEqual(["experts.b1", "experts.b2"]);
      expect(opt.stepCount).toBe(1);
      await opt.zeroGrad();
      for (const p of layer.parameters()) expect(values(p.grad).every((v) => v === 0)).toBe(true);
      opt.dispose();
    } finally {
      layer.dispose();
    }
  });
});

describe("training pieces across ranks", () => {
  test("clipGradNorm gives every rank the norm of the whole model: replicated gradients once, each expert's once", async () => {
    const world = fakeWorld(4);
    const layers = await Promise.all(
      world.map((g) =>
        MoELayer.create({ dModel: 8, dFF: 6, numExperts: 8, epSize: 2, seed: 3, initStd: 0.3, sharedExpertFF: 4 }, g),
      ),
    );
    try {
      await Promise.all(
        layers.map(async (l, r) => {
          const res = await l.forward(tensor(normal(12 * 8, 10 + r), [12, 8]));
          res.output.dispose();
          (await l.backward(tensor(normal(12 * 8, 20 + r), [12, 8]))).dispose();
        }),
      );
      // Expected: replicated parameters from rank 0, experts from the first EP group (ranks 0 and 1).
      const sq = (t: Tensor) => values(t).reduce((a, v) => a + v * v, 0);
      let total = 0;
      for (const p of layers[0].parameters()) total += sq(p.grad);
      for (const p of layers[1].parameters()) if (p.expert) total += sq(p.grad);
      // The expert-data-parallel replicas hold the same expert gradients.
      layers[0].parameters().forEach((p, i) => expect(sameBits(p.grad, layers[2].parameters()[i].grad)).toBe(true));
      const norms = await Promise.all(layers.map((l) => l.clipGradNorm(1e9)));
      for (const n of norms) expect(Math.abs(n / Math.sqrt(total) - 1)).toBeLessThan(1e-5);
      expect(new Set(norms).size).toBe(1);
      const before = values(layers[1].parameters()[1].grad);
      await Promise.all(layers.map((l) => l.clipGradNorm(Math.sqrt(total) / 2)));
      expectClose(
        layers[1].parameters()[1].grad,
        before.map((v) => v / 2),
        1e-5,
        "clipped expert gradient",
      );
    } finally {
      for (const l of layers) l.dispose();
    }
  });
});

describe("configuration", () => {
  test("defaults follow Megatron-Core where it has one", () => {
    const c = resolveConfig({ dModel: 16, dFF: 32, numExperts: 8 });
    expect(c).toMatchObject({
      topK: 2,
      epSize: 1,
      scoreFunction: "softmax",
      renormalize: true,
      dropPolicy: "probs",
      capacityFactor: undefined,
      activation: "gelu",
      auxLossCoef: 0,
      seed: 1234,
      initStd: 0.02,
      dtype: "float32",
      expertBiasUpdateRate: 1e-3,
    });
    expect(resolveConfig({ dModel: 16, dFF: 32, numExperts: 8, topK: 1 }).renormalize).toBe(false);
  });

  test("the founding configs translate as written: DeepSpeed's MoE(hidden_size=1024, num_experts=8, ep_size=2, k=1) and the bf16 64-expert training config", () => {
    const ds = parseForeignConfig({
      hidden_size: 1024,
      ffn_hidden_size: 4096,
      num_experts: 8,
      ep_size: 2,
      k: 1,
      activation: "relu",
    }).options;
    expect(resolveConfig(ds)).toMatchObject({
      dModel: 1024,
      dFF: 4096,
      numExperts: 8,
      epSize: 2,
      topK: 1,
      activation: "relu",
      capacityFactor: undefined,
    });
    const founding = {
      bf16: true,
      hidden_size: 1024,
      ffn_hidden_size: 4096,
      optimizer: { type: "AdamW", params: { lr: 2e-4 } },
      data_parallel_size: 4,
      moe: {
        num_experts: 64,
        top_k: 2,
        capacity_factor: 1.25,
        load_balancing_loss_coef: 1e-2,
        router: "softmax",
        token_drop_policy: "probs",
        expert_parallel_size: 4,
      },
    };
    expect(resolveConfig(parseForeignConfig(founding).options)).toMatchObject({
      dtype: "bfloat16",
      numExperts: 64,
      topK: 2,
      capacityFactor: 1.25,
      auxLossCoef: 1e-2,
      scoreFunction: "softmax",
      dropPolicy: "probs",
      epSize: 4,
    });
    const dropless = parseForeignConfig({
      ...founding,
      moe: { ...founding.moe, capacity_factor: undefined, token_drop_policy: "dropless" },
    }).options;
    expect(dropless.capacityFactor).toBeUndefined();
    const megatron = parseForeignConfig({
      hidden_size: 64,
      moe_ffn_hidden_size: 128,
      num_moe_experts: undefined,
      moe: {
        num_experts: 8,
        moe_router_topk: 2,
        moe_router_score_function: "sigmoid",
        moe_router_enable_expert_bias: true,
        moe_router_num_groups: 4,
        moe_router_group_topk: 2,
        moe_shared_expert_intermediate_size: 64,
        moe_input_jitter_eps: 0.01,
        moe_z_loss_coeff: 1e-3,
      },
      gated_linear_unit: true,
      activation_func: "silu",
      add_bias_linear: false,
    }).options;
    expect(resolveConfig(megatron)).toMatchObject({
      dFF: 128,
      scoreFunction: "sigmoid",
      expertBias: true,
      numGroups: 4,
      topkGroups: 2,
      sharedExpertFF: 64,
      jitter: 0.01,
      zLossCoef: 1e-3,
      activation: "swiglu",
      bias: false,
    });
  });

  test("a Megatron-shaped config builds a layer as it is", async () => {
    const layer = MoELayer.fromForeignConfig({
      hidden_size: 8,
      ffn_hidden_size: 16,
      moe: {
        num_experts: 4,
        top_k: 2,
        capacity_factor: 1.25,
        load_balancing_loss_coef: 1e-2,
        router: "softmax",
        token_drop_policy: "position",
      },
    });
    await layer.ready;
    expect(layer.config).toMatchObject({
      dModel: 8,
      dFF: 16,
      numExperts: 4,
      capacityFactor: 1.25,
      dropPolicy: "position",
      auxLossCoef: 1e-2,
    });
    const r = await layer.forward(tensor(normal(10 * 8, 1), [10, 8]));
    expect(r.auxLoss).toBeGreaterThan(0);
    r.output.dispose();
    layer.dispose();
  });

  test.each([
    [{ dModel: 8, dFF: 8, numExperts: 8, topk: 2 }, /unknown option "topk"/],
    [{ dModel: 8, dFF: 8, numExperts: 8, epSize: 3 }, /epSize to divide numExperts/],
    [{ dModel: 8, dFF: 8, numExperts: 8, topK: 9 }, /topK/],
    [{ dModel: 0, dFF: 8, numExperts: 8 }, /dModel/],
    [{ dModel: 8, dFF: 8, numExperts: 8, padToCapacity: true }, /capacityFactor with padToCapacity/],
    [{ dModel: 8, dFF: 8, numExperts: 8, capacityFactor: -1 }, /capacityFactor/],
    [{ dModel: 8, dFF: 8, numExperts: 8, activation: "tanh" }, /activation/],
    [{ dModel: 8, dFF: 8, numExperts: 8, numGroups: 3, topkGroups: 1 }, /numGroups to divide/],
    [{ dModel: 8, dFF: 8, numExperts: 8, numGroups: 4 }, /topkGroups/],
    [{ dModel: 8, dFF: 8, numExperts: 8, jitter: 1 }, /jitter/],
    [{ dModel: 8, dFF: 8, numExperts: 8, dtype: "int32" }, /dtype/],
    [{ dModel: 8, dFF: 8, numExperts: 8, epSize: 2 }, /epSize \(2\) to divide the world size \(1\)/],
  ] as Array<[MoELayerOptions, RegExp]>)("%j is an ERR_MOE_VALUE naming the problem", (cfg, message) => {
    expect(() => new MoELayer(cfg)).toThrow(
      expect.objectContaining({ code: "ERR_MOE_VALUE", message: expect.stringMatching(message) }),
    );
  });

  test.each([
    [{ hidden_size: 8, moe: { num_experts: 4, router: "tanh" } }, /moe\.router/],
    [{ hidden_size: 8, moe: { top_k: 2 } }, /num_experts/],
  ] as Array<[ForeignConfig, RegExp]>)("foreign %j is an ERR_MOE_VALUE naming the problem", (cfg, message) => {
    expect(() => MoELayer.fromForeignConfig(cfg)).toThrow(
      expect.objectContaining({ code: "ERR_MOE_VALUE", message: expect.stringMatching(message) }),
    );
  });

  test("bad inputs to forward and backward get typed errors", async () => {
    const layer = await MoELayer.create({ dModel: 8, dFF: 8, numExperts: 4 });
    await expect(layer.forward(Tensor.zeros([4, 7]))).rejects.toMatchObject({
      code: "ERR_MOE_SHAPE",
      message: expect.stringMatching(/\[tokens, dModel = 8\].*\[4, 7\]/),
    });
    await expect(layer.forward("x" as unknown as Tensor)).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    await expect(layer.forward(Tensor.from(new Int32Array(8), [1, 8]))).rejects.toMatchObject({
      code: "ERR_MOE_DTYPE",
    });
    await expect(layer.forward(tensor([NaN, 0, 0, 0, 0, 0, 0, 0], [1, 8]))).rejects.toMatchObject({
      code: "ERR_MOE_NONFINITE",
    });
    const r = await layer.forward(Tensor.zeros([4, 8]));
    await expect(layer.backward(Tensor.zeros([3, 8]))).rejects.toMatchObject({ code: "ERR_MOE_SHAPE" });
    r.output.dispose();
    const gone = Tensor.zeros([4, 8]);
    gone.dispose();
    await expect(layer.forward(gone)).rejects.toMatchObject({ code: "ERR_MOE_DISPOSED" });
    layer.dispose();
    await expect(layer.forward(Tensor.zeros([4, 8]))).rejects.toMatchObject({ code: "ERR_MOE_DISPOSED" });
  });

  test("the caller may dispose x before backward; a zeroGrad() that is not awaited still comes before the next accumulation", async () => {
    const layer = await MoELayer.create({ dModel: 8, dFF: 8, numExperts: 4, seed: 1, initStd: 0.3 });
    try {
      const xs = normal(16 * 8, 1);
      const x = tensor(xs, [16, 8]);
      const r = await layer.forward(x);
      x.dispose();
      r.output.dispose();
      (await layer.backward(tensor(normal(16 * 8, 2), [16, 8]))).dispose();
      const once = layer.parameters().map((p) => values(p.grad));
      for (let i = 0; i < 3; i++) {
        void layer.zeroGrad();
        const r2 = await layer.forward(tensor(xs, [16, 8]));
        r2.output.dispose();
        (await layer.backward(tensor(normal(16 * 8, 2), [16, 8]))).dispose();
      }
      layer.parameters().forEach((p, i) => expect(Array.from(values(p.grad))).toEqual(Array.from(once[i])));
    } finally {
      layer.dispose();
    }
  });
});
