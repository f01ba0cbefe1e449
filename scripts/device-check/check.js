// --mode check: every CUDA op against the CPU op on fresh random inputs, the
// test suite's cases (test/shared/cases.js, small) and larger ones (at
// scale), edge cases included; a #wrong count per case; then the error paths,
// a leak check and the NCCL process group at world size 1 (./nccl.js).
"use strict";
const cases = require("../../test/shared/cases");
const { moe, seed0, normal, experts, tiedWeights, uniform, dispose, withGemmKernel, atRest } = require("./common");
const { record, bits, floatWrong, intWrong, shapeOf, both, summary } = require("./compare");
const checkNccl = require("./nccl");

const { Tensor, ops, synchronize } = moe;
/** The device under check, set by the mode's entry below. */
let dev;

async function checkGate(t, d, e) {
  const shape = shapeOf({ T: t, D: d, E: e });
  const { cpu, gpu } = await both(dev, () => [
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
  const { cpu, gpu } = await both(dev, () => [
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
  const idxG = await rc.indices.to(dev);
  const tpeG = await rc.tokensPerExpert.to(dev);
  const dc = await ops.routeBackward(cpu[0], rc.indices, rc.tokensPerExpert, cpu[1], bo);
  const dg = await ops.routeBackward(gpu[0], idxG, tpeG, gpu[1], bo);
  const d = floatWrong(dg, dc);
  record("routeBackward", shape, d.wrong, `rel ${d.rel.toExponential(2)}`);
  dispose([cpu, gpu, rc, rg, idxG, tpeG, dc, dg]);
}

async function checkPermute(name, t, d, k, e, allowed, o) {
  const shape = `${name} ${shapeOf({ T: t, D: d, k, E: e })}`;
  const { cpu, gpu } = await both(dev, () => [
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
  const p2rG = await pc.pairToRow.to(dev);
  const rowsG = await pc.rows.to(dev);
  const { cpu: c2, gpu: g2 } = await both(dev, () => [
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
  const next = uniform();
  const map = Int32Array.from({ length: t * k }, () => Math.floor(next() * (r + 1)) - 1);
  const { cpu, gpu } = await both(dev, () => [
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
  const { cpu, gpu } = await both(dev, () => [
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

// Grouped GEMM: bf16 operands, counts on the device; dW compared in float32.
async function checkGroupedGemm(name, counts, k, n, kernel = "auto") {
  const rows = counts.reduce((a, b) => a + b, 0);
  const L = counts.length;
  const shape = shapeOf({ case: name, L, R: rows, K: k, N: n });
  const { cpu, gpu } = await both(dev, () => [
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
  const { cpu, gpu } = await both(dev, () => [
    Tensor.from(normal(n), [n], { dtype: "bfloat16" }),
    Tensor.zeros([n]),
    Tensor.zeros([n]),
  ]);
  for (let step = 1; step <= 3; step++) {
    const g = Tensor.from(normal(n), [n], { dtype: "bfloat16" });
    const gg = await g.to(dev);
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
  const X = await Tensor.from(x, [8, 8]).to(dev);
  const W = await Tensor.from(normal(32), [8, 4]).to(dev);
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
  const I = await Tensor.from(new Int32Array([0, 1, 7, 2]), [4, 1]).to(dev);
  const Wt = await Tensor.from([1, 1, 1, 1], [4, 1]).to(dev);
  got = "";
  try {
    const X4 = await Tensor.from(normal(16), [4, 4]).to(dev);
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
  const ok = await ops.gate(await Tensor.from(normal(64), [8, 8]).to(dev), W);
  record("device usable after errors", "", ok.toFloat32().every(Number.isFinite) ? 0 : 1, "");
  dispose([X, W, I, Wt, ok]);
}

async function checkLeaks() {
  const before = await atRest(dev);
  const L = await Tensor.from(normal(256 * 16), [256, 16]).to(dev);
  const X = await Tensor.from(normal(256 * 32), [256, 32], { dtype: "bfloat16" }).to(dev);
  for (let i = 0; i < 50; i++) {
    const r = await ops.route(L, { topK: 2 });
    const p = await ops.permute(X, r.indices, r.weights, { numExperts: 16, capacityFactor: 1.0 });
    const y = await ops.unpermute(p.rows, p.pairToRow, r.weights);
    dispose([r, p, y]);
  }
  dispose([L, X]);
  const after = await atRest(dev);
  record(
    "no leak over 50 round trips",
    "",
    after.tensors === before.tensors && after.bytes === before.bytes ? 0 : 1,
    `tensors ${before.tensors} -> ${after.tensors}, bytes ${before.bytes} -> ${after.bytes}`,
  );
}

/** Runs every case on `device`; resolves with the exit status (1 when a case is wrong). */
module.exports = async function check(device, { out }) {
  dev = device;
  console.log(`inputs from seed ${seed0} (MOE_EP_CHECK_SEED=${seed0} repeats them)`);
  for (const [t, d, e] of [...cases.gate.small, ...cases.gate.atScale]) await checkGate(t, d, e);
  for (const r of [...cases.route.small, ...cases.route.atScale]) await checkRoute(r.tokens, r.experts, r.options);
  const small = cases.permute.small;
  for (const p of small.cases)
    await checkPermute(p.name, small.tokens, small.width, p.k, p.experts, p.allowed, p.options);
  for (const p of cases.permute.atScale)
    await checkPermute(p.name, p.tokens, p.width, p.k, p.experts, p.allowed, p.options);
  for (const [t, d, k, r] of cases.sharedRows.atScale) await checkSharedRows(t, d, k, r);
  for (const [kind, rows, width] of cases.activation.atScale) await checkActivation(kind, rows, width);
  for (const g of [...cases.groupedGemm.small, ...cases.groupedGemm.atScale])
    await checkGroupedGemm(g.name, g.counts, g.k, g.n);
  for (const g of cases.groupedGemm.atScale) if (g.mmaSync) await checkGroupedGemm(g.name, g.counts, g.k, g.n, "sm80");
  await checkAdamw(1 << 20);
  await checkErrors();
  await checkLeaks();
  await checkNccl(dev);
  return summary(out);
};
