/**
 * float64 reference of the grouped GEMM (docs/math.md#grouped-gemm): the rows
 * of expert e are the block [off_e, off_e + counts[e]) of x, and Y_e = X_e ·
 * W_e (+ b_e). Written as plain loops over single elements, independent of the
 * native code.
 */
export interface GroupedDims {
  R: number;
  K: number;
  N: number;
  L: number;
}

/** The expert of every row, from the counts. */
export function rowExperts(counts: ArrayLike<number>, R: number): Int32Array {
  const e = new Int32Array(R);
  let r = 0;
  for (let j = 0; j < counts.length; j++) for (let c = 0; c < counts[j]; c++) e[r++] = j;
  if (r !== R) throw new Error(`counts sum to ${r}, not ${R}`);
  return e;
}

export function groupedGemmRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  counts: ArrayLike<number>,
  { R, K, N }: GroupedDims,
  bias?: ArrayLike<number>,
): Float64Array {
  const ex = rowExperts(counts, R);
  const y = new Float64Array(R * N);
  for (let r = 0; r < R; r++) {
    const e = ex[r];
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[e * N + n] : 0;
      for (let k = 0; k < K; k++) s += x[r * K + k] * w[(e * K + k) * N + n];
      y[r * N + n] = s;
    }
  }
  return y;
}

/** dX_e = dY_e · W_eᵀ, dW_e = X_eᵀ · dY_e, dbias_e = Σ_rows dY_e. */
export function groupedGemmBackwardRef(
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  counts: ArrayLike<number>,
  { R, K, N, L }: GroupedDims,
): { dx: Float64Array; dw: Float64Array; dbias: Float64Array } {
  const ex = rowExperts(counts, R);
  const dx = new Float64Array(R * K);
  const dw = new Float64Array(L * K * N);
  const dbias = new Float64Array(L * N);
  for (let r = 0; r < R; r++) {
    const e = ex[r];
    for (let n = 0; n < N; n++) {
      const g = dy[r * N + n];
      dbias[e * N + n] += g;
      for (let k = 0; k < K; k++) {
        dx[r * K + k] += g * w[(e * K + k) * N + n];
        dw[(e * K + k) * N + n] += x[r * K + k] * g;
      }
    }
  }
  return { dx, dw, dbias };
}
