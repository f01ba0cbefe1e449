/**
 * chunkTranspose: rows received from the all-to-all grouped [source rank][local
 * expert] regrouped [local expert][source rank], so each local expert's rows are
 * contiguous for the grouped GEMM (docs/math.md#dispatch-and-combine); with the
 * transposed counts, the way back for the combine.
 */
import type { Tensor } from "../tensor";
import { handle, native, wrap } from "./common";

/**
 * x [R, ...] (any dtype) holds A·B chunks in a-major order, chunk (a, b) being counts[a, b] rows
 * (counts int32 [A, B], summing to R). Returns the rows with the chunks in b-major order.
 */
export async function chunkTranspose(x: Tensor, counts: Tensor): Promise<Tensor> {
  return wrap(await native().chunkTranspose(handle(x, "x"), handle(counts, "counts")));
}
