type ScoreFunction = "softmax" | "sigmoid";
type DropPolicy = "probs" | "position";
type ActivationKind = "relu" | "gelu" | "silu" | "swiglu" | "geglu";

export interface RouteCase {
  name: string;
  tokens: number;
  experts: number;
  options: {
    topK: number;
    scoreFunction?: ScoreFunction;
    renormalize?: boolean;
    numGroups?: number;
    topkGroups?: number;
  };
}

export interface PermuteCase {
  name: string;
  k: number;
  experts: number;
  /** The experts tokens may choose. */
  allowed: number[];
  /** permute's options, numExperts aside. */
  options: { capacityFactor?: number; dropPolicy?: DropPolicy; padToCapacity?: boolean };
}

export interface GroupedGemmCase {
  name: string;
  /** Rows per expert. */
  counts: number[];
  /** x [R, K] · w [L, K, N]. */
  k: number;
  n: number;
  /** Also run on the mma.sync kernel. */
  mmaSync?: boolean;
}

/** [tokens, dModel, experts] */
export const gate: { small: Array<[number, number, number]>; atScale: Array<[number, number, number]> };
export const route: { small: RouteCase[]; atScale: RouteCase[] };
export const permute: {
  small: { tokens: number; width: number; cases: PermuteCase[] };
  atScale: Array<PermuteCase & { tokens: number; width: number }>;
};
/** [tokens, width, k, rows] */
export const sharedRows: { atScale: Array<[number, number, number, number]> };
/** [kind, rows, width] */
export const activation: { atScale: Array<[ActivationKind, number, number]> };
export const groupedGemm: { small: GroupedGemmCase[]; atScale: GroupedGemmCase[] };
