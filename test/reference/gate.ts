/** float64 reference of the gate (docs/math.md#gate): logits = x · Wg. */
export function matmul(a: ArrayLike<number>, b: ArrayLike<number>, m: number, k: number, n: number): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let p = 0; p < k; p++) {
      const av = a[i * k + p];
      for (let j = 0; j < n; j++) c[i * n + j] += av * b[p * n + j];
    }
  return c;
}

/** aᵀ for a [m, n]. */
export function transpose(a: ArrayLike<number>, m: number, n: number): Float64Array {
  const t = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) t[j * m + i] = a[i * n + j];
  return t;
}

export function gateRef(x: ArrayLike<number>, wg: ArrayLike<number>, t: number, d: number, e: number): Float64Array {
  return matmul(x, wg, t, d, e);
}

export function gateBackwardRef(
  x: ArrayLike<number>,
  wg: ArrayLike<number>,
  dlogits: ArrayLike<number>,
  t: number,
  d: number,
  e: number,
): { dx: Float64Array; dwg: Float64Array } {
  return { dx: matmul(dlogits, transpose(wg, d, e), t, e, d), dwg: matmul(transpose(x, t, d), dlogits, d, t, e) };
}
