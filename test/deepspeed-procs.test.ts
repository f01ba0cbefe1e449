/**
 * MoELayer.fromDeepSpeed across 2 real processes (moe-ep launch, Gloo),
 * ep_size 2: top-1 with DeepSpeed's capacity (min_capacity), the residual
 * MoE at top-2 (second expert sampled, weights renormalised after capacity) and top-1 with RSample's
 * Gumbel noise (each rank its own stream); every rank's output, dx and gradients (the coefficient's
 * included) equal the single-process float64 reference.
 */
import * as fs from "fs";
import * as path from "path";
import { MoELayer, Tensor, deepSpeedOptions, ops } from "../lib";
import { randomizeBiases, readParams, refConfig } from "./layer-helpers";
import { buildDist, root, runNode, script, tempDir } from "./procs";
import { moeLayerRef, type MoERefRank } from "./reference/moe-layer";
import { fillRandomRef, fnv1a } from "./reference/random";
import { f32, normal, relErr, TOL } from "./util";

let work: string;
beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-deepspeed-procs-");
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

const RANK = `
const fs = require("fs");
const { MoELayer, Tensor, ops, initProcessGroup } = require(${JSON.stringify(path.join(root, "dist"))});
const input = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const rank = Number(process.env.RANK);
(async () => {
  const world = await initProcessGroup({ timeoutMs: 60000 });
  const out = [];
  for (const c of input.cases) {
    const layer = MoELayer.fromDeepSpeed(c.kwargs, world);
    await layer.ready;
    for (const p of layer.parameters()) {
      const full = c.params[p.name];
      const per = full.length / (p.expert ? layer.config.numExperts : 1);
      const mine = p.expert ? full.slice(layer.firstExpert * per, (layer.firstExpert + layer.numLocalExperts) * per) : full;
      const t = Tensor.from(Float32Array.from(mine), p.param.shape);
      await ops.copyInto(p.param, t);
      t.dispose();
    }
    const T = c.tokens[rank];
    const D = layer.config.dModel;
    const x = Tensor.from(Float32Array.from(c.x[rank]), [T, D]);
    const dy = Tensor.from(Float32Array.from(c.dy[rank]), [T, D]);
    const r = await layer.forward(x);
    const dx = await layer.backward(dy);
    out.push({
      output: Array.from(r.output.toFloat32()),
      dx: Array.from(dx.toFloat32()),
      grads: Object.fromEntries(layer.parameters().map((p) => [p.name, Array.from(p.grad.toFloat32())])),
      first: layer.firstExpert,
      stats: r.stats,
    });
    for (const t of [x, dy, r.output, dx]) t.dispose();
    layer.dispose();
  }
  fs.writeFileSync(process.argv[3] + "." + rank + ".json", JSON.stringify(out));
  world.destroy();
})().catch((e) => { console.error(e.code, e.stack); process.exit(1); });
`;

async function makeCase(kwargs: Record<string, unknown>, tokens: number[], seed: number) {
  const E = kwargs.num_experts as number;
  // RSample (top-1) and the second-expert sampling (top-2, DeepSpeed's default): each rank's first
  // forward draws slice 0 of its own stream.
  const stream = kwargs.noisy_gate_policy === "RSample" ? "rsample" : kwargs.k === 2 ? "sample2" : undefined;
  const noise = (T: number, r: number) =>
    stream
      ? {
          selectionNoise: f32(
            fillRandomRef(T * E, {
              seed: kwargs.seed as number,
              key: fnv1a(`router.${stream}/${r}`),
              distribution: "gumbel",
              a: 0,
              b: 1,
            }),
          ),
          noiseFrom: stream === "sample2" ? 1 : 0,
        }
      : {};
  // The full parameters: the layer's own initialisation (the same for any ep_size), biases randomised.
  const layer = await MoELayer.create({ ...deepSpeedOptions(kwargs), epSize: 1 });
  try {
    await randomizeBiases(layer, seed + 7);
    const bias = layer.parameters().find((p) => p.name === "coefficient.bias");
    if (bias) {
      using t = Tensor.from(Float32Array.from(f32(normal(2, seed, 0.5))), [2]);
      await ops.copyInto(bias.param, t);
    }
    const params = readParams(layer);
    const D = layer.config.dModel;
    for (let s = seed; ; s += 1000) {
      const ranks: MoERefRank[] = tokens.map((T, r) => ({
        x: f32(normal(T * D, s + 10 * r)),
        dy: f32(normal(T * D, s + 10 * r + 1)),
        ...noise(T, r),
      }));
      const ref = moeLayerRef(refConfig(layer), params, ranks);
      if (ref.margin <= 1e-4) continue;
      return {
        kwargs,
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

test("2 processes, ep_size 2: top-1 with min_capacity, the residual MoE at top-2, and RSample match the reference", async () => {
  const base = { hidden_size: 12, num_experts: 8, ep_size: 2, ffn_hidden_size: 10, seed: 7, init_std: 0.3 };
  const cases = [
    await makeCase(
      { ...base, k: 1, capacity_factor: 0.5, min_capacity: 3, activation: "relu", bias: true },
      [20, 24],
      1,
    ),
    await makeCase({ ...base, k: 2, use_residual: true, aux_loss_coef: 0.01 }, [16, 22], 2),
    await makeCase({ ...base, k: 1, noisy_gate_policy: "RSample", aux_loss_coef: 0.01 }, [18, 14], 3),
  ];
  const file = path.join(work, "input.json");
  fs.writeFileSync(file, JSON.stringify({ cases: cases.map(({ ref: _r, ...c }) => c) }));
  const prefix = path.join(work, "out");
  const entry = `require(${JSON.stringify(path.join(root, "dist", "launch"))}).launch(process.argv.slice(1)).then((c) => { process.exitCode = c; })`;
  const run = await runNode(["-e", entry, "--", "-n", "2", script(work, "rank.js", RANK), file, prefix], {
    limitMs: 85000,
  });
  if (run.code !== 0) throw new Error(`launch failed (${run.code}):\n${run.stdout}\n${run.stderr}`);
  const perRank = [0, 1].map((r) => JSON.parse(fs.readFileSync(`${prefix}.${r}.json`, "utf8")));
  cases.forEach((c, i) => {
    const { ref } = c;
    [0, 1].forEach((r) => {
      const res = perRank[r][i];
      const where = `case ${i}, rank ${r}`;
      expect([where, relErr(res.output, ref.outputs[r]) < TOL.float32]).toEqual([where, true]);
      expect([where, relErr(res.dx, ref.dx[r]) < TOL.float32]).toEqual([where, true]);
      expect([where, res.stats.tokensPerExpert]).toEqual([where, ref.tokensPerExpert]);
      expect([where, res.stats.dropped]).toEqual([where, ref.dropped[0] + ref.dropped[1]]);
      for (const [name, got] of Object.entries(res.grads as Record<string, number[]>)) {
        const full = ref.grads[name];
        const per = full.length / 8;
        const want = name.startsWith("experts.") ? full.subarray(res.first * per, (res.first + 4) * per) : full;
        expect([where, name, relErr(got, want) < TOL.float32]).toEqual([where, name, true]);
      }
    });
    if (i === 0) {
      expect(perRank[0][0].stats.capacity).toBe(Math.max(Math.ceil((20 / 8) * 0.5), 3));
      expect(ref.dropped[0] + ref.dropped[1]).toBeGreaterThan(0);
    }
    if (i === 1) expect(Object.keys(perRank[0][1].grads)).toContain("coefficient.weight");
  });
}, 90000);
