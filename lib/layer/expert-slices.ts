/**
 * Expert tensor parallelism's slices (docs/architecture.md#expert-tensor-parallelism): with etpSize
 * ranks per expert, rank t of an ETP group holds F / etpSize of each expert's hidden width:
 *
 *   experts.w1  [L, D, F1]  ->  [L, D, F1 / etp]  columns t·Fs … (t+1)·Fs − 1 (gated kinds: of the
 *                                                 gate half, then the same columns of the up half)
 *   experts.b1  [L, F1]     ->  [L, F1 / etp]     likewise
 *   experts.w2  [L, F, D]   ->  [L, F / etp, D]   rows t·Fs … (t+1)·Fs − 1
 *   experts.b2  [L, D]      whole on every ETP rank (added once, by ETP rank 0)
 *
 * Each tensor is seen as runs of equal length in the order (outer, half, t); a chunk transpose with
 * unit counts makes it (t, outer, half), where rank t's slice is one contiguous block. The way back
 * (joining every rank's slice) is the transpose the other way. Checkpoints hold experts whole: the
 * slices are joined before saving and cut again after loading, so any (epSize, etpSize) loads any
 * checkpoint.
 */
import { isGated, type ActivationKind } from "../ops/activation";
import { chunkTranspose } from "../ops/chunks";
import { copyInto } from "../ops/elementwise";
import { reshape } from "../ops/view";
import { Tensor, type DType, type DeviceName } from "../tensor";
import type { CollectiveGroup } from "./group";
import type { ExpertGather } from "./state-dict";

export type SliceKind = "w1" | "b1" | "w2";

/** Which expert tensors are sliced, by name (…experts.w1, …experts.w1.exp_avg, …). */
export function sliceKind(name: string): SliceKind | undefined {
  const m = /(^|\.)experts\.(w1|b1|w2)(\.exp_avg|\.exp_avg_sq)?$/.exec(name);
  return m ? (m[2] as SliceKind) : undefined;
}

/** The runs of a tensor of `kind`: outer × halves × etp runs of `run` elements each. */
function runs(kind: SliceKind, full: readonly number[], etp: number, gated: boolean) {
  const halves = kind === "w2" || !gated ? 1 : 2;
  const [L, a, b] = full;
  if (kind === "w1") return { outer: L * a, halves, run: b / halves / etp };
  if (kind === "b1") return { outer: L, halves, run: a / halves / etp };
  return { outer: L, halves, run: (a / etp) * b };
}

/** The slice's shape for the whole tensor's shape. */
export function sliceShape(kind: SliceKind, full: readonly number[], etp: number): number[] {
  if (kind === "w2") return [full[0], full[1] / etp, full[2]];
  return kind === "w1" ? [full[0], full[1], full[2] / etp] : [full[0], full[1] / etp];
}

/** The whole tensor's shape for a slice's shape. */
export function wholeShape(kind: SliceKind, slice: readonly number[], etp: number): number[] {
  if (kind === "w2") return [slice[0], slice[1] * etp, slice[2]];
  return kind === "w1" ? [slice[0], slice[1], slice[2] * etp] : [slice[0], slice[1] * etp];
}

function ones(n: number, shape: number[], device: string): Tensor {
  return Tensor.from(new Int32Array(n).fill(1), shape, { dtype: "int32", device: device as DeviceName });
}

function hostView(dtype: DType, bytes: Uint8Array): Float32Array | Uint16Array | Int32Array | BigInt64Array {
  const b = bytes.slice();
  if (dtype === "float32") return new Float32Array(b.buffer);
  if (dtype === "int32") return new Int32Array(b.buffer);
  if (dtype === "int64") return new BigInt64Array(b.buffer);
  return new Uint16Array(b.buffer);
}

/** Rank t's slice of a whole expert tensor (a new tensor on the same device). */
export async function sliceOf(
  whole: Tensor,
  kind: SliceKind,
  etp: number,
  t: number,
  activation: ActivationKind,
): Promise<Tensor> {
  const { outer, halves, run } = runs(kind, whole.shape, etp, isGated(activation));
  const blocks = outer * halves;
  const counts = ones(blocks * etp, [blocks, etp], whole.device);
  const rows = reshape(whole, [blocks * etp, run]);
  try {
    using byRank = await chunkTranspose(rows, counts);
    // Rank t's block, cut on the host (a byte range: no arithmetic on the values).
    const all = new Uint8Array(byRank.handle.read(byRank.dtype));
    const per = all.byteLength / etp;
    const bytes = all.subarray(t * per, (t + 1) * per);
    return Tensor.from(hostView(whole.dtype, bytes), sliceShape(kind, whole.shape, etp), {
      dtype: whole.dtype,
      device: whole.device as DeviceName,
    });
  } finally {
    rows.dispose();
    counts.dispose();
  }
}

/** The whole tensor from every ETP rank's slice, gathered over `etp` (every member calls it). */
export async function wholeOf(
  slice: Tensor,
  kind: SliceKind,
  etp: CollectiveGroup,
  activation: ActivationKind,
): Promise<Tensor> {
  const full = wholeShape(kind, slice.shape, etp.size);
  const { outer, halves, run } = runs(kind, full, etp.size, isGated(activation));
  const blocks = outer * halves;
  const rows = reshape(slice, [blocks, run]);
  const counts = ones(blocks * etp.size, [etp.size, blocks], slice.device);
  try {
    const g = await etp.allGatherV!(rows);
    try {
      const joined = await chunkTranspose(g.output, counts);
      const out = reshape(joined, full);
      joined.dispose();
      return out;
    } finally {
      g.output.dispose();
    }
  } finally {
    rows.dispose();
    counts.dispose();
  }
}

/**
 * The ExpertGather (lib/layer/state-dict.ts) of a layer whose experts are sliced over an ETP group:
 * state dicts, checkpoints and Hugging Face exports see every expert tensor whole. gather() is a
 * collective over the ETP group for w1, b1 and w2 (every member calls it, in the same order);
 * scatter() cuts this rank's slice locally.
 */
export function etpExpertGather(
  etp: () => CollectiveGroup,
  etpSize: number,
  etpRank: number,
  activation: ActivationKind,
): ExpertGather {
  return {
    wholeShape(p, tensor) {
      const kind = sliceKind(p.name);
      return kind ? wholeShape(kind, tensor.shape, etpSize) : tensor.shape;
    },
    async gather(p, tensor) {
      const kind = sliceKind(p.name);
      return kind ? wholeOf(tensor, kind, etp(), activation) : tensor;
    },
    async scatter(p, tensor, whole) {
      const kind = sliceKind(p.name);
      if (!kind) return copyInto(tensor, whole);
      using cut = await sliceOf(whole, kind, etpSize, etpRank, activation);
      await copyInto(tensor, cut);
    },
  };
}
