/**
 * A save killed at a random moment leaves a checkpoint that loads whole: a
 * child saves states k, k+1, … (every tensor, moment and the step count equal
 * to k) over one directory until SIGKILL arrives a seeded random delay after
 * its first save completed, i.e. during a later save; the test then loads it
 * and finds one state, never a mix, and never one older than the save the
 * child announced. The next save removes what the killed one left.
 */
import { spawn } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { AdamW, MoELayer, Tensor, checkpointFilesDir } from "../lib";
import type { MoELayerOptions } from "../lib/layer/config";
import { copyInto } from "../lib/ops/elementwise";
import { tempDir } from "./procs";

const TRIES = 50;
const options: MoELayerOptions = {
  dModel: 32,
  dFF: 64,
  numExperts: 4,
  topK: 2,
  seed: 1,
  bias: true,
  expertBias: true,
  activation: "swiglu",
};
const saver = path.join(__dirname, "workers", "checkpoint-saver.js");

/** mulberry32: the delays are the same on every run. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Starts the saver at state first, waits until its first save is complete, kills it delay ms later. */
function saveAndKill(dir: string, first: number, delay: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [saver, dir, String(first), JSON.stringify(options)], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    let err = "";
    child.stderr.on("data", (d) => (err += d));
    child.stdout.once("data", () => setTimeout(() => child.kill("SIGKILL"), delay));
    child.on("error", reject);
    child.on("exit", (_code, signal) =>
      signal === "SIGKILL" ? resolve() : reject(new Error(`the saver exited by itself: ${err}`)),
    );
  });
}

/** The one value every tensor and the step count hold, or a description of the mix. */
function stateOf(layer: MoELayer, opt: AdamW): number | string {
  const values = new Set<number>([opt.stepCount]);
  for (const p of opt.params) {
    const s = opt.state(p);
    for (const t of [p.param, s.expAvg, s.expAvgSq]) for (const v of t.toFloat32()) values.add(v);
  }
  for (const b of layer.buffers()) for (const v of b.tensor.toFloat32()) values.add(v);
  return values.size === 1 ? [...values][0] : `a mix of ${[...values].slice(0, 6).join(", ")}`;
}

/** One lane: tries kills over its own directory, loading after each; returns the states found. */
async function lane(dir: string, tries: number, random: () => number, layer: MoELayer, opt: AdamW): Promise<number[]> {
  const found: number[] = [];
  for (let i = 0; i < tries; i++) {
    await saveAndKill(dir, i * 1000 + 1, Math.floor(random() * 20));
    await layer.load(dir, { optimizer: opt });
    const state = stateOf(layer, opt);
    expect(typeof state).toBe("number");
    expect(state as number).toBeGreaterThanOrEqual(i * 1000 + 1);
    found.push(state as number);
  }
  return found;
}

test(`a save killed at any of ${TRIES} random moments leaves the old or the new checkpoint, whole`, async () => {
  const work = tempDir("moe-ep-ckpt-kill-");
  const dir = path.join(work, "ckpt");
  const layer = await MoELayer.create(options);
  const opt = new AdamW(layer.parameters(), { lr: 1e-3 });
  try {
    // State 0, saved here: what a kill before the first child's first save leaves.
    for (const p of opt.params) {
      const st = opt.state(p);
      for (const t of [p.param, st.expAvg, st.expAvgSq]) {
        using zero = Tensor.zeros(t.shape);
        await copyInto(t, zero);
      }
    }
    for (const b of layer.buffers()) {
      using zero = Tensor.zeros(b.tensor.shape);
      await copyInto(b.tensor, zero);
    }
    await layer.save(dir, { optimizer: opt });
    expect(stateOf(layer, opt)).toBe(0);
    const found = await lane(dir, TRIES, rng(12), layer, opt);
    // Some kills met the first save after the one announced, some a later one.
    expect(found.some((k, i) => k === i * 1000 + 1)).toBe(true);
    await layer.save(dir, { optimizer: opt });
    expect(fs.readdirSync(dir)).toHaveLength(2);
    expect(fs.readdirSync(checkpointFilesDir(dir)).filter((f) => f.includes(".tmp-"))).toEqual([]);
  } finally {
    opt.dispose();
    layer.dispose();
    fs.rmSync(work, { recursive: true, force: true });
  }
}, 180_000);
