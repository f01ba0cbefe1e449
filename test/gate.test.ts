import { Tensor, ops } from "../lib";
import { gateRef, gateBackwardRef } from "./reference/gate";
import { f32, normal, relErr, tensor, values, TOL, sameBits, leakCheck } from "./util";

describe("gate (logits = x · Wg, float32 router)", () => {
  const shapes: Array<[number, number, number]> = [
    [1, 4, 2],
    [7, 16, 4],
    [64, 96, 8],
    [300, 128, 64],
  ];

  test.each(shapes)("forward and backward match float64 at T=%i D=%i E=%i", async (t, d, e) => {
    const x = f32(normal(t * d, 1));
    const wg = f32(normal(d * e, 2, 0.1));
    const dl = f32(normal(t * e, 3));
    const X = tensor(x, [t, d]);
    const W = tensor(wg, [d, e]);
    const logits = await ops.gate(X, W);
    expect(logits.shape).toEqual([t, e]);
    expect(logits.dtype).toBe("float32");
    expect(relErr(values(logits), gateRef(x, wg, t, d, e))).toBeLessThan(TOL.float32);
    const g = await ops.gateBackward(X, W, tensor(dl, [t, e]));
    const ref = gateBackwardRef(x, wg, dl, t, d, e);
    expect(relErr(values(g.dx), ref.dx)).toBeLessThan(TOL.float32);
    expect(relErr(values(g.dwg), ref.dwg)).toBeLessThan(TOL.float32);
  });

  test("bfloat16 activations give float32 logits within bf16 tolerance", async () => {
    const [t, d, e] = [33, 64, 8];
    const x = normal(t * d, 4);
    const wg = f32(normal(d * e, 5, 0.1));
    const logits = await ops.gate(tensor(x, [t, d], "bfloat16"), tensor(wg, [d, e]));
    expect(logits.dtype).toBe("float32");
    expect(relErr(values(logits), gateRef(x, wg, t, d, e))).toBeLessThan(TOL.bfloat16);
  });

  test("repeated runs are bitwise identical", async () => {
    const X = tensor(normal(512 * 256, 6), [512, 256]);
    const W = tensor(normal(256 * 64, 7), [256, 64]);
    const a = await ops.gate(X, W);
    const b = await ops.gate(X, W);
    expect(sameBits(a, b)).toBe(true);
  });

  test("bad input gets typed errors", async () => {
    const X = tensor(normal(8, 1), [2, 4]);
    const W = tensor(normal(12, 1), [3, 4]);
    await expect(ops.gate(X, W)).rejects.toMatchObject({
      code: "ERR_MOE_SHAPE",
      message: expect.stringMatching(/expected wg of shape \[dModel, numExperts\].*received \[3, 4\]/),
    });
    const Wi = Tensor.from(new Int32Array(8), [4, 2]);
    await expect(ops.gate(X, Wi)).rejects.toMatchObject({ code: "ERR_MOE_DTYPE" });
    const Xn = tensor([1, Infinity, 0, 0, 0, 0, 0, 0], [2, 4]);
    await expect(ops.gate(Xn, tensor(new Float32Array(8), [4, 2]))).rejects.toMatchObject({
      code: "ERR_MOE_NONFINITE",
    });
    const D = tensor(new Float32Array(8), [4, 2]);
    D.dispose();
    await expect(ops.gate(X, D)).rejects.toMatchObject({ code: "ERR_MOE_DISPOSED" });
    await expect(ops.gate(X, "w" as unknown as Tensor)).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
  });

  test("no tensors leak across 1,000 calls", async () => {
    const X = tensor(normal(16 * 8, 1), [16, 8]);
    const W = tensor(normal(8 * 4, 2), [8, 4]);
    const leaks = await leakCheck();
    for (let i = 0; i < 1000; i++) {
      const l = await ops.gate(X, W);
      const g = await ops.gateBackward(X, W, l);
      l.dispose();
      g.dx.dispose();
      g.dwg.dispose();
    }
    expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
    X.dispose(); // the inputs stay referenced, so the collector cannot free them mid-check
    W.dispose();
  });
});
