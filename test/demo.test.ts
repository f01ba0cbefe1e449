/**
 * `npm run demo` trains: on 4 ranks through the launcher, the MoE model's loss
 * ends well below the dense baseline's, the rules end up with their own
 * experts, a progress bar and the per-expert load are printed, and the plot is
 * written where the output says.
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

test("examples/demo/train.js on 4 ranks: MoE beats the dense FFN of the same active compute, and writes its plot", async () => {
  const out = path.join(work, "demo.svg");
  const cli = path.join(root, "dist", "cli.js");
  const run = await runNode(
    [cli, "launch", "-n", "4", path.join(root, "examples", "demo", "train.js"), "--steps", "150", "--out", out],
    { limitMs: 85000 },
  );
  expect(run.stderr).toBe("");
  expect(run.code).toBe(0);
  // Only rank 0 reports.
  const lines = run.stdout.split("\n").filter((l) => l !== "");
  expect(lines.every((l) => l.startsWith("[rank 0] "))).toBe(true);
  const text = lines.map((l) => l.slice("[rank 0] ".length));
  expect(text[0]).toMatch(/4 rank\(s\), 8 experts \(2 per rank\), top-2/);
  const bars = text.filter((l) =>
    /^\[#*\.*\] +\d+% step +\d+ +loss MoE [\d.]+ +dense [\d.]+ +load per expert \|.{8}\|/.test(l),
  );
  expect(bars.length).toBeGreaterThanOrEqual(20);
  expect(bars[bars.length - 1]).toMatch(/^\[#{30}\] 100% step {2}150/);
  const final = /final loss \(mean of the last 10% of steps\): MoE ([\d.]+), dense ([\d.]+)/.exec(run.stdout);
  expect(final).not.toBeNull();
  const [moe, dense] = [Number(final![1]), Number(final![2])];
  expect(moe * 5).toBeLessThan(dense);
  // Every rule's tokens (256 over the 4 ranks, top-2) go mostly to two experts.
  const rules = text.filter((l) => /^rule \d /.test(l)).map((l) => l.trim().split(/\s+/).slice(2).map(Number));
  expect(rules).toHaveLength(8);
  for (const row of rules) {
    expect(row.reduce((a, b) => a + b, 0)).toBe(4 * 64 * 2);
    const sorted = [...row].sort((a, b) => b - a);
    expect(sorted[0] + sorted[1]).toBeGreaterThan(0.6 * 4 * 64 * 2);
  }
  expect(run.stdout).toContain(`plot of the losses and the per-expert load: ${out}`);
  const svg = fs.readFileSync(out, "utf8");
  expect(svg.startsWith("<svg")).toBe(true);
  expect(svg.trimEnd().endsWith("</svg>")).toBe(true);
  expect((svg.match(/<path /g) ?? []).length).toBe(2 + 8);
}, 90000);
