/**
 * float64 reference of one AdamW step (Loshchilov & Hutter, Algorithm 2, in
 * PyTorch's torch.optim.AdamW form), updating copies of the state.
 */
export interface AdamWRefOptions {
  lr: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  weightDecay?: number;
  step: number;
  /** Rounds the stored parameter (e.g. to bfloat16); identity by default. */
  roundParam?: (v: number) => number;
}

export interface AdamWState {
  param: Float64Array;
  expAvg: Float64Array;
  expAvgSq: Float64Array;
}

export function adamwRef(state: AdamWState, grad: ArrayLike<number>, o: AdamWRefOptions): AdamWState {
  const b1 = o.beta1 ?? 0.9;
  const b2 = o.beta2 ?? 0.999;
  const eps = o.eps ?? 1e-8;
  const wd = o.weightDecay ?? 0.01;
  const round = o.roundParam ?? ((v: number) => v);
  const n = state.param.length;
  const out: AdamWState = { param: new Float64Array(n), expAvg: new Float64Array(n), expAvgSq: new Float64Array(n) };
  for (let i = 0; i < n; i++) {
    const g = grad[i];
    const p = state.param[i] * (1 - o.lr * wd);
    const m = b1 * state.expAvg[i] + (1 - b1) * g;
    const v = b2 * state.expAvgSq[i] + (1 - b2) * g * g;
    const mHat = m / (1 - b1 ** o.step);
    const vHat = v / (1 - b2 ** o.step);
    out.param[i] = round(p - (o.lr * mHat) / (Math.sqrt(vHat) + eps));
    out.expAvg[i] = m;
    out.expAvgSq[i] = v;
  }
  return out;
}
