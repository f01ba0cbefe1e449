// --mode bench: timings with CUDA events (warm-up, median) in a table with
// the limit beside each figure; denseTflops is the dense bf16 GEMM rate
// measured with PyTorch (NaN when unmeasured).
"use strict";
const fs = require("fs");
const path = require("path");
const { moe, normal, experts, tiedWeights, range, dispose, withGemmKernel } = require("./common");

const { Tensor, ops, formatInfo, DeviceEvent } = moe;
const native = require(path.join(__dirname, "..", "..", "dist", "native")).loadNative();
/** The device under measurement, set by the mode's entry below. */
let dev;

function median(a) {
  const s = [...a].sort((p, q) => p - q);
  return s[Math.floor(s.length / 2)];
}
/** Median ms of an op between two events on the device, after warm-up; outputs disposed. */
async function timeOp(fn, reps = 9) {
  for (let i = 0; i < 3; i++) dispose(await fn());
  const ms = [];
  for (let i = 0; i < reps; i++) {
    const start = await DeviceEvent.record(dev);
    const out = await fn();
    const end = await DeviceEvent.record(dev);
    ms.push(await end.elapsedMs(start));
    dispose(out);
  }
  return median(ms);
}

/** Times each op on `device`, prints the table and writes it to `out` when given; resolves with 0. */
module.exports = async function bench(device, { denseTflops, out }) {
  dev = device;
  const rows = [];
  const row = (op, shape, median, figure, limit, ratio, target) =>
    rows.push({ op, shape, median, figure, limit, ratio, target });
  const pct = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${((100 * a) / b).toFixed(0)}%` : "—");

  const copy = await native.cudaCopyRate({ device: dev, bytes: 512 * 2 ** 20, reps: 10, batches: 7 });
  row("d2d copy (limit)", "512 MiB", `${copy.medianUs.toFixed(1)} µs`, `${copy.gbps.toFixed(0)} GB/s`, "—", "—", "");

  const rk = await native.cudaRouteKernel({ device: dev, tokens: 8192, experts: 64, topK: 8, reps: 20, batches: 9 });
  row(
    "route kernel",
    "8192 x 64, top-8",
    `${rk.medianUs.toFixed(1)} µs`,
    `${rk.medianUs.toFixed(1)} µs`,
    "20 µs",
    `${(rk.medianUs / 20).toFixed(2)}x`,
    rk.medianUs < 20 ? "met" : "MISSED",
  );
  // The floor of an op's timing here: host dispatch and two event records
  // around the smallest launch (one token).
  {
    const r1 = await Tensor.from(normal(1 * 8), [1, 8], { dtype: "bfloat16" }).to(dev);
    const m1 = await Tensor.from(new Int32Array([0]), [1, 1]).to(dev);
    const w1 = await Tensor.from([1], [1, 1]).to(dev);
    const floorMs = await timeOp(() => ops.unpermute(r1, m1, w1));
    row("op floor (unpermute, 1 token)", "1 x 8 bf16", `${(1000 * floorMs).toFixed(1)} µs`, "", "—", "—", "");
    dispose([r1, m1, w1]);
  }
  const L = await Tensor.from(normal(8192 * 64, 2), [8192, 64]).to(dev);
  const routeMs = await timeOp(() => ops.route(L, { topK: 8, renormalize: true }));
  row(
    "route op (allocs + launches)",
    "8192 x 64, top-8",
    `${(1000 * routeMs).toFixed(1)} µs`,
    "",
    "20 µs",
    `${((1000 * routeMs) / 20).toFixed(2)}x`,
    "",
  );

  // Mixtral-like rows: 8192 tokens, dModel 4096, top-2 of 8, bfloat16.
  const [T, D, k, E] = [8192, 4096, 2, 8];
  const X = await Tensor.from(normal(T * D), [T, D], { dtype: "bfloat16" }).to(dev);
  const I = await Tensor.from(experts(T, k, range(E)), [T, k]).to(dev);
  const W = await Tensor.from(tiedWeights(T * k), [T, k]).to(dev);
  const shape = `${T} x ${D} bf16, top-${k} of ${E}`;
  const rowBytes = D * 2;
  const moved = (rowsRead, rowsWritten) => (rowsRead + rowsWritten) * rowBytes;
  const gbps = (bytes, ms) => bytes / (ms * 1e-3) / 1e9;
  const permMs = await timeOp(() => ops.permute(X, I, W, { numExperts: E }));
  let g = gbps(moved(T * k, T * k), permMs);
  row(
    "permute (dropless)",
    shape,
    `${permMs.toFixed(3)} ms`,
    `${g.toFixed(0)} GB/s`,
    `${copy.gbps.toFixed(0)} GB/s`,
    pct(g, copy.gbps),
    g >= 0.5 * copy.gbps ? "met" : "MISSED",
  );
  const permCapMs = await timeOp(() =>
    ops.permute(X, I, W, { numExperts: E, capacityFactor: 1.25, dropPolicy: "probs" }),
  );
  g = gbps(moved(T * k, T * k), permCapMs);
  row(
    "permute (capacity 1.25, probs)",
    shape,
    `${permCapMs.toFixed(3)} ms`,
    `${g.toFixed(0)} GB/s`,
    `${copy.gbps.toFixed(0)} GB/s`,
    pct(g, copy.gbps),
    g >= 0.5 * copy.gbps ? "met" : "MISSED",
  );
  const p = await ops.permute(X, I, W, { numExperts: E });
  const unMs = await timeOp(() => ops.unpermute(p.rows, p.pairToRow, W));
  g = gbps(moved(T * k, T), unMs);
  row(
    "unpermute (weighted combine)",
    shape,
    `${unMs.toFixed(3)} ms`,
    `${g.toFixed(0)} GB/s`,
    `${copy.gbps.toFixed(0)} GB/s`,
    pct(g, copy.gbps),
    g >= 0.5 * copy.gbps ? "met" : "MISSED",
  );
  const pbMs = await timeOp(() => ops.permuteBackward(p.rows, p.pairToRow));
  g = gbps(moved(T * k, T), pbMs);
  row(
    "permuteBackward",
    shape,
    `${pbMs.toFixed(3)} ms`,
    `${g.toFixed(0)} GB/s`,
    `${copy.gbps.toFixed(0)} GB/s`,
    pct(g, copy.gbps),
    "",
  );
  const ubMs = await timeOp(() => ops.unpermuteBackward(X, p.rows, p.pairToRow, W));
  g = gbps(moved(2 * T * k, T * k), ubMs); // dRows: dy read per pair + written; dWeights: rows read
  row(
    "unpermuteBackward",
    shape,
    `${ubMs.toFixed(3)} ms`,
    `${g.toFixed(0)} GB/s`,
    `${copy.gbps.toFixed(0)} GB/s`,
    pct(g, copy.gbps),
    "",
  );

  const H = await Tensor.from(normal(1024 * 2 * 14336), [1024, 2 * 14336], { dtype: "bfloat16" }).to(dev);
  const actMs = await timeOp(() => ops.activation(H, "swiglu"));
  g = gbps(H.numel * 2 + (H.numel / 2) * 2, actMs);
  row(
    "swiglu",
    `${H.shape.join(" x ")} bf16`,
    `${actMs.toFixed(3)} ms`,
    `${g.toFixed(0)} GB/s`,
    `${copy.gbps.toFixed(0)} GB/s`,
    pct(g, copy.gbps),
    "",
  );
  const n = 16 * 2 ** 20;
  const P = await Tensor.from(normal(n), [n], { dtype: "bfloat16" }).to(dev);
  const G = await Tensor.from(normal(n), [n], { dtype: "bfloat16" }).to(dev);
  const M = await Tensor.zeros([n]).to(dev);
  const V = await Tensor.zeros([n]).to(dev);
  let step = 1;
  const adamMs = await timeOp(() => ops.adamw(P, G, M, V, { lr: 1e-4, step: step++ }));
  g = gbps(n * (2 + 2 + 2 + 8 + 8), adamMs);
  row(
    "adamw",
    `${n} bf16 params`,
    `${adamMs.toFixed(3)} ms`,
    `${g.toFixed(0)} GB/s`,
    `${copy.gbps.toFixed(0)} GB/s`,
    pct(g, copy.gbps),
    "",
  );

  const gx = await Tensor.from(normal(8192 * 4096), [8192, 4096], { dtype: "bfloat16" }).to(dev);
  const gw = await Tensor.from(normal(4096 * 64, 0.02), [4096, 64]).to(dev);
  const gateMs = await timeOp(() => ops.gate(gx, gw));
  const gateTflops = (2 * 8192 * 4096 * 64) / (gateMs * 1e-3) / 1e12;
  row(
    "gate (fp32 SIMT)",
    "8192 x 4096 x 64",
    `${gateMs.toFixed(3)} ms`,
    `${gateTflops.toFixed(2)} TFLOP/s`,
    "—",
    "—",
    "",
  );

  const dense = denseTflops;
  const denseText = Number.isFinite(dense)
    ? `${dense.toFixed(0)} TFLOP/s dense bf16 (PyTorch)`
    : "dense rate unmeasured";
  {
    // Timing inputs: a block of normal values repeated (drawing 10^9 normals in JS would take minutes).
    const tiled = (n, std) => {
      const a = new Float32Array(n);
      a.set(normal(Math.min(n, 1 << 16), std));
      for (let have = Math.min(n, 1 << 16); have < n; have *= 2) a.copyWithin(have, 0, Math.min(have, n - have));
      return a;
    };
    const [Lg, Rg, Kg, Ng] = [8, 4096, 4096, 14336];
    const xg = await Tensor.from(tiled(Lg * Rg * Kg, 1), [Lg * Rg, Kg], { dtype: "bfloat16" }).to(dev);
    const wgt = await Tensor.from(tiled(Lg * Kg * Ng, 0.02), [Lg, Kg, Ng], { dtype: "bfloat16" }).to(dev);
    const cg = await Tensor.from(new Int32Array(Lg).fill(Rg), [Lg]).to(dev);
    const dyg = await Tensor.from(tiled(Lg * Rg * Ng, 1), [Lg * Rg, Ng], { dtype: "bfloat16" }).to(dev);
    const flops = 2 * Lg * Rg * Kg * Ng;
    for (const [name, fn] of [
      ["grouped GEMM forward", () => ops.groupedGemm(xg, wgt, cg)],
      ["grouped GEMM dX", () => ops.groupedGemmBackward(dyg, xg, wgt, cg, { needDw: false })],
      ["grouped GEMM dW", () => ops.groupedGemmBackward(dyg, xg, wgt, cg, { needDx: false })],
    ]) {
      const ms = await timeOp(fn, 5);
      const tf = flops / (ms * 1e-3) / 1e12;
      row(
        name,
        "8 x 4096 rows, 4096 x 14336",
        `${ms.toFixed(3)} ms`,
        `${tf.toFixed(0)} TFLOP/s`,
        denseText,
        Number.isFinite(dense) ? pct(tf, dense) : "—",
        Number.isFinite(dense) ? (tf >= 0.6 * dense ? "met" : "MISSED") : "target 60%",
      );
    }
    // The mma.sync kernel (what GPUs before Hopper run), forward only: a figure, not a target here.
    const ms80 = await withGemmKernel("sm80", () => timeOp(() => ops.groupedGemm(xg, wgt, cg), 5));
    const tf80 = flops / (ms80 * 1e-3) / 1e12;
    row(
      "grouped GEMM forward, mma.sync kernel",
      "same",
      `${ms80.toFixed(3)} ms`,
      `${tf80.toFixed(0)} TFLOP/s`,
      denseText,
      Number.isFinite(dense) ? pct(tf80, dense) : "—",
      "",
    );
    dispose([xg, wgt, cg, dyg]);
  }

  const cols = ["op", "shape", "median", "figure", "limit", "ratio", "target"];
  const width = cols.map((c) => Math.max(c.length, ...rows.map((r) => String(r[c]).length)));
  const line = (r) =>
    cols
      .map((c, i) => String(r[c]).padEnd(width[i]))
      .join("  ")
      .trimEnd();
  const table = [
    line(Object.fromEntries(cols.map((c) => [c, c]))),
    width.map((w) => "-".repeat(w)).join("  "),
    ...rows.map(line),
  ].join("\n");
  const header = `moe-ep device check, ${new Date().toISOString()}\n${formatInfo()}\n`;
  console.log(`\n${table}`);
  if (out) fs.writeFileSync(out, `${header}\n${table}\n`);
  dispose([L, X, I, W, p, H, P, G, M, V, gx, gw]);
  return 0;
};
