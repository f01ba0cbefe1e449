/**
 * The small ops the MoE layer composes around the expert math: add and axpby,
 * sumSquares, fillRandom and jitter, chunkTranspose, expertBiasUpdate; each
 * against its float64 reference, with determinism, leak and bad-input checks.
 */
import { Tensor, ops, scope } from "../lib";
import { chunkTransposeRef } from "./reference/chunks";
import { expertBiasUpdateRef } from "./reference/expert-bias";
import { fillRandomRef, fnv1a, jitterNoiseRef } from "./reference/random";
import { f32, intTensor, leakCheck, normal, relErr, sameBits, tensor, values, TOL } from "./util";

const scoped =
  <A extends unknown[]>(fn: (...args: A) => Promise<void>) =>
  (...args: A): Promise<void> =>
    scope(() => fn(...args));

describe("add and axpby", () => {
  test.each([[[1]], [[7, 3]], [[4, 5, 6]], [[70000]]])(
    "add and axpby match float64 at %j",
    scoped(async (shape: number[]) => {
      const n = shape.reduce((a, b) => a * b, 1);
      const a = f32(normal(n, 1));
      const b = f32(normal(n, 2));
      const s = await ops.add(tensor(a, shape), tensor(b, shape));
      expect(s.shape).toEqual(shape);
      expect(
        relErr(
          values(s),
          a.map((v, i) => v + b[i]),
        ),
      ).toBeLessThan(TOL.float32);
      const y = tensor(a, shape);
      await ops.axpby(y, tensor(b, shape), { alpha: 0.5, beta: -3 });
      expect(
        relErr(
          values(y),
          a.map((v, i) => 0.5 * v - 3 * b[i]),
        ),
      ).toBeLessThan(TOL.float32);
      await ops.scaleInPlace(y, 2);
      expect(
        relErr(
          values(y),
          a.map((v, i) => v - 6 * b[i]),
        ),
      ).toBeLessThan(TOL.float32);
    }),
  );

  test(
    "alpha = 0 does not read y (NaN is overwritten), copyInto converts dtypes, zeroInPlace zeroes",
    scoped(async () => {
      const y = tensor([NaN, Infinity, 1], [3]);
      await ops.copyInto(y, tensor([1, 2, 3], [3], "bfloat16"));
      expect(Array.from(values(y))).toEqual([1, 2, 3]);
      await ops.zeroInPlace(y);
      expect(Array.from(values(y))).toEqual([0, 0, 0]);
      const h = tensor([1, 2], [2], "bfloat16");
      await ops.addInPlace(h, tensor([0.5, 0.25], [2]));
      expect(h.dtype).toBe("bfloat16");
      expect(Array.from(values(h))).toEqual([1.5, 2.25]);
    }),
  );

  test(
    "bfloat16 inputs give bfloat16 sums within bf16 tolerance",
    scoped(async () => {
      const a = normal(999, 3);
      const b = normal(999, 4);
      const s = await ops.add(tensor(a, [999], "bfloat16"), tensor(b, [999]));
      expect(s.dtype).toBe("bfloat16");
      expect(
        relErr(
          values(s),
          a.map((v, i) => v + b[i]),
        ),
      ).toBeLessThan(TOL.bfloat16);
    }),
  );

  test(
    "bad input gets typed errors",
    scoped(async () => {
      const a = tensor([1, 2], [2]);
      await expect(ops.add(a, tensor([1, 2, 3], [3]))).rejects.toMatchObject({ code: "ERR_MOE_SHAPE" });
      await expect(ops.add(a, intTensor([1, 2], [2]))).rejects.toMatchObject({ code: "ERR_MOE_DTYPE" });
      await expect(ops.axpby(a, null, { alpha: NaN })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      await expect(ops.axpby(a, a, { beta: "2" as unknown as number })).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
      });
      const d = tensor([1, 2], [2]);
      d.dispose();
      await expect(ops.addInPlace(a, d)).rejects.toMatchObject({ code: "ERR_MOE_DISPOSED" });
    }),
  );
});

describe("sumSquares", () => {
  test(
    "matches float64 over several tensors and dtypes, bitwise the same run after run",
    scoped(async () => {
      const parts = [normal(100000, 5), normal(17, 6), normal(3000, 7)].map(f32);
      const ts = [tensor(parts[0], [100, 1000]), tensor(parts[1], [17]), tensor(parts[2], [3000])];
      const want = parts.reduce((acc, p) => acc + p.reduce((s, v) => s + v * v, 0), 0);
      const got = await ops.sumSquares(ts);
      expect(got.shape).toEqual([]);
      expect(Math.abs(got.item() - want) / want).toBeLessThan(TOL.float32);
      expect(sameBits(got, await ops.sumSquares(ts))).toBe(true);
      expect((await ops.sumSquares([])).item()).toBe(0);
      const bf = normal(500, 8);
      expect(
        Math.abs(
          (await ops.sumSquares([tensor(bf, [500], "bfloat16")])).item() / bf.reduce((s, v) => s + v * v, 0) - 1,
        ),
      ).toBeLessThan(TOL.bfloat16);
      await expect(ops.sumSquares([intTensor([1], [1])])).rejects.toMatchObject({ code: "ERR_MOE_DTYPE" });
      await expect(ops.sumSquares("x" as unknown as Tensor[])).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    }),
  );
});

describe("fillRandom and jitter (SplitMix64 streams)", () => {
  test.each([
    ["normal", 0.5, 0.02, 4097, 0, 0],
    ["uniform", -0.1, 0.3, 1000, 0, 0],
    ["normal", 0, 1, 6 * 50, 50, 3],
    ["uniform", 0, 1, 8 * 16, 16, 123456],
  ] as const)(
    "%s(%d, %d), %i values, slices of %i from %i, match the reference",
    scoped(async (dist, a, b, n, sliceSize, firstSlice) => {
      const seed = 0x1234_5678_9abc;
      const key = fnv1a("experts.w1");
      const t = Tensor.empty([n]);
      const opts = dist === "normal" ? { mean: a, std: b } : { low: a, high: b };
      await ops.fillRandom(t, { seed, key, distribution: dist, ...opts, sliceSize, firstSlice });
      const want = f32(fillRandomRef(n, { seed, key, distribution: dist, a, b, sliceSize, firstSlice }));
      expect(relErr(values(t), want)).toBeLessThan(1e-6);
    }),
  );

  test("hashName is FNV-1a", () => {
    expect(ops.hashName("")).toBe(0x811c9dc5);
    expect(ops.hashName("a")).toBe(0xe40c292c);
    expect(ops.hashName("router.weight")).toBe(fnv1a("router.weight"));
  });

  test(
    "a tensor filled in slices equals the same slices of one filled whole (experts split over ranks)",
    scoped(async () => {
      const [L, per] = [8, 96];
      const whole = Tensor.empty([L, per]);
      await ops.fillRandom(whole, { seed: 7, key: 9, sliceSize: per });
      const all = values(whole);
      for (const split of [2, 4]) {
        for (let r = 0; r < split; r++) {
          const part = Tensor.empty([L / split, per]);
          await ops.fillRandom(part, { seed: 7, key: 9, sliceSize: per, firstSlice: (r * L) / split });
          expect(Array.from(values(part))).toEqual(
            Array.from(all.subarray((r * L * per) / split, ((r + 1) * L * per) / split)),
          );
        }
      }
    }),
  );

  test(
    "moments are right and streams differ by seed, key and slice",
    scoped(async () => {
      const n = 200000;
      const t = Tensor.empty([n]);
      await ops.fillRandom(t, { seed: 1, key: 2, std: 2 });
      const v = values(t);
      const mean = v.reduce((a, b) => a + b, 0) / n;
      const varc = v.reduce((a, b) => a + (b - mean) ** 2, 0) / n;
      expect(Math.abs(mean)).toBeLessThan(0.03);
      expect(Math.abs(Math.sqrt(varc) - 2)).toBeLessThan(0.02);
      const u = Tensor.empty([n]);
      await ops.fillRandom(u, { seed: 1, key: 2, distribution: "uniform", low: -1, high: 1 });
      const uv = values(u);
      expect(uv.reduce((a, b) => Math.min(a, b), 1)).toBeGreaterThanOrEqual(-1);
      expect(uv.reduce((a, b) => Math.max(a, b), -1)).toBeLessThan(1);
      expect(Math.abs(uv.reduce((a, b) => a + b * b, 0) / n - 1 / 3)).toBeLessThan(0.01);
      const other = Tensor.empty([n]);
      for (const o of [
        { seed: 2, key: 2 },
        { seed: 1, key: 3 },
        { seed: 1, key: 2, firstSlice: 1 },
      ]) {
        await ops.fillRandom(other, { ...o, std: 2 });
        expect(sameBits(other, t)).toBe(false);
      }
      await ops.fillRandom(other, { seed: 1, key: 2, std: 2 });
      expect(sameBits(other, t)).toBe(true);
    }),
  );

  test(
    "jitter multiplies by the stream's U(1 − ε, 1 + ε) noise and is its own backward",
    scoped(async () => {
      const [T, D] = [33, 20];
      const x = f32(normal(T * D, 3));
      const o = { eps: 0.01, seed: 5, key: fnv1a("router.jitter/0"), slice: 17 };
      const y = await ops.jitter(tensor(x, [T, D]), o);
      const u = jitterNoiseRef(T * D, 0.01, 5, o.key, 17);
      expect(
        relErr(
          values(y),
          x.map((v, i) => v * u[i]),
        ),
      ).toBeLessThan(TOL.float32);
      expect(Math.min(...u)).toBeGreaterThanOrEqual(0.99);
      expect(Math.max(...u)).toBeLessThanOrEqual(1.01);
      // Finite differences of L = Σ g ⊙ jitter(x): dL/dx = jitter(g).
      const g = f32(normal(T * D, 4));
      const dx = values(await ops.jitter(tensor(g, [T, D]), o));
      expect(
        relErr(
          dx,
          g.map((v, i) => v * u[i]),
        ),
      ).toBeLessThan(TOL.float32);
      expect(sameBits(y, await ops.jitter(tensor(x, [T, D]), o))).toBe(true);
      expect(sameBits(y, await ops.jitter(tensor(x, [T, D]), { ...o, slice: 18 }))).toBe(false);
      const z = await ops.jitter(tensor(x, [T, D]), { ...o, eps: 0 });
      expect(Array.from(values(z))).toEqual(Array.from(x));
    }),
  );

  test(
    "bad input gets typed errors",
    scoped(async () => {
      const t = Tensor.empty([10]);
      await expect(ops.fillRandom(t, { seed: -1 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      await expect(ops.fillRandom(t, { seed: 1, key: 2 ** 32 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      await expect(ops.fillRandom(t, { seed: 1, sliceSize: 3 })).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(/sliceSize/),
      });
      await expect(ops.fillRandom(t, { seed: 1, std: -1 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      await expect(ops.fillRandom(t, { seed: 1, distribution: "cauchy" as "normal" })).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
      });
      await expect(ops.fillRandom(intTensor([1], [1]), { seed: 1 })).rejects.toMatchObject({ code: "ERR_MOE_DTYPE" });
      await expect(ops.jitter(t, { eps: 1, seed: 1 })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      await expect(ops.jitter(intTensor([1], [1]), { eps: 0.1, seed: 1 })).rejects.toMatchObject({
        code: "ERR_MOE_DTYPE",
      });
    }),
  );
});

describe("chunkTranspose ([source][local expert] rows <-> [local expert][source])", () => {
  const cases: Array<[string, number[][], number]> = [
    [
      "2 sources x 3 experts",
      [
        [2, 0, 3],
        [1, 4, 0],
      ],
      5,
    ],
    [
      "4 x 2 with empty chunks",
      [
        [0, 0],
        [3, 1],
        [0, 2],
        [1, 0],
      ],
      3,
    ],
    ["1 x 4 (one source)", [[1, 2, 3, 4]], 2],
    [
      "all empty",
      [
        [0, 0],
        [0, 0],
      ],
      4,
    ],
  ];
  test.each(cases)(
    "%s matches the reference and its inverse restores the input",
    scoped(async (_n, counts, width) => {
      const R = counts.flat().reduce((a, b) => a + b, 0);
      const x = f32(normal(R * width, 9));
      const A = counts.length;
      const B = counts[0].length;
      const C = intTensor(counts.flat(), [A, B]);
      const y = await ops.chunkTranspose(tensor(x, [R, width]), C);
      expect(y.shape).toEqual([R, width]);
      expect(Array.from(values(y))).toEqual(Array.from(chunkTransposeRef(x, width, counts)));
      const ct = counts[0].map((_, b) => counts.map((row) => row[b]));
      const back = await ops.chunkTranspose(y, intTensor(ct.flat(), [B, A]));
      expect(Array.from(values(back))).toEqual(Array.from(x));
    }),
  );

  test(
    "bfloat16 and int32 rows move bit for bit",
    scoped(async () => {
      const x = tensor(normal(6 * 4, 1), [6, 4], "bfloat16");
      const y = await ops.chunkTranspose(x, intTensor([1, 2, 3, 0], [2, 2]));
      expect(y.dtype).toBe("bfloat16");
      const xb = x.toBits();
      const order = [0, 3, 4, 5, 1, 2];
      expect(Array.from(y.toBits())).toEqual(order.flatMap((r) => Array.from(xb.subarray(r * 4, r * 4 + 4))));
      const yi = await ops.chunkTranspose(intTensor([10, 11, 12], [3]), intTensor([1, 2], [2, 1]));
      expect(Array.from(yi.toInt32())).toEqual([10, 11, 12]);
    }),
  );

  test(
    "bad counts get typed errors",
    scoped(async () => {
      const x = tensor(normal(8, 1), [4, 2]);
      await expect(ops.chunkTranspose(x, intTensor([1, 1, 1, 0], [2, 2]))).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(/sum to the 4 rows.*sum to 3/),
      });
      await expect(ops.chunkTranspose(x, intTensor([5, -1, 0, 0], [2, 2]))).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(/counts\[0, 1\] is -1/),
      });
      await expect(ops.chunkTranspose(x, intTensor([4], [1]))).rejects.toMatchObject({ code: "ERR_MOE_SHAPE" });
      await expect(ops.chunkTranspose(x, tensor([4], [1, 1]))).rejects.toMatchObject({ code: "ERR_MOE_DTYPE" });
    }),
  );
});

describe("expertBiasUpdate (aux-loss-free balancing)", () => {
  test(
    "b += rate · sign(mean − load), zero where the load is the mean",
    scoped(async () => {
      const bias = [0.1, -0.2, 0, 0.3, 0.05];
      for (const load of [
        [10, 0, 5, 5, 5],
        [5, 5, 5, 5, 5],
        [0, 0, 0, 0, 25],
      ]) {
        const b = tensor(bias, [5]);
        await ops.expertBiasUpdate(b, intTensor(load, [5]), 1e-3);
        expect(relErr(values(b), expertBiasUpdateRef(f32(bias), load, 1e-3))).toBeLessThan(TOL.float32);
        const bf = tensor(bias, [5]);
        await ops.expertBiasUpdate(bf, tensor(load, [5]), 1e-3);
        expect(sameBits(b, bf)).toBe(true);
      }
    }),
  );

  test(
    "bad input gets typed errors",
    scoped(async () => {
      const b = tensor([0, 0], [2]);
      await expect(ops.expertBiasUpdate(b, intTensor([1, 2, 3], [3]), 0.1)).rejects.toMatchObject({
        code: "ERR_MOE_SHAPE",
      });
      await expect(ops.expertBiasUpdate(b, intTensor([-1, 2], [2]), 0.1)).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
      });
      await expect(ops.expertBiasUpdate(b, intTensor([1, 2], [2]), -0.1)).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
      });
      await expect(
        ops.expertBiasUpdate(tensor([0, 0], [2], "bfloat16"), intTensor([1, 2], [2]), 0.1),
      ).rejects.toMatchObject({ code: "ERR_MOE_DTYPE" });
    }),
  );
});

test("no tensors leak across 1,000 calls of each op", async () => {
  const x = tensor(normal(64, 1), [16, 4]);
  const c = intTensor([4, 4, 4, 4], [2, 2]);
  const b = Tensor.zeros([4]);
  const l = intTensor([1, 2, 3, 4], [4]);
  const leaks = await leakCheck();
  for (let i = 0; i < 1000; i++) {
    (await ops.add(x, x)).dispose();
    await ops.axpby(x, x, { alpha: 0.5, beta: 0.5 });
    (await ops.sumSquares([x, x])).dispose();
    await ops.fillRandom(b, { seed: i });
    (await ops.jitter(x, { eps: 0.1, seed: 1, slice: i })).dispose();
    (await ops.chunkTranspose(x, c)).dispose();
    await ops.expertBiasUpdate(b, l, 0.01);
  }
  expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
  for (const t of [x, c, b, l]) t.dispose();
});
