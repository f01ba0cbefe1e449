/**
 * Files written and read tensor by tensor: the writer asks for each tensor's
 * bytes only once the ones before it are on disk and never builds a buffer of
 * the file's size; reads are positioned reads of one tensor each; checkpoints
 * save and load that way, with the optimizer's moments in files of their own
 * (and older checkpoints, moments inside the model file, still load). Tensors
 * of dtypes moe-ep does not read are skipped and reported, or refused with
 * { dtypes: "strict" }.
 */
import * as path from "path";
import {
  AdamW,
  INDEX_FILE,
  MoELayer,
  OPTIMIZER_INDEX_FILE,
  SafetensorsFile,
  checkpointFilesDir,
  loadCheckpoint,
  optimizerShardFileName,
  readSafetensors,
  readSafetensorsHeader,
  saveCheckpoint,
  shardFileName,
  writeSafetensors,
  type DType,
  type SafetensorsEntry,
} from "../lib";
import type { MoELayerOptions } from "../lib/layer/config";
import { tempDir } from "./procs";
import { normal, tensor } from "./util";

/** The fs module object itself (what lib/ calls through), so that its functions can be spied on. */
const fs: typeof import("fs") = jest.requireActual("fs");

let work: string;
beforeAll(() => {
  work = tempDir("moe-ep-stream-");
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));
afterEach(() => jest.restoreAllMocks());

const SIZE: Record<DType, number> = { float32: 4, bfloat16: 2, float16: 2, int32: 4, int64: 8 };

/** Spies on every Buffer allocation and concatenation; returns the largest size asked for. */
function largestBuffer(): () => number {
  let max = 0;
  const note = (n: number) => (max = Math.max(max, n));
  for (const fn of ["alloc", "allocUnsafe", "allocUnsafeSlow"] as const) {
    const orig = Buffer[fn].bind(Buffer) as (n: number) => Buffer;
    jest.spyOn(Buffer, fn).mockImplementation(((n: number, ...rest: unknown[]) => {
      note(n);
      return (orig as (...a: unknown[]) => Buffer)(n, ...rest);
    }) as never);
  }
  const concat = Buffer.concat.bind(Buffer);
  jest.spyOn(Buffer, "concat").mockImplementation(((list: Uint8Array[], total?: number) => {
    note(total ?? list.reduce((a, b) => a + b.byteLength, 0));
    return concat(list, total);
  }) as never);
  return () => max;
}

describe("writeSafetensors", () => {
  test("300 tensors: each one's bytes are asked for after the ones before it are written; no buffer of the file's size", async () => {
    const dtypes: DType[] = ["float32", "bfloat16", "float16", "int32", "int64"];
    const specs = Array.from({ length: 300 }, (_, i) => ({
      name: `t.${i}`,
      dtype: dtypes[i % 5],
      shape: [1 + 8 * (i % 7), 1 + 8 * ((i * 13) % 11)],
    }));
    const bytesOf = (i: number) => {
      const n = specs[i].shape[0] * specs[i].shape[1] * SIZE[specs[i].dtype];
      return Uint8Array.from({ length: n }, (_, j) => (i * 31 + j * 7) & 255);
    };
    const total = specs.reduce((a, _s, i) => a + bytesOf(i).length, 0);
    const file = path.join(work, "many.safetensors");
    const sizes: number[] = [];
    const tmpSize = () => {
      const tmp = fs.readdirSync(work).filter((f) => f.startsWith("many.safetensors.tmp-"));
      expect(tmp).toHaveLength(1);
      return fs.statSync(path.join(work, tmp[0])).size;
    };
    const entries: SafetensorsEntry[] = specs.map((s, i) => ({
      ...s,
      data: () => {
        sizes.push(tmpSize());
        return bytesOf(i);
      },
    }));
    const largest = largestBuffer();
    const written = await writeSafetensors(file, entries, { note: "streamed" });
    expect(largest()).toBeLessThan(total / 10);
    jest.restoreAllMocks();
    // When tensor i is asked for, the header and tensors 0 … i-1 are in the file.
    let want = sizes[0];
    sizes.forEach((size, i) => {
      expect([i, size]).toEqual([i, want]);
      want += bytesOf(i).length;
    });
    expect(fs.statSync(file).size).toBe(written);
    expect(written).toBe(want);
    // Read back by hand: every tensor's bytes where the header says.
    const buf = fs.readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString());
    expect(header.__metadata__).toEqual({ note: "streamed" });
    specs.forEach((s, i) => {
      const e = header[s.name];
      expect(e.shape).toEqual(s.shape);
      expect(buf.subarray(8 + n + e.data_offsets[0], 8 + n + e.data_offsets[1]).equals(bytesOf(i))).toBe(true);
    });
    // Lazy data of the wrong size is refused and leaves no file behind.
    const bad = path.join(work, "bad.safetensors");
    await expect(
      writeSafetensors(bad, [{ name: "a", dtype: "float32", shape: [2], data: () => new Uint8Array(4) }]),
    ).rejects.toMatchObject({ code: "ERR_MOE_SHAPE" });
    expect(fs.readdirSync(work).filter((f) => f.startsWith("bad."))).toEqual([]);
  });

  test("SafetensorsFile reads one tensor per positioned read", () => {
    const file = path.join(work, "many.safetensors");
    const reads: Array<[number, number | null]> = [];
    const readSync = fs.readSync;
    jest.spyOn(fs, "readSync").mockImplementation(((
      fd: number,
      buf: Uint8Array,
      off: number,
      len: number,
      pos: number,
    ) => {
      reads.push([len, pos]);
      return readSync(fd, buf, off, len, pos);
    }) as never);
    const f = SafetensorsFile.open(file);
    const header = reads.length;
    const info = f.info("t.123");
    const got = f.read("t.123");
    f.close();
    expect(reads.slice(header)).toEqual([[info.end - info.begin, info.begin]]);
    expect(got.length).toBe(info.end - info.begin);
  });
});

describe("tensors of other dtypes", () => {
  function fileWith(name: string, entries: Array<[string, string, number[], number]>): string {
    const header: Record<string, unknown> = {};
    let at = 0;
    for (const [n, dtype, shape, bytes] of entries) {
      header[n] = { dtype, shape, data_offsets: [at, at + bytes] };
      at += bytes;
    }
    let json = Buffer.from(JSON.stringify(header));
    json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    const data = Buffer.alloc(at);
    Float32Array.from([1, 2]).forEach((v, i) => data.writeFloatLE(v, i * 4));
    const file = path.join(work, name);
    fs.writeFileSync(file, Buffer.concat([len, json, data]));
    return file;
  }

  test("are skipped and listed, or refused with { dtypes: 'strict' }; their byte ranges are still checked", () => {
    const file = fileWith("mixed.safetensors", [
      ["a", "F32", [2], 8],
      ["b", "F8_E4M3", [3], 3],
      ["c", "F64", [1], 8],
      ["d", "BOOL", [2], 2],
      ["e", "F4", [4], 2],
      ["f", "I64", [1], 8],
    ]);
    const h = readSafetensorsHeader(file);
    expect([...h.tensors.keys()]).toEqual(["a", "f"]);
    expect(h.skipped).toEqual([
      { name: "b", dtype: "F8_E4M3", shape: [3] },
      { name: "c", dtype: "F64", shape: [1] },
      { name: "d", dtype: "BOOL", shape: [2] },
      { name: "e", dtype: "F4", shape: [4] },
    ]);
    expect([...readSafetensors(file).keys()]).toEqual(["a", "f"]);
    expect(Array.from(new Float32Array(readSafetensors(file, ["a"]).get("a")!.data.slice().buffer))).toEqual([1, 2]);
    expect(() => readSafetensors(file, ["b"])).toThrow(expect.objectContaining({ code: "ERR_MOE_DTYPE" }));
    expect(() => readSafetensorsHeader(file, { dtypes: "strict" })).toThrow(
      expect.objectContaining({ code: "ERR_MOE_DTYPE", message: expect.stringMatching(/b is F8_E4M3/) }),
    );
    expect(() => readSafetensorsHeader(file, { dtypes: "loose" as never })).toThrow(
      expect.objectContaining({ code: "ERR_MOE_VALUE" }),
    );
    const wrong = fileWith("wrong.safetensors", [
      ["a", "F32", [2], 8],
      ["c", "F64", [2], 8],
    ]);
    expect(() => readSafetensorsHeader(wrong)).toThrow(
      expect.objectContaining({ message: expect.stringMatching(/c spans 8 bytes for its 16/) }),
    );
  });
});

const options: MoELayerOptions = {
  dModel: 16,
  dFF: 24,
  numExperts: 8,
  topK: 2,
  seed: 2,
  bias: true,
  expertBias: true,
  activation: "swiglu",
};

async function trained(seed: number, name = ""): Promise<{ layer: MoELayer; opt: AdamW }> {
  const layer = await MoELayer.create({ ...options, seed, name });
  const opt = new AdamW(layer.parameters(), { lr: 1e-2 });
  using x = tensor(normal(8 * 16, seed), [8, 16]);
  (await layer.forward(x)).output.dispose();
  (await layer.backward(tensor(normal(8 * 16, seed + 1), [8, 16]))).dispose();
  await opt.step();
  return { layer, opt };
}

function snapshot(layer: MoELayer, opt: AdamW): string[] {
  const hex = (t: { handle: { read(d: string): ArrayBuffer }; dtype: string }) =>
    Buffer.from(t.handle.read(t.dtype)).toString("hex");
  const out = [`step ${opt.stepCount}`];
  for (const p of opt.params) out.push(hex(p.param), hex(opt.state(p).expAvg), hex(opt.state(p).expAvgSq));
  for (const b of layer.buffers()) out.push(hex(b.tensor));
  return out;
}

/** Four named layers under one AdamW, after one step. */
async function model(seed: number): Promise<{ layers: MoELayer[]; opt: AdamW }> {
  const layers = await Promise.all(
    [0, 1, 2, 3].map((i) => MoELayer.create({ ...options, seed: seed + i, name: `layers.${i}` })),
  );
  const opt = new AdamW(
    layers.flatMap((l) => l.parameters()),
    { lr: 1e-2 },
  );
  for (const [i, layer] of layers.entries()) {
    using x = tensor(normal(8 * 16, seed + i), [8, 16]);
    (await layer.forward(x)).output.dispose();
    (await layer.backward(tensor(normal(8 * 16, seed + i + 1), [8, 16]))).dispose();
  }
  await opt.step();
  return { layers, opt };
}

/** Records the length of every call of fs[fn] (argument 3 of readSync / writeSync with an offset). */
function sizesOf(fn: "readSync" | "writeSync"): number[] {
  const out: number[] = [];
  const orig = fs[fn] as (...a: unknown[]) => number;
  jest.spyOn(fs, fn).mockImplementation(((...a: unknown[]) => {
    out.push(typeof a[3] === "number" ? (a[3] as number) : (a[1] as Uint8Array).byteLength);
    return orig(...a);
  }) as never);
  return out;
}

describe("checkpoints", () => {
  test("four layers save and load one tensor per write and per read; the moments in files of their own", async () => {
    const src = await model(10);
    const dir = path.join(work, "ckpt");
    const writes = sizesOf("writeSync");
    const largest = largestBuffer();
    await saveCheckpoint(dir, src.layers, { optimizer: src.opt });
    const bufferMax = largest();
    jest.restoreAllMocks();
    const files = checkpointFilesDir(dir);
    const shard = fs.statSync(path.join(files, shardFileName(0, 1))).size;
    // Every write is one tensor of one expert at most (W1 [16, 48] float32), but for the headers and indexes.
    const piece = 16 * 48 * 4;
    // 4 layers × 8 experts × 4 tensors, each its own write (model and moments files).
    expect(writes.filter((w) => w > 0).length).toBeGreaterThan(3 * 4 * 8 * 4);
    const big = writes.filter((w) => w > piece);
    expect(big.length).toBeLessThanOrEqual(4);
    expect(Math.max(0, ...big)).toBeLessThan(shard / 4);
    expect(bufferMax).toBeLessThan(shard / 4);
    expect(fs.readdirSync(files).sort()).toEqual(
      [INDEX_FILE, OPTIMIZER_INDEX_FILE, shardFileName(0, 1), optimizerShardFileName(0, 1)].sort(),
    );
    const modelFile = readSafetensorsHeader(path.join(files, shardFileName(0, 1)));
    expect([...modelFile.tensors.keys()].filter((n) => n.includes("exp_avg"))).toEqual([]);
    const moments = readSafetensorsHeader(path.join(files, optimizerShardFileName(0, 1)));
    expect(moments.tensors.get("layers.2.experts.7.w2.exp_avg_sq")?.shape).toEqual([24, 16]);
    const index = JSON.parse(fs.readFileSync(path.join(files, INDEX_FILE), "utf8"));
    expect(Object.keys(index.weight_map).some((n) => n.includes("exp_avg"))).toBe(false);
    const optIndex = JSON.parse(fs.readFileSync(path.join(files, OPTIMIZER_INDEX_FILE), "utf8"));
    expect(optIndex.metadata.optimizer_step).toBe(1);
    expect(optIndex.weight_map["layers.0.router.weight.exp_avg"]).toBe(optimizerShardFileName(0, 1));

    const dst = await model(50);
    const before = snapshot(dst.layers[0], dst.opt);
    const reads = sizesOf("readSync");
    await loadCheckpoint(dir, dst.layers, { optimizer: dst.opt });
    jest.restoreAllMocks();
    expect(reads.filter((r) => r > 0).length).toBeGreaterThan(3 * 4 * 8 * 4);
    // Reads of more than one expert's tensor: the headers and the indexes only.
    expect(Math.max(0, ...reads.filter((r) => r > piece))).toBeLessThan(shard / 4);
    expect(snapshot(dst.layers[0], dst.opt)).not.toEqual(before);
    expect(snapshot(dst.layers[0], dst.opt)).toEqual(snapshot(src.layers[0], src.opt));
    for (const m of [src, dst]) {
      m.opt.dispose();
      m.layers.forEach((l) => l.dispose());
    }
  });

  test("an older checkpoint, moments inside the model file, loads with its moments", async () => {
    const src = await trained(3);
    const dir = path.join(work, "old");
    await src.layer.save(dir, { optimizer: src.opt });
    const files = checkpointFilesDir(dir);
    // Rewrite it as older saves wrote it: one file, one index, the moments beside their parameters.
    const model = readSafetensors(path.join(files, shardFileName(0, 1)));
    const moments = readSafetensors(path.join(files, optimizerShardFileName(0, 1)));
    const tensors = [...model.values(), ...moments.values()];
    const header: Record<string, unknown> = {};
    let at = 0;
    for (const t of tensors) {
      header[t.name] = {
        dtype: t.dtype === "float32" ? "F32" : "BF16",
        shape: t.shape,
        data_offsets: [at, at + t.data.length],
      };
      at += t.data.length;
    }
    let json = Buffer.from(JSON.stringify(header));
    json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(path.join(files, shardFileName(0, 1)), Buffer.concat([len, json, ...tensors.map((t) => t.data)]));
    const index = JSON.parse(fs.readFileSync(path.join(files, INDEX_FILE), "utf8"));
    for (const n of moments.keys()) index.weight_map[n] = shardFileName(0, 1);
    fs.writeFileSync(path.join(files, INDEX_FILE), JSON.stringify(index));
    fs.rmSync(path.join(files, OPTIMIZER_INDEX_FILE));
    fs.rmSync(path.join(files, optimizerShardFileName(0, 1)));
    const dst = await trained(4);
    expect(snapshot(dst.layer, dst.opt)).not.toEqual(snapshot(src.layer, src.opt));
    await dst.layer.load(dir, { optimizer: dst.opt });
    expect(snapshot(dst.layer, dst.opt)).toEqual(snapshot(src.layer, src.opt));
    for (const s of [src, dst]) {
      s.opt.dispose();
      s.layer.dispose();
    }
  });

  test("a shard holding a tensor of another dtype loads and reports it, or is refused with dtypes: 'strict'", async () => {
    const src = await trained(5);
    const dir = path.join(work, "f8");
    await src.layer.save(dir);
    const file = path.join(checkpointFilesDir(dir), shardFileName(0, 1));
    const buf = fs.readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString());
    const end = buf.length - 8 - n;
    header["experts.0.w1.scale"] = { dtype: "F8_E4M3", shape: [4], data_offsets: [end, end + 4] };
    let json = Buffer.from(JSON.stringify(header));
    json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    fs.writeFileSync(file, Buffer.concat([len, json, buf.subarray(8 + n), Buffer.alloc(4)]));
    const dst = await trained(6);
    const before = snapshot(dst.layer, dst.opt);
    await expect(dst.layer.load(dir, { dtypes: "strict" })).rejects.toMatchObject({
      code: "ERR_MOE_DTYPE",
      message: expect.stringMatching(/experts\.0\.w1\.scale is F8_E4M3/),
    });
    expect(snapshot(dst.layer, dst.opt)).toEqual(before);
    const report = await dst.layer.load(dir);
    expect(report.skipped).toEqual([{ name: "experts.0.w1.scale", dtype: "F8_E4M3", file: shardFileName(0, 1) }]);
    expect(snapshot(dst.layer, dst.opt).slice(1, 2)).toEqual(snapshot(src.layer, src.opt).slice(1, 2));
    for (const s of [src, dst]) {
      s.opt.dispose();
      s.layer.dispose();
    }
  });
});
