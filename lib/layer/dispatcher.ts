/**
 * The token dispatcher between permute and the experts
 * (docs/math.md#dispatch-and-combine): per-expert counts are exchanged over the
 * EP group (the forward pass's one host synchronisation: they size the
 * all-to-all), rows travel by all-to-all-v, and arrive regrouped by local
 * expert; the combine is the way back. In the backward, each direction carries
 * the gradient of the other.
 */
import { chunkTranspose } from "../ops/chunks";
import { Tensor, type DeviceName } from "../tensor";
import type { CollectiveGroup } from "./group";

/** The sizes of one dispatch, from this rank's rows per expert and everyone's. */
export interface DispatchPlan {
  /** EP size P and local experts L. */
  epSize: number;
  numLocal: number;
  /** Rows this rank sends to each EP rank (its permuted rows are already in that order). */
  sendCounts: number[];
  /** Rows this rank receives from each EP rank. */
  recvCounts: number[];
  /**
   * int32 [P, L]: rows from source rank s for local expert l, for chunkTranspose (absent when P = 1
   * or when the group's allToAllV takes the chunks itself).
   */
  fromSource?: Tensor;
  /** int32 [L, P]: fromSourceᵀ (absent with fromSource). */
  toSource?: Tensor;
  /** fromSource and toSource on the host, row-major (empty when P = 1). */
  fromSourceHost: Int32Array;
  toSourceHost: Int32Array;
  /** int32 [L]: rows of each local expert, over all sources. */
  localCounts: Tensor;
  /** The same, on the host. */
  localCountsHost: number[];
}

function sums(counts: ArrayLike<number>, groups: number, per: number, transpose = false): number[] {
  const out = new Array<number>(groups).fill(0);
  for (let g = 0; g < groups; g++)
    for (let i = 0; i < per; i++) out[g] += transpose ? counts[i * groups + g] : counts[g * per + i];
  return out;
}

/**
 * rowsPerExpert: this rank's permuted rows for each of the E experts (host copy of permute's
 * counts); `local`: the same tensor, used as the local counts when P = 1.
 */
export async function planDispatch(
  rowsPerExpert: Int32Array,
  local: Tensor,
  ep: CollectiveGroup,
  numLocal: number,
): Promise<DispatchPlan> {
  const P = ep.size;
  if (P === 1) {
    const counts = Array.from(rowsPerExpert);
    const total = counts.reduce((a, b) => a + b, 0);
    return {
      epSize: 1,
      numLocal,
      sendCounts: [total],
      recvCounts: [total],
      localCounts: local,
      localCountsHost: counts,
      fromSourceHost: new Int32Array(0),
      toSourceHost: new Int32Array(0),
    };
  }
  const L = numLocal;
  const sendCounts = sums(rowsPerExpert, P, L);
  // Counts travel and live beside the rows (NCCL moves device tensors only).
  const device = local.device as DeviceName;
  const mine = Tensor.from(rowsPerExpert, [P * L], { dtype: "int32", device });
  let matrix: Int32Array;
  try {
    const per = new Array<number>(P).fill(L);
    const r = await ep.allToAllV(mine, per, { recvCounts: per });
    matrix = r.output.toInt32();
    r.output.dispose();
  } finally {
    mine.dispose();
  }
  const transposed = new Int32Array(P * L);
  for (let s = 0; s < P; s++) for (let l = 0; l < L; l++) transposed[l * P + s] = matrix[s * L + l];
  const localCountsHost = sums(matrix, L, P, true);
  // The device copies of the chunk counts serve chunkTranspose only.
  const transposes = !ep.allToAllVChunks;
  return {
    epSize: P,
    numLocal: L,
    sendCounts,
    recvCounts: sums(matrix, P, L),
    fromSource: transposes ? Tensor.from(matrix, [P, L], { dtype: "int32", device }) : undefined,
    toSource: transposes ? Tensor.from(transposed, [L, P], { dtype: "int32", device }) : undefined,
    fromSourceHost: matrix,
    toSourceHost: transposed,
    localCounts: Tensor.from(Int32Array.from(localCountsHost), [L], { dtype: "int32", device }),
    localCountsHost,
  };
}

/** Permuted rows [R, ...] (grouped by destination rank) -> the rows of this rank's experts, [local expert][source rank]. */
export async function dispatch(rows: Tensor, plan: DispatchPlan, ep: CollectiveGroup): Promise<Tensor> {
  if (plan.epSize === 1) return rows;
  if (ep.allToAllVChunks) {
    const options = { recvCounts: plan.recvCounts, recvChunks: plan.fromSourceHost };
    return (await ep.allToAllV(rows, plan.sendCounts, options)).output;
  }
  const r = await ep.allToAllV(rows, plan.sendCounts, { recvCounts: plan.recvCounts });
  try {
    return await chunkTranspose(r.output, plan.fromSource!);
  } finally {
    r.output.dispose();
  }
}

/** Rows of this rank's experts, [local expert][source rank] -> back to their source ranks, in the permuted order there. */
export async function combine(rows: Tensor, plan: DispatchPlan, ep: CollectiveGroup): Promise<Tensor> {
  if (plan.epSize === 1) return rows;
  if (ep.allToAllVChunks) {
    const options = { recvCounts: plan.sendCounts, sendChunks: plan.toSourceHost };
    return (await ep.allToAllV(rows, plan.recvCounts, options)).output;
  }
  const back = await chunkTranspose(rows, plan.toSource!);
  try {
    return (await ep.allToAllV(back, plan.recvCounts, { recvCounts: plan.sendCounts })).output;
  } finally {
    back.dispose();
  }
}

/** Frees the plan's tensors (the local counts too unless they are `keep`). */
export function disposePlan(plan: DispatchPlan, keep?: Tensor): void {
  plan.fromSource?.dispose();
  plan.toSource?.dispose();
  if (plan.localCounts !== keep) plan.localCounts.dispose();
}
