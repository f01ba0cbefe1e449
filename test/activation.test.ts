import { Tensor, ops, scope } from "../lib";
import { loadNative } from "../lib/native";
import { activationRef, activationBackwardRef, isGatedKind, Kind } from "./reference/activation";
import { f32, normal, relErr, relErrNaN, sameBits, tensor, values, TOL, leakCheck } from "./util";

/** Runs a test body in a scope: every tensor it makes is disposed when it ends, so no test leaves garbage behind. */
const scoped =
  <A extends unknown[]>(fn: (...args: A) => Promise<void>) =>
  (...args: A): Promise<void> =>
    scope(() => fn(...args));

const KINDS: Kind[] = ["relu", "gelu", "silu", "swiglu", "geglu"];
const SHAPES: number[][] = [
  [1, 2],
  [7, 10],
  [33, 64],
  [300, 258],
  [2, 3, 8],
];

function outShape(shape: number[], kind: Kind): number[] {
  return isGatedKind(kind) ? [...shape.slice(0, -1), shape[shape.length - 1] / 2] : shape;
}

describe("activation (relu, gelu erf form, silu; swiglu and geglu gate-then-up)", () => {
  const grid = KINDS.flatMap((k) => SHAPES.map((s) => [k, s] as [Kind, number[]]));

  test.each(grid)(
    "%s forward and backward match float64 at %j",
    scoped(async (kind, shape) => {
      const n = shape.reduce((a, b) => a * b, 1);
      const width = shape[shape.length - 1];
      const x = f32(normal(n, 1, 2));
      const X = tensor(x, shape);
      const h = await ops.activation(X, kind);
      const hs = outShape(shape, kind);
      expect(h.shape).toEqual(hs);
      expect(h.dtype).toBe("float32");
      expect(relErr(values(h), activationRef(x, width, kind))).toBeLessThan(TOL.float32);
      const dh = f32(normal(h.numel, 2));
      const dx = await ops.activationBackward(tensor(dh, hs), X, kind);
      expect(dx.shape).toEqual(shape);
      expect(relErr(values(dx), activationBackwardRef(dh, x, width, kind))).toBeLessThan(TOL.float32);
      // Written over dh (reuseDh): the same values bit for bit.
      const over = await ops.activationBackward(tensor(dh, hs), X, kind, { reuseDh: true });
      expect(sameBits(over, dx)).toBe(true);
    }),
  );

  test.each(KINDS)(
    "%s matches the formula at known points",
    scoped(async (kind) => {
      // x = 0, ±1, ±3, ±12, 0.5 (values from Python's math.erf / math.tanh); gated kinds use up = 1 so h = act(gate).
      const pts = [0, 1, -1, 3, -3, 12, -12, 0.5];
      const want: Record<Kind, number[]> = {
        relu: [0, 1, 0, 3, 0, 12, 0, 0.5],
        gelu: [
          0, 0.8413447460685429, -0.15865525393145707, 2.99595030590511, -0.00404969409489031, 12, -0,
          0.34573123063700656,
        ],
        silu: [
          0, 0.7310585786300049, -0.2689414213699951, 2.8577223804672998, -0.14227761953270035, 11.999926269904773,
          -7.373009522657661e-5, 0.3112296656009273,
        ],
        swiglu: [],
        geglu: [
          0, 0.8411919906082768, -0.15880800939172324, 2.996362607918227, -0.0036373920817729943, 12, -0,
          0.34571400982514394,
        ],
      };
      want.swiglu = want.silu;
      const gated = isGatedKind(kind);
      const x = gated ? [...pts, ...pts.map(() => 1)] : pts;
      const h = values(await ops.activation(tensor(x, [1, x.length]), kind));
      h.forEach((v, i) =>
        expect(Math.abs(v - want[kind][i])).toBeLessThan(1e-6 * Math.max(1, Math.abs(want[kind][i]))),
      );
    }),
  );

  test.each(KINDS)(
    "%s backward matches finite differences of a scalar loss through the float64 reference",
    scoped(async (kind) => {
      const shape = [5, 12];
      const x = f32(normal(60, 7, 1.5));
      const c = f32(normal(isGatedKind(kind) ? 30 : 60, 8)); // loss = Σ c ⊙ h
      const loss = (p: ArrayLike<number>) => activationRef(p, 12, kind).reduce((s, v, i) => s + v * c[i], 0);
      const fd = Float64Array.from(x, (_, i) => {
        const hstep = 1e-6;
        const p = Float64Array.from(x);
        p[i] += hstep;
        const up = loss(p);
        p[i] -= 2 * hstep;
        return (up - loss(p)) / (2 * hstep);
      });
      const dx = await ops.activationBackward(tensor(c, outShape(shape, kind)), tensor(x, shape), kind);
      expect(relErr(values(dx), fd)).toBeLessThan(1e-5);
    }),
  );

  test.each(KINDS)(
    "%s in bfloat16 stays bfloat16 within bf16 tolerance",
    scoped(async (kind) => {
      const shape = [64, 96];
      const x = normal(64 * 96, 9);
      const X = tensor(x, shape, "bfloat16");
      const xb = values(X); // the bf16-rounded input the op sees
      const h = await ops.activation(X, kind);
      expect(h.dtype).toBe("bfloat16");
      expect(relErr(values(h), activationRef(xb, 96, kind))).toBeLessThan(TOL.bfloat16);
      const dh = normal(h.numel, 10);
      const DH = tensor(dh, h.shape, "bfloat16");
      const dx = await ops.activationBackward(DH, X, kind);
      expect(dx.dtype).toBe("bfloat16");
      expect(relErr(values(dx), activationBackwardRef(values(DH), xb, 96, kind))).toBeLessThan(TOL.bfloat16);
      // Written over dh where the kind allows: the same bits.
      const over = await ops.activationBackward(tensor(dh, h.shape, "bfloat16"), X, kind, { reuseDh: true });
      expect(sameBits(over, dx)).toBe(true);
    }),
  );

  test.each(KINDS)(
    "%s propagates NaN forward and backward, as the float64 reference does",
    scoped(async (kind) => {
      // NaN in the gate half, the up half, at 0 and among negatives; dh NaN where x is negative or 0 too.
      const width = 8;
      const x = f32(normal(4 * width, 21, 2));
      for (const i of [0, 5, 9, 14, 18]) x[i] = NaN;
      x[1] = 0;
      x[2] = -3;
      const X = tensor(x, [4, width]);
      const h = await ops.activation(X, kind);
      const ref = activationRef(x, width, kind);
      expect(ref.some(Number.isNaN)).toBe(true);
      expect(relErrNaN(values(h), ref)).toBeLessThan(TOL.float32);
      const dh = f32(normal(h.numel, 22));
      dh[1] = NaN;
      dh[2] = NaN;
      const dx = await ops.activationBackward(tensor(dh, h.shape), X, kind);
      expect(relErrNaN(values(dx), activationBackwardRef(dh, x, width, kind))).toBeLessThan(TOL.float32);
    }),
  );

  test(
    "relu keeps NaN as NaN: forward NaN, and a NaN input gives a NaN gradient",
    scoped(async () => {
      const X = tensor([NaN, -1, 0, 2], [4]);
      expect(Array.from(values(await ops.activation(X, "relu")))).toEqual([NaN, 0, 0, 2]);
      const dx = await ops.activationBackward(tensor([1, 1, 1, 1], [4]), X, "relu");
      expect(Array.from(values(dx))).toEqual([NaN, 0, 0, 1]);
    }),
  );

  test(
    "empty tensors give empty results",
    scoped(async () => {
      const h = await ops.activation(tensor([], [0, 8]), "swiglu");
      expect(h.shape).toEqual([0, 4]);
      const dx = await ops.activationBackward(tensor([], [0, 4]), tensor([], [0, 8]), "swiglu");
      expect(dx.shape).toEqual([0, 8]);
    }),
  );

  test(
    "repeated runs are bitwise identical",
    scoped(async () => {
      const X = tensor(normal(1000 * 512, 11), [1000, 512]);
      const DH = tensor(normal(1000 * 256, 12), [1000, 256]);
      for (const kind of ["gelu", "geglu"] as Kind[]) {
        const a = await ops.activation(X, kind);
        const b = await ops.activation(X, kind);
        expect(sameBits(a, b)).toBe(true);
      }
      const a = await ops.activationBackward(DH, X, "swiglu");
      const b = await ops.activationBackward(DH, X, "swiglu");
      expect(sameBits(a, b)).toBe(true);
    }),
  );

  test(
    "bad input gets typed errors",
    scoped(async () => {
      const X = tensor(normal(12, 1), [2, 6]);
      await expect(ops.activation(X, "tanh" as Kind)).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
        message: expect.stringMatching(
          /Expected one of "relu", "gelu", "silu", "swiglu", "geglu" for kind but received tanh/,
        ),
      });
      await expect(ops.activationBackward(X, X, "softplus" as Kind)).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
      // The native core refuses an unknown kind too, for callers that bypass the TypeScript checks.
      const addon = loadNative() as unknown as { activation(x: unknown, kind: string): Promise<unknown> };
      expect(() => addon.activation(X.handle, "tanh")).toThrow(
        expect.objectContaining({ code: "ERR_MOE_VALUE", message: expect.stringMatching(/kind/) }),
      );
      const odd = tensor(normal(10, 1), [2, 5]);
      await expect(ops.activation(odd, "swiglu")).rejects.toMatchObject({
        code: "ERR_MOE_SHAPE",
        message: expect.stringMatching(/even last dim.*received \[2, 5\]/),
      });
      await expect(ops.activation(odd, "geglu")).rejects.toMatchObject({ code: "ERR_MOE_SHAPE" });
      expect((await ops.activation(odd, "gelu")).shape).toEqual([2, 5]); // odd widths are fine elementwise
      await expect(ops.activationBackward(tensor(normal(12, 1), [2, 6]), X, "swiglu")).rejects.toMatchObject({
        code: "ERR_MOE_SHAPE",
        message: expect.stringMatching(/dh/),
      });
      await expect(ops.activationBackward(tensor(normal(6, 1), [2, 3]), X, "relu")).rejects.toMatchObject({
        code: "ERR_MOE_SHAPE",
      });
      await expect(ops.activation(Tensor.from(new Int32Array(4), [2, 2]), "relu")).rejects.toMatchObject({
        code: "ERR_MOE_DTYPE",
      });
      await expect(ops.activationBackward(Tensor.from(new Int32Array(12), [2, 6]), X, "relu")).rejects.toMatchObject({
        code: "ERR_MOE_DTYPE",
      });
      const gone = tensor(normal(4, 1), [2, 2]);
      gone.dispose();
      await expect(ops.activation(gone, "relu")).rejects.toMatchObject({ code: "ERR_MOE_DISPOSED" });
    }),
  );

  test(
    "no tensors leak across 1,000 calls",
    scoped(async () => {
      const X = tensor(normal(16 * 8, 1), [16, 8]);
      const leaks = await leakCheck();
      for (let i = 0; i < 1000; i++) {
        const kind = KINDS[i % KINDS.length];
        const h = await ops.activation(X, kind);
        const dx = await ops.activationBackward(h, X, kind);
        h.dispose();
        dx.dispose();
      }
      expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
    }),
  );
});
