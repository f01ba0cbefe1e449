/**
 * A load that fails changes nothing: checkpoints broken in their last tensor,
 * their metadata, their files or their links get typed errors, and every
 * parameter, buffer and AdamW moment of the target, and its step count, stay
 * byte for byte as they were. Also: the versioned layout's pointer, flat
 * checkpoints, and saves that leave one version behind.
 */
import * as fs from "fs";
import * as path from "path";
import {
  AdamW,
  INDEX_FILE,
  MoELayer,
  OPTIMIZER_INDEX_FILE,
  checkpointFilesDir,
  optimizerShardFileName,
  saveCheckpoint,
  shardFileName,
} from "../lib";
import type { MoELayerOptions } from "../lib/layer/config";
import { randomizeBiases } from "./layer-helpers";
import { tempDir } from "./procs";
import { normal, tensor } from "./util";

const options: MoELayerOptions = {
  dModel: 6,
  dFF: 5,
  numExperts: 4,
  topK: 2,
  seed: 3,
  initStd: 0.3,
  bias: true,
  expertBias: true,
  activation: "swiglu",
};

async function trained(seed: number): Promise<{ layer: MoELayer; opt: AdamW }> {
  const layer = await MoELayer.create({ ...options, seed });
  await randomizeBiases(layer, seed);
  const opt = new AdamW(layer.parameters(), { lr: 1e-2 });
  using x = tensor(normal(8 * options.dModel, seed), [8, options.dModel]);
  (await layer.forward(x)).output.dispose();
  (await layer.backward(tensor(normal(8 * options.dModel, seed + 1), [8, options.dModel]))).dispose();
  await opt.step();
  return { layer, opt };
}

/** Every byte of the layer's tensors and the optimizer's state, with the step count. */
function snapshot(layer: MoELayer, opt: AdamW): string[] {
  const out = [`step ${opt.stepCount}`];
  const hex = (t: { handle: { read(d: string): ArrayBuffer }; dtype: string }) =>
    Buffer.from(t.handle.read(t.dtype)).toString("hex");
  for (const p of opt.params) {
    const s = opt.state(p);
    out.push(hex(p.param), hex(s.expAvg), hex(s.expAvgSq));
  }
  for (const b of layer.buffers()) out.push(hex(b.tensor));
  return out;
}

/** Rewrites a safetensors file's header (same data) through fn. */
function rewriteHeader(file: string, fn: (h: Record<string, { dtype: string; shape: number[] }>) => void): void {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
  fn(header);
  let json = Buffer.from(JSON.stringify(header), "utf8");
  json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, buf.subarray(8 + n)]));
}

function lastTensor(h: Record<string, unknown>): string {
  return Object.keys(h)
    .filter((k) => k !== "__metadata__")
    .pop()!;
}

let work: string;
let src: { layer: MoELayer; opt: AdamW };
let dst: { layer: MoELayer; opt: AdamW };
let before: string[];
beforeAll(async () => {
  work = tempDir("moe-ep-ckpt-checks-");
  src = await trained(11);
  dst = await trained(23);
  before = snapshot(dst.layer, dst.opt);
});
afterAll(() => {
  for (const r of [src, dst]) {
    r.opt.dispose();
    r.layer.dispose();
  }
  fs.rmSync(work, { recursive: true, force: true });
});

let n = 0;
/** A fresh checkpoint of src, broken by breakIt(dir, files dir). */
async function broken(breakIt: (dir: string, files: string) => void): Promise<string> {
  const dir = path.join(work, `c${n++}`);
  await src.layer.save(dir, { optimizer: src.opt });
  breakIt(dir, checkpointFilesDir(dir));
  return dir;
}

const cases: Array<[string, (dir: string, files: string) => void, string, RegExp]> = [
  [
    "the last tensor's dtype",
    (_d, f) => rewriteHeader(path.join(f, shardFileName(0, 1)), (h) => (h[lastTensor(h)].dtype = "I32")),
    "ERR_MOE_DTYPE",
    /as float32 in the checkpoint but received int32/,
  ],
  [
    "the last tensor's shape",
    (_d, f) => rewriteHeader(path.join(f, shardFileName(0, 1)), (h) => h[lastTensor(h)].shape.push(1)),
    "ERR_MOE_SHAPE",
    /of shape \[4\].*\[4, 1\]/,
  ],
  ...[-1, 1.5, "7", null].map(
    (step) =>
      [
        `the optimizer step ${JSON.stringify(step)}`,
        (_d: string, f: string) => {
          const index = JSON.parse(fs.readFileSync(path.join(f, INDEX_FILE), "utf8"));
          index.metadata.optimizer_step = step;
          fs.writeFileSync(path.join(f, INDEX_FILE), JSON.stringify(index));
        },
        "ERR_MOE_VALUE",
        /optimizer_step .* integer >= 0/,
      ] as [string, (dir: string, files: string) => void, string, RegExp],
  ),
  [
    "a missing shard",
    (_d, f) => fs.rmSync(path.join(f, shardFileName(0, 1))),
    "ERR_MOE_VALUE",
    /file model-ep00000-of-00001\.safetensors .* missing/,
  ],
  [
    "a shard that links outside the checkpoint",
    (d, f) => {
      const outside = path.join(work, `outside-${path.basename(d)}.safetensors`);
      fs.renameSync(path.join(f, shardFileName(0, 1)), outside);
      fs.symlinkSync(outside, path.join(f, shardFileName(0, 1)));
    },
    "ERR_MOE_VALUE",
    /inside the checkpoint .* links to/,
  ],
  [
    "an index that names a path",
    (_d, f) => {
      const index = JSON.parse(fs.readFileSync(path.join(f, INDEX_FILE), "utf8"));
      index.weight_map["router.weight"] = `../${shardFileName(0, 1)}`;
      fs.writeFileSync(path.join(f, INDEX_FILE), JSON.stringify(index));
    },
    "ERR_MOE_VALUE",
    /file name in the index/,
  ],
  [
    "a pointer that leads elsewhere",
    (d) => {
      fs.rmSync(path.join(d, "latest"));
      fs.symlinkSync(work, path.join(d, "latest"));
    },
    "ERR_MOE_VALUE",
    /symlink to a version directory/,
  ],
  [
    "a layer of another expert count in the metadata",
    (_d, f) => {
      const index = JSON.parse(fs.readFileSync(path.join(f, INDEX_FILE), "utf8"));
      index.metadata.layers[0].config.numExperts = 5;
      fs.writeFileSync(path.join(f, INDEX_FILE), JSON.stringify(index));
    },
    "ERR_MOE_VALUE",
    /with 4 experts but the checkpoint .* has 5/,
  ],
];

describe("a failed load leaves the layer and the optimizer as they were", () => {
  test.each(cases)("%s", async (_what, breakIt, code, message) => {
    const dir = await broken(breakIt);
    await expect(dst.layer.load(dir, { optimizer: dst.opt })).rejects.toMatchObject({
      code,
      message: expect.stringMatching(message),
    });
    expect(snapshot(dst.layer, dst.opt)).toEqual(before);
  });

  test("the same checkpoints load whole once repaired, so the cases above broke only what they say", async () => {
    const dir = await broken(() => {});
    const { layer, opt } = await trained(23);
    await layer.load(dir, { optimizer: opt });
    expect(snapshot(layer, opt)).toEqual(snapshot(src.layer, src.opt));
    expect(snapshot(layer, opt)).not.toEqual(before);
    opt.dispose();
    layer.dispose();
  });
});

describe("the versioned layout", () => {
  test("a link inside the checkpoint is followed; a flat directory (no pointer) loads too", async () => {
    const dir = await broken((_d, f) => {
      fs.renameSync(path.join(f, shardFileName(0, 1)), path.join(f, "real.safetensors"));
      fs.symlinkSync("real.safetensors", path.join(f, shardFileName(0, 1)));
    });
    const want = snapshot(src.layer, src.opt);
    const a = await trained(23);
    await a.layer.load(dir, { optimizer: a.opt });
    expect(snapshot(a.layer, a.opt)).toEqual(want);
    const flat = path.join(work, "flat");
    fs.mkdirSync(flat);
    for (const f of [INDEX_FILE, shardFileName(0, 1), OPTIMIZER_INDEX_FILE, optimizerShardFileName(0, 1)])
      fs.copyFileSync(path.join(checkpointFilesDir(dir), f), path.join(flat, f));
    const b = await trained(23);
    await b.layer.load(flat, { optimizer: b.opt });
    expect(snapshot(b.layer, b.opt)).toEqual(want);
    // Saving over the flat checkpoint replaces it with a version and removes the flat files, not others.
    fs.writeFileSync(path.join(flat, "notes.txt"), "mine");
    await saveCheckpoint(flat, [dst.layer], { optimizer: dst.opt });
    expect(fs.readdirSync(flat).sort()).toEqual(["latest", "notes.txt", "v-000001"]);
    for (const r of [a, b]) {
      r.opt.dispose();
      r.layer.dispose();
    }
  });

  test("each save writes the next version and removes the earlier ones and a killed save's leftovers", async () => {
    const dir = path.join(work, "versions");
    await src.layer.save(dir);
    await src.layer.save(dir);
    expect(fs.readdirSync(dir).sort()).toEqual(["latest", "v-000002"]);
    // What a save killed midway leaves: the next version half-written, a pointer not yet renamed.
    fs.mkdirSync(path.join(dir, "v-000003"));
    fs.writeFileSync(path.join(dir, "v-000003", `${INDEX_FILE}.tmp-1-2`), "{");
    fs.symlinkSync("v-000003", path.join(dir, "latest.tmp-1-2"));
    const c = await trained(23);
    await c.layer.load(dir);
    await src.layer.save(dir);
    expect(fs.readdirSync(dir).sort()).toEqual(["latest", "v-000003"]);
    expect(fs.readdirSync(path.join(dir, "v-000003")).sort()).toEqual([INDEX_FILE, shardFileName(0, 1)].sort());
    c.opt.dispose();
    c.layer.dispose();
  });
});
