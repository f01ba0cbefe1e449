/**
 * MoELayer across real processes (moe-ep launch, the Gloo process group): for
 * EP sizes 1, 2 and 4 inside a world of 4 ranks (and 2 inside a world of 2),
 * softmax and sigmoid routing, with and without capacity, each activation,
 * every rank's output, input gradient and parameter gradients equal the
 * single-process float64 reference; the same run repeated is bitwise the same;
 * a checkpoint written by 4 ranks loads into 2.
 */
import * as fs from "fs";
import * as path from "path";
import { MoELayer, Tensor } from "../lib";
import type { MoELayerOptions } from "../lib/layer/config";
import { parityConfigs, randomizeBiases, readParams, refConfig } from "./layer-helpers";
import { buildDist, root, runNode, script, tempDir, type Run } from "./procs";
import { moeLayerRef, type MoERefParams, type MoERefRank } from "./reference/moe-layer";
import { f32, normal, relErr, TOL } from "./util";

let work: string;

beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-layer-procs-");
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

function launcher(args: string[], limitMs: number): Promise<Run> {
  const entry = `require(${JSON.stringify(path.join(root, "dist", "launch"))}).launch(process.argv.slice(1)).then((c) => { process.exitCode = c; })`;
  return runNode(["-e", entry, "--", ...args], { limitMs });
}

/** One rank: for every case, a layer over the split groups, its parameters set, one forward and backward (twice). */
const RANK = `
const fs = require("fs");
const { MoELayer, Tensor, ops, initProcessGroup } = require(${JSON.stringify(path.join(root, "dist"))});
const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const rank = Number(process.env.RANK);
const b64 = (t) => Buffer.from(t.handle.read(t.dtype)).toString("base64");
(async () => {
  const world = await initProcessGroup({ timeoutMs: 60000 });
  const splits = {};
  const out = [];
  for (const c of input.cases) {
    if (!splits[c.options.epSize]) splits[c.options.epSize] = { world, ...(await world.split({ epSize: c.options.epSize })) };
    const runs = [];
    for (let repeat = 0; repeat < 2; repeat++) {
      const layer = await MoELayer.create(c.options, splits[c.options.epSize]);
      for (const p of layer.parameters()) {
        const full = c.params[p.name];
        if (!full) continue;
        const per = full.length / (p.expert ? layer.config.numExperts : 1);
        const mine = p.expert ? full.slice(layer.firstExpert * per, (layer.firstExpert + layer.numLocalExperts) * per) : full;
        const t = Tensor.from(Float32Array.from(mine), p.param.shape);
        await ops.copyInto(p.param, t);
        t.dispose();
      }
      if (c.params.__expertBias) {
        const t = Tensor.from(Float32Array.from(c.params.__expertBias), [layer.config.numExperts]);
        await ops.copyInto(layer.buffers()[0].tensor, t);
        t.dispose();
      }
      const T = c.tokens[rank];
      const x = Tensor.from(Float32Array.from(c.x[rank]), [T, c.options.dModel]);
      const dy = Tensor.from(Float32Array.from(c.dy[rank]), [T, c.options.dModel]);
      const r = await layer.forward(x);
      const dx = await layer.backward(dy);
      runs.push({
        output: Array.from(r.output.toFloat32()),
        dx: Array.from(dx.toFloat32()),
        bits: b64(r.output) + b64(dx) + layer.parameters().map((p) => b64(p.grad)).join(""),
        grads: Object.fromEntries(layer.parameters().map((p) => [p.name, Array.from(p.grad.toFloat32())])),
        first: layer.firstExpert,
        epRank: layer.epRank,
        aux: r.auxLoss,
        z: r.zLoss,
        stats: r.stats,
      });
      for (const t of [x, dy, r.output, dx]) t.dispose();
      layer.dispose();
    }
    out.push({ ...runs[0], repeatSame: runs[0].bits === runs[1].bits });
  }
  fs.writeFileSync(process.argv[3] + "." + rank + ".json", JSON.stringify(out));
  world.destroy();
})().catch((e) => { console.error(e.code, e.stack); process.exit(1); });
`;

interface Case {
  name: string;
  options: MoELayerOptions;
  tokens: number[];
  x: number[][];
  dy: number[][];
  params: Record<string, number[]>;
  ref: ReturnType<typeof moeLayerRef>;
}

/** Full parameters (the layer's own initialisation, which is the same for any EP size) and inputs with routing margins. */
async function makeCase(name: string, options: MoELayerOptions, tokens: number[], seed: number): Promise<Case> {
  const layer = await MoELayer.create({ ...options, epSize: 1 });
  try {
    const expertBias = await randomizeBiases(layer, seed + 7);
    const params: MoERefParams = readParams(layer);
    const D = options.dModel;
    for (let s = seed; ; s += 1000) {
      const ranks: MoERefRank[] = tokens.map((T, r) => ({
        x: f32(normal(T * D, s + 10 * r)),
        dy: f32(normal(T * D, s + 10 * r + 1)),
      }));
      const ref = moeLayerRef(refConfig(layer, expertBias), params, ranks);
      if (ref.margin <= 1e-4) continue;
      const overrides: Record<string, number[]> = Object.fromEntries(
        Object.entries(params).map(([n, v]) => [n, Array.from(v)]),
      );
      if (expertBias) overrides.__expertBias = Array.from(expertBias);
      return {
        name,
        options,
        tokens,
        x: ranks.map((r) => Array.from(r.x)),
        dy: ranks.map((r) => Array.from(r.dy)),
        params: overrides,
        ref,
      };
    }
  } finally {
    layer.dispose();
  }
}

function check(c: Case, results: Array<Record<string, unknown>>): void {
  const { ref } = c;
  const P = c.options.epSize!;
  results.forEach((res, r) => {
    const where = `${c.name}, epSize ${P}, rank ${r}`;
    expect([where, res.repeatSame]).toEqual([where, true]);
    expect([where, res.epRank]).toEqual([where, r % P]);
    expect([where, "output", relErr(res.output as number[], ref.outputs[r]) < TOL.float32]).toEqual([
      where,
      "output",
      true,
    ]);
    expect([where, "dx", relErr(res.dx as number[], ref.dx[r]) < TOL.float32]).toEqual([where, "dx", true]);
    expect([where, "aux", Math.abs((res.aux as number) - ref.aux[r]) <= TOL.float32 * ref.aux[r] + 1e-12]).toEqual([
      where,
      "aux",
      true,
    ]);
    const stats = res.stats as { tokensPerExpert: number[]; dropped: number };
    expect([where, stats.tokensPerExpert]).toEqual([where, ref.tokensPerExpert]);
    expect([where, stats.dropped]).toEqual([where, ref.dropped.reduce((a, b) => a + b, 0)]);
    for (const [name, got] of Object.entries(res.grads as Record<string, number[]>)) {
      const full = ref.grads[name];
      const E = c.options.numExperts;
      const isExpert = name.startsWith("experts.");
      const per = full.length / E;
      const first = res.first as number;
      const want = isExpert ? full.subarray(first * per, (first + E / P) * per) : full;
      expect([where, name, relErr(got, want) < TOL.float32]).toEqual([where, name, true]);
    }
  });
}

async function runCases(W: number, cases: Case[], tag: string): Promise<Array<Array<Record<string, unknown>>>> {
  const file = path.join(work, `${tag}.input.json`);
  fs.writeFileSync(file, JSON.stringify({ cases: cases.map(({ ref: _r, ...c }) => c) }));
  const rank = script(work, "rank.js", RANK);
  const outPrefix = path.join(work, tag);
  const run = await launcher(["-n", String(W), rank, file, outPrefix], 85000);
  if (run.code !== 0) throw new Error(`launch failed (${run.code}):\n${run.stdout}\n${run.stderr}`);
  const perRank = Array.from(
    { length: W },
    (_, r) => JSON.parse(fs.readFileSync(`${outPrefix}.${r}.json`, "utf8")) as Array<Record<string, unknown>>,
  );
  return cases.map((_, i) => perRank.map((rows) => rows[i]));
}

describe("MoELayer over real processes (Gloo) matches the float64 reference", () => {
  test("world 4: EP sizes 4, 2 (two expert-data-parallel replicas) and 1 (data parallel), softmax and sigmoid, dropless and capacity, every activation", async () => {
    const cases: Case[] = [];
    let seed = 1;
    for (const [name, options] of parityConfigs()) {
      for (const epSize of [4, 2, 1]) {
        // One rank with no tokens at all in some cases.
        const tokens = epSize === 2 && options.activation === "relu" ? [14, 0, 20, 9] : [12, 16, 10, 18];
        cases.push(await makeCase(name, { ...options, epSize }, tokens, seed++));
      }
    }
    const results = await runCases(4, cases, "world4");
    cases.forEach((c, i) => check(c, results[i]));
  }, 90000);

  test("world 2, epSize 2, with bias terms, shared experts and the expert bias; the same run in a second launch is bitwise the same", async () => {
    const base = {
      dModel: 12,
      dFF: 10,
      numExperts: 8,
      topK: 2,
      seed: 7,
      initStd: 0.3,
      auxLossCoef: 0.01,
      zLossCoef: 0.001,
      epSize: 2,
    };
    const cases = [
      await makeCase(
        "bias + shared (swiglu)",
        { ...base, bias: true, sharedExpertFF: 6, activation: "swiglu" },
        [20, 24],
        3,
      ),
      await makeCase(
        "DeepSeek-V3 routing",
        { ...base, scoreFunction: "sigmoid", expertBias: true, numGroups: 4, topkGroups: 2, topK: 4 },
        [24, 16],
        4,
      ),
      await makeCase(
        "padded capacity",
        { ...base, capacityFactor: 0.75, padToCapacity: true, dropPolicy: "position" },
        [16, 16],
        5,
      ),
    ];
    const a = await runCases(2, cases, "world2a");
    cases.forEach((c, i) => check(c, a[i]));
    const b = await runCases(2, cases, "world2b");
    a.forEach((ranks, i) => ranks.forEach((res, r) => expect(b[i][r].bits).toBe(res.bits)));
  }, 90000);
});

const CKPT = `
const { MoELayer, Tensor, initProcessGroup, saveCheckpoint, loadCheckpoint } = require(${JSON.stringify(path.join(root, "dist"))});
const [mode, dir, epSize, out] = process.argv.slice(2);
(async () => {
  const world = await initProcessGroup({ timeoutMs: 60000 });
  const layer = await MoELayer.create({ dModel: 8, dFF: 6, numExperts: 8, epSize: Number(epSize), seed: mode === "save" ? 5 : 6, bias: true, name: "moe" }, world);
  if (mode === "save") await layer.save(dir);
  else await layer.load(dir);
  const dump = Object.fromEntries(layer.parameters().map((p) => [p.name, Buffer.from(p.param.handle.read(p.param.dtype)).toString("base64")]));
  require("fs").writeFileSync(out + "." + world.rank + ".json", JSON.stringify({ first: layer.firstExpert, dump }));
  layer.dispose();
  world.destroy();
})().catch((e) => { console.error(e.code, e.stack); process.exit(1); });
`;

test("a checkpoint saved by 4 ranks (epSize 4) loads into 2 ranks (epSize 2) with every expert where it belongs", async () => {
  const rank = script(work, "ckpt.js", CKPT);
  const dir = path.join(work, "ckpt");
  const save = await launcher(["-n", "4", rank, "save", dir, "4", path.join(work, "saved")], 60000);
  expect([save.code, save.stderr]).toEqual([0, ""]);
  const load = await launcher(["-n", "2", rank, "load", dir, "2", path.join(work, "loaded")], 60000);
  expect([load.code, load.stderr]).toEqual([0, ""]);
  const saved = [0, 1, 2, 3].map((r) => JSON.parse(fs.readFileSync(path.join(work, `saved.${r}.json`), "utf8")));
  const loaded = [0, 1].map((r) => JSON.parse(fs.readFileSync(path.join(work, `loaded.${r}.json`), "utf8")));
  for (const name of Object.keys(saved[0].dump)) {
    const bytes = (runs: Array<{ dump: Record<string, string> }>) =>
      Buffer.concat(runs.map((s) => Buffer.from(s.dump[name], "base64")));
    if (name.includes(".experts.")) expect(bytes(loaded).equals(bytes(saved))).toBe(true);
    else expect(loaded[1].dump[name]).toBe(saved[0].dump[name]);
  }
  expect(Tensor).toBeDefined();
}, 90000);
