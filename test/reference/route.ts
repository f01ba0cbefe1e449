/**
 * float64 reference of route (docs/math.md#route), forward and backward.
 * Selection sorts every expert (and every group) outright rather than keeping a
 * running top-k; the backward multiplies explicit Jacobians rather than using
 * closed forms.
 */
export type ScoreFunction = "softmax" | "sigmoid";

export interface RouteRefOptions {
  topK: number;
  scoreFunction?: ScoreFunction;
  renormalize?: boolean;
  expertBias?: ArrayLike<number>;
  numGroups?: number;
  topkGroups?: number;
  /** [T, E]: the choice takes the keys logits + noise (+ bias) instead of the scores (+ bias). */
  selectionNoise?: ArrayLike<number>;
  /** With selectionNoise: the first noiseFrom choices take the noiseless keys, the rest the noisy ones. */
  noiseFrom?: number;
}

export interface RouteRef {
  indices: Int32Array; // [T, k]
  weights: Float64Array; // [T, k]
  scores: Float64Array; // [T, E]
  tokensPerExpert: Int32Array; // [E]
  aux: number;
  z: number;
  /**
   * The smallest relative gap between two unequal keys (or group scores) whose order decided the
   * choice: float32 resolves the same order when it is well above 2⁻²⁴. Exact ties (equal logits)
   * are left out: float32 computes them equal too, and both break them by index.
   */
  margin: number;
}

const SIGMOID_EPS = 1e-20;

function logsumexp(row: ArrayLike<number>): number {
  let mx = -Infinity;
  for (let i = 0; i < row.length; i++) mx = Math.max(mx, row[i]);
  let s = 0;
  for (let i = 0; i < row.length; i++) s += Math.exp(row[i] - mx);
  return mx + Math.log(s);
}

function softmax(row: ArrayLike<number>): Float64Array {
  const lse = logsumexp(row);
  return Float64Array.from(row, (v) => Math.exp(v - lse));
}

export function scoresRow(row: ArrayLike<number>, f: ScoreFunction): Float64Array {
  return f === "softmax" ? softmax(row) : Float64Array.from(row, (v) => 1 / (1 + Math.exp(-v)));
}

/** Items ranked by value descending, ties to the lower id; returns the ranked ids. */
function rank(ids: number[], value: (id: number) => number): number[] {
  return [...ids].sort((a, b) => value(b) - value(a) || a - b);
}

/** Ranks of a row's experts under group-limited or plain selection, and the deciding margin. */
function choose(key: Float64Array, e: number, o: RouteRefOptions): { chosen: number[]; margin: number } {
  const k = o.topK;
  let allowed = Array.from({ length: e }, (_, i) => i);
  let margin = Infinity;
  const gaps = (ids: number[], value: (id: number) => number, upto: number) => {
    for (let r = 0; r < Math.min(upto, ids.length - 1); r++) {
      const [hi, lo] = [value(ids[r]), value(ids[r + 1])];
      if (hi !== lo) margin = Math.min(margin, (hi - lo) / Math.max(Math.abs(hi), Math.abs(lo)));
    }
  };
  if (o.numGroups !== undefined) {
    const G = o.numGroups;
    const g = o.topkGroups!;
    const per = e / G;
    const m = Math.max(1, Math.floor(k / g));
    const groupScore = Array.from({ length: G }, (_, gi) => {
      const members = Array.from({ length: per }, (_, j) => gi * per + j);
      return rank(members, (i) => key[i])
        .slice(0, m)
        .reduce((acc, i) => acc + key[i], 0);
    });
    const groups = rank(
      Array.from({ length: G }, (_, gi) => gi),
      (gi) => groupScore[gi],
    );
    gaps(groups, (gi) => groupScore[gi], g);
    const keep = new Set(groups.slice(0, g));
    allowed = allowed.filter((i) => keep.has(Math.floor(i / per)));
  }
  const ranked = rank(allowed, (i) => key[i]);
  gaps(ranked, (i) => key[i], k);
  return { chosen: ranked.slice(0, k), margin };
}

export function routeRef(logits: ArrayLike<number>, t: number, e: number, o: RouteRefOptions): RouteRef {
  const f = o.scoreFunction ?? "softmax";
  const k = o.topK;
  const r: RouteRef = {
    indices: new Int32Array(t * k),
    weights: new Float64Array(t * k),
    scores: new Float64Array(t * e),
    tokensPerExpert: new Int32Array(e),
    aux: 0,
    z: 0,
    margin: Infinity,
  };
  const P = new Float64Array(e);
  for (let ti = 0; ti < t; ti++) {
    const row = Array.prototype.slice.call(logits, ti * e, (ti + 1) * e) as number[];
    const s = scoresRow(row, f);
    r.scores.set(s, ti * e);
    const lse = logsumexp(row);
    r.z += (lse * lse) / t;
    const q = s.reduce((a, b) => a + b, 0);
    for (let i = 0; i < e; i++) P[i] += (f === "softmax" ? s[i] : s[i] / q) / t;
    const noise = o.selectionNoise;
    const bias = (i: number) => (o.expertBias ? o.expertBias[i] : 0);
    const clean = Float64Array.from(s, (v, i) => v + bias(i));
    const noisy = noise ? Float64Array.from(s, (_, i) => row[i] + noise[ti * e + i] + bias(i)) : clean;
    const from = noise ? (o.noiseFrom ?? 0) : 0;
    // The first `from` choices by the noiseless keys; the rest by the noisy keys, the chosen ones
    // ranked last (a finite key, so that the margins stay numbers).
    const first = from > 0 ? choose(clean, e, { ...o, topK: from }) : { chosen: [], margin: Infinity };
    const rest = choose(
      Float64Array.from(noisy, (v, i) => (first.chosen.includes(i) ? -1e300 : v)),
      e,
      { ...o, topK: k - from },
    );
    const chosen = [...first.chosen, ...rest.chosen];
    r.margin = Math.min(r.margin, first.margin, from < k ? rest.margin : Infinity);
    const denom = o.renormalize ? chosen.reduce((a, i) => a + s[i], 0) + (f === "sigmoid" ? SIGMOID_EPS : 0) : 1;
    chosen.forEach((i, j) => {
      r.indices[ti * k + j] = i;
      r.weights[ti * k + j] = s[i] / denom;
      r.tokensPerExpert[i]++;
    });
  }
  for (let i = 0; i < e; i++) if (t > 0) r.aux += e * (r.tokensPerExpert[i] / (t * k)) * P[i];
  return r;
}

/** L = Σ r·w + a·aux + c·z: the scalar whose gradient routeBackward gives (for finite differences). */
export function routeLossRef(
  logits: ArrayLike<number>,
  t: number,
  e: number,
  o: RouteRefOptions,
  dWeights: ArrayLike<number> | null,
  auxLossGrad: number,
  zLossGrad: number,
): number {
  const r = routeRef(logits, t, e, o);
  let L = auxLossGrad * r.aux + zLossGrad * r.z;
  if (dWeights) for (let i = 0; i < r.weights.length; i++) L += dWeights[i] * r.weights[i];
  return L;
}

/** Central finite differences of routeLossRef with respect to every logit. */
export function routeLossGradFD(
  logits: ArrayLike<number>,
  t: number,
  e: number,
  o: RouteRefOptions,
  dWeights: ArrayLike<number> | null,
  auxLossGrad: number,
  zLossGrad: number,
  h = 1e-6,
): Float64Array {
  const x = Float64Array.from(logits);
  const g = new Float64Array(t * e);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    x[i] = v + h;
    const up = routeLossRef(x, t, e, o, dWeights, auxLossGrad, zLossGrad);
    x[i] = v - h;
    const down = routeLossRef(x, t, e, o, dWeights, auxLossGrad, zLossGrad);
    x[i] = v;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

export interface RouteBackwardRefOptions {
  scoreFunction?: ScoreFunction;
  renormalize?: boolean;
  auxLossGrad?: number;
  zLossGrad?: number;
}

/** v · J for a Jacobian J[rows][cols] given as a function. */
function vjp(v: ArrayLike<number>, rows: number, cols: number, J: (r: number, c: number) => number): Float64Array {
  const out = new Float64Array(cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c] += v[r] * J(r, c);
  return out;
}

/** d L / d logits for fixed indices and tokensPerExpert, through explicit Jacobians. */
export function routeBackwardRef(
  logits: ArrayLike<number>,
  t: number,
  e: number,
  indices: ArrayLike<number>,
  tokensPerExpert: ArrayLike<number>,
  dWeights: ArrayLike<number> | null,
  o: RouteBackwardRefOptions,
): Float64Array {
  const f = o.scoreFunction ?? "softmax";
  const a = o.auxLossGrad ?? 0;
  const c = o.zLossGrad ?? 0;
  const k = indices.length / Math.max(t, 1);
  const out = new Float64Array(t * e);
  for (let ti = 0; ti < t; ti++) {
    const row = Array.prototype.slice.call(logits, ti * e, (ti + 1) * e) as number[];
    const s = scoresRow(row, f);
    const idx = Array.prototype.slice.call(indices, ti * k, (ti + 1) * k) as number[];
    const dL_ds = new Float64Array(e);
    if (dWeights) {
      // w_j = s[idx_j] / S, S = Σ_i s[idx_i] (+ eps): dw_j/ds_m = [idx_j = m]/S − [m ∈ idx] s[idx_j]/S².
      const S = o.renormalize ? idx.reduce((acc, i) => acc + s[i], 0) + (f === "sigmoid" ? SIGMOID_EPS : 0) : 1;
      const dw = Array.prototype.slice.call(dWeights, ti * k, (ti + 1) * k) as number[];
      const g = vjp(dw, k, e, (j, m) => {
        let d = idx[j] === m ? 1 / S : 0;
        if (o.renormalize && idx.includes(m)) d -= s[idx[j]] / (S * S);
        return d;
      });
      for (let m = 0; m < e; m++) dL_ds[m] += g[m];
    }
    if (a !== 0) {
      // aux = E Σ_e f_e P_e, P_e = (1/T) Σ_t p[t, e]: d aux / d p[t, e] = E f_e / T.
      const dp = Float64Array.from({ length: e }, (_, i) => (a * e * (tokensPerExpert[i] / (t * k))) / t);
      if (f === "softmax") {
        for (let m = 0; m < e; m++) dL_ds[m] += dp[m];
      } else {
        const q = s.reduce((x, y) => x + y, 0);
        const g = vjp(dp, e, e, (i, m) => (i === m ? 1 / q : 0) - s[i] / (q * q));
        for (let m = 0; m < e; m++) dL_ds[m] += g[m];
      }
    }
    const dl =
      f === "softmax"
        ? vjp(dL_ds, e, e, (i, m) => (i === m ? s[i] : 0) - s[i] * s[m])
        : vjp(dL_ds, e, e, (i, m) => (i === m ? s[i] / (1 + Math.exp(row[i])) : 0)); // s · (1 − s), 1 − s = sigmoid(−l)
    if (c !== 0) {
      const lse = logsumexp(row);
      const sm = softmax(row);
      for (let m = 0; m < e; m++) dl[m] += (c * 2 * lse * sm[m]) / t;
    }
    out.set(dl, ti * e);
  }
  return out;
}
