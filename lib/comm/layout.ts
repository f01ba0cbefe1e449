/**
 * How expert parallelism lays ranks out, as Megatron-Core does on the expert
 * side: expert tensor parallelism (ETP) innermost, then expert parallelism
 * (EP), then expert data parallelism. World rank
 *
 *   w = edpRank · (epSize · etpSize) + epRank · etpSize + etpRank
 *
 * The ranks that differ only in etpRank form an ETP group (they split each of
 * their experts along dFF); those that differ only in epRank form an EP group
 * (the all-to-all runs between them, each holding other experts); those that
 * differ only in edpRank hold the same expert slices and form an
 * expert-data-parallel group, over which those slices' gradients are
 * all-reduced. With etpSize 1 (DeepSpeed's layout too): W = 4, epSize = 2 has
 * EP groups [0, 1] and [2, 3], expert-data-parallel groups [0, 2] and [1, 3];
 * W = 8, epSize = 2, etpSize = 2 has ETP groups [0, 1] [2, 3] [4, 5] [6, 7],
 * EP groups [0, 2] [1, 3] [4, 6] [5, 7], expert-data-parallel groups [0, 4]
 * [1, 5] [2, 6] [3, 7].
 */
import { MoEError, checkInteger } from "../errors";

export interface ExpertParallelLayout {
  /** The EP groups. */
  ep: number[][];
  /** The expert-data-parallel groups: the ranks holding the same expert slices. */
  expertDataParallel: number[][];
  /** The ETP groups: consecutive blocks of etpSize ranks. */
  etp: number[][];
}

function checkSizes(worldSize: number, epSize: number, etpSize: number): void {
  checkInteger("worldSize", worldSize, 1);
  checkInteger("epSize", epSize, 1);
  checkInteger("etpSize", etpSize, 1);
  if (worldSize % (epSize * etpSize) !== 0) {
    throw new MoEError(
      etpSize === 1
        ? `Expected epSize (${epSize}) to divide the world size (${worldSize})`
        : `Expected epSize × etpSize (${epSize} × ${etpSize} = ${epSize * etpSize}) to divide the world size (${worldSize})`,
      "ERR_MOE_VALUE",
    );
  }
}

export function expertParallelLayout(worldSize: number, epSize: number, etpSize = 1): ExpertParallelLayout {
  checkSizes(worldSize, epSize, etpSize);
  const edp = worldSize / (epSize * etpSize);
  const rank = (d: number, e: number, t: number) => d * epSize * etpSize + e * etpSize + t;
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const ep: number[][] = [];
  const etp: number[][] = [];
  const expertDataParallel: number[][] = [];
  for (const d of range(edp)) for (const t of range(etpSize)) ep.push(range(epSize).map((e) => rank(d, e, t)));
  for (const d of range(edp)) for (const e of range(epSize)) etp.push(range(etpSize).map((t) => rank(d, e, t)));
  for (const e of range(epSize))
    for (const t of range(etpSize)) expertDataParallel.push(range(edp).map((d) => rank(d, e, t)));
  return { ep, expertDataParallel, etp };
}

/** World rank worldRank's place in the layout: its EP, ETP and expert-data-parallel ranks and that group's size. */
export function expertParallelPosition(
  worldRank: number,
  worldSize: number,
  epSize: number,
  etpSize = 1,
): { epRank: number; etpRank: number; edpRank: number; edpSize: number } {
  checkSizes(worldSize, epSize, etpSize);
  return {
    epRank: Math.floor(worldRank / etpSize) % epSize,
    etpRank: worldRank % etpSize,
    edpRank: Math.floor(worldRank / (epSize * etpSize)),
    edpSize: worldSize / (epSize * etpSize),
  };
}
