import { Tensor, ops, scope } from "../lib";
import { groupedGemmRef, groupedGemmBackwardRef, GroupedDims } from "./reference/grouped-gemm";
import { f32, intTensor, normal, relErr, sameBits, tensor, values, TOL, leakCheck } from "./util";

/** Runs a test body in a scope: every tensor it makes is disposed when it ends, so no test leaves garbage behind. */
const scoped =
  <A extends unknown[]>(fn: (...args: A) => Promise<void>) =>
  (...args: A): Promise<void> =>
    scope(() => fn(...args));

type Case = { name: string; K: number; N: number; counts: number[] };

const cases: Case[] = [
  { name: "3 experts, uneven rows", K: 16, N: 24, counts: [5, 11, 2] },
  { name: "zero-row experts between others", K: 32, N: 8, counts: [0, 7, 0, 0, 13, 0] },
  { name: "all rows to one expert", K: 24, N: 40, counts: [0, 0, 37, 0] },
  { name: "one expert (L=1)", K: 64, N: 48, counts: [50] },
  { name: "no rows at all (R=0)", K: 8, N: 12, counts: [0, 0, 0] },
  { name: "8 experts, wide", K: 128, N: 96, counts: [31, 0, 64, 17, 1, 40, 0, 103] },
];

function data(c: Case, seed: number) {
  const L = c.counts.length;
  const R = c.counts.reduce((a, b) => a + b, 0);
  const d: GroupedDims = { R, K: c.K, N: c.N, L };
  return {
    d,
    x: f32(normal(R * c.K, seed)),
    w: f32(normal(L * c.K * c.N, seed + 1, 1 / Math.sqrt(c.K))),
    b: f32(normal(L * c.N, seed + 2)),
    dy: f32(normal(R * c.N, seed + 3)),
  };
}

describe("groupedGemm (Y_e = X_e · W_e + b_e over contiguous expert rows)", () => {
  test.each(cases)(
    "forward matches float64 with and without bias: $name",
    scoped(async (c) => {
      const { d, x, w, b } = data(c, 10);
      const X = tensor(x, [d.R, d.K]);
      const W = tensor(w, [d.L, d.K, d.N]);
      const C = intTensor(c.counts, [d.L]);
      const y = await ops.groupedGemm(X, W, C);
      expect(y.shape).toEqual([d.R, d.N]);
      expect(y.dtype).toBe("float32");
      expect(relErr(values(y), groupedGemmRef(x, w, c.counts, d))).toBeLessThan(TOL.float32);
      const yb = await ops.groupedGemm(X, W, C, { bias: tensor(b, [d.L, d.N]) });
      expect(relErr(values(yb), groupedGemmRef(x, w, c.counts, d, b))).toBeLessThan(TOL.float32);
    }),
  );

  test.each(cases)(
    "backward (dx, dw, dbias) matches float64: $name",
    scoped(async (c) => {
      const { d, x, w, dy } = data(c, 20);
      const g = await ops.groupedGemmBackward(
        tensor(dy, [d.R, d.N]),
        tensor(x, [d.R, d.K]),
        tensor(w, [d.L, d.K, d.N]),
        intTensor(c.counts, [d.L]),
        {
          needDbias: true,
        },
      );
      const ref = groupedGemmBackwardRef(dy, x, w, c.counts, d);
      expect(g.dx!.shape).toEqual([d.R, d.K]);
      expect(g.dw!.shape).toEqual([d.L, d.K, d.N]);
      expect(g.dw!.dtype).toBe("float32");
      expect(g.dbias!.shape).toEqual([d.L, d.N]);
      expect(relErr(values(g.dx!), ref.dx)).toBeLessThan(TOL.float32);
      expect(relErr(values(g.dw!), ref.dw)).toBeLessThan(TOL.float32);
      expect(relErr(values(g.dbias!), ref.dbias)).toBeLessThan(TOL.float32);
      // An expert with no rows gets exactly zero gradient, whatever the output buffer held.
      const dw = values(g.dw!);
      const db = values(g.dbias!);
      c.counts.forEach((n, e) => {
        if (n > 0) return;
        expect(dw.subarray(e * d.K * d.N, (e + 1) * d.K * d.N).every((v) => v === 0)).toBe(true);
        expect(db.subarray(e * d.N, (e + 1) * d.N).every((v) => v === 0)).toBe(true);
      });
    }),
  );

  test(
    "gradients match finite differences of a scalar loss through the float64 reference",
    scoped(async () => {
      const counts = [2, 0, 3, 1];
      const d: GroupedDims = { R: 6, K: 3, N: 4, L: 4 };
      const x = f32(normal(d.R * d.K, 31));
      const w = f32(normal(d.L * d.K * d.N, 32));
      const b = f32(normal(d.L * d.N, 33));
      const c = f32(normal(d.R * d.N, 34)); // loss = Σ c ⊙ y, so dL/dy = c
      const loss = (xx: ArrayLike<number>, ww: ArrayLike<number>, bb: ArrayLike<number>) =>
        groupedGemmRef(xx, ww, counts, d, bb).reduce((s, v, i) => s + v * c[i], 0);
      const fd = (a: Float64Array, f: (p: Float64Array) => number) =>
        Float64Array.from(a, (_, i) => {
          const h = 1e-6;
          const p = Float64Array.from(a);
          p[i] += h;
          const up = f(p);
          p[i] -= 2 * h;
          return (up - f(p)) / (2 * h);
        });
      const g = await ops.groupedGemmBackward(
        tensor(c, [d.R, d.N]),
        tensor(x, [d.R, d.K]),
        tensor(w, [d.L, d.K, d.N]),
        intTensor(counts, [d.L]),
        {
          needDbias: true,
        },
      );
      expect(
        relErr(
          values(g.dx!),
          fd(x, (p) => loss(p, w, b)),
        ),
      ).toBeLessThan(1e-5);
      expect(
        relErr(
          values(g.dw!),
          fd(w, (p) => loss(x, p, b)),
        ),
      ).toBeLessThan(1e-5);
      expect(
        relErr(
          values(g.dbias!),
          fd(b, (p) => loss(x, w, p)),
        ),
      ).toBeLessThan(1e-5);
    }),
  );

  test(
    "only the asked-for gradients are computed",
    scoped(async () => {
      const c = cases[0];
      const { d, x, w, dy } = data(c, 40);
      const args = [
        tensor(dy, [d.R, d.N]),
        tensor(x, [d.R, d.K]),
        tensor(w, [d.L, d.K, d.N]),
        intTensor(c.counts, [d.L]),
      ] as const;
      const onlyDx = await ops.groupedGemmBackward(...args, { needDw: false });
      expect(Object.keys(onlyDx)).toEqual(["dx"]);
      const onlyDw = await ops.groupedGemmBackward(...args, { needDx: false });
      expect(Object.keys(onlyDw)).toEqual(["dw"]);
      const onlyDb = await ops.groupedGemmBackward(...args, { needDx: false, needDw: false, needDbias: true });
      expect(Object.keys(onlyDb)).toEqual(["dbias"]);
      expect(relErr(values(onlyDw.dw!), groupedGemmBackwardRef(dy, x, w, c.counts, d).dw)).toBeLessThan(TOL.float32);
    }),
  );

  test(
    "int64 counts are read like int32 counts",
    scoped(async () => {
      const c = cases[1];
      const { d, x, w } = data(c, 45);
      const C64 = Tensor.from(BigInt64Array.from(c.counts.map(BigInt)), [d.L], { dtype: "int64" });
      const y = await ops.groupedGemm(tensor(x, [d.R, d.K]), tensor(w, [d.L, d.K, d.N]), C64);
      expect(relErr(values(y), groupedGemmRef(x, w, c.counts, d))).toBeLessThan(TOL.float32);
    }),
  );

  test(
    "bfloat16 inputs give bfloat16 outputs within bf16 tolerance",
    scoped(async () => {
      const c = cases[5];
      const { d, x, w, b, dy } = data(c, 50);
      const X = tensor(x, [d.R, d.K], "bfloat16");
      const W = tensor(w, [d.L, d.K, d.N], "bfloat16");
      const C = intTensor(c.counts, [d.L]);
      const y = await ops.groupedGemm(X, W, C, { bias: tensor(b, [d.L, d.N], "bfloat16") });
      expect(y.dtype).toBe("bfloat16");
      expect(relErr(values(y), groupedGemmRef(x, w, c.counts, d, b))).toBeLessThan(TOL.bfloat16);
      const g = await ops.groupedGemmBackward(tensor(dy, [d.R, d.N], "bfloat16"), X, W, C, { needDbias: true });
      const ref = groupedGemmBackwardRef(dy, x, w, c.counts, d);
      expect(g.dx!.dtype).toBe("bfloat16");
      expect(g.dw!.dtype).toBe("float32");
      expect(relErr(values(g.dx!), ref.dx)).toBeLessThan(TOL.bfloat16);
      expect(relErr(values(g.dw!), ref.dw)).toBeLessThan(TOL.bfloat16);
      expect(relErr(values(g.dbias!), ref.dbias)).toBeLessThan(TOL.bfloat16);
    }),
  );

  test(
    "float16 inputs give float16 outputs within tolerance",
    scoped(async () => {
      const c = cases[0];
      const { d, x, w } = data(c, 55);
      const y = await ops.groupedGemm(
        tensor(x, [d.R, d.K], "float16"),
        tensor(w, [d.L, d.K, d.N], "float16"),
        intTensor(c.counts, [d.L]),
      );
      expect(y.dtype).toBe("float16");
      expect(relErr(values(y), groupedGemmRef(x, w, c.counts, d))).toBeLessThan(TOL.float16);
    }),
  );

  test(
    "repeated runs are bitwise identical",
    scoped(async () => {
      const counts = [300, 0, 212, 500];
      const R = 1012;
      const [K, N] = [256, 192];
      const X = tensor(normal(R * K, 60), [R, K]);
      const W = tensor(normal(4 * K * N, 61), [4, K, N]);
      const B = tensor(normal(4 * N, 62), [4, N]);
      const DY = tensor(normal(R * N, 63), [R, N]);
      const C = intTensor(counts, [4]);
      const a = await ops.groupedGemm(X, W, C, { bias: B });
      const b = await ops.groupedGemm(X, W, C, { bias: B });
      expect(sameBits(a, b)).toBe(true);
      const ga = await ops.groupedGemmBackward(DY, X, W, C, { needDbias: true });
      const gb = await ops.groupedGemmBackward(DY, X, W, C, { needDbias: true });
      expect(sameBits(ga.dx!, gb.dx!)).toBe(true);
      expect(sameBits(ga.dw!, gb.dw!)).toBe(true);
      expect(sameBits(ga.dbias!, gb.dbias!)).toBe(true);
    }),
  );

  test(
    "bad input gets typed errors",
    scoped(async () => {
      const X = tensor(normal(6 * 4, 1), [6, 4]);
      const W = tensor(normal(2 * 4 * 3, 2), [2, 4, 3]);
      const C = intTensor([2, 4], [2]);
      const DY = tensor(normal(6 * 3, 3), [6, 3]);
      const gg = ops.groupedGemm;
      await expect(gg(X, tensor(normal(24, 2), [2, 3, 4]), C)).rejects.toMatchObject({
        code: "ERR_MOE_SHAPE",
        message: expect.stringMatching(/expected w of shape \[L, K, N\].*received \[2, 3, 4\]/),
      });
      await expect(gg(tensor(normal(24, 1), [24]), W, C)).rejects.toMatchObject({ code: "ERR_MOE_SHAPE" });
      await expect(gg(X, W, intTensor([6], [1]))).rejects.toMatchObject({
        code: "ERR_MOE_SHAPE",
        message: expect.stringMatching(/rowsPerExpert/),
      });
      await expect(gg(X, W, C, { bias: tensor(normal(3, 1), [1, 3]) })).rejects.toMatchObject({
        code: "ERR_MOE_SHAPE",
        message: expect.stringMatching(/bias/),
      });
      await expect(gg(X, W, tensor([2, 4], [2]))).rejects.toMatchObject({
        code: "ERR_MOE_DTYPE",
        message: expect.stringMatching(/rowsPerExpert.*int32/),
      });
      await expect(gg(Tensor.from(new Int32Array(24), [6, 4]), W, C)).rejects.toMatchObject({ code: "ERR_MOE_DTYPE" });
      await expect(gg(X, W, intTensor([-1, 7], [2]))).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(/expert 0 has -1/),
      });
      await expect(gg(X, W, intTensor([2, 3], [2]))).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(/sum to the rows of x \(6\) but they sum to 5/),
      });
      await expect(gg(X, W, intTensor([2, 2 ** 31 - 1], [2]))).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      const bw = ops.groupedGemmBackward;
      await expect(bw(tensor(normal(12, 3), [6, 2]), X, W, C)).rejects.toMatchObject({
        code: "ERR_MOE_SHAPE",
        message: expect.stringMatching(/dy/),
      });
      await expect(bw(DY, X, W, intTensor([1, 1], [2]))).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      await expect(bw(DY, X, W, C, { needDx: 1 as unknown as boolean })).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
      });
      const gone = tensor(normal(6 * 4, 1), [6, 4]);
      gone.dispose();
      await expect(gg(gone, W, C)).rejects.toMatchObject({ code: "ERR_MOE_DISPOSED" });
      await expect(gg(X, "w" as unknown as Tensor, C)).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      // The op still works after the failures.
      expect((await gg(X, W, C)).shape).toEqual([6, 3]);
    }),
  );

  test(
    "no tensors leak across 1,000 calls (and 100 rejected ones)",
    scoped(async () => {
      const X = tensor(normal(10 * 8, 1), [10, 8]);
      const W = tensor(normal(3 * 8 * 4, 2), [3, 8, 4]);
      const B = tensor(normal(3 * 4, 3), [3, 4]);
      const C = intTensor([4, 0, 6], [3]);
      const bad = intTensor([1, 1, 1], [3]);
      const leaks = await leakCheck();
      for (let i = 0; i < 1000; i++) {
        const y = await ops.groupedGemm(X, W, C, { bias: B });
        const g = await ops.groupedGemmBackward(y, X, W, C, { needDbias: true });
        y.dispose();
        g.dx!.dispose();
        g.dw!.dispose();
        g.dbias!.dispose();
      }
      for (let i = 0; i < 100; i++)
        await expect(ops.groupedGemm(X, W, bad)).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
    }),
  );
});

describe("groupedGemmBackward into a gradient buffer (dwInto, accumulate)", () => {
  test.each(cases)(
    "dW written over garbage equals the fresh dW bit for bit; accumulate adds it to what was there: $name",
    scoped(async (c) => {
      const { d, x, w, dy } = data(c, 30);
      const args = [
        tensor(dy, [d.R, d.N]),
        tensor(x, [d.R, d.K]),
        tensor(w, [d.L, d.K, d.N]),
        intTensor(c.counts, [d.L]),
      ] as const;
      const fresh = await ops.groupedGemmBackward(...args, { needDx: false });
      const old = f32(normal(d.L * d.K * d.N, 31));
      const into = tensor(old, [d.L, d.K, d.N]);
      const over = await ops.groupedGemmBackward(...args, { needDx: false, dwInto: into });
      expect(sameBits(over.dw!, fresh.dw!)).toBe(true);
      expect(sameBits(into, fresh.dw!)).toBe(true);

      const acc = tensor(old, [d.L, d.K, d.N]);
      const g = await ops.groupedGemmBackward(...args, { needDx: false, dwInto: acc, accumulate: true });
      const ref = groupedGemmBackwardRef(dy, x, w, c.counts, d).dw.map((v, i) => v + old[i]);
      expect(relErr(values(g.dw!), ref)).toBeLessThan(TOL.float32);
      // An expert with no rows leaves its slice exactly as it was.
      const got = values(acc);
      c.counts.forEach((n, e) => {
        if (n > 0) return;
        const s = e * d.K * d.N;
        expect(Array.from(got.subarray(s, s + d.K * d.N))).toEqual(Array.from(old.subarray(s, s + d.K * d.N)));
      });
    }),
  );

  test(
    "a dwInto of the wrong shape or dtype, or accumulate without one, is refused",
    scoped(async () => {
      const c = cases[0];
      const { d, x, w, dy } = data(c, 40);
      const args = [
        tensor(dy, [d.R, d.N]),
        tensor(x, [d.R, d.K]),
        tensor(w, [d.L, d.K, d.N]),
        intTensor(c.counts, [d.L]),
      ] as const;
      await expect(
        ops.groupedGemmBackward(...args, { dwInto: Tensor.zeros([d.L, d.K, d.N + 1]) }),
      ).rejects.toMatchObject({ code: "ERR_MOE_SHAPE" });
      await expect(
        ops.groupedGemmBackward(...args, { dwInto: Tensor.zeros([d.L, d.K, d.N], { dtype: "bfloat16" }) }),
      ).rejects.toMatchObject({ code: "ERR_MOE_DTYPE" });
      await expect(ops.groupedGemmBackward(...args, { accumulate: true })).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
      });
    }),
  );
});
