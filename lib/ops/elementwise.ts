/**
 * Elementwise and reducing ops around the expert math: residual sums, gradient
 * accumulation and scaling (axpby), and the sum of squares behind global-norm
 * gradient clipping. All compute in float32 (sums of squares in double).
 */
import { checkNumber, invalid } from "../errors";
import type { Tensor } from "../tensor";
import { handle, native, optionalHandle, wrap } from "./common";

const finite = (v: number) => Number.isFinite(v);

/** a + b for two float tensors of one shape (any float dtypes), in a's dtype. */
export async function add(a: Tensor, b: Tensor): Promise<Tensor> {
  return wrap(await native().add(handle(a, "a"), handle(b, "b")));
}

export interface AxpbyOptions {
  /** Default 1. With 0, y is not read (BLAS's convention): y = beta·x even where y held NaN. */
  alpha?: number;
  /** Default 1. */
  beta?: number;
}

/** In place: y = alpha·y + beta·x (x null: y = alpha·y); y stored back rounded to its dtype. */
export async function axpby(y: Tensor, x: Tensor | null, options: AxpbyOptions = {}): Promise<void> {
  if (options === null || typeof options !== "object") throw invalid("an options object", "axpby options", options);
  const alpha = options.alpha === undefined ? 1 : checkNumber("alpha", options.alpha, finite, "a finite number");
  const beta = options.beta === undefined ? 1 : checkNumber("beta", options.beta, finite, "a finite number");
  await native().axpby(handle(y, "y"), optionalHandle(x, "x"), { alpha, beta });
}

/** In place: y += x (x a tensor: null is not "nothing to add"). */
export async function addInPlace(y: Tensor, x: Tensor): Promise<void> {
  handle(x, "x");
  return axpby(y, x, { alpha: 1, beta: 1 });
}

/** In place: y *= s. */
export async function scaleInPlace(y: Tensor, s: number): Promise<void> {
  return axpby(y, null, { alpha: s, beta: 0 });
}

/** In place: y = x (converted to y's dtype; x a tensor: null is not zero). */
export async function copyInto(y: Tensor, x: Tensor): Promise<void> {
  handle(x, "x");
  return axpby(y, x, { alpha: 0, beta: 1 });
}

/** In place: y = 0. */
export async function zeroInPlace(y: Tensor): Promise<void> {
  return axpby(y, null, { alpha: 0, beta: 0 });
}

/** Σ over the tensors of Σ t², as a float32 scalar tensor (double sums, independent of the thread count). */
export async function sumSquares(tensors: readonly Tensor[]): Promise<Tensor> {
  if (!Array.isArray(tensors)) throw invalid("an array of tensors", "tensors", tensors);
  return wrap(await native().sumSquares(tensors.map((t, i) => handle(t, `tensors[${i}]`))));
}
