/**
 * The residual MoE (PR-MoE; docs/math.md#residual-moe): the routed experts'
 * output and the shared experts' dense MLP output, mixed per token by
 * c = softmax(x · Wc + bc), forward and backward, composed of the gate and
 * residualMix ops.
 */
import { gate, gateBackward } from "../ops/gate";
import { residualMix, residualMixBackward } from "../ops/residual";
import type { Tensor } from "../tensor";
import type { Parameter } from "./parameters";

export interface Coefficient {
  weight: Parameter;
  bias: Parameter;
}

/** What the backward needs: the coefficient logits x · Wc and both outputs that were mixed. */
export interface ResidualSaved {
  logits: Tensor;
  moe: Tensor;
  mlp: Tensor;
}

type Keep = <T extends Tensor>(t: T) => T;

/** y = c0 · moe + c1 · mlp, c = softmax(x · Wc + bc); every tensor made goes to keep. */
export async function residualForward(
  x: Tensor,
  moe: Tensor,
  mlp: Tensor,
  coef: Coefficient,
  keep: Keep,
): Promise<{ y: Tensor; saved: ResidualSaved }> {
  const logits = keep(await gate(x, coef.weight.operand));
  const y = keep(await residualMix(moe, mlp, logits, coef.bias.operand));
  return { y, saved: { logits, moe, mlp } };
}

/**
 * For dy: the gradients reaching the routed output (dMoe) and the MLP (dMlp), the coefficient's
 * contribution to dx, and the coefficient's parameter gradients; every tensor made goes to keep.
 */
export async function residualBackward(
  dy: Tensor,
  x: Tensor,
  saved: ResidualSaved,
  coef: Coefficient,
  keep: Keep,
): Promise<{ dMoe: Tensor; dMlp: Tensor; dx: Tensor; grads: Array<[Parameter, Tensor]> }> {
  const g = await residualMixBackward(dy, saved.moe, saved.mlp, saved.logits, coef.bias.operand);
  for (const t of [g.dMoe, g.dMlp, g.dLogits, g.dBias]) keep(t);
  const gb = await gateBackward(x, coef.weight.operand, g.dLogits);
  keep(gb.dx);
  keep(gb.dwg);
  return {
    dMoe: g.dMoe,
    dMlp: g.dMlp,
    dx: gb.dx,
    grads: [
      [coef.weight, gb.dwg],
      [coef.bias, g.dBias],
    ],
  };
}
