/**
 * A layer's state dict: every parameter and buffer by name, in the layer's own
 * layouts (docs/architecture.md#state-dicts lists them). Expert tensors are
 * split by expert and named by their GLOBAL index, `experts.<e>.w1` [D, F or
 * 2F], so a rank's dict holds its own experts under the names they have on
 * one rank, and a dict holding every expert loads into any EP rank (each
 * takes its own). Names are derived from parameters() and buffers(), so a
 * parameter the layer gains appears here (and in checkpoints) by itself.
 *
 * An expert parameter reaches the dict and the files only through
 * wholeExperts / writeWholeExperts: a layer whose experts are sliced across
 * ranks (expert tensor parallelism) sets `expertGather` to gather the slices
 * into whole tensors and to scatter whole tensors back.
 */
import { MoEError, checkInteger, invalid } from "../errors";
import { copyInto } from "../ops/elementwise";
import { Tensor, type DType, type DeviceName } from "../tensor";
import { DTYPE_BYTES, isFloat, numelOf, tensorBytes, tensorFromBytes } from "../checkpoint/bytes";

/** One trainable tensor as the state dict sees it (a ParameterEntry is one). */
export interface StateParam {
  readonly name: string;
  readonly param: Tensor;
  readonly expert: boolean;
}

/**
 * How an expert parameter's local part becomes its whole [L, ...] tensor and back; absent, the
 * parameter is whole on each rank. `tensor` is the parameter itself or a tensor sliced like it
 * (an optimizer moment). stateDict and loadStateDict call them on every rank, saveCheckpoint on the
 * ranks that write files, in the order of parameters(); a gather that is a collective arranges its
 * group to match.
 */
export interface ExpertGather {
  /** The whole tensor's shape, [L, ...]. */
  wholeShape(p: StateParam, tensor: Tensor): number[];
  /** The whole tensor: `tensor` itself, or a new tensor the caller disposes. */
  gather(p: StateParam, tensor: Tensor): Promise<Tensor>;
  /** Copies whole ([L, ...], any float dtype) into this rank's part of `tensor`. */
  scatter(p: StateParam, tensor: Tensor, whole: Tensor): Promise<void>;
}

/** What the state dict needs of a layer (an MoELayer is one). */
export interface StateDictLayer {
  /** Resolves once the tensors hold their values. */
  readonly ready: Promise<void>;
  readonly config: { readonly name: string; readonly numExperts: number };
  /** The global index of this rank's first expert and how many it holds. */
  readonly firstExpert: number;
  readonly numLocalExperts: number;
  /** Trainable tensors; expert ones are [numLocalExperts, ...], one slice per local expert. */
  parameters(): ReadonlyArray<StateParam>;
  /** Other state (e.g. the expert bias), replicated. */
  buffers(): ReadonlyArray<{ readonly name: string; readonly tensor: Tensor }>;
  /** Present when expert tensors are sliced across ranks (see ExpertGather). */
  readonly expertGather?: ExpertGather;
}

/** "layers.0.experts.w1" and global expert 5 -> "layers.0.experts.5.w1" (optimizer moments keep their suffix). */
export function expertTensorName(name: string, expert: number): string {
  if (typeof name !== "string") throw invalid("an expert parameter name (…experts.NAME)", "name", name);
  checkInteger("expert", expert, 0);
  const m = /^(.*?)(^|\.)experts\.([^.]+)(\.exp_avg|\.exp_avg_sq)?$/.exec(name);
  if (!m) throw new MoEError(`Expected an expert parameter name (…experts.NAME) but received ${name}`, "ERR_MOE_VALUE");
  return `${m[1]}${m[2]}experts.${expert}.${m[3]}${m[4] ?? ""}`;
}

/**
 * One tensor of the layer (a parameter, an optimizer moment of one, or a buffer) and the state-dict
 * keys it is stored under: one per local expert for expert tensors, its own name otherwise.
 */
export interface StateTensor {
  readonly layer: StateDictLayer;
  /** The layer's name for it, e.g. layers.0.experts.w1. */
  readonly name: string;
  readonly tensor: Tensor;
  /** The parameter it belongs to (absent for buffers). */
  readonly param?: StateParam;
  readonly expert: boolean;
  /** Keys in order of the local experts, e.g. layers.0.experts.4.w1, layers.0.experts.5.w1. */
  readonly keys: string[];
  /** Every key's shape (one whole expert's for expert tensors) and dtype. */
  readonly shape: number[];
  readonly dtype: DType;
}

/** The StateTensor of tensor, which is p's parameter or sliced like it (or a buffer when p is absent). */
export function stateTensor(layer: StateDictLayer, name: string, tensor: Tensor, p?: StateParam): StateTensor {
  const expert = p?.expert ?? false;
  const whole = expert && layer.expertGather ? layer.expertGather.wholeShape(p!, tensor) : tensor.shape;
  const keys = expert
    ? Array.from({ length: layer.numLocalExperts }, (_, l) => expertTensorName(name, layer.firstExpert + l))
    : [name];
  return {
    layer,
    name,
    tensor,
    param: p,
    expert,
    keys,
    shape: expert ? whole.slice(1) : whole,
    dtype: tensor.dtype,
  };
}

/** The layer's state tensors: parameters() in order, then buffers(). */
export function stateTensors(layer: StateDictLayer): StateTensor[] {
  return [
    ...layer.parameters().map((p) => stateTensor(layer, p.name, p.param, p)),
    ...layer.buffers().map((b) => stateTensor(layer, b.name, b.tensor)),
  ];
}

/** Every key the layer has over all its ranks (every global expert), for telling foreign keys apart. */
export function allKeys(s: StateTensor): string[] {
  if (!s.expert) return s.keys;
  return Array.from({ length: s.layer.config.numExperts }, (_, e) => expertTensorName(s.name, e));
}

/**
 * The whole tensor's bytes on the host: every local expert's whole tensor, one after the other
 * (through the layer's expertGather when it has one).
 */
export async function wholeExperts(s: StateTensor): Promise<Uint8Array> {
  const g = s.expert ? s.layer.expertGather : undefined;
  const t = g ? await g.gather(s.param!, s.tensor) : s.tensor;
  try {
    return tensorBytes(t);
  } finally {
    if (t !== s.tensor) t.dispose();
  }
}

/** Copies whole (the shape of every key stacked, any float dtype) into the layer's tensor. */
export async function writeWholeExperts(s: StateTensor, whole: Tensor): Promise<void> {
  const g = s.expert ? s.layer.expertGather : undefined;
  if (g) return g.scatter(s.param!, s.tensor, whole);
  return copyInto(s.tensor, whole);
}

/** Where a loader's tensor comes from: its shape, dtype, and its bytes on request. */
export interface TensorSource {
  readonly shape: readonly number[];
  readonly dtype: DType;
  /** Fills into (exactly numel · size bytes) with the tensor's little-endian elements. */
  read(into: Uint8Array): void | Promise<void>;
  /** Where it lives, for messages (e.g. "in the checkpoint at dir"). */
  readonly where: string;
}

/** A source reading a tensor's bytes. */
export function tensorSource(t: Tensor, where: string): TensorSource {
  return {
    shape: t.shape,
    dtype: t.dtype,
    where,
    read: (into) => into.set(tensorBytes(t)),
  };
}

/** What loadState found: keys the layer has but the sources lack, and keys of the sources the layer has not. */
export interface LoadReport {
  missing: string[];
  unexpected: string[];
}

/** A planned copy: the layer's tensor and the source of each of its keys (undefined: keep the current value). */
export interface LoadStep {
  target: StateTensor;
  sources: Array<TensorSource | undefined>;
}

/** Checks a source against the key's shape and dtype: ERR_MOE_SHAPE / ERR_MOE_DTYPE naming the key. */
export function checkSource(key: string, s: StateTensor, src: TensorSource): void {
  if (src.shape.join() !== s.shape.join())
    throw new MoEError(
      `Expected ${key} of shape [${s.shape.join(", ")}] ${src.where} but received [${src.shape.join(", ")}]`,
      "ERR_MOE_SHAPE",
    );
  if (isFloat(src.dtype) !== isFloat(s.dtype) || (!isFloat(s.dtype) && src.dtype !== s.dtype))
    throw new MoEError(`Expected ${key} as ${s.dtype} ${src.where} but received ${src.dtype}`, "ERR_MOE_DTYPE");
}

/**
 * Plans the copies into the layers' tensors from lookup (key -> source): checks every source's
 * shape and dtype, and lists the missing keys. Nothing is read or written.
 */
export function planLoad(
  targets: readonly StateTensor[],
  lookup: (key: string) => TensorSource | undefined,
): { steps: LoadStep[]; missing: string[] } {
  const steps: LoadStep[] = [];
  const missing: string[] = [];
  for (const target of targets) {
    const sources = target.keys.map((key) => {
      const src = lookup(key);
      if (src === undefined) missing.push(key);
      else checkSource(key, target, src);
      return src;
    });
    if (sources.some((s) => s !== undefined)) steps.push({ target, sources });
  }
  return { steps, missing };
}

/**
 * Runs one planned copy, one layer tensor at a time: the keys' bytes are read into one host buffer of
 * the whole tensor, which becomes a tensor (in the sources' dtype when they share one, else in the
 * layer's) and is copied in, converting floats to the layer's dtype.
 */
export async function runLoadStep(step: LoadStep): Promise<void> {
  const { target, sources } = step;
  const dtypes = new Set(sources.map((s) => s?.dtype));
  // One source dtype (and every key present): no conversion here, the copy below converts.
  const dtype = dtypes.size === 1 && !dtypes.has(undefined) ? sources[0]!.dtype : target.dtype;
  const per = numelOf(target.shape) * DTYPE_BYTES[dtype];
  // A key without a source keeps its value: start from the current bytes.
  const buf = sources.every((s) => s !== undefined) ? new Uint8Array(per * sources.length) : await wholeExperts(target);
  for (let i = 0; i < sources.length; i++) {
    const src = sources[i];
    if (!src) continue;
    const into = buf.subarray(i * per, (i + 1) * per);
    if (src.dtype === dtype) await src.read(into);
    else into.set(await converted(src, target, dtype));
  }
  const shape = target.expert ? [target.keys.length, ...target.shape] : target.shape;
  using t = tensorFromBytes(buf, shape, dtype, target.tensor.device);
  await writeWholeExperts(target, t);
}

/** src's bytes converted to dtype (through the native copy, which converts). */
async function converted(src: TensorSource, target: StateTensor, dtype: DType): Promise<Uint8Array> {
  const raw = new Uint8Array(numelOf(src.shape) * DTYPE_BYTES[src.dtype]);
  await src.read(raw);
  return convertBytes(raw, src.shape, src.dtype, dtype, target.tensor.device);
}

async function convertBytes(
  bytes: Uint8Array,
  shape: readonly number[],
  from: DType,
  to: DType,
  device: string,
): Promise<Uint8Array> {
  using a = tensorFromBytes(bytes, shape, from, device);
  using b = Tensor.empty(shape, { dtype: to, device: a.device as DeviceName });
  await copyInto(b, a);
  return tensorBytes(b);
}

/** Throws ERR_MOE_VALUE unless layer looks like an MoELayer. */
export function checkStateLayer(layer: unknown, what = "layer"): StateDictLayer {
  const l = layer as StateDictLayer | null;
  if (
    l === null ||
    typeof l !== "object" ||
    typeof l.parameters !== "function" ||
    typeof l.buffers !== "function" ||
    typeof l.config !== "object"
  )
    throw invalid("a MoELayer", what, layer);
  return l;
}

/** The state dict of a layer: every parameter and buffer by key, as new tensors the caller owns. */
export async function stateDict(layer: StateDictLayer): Promise<Map<string, Tensor>> {
  checkStateLayer(layer);
  await layer.ready;
  const out = new Map<string, Tensor>();
  try {
    for (const s of stateTensors(layer)) {
      if (!s.expert) {
        out.set(s.keys[0], await s.tensor.clone());
        continue;
      }
      const whole = await wholeExperts(s);
      const per = whole.byteLength / s.keys.length;
      s.keys.forEach((key, i) =>
        out.set(key, tensorFromBytes(whole.subarray(i * per, (i + 1) * per), s.shape, s.dtype, s.tensor.device)),
      );
    }
  } catch (e) {
    for (const t of out.values()) t.dispose();
    throw e;
  }
  return out;
}

export interface LoadStateDictOptions {
  /** Refuse (ERR_MOE_VALUE) a dict that lacks a key of the layer or holds one the layer has not; default true. */
  strict?: boolean;
}

/** The entries of a Map or plain object of tensors, checked. */
function dictEntries(dict: unknown): Map<string, Tensor> {
  let entries: Array<[unknown, unknown]>;
  if (dict instanceof Map) entries = [...dict];
  else if (dict !== null && typeof dict === "object" && !Array.isArray(dict) && !(dict instanceof Tensor))
    entries = Object.entries(dict);
  else throw invalid("a Map (or object) of name -> Tensor", "state dict", dict);
  const out = new Map<string, Tensor>();
  for (const [k, v] of entries) {
    if (typeof k !== "string") throw invalid("string keys", "state dict", k);
    if (!(v instanceof Tensor)) throw invalid("a Tensor", `state dict entry ${k}`, v);
    if (v.disposed)
      throw new MoEError(
        `Expected the state dict entry ${k} to be a live tensor but it was disposed`,
        "ERR_MOE_DISPOSED",
      );
    out.set(k, v);
  }
  return out;
}

function listed(keys: string[]): string {
  return keys.length > 6 ? `${keys.slice(0, 6).join(", ")}, … (${keys.length} in all)` : keys.join(", ");
}

/**
 * Copies a state dict into the layer: shapes must match and float tensors convert to the layer's
 * dtypes (ERR_MOE_SHAPE / ERR_MOE_DTYPE naming the key). Keys of experts other ranks hold are
 * ignored, so a dict of every expert loads into any EP rank. With strict (the default), a missing or
 * unknown key is ERR_MOE_VALUE; every check runs before the first copy, so a refused dict changes
 * nothing. Resolves with the missing and unexpected keys.
 */
export async function loadStateDict(
  layer: StateDictLayer,
  dict: Map<string, Tensor> | Record<string, Tensor>,
  options: LoadStateDictOptions = {},
): Promise<LoadReport> {
  checkStateLayer(layer);
  if (options === null || typeof options !== "object")
    throw invalid("an options object ({ strict })", "options", options);
  const strict = options.strict ?? true;
  if (typeof strict !== "boolean") throw invalid("a boolean", "strict", strict);
  const entries = dictEntries(dict);
  await layer.ready;
  const targets = stateTensors(layer);
  const known = new Set(targets.flatMap(allKeys));
  const unexpected = [...entries.keys()].filter((k) => !known.has(k));
  const { steps, missing } = planLoad(targets, (key) => {
    const t = entries.get(key);
    return t && tensorSource(t, "in the state dict");
  });
  if (strict && (missing.length > 0 || unexpected.length > 0)) {
    const parts = [];
    if (missing.length) parts.push(`lacks ${listed(missing)}`);
    if (unexpected.length) parts.push(`holds keys the layer has not: ${listed(unexpected)}`);
    throw new MoEError(
      `Expected a state dict with every key of the layer${layer.config.name ? ` ${layer.config.name}` : ""} and no other (or { strict: false }) but it ${parts.join(" and ")}`,
      "ERR_MOE_VALUE",
    );
  }
  for (const step of steps) await runLoadStep(step);
  return { missing, unexpected };
}
