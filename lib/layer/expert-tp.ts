/**
 * Expert tensor parallelism in the forward and backward (docs/math.md#expert-tensor-parallelism):
 * after the EP dispatch, the members of an ETP group all-gather the rows they received (variable
 * counts), regroup them by local expert, and each computes its F-slice of the FFN for all of them;
 * the partial outputs go back to the member that owns the rows by a reduce-scatter (sum). In the
 * backward the output gradient is gathered the same way and the input gradient reduce-scattered.
 */
import { MoEError } from "../errors";
import { chunkTranspose } from "../ops/chunks";
import { Tensor, type DeviceName } from "../tensor";
import type { CollectiveGroup, ReduceOp } from "./group";

/** The sizes of one gather: every member's rows per local expert. */
export interface EtpPlan {
  /** Rows each member received from its dispatch (what the reduce-scatter hands back). */
  memberRows: number[];
  /** int32 [etp, L]: member t's rows for local expert l; int32 [L, etp]: its transpose. */
  byMember: Tensor;
  byExpert: Tensor;
  /** int32 [L]: the gathered rows of each local expert, over every member. */
  localCounts: Tensor;
  localCountsHost: number[];
}

/** Exchanges the members' per-expert counts (int32 [L], on the rows' device): a host synchronisation. */
export async function planGather(localCounts: Tensor, etp: CollectiveGroup): Promise<EtpPlan> {
  const L = localCounts.shape[0];
  const n = etp.size;
  const g = await etp.allGatherV!(localCounts);
  let m: Int32Array;
  try {
    m = g.output.toInt32();
  } finally {
    g.output.dispose();
  }
  const t = new Int32Array(n * L);
  const memberRows = new Array<number>(n).fill(0);
  const local = new Array<number>(L).fill(0);
  for (let p = 0; p < n; p++)
    for (let l = 0; l < L; l++) {
      t[l * n + p] = m[p * L + l];
      memberRows[p] += m[p * L + l];
      local[l] += m[p * L + l];
    }
  const device = localCounts.device as DeviceName;
  return {
    memberRows,
    byMember: Tensor.from(m, [n, L], { dtype: "int32", device }),
    byExpert: Tensor.from(t, [L, n], { dtype: "int32", device }),
    localCounts: Tensor.from(Int32Array.from(local), [L], { dtype: "int32", device }),
    localCountsHost: local,
  };
}

/** This member's rows [local expert][source] -> every member's, [local expert][member][source]. */
export async function gatherRows(rows: Tensor, plan: EtpPlan, etp: CollectiveGroup): Promise<Tensor> {
  const g = await etp.allGatherV!(rows);
  try {
    return await chunkTranspose(g.output, plan.byMember);
  } finally {
    g.output.dispose();
  }
}

/** Partial results for every member's rows -> this member's rows, summed over the members. */
export async function scatterRows(partial: Tensor, plan: EtpPlan, etp: CollectiveGroup): Promise<Tensor> {
  const byMember = await chunkTranspose(partial, plan.byExpert);
  try {
    return await etp.reduceScatterV!(byMember, plan.memberRows);
  } finally {
    byMember.dispose();
  }
}

/**
 * The EP and ETP groups as one, for the norms of sliced expert gradients: their squared norms add up
 * over both (an all-reduce over one, then the other).
 */
export class ExpertModelParallelGroup implements CollectiveGroup {
  readonly rank: number;
  readonly size: number;
  constructor(
    private readonly ep: CollectiveGroup,
    private readonly etp: CollectiveGroup,
  ) {
    this.rank = ep.rank * etp.size + etp.rank;
    this.size = ep.size * etp.size;
  }
  async allReduce(t: Tensor, op?: ReduceOp): Promise<void> {
    await this.ep.allReduce(t, op);
    await this.etp.allReduce(t, op);
  }
  allToAllV(): never {
    throw new MoEError(
      "Expected allReduce on the expert model-parallel group; it offers nothing else",
      "ERR_MOE_UNSUPPORTED",
    );
  }
}
