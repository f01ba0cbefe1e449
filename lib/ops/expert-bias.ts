/**
 * The expert bias update of aux-loss-free load balancing (DeepSeek-V3;
 * docs/math.md#expert-bias): b_e += rate · sign(mean load − load_e).
 */
import { checkNumber } from "../errors";
import type { Tensor } from "../tensor";
import { handle, native } from "./common";

/** In place on bias float32 [E], from load [E] (int32 or float32 global tokens per expert). */
export async function expertBiasUpdate(bias: Tensor, load: Tensor, rate: number): Promise<void> {
  const r = checkNumber("rate", rate, (v) => v >= 0, "a finite number >= 0");
  await native().expertBiasUpdate(handle(bias, "bias"), handle(load, "load"), { rate: r });
}
