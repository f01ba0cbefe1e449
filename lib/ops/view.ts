/** reshape: another view of a tensor's storage (no copy), with the same number of elements. */
import { checkShape, type Tensor } from "../tensor";
import { handle, native, wrap } from "./common";

/** A tensor sharing t's storage with `shape` (same element count); in-place writes through one show in the other. */
export function reshape(t: Tensor, shape: readonly number[]): Tensor {
  const dims = checkShape(shape);
  return wrap(native().reshape(handle(t, "t"), dims));
}
