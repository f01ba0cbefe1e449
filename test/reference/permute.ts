/**
 * float64 reference of permute and unpermute
 * (docs/math.md#capacity-and-drop-policies, docs/math.md#permute,
 * docs/math.md#unpermute), written from the definitions: each expert's pairs
 * found by scanning, capacity applied by sorting, sums in float64.
 */
export type DropPolicyRef = "probs" | "position" | "choice";

export interface PermuteRefOptions {
  numExperts: number;
  capacityFactor?: number;
  minCapacity?: number;
  dropPolicy?: DropPolicyRef;
  padToCapacity?: boolean;
}

export interface PermuteRef {
  rows: Float64Array; // [R, d]
  numRows: number;
  rowsPerExpert: number[];
  pairToRow: number[]; // [t * k], -1 when dropped
  rowToPair: number[]; // [R], -1 for padding
  dropped: number;
  capacity: number; // -1 when dropless
}

/** C = max(ceil(T · k / E · capacityFactor), minCapacity). */
export function capacityRef(t: number, k: number, e: number, capacityFactor: number, minCapacity = 0): number {
  return Math.max(Math.ceil(((t * k) / e) * capacityFactor), minCapacity);
}

/** The flat indices t * k + j that each expert keeps, in (t, j) order. */
export function keptPairsRef(
  indices: ArrayLike<number>,
  weights: ArrayLike<number>,
  t: number,
  k: number,
  opts: PermuteRefOptions,
): { kept: number[][]; dropped: number; capacity: number } {
  const e = opts.numExperts;
  const capacity = opts.capacityFactor === undefined ? -1 : capacityRef(t, k, e, opts.capacityFactor, opts.minCapacity);
  const kept: number[][] = [];
  let dropped = 0;
  for (let ex = 0; ex < e; ex++) {
    const mine: number[] = [];
    for (let tt = 0; tt < t; tt++) for (let j = 0; j < k; j++) if (indices[tt * k + j] === ex) mine.push(tt * k + j);
    let keep = mine;
    if (capacity >= 0 && mine.length > capacity) {
      if ((opts.dropPolicy ?? "probs") === "position") {
        keep = mine.slice(0, capacity);
      } else if (opts.dropPolicy === "choice") {
        // Choice by choice (every first choice before any second), token order within a choice.
        keep = [...mine]
          .sort((a, b) => (a % k) - (b % k) || a - b)
          .slice(0, capacity)
          .sort((a, b) => a - b);
      } else {
        // Largest weight first; ties to the lower token, then the lower choice (= the lower flat index).
        keep = [...mine]
          .sort((a, b) => weights[b] - weights[a] || a - b)
          .slice(0, capacity)
          .sort((a, b) => a - b);
      }
      dropped += mine.length - capacity;
    }
    kept.push(keep);
  }
  return { kept, dropped, capacity };
}

export function permuteRef(
  x: ArrayLike<number>,
  indices: ArrayLike<number>,
  weights: ArrayLike<number>,
  t: number,
  d: number,
  k: number,
  opts: PermuteRefOptions,
): PermuteRef {
  const { kept, dropped, capacity } = keptPairsRef(indices, weights, t, k, opts);
  const pairToRow = new Array<number>(t * k).fill(-1);
  const rowToPair: number[] = [];
  const rowsPerExpert: number[] = [];
  for (const list of kept) {
    for (const p of list) {
      pairToRow[p] = rowToPair.length;
      rowToPair.push(p);
    }
    const n = opts.padToCapacity ? capacity : list.length;
    for (let i = list.length; i < n; i++) rowToPair.push(-1);
    rowsPerExpert.push(n);
  }
  const numRows = rowToPair.length;
  const rows = new Float64Array(numRows * d);
  rowToPair.forEach((p, r) => {
    if (p < 0) return;
    const tok = Math.floor(p / k);
    for (let c = 0; c < d; c++) rows[r * d + c] = x[tok * d + c];
  });
  return { rows, numRows, rowsPerExpert, pairToRow, rowToPair, dropped, capacity };
}

/** dx[t] = Σ over kept j of dRows[pairToRow[t, j]]. */
export function permuteBackwardRef(
  dRows: ArrayLike<number>,
  pairToRow: ArrayLike<number>,
  t: number,
  k: number,
  d: number,
): Float64Array {
  const dx = new Float64Array(t * d);
  for (let tt = 0; tt < t; tt++)
    for (let j = 0; j < k; j++) {
      const r = pairToRow[tt * k + j];
      if (r < 0) continue;
      for (let c = 0; c < d; c++) dx[tt * d + c] += dRows[r * d + c];
    }
  return dx;
}

/** y[t] = Σ over kept j of w[t, j] · rows[pairToRow[t, j]]. */
export function unpermuteRef(
  rows: ArrayLike<number>,
  pairToRow: ArrayLike<number>,
  weights: ArrayLike<number>,
  t: number,
  k: number,
  d: number,
): Float64Array {
  const y = new Float64Array(t * d);
  for (let tt = 0; tt < t; tt++)
    for (let j = 0; j < k; j++) {
      const r = pairToRow[tt * k + j];
      if (r < 0) continue;
      const w = weights[tt * k + j];
      for (let c = 0; c < d; c++) y[tt * d + c] += w * rows[r * d + c];
    }
  return y;
}

/** d rows[r] = Σ over the pairs (t, j) that read r of w[t, j] · dy[t]; d w[t, j] = ⟨dy[t], rows[pairToRow[t, j]]⟩. */
export function unpermuteBackwardRef(
  dy: ArrayLike<number>,
  rows: ArrayLike<number>,
  pairToRow: ArrayLike<number>,
  weights: ArrayLike<number>,
  t: number,
  k: number,
  d: number,
  numRows: number,
): { dRows: Float64Array; dWeights: Float64Array } {
  const dRows = new Float64Array(numRows * d);
  const dWeights = new Float64Array(t * k);
  for (let tt = 0; tt < t; tt++)
    for (let j = 0; j < k; j++) {
      const r = pairToRow[tt * k + j];
      if (r < 0) continue;
      const w = weights[tt * k + j];
      let dot = 0;
      for (let c = 0; c < d; c++) {
        dRows[r * d + c] += w * dy[tt * d + c];
        dot += dy[tt * d + c] * rows[r * d + c];
      }
      dWeights[tt * k + j] = dot;
    }
  return { dRows, dWeights };
}
