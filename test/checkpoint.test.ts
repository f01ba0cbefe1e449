/**
 * Checkpoints: the files follow the safetensors format (checked by an
 * independent reader here, and by Python with numpy when it is installed),
 * round-trip bit for bit with the optimizer's state, reshard between EP sizes,
 * and bad or mismatched checkpoints get typed errors.
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
import {
  AdamW,
  INDEX_FILE,
  MoELayer,
  Tensor,
  checkpointFilesDir,
  loadCheckpoint,
  saveCheckpoint,
  shardFileName,
  type MoELayerGroup,
} from "../lib";
import type { MoELayerOptions } from "../lib/layer/config";
import { fakeWorld } from "./fake-group";
import { randomizeBiases } from "./layer-helpers";
import { tempDir } from "./procs";
import { normal, sameBits, tensor } from "./util";

/** A reader written from the format's description, sharing nothing with lib/checkpoint. */
function readByHand(file: string): {
  meta: Record<string, string>;
  tensors: Record<string, { dtype: string; shape: number[]; bytes: Buffer }>;
} {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  expect(n % 8).toBe(0); // padded to 8 bytes, so the data is aligned
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  const data = buf.subarray(8 + n);
  const out: Record<string, { dtype: string; shape: number[]; bytes: Buffer }> = {};
  let covered = 0;
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const e = v as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const size = { F32: 4, BF16: 2, F16: 2, I32: 4, I64: 8 }[e.dtype]!;
    expect(e.data_offsets[1] - e.data_offsets[0]).toBe(e.shape.reduce((a, b) => a * b, 1) * size);
    covered += e.data_offsets[1] - e.data_offsets[0];
    out[name] = { dtype: e.dtype, shape: e.shape, bytes: data.subarray(e.data_offsets[0], e.data_offsets[1]) };
  }
  expect(covered).toBe(data.length);
  return { meta: header.__metadata__ ?? {}, tensors: out };
}

function bytes(t: Tensor): Buffer {
  return Buffer.from(t.handle.read(t.dtype));
}

let work: string;
beforeAll(() => {
  work = tempDir("moe-ep-ckpt-");
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const options: MoELayerOptions = {
  dModel: 6,
  dFF: 5,
  numExperts: 4,
  topK: 2,
  seed: 3,
  initStd: 0.3,
  bias: true,
  sharedExpertFF: 3,
  expertBias: true,
  activation: "swiglu",
};

async function trained(opts: MoELayerOptions, group?: MoELayerGroup): Promise<{ layer: MoELayer; opt: AdamW }> {
  const layer = await MoELayer.create(opts, group);
  await randomizeBiases(layer, 5);
  const opt = new AdamW(layer.parameters(), { lr: 1e-2 });
  using x = tensor(normal(10 * opts.dModel, 1), [10, opts.dModel]);
  const r = await layer.forward(x);
  r.output.dispose();
  (await layer.backward(tensor(normal(10 * opts.dModel, 2), [10, opts.dModel]))).dispose();
  await opt.step();
  return { layer, opt };
}

describe("safetensors checkpoints", () => {
  test("one file per EP rank plus an index, in the safetensors format, experts stored one by one under their global index", async () => {
    const dir = path.join(work, "format");
    const world = fakeWorld(2);
    const runs = await Promise.all(world.map((g) => trained({ ...options, epSize: 2, name: "layers.0" }, g)));
    await Promise.all(runs.map((r) => r.layer.save(dir)));
    expect(fs.readdirSync(dir).sort()).toEqual(["latest", "v-000001"]);
    expect(fs.readlinkSync(path.join(dir, "latest"))).toBe("v-000001");
    const files = checkpointFilesDir(dir);
    expect(files).toBe(path.join(dir, "v-000001"));
    expect(fs.readdirSync(files).sort()).toEqual([INDEX_FILE, shardFileName(0, 2), shardFileName(1, 2)].sort());
    expect(shardFileName(1, 2)).toBe("model-ep00001-of-00002.safetensors");
    const index = JSON.parse(fs.readFileSync(path.join(files, INDEX_FILE), "utf8"));
    const f0 = readByHand(path.join(files, shardFileName(0, 2)));
    const f1 = readByHand(path.join(files, shardFileName(1, 2)));
    expect(f0.meta.format).toBe("pt");
    expect(Object.keys(f1.tensors).sort()).toEqual([
      "layers.0.experts.2.b1",
      "layers.0.experts.2.b2",
      "layers.0.experts.2.w1",
      "layers.0.experts.2.w2",
      "layers.0.experts.3.b1",
      "layers.0.experts.3.b2",
      "layers.0.experts.3.w1",
      "layers.0.experts.3.w2",
    ]);
    expect(f0.tensors["layers.0.router.weight"]).toMatchObject({ dtype: "F32", shape: [6, 4] });
    expect(f0.tensors["layers.0.experts.1.w1"]).toMatchObject({ dtype: "F32", shape: [6, 10] });
    expect(f0.tensors["layers.0.router.expert_bias"]).toMatchObject({ shape: [4] });
    // Every tensor's bytes are the layer's.
    const [l0, l1] = runs.map((r) => r.layer);
    expect(f0.tensors["layers.0.router.weight"].bytes.equals(bytes(l0.parameters()[0].param))).toBe(true);
    const w1 = bytes(l1.parameters().find((p) => p.name === "layers.0.experts.w1")!.param);
    expect(
      Buffer.concat([f1.tensors["layers.0.experts.2.w1"].bytes, f1.tensors["layers.0.experts.3.w1"].bytes]).equals(w1),
    ).toBe(true);
    // The index maps every name to its file and counts the bytes.
    let total = 0;
    for (const f of [f0, f1]) for (const t of Object.values(f.tensors)) total += t.bytes.length;
    expect(index.metadata.total_size).toBe(total);
    expect(index.metadata.ep_size).toBe(2);
    for (const [name, file] of Object.entries(index.weight_map))
      expect((file === shardFileName(0, 2) ? f0 : f1).tensors[name]).toBeDefined();
    expect(Object.keys(index.weight_map).length).toBe(Object.keys(f0.tensors).length + Object.keys(f1.tensors).length);
    for (const r of runs) {
      r.opt.dispose();
      r.layer.dispose();
    }
  });

  test("Python reads the files with nothing but the format's description (struct, json, numpy)", async () => {
    let hasNumpy = true;
    try {
      execFileSync("python3", ["-c", "import numpy"], { stdio: "ignore" });
    } catch {
      hasNumpy = false;
    }
    if (!hasNumpy) {
      console.warn("skipped: python3 with numpy is not installed");
      return;
    }
    const dir = path.join(work, "python");
    const { layer, opt } = await trained({ ...options, dtype: "bfloat16" });
    await layer.save(dir);
    const py = `
import json, struct, sys, numpy as np
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
out = {}
for name, e in h.items():
    if name == "__metadata__": continue
    b, end = e["data_offsets"]; raw = data[b:end]
    if e["dtype"] == "BF16": a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    else: a = np.frombuffer(raw, {"F32": "<f4", "F16": "<f2", "I32": "<i4", "I64": "<i8"}[e["dtype"]]).astype(np.float64)
    out[name] = {"dtype": e["dtype"], "shape": e["shape"], "sum": float(np.asarray(a, np.float64).sum()), "n": int(a.size)}
print(json.dumps(out))`;
    const got = JSON.parse(
      execFileSync("python3", ["-c", py, path.join(dir, "latest", shardFileName(0, 1))], { encoding: "utf8" }),
    );
    expect(layer.parameters()[1].param.dtype).toBe("bfloat16");
    for (const p of layer.parameters()) {
      const sum = p.param.toFloat32().reduce((a, b) => a + b, 0);
      const pieces = Object.entries(got).filter(([n]) =>
        p.expert ? n.replace(/experts\.\d+\./, "experts.") === p.name : n === p.name,
      );
      expect(pieces.length).toBe(p.expert ? 4 : 1);
      const want = p.param.dtype === "bfloat16" ? "BF16" : "F32";
      expect(pieces.every(([, v]) => (v as { dtype: string }).dtype === want)).toBe(true);
      const pySum = pieces.reduce((a, [, v]) => a + (v as { sum: number }).sum, 0);
      expect(Math.abs(pySum - sum)).toBeLessThan(1e-4 * (1 + Math.abs(sum)));
    }
    opt.dispose();
    layer.dispose();
  });

  test("save then load restores parameters, the expert bias and AdamW's state bit for bit; the next step matches", async () => {
    const dir = path.join(work, "roundtrip");
    const a = await trained(options);
    await a.layer.save(dir, { optimizer: a.opt });
    const b = await MoELayer.create({ ...options, seed: 77 });
    const optB = new AdamW(b.parameters(), { lr: 1e-2 });
    expect(sameBits(b.parameters()[1].param, a.layer.parameters()[1].param)).toBe(false);
    await b.load(dir, { optimizer: optB });
    a.layer.parameters().forEach((p, i) => {
      expect(sameBits(b.parameters()[i].param, p.param)).toBe(true);
      expect(sameBits(optB.state(b.parameters()[i]).expAvgSq, a.opt.state(p).expAvgSq)).toBe(true);
    });
    expect(sameBits(b.buffers()[0].tensor, a.layer.buffers()[0].tensor)).toBe(true);
    expect(optB.stepCount).toBe(1);
    for (const [layer, opt] of [
      [a.layer, a.opt],
      [b, optB],
    ] as const) {
      await opt.zeroGrad();
      using x = tensor(normal(8 * 6, 9), [8, 6]);
      const r = await layer.forward(x);
      r.output.dispose();
      (await layer.backward(tensor(normal(8 * 6, 10), [8, 6]))).dispose();
      await opt.step();
    }
    a.layer.parameters().forEach((p, i) => expect(sameBits(b.parameters()[i].param, p.param)).toBe(true));
    // A layer without an optimizer loads the same file (the moments are skipped).
    const c = await MoELayer.create(options);
    await c.load(dir);
    expect(sameBits(c.parameters()[2].param, (await loadedWeights(dir)).get("experts.w2")!)).toBe(true);
    for (const l of [a.layer, b, c]) l.dispose();
    a.opt.dispose();
    optB.dispose();
  });

  async function loadedWeights(dir: string): Promise<Map<string, Tensor>> {
    const l = await MoELayer.create(options);
    await l.load(dir);
    return new Map(l.parameters().map((p) => [p.name, p.param]));
  }

  test.each([
    [4, 1],
    [1, 2],
    [2, 4],
    [4, 2],
  ])("a checkpoint written with epSize %i loads into epSize %i (experts resharded)", async (from, to) => {
    const dir = path.join(work, `reshard-${from}-${to}`);
    const opts = { ...options, numExperts: 4, name: "moe" };
    const w1 = fakeWorld(from);
    const src = await Promise.all(w1.map((g) => trained({ ...opts, epSize: from }, g)));
    await Promise.all(src.map((r) => saveCheckpoint(dir, [r.layer], { optimizer: r.opt })));
    const w2 = fakeWorld(to);
    const dst = await Promise.all(w2.map((g) => MoELayer.create({ ...opts, epSize: to, seed: 1 }, g)));
    const opts2 = dst.map((l) => new AdamW(l.parameters(), { lr: 1e-2 }));
    await Promise.all(dst.map((l, r) => loadCheckpoint(dir, [l], { optimizer: opts2[r] })));
    // Expert e on its new rank holds exactly what expert e held on its old rank.
    for (const name of ["moe.experts.w1", "moe.experts.b2"]) {
      const gather = (layers: MoELayer[], f: (l: MoELayer) => Tensor) =>
        Buffer.concat(layers.slice(0, layers[0].epSize).map((l) => bytes(f(l))));
      const pick = (l: MoELayer) => l.parameters().find((p) => p.name === name)!;
      expect(
        gather(dst, (l) => pick(l).param).equals(
          gather(
            src.map((r) => r.layer),
            (l) => pick(l).param,
          ),
        ),
      ).toBe(true);
      const moment = (rs: Array<{ layer: MoELayer; opt: AdamW }>) => (l: MoELayer) =>
        rs.find((r) => r.layer === l)!.opt.state(pick(l)).expAvg;
      expect(
        gather(dst, moment(dst.map((l, r) => ({ layer: l, opt: opts2[r] })))).equals(
          gather(
            src.map((r) => r.layer),
            moment(src),
          ),
        ),
      ).toBe(true);
    }
    expect(sameBits(dst[dst.length - 1].parameters()[0].param, src[0].layer.parameters()[0].param)).toBe(true);
    for (const r of src) {
      r.opt.dispose();
      r.layer.dispose();
    }
    opts2.forEach((o) => o.dispose());
    dst.forEach((l) => l.dispose());
  });

  test("bad checkpoints get typed errors and nothing half-written is left", async () => {
    const dir = path.join(work, "bad");
    const { layer, opt } = await trained(options);
    await layer.save(dir);
    expect(fs.readdirSync(dir).filter((f) => f.includes(".tmp-"))).toEqual([]);
    await expect(layer.load(path.join(work, "nowhere"))).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/checkpoint index/),
    });
    const other = await MoELayer.create({ ...options, dModel: 8 });
    await expect(other.load(dir)).rejects.toMatchObject({
      code: "ERR_MOE_SHAPE",
      message: expect.stringMatching(/router.weight of shape \[8, 4\].*\[6, 4\]/),
    });
    const more = await MoELayer.create({ ...options, numExperts: 8 });
    await expect(more.load(dir)).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/with 8 experts but the checkpoint .* has 4/),
    });
    const file = path.join(checkpointFilesDir(dir), shardFileName(0, 1));
    const whole = fs.readFileSync(file);
    fs.writeFileSync(file, whole.subarray(0, whole.length - 3));
    await expect(layer.load(dir)).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/data ends at/),
    });
    const bad = Buffer.from(whole);
    bad.writeBigUInt64LE(1n << 40n, 0);
    fs.writeFileSync(file, bad);
    await expect(layer.load(dir)).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/header length/),
    });
    const json = Buffer.from(whole);
    json.write("!", 8);
    fs.writeFileSync(file, json);
    await expect(layer.load(dir)).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/not JSON/),
    });
    await expect(saveCheckpoint(dir, [])).rejects.toMatchObject({ code: "ERR_MOE_VALUE" });
    const twin = await MoELayer.create(options);
    await expect(saveCheckpoint(dir, [layer, twin])).rejects.toMatchObject({
      code: "ERR_MOE_VALUE",
      message: expect.stringMatching(/give each layer a name/),
    });
    for (const l of [layer, other, more, twin]) l.dispose();
    opt.dispose();
  });

  test("several named layers share one checkpoint", async () => {
    const dir = path.join(work, "model");
    const layers = await Promise.all(
      [0, 1].map((i) => MoELayer.create({ ...options, name: `layers.${i}`, seed: 10 + i })),
    );
    await saveCheckpoint(dir, layers);
    const copies = await Promise.all([0, 1].map((i) => MoELayer.create({ ...options, name: `layers.${i}` })));
    await loadCheckpoint(dir, copies);
    copies.forEach((c, i) =>
      c.parameters().forEach((p, j) => expect(sameBits(p.param, layers[i].parameters()[j].param)).toBe(true)),
    );
    for (const l of [...layers, ...copies]) l.dispose();
  });
});
