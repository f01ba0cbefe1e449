/**
 * AdamWOptions from the `optimizer` section of a DeepSpeed shaped config,
 * { optimizer: { type: "AdamW", params: { lr, betas, eps, weight_decay } } },
 * read completely or refused (docs/config.md#the-optimizer-section). Defaults are
 * DeepSpeed's for that section (its fused AdamW: lr 1e-3, weight_decay 0), not
 * this package's AdamW constructor's.
 */
import { MoEError, invalid } from "../errors";
import { didYouMean } from "../suggest";
import type { AdamWOptions } from "./adamw";

/** DeepSpeed's optimizer section. */
export interface OptimizerConfig {
  /** "AdamW" (any case). */
  type: string;
  params?: Readonly<Record<string, unknown>>;
}

/** Keys that choose an implementation only (the result is the same): accepted at any value. */
const IMPLEMENTATION = ["torch_adam", "fused", "foreach", "capturable"];
/** Keys that would change the math: accepted only at the value AdamW computes with. */
const FIXED: Readonly<Record<string, { value: boolean; meaning: string }>> = {
  adam_w_mode: { value: true, meaning: "false is Adam with L2 regularisation" },
  amsgrad: { value: false, meaning: "AMSGrad is not supported" },
  bias_correction: { value: true, meaning: "the moments are always bias-corrected" },
  maximize: { value: false, meaning: "AdamW minimises" },
};
const READ = ["lr", "betas", "eps", "weight_decay"];

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

/** AdamWOptions from config.optimizer; other optimizer types and unknown params are ERR_MOE_VALUE. */
export function adamwOptionsFromConfig(config: Readonly<Record<string, unknown>>): AdamWOptions {
  if (!isObject(config)) throw invalid("a config object with an optimizer section", "config", config);
  const section = config.optimizer;
  if (!isObject(section)) throw invalid("an object { type, params }", "optimizer", section);
  for (const key of Object.keys(section)) {
    if (key !== "type" && key !== "params")
      throw new MoEError(
        `Expected optimizer to hold type and params but received the unknown key "${key}"${didYouMean(key, ["type", "params"])}`,
        "ERR_MOE_VALUE",
      );
  }
  const type = section.type;
  if (typeof type !== "string") throw invalid("a string", "optimizer.type", type);
  if (type.toLowerCase() !== "adamw") {
    throw new MoEError(
      `Expected optimizer.type "AdamW" but received "${type}": AdamW is the one optimizer here`,
      "ERR_MOE_VALUE",
    );
  }
  const params = section.params ?? {};
  if (!isObject(params)) throw invalid("an object", "optimizer.params", params);
  const known = [...READ, ...IMPLEMENTATION, ...Object.keys(FIXED)];
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || READ.includes(key) || IMPLEMENTATION.includes(key)) continue;
    const fixed = FIXED[key];
    if (fixed === undefined) {
      throw new MoEError(
        `Expected optimizer.params among ${known.join(", ")} but received the unknown key "${key}"${didYouMean(key, known)}`,
        "ERR_MOE_VALUE",
      );
    }
    if (value !== fixed.value) throw invalid(`${fixed.value} (${fixed.meaning})`, `optimizer.params.${key}`, value);
  }
  const num = (key: string, fallback: number): number => {
    const v = params[key];
    if (v === undefined) return fallback;
    if (typeof v !== "number") throw invalid("a number", `optimizer.params.${key}`, v);
    return v;
  };
  const betas = params.betas ?? [0.9, 0.999];
  if (!Array.isArray(betas) || betas.length !== 2 || !betas.every((b) => typeof b === "number"))
    throw invalid("[beta1, beta2]", "optimizer.params.betas", betas);
  return {
    lr: num("lr", 1e-3),
    beta1: betas[0] as number,
    beta2: betas[1] as number,
    eps: num("eps", 1e-8),
    weightDecay: num("weight_decay", 0),
  };
}
