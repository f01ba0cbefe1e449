/**
 * How expert parallelism lays ranks out, as Megatron-Core and DeepSpeed do:
 * the world of W ranks is cut into W / epSize expert-parallel (EP) groups of
 * consecutive ranks, each holding all the experts between its members; the
 * ranks at the same index of every EP group hold the same experts and form
 * an expert-data-parallel group, over which those experts' gradients are
 * all-reduced.
 *
 * W = 4, epSize = 2: EP groups [0, 1] and [2, 3]; expert-data-parallel
 * groups [0, 2] and [1, 3].
 */
import { MoEError, checkInteger } from "../errors";

export interface ExpertParallelLayout {
  /** The EP groups: consecutive blocks of epSize ranks. */
  ep: number[][];
  /** The expert-data-parallel groups: the ranks with the same index in their EP block. */
  expertDataParallel: number[][];
}

function checkEpSize(worldSize: number, epSize: number): void {
  checkInteger("worldSize", worldSize, 1);
  checkInteger("epSize", epSize, 1);
  if (worldSize % epSize !== 0) {
    throw new MoEError(`Expected epSize (${epSize}) to divide the world size (${worldSize})`, "ERR_MOE_VALUE");
  }
}

export function expertParallelLayout(worldSize: number, epSize: number): ExpertParallelLayout {
  checkEpSize(worldSize, epSize);
  const blocks = worldSize / epSize;
  const ep = Array.from({ length: blocks }, (_, b) => Array.from({ length: epSize }, (_, i) => b * epSize + i));
  const expertDataParallel = Array.from({ length: epSize }, (_, i) =>
    Array.from({ length: blocks }, (_, b) => b * epSize + i),
  );
  return { ep, expertDataParallel };
}

/** World rank worldRank's place in the layout: its EP rank, its expert-data-parallel rank and that group's size. */
export function expertParallelPosition(
  worldRank: number,
  worldSize: number,
  epSize: number,
): { epRank: number; edpRank: number; edpSize: number } {
  checkEpSize(worldSize, epSize);
  return { epRank: worldRank % epSize, edpRank: Math.floor(worldRank / epSize), edpSize: worldSize / epSize };
}
