/**
 * Gradient clipping by the global norm (Pascanu et al. 2013; PyTorch's
 * clip_grad_norm_), across ranks: replicated gradients (router, shared
 * experts) are the same on every rank and count once; expert gradients are
 * sharded over the EP group, so their squared norms are summed over it
 * (as Megatron-Core counts them).
 */
import { checkNumber, invalid } from "../errors";
import { scaleInPlace, sumSquares } from "../ops/elementwise";
import { Tensor } from "../tensor";
import type { CollectiveGroup } from "../layer/group";

export interface ClipParam {
  readonly grad: Tensor;
  /** Sharded over normGroup (expert weights); default false (replicated). */
  readonly expert?: boolean;
  readonly normGroup?: CollectiveGroup;
}

/**
 * Scales every gradient by min(1, maxNorm / (norm + 1e-6)) and resolves with the global norm
 * before clipping. A non-finite norm leaves the gradients as they are (the caller skips the step).
 */
export async function clipGradNorm(params: Iterable<ClipParam>, maxNorm: number): Promise<number> {
  if (params === null || typeof (params as Iterable<ClipParam>)?.[Symbol.iterator] !== "function")
    throw invalid("an iterable of { grad }", "params", params);
  const list = [...params];
  list.forEach((p, i) => {
    if (p === null || typeof p !== "object" || !(p.grad instanceof Tensor))
      throw invalid("{ grad: Tensor }", `params[${i}]`, p);
  });
  const max = checkNumber("maxNorm", maxNorm, (v) => v > 0, "a finite number > 0");
  // Partial sums: one for the replicated gradients, one per group for the sharded ones.
  const parts = new Map<CollectiveGroup | null, Tensor[]>();
  for (const p of list) {
    const g = p.expert && p.normGroup && p.normGroup.size > 1 ? p.normGroup : null;
    parts.set(g, [...(parts.get(g) ?? []), p.grad]);
  }
  let total = 0;
  for (const [group, grads] of parts) {
    const s = await sumSquares(grads);
    try {
      if (group) await group.allReduce(s, "sum");
      total += s.item();
    } finally {
      s.dispose();
    }
  }
  const norm = Math.sqrt(total);
  const coef = max / (norm + 1e-6);
  if (Number.isFinite(norm) && coef < 1) await Promise.all(list.map((p) => scaleInPlace(p.grad, coef)));
  return norm;
}
