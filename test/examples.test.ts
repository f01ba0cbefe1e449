/** The README's example runs as written and prints what it promises. */
import { execFileSync } from "child_process";
import * as path from "path";
import { buildDist, runNode } from "./procs";

const root = path.resolve(__dirname, "..");

test("examples/quickstart.js routes tokens and runs the experts", () => {
  buildDist();
  const out = execFileSync(process.execPath, [path.join(root, "examples", "quickstart.js")], {
    cwd: root,
    encoding: "utf8",
  });
  const counts = /tokens per expert: ([\d ]+)/.exec(out);
  expect(counts).not.toBeNull();
  const c = counts![1].trim().split(" ").map(Number);
  expect(c).toHaveLength(8);
  expect(c.reduce((a, b) => a + b, 0)).toBe(512 * 2);
  const cap = /capacity (\d+) rows per expert, (\d+) of 1024 choices dropped/.exec(out);
  expect(Number(cap![1])).toBe(Math.ceil(((512 * 2) / 8) * 1.25));
  const dropped = c.reduce((a, n) => a + Math.max(0, n - Number(cap![1])), 0);
  expect(Number(cap![2])).toBe(dropped);
  expect(out).toMatch(/output Tensor\(float32 \[512, 256\] on cpu\)/);
  expect(out).toMatch(/live tensors after the layer: 4 /);
});

test("examples/deepspeed/train.js on 2 ranks (moe-ep launch -n 2), at width 32: DeepSpeed's layer trains with AdamW", async () => {
  buildDist();
  const run = await runNode(
    [
      path.join(root, "dist", "cli.js"),
      "launch",
      "-n",
      "2",
      path.join(root, "examples", "deepspeed", "train.js"),
      "--steps",
      "8",
    ],
    { env: { MOE_EP_EXAMPLE_HIDDEN: "32" }, limitMs: 85000 },
  );
  expect(run.stderr).toBe("");
  expect(run.code).toBe(0);
  expect(run.stdout).toContain(
    "DeepSpeed MoE: hidden 32 -> 128 -> 32 relu, 8 experts, ep_size 2 (4 per rank), k 1, capacity_factor 1, min_capacity 4, 2 ranks",
  );
  const steps = [
    ...run.stdout.matchAll(
      /step (\d+) loss ([\d.]+) aux [\d.]+ capacity (\d+) dropped (\d+) of 128 tokens per expert ([\d ]+)/g,
    ),
  ];
  expect(steps.map((m) => Number(m[1]))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  for (const m of steps) {
    // 64 tokens per rank, 8 experts, capacity factor 1.0: C = max(ceil(64 / 8), 4) = 8 on each rank.
    expect(Number(m[3])).toBe(8);
    const counts = m[5].trim().split(" ").map(Number);
    expect(counts.reduce((a, b) => a + b, 0)).toBe(128);
    // Top-1 drops: each expert keeps at most C per rank, so at least max(0, n - 2C) of its n overall.
    expect(Number(m[4])).toBeGreaterThanOrEqual(counts.reduce((a, n) => a + Math.max(0, n - 16), 0));
  }
  const losses = steps.map((m) => Number(m[2]));
  expect(losses[losses.length - 1]).toBeLessThan(losses[0] * 0.95);
}, 90000);

test("examples/config/train.js on 8 ranks: the illustrative Megatron/DeepSpeed config trains as epSize 4 × etpSize 2 in bfloat16, AdamW from its optimizer section", async () => {
  buildDist();
  const run = await runNode(
    [
      path.join(root, "dist", "cli.js"),
      "launch",
      "-n",
      "8",
      path.join(root, "examples", "config", "train.js"),
      "--steps",
      "4",
      "--lr",
      "1e-2",
    ],
    { limitMs: 170000 },
  );
  expect(run.stderr).toBe("");
  expect(run.code).toBe(0);
  expect(run.stdout).toContain(
    "layer: hidden 64 -> 128 gelu bfloat16, 64 experts, top-2, capacity factor 1.25, epSize 4 x etpSize 2 on 8 ranks (16 experts per rank, each split over 2)",
  );
  for (const key of ["optimizer", "zero_optimization", "moe.enabled"]) expect(run.stdout).toContain(`ignored ${key}: `);
  expect(run.stdout).toContain("optimizer: AdamW lr 0.01 weight decay 0");
  const steps = [...run.stdout.matchAll(/step (\d+) loss ([\d.]+) aux [\d.]+ capacity (\d+) dropped (\d+)/g)];
  expect(steps.map((m) => Number(m[1]))).toEqual([1, 2, 3, 4]);
  // 32 tokens per rank, top-2 of 64 experts, capacity factor 1.25: C = ceil(32 · 2 / 64 · 1.25) = 2.
  for (const m of steps) expect(Number(m[3])).toBe(Math.ceil(((32 * 2) / 64) * 1.25));
  const losses = steps.map((m) => Number(m[2]));
  expect(losses[3]).toBeLessThan(losses[0]);
}, 180000);
