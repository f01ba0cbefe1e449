/** reshape: another view of a tensor's storage (no copy), with the same number of elements. */
import { invalid } from "../errors";
import type { Tensor } from "../tensor";
import { handle, native, wrap } from "./common";

/** A tensor sharing t's storage with `shape` (same element count); in-place writes through one show in the other. */
export function reshape(t: Tensor, shape: readonly number[]): Tensor {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw invalid("an array of non-negative integers", "shape", shape, "ERR_MOE_SHAPE");
  }
  return wrap(native().reshape(handle(t, "t"), [...shape]));
}
