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
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { MoEError, checkInteger, invalid } from "../errors";
import { copyInto } from "../ops/elementwise";
import { Tensor, type DType } from "../tensor";
import type { MoELayer } from "../layer/moe-layer";
import type { AdamW, OptimizerParam } from "../optim/adamw";
import { encodeSafetensors, readSafetensors, writeFileAtomic, type SafetensorsTensor } from "./safetensors";

export const INDEX_FILE = "model.safetensors.index.json";

export interface CheckpointOptions {
  /** Also save (or load) this optimizer's moments and step count. */
  optimizer?: AdamW;
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
  layer: MoELayer;
}

function pieces(layers: readonly MoELayer[], optimizer?: AdamW): Piece[] {
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

function checkLayers(layers: readonly MoELayer[], what: string): MoELayer {
  if (!Array.isArray(layers) || layers.length === 0) throw invalid("a non-empty array of MoE layers", what, layers);
  layers.forEach((l, i) => {
    if (l === null || typeof l !== "object" || typeof (l as MoELayer).parameters !== "function")
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

async function worldBarrier(layer: MoELayer): Promise<void> {
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
  layers: readonly MoELayer[],
  options: CheckpointOptions = {},
): Promise<void> {
  if (typeof dir !== "string" || dir === "") throw invalid("a directory path", "dir", dir);
  options = checkOptions(options);
  const first = checkLayers(layers, "layers");
  for (const l of layers) await l.ready;
  const P = first.epSize;
  const edpRank = Math.floor(first.worldRank / P);
  const all = pieces(layers, options.optimizer);
  fs.mkdirSync(dir, { recursive: true });
  if (edpRank === 0) {
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
      path.join(dir, shardFileName(first.epRank, P)),
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
    writeFileAtomic(path.join(dir, INDEX_FILE), JSON.stringify(index, null, 2) + "\n");
  }
  await worldBarrier(first);
}

/** Reads the index of a checkpoint directory. */
export function readCheckpointIndex(dir: string): CheckpointIndex {
  if (typeof dir !== "string" || dir === "") throw invalid("a directory path", "dir", dir);
  const file = path.join(dir, INDEX_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === "ENOENT" ? "it does not exist" : "it cannot be read";
    throw new MoEError(`Expected a checkpoint index at ${file} but ${why}`, "ERR_MOE_VALUE", { cause: e });
  }
  let index: CheckpointIndex;
  try {
    index = JSON.parse(text);
  } catch (e) {
    throw new MoEError(`Expected a checkpoint index at ${file} but it is not JSON`, "ERR_MOE_VALUE", { cause: e });
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

/**
 * Loads the layers (and the optimizer's moments, when the checkpoint has them) from dir, whatever
 * epSize wrote it: each rank reads its own experts by global index. Float tensors are converted to
 * the layers' dtypes; shapes must match.
 */
export async function loadCheckpoint(
  dir: string,
  layers: readonly MoELayer[],
  options: CheckpointOptions = {},
): Promise<void> {
  if (typeof dir !== "string" || dir === "") throw invalid("a directory path", "dir", dir);
  options = checkOptions(options);
  checkLayers(layers, "layers");
  for (const l of layers) await l.ready;
  const index = readCheckpointIndex(dir);
  const opt = options.optimizer;
  const all = pieces(layers, opt);
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
    if (path.basename(file) !== file)
      throw new MoEError(`Expected a file name in the index for ${name} but received ${file}`, "ERR_MOE_VALUE");
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
  }
  const data = new Map<string, SafetensorsTensor>();
  for (const [file, names] of wanted) for (const [n, t] of readSafetensors(path.join(dir, file), names)) data.set(n, t);
  for (const { piece, names } of plan) {
    const parts = names.map((n) => data.get(n)!);
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
    if (
      (dtype === "int32" || dtype === "int64") !== (piece.tensor.dtype === "int32" || piece.tensor.dtype === "int64")
    ) {
      throw new MoEError(
        `Expected ${piece.name} as ${piece.tensor.dtype} in the checkpoint but received ${dtype}`,
        "ERR_MOE_DTYPE",
      );
    }
    const joined = parts.length === 1 ? parts[0].data : Buffer.concat(parts.map((t) => t.data));
    using src = Tensor.from(hostArray(dtype, joined), piece.tensor.shape, { dtype });
    await copyInto(piece.tensor, src);
  }
  if (opt && index.metadata?.optimizer_step !== undefined) opt.setStepCount(index.metadata.optimizer_step);
}
