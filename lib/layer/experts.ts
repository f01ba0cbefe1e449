/**
 * The experts' FFN on expert-contiguous rows (docs/math.md#experts):
 *   pre = X · W1 + b1,  h = act(pre),  y = h · W2 + b2
 * as two grouped GEMMs around the activation, forward and backward. The shared
 * experts are the same FFN with one "expert" holding every token.
 */
import { activation, activationBackward, type ActivationKind } from "../ops/activation";
import { groupedGemm, groupedGemmBackward } from "../ops/grouped-gemm";
import type { Tensor } from "../tensor";

export interface FFNWeights {
  w1: Tensor; // [L, D, F] or [L, D, 2F] for gated kinds
  w2: Tensor; // [L, F, D]
  b1?: Tensor; // [L, F or 2F]
  b2?: Tensor; // [L, D]
}

/** What the backward needs from the forward. */
export interface FFNSaved {
  x: Tensor;
  pre: Tensor;
  h: Tensor;
  counts: Tensor;
}

/** Weight gradients undefined where they were written into a target (FFNGradTargets). */
export interface FFNGrads {
  dx: Tensor;
  dw1?: Tensor;
  dw2?: Tensor;
  db1?: Tensor;
  db2?: Tensor;
}

/** A gradient buffer the weight-gradient GEMM writes into (beta = 0) or adds into (accumulate: beta = 1). */
export interface GradTarget {
  into: Tensor;
  accumulate: boolean;
}

export interface FFNGradTargets {
  dw1?: GradTarget;
  dw2?: GradTarget;
}

/** y [R, D] for rows x [R, D] split by counts int32 [L]; `saved` keeps x, pre, h and counts (not disposed here). */
export async function ffnForward(
  x: Tensor,
  counts: Tensor,
  w: FFNWeights,
  kind: ActivationKind,
): Promise<{ y: Tensor; saved: FFNSaved }> {
  const pre = await groupedGemm(x, w.w1, counts, { bias: w.b1 });
  const h = await activation(pre, kind);
  const y = await groupedGemm(h, w.w2, counts, { bias: w.b2 });
  return { y, saved: { x, pre, h, counts } };
}

/**
 * The FFN's input and weight gradients for dy [R, D] (weight gradients float32). A weight gradient
 * with a target is written (or added) there by its GEMM and comes back undefined.
 */
export async function ffnBackward(
  dy: Tensor,
  s: FFNSaved,
  w: FFNWeights,
  kind: ActivationKind,
  targets: FFNGradTargets = {},
): Promise<FFNGrads> {
  const hasBias = w.b1 !== undefined;
  const into = (t?: GradTarget) => (t ? { dwInto: t.into, accumulate: t.accumulate } : {});
  const g2 = await groupedGemmBackward(dy, s.h, w.w2, s.counts, {
    needDx: true,
    needDw: true,
    needDbias: hasBias,
    ...into(targets.dw2),
  });
  // A handle of the target's own storage: the caller's tensor stays.
  if (targets.dw2) g2.dw!.dispose();
  let dpre: Tensor;
  try {
    // dh is not needed again: d pre is written over it where the activation allows.
    dpre = await activationBackward(g2.dx!, s.pre, kind, { reuseDh: true });
  } catch (e) {
    if (!targets.dw2) g2.dw?.dispose();
    g2.dbias?.dispose();
    throw e;
  } finally {
    g2.dx!.dispose();
  }
  try {
    const g1 = await groupedGemmBackward(dpre, s.x, w.w1, s.counts, {
      needDx: true,
      needDw: true,
      needDbias: hasBias,
      ...into(targets.dw1),
    });
    if (targets.dw1) g1.dw!.dispose();
    return {
      dx: g1.dx!,
      dw1: targets.dw1 ? undefined : g1.dw,
      dw2: targets.dw2 ? undefined : g2.dw,
      db1: g1.dbias,
      db2: g2.dbias,
    };
  } catch (e) {
    if (!targets.dw2) g2.dw?.dispose();
    g2.dbias?.dispose();
    throw e;
  } finally {
    dpre.dispose();
  }
}
