/**
 * The MoE blocks of Hugging Face checkpoints, in and out of a layer
 * (docs/architecture.md#hugging-face-moe-blocks): Mixtral's
 * `block_sparse_moe.*` and DeepSeek-V3's `mlp.*`, under a layer prefix such
 * as `model.layers.3.`. Their linear weights are nn.Linear's [out, in]; the
 * layer's are [in, out], so each is transposed, and a gated expert's two
 * matrices (Mixtral's w1 = gate and w3 = up, DeepSeek's gate_proj and
 * up_proj) become the layer's W1 [D, 2F], gate columns first. Transposes run
 * as the native chunkTranspose with one-element chunks.
 */
import * as fs from "fs";
import * as path from "path";
import { MoEError, invalid } from "../errors";
import { isGated } from "../ops/activation";
import { chunkTranspose } from "../ops/chunks";
import { reshape } from "../ops/view";
import { Tensor, type DType } from "../tensor";
import {
  allKeys,
  checkStateLayer,
  planLoad,
  runLoadStep,
  stateTensors,
  wholeExperts,
  type StateDictLayer,
  type StateTensor,
  type TensorSource,
} from "../layer/state-dict";
import { DTYPE_BYTES, numelOf, tensorBytes, tensorFromBytes } from "./bytes";
import { Input, type HuggingFaceSource } from "./huggingface-input";
import { writeSafetensors, type SafetensorsEntry, type SafetensorsReadOptions } from "./safetensors";

export type HuggingFaceFormat = "mixtral" | "deepseek-v3";

/** One tensor of the layer and the Hugging Face tensors it is made of. */
interface Rule {
  /** The layer's name for it, without the layer's own name. */
  tensor: string;
  /** Names under the block; <e> is the global expert index. Several: stacked along their rows (gate first). */
  sources: string[];
  /** nn.Linear's [out, in] against the layer's [in, out]. */
  transpose: boolean;
}

const FORMATS: Record<HuggingFaceFormat, { block: string; rules: Rule[] }> = {
  mixtral: {
    block: "block_sparse_moe.",
    rules: [
      { tensor: "router.weight", sources: ["gate.weight"], transpose: true },
      { tensor: "experts.w1", sources: ["experts.<e>.w1.weight", "experts.<e>.w3.weight"], transpose: true },
      { tensor: "experts.w2", sources: ["experts.<e>.w2.weight"], transpose: true },
    ],
  },
  "deepseek-v3": {
    block: "mlp.",
    rules: [
      { tensor: "router.weight", sources: ["gate.weight"], transpose: true },
      { tensor: "router.expert_bias", sources: ["gate.e_score_correction_bias"], transpose: false },
      {
        tensor: "experts.w1",
        sources: ["experts.<e>.gate_proj.weight", "experts.<e>.up_proj.weight"],
        transpose: true,
      },
      { tensor: "experts.w2", sources: ["experts.<e>.down_proj.weight"], transpose: true },
      {
        tensor: "shared_experts.w1",
        sources: ["shared_experts.gate_proj.weight", "shared_experts.up_proj.weight"],
        transpose: true,
      },
      { tensor: "shared_experts.w2", sources: ["shared_experts.down_proj.weight"], transpose: true },
    ],
  },
};

/** What the import and export need of a layer (an MoELayer is one). */
export interface HuggingFaceLayer extends StateDictLayer {
  readonly config: { readonly name: string; readonly numExperts: number; readonly activation: string };
}

export interface HuggingFaceOptions {
  format: HuggingFaceFormat;
  /** Prepended to the block's names, e.g. "model.layers.3." (a missing final dot is added); default "". */
  prefix?: string;
}

export interface HuggingFaceImportOptions extends HuggingFaceOptions {
  /**
   * Refuse (ERR_MOE_VALUE) a missing tensor, a tensor of the block that maps to none of the layer's,
   * or a layer tensor the format has no counterpart for; default true. With false these are reported
   * and the layer's tensors without a source keep their values.
   */
  strict?: boolean;
  /** Tensors of dtypes moe-ep does not read (F8_*, F64, I8, ...): skipped and reported, or refused ("strict"). */
  dtypes?: SafetensorsReadOptions["dtypes"];
}

export interface HuggingFaceImportReport {
  /** The layer's keys that were loaded. */
  loaded: string[];
  /** Hugging Face names the layer needed and the input lacks. */
  missing: string[];
  /** Names of the block in the input that map to nothing in the layer. */
  unused: string[];
  /** Layer keys the format has no tensor for (left as they were). */
  unmapped: string[];
  /** Tensors of the block in dtypes moe-ep does not read. */
  skipped: Array<{ name: string; dtype: string; file: string }>;
}

export type { HuggingFaceSource } from "./huggingface-input";

function checkFormat(options: unknown, what: string): { format: HuggingFaceFormat; prefix: string } {
  if (options === null || typeof options !== "object" || Array.isArray(options))
    throw invalid(`an options object ({ format, prefix })`, what, options);
  const o = options as HuggingFaceOptions;
  if (typeof o.format !== "string" || !(o.format in FORMATS))
    throw invalid(`a format (${Object.keys(FORMATS).join(" | ")})`, "format", o.format);
  const prefix = o.prefix ?? "";
  if (typeof prefix !== "string") throw invalid('a string such as "model.layers.3."', "prefix", prefix);
  return { format: o.format, prefix: prefix === "" || prefix.endsWith(".") ? prefix : `${prefix}.` };
}

/** The layer's tensors beside their rules (undefined: the format has none) and the block's full names. */
function mapping(layer: HuggingFaceLayer, format: HuggingFaceFormat, prefix: string) {
  checkStateLayer(layer);
  const fmt = FORMATS[format];
  const own = layer.config.name ? `${layer.config.name}.` : "";
  const block = `${prefix}${fmt.block}`;
  const tensors = stateTensors(layer).map((s) => {
    const short = s.name.startsWith(own) ? s.name.slice(own.length) : s.name;
    const rule = fmt.rules.find((r) => r.tensor === short);
    if (rule && rule.sources.length > 1 && !isGated(layer.config.activation as never))
      throw new MoEError(
        `Expected a gated activation (swiglu or geglu) for the ${format} format, whose experts hold a gate and an up projection, but the layer's activation is ${layer.config.activation}`,
        "ERR_MOE_UNSUPPORTED",
      );
    return { s, rule };
  });
  /** The Hugging Face names of key number i (global expert e for expert tensors). */
  const names = (rule: Rule, e: number) => rule.sources.map((n) => block + n.replace("<e>", String(e)));
  return { block, tensors, names };
}

/** The Hugging Face shape of each source of a key of the layer's shape. */
function sourceShapes(rule: Rule, shape: readonly number[]): number[][] {
  if (!rule.transpose) return [shape.slice()];
  const [c, r] = shape;
  const k = rule.sources.length;
  return rule.sources.map(() => [r / k, c]);
}

/** x [R, C] transposed to [C, R]: the native chunkTranspose of R·C one-element chunks. */
async function transposed(x: Tensor): Promise<Tensor> {
  const [R, C] = x.shape;
  using ones = Tensor.from(new Int32Array(R * C).fill(1), [R, C], { dtype: "int32", device: x.device as "cpu" });
  using rows = reshape(x, [R * C, 1]);
  using t = await chunkTranspose(rows, ones);
  return reshape(t, [C, R]);
}

function listed(names: string[]): string {
  return names.length > 6 ? `${names.slice(0, 6).join(", ")}, … (${names.length} in all)` : names.join(", ");
}

/**
 * Loads a layer from a Hugging Face MoE block: the layer's experts (its EP rank's, by global index),
 * router and, for DeepSeek-V3, the expert bias and the shared experts. Each source's shape is checked
 * against the layer's (ERR_MOE_SHAPE naming the Hugging Face tensor); floats convert to the layer's
 * dtypes. Everything is checked before the first copy; tensors are read one at a time.
 */
export async function importHuggingFace(
  layer: HuggingFaceLayer,
  source: HuggingFaceSource,
  options: HuggingFaceImportOptions,
): Promise<HuggingFaceImportReport> {
  checkStateLayer(layer);
  const { format, prefix } = checkFormat(options, "importHuggingFace options");
  const strict = options.strict ?? true;
  if (typeof strict !== "boolean") throw invalid("a boolean", "strict", strict);
  const dtypes = options.dtypes;
  if (dtypes !== undefined && dtypes !== "skip" && dtypes !== "strict")
    throw invalid('"skip" or "strict"', "dtypes", dtypes);
  await layer.ready;
  const { block, tensors, names } = mapping(layer, format, prefix);
  const input = new Input(source, block, dtypes);
  try {
    const wanted = new Set<string>();
    const missing: string[] = [];
    const unmapped: string[] = [];
    const rules = new Map<StateTensor, Rule>();
    for (const { s, rule } of tensors) {
      if (rule) rules.set(s, rule);
      else unmapped.push(...s.keys);
      if (rule) allKeys(s).forEach((_, e) => names(rule, e).forEach((n) => wanted.add(n)));
    }
    const unused = [...input.names].filter((n) => !wanted.has(n));
    const owner = new Map<string, [StateTensor, number]>();
    for (const t of rules.keys()) t.keys.forEach((key, i) => owner.set(key, [t, i]));
    const plan = planLoad([...rules.keys()], (key) => {
      const [s, i] = owner.get(key)!;
      const rule = rules.get(s)!;
      return sourceOf(s, rule, names(rule, s.expert ? s.layer.firstExpert + i : 0), input, missing);
    });
    const skippedNames = new Set(input.skipped.map((k) => k.name));
    if (strict && (missing.length > 0 || unused.length > 0 || unmapped.length > 0)) {
      const parts = [];
      if (missing.length)
        parts.push(
          `lacks ${listed(missing)}${missing.some((n) => skippedNames.has(n)) ? " (some in dtypes moe-ep does not read)" : ""}`,
        );
      if (unused.length) parts.push(`holds tensors the layer has no place for: ${listed(unused)}`);
      if (unmapped.length) parts.push(`has no tensor for the layer's ${listed(unmapped)}`);
      throw new MoEError(
        `Expected the ${format} block ${block}* to match the layer (or { strict: false }) but it ${parts.join("; ")}`,
        "ERR_MOE_VALUE",
      );
    }
    for (const step of plan.steps) await runLoadStep(step);
    const loaded = plan.steps.flatMap((st) => st.target.keys.filter((_, i) => st.sources[i] !== undefined));
    return { loaded, missing, unused, unmapped, skipped: input.skipped };
  } finally {
    input.close();
  }
}

/** The source of one layer key: its Hugging Face tensors checked, stacked and transposed on reading. */
function sourceOf(
  s: StateTensor,
  rule: Rule,
  hfNames: string[],
  input: Input,
  missing: string[],
): TensorSource | undefined {
  const parts = hfNames.map((n) => input.get(n));
  const absent = hfNames.filter((_, i) => parts[i] === undefined);
  if (absent.length > 0) {
    missing.push(...absent);
    return undefined;
  }
  const shapes = sourceShapes(rule, s.shape);
  parts.forEach((p, i) => {
    if (p!.shape.join() !== shapes[i].join())
      throw new MoEError(
        `Expected ${hfNames[i]} of shape [${shapes[i].join(", ")}] (for the layer's ${s.keys.length > 1 || s.expert ? `${s.name} of one expert` : s.name}, [${s.shape.join(", ")}]) but received [${p!.shape.join(", ")}]`,
        "ERR_MOE_SHAPE",
      );
    if (p!.dtype !== parts[0]!.dtype)
      throw new MoEError(
        `Expected ${hfNames[i]} in the dtype of ${hfNames[0]} (${parts[0]!.dtype}) but received ${p!.dtype}`,
        "ERR_MOE_DTYPE",
      );
  });
  const dtype = parts[0]!.dtype;
  return {
    shape: s.shape,
    dtype,
    where: "in the Hugging Face tensors",
    read: async (into) => {
      if (!rule.transpose) return parts[0]!.read(into);
      // The sources stacked along their rows ([R, C], gate rows first), then transposed to [C, R].
      const stacked = new Uint8Array(into.byteLength);
      let at = 0;
      for (const p of parts) {
        const n = numelOf(p!.shape) * DTYPE_BYTES[dtype];
        p!.read(stacked.subarray(at, at + n));
        at += n;
      }
      using x = tensorFromBytes(stacked, [s.shape[1], s.shape[0]], dtype, "cpu");
      using t = await transposed(x);
      into.set(tensorBytes(t));
    },
  };
}

/** The Hugging Face tensors of one layer key: their names, shapes, and a function making their bytes. */
interface ExportPiece {
  names: string[];
  shapes: number[][];
  dtype: DType;
  bytes: () => Promise<Uint8Array[]>;
}

function exportPieces(layer: HuggingFaceLayer, options: unknown, what: string): ExportPiece[] {
  const { format, prefix } = checkFormat(options, what);
  const { tensors, names } = mapping(layer, format, prefix);
  const unmapped = tensors.filter((t) => !t.rule).map((t) => t.s.name);
  if (unmapped.length > 0)
    throw new MoEError(
      `Expected every tensor of the layer to have a place in the ${format} format but ${listed(unmapped)} has none`,
      "ERR_MOE_UNSUPPORTED",
    );
  const out: ExportPiece[] = [];
  for (const { s, rule } of tensors) {
    const r = rule!;
    const per = numelOf(s.shape) * DTYPE_BYTES[s.dtype];
    let whole: Promise<Uint8Array> | undefined;
    const shapes = sourceShapes(r, s.shape);
    s.keys.forEach((_, i) => {
      const e = s.expert ? layer.firstExpert + i : 0;
      out.push({
        names: names(r, e),
        shapes,
        dtype: s.dtype,
        bytes: async () => {
          // The layer tensor's bytes are read at its first key and dropped after its last.
          whole ??= wholeExperts(s);
          const piece = (await whole).subarray(i * per, (i + 1) * per);
          if (i === s.keys.length - 1) whole = undefined;
          if (!r.transpose) return [piece.slice()];
          using x = tensorFromBytes(piece, s.shape, s.dtype, "cpu");
          using t = await transposed(x);
          const all = tensorBytes(t);
          const n = all.byteLength / r.sources.length;
          return r.sources.map((_, j) => all.subarray(j * n, (j + 1) * n));
        },
      });
    });
  }
  return out;
}

/**
 * The layer as a Hugging Face MoE block: name -> tensor in nn.Linear's layout (this rank's experts
 * under their global index, plus the router and, for DeepSeek-V3, the expert bias and shared
 * experts): new tensors on the host that the caller disposes. A layer tensor the format has no place
 * for (biases; shared experts or an expert bias for Mixtral) is ERR_MOE_UNSUPPORTED.
 */
export async function exportHuggingFace(
  layer: HuggingFaceLayer,
  options: HuggingFaceOptions,
): Promise<Map<string, Tensor>> {
  const pieces = exportPieces(layer, options, "exportHuggingFace options");
  await layer.ready;
  const out = new Map<string, Tensor>();
  try {
    for (const p of pieces) {
      const bytes = await p.bytes();
      p.names.forEach((n, j) => out.set(n, tensorFromBytes(bytes[j], p.shapes[j], p.dtype, "cpu")));
    }
  } catch (e) {
    for (const t of out.values()) t.dispose();
    throw e;
  }
  return out;
}

/**
 * Writes exportHuggingFace's tensors to one safetensors file, tensor by tensor (atomically). With
 * epSize > 1 each rank writes its own experts (and the replicated tensors): importHuggingFace reads
 * a directory of such files.
 */
export async function saveHuggingFace(
  file: string,
  layer: HuggingFaceLayer,
  options: HuggingFaceOptions,
): Promise<void> {
  if (typeof file !== "string" || file === "") throw invalid("a file path", "file", file);
  const pieces = exportPieces(layer, options, "saveHuggingFace options");
  await layer.ready;
  const entries: SafetensorsEntry[] = [];
  for (const p of pieces) {
    let made: Promise<Uint8Array[]> | undefined;
    p.names.forEach((name, j) =>
      entries.push({
        name,
        dtype: p.dtype,
        shape: p.shapes[j],
        data: async () => {
          made ??= p.bytes();
          const b = (await made)[j];
          if (j === p.names.length - 1) made = undefined;
          return b;
        },
      }),
    );
  }
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  await writeSafetensors(file, entries, { format: "pt" });
}
