/**
 * float64 reference of the residual MoE's mix (docs/math.md#residual-moe):
 * c = softmax(x · Wc + bc) per token, y = c0 · moe + c1 · mlp, and its
 * gradients written out from the chain rule.
 */

/** The coefficient logits l = x · Wc + bc [T, 2] and c = softmax(l). */
export function residualCoefRef(
  x: ArrayLike<number>,
  wc: ArrayLike<number>,
  bc: ArrayLike<number>,
  T: number,
  D: number,
): Float64Array {
  const c = new Float64Array(2 * T);
  for (let t = 0; t < T; t++) {
    const l = [bc[0], bc[1]];
    for (let i = 0; i < D; i++) for (let j = 0; j < 2; j++) l[j] += x[t * D + i] * wc[i * 2 + j];
    const m = Math.max(l[0], l[1]);
    const e0 = Math.exp(l[0] - m);
    const e1 = Math.exp(l[1] - m);
    c[2 * t] = e0 / (e0 + e1);
    c[2 * t + 1] = e1 / (e0 + e1);
  }
  return c;
}

export function residualMixRef(
  moe: ArrayLike<number>,
  mlp: ArrayLike<number>,
  c: ArrayLike<number>,
  T: number,
  D: number,
) {
  const y = new Float64Array(T * D);
  for (let t = 0; t < T; t++)
    for (let i = 0; i < D; i++) y[t * D + i] = c[2 * t] * moe[t * D + i] + c[2 * t + 1] * mlp[t * D + i];
  return y;
}

/** d moe, d mlp, d logits [T, 2] (through the two-way softmax) and d bc [2]. */
export function residualMixBackwardRef(
  dy: ArrayLike<number>,
  moe: ArrayLike<number>,
  mlp: ArrayLike<number>,
  c: ArrayLike<number>,
  T: number,
  D: number,
) {
  const dMoe = new Float64Array(T * D);
  const dMlp = new Float64Array(T * D);
  const dl = new Float64Array(T * 2);
  const dbc = new Float64Array(2);
  for (let t = 0; t < T; t++) {
    const g = [0, 0];
    for (let i = 0; i < D; i++) {
      const k = t * D + i;
      dMoe[k] = c[2 * t] * dy[k];
      dMlp[k] = c[2 * t + 1] * dy[k];
      g[0] += dy[k] * moe[k];
      g[1] += dy[k] * mlp[k];
    }
    // Jacobian of the two-way softmax: dc_j/dl_i = c_j (δ_ij − c_i).
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < 2; j++) dl[2 * t + i] += g[j] * c[2 * t + j] * ((i === j ? 1 : 0) - c[2 * t + i]);
      dbc[i] += dl[2 * t + i];
    }
  }
  return { dMoe, dMlp, dl, dbc };
}

/** Through l = x · Wc + bc: d x [T, D] and d Wc [D, 2] from d l [T, 2]. */
export function residualCoefBackwardRef(
  dl: ArrayLike<number>,
  x: ArrayLike<number>,
  wc: ArrayLike<number>,
  T: number,
  D: number,
) {
  const dx = new Float64Array(T * D);
  const dwc = new Float64Array(D * 2);
  for (let t = 0; t < T; t++)
    for (let i = 0; i < D; i++)
      for (let j = 0; j < 2; j++) {
        dwc[i * 2 + j] += x[t * D + i] * dl[2 * t + j];
        dx[t * D + i] += wc[i * 2 + j] * dl[2 * t + j];
      }
  return { dx, dwc };
}
