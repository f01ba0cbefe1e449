/**
 * DeepSpeed's `MoE(...)` keyword form (deepspeed.moe.layer.MoE), with
 * DeepSpeed's defaults, translated into the layer's native options
 * (docs/deepspeed.md has the table, docs/math.md the semantics). DeepSpeed
 * takes an expert module; here the expert is the layer's FFN, described by
 * ffn_hidden_size (or intermediate_size), activation and bias.
 */
import { MoEError, checkInteger, checkNumber, checkOneOf, invalid, orDefault } from "../errors";
import { ACTIVATION_KINDS, type ActivationKind } from "../ops/activation";
import type { DeviceName } from "../tensor";
import type { MoELayerOptions, ParamDType } from "./config";

export type NoisyGatePolicy = "None" | "Jitter" | "RSample";
const NOISY_GATE_POLICIES: readonly NoisyGatePolicy[] = ["None", "Jitter", "RSample"];

/** The keywords of DeepSpeed's MoE(...), plus the expert's shape and the layer's own settings. */
export interface DeepSpeedMoEKwargs {
  /** Model width (required). */
  hidden_size: number;
  /** Experts in all (default 1). */
  num_experts?: number;
  /** Expert-parallel ranks (default 1). */
  ep_size?: number;
  /** Experts per token (default 1). */
  k?: number;
  /** Training capacity factor (default 1.0). */
  capacity_factor?: number;
  /** Evaluation capacity factor (default 1.0). */
  eval_capacity_factor?: number;
  /** Smallest capacity per expert (default 4). */
  min_capacity?: number;
  /** Residual MoE: a dense MLP beside the experts, mixed by a learned coefficient (default false). */
  use_residual?: boolean;
  /** None, "None", "Jitter" or "RSample" (default None). */
  noisy_gate_policy?: NoisyGatePolicy | null;
  /** false: no token is dropped (default true). */
  drop_tokens?: boolean;
  /** Random token selection (default true); accepted, the kept tokens are the first in token order. */
  use_rts?: boolean;
  /** k = 2: the second expert chosen with Gumbel noise on the logits, in training and evaluation (default true). */
  top2_2nd_expert_sampling?: boolean;
  /** Tutel kernels (default false); accepted, no effect on the math. */
  use_tutel?: boolean;
  /** Expert tensor parallelism: only false (default false). */
  enable_expert_tensor_parallelism?: boolean;
  /** Expert width F (default 4 · hidden_size). */
  ffn_hidden_size?: number;
  /** The same as ffn_hidden_size (Hugging Face's name). */
  intermediate_size?: number;
  /** The expert's activation (default "gelu"). */
  activation?: ActivationKind;
  /** Bias terms in the experts and the residual MLP, as torch.nn.Linear has (default false). */
  bias?: boolean;
  /** The coefficient the layer's auxLoss carries, and its gradient (default 0; DeepSpeed returns l_aux bare). */
  aux_loss_coef?: number;
  dtype?: ParamDType;
  device?: DeviceName;
  seed?: number;
  init_std?: number;
  name?: string;
}

const KEYS = [
  "hidden_size",
  "num_experts",
  "ep_size",
  "k",
  "capacity_factor",
  "eval_capacity_factor",
  "min_capacity",
  "use_residual",
  "noisy_gate_policy",
  "drop_tokens",
  "use_rts",
  "use_tutel",
  "enable_expert_tensor_parallelism",
  "top2_2nd_expert_sampling",
  "ffn_hidden_size",
  "intermediate_size",
  "activation",
  "bias",
  "aux_loss_coef",
  "dtype",
  "device",
  "seed",
  "init_std",
  "name",
] as const;

/** DeepSpeed's defaults, as DeepSpeed's MoE(...) has them. */
export const DEEPSPEED_DEFAULTS = {
  num_experts: 1,
  ep_size: 1,
  k: 1,
  capacity_factor: 1.0,
  eval_capacity_factor: 1.0,
  min_capacity: 4,
  use_residual: false,
  noisy_gate_policy: null,
  drop_tokens: true,
  use_rts: true,
  use_tutel: false,
  enable_expert_tensor_parallelism: false,
  top2_2nd_expert_sampling: true,
} as const;

/** DeepSpeed's multiplicative jitter ε (multiplicative_jitter's epsilon). */
export const DEEPSPEED_JITTER_EPS = 1e-2;

function flag(kw: Record<string, unknown>, name: string, fallback: boolean): boolean {
  const v = kw[name];
  if (v === undefined) return fallback;
  if (typeof v !== "boolean") throw invalid("a boolean", name, v);
  return v;
}

/**
 * Translates DeepSpeed's MoE(...) keywords into MoELayerOptions with DeepSpeed's defaults and
 * semantics: capacity factor 1.0 (eval 1.0) with min_capacity 4 and tokens dropped unless
 * drop_tokens is false, top-1 weights the chosen softmax probability, 'Jitter' as ε = 1e-2, and
 * use_residual as the residual MoE. Unknown keywords and settings the layer cannot honour are a
 * MoEError naming them.
 */
export function deepSpeedOptions(kwargs: DeepSpeedMoEKwargs | Record<string, unknown>): MoELayerOptions {
  if (kwargs === null || typeof kwargs !== "object" || Array.isArray(kwargs))
    throw invalid("an object of DeepSpeed MoE keywords", "kwargs", kwargs);
  const kw = kwargs as Record<string, unknown>;
  for (const key of Object.keys(kw)) {
    if ((KEYS as readonly string[]).includes(key)) continue;
    const hint = key === "expert" ? " (describe the expert with ffn_hidden_size, activation and bias)" : "";
    throw new MoEError(
      `Expected DeepSpeed MoE keywords among ${KEYS.join(", ")} but received the unknown keyword "${key}"${hint}`,
      "ERR_MOE_VALUE",
    );
  }
  const D = DEEPSPEED_DEFAULTS;
  const dModel = checkInteger("hidden_size", kw.hidden_size, 1);
  const numExperts = checkInteger("num_experts", orDefault(kw.num_experts, D.num_experts), 1);
  const epSize = checkInteger("ep_size", orDefault(kw.ep_size, D.ep_size), 1);
  const topK = checkInteger("k", orDefault(kw.k, D.k), 1);
  if (kw.ffn_hidden_size !== undefined && kw.intermediate_size !== undefined)
    throw new MoEError("Expected one of ffn_hidden_size and intermediate_size but received both", "ERR_MOE_VALUE");
  const dFF = checkInteger("ffn_hidden_size", orDefault(kw.ffn_hidden_size ?? kw.intermediate_size, 4 * dModel), 1);
  const positive = (v: number) => v > 0;
  const capacityFactor = checkNumber(
    "capacity_factor",
    orDefault(kw.capacity_factor, D.capacity_factor),
    positive,
    "a finite number > 0",
  );
  const evalCapacityFactor = checkNumber(
    "eval_capacity_factor",
    orDefault(kw.eval_capacity_factor, D.eval_capacity_factor),
    positive,
    "a finite number > 0",
  );
  const minCapacity = checkInteger("min_capacity", orDefault(kw.min_capacity, D.min_capacity), 0, 2147483647);
  const dropTokens = flag(kw, "drop_tokens", D.drop_tokens);
  const residual = flag(kw, "use_residual", D.use_residual);
  flag(kw, "use_rts", D.use_rts);
  flag(kw, "use_tutel", D.use_tutel);
  if (flag(kw, "enable_expert_tensor_parallelism", D.enable_expert_tensor_parallelism)) {
    throw new MoEError(
      "Expected enable_expert_tensor_parallelism false (the layer does not split an expert over ranks) but received true",
      "ERR_MOE_UNSUPPORTED",
    );
  }
  const policy =
    kw.noisy_gate_policy === undefined || kw.noisy_gate_policy === null
      ? "None"
      : checkOneOf("noisy_gate_policy", kw.noisy_gate_policy, NOISY_GATE_POLICIES);

  const out: MoELayerOptions = {
    dModel,
    dFF,
    numExperts,
    topK,
    epSize,
    // Top-1: the weight is the chosen expert's softmax probability; k >= 2: the kept weights of a
    // token sum to 1, renormalised after capacity (top2gating, topkgating).
    renormalize: false,
    // DeepSpeed keeps the first tokens in order for k = 1 (top1gating without random token
    // selection), every first choice before any second for k = 2 (top2gating's locations), and the
    // most probable for k > 2 (topkgating's "probs").
    dropPolicy: topK === 1 ? "position" : topK === 2 ? "choice" : "probs",
  };
  if (topK > 1) out.renormalizeKept = true;
  if (dropTokens) {
    out.capacityFactor = capacityFactor;
    out.evalCapacityFactor = evalCapacityFactor;
    out.minCapacity = minCapacity;
  }
  if (policy === "Jitter") out.jitter = DEEPSPEED_JITTER_EPS;
  // RSample acts in top1gating only; top2gating and topkgating ignore it.
  if (policy === "RSample" && topK === 1) out.rsample = true;
  // top2gating samples its second expert; topkgating (k > 2) does not.
  if (flag(kw, "top2_2nd_expert_sampling", D.top2_2nd_expert_sampling) && topK === 2) out.secondExpertSampling = true;
  if (residual) {
    out.residual = true;
    out.sharedExpertFF = dFF;
  }
  if (kw.activation !== undefined) out.activation = checkOneOf("activation", kw.activation, ACTIVATION_KINDS);
  if (kw.bias !== undefined) out.bias = flag(kw, "bias", false);
  if (kw.aux_loss_coef !== undefined) out.auxLossCoef = kw.aux_loss_coef as number;
  if (kw.dtype !== undefined) out.dtype = kw.dtype as ParamDType;
  if (kw.device !== undefined) out.device = kw.device as DeviceName;
  if (kw.seed !== undefined) out.seed = kw.seed as number;
  if (kw.init_std !== undefined) out.initStd = kw.init_std as number;
  if (kw.name !== undefined) out.name = kw.name as string;
  return out;
}
