/**
 * Every op on every backend (test/util.ts backends(): "cpu", plus "cuda:0"
 * where a GPU is usable) against the float64 references of test/reference/,
 * with bfloat16 data and the bf16 tolerance of docs/math.md#numerics (2e-2)
 * throughout, so one suite judges both backends by the same measure. Inputs
 * move to the device with Tensor.prototype.to(); results come back through
 * toFloat32(), which waits for the device.
 *
 * On a machine without CUDA the cuda:0 cases are listed as skipped with the
 * reason in their names; the cpu cases run, which keeps this file's own logic
 * (references, shapes, edge cases) checked everywhere.
 */
import { spawnSync } from "child_process";
import * as path from "path";
import { Tensor, ops, synchronize } from "../lib";
import type { DeviceName } from "../lib";
import { activationBackwardRef, activationRef, isGatedKind } from "./reference/activation";
import type { Kind } from "./reference/activation";
import { adamwRef } from "./reference/adamw";
import type { AdamWState } from "./reference/adamw";
import { gateBackwardRef, gateRef } from "./reference/gate";
import { permuteBackwardRef, permuteRef, unpermuteBackwardRef, unpermuteRef } from "./reference/permute";
import { groupedGemmBackwardRef, groupedGemmRef } from "./reference/grouped-gemm";
import { routeBackwardRef, routeRef } from "./reference/route";
import * as cases from "./shared/cases";
import { pickExperts, range } from "./shared/rng";
import {
  TOL,
  bf16,
  cudaTest,
  leakCheck,
  eachBackend,
  f32,
  intTensor,
  normal,
  onDevice,
  relErr,
  relErrNaN,
  sameBits,
  tensor,
  values,
} from "./util";

const TOLERANCE = TOL.bfloat16;

/** A float tensor on `device`, its data rounded to `dtype` first (the reference sees the same values). */
async function put(
  device: DeviceName,
  data: ArrayLike<number>,
  shape: number[],
  dtype: "float32" | "bfloat16" = "float32",
) {
  return onDevice(device, tensor(data, shape, dtype));
}
async function putInt(device: DeviceName, data: ArrayLike<number>, shape: number[]) {
  return onDevice(device, intTensor(data, shape));
}
const ints = (t: Tensor): number[] => Array.from(t.toInt32());

describe("gate on every backend", () => {
  for (const [t, d, e] of cases.gate.small) {
    eachBackend(`forward and backward match float64 at T=${t} D=${d} E=${e}, bfloat16 x`, async (dev) => {
      const x = bf16(normal(t * d, 1));
      const wg = f32(normal(d * e, 2, 0.1));
      const dl = f32(normal(t * e, 3));
      const X = await put(dev, x, [t, d], "bfloat16");
      const W = await put(dev, wg, [d, e]);
      const logits = await ops.gate(X, W);
      expect([logits.device, logits.dtype, logits.shape]).toEqual([dev, "float32", [t, e]]);
      expect(relErr(values(logits), gateRef(x, wg, t, d, e))).toBeLessThan(TOLERANCE);
      const g = await ops.gateBackward(X, W, await put(dev, dl, [t, e]));
      const ref = gateBackwardRef(x, wg, dl, t, d, e);
      expect(g.dx.dtype).toBe("bfloat16");
      expect(relErr(values(g.dx), ref.dx)).toBeLessThan(TOLERANCE);
      expect(relErr(values(g.dwg), ref.dwg)).toBeLessThan(TOLERANCE);
    });
  }
});

describe("route on every backend", () => {
  for (const { name, tokens: t, experts: e, options: o } of cases.route.small) {
    eachBackend(`${name}: choices, weights, scores, counts, losses and d logits match float64`, async (dev) => {
      const logits = f32(normal(t * e, 11, 1));
      const ref = routeRef(logits, t, e, o);
      expect(ref.margin).toBeGreaterThan(1e-5); // float32 resolves the same choices
      const L = await put(dev, logits, [t, e]);
      const r = await ops.route(L, {
        topK: o.topK,
        scoreFunction: o.scoreFunction,
        renormalize: o.renormalize,
        numGroups: o.numGroups,
        topkGroups: o.topkGroups,
      });
      expect(ints(r.indices)).toEqual(Array.from(ref.indices));
      expect(ints(r.tokensPerExpert)).toEqual(Array.from(ref.tokensPerExpert));
      expect(relErr(values(r.weights), ref.weights)).toBeLessThan(TOLERANCE);
      expect(relErr(values(r.scores), ref.scores)).toBeLessThan(TOLERANCE);
      expect(relErr([r.auxLoss.item()], [ref.aux])).toBeLessThan(TOLERANCE);
      expect(relErr([r.zLoss.item()], [ref.z])).toBeLessThan(TOLERANCE);

      const dw = f32(normal(t * o.topK, 12));
      const bo = { scoreFunction: o.scoreFunction, renormalize: o.renormalize, auxLossGrad: 0.3, zLossGrad: 0.05 };
      const dl = await ops.routeBackward(L, r.indices, r.tokensPerExpert, await put(dev, dw, [t, o.topK]), bo);
      const dref = routeBackwardRef(logits, t, e, ref.indices, ref.tokensPerExpert, dw, bo);
      expect(relErr(values(dl), dref)).toBeLessThan(TOLERANCE);
    });
  }

  eachBackend("zero tokens give empty outputs and zero losses", async (dev) => {
    const r = await ops.route(await put(dev, [], [0, 8]), { topK: 2 });
    expect(r.indices.shape).toEqual([0, 2]);
    expect(ints(r.tokensPerExpert)).toEqual(new Array(8).fill(0));
    expect([r.auxLoss.item(), r.zLoss.item()]).toEqual([0, 0]);
  });
});

describe("permute, unpermute and their backward on every backend", () => {
  const { tokens: T, width: D } = cases.permute.small;
  for (const c of cases.permute.small.cases) {
    const { name, k, allowed } = c;
    const o = { numExperts: c.experts, ...c.options };
    eachBackend(`${name}: maps, rows and gradients match float64`, async (dev) => {
      const x = bf16(normal(T * D, 21));
      const idx = pickExperts(T, k, allowed, 22);
      // Tied weights (a few distinct values) exercise the lower-index tie rule.
      const w = f32(Array.from(normal(T * k, 23), (v) => Math.round(Math.abs(v) * 2) / 4));
      const ref = permuteRef(x, idx, w, T, D, k, o);
      const X = await put(dev, x, [T, D], "bfloat16");
      const I = await putInt(dev, idx, [T, k]);
      const W = await put(dev, w, [T, k]);
      const p = await ops.permute(X, I, W, {
        numExperts: o.numExperts,
        capacityFactor: o.capacityFactor,
        dropPolicy: o.dropPolicy,
        padToCapacity: o.padToCapacity,
      });
      expect([p.dropped, p.capacity]).toEqual([ref.dropped, ref.capacity]);
      expect(ints(p.rowsPerExpert)).toEqual(ref.rowsPerExpert);
      expect(ints(p.pairToRow)).toEqual(ref.pairToRow);
      expect(ints(p.rowToPair)).toEqual(ref.rowToPair);
      expect(Array.from(values(p.rows))).toEqual(Array.from(ref.rows)); // a copy: exact

      const R = ref.numRows;
      const dRows = bf16(normal(R * D, 24));
      const dx = await ops.permuteBackward(await put(dev, dRows, [R, D], "bfloat16"), p.pairToRow);
      expect(relErr(values(dx), permuteBackwardRef(dRows, ref.pairToRow, T, k, D))).toBeLessThan(TOLERANCE);

      const y = await ops.unpermute(p.rows, p.pairToRow, W);
      expect(relErr(values(y), unpermuteRef(ref.rows, ref.pairToRow, w, T, k, D))).toBeLessThan(TOLERANCE);

      const dy = bf16(normal(T * D, 25));
      const g = await ops.unpermuteBackward(await put(dev, dy, [T, D], "bfloat16"), p.rows, p.pairToRow, W);
      const gref = unpermuteBackwardRef(dy, ref.rows, ref.pairToRow, w, T, k, D, R);
      expect(relErr(values(g.dRows), gref.dRows)).toBeLessThan(TOLERANCE);
      expect(relErr(values(g.dWeights), gref.dWeights)).toBeLessThan(TOLERANCE);
    });
  }

  eachBackend("one token, and rows of an odd width (no vector loads)", async (dev) => {
    const [t, d, k, e] = [1, 7, 3, 5];
    const x = bf16(normal(t * d, 31));
    const idx = [4, 0, 2];
    const w = [0.5, 0.25, 0.125];
    const ref = permuteRef(x, idx, w, t, d, k, { numExperts: e });
    const W = await put(dev, w, [t, k]);
    const p = await ops.permute(await put(dev, x, [t, d], "bfloat16"), await putInt(dev, idx, [t, k]), W, {
      numExperts: e,
    });
    expect(ints(p.pairToRow)).toEqual(ref.pairToRow);
    expect(Array.from(values(p.rows))).toEqual(Array.from(ref.rows));
    const y = await ops.unpermute(p.rows, p.pairToRow, W);
    expect(relErr(values(y), unpermuteRef(ref.rows, ref.pairToRow, w, t, k, d))).toBeLessThan(TOLERANCE);
  });

  eachBackend(
    "repeated runs are bitwise identical (8192 tokens x 64 experts, top-8, probs capacity)",
    async (dev) => {
      const [t, d, k, e] = [8192, 8, 8, 64];
      const X = await put(dev, normal(t * d, 41), [t, d], "bfloat16");
      const I = await putInt(dev, pickExperts(t, k, range(e), 42), [t, k]);
      const W = await put(
        dev,
        Array.from(normal(t * k, 43), (v) => Math.round(Math.abs(v) * 8) / 8),
        [t, k],
      );
      const opts = { numExperts: e, capacityFactor: 0.8, dropPolicy: "probs" as const };
      const a = await ops.permute(X, I, W, opts);
      const b = await ops.permute(X, I, W, opts);
      expect(sameBits(a.pairToRow, b.pairToRow)).toBe(true);
      expect(sameBits(a.rows, b.rows)).toBe(true);
      const ya = await ops.unpermute(a.rows, a.pairToRow, W);
      const yb = await ops.unpermute(b.rows, b.pairToRow, W);
      expect(sameBits(ya, yb)).toBe(true);
      const ga = await ops.unpermuteBackward(ya, a.rows, a.pairToRow, W);
      const gb = await ops.unpermuteBackward(yb, b.rows, b.pairToRow, W);
      expect(sameBits(ga.dRows, gb.dRows) && sameBits(ga.dWeights, gb.dWeights)).toBe(true);
    },
    30000,
  );
});

describe("activations and AdamW on every backend", () => {
  const kinds: Kind[] = ["relu", "gelu", "silu", "swiglu", "geglu"];
  for (const kind of kinds) {
    eachBackend(`${kind} forward and backward match float64, bfloat16 data`, async (dev) => {
      const [rows, width] = [33, 40];
      const x = bf16(normal(rows * width, 51, 2));
      const out = isGatedKind(kind) ? width / 2 : width;
      const dh = bf16(normal(rows * out, 52));
      const X = await put(dev, x, [rows, width], "bfloat16");
      const h = await ops.activation(X, kind);
      expect(h.shape).toEqual([rows, out]);
      expect(relErr(values(h), activationRef(x, width, kind))).toBeLessThan(TOLERANCE);
      const dx = await ops.activationBackward(await put(dev, dh, [rows, out], "bfloat16"), X, kind);
      expect(relErr(values(dx), activationBackwardRef(dh, x, width, kind))).toBeLessThan(TOLERANCE);
    });
  }

  for (const kind of kinds) {
    eachBackend(`${kind} propagates NaN forward and backward as the float64 reference does`, async (dev) => {
      const [rows, width] = [6, 16];
      const x = bf16(normal(rows * width, 53, 2));
      for (const i of [0, 3, 11, 20, 37, 64]) x[i] = NaN;
      x[1] = 0;
      x[2] = -2;
      const out = isGatedKind(kind) ? width / 2 : width;
      const dh = bf16(normal(rows * out, 54));
      dh[1] = NaN;
      dh[2] = NaN;
      const X = await put(dev, x, [rows, width], "bfloat16");
      const h = await ops.activation(X, kind);
      expect(relErrNaN(values(h), activationRef(x, width, kind))).toBeLessThan(TOLERANCE);
      const dx = await ops.activationBackward(await put(dev, dh, [rows, out], "bfloat16"), X, kind);
      expect(relErrNaN(values(dx), activationBackwardRef(dh, x, width, kind))).toBeLessThan(TOLERANCE);
    });
  }

  eachBackend("AdamW: three steps on bfloat16 parameters match float64", async (dev) => {
    const n = 1000;
    let state: AdamWState = { param: bf16(normal(n, 61)), expAvg: new Float64Array(n), expAvgSq: new Float64Array(n) };
    const P = await put(dev, state.param, [n], "bfloat16");
    const M = await put(dev, state.expAvg, [n]);
    const V = await put(dev, state.expAvgSq, [n]);
    for (let step = 1; step <= 3; step++) {
      const g = bf16(normal(n, 62 + step));
      await ops.adamw(P, await put(dev, g, [n], "bfloat16"), M, V, { lr: 1e-2, weightDecay: 0.1, step });
      state = adamwRef(state, g, { lr: 1e-2, weightDecay: 0.1, step, roundParam: (v) => bf16([v])[0] });
    }
    expect(relErr(values(P), state.param)).toBeLessThan(TOLERANCE);
    expect(relErr(values(M), state.expAvg)).toBeLessThan(TOLERANCE);
    expect(relErr(values(V), state.expAvgSq)).toBeLessThan(TOLERANCE);
  });
});

describe("data errors and memory on every backend", () => {
  /** Runs ops and then waits for the device: a CUDA op reports data errors at the next synchronisation. */
  async function settled(work: () => Promise<unknown>): Promise<void> {
    await work();
    await synchronize();
  }

  eachBackend("a NaN in the router's input rejects naming gate, and the device works after it", async (dev) => {
    const x = Array.from(normal(4 * 8, 71));
    x[13] = NaN;
    const X = await put(dev, x, [4, 8], "bfloat16");
    const W = await put(dev, normal(8 * 4, 72), [8, 4]);
    await expect(settled(() => ops.gate(X, W))).rejects.toMatchObject({
      code: "ERR_MOE_NONFINITE",
      message: expect.stringMatching(/^gate: .*element 13\b/),
    });
    const ok = await ops.gate(await put(dev, normal(4 * 8, 73), [4, 8]), W);
    expect(values(ok).every(Number.isFinite)).toBe(true);
  });

  eachBackend("an expert index out of range rejects naming permute (dropless and with capacity)", async (dev) => {
    const X = await put(dev, normal(4 * 8, 74), [4, 8]);
    const I = await putInt(dev, [0, 1, 9, 2], [4, 1]);
    const W = await put(dev, [1, 1, 1, 1], [4, 1]);
    for (const capacityFactor of [undefined, 1.0]) {
      await expect(settled(() => ops.permute(X, I, W, { numExperts: 4, capacityFactor }))).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(/^permute: .*element 2\b/),
      });
    }
  });

  eachBackend("a row map out of range rejects naming unpermute", async (dev) => {
    const rows = await put(dev, normal(3 * 4, 75), [3, 4]);
    const map = await putInt(dev, [0, 7], [2, 1]);
    const W = await put(dev, [1, 1], [2, 1]);
    await expect(settled(() => ops.unpermute(rows, map, W))).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/^unpermute: /),
    });
  });

  eachBackend(
    "no device memory leaks across 200 routed permute / unpermute round trips",
    async (dev) => {
      const [t, d, k, e] = [64, 16, 2, 8];
      const L = await put(dev, normal(t * e, 81), [t, e]);
      const X = await put(dev, normal(t * d, 82), [t, d], "bfloat16");
      const leaks = await leakCheck(dev);
      for (let i = 0; i < 200; i++) {
        const r = await ops.route(L, { topK: k });
        const p = await ops.permute(X, r.indices, r.weights, { numExperts: e, capacityFactor: 1.0 });
        const y = await ops.unpermute(p.rows, p.pairToRow, r.weights);
        for (const t of [y, p.rows, p.rowsPerExpert, p.pairToRow, p.rowToPair, ...Object.values(r)]) t.dispose();
      }
      expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
      L.dispose();
      X.dispose();
    },
    30000,
  );
});

describe("CUDA only", () => {
  cudaTest("tensors of every dtype round-trip through the device exactly", async (dev) => {
    const cases: Array<[Tensor, string]> = [
      [Tensor.from(normal(100, 91), [10, 10]), "float32"],
      [Tensor.from(normal(100, 92), [100], { dtype: "bfloat16" }), "bfloat16"],
      [Tensor.from(normal(100, 93), [4, 25], { dtype: "float16" }), "float16"],
      [Tensor.from(new Int32Array([1, -2, 2147483647]), [3]), "int32"],
      [Tensor.from(new BigInt64Array([1n, -(2n ** 40n)]), [2]), "int64"],
    ];
    for (const [host, dtype] of cases) {
      const d = await host.to(dev);
      expect([d.device, d.dtype, d.shape]).toEqual([dev, dtype, host.shape]);
      const back = await d.to("cpu");
      expect(sameBits(back, host)).toBe(true);
      expect(sameBits(await d.clone(), host)).toBe(true);
    }
  });

  for (const { name, counts, k: K, n: N } of cases.groupedGemm.small) {
    cudaTest(`groupedGemm bf16 forward and backward match float64: ${name}`, async (dev) => {
      const R = counts.reduce((a, b) => a + b, 0);
      const L = counts.length;
      const x = bf16(normal(R * K, 101));
      const w = bf16(normal(L * K * N, 102, 1 / Math.sqrt(K)));
      const dy = bf16(normal(R * N, 103));
      const [X, W, DY] = [
        await put(dev, x, [R, K], "bfloat16"),
        await put(dev, w, [L, K, N], "bfloat16"),
        await put(dev, dy, [R, N], "bfloat16"),
      ];
      const C = await putInt(dev, counts, [L]);
      const y = await ops.groupedGemm(X, W, C);
      expect(relErr(values(await y.to("cpu")), groupedGemmRef(x, w, counts, { R, K, N, L }))).toBeLessThan(TOLERANCE);
      const g = await ops.groupedGemmBackward(DY, X, W, C);
      const ref = groupedGemmBackwardRef(dy, x, w, counts, { R, K, N, L });
      expect(relErr(values(await g.dx!.to("cpu")), ref.dx)).toBeLessThan(TOLERANCE);
      expect(relErr(values(await g.dw!.to("cpu")), ref.dw)).toBeLessThan(TOLERANCE);
    });
  }

  cudaTest("groupedGemm on CUDA tensors refuses float32 operands", async (dev) => {
    const x = await put(dev, normal(16, 94), [2, 8]);
    const w = await put(dev, normal(128, 95), [2, 8, 8]);
    const c = await putInt(dev, [1, 1], [2]);
    await expect(ops.groupedGemm(x, w, c)).rejects.toMatchObject({
      code: "ERR_MOE_UNSUPPORTED",
      message: expect.stringContaining("bfloat16 or float16"),
    });
  });

  test("groupedGemmCudaSupport: bfloat16 or float16, K and N multiples of 8, no bias gradient", () => {
    for (const dtype of ["float32", "bfloat16", "float16"] as const)
      for (const [k, n] of [
        [8, 8],
        [16, 136],
        [12, 16],
        [16, 20],
        [1, 8],
      ])
        for (const needDbias of [false, true]) {
          const want = dtype !== "float32" && k % 8 === 0 && n % 8 === 0 && !needDbias;
          const got = ops.groupedGemmCudaSupport({ dtype, k, n, needDbias });
          expect({ dtype, k, n, needDbias, ...got, reason: got.reason !== "" }).toEqual({
            dtype,
            k,
            n,
            needDbias,
            supported: want,
            reason: !want,
          });
        }
    expect(() => ops.groupedGemmCudaSupport({ dtype: "bfloat16", k: 0, n: 8 })).toThrow(
      expect.objectContaining({ code: "ERR_MOE_VALUE" }),
    );
  });

  cudaTest("groupedGemm on CUDA tensors refuses what groupedGemmCudaSupport refuses, with its reason", async (dev) => {
    const counts = [2, 1];
    for (const [dtype, k, n] of [
      ["bfloat16", 8, 16],
      ["bfloat16", 12, 8],
      ["bfloat16", 8, 20],
      ["float32", 8, 8],
    ] as Array<["float32" | "bfloat16", number, number]>) {
      const x = await put(dev, normal(3 * k, 96), [3, k], dtype);
      const w = await put(dev, normal(2 * k * n, 97), [2, k, n], dtype);
      const c = await putInt(dev, counts, [2]);
      const answer = ops.groupedGemmCudaSupport({ dtype, k, n });
      if (answer.supported) {
        expect((await ops.groupedGemm(x, w, c)).shape).toEqual([3, n]);
        const dy = await put(dev, normal(3 * n, 98), [3, n], dtype);
        const why = ops.groupedGemmCudaSupport({ dtype, k, n, needDbias: true }).reason;
        await expect(ops.groupedGemmBackward(dy, x, w, c, { needDbias: true })).rejects.toMatchObject({
          code: "ERR_MOE_UNSUPPORTED",
          message: expect.stringContaining(why),
        });
      } else {
        await expect(ops.groupedGemm(x, w, c)).rejects.toMatchObject({
          code: "ERR_MOE_UNSUPPORTED",
          message: expect.stringContaining(answer.reason),
        });
      }
    }
  });

  cudaTest("MOE_EP_GG_KERNEL=sm80 gives the same products; an unknown kernel name is refused naming it", async () => {
    // The variable is read by the core at each call: a child process gets it in its real environment.
    const script = `
      const { Tensor, ops } = require(${JSON.stringify(path.resolve(__dirname, "..", "dist"))});
      (async () => {
        const x = Tensor.from(${JSON.stringify(Array.from(bf16(normal(24 * 16, 98))))}, [24, 16], { dtype: "bfloat16" });
        const w = Tensor.from(${JSON.stringify(Array.from(bf16(normal(2 * 16 * 8, 99, 0.25))))}, [2, 16, 8], { dtype: "bfloat16" });
        const c = Tensor.from(new Int32Array([10, 14]), [2]);
        try {
          const y = await ops.groupedGemm(await x.to("cuda:0"), await w.to("cuda:0"), await c.to("cuda:0"));
          console.log(JSON.stringify({ y: Array.from(y.toFloat32()) }));
        } catch (e) {
          console.log(JSON.stringify({ code: e.code, message: e.message }));
        }
      })();`;
    const run = (kernel: string) => {
      const r = spawnSync(process.execPath, ["-e", script], {
        encoding: "utf8",
        env: { ...process.env, MOE_EP_GG_KERNEL: kernel },
      });
      if (r.status !== 0) throw new Error(r.stderr);
      return JSON.parse(r.stdout);
    };
    const ref = groupedGemmRef(bf16(normal(24 * 16, 98)), bf16(normal(2 * 16 * 8, 99, 0.25)), [10, 14], {
      R: 24,
      K: 16,
      N: 8,
      L: 2,
    });
    expect(relErr(run("sm80").y, ref)).toBeLessThan(TOLERANCE);
    expect(relErr(run("auto").y, ref)).toBeLessThan(TOLERANCE);
    expect(run("wgmma2")).toEqual({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/MOE_EP_GG_KERNEL to be auto or sm80 but received "wgmma2"/),
    });
  });

  cudaTest("an op mixing devices rejects with ERR_MOE_DEVICE", async (dev) => {
    const x = await put(dev, normal(8, 96), [2, 4]);
    await expect(ops.gate(x, Tensor.from(normal(8, 97), [4, 2]))).rejects.toMatchObject({ code: "ERR_MOE_DEVICE" });
  });
});
