#!/usr/bin/env node
/**
 * The MoE layer on a GPU, plain node on the built package (./dist and the
 * addon), run from the project root after `npm run build`:
 *   (a) each layer glue op on CUDA (add, axpby, sumSquares, fillRandom,
 *       jitter, chunkTranspose, expertBiasUpdate, reshape) against the CPU op
 *       on the same inputs: one `ok` / `FAIL` row per case with #wrong;
 *   (b) MoELayer on cuda:0 (bf16, swiglu, epSize 1) forward + backward against
 *       the same layer (same seed) on the CPU, with no group and with an NCCL
 *       group of world size 1 when NCCL is available;
 *   (c) forward + backward timing at dModel 4096, dFF 14336, 8 experts,
 *       top-2, 8192 tokens, bf16, swiglu: tokens/s and the share of the dense
 *       bf16 rate (--dense-tflops, default 786) its GEMM FLOPs reach; one
 *       warm-up, median of 5.
 * Exits 1 on any FAIL, 2 when CUDA is unavailable.
 */
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");

const root = path.resolve(__dirname, "..");
const args = { denseTflops: 786, device: "cuda:0", skipBench: false };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === "--dense-tflops") args.denseTflops = Number(process.argv[++i]);
  else if (a === "--device") args.device = process.argv[++i];
  else if (a === "--no-bench") args.skipBench = true;
  else {
    console.error(`device-layer: unknown argument "${a}"`);
    process.exit(64);
  }
}
const moe = require(path.join(root, "dist"));
const { Tensor, MoELayer, ops } = moe;
const dist = moe; // initProcessGroup, ncclStatus
const info = moe.info();
if (!info.cuda || !info.cuda.available) {
  console.error(`device-layer: CUDA unavailable: ${(info.cuda && info.cuda.reason) || "unknown"}`);
  process.exit(2);
}
const dev = args.device;
let failures = 0;

function rand(n, seed, std = 1) {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    const u1 = (s + 1) / 4294967297;
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = std * Math.sqrt(-2 * Math.log(u1)) * Math.cos((2 * Math.PI * s) / 4294967296);
  }
  return out;
}
const host = (t) => t.toFloat32();
/** #elements with |g − c| > atol + rtol·|c| (exact: rtol = atol = 0 compares bits). */
function wrong(g, c, rtol, atol = rtol * 1e-3) {
  let n = 0;
  for (let i = 0; i < c.length; i++) {
    const bad = rtol === 0 ? !Object.is(g[i], c[i]) : !(Math.abs(g[i] - c[i]) <= atol + rtol * Math.abs(c[i]));
    if (bad) n++;
  }
  return n + Math.abs(g.length - c.length);
}
function row(name, bad, n, extra = "") {
  if (bad) failures++;
  console.log(`${bad ? "FAIL" : "ok"}\t${name}\t#wrong ${bad} of ${n}${extra ? "\t" + extra : ""}`);
}
async function both(data, shape, dtype) {
  const c = Tensor.from(data, shape, { dtype });
  const g = await c.to(dev);
  return [c, g];
}
async function guarded(name, fn) {
  try {
    await fn();
  } catch (e) {
    failures++;
    console.log(`FAIL\t${name}\tthrew ${e.code || ""} ${String(e.message).split("\n")[0]}`);
  }
}

async function opsCheck() {
  console.log("== (a) layer ops on CUDA against the CPU op");
  const tol = { float32: 1e-6, bfloat16: 0, float16: 0 };
  for (const dtype of ["float32", "bfloat16", "float16"]) {
    for (const n of [1, 4097, 1 << 20]) {
      await guarded(`add/axpby ${dtype} n=${n}`, async () => {
        const [ac, ag] = await both(rand(n, n + 1), [n], dtype);
        const [bc, bg] = await both(rand(n, n + 2), [n], dtype);
        const sc = await ops.add(ac, bc),
          sg = await ops.add(ag, bg);
        row(`add ${dtype} n=${n}`, wrong(host(sg), host(sc), tol[dtype]), n);
        await ops.axpby(ac, bc, { alpha: 0.75, beta: -1.5 });
        await ops.axpby(ag, bg, { alpha: 0.75, beta: -1.5 });
        row(`axpby ${dtype} n=${n}`, wrong(host(ag), host(ac), tol[dtype]), n);
        for (const t of [ac, ag, bc, bg, sc, sg]) t.dispose();
      });
    }
  }
  await guarded("sumSquares", async () => {
    const sizes = [5, 16384, 16385, 3000001];
    const pairs = await Promise.all(sizes.map((n, i) => both(rand(n, 30 + i), [n], i % 2 ? "bfloat16" : "float32")));
    const c = await ops.sumSquares(pairs.map((p) => p[0]));
    const g1 = await ops.sumSquares(pairs.map((p) => p[1]));
    const g2 = await ops.sumSquares(pairs.map((p) => p[1]));
    const cv = c.item(),
      gv = g1.item();
    row(
      "sumSquares (mixed dtypes, 4 tensors) rel 1e-6",
      Math.abs(gv - cv) <= 1e-6 * cv ? 0 : 1,
      1,
      `cpu ${cv} cuda ${gv}`,
    );
    row("sumSquares repeats bit for bit", Object.is(gv, g2.item()) ? 0 : 1, 1);
    for (const p of pairs) p.forEach((t) => t.dispose());
    [c, g1, g2].forEach((t) => t.dispose());
  });
  for (const dtype of ["float32", "bfloat16", "float16"]) {
    for (const [dist_, o] of [
      ["uniform", { low: -2, high: 3 }],
      ["normal", { mean: 0.1, std: 0.02 }],
    ]) {
      await guarded(`fillRandom ${dist_} ${dtype}`, async () => {
        const shape = [8, 512, 130];
        const opts = { seed: 1234, key: 987654321, distribution: dist_, sliceSize: 512 * 130, firstSlice: 8, ...o };
        const c = Tensor.zeros(shape, { dtype }),
          g = Tensor.zeros(shape, { dtype, device: dev });
        await ops.fillRandom(c, opts);
        await ops.fillRandom(g, opts);
        const n = c.numel;
        row(
          `fillRandom ${dist_} ${dtype} exact`,
          wrong(host(g), host(c), 0),
          n,
          dist_ === "normal" ? "(normal: CUDA's double log/cos may differ by 1 ulp)" : "",
        );
        c.dispose();
        g.dispose();
      });
    }
    await guarded(`jitter ${dtype}`, async () => {
      const n = 8192 * 64;
      const [xc, xg] = await both(rand(n, 77), [8192, 64], dtype);
      const jc = await ops.jitter(xc, { eps: 0.01, seed: 3, key: 55, slice: 17 });
      const jg = await ops.jitter(xg, { eps: 0.01, seed: 3, key: 55, slice: 17 });
      row(`jitter ${dtype} exact`, wrong(host(jg), host(jc), 0), n);
      [xc, xg, jc, jg].forEach((t) => t.dispose());
    });
  }
  for (const counts of [
    [
      [3, 0, 5, 1],
      [0, 0, 2, 7],
    ],
    [
      [0, 0],
      [0, 0],
    ],
    [
      [1000, 1],
      [0, 4095],
    ],
  ]) {
    await guarded(`chunkTranspose ${JSON.stringify(counts)}`, async () => {
      const R = counts.flat().reduce((a, b) => a + b, 0),
        W = 40;
      const [xc, xg] = await both(rand(Math.max(R * W, 1), R + 5).subarray(0, R * W), [R, W], "bfloat16");
      const flat = Int32Array.from(counts.flat()),
        shape = [counts.length, counts[0].length];
      const cc = Tensor.from(flat, shape, { dtype: "int32" });
      const cg = await cc.to(dev);
      const yc = await ops.chunkTranspose(xc, cc),
        yg = await ops.chunkTranspose(xg, cg);
      row(`chunkTranspose bf16 ${JSON.stringify(counts)}`, wrong(host(yg), host(yc), 0), R * W);
      [xc, xg, cc, cg, yc, yg].forEach((t) => t.dispose());
    });
  }
  await guarded("chunkTranspose bad counts", async () => {
    const x = await Tensor.zeros([4, 8]).to(dev);
    const c = await Tensor.from(Int32Array.from([1, 2]), [1, 2], { dtype: "int32" }).to(dev);
    let code = "";
    try {
      const y = await ops.chunkTranspose(x, c);
      y.toFloat32();
      y.dispose();
    } catch (e) {
      code = e.code;
    }
    row(
      "chunkTranspose counts summing to 3 of 4 rows -> ERR_MOE_VALUE",
      code === "ERR_MOE_VALUE" ? 0 : 1,
      1,
      code || "no error",
    );
    x.dispose();
    c.dispose();
  });
  for (const load of [
    Int32Array.from([5, 0, 3, 9, 4, 4, 1, 6]),
    Float32Array.from([2.5, 2.5, 1, 4, 2.5, 2.5, 2.5, 2.5]),
  ]) {
    await guarded("expertBiasUpdate", async () => {
      const [bc, bg] = await both(rand(8, 9, 0.1), [8], "float32");
      const lc = Tensor.from(load, [8], { dtype: load instanceof Int32Array ? "int32" : "float32" });
      const lg = await lc.to(dev);
      await ops.expertBiasUpdate(bc, lc, 1e-3);
      await ops.expertBiasUpdate(bg, lg, 1e-3);
      row(`expertBiasUpdate ${lc.dtype} load`, wrong(host(bg), host(bc), 0), 8);
      [bc, bg, lc, lg].forEach((t) => t.dispose());
    });
  }
  await guarded("reshape", async () => {
    const [c, g] = await both(rand(24, 4), [2, 12], "bfloat16");
    const v = ops.reshape(g, [4, 6]);
    row("reshape of a device tensor", v.device === dev && wrong(host(v), host(c), 0) === 0 ? 0 : 1, 24);
    [c, g, v].forEach((t) => t.dispose());
  });
}

const small = {
  dModel: 256,
  dFF: 512,
  numExperts: 8,
  topK: 2,
  seed: 11,
  activation: "swiglu",
  dtype: "bfloat16",
  auxLossCoef: 0.01,
  zLossCoef: 0.001,
  initStd: 0.02,
};

async function layerCheck(group, label) {
  const T = 512;
  const lc = await MoELayer.create({ ...small, device: "cpu" });
  const lg = await MoELayer.create({ ...small, device: dev }, group);
  try {
    // Same seed: the parameters are equal on both devices (CUDA fillRandom).
    const pc = lc.parameters(),
      pg = lg.parameters();
    for (let i = 0; i < pc.length; i++)
      row(
        `${label}: initial ${pc[i].name} equals the CPU layer's`,
        wrong(host(pg[i].param), host(pc[i].param), 1e-6),
        pc[i].param.numel,
      );
    const x = rand(T * small.dModel, 5),
      dy = rand(T * small.dModel, 6);
    const [xc, xg] = await both(x, [T, small.dModel], "bfloat16");
    const [dc, dg] = await both(dy, [T, small.dModel], "bfloat16");
    const rc = await lc.forward(xc),
      rg = await lg.forward(xg);
    row(`${label}: forward output`, wrong(host(rg.output), host(rc.output), 2e-2, 2e-3), T * small.dModel);
    row(
      `${label}: tokens per expert`,
      JSON.stringify(rg.stats.tokensPerExpert) === JSON.stringify(rc.stats.tokensPerExpert) ? 0 : 1,
      1,
      JSON.stringify(rg.stats.tokensPerExpert),
    );
    row(
      `${label}: aux and z losses`,
      Math.abs(rg.auxLoss - rc.auxLoss) <= 1e-3 * Math.abs(rc.auxLoss) + 1e-9 &&
        Math.abs(rg.zLoss - rc.zLoss) <= 2e-2 * Math.abs(rc.zLoss) + 1e-9
        ? 0
        : 1,
      2,
    );
    const gc = await lc.backward(dc),
      gg = await lg.backward(dg);
    row(`${label}: backward dx`, wrong(host(gg), host(gc), 2e-2, 2e-3), T * small.dModel);
    for (let i = 0; i < pc.length; i++) {
      const c = host(pc[i].grad);
      let scale = 0;
      for (const v of c) scale = Math.max(scale, Math.abs(v));
      row(`${label}: grad of ${pc[i].name}`, wrong(host(pg[i].grad), c, 2e-2, 2e-2 * scale), c.length);
    }
    [xc, xg, dc, dg, rc.output, rg.output, gc, gg].forEach((t) => t.dispose());
  } finally {
    lc.dispose();
    lg.dispose();
  }
}

async function bench() {
  const D = 4096,
    F = 14336,
    E = 8,
    k = 2,
    T = 8192;
  console.log(
    `== (c) MoELayer forward + backward on ${dev}: dModel ${D}, dFF ${F}, ${E} experts, top-${k}, ${T} tokens, bf16, swiglu`,
  );
  const layer = await MoELayer.create({
    dModel: D,
    dFF: F,
    numExperts: E,
    topK: k,
    activation: "swiglu",
    dtype: "bfloat16",
    device: dev,
    seed: 1,
    initStd: 0.006,
  });
  const x = await Tensor.from(rand(T * D, 1), [T, D], { dtype: "bfloat16" }).to(dev);
  const dy = await Tensor.from(rand(T * D, 2, 1e-3), [T, D], { dtype: "bfloat16" }).to(dev);
  const step = async () => {
    const t0 = performance.now();
    const r = await layer.forward(x);
    const dx = await layer.backward(dy);
    void dx.toFloat32().length; // waits for the device
    const ms = performance.now() - t0;
    r.output.dispose();
    dx.dispose();
    return ms;
  };
  await step();
  const times = [];
  for (let i = 0; i < 5; i++) times.push(await step());
  times.sort((a, b) => a - b);
  const ms = times[2];
  // GEMM FLOPs: forward x·W1 (2F wide) and h·W2, backward twice that (dX and dW), for T·k rows; the router's too.
  const rows = T * k;
  const flops = 3 * (2 * rows * D * 2 * F + 2 * rows * F * D) + 3 * 2 * T * D * E;
  const tflops = flops / (ms * 1e-3) / 1e12;
  console.log(
    `median of 5 (after a warm-up): ${ms.toFixed(1)} ms; ${(T / (ms * 1e-3)).toFixed(0)} tokens/s; GEMMs at ${tflops.toFixed(1)} TFLOP/s = ${((100 * tflops) / args.denseTflops).toFixed(1)}% of the dense bf16 rate ${args.denseTflops} TFLOP/s`,
  );
  x.dispose();
  dy.dispose();
  layer.dispose();
}

(async () => {
  await opsCheck();
  console.log("== (b) MoELayer on CUDA against the same layer on the CPU");
  await guarded("layer, no group", () => layerCheck(undefined, "layer, no group"));
  const nccl = dist.ncclStatus();
  if (!nccl.available) console.log(`skip\tlayer with an NCCL group: NCCL unavailable: ${nccl.reason}`);
  else {
    await guarded("layer, NCCL world size 1", async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-device-layer-"));
      const pg = await dist.initProcessGroup({
        backend: "nccl",
        rank: 0,
        worldSize: 1,
        store: `file://${dir}`,
        runId: "device-layer",
        device: dev,
        timeoutMs: 30000,
      });
      try {
        await layerCheck(pg, "layer, NCCL world 1");
      } finally {
        await pg.destroy();
      }
    });
  }
  if (!args.skipBench) await guarded("bench", bench);
  console.log(failures ? `${failures} FAIL` : "every case agrees");
  process.exit(failures ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
