/**
 * Expert tensor parallelism across real processes (moe-ep launch, Gloo): the
 * variable all-gather and reduce-scatter alone on rank-encoded rows; then, for
 * (epSize, etpSize) in (1, 2), (2, 2), (4, 2) and (2, 1) inside a world of 8,
 * relu and swiglu, dropless and with capacity, with bias terms and shared
 * experts, every rank's output, input gradient and parameter gradients equal
 * the single-process float64 reference (each rank's expert slices cut from the
 * reference's whole experts), and the same run repeated is bitwise the same;
 * and a checkpoint saved at (2, 2) loads at (4, 1), whose save loads at (1, 2).
 */
import * as fs from "fs";
import * as path from "path";
import { MoELayer } from "../lib";
import type { MoELayerOptions } from "../lib/layer/config";
import type { MoELayerGroup } from "../lib/layer/group";
import { randomizeBiases, readParams, refConfig } from "./layer-helpers";
import { buildDist, root, runNode, script, tempDir, type Run } from "./procs";
import { moeLayerRef, type MoERefParams, type MoERefRank } from "./reference/moe-layer";
import { sliceHost } from "./reference/expert-slices";
import { f32, normal, relErr, TOL } from "./util";

let work: string;

beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-layer-etp-");
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

function launcher(args: string[], limitMs: number): Promise<Run> {
  const entry = `require(${JSON.stringify(path.join(root, "dist", "launch"))}).launch(process.argv.slice(1)).then((c) => { process.exitCode = c; })`;
  return runNode(["-e", entry, "--", ...args], { limitMs });
}

const RANK = `
const fs = require("fs");
const { MoELayer, Tensor, ops, initProcessGroup, memoryStats, synchronize } = require(${JSON.stringify(path.join(root, "dist"))});
const sliceHost = ${sliceHost.toString()};
const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const rank = Number(process.env.RANK);
const b64 = (t) => Buffer.from(t.handle.read(t.dtype)).toString("base64");
(async () => {
  const world = await initProcessGroup({ timeoutMs: 60000 });
  const splits = {};
  const out = [];
  for (const c of input.cases) {
    const { epSize, etpSize } = c.options;
    const key = epSize + "x" + etpSize;
    if (!splits[key]) splits[key] = { world, ...(await world.split({ epSize, etpSize })) };
    const runs = [];
    await synchronize();
    const made = memoryStats("cpu").made;
    for (let repeat = 0; repeat < 2; repeat++) {
      const layer = await MoELayer.create(c.options, splits[key]);
      const gated = layer.config.activation === "swiglu";
      for (const p of layer.parameters()) {
        const full = c.params[p.name];
        if (!full) continue;
        const E = layer.config.numExperts;
        const per = full.length / (p.expert ? E : 1);
        let mine = p.expert ? full.slice(layer.firstExpert * per, (layer.firstExpert + layer.numLocalExperts) * per) : full;
        const kind = /experts\\.(w1|b1|w2)$/.exec(p.name);
        if (p.expert && kind && etpSize > 1) {
          const L = layer.numLocalExperts, D = layer.config.dModel, F = layer.config.dFF, F1 = gated ? 2 * F : F;
          const shape = kind[1] === "w1" ? [L, D, F1] : kind[1] === "b1" ? [L, F1] : [L, F, D];
          mine = sliceHost(mine, kind[1], shape, etpSize, layer.etpRank, gated);
        }
        const t = Tensor.from(Float32Array.from(mine), p.param.shape);
        await ops.copyInto(p.param, t);
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
        etpRank: layer.etpRank,
      });
      // The global gradient norm (a maxNorm no gradient reaches: nothing is scaled).
      runs[runs.length - 1].norm = await layer.clipGradNorm(1e30);
      for (const t of [x, dy, r.output, dx]) t.dispose();
      layer.dispose();
    }
    await synchronize();
    // Tensors made by the two runs and still alive once every one they handed out is disposed.
    const left = memoryStats("cpu", { madeSince: made }).tensors;
    out.push({ ...runs[0], repeatSame: runs[0].bits === runs[1].bits, left });
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

/** Whole parameters (one rank's initialisation, biases randomised) and inputs with routing margins. */
async function makeCase(name: string, options: MoELayerOptions, tokens: number[], seed: number): Promise<Case> {
  const layer = await MoELayer.create({ ...options, epSize: 1, etpSize: 1 });
  try {
    await randomizeBiases(layer, seed + 7);
    const params: MoERefParams = readParams(layer);
    const D = options.dModel;
    for (let s = seed; ; s += 1000) {
      const ranks: MoERefRank[] = tokens.map((T, r) => ({
        x: f32(normal(T * D, s + 10 * r)),
        dy: f32(normal(T * D, s + 10 * r + 1)),
      }));
      const ref = moeLayerRef(refConfig(layer), params, ranks);
      if (ref.margin <= 1e-4) continue;
      return {
        name,
        options,
        tokens,
        x: ranks.map((r) => Array.from(r.x)),
        dy: ranks.map((r) => Array.from(r.dy)),
        params: Object.fromEntries(Object.entries(params).map(([n, v]) => [n, Array.from(v)])),
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
  const Q = c.options.etpSize!;
  const gated = c.options.activation === "swiglu";
  results.forEach((res, r) => {
    const where = `${c.name}, ep ${P}, etp ${Q}, rank ${r}`;
    expect([where, res.repeatSame, "tensors left", res.left]).toEqual([where, true, "tensors left", 0]);
    expect([where, res.epRank, res.etpRank]).toEqual([where, Math.floor(r / Q) % P, r % Q]);
    expect([where, "output", relErr(res.output as number[], ref.outputs[r]) < TOL.float32]).toEqual([
      where,
      "output",
      true,
    ]);
    expect([where, "dx", relErr(res.dx as number[], ref.dx[r]) < TOL.float32]).toEqual([where, "dx", true]);
    // clipGradNorm: every whole gradient counted once (sliced experts over EP and ETP, b2 over EP).
    const norm = Math.sqrt(Object.values(ref.grads).reduce((a, g) => a + g.reduce((b, v) => b + v * v, 0), 0));
    expect([where, "norm", Math.abs((res.norm as number) - norm) <= TOL.float32 * norm]).toEqual([where, "norm", true]);
    for (const [name, got] of Object.entries(res.grads as Record<string, number[]>)) {
      const full = ref.grads[name];
      const E = c.options.numExperts;
      const L = E / P;
      const per = full.length / E;
      const first = res.first as number;
      let want: ArrayLike<number> = name.startsWith("experts.") ? full.subarray(first * per, (first + L) * per) : full;
      const kind = /^experts\.(w1|b1|w2)$/.exec(name);
      if (kind && Q > 1) {
        const { dModel: D, dFF: F } = c.options;
        const F1 = gated ? 2 * F : F;
        const shape = kind[1] === "w1" ? [L, D, F1] : kind[1] === "b1" ? [L, F1] : [L, F, D];
        want = sliceHost(want, kind[1], shape, Q, r % Q, gated);
      }
      expect([where, name, got.length, relErr(got, Array.from(want)) < TOL.float32]).toEqual([
        where,
        name,
        want.length,
        true,
      ]);
    }
  });
}

async function runCases(W: number, cases: Case[], tag: string): Promise<Array<Array<Record<string, unknown>>>> {
  const file = path.join(work, `${tag}.input.json`);
  fs.writeFileSync(file, JSON.stringify({ cases: cases.map(({ ref: _r, ...c }) => c) }));
  const rank = script(work, "rank.js", RANK);
  const outPrefix = path.join(work, tag);
  const run = await launcher(["-n", String(W), rank, file, outPrefix], 110000);
  if (run.code !== 0) throw new Error(`launch failed (${run.code}):\n${run.stdout}\n${run.stderr}`);
  const perRank = Array.from(
    { length: W },
    (_, r) => JSON.parse(fs.readFileSync(`${outPrefix}.${r}.json`, "utf8")) as Array<Record<string, unknown>>,
  );
  return cases.map((_, i) => perRank.map((rows) => rows[i]));
}

const COLLECTIVES = `
const { Tensor, initProcessGroup } = require(${JSON.stringify(path.join(root, "dist"))});
const rank = Number(process.env.RANK);
(async () => {
  const world = await initProcessGroup({ timeoutMs: 60000 });
  const W = world.size;
  const wrong = [];
  for (const [dtype, Arr] of [["float32", Float32Array], ["int32", Int32Array], ["int64", BigInt64Array]]) {
    const cast = (v) => (dtype === "int64" ? BigInt(v) : v);
    for (let round = 0; round < 4; round++) {
      // Rank r sends (r + round) % 3 rows (zeros included) of 3 elements: 1000 r + 10 i + j.
      const rows = (r) => (r + round) % 3;
      const mine = Arr.from({ length: rows(rank) * 3 }, (_, k) => cast(1000 * rank + 10 * Math.floor(k / 3) + (k % 3)));
      const x = Tensor.from(mine, [rows(rank), 3], { dtype });
      const g = await world.allGatherV(x);
      const got = Array.from(g.output.toArray(), Number);
      const want = [];
      for (let r = 0; r < W; r++) for (let i = 0; i < rows(r); i++) for (let j = 0; j < 3; j++) want.push(1000 * r + 10 * i + j);
      if (JSON.stringify(got) !== JSON.stringify(want) || JSON.stringify(g.counts) !== JSON.stringify(Array.from({ length: W }, (_, r) => rows(r))))
        wrong.push({ op: "allGatherV", dtype, round, got, want });
      // Chunk p of rank r's rows holds (r + 1) · (100 p + 10 i + j): rank p receives Σ_r (r + 1) · (100 p + 10 i + j).
      const counts = Array.from({ length: W }, (_, p) => (p + round) % 3);
      const data = [];
      for (let p = 0; p < W; p++) for (let i = 0; i < counts[p]; i++) for (let j = 0; j < 2; j++) data.push(cast((rank + 1) * (100 * p + 10 * i + j)));
      const y = Tensor.from(Arr.from(data), [counts.reduce((a, b) => a + b, 0), 2], { dtype });
      const s = await world.reduceScatterV(y, counts);
      const sum = (W * (W + 1)) / 2;
      const wantS = [];
      for (let i = 0; i < counts[rank]; i++) for (let j = 0; j < 2; j++) wantS.push(sum * (100 * rank + 10 * i + j));
      const gotS = Array.from(s.toArray(), Number);
      if (JSON.stringify(gotS) !== JSON.stringify(wantS) || JSON.stringify(s.shape) !== JSON.stringify([counts[rank], 2]))
        wrong.push({ op: "reduceScatterV", dtype, round, got: gotS, want: wantS });
      for (const t of [x, g.output, y, s]) t.dispose();
    }
  }
  // Ranks that disagree on the counts all fail alike, before data moves; the group still works.
  let mismatch = null;
  const bad = Array.from({ length: W }, () => 1);
  bad[0] = rank === 0 ? 2 : 1;
  const z = Tensor.zeros([bad.reduce((a, b) => a + b, 0), 2]);
  await world.reduceScatterV(z, bad).then(() => {}, (e) => { mismatch = e.code; });
  z.dispose();
  await world.barrier();
  console.log(JSON.stringify({ result: { rank, wrong, mismatch } }));
  world.destroy();
})().catch((e) => { console.error(e.code, e.stack); process.exit(1); });
`;

test("etpSize is checked: a positive integer dividing dFF, with epSize dividing the world, else ERR_MOE_VALUE saying what was expected and received", () => {
  const base = { dModel: 4, dFF: 4, numExperts: 4 };
  const refused = (f: () => unknown): { code?: string; message: string } => {
    try {
      f();
    } catch (e) {
      return e as { code?: string; message: string };
    }
    throw new Error("expected a refusal");
  };
  for (const etpSize of [0, -1, 1.5, "2"]) {
    const e = refused(() => new MoELayer({ ...base, etpSize } as unknown as MoELayerOptions));
    expect([etpSize, e.code, e.message]).toEqual([etpSize, "ERR_MOE_VALUE", expect.stringMatching(/etpSize/)]);
  }
  const e = refused(() => new MoELayer({ ...base, etpSize: 3 }));
  expect([e.code, e.message]).toEqual(["ERR_MOE_VALUE", "Expected etpSize to divide dFF (4) but received 3"]);
  const world = { rank: 0, size: 6, allToAllV: async () => undefined, allReduce: async () => undefined };
  const w = refused(() => new MoELayer({ ...base, epSize: 2, etpSize: 2 }, world as unknown as MoELayerGroup));
  expect([w.code, w.message]).toEqual([
    "ERR_MOE_VALUE",
    "Expected epSize × etpSize (2 × 2 = 4) to divide the world size (6)",
  ]);
});

describe("allGatherV and reduceScatterV over real processes (Gloo)", () => {
  test.each([2, 3])(
    "world size %i: rank-encoded rows (zero counts included) arrive exact, in three dtypes; disagreeing counts fail with ERR_MOE_COUNT_MISMATCH on every rank",
    async (W) => {
      const file = script(work, "collectives.js", COLLECTIVES);
      const run = await launcher(["-n", String(W), file], 40000);
      expect([run.code, run.stderr]).toEqual([0, ""]);
      const results = run.stdout
        .split("\n")
        .map((l) => /^\[rank (\d+)\] (\{"result".*)$/.exec(l))
        .filter((m): m is RegExpExecArray => m !== null)
        .map((m) => JSON.parse(m[2]).result);
      expect(results).toHaveLength(W);
      for (const r of results) expect([r.rank, r.wrong, r.mismatch]).toEqual([r.rank, [], "ERR_MOE_COUNT_MISMATCH"]);
    },
    45000,
  );
});

describe("MoELayer with expert tensor parallelism (Gloo, world 8) matches the float64 reference", () => {
  const base = {
    dModel: 6,
    dFF: 4,
    numExperts: 8,
    topK: 2,
    seed: 7,
    initStd: 0.3,
    auxLossCoef: 0.01,
    zLossCoef: 0.001,
    bias: true,
    sharedExpertFF: 4,
  };
  const layouts: Array<[number, number]> = [
    [1, 2],
    [2, 2],
    [4, 2],
    [2, 1],
  ];
  test.each(["relu", "swiglu"] as const)(
    "%s, dropless and capacity 1.0, bias terms and shared experts: every layout, bitwise repeatable",
    async (activation) => {
      const cases: Case[] = [];
      let seed = activation === "relu" ? 1 : 50;
      for (const capacityFactor of [undefined, 1.0])
        for (const [epSize, etpSize] of layouts) {
          const tokens = [5, 3, 0, 6, 4, 5, 2, 6];
          const name = `${activation}, ${capacityFactor ? "capacity 1.0" : "dropless"}`;
          cases.push(await makeCase(name, { ...base, activation, capacityFactor, epSize, etpSize }, tokens, seed++));
        }
      const results = await runCases(8, cases, activation);
      cases.forEach((c, i) => check(c, results[i]));
    },
    120000,
  );
});

const CKPT = `
const fs = require("fs");
const { MoELayer, Tensor, ops, initProcessGroup } = require(${JSON.stringify(path.join(root, "dist"))});
const sliceHost = ${sliceHost.toString()};
const [mode, dir, epSize, etpSize, out] = process.argv.slice(2);
(async () => {
  const world = await initProcessGroup({ timeoutMs: 60000 });
  const options = { dModel: 4, dFF: 4, numExperts: 4, activation: "swiglu", bias: true, name: "moe", epSize: Number(epSize), etpSize: Number(etpSize) };
  const layer = await MoELayer.create({ ...options, seed: mode === "first" ? 5 : 6 }, world);
  if (mode === "first") {
    // Biases are zero at first: give b1 and b2 the whole pattern 0.01 · (100 e + j), this rank's slice of it.
    const L = layer.numLocalExperts;
    for (const p of layer.parameters()) {
      const m = /experts\\.(b1|b2)$/.exec(p.name);
      if (!m) continue;
      const width = m[1] === "b1" ? 2 * options.dFF : options.dModel;
      let v = [];
      for (let l = 0; l < L; l++) for (let j = 0; j < width; j++) v.push(0.01 * (100 * (layer.firstExpert + l) + j));
      if (m[1] === "b1") v = sliceHost(v, "b1", [L, width], options.etpSize, layer.etpRank, true);
      const t = Tensor.from(Float32Array.from(v), p.param.shape);
      await ops.copyInto(p.param, t);
      t.dispose();
    }
  } else {
    await layer.load(dir + "/" + mode);
  }
  await layer.save(dir + "/" + (mode === "first" ? "a" : mode === "a" ? "b" : "c"));
  const params = Object.fromEntries(layer.parameters().map((p) => [p.name, Array.from(p.param.toFloat32())]));
  fs.writeFileSync(out + "." + world.rank + ".json", JSON.stringify({ first: layer.firstExpert, etpRank: layer.etpRank, params }));
  layer.dispose();
  world.destroy();
})().catch((e) => { console.error(e.code, e.stack); process.exit(1); });
`;

test("checkpoints hold experts whole: saved at (ep 2, etp 2), loaded at (4, 1), saved again and loaded at (1, 2), every slice where it belongs", async () => {
  const file = script(work, "ckpt.js", CKPT);
  const dir = path.join(work, "ckpt");
  const steps: Array<[string, number, number, number]> = [
    ["first", 4, 2, 2],
    ["a", 4, 4, 1],
    ["b", 2, 1, 2],
  ];
  const dumps: Array<Array<{ first: number; etpRank: number; params: Record<string, number[]> }>> = [];
  for (const [mode, W, ep, etp] of steps) {
    const run = await launcher(
      ["-n", String(W), file, mode, dir, String(ep), String(etp), path.join(work, mode)],
      60000,
    );
    expect([mode, run.code, run.stderr]).toEqual([mode, 0, ""]);
    dumps.push(
      Array.from({ length: W }, (_, r) => JSON.parse(fs.readFileSync(path.join(work, `${mode}.${r}.json`), "utf8"))),
    );
  }
  // The whole experts from the first layout: each expert's slices joined in ETP order (the inverse of sliceHost).
  const E = 4;
  const wholeOf = (name: string): number[][] => {
    const kind = /experts\.(w1|b1|w2)$/.exec(name)?.[1];
    const experts: number[][] = Array.from({ length: E }, () => []);
    const ranks = dumps[0];
    for (const rank of ranks.filter((d) => d.etpRank === 0)) {
      const L = E / 2;
      const parts = ranks.filter((d) => d.first === rank.first).sort((a, b) => a.etpRank - b.etpRank);
      for (let l = 0; l < L; l++) {
        const per = (p: number[]) => p.length / L;
        const pieces = parts.map((d) => d.params[name].slice(l * per(d.params[name]), (l + 1) * per(d.params[name])));
        let joined: number[] = [];
        if (!kind) joined = pieces[0];
        else if (kind === "w2") joined = pieces.flat();
        else {
          // Rows of [gate slice | up slice] per rank -> [gate of every rank | up of every rank].
          const rows = kind === "w1" ? 4 : 1;
          const half = pieces[0].length / rows / 2;
          for (let o = 0; o < rows; o++)
            for (let h = 0; h < 2; h++)
              for (const p of pieces) joined.push(...p.slice(o * 2 * half + h * half, o * 2 * half + (h + 1) * half));
        }
        experts[rank.first + l] = joined;
      }
    }
    return experts;
  };
  for (const name of Object.keys(dumps[0][0].params).filter((n) => n.includes(".experts."))) {
    const whole = wholeOf(name);
    // b1 / b2: the pattern written at first, so the join itself is checked too.
    const bias = /experts\.(b1|b2)$/.exec(name)?.[1];
    if (bias)
      expect(whole.flat()).toEqual(whole.flatMap((row, e) => row.map((_, j) => Math.fround(0.01 * (100 * e + j)))));
    // (4, 1): one whole expert per rank.
    dumps[1].forEach((d, r) => expect([name, r, d.params[name]]).toEqual([name, r, whole[d.first]]));
    // (1, 2): every expert, rank t's slice of each.
    const kind = /experts\.(w1|b1|w2)$/.exec(name)?.[1];
    dumps[2].forEach((d, r) => {
      const all = whole.flat();
      const shape = kind === "w1" ? [E, 4, 8] : kind === "b1" ? [E, 8] : [E, 4, 4];
      const want = kind ? sliceHost(all, kind, shape, 2, d.etpRank, true) : all;
      expect([name, r, d.params[name]]).toEqual([name, r, want]);
    });
  }
  // Replicated tensors are the first layout's everywhere.
  for (const name of Object.keys(dumps[0][0].params).filter((n) => !n.includes(".experts.")))
    for (const d of [...dumps[1], ...dumps[2]])
      expect([name, d.params[name]]).toEqual([name, dumps[0][0].params[name]]);
}, 120000);
