/** The README's example runs as written and prints what it promises. */
import { execFileSync } from "child_process";
import * as path from "path";
import { buildDist } from "./procs";

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
