/**
 * Hugging Face MoE blocks: safetensors files written here by hand under
 * Mixtral's and DeepSeek-V3's names, in nn.Linear's [out, in] layout, load
 * into layers whose forward matches the float64 reference computed from the
 * same weights (transposed and concatenated here, independently of
 * lib/checkpoint); export then import is bit for bit; the exported file reads
 * back by hand and by Python with numpy; bad inputs get typed errors.
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
import {
  MoELayer,
  Tensor,
  exportHuggingFace,
  importHuggingFace,
  saveHuggingFace,
  stateDict,
  type HuggingFaceFormat,
} from "../lib";
import type { MoELayerOptions } from "../lib/layer/config";
import { fakeWorld } from "./fake-group";
import { refConfig, randomizeBiases } from "./layer-helpers";
import { tempDir } from "./procs";
import { moeLayerRef, type MoERefParams, type MoERefRank } from "./reference/moe-layer";
import { TOL, f32, normal, relErr, sameBits, tensor, values } from "./util";

interface HandTensor {
  dtype: string;
  shape: number[];
  bytes: Buffer;
}

/** A safetensors writer from the format's description, sharing nothing with lib/checkpoint. */
function writeByHand(file: string, tensors: Record<string, HandTensor>): void {
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.bytes.length] };
    offset += t.bytes.length;
  }
  let json = Buffer.from(JSON.stringify(header));
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, ...Object.values(tensors).map((t) => t.bytes)]));
}

/** The matching reader. */
function readByHand(file: string): Record<string, HandTensor> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const out: Record<string, HandTensor> = {};
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const e = v as { dtype: string; shape: number[]; data_offsets: [number, number] };
    out[name] = {
      dtype: e.dtype,
      shape: e.shape,
      bytes: buf.subarray(8 + n + e.data_offsets[0], 8 + n + e.data_offsets[1]),
    };
  }
  return out;
}

function f32Tensor(v: ArrayLike<number>, shape: number[]): HandTensor {
  return { dtype: "F32", shape, bytes: Buffer.from(Float32Array.from(v).buffer) };
}

function handValues(t: HandTensor): Float64Array {
  if (t.dtype === "F32") return Float64Array.from(new Float32Array(new Uint8Array(t.bytes).buffer));
  if (t.dtype === "BF16") {
    const u = new Uint16Array(new Uint8Array(t.bytes).buffer);
    return Float64Array.from(new Float32Array(Uint32Array.from(u, (b) => b << 16).buffer));
  }
  throw new Error(`no reader for ${t.dtype}`);
}

/** a [R, C] row-major, transposed to [C, R]. */
function transpose(a: ArrayLike<number>, R: number, C: number): Float64Array {
  const out = new Float64Array(R * C);
  for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) out[c * R + r] = a[r * C + c];
  return out;
}

/** Random Hugging Face weights of one block, by short name (under the block). */
interface Block {
  D: number;
  F: number;
  E: number;
  S: number;
  tensors: Record<string, Float64Array>;
}

const NAMES: Record<HuggingFaceFormat, { block: string; gate: string; up: string; down: string }> = {
  mixtral: { block: "block_sparse_moe.", gate: "w1", up: "w3", down: "w2" },
  "deepseek-v3": { block: "mlp.", gate: "gate_proj", up: "up_proj", down: "down_proj" },
};

function randomBlock(format: HuggingFaceFormat, D: number, F: number, E: number, S: number, seed: number): Block {
  const n = NAMES[format];
  const t: Record<string, Float64Array> = { "gate.weight": f32(normal(E * D, seed, 0.5)) };
  for (let e = 0; e < E; e++) {
    t[`experts.${e}.${n.gate}.weight`] = f32(normal(F * D, seed + 10 + e, 0.4));
    t[`experts.${e}.${n.up}.weight`] = f32(normal(F * D, seed + 30 + e, 0.4));
    t[`experts.${e}.${n.down}.weight`] = f32(normal(D * F, seed + 50 + e, 0.4));
  }
  if (format === "deepseek-v3") {
    t["gate.e_score_correction_bias"] = f32(normal(E, seed + 70, 0.05));
    t["shared_experts.gate_proj.weight"] = f32(normal(S * D, seed + 71, 0.4));
    t["shared_experts.up_proj.weight"] = f32(normal(S * D, seed + 72, 0.4));
    t["shared_experts.down_proj.weight"] = f32(normal(D * S, seed + 73, 0.4));
  }
  return { D, F, E, S, tensors: t };
}

function shapeOf(format: HuggingFaceFormat, b: Block, short: string): number[] {
  const n = NAMES[format];
  if (short === "gate.weight") return [b.E, b.D];
  if (short === "gate.e_score_correction_bias") return [b.E];
  if (short.startsWith("shared_experts.")) return short.includes("down_proj") ? [b.D, b.S] : [b.S, b.D];
  return short.includes(`.${n.down}.`) ? [b.D, b.F] : [b.F, b.D];
}

function handFile(format: HuggingFaceFormat, b: Block, prefix: string, only?: (short: string) => boolean) {
  const out: Record<string, HandTensor> = {};
  for (const [short, v] of Object.entries(b.tensors))
    if (!only || only(short)) out[prefix + NAMES[format].block + short] = f32Tensor(v, shapeOf(format, b, short));
  return out;
}

/** The layer's parameters computed from the Hugging Face weights: nn.Linear transposed, [gate | up] per row. */
function layerParams(format: HuggingFaceFormat, b: Block): MoERefParams {
  const { D, F, E, S } = b;
  const n = NAMES[format];
  const t = b.tensors;
  const gated = (gate: Float64Array, up: Float64Array, width: number) => {
    const out = new Float64Array(D * 2 * width);
    for (let d = 0; d < D; d++)
      for (let j = 0; j < width; j++) {
        out[d * 2 * width + j] = gate[j * D + d];
        out[d * 2 * width + width + j] = up[j * D + d];
      }
    return out;
  };
  const w1 = new Float64Array(E * D * 2 * F);
  const w2 = new Float64Array(E * F * D);
  for (let e = 0; e < E; e++) {
    w1.set(gated(t[`experts.${e}.${n.gate}.weight`], t[`experts.${e}.${n.up}.weight`], F), e * D * 2 * F);
    w2.set(transpose(t[`experts.${e}.${n.down}.weight`], D, F), e * F * D);
  }
  const p: MoERefParams = { "router.weight": transpose(t["gate.weight"], E, D), "experts.w1": w1, "experts.w2": w2 };
  if (format === "deepseek-v3") {
    p["shared_experts.w1"] = gated(t["shared_experts.gate_proj.weight"], t["shared_experts.up_proj.weight"], S);
    p["shared_experts.w2"] = transpose(t["shared_experts.down_proj.weight"], D, S);
  }
  return p;
}

/** Forwards on every rank against the reference (inputs re-drawn until no routing choice is a near tie). */
async function expectReference(layers: MoELayer[], params: MoERefParams, bias?: Float64Array): Promise<void> {
  const D = layers[0].config.dModel;
  const cfg = refConfig(layers[0], bias);
  for (let s = 1; ; s += 100) {
    const ranks: MoERefRank[] = layers.map((_, r) => ({
      x: f32(normal(9 * D, s + r)),
      dy: new Float64Array(9 * D),
    }));
    const ref = moeLayerRef(cfg, params, ranks);
    if (ref.margin < 1e-4) continue;
    const outs = await Promise.all(
      layers.map(async (l, r) => {
        using x = tensor(ranks[r].x, [9, D]);
        return (await l.eval().forward(x)).output;
      }),
    );
    outs.forEach((o, r) => {
      expect(relErr(values(o), ref.outputs[r])).toBeLessThan(TOL.float32);
      o.dispose();
    });
    return;
  }
}

let work: string;
beforeAll(() => {
  work = tempDir("moe-ep-hf-");
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const mixtral: MoELayerOptions = {
  dModel: 8,
  dFF: 6,
  numExperts: 4,
  topK: 2,
  activation: "swiglu",
  name: "layers.1",
};
const deepseek: MoELayerOptions = {
  dModel: 8,
  dFF: 6,
  numExperts: 8,
  topK: 3,
  scoreFunction: "sigmoid",
  expertBias: true,
  numGroups: 4,
  topkGroups: 2,
  sharedExpertFF: 4,
  activation: "swiglu",
};

describe("importHuggingFace", () => {
  test("Mixtral: each EP rank takes its experts; the forward is the reference's on the Hugging Face weights", async () => {
    const b = randomBlock("mixtral", 8, 6, 4, 0, 1);
    const file = path.join(work, "mixtral.safetensors");
    writeByHand(file, {
      "model.embed_tokens.weight": f32Tensor(normal(16, 3), [2, 8]),
      ...handFile("mixtral", b, "model.layers.1."),
      // Tensors of dtypes moe-ep does not read: skipped (and, in the block, reported).
      "model.layers.1.block_sparse_moe.experts.0.w1.weight_scale": {
        dtype: "F8_E4M3",
        shape: [2],
        bytes: Buffer.alloc(2),
      },
      "model.layers.1.self_attn.mask": { dtype: "BOOL", shape: [3], bytes: Buffer.alloc(3) },
    });
    const layers = await Promise.all(fakeWorld(2).map((g) => MoELayer.create({ ...mixtral, epSize: 2 }, g)));
    const reports = await Promise.all(
      layers.map((l) => importHuggingFace(l, file, { format: "mixtral", prefix: "model.layers.1" })),
    );
    expect(reports[1].loaded).toEqual([
      "layers.1.router.weight",
      "layers.1.experts.2.w1",
      "layers.1.experts.3.w1",
      "layers.1.experts.2.w2",
      "layers.1.experts.3.w2",
    ]);
    expect(reports[1]).toMatchObject({ missing: [], unused: [], unmapped: [] });
    expect(reports[1].skipped).toEqual([
      { name: "model.layers.1.block_sparse_moe.experts.0.w1.weight_scale", dtype: "F8_E4M3", file },
    ]);
    await expectReference(layers, layerParams("mixtral", b));
    // With dtypes: "strict" the F8 tensor is refused.
    await expect(
      importHuggingFace(layers[0], file, { format: "mixtral", prefix: "model.layers.1.", dtypes: "strict" }),
    ).rejects.toMatchObject({ code: "ERR_MOE_DTYPE", message: expect.stringMatching(/weight_scale is F8_E4M3/) });
    layers.forEach((l) => l.dispose());
  });

  test("DeepSeek-V3 from a directory with an index over two files: router, expert bias, experts and shared experts", async () => {
    const b = randomBlock("deepseek-v3", 8, 6, 8, 4, 2);
    const dir = path.join(work, "deepseek");
    fs.mkdirSync(dir);
    const prefix = "model.layers.3.";
    const first = (s: string) => /^experts\.[0-3]\./.test(s);
    const files = {
      "model-00001-of-00002.safetensors": handFile("deepseek-v3", b, prefix, first),
      "model-00002-of-00002.safetensors": handFile("deepseek-v3", b, prefix, (s) => !first(s)),
    };
    const weight_map: Record<string, string> = {};
    for (const [f, tensors] of Object.entries(files)) {
      writeByHand(path.join(dir, f), tensors);
      for (const n of Object.keys(tensors)) weight_map[n] = f;
    }
    fs.writeFileSync(path.join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: {}, weight_map }));
    const layer = await MoELayer.create(deepseek);
    const report = await importHuggingFace(layer, dir, { format: "deepseek-v3", prefix });
    expect(report.loaded).toHaveLength(1 + 8 + 8 + 2 + 1);
    expect(values(layer.buffers()[0].tensor)).toEqual(b.tensors["gate.e_score_correction_bias"]);
    await expectReference([layer], layerParams("deepseek-v3", b), b.tensors["gate.e_score_correction_bias"]);
    layer.dispose();
  });

  test("bad inputs: typed errors naming the Hugging Face tensor, and a refused import changes nothing", async () => {
    const b = randomBlock("mixtral", 8, 6, 4, 0, 5);
    const good = handFile("mixtral", b, "");
    const layer = await MoELayer.create({ ...mixtral, name: "" });
    const before = await stateDict(layer);
    const same = async () => {
      const now = await stateDict(layer);
      for (const [k, t] of now) expect([k, sameBits(t, before.get(k)!)]).toEqual([k, true]);
      now.forEach((t) => t.dispose());
    };
    const file = (name: string, tensors: Record<string, HandTensor>) => {
      const f = path.join(work, `${name}.safetensors`);
      writeByHand(f, tensors);
      return f;
    };
    const wide = handFile("mixtral", randomBlock("mixtral", 7, 6, 4, 0, 5), "");
    await expect(importHuggingFace(layer, file("wide", wide), { format: "mixtral" })).rejects.toMatchObject({
      code: "ERR_MOE_SHAPE",
      message: expect.stringMatching(/block_sparse_moe\.gate\.weight of shape \[4, 8\] .* but received \[4, 7\]/),
    });
    const lacking = { ...good };
    delete lacking["block_sparse_moe.experts.3.w3.weight"];
    await expect(importHuggingFace(layer, file("lacking", lacking), { format: "mixtral" })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/lacks block_sparse_moe\.experts\.3\.w3\.weight/),
    });
    const f8 = {
      ...good,
      "block_sparse_moe.experts.0.w2.weight": { dtype: "F8_E5M2", shape: [8, 6], bytes: Buffer.alloc(48) },
    };
    await expect(importHuggingFace(layer, file("f8", f8), { format: "mixtral" })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/experts\.0\.w2\.weight \(some in dtypes moe-ep does not read\)/),
    });
    const extra = { ...good, "block_sparse_moe.experts.4.w1.weight": good["block_sparse_moe.experts.0.w1.weight"] };
    await expect(importHuggingFace(layer, file("extra", extra), { format: "mixtral" })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/no place for: block_sparse_moe\.experts\.4\.w1\.weight/),
    });
    await same();
    // Not strict: everything present loads; expert 3's W1 keeps its value and the report says why.
    const report = await importHuggingFace(layer, file("lacking", lacking), { format: "mixtral", strict: false });
    expect(report.missing).toEqual(["block_sparse_moe.experts.3.w3.weight"]);
    expect(report.loaded).not.toContain("experts.3.w1");
    const w1 = values(layer.parameters()[1].param);
    const per = 8 * 12;
    expect(w1.slice(3 * per)).toEqual(values(before.get("experts.3.w1")!));
    expect(w1.slice(0, per)).toEqual(layerParams("mixtral", b)["experts.w1"].slice(0, per));
    // Formats the layer cannot hold.
    const relu = await MoELayer.create({ ...mixtral, activation: "relu" });
    await expect(importHuggingFace(relu, good as never, { format: "mixtral" })).rejects.toMatchObject({
      code: "ERR_MOE_UNSUPPORTED",
      message: expect.stringMatching(/gated activation .* relu/),
    });
    const biased = await MoELayer.create({ ...mixtral, bias: true });
    await expect(exportHuggingFace(biased, { format: "mixtral" })).rejects.toMatchObject({
      code: "ERR_MOE_UNSUPPORTED",
      message: expect.stringMatching(/experts\.b1/),
    });
    await expect(importHuggingFace(layer, file("ok", good), { format: "gpt" as never })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
    });
    for (const [l, src, o] of [
      [null, good, { format: "mixtral" }],
      [layer, good, null],
      [layer, good, { format: "mixtral", prefix: 5 }],
      [layer, good, { format: "mixtral", dtypes: "loose" }],
      [layer, 5, { format: "mixtral" }],
      [layer, path.join(work, "nowhere"), { format: "mixtral" }],
    ] as Array<[unknown, unknown, unknown]>)
      await expect(importHuggingFace(l as never, src as never, o as never)).rejects.toMatchObject({
        code: "ERR_MOE_VALUE",
      });
    await expect(saveHuggingFace("", layer, { format: "mixtral" })).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    const noBias = await MoELayer.create({ ...deepseek, expertBias: false });
    const ds = handFile("deepseek-v3", randomBlock("deepseek-v3", 8, 6, 8, 4, 6), "");
    await expect(importHuggingFace(noBias, file("ds", ds), { format: "deepseek-v3" })).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/no place for: mlp\.gate\.e_score_correction_bias/),
    });
    before.forEach((t) => t.dispose());
    for (const l of [layer, relu, biased, noBias]) l.dispose();
  });
});

describe("exportHuggingFace", () => {
  test("DeepSeek-V3 in bfloat16: saved, read back by hand in nn.Linear's layout, imported bit for bit", async () => {
    const a = await MoELayer.create({ ...deepseek, dtype: "bfloat16", seed: 4, initStd: 0.3 });
    await randomizeBiases(a, 3);
    const file = path.join(work, "export", "ds.safetensors");
    await saveHuggingFace(file, a, { format: "deepseek-v3", prefix: "model.layers.5." });
    const got = readByHand(file);
    const b = randomBlock("deepseek-v3", 8, 6, 8, 4, 0);
    expect(Object.keys(got).sort()).toEqual(Object.keys(handFile("deepseek-v3", b, "model.layers.5.")).sort());
    const p = "model.layers.5.mlp.";
    const param = (n: string) => values(a.parameters().find((q) => q.name === n)!.param);
    expect(got[`${p}gate.weight`]).toMatchObject({ dtype: "F32", shape: [8, 8] });
    expect(handValues(got[`${p}gate.weight`])).toEqual(transpose(param("router.weight"), 8, 8));
    expect(handValues(got[`${p}gate.e_score_correction_bias`])).toEqual(values(a.buffers()[0].tensor));
    // Expert 5's up projection is the right half of its W1 [D, 2F], transposed.
    const w1 = param("experts.w1").slice(5 * 8 * 12, 6 * 8 * 12);
    const up = new Float64Array(6 * 8);
    for (let j = 0; j < 6; j++) for (let d = 0; d < 8; d++) up[j * 8 + d] = w1[d * 12 + 6 + j];
    expect(got[`${p}experts.5.up_proj.weight`]).toMatchObject({ dtype: "BF16", shape: [6, 8] });
    expect(handValues(got[`${p}experts.5.up_proj.weight`])).toEqual(up);
    expect(got[`${p}shared_experts.down_proj.weight`].shape).toEqual([8, 4]);
    // Import into another layer: every tensor bit for bit; from the exported Map as well.
    const c = await MoELayer.create({ ...deepseek, dtype: "bfloat16", seed: 9 });
    await importHuggingFace(c, file, { format: "deepseek-v3", prefix: "model.layers.5" });
    const map = await exportHuggingFace(a, { format: "deepseek-v3" });
    const d = await MoELayer.create({ ...deepseek, dtype: "bfloat16", seed: 10 });
    await importHuggingFace(d, map, { format: "deepseek-v3" });
    const want = await a.stateDict();
    for (const l of [c, d]) {
      const sd = await l.stateDict();
      for (const [k, t] of want) expect([k, sameBits(sd.get(k)!, t)]).toEqual([k, true]);
      sd.forEach((t) => t.dispose());
    }
    for (const [n, t] of map) expect([n, t.shape]).toEqual([n, got[`model.layers.5.${n}`].shape]);
    [want, map].forEach((m) => m.forEach((t: Tensor) => t.dispose()));
    for (const l of [a, c, d]) l.dispose();
  });

  test("Mixtral with epSize 2: each rank writes its experts, and a directory of both files loads into one rank", async () => {
    const dir = path.join(work, "mixtral-ep");
    const src = await Promise.all(fakeWorld(2).map((g) => MoELayer.create({ ...mixtral, epSize: 2, seed: 8 }, g)));
    await Promise.all(
      src.map((l, r) => saveHuggingFace(path.join(dir, `rank${r}.safetensors`), l, { format: "mixtral" })),
    );
    expect(Object.keys(readByHand(path.join(dir, "rank1.safetensors"))).sort()).toEqual([
      "block_sparse_moe.experts.2.w1.weight",
      "block_sparse_moe.experts.2.w2.weight",
      "block_sparse_moe.experts.2.w3.weight",
      "block_sparse_moe.experts.3.w1.weight",
      "block_sparse_moe.experts.3.w2.weight",
      "block_sparse_moe.experts.3.w3.weight",
      "block_sparse_moe.gate.weight",
    ]);
    const one = await MoELayer.create({ ...mixtral, seed: 1 });
    await importHuggingFace(one, dir, { format: "mixtral" });
    const whole = new Map((await Promise.all(src.map((l) => l.stateDict()))).flatMap((m) => [...m]));
    const mine = await one.stateDict();
    for (const [k, t] of mine) expect([k, sameBits(t, whole.get(k)!)]).toEqual([k, true]);
    [...whole.values(), ...mine.values()].forEach((t) => t.dispose());
    [...src, one].forEach((l) => l.dispose());
  });

  test("Python reads the exported file with struct, json and numpy (no safetensors package)", async () => {
    try {
      execFileSync("python3", ["-c", "import numpy"], { stdio: "ignore" });
    } catch {
      console.warn("skipped: python3 with numpy is not installed");
      return;
    }
    const a = await MoELayer.create({ ...mixtral, dtype: "bfloat16", initStd: 0.3 });
    const file = path.join(work, "py.safetensors");
    await saveHuggingFace(file, a, { format: "mixtral", prefix: "model.layers.1." });
    const py = `
import json, struct, sys, numpy as np
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
def get(name):
    e = h[name]; b, end = e["data_offsets"]
    a = (np.frombuffer(data[b:end], "<u2").astype(np.uint32) << 16).view(np.float32) if e["dtype"] == "BF16" else np.frombuffer(data[b:end], "<f4")
    return a.reshape(e["shape"]).astype(np.float64)
p = "model.layers.1.block_sparse_moe."
# The layer's W1 of expert 2 is [gate | up] with gate = w1.T, up = w3.T; W2 = w2.T.
w1 = np.concatenate([get(p + "experts.2.w1.weight").T, get(p + "experts.2.w3.weight").T], axis=1)
print(json.dumps({"w1": w1.ravel().tolist(), "w2": get(p + "experts.2.w2.weight").T.ravel().tolist(), "gate": get(p + "gate.weight").T.ravel().tolist()}))`;
    const got = JSON.parse(execFileSync("python3", ["-c", py, file], { encoding: "utf8" }));
    const per = (n: string, size: number) =>
      values(a.parameters().find((q) => q.name === `layers.1.experts.${n}`)!.param).slice(2 * size, 3 * size);
    expect(got.w1).toEqual([...per("w1", 8 * 12)]);
    expect(got.w2).toEqual([...per("w2", 6 * 8)]);
    expect(got.gate).toEqual([...values(a.parameters()[0].param)]);
    a.dispose();
  });
});
