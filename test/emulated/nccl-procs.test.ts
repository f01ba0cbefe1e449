/**
 * The NCCL process group and MoELayer on cuda:0 across real processes, on the
 * CUDA emulator and its NCCL (emu/nccl/nccl_emu.cpp: a socket mesh between
 * the ranks' processes), as a machine with one GPU per rank would run them:
 * - allToAllV of rank-encoded rows with uneven counts, allReduce and broadcast
 *   across 3 ranks, checked against formulas of the ranks' numbers;
 * - a rank that exits: the survivor's next collective is ERR_MOE_PEER_LOST;
 *   a rank that stays but never joins: ERR_MOE_TIMEOUT after the group's timeout;
 * - a bf16 swiglu MoELayer with epSize 2 and 4 (every rank its own emulated
 *   device) forward and backward against the float64 reference layer, and
 *   each rank's initial experts equal to the full layer's slice.
 * Skipped, with the reason, where the emulated build is absent.
 */
import * as fs from "fs";
import * as path from "path";
import { MoELayer, info } from "../../lib";
import type { MoELayerOptions } from "../../lib/layer/config";
import { readParams, refConfig, shortName } from "../layer-helpers";
import { root, runNode, script, tempDir, type Run } from "../procs";
import { moeLayerRef, type MoERefRank } from "../reference/moe-layer";
import { bf16, normal, relErr, TOL } from "../util";

const emulated = info().cuda.emulated && fs.existsSync(process.env.MOE_EP_NCCL_LIBRARY ?? "");
const maybe = emulated ? test : test.skip;
const why = emulated ? "" : " (skipped: no emulated build with its NCCL: run npm run build:emu)";
const dist = JSON.stringify(path.join(root, "dist"));

let work: string;
beforeAll(() => {
  work = tempDir("moe-ep-nccl-procs-");
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
  // Rank r sends (r + p + 1) rows of width 3 to peer p; row j to p holds 1000r + 10p + j.
  const send = [];
  for (let p = 0; p < W; p++) for (let j = 0; j < rank + p + 1; j++) send.push(1000 * rank + 10 * p + j, -1, rank);
  const sendCounts = Array.from({ length: W }, (_, p) => rank + p + 1);
  const recvCounts = Array.from({ length: W }, (_, p) => p + rank + 1);
  const x = await Tensor.from(Float32Array.from(send), [send.length / 3, 3]).to("cuda:0");
  const got = (await pg.allToAllV(x, sendCounts, { recvCounts })).output;
  const sum = await Tensor.from(Float32Array.from([rank + 1, 10 * rank]), [2]).to("cuda:0");
  await pg.allReduce(sum, "sum");
  const big = await Tensor.from(Int32Array.from([rank * 7, -rank]), [2]).to("cuda:0");
  await pg.allReduce(big, "max");
  const b = await Tensor.from(Float32Array.from([rank, rank, rank]), [3]).to("cuda:0");
  await pg.broadcast(b, W - 1);
  fs.writeFileSync(process.argv[2] + "." + rank + ".json", JSON.stringify({
    rows: Array.from(got.toFloat32()), sum: Array.from(sum.toFloat32()), max: Array.from(big.toInt32()), bcast: Array.from(b.toFloat32()),
  }));
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
  const groups = { world, ...(await world.split({ epSize: world.size })) };
  const layer = await MoELayer.create({ ...input.options, epSize: world.size }, groups);
  const D = input.options.dModel;
  const x = await Tensor.from(Float32Array.from(input.x[rank]), [input.x[rank].length / D, D], { dtype: "bfloat16" }).to("cuda:0");
  const dy = await Tensor.from(Float32Array.from(input.dy[rank]), [input.dy[rank].length / D, D], { dtype: "bfloat16" }).to("cuda:0");
  const initial = Object.fromEntries(layer.parameters().map((p) => [p.name, Array.from(p.param.toFloat32())]));
  const r = await layer.forward(x);
  const dx = await layer.backward(dy);
  fs.writeFileSync(process.argv[3] + "." + rank + ".json", JSON.stringify({
    first: layer.firstExpert, initial,
    output: Array.from(r.output.toFloat32()), dx: Array.from(dx.toFloat32()),
    grads: Object.fromEntries(layer.parameters().map((p) => [p.name, Array.from(p.grad.toFloat32())])),
    tokensPerExpert: r.stats.tokensPerExpert,
  }));
  layer.dispose();
  world.destroy();
})().catch((e) => { console.error(e.code, e.stack); process.exit(1); });
`;

// Rank 1 either exits after the barrier ("exit": its sockets close with it) or
// stays but never joins the collective ("silent"); rank 0 reports what its
// allToAllV gave and how long it took.
const FAULT = `
const fs = require("fs");
const { Tensor, initProcessGroup } = require(${dist});
const rank = Number(process.env.RANK);
const [out, how] = process.argv.slice(2);
(async () => {
  const pg = await initProcessGroup({ backend: "nccl", device: "cuda:0", timeoutMs: how === "silent" ? 2000 : 20000 });
  await pg.barrier();
  if (rank === 1) {
    if (how === "exit") process.exit(0);
    setTimeout(() => process.exit(0), 8000);
    return;
  }
  const t0 = Date.now();
  const x = await Tensor.from(Float32Array.from([1, 2, 3, 4]), [2, 2]).to("cuda:0");
  let code = "resolved";
  try {
    await pg.allToAllV(x, [1, 1]);
  } catch (e) {
    code = e.code;
  }
  fs.writeFileSync(out, JSON.stringify({ code, ms: Date.now() - t0 }));
  pg.destroy();
})().catch((e) => { console.error(e.code, e.stack); process.exit(1); });
`;

async function fault(how: "exit" | "silent"): Promise<{ code: string; ms: number }> {
  const out = path.join(work, `fault-${how}.json`);
  const run = await launch(2, FAULT, [out, how]);
  if (!fs.existsSync(out)) throw new Error(`rank 0 wrote no result (${run.code}):\n${run.stdout}\n${run.stderr}`);
  return JSON.parse(fs.readFileSync(out, "utf8"));
}

describe("NCCL across processes on emulated devices", () => {
  maybe(
    `a rank that never joins a collective: the other's allToAllV rejects with ERR_MOE_TIMEOUT after the group's timeout${why}`,
    async () => {
      const res = await fault("silent");
      expect(res.code).toBe("ERR_MOE_TIMEOUT");
      expect(res.ms).toBeGreaterThanOrEqual(1900);
      expect(res.ms).toBeLessThan(7500);
    },
    120000,
  );

  maybe(
    `a rank that exits mid-run: the survivor's allToAllV rejects with ERR_MOE_PEER_LOST at once${why}`,
    async () => {
      const res = await fault("exit");
      expect(res.code).toBe("ERR_MOE_PEER_LOST");
      expect(res.ms).toBeLessThan(10000);
    },
    120000,
  );

  maybe(
    `allToAllV with uneven counts, allReduce and broadcast across 3 ranks${why}`,
    async () => {
      const W = 3;
      const out = path.join(work, "collectives");
      const run = await launch(W, COLLECTIVES, [out]);
      if (run.code !== 0) throw new Error(`launch failed (${run.code}):\n${run.stdout}\n${run.stderr}`);
      for (let r = 0; r < W; r++) {
        const res = JSON.parse(fs.readFileSync(`${out}.${r}.json`, "utf8"));
        const rows: number[] = [];
        for (let p = 0; p < W; p++) for (let j = 0; j < p + r + 1; j++) rows.push(1000 * p + 10 * r + j, -1, p);
        expect([r, res.rows]).toEqual([r, rows]);
        expect([r, res.sum]).toEqual([r, [1 + 2 + 3, 10 * (0 + 1 + 2)]]);
        expect([r, res.max]).toEqual([r, [14, 0]]);
        expect([r, res.bcast]).toEqual([r, [W - 1, W - 1, W - 1]]);
      }
    },
    120000,
  );

  for (const W of [2, 4]) {
    maybe(
      `bf16 swiglu MoELayer, epSize ${W} over ${W} ranks: forward and backward match the float64 reference${why}`,
      async () => {
        const options: MoELayerOptions = {
          dModel: 16,
          dFF: 16,
          numExperts: 8,
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
          const tokens = [24, 40, 8, 32].slice(0, W);
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
          const file = path.join(work, `layer-${W}.json`);
          fs.writeFileSync(
            file,
            JSON.stringify({ options, x: ranks.map((r) => Array.from(r.x)), dy: ranks.map((r) => Array.from(r.dy)) }),
          );
          const out = path.join(work, `layer-${W}`);
          const run = await launch(W, LAYER, [file, out]);
          if (run.code !== 0) throw new Error(`launch failed (${run.code}):\n${run.stdout}\n${run.stderr}`);
          const E = options.numExperts;
          for (let r = 0; r < W; r++) {
            const res = JSON.parse(fs.readFileSync(`${out}.${r}.json`, "utf8"));
            const where = `rank ${r} of ${W}`;
            expect([where, res.tokensPerExpert]).toEqual([where, ref.tokensPerExpert]);
            expect([where, relErr(res.output, ref.outputs[r]) < TOL.bfloat16]).toEqual([where, true]);
            expect([where, relErr(res.dx, ref.dx[r]) < TOL.bfloat16]).toEqual([where, true]);
            for (const p of full.parameters()) {
              const name = shortName(full, p.name);
              const whole = params[name];
              const per = whole.length / E;
              const mine = name.startsWith("experts.")
                ? whole.subarray(res.first * per, (res.first + E / W) * per)
                : whole;
              expect([where, name, "initial", Array.from(mine)]).toEqual([where, name, "initial", res.initial[p.name]]);
              const g = ref.grads[name];
              const want = name.startsWith("experts.") ? g.subarray(res.first * per, (res.first + E / W) * per) : g;
              expect([where, name, relErr(res.grads[p.name], want) < TOL.bfloat16]).toEqual([where, name, true]);
            }
          }
        } finally {
          full.dispose();
        }
      },
      120000,
    );
  }
});
