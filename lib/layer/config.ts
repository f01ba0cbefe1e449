/**
 * The MoE layer's configuration: the native TypeScript options, their
 * validation and defaults (Megatron-Core's where it has one), and the
 * translation of Megatron-Core / DeepSpeed shaped config objects
 * ({ hidden_size, moe: { num_experts, top_k, ... } }) into them.
 */
import { MoEError, checkInteger, checkNumber, checkOneOf, invalid, orDefault } from "../errors";
import { ACTIVATION_KINDS, type ActivationKind } from "../ops/activation";
import { DROP_POLICIES, type DropPolicy } from "../ops/permute";
import { SCORE_FUNCTIONS, checkRouteOptions, type ScoreFunction } from "../ops/route";
import type { DeviceName } from "../tensor";

export type ParamDType = "float32" | "bfloat16" | "float16";
const PARAM_DTYPES: readonly ParamDType[] = ["float32", "bfloat16", "float16"];

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

/** Validates the native options (unknown keys included) and fills in the defaults. */
export function resolveConfig(options: MoELayerOptions): ResolvedMoEConfig {
  if (options === null || typeof options !== "object" || Array.isArray(options))
    throw invalid("an options object", "MoELayer config", options);
  for (const key of Object.keys(options)) {
    if (!NATIVE_KEYS.has(key)) {
      throw new MoEError(
        `Expected MoELayer options among ${[...NATIVE_KEYS].join(", ")} but received the unknown option "${key}"`,
        "ERR_MOE_VALUE",
      );
    }
  }
  const o = options as MoELayerOptions;
  const dModel = checkInteger("dModel", o.dModel, 1);
  const dFF = checkInteger("dFF", o.dFF, 1);
  const numExperts = checkInteger("numExperts", o.numExperts, 1);
  const topK = orDefault(o.topK, Math.min(2, numExperts));
  const epSize = checkInteger("epSize", orDefault(o.epSize, 1), 1, numExperts);
  if (numExperts % epSize !== 0) {
    throw new MoEError(`Expected epSize to divide numExperts (${numExperts}) but received ${epSize}`, "ERR_MOE_VALUE");
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

// ---------------------------------------------------------------------------
// Megatron-Core / DeepSpeed shaped configs

type Dict = Record<string, unknown>;

/** Whether a config object is Megatron / DeepSpeed shaped (snake_case keys or a `moe` section). */
export function isForeignConfig(c: unknown): boolean {
  if (c === null || typeof c !== "object" || Array.isArray(c)) return false;
  const keys = Object.keys(c as Dict);
  return keys.includes("moe") || keys.some((k) => k.includes("_")) || keys.includes("k");
}

/** The first key of `names` present in one of the dicts (section first), with the key it came from. */
function pick(dicts: Dict[], names: string[]): { key: string; value: unknown } | undefined {
  for (const d of dicts) for (const n of names) if (d[n] !== undefined) return { key: n, value: d[n] };
  return undefined;
}

/**
 * Translates a Megatron-Core / DeepSpeed shaped config into MoELayerOptions. Keys are read from
 * its `moe` section first, then from the top level, with or without Megatron's `moe_` prefix:
 * hidden_size; ffn_hidden_size / moe_ffn_hidden_size; num_experts; top_k / k / router_topk;
 * expert_parallel_size / ep_size; capacity_factor; token_drop_policy ("probs" | "position", or
 * "dropless"); drop_tokens (false: dropless); pad_expert_input_to_capacity; load_balancing_loss_coef
 * / aux_loss_coeff; z_loss_coeff; router ("softmax" | "sigmoid") / router_score_function;
 * router_topk_renormalize; router_num_groups / router_group_topk; router_enable_expert_bias /
 * router_bias_update_rate; input_jitter_eps (or noisy_gate_policy "Jitter": ε 1e-2);
 * activation ("relu" | "gelu" | "silu" | "swiglu" | "geglu", or gated_linear_unit with it);
 * add_bias_linear; shared_expert_intermediate_size; bf16 / fp16 / params_dtype; seed;
 * init_method_std. Other keys (optimizer, data parallel size, ...) are left to their owners.
 */
export function fromForeignConfig(config: Dict): MoELayerOptions {
  if (config === null || typeof config !== "object" || Array.isArray(config))
    throw invalid("a config object", "config", config);
  const moe = config.moe;
  if (moe !== undefined && (moe === null || typeof moe !== "object" || Array.isArray(moe)))
    throw invalid("an object", "moe", moe);
  const dicts = moe ? [moe as Dict, config] : [config];
  const get = (...names: string[]) => {
    const withPrefix = names.flatMap((n) => [n, `moe_${n}`]);
    return pick(dicts, withPrefix);
  };
  const value = (...names: string[]) => get(...names)?.value;
  const num = (name: string, ...names: string[]) => {
    const p = get(name, ...names);
    if (p === undefined) return undefined;
    if (typeof p.value !== "number") throw invalid("a number", p.key, p.value);
    return p.value;
  };
  const out: MoELayerOptions = {
    dModel: num("hidden_size") as number,
    dFF: (num("ffn_hidden_size", "intermediate_size") ?? num("hidden_size")! * 4) as number,
    numExperts: num("num_experts", "num_local_experts") as number,
  };
  if (out.dModel === undefined) throw new MoEError("Expected hidden_size in the config", "ERR_MOE_VALUE");
  if (out.numExperts === undefined)
    throw new MoEError("Expected num_experts in the config (or moe.num_experts)", "ERR_MOE_VALUE");
  const topK = num("top_k", "k", "router_topk", "num_experts_per_tok");
  if (topK !== undefined) out.topK = topK;
  const ep = num("expert_parallel_size", "expert_model_parallel_size", "ep_size");
  if (ep !== undefined) out.epSize = ep;

  const policy = get("token_drop_policy");
  const dropTokens = get("drop_tokens");
  const cf = num("capacity_factor", "expert_capacity_factor");
  let dropless = cf === undefined || cf === null;
  if (policy !== undefined) {
    const p = checkOneOf(policy.key, policy.value, ["probs", "position", "dropless", "capacity"] as const);
    if (p === "dropless") dropless = true;
    else if (p !== "capacity") out.dropPolicy = p;
  }
  if (dropTokens !== undefined && bool(dropTokens.key, dropTokens.value, true) === false) dropless = true;
  if (!dropless) out.capacityFactor = cf;
  const pad = get("pad_expert_input_to_capacity");
  if (pad !== undefined) out.padToCapacity = bool(pad.key, pad.value, false);

  const aux = num("load_balancing_loss_coef", "aux_loss_coeff", "aux_loss_coef", "router_aux_loss_coef");
  if (aux !== undefined) out.auxLossCoef = aux;
  const z = num("z_loss_coeff", "z_loss_coef", "router_z_loss_coef");
  if (z !== undefined) out.zLossCoef = z;
  const score = value("router", "router_score_function", "score_function", "scoring_func");
  if (score !== undefined) out.scoreFunction = checkOneOf("router", score, SCORE_FUNCTIONS);
  const renorm = get("router_topk_renormalize", "norm_topk_prob");
  if (renorm !== undefined) out.renormalize = bool(renorm.key, renorm.value, true);
  const groups = num("router_num_groups", "n_group");
  const groupTopk = num("router_group_topk", "topk_group");
  if (groups !== undefined) out.numGroups = groups;
  if (groupTopk !== undefined) out.topkGroups = groupTopk;
  const bias = get("router_enable_expert_bias");
  if (bias !== undefined) out.expertBias = bool(bias.key, bias.value, false);
  const rate = num("router_bias_update_rate");
  if (rate !== undefined) out.expertBiasUpdateRate = rate;
  const jitter = num("input_jitter_eps");
  if (jitter !== undefined) out.jitter = jitter;
  else if (value("noisy_gate_policy") === "Jitter") out.jitter = 1e-2;

  const act = value("activation", "activation_func", "hidden_act");
  const gated = get("gated_linear_unit");
  if (act !== undefined) {
    const a = checkOneOf("activation", act, ACTIVATION_KINDS);
    out.activation = gated && gated.value === true ? (a === "gelu" ? "geglu" : a === "silu" ? "swiglu" : a) : a;
  } else if (gated && gated.value === true) {
    out.activation = "swiglu";
  }
  const addBias = get("add_bias_linear");
  if (addBias !== undefined) out.bias = bool(addBias.key, addBias.value, false);
  const shared = num("shared_expert_intermediate_size");
  if (shared !== undefined) out.sharedExpertFF = shared;

  const dt = value("params_dtype", "dtype");
  if (value("bf16") === true) out.dtype = "bfloat16";
  else if (value("fp16") === true) out.dtype = "float16";
  else if (dt !== undefined) {
    const names: Record<string, ParamDType> = {
      bf16: "bfloat16",
      bfloat16: "bfloat16",
      fp16: "float16",
      float16: "float16",
      fp32: "float32",
      float32: "float32",
    };
    const d = typeof dt === "string" ? names[dt] : undefined;
    if (!d) throw invalid("one of bf16, fp16, fp32 (or bfloat16, float16, float32)", "params_dtype", dt);
    out.dtype = d;
  }
  const seed = num("seed");
  if (seed !== undefined) out.seed = seed;
  const std = num("init_method_std", "initializer_range");
  if (std !== undefined) out.initStd = std;
  return out;
}

/** Native options as they are, or a Megatron / DeepSpeed shaped config translated; then validated. */
export function configOf(config: MoELayerOptions | Record<string, unknown>): ResolvedMoEConfig {
  if (isForeignConfig(config)) return resolveConfig(fromForeignConfig(config as Dict));
  return resolveConfig(config as MoELayerOptions);
}
