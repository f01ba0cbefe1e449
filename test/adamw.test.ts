import { Tensor, ops, scope } from "../lib";
import { adamwRef, AdamWState } from "./reference/adamw";
import { f32, normal, relErr, sameBits, tensor, values, TOL, leakCheck } from "./util";

/** Runs a test body in a scope: every tensor it makes is disposed when it ends, so no test leaves garbage behind. */
const scoped =
  <A extends unknown[]>(fn: (...args: A) => Promise<void>) =>
  (...args: A): Promise<void> =>
    scope(() => fn(...args));

/** Rounds to bfloat16 (nearest even), as a bfloat16 tensor stores a value. */
function bf16(v: number): number {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer);
  u[0] = (u[0] + 0x7fff + ((u[0] >>> 16) & 1)) & 0xffff0000;
  return f[0];
}

function state(n: number, seed: number): AdamWState {
  return { param: f32(normal(n, seed)), expAvg: new Float64Array(n), expAvgSq: new Float64Array(n) };
}

describe("adamw (one in-place step, PyTorch AdamW semantics)", () => {
  test.each([
    [[7], {}],
    [[33, 17], { lr: 1e-2, weightDecay: 0.1 }],
    [[4, 8, 16], { lr: 2e-4, beta1: 0.8, beta2: 0.95, eps: 1e-6, weightDecay: 0 }],
    [[100000], { lr: 5e-3 }],
  ] as Array<[number[], { lr?: number; beta1?: number; beta2?: number; eps?: number; weightDecay?: number }]>)(
    "ten steps at %j %j match float64",
    scoped(async (shape, o) => {
      const n = shape.reduce((a, b) => a * b, 1);
      let ref = state(n, 1);
      const P = tensor(ref.param, shape);
      const M = Tensor.zeros(shape);
      const V = Tensor.zeros(shape);
      const lr = o.lr ?? 1e-3;
      for (let step = 1; step <= 10; step++) {
        const g = f32(normal(n, 100 + step, 0.5));
        await ops.adamw(P, tensor(g, shape), M, V, { ...o, lr, step });
        ref = adamwRef(ref, g, { ...o, lr, step });
      }
      expect(relErr(values(P), ref.param)).toBeLessThan(TOL.float32);
      expect(relErr(values(M), ref.expAvg)).toBeLessThan(TOL.float32);
      expect(relErr(values(V), ref.expAvgSq)).toBeLessThan(TOL.float32);
      // The parameters moved by about lr per step: the comparison above is not vacuous.
      expect(relErr(values(P), state(n, 1).param)).toBeGreaterThan(lr);
    }),
  );

  test(
    "the first step moves each parameter by lr·sign(g) after decay (m̂ = g, v̂ = g²)",
    scoped(async () => {
      const p = [1, -2, 0.5, 3];
      const g = [0.25, -4, 1e-3, -1];
      const P = tensor(p, [4]);
      await ops.adamw(P, tensor(g, [4]), Tensor.zeros([4]), Tensor.zeros([4]), {
        lr: 0.1,
        weightDecay: 0.5,
        eps: 0,
        step: 1,
      });
      const want = p.map((v, i) => v * (1 - 0.1 * 0.5) - 0.1 * Math.sign(g[i]));
      values(P).forEach((v, i) => expect(Math.abs(v - want[i])).toBeLessThan(2e-7 * Math.abs(want[i])));
    }),
  );

  test(
    "a zero gradient only decays the parameters and leaves the moments at zero",
    scoped(async () => {
      const P = tensor([2, -4], [2]);
      const M = Tensor.zeros([2]);
      const V = Tensor.zeros([2]);
      await ops.adamw(P, Tensor.zeros([2]), M, V, { lr: 0.5, weightDecay: 0.1, step: 3 });
      values(P).forEach((v, i) => expect(Math.abs(v - [1.9, -3.8][i])).toBeLessThan(1e-7 * 4));
      expect(Array.from(values(M))).toEqual([0, 0]);
      expect(Array.from(values(V))).toEqual([0, 0]);
    }),
  );

  test(
    "bfloat16 parameters and gradients are updated in float32 and stored rounded",
    scoped(async () => {
      const n = 4096;
      let ref = state(n, 3);
      ref.param = ref.param.map(bf16);
      const P = tensor(ref.param, [n], "bfloat16");
      const M = Tensor.zeros([n]);
      const V = Tensor.zeros([n]);
      for (let step = 1; step <= 5; step++) {
        const g = normal(n, 200 + step).map(bf16);
        await ops.adamw(P, tensor(g, [n], "bfloat16"), M, V, { lr: 2e-2, step });
        ref = adamwRef(ref, g, { lr: 2e-2, step, roundParam: bf16 });
      }
      expect(P.dtype).toBe("bfloat16");
      expect(relErr(values(P), ref.param)).toBeLessThan(TOL.bfloat16);
      expect(relErr(values(M), ref.expAvg)).toBeLessThan(TOL.float32);
      expect(relErr(values(V), ref.expAvgSq)).toBeLessThan(TOL.float32);
    }),
  );

  test(
    "repeated runs are bitwise identical",
    scoped(async () => {
      const n = 300000;
      const p = normal(n, 5);
      const g = normal(n, 6);
      const run = async () => {
        const P = tensor(p, [n]);
        const M = Tensor.zeros([n]);
        const V = Tensor.zeros([n]);
        for (let step = 1; step <= 3; step++) await ops.adamw(P, tensor(g, [n]), M, V, { lr: 1e-3, step });
        return [P, M, V];
      };
      const a = await run();
      const b = await run();
      a.forEach((t, i) => expect(sameBits(t, b[i])).toBe(true));
    }),
  );

  test(
    "bad input gets typed errors",
    scoped(async () => {
      const P = tensor(normal(6, 1), [2, 3]);
      const G = tensor(normal(6, 2), [2, 3]);
      const M = Tensor.zeros([2, 3]);
      const V = Tensor.zeros([2, 3]);
      const ok = { lr: 1e-3, step: 1 };
      await expect(ops.adamw(P, tensor(normal(6, 2), [3, 2]), M, V, ok)).rejects.toMatchObject({
        code: "ERR_MOE_SHAPE",
        message: expect.stringMatching(/expected grad of shape like param = \[2, 3\] but received \[3, 2\]/),
      });
      await expect(ops.adamw(P, G, Tensor.zeros([6]), V, ok)).rejects.toMatchObject({ code: "ERR_MOE_SHAPE" });
      await expect(ops.adamw(P, G, M, Tensor.zeros([2, 3], { dtype: "bfloat16" }), ok)).rejects.toMatchObject({
        code: "ERR_MOE_DTYPE",
      });
      await expect(ops.adamw(Tensor.from(new Int32Array(6), [2, 3]), G, M, V, ok)).rejects.toMatchObject({
        code: "ERR_MOE_DTYPE",
      });
      await expect(ops.adamw(P, G, M, M, ok)).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(/distinct/),
      });
      await expect(ops.adamw(P, G, M, V, { lr: 1e-3, step: 0 })).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(/step/),
      });
      await expect(ops.adamw(P, G, M, V, { lr: 1e-3, step: 1.5 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      await expect(ops.adamw(P, G, M, V, { lr: -1, step: 1 })).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(/lr/),
      });
      await expect(ops.adamw(P, G, M, V, { ...ok, beta1: 1 })).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(/beta1/),
      });
      await expect(ops.adamw(P, G, M, V, { ...ok, beta2: -0.1 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      await expect(ops.adamw(P, G, M, V, { ...ok, eps: NaN })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      await expect(ops.adamw(P, G, M, V, { ...ok, weightDecay: "0.1" as unknown as number })).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
      });
      await expect(ops.adamw(P, G, M, V, undefined as unknown as { lr: number; step: number })).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
      });
      const gone = Tensor.zeros([2, 3]);
      gone.dispose();
      await expect(ops.adamw(P, gone, M, V, ok)).rejects.toMatchObject({ code: "ERR_MOE_DISPOSED" });
      // Nothing was written by the rejected calls.
      expect(Array.from(values(M))).toEqual([0, 0, 0, 0, 0, 0]);
      expect(relErr(values(P), f32(normal(6, 1)))).toBe(0);
    }),
  );

  test(
    "no tensors leak across 1,000 steps",
    scoped(async () => {
      const P = tensor(normal(64, 1), [64]);
      const M = Tensor.zeros([64]);
      const V = Tensor.zeros([64]);
      const leaks = await leakCheck();
      for (let step = 1; step <= 1000; step++) {
        const G = tensor(normal(64, step), [64]);
        await ops.adamw(P, G, M, V, { lr: 1e-3, step });
        G.dispose();
      }
      expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
    }),
  );
});
