/**
 * DeepSpeed's MoE(...) keywords (MoELayer.fromDeepSpeed): the mapping and its
 * defaults; min_capacity and eval_capacity_factor against the float64
 * reference; the "choice" drop order; the residual MoE (use_residual)
 * forward, dx and every gradient against the reference in one process and
 * over an in-process world of 2, the residualMix op against its reference and
 * the coefficient path's reference gradients against finite differences; the
 * weights renormalised after capacity; RSample and the top-2 second-expert
 * sampling with the seeded Gumbel stream.
 */
import { MoELayer, Tensor, deepSpeedOptions, ops, type DeepSpeedMoEKwargs } from "../lib";
import { fakeWorld } from "./fake-group";
import { randomizeBiases, readParams, refConfig, shortName } from "./layer-helpers";
import { moeLayerRef, moeLossRef, type MoERefParams, type MoERefRank } from "./reference/moe-layer";
import { renormalizeKeptBackwardRef, renormalizeKeptRef } from "./reference/kept-weights";
import { permuteRef } from "./reference/permute";
import { residualCoefRef, residualMixBackwardRef, residualMixRef } from "./reference/residual";
import { fillRandomRef, fnv1a } from "./reference/random";
import { routeRef } from "./reference/route";
import { bf16, f32, normal, relErr, tensor, values, TOL } from "./util";

function expectClose(got: Tensor | ArrayLike<number>, want: ArrayLike<number>, tol: number, what: string): void {
  const g = got instanceof Tensor ? values(got) : got;
  const e = relErr(g, want);
  if (!(e < tol)) throw new Error(`${what}: relative error ${e} >= ${tol}`);
}

/** Random coefficient bias (zero at initialisation), so that its path in the forward is exercised. */
async function randomizeCoefficientBias(layer: MoELayer, seed: number): Promise<void> {
  const p = layer.parameters().find((q) => q.name.endsWith("coefficient.bias"));
  if (!p) return;
  using t = Tensor.from(Float32Array.from(f32(normal(2, seed, 0.5))), [2]);
  await ops.copyInto(p.param, t);
}

/** The selection noise of rank r's first forward (rsample or second-expert sampling), as the reference takes it. */
function selectionNoiseOf(layer: MoELayer, T: number, r: number): Pick<MoERefRank, "selectionNoise" | "noiseFrom"> {
  const c = layer.config;
  if (!c.rsample && !c.secondExpertSampling) return {};
  const key = fnv1a(`router.${c.rsample ? "rsample" : "sample2"}/${r}`);
  const noise = fillRandomRef(T * c.numExperts, { seed: c.seed, key, distribution: "gumbel", a: 0, b: 1 });
  return { selectionNoise: f32(noise), noiseFrom: c.secondExpertSampling ? 1 : 0 };
}

/** Inputs per rank whose routing and drops float32 decides as float64 does. */
function inputs(
  cfg: Parameters<typeof moeLayerRef>[0],
  params: MoERefParams,
  Ts: number[],
  D: number,
  seed: number,
  layer?: MoELayer,
) {
  for (let s = seed; ; s += 1000) {
    const ranks: MoERefRank[] = Ts.map((T, r) => ({
      x: f32(normal(T * D, s + 10 * r)),
      dy: f32(normal(T * D, s + 10 * r + 1)),
      ...(layer ? selectionNoiseOf(layer, T, r) : {}),
    }));
    const ref = moeLayerRef(cfg, params, ranks);
    if (ref.margin > 1e-4) return { ranks, ref };
  }
}

/**
 * W layers from the same DeepSpeed keywords over an in-process world of W ranks (no group for 1): every
 * rank's output, losses, counts, dx and gradients against the reference.
 */
async function worldParity(kwargs: Record<string, unknown>, W: number, Ts: number[], seed: number) {
  const world = W > 1 ? fakeWorld(W) : [undefined];
  const layers = world.map((g) => MoELayer.fromDeepSpeed(kwargs as unknown as DeepSpeedMoEKwargs, g));
  try {
    await Promise.all(layers.map((l) => l.ready));
    for (const l of layers) {
      await randomizeBiases(l, seed + 100);
      await randomizeCoefficientBias(l, seed + 200);
    }
    const P = layers[0].epSize;
    const E = layers[0].config.numExperts;
    const params: MoERefParams = {};
    for (const p of layers[0].parameters()) {
      const name = shortName(layers[0], p.name);
      params[name] = p.expert
        ? Float64Array.from(
            layers.slice(0, P).flatMap((l) => Array.from(values(l.parameters().find((q) => q.name === p.name)!.param))),
          )
        : values(p.param);
    }
    const D = layers[0].config.dModel;
    const { ranks, ref } = inputs(refConfig(layers[0]), params, Ts, D, seed, layers[0]);
    const results = await Promise.all(layers.map((l, r) => l.forward(tensor(ranks[r].x, [Ts[r], D]))));
    const dxs = await Promise.all(layers.map((l, r) => l.backward(tensor(ranks[r].dy, [Ts[r], D]))));
    layers.forEach((l, r) => {
      expectClose(results[r].output, ref.outputs[r], TOL.float32, `output of rank ${r}`);
      expect(Math.abs(results[r].auxLoss - ref.aux[r])).toBeLessThanOrEqual(TOL.float32 * ref.aux[r] + 1e-12);
      expect(results[r].stats.tokensPerExpert).toEqual(ref.tokensPerExpert);
      expect(results[r].stats.dropped).toBe(ref.dropped.reduce((a, b) => a + b, 0));
      expectClose(dxs[r], ref.dx[r], TOL.float32, `dx of rank ${r}`);
      for (const p of l.parameters()) {
        const name = shortName(l, p.name);
        const full = ref.grads[name];
        const per = full.length / E;
        const want = p.expert ? full.subarray(l.firstExpert * per, (l.firstExpert + l.numLocalExperts) * per) : full;
        expectClose(p.grad, want, TOL.float32, `grad of ${name} on rank ${r}`);
        expect(values(p.grad).some((v) => v !== 0)).toBe(true);
      }
    });
    for (const r of results) r.output.dispose();
    for (const d of dxs) d.dispose();
    return { ref, stats: results.map((r) => r.stats) };
  } finally {
    for (const l of layers) l.dispose();
  }
}

describe("DeepSpeed's MoE(...) keywords", () => {
  test("the defaults are DeepSpeed's: top-1 unnormalised, capacity 1.0 (eval 1.0), min_capacity 4, tokens dropped", () => {
    const layer = MoELayer.fromDeepSpeed({ hidden_size: 16, num_experts: 4 });
    try {
      const c = layer.config;
      expect(c).toMatchObject({
        dModel: 16,
        dFF: 64,
        numExperts: 4,
        topK: 1,
        epSize: 1,
        renormalize: false,
        renormalizeKept: false,
        capacityFactor: 1,
        evalCapacityFactor: 1,
        minCapacity: 4,
        dropPolicy: "position",
        jitter: 0,
        residual: false,
        sharedExpertFF: 0,
        scoreFunction: "softmax",
      });
    } finally {
      layer.dispose();
    }
  });

  test("each keyword maps to its option", () => {
    expect(
      deepSpeedOptions({
        hidden_size: 8,
        num_experts: 8,
        ep_size: 2,
        k: 2,
        capacity_factor: 1.25,
        eval_capacity_factor: 2,
        min_capacity: 0,
        noisy_gate_policy: "Jitter",
        use_residual: true,
        ffn_hidden_size: 12,
        activation: "relu",
        bias: true,
        aux_loss_coef: 0.01,
      }),
    ).toEqual({
      dModel: 8,
      dFF: 12,
      numExperts: 8,
      topK: 2,
      epSize: 2,
      renormalize: false,
      renormalizeKept: true,
      secondExpertSampling: true,
      dropPolicy: "choice",
      capacityFactor: 1.25,
      evalCapacityFactor: 2,
      minCapacity: 0,
      jitter: 0.01,
      residual: true,
      sharedExpertFF: 12,
      activation: "relu",
      bias: true,
      auxLossCoef: 0.01,
    });
    // drop_tokens false: dropless, whatever the capacity keywords say.
    const dropless = deepSpeedOptions({ hidden_size: 8, num_experts: 4, drop_tokens: false, capacity_factor: 0.5 });
    expect(dropless.capacityFactor).toBeUndefined();
    expect(dropless.evalCapacityFactor).toBeUndefined();
    expect(deepSpeedOptions({ hidden_size: 8, intermediate_size: 5 }).dFF).toBe(5);
    expect(deepSpeedOptions({ hidden_size: 8, k: 3, num_experts: 4 }).dropPolicy).toBe("probs");
    expect(deepSpeedOptions({ hidden_size: 8, noisy_gate_policy: "None" }).jitter).toBeUndefined();
    expect(
      deepSpeedOptions({ hidden_size: 8, num_experts: 4, k: 2, top2_2nd_expert_sampling: false }).secondExpertSampling,
    ).toBeUndefined();
    expect(deepSpeedOptions({ hidden_size: 8, num_experts: 4, k: 3 }).secondExpertSampling).toBeUndefined();
    expect(() => new MoELayer({ dModel: 4, dFF: 4, numExperts: 2, topK: 1, secondExpertSampling: true })).toThrow(
      /topK >= 2/,
    );
    // RSample acts on top-1 only, as in DeepSpeed's top1gating.
    expect(deepSpeedOptions({ hidden_size: 8, noisy_gate_policy: "RSample" }).rsample).toBe(true);
    expect(deepSpeedOptions({ hidden_size: 8, num_experts: 4, k: 2, noisy_gate_policy: "RSample" }).rsample).toBe(
      undefined,
    );
  });

  test.each([
    [{ hidden_size: 8, expert: {} }, "ERR_MOE_VALUE", /unknown keyword "expert".*ffn_hidden_size/],
    [{ hidden_size: 8, top_k: 2 }, "ERR_MOE_VALUE", /unknown keyword "top_k"/],
    [{ num_experts: 2 }, "ERR_MOE_VALUE", /hidden_size/],
    [{ hidden_size: 8, noisy_gate_policy: "Gumbel" }, "ERR_MOE_VALUE", /noisy_gate_policy/],
    [
      { hidden_size: 8, enable_expert_tensor_parallelism: true },
      "ERR_MOE_UNSUPPORTED",
      /enable_expert_tensor_parallelism/,
    ],
    [{ hidden_size: 8, ffn_hidden_size: 4, intermediate_size: 4 }, "ERR_MOE_VALUE", /both/],
    [{ hidden_size: 8, min_capacity: -1 }, "ERR_MOE_VALUE", /min_capacity/],
    [{ hidden_size: 8, eval_capacity_factor: 0 }, "ERR_MOE_VALUE", /eval_capacity_factor/],
    [{ hidden_size: 8, drop_tokens: "no" }, "ERR_MOE_VALUE", /drop_tokens/],
    [{ hidden_size: 8, num_experts: 6, ep_size: 4 }, "ERR_MOE_VALUE", /epSize/],
  ])("%j is refused with %s", (kwargs, code, message) => {
    let err: unknown;
    try {
      MoELayer.fromDeepSpeed(kwargs as unknown as DeepSpeedMoEKwargs).dispose();
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code });
    expect(String((err as Error).message)).toMatch(message);
  });

  test("native options: residual needs the shared experts, evalCapacityFactor needs a capacity", () => {
    expect(() => new MoELayer({ dModel: 4, dFF: 4, numExperts: 2, residual: true })).toThrow(/sharedExpertFF/);
    expect(() => new MoELayer({ dModel: 4, dFF: 4, numExperts: 2, evalCapacityFactor: 2 })).toThrow(
      /capacityFactor with evalCapacityFactor/,
    );
    expect(() => new MoELayer({ dModel: 4, dFF: 4, numExperts: 2, minCapacity: 1.5 })).toThrow(/minCapacity/);
    expect(() => new MoELayer({ dModel: 4, dFF: 4, numExperts: 2, renormalizeKept: true, renormalize: true })).toThrow(
      /renormalize false with renormalizeKept/,
    );
    // The CPU-only semantics are refused on CUDA when the layer is made, naming the option.
    const cuda = { dModel: 8, dFF: 8, numExperts: 2, device: "cuda:0", dtype: "bfloat16" } as const;
    for (const [extra, name] of [
      [{ residual: true, sharedExpertFF: 8 }, "residual"],
      [{ renormalizeKept: true }, "renormalizeKept"],
      [{ rsample: true }, "rsample"],
      [{ secondExpertSampling: true, topK: 2 }, "secondExpertSampling"],
      [{ dropPolicy: "choice", capacityFactor: 1 }, "choice"],
    ] as const) {
      expect(() => new MoELayer({ ...cuda, ...extra })).toThrow(
        expect.objectContaining({ code: "ERR_MOE_UNSUPPORTED", message: expect.stringContaining(name) }),
      );
    }
    const kept = new MoELayer({ dModel: 4, dFF: 4, numExperts: 2, renormalizeKept: true });
    expect(kept.config.renormalize).toBe(false);
    kept.dispose();
  });
});

describe("capacity: min_capacity and eval_capacity_factor", () => {
  test("top-1, C = max(ceil(T/E · 0.25), min_capacity 3) = 3: output, drops and gradients match the reference", async () => {
    const { ref, stats } = await worldParity(
      {
        hidden_size: 12,
        num_experts: 8,
        k: 1,
        capacity_factor: 0.25,
        min_capacity: 3,
        ffn_hidden_size: 10,
        activation: "relu",
        bias: true,
        aux_loss_coef: 0.01,
        seed: 3,
        init_std: 0.3,
      },
      1,
      [24],
      1,
    );
    expect(stats[0].capacity).toBe(3);
    expect(ref.dropped[0]).toBeGreaterThan(0);
  });

  test("top-2, C = max(ceil(T/E · 2 · 0.5), 4) = 4, weights renormalised over the kept choices", async () => {
    const { ref, stats } = await worldParity(
      { hidden_size: 12, num_experts: 8, k: 2, capacity_factor: 0.5, ffn_hidden_size: 10, seed: 4, init_std: 0.3 },
      1,
      [20],
      2,
    );
    expect(stats[0].capacity).toBe(4);
    expect(ref.dropped[0]).toBeGreaterThan(0);
  });

  test("evaluation forwards use eval_capacity_factor, training forwards capacity_factor", async () => {
    const layer = MoELayer.fromDeepSpeed({
      hidden_size: 8,
      num_experts: 4,
      k: 1,
      capacity_factor: 0.5,
      eval_capacity_factor: 1.5,
      min_capacity: 0,
      ffn_hidden_size: 6,
      seed: 9,
      init_std: 0.4,
    });
    try {
      await layer.ready;
      const params = readParams(layer);
      const T = 32;
      for (const [training, factor] of [
        [false, 1.5],
        [true, 0.5],
      ] as const) {
        const cfg = { ...refConfig(layer), capacityFactor: factor };
        const { ranks, ref } = inputs(cfg, params, [T], 8, 40);
        using x = tensor(ranks[0].x, [T, 8]);
        const res = await layer.forward(x, { training });
        using out = res.output;
        expect(res.stats.capacity).toBe(Math.ceil((T / 4) * factor));
        expect(res.stats.dropped).toBe(ref.dropped[0]);
        expectClose(out, ref.outputs[0], TOL.float32, `output (training: ${training})`);
        if (training) (await layer.backward(tensor(ranks[0].dy, [T, 8]))).dispose();
      }
    } finally {
      layer.dispose();
    }
  });
});

describe('the "choice" drop policy (top2gating\'s order: every first choice before any second)', () => {
  test.each([2, 3])("permute with k = %i against the reference", async (k) => {
    const T = 40;
    const D = 3;
    const E = 4;
    const idx: number[] = [];
    for (let t = 0; t < T; t++) {
      const perm = [0, 1, 2, 3].sort(
        (a, b) => ((a * 7 + t * 3 + (t % 5) * b) % 11) - ((b * 7 + t * 3 + (t % 5) * a) % 11),
      );
      idx.push(...perm.slice(0, k));
    }
    const w = f32(normal(T * k, 4));
    const x = f32(normal(T * D, 5));
    using tx = tensor(x, [T, D]);
    using ti = Tensor.from(Int32Array.from(idx), [T, k], { dtype: "int32" });
    using tw = tensor(w, [T, k]);
    const opts = { numExperts: E, capacityFactor: 0.5, minCapacity: 2, dropPolicy: "choice" as const };
    const p = await ops.permute(tx, ti, tw, opts);
    const ref = permuteRef(x, idx, w, T, D, k, opts);
    expect(p.capacity).toBe(ref.capacity);
    expect(p.dropped).toBe(ref.dropped);
    expect(p.dropped).toBeGreaterThan(0);
    expect(Array.from(p.pairToRow.toInt32())).toEqual(ref.pairToRow);
    expectClose(p.rows, ref.rows, TOL.float32, "rows");
    // Not the position policy: some expert keeps a later token's first choice over an earlier second one.
    const pos = permuteRef(x, idx, w, T, D, k, { ...opts, dropPolicy: "position" });
    expect(pos.pairToRow).not.toEqual(ref.pairToRow);
    for (const t of [p.rows, p.rowsPerExpert, p.pairToRow, p.rowToPair]) t.dispose();
  });
});

describe("residual MoE (use_residual)", () => {
  const kwargs = {
    hidden_size: 12,
    num_experts: 8,
    ffn_hidden_size: 10,
    use_residual: true,
    activation: "gelu",
    aux_loss_coef: 0.02,
    seed: 5,
    init_std: 0.3,
  };

  test.each([
    ["top-1 with capacity", { k: 1 }],
    ["top-2 dropless, bias terms, relu", { k: 2, drop_tokens: false, bias: true, activation: "relu" }],
  ])("one process, %s: output, dx and every gradient (coefficient included) match the reference", async (_n, extra) => {
    await worldParity({ ...kwargs, ...extra }, 1, [40], 7);
  });

  test("an in-process world of 2 ranks, ep_size 2: every rank matches the reference", async () => {
    await worldParity({ ...kwargs, k: 2, ep_size: 2, bias: true }, 2, [20, 28], 11);
  });

  test("the reference's coefficient gradients equal finite differences of its loss", () => {
    const cfg = {
      dModel: 5,
      dFF: 4,
      numExperts: 4,
      topK: 2,
      scoreFunction: "softmax" as const,
      renormalize: true,
      dropPolicy: "position" as const,
      padToCapacity: false,
      auxLossCoef: 0,
      zLossCoef: 0,
      activation: "gelu" as const,
      bias: false,
      sharedExpertFF: 4,
      residual: true,
    };
    const D = 5;
    const sizes: Record<string, number> = {
      "router.weight": D * 4,
      "experts.w1": 4 * D * 4,
      "experts.w2": 4 * 4 * D,
      "shared_experts.w1": D * 4,
      "shared_experts.w2": 4 * D,
      "coefficient.weight": D * 2,
      "coefficient.bias": 2,
    };
    const params: MoERefParams = {};
    let s = 50;
    for (const [n, len] of Object.entries(sizes)) params[n] = normal(len, s++, 0.5);
    const T = 6;
    const ranks = [{ x: normal(T * D, 60), dy: normal(T * D, 61) }];
    const ref = moeLayerRef(cfg, params, ranks);
    const h = 1e-6;
    for (const name of ["coefficient.weight", "coefficient.bias"]) {
      const fd = params[name].map((_, i) => {
        const p = params[name];
        const keep = p[i];
        p[i] = keep + h;
        const up = moeLossRef(cfg, params, ranks);
        p[i] = keep - h;
        const down = moeLossRef(cfg, params, ranks);
        p[i] = keep;
        return (up - down) / (2 * h);
      });
      expect(relErr(ref.grads[name], fd)).toBeLessThan(1e-6);
    }
    const fdx = ranks[0].x.map((_, i) => {
      const keep = ranks[0].x[i];
      ranks[0].x[i] = keep + h;
      const up = moeLossRef(cfg, params, ranks);
      ranks[0].x[i] = keep - h;
      const down = moeLossRef(cfg, params, ranks);
      ranks[0].x[i] = keep;
      return (up - down) / (2 * h);
    });
    expect(relErr(ref.dx[0], fdx)).toBeLessThan(1e-6);
  });
});

describe("residualMix op", () => {
  const T = 9;
  const D = 7;
  const moe = f32(normal(T * D, 1));
  const mlp = f32(normal(T * D, 2));
  const logits = f32(normal(T * 2, 3, 2));
  const bias = f32(normal(2, 4));
  const dy = f32(normal(T * D, 5));
  // The reference takes x · Wc + bc: with x = the logits and Wc = I it sees the logits themselves.
  const c = residualCoefRef(logits, [1, 0, 0, 1], bias, T, 2);

  test.each(["float32", "bfloat16"] as const)("%s: forward and backward against the reference", async (dtype) => {
    const round = dtype === "bfloat16" ? bf16 : (a: Float64Array) => a;
    const [m, p, g] = [round(moe), round(mlp), round(dy)];
    const tol = dtype === "bfloat16" ? TOL.bfloat16 : TOL.float32;
    using tm = tensor(m, [T, D], dtype);
    using tp = tensor(p, [T, D], dtype);
    using tl = tensor(logits, [T, 2]);
    using tb = tensor(bias, [2]);
    using y = await ops.residualMix(tm, tp, tl, tb);
    expect(y.dtype).toBe(dtype);
    expectClose(y, residualMixRef(m, p, c, T, D), tol, "y");
    using tg = tensor(g, [T, D], dtype);
    const grads = await ops.residualMixBackward(tg, tm, tp, tl, tb);
    const ref = residualMixBackwardRef(g, m, p, c, T, D);
    expectClose(grads.dLogits, ref.dl, tol, "dLogits");
    expectClose(grads.dMoe, ref.dMoe, tol, "dMoe");
    expectClose(grads.dMlp, ref.dMlp, tol, "dMlp");
    expectClose(grads.dBias, ref.dbc, tol, "dBias");
    for (const t of Object.values(grads)) t.dispose();
  });

  test("bad arguments are typed errors naming what was expected", async () => {
    using tm = tensor(moe, [T, D]);
    using tb16 = tensor(mlp, [T, D], "bfloat16");
    using tl = tensor(logits, [T, 2]);
    using tb = tensor(bias, [2]);
    using wrong = tensor(logits, [2, T]);
    await expect(ops.residualMix(tm, tb16, tl, tb)).rejects.toMatchObject({ code: "ERR_MOE_DTYPE" });
    await expect(ops.residualMix(tm, tm, wrong, tb)).rejects.toMatchObject({
      code: "ERR_MOE_SHAPE",
      message: expect.stringMatching(/\[tokens, 2\]/),
    });
    await expect(ops.residualMix(tm, tm, tl, tl)).rejects.toMatchObject({ code: "ERR_MOE_SHAPE" });
  });
});

describe("top-k weights renormalised over the kept choices", () => {
  test("renormalizeKept and its backward against the reference: kept, partly dropped, all dropped, clamped", async () => {
    const T = 5;
    const k = 3;
    const w = f32([0.5, 0.3, 0.1, 0.2, 0.2, 0.05, 0.6, 0.1, 0.1, 0.3, 0.3, 0.3, 1e-8, 2e-8, 0.5]);
    const p = [0, 1, 2, -1, 3, 4, -1, -1, -1, 5, -1, 6, 7, 8, -1];
    const g = f32(normal(T * k, 3));
    using tw = tensor(w, [T, k]);
    using tp = Tensor.from(Int32Array.from(p), [T, k], { dtype: "int32" });
    using tg = tensor(g, [T, k]);
    using out = await ops.renormalizeKept(tw, tp);
    expectClose(out, renormalizeKeptRef(w, p, T, k), TOL.float32, "renormalizeKept");
    const v = values(out);
    expect(v[1 * k + 0]).toBe(0);
    expect(v.subarray(2 * k, 3 * k)).toEqual(new Float64Array(3));
    expect(v[0] + v[1] + v[2]).toBeCloseTo(1, 6);
    using d = await ops.renormalizeKeptBackward(tw, tp, tg);
    expectClose(d, renormalizeKeptBackwardRef(w, p, g, T, k), TOL.float32, "renormalizeKeptBackward");
    // The reference's Jacobian against finite differences, where S is above the clamp.
    const h = 1e-7;
    const dRef = renormalizeKeptBackwardRef(w, p, g, T, k);
    const loss = (ww: Float64Array) => renormalizeKeptRef(ww, p, T, k).reduce((a, x, i) => a + x * g[i], 0);
    for (let i = 0; i < 3 * k; i++) {
      const up = Float64Array.from(w);
      const down = Float64Array.from(w);
      up[i] += h;
      down[i] -= h;
      expect(Math.abs((loss(up) - loss(down)) / (2 * h) - dRef[i])).toBeLessThan(1e-6);
    }
  });

  test("bad arguments are typed errors", async () => {
    using tw = tensor([0.5, 0.5], [1, 2]);
    using tp = Tensor.from(Int32Array.of(0, 1), [1, 2], { dtype: "int32" });
    using wrong = Tensor.from(Int32Array.of(0, 1, 2), [1, 3], { dtype: "int32" });
    await expect(ops.renormalizeKept(tw, wrong)).rejects.toMatchObject({ code: "ERR_MOE_SHAPE" });
    await expect(ops.renormalizeKept(tp, tp)).rejects.toMatchObject({ code: "ERR_MOE_DTYPE" });
    await expect(ops.renormalizeKeptBackward(tw, tp, tp)).rejects.toMatchObject({ code: "ERR_MOE_DTYPE" });
  });

  test("the reference layer's router gradient with drops and kept renormalisation equals finite differences", () => {
    const cfg = {
      dModel: 5,
      dFF: 4,
      numExperts: 4,
      topK: 2,
      scoreFunction: "softmax" as const,
      renormalize: false,
      renormalizeKept: true,
      capacityFactor: 0.5,
      dropPolicy: "position" as const,
      padToCapacity: false,
      auxLossCoef: 0.01,
      zLossCoef: 0,
      activation: "gelu" as const,
      bias: false,
      sharedExpertFF: 0,
    };
    const params: MoERefParams = {
      "router.weight": normal(20, 70, 0.5),
      "experts.w1": normal(80, 71, 0.5),
      "experts.w2": normal(80, 72, 0.5),
    };
    const ranks = [{ x: normal(40, 73), dy: normal(40, 74) }];
    const ref = moeLayerRef(cfg, params, ranks);
    expect(ref.dropped[0]).toBeGreaterThan(0);
    const h = 1e-6;
    const p = params["router.weight"];
    const fd = p.map((_, i) => {
      const keep = p[i];
      p[i] = keep + h;
      const up = moeLossRef(cfg, params, ranks);
      p[i] = keep - h;
      const down = moeLossRef(cfg, params, ranks);
      p[i] = keep;
      return (up - down) / (2 * h);
    });
    expect(relErr(ref.grads["router.weight"], fd)).toBeLessThan(1e-6);
  });
});

describe("RSample: Gumbel noise on the logits for the top-1 choice, training only", () => {
  test("fillRandom's gumbel distribution is the seeded stream's −ln(−ln u)", async () => {
    using t = Tensor.zeros([3, 50]);
    await ops.fillRandom(t, { seed: 5, key: 77, distribution: "gumbel", firstSlice: 2, sliceSize: 50 });
    const want = fillRandomRef(150, {
      seed: 5,
      key: 77,
      distribution: "gumbel",
      a: 0,
      b: 1,
      sliceSize: 50,
      firstSlice: 2,
    });
    expectClose(t, want, TOL.float32, "gumbel");
    const mean = want.reduce((a, b) => a + b, 0) / want.length;
    expect(Math.abs(mean - 0.5772)).toBeLessThan(0.3); // the Euler–Mascheroni constant
  });

  test("route's selectionNoise changes the choice, never the weights or losses", async () => {
    const T = 30;
    const E = 6;
    const logits = f32(normal(T * E, 8));
    const noise = f32(normal(T * E, 9, 2));
    using tl = tensor(logits, [T, E]);
    using tn = tensor(noise, [T, E]);
    const r = await ops.route(tl, { topK: 1, selectionNoise: tn });
    const ref = routeRef(logits, T, E, { topK: 1, selectionNoise: noise });
    expect(Array.from(r.indices.toInt32())).toEqual(Array.from(ref.indices));
    expectClose(r.weights, ref.weights, TOL.float32, "weights");
    expect(Math.abs(r.auxLoss.item() - ref.aux)).toBeLessThan(1e-5 * ref.aux);
    const clean = routeRef(logits, T, E, { topK: 1 });
    expect(Array.from(ref.indices)).not.toEqual(Array.from(clean.indices));
    for (const t of Object.values(r)) t.dispose();
    using bad = tensor(noise.subarray(0, E), [1, E]);
    await expect(ops.route(tl, { topK: 1, selectionNoise: bad })).rejects.toMatchObject({ code: "ERR_MOE_SHAPE" });
  });

  test("route's noiseFrom 1: the first choice by the scores, the second by the noisy logits among the rest", async () => {
    const T = 30;
    const E = 6;
    const logits = f32(normal(T * E, 18));
    const noise = f32(normal(T * E, 19, 2));
    using tl = tensor(logits, [T, E]);
    using tn = tensor(noise, [T, E]);
    const r = await ops.route(tl, { topK: 2, selectionNoise: tn, noiseFrom: 1 });
    const ref = routeRef(logits, T, E, { topK: 2, selectionNoise: noise, noiseFrom: 1 });
    const clean = routeRef(logits, T, E, { topK: 2 });
    const idx = Array.from(r.indices.toInt32());
    expect(idx).toEqual(Array.from(ref.indices));
    expect(idx.filter((_, i) => i % 2 === 0)).toEqual(Array.from(clean.indices).filter((_, i) => i % 2 === 0));
    expect(idx).not.toEqual(Array.from(clean.indices));
    expectClose(r.weights, ref.weights, TOL.float32, "weights");
    for (const t of Object.values(r)) t.dispose();
    await expect(ops.route(tl, { topK: 2, selectionNoise: tn, noiseFrom: 3 })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
    });
  });

  test("top-2 second-expert sampling draws in evaluation too, as DeepSpeed's top2gating does", async () => {
    const layer = MoELayer.fromDeepSpeed({ hidden_size: 8, num_experts: 4, k: 2, ffn_hidden_size: 6, seed: 3 });
    try {
      await layer.ready;
      const T = 40;
      using x = tensor(f32(normal(T * 8, 5)), [T, 8]);
      const a = await layer.forward(x, { training: false });
      const b = await layer.forward(x, { training: false });
      expect(a.stats.localTokensPerExpert).not.toEqual(b.stats.localTokensPerExpert);
      a.output.dispose();
      b.output.dispose();
    } finally {
      layer.dispose();
    }
  });

  test("a top-1 layer with noisy_gate_policy 'RSample' matches the reference with the stream's noise; eval has none", async () => {
    const layer = MoELayer.fromDeepSpeed({
      hidden_size: 8,
      num_experts: 4,
      k: 1,
      noisy_gate_policy: "RSample",
      ffn_hidden_size: 6,
      aux_loss_coef: 0.01,
      seed: 13,
      init_std: 0.5,
    });
    try {
      await layer.ready;
      expect(layer.config.rsample).toBe(true);
      const params = readParams(layer);
      const cfg = refConfig(layer);
      const T = 24;
      const key = fnv1a("router.rsample/0");
      for (const slice of [0, 1]) {
        const noise = f32(
          fillRandomRef(T * 4, { seed: 13, key, distribution: "gumbel", a: 0, b: 1, firstSlice: slice }),
        );
        let ranks: MoERefRank[] = [];
        let ref: ReturnType<typeof moeLayerRef> | undefined;
        for (let s = 30 + slice; ; s += 1000) {
          ranks = [{ x: f32(normal(T * 8, s)), dy: f32(normal(T * 8, s + 1)), selectionNoise: noise }];
          ref = moeLayerRef(cfg, params, ranks);
          if (ref.margin > 1e-4) break;
        }
        const clean = moeLayerRef(cfg, params, [{ x: ranks[0].x, dy: ranks[0].dy }]);
        expect(ref.localTokensPerExpert[0]).not.toEqual(clean.localTokensPerExpert[0]);
        using x = tensor(ranks[0].x, [T, 8]);
        const res = await layer.forward(x);
        using out = res.output;
        expectClose(out, ref.outputs[0], TOL.float32, `output, draw ${slice}`);
        expect(res.stats.localTokensPerExpert).toEqual(ref.localTokensPerExpert[0]);
        using dy = tensor(ranks[0].dy, [T, 8]);
        using dx = await layer.backward(dy);
        expectClose(dx, ref.dx[0], TOL.float32, `dx, draw ${slice}`);
        for (const p of layer.parameters()) expectClose(p.grad, ref.grads[p.name], TOL.float32, `grad of ${p.name}`);
        await layer.zeroGrad();
      }
      // Evaluation: no noise.
      const { ranks, ref } = inputs(cfg, params, [T], 8, 90);
      using x = tensor(ranks[0].x, [T, 8]);
      const res = await layer.forward(x, { training: false });
      using out = res.output;
      expectClose(out, ref.outputs[0], TOL.float32, "eval output");
    } finally {
      layer.dispose();
    }
  });
});
