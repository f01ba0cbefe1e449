/**
 * The demo trains: the MoE model's loss ends well below the dense baseline's,
 * the rules end up with their own experts, a progress bar and the per-expert
 * load are printed, and the plot is written where the output says.
 */
import * as fs from "fs";
import * as path from "path";
import { buildDist, root, runNode, tempDir } from "./procs";

let work: string;
beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-demo-");
});
afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

test("examples/demo/train.js: MoE beats the dense FFN of the same active compute, and writes its plot", async () => {
  const out = path.join(work, "demo.svg");
  const run = await runNode([path.join(root, "examples", "demo", "train.js"), "--steps", "120", "--out", out], { limitMs: 60000 });
  expect(run.stderr).toBe("");
  expect(run.code).toBe(0);
  const lines = run.stdout.split("\n");
  expect(lines.filter((l) => /^\[#*\.*\] +\d+% step/.test(l)).length).toBeGreaterThanOrEqual(10);
  expect(run.stdout).toMatch(/\[#{30}\] 100% step  120/);
  const final = /final loss \(mean of the last 10% of steps\): MoE ([\d.]+), dense ([\d.]+)/.exec(run.stdout);
  expect(final).not.toBeNull();
  const [moe, dense] = [Number(final![1]), Number(final![2])];
  expect(moe * 3).toBeLessThan(dense);
  // Every rule's tokens go mostly to a few experts.
  const rules = lines.filter((l) => /^rule \d /.test(l)).map((l) => l.trim().split(/\s+/).slice(2).map(Number));
  expect(rules).toHaveLength(8);
  for (const row of rules) {
    const sorted = [...row].sort((a, b) => b - a);
    expect(sorted[0] + sorted[1]).toBeGreaterThan(0.6 * row.reduce((a, b) => a + b, 0));
  }
  expect(run.stdout).toContain(`plot of the losses and the per-expert load: ${out}`);
  const svg = fs.readFileSync(out, "utf8");
  expect(svg.startsWith("<svg")).toBe(true);
  expect(svg.trimEnd().endsWith("</svg>")).toBe(true);
  expect((svg.match(/<path /g) ?? []).length).toBe(2 + 8);
});
