/**
 * Expert tensor parallelism on the NCCL process group, across real processes
 * on the CUDA emulator and its NCCL (emu/nccl/nccl_emu.cpp):
 * - allGatherV and reduceScatterV of rank-encoded rows with uneven counts
 *   (zeros included) across 3 ranks, checked against formulas of the ranks'
 *   numbers, and counts that disagree failing alike on every rank;
 * - a bf16 swiglu MoELayer at epSize 2, etpSize 2 over 4 ranks
 *   (every rank its own emulated device): each rank's initial expert slices
 *   are the full layer's, and forward and backward match the float64 reference.
 * Skipped, with the reason, where the emulated build is absent.
 */
import * as fs from "fs";
import * as path from "path";
import { MoELayer, info } from "../../lib";
import type { MoELayerOptions } from "../../lib/layer/config";
import { readParams, refConfig, shortName } from "../layer-helpers";
import { root, runNode, script, tempDir, type Run } from "../procs";
import { moeLayerRef, type MoERefRank } from "../reference/moe-layer";
import { sliceHost } from "../reference/expert-slices";
import { bf16, normal, relErr, TOL } from "../util";

const emulated = info().cuda.emulated && fs.existsSync(process.env.MOE_EP_NCCL_LIBRARY ?? "");
const maybe = emulated ? test : test.skip;
const why = emulated ? "" : " (skipped: no emulated build with its NCCL: run npm run build:emu)";
const dist = JSON.stringify(path.join(root, "dist"));

let work: string;
beforeAll(() => {
  work = tempDir("moe-ep-nccl-etp-");
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

function launch(world: number, source: string, args: string[], limitMs = 90000): Promise<Run> {
  const rank = script(work, `rank-${world}.js`, source);
  const entry = `require(${JSON.stringify(path.join(root, "dist", "launch"))}).launch(process.argv.slice(1)).then((c) => { process.exitCode = c; })`;
  return runNode(["-e", entry, "--", "-n", String(world), rank, ...args], { limitMs });
}

const COLLECTIVES = `
const fs = require("fs");
const { Tensor, initProcessGroup } = require(${dist});
const rank = Number(process.env.RANK);
(async () => {
  const pg = await initProcessGroup({ backend: "nccl", device: "cuda:0", timeoutMs: 60000 });
  const W = pg.size;
  const out = {};
  for (const [dtype, Arr] of [["float32", Float32Array], ["int32", Int32Array]]) {
    // Rank r gathers r rows (rank 0: none) of 2 elements: 1000 r + 10 i + j.
    const mine = Arr.from({ length: rank * 2 }, (_, k) => 1000 * rank + 10 * Math.floor(k / 2) + (k % 2));
    const x = await Tensor.from(mine, [rank, 2], { dtype }).to("cuda:0");
    const g = await pg.allGatherV(x);
    // Chunk p (p + 1 rows, rank 1's chunk empty) of rank r holds (r + 1) · (100 p + 10 i + j).
    const counts = Array.from({ length: W }, (_, p) => (p === 1 ? 0 : p + 1));
    const data = [];
    for (let p = 0; p < W; p++) for (let i = 0; i < counts[p]; i++) for (let j = 0; j < 2; j++) data.push((rank + 1) * (100 * p + 10 * i + j));
    const y = await Tensor.from(Arr.from(data), [data.length / 2, 2], { dtype }).to("cuda:0");
    const s = await pg.reduceScatterV(y, counts);
    out[dtype] = { gathered: Array.from(g.output.toArray(), Number), counts: g.counts, scattered: Array.from(s.toArray(), Number), shape: s.shape };
  }
  const bad = Array.from({ length: W }, () => 1);
  if (rank === 0) bad[0] = 2;
  const z = await Tensor.zeros([bad.reduce((a, b) => a + b, 0), 2]).to("cuda:0");
  out.mismatch = await pg.reduceScatterV(z, bad).then(() => null, (e) => e.code);
  await pg.barrier();
  fs.writeFileSync(process.argv[2] + "." + rank + ".json", JSON.stringify(out));
  pg.destroy();
})().catch((e) => { console.error(e.code, e.stack); process.exit(1); });
`;

const LAYER = `
const fs = require("fs");
const { MoELayer, Tensor, initProcessGroup } = require(${dist});
const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const rank = Number(process.env.RANK);
(async () => {
  const world = await initProcessGroup({ backend: "nccl", device: "cuda:0", timeoutMs: 60000 });
  const { epSize, etpSize } = input.options;
  const groups = { world, ...(await world.split({ epSize, etpSize })) };
  const layer = await MoELayer.create(input.options, groups);
  const D = input.options.dModel;
  const x = await Tensor.from(Float32Array.from(input.x[rank]), [input.x[rank].length / D, D], { dtype: "bfloat16" }).to("cuda:0");
  const dy = await Tensor.from(Float32Array.from(input.dy[rank]), [input.dy[rank].length / D, D], { dtype: "bfloat16" }).to("cuda:0");
  const initial = Object.fromEntries(layer.parameters().map((p) => [p.name, Array.from(p.param.toFloat32())]));
  const r = await layer.forward(x);
  const dx = await layer.backward(dy);
  fs.writeFileSync(process.argv[3] + "." + rank + ".json", JSON.stringify({
    first: layer.firstExpert, etpRank: layer.etpRank, initial,
    output: Array.from(r.output.toFloat32()), dx: Array.from(dx.toFloat32()),
    grads: Object.fromEntries(layer.parameters().map((p) => [p.name, Array.from(p.grad.toFloat32())])),
  }));
  layer.dispose();
  world.destroy();
})().catch((e) => { console.error(e.code, e.stack); process.exit(1); });
`;

describe("expert tensor parallelism on NCCL across processes on emulated devices", () => {
  maybe(
    `allGatherV and reduceScatterV with uneven counts across 3 ranks; disagreeing counts fail on every rank${why}`,
    async () => {
      const W = 3;
      const out = path.join(work, "collectives");
      const run = await launch(W, COLLECTIVES, [out]);
      if (run.code !== 0) throw new Error(`launch failed (${run.code}):\n${run.stdout}\n${run.stderr}`);
      const gathered: number[] = [];
      for (let p = 0; p < W; p++) for (let i = 0; i < p; i++) gathered.push(1000 * p + 10 * i, 1000 * p + 10 * i + 1);
      for (let r = 0; r < W; r++) {
        const res = JSON.parse(fs.readFileSync(`${out}.${r}.json`, "utf8"));
        const rows = r === 1 ? 0 : r + 1;
        const scattered: number[] = [];
        for (let i = 0; i < rows; i++) for (let j = 0; j < 2; j++) scattered.push(6 * (100 * r + 10 * i + j));
        for (const dtype of ["float32", "int32"]) {
          expect([r, dtype, res[dtype]]).toEqual([
            r,
            dtype,
            { gathered, counts: [0, 1, 2], scattered, shape: [rows, 2] },
          ]);
        }
        expect([r, res.mismatch]).toEqual([r, "ERR_MOE_COUNT_MISMATCH"]);
      }
    },
    120000,
  );

  maybe(
    `bf16 swiglu MoELayer, epSize 2 and etpSize 2 over 4 ranks: initial slices and forward and backward match the float64 reference${why}`,
    async () => {
      const options: MoELayerOptions = {
        dModel: 16,
        dFF: 16,
        numExperts: 4,
        topK: 2,
        seed: 5,
        initStd: 0.3,
        auxLossCoef: 0.01,
        zLossCoef: 0.001,
        activation: "swiglu",
        dtype: "bfloat16",
        device: "cuda:0",
      };
      const full = await MoELayer.create(options);
      try {
        const params = readParams(full);
        const cfg = refConfig(full);
        const tokens = [6, 9, 0, 7];
        let ranks: MoERefRank[] = [];
        let ref = moeLayerRef(cfg, params, ranks);
        for (let s = 1; ; s += 1000) {
          ranks = tokens.map((T, r) => ({
            x: bf16(normal(T * 16, s + 10 * r)),
            dy: bf16(normal(T * 16, s + 10 * r + 1)),
          }));
          ref = moeLayerRef(cfg, params, ranks);
          if (ref.margin > 1e-3) break;
        }
        const layerOptions = { ...options, epSize: 2, etpSize: 2 };
        const file = path.join(work, "layer.json");
        fs.writeFileSync(
          file,
          JSON.stringify({
            options: layerOptions,
            x: ranks.map((r) => Array.from(r.x)),
            dy: ranks.map((r) => Array.from(r.dy)),
          }),
        );
        const out = path.join(work, "layer");
        const run = await launch(4, LAYER, [file, out], 110000);
        if (run.code !== 0) throw new Error(`launch failed (${run.code}):\n${run.stdout}\n${run.stderr}`);
        const E = options.numExperts;
        const L = E / 2;
        for (let r = 0; r < 4; r++) {
          const res = JSON.parse(fs.readFileSync(`${out}.${r}.json`, "utf8"));
          const where = `rank ${r} of 4`;
          expect([where, res.etpRank]).toEqual([where, r % 2]);
          expect([where, relErr(res.output, ref.outputs[r]) < TOL.bfloat16]).toEqual([where, true]);
          expect([where, relErr(res.dx, ref.dx[r]) < TOL.bfloat16]).toEqual([where, true]);
          for (const p of full.parameters()) {
            const name = shortName(full, p.name);
            const cut = (whole: Float64Array): number[] => {
              const per = whole.length / E;
              if (!name.startsWith("experts.")) return Array.from(whole);
              const mine = whole.subarray(res.first * per, (res.first + L) * per);
              const kind = /^experts\.(w1|b1|w2)$/.exec(name)?.[1];
              if (!kind) return Array.from(mine);
              const shape = kind === "w1" ? [L, 16, 32] : kind === "b1" ? [L, 32] : [L, 16, 16];
              return sliceHost(mine, kind, shape, 2, r % 2, true);
            };
            expect([where, name, "initial", cut(params[name])]).toEqual([where, name, "initial", res.initial[p.name]]);
            const want = cut(ref.grads[name]);
            expect([where, name, res.grads[p.name].length, relErr(res.grads[p.name], want) < TOL.bfloat16]).toEqual([
              where,
              name,
              want.length,
              true,
            ]);
          }
        }
      } finally {
        full.dispose();
      }
    },
    120000,
  );
});
