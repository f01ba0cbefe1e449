/**
 * Expert activations (docs/math.md#activations): relu, gelu (exact, x/2·(1 +
 * erf(x/√2))), silu, and the gated swiglu (silu) and geglu (tanh-form gelu),
 * whose input holds the gate half first, then the up half: h = act(gate) ⊙ up.
 */
import { checkOneOf, invalid } from "../errors";
import type { Tensor } from "../tensor";
import { handle, native, wrap } from "./common";

export type ActivationKind = "relu" | "gelu" | "silu" | "swiglu" | "geglu";
export const ACTIVATION_KINDS: readonly ActivationKind[] = ["relu", "gelu", "silu", "swiglu", "geglu"];

/** Whether a kind halves the last dim (x [..., 2F] -> h [..., F]). */
export function isGated(kind: ActivationKind): boolean {
  return kind === "swiglu" || kind === "geglu";
}

/** x [..., C] any float dtype -> h in x's dtype: [..., C], or [..., C/2] for swiglu / geglu (C even). */
export async function activation(x: Tensor, kind: ActivationKind): Promise<Tensor> {
  const k = checkOneOf("kind", kind, ACTIVATION_KINDS);
  return wrap(await native().activation(handle(x, "x"), k));
}

/**
 * dh with h's shape (any float dtype), x the forward input -> dx with x's shape and dtype.
 * reuseDh: the caller gives dh up, and dx may be written over dh's storage (one buffer fewer) where
 * the shapes and dtypes allow; dh's contents are unspecified afterwards.
 */
export async function activationBackward(
  dh: Tensor,
  x: Tensor,
  kind: ActivationKind,
  options: { reuseDh?: boolean } = {},
): Promise<Tensor> {
  const k = checkOneOf("kind", kind, ACTIVATION_KINDS);
  if (options === null || typeof options !== "object") throw invalid("an options object", "options", options);
  const reuse = options.reuseDh ?? false;
  if (typeof reuse !== "boolean") throw invalid("a boolean", "reuseDh", reuse);
  return wrap(await native().activationBackward(handle(dh, "dh"), handle(x, "x"), k, reuse));
}
