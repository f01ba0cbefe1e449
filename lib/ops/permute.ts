/**
 * permute / unpermute: (token, choice) pairs to expert-contiguous rows and back
 * (docs/math.md#permute, docs/math.md#unpermute).
 */
import { checkInteger, checkNumber, checkOneOf, invalid } from "../errors";
import type { NativePermuteOptions } from "../addon";
import type { Tensor } from "../tensor";
import { handle, native, wrap } from "./common";

export type DropPolicy = "probs" | "position" | "choice";
export const DROP_POLICIES: readonly DropPolicy[] = ["probs", "position", "choice"];

export interface PermuteOptions {
  /** E, the number of experts; indices must lie in [0, E). */
  numExperts: number;
  /** When given (> 0): each expert keeps at most C = ceil(T·k/E · capacityFactor) choices. Absent: dropless. */
  capacityFactor?: number;
  /** With capacityFactor: C = max(ceil(T·k/E · capacityFactor), minCapacity) (default 0, DeepSpeed's min_capacity). */
  minCapacity?: number;
  /** Which choices an over-full expert keeps: the C largest weights ("probs", default) or the first C in token order ("position"). */
  dropPolicy?: DropPolicy;
  /** Every expert gets exactly C rows, zero rows appended to its segment (needs capacityFactor). */
  padToCapacity?: boolean;
}

export interface Permuted {
  /** [R, dModel] in x's dtype: the kept pairs sorted by expert, stably (token order, then choice order). */
  rows: Tensor;
  /** int32 [numExperts]: rows of each expert, padding included. */
  rowsPerExpert: Tensor;
  /** int32 [tokens, topK]: the row of pair (t, j), -1 when dropped. */
  pairToRow: Tensor;
  /** int32 [R]: t·topK + j of each row, -1 for a padding row. */
  rowToPair: Tensor;
  /** Choices dropped by capacity. */
  dropped: number;
  /** C, or -1 when dropless. */
  capacity: number;
}

export interface UnpermuteGrads {
  /** [R, dModel], rows' dtype: w[t, j]·dy[t] at row pairToRow[t, j]; zero for rows no pair reads. */
  dRows: Tensor;
  /** float32 [tokens, topK]: ⟨dy[t], rows[pairToRow[t, j]]⟩, 0 when dropped. */
  dWeights: Tensor;
}

function permuteOptions(options: unknown): NativePermuteOptions {
  if (options === null || typeof options !== "object") throw invalid("an options object", "options", options);
  const o = options as Record<string, unknown>;
  const numExperts = checkInteger("numExperts", o.numExperts, 1, 2147483647);
  const capacityFactor =
    o.capacityFactor === undefined
      ? undefined
      : checkNumber("capacityFactor", o.capacityFactor, (v) => v > 0, "a finite number > 0");
  const minCapacity = o.minCapacity === undefined ? 0 : checkInteger("minCapacity", o.minCapacity, 0, 2147483647);
  const dropPolicy = o.dropPolicy === undefined ? "probs" : checkOneOf("dropPolicy", o.dropPolicy, DROP_POLICIES);
  if (o.padToCapacity !== undefined && typeof o.padToCapacity !== "boolean")
    throw invalid("a boolean", "padToCapacity", o.padToCapacity);
  return { numExperts, capacityFactor, minCapacity, dropPolicy, padToCapacity: o.padToCapacity === true };
}

/**
 * x [tokens, dModel] (any float dtype), indices int32 [tokens, topK], weights float32 [tokens, topK]
 * -> the surviving pairs' rows in expert order, and the maps between pairs and rows.
 */
export async function permute(x: Tensor, indices: Tensor, weights: Tensor, options: PermuteOptions): Promise<Permuted> {
  const opts = permuteOptions(options);
  const p = await native().permute(handle(x, "x"), handle(indices, "indices"), handle(weights, "weights"), opts);
  return {
    rows: wrap(p.rows),
    rowsPerExpert: wrap(p.rowsPerExpert),
    pairToRow: wrap(p.pairToRow),
    rowToPair: wrap(p.rowToPair),
    dropped: p.dropped,
    capacity: p.capacity,
  };
}

/** dx [tokens, dModel] in dRows' dtype: dx[t] = Σ over kept j (in j order) of dRows[pairToRow[t, j]]. */
export async function permuteBackward(dRows: Tensor, pairToRow: Tensor): Promise<Tensor> {
  return wrap(await native().permuteBackward(handle(dRows, "dRows"), handle(pairToRow, "pairToRow")));
}

/** y [tokens, dModel] in rows' dtype: y[t] = Σ over kept j (in j order) of w[t, j]·rows[pairToRow[t, j]], float32 sums. */
export async function unpermute(rows: Tensor, pairToRow: Tensor, weights: Tensor): Promise<Tensor> {
  return wrap(
    await native().unpermute(handle(rows, "rows"), handle(pairToRow, "pairToRow"), handle(weights, "weights")),
  );
}

/** The gradients of unpermute: d rows and d weights (docs/math.md#unpermute). */
export async function unpermuteBackward(
  dy: Tensor,
  rows: Tensor,
  pairToRow: Tensor,
  weights: Tensor,
): Promise<UnpermuteGrads> {
  const g = await native().unpermuteBackward(
    handle(dy, "dy"),
    handle(rows, "rows"),
    handle(pairToRow, "pairToRow"),
    handle(weights, "weights"),
  );
  return { dRows: wrap(g.dRows), dWeights: wrap(g.dWeights) };
}
