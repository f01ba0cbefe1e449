/** gate: the router's linear layer, logits = x · Wg in float32 (docs/math.md#gate). */
import { handle, native, wrap } from "./common";
import type { Tensor } from "../tensor";

/** x [tokens, dModel] (any float dtype), wg [dModel, numExperts] float32 -> logits [tokens, numExperts] float32. */
export async function gate(x: Tensor, wg: Tensor): Promise<Tensor> {
  return wrap(await native().gate(handle(x, "x"), handle(wg, "wg")));
}

export interface GateGrads {
  dx: Tensor;
  dwg: Tensor;
}

/** dx = dlogits · Wgᵀ (x's dtype), dWg = xᵀ · dlogits (float32). */
export async function gateBackward(x: Tensor, wg: Tensor, dlogits: Tensor): Promise<GateGrads> {
  const g = await native().gateBackward(handle(x, "x"), handle(wg, "wg"), handle(dlogits, "dlogits"));
  return { dx: wrap(g.dx), dwg: wrap(g.dwg) };
}
