import { execFileSync } from "child_process";
import * as path from "path";
import { Tensor, ops } from "../lib";
import type { RouteOptions, RouteResult } from "../lib/ops";
import { routeRef, routeBackwardRef, routeLossGradFD, scoresRow, type RouteRefOptions } from "./reference/route";
import { f32, intTensor, normal, relErr, sameBits, tensor, values, TOL, leakCheck } from "./util";

type Opts = Omit<RouteRefOptions, "expertBias" | "selectionNoise"> & { bias?: Float64Array };

function nativeOptions(o: Opts): RouteOptions {
  const { bias, ...rest } = o;
  return { ...rest, expertBias: bias ? tensor(bias, [bias.length]) : undefined };
}

function refOptions(o: Opts): RouteRefOptions {
  const { bias, ...rest } = o;
  return { ...rest, expertBias: bias };
}

/** max_i |a_i − b_i| / |b_i| over the nonzero b_i: each element's own relative error. */
function maxElemRelErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < b.length; i++) if (b[i] !== 0) worst = Math.max(worst, Math.abs(a[i] - b[i]) / Math.abs(b[i]));
  return worst;
}

/** An int32 tensor's values. */
function ints(t: Tensor): Int32Array {
  return Int32Array.from(values(t));
}

function disposeAll(r: RouteResult): void {
  for (const t of Object.values(r)) t.dispose();
}

/** Runs route on float32 logits and checks every output against the float64 reference. */
async function checkForward(x: Float64Array, t: number, e: number, o: Opts) {
  const ref = routeRef(x, t, e, refOptions(o));
  // Exact index equality needs the float64 choice to be decided by a gap that float32 resolves.
  expect(ref.margin).toBeGreaterThan(1e-5);
  const nopts = nativeOptions(o);
  const r = await ops.route(tensor(x, [t, e]), nopts);
  const k = o.topK;
  expect(r.indices.shape).toEqual([t, k]);
  expect(r.indices.dtype).toBe("int32");
  expect(r.weights.shape).toEqual([t, k]);
  expect(r.weights.dtype).toBe("float32");
  expect(r.scores.shape).toEqual([t, e]);
  expect(r.tokensPerExpert.shape).toEqual([e]);
  expect(r.tokensPerExpert.dtype).toBe("int32");
  expect(r.auxLoss.shape).toEqual([]);
  expect(r.zLoss.shape).toEqual([]);
  expect(Array.from(ints(r.indices))).toEqual(Array.from(ref.indices));
  expect(Array.from(ints(r.tokensPerExpert))).toEqual(Array.from(ref.tokensPerExpert));
  expect(relErr(values(r.weights), ref.weights)).toBeLessThan(TOL.float32);
  expect(relErr(values(r.scores), ref.scores)).toBeLessThan(TOL.float32);
  expect(relErr([r.auxLoss.item()], [ref.aux])).toBeLessThan(TOL.float32);
  expect(relErr([r.zLoss.item()], [ref.z])).toBeLessThan(TOL.float32);
  nopts.expertBias?.dispose();
  return { r, ref };
}

/**
 * Logits on a grid of 1/64: two logits are equal (an exact tie, broken by index) or at least
 * 1/64 apart, so the float64 and float32 orders of the scores agree.
 */
function gridLogits(n: number, seed: number, std = 1): Float64Array {
  return Float64Array.from(normal(n, seed, std), (v) => Math.round(v * 64) / 64);
}

const shapes: Array<[number, number, number]> = [
  [1, 4, 1],
  [7, 8, 2],
  [64, 16, 4],
  [300, 64, 8],
  [129, 32, 32],
];

describe("route forward matches the float64 reference", () => {
  for (const scoreFunction of ["softmax", "sigmoid"] as const)
    for (const renormalize of [false, true])
      test.each(shapes)(`${scoreFunction}, renormalize=${renormalize}: T=%i E=%i k=%i`, async (t, e, k) => {
        const x = gridLogits(t * e, 10 * t + e + k, 2);
        const { r } = await checkForward(x, t, e, { topK: k, scoreFunction, renormalize });
        disposeAll(r);
      });

  test.each(["softmax", "sigmoid"] as const)(
    "expert bias changes the choice but not the weights (%s)",
    async (scoreFunction) => {
      const [t, e, k] = [200, 32, 4];
      const x = gridLogits(t * e, 21);
      const bias = f32(normal(e, 22, 0.3));
      for (const renormalize of [false, true]) {
        const { r, ref } = await checkForward(x, t, e, { topK: k, scoreFunction, renormalize, bias });
        const plain = routeRef(x, t, e, { topK: k, scoreFunction, renormalize });
        // The bias must matter on this data, or the test proves nothing.
        expect(Array.from(ref.indices)).not.toEqual(Array.from(plain.indices));
        // weights are the unbiased scores of the chosen experts
        const s = values(r.scores);
        const w = values(r.weights);
        const idx = ints(r.indices);
        if (!renormalize) for (let i = 0; i < t * k; i++) expect(w[i]).toBe(s[Math.floor(i / k) * e + idx[i]]);
        disposeAll(r);
      }
    },
  );

  test.each([
    ["softmax", 16, 4, 2, 4],
    ["sigmoid", 16, 4, 2, 4],
    ["sigmoid", 64, 8, 4, 8], // DeepSeek-V3's shape: group score = sum of the top 2
    ["softmax", 24, 6, 3, 7],
  ] as const)("group-limited choice (%s, E=%i G=%i g=%i k=%i)", async (scoreFunction, e, G, g, k) => {
    const t = 150;
    const x = gridLogits(t * e, e + G + g + k, 1.5);
    const bias = scoreFunction === "sigmoid" ? f32(normal(e, 5, 0.05)) : undefined;
    const o: Opts = {
      topK: k,
      scoreFunction,
      renormalize: scoreFunction === "sigmoid",
      bias,
      numGroups: G,
      topkGroups: g,
    };
    const { r } = await checkForward(x, t, e, o);
    const idx = ints(r.indices);
    for (let ti = 0; ti < t; ti++) {
      const groups = new Set(Array.from(idx.subarray(ti * k, (ti + 1) * k), (i) => Math.floor(i / (e / G))));
      expect(groups.size).toBeLessThanOrEqual(g);
    }
    // The group limit must bind on this data, or the test proves nothing.
    const free = routeRef(x, t, e, refOptions({ ...o, numGroups: undefined, topkGroups: undefined }));
    expect(Array.from(idx)).not.toEqual(Array.from(free.indices));
    disposeAll(r);
  });

  test("k = E chooses every expert, best first; softmax renormalised weights sum to 1", async () => {
    const [t, e] = [40, 8];
    const x = gridLogits(t * e, 31);
    const { r } = await checkForward(x, t, e, { topK: e, renormalize: true });
    expect(Array.from(ints(r.tokensPerExpert))).toEqual(new Array(e).fill(t));
    const w = values(r.weights);
    for (let ti = 0; ti < t; ti++)
      expect(Math.abs(w.subarray(ti * e, (ti + 1) * e).reduce((a, b) => a + b, 0) - 1)).toBeLessThan(1e-6);
    disposeAll(r);
  });

  test("softmax with renormalize equals softmax over the k chosen logits (Mixtral)", async () => {
    const [t, e, k] = [50, 8, 2];
    const x = gridLogits(t * e, 32);
    const r = await ops.route(tensor(x, [t, e]), { topK: k, renormalize: true });
    const idx = ints(r.indices);
    const expected = new Float64Array(t * k);
    for (let ti = 0; ti < t; ti++) {
      const chosen = Array.from(idx.subarray(ti * k, (ti + 1) * k), (i) => x[ti * e + i]);
      expected.set(scoresRow(chosen, "softmax"), ti * k);
    }
    expect(relErr(values(r.weights), expected)).toBeLessThan(TOL.float32);
    disposeAll(r);
  });

  test("k = 1 and a single token", async () => {
    const x = gridLogits(64 * 16, 33);
    disposeAll((await checkForward(x, 64, 16, { topK: 1 })).r);
    disposeAll((await checkForward(x.subarray(0, 16), 1, 16, { topK: 3, scoreFunction: "sigmoid" })).r);
    disposeAll((await checkForward(x.subarray(0, 16), 1, 16, { topK: 4, numGroups: 4, topkGroups: 2 })).r);
  });

  test("a huge bias sends every token to one expert, and the weights stay the unbiased scores", async () => {
    const [t, e, k] = [100, 8, 1];
    const x = gridLogits(t * e, 34);
    const bias = new Float64Array(e);
    bias[5] = 1e4;
    const { r, ref } = await checkForward(x, t, e, { topK: k, bias });
    const counts = new Array(e).fill(0);
    counts[5] = t;
    expect(Array.from(ints(r.tokensPerExpert))).toEqual(counts);
    // all load on expert 5: aux = E · 1 · P_5
    const P5 = Array.from({ length: t }, (_, ti) => ref.scores[ti * e + 5]).reduce((a, b) => a + b, 0) / t;
    expect(relErr([r.auxLoss.item()], [e * P5])).toBeLessThan(TOL.float32);
    const w = values(r.weights);
    for (let ti = 0; ti < t; ti++) expect(w[ti]).toBeCloseTo(ref.scores[ti * e + 5], 6);
    disposeAll(r);
  });

  test("huge logits on one expert send every token there", async () => {
    const [t, e, k] = [60, 16, 2];
    const x = gridLogits(t * e, 35);
    for (let ti = 0; ti < t; ti++) x[ti * e + 11] = 80;
    const { r } = await checkForward(x, t, e, { topK: k, scoreFunction: "softmax", renormalize: true });
    const idx = ints(r.indices);
    for (let ti = 0; ti < t; ti++) expect(idx[ti * k]).toBe(11);
    expect(ints(r.tokensPerExpert)[11]).toBe(t);
    disposeAll(r);
  });

  test("tied logits choose experts 0..k-1 (and groups 0..g-1)", async () => {
    const [t, e, k] = [10, 16, 4];
    for (const scoreFunction of ["softmax", "sigmoid"] as const) {
      const x = new Float64Array(t * e).fill(0.25);
      const { r } = await checkForward(x, t, e, { topK: k, scoreFunction });
      const { r: rg } = await checkForward(x, t, e, { topK: k, scoreFunction, numGroups: 4, topkGroups: 2 });
      const { r: rg2 } = await checkForward(x, t, e, { topK: 6, scoreFunction, numGroups: 8, topkGroups: 4 });
      for (let ti = 0; ti < t; ti++) {
        expect(Array.from(ints(r.indices).subarray(ti * k, (ti + 1) * k))).toEqual([0, 1, 2, 3]);
        expect(Array.from(ints(rg.indices).subarray(ti * k, (ti + 1) * k))).toEqual([0, 1, 2, 3]);
        expect(Array.from(ints(rg2.indices).subarray(ti * 6, (ti + 1) * 6))).toEqual([0, 1, 2, 3, 4, 5]);
      }
      disposeAll(r);
      disposeAll(rg);
      disposeAll(rg2);
    }
  });

  test("an expert that no token chooses has zero count, and aux and its gradient still match", async () => {
    const [t, e, k] = [80, 8, 2];
    const x = gridLogits(t * e, 36);
    for (let ti = 0; ti < t; ti++) x[ti * e + 2] = -30;
    const { r } = await checkForward(x, t, e, { topK: k });
    expect(ints(r.tokensPerExpert)[2]).toBe(0);
    const dl = await ops.routeBackward(tensor(x, [t, e]), r.indices, r.tokensPerExpert, null, { auxLossGrad: 0.7 });
    const ref = routeBackwardRef(x, t, e, ints(r.indices), ints(r.tokensPerExpert), null, { auxLossGrad: 0.7 });
    expect(relErr(values(dl), ref)).toBeLessThan(TOL.float32);
    dl.dispose();
    disposeAll(r);
  });

  test.each(["softmax", "sigmoid"] as const)(
    "scores and gradients keep their relative precision far from 0 (%s)",
    async (scoreFunction) => {
      // Logits up to ±40 (softmax) or ±80 (sigmoid): tiny scores and tiny 1 − s stay normal floats, and
      // each element must be right relative to itself, not only to the largest one.
      const [t, e, k] = [64, 16, 4];
      const span = scoreFunction === "softmax" ? 40 : 80;
      const x = f32(Array.from(normal(t * e, 37), (v) => Math.max(-span, Math.min(span, (v * span) / 2))));
      const L = tensor(x, [t, e]);
      const r = await ops.route(L, { topK: k, scoreFunction });
      const ref = routeRef(x, t, e, { topK: k, scoreFunction });
      expect(maxElemRelErr(values(r.scores), ref.scores)).toBeLessThan(TOL.float32);
      const dw = f32(normal(t * k, 38));
      const dl = await ops.routeBackward(L, r.indices, r.tokensPerExpert, tensor(dw, [t, k]), { scoreFunction });
      const dref = routeBackwardRef(x, t, e, ints(r.indices), ints(r.tokensPerExpert), dw, { scoreFunction });
      // softmax gradients are differences of products; compare the terms that are not cancellations
      if (scoreFunction === "sigmoid") expect(maxElemRelErr(values(dl), dref)).toBeLessThan(TOL.float32);
      else expect(relErr(values(dl), dref)).toBeLessThan(TOL.float32);
      dl.dispose();
      disposeAll(r);
    },
  );

  test("zero tokens give empty outputs, zero counts and zero losses", async () => {
    const e = 8;
    const L = Tensor.from(new Float32Array(0), [0, e]);
    const r = await ops.route(L, { topK: 2, scoreFunction: "sigmoid" });
    expect(r.indices.shape).toEqual([0, 2]);
    expect(r.weights.shape).toEqual([0, 2]);
    expect(r.scores.shape).toEqual([0, e]);
    expect(Array.from(ints(r.tokensPerExpert))).toEqual(new Array(e).fill(0));
    expect(r.auxLoss.item()).toBe(0);
    expect(r.zLoss.item()).toBe(0);
    const dl = await ops.routeBackward(L, r.indices, r.tokensPerExpert, r.weights, { auxLossGrad: 1, zLossGrad: 1 });
    expect(dl.shape).toEqual([0, e]);
    dl.dispose();
    disposeAll(r);
  });
});

describe("routeBackward", () => {
  const cases: Array<[string, number, number, number, Opts, boolean, number, number]> = [
    // name, T, E, k, options, with dWeights, auxLossGrad, zLossGrad
    ["softmax, weights only", 64, 16, 4, { topK: 4 }, true, 0, 0],
    ["softmax renormalised, all terms", 300, 64, 8, { topK: 8, renormalize: true }, true, 0.01, 0.001],
    ["sigmoid, all terms", 100, 32, 4, { topK: 4, scoreFunction: "sigmoid" }, true, 0.5, 0.2],
    [
      "sigmoid renormalised with bias and groups",
      120,
      64,
      8,
      {
        topK: 8,
        scoreFunction: "sigmoid",
        renormalize: true,
        numGroups: 8,
        topkGroups: 4,
        bias: f32(normal(64, 41, 0.05)),
      },
      true,
      0.3,
      0.1,
    ],
    ["losses only (no dWeights), softmax", 50, 8, 2, { topK: 2 }, false, 1, 1],
    ["losses only (no dWeights), sigmoid", 50, 8, 2, { topK: 2, scoreFunction: "sigmoid" }, false, 1, 1],
    ["k = E", 20, 8, 8, { topK: 8, renormalize: true }, true, 0.5, 0.5],
  ];

  test.each(cases)("matches the float64 reference: %s (T=%i E=%i k=%i)", async (_name, t, e, k, o, withDw, a, c) => {
    const x = f32(normal(t * e, t + e + k, 1.5));
    const dw = withDw ? f32(normal(t * k, t * k)) : null;
    const nopts = nativeOptions(o);
    const L = tensor(x, [t, e]);
    const r = await ops.route(L, nopts);
    const bo = { scoreFunction: o.scoreFunction, renormalize: o.renormalize, auxLossGrad: a, zLossGrad: c };
    const dl = await ops.routeBackward(L, r.indices, r.tokensPerExpert, dw ? tensor(dw, [t, k]) : null, bo);
    expect(dl.shape).toEqual([t, e]);
    expect(dl.dtype).toBe("float32");
    const ref = routeBackwardRef(x, t, e, ints(r.indices), ints(r.tokensPerExpert), dw, bo);
    expect(relErr(values(dl), ref)).toBeLessThan(TOL.float32);
    dl.dispose();
    disposeAll(r);
    nopts.expertBias?.dispose();
  });

  const small: Array<[string, number, number, Opts, number, number]> = [
    ["softmax", 5, 8, { topK: 3 }, 0.6, 0.4],
    ["softmax renormalised", 5, 8, { topK: 3, renormalize: true }, 0.6, 0.4],
    ["sigmoid", 4, 8, { topK: 2, scoreFunction: "sigmoid" }, 0.6, 0.4],
    [
      "sigmoid renormalised, bias",
      4,
      8,
      { topK: 3, scoreFunction: "sigmoid", renormalize: true, bias: f32(normal(8, 51, 0.1)) },
      0.6,
      0.4,
    ],
    ["groups (E=16, G=4, g=2, k=4)", 4, 16, { topK: 4, numGroups: 4, topkGroups: 2, renormalize: true }, 0.6, 0.4],
    ["k = 1", 6, 4, { topK: 1 }, 2, 1],
  ];

  test.each(small)("matches finite differences of the reference loss: %s", async (_name, t, e, o, a, c) => {
    const k = o.topK;
    const x = f32(normal(t * e, 60 + t + e + k, 1.5));
    const dw = f32(normal(t * k, 61 + k));
    const ro = refOptions(o);
    const fd = routeLossGradFD(x, t, e, ro, dw, a, c);
    const fwd = routeRef(x, t, e, ro);
    expect(fwd.margin).toBeGreaterThan(1e-4); // no choice flips within the finite-difference step
    const bo = { scoreFunction: o.scoreFunction, renormalize: o.renormalize, auxLossGrad: a, zLossGrad: c };
    // The reference backward against finite differences, tightly (both float64).
    const ref = routeBackwardRef(x, t, e, fwd.indices, fwd.tokensPerExpert, dw, bo);
    expect(relErr(ref, fd)).toBeLessThan(1e-7);
    // The native backward against finite differences.
    const nopts = nativeOptions(o);
    const L = tensor(x, [t, e]);
    const r = await ops.route(L, nopts);
    const dl = await ops.routeBackward(L, r.indices, r.tokensPerExpert, tensor(dw, [t, k]), bo);
    expect(relErr(values(dl), fd)).toBeLessThan(TOL.float32);
    dl.dispose();
    disposeAll(r);
    nopts.expertBias?.dispose();
  });
});

describe("route determinism and resources", () => {
  const [t, e, k] = [4096, 64, 8];
  const x = f32(normal(t * e, 71, 2));
  const bias = f32(normal(e, 72, 0.01));
  const opts = { topK: k, scoreFunction: "sigmoid" as const, renormalize: true, numGroups: 8, topkGroups: 4 };

  test("repeated runs are bitwise identical, forward and backward", async () => {
    const L = tensor(x, [t, e]);
    const B = tensor(bias, [e]);
    const dW = tensor(normal(t * k, 73), [t, k]);
    const runs = [];
    for (let i = 0; i < 3; i++) {
      const r = await ops.route(L, { ...opts, expertBias: B });
      const dl = await ops.routeBackward(L, r.indices, r.tokensPerExpert, dW, {
        ...opts,
        auxLossGrad: 0.01,
        zLossGrad: 0.001,
      });
      runs.push({ ...r, dl });
    }
    for (const name of ["indices", "weights", "scores", "tokensPerExpert", "auxLoss", "zLoss", "dl"] as const) {
      expect(sameBits(runs[0][name], runs[1][name])).toBe(true);
      expect(sameBits(runs[0][name], runs[2][name])).toBe(true);
    }
  });

  test("results do not depend on the thread count", async () => {
    const L = tensor(x, [t, e]);
    const B = tensor(bias, [e]);
    const r = await ops.route(L, { ...opts, expertBias: B });
    const here = Object.fromEntries(
      Object.entries(r).map(([name, v]) => [name, Buffer.from(v.handle.read(v.dtype)).toString("base64")]),
    );
    const addon = path.resolve(__dirname, "..", "build", "Release", "moe_ep.node");
    const child = `
      const m = require(${JSON.stringify(addon)});
      const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
      const f32 = (b) => new Float32Array(new Uint8Array(Buffer.from(b, "base64")).buffer);
      const L = new m.NativeTensor("float32", [${t}, ${e}], "cpu", f32(input.x), "float32");
      const B = new m.NativeTensor("float32", [${e}], "cpu", f32(input.bias), "float32");
      m.route(L, B, ${JSON.stringify(opts)}).then((r) => {
        const out = {};
        for (const [k, v] of Object.entries(r)) out[k] = Buffer.from(v.read(v.dtype)).toString("base64");
        process.stdout.write(JSON.stringify(out));
      });`;
    const input = JSON.stringify({
      x: Buffer.from(Float32Array.from(x).buffer).toString("base64"),
      bias: Buffer.from(Float32Array.from(bias).buffer).toString("base64"),
    });
    for (const threads of ["1", "3"]) {
      const out = execFileSync(process.execPath, ["-e", child], {
        input,
        env: { ...process.env, MOE_EP_NUM_THREADS: threads },
        maxBuffer: 64 << 20,
      });
      expect(JSON.parse(out.toString())).toEqual(here);
    }
    disposeAll(r);
  });

  test("no tensors leak across 1,000 calls", async () => {
    const L = tensor(normal(32 * 16, 74), [32, 16]);
    const B = tensor(normal(16, 75, 0.1), [16]);
    const dW = tensor(normal(32 * 4, 76), [32, 4]);
    const N = tensor([1, NaN], [1, 2]);
    const leaks = await leakCheck();
    for (let i = 0; i < 1000; i++) {
      const r = await ops.route(L, { topK: 4, expertBias: B, numGroups: 4, topkGroups: 2 });
      const dl = await ops.routeBackward(L, r.indices, r.tokensPerExpert, dW, { auxLossGrad: 0.1, zLossGrad: 0.1 });
      dl.dispose();
      disposeAll(r);
      if (i % 100 === 0) await expect(ops.route(N, { topK: 1 })).rejects.toMatchObject({ code: "ERR_MOE_NONFINITE" });
    }
    expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
    for (const x of [L, B, dW, N]) x.dispose(); // referenced until here, so never collected mid-check
  });
});

describe("route rejects bad input with typed errors", () => {
  const [t, e] = [4, 8];
  const L = tensor(normal(t * e, 81), [t, e]);

  test("logits", async () => {
    await expect(ops.route(tensor(normal(t * e, 1), [t, e], "bfloat16"), { topK: 2 })).rejects.toMatchObject({
      code: "ERR_MOE_DTYPE",
      message: expect.stringMatching(/route: expected logits of dtype float32 but received bfloat16/),
    });
    await expect(ops.route(Tensor.from(new Int32Array(t * e), [t, e]), { topK: 2 })).rejects.toMatchObject({
      code: "ERR_MOE_DTYPE",
    });
    await expect(ops.route(tensor(normal(e, 1), [e]), { topK: 2 })).rejects.toMatchObject({
      code: "ERR_MOE_SHAPE",
      message: expect.stringMatching(/expected logits of shape \[tokens, numExperts\] but received \[8\]/),
    });
    const bad = Float64Array.from(normal(t * e, 2));
    bad[2 * e + 3] = NaN;
    await expect(ops.route(tensor(bad, [t, e]), { topK: 2 })).rejects.toMatchObject({
      code: "ERR_MOE_NONFINITE",
      message: expect.stringMatching(/route: .*logits.*\[2, 3\] is nan/),
    });
    bad[2 * e + 3] = Infinity;
    await expect(ops.route(tensor(bad, [t, e]), { topK: 2, scoreFunction: "sigmoid" })).rejects.toMatchObject({
      code: "ERR_MOE_NONFINITE",
    });
    const D = tensor(normal(t * e, 3), [t, e]);
    D.dispose();
    await expect(ops.route(D, { topK: 2 })).rejects.toMatchObject({ code: "ERR_MOE_DISPOSED" });
    await expect(ops.route("logits" as unknown as Tensor, { topK: 2 })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
    });
  });

  test("topK and options", async () => {
    await expect(ops.route(L, { topK: 9 })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: "route: expected topK <= numExperts (8) but received 9",
    });
    await expect(ops.route(L, { topK: 0 })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/topK/),
    });
    await expect(ops.route(L, { topK: 1.5 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    await expect(ops.route(L, {} as RouteOptions)).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    await expect(ops.route(L, { topK: 2, scoreFunction: "relu" as "softmax" })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
    });
    await expect(ops.route(L, { topK: 2, renormalize: 1 as unknown as boolean })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
    });
  });

  test("expert bias", async () => {
    await expect(ops.route(L, { topK: 2, expertBias: tensor(normal(7, 1), [7]) })).rejects.toMatchObject({
      code: "ERR_MOE_SHAPE",
      message: expect.stringMatching(/expected expertBias of shape \[numExperts\] = \[8\] but received \[7\]/),
    });
    await expect(ops.route(L, { topK: 2, expertBias: intTensor(new Array(e).fill(0), [e]) })).rejects.toMatchObject({
      code: "ERR_MOE_DTYPE",
    });
    const nanBias = new Float64Array(e);
    nanBias[1] = NaN;
    await expect(ops.route(L, { topK: 2, expertBias: tensor(nanBias, [e]) })).rejects.toMatchObject({
      code: "ERR_MOE_NONFINITE",
    });
  });

  test("groups", async () => {
    await expect(ops.route(L, { topK: 2, numGroups: 3, topkGroups: 1 })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/numGroups to divide numExperts \(8\) but received 3/),
    });
    await expect(ops.route(L, { topK: 2, numGroups: 4, topkGroups: 5 })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
    });
    await expect(ops.route(L, { topK: 5, numGroups: 4, topkGroups: 2 })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/topK <= topkGroups · numExperts \/ numGroups \(4\) but received 5/),
    });
    await expect(ops.route(L, { topK: 2, numGroups: 4 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    await expect(ops.route(L, { topK: 2, numGroups: 0, topkGroups: 1 })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
    });
  });

  test("checkRouteOptions throws exactly what route throws for the same options", async () => {
    const cases: RouteOptions[] = [
      { topK: 2 },
      { topK: 8 },
      { topK: 9 },
      { topK: 0 },
      { topK: -3 },
      { topK: 2, numGroups: 4, topkGroups: 2 },
      { topK: 4, numGroups: 4, topkGroups: 2 },
      { topK: 5, numGroups: 4, topkGroups: 2 },
      { topK: 2, numGroups: 3, topkGroups: 1 },
      { topK: 2, numGroups: 4, topkGroups: 5 },
      { topK: 2, numGroups: 4, topkGroups: 0 },
      { topK: 2, numGroups: 4 },
      { topK: 2, topkGroups: 1 },
      { topK: 2, numGroups: 0, topkGroups: 1 },
      { topK: 2, numGroups: -2, topkGroups: 1 },
    ];
    let refused = 0;
    for (const o of cases) {
      const fromRoute = await ops.route(L, o).then(
        (r) => (disposeAll(r), undefined),
        (e: { code: string; message: string }) => ({ code: e.code, message: e.message }),
      );
      let fromCheck: { code: string; message: string } | undefined;
      try {
        ops.checkRouteOptions("route", e, o);
      } catch (err) {
        fromCheck = { code: (err as { code: string }).code, message: (err as Error).message };
      }
      expect([o, fromCheck]).toEqual([o, fromRoute]);
      if (fromRoute) refused++;
    }
    expect(refused).toBe(cases.length - 4);
    expect(() => ops.checkRouteOptions("MoELayer", e, { topK: 9 })).toThrow(
      "MoELayer: expected topK <= numExperts (8) but received 9",
    );
    expect(() => ops.checkRouteOptions("MoELayer", e, { topK: "2" as unknown as number })).toThrow(
      expect.objectContaining({ code: "ERR_MOE_VALUE", message: expect.stringMatching(/integer for topK/) }),
    );
  });

  test("routeBackward", async () => {
    const r = await ops.route(L, { topK: 2 });
    const dW = tensor(normal(t * 2, 5), [t, 2]);
    await expect(ops.routeBackward(L, r.weights, r.tokensPerExpert, dW)).rejects.toMatchObject({
      code: "ERR_MOE_DTYPE",
    });
    await expect(
      ops.routeBackward(L, r.indices, r.tokensPerExpert, tensor(normal(t * 3, 6), [t, 3])),
    ).rejects.toMatchObject({
      code: "ERR_MOE_SHAPE",
    });
    await expect(ops.routeBackward(L, r.indices, intTensor([1, 2], [2]), dW)).rejects.toMatchObject({
      code: "ERR_MOE_SHAPE",
    });
    await expect(
      ops.routeBackward(L, intTensor(new Array(t * 2).fill(8), [t, 2]), r.tokensPerExpert, dW),
    ).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/indices in \[0, 8\)/),
    });
    await expect(ops.routeBackward(L, r.indices, r.tokensPerExpert, dW, { auxLossGrad: NaN })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
    });
    const bad = Float64Array.from(normal(t * e, 81));
    bad[5] = -Infinity;
    await expect(ops.routeBackward(tensor(bad, [t, e]), r.indices, r.tokensPerExpert, dW)).rejects.toMatchObject({
      code: "ERR_MOE_NONFINITE",
    });
    const D = tensor(normal(t * 2, 7), [t, 2]);
    D.dispose();
    await expect(ops.routeBackward(L, r.indices, r.tokensPerExpert, D)).rejects.toMatchObject({
      code: "ERR_MOE_DISPOSED",
    });
    disposeAll(r);
  });
});
