/**
 * float64 reference of renormalising the gate weights over the kept choices
 * (docs/math.md#weights-after-capacity): w'_j = w_j / max(S, FLT_EPSILON) for
 * kept j, S = Σ_kept w; its backward through the explicit Jacobian.
 */
const FLT_EPSILON = 2 ** -23;

export function renormalizeKeptRef(w: ArrayLike<number>, pairToRow: ArrayLike<number>, T: number, k: number) {
  const out = new Float64Array(T * k);
  for (let t = 0; t < T; t++) {
    let s = 0;
    for (let j = 0; j < k; j++) if (pairToRow[t * k + j] >= 0) s += w[t * k + j];
    const denom = Math.max(s, FLT_EPSILON);
    for (let j = 0; j < k; j++) out[t * k + j] = pairToRow[t * k + j] >= 0 ? w[t * k + j] / denom : 0;
  }
  return out;
}

/** d w_i = Σ_j g_j · ∂w'_j/∂w_i, ∂w'_j/∂w_i = (δ_ij − w'_j) / S over the kept i, j (S > FLT_EPSILON). */
export function renormalizeKeptBackwardRef(
  w: ArrayLike<number>,
  pairToRow: ArrayLike<number>,
  g: ArrayLike<number>,
  T: number,
  k: number,
) {
  const out = new Float64Array(T * k);
  const wn = renormalizeKeptRef(w, pairToRow, T, k);
  for (let t = 0; t < T; t++) {
    const kept = [...Array(k).keys()].filter((j) => pairToRow[t * k + j] >= 0);
    const s = kept.reduce((a, j) => a + w[t * k + j], 0);
    for (const i of kept) {
      let d = 0;
      for (const j of kept) {
        const jac = s > FLT_EPSILON ? ((i === j ? 1 : 0) - wn[t * k + j]) / s : (i === j ? 1 : 0) / FLT_EPSILON;
        d += g[t * k + j] * jac;
      }
      out[t * k + i] = d;
    }
  }
  return out;
}
