// Check mode's bookkeeping: one row per case with its count of wrong
// elements, and the comparisons that count them.
"use strict";
const fs = require("fs");

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
/** Inputs made on the CPU and their copies on dev. */
async function both(dev, make) {
  const cpu = make();
  const gpu = await Promise.all(cpu.map((t) => (t ? t.to(dev) : t)));
  return { cpu, gpu };
}

/** Prints the tally, writes the case list to `out` when given; 0 when every case agrees, else 1. */
function summary(out) {
  const failed = results.filter((r) => r.wrong !== 0);
  console.log(`\n${results.length - failed.length} of ${results.length} cases agree with the CPU op`);
  if (out)
    fs.writeFileSync(
      out,
      results.map((r) => `${r.wrong === 0 ? "ok" : "FAIL"}\t${r.op}\t${r.shape}\t${r.wrong}\t${r.detail}`).join("\n") +
        "\n",
    );
  return failed.length === 0 ? 0 : 1;
}

module.exports = { record, bits, floatWrong, intWrong, shapeOf, both, summary };
