/**
 * float64 reference of the expert activations (docs/math.md#activations) and
 * their derivatives, from the formulas: gelu = x/2·(1 + erf(x/√2)); the gated
 * kinds split the last dim into the gate half, then the up half, h = act(gate)
 * · up (swiglu: silu; geglu: gelu in its tanh form).
 */
export type Kind = "relu" | "gelu" | "silu" | "swiglu" | "geglu";

/** erf to ~1e-15 (Maclaurin series for |x| < 3, the continued fraction of erfc beyond). */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax < 3) {
    let term = x;
    let sum = x;
    for (let n = 1; n < 100; n++) {
      term *= (-x * x) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    return (2 / Math.sqrt(Math.PI)) * sum;
  }
  // erfc(x) = exp(-x²)/√π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...)))), Lentz-free backward evaluation
  let f = ax;
  for (let n = 60; n >= 1; n--) f = ax + n / 2 / f;
  const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
  return Math.sign(x) * (1 - erfc);
}

const SQRT_2_OVER_PI = Math.sqrt(2 / Math.PI);

function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

export const fns: Record<
  "relu" | "gelu" | "silu" | "geluTanh",
  { f: (x: number) => number; df: (x: number) => number }
> = {
  // NaN passes through relu and its derivative (neither branch holds for it).
  relu: { f: (x) => (x > 0 || Number.isNaN(x) ? x : 0), df: (x) => (x > 0 ? 1 : x <= 0 ? 0 : NaN) },
  gelu: {
    f: (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)),
    df: (x) => 0.5 * (1 + erf(x / Math.SQRT2)) + (x * Math.exp(-0.5 * x * x)) / Math.sqrt(2 * Math.PI),
  },
  silu: {
    f: (x) => x * sigmoid(x),
    df: (x) => {
      const s = sigmoid(x);
      return s + x * s * (1 - s);
    },
  },
  geluTanh: {
    f: (x) => 0.5 * x * (1 + Math.tanh(SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))),
    df: (x) => {
      const u = SQRT_2_OVER_PI * (x + 0.044715 * x ** 3);
      const t = Math.tanh(u);
      return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * SQRT_2_OVER_PI * (1 + 3 * 0.044715 * x * x);
    },
  },
};

export function isGatedKind(kind: Kind): boolean {
  return kind === "swiglu" || kind === "geglu";
}

function actOf(kind: Kind) {
  return kind === "relu" ? fns.relu : kind === "gelu" ? fns.gelu : kind === "geglu" ? fns.geluTanh : fns.silu;
}

/** x holds rows of `width` values; gated kinds give rows of width / 2. */
export function activationRef(x: ArrayLike<number>, width: number, kind: Kind): Float64Array {
  const a = actOf(kind);
  if (!isGatedKind(kind)) return Float64Array.from(x, (v) => a.f(v));
  const rows = x.length / width;
  const F = width / 2;
  const h = new Float64Array(rows * F);
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < F; j++) h[r * F + j] = a.f(x[r * width + j]) * x[r * width + F + j];
  return h;
}

export function activationBackwardRef(
  dh: ArrayLike<number>,
  x: ArrayLike<number>,
  width: number,
  kind: Kind,
): Float64Array {
  const a = actOf(kind);
  const dx = new Float64Array(x.length);
  if (!isGatedKind(kind)) {
    for (let i = 0; i < x.length; i++) dx[i] = dh[i] * a.df(x[i]);
    return dx;
  }
  const rows = x.length / width;
  const F = width / 2;
  for (let r = 0; r < rows; r++)
    for (let j = 0; j < F; j++) {
      const g = x[r * width + j];
      const u = x[r * width + F + j];
      const d = dh[r * F + j];
      dx[r * width + j] = d * u * a.df(g);
      dx[r * width + F + j] = d * a.f(g);
    }
  return dx;
}
