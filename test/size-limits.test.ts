/**
 * Sizes computed from shapes and options are checked where they enter native
 * code: a shape whose element or byte count passes 2^53 - 1, or an op whose
 * output size (a product of dimensions of different inputs, or of options)
 * does, is refused with a typed error naming the limit, in this process and
 * without a crash. Each refused case sits next to one just inside the limit.
 */
import { MoEError, Tensor, ops } from "../lib";
import { reshape } from "../lib/ops/view";

// lib refuses a dimension past 2^53 - 1 itself; the core refuses a product past it
const LIMIT = /2\^53 ?- ?1/;

function refuses(fn: () => unknown, code: string, message: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(MoEError);
  expect((caught as MoEError).code).toBe(code);
  expect((caught as MoEError).message).toMatch(message);
}

async function rejects(p: Promise<unknown>, code: string, message: RegExp): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(MoEError);
  expect((e as MoEError).code).toBe(code);
  expect((e as MoEError).message).toMatch(message);
}

describe("tensor creation", () => {
  test.each([
    ["[2^62, 4]", [2 ** 62, 4]],
    ["[2^31, 2^31, 4]", [2 ** 31, 2 ** 31, 4]],
    ["[2^53, 1]", [2 ** 53, 1]],
    ["[2^27, 2^27]", [2 ** 27, 2 ** 27]],
    ["[2^30, 2^30, 0, 2^30] (zero dimensions do not hide the others)", [2 ** 30, 2 ** 30, 0, 2 ** 30]],
  ])("a shape of more than 2^53-1 elements is refused: %s", (_name, shape) => {
    for (const make of [Tensor.zeros, Tensor.empty]) refuses(() => make(shape), "ERR_MOE_SHAPE", LIMIT);
  });

  test("the message shows the shape received", () => {
    refuses(() => Tensor.zeros([2 ** 31, 2 ** 31, 4]), "ERR_MOE_SHAPE", /\[2147483648, 2147483648, 4\]/);
    refuses(() => Tensor.zeros([2 ** 62, 4]), "ERR_MOE_SHAPE", new RegExp(String(2 ** 62)));
  });

  test("a count within 2^53-1 whose bytes are not is refused, naming the byte limit", () => {
    // 2^52 elements: a legal count, but 2^54 bytes of float32 (2^53 of bfloat16: one past the limit).
    refuses(() => Tensor.empty([2 ** 26, 2 ** 26]), "ERR_MOE_SHAPE", /at most 2\^53-1 bytes/);
    refuses(() => Tensor.empty([2 ** 26, 2 ** 26], { dtype: "bfloat16" }), "ERR_MOE_SHAPE", /bytes/);
  });

  test("shapes at the edge: zero-element tensors with large dimensions are legal", () => {
    const t = Tensor.zeros([2 ** 53 - 1, 0]);
    expect(t.shape).toEqual([2 ** 53 - 1, 0]);
    expect(t.numel).toBe(0);
    t.dispose();
    const from = Tensor.from(new Float32Array(0), [0, 2 ** 40]);
    expect(from.shape).toEqual([0, 2 ** 40]);
    from.dispose();
  });

  test("data for a refused shape is refused the same way", () => {
    refuses(() => Tensor.from(new Float32Array(4), [2 ** 62, 4]), "ERR_MOE_SHAPE", LIMIT);
  });

  test("reshape refuses a shape past the limit even when its element count wraps to the tensor's", () => {
    // 2^32 · 2^32 wraps to 0 in 64 bits: the element count of a [0, 4] tensor.
    const t = Tensor.zeros([0, 4]);
    refuses(() => reshape(t, [2 ** 32, 2 ** 32, 0]), "ERR_MOE_SHAPE", LIMIT);
    expect(reshape(t, [2 ** 40, 0]).shape).toEqual([2 ** 40, 0]);
    t.dispose();
  });
});

describe("op outputs sized from several inputs", () => {
  // Zero-element inputs whose dimensions multiply past 2^53-1 in the output.
  const big = 2 ** 30;

  test("unpermute and permuteBackward: y [tokens, dModel]", async () => {
    const rows = Tensor.zeros([0, big]);
    const pairToRow = Tensor.zeros([big, 0], { dtype: "int32" });
    const weights = Tensor.zeros([big, 0]);
    await rejects(ops.unpermute(rows, pairToRow, weights), "ERR_MOE_VALUE", /unpermute: .*at most 2\^53-1/);
    await rejects(ops.permuteBackward(rows, pairToRow), "ERR_MOE_VALUE", /permuteBackward: .*at most 2\^53-1/);
    // The same ops a step inside the limit: [2^30, 0] outputs.
    const narrow = Tensor.zeros([0, 0]);
    expect((await ops.unpermute(narrow, pairToRow, weights)).shape).toEqual([big, 0]);
    expect((await ops.permuteBackward(narrow, pairToRow)).shape).toEqual([big, 0]);
  });

  test("gate: logits [tokens, numExperts], and the BLAS's int dimensions", async () => {
    const x = Tensor.zeros([big, 0]);
    const wg = Tensor.zeros([0, big]);
    await rejects(ops.gate(x, wg), "ERR_MOE_VALUE", /gate: expected logits .*at most 2\^53-1/);
    const wide = Tensor.zeros([1, 0]);
    const wgWide = Tensor.zeros([0, 2 ** 31]);
    await rejects(ops.gate(wide, wgWide), "ERR_MOE_SHAPE", /gate: expected numExperts in \[0, 2147483647\]/);
  });

  test("groupedGemm: y [R, N]", async () => {
    const x = Tensor.zeros([big, 0]);
    const w = Tensor.zeros([1, 0, big]);
    const counts = Tensor.from(new Int32Array([big]), [1]);
    await rejects(ops.groupedGemm(x, w, counts), "ERR_MOE_VALUE", /groupedGemm: expected y .*at most 2\^53-1/);
  });

  test("groupedGemm: int64 counts whose sum passes 2^63-1 are reported without wrapping", async () => {
    const x = Tensor.zeros([1, 2]);
    const w = Tensor.zeros([3, 2, 2]);
    const counts = Tensor.from(new BigInt64Array([2n ** 62n, 2n ** 62n, 2n ** 62n]), [3]);
    await rejects(ops.groupedGemm(x, w, counts), "ERR_MOE_VALUE", /sum to more than 2\^63-1/);
    const fine = Tensor.from(new BigInt64Array([1n, 0n, 0n]), [3]);
    expect((await ops.groupedGemm(x, w, fine)).shape).toEqual([1, 2]);
  });

  test("chunkTranspose: counts [0, 2^53-1] are no chunks, done at once (not 2^53 empty loop turns)", async () => {
    const x = Tensor.zeros([0, 4]);
    const counts = Tensor.zeros([0, 2 ** 53 - 1], { dtype: "int32" });
    const started = Date.now();
    expect((await ops.chunkTranspose(x, counts)).shape).toEqual([0, 4]);
    expect(Date.now() - started).toBeLessThan(5000);
  });

  test("permute: numExperts · capacity of padded rows", async () => {
    const x = Tensor.zeros([4, 2]);
    const indices = Tensor.from(new Int32Array([0, 1, 2, 3]), [4, 1]);
    const weights = Tensor.zeros([4, 1]);
    const options = { numExperts: 2 ** 20, capacityFactor: 2 ** 30, padToCapacity: true };
    await rejects(ops.permute(x, indices, weights, options), "ERR_MOE_VALUE", /2147483647/);
  });
});
