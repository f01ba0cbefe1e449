/**
 * adamw: one AdamW step in place (Loshchilov & Hutter), with PyTorch's
 * torch.optim.AdamW semantics, computed in float32:
 *   p -= lr·wd·p;  m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²;
 *   p -= lr · (m / (1 − β1^step)) / (√(v / (1 − β2^step)) + eps)
 */
import { checkInteger, checkNumber, invalid, orDefault } from "../errors";
import type { Tensor } from "../tensor";
import { handle, native } from "./common";

export interface AdamWStepOptions {
  lr: number;
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.999. */
  beta2?: number;
  /** Default 1e-8. */
  eps?: number;
  /** Decoupled weight decay, default 0.01. */
  weightDecay?: number;
  /** The step being taken, counted from 1 (bias correction). */
  step: number;
}

/**
 * Updates param (any float dtype, stored back rounded), expAvg and expAvgSq (float32)
 * in place from grad (any float dtype); all four of one shape.
 */
export async function adamw(
  param: Tensor,
  grad: Tensor,
  expAvg: Tensor,
  expAvgSq: Tensor,
  opts: AdamWStepOptions,
): Promise<void> {
  if (opts === null || typeof opts !== "object")
    throw invalid("an options object with lr and step", "adamw options", opts);
  const beta = (v: number) => v >= 0 && v < 1;
  const o = {
    lr: checkNumber("lr", opts.lr, (v) => v >= 0, "a finite number >= 0"),
    beta1: checkNumber("beta1", orDefault(opts.beta1, 0.9), beta, "a number in [0, 1)"),
    beta2: checkNumber("beta2", orDefault(opts.beta2, 0.999), beta, "a number in [0, 1)"),
    eps: checkNumber("eps", orDefault(opts.eps, 1e-8), (v) => v >= 0, "a finite number >= 0"),
    weightDecay: checkNumber("weightDecay", orDefault(opts.weightDecay, 0.01), (v) => v >= 0, "a finite number >= 0"),
    step: checkInteger("step", opts.step, 1),
  };
  await native().adamw(
    handle(param, "param"),
    handle(grad, "grad"),
    handle(expAvg, "expAvg"),
    handle(expAvgSq, "expAvgSq"),
    o,
  );
}
