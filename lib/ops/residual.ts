/**
 * residualMix: the residual MoE's per-token two-way softmax mix of the routed
 * experts' output and a dense MLP's output (docs/math.md#residual-moe).
 */
import type { Tensor } from "../tensor";
import { handle, native, wrap } from "./common";

/**
 * moe, mlp [tokens, dModel] (one float dtype), logits float32 [tokens, 2], bias float32 [2]:
 * c = softmax(logits[t] + bias), y[t] = c0 · moe[t] + c1 · mlp[t] in moe's dtype. CPU only.
 */
export async function residualMix(moe: Tensor, mlp: Tensor, logits: Tensor, bias: Tensor): Promise<Tensor> {
  return wrap(
    await native().residualMix(handle(moe, "moe"), handle(mlp, "mlp"), handle(logits, "logits"), handle(bias, "bias")),
  );
}

export interface ResidualMixGrads {
  /** c0 · dy, in moe's dtype. */
  dMoe: Tensor;
  /** c1 · dy, in moe's dtype. */
  dMlp: Tensor;
  /** float32 [tokens, 2]: c ⊙ (g − ⟨c, g⟩), g_j = ⟨dy[t], (moe, mlp)_j[t]⟩. */
  dLogits: Tensor;
  /** float32 [2]: dLogits summed over the tokens. */
  dBias: Tensor;
}

/** The gradients of residualMix for dy [tokens, dModel]. */
export async function residualMixBackward(
  dy: Tensor,
  moe: Tensor,
  mlp: Tensor,
  logits: Tensor,
  bias: Tensor,
): Promise<ResidualMixGrads> {
  const g = await native().residualMixBackward(
    handle(dy, "dy"),
    handle(moe, "moe"),
    handle(mlp, "mlp"),
    handle(logits, "logits"),
    handle(bias, "bias"),
  );
  return { dMoe: wrap(g.dMoe), dMlp: wrap(g.dMlp), dLogits: wrap(g.dLogits), dBias: wrap(g.dBias) };
}
