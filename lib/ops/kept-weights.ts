/**
 * renormalizeKept: gate weights renormalised over the choices that survive
 * capacity (DeepSpeed's top-2 and top-k gating; docs/math.md#weights-after-capacity).
 */
import type { Tensor } from "../tensor";
import { handle, native, wrap } from "./common";

/**
 * weights float32 [tokens, topK], pairToRow int32 [tokens, topK] (permute's; -1: dropped) -> float32
 * `[tokens, topK]`, w / max(S, FLT_EPSILON) for the kept choices, S their sum; 0 for the dropped. CPU only.
 */
export async function renormalizeKept(weights: Tensor, pairToRow: Tensor): Promise<Tensor> {
  return wrap(await native().renormalizeKept(handle(weights, "weights"), handle(pairToRow, "pairToRow")));
}

/** The gradient of the raw weights from dKept, the gradient of renormalizeKept's output. */
export async function renormalizeKeptBackward(weights: Tensor, pairToRow: Tensor, dKept: Tensor): Promise<Tensor> {
  return wrap(
    await native().renormalizeKeptBackward(
      handle(weights, "weights"),
      handle(pairToRow, "pairToRow"),
      handle(dKept, "dKept"),
    ),
  );
}
