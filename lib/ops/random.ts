/**
 * Seeded, counter-based random numbers (cpp/ops/random.h has the generator,
 * SplitMix64): every element is a pure function of (seed, key, slice, index),
 * so expert e's initial weights are the same whatever the EP size, and the
 * router's jitter is reproducible.
 */
import { checkInteger, checkNumber, checkOneOf, invalid, orDefault } from "../errors";
import type { Tensor } from "../tensor";
import { handle, native, wrap } from "./common";

export type Distribution = "normal" | "uniform" | "gumbel";
const DISTRIBUTIONS: readonly Distribution[] = ["normal", "uniform", "gumbel"];
const MAX_U32 = 0xffffffff;

export interface RandomStreamOptions {
  /** An integer in [0, 2^53). */
  seed: number;
  /** An integer in [0, 2^32): which stream, e.g. hashName(parameter name). */
  key?: number;
}

export interface FillRandomOptions extends RandomStreamOptions {
  /** Default "normal". */
  distribution?: Distribution;
  /** normal: the mean (default 0); gumbel: the location (default 0). */
  mean?: number;
  /** normal: the standard deviation (default 1); gumbel: the scale (default 1; gumbel is CPU only). */
  std?: number;
  /** uniform: the low end (default 0). */
  low?: number;
  /** uniform: the high end (default 1). */
  high?: number;
  /** Elements per slice (default 0: the whole tensor is one slice); must divide the element count. */
  sliceSize?: number;
  /** The index of the tensor's first slice in the stream (default 0). */
  firstSlice?: number;
}

function stream(o: RandomStreamOptions): { seed: number; key: number } {
  return { seed: checkInteger("seed", o.seed, 0), key: checkInteger("key", orDefault(o.key, 0), 0, MAX_U32) };
}

/** FNV-1a (32 bits) of a name's UTF-8 bytes: the stream key of a named parameter. */
export function hashName(name: string): number {
  if (typeof name !== "string") throw invalid("a string", "name", name);
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(name, "utf8")) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** Fills t (any float dtype) in place with normal or uniform values of the seeded stream. */
export async function fillRandom(t: Tensor, options: FillRandomOptions): Promise<void> {
  if (options === null || typeof options !== "object")
    throw invalid("an options object with a seed", "fillRandom options", options);
  const distribution =
    options.distribution === undefined ? "normal" : checkOneOf("distribution", options.distribution, DISTRIBUTIONS);
  const finite = (v: number) => Number.isFinite(v);
  let a: number;
  let b: number;
  if (distribution !== "uniform") {
    a = checkNumber("mean", orDefault(options.mean, 0), finite, "a finite number");
    b = checkNumber("std", orDefault(options.std, 1), (v) => v >= 0, "a finite number >= 0");
  } else {
    a = checkNumber("low", orDefault(options.low, 0), finite, "a finite number");
    b = checkNumber("high", orDefault(options.high, 1), (v) => v >= a, `a finite number >= low (${a})`);
  }
  const o = {
    ...stream(options),
    distribution,
    a,
    b,
    sliceSize: checkInteger("sliceSize", orDefault(options.sliceSize, 0), 0),
    firstSlice: checkInteger("firstSlice", orDefault(options.firstSlice, 0), 0, MAX_U32),
  };
  await native().fillRandom(handle(t, "t"), o);
}

export interface JitterOptions extends RandomStreamOptions {
  /** ε in [0, 1): the noise is uniform in [1 − ε, 1 + ε]. */
  eps: number;
  /** Which draw of the stream (e.g. the step), an integer in [0, 2^32). */
  slice?: number;
}

/**
 * Router jitter (docs/math.md#jitter; Switch Transformer's multiplicative noise):
 * x ⊙ u, u_i = 1 − ε + 2ε·uniform_i, in x's dtype. Called again on a gradient
 * with the same options, it is its own backward.
 */
export async function jitter(x: Tensor, options: JitterOptions): Promise<Tensor> {
  if (options === null || typeof options !== "object")
    throw invalid("an options object with eps and seed", "jitter options", options);
  const o = {
    eps: checkNumber("eps", options.eps, (v) => v >= 0 && v < 1, "a number in [0, 1)"),
    ...stream(options),
    slice: checkInteger("slice", orDefault(options.slice, 0), 0, MAX_U32),
  };
  return wrap(await native().jitter(handle(x, "x"), o));
}
