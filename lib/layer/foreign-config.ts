/**
 * Megatron-Core / DeepSpeed shaped configs ({ hidden_size, bf16: { enabled },
 * moe: { num_experts, top_k, ... }, parallelism: { expert_parallel_size, ... } })
 * read completely into MoELayerOptions, or refused: every key is read, reported
 * as ignored (owned by something else, with the reason), accepted at the one
 * value this layer computes with, or an ERR_MOE_VALUE naming it (unknown keys
 * with the nearest known one). The tables are in ./foreign-keys.ts;
 * docs/config.md lists them.
 */
import { MoEError, checkOneOf, invalid } from "../errors";
import { ACTIVATION_KINDS } from "../ops/activation";
import { SCORE_FUNCTIONS } from "../ops/route";
import { nearest } from "../suggest";
import type { MoELayerOptions, ParamDType } from "./config";
import {
  IGNORED,
  PRECISION_IGNORED,
  PRECISION_READ,
  PRECISION_UNSUPPORTED,
  READ,
  UNSUPPORTED,
  bare,
  type ReadKey,
  type ReadOption,
  type Section,
  type UnsupportedKey,
} from "./foreign-keys";

/** A Megatron-Core / DeepSpeed shaped config object, as parsed from JSON. */
export type ForeignConfig = Readonly<Record<string, unknown>>;

/** A key of a foreign config that was not applied, and why (its owner, or why it does not matter). */
export interface IgnoredConfigKey {
  /** Its path in the config: "optimizer", "moe.enabled", "fp16.loss_scale". */
  key: string;
  reason: string;
}

export interface ParsedForeignConfig {
  options: MoELayerOptions;
  /** The keys reported, not applied, in the config's order. */
  ignored: IgnoredConfigKey[];
}

export interface ForeignConfigContext {
  /**
   * The size of the world the layer runs on: data_parallel_size × tensor_parallel_size ×
   * pipeline_parallel_size must equal it, when given (MoELayer.fromForeignConfig passes its group's).
   */
  worldSize?: number;
}

type EntrySection = Section | "bf16" | "fp16";

/** One key of the config, where it was found. */
interface Entry {
  section: EntrySection;
  name: string;
  path: string;
  value: unknown;
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === "object" && !Array.isArray(v);

function show(v: unknown): string {
  return typeof v === "string" ? `"${v}"` : (JSON.stringify(v) ?? String(v));
}

/** Every key of the config, its `moe` and `parallelism` sections and its `bf16` / `fp16` objects. */
function entriesOf(config: ForeignConfig): Entry[] {
  const out: Entry[] = [];
  const add = (section: EntrySection, prefix: string, dict: Record<string, unknown>) => {
    for (const [name, value] of Object.entries(dict)) {
      if (value !== undefined) out.push({ section, name, path: prefix + name, value });
    }
  };
  for (const [name, value] of Object.entries(config)) {
    if (value === undefined) continue;
    if (name === "moe" || name === "parallelism") {
      if (!isObject(value)) throw invalid("an object", name, value);
      add(name, `${name}.`, value);
    } else if ((name === "bf16" || name === "fp16") && isObject(value)) {
      add(name, `${name}.`, value);
    } else {
      out.push({ section: "top", name, path: name, value });
    }
  }
  return out;
}

/** Whether an entry is one spelling of a read key. */
function matches(key: ReadKey, e: Entry): boolean {
  if (!(key.sections as readonly string[]).includes(e.section)) return false;
  if (key.exact && e.section !== "moe") return key.names.includes(e.name);
  return key.names.some((n) => bare(n) === bare(e.name));
}

function accepted(rule: UnsupportedKey, value: unknown): boolean {
  return rule.accepts.some((a) => JSON.stringify(a) === JSON.stringify(value));
}

/** Known names (spellings and sections) mapped to the one a suggestion names. */
function suggestions(): Map<string, string> {
  const out = new Map<string, string>();
  for (const key of Object.values(READ as Record<string, ReadKey>)) for (const n of key.names) out.set(n, key.names[0]);
  for (const n of [...Object.keys(IGNORED), ...Object.keys(UNSUPPORTED), "moe", "parallelism"]) out.set(n, n);
  return out;
}

function suggest(name: string, known: Map<string, string>): string {
  const n = nearest(name, known.keys());
  if (n === undefined) return "";
  const canonical = known.get(n)!;
  return n === canonical ? ` (did you mean "${n}"?)` : ` (did you mean "${n}", or "${canonical}"?)`;
}

/**
 * Sorts the keys no read key takes: ignored ones are reported, unsupported ones at the accepted
 * value pass, the rest (unsupported values, unknown keys) are refused together in one error.
 */
function classify(entries: Entry[]): IgnoredConfigKey[] {
  const ignored: IgnoredConfigKey[] = [];
  const problems: string[] = [];
  const known = suggestions();
  const lookup = <T>(table: Readonly<Record<string, T>>, name: string): T | undefined => {
    const key = Object.keys(table).find((k) => bare(k) === bare(name));
    return key === undefined ? undefined : table[key];
  };
  for (const e of entries) {
    if (Object.values(READ as Record<string, ReadKey>).some((k) => matches(k, e))) continue;
    const precision = e.section === "bf16" || e.section === "fp16";
    if (precision && (PRECISION_READ as readonly string[]).includes(e.name)) continue;
    const reason = precision ? PRECISION_IGNORED[e.name] : lookup(IGNORED, e.name);
    if (reason !== undefined) {
      ignored.push({ key: e.path, reason });
      continue;
    }
    const rule = precision ? PRECISION_UNSUPPORTED[e.name] : lookup(UNSUPPORTED, e.name);
    if (rule !== undefined) {
      if (!accepted(rule, e.value)) problems.push(`${e.path} = ${show(e.value)} is not supported (${rule.reason})`);
      continue;
    }
    const names = precision
      ? new Map(
          [...PRECISION_READ, ...Object.keys(PRECISION_IGNORED), ...Object.keys(PRECISION_UNSUPPORTED)].map((n) => [
            n,
            n,
          ]),
        )
      : known;
    problems.push(`${e.path} is not a key this layer knows${suggest(e.name, names)}`);
  }
  if (problems.length > 0) {
    throw new MoEError(
      `Expected a config whose every key is read, ignored with a reason, or at a supported value (docs/config.md) but received: ${problems.join("; ")}`,
      "ERR_MOE_VALUE",
    );
  }
  return ignored;
}

/** Reads the keys of READ, each once; two spellings of one key with different values are refused. */
class Reader {
  constructor(private readonly entries: Entry[]) {}

  /** The entry giving an option (null counts as not given), by section precedence then spelling. */
  get(option: ReadOption): Entry | undefined {
    const key: ReadKey = READ[option];
    const found = this.entries
      .filter((e) => matches(key, e) && e.value !== null)
      .sort(
        (a, b) =>
          key.sections.indexOf(a.section as Section) - key.sections.indexOf(b.section as Section) ||
          rank(key, a) - rank(key, b),
      );
    const other = found.find((e) => JSON.stringify(e.value) !== JSON.stringify(found[0].value));
    if (other !== undefined) {
      throw new MoEError(
        `Expected one value for ${found[0].path} and ${other.path} (the same setting) but received ${show(found[0].value)} and ${show(other.value)}`,
        "ERR_MOE_VALUE",
      );
    }
    return found[0];
  }

  num(option: ReadOption): number | undefined {
    const e = this.get(option);
    if (e === undefined) return undefined;
    if (typeof e.value !== "number") throw invalid("a number", e.path, e.value);
    return e.value;
  }

  bool(option: ReadOption): boolean | undefined {
    const e = this.get(option);
    if (e === undefined) return undefined;
    if (typeof e.value !== "boolean") throw invalid("a boolean", e.path, e.value);
    return e.value;
  }

  /** A string among `values`, or undefined. */
  oneOf<T extends string>(option: ReadOption, values: readonly T[]): T | undefined {
    const e = this.get(option);
    return e === undefined ? undefined : checkOneOf(e.path, e.value, values);
  }
}

function rank(key: ReadKey, e: Entry): number {
  return key.names.findIndex((n) => n === e.name || bare(n) === bare(e.name));
}

const DTYPE_NAMES: Readonly<Record<string, ParamDType>> = {
  bf16: "bfloat16",
  bfloat16: "bfloat16",
  "torch.bfloat16": "bfloat16",
  fp16: "float16",
  float16: "float16",
  half: "float16",
  "torch.float16": "float16",
  fp32: "float32",
  float32: "float32",
  float: "float32",
  "torch.float32": "float32",
};

/** The expert weights' dtype from bf16 / fp16 (true or { enabled }) and params_dtype; they must agree. */
function dtypeOf(r: Reader, entries: Entry[]): ParamDType | undefined {
  const given: Array<{ path: string; dtype: ParamDType }> = [];
  for (const [flag, dtype] of [
    ["bf16", "bfloat16"],
    ["fp16", "float16"],
  ] as const) {
    const top = r.bool(flag);
    const enabled = entries.find((e) => e.section === flag && e.name === "enabled");
    if (enabled !== undefined && typeof enabled.value !== "boolean")
      throw invalid("a boolean", enabled.path, enabled.value);
    if (top === true) given.push({ path: flag, dtype });
    if (enabled?.value === true) given.push({ path: enabled.path, dtype });
  }
  const dt = r.get("dtype");
  if (dt !== undefined) {
    const d = typeof dt.value === "string" ? DTYPE_NAMES[dt.value] : undefined;
    if (!d) throw invalid(`one of ${Object.keys(DTYPE_NAMES).join(", ")}`, dt.path, dt.value);
    given.push({ path: dt.path, dtype: d });
  }
  const other = given.find((g) => g.dtype !== given[0].dtype);
  if (other !== undefined) {
    throw new MoEError(
      `Expected one dtype but ${given[0].path} gives ${given[0].dtype} and ${other.path} gives ${other.dtype}`,
      "ERR_MOE_VALUE",
    );
  }
  return given[0]?.dtype;
}

/**
 * epSize and etpSize from the parallelism keys (etpSize defaults to the tensor-parallel size, as in
 * Megatron-Core), and the check that data × tensor × pipeline parallel sizes make up the world.
 */
function parallelism(r: Reader, out: MoELayerOptions, worldSize: number | undefined): void {
  const size = (option: ReadOption) => {
    const e = r.get(option);
    if (e === undefined) return undefined;
    if (!Number.isInteger(e.value) || (e.value as number) < 1) throw invalid("an integer >= 1", e.path, e.value);
    return { path: e.path, value: e.value as number };
  };
  const ep = size("epSize");
  if (ep !== undefined) out.epSize = ep.value;
  const tp = size("tensorParallel");
  const etp = size("etpSize") ?? tp;
  if (etp !== undefined) out.etpSize = etp.value;
  const dp = size("dataParallel");
  const pp = size("pipelineParallel");
  if (worldSize !== undefined && (dp !== undefined || tp !== undefined || pp !== undefined)) {
    const term = (s: { path: string; value: number } | undefined, name: string) =>
      s === undefined ? `${name} (not given: 1)` : `${s.path} (${s.value})`;
    const model = (tp?.value ?? 1) * (pp?.value ?? 1);
    const product = (dp?.value ?? worldSize / model) * model;
    if (product !== worldSize || !Number.isInteger(worldSize / model)) {
      const terms = [
        ...(dp ? [term(dp, "data_parallel_size")] : []),
        term(tp, "tensor_parallel_size"),
        term(pp, "pipeline_parallel_size"),
      ];
      throw new MoEError(
        `Expected ${terms.join(" × ")} ${dp ? "to equal" : "to divide"} the world size (${worldSize}) but ` +
          `${dp ? "their product is" : "the product of the model-parallel sizes is"} ${dp ? product : model}`,
        "ERR_MOE_VALUE",
      );
    }
  }
  if (pp !== undefined && pp.value > 1) {
    throw new MoEError(
      `Expected ${pp.path} 1 but received ${pp.value}: pipeline parallelism is not supported (the layer's expert-data-parallel groups span its whole world)`,
      "ERR_MOE_VALUE",
    );
  }
}

/** Capacity, drop policy and padding: a capacity factor makes the layer drop, token_drop_policy says what. */
function capacity(r: Reader, out: MoELayerOptions): void {
  const cfEntry = r.get("capacityFactor");
  const cf = r.num("capacityFactor");
  const policy = r.get("dropPolicy");
  let dropless = cf === undefined;
  if (policy !== undefined) {
    const p = checkOneOf(policy.path, policy.value, ["probs", "position", "dropless", "capacity"] as const);
    if (p === "dropless") {
      if (cfEntry !== undefined) {
        throw new MoEError(
          `Expected no capacity factor with ${policy.path} "dropless" but received ${cfEntry.path} = ${show(cf)}`,
          "ERR_MOE_VALUE",
        );
      }
      dropless = true;
    } else if (p !== "capacity") out.dropPolicy = p;
  }
  if (r.bool("dropTokens") === false) dropless = true;
  if (!dropless) out.capacityFactor = cf;
  const min = r.num("minCapacity");
  if (min !== undefined) out.minCapacity = min;
  const evalCf = r.num("evalCapacityFactor");
  if (evalCf !== undefined) out.evalCapacityFactor = evalCf;
  const pad = r.bool("padToCapacity");
  if (pad !== undefined) out.padToCapacity = pad;
}

/** The router's options: scores, losses, groups, expert bias, jitter. */
function router(r: Reader, out: MoELayerOptions): void {
  const aux = r.get("auxLossCoef");
  const auxCoef = r.num("auxLossCoef");
  if (auxCoef !== undefined) out.auxLossCoef = auxCoef;
  const balancing = r.get("loadBalancingType");
  if (balancing !== undefined) {
    const t = checkOneOf(
      `${balancing.path} (seq_aux_loss, global_aux_loss and sinkhorn are not supported)`,
      balancing.value,
      ["aux_loss", "none"] as const,
    );
    if (t === "none") {
      if (auxCoef !== undefined && auxCoef !== 0) {
        throw new MoEError(
          `Expected no aux loss coefficient with ${balancing.path} "none" but received ${aux!.path} = ${auxCoef}`,
          "ERR_MOE_VALUE",
        );
      }
      out.auxLossCoef = 0;
    }
  }
  const z = r.num("zLossCoef");
  if (z !== undefined) out.zLossCoef = z;
  const score = r.get("scoreFunction");
  if (score !== undefined) out.scoreFunction = checkOneOf(score.path, score.value, SCORE_FUNCTIONS);
  const renorm = r.bool("renormalize");
  if (renorm !== undefined) out.renormalize = renorm;
  const groups = r.num("numGroups");
  if (groups !== undefined) out.numGroups = groups;
  const groupTopk = r.num("topkGroups");
  if (groupTopk !== undefined) out.topkGroups = groupTopk;
  const bias = r.bool("expertBias");
  if (bias !== undefined) out.expertBias = bias;
  const rate = r.num("expertBiasUpdateRate");
  if (rate !== undefined) out.expertBiasUpdateRate = rate;
  const jitter = r.num("jitter");
  const noisy = r.get("noisyGatePolicy");
  if (jitter !== undefined) out.jitter = jitter;
  else if (noisy?.value === "Jitter") out.jitter = 1e-2;
}

/** The experts' activation, bias terms and shared experts. */
function experts(r: Reader, out: MoELayerOptions): void {
  const act = r.get("activation");
  const gated = r.bool("gatedLinearUnit") === true;
  if (act !== undefined) {
    const a = checkOneOf(act.path, act.value, ACTIVATION_KINDS);
    out.activation = gated ? (a === "gelu" ? "geglu" : a === "silu" ? "swiglu" : a) : a;
  } else if (gated) {
    out.activation = "swiglu";
  }
  const addBias = r.bool("bias");
  if (addBias !== undefined) out.bias = addBias;
  const shared = r.num("sharedExpertFF");
  if (shared !== undefined) out.sharedExpertFF = shared;
  // The residual MoE (DeepSpeed's use_residual): a dense MLP of the experts' width beside them, mixed in.
  if (r.bool("residual") === true) {
    out.residual = true;
    if (out.sharedExpertFF === undefined) out.sharedExpertFF = out.dFF;
  }
}

/**
 * Reads a Megatron-Core / DeepSpeed shaped config completely into MoELayerOptions, plus the keys it
 * reports as ignored; refuses (ERR_MOE_VALUE, naming them) unknown keys, keys set to what the layer
 * does not compute, and parallel sizes that do not make up context.worldSize. docs/config.md lists
 * every key. The options are then validated as native ones (resolveConfig).
 */
export function parseForeignConfig(config: ForeignConfig, context: ForeignConfigContext = {}): ParsedForeignConfig {
  if (!isObject(config)) throw invalid("a config object", "config", config);
  const entries = entriesOf(config);
  const ignored = classify(entries);
  const r = new Reader(entries);

  const enabled = r.get("enabled");
  if (enabled !== undefined) {
    if (enabled.value !== true)
      throw invalid("true (the config asks for no MoE layer otherwise)", enabled.path, enabled.value);
    ignored.push({ key: enabled.path, reason: "the model's switch for MoE layers: building this layer answers it" });
  }
  const dModel = r.num("dModel");
  if (dModel === undefined) throw new MoEError("Expected hidden_size in the config", "ERR_MOE_VALUE");
  const numExperts = r.num("numExperts");
  if (numExperts === undefined)
    throw new MoEError("Expected num_moe_experts or num_experts in the config (or moe.num_experts)", "ERR_MOE_VALUE");
  const out: MoELayerOptions = { dModel, dFF: r.num("dFF") ?? r.num("denseFF") ?? 4 * dModel, numExperts };
  const topK = r.num("topK");
  if (topK !== undefined) out.topK = topK;
  parallelism(r, out, context.worldSize);
  capacity(r, out);
  router(r, out);
  experts(r, out);
  const dtype = dtypeOf(r, entries);
  if (dtype !== undefined) out.dtype = dtype;
  const seed = r.num("seed");
  if (seed !== undefined) out.seed = seed;
  const std = r.num("initStd");
  if (std !== undefined) out.initStd = std;
  const order = new Map(entries.map((e, i) => [e.path, i]));
  ignored.sort((a, b) => order.get(a.key)! - order.get(b.key)!);
  return { options: out, ignored };
}
