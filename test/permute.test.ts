import { Tensor, ops } from "../lib";
import { native } from "../lib/ops/common";
import {
  PermuteRefOptions,
  capacityRef,
  permuteBackwardRef,
  permuteRef,
  unpermuteBackwardRef,
  unpermuteRef,
} from "./reference/permute";
import { f32, intTensor, normal, relErr, rng, sameBits, tensor, uniform, values, TOL, leakCheck } from "./util";

/** Top-k expert ids per token, distinct within a token, skewed toward low ids so that some experts overflow. */
function routeIndices(t: number, k: number, e: number, seed: number, skew = 2): Int32Array {
  const r = rng(seed);
  const out = new Int32Array(t * k);
  for (let tt = 0; tt < t; tt++) {
    const used = new Set<number>();
    for (let j = 0; j < k; j++) {
      let ex = Math.floor(e * Math.pow(r(), skew));
      for (let tries = 0; used.has(ex) && tries < 50; tries++) ex = Math.floor(e * Math.pow(r(), skew));
      while (used.has(ex)) ex = (ex + 1) % e;
      used.add(ex);
      out[tt * k + j] = ex;
    }
  }
  return out;
}

const ints = (t: Tensor): number[] => Array.from(t.toArray() as Int32Array);

interface Case {
  x: Float64Array;
  idx: Int32Array;
  w: Float64Array;
  X: Tensor;
  I: Tensor;
  W: Tensor;
}

function makeCase(
  t: number,
  d: number,
  k: number,
  e: number,
  seed: number,
  dtype: "float32" | "bfloat16" = "float32",
): Case {
  const X = tensor(normal(t * d, seed), [t, d], dtype);
  const x = values(X); // exactly what the tensor holds (bf16-rounded when bf16)
  const idx = routeIndices(t, k, e, seed + 1);
  const w = f32(uniform(t * k, seed + 2, 0, 1));
  return { x, idx, w, X, I: intTensor(idx, [t, k]), W: tensor(w, [t, k]) };
}

/** permute against the reference: every output exactly (rows are copies), then both backward ops and unpermute. */
async function checkAgainstReference(
  t: number,
  d: number,
  k: number,
  e: number,
  opts: PermuteRefOptions,
  seed: number,
) {
  const c = makeCase(t, d, k, e, seed);
  const ref = permuteRef(c.x, c.idx, c.w, t, d, k, opts);
  const p = await ops.permute(c.X, c.I, c.W, opts);
  expect(p.capacity).toBe(ref.capacity);
  expect(p.dropped).toBe(ref.dropped);
  expect(p.rows.shape).toEqual([ref.numRows, d]);
  expect(p.rows.dtype).toBe("float32");
  expect(ints(p.rowsPerExpert)).toEqual(ref.rowsPerExpert);
  expect(ints(p.pairToRow)).toEqual(ref.pairToRow);
  expect(ints(p.rowToPair)).toEqual(ref.rowToPair);
  expect(Array.from(values(p.rows))).toEqual(Array.from(ref.rows));

  const R = ref.numRows;
  const dRows = f32(normal(R * d, seed + 3));
  const dx = await ops.permuteBackward(tensor(dRows, [R, d]), p.pairToRow);
  expect(relErr(values(dx), permuteBackwardRef(dRows, ref.pairToRow, t, k, d))).toBeLessThan(TOL.float32);

  const y = await ops.unpermute(p.rows, p.pairToRow, c.W);
  expect(y.shape).toEqual([t, d]);
  expect(relErr(values(y), unpermuteRef(ref.rows, ref.pairToRow, c.w, t, k, d))).toBeLessThan(TOL.float32);

  const dy = f32(normal(t * d, seed + 4));
  const g = await ops.unpermuteBackward(tensor(dy, [t, d]), p.rows, p.pairToRow, c.W);
  const gr = unpermuteBackwardRef(dy, ref.rows, ref.pairToRow, c.w, t, k, d, R);
  expect(relErr(values(g.dRows), gr.dRows)).toBeLessThan(TOL.float32);
  expect(relErr(values(g.dWeights), gr.dWeights)).toBeLessThan(TOL.float32);
  return { p, ref };
}

describe("permute / unpermute (expert-contiguous rows and back)", () => {
  // [tokens, dModel, topK, numExperts]; the last has k = E.
  const shapes: Array<[number, number, number, number]> = [
    [1, 4, 1, 1],
    [5, 3, 2, 4],
    [64, 16, 2, 8],
    [150, 24, 4, 16],
    [97, 8, 8, 8],
  ];
  const modes: Array<[string, Omit<PermuteRefOptions, "numExperts">]> = [
    ["dropless", {}],
    ["capacity 1.0, probs", { capacityFactor: 1.0 }],
    ["capacity 0.5, position", { capacityFactor: 0.5, dropPolicy: "position" }],
    ["capacity 1.25, probs, padded", { capacityFactor: 1.25, dropPolicy: "probs", padToCapacity: true }],
    ["capacity 0.75, position, padded", { capacityFactor: 0.75, dropPolicy: "position", padToCapacity: true }],
  ];
  const cases = shapes.flatMap((s) => modes.map(([name, o]) => [name, ...s, o] as const));

  test.each(cases)("%s matches the float64 reference at T=%i D=%i k=%i E=%i", async (_name, t, d, k, e, o) => {
    await checkAgainstReference(t, d, k, e, { ...o, numExperts: e }, t * 31 + k);
  });

  test("capacity drops happen in the skewed cases (the tests above exercise dropping)", async () => {
    const { p } = await checkAgainstReference(150, 4, 4, 16, { numExperts: 16, capacityFactor: 1.0 }, 3);
    expect(p.dropped).toBeGreaterThan(0);
    expect(p.capacity).toBe(capacityRef(150, 4, 16, 1.0));
  });

  test("an expert that no token chose gets zero rows (and C zero rows when padded)", async () => {
    const [t, d, k, e] = [12, 5, 2, 4];
    const idx = Int32Array.from({ length: t * k }, (_, i) => [0, 1, 3][(i * 7) % 3]);
    const x = f32(normal(t * d, 9));
    const w = f32(uniform(t * k, 10, 0, 1));
    for (const o of [
      { numExperts: e },
      { numExperts: e, capacityFactor: 1.0, padToCapacity: true },
    ] as PermuteRefOptions[]) {
      const p = await ops.permute(tensor(x, [t, d]), intTensor(idx, [t, k]), tensor(w, [t, k]), o);
      const ref = permuteRef(x, idx, w, t, d, k, o);
      expect(ints(p.rowsPerExpert)[2]).toBe(o.padToCapacity ? 6 : 0);
      expect(ints(p.rowsPerExpert)).toEqual(ref.rowsPerExpert);
      expect(ints(p.rowToPair)).toEqual(ref.rowToPair);
      expect(Array.from(values(p.rows))).toEqual(Array.from(ref.rows));
    }
  });

  test("all tokens to one expert: dropless keeps all; capacity keeps C and counts the drops", async () => {
    const [t, d, e] = [10, 3, 4];
    const x = f32(normal(t * d, 11));
    const X = tensor(x, [t, d]);
    const I = intTensor(new Int32Array(t).fill(2), [t, 1]);
    const W = tensor(f32(uniform(t, 12, 0, 1)), [t, 1]);
    const free = await ops.permute(X, I, W, { numExperts: e });
    expect(free.dropped).toBe(0);
    expect(free.capacity).toBe(-1);
    expect(ints(free.rowsPerExpert)).toEqual([0, 0, 10, 0]);
    expect(Array.from(values(free.rows))).toEqual(Array.from(x));

    const capped = await ops.permute(X, I, W, { numExperts: e, capacityFactor: 1.0, dropPolicy: "position" });
    expect(capped.capacity).toBe(3); // ceil(10 · 1 / 4)
    expect(capped.dropped).toBe(7);
    expect(ints(capped.rowToPair)).toEqual([0, 1, 2]);
    expect(ints(capped.pairToRow)).toEqual([0, 1, 2, -1, -1, -1, -1, -1, -1, -1]);

    const padded = await ops.permute(X, I, W, { numExperts: e, capacityFactor: 1.0, padToCapacity: true });
    expect(padded.dropped).toBe(7);
    expect(ints(padded.rowsPerExpert)).toEqual([3, 3, 3, 3]);
    expect(padded.rows.shape).toEqual([12, d]);
    const rt = ints(padded.rowToPair);
    expect(rt.filter((p) => p >= 0).length).toBe(3);
    expect(rt.slice(0, 6)).toEqual([-1, -1, -1, -1, -1, -1]);
    expect(rt.slice(9)).toEqual([-1, -1, -1]);
    const rows = values(padded.rows);
    for (const r of [0, 1, 2, 3, 4, 5, 9, 10, 11])
      expect(Array.from(rows.subarray(r * d, r * d + d))).toEqual([0, 0, 0]);
  });

  test("one token, and T = 0", async () => {
    await checkAgainstReference(1, 6, 3, 5, { numExperts: 5, capacityFactor: 1.0, padToCapacity: true }, 21);
    await checkAgainstReference(1, 6, 3, 5, { numExperts: 5 }, 22);

    const X = Tensor.zeros([0, 4]);
    const I = Tensor.zeros([0, 2], { dtype: "int32" });
    const W = Tensor.zeros([0, 2]);
    const p = await ops.permute(X, I, W, { numExperts: 3, capacityFactor: 1.5, padToCapacity: true });
    expect(p.capacity).toBe(0);
    expect(p.dropped).toBe(0);
    expect(p.rows.shape).toEqual([0, 4]);
    expect(ints(p.rowsPerExpert)).toEqual([0, 0, 0]);
    expect(p.pairToRow.shape).toEqual([0, 2]);
    expect(p.rowToPair.shape).toEqual([0]);
    const y = await ops.unpermute(p.rows, p.pairToRow, W);
    expect(y.shape).toEqual([0, 4]);
    const dx = await ops.permuteBackward(p.rows, p.pairToRow);
    expect(dx.shape).toEqual([0, 4]);
    const g = await ops.unpermuteBackward(y, p.rows, p.pairToRow, W);
    expect(g.dRows.shape).toEqual([0, 4]);
    expect(g.dWeights.shape).toEqual([0, 2]);
  });

  test("probs dropping breaks weight ties by lower token, then lower choice", async () => {
    // One expert, C = ceil(4 · 1 / 1 · 0.5) = 2: token 1 (0.7) wins, then token 0 over tokens 2 and 3 (all 0.5).
    const X = tensor([10, 11, 12, 13], [4, 1]);
    const a = await ops.permute(X, intTensor([0, 0, 0, 0], [4, 1]), tensor([0.5, 0.7, 0.5, 0.5], [4, 1]), {
      numExperts: 1,
      capacityFactor: 0.5,
    });
    expect(a.capacity).toBe(2);
    expect(a.dropped).toBe(2);
    expect(ints(a.pairToRow)).toEqual([0, 1, -1, -1]);
    expect(Array.from(values(a.rows))).toEqual([10, 11]);

    // Ties inside one token: pairs (0,0), (0,1), (1,0) weigh 0.3, (1,1) weighs 0.9; C = 2 keeps (0,0) and (1,1).
    const b = await ops.permute(
      tensor([1, 2], [2, 1]),
      intTensor([0, 0, 0, 0], [2, 2]),
      tensor([0.3, 0.3, 0.3, 0.9], [2, 2]),
      {
        numExperts: 1,
        capacityFactor: 0.5,
      },
    );
    expect(ints(b.pairToRow)).toEqual([0, -1, -1, 1]);
    expect(ints(b.rowToPair)).toEqual([0, 3]);
    expect(Array.from(values(b.rows))).toEqual([1, 2]);

    // Many ties over many experts, against the reference.
    const [t, d, k, e] = [200, 4, 2, 8];
    const idx = routeIndices(t, k, e, 31);
    const w = Float64Array.from(uniform(t * k, 32, 0, 1), (v) => Math.round(v * 4) / 4);
    const x = f32(normal(t * d, 33));
    const o: PermuteRefOptions = { numExperts: e, capacityFactor: 0.8 };
    const p = await ops.permute(tensor(x, [t, d]), intTensor(idx, [t, k]), tensor(w, [t, k]), o);
    const ref = permuteRef(x, idx, w, t, d, k, o);
    expect(ref.dropped).toBeGreaterThan(0);
    expect(ints(p.pairToRow)).toEqual(ref.pairToRow);
    expect(p.dropped).toBe(ref.dropped);
  });

  test("bfloat16 x: rows are exact copies of its bits; unpermute and backward within bf16 tolerance", async () => {
    const [t, d, k, e] = [80, 32, 2, 8];
    const c = makeCase(t, d, k, e, 41, "bfloat16");
    const o: PermuteRefOptions = { numExperts: e, capacityFactor: 1.25, padToCapacity: true };
    const p = await ops.permute(c.X, c.I, c.W, o);
    const ref = permuteRef(c.x, c.idx, c.w, t, d, k, o);
    expect(p.rows.dtype).toBe("bfloat16");
    expect(Array.from(values(p.rows))).toEqual(Array.from(ref.rows));
    const R = ref.numRows;

    const y = await ops.unpermute(p.rows, p.pairToRow, c.W);
    expect(y.dtype).toBe("bfloat16");
    expect(relErr(values(y), unpermuteRef(ref.rows, ref.pairToRow, c.w, t, k, d))).toBeLessThan(TOL.bfloat16);

    const dRows = normal(R * d, 42);
    const dx = await ops.permuteBackward(tensor(dRows, [R, d], "bfloat16"), p.pairToRow);
    expect(dx.dtype).toBe("bfloat16");
    expect(relErr(values(dx), permuteBackwardRef(dRows, ref.pairToRow, t, k, d))).toBeLessThan(TOL.bfloat16);

    const dy = normal(t * d, 43);
    const g = await ops.unpermuteBackward(tensor(dy, [t, d], "bfloat16"), p.rows, p.pairToRow, c.W);
    const gr = unpermuteBackwardRef(dy, ref.rows, ref.pairToRow, c.w, t, k, d, R);
    expect(g.dRows.dtype).toBe("bfloat16");
    expect(g.dWeights.dtype).toBe("float32");
    expect(relErr(values(g.dRows), gr.dRows)).toBeLessThan(TOL.bfloat16);
    expect(relErr(values(g.dWeights), gr.dWeights)).toBeLessThan(TOL.bfloat16);
  });

  test("backward of both ops matches finite differences of a scalar loss through the float64 reference", async () => {
    const [t, d, k, e] = [9, 3, 2, 3];
    const c = makeCase(t, d, k, e, 51);
    const o: PermuteRefOptions = { numExperts: e, capacityFactor: 0.8, padToCapacity: true };
    const ref = permuteRef(c.x, c.idx, c.w, t, d, k, o);
    expect(ref.dropped).toBeGreaterThan(0);
    const R = ref.numRows;
    const p = await ops.permute(c.X, c.I, c.W, o);
    const h = 1e-3;

    // permute: L(x) = Σ G ⊙ rows(x).
    const G = f32(normal(R * d, 52));
    const lossP = (x: Float64Array) => permuteRef(x, c.idx, c.w, t, d, k, o).rows.reduce((s, v, i) => s + v * G[i], 0);
    const fdX = c.x.map((_, i) => {
      const xp = Float64Array.from(c.x);
      const xm = Float64Array.from(c.x);
      xp[i] += h;
      xm[i] -= h;
      return (lossP(xp) - lossP(xm)) / (2 * h);
    });
    const dx = await ops.permuteBackward(tensor(G, [R, d]), p.pairToRow);
    expect(relErr(values(dx), fdX)).toBeLessThan(1e-5);

    // unpermute: L(rows, w) = Σ H ⊙ y(rows, w).
    const H = f32(normal(t * d, 53));
    const rows = values(p.rows);
    const lossU = (r: Float64Array, w: Float64Array) =>
      unpermuteRef(r, ref.pairToRow, w, t, k, d).reduce((s, v, i) => s + v * H[i], 0);
    const fd = (v: Float64Array, f: (u: Float64Array) => number) =>
      v.map((_, i) => {
        const vp = Float64Array.from(v);
        const vm = Float64Array.from(v);
        vp[i] += h;
        vm[i] -= h;
        return (f(vp) - f(vm)) / (2 * h);
      });
    const g = await ops.unpermuteBackward(tensor(H, [t, d]), p.rows, p.pairToRow, c.W);
    expect(
      relErr(
        values(g.dRows),
        fd(rows, (r) => lossU(r, c.w)),
      ),
    ).toBeLessThan(1e-5);
    expect(
      relErr(
        values(g.dWeights),
        fd(c.w, (w) => lossU(rows, w)),
      ),
    ).toBeLessThan(1e-5);
    // Padding rows get no gradient; dropped pairs get a zero weight gradient.
    const dr = values(g.dRows);
    ref.rowToPair.forEach((pair, r) => {
      if (pair < 0) for (let i = 0; i < d; i++) expect(dr[r * d + i]).toBe(0);
    });
    const dw = values(g.dWeights);
    ref.pairToRow.forEach((row, i) => {
      if (row < 0) expect(dw[i]).toBe(0);
    });
  });

  test("unpermuteBackward sums the gradient of a row read by several pairs", async () => {
    // A hand-made map where pairs (0,0) and (1,1) both read row 1.
    const rows = tensor([1, 2, 3, 4], [2, 2]);
    const p2r = intTensor([1, 0, -1, 1], [2, 2]);
    const w = tensor([0.5, 2, 3, 0.25], [2, 2]);
    const dy = tensor([1, -1, 4, 8], [2, 2]);
    const g = await ops.unpermuteBackward(dy, rows, p2r, w);
    const ref = unpermuteBackwardRef([1, -1, 4, 8], [1, 2, 3, 4], [1, 0, -1, 1], [0.5, 2, 3, 0.25], 2, 2, 2, 2);
    expect(Array.from(values(g.dRows))).toEqual(Array.from(ref.dRows));
    expect(Array.from(values(g.dWeights))).toEqual(Array.from(ref.dWeights));
  });

  test.each(["float32", "bfloat16"] as const)(
    "permute then unpermute with k = 1 and weights 1 returns %s x exactly",
    async (dtype) => {
      const [t, d, e] = [300, 40, 7];
      const X = tensor(normal(t * d, 61), [t, d], dtype);
      const I = intTensor(routeIndices(t, 1, e, 62), [t, 1]);
      const W = tensor(new Float64Array(t).fill(1), [t, 1]);
      const p = await ops.permute(X, I, W, { numExperts: e });
      const y = await ops.unpermute(p.rows, p.pairToRow, W);
      expect(sameBits(y, X)).toBe(true);
      const dx = await ops.permuteBackward(p.rows, p.pairToRow);
      expect(sameBits(dx, X)).toBe(true);
    },
  );

  test("repeated runs are bitwise identical", async () => {
    const [t, d, k, e] = [2048, 64, 4, 16];
    const c = makeCase(t, d, k, e, 71);
    const o = { numExperts: e, capacityFactor: 1.0 };
    const dy = tensor(normal(t * d, 72), [t, d]);
    const run = async () => {
      const p = await ops.permute(c.X, c.I, c.W, o);
      const y = await ops.unpermute(p.rows, p.pairToRow, c.W);
      const dx = await ops.permuteBackward(p.rows, p.pairToRow);
      const g = await ops.unpermuteBackward(dy, p.rows, p.pairToRow, c.W);
      return [p.rows, p.pairToRow, p.rowToPair, p.rowsPerExpert, y, dx, g.dRows, g.dWeights];
    };
    const a = await run();
    const b = await run();
    a.forEach((t, i) => expect(sameBits(t, b[i])).toBe(true));
  });

  test("no tensors leak across 1,000 calls", async () => {
    const [t, d, k, e] = [16, 8, 2, 4];
    const c = makeCase(t, d, k, e, 81);
    const dy = tensor(normal(t * d, 82), [t, d]);
    const badIndices = intTensor(new Int32Array(t * k).fill(9), [t, k]);
    const leaks = await leakCheck();
    for (let i = 0; i < 1000; i++) {
      const p = await ops.permute(c.X, c.I, c.W, { numExperts: e, capacityFactor: 1.0, padToCapacity: i % 2 === 0 });
      const y = await ops.unpermute(p.rows, p.pairToRow, c.W);
      const dx = await ops.permuteBackward(p.rows, p.pairToRow);
      const g = await ops.unpermuteBackward(dy, p.rows, p.pairToRow, c.W);
      for (const x of [p.rows, p.rowsPerExpert, p.pairToRow, p.rowToPair, y, dx, g.dRows, g.dWeights]) x.dispose();
    }
    // A task that fails on its data leaves nothing behind either.
    await expect(ops.permute(c.X, badIndices, c.W, { numExperts: e })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
    for (const x of [c.X, c.I, c.W, dy, badIndices]) x.dispose(); // referenced until here, so never collected mid-check
  });

  test("bad input gets typed errors", async () => {
    const [t, d, k, e] = [4, 3, 2, 4];
    const c = makeCase(t, d, k, e, 91);
    const o = { numExperts: e };
    const bad = (p: Promise<unknown>, code: string, message?: RegExp) =>
      expect(p).rejects.toMatchObject(message ? { code, message: expect.stringMatching(message) } : { code });

    // Expert ids out of range (found by the task).
    await bad(
      ops.permute(c.X, intTensor([0, 1, 2, 4, 0, 1, 2, 3], [t, k]), c.W, o),
      "ERR_MOE_VALUE",
      /indices in \[0, numExperts\) = \[0, 4\).*element 3 \(token 1, choice 1\) is 4/,
    );
    await bad(ops.permute(c.X, intTensor([0, 1, 2, -1, 0, 1, 2, 3], [t, k]), c.W, o), "ERR_MOE_VALUE");
    // Shapes and dtypes.
    await bad(
      ops.permute(c.X, intTensor(new Int32Array(6), [3, 2]), c.W, o),
      "ERR_MOE_SHAPE",
      /expected indices of shape \[tokens, topK\]/,
    );
    await bad(
      ops.permute(c.X, c.I, tensor(new Float64Array(12), [t, 3]), o),
      "ERR_MOE_SHAPE",
      /weights of shape \[tokens, topK\] = \[4, 2\]/,
    );
    await bad(ops.permute(c.X, intTensor(new Int32Array(0), [t, 0]), tensor([], [t, 0]), o), "ERR_MOE_SHAPE");
    await bad(ops.permute(tensor(new Float64Array(12), [12]), c.I, c.W, o), "ERR_MOE_SHAPE");
    await bad(ops.permute(c.X, tensor(new Float64Array(8), [t, k]), c.W, o), "ERR_MOE_DTYPE");
    await bad(ops.permute(c.X, c.I, tensor(new Float64Array(8), [t, k], "bfloat16"), o), "ERR_MOE_DTYPE");
    await bad(ops.permute(intTensor(new Int32Array(12), [t, d]), c.I, c.W, o), "ERR_MOE_DTYPE");
    // Options.
    await bad(ops.permute(c.X, c.I, c.W, { numExperts: 0 }), "ERR_MOE_VALUE", /numExperts/);
    await bad(ops.permute(c.X, c.I, c.W, { numExperts: 2.5 }), "ERR_MOE_VALUE");
    await bad(ops.permute(c.X, c.I, c.W, { numExperts: "4" as unknown as number }), "ERR_MOE_VALUE", /of type string/);
    await bad(ops.permute(c.X, c.I, c.W, undefined as unknown as { numExperts: number }), "ERR_MOE_VALUE");
    await bad(ops.permute(c.X, c.I, c.W, { numExperts: e, capacityFactor: 0 }), "ERR_MOE_VALUE", /capacityFactor/);
    await bad(ops.permute(c.X, c.I, c.W, { numExperts: e, capacityFactor: NaN }), "ERR_MOE_VALUE");
    await bad(
      ops.permute(c.X, c.I, c.W, { numExperts: e, capacityFactor: 1, dropPolicy: "tokens" as "probs" }),
      "ERR_MOE_VALUE",
      /dropPolicy/,
    );
    await bad(ops.permute(c.X, c.I, c.W, { numExperts: e, padToCapacity: true }), "ERR_MOE_VALUE", /padToCapacity/);
    await bad(
      ops.permute(c.X, c.I, c.W, { numExperts: e, capacityFactor: 1, padToCapacity: 1 as unknown as boolean }),
      "ERR_MOE_VALUE",
    );
    // A NaN weight when the probs policy must rank them.
    const wn = tensor([0.5, NaN, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [t, k]);
    await bad(ops.permute(c.X, c.I, wn, { numExperts: e, capacityFactor: 1 }), "ERR_MOE_NONFINITE");
    // Disposed and non-tensor arguments.
    const gone = tensor([1, 2], [1, 2]);
    gone.dispose();
    await bad(ops.permute(gone, c.I, c.W, o), "ERR_MOE_DISPOSED");
    await bad(ops.unpermute(gone, c.I, c.W), "ERR_MOE_DISPOSED");
    await bad(ops.permuteBackward(c.X, "map" as unknown as Tensor), "ERR_MOE_VALUE");

    // The row-map ops.
    const p = await ops.permute(c.X, c.I, c.W, o);
    const R = p.rows.shape[0];
    const outOfRange = intTensor(
      [0, 1, 2, R, 4, 5, 6, 7].map((v) => Math.min(v, R)),
      [t, k],
    );
    await bad(
      ops.unpermute(p.rows, outOfRange, c.W),
      "ERR_MOE_VALUE",
      new RegExp(`pairToRow entries in \\[-1, ${R}\\)`),
    );
    await bad(ops.permuteBackward(p.rows, intTensor([0, -2, 1, 2, 3, 4, 5, 6], [t, k])), "ERR_MOE_VALUE");
    await bad(ops.unpermuteBackward(c.X, p.rows, outOfRange, c.W), "ERR_MOE_VALUE");
    await bad(ops.unpermute(p.rows, p.pairToRow, tensor(new Float64Array(t * 3), [t, 3])), "ERR_MOE_SHAPE");
    await bad(ops.unpermute(p.rows, tensor(new Float64Array(8), [t, k]), c.W), "ERR_MOE_DTYPE");
    await bad(
      ops.unpermuteBackward(tensor(new Float64Array(t * 5), [t, 5]), p.rows, p.pairToRow, c.W),
      "ERR_MOE_SHAPE",
      /dy of shape \[tokens, dModel\]/,
    );
    await bad(
      ops.unpermuteBackward(tensor(new Float64Array(3 * d), [3, d]), p.rows, p.pairToRow, c.W),
      "ERR_MOE_SHAPE",
    );
    await bad(ops.permuteBackward(tensor(new Float64Array(R), [R]), p.pairToRow), "ERR_MOE_SHAPE");
  });

  test("the native core checks its options too (callers other than the TypeScript facade)", async () => {
    const c = makeCase(4, 3, 2, 4, 95);
    // Options of any shape, as a caller without the declaration's types could pass them.
    const n = native() as unknown as { permute(x: unknown, i: unknown, w: unknown, o: unknown): Promise<unknown> };
    const codeOf = (o: unknown): string | undefined => {
      try {
        void n.permute(c.X.handle, c.I.handle, c.W.handle, o);
      } catch (e) {
        return (e as { code?: string }).code;
      }
      return undefined;
    };
    expect(codeOf({ numExperts: 0, dropPolicy: "probs" })).toBe("ERR_MOE_VALUE");
    expect(codeOf({ numExperts: 4, capacityFactor: -1 })).toBe("ERR_MOE_VALUE");
    expect(codeOf({ numExperts: 4, padToCapacity: true })).toBe("ERR_MOE_VALUE");
    expect(codeOf({ numExperts: 4, dropPolicy: "random" })).toBe("ERR_MOE_VALUE");
    expect(codeOf({ numExperts: 1.5 })).toBe("ERR_MOE_VALUE");
    expect(codeOf({ numExperts: 4, capacityFactor: 1e300, padToCapacity: true })).toBe("ERR_MOE_VALUE");
  });
});
