/**
 * Checkpoints of MoE layers in the safetensors format, sharded by EP rank the
 * way Hugging Face shards models: `model-ep00001-of-00004.safetensors` holds
 * the experts of EP rank 1 (one tensor per global expert, e.g.
 * `experts.5.w1` [D, F]), the first file also the replicated tensors (router,
 * shared experts, expert bias), and `model.safetensors.index.json` maps every
 * tensor name to its file. Because experts are stored one by one under their
 * global index, a checkpoint loads into any epSize: each rank reads the
 * experts it holds from whichever files have them. AdamW's moments, when
 * given, are saved beside each parameter (`<name>.exp_avg`, `<name>.exp_avg_sq`).
 * The files of one save sit in a version directory that `dir/latest` points to
 * (see layout.ts), so a save replaces the checkpoint whole; a load checks every
 * file, name, dtype, shape and the metadata before it changes any tensor.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { MoEError, checkInteger, invalid } from "../errors";
import { copyInto } from "../ops/elementwise";
import { Tensor, type DType } from "../tensor";
import type { CollectiveGroup } from "../layer/group";
import { wholeExperts, writesExpertShard } from "../layer/expert-slices";
import type { AdamW, OptimizerParam } from "../optim/adamw";
import { encodeSafetensors, readSafetensors, writeFileAtomic, type SafetensorsTensor } from "./safetensors";
import { checkedFile, checkpointFilesDir, currentVersion, nextVersion, removeLitter, switchLatest } from "./layout";

export const INDEX_FILE = "model.safetensors.index.json";

export interface CheckpointOptions {
  /** Also save (or load) this optimizer's moments and step count. */
  optimizer?: AdamW;
}

/** What a checkpoint needs of a layer (an MoELayer is one). */
export interface CheckpointLayer {
  /** Resolves once the tensors hold their values and the groups exist. */
  readonly ready: Promise<void>;
  /** The layer's name and expert count; the index keeps the whole object. */
  readonly config: { readonly name: string; readonly numExperts: number };
  /** Where this rank is: world rank, EP rank and size, the experts it holds. */
  readonly worldRank: number;
  readonly epRank: number;
  readonly epSize: number;
  readonly firstExpert: number;
  readonly numLocalExperts: number;
  /** For the closing barrier; absent (or of size 1) for one process. */
  readonly worldGroup?: CollectiveGroup;
  /** Trainable tensors; expert ones are [numLocalExperts, ...], one slice per local expert. */
  parameters(): ReadonlyArray<{ readonly name: string; readonly param: Tensor; readonly expert: boolean }>;
  /** Other replicated state (e.g. the expert bias). */
  buffers(): ReadonlyArray<{ readonly name: string; readonly tensor: Tensor }>;
}

export interface CheckpointIndex {
  metadata: {
    total_size: number;
    format: "moe-ep";
    ep_size: number;
    optimizer_step?: number;
    layers: Array<{ name: string; config: unknown }>;
  };
  weight_map: Record<string, string>;
}

const BYTES: Record<DType, number> = { float32: 4, bfloat16: 2, float16: 2, int32: 4, int64: 8 };

function pad5(n: number): string {
  return String(n).padStart(5, "0");
}

export function shardFileName(epRank: number, epSize: number): string {
  checkInteger("epSize", epSize, 1);
  checkInteger("epRank", epRank, 0, epSize - 1);
  return `model-ep${pad5(epRank)}-of-${pad5(epSize)}.safetensors`;
}

/** "layers.0.experts.w1" and global expert 5 -> "layers.0.experts.5.w1". */
export function expertTensorName(name: string, expert: number): string {
  if (typeof name !== "string") throw invalid("an expert parameter name (…experts.NAME)", "name", name);
  checkInteger("expert", expert, 0);
  const m = /^(.*?)(^|\.)experts\.([^.]+)(\.exp_avg|\.exp_avg_sq)?$/.exec(name);
  if (!m) throw new MoEError(`Expected an expert parameter name (…experts.NAME) but received ${name}`, "ERR_MOE_VALUE");
  return `${m[1]}${m[2]}experts.${expert}.${m[3]}${m[4] ?? ""}`;
}

/** One logical tensor of the checkpoint: replicated, or [L, ...] sharded by expert. */
interface Piece {
  name: string;
  tensor: Tensor;
  expert: boolean;
  layer: CheckpointLayer;
}

function pieces(layers: readonly CheckpointLayer[], optimizer?: AdamW): Piece[] {
  const out: Piece[] = [];
  const optParams = new Map<Tensor, OptimizerParam>();
  for (const p of optimizer?.params ?? []) optParams.set(p.param, p);
  for (const layer of layers) {
    for (const e of layer.parameters()) {
      out.push({ name: e.name, tensor: e.param, expert: e.expert, layer });
      const op = optParams.get(e.param);
      if (optimizer && op) {
        const s = optimizer.state(op);
        out.push(
          { name: `${e.name}.exp_avg`, tensor: s.expAvg, expert: e.expert, layer },
          { name: `${e.name}.exp_avg_sq`, tensor: s.expAvgSq, expert: e.expert, layer },
        );
      }
    }
    for (const b of layer.buffers()) out.push({ name: b.name, tensor: b.tensor, expert: false, layer });
  }
  return out;
}

function checkOptions(options: unknown): CheckpointOptions {
  if (options === null || typeof options !== "object" || Array.isArray(options))
    throw invalid("an options object ({ optimizer })", "checkpoint options", options);
  const o = options as CheckpointOptions;
  if (o.optimizer !== undefined && (o.optimizer === null || typeof o.optimizer.state !== "function"))
    throw invalid("an AdamW", "optimizer", o.optimizer);
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

function bytesOf(t: Tensor): Uint8Array {
  return new Uint8Array(t.handle.read(t.dtype));
}

async function worldBarrier(layer: CheckpointLayer): Promise<void> {
  const world = layer.worldGroup;
  if (!world || world.size === 1) return;
  if (world.barrier) return world.barrier();
  using t = Tensor.zeros([1]);
  await world.allReduce(t, "sum");
}

/**
 * Writes the layers (and the optimizer's moments) to dir: one safetensors file per EP rank,
 * written by the first expert-data-parallel replica, and the index, written by world rank 0.
 * Every rank of the world calls it; it resolves once every file is complete.
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
  // Experts sliced by expert tensor parallelism are saved whole (lib/layer/expert-slices.ts).
  const whole = await wholeExperts(pieces(layers, options.optimizer), "save");
  const all = whole.pieces;
  fs.mkdirSync(dir, { recursive: true });
  // Every rank names the same next version: the pointer moves only after the barrier below.
  const version = nextVersion(dir);
  const versionDir = path.join(dir, version);
  if (first.worldRank === 0) {
    removeLitter(dir, currentVersion(dir) ?? "", false);
    fs.mkdirSync(versionDir, { recursive: true });
  }
  await worldBarrier(first);
  if (writesExpertShard(first)) {
    const out: SafetensorsTensor[] = [];
    for (const p of all) {
      if (!p.expert) {
        if (first.epRank === 0)
          out.push({ name: p.name, dtype: p.tensor.dtype, shape: p.tensor.shape, data: bytesOf(p.tensor) });
        continue;
      }
      const [L, ...rest] = p.tensor.shape;
      const data = bytesOf(p.tensor);
      const per = data.byteLength / L;
      for (let l = 0; l < L; l++) {
        out.push({
          name: expertTensorName(p.name, first.firstExpert + l),
          dtype: p.tensor.dtype,
          shape: rest,
          data: data.subarray(l * per, (l + 1) * per),
        });
      }
    }
    writeFileAtomic(
      path.join(versionDir, shardFileName(first.epRank, P)),
      encodeSafetensors(out, { format: "pt", producer: "moe-ep" }),
    );
  }
  if (first.worldRank === 0) {
    const index: CheckpointIndex = {
      metadata: {
        total_size: 0,
        format: "moe-ep",
        ep_size: P,
        layers: layers.map((l) => ({ name: l.config.name, config: l.config })),
      },
      weight_map: {},
    };
    if (options.optimizer) index.metadata.optimizer_step = options.optimizer.stepCount;
    for (const p of all) {
      const bytes = p.tensor.numel * BYTES[p.tensor.dtype];
      if (!p.expert) {
        index.weight_map[p.name] = shardFileName(0, P);
        index.metadata.total_size += bytes;
        continue;
      }
      const layer = p.layer;
      const L = layer.numLocalExperts;
      for (let e = 0; e < layer.config.numExperts; e++)
        index.weight_map[expertTensorName(p.name, e)] = shardFileName(Math.floor(e / L), P);
      index.metadata.total_size += (bytes / L) * layer.config.numExperts;
    }
    writeFileAtomic(path.join(versionDir, INDEX_FILE), JSON.stringify(index, null, 2) + "\n");
  }
  whole.release();
  // Once every rank's files are complete, one rename makes them the checkpoint.
  await worldBarrier(first);
  if (first.worldRank === 0) {
    switchLatest(dir, version);
    removeLitter(dir, version, true);
  }
  await worldBarrier(first);
}

/** Reads the index of a checkpoint directory (of the version `latest` names, when it has one). */
export function readCheckpointIndex(dir: string): CheckpointIndex {
  if (typeof dir !== "string" || dir === "") throw invalid("a directory path", "dir", dir);
  let file = path.join(dir, INDEX_FILE);
  let index: CheckpointIndex;
  try {
    const root = checkpointFilesDir(dir);
    file = path.join(root, INDEX_FILE);
    index = JSON.parse(fs.readFileSync(checkedFile(root, INDEX_FILE, "its index"), "utf8"));
  } catch (e) {
    const why = e instanceof MoEError ? e.message : "it is not JSON";
    throw new MoEError(`Expected a checkpoint index at ${file} but ${why}`, "ERR_MOE_VALUE", { cause: e });
  }
  if (!index || typeof index.weight_map !== "object" || index.weight_map === null) {
    throw new MoEError(`Expected a weight_map in ${file}`, "ERR_MOE_VALUE");
  }
  return index;
}

function hostArray(dtype: DType, bytes: Uint8Array): Float32Array | Uint16Array | Int32Array | BigInt64Array {
  const buf = bytes.byteOffset % 8 === 0 ? bytes : bytes.slice();
  switch (dtype) {
    case "float32":
      return new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
    case "bfloat16":
    case "float16":
      return new Uint16Array(buf.buffer, buf.byteOffset, buf.byteLength / 2);
    case "int32":
      return new Int32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
    case "int64":
      return new BigInt64Array(buf.buffer, buf.byteOffset, buf.byteLength / 8);
  }
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
  const step = meta.optimizer_step;
  if (opt && step !== undefined && (typeof step !== "number" || !Number.isSafeInteger(step) || step < 0))
    throw new MoEError(
      `Expected metadata.optimizer_step of the checkpoint at ${dir} to be an integer >= 0 but received ${JSON.stringify(step)}`,
      "ERR_MOE_VALUE",
    );
}

/** The piece's tensor rebuilt from its stored parts, after checking their shapes and dtypes. */
function checkedSource(piece: Piece, parts: SafetensorsTensor[]): Tensor {
  const shape = piece.expert ? piece.tensor.shape.slice(1) : piece.tensor.shape;
  for (const t of parts) {
    if (t.shape.join() !== shape.join()) {
      throw new MoEError(
        `Expected ${t.name} of shape [${shape.join(", ")}] in the checkpoint but received [${t.shape.join(", ")}]`,
        "ERR_MOE_SHAPE",
      );
    }
    if (t.dtype !== parts[0].dtype)
      throw new MoEError(`Expected the experts of ${piece.name} in one dtype`, "ERR_MOE_DTYPE");
  }
  const dtype = parts[0].dtype;
  if ((dtype === "int32" || dtype === "int64") !== (piece.tensor.dtype === "int32" || piece.tensor.dtype === "int64")) {
    throw new MoEError(
      `Expected ${piece.name} as ${piece.tensor.dtype} in the checkpoint but received ${dtype}`,
      "ERR_MOE_DTYPE",
    );
  }
  const joined = parts.length === 1 ? parts[0].data : Buffer.concat(parts.map((t) => t.data));
  return Tensor.from(hostArray(dtype, joined), piece.tensor.shape, { dtype });
}

/**
 * Loads the layers (and the optimizer's moments, when the checkpoint has them) from dir, whatever
 * epSize wrote it: each rank reads its own experts by global index. Float tensors are converted to
 * the layers' dtypes; shapes must match. Everything is read and checked first (files present and
 * inside the checkpoint, names, shapes, dtypes, metadata), so a failed load changes nothing.
 */
export async function loadCheckpoint(
  dir: string,
  layers: readonly CheckpointLayer[],
  options: CheckpointOptions = {},
): Promise<void> {
  if (typeof dir !== "string" || dir === "") throw invalid("a directory path", "dir", dir);
  options = checkOptions(options);
  checkLayers(layers, "layers");
  for (const l of layers) await l.ready;
  const index = readCheckpointIndex(dir);
  const root = checkpointFilesDir(dir);
  const opt = options.optimizer;
  checkMetadata(dir, index, layers, opt);
  const whole = await wholeExperts(pieces(layers, opt), "load");
  const all = whole.pieces;
  // What to read: for each piece, its stored tensors (one per local expert for sharded ones).
  const wanted = new Map<string, string[]>();
  const need = (name: string, optional: boolean): boolean => {
    const file = index.weight_map[name];
    if (file === undefined) {
      if (optional) return false;
      throw new MoEError(
        `Expected the tensor ${name} in the checkpoint at ${dir} but its index does not list it`,
        "ERR_MOE_VALUE",
      );
    }
    wanted.set(file, [...(wanted.get(file) ?? []), name]);
    return true;
  };
  const isMoment = (n: string) => n.endsWith(".exp_avg") || n.endsWith(".exp_avg_sq");
  const plan: Array<{ piece: Piece; names: string[] }> = [];
  for (const p of all) {
    const layer = p.layer;
    const names = p.expert
      ? Array.from({ length: layer.numLocalExperts }, (_, l) => expertTensorName(p.name, layer.firstExpert + l))
      : [p.name];
    const present = names.map((n) => need(n, isMoment(p.name)));
    if (present.every(Boolean)) plan.push({ piece: p, names });
    else if (present.some(Boolean))
      throw new MoEError(`Expected every expert's ${p.name} in the checkpoint at ${dir} or none`, "ERR_MOE_VALUE");
  }
  const files = [...wanted.keys()].map((file) => checkedFile(root, file, `listed for ${wanted.get(file)![0]}`));
  const data = new Map<string, SafetensorsTensor>();
  [...wanted.values()].forEach((names, i) => {
    for (const [n, t] of readSafetensors(files[i], names)) data.set(n, t);
  });
  const sources: Tensor[] = [];
  try {
    for (const { piece, names } of plan)
      sources.push(
        checkedSource(
          piece,
          names.map((n) => data.get(n)!),
        ),
      );
    for (let i = 0; i < plan.length; i++) await copyInto(plan[i].piece.tensor, sources[i]);
    await whole.finish();
  } finally {
    sources.forEach((t) => t.dispose());
    whole.release();
  }
  if (opt && index.metadata?.optimizer_step !== undefined) opt.setStepCount(index.metadata.optimizer_step);
}
