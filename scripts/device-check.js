#!/usr/bin/env node
/**
 * The GPU check's node part (scripts/device-check.sh runs it three ways):
 *
 *   --mode check      every CUDA op against the CPU op on fresh random inputs
 *                     at several shapes, edge cases included; a #wrong count
 *                     per case (exit 1 if any is wrong); then the NCCL
 *                     process group at world size 1 (skipped, with the
 *                     reason, when NCCL is unavailable)
 *   --mode sanitize   one small case of every kernel, for compute-sanitizer
 *   --mode bench      timings with CUDA events (warm-up, median) in a table
 *                     with the limit beside each figure; --dense-tflops gives
 *                     the dense bf16 GEMM rate measured with PyTorch
 *   --out FILE        also write the table (bench) or the case list (check) there
 *   --device cuda:N   default cuda:0; MOE_EP_CHECK_SEED fixes the inputs
 *
 * Plain node on the built package (./dist and the addon): no jest, no npm.
 * Exits 2, saying why, when CUDA is unavailable.
 */
"use strict";
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..");

function parseArgs(argv) {
  const a = { mode: "check", device: "cuda:0", denseTflops: NaN, out: "" };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i + 1];
    if (argv[i] === "--mode") {
      a.mode = v;
      i++;
    } else if (argv[i] === "--device") {
      a.device = v;
      i++;
    } else if (argv[i] === "--dense-tflops") {
      a.denseTflops = Number(v);
      i++;
    } else if (argv[i] === "--out") {
      a.out = v;
      i++;
    } else {
      console.error(`device-check: unknown argument "${argv[i]}"`);
      process.exit(64);
    }
  }
  if (!["check", "sanitize", "bench"].includes(a.mode)) {
    console.error(`device-check: expected --mode check, sanitize or bench but received "${a.mode}"`);
    process.exit(64);
  }
  return a;
}

const args = parseArgs(process.argv.slice(2));

let moe;
try {
  moe = require(path.join(root, "dist"));
} catch (e) {
  console.error(`device-check: cannot load ${path.join(root, "dist")}: ${e.message.split("\n")[0]}`);
  console.error("  build it first: npx tsc -p tsconfig.build.json (scripts/device-pack.sh does)");
  process.exit(3);
}
const { Tensor, ops, info, formatInfo, synchronize, DeviceEvent, memoryStats } = moe;

const status = info();
if (!status.cuda.available) {
  console.error(
    `device-check: CUDA unavailable: ${status.cuda.reason}${status.cuda.built ? ` (addon built for ${status.cuda.archs})` : ""}`,
  );
  process.exit(2);
}
const native = require(path.join(root, "dist", "native")).loadNative();
const DEV = args.device;

// ---- data ---------------------------------------------------------------------------
const seed0 = Number(process.env.MOE_EP_CHECK_SEED ?? Date.now() % 1000000007);
let seedNext = seed0;
function rng() {
  let a = (seedNext = (seedNext + 0x9e3779b9) >>> 0);
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function normal(n, std = 1) {
  const r = rng();
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const m = std * Math.sqrt(-2 * Math.log(Math.max(r(), 1e-12)));
    const v = 2 * Math.PI * r();
    out[i] = m * Math.cos(v);
    if (i + 1 < n) out[i + 1] = m * Math.sin(v);
  }
  return out;
}
/** k distinct experts per token from `allowed`, skewed toward its start. */
function experts(t, k, allowed) {
  const r = rng();
  const out = new Int32Array(t * k);
  for (let i = 0; i < t; i++) {
    const pool = allowed.slice();
    for (let j = 0; j < k; j++) out[i * k + j] = pool.splice(Math.floor(pool.length * r() * r()), 1)[0];
  }
  return out;
}
/** Weights with ties: a few distinct values. */
function tiedWeights(n) {
  const r = rng();
  return Float32Array.from({ length: n }, () => Math.floor(r() * 6) / 8);
}
const range = (n) => Array.from({ length: n }, (_, i) => i);

function dispose(v) {
  if (v instanceof Tensor) v.dispose();
  else if (v && typeof v === "object") for (const x of Object.values(v)) dispose(x);
}

// ---- comparison (check mode) ---------------------------------------------------------
const results = [];
function record(op, shape, wrong, detail) {
  results.push({ op, shape, wrong, detail });
  console.log(
    `${wrong === 0 ? "ok  " : "FAIL"} ${op.padEnd(28)} ${shape.padEnd(34)} #wrong ${String(wrong).padStart(6)}  ${detail}`,
  );
}
function bits(t) {
  return Buffer.from(t.handle.read(t.dtype));
}
/** Elements of a float tensor pair off by more than tol relative to max |cpu|; and that max relative error. */
function floatWrong(gpu, cpu, tol = 2e-2) {
  const a = gpu.toFloat32();
  const b = cpu.toFloat32();
  if (a.length !== b.length) return { wrong: Math.max(a.length, b.length), rel: Infinity };
  let den = 1e-6;
  for (const v of b) den = Math.max(den, Math.abs(v));
  let wrong = 0;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]) / den;
    if (!(d <= tol)) wrong++;
    if (!(d <= worst)) worst = d;
  }
  return { wrong, rel: worst };
}
function intWrong(gpu, cpu) {
  const a = gpu.toInt32();
  const b = cpu.toInt32();
  if (a.length !== b.length) return Math.max(a.length, b.length);
  let w = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) w++;
  return w;
}
function shapeOf(o) {
  return Object.entries(o)
    .map(([k, v]) => `${k}=${v}`)
    .join(" ");
}
async function both(make) {
  const cpu = make();
  const gpu = await Promise.all(cpu.map((t) => (t ? t.to(DEV) : t)));
  return { cpu, gpu };
}

async function checkGate(t, d, e) {
  const shape = shapeOf({ T: t, D: d, E: e });
  const { cpu, gpu } = await both(() => [
    Tensor.from(normal(t * d), [t, d], { dtype: "bfloat16" }),
    Tensor.from(normal(d * e, 0.05), [d, e]),
    Tensor.from(normal(t * e), [t, e]),
  ]);
  const [lc, lg] = [await ops.gate(cpu[0], cpu[1]), await ops.gate(gpu[0], gpu[1])];
  const f = floatWrong(lg, lc);
  record("gate", shape, f.wrong, `rel ${f.rel.toExponential(2)}`);
  const [gc, gg] = [await ops.gateBackward(cpu[0], cpu[1], cpu[2]), await ops.gateBackward(gpu[0], gpu[1], gpu[2])];
  const dx = floatWrong(gg.dx, gc.dx);
  const dw = floatWrong(gg.dwg, gc.dwg);
  record(
    "gateBackward",
    shape,
    dx.wrong + dw.wrong,
    `rel dx ${dx.rel.toExponential(2)} dwg ${dw.rel.toExponential(2)}`,
  );
  dispose([cpu, gpu, lc, lg, gc, gg]);
}

async function checkRoute(t, e, o) {
  const shape = shapeOf({
    T: t,
    E: e,
    k: o.topK,
    ...(o.scoreFunction ? { f: o.scoreFunction } : {}),
    ...(o.numGroups ? { G: o.numGroups } : {}),
  });
  const { cpu, gpu } = await both(() => [
    Tensor.from(normal(t * e, 2), [t, e]),
    Tensor.from(normal(t * o.topK), [t, o.topK]),
  ]);
  const rc = await ops.route(cpu[0], o);
  const rg = await ops.route(gpu[0], o);
  // An index differing from the CPU's counts as wrong unless the two experts'
  // scores are within float32 resolution of each other (a near tie).
  const ic = rc.indices.toInt32();
  const ig = rg.indices.toInt32();
  const sc = rc.scores.toFloat32();
  let wrongIdx = 0;
  let ties = 0;
  for (let i = 0; i < ic.length; i++) {
    if (ic[i] === ig[i]) continue;
    const row = Math.floor(i / o.topK) * e;
    const a = sc[row + ic[i]];
    const b = sc[row + (ig[i] >= 0 && ig[i] < e ? ig[i] : ic[i])];
    if (ig[i] >= 0 && ig[i] < e && Math.abs(a - b) <= 4e-7 * Math.max(Math.abs(a), 1e-30)) ties++;
    else wrongIdx++;
  }
  const w = floatWrong(rg.weights, rc.weights);
  const s = floatWrong(rg.scores, rc.scores);
  const tpeWrong = ties ? 0 : intWrong(rg.tokensPerExpert, rc.tokensPerExpert);
  const aux = floatWrong(rg.auxLoss, rc.auxLoss);
  const z = floatWrong(rg.zLoss, rc.zLoss);
  record(
    "route",
    shape,
    wrongIdx + (ties ? 0 : w.wrong) + s.wrong + tpeWrong + aux.wrong + z.wrong,
    `near-ties ${ties}, rel w ${w.rel.toExponential(2)} s ${s.rel.toExponential(2)} aux ${aux.rel.toExponential(2)} z ${z.rel.toExponential(2)}`,
  );
  // Backward from the CPU's choices on both sides.
  const bo = { scoreFunction: o.scoreFunction, renormalize: o.renormalize, auxLossGrad: 0.01, zLossGrad: 0.001 };
  const idxG = await rc.indices.to(DEV);
  const tpeG = await rc.tokensPerExpert.to(DEV);
  const dc = await ops.routeBackward(cpu[0], rc.indices, rc.tokensPerExpert, cpu[1], bo);
  const dg = await ops.routeBackward(gpu[0], idxG, tpeG, gpu[1], bo);
  const d = floatWrong(dg, dc);
  record("routeBackward", shape, d.wrong, `rel ${d.rel.toExponential(2)}`);
  dispose([cpu, gpu, rc, rg, idxG, tpeG, dc, dg]);
}

async function checkPermute(name, t, d, k, e, allowed, o) {
  const shape = `${name} ${shapeOf({ T: t, D: d, k, E: e })}`;
  const { cpu, gpu } = await both(() => [
    Tensor.from(normal(t * d), [t, d], { dtype: "bfloat16" }),
    Tensor.from(experts(t, k, allowed), [t, k]),
    Tensor.from(tiedWeights(t * k), [t, k]),
  ]);
  const opts = { numExperts: e, ...o };
  const pc = await ops.permute(cpu[0], cpu[1], cpu[2], opts);
  const pg = await ops.permute(gpu[0], gpu[1], gpu[2], opts);
  const pg2 = await ops.permute(gpu[0], gpu[1], gpu[2], opts);
  const maps =
    intWrong(pg.pairToRow, pc.pairToRow) +
    intWrong(pg.rowToPair, pc.rowToPair) +
    intWrong(pg.rowsPerExpert, pc.rowsPerExpert);
  const rowsExact = bits(pg.rows).equals(bits(pc.rows));
  const repeat = bits(pg.rows).equals(bits(pg2.rows)) && bits(pg.pairToRow).equals(bits(pg2.pairToRow));
  const counts = (pg.dropped === pc.dropped ? 0 : 1) + (pg.capacity === pc.capacity ? 0 : 1);
  record(
    "permute",
    shape,
    maps + (rowsExact ? 0 : 1) + (repeat ? 0 : 1) + counts,
    `R ${pc.rowToPair.shape[0]} dropped ${pg.dropped}/${pc.dropped} rows ${rowsExact ? "bit-exact" : "DIFFER"} repeat ${repeat ? "bit-exact" : "DIFFERS"}`,
  );

  // The rest from the CPU's maps on both sides (so a permute error does not cascade).
  const R = pc.rowToPair.shape[0];
  const p2rG = await pc.pairToRow.to(DEV);
  const rowsG = await pc.rows.to(DEV);
  const { cpu: c2, gpu: g2 } = await both(() => [
    Tensor.from(normal(R * d), [R, d], { dtype: "bfloat16" }),
    Tensor.from(normal(t * d), [t, d], { dtype: "bfloat16" }),
  ]);
  const bc = await ops.permuteBackward(c2[0], pc.pairToRow);
  const bg = await ops.permuteBackward(g2[0], p2rG);
  let f = floatWrong(bg, bc);
  record("permuteBackward", shape, f.wrong, `rel ${f.rel.toExponential(2)}`);
  const yc = await ops.unpermute(pc.rows, pc.pairToRow, cpu[2]);
  const yg = await ops.unpermute(rowsG, p2rG, gpu[2]);
  const yg2 = await ops.unpermute(rowsG, p2rG, gpu[2]);
  f = floatWrong(yg, yc);
  const same = bits(yg).equals(bits(yg2));
  record(
    "unpermute",
    shape,
    f.wrong + (same ? 0 : 1),
    `rel ${f.rel.toExponential(2)} repeat ${same ? "bit-exact" : "DIFFERS"}`,
  );
  const uc = await ops.unpermuteBackward(c2[1], pc.rows, pc.pairToRow, cpu[2]);
  const ug = await ops.unpermuteBackward(g2[1], rowsG, p2rG, gpu[2]);
  const dr = floatWrong(ug.dRows, uc.dRows);
  const dw = floatWrong(ug.dWeights, uc.dWeights);
  record(
    "unpermuteBackward",
    shape,
    dr.wrong + dw.wrong,
    `rel dRows ${dr.rel.toExponential(2)} dWeights ${dw.rel.toExponential(2)}`,
  );
  dispose([cpu, gpu, pc, pg, pg2, p2rG, rowsG, c2, g2, bc, bg, yc, yg, yg2, uc, ug]);
}

// A row map that no permute makes: rows read by several pairs (summed in
// flat order by unpermuteBackward), rows read by none, dropped pairs.
async function checkSharedRows(t, d, k, r) {
  const shape = `shared rows ${shapeOf({ T: t, D: d, k, R: r })}`;
  const next = rng();
  const map = Int32Array.from({ length: t * k }, () => Math.floor(next() * (r + 1)) - 1);
  const { cpu, gpu } = await both(() => [
    Tensor.from(normal(r * d), [r, d], { dtype: "bfloat16" }),
    Tensor.from(map, [t, k]),
    Tensor.from(normal(t * k), [t, k]),
    Tensor.from(normal(t * d), [t, d], { dtype: "bfloat16" }),
  ]);
  const yc = await ops.unpermute(cpu[0], cpu[1], cpu[2]);
  const yg = await ops.unpermute(gpu[0], gpu[1], gpu[2]);
  const bc = await ops.permuteBackward(cpu[0], cpu[1]);
  const bg = await ops.permuteBackward(gpu[0], gpu[1]);
  const uc = await ops.unpermuteBackward(cpu[3], cpu[0], cpu[1], cpu[2]);
  const ug = await ops.unpermuteBackward(gpu[3], gpu[0], gpu[1], gpu[2]);
  const ug2 = await ops.unpermuteBackward(gpu[3], gpu[0], gpu[1], gpu[2]);
  const a = floatWrong(yg, yc);
  const b = floatWrong(bg, bc);
  const dr = floatWrong(ug.dRows, uc.dRows);
  const dw = floatWrong(ug.dWeights, uc.dWeights);
  const same = bits(ug.dRows).equals(bits(ug2.dRows)) && bits(ug.dWeights).equals(bits(ug2.dWeights));
  record(
    "unpermute family",
    shape,
    a.wrong + b.wrong + dr.wrong + dw.wrong + (same ? 0 : 1),
    `rel y ${a.rel.toExponential(2)} dx ${b.rel.toExponential(2)} dRows ${dr.rel.toExponential(2)} dWeights ${dw.rel.toExponential(2)} repeat ${same ? "bit-exact" : "DIFFERS"}`,
  );
  dispose([cpu, gpu, yc, yg, bc, bg, uc, ug, ug2]);
}

async function checkActivation(kind, rows, width) {
  const out = kind === "swiglu" || kind === "geglu" ? width / 2 : width;
  const shape = shapeOf({ kind, rows, width });
  const { cpu, gpu } = await both(() => [
    Tensor.from(normal(rows * width, 2), [rows, width], { dtype: "bfloat16" }),
    Tensor.from(normal(rows * out), [rows, out], { dtype: "bfloat16" }),
  ]);
  const hc = await ops.activation(cpu[0], kind);
  const hg = await ops.activation(gpu[0], kind);
  const dc = await ops.activationBackward(cpu[1], cpu[0], kind);
  const dg = await ops.activationBackward(gpu[1], gpu[0], kind);
  const a = floatWrong(hg, hc);
  const b = floatWrong(dg, dc);
  record(
    "activation+backward",
    shape,
    a.wrong + b.wrong,
    `rel h ${a.rel.toExponential(2)} dx ${b.rel.toExponential(2)}`,
  );
  dispose([cpu, gpu, hc, hg, dc, dg]);
}

// Runs fn with the grouped GEMM kernel `kernel` (MOE_EP_GG_KERNEL: "auto", the
// best for the device, wgmma on Hopper; "sm80", the mma.sync kernel, which a
// Hopper GPU runs only when asked), then goes back to "auto".
async function withGemmKernel(kernel, fn) {
  process.env.MOE_EP_GG_KERNEL = kernel;
  try {
    return await fn();
  } finally {
    process.env.MOE_EP_GG_KERNEL = "auto";
  }
}

// Grouped GEMM: bf16 operands, counts on the device; dW compared in float32.
async function checkGroupedGemm(name, counts, k, n, kernel = "auto") {
  const rows = counts.reduce((a, b) => a + b, 0);
  const L = counts.length;
  const shape = shapeOf({ case: name, L, R: rows, K: k, N: n });
  const { cpu, gpu } = await both(() => [
    Tensor.from(normal(rows * k), [rows, k], { dtype: "bfloat16" }),
    Tensor.from(normal(L * k * n, 1 / Math.sqrt(k)), [L, k, n], { dtype: "bfloat16" }),
    Tensor.from(Int32Array.from(counts), [L]),
    Tensor.from(normal(rows * n), [rows, n], { dtype: "bfloat16" }),
  ]);
  const yc = await ops.groupedGemm(cpu[0], cpu[1], cpu[2]);
  const gc = await ops.groupedGemmBackward(cpu[3], cpu[0], cpu[1], cpu[2]);
  const [yg, gg] = await withGemmKernel(kernel, async () => [
    await ops.groupedGemm(gpu[0], gpu[1], gpu[2]),
    await ops.groupedGemmBackward(gpu[3], gpu[0], gpu[1], gpu[2]),
  ]);
  const y = floatWrong(yg, yc);
  const dx = floatWrong(gg.dx, gc.dx);
  const dw = floatWrong(gg.dw, gc.dw);
  record(
    kernel === "sm80" ? "groupedGemm+backward mma.sync" : "groupedGemm+backward",
    shape,
    y.wrong + dx.wrong + dw.wrong,
    `rel y ${y.rel.toExponential(2)} dx ${dx.rel.toExponential(2)} dw ${dw.rel.toExponential(2)}`,
  );
  dispose([cpu, gpu, yc, yg, gc, gg]);
}

async function checkAdamw(n) {
  const { cpu, gpu } = await both(() => [
    Tensor.from(normal(n), [n], { dtype: "bfloat16" }),
    Tensor.zeros([n]),
    Tensor.zeros([n]),
  ]);
  for (let step = 1; step <= 3; step++) {
    const g = Tensor.from(normal(n), [n], { dtype: "bfloat16" });
    const gg = await g.to(DEV);
    await ops.adamw(cpu[0], g, cpu[1], cpu[2], { lr: 1e-3, weightDecay: 0.1, step });
    await ops.adamw(gpu[0], gg, gpu[1], gpu[2], { lr: 1e-3, weightDecay: 0.1, step });
    dispose([g, gg]);
  }
  const p = floatWrong(gpu[0], cpu[0]);
  const m = floatWrong(gpu[1], cpu[1], 1e-5);
  const v = floatWrong(gpu[2], cpu[2], 1e-5);
  record(
    "adamw (3 steps)",
    shapeOf({ n }),
    p.wrong + m.wrong + v.wrong,
    `rel p ${p.rel.toExponential(2)} m ${m.rel.toExponential(2)} v ${v.rel.toExponential(2)}`,
  );
  dispose([cpu, gpu]);
}

async function checkErrors() {
  // A NaN in the router's input: the gate resolves, the next synchronisation rejects naming it.
  const x = normal(64);
  x[5] = NaN;
  const X = await Tensor.from(x, [8, 8]).to(DEV);
  const W = await Tensor.from(normal(32), [8, 4]).to(DEV);
  let got = "";
  try {
    await ops.gate(X, W);
    await synchronize();
  } catch (e) {
    got = `${e.code} ${e.message}`;
  }
  record(
    "error: NaN -> gate",
    "T=8 D=8 E=4",
    /^ERR_MOE_NONFINITE gate: .*element 5\b/.test(got) ? 0 : 1,
    got || "no error",
  );
  // An index out of range (dropless: reported at the next synchronisation).
  const I = await Tensor.from(new Int32Array([0, 1, 7, 2]), [4, 1]).to(DEV);
  const Wt = await Tensor.from([1, 1, 1, 1], [4, 1]).to(DEV);
  got = "";
  try {
    const X4 = await Tensor.from(normal(16), [4, 4]).to(DEV);
    dispose([X4, await ops.permute(X4, I, Wt, { numExperts: 4 })]);
    await synchronize();
  } catch (e) {
    got = `${e.code} ${e.message}`;
  }
  record(
    "error: index -> permute",
    "T=4 k=1 E=4",
    /^ERR_MOE_VALUE permute: .*element 2\b/.test(got) ? 0 : 1,
    got || "no error",
  );
  // The device works afterwards.
  const ok = await ops.gate(await Tensor.from(normal(64), [8, 8]).to(DEV), W);
  record("device usable after errors", "", ok.toFloat32().every(Number.isFinite) ? 0 : 1, "");
  dispose([X, W, I, Wt, ok]);
}

/** memoryStats once collected garbage has been finalized (node --expose-gc), so tensors dropped by earlier checks do not count. */
async function atRest() {
  for (let i = 0; i < 3 && global.gc; i++) {
    global.gc();
    await new Promise((r) => setTimeout(r, 0));
  }
  await synchronize();
  return memoryStats(DEV);
}

async function checkLeaks() {
  const before = await atRest();
  const L = await Tensor.from(normal(256 * 16), [256, 16]).to(DEV);
  const X = await Tensor.from(normal(256 * 32), [256, 32], { dtype: "bfloat16" }).to(DEV);
  for (let i = 0; i < 50; i++) {
    const r = await ops.route(L, { topK: 2 });
    const p = await ops.permute(X, r.indices, r.weights, { numExperts: 16, capacityFactor: 1.0 });
    const y = await ops.unpermute(p.rows, p.pairToRow, r.weights);
    dispose([r, p, y]);
  }
  dispose([L, X]);
  const after = await atRest();
  record(
    "no leak over 50 round trips",
    "",
    after.tensors === before.tensors && after.bytes === before.bytes ? 0 : 1,
    `tensors ${before.tensors} -> ${after.tensors}, bytes ${before.bytes} -> ${after.bytes}`,
  );
}

// ---- NCCL process group at world size 1 (check mode) -----------------------------------
// The NCCL backend of ProcessGroup on this one device: the all-to-all-v is a
// grouped ncclSend / ncclRecv to this rank itself after the count exchange;
// every reduction over one rank is the input. Expected values are the inputs.
async function checkNccl() {
  const { initProcessGroup, ncclStatus } = moe;
  const st = ncclStatus();
  if (!st.available) {
    console.log(`skip nccl process group (world size 1): NCCL unavailable: ${st.reason}`);
    return;
  }
  const dir = fs.mkdtempSync(path.join(require("os").tmpdir(), "moe-nccl-check-"));
  const store = `file://${dir}`;
  const errorOf = async (p) => {
    try {
      await p;
      return "no error";
    } catch (e) {
      return `${e.code} ${e.message}`;
    }
  };
  const diff = (a, b) => {
    if (a.length !== b.length) return Math.max(a.length, b.length);
    let w = 0;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) w++;
    return w;
  };
  let pg;
  try {
    pg = await initProcessGroup({
      backend: "nccl",
      rank: 0,
      worldSize: 1,
      store,
      runId: "device-check",
      device: DEV,
      timeoutMs: 30000,
    });
  } catch (e) {
    record("nccl: init (world 1)", `NCCL ${st.version}`, 1, `${e.code} ${e.message}`);
    return;
  }
  record("nccl: init (world 1)", `NCCL ${st.version}`, pg.backend === "nccl" && pg.size === 1 ? 0 : 1, pg.toString());
  for (const dtype of st.supportsBf16 ? ["float32", "bfloat16"] : ["float32"]) {
    for (const [rows, width] of [
      [0, 8],
      [1, 1],
      [5, 3],
      [4096, 1024],
    ]) {
      // rank-encoded rows (1000 * rank + row), exact in bf16 after % 256; made on the device by an op just before
      const host = Float32Array.from(
        { length: rows * width },
        (_, i) => (1000 * pg.rank + Math.floor(i / width)) % 256,
      );
      const X = await Tensor.from(host, [rows, width], { dtype }).to(DEV);
      const H = await ops.activation(X, "relu"); // enqueued from the CPU stream: the collective must come after it
      const r = await pg.allToAllV(H, [rows], { recvCounts: [rows] });
      const got = r.output.toFloat32();
      const wrong = diff(got, host) + (r.recvCounts[0] === rows ? 0 : 1);
      record("nccl: allToAllV to self", shapeOf({ dtype, rows, width }), wrong, `recvCounts ${r.recvCounts}`);
      dispose([X, H, r.output]);
    }
  }
  {
    const X = await Tensor.from(new Float32Array(6), [3, 2]).to(DEV);
    const got = await errorOf(pg.allToAllV(X, [3], { recvCounts: [2] }));
    const again = await errorOf(pg.allToAllV(X, [3]).then((r) => r.output.dispose()));
    record(
      "nccl: recvCounts mismatch",
      "sends 3, expects 2",
      /^ERR_MOE_COUNT_MISMATCH/.test(got) && again === "no error" ? 0 : 1,
      got,
    );
    const cpu = Tensor.from(new Float32Array(4), [4]);
    const dev = await errorOf(pg.allReduce(cpu));
    record("nccl: CPU tensor refused", "", /^ERR_MOE_DEVICE/.test(dev) ? 0 : 1, dev);
    dispose([X, cpu]);
  }
  {
    const C = await Tensor.from(Int32Array.from([12345]), [1], { dtype: "int32" }).to(DEV);
    const out = await pg.allToAll(C);
    record("nccl: allToAll int32 counts", "[1]", diff(out.toInt32(), [12345]), "");
    dispose([C, out]);
  }
  const data = normal(4099);
  for (const dtype of st.supportsBf16 ? ["float32", "bfloat16"] : ["float32"]) {
    const ref = Tensor.from(data, [4099], { dtype }).toFloat32();
    for (const op of ["sum", "avg", "max"]) {
      const T = await Tensor.from(data, [4099], { dtype }).to(DEV);
      await pg.allReduce(T, op);
      record("nccl: allReduce", shapeOf({ dtype, op, n: 4099 }), diff(T.toFloat32(), ref), "one rank: the input");
      dispose(T);
    }
    const B = await Tensor.from(data, [4099], { dtype }).to(DEV);
    await pg.broadcast(B, 0);
    record("nccl: broadcast", shapeOf({ dtype, n: 4099 }), diff(B.toFloat32(), ref), "");
    dispose(B);
  }
  const barrier = await errorOf(pg.barrier());
  record("nccl: barrier", "", barrier === "no error" ? 0 : 1, barrier);
  try {
    const { ep, expertDataParallel } = await pg.split({ epSize: 1 });
    let wrong = 0;
    for (const g of [ep, expertDataParallel]) {
      const T = await Tensor.from([1, 2, 3], [3]).to(DEV);
      await g.allReduce(T, "sum");
      wrong += diff(T.toFloat32(), [1, 2, 3]) + (g.size === 1 && g.backend === "nccl" ? 0 : 1);
      dispose(T);
    }
    record("nccl: split epSize 1", "ep + expert-data-parallel", wrong, `${ep} ${expertDataParallel}`);
    ep.destroy();
    expertDataParallel.destroy();
  } catch (e) {
    record("nccl: split epSize 1", "", 1, `${e.code} ${e.message}`);
  }
  {
    const before = await atRest();
    const X = await Tensor.from(normal(256 * 64), [256, 64], { dtype: "bfloat16" }).to(DEV);
    for (let i = 0; i < 100; i++) dispose((await pg.allToAllV(X, [256])).output);
    dispose(X);
    const after = await atRest();
    record(
      "nccl: no leak over 100 allToAllV",
      "",
      after.tensors === before.tensors && after.bytes === before.bytes ? 0 : 1,
      `tensors ${before.tensors} -> ${after.tensors}, bytes ${before.bytes} -> ${after.bytes}`,
    );
  }
  pg.destroy();
  const gone = await errorOf(pg.barrier());
  record("nccl: destroyed group refuses", "", /^ERR_MOE_DISPOSED/.test(gone) ? 0 : 1, gone);
}

async function check() {
  console.log(`inputs from seed ${seed0} (MOE_EP_CHECK_SEED=${seed0} repeats them)`);
  for (const [t, d, e] of [
    [1, 64, 8],
    [1000, 256, 64],
    [8192, 1024, 64],
  ])
    await checkGate(t, d, e);
  await checkRoute(1, 8, { topK: 2 });
  await checkRoute(8192, 64, { topK: 8, renormalize: true });
  await checkRoute(8192, 256, { topK: 8, scoreFunction: "sigmoid", renormalize: true, numGroups: 8, topkGroups: 4 });
  await checkRoute(4096, 8, { topK: 8 });
  await checkRoute(0, 16, { topK: 2 });
  await checkRoute(3000, 512, { topK: 4 });
  await checkPermute("one token", 1, 64, 1, 4, range(4), {});
  await checkPermute("dropless, empty experts", 4096, 256, 2, 8, range(4), {});
  await checkPermute("dropless, k = E", 512, 128, 8, 8, range(8), {});
  await checkPermute("position", 4096, 256, 2, 8, range(8), { capacityFactor: 1.0, dropPolicy: "position" });
  await checkPermute("probs", 4096, 256, 2, 8, range(8), { capacityFactor: 0.7, dropPolicy: "probs" });
  await checkPermute("probs, padded", 4096, 256, 2, 8, range(8), {
    capacityFactor: 1.25,
    dropPolicy: "probs",
    padToCapacity: true,
  });
  await checkPermute("all to one expert, probs", 2048, 64, 1, 8, [3], { capacityFactor: 2.0, dropPolicy: "probs" });
  await checkPermute("odd width", 333, 7, 3, 5, range(5), {});
  await checkPermute("8192 x 1024, top-8 of 64", 8192, 1024, 8, 64, range(64), {
    capacityFactor: 1.25,
    dropPolicy: "probs",
  });
  await checkSharedRows(300, 72, 3, 50);
  await checkSharedRows(257, 9, 2, 600);
  for (const kind of ["relu", "gelu", "silu", "swiglu", "geglu"]) await checkActivation(kind, 1024, 512);
  await checkActivation("swiglu", 3, 6);
  await checkGroupedGemm("zero-row experts", [0, 300, 0, 17, 129], 256, 512);
  await checkGroupedGemm("all rows on one expert", [0, 0, 1000, 0], 128, 136);
  await checkGroupedGemm("partial tiles", [1, 127, 129, 255], 72, 200);
  await checkGroupedGemm("one expert", [4096], 1024, 1024);
  await checkGroupedGemm("zero-row experts", [0, 300, 0, 17, 129], 256, 512, "sm80");
  await checkGroupedGemm("partial tiles", [1, 127, 129, 255], 72, 200, "sm80");
  await checkGroupedGemm("one expert", [4096], 1024, 1024, "sm80");
  await checkAdamw(1 << 20);
  await checkErrors();
  await checkLeaks();
  await checkNccl();
  const failed = results.filter((r) => r.wrong !== 0);
  console.log(`\n${results.length - failed.length} of ${results.length} cases agree with the CPU op`);
  if (args.out)
    fs.writeFileSync(
      args.out,
      results.map((r) => `${r.wrong === 0 ? "ok" : "FAIL"}\t${r.op}\t${r.shape}\t${r.wrong}\t${r.detail}`).join("\n") +
        "\n",
    );
  return failed.length === 0 ? 0 : 1;
}

// ---- sanitize mode: a small case of each kernel -----------------------------------------
async function sanitize() {
  const to = (t) => t.to(DEV);
  const x = await to(Tensor.from(normal(37 * 64), [37, 64], { dtype: "bfloat16" }));
  const wg = await to(Tensor.from(normal(64 * 64, 0.1), [64, 64]));
  const logits = await ops.gate(x, wg);
  const gg = await ops.gateBackward(x, wg, logits);
  const r = await ops.route(logits, {
    topK: 8,
    scoreFunction: "sigmoid",
    renormalize: true,
    numGroups: 8,
    topkGroups: 4,
  });
  const r2 = await ops.route(logits, { topK: 2, expertBias: await to(Tensor.from(normal(64, 0.01), [64])) });
  const dl = await ops.routeBackward(logits, r.indices, r.tokensPerExpert, r.weights, {
    scoreFunction: "sigmoid",
    renormalize: true,
    auxLossGrad: 0.01,
    zLossGrad: 0.001,
  });
  const outs = [logits, gg, r, r2, dl];
  for (const o of [
    {},
    { capacityFactor: 0.5, dropPolicy: "position" },
    { capacityFactor: 0.5, dropPolicy: "probs" },
    { capacityFactor: 1.5, dropPolicy: "probs", padToCapacity: true },
  ]) {
    const p = await ops.permute(x, r.indices, r.weights, { numExperts: 64, ...o });
    const y = await ops.unpermute(p.rows, p.pairToRow, r.weights);
    const b = await ops.permuteBackward(p.rows, p.pairToRow);
    const u = await ops.unpermuteBackward(y, p.rows, p.pairToRow, r.weights);
    outs.push(p, y, b, u);
  }
  const odd = await to(Tensor.from(normal(5 * 7), [5, 7]));
  const p3 = await ops.permute(
    odd,
    await to(Tensor.from(new Int32Array([0, 1, 2, 0, 1]), [5, 1])),
    await to(Tensor.from([1, 1, 1, 1, 1], [5, 1])),
    { numExperts: 3 },
  );
  outs.push(
    p3,
    await ops.unpermuteBackward(
      await ops.unpermute(p3.rows, p3.pairToRow, await to(Tensor.from([1, 1, 1, 1, 1], [5, 1]))),
      p3.rows,
      p3.pairToRow,
      await to(Tensor.from([1, 1, 1, 1, 1], [5, 1])),
    ),
  );
  {
    // Rows read by several pairs and by none (unpermuteBackward's row pass).
    const map = await to(
      Tensor.from(
        Int32Array.from({ length: 37 * 2 }, (_, i) => ((i * 7) % 21) - 1),
        [37, 2],
      ),
    );
    const rw = await to(Tensor.from(normal(37 * 2), [37, 2]));
    const rows = await to(Tensor.from(normal(20 * 64), [20, 64], { dtype: "bfloat16" }));
    outs.push(map, rw, rows, await ops.unpermuteBackward(x, rows, map, rw));
  }
  for (const kind of ["relu", "gelu", "silu", "swiglu", "geglu"]) {
    const h = await ops.activation(x, kind);
    outs.push(h, await ops.activationBackward(h, x, kind));
  }
  const gx = await to(Tensor.from(normal(70 * 64), [70, 64], { dtype: "bfloat16" }));
  const gw = await to(Tensor.from(normal(3 * 64 * 136, 0.1), [3, 64, 136], { dtype: "bfloat16" }));
  const gcnt = await to(Tensor.from(new Int32Array([33, 0, 37]), [3]));
  for (const kernel of ["auto", "sm80"]) {
    await withGemmKernel(kernel, async () => {
      const gy = await ops.groupedGemm(gx, gw, gcnt);
      outs.push(gy, await ops.groupedGemmBackward(gy, gx, gw, gcnt));
    });
  }
  const param = await to(Tensor.from(normal(1000), [1000], { dtype: "bfloat16" }));
  await ops.adamw(
    param,
    await to(Tensor.from(normal(1000), [1000])),
    await to(Tensor.zeros([1000])),
    await to(Tensor.zeros([1000])),
    { lr: 1e-3, step: 1 },
  );
  outs.push(await x.clone(), await (await x.to("cpu")).to(DEV));
  await synchronize();
  console.log(`sanitize: every kernel ran once on small inputs (${outs.length} results)`);
  dispose(outs);
  await synchronize();
  return 0;
}

// ---- bench mode ---------------------------------------------------------------------------
function median(a) {
  const s = [...a].sort((p, q) => p - q);
  return s[Math.floor(s.length / 2)];
}
/** Median ms of an op between two events on the device, after warm-up; outputs disposed. */
async function timeOp(fn, reps = 9) {
  for (let i = 0; i < 3; i++) dispose(await fn());
  const ms = [];
  for (let i = 0; i < reps; i++) {
    const start = await DeviceEvent.record(DEV);
    const out = await fn();
    const end = await DeviceEvent.record(DEV);
    ms.push(await end.elapsedMs(start));
    dispose(out);
  }
  return median(ms);
}

async function bench() {
  const rows = [];
  const row = (op, shape, median, figure, limit, ratio, target) =>
    rows.push({ op, shape, median, figure, limit, ratio, target });
  const pct = (a, b) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${((100 * a) / b).toFixed(0)}%` : "—");

  const copy = await native.cudaCopyRate({ device: DEV, bytes: 512 * 2 ** 20, reps: 10, batches: 7 });
  row("d2d copy (limit)", "512 MiB", `${copy.medianUs.toFixed(1)} µs`, `${copy.gbps.toFixed(0)} GB/s`, "—", "—", "");

  const rk = await native.cudaRouteKernel({ device: DEV, tokens: 8192, experts: 64, topK: 8, reps: 20, batches: 9 });
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
    const r1 = await Tensor.from(normal(1 * 8), [1, 8], { dtype: "bfloat16" }).to(DEV);
    const m1 = await Tensor.from(new Int32Array([0]), [1, 1]).to(DEV);
    const w1 = await Tensor.from([1], [1, 1]).to(DEV);
    const floorMs = await timeOp(() => ops.unpermute(r1, m1, w1));
    row("op floor (unpermute, 1 token)", "1 x 8 bf16", `${(1000 * floorMs).toFixed(1)} µs`, "", "—", "—", "");
    dispose([r1, m1, w1]);
  }
  const L = await Tensor.from(normal(8192 * 64, 2), [8192, 64]).to(DEV);
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
  const X = await Tensor.from(normal(T * D), [T, D], { dtype: "bfloat16" }).to(DEV);
  const I = await Tensor.from(experts(T, k, range(E)), [T, k]).to(DEV);
  const W = await Tensor.from(tiedWeights(T * k), [T, k]).to(DEV);
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

  const H = await Tensor.from(normal(1024 * 2 * 14336), [1024, 2 * 14336], { dtype: "bfloat16" }).to(DEV);
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
  const P = await Tensor.from(normal(n), [n], { dtype: "bfloat16" }).to(DEV);
  const G = await Tensor.from(normal(n), [n], { dtype: "bfloat16" }).to(DEV);
  const M = await Tensor.zeros([n]).to(DEV);
  const V = await Tensor.zeros([n]).to(DEV);
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

  const gx = await Tensor.from(normal(8192 * 4096), [8192, 4096], { dtype: "bfloat16" }).to(DEV);
  const gw = await Tensor.from(normal(4096 * 64, 0.02), [4096, 64]).to(DEV);
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

  const dense = args.denseTflops;
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
    const xg = await Tensor.from(tiled(Lg * Rg * Kg, 1), [Lg * Rg, Kg], { dtype: "bfloat16" }).to(DEV);
    const wgt = await Tensor.from(tiled(Lg * Kg * Ng, 0.02), [Lg, Kg, Ng], { dtype: "bfloat16" }).to(DEV);
    const cg = await Tensor.from(new Int32Array(Lg).fill(Rg), [Lg]).to(DEV);
    const dyg = await Tensor.from(tiled(Lg * Rg * Ng, 1), [Lg * Rg, Ng], { dtype: "bfloat16" }).to(DEV);
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
  if (args.out) fs.writeFileSync(args.out, `${header}\n${table}\n`);
  dispose([L, X, I, W, p, H, P, G, M, V, gx, gw]);
  return 0;
}

async function main() {
  if (args.mode !== "sanitize") console.log(formatInfo());
  if (args.mode === "check") return check();
  if (args.mode === "sanitize") return sanitize();
  return bench();
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    console.error(`device-check: ${e.code ? e.code + ": " : ""}${e.stack || e.message}`);
    process.exitCode = 1;
  },
);
