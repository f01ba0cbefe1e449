/**
 * Checkpoints of MoE layers in the safetensors format, sharded by EP rank the
 * way Hugging Face shards models: `model-ep00001-of-00004.safetensors` holds
 * the state dict (lib/layer/state-dict.ts) of EP rank 1's experts (one tensor
 * per global expert, e.g. `experts.5.w1` [D, F]), the first file also the
 * replicated tensors (router, shared experts, expert bias), and
 * `model.safetensors.index.json` maps every tensor name to its file. Because
 * experts are stored one by one under their global index, a checkpoint loads
 * into any epSize: each rank reads the experts it holds from whichever files
 * have them. AdamW's moments, when given, go to files of their own beside
 * them (`optimizer-ep00001-of-00004.safetensors`, `<name>.exp_avg` and
 * `<name>.exp_avg_sq`, mapped by `optimizer.safetensors.index.json`), so the
 * model files hold plain weights; moments inside the model files (as older
 * checkpoints have them) load too. Files are written and read tensor by
 * tensor. The files of one save sit in a version directory that `dir/latest`
 * points to (see layout.ts), so a save replaces the checkpoint whole; a load
 * checks every file, name, dtype, shape and the metadata before it changes any
 * tensor.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { MoEError, checkInteger, invalid } from "../errors";
import { Tensor } from "../tensor";
import type { CollectiveGroup } from "../layer/group";
import {
  allKeys,
  planLoad,
  runLoadStep,
  stateTensor,
  stateTensors,
  wholeExperts,
  type LoadStep,
  type StateDictLayer,
  type StateTensor,
  type TensorSource,
} from "../layer/state-dict";
import type { AdamW, OptimizerParam } from "../optim/adamw";
import { DTYPE_BYTES, numelOf } from "./bytes";
import {
  SafetensorsFile,
  writeFileAtomic,
  writeSafetensors,
  type SafetensorsEntry,
  type SafetensorsReadOptions,
} from "./safetensors";
import { checkedFile, checkpointFilesDir, currentVersion, nextVersion, removeLitter, switchLatest } from "./layout";

export { expertTensorName } from "../layer/state-dict";

export const INDEX_FILE = "model.safetensors.index.json";
export const OPTIMIZER_INDEX_FILE = "optimizer.safetensors.index.json";

export interface CheckpointOptions {
  /** Also save (or load) this optimizer's moments and step count. */
  optimizer?: AdamW;
  /**
   * Loading: tensors of dtypes moe-ep does not read (F64, F8_*, I8, ...) in the files are skipped and
   * reported ("skip", the default) or refused with ERR_MOE_DTYPE ("strict"). A needed tensor in such
   * a dtype is refused either way.
   */
  dtypes?: SafetensorsReadOptions["dtypes"];
}

/** What a checkpoint needs of a layer (an MoELayer is one). */
export interface CheckpointLayer extends StateDictLayer {
  /** The layer's name and expert count; the index keeps the whole object. */
  readonly config: { readonly name: string; readonly numExperts: number };
  /** Where this rank is: world rank, EP rank and size, the experts it holds. */
  readonly worldRank: number;
  readonly epRank: number;
  readonly epSize: number;
  /** Expert tensor parallelism's group size (absent: 1); expert tensors then come whole through expertGather. */
  readonly etpSize?: number;
  /** For the closing barrier; absent (or of size 1) for one process. */
  readonly worldGroup?: CollectiveGroup;
}

export interface CheckpointIndex {
  metadata: {
    total_size: number;
    format: "moe-ep";
    ep_size: number;
    optimizer_step?: number;
    layers?: Array<{ name: string; config: unknown }>;
  };
  weight_map: Record<string, string>;
}

/** What a load skipped: tensors of the files it read whose dtypes moe-ep does not read. */
export interface CheckpointLoadReport {
  skipped: Array<{ name: string; dtype: string; file: string }>;
}

function pad5(n: number): string {
  return String(n).padStart(5, "0");
}

export function shardFileName(epRank: number, epSize: number): string {
  checkInteger("epSize", epSize, 1);
  checkInteger("epRank", epRank, 0, epSize - 1);
  return `model-ep${pad5(epRank)}-of-${pad5(epSize)}.safetensors`;
}

/** The file of EP rank epRank's optimizer moments. */
export function optimizerShardFileName(epRank: number, epSize: number): string {
  return shardFileName(epRank, epSize).replace(/^model-/, "optimizer-");
}

/** The optimizer's moments of the layers' parameters, sliced as their parameters. */
function momentTensors(layers: readonly CheckpointLayer[], optimizer: AdamW): StateTensor[] {
  const out: StateTensor[] = [];
  const optParams = new Map<Tensor, OptimizerParam>();
  for (const p of optimizer.params) optParams.set(p.param, p);
  for (const layer of layers)
    for (const p of layer.parameters()) {
      const op = optParams.get(p.param);
      if (!op) continue;
      const s = optimizer.state(op);
      out.push(
        stateTensor(layer, `${p.name}.exp_avg`, s.expAvg, p),
        stateTensor(layer, `${p.name}.exp_avg_sq`, s.expAvgSq, p),
      );
    }
  return out;
}

function checkOptions(options: unknown): CheckpointOptions {
  if (options === null || typeof options !== "object" || Array.isArray(options))
    throw invalid("an options object ({ optimizer, dtypes })", "checkpoint options", options);
  const o = options as CheckpointOptions;
  if (o.optimizer !== undefined && (o.optimizer === null || typeof o.optimizer.state !== "function"))
    throw invalid("an AdamW", "optimizer", o.optimizer);
  if (o.dtypes !== undefined && o.dtypes !== "skip" && o.dtypes !== "strict")
    throw invalid('"skip" or "strict"', "dtypes", o.dtypes);
  return o;
}

function checkLayers(layers: readonly CheckpointLayer[], what: string): CheckpointLayer {
  if (!Array.isArray(layers) || layers.length === 0) throw invalid("a non-empty array of MoE layers", what, layers);
  layers.forEach((l, i) => {
    if (l === null || typeof l !== "object" || typeof (l as CheckpointLayer).parameters !== "function")
      throw invalid("a MoELayer", `${what}[${i}]`, l);
  });
  if (os.endianness() !== "LE")
    throw new MoEError("safetensors checkpoints need a little-endian host", "ERR_MOE_UNSUPPORTED");
  const first = layers[0];
  for (const l of layers) {
    if (l.epSize !== first.epSize || l.worldRank !== first.worldRank) {
      throw new MoEError(
        `Expected every layer of one checkpoint to share the EP layout, but epSize ${l.epSize} differs from ${first.epSize}`,
        "ERR_MOE_VALUE",
      );
    }
  }
  const names = new Set<string>();
  for (const l of layers)
    for (const p of l.parameters()) {
      if (names.has(p.name))
        throw new MoEError(
          `Expected distinct parameter names across layers (give each layer a name) but ${p.name} repeats`,
          "ERR_MOE_VALUE",
        );
      names.add(p.name);
    }
  return first;
}

async function worldBarrier(layer: CheckpointLayer): Promise<void> {
  const world = layer.worldGroup;
  if (!world || world.size === 1) return;
  if (world.barrier) return world.barrier();
  using t = Tensor.zeros([1]);
  await world.allReduce(t, "sum");
}

/**
 * The tensors of EP rank epRank's file, each read when the writer reaches it: an expert tensor's
 * bytes are read once, at its first expert, and dropped after its last, so the writer holds one
 * layer tensor at a time.
 */
function shardEntries(tensors: readonly StateTensor[], epRank: number): SafetensorsEntry[] {
  const out: SafetensorsEntry[] = [];
  for (const s of tensors) {
    if (!s.expert && epRank !== 0) continue;
    const per = numelOf(s.shape) * DTYPE_BYTES[s.dtype];
    let whole: Promise<Uint8Array> | undefined;
    s.keys.forEach((key, i) =>
      out.push({
        name: key,
        dtype: s.dtype,
        shape: s.shape,
        data: async () => {
          whole ??= wholeExperts(s);
          const bytes = (await whole).subarray(i * per, (i + 1) * per);
          if (i === s.keys.length - 1) whole = undefined;
          return bytes;
        },
      }),
    );
  }
  return out;
}

/** The index of tensors over every EP rank's file (fileOf names a rank's file). */
function indexOf(
  tensors: readonly StateTensor[],
  epSize: number,
  fileOf: (epRank: number, epSize: number) => string,
): { weight_map: Record<string, string>; total_size: number } {
  const weight_map: Record<string, string> = {};
  let total_size = 0;
  for (const s of tensors) {
    const bytes = numelOf(s.shape) * DTYPE_BYTES[s.dtype];
    const keys = allKeys(s);
    const L = s.layer.numLocalExperts;
    keys.forEach((key, e) => (weight_map[key] = fileOf(s.expert ? Math.floor(e / L) : 0, epSize)));
    total_size += bytes * keys.length;
  }
  return { weight_map, total_size };
}

/**
 * Writes the layers (and the optimizer's moments, in files of their own) to dir: one safetensors
 * file per EP rank, written tensor by tensor by the first expert-data-parallel replica, and the
 * index, written by world rank 0. Every rank of the world calls it; it resolves once every file is
 * complete.
 */
export async function saveCheckpoint(
  dir: string,
  layers: readonly CheckpointLayer[],
  options: CheckpointOptions = {},
): Promise<void> {
  if (typeof dir !== "string" || dir === "") throw invalid("a directory path", "dir", dir);
  options = checkOptions(options);
  const first = checkLayers(layers, "layers");
  for (const l of layers) await l.ready;
  const P = first.epSize;
  // With expert tensor parallelism (ETP innermost in the layout), expert-data-parallel rank 0's ETP rank 0
  // writes the files, its ETP peers join each expert tensor's gather (lib/layer/expert-slices.ts).
  const Q = first.etpSize ?? 1;
  const edpRank = Math.floor(first.worldRank / (P * Q));
  const etpRank = first.worldRank % Q;
  const opt = options.optimizer;
  const model = layers.flatMap(stateTensors);
  const moments = opt ? momentTensors(layers, opt) : [];
  fs.mkdirSync(dir, { recursive: true });
  // Every rank names the same next version: the pointer moves only after the barrier below.
  const version = nextVersion(dir);
  const versionDir = path.join(dir, version);
  if (first.worldRank === 0) {
    removeLitter(dir, currentVersion(dir) ?? "", false);
    fs.mkdirSync(versionDir, { recursive: true });
  }
  await worldBarrier(first);
  const meta = { format: "pt", producer: "moe-ep" };
  if (edpRank === 0 && etpRank !== 0) {
    // The writer (ETP rank 0) gathers each expert tensor in this order: the model's, then the moments'.
    for (const t of [...model, ...moments]) if (t.expert && t.layer.expertGather) await wholeExperts(t);
  } else if (edpRank === 0) {
    await writeSafetensors(
      path.join(versionDir, shardFileName(first.epRank, P)),
      shardEntries(model, first.epRank),
      meta,
    );
    if (opt)
      await writeSafetensors(
        path.join(versionDir, optimizerShardFileName(first.epRank, P)),
        shardEntries(moments, first.epRank),
        meta,
      );
  }
  if (first.worldRank === 0) {
    const layerMeta = layers.map((l) => ({ name: l.config.name, config: (l as { config: unknown }).config }));
    const m = indexOf(model, P, shardFileName);
    const index: CheckpointIndex = {
      metadata: { total_size: m.total_size, format: "moe-ep", ep_size: P, layers: layerMeta },
      weight_map: m.weight_map,
    };
    if (opt) index.metadata.optimizer_step = opt.stepCount;
    writeFileAtomic(path.join(versionDir, INDEX_FILE), JSON.stringify(index, null, 2) + "\n");
    if (opt) {
      const o = indexOf(moments, P, optimizerShardFileName);
      const optIndex: CheckpointIndex = {
        metadata: { total_size: o.total_size, format: "moe-ep", ep_size: P, optimizer_step: opt.stepCount },
        weight_map: o.weight_map,
      };
      writeFileAtomic(path.join(versionDir, OPTIMIZER_INDEX_FILE), JSON.stringify(optIndex, null, 2) + "\n");
    }
  }
  // Once every rank's files are complete, one rename makes them the checkpoint.
  await worldBarrier(first);
  if (first.worldRank === 0) {
    switchLatest(dir, version);
    removeLitter(dir, version, true);
  }
  await worldBarrier(first);
}

function parseIndex(root: string, name: string, what: string): CheckpointIndex {
  const file = path.join(root, name);
  let index: CheckpointIndex;
  try {
    index = JSON.parse(fs.readFileSync(checkedFile(root, name, what), "utf8"));
  } catch (e) {
    const why = e instanceof MoEError ? e.message : "it is not JSON";
    throw new MoEError(`Expected a checkpoint index at ${file} but ${why}`, "ERR_MOE_VALUE", { cause: e });
  }
  if (!index || typeof index.weight_map !== "object" || index.weight_map === null) {
    throw new MoEError(`Expected a weight_map in ${file}`, "ERR_MOE_VALUE");
  }
  return index;
}

/** Reads the index of a checkpoint directory (of the version `latest` names, when it has one). */
export function readCheckpointIndex(dir: string): CheckpointIndex {
  if (typeof dir !== "string" || dir === "") throw invalid("a directory path", "dir", dir);
  let root: string;
  try {
    root = checkpointFilesDir(dir);
  } catch (e) {
    throw new MoEError(
      `Expected a checkpoint index at ${path.join(dir, INDEX_FILE)} but ${(e as Error).message}`,
      "ERR_MOE_VALUE",
      {
        cause: e,
      },
    );
  }
  return parseIndex(root, INDEX_FILE, "its index");
}

function checkStep(dir: string, step: unknown, file: string): void {
  if (step !== undefined && (typeof step !== "number" || !Number.isSafeInteger(step) || step < 0))
    throw new MoEError(
      `Expected metadata.optimizer_step of the checkpoint at ${dir} (${file}) to be an integer >= 0 but received ${JSON.stringify(step)}`,
      "ERR_MOE_VALUE",
    );
}

function checkMetadata(dir: string, index: CheckpointIndex, layers: readonly CheckpointLayer[], opt?: AdamW): void {
  const meta = index.metadata;
  if (meta === undefined) return;
  if (meta === null || typeof meta !== "object")
    throw new MoEError(`Expected the metadata of the checkpoint at ${dir} to be an object`, "ERR_MOE_VALUE");
  if (meta.layers !== undefined) {
    if (!Array.isArray(meta.layers))
      throw new MoEError(`Expected metadata.layers of the checkpoint at ${dir} to be an array`, "ERR_MOE_VALUE");
    for (const l of layers) {
      const saved = meta.layers.find((e) => e?.name === l.config.name)?.config as { numExperts?: unknown } | undefined;
      if (saved && saved.numExperts !== undefined && saved.numExperts !== l.config.numExperts)
        throw new MoEError(
          `Expected the layer ${l.config.name} with ${l.config.numExperts} experts but the checkpoint at ${dir} has ${String(saved.numExperts)}`,
          "ERR_MOE_VALUE",
        );
    }
  }
  if (opt) checkStep(dir, meta.optimizer_step, INDEX_FILE);
}

/** The checkpoint's files, opened on first use (each checked to be a regular file inside root). */
class Files {
  private readonly open = new Map<string, SafetensorsFile>();
  constructor(
    private readonly dir: string,
    private readonly root: string,
    private readonly dtypes: SafetensorsReadOptions["dtypes"],
  ) {}

  /** The source of key in the file the map names, or undefined when the map does not list it. */
  source(map: Record<string, string>, key: string): TensorSource | undefined {
    if (!Object.prototype.hasOwnProperty.call(map, key)) return undefined;
    const name = map[key];
    let f = this.open.get(name);
    if (!f) {
      f = SafetensorsFile.open(checkedFile(this.root, name, `listed for ${key}`), { dtypes: this.dtypes });
      this.open.set(name, f);
    }
    const info = f.info(key);
    const file = f;
    return {
      shape: info.shape,
      dtype: info.dtype,
      where: "in the checkpoint",
      read: (into) => void file.read(key, into),
    };
  }

  skipped(): CheckpointLoadReport["skipped"] {
    return [...this.open.entries()].flatMap(([file, f]) =>
      f.skipped.map((s) => ({ name: s.name, dtype: s.dtype, file })),
    );
  }

  close(): void {
    for (const f of this.open.values()) f.close();
  }

  missing(key: string): MoEError {
    return new MoEError(
      `Expected the tensor ${key} in the checkpoint at ${this.dir} but its index does not list it`,
      "ERR_MOE_VALUE",
    );
  }
}

/**
 * Loads the layers (and the optimizer's moments, when the checkpoint has them) from dir, whatever
 * epSize wrote it: each rank reads its own experts by global index, tensor by tensor. Float tensors
 * are converted to the layers' dtypes; shapes must match. Everything is checked first (files present
 * and inside the checkpoint, names, shapes, dtypes, metadata), so a failed load changes nothing.
 * Resolves with the tensors of other dtypes that the files held and the load skipped.
 */
export async function loadCheckpoint(
  dir: string,
  layers: readonly CheckpointLayer[],
  options: CheckpointOptions = {},
): Promise<CheckpointLoadReport> {
  if (typeof dir !== "string" || dir === "") throw invalid("a directory path", "dir", dir);
  options = checkOptions(options);
  checkLayers(layers, "layers");
  for (const l of layers) await l.ready;
  const index = readCheckpointIndex(dir);
  const root = checkpointFilesDir(dir);
  const opt = options.optimizer;
  checkMetadata(dir, index, layers, opt);
  // Older checkpoints keep the moments in the model files, listed by the model index.
  let momentMap = index.weight_map;
  let step = index.metadata?.optimizer_step;
  if (opt && fs.existsSync(path.join(root, OPTIMIZER_INDEX_FILE))) {
    const optIndex = parseIndex(root, OPTIMIZER_INDEX_FILE, "its optimizer index");
    checkStep(dir, optIndex.metadata?.optimizer_step, OPTIMIZER_INDEX_FILE);
    momentMap = optIndex.weight_map;
    step = optIndex.metadata?.optimizer_step ?? step;
  }
  const files = new Files(dir, root, options.dtypes);
  try {
    const model = planLoad(layers.flatMap(stateTensors), (key) => files.source(index.weight_map, key));
    if (model.missing.length > 0) throw files.missing(model.missing[0]);
    const steps: LoadStep[] = [...model.steps];
    if (opt) {
      const moments = planLoad(momentTensors(layers, opt), (key) => files.source(momentMap, key));
      for (const s of moments.steps) {
        if (s.sources.some((src) => src === undefined))
          throw new MoEError(
            `Expected every expert's ${s.target.name} in the checkpoint at ${dir} or none`,
            "ERR_MOE_VALUE",
          );
      }
      steps.push(...moments.steps);
    }
    for (const s of steps) await runLoadStep(s);
    if (opt && step !== undefined) opt.setStepCount(step);
    return { skipped: files.skipped() };
  } finally {
    files.close();
  }
}
