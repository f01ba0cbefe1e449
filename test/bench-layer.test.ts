/**
 * The layer benchmark reports tokens/s, every stage's time and the ratio to the
 * GEMM roofline, in one process and through `moe-ep bench layer` on 2.
 */
import * as path from "path";
import { STAGES } from "../lib";
import { benchLayer } from "../lib/bench/layer";
import { buildDist, root, runNode } from "./procs";

test("benchLayer in one process: figures that add up", async () => {
  const lines: string[] = [];
  const r = await benchLayer({
    dModel: 64,
    dFF: 128,
    numExperts: 4,
    topK: 2,
    tokens: 256,
    runs: 2,
    warmup: 1,
    log: (l) => lines.push(l),
  });
  expect(r.shape).toEqual({
    dModel: 64,
    dFF: 128,
    numExperts: 4,
    topK: 2,
    tokens: 256,
    epSize: 1,
    etpSize: 1,
    ranks: 1,
  });
  expect(r.stepSeconds).toBeGreaterThan(0);
  expect(r.tokensPerSecond).toBeCloseTo(256 / r.stepSeconds, 6);
  // Rows: every token's two choices (dropless, one rank).
  expect(r.gemmFlops).toBe(3 * 2 * 256 * 64 * 4 + 3 * (2 * 512 * 64 * 128 * 2));
  expect(r.roofline).toBeGreaterThan(0);
  expect(r.roofline).toBeLessThan(2);
  for (const s of STAGES) expect(r.forwardMs[s]).toBeGreaterThanOrEqual(0);
  expect(r.forwardMs.experts).toBeGreaterThan(0);
  expect(r.backwardMs.experts).toBeGreaterThan(0);
  expect(lines.join("\n")).toMatch(/the layer runs at [\d.]+% of the GEMM roofline/);
  // Steady state: every buffer of a step comes from the host allocator's cache, and nothing the
  // GEMMs overwrite is zeroed first (the router's 4 int32 expert counts are all that is).
  expect(r.memory.allocatedBytes).toBeGreaterThan(256 * 128 * 4);
  expect(r.memory.systemBytes).toBe(0);
  expect(r.memory.zeroedBytes).toBeLessThanOrEqual(4 * 4);
  expect(r.memory.collectionMs).toBeGreaterThanOrEqual(0);
  expect(lines.join("\n")).toMatch(/memory per step .* zeroed, [\d.]+ V8 collections \([\d.]+ ms\)/);
  expect(lines.join("\n")).toMatch(/summary: [\d.]+% of roofline, \d+ faults\/step, \d+ bytes zeroed\/step/);
});

test("benchLayer with profile reports the native ops' time; forward only counts the forward's GEMMs", async () => {
  const lines: string[] = [];
  const r = await benchLayer({
    dModel: 64,
    dFF: 128,
    numExperts: 4,
    topK: 2,
    tokens: 128,
    runs: 2,
    warmup: 1,
    profile: true,
    log: (l) => lines.push(l),
  });
  for (const op of ["groupedGemm", "groupedGemmBackward.dx", "groupedGemmBackward.dw", "activation", "permute"])
    expect(r.opMs![op]).toBeGreaterThan(0);
  // The ops run inside the step.
  const total = Object.values(r.opMs!).reduce((a, b) => a + b, 0);
  expect(total).toBeLessThan(r.stepSeconds * 1000 * 1.05);
  expect(lines.join("\n")).toMatch(/groupedGemmBackward\.dw +[\d.]+ +[\d.]+% of the step/);

  const f = await benchLayer({
    dModel: 64,
    dFF: 128,
    numExperts: 4,
    topK: 2,
    tokens: 128,
    runs: 2,
    forwardOnly: true,
    log: null,
  });
  expect(f.forwardOnly).toBe(true);
  expect(f.gemmFlops).toBe(2 * 128 * 64 * 4 + 2 * 256 * 64 * 128 * 2);
  expect(f.backwardMs.experts).toBe(0);
  expect(f.forwardMs.experts).toBeGreaterThan(0);
  expect(f.opMs).toBeUndefined();
});

test("moe-ep bench layer --nproc 2 runs the experts sharded over two processes", async () => {
  buildDist();
  const run = await runNode(
    [
      path.join(root, "dist", "cli.js"),
      "bench",
      "layer",
      "--nproc",
      "2",
      "--tokens",
      "128",
      "--d-model",
      "64",
      "--d-ff",
      "128",
      "--runs",
      "2",
    ],
    { limitMs: 60000 },
  );
  expect(run.stderr).toBe("");
  expect(run.code).toBe(0);
  expect(run.stdout).toMatch(
    /\[rank 0\] MoE layer, forward \+ backward: dModel 64, dFF 128, 8 experts, top-2, 128 tokens per rank, epSize 2 on 2 process\(es\), 1 thread\(s\) each/,
  );
  for (const s of ["route", "permute", "dispatch", "experts", "combine", "unpermute"])
    expect(run.stdout).toMatch(new RegExp(`\\[rank 0\\]   ${s} +[\\d.]+ +[\\d.]+`));
  expect(run.stdout).toMatch(/\[rank 0\] {3}the layer runs at [\d.]+% of the GEMM roofline/);
  expect(run.stdout).not.toMatch(/\[rank 1\]/);
  const bad = await runNode([path.join(root, "dist", "cli.js"), "bench", "layer", "--tokens", "x"], { limitMs: 20000 });
  expect(bad.code).toBe(2); // a usage error
  expect(bad.stderr).toMatch(/expected an integer in \[1, \d+\] for --tokens but received "x"/);
}, 60000);

test("moe-ep bench layer --nproc 2 --etp-size 2 splits the experts over both processes and times the ETP gather and reduce-scatter", async () => {
  buildDist();
  const args = ["--nproc", "2", "--etp-size", "2", "--tokens", "64", "--d-model", "32", "--d-ff", "64", "--runs", "2"];
  const run = await runNode([path.join(root, "dist", "cli.js"), "bench", "layer", ...args], { limitMs: 60000 });
  expect(run.stderr).toBe("");
  expect(run.code).toBe(0);
  expect(run.stdout).toMatch(/64 tokens per rank, epSize 1, etpSize 2 on 2 process\(es\)/);
  for (const s of ["etpGather", "etpScatter"]) {
    const m = new RegExp(`\\[rank 0\\]   ${s} +([\\d.]+) +([\\d.]+)`).exec(run.stdout);
    expect([s, m !== null]).toEqual([s, true]);
    // Timed in both passes (the forward gathers rows, the backward their gradients).
    expect([s, Number(m![1]) + Number(m![2]) > 0]).toEqual([s, true]);
  }
}, 60000);
