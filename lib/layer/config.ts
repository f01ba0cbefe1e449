/**
 * The MoE layer's configuration: the native TypeScript options, their
 * validation and defaults (Megatron-Core's where it has one). Megatron-Core /
 * DeepSpeed shaped config objects are translated into these options by
 * ./foreign-config.ts (MoELayer.fromForeignConfig), never taken here.
 */
import { MoEError, checkInteger, checkNumber, checkOneOf, invalid, orDefault } from "../errors";
import { ACTIVATION_KINDS, type ActivationKind } from "../ops/activation";
import { DROP_POLICIES, type DropPolicy } from "../ops/permute";
import { SCORE_FUNCTIONS, checkRouteOptions, type ScoreFunction } from "../ops/route";
import type { DeviceName } from "../tensor";
import { nearest } from "../suggest";
import { nativeOptionOf } from "./foreign-keys";

export type ParamDType = "float32" | "bfloat16" | "float16";
export const PARAM_DTYPES: readonly ParamDType[] = ["float32", "bfloat16", "float16"];

export interface MoELayerOptions {
  /** Model width D. */
  dModel: number;
  /** Expert width F (hidden size of each expert's FFN). */
  dFF: number;
  /** E, experts in all (over every EP rank). */
  numExperts: number;
  /** Experts per token (default 2, Megatron's moe_router_topk). */
  topK?: number;
  /** EP ranks the experts are sharded over; must divide numExperts and the world size (default 1). */
  epSize?: number;
  /**
   * Expert tensor parallelism (Megatron-Core's expert_tensor_parallel_size): ranks each expert's FFN
   * is split over along dFF, which it must divide; with epSize it must divide the world size (default 1).
   */
  etpSize?: number;
  /** Router scores (default "softmax"). */
  scoreFunction?: ScoreFunction;
  /** Renormalise the k weights of a token to sum to 1 (default: topK > 1, false with renormalizeKept). */
  renormalize?: boolean;
  /** Renormalise the weights over the choices that survive capacity, after dropping (DeepSpeed; default false). */
  renormalizeKept?: boolean;
  /** Aux-loss-free balancing (DeepSeek-V3): a bias b[E] added to the scores for the choice only (default false). */
  expertBias?: boolean;
  /** The bias's step: b_e += rate · sign(mean load − load_e) per updateExpertBias() (default 1e-3). */
  expertBiasUpdateRate?: number;
  /** Group-limited routing: experts in numGroups equal groups (with topkGroups). */
  numGroups?: number;
  /** Only the topkGroups best groups may be chosen (with numGroups). */
  topkGroups?: number;
  /** Capacity per expert C = ceil(T·k/E · capacityFactor); absent or null: dropless. */
  capacityFactor?: number | null;
  /** With capacityFactor: C = max(ceil(T·k/E · factor), minCapacity) (default 0; DeepSpeed's min_capacity). */
  minCapacity?: number;
  /** The capacity factor of evaluation-mode forwards (needs capacityFactor; default capacityFactor). */
  evalCapacityFactor?: number;
  /** Which choices an over-full expert keeps (default "probs"). */
  dropPolicy?: DropPolicy;
  /** Every expert receives exactly C rows (needs capacityFactor; default false). */
  padToCapacity?: boolean;
  /** Load-balancing loss coefficient (default 0: not added). */
  auxLossCoef?: number;
  /** Router z-loss coefficient (default 0). */
  zLossCoef?: number;
  /** Router input jitter ε, training only: x ⊙ U(1 − ε, 1 + ε) before the gate (default 0). */
  jitter?: number;
  /** Training only: the choice takes logits + Gumbel noise, the weights stay the scores (DeepSpeed's RSample; default false). */
  rsample?: boolean;
  /**
   * Gumbel noise on the logits for the choices after the first, in training and evaluation (DeepSpeed's
   * top2_2nd_expert_sampling; needs topK >= 2, no groups, not with rsample; default false).
   */
  secondExpertSampling?: boolean;
  /** Expert activation (default "gelu"). */
  activation?: ActivationKind;
  /** Bias terms b1, b2 in the experts (and shared experts) (default false). */
  bias?: boolean;
  /** Width of the shared experts' FFN, applied to every token (DeepSeekMoE); 0 or absent: none. */
  sharedExpertFF?: number;
  /**
   * Residual MoE (PR-MoE, DeepSpeed's use_residual): the shared experts' output is mixed with the routed
   * output by a learned per-token two-way softmax instead of added (needs sharedExpertFF; default false).
   */
  residual?: boolean;
  /** dtype of the expert weights (the router is float32 always) (default "float32"). */
  dtype?: ParamDType;
  /** Default "cpu". */
  device?: DeviceName;
  /** Seed of the initialisation and the jitter (default 1234, Megatron's). */
  seed?: number;
  /** Standard deviation of the normal initialisation of every weight (default 0.02, Megatron's init_method_std). */
  initStd?: number;
  /** Standard deviation for the output projections w2 (default initStd). */
  outputInitStd?: number;
  /** Prefix of the parameter names ("layers.3.mlp" gives "layers.3.mlp.router.weight"); it also keys the random streams, so layers of one seed differ. */
  name?: string;
}

/** The options with every default filled in. */
export interface ResolvedMoEConfig {
  dModel: number;
  dFF: number;
  numExperts: number;
  topK: number;
  epSize: number;
  etpSize: number;
  scoreFunction: ScoreFunction;
  renormalize: boolean;
  renormalizeKept: boolean;
  expertBias: boolean;
  expertBiasUpdateRate: number;
  numGroups?: number;
  topkGroups?: number;
  capacityFactor?: number;
  minCapacity: number;
  evalCapacityFactor?: number;
  dropPolicy: DropPolicy;
  padToCapacity: boolean;
  auxLossCoef: number;
  zLossCoef: number;
  jitter: number;
  rsample: boolean;
  secondExpertSampling: boolean;
  activation: ActivationKind;
  bias: boolean;
  sharedExpertFF: number;
  residual: boolean;
  dtype: ParamDType;
  device: DeviceName;
  seed: number;
  initStd: number;
  outputInitStd: number;
  name: string;
}

const NATIVE_KEYS = new Set<string>([
  "dModel",
  "dFF",
  "numExperts",
  "topK",
  "epSize",
  "etpSize",
  "scoreFunction",
  "renormalize",
  "renormalizeKept",
  "expertBias",
  "expertBiasUpdateRate",
  "numGroups",
  "topkGroups",
  "capacityFactor",
  "minCapacity",
  "evalCapacityFactor",
  "dropPolicy",
  "padToCapacity",
  "auxLossCoef",
  "zLossCoef",
  "jitter",
  "rsample",
  "secondExpertSampling",
  "activation",
  "bias",
  "sharedExpertFF",
  "residual",
  "dtype",
  "device",
  "seed",
  "initStd",
  "outputInitStd",
  "name",
]);

function bool(name: string, v: unknown, fallback: boolean): boolean {
  if (v === undefined) return fallback;
  if (typeof v !== "boolean") throw invalid("a boolean", name, v);
  return v;
}

const nonNegative = (v: number) => v >= 0;

function nameOf(v: unknown): string {
  if (v === undefined) return "";
  if (typeof v !== "string" || !/^[A-Za-z0-9_.-]{0,200}$/.test(v))
    throw invalid("up to 200 letters, digits, '.', '_' or '-'", "name", v);
  return v;
}

/**
 * An unknown native option, with the option it most likely means: for a snake_case key the
 * camelCase option it translates to ("top_k" → "topK", "hidden_size" → "dModel"), otherwise the
 * nearest option by edit distance ("numExpert" → "numExperts").
 */
function unknownOption(key: string): MoEError {
  const camel = key.replace(/_+([a-z0-9])/g, (_, c: string) => c.toUpperCase());
  const snake = key.includes("_");
  const translated = snake ? (nativeOptionOf(key) ?? (NATIVE_KEYS.has(camel) ? camel : undefined)) : undefined;
  const guess = translated ?? nearest(key, NATIVE_KEYS);
  return new MoEError(
    `Expected MoELayer options among ${[...NATIVE_KEYS].join(", ")} but received the unknown option "${key}"` +
      (guess ? ` (did you mean "${guess}"?)` : "") +
      (snake ? "; a Megatron-Core or DeepSpeed config (snake_case keys) goes through MoELayer.fromForeignConfig" : ""),
    "ERR_MOE_VALUE",
  );
}

/** Validates the native options (unknown keys included) and fills in the defaults. */
export function resolveConfig(options: MoELayerOptions): ResolvedMoEConfig {
  if (options === null || typeof options !== "object" || Array.isArray(options))
    throw invalid("an options object", "MoELayer config", options);
  for (const key of Object.keys(options)) if (!NATIVE_KEYS.has(key)) throw unknownOption(key);
  const o = options as MoELayerOptions;
  const dModel = checkInteger("dModel", o.dModel, 1);
  const dFF = checkInteger("dFF", o.dFF, 1);
  const numExperts = checkInteger("numExperts", o.numExperts, 1);
  const topK = orDefault(o.topK, Math.min(2, numExperts));
  const epSize = checkInteger("epSize", orDefault(o.epSize, 1), 1, numExperts);
  if (numExperts % epSize !== 0) {
    throw new MoEError(`Expected epSize to divide numExperts (${numExperts}) but received ${epSize}`, "ERR_MOE_VALUE");
  }
  const etpSize = checkInteger("etpSize", orDefault(o.etpSize, 1), 1);
  if (dFF % etpSize !== 0) {
    throw new MoEError(`Expected etpSize to divide dFF (${dFF}) but received ${etpSize}`, "ERR_MOE_VALUE");
  }
  const scoreFunction =
    o.scoreFunction === undefined ? "softmax" : checkOneOf("scoreFunction", o.scoreFunction, SCORE_FUNCTIONS);
  const { numGroups, topkGroups } = o;
  checkRouteOptions("MoELayer", numExperts, { topK, numGroups, topkGroups });
  const capacityFactor =
    o.capacityFactor === undefined || o.capacityFactor === null
      ? undefined
      : checkNumber("capacityFactor", o.capacityFactor, (v) => v > 0, "a finite number > 0 (or null for dropless)");
  const padToCapacity = bool("padToCapacity", o.padToCapacity, false);
  if (padToCapacity && capacityFactor === undefined) {
    throw new MoEError(
      "Expected capacityFactor with padToCapacity (padding fills each expert up to its capacity)",
      "ERR_MOE_VALUE",
    );
  }
  const evalCapacityFactor =
    o.evalCapacityFactor === undefined
      ? capacityFactor
      : checkNumber("evalCapacityFactor", o.evalCapacityFactor, (v) => v > 0, "a finite number > 0");
  if (capacityFactor === undefined && o.evalCapacityFactor !== undefined) {
    throw new MoEError(
      "Expected capacityFactor with evalCapacityFactor (a dropless layer has no capacity in either mode)",
      "ERR_MOE_VALUE",
    );
  }
  const sharedExpertFF = checkInteger("sharedExpertFF", orDefault(o.sharedExpertFF, 0), 0);
  const residual = bool("residual", o.residual, false);
  if (residual && sharedExpertFF === 0) {
    throw new MoEError(
      "Expected sharedExpertFF > 0 with residual (the residual MoE mixes in the shared experts' MLP) but received 0",
      "ERR_MOE_VALUE",
    );
  }
  const renormalizeKept = bool("renormalizeKept", o.renormalizeKept, false);
  const renormalize = bool("renormalize", o.renormalize, topK > 1 && !renormalizeKept);
  if (renormalizeKept && renormalize) {
    throw new MoEError(
      "Expected renormalize false with renormalizeKept (the weights are renormalised after capacity instead) but received true",
      "ERR_MOE_VALUE",
    );
  }
  const rsample = bool("rsample", o.rsample, false);
  const secondExpertSampling = bool("secondExpertSampling", o.secondExpertSampling, false);
  if (secondExpertSampling && (topK < 2 || numGroups !== undefined || rsample)) {
    throw new MoEError(
      `Expected topK >= 2, no numGroups and no rsample with secondExpertSampling but received topK ${topK}` +
        `${numGroups !== undefined ? ", numGroups" : ""}${rsample ? ", rsample" : ""}`,
      "ERR_MOE_VALUE",
    );
  }
  const initStd = checkNumber("initStd", orDefault(o.initStd, 0.02), nonNegative, "a finite number >= 0");
  const device = orDefault(o.device, "cpu");
  if (typeof device !== "string" || !/^(cpu|cuda(:\d+)?)$/.test(device))
    throw invalid('"cpu" or "cuda:N"', "device", device, "ERR_MOE_DEVICE");
  return {
    dModel,
    dFF,
    numExperts,
    topK,
    epSize,
    etpSize,
    scoreFunction,
    renormalize,
    renormalizeKept,
    expertBias: bool("expertBias", o.expertBias, false),
    expertBiasUpdateRate: checkNumber(
      "expertBiasUpdateRate",
      orDefault(o.expertBiasUpdateRate, 1e-3),
      nonNegative,
      "a finite number >= 0",
    ),
    numGroups,
    topkGroups,
    capacityFactor,
    minCapacity: checkInteger("minCapacity", orDefault(o.minCapacity, 0), 0, 2147483647),
    evalCapacityFactor,
    dropPolicy: o.dropPolicy === undefined ? "probs" : checkOneOf("dropPolicy", o.dropPolicy, DROP_POLICIES),
    padToCapacity,
    auxLossCoef: checkNumber("auxLossCoef", orDefault(o.auxLossCoef, 0), nonNegative, "a finite number >= 0"),
    zLossCoef: checkNumber("zLossCoef", orDefault(o.zLossCoef, 0), nonNegative, "a finite number >= 0"),
    jitter: checkNumber("jitter", orDefault(o.jitter, 0), (v) => v >= 0 && v < 1, "a number in [0, 1)"),
    rsample,
    secondExpertSampling,
    activation: o.activation === undefined ? "gelu" : checkOneOf("activation", o.activation, ACTIVATION_KINDS),
    bias: bool("bias", o.bias, false),
    sharedExpertFF,
    residual,
    dtype: o.dtype === undefined ? "float32" : checkOneOf("dtype", o.dtype, PARAM_DTYPES),
    device: device as DeviceName,
    seed: checkInteger("seed", orDefault(o.seed, 1234), 0),
    initStd,
    outputInitStd: checkNumber(
      "outputInitStd",
      orDefault(o.outputInitStd, initStd),
      nonNegative,
      "a finite number >= 0",
    ),
    name: nameOf(o.name),
  };
}
