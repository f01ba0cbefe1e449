/**
 * The collectives the MoE layer needs, as a structural interface: the Gloo
 * ProcessGroup (lib/comm/process-group.ts) satisfies it, and so does any
 * object with the same methods (an NCCL group, a test double).
 *
 * Which ranks form the EP and expert-data-parallel groups is
 * lib/comm/layout.ts's rule (Megatron-Core's layout).
 */
import type { Tensor } from "../tensor";
import { expertParallelPosition } from "../comm/layout";
import { MoEError, invalid } from "../errors";

export type ReduceOp = "sum" | "avg" | "max";

/** What the layer calls on a group; rank and size are the group's own. */
export interface CollectiveGroup {
  readonly rank: number;
  readonly size: number;
  /**
   * x [rows, ...]: sendCounts[p] rows go to rank p, in order. Resolves with the rows received,
   * ordered by source rank; options.recvCounts, when given, is what this rank expects to receive.
   */
  allToAllV(
    x: Tensor,
    sendCounts: readonly number[] | Int32Array,
    options?: {
      recvCounts?: readonly number[] | Int32Array;
      sendChunks?: readonly number[] | Int32Array;
      recvChunks?: readonly number[] | Int32Array;
    },
  ): Promise<{ output: Tensor; recvCounts: ArrayLike<number> }>;
  /**
   * true when allToAllV takes sendChunks and recvChunks (the Gloo ProcessGroup's options): the
   * dispatcher then hands the regrouping by expert to the exchange instead of chunkTranspose.
   */
  readonly allToAllVChunks?: boolean;
  /** In place. */
  allReduce(t: Tensor, op?: ReduceOp): Promise<void>;
  barrier?(): Promise<void>;
  /** Every rank's rows [rows_p, ...], concatenated in rank order (needed by an ETP group). */
  allGatherV?(x: Tensor): Promise<{ output: Tensor; counts: ArrayLike<number> }>;
  /** x [sum(counts), ...]: chunk p summed over the ranks lands on rank p (needed by an ETP group). */
  reduceScatterV?(x: Tensor, counts: readonly number[]): Promise<Tensor>;
}

/** The groups a split makes: EP, expert-data-parallel and (with etpSize > 1) expert-tensor-parallel. */
export type Split = { ep: CollectiveGroup; expertDataParallel: CollectiveGroup; etp?: CollectiveGroup };

/** A world group that can split itself into the EP, ETP and expert-data-parallel groups. */
export interface SplittableGroup extends CollectiveGroup {
  split(options: { epSize: number; etpSize?: number }): Split | Promise<Split>;
}

/** The groups of a layer, when the caller has them already (etp: needed when etpSize > 1). */
export interface LayerGroups {
  world: CollectiveGroup;
  ep: CollectiveGroup;
  expertDataParallel: CollectiveGroup;
  etp?: CollectiveGroup;
}

/** The groups of a layer once resolved: etp is a group of one when etpSize is 1. */
export interface ResolvedGroups extends LayerGroups {
  etp: CollectiveGroup;
}

/** What a layer is built on: a world group (a ProcessGroup, say) or the three groups ready-made. */
export type MoELayerGroup = CollectiveGroup | SplittableGroup | LayerGroups;

/** A group of one rank: every collective is the identity (used when no group is given). */
export class SingleRankGroup implements CollectiveGroup {
  readonly rank = 0;
  readonly size = 1;
  async allToAllV(
    x: Tensor,
    sendCounts: readonly number[] | Int32Array,
  ): Promise<{ output: Tensor; recvCounts: ArrayLike<number> }> {
    if (sendCounts.length !== 1 || sendCounts[0] !== x.shape[0]) {
      throw new MoEError(
        `allToAllV: expected sendCounts [${x.shape[0]}] on a group of one rank but received [${Array.from(sendCounts).join(", ")}]`,
        "ERR_MOE_VALUE",
      );
    }
    return { output: x, recvCounts: [x.shape[0]] };
  }
  async allReduce(): Promise<void> {}
  async barrier(): Promise<void> {}
  async allGatherV(x: Tensor): Promise<{ output: Tensor; counts: ArrayLike<number> }> {
    return { output: x, counts: [x.shape[0]] };
  }
  async reduceScatterV(x: Tensor): Promise<Tensor> {
    return x;
  }
}

export const SINGLE_RANK: CollectiveGroup = new SingleRankGroup();

function isGroup(g: unknown): g is CollectiveGroup {
  if (g === null || typeof g !== "object") return false;
  const o = g as Record<string, unknown>;
  return (
    Number.isInteger(o.rank) &&
    Number.isInteger(o.size) &&
    typeof o.allToAllV === "function" &&
    typeof o.allReduce === "function"
  );
}

/** This rank's position in the layout before the groups exist (parameters are sized from it). */
export const layoutOf = expertParallelPosition;

/** The world group's rank and size, from a group, a LayerGroups object or nothing (one rank). */
export function worldOf(groups: unknown): { rank: number; size: number } {
  if (groups === undefined || groups === null) return { rank: 0, size: 1 };
  if (isGroup(groups)) return { rank: groups.rank, size: groups.size };
  if (typeof groups === "object" && isGroup((groups as LayerGroups).world)) {
    const w = (groups as LayerGroups).world;
    return { rank: w.rank, size: w.size };
  }
  throw invalid(
    "a process group (rank, size, allToAllV, allReduce) or { world, ep, expertDataParallel }",
    "group",
    groups,
  );
}

/**
 * Splits of each world group, by epSize and etpSize: layers built on one group share its sub-groups,
 * and the splits (collective calls) happen once each, in the order the layers were built on every rank.
 */
const splits = new WeakMap<object, Map<string, Promise<Split>>>();

function splitOnce(group: SplittableGroup, epSize: number, etpSize: number): Promise<Split> {
  let byEp = splits.get(group);
  if (!byEp) splits.set(group, (byEp = new Map()));
  const key = `${epSize}x${etpSize}`;
  let s = byEp.get(key);
  if (!s) {
    // After the previous split of this group, so that every rank issues them in one order.
    const previous = [...byEp.values()].pop() ?? Promise.resolve();
    s = previous.catch(() => undefined).then(() => group.split(etpSize === 1 ? { epSize } : { epSize, etpSize }));
    byEp.set(key, s);
  }
  return s;
}

/**
 * The world, EP, ETP and expert-data-parallel groups for epSize and etpSize: split from a world
 * group (its split() when it has one; once per group and sizes), taken as given, or single-rank ones.
 */
export async function resolveGroups(groups: unknown, epSize: number, etpSize = 1): Promise<ResolvedGroups> {
  const world = worldOf(groups);
  const want = layoutOf(world.rank, world.size, epSize, etpSize);
  let out: LayerGroups;
  if (groups === undefined || groups === null) {
    out = { world: SINGLE_RANK, ep: SINGLE_RANK, expertDataParallel: SINGLE_RANK };
  } else if (isGroup(groups)) {
    if (typeof (groups as Partial<SplittableGroup>).split === "function") {
      const s = await splitOnce(groups as SplittableGroup, epSize, etpSize);
      out = { world: groups, ep: s.ep, expertDataParallel: s.expertDataParallel, etp: s.etp };
    } else if (etpSize === 1 && epSize === groups.size) {
      out = { world: groups, ep: groups, expertDataParallel: SINGLE_RANK };
    } else if (etpSize === 1 && epSize === 1) {
      out = { world: groups, ep: SINGLE_RANK, expertDataParallel: groups };
    } else {
      throw new MoEError(
        `Expected a group with split({ epSize, etpSize }) for epSize ${epSize}, etpSize ${etpSize} inside a world of ${groups.size} ranks, or epSize 1 or ${groups.size} with etpSize 1`,
        "ERR_MOE_VALUE",
      );
    }
  } else {
    const g = groups as LayerGroups;
    if (!isGroup(g.ep) || !isGroup(g.expertDataParallel) || (g.etp !== undefined && !isGroup(g.etp))) {
      throw invalid("groups for ep and expertDataParallel (and etp)", "group", groups);
    }
    out = { world: g.world, ep: g.ep, expertDataParallel: g.expertDataParallel, etp: g.etp };
  }
  const etp = out.etp ?? (etpSize === 1 ? SINGLE_RANK : undefined);
  if (
    out.ep.size !== epSize ||
    out.ep.rank !== want.epRank ||
    out.expertDataParallel.size !== want.edpSize ||
    out.expertDataParallel.rank !== want.edpRank ||
    !etp ||
    etp.size !== etpSize ||
    etp.rank !== want.etpRank
  ) {
    const etpText = etpSize === 1 ? "" : ` and an ETP group of ${etpSize} at ${want.etpRank}`;
    const etpGot = etpSize === 1 ? "" : etp ? `, ETP rank ${etp.rank} of ${etp.size}` : ", no ETP group";
    throw new MoEError(
      `Expected an EP group of ${epSize} ranks with this rank at ${want.epRank}, an expert-data-parallel group of ${want.edpSize} ` +
        `at ${want.edpRank}${etpText} (world rank ${world.rank} of ${world.size}) but received EP rank ${out.ep.rank} of ${out.ep.size}, ` +
        `expert-data-parallel rank ${out.expertDataParallel.rank} of ${out.expertDataParallel.size}${etpGot}`,
      "ERR_MOE_VALUE",
    );
  }
  if (etpSize > 1 && (typeof etp.allGatherV !== "function" || typeof etp.reduceScatterV !== "function")) {
    throw invalid("an ETP group with allGatherV and reduceScatterV", "group.etp", etp);
  }
  return { ...out, etp };
}
