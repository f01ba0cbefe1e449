/**
 * The package as `npm install moe-ep` gives it (npm pack, the tarball
 * unpacked into a fresh app's node_modules, the addon built here copied where
 * the install step puts it): the README's quick start runs as written and
 * prints what its routing implies; examples/typescript type-checks against
 * the packed declarations and trains. Under Bun (the binary of the
 * @oven/bun-linux-x64 package that .ci/run installs): the same quick start, and a 2-rank
 * MoELayer forward/backward started by `bun dist/cli.js launch`, whose every
 * number equals the same run under Node.
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { buildDist, root, runNode, tempDir } from "./procs";

const bun = path.join(root, "node_modules", "@oven", "bun-linux-x64", "bin", "bun");
const hasBun = fs.existsSync(bun);
if (!hasBun)
  console.log(
    `quickstart.test.ts: no Bun binary at ${bun} (npm install --no-save @oven/bun-linux-x64, as .ci/run does); Bun cases skipped`,
  );
const bunTest = hasBun ? test : test.skip;

let app: string;
let pkg: string;
let quickstart: string;

function exec(cmd: string, args: string[], cwd: string, limitMs = 60000): string {
  return execFileSync(cmd, args, {
    cwd,
    encoding: "utf8",
    timeout: limitMs,
    env: { ...process.env, MOE_EP_ADDON: "" },
  });
}

/** The README's quick start: the js block of its "## Quick start" section. */
function readmeQuickStart(): string {
  const readme = fs.readFileSync(path.join(root, "README.md"), "utf8");
  const section = readme.slice(
    readme.indexOf("## Quick start"),
    readme.indexOf("\n## ", readme.indexOf("## Quick start") + 3),
  );
  const m = /```js\n([\s\S]*?)```/.exec(section);
  if (!m) throw new Error("README.md's Quick start has no js block");
  return m[1];
}

/** What the quick start prints must agree with itself: every token's 2 choices counted, capacity = ceil(2T/E * 1.25). */
function checkQuickStart(out: string): string {
  const counts = /tokens per expert: ([\d ]+)\n/.exec(out);
  expect(counts).not.toBeNull();
  const c = counts![1].trim().split(" ").map(Number);
  expect(c).toHaveLength(8);
  expect(c.reduce((a, b) => a + b, 0)).toBe(512 * 2);
  const cap = /capacity (\d+) rows per expert, (\d+) of 1024 choices dropped/.exec(out)!;
  expect(Number(cap[1])).toBe(Math.ceil(((512 * 2) / 8) * 1.25));
  expect(Number(cap[2])).toBe(c.reduce((a, n) => a + Math.max(0, n - Number(cap[1])), 0));
  expect(out).toMatch(/output Tensor\(float32 \[512, 256\] on cpu\), first values (-?\d\.\d{4}(, )?){4}\n/);
  return out;
}

beforeAll(() => {
  buildDist();
  app = tempDir("moe-ep-app-");
  const packed = JSON.parse(exec("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", app], root));
  pkg = path.join(app, "node_modules", "moe-ep");
  fs.mkdirSync(pkg, { recursive: true });
  exec("tar", ["xzf", path.join(app, packed[0].filename), "-C", pkg, "--strip-components=1"], app);
  // What the install step leaves: the addon built from source in build/Release.
  fs.mkdirSync(path.join(pkg, "build", "Release"), { recursive: true });
  fs.copyFileSync(
    path.join(root, "build", "Release", "moe_ep.node"),
    path.join(pkg, "build", "Release", "moe_ep.node"),
  );
  fs.writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "app", private: true }));
  quickstart = path.join(app, "quickstart.mjs");
  fs.writeFileSync(quickstart, readmeQuickStart());
}, 120000);

afterAll(() => fs.rmSync(app, { recursive: true, force: true }));

test("the packed package holds the CLI and the declarations", () => {
  for (const f of ["dist/cli.js", "dist/index.d.ts", "dist/index.mjs", "package.json"])
    expect(fs.existsSync(path.join(pkg, f))).toBe(true);
});

test("the README's quick start runs as written under Node", () => {
  const out = checkQuickStart(exec(process.execPath, [quickstart], app));
  // It uses the installed copy, not this repository.
  const where = exec(process.execPath, ["-e", `console.log(require("moe-ep").info().addon)`], app).trim();
  expect(where).toBe(path.join(pkg, "build", "Release", "moe_ep.node"));
  expect(out).not.toBe("");
});

test("examples/typescript type-checks against the packed declarations and trains", async () => {
  const dir = path.join(app, "ts");
  fs.mkdirSync(dir);
  fs.copyFileSync(path.join(root, "examples", "typescript", "train.ts"), path.join(dir, "train.ts"));
  const config = JSON.parse(fs.readFileSync(path.join(root, "examples", "typescript", "tsconfig.json"), "utf8"));
  delete config.compilerOptions.paths; // "moe-ep" is now the installed package
  config.compilerOptions.typeRoots = [path.join(root, "node_modules", "@types")];
  fs.writeFileSync(path.join(dir, "tsconfig.json"), JSON.stringify(config));
  exec(process.execPath, [require.resolve("typescript/bin/tsc"), "-p", dir], dir, 120000);
  const out = exec(process.execPath, [path.join(dir, "out", "train.js")], dir);
  const losses = [...out.matchAll(/step (\d+) loss ([\d.]+)/g)].map((m) => Number(m[2]));
  expect(losses).toHaveLength(5);
  expect(losses[4]).toBeLessThan(0.6 * losses[0]);
}, 180000);

bunTest("the README's quick start runs under Bun and prints what it prints under Node", () => {
  const underBun = checkQuickStart(exec(bun, [quickstart], app));
  expect(underBun).toBe(exec(process.execPath, [quickstart], app));
});

/** Each rank: an expert-parallel layer (epSize 2), one forward and backward on its own tokens. */
const LAYER_RANK = `
const { initProcessGroup, MoELayer, Tensor, ops } = require("moe-ep");
(async () => {
  const pg = await initProcessGroup({ timeoutMs: 20000 });
  const moe = await MoELayer.create({ dModel: 16, dFF: 32, numExperts: 4, topK: 2, epSize: 2, seed: 5,
    auxLossCoef: 0.01, capacityFactor: 1.5 }, pg);
  const x = Tensor.zeros([64, 16]);
  await ops.fillRandom(x, { seed: 10 + pg.rank });
  const { output, auxLoss, stats } = await moe.forward(x);
  const dy = Tensor.zeros([64, 16]);
  await ops.fillRandom(dy, { seed: 20 + pg.rank });
  const dx = await moe.backward(dy);
  const grads = moe.parameters().map((p) => [p.name, Array.from(p.grad.toFloat32())]);
  console.log(JSON.stringify({ rank: pg.rank, runtime: process.versions.bun ? "bun" : "node", auxLoss,
    tokensPerExpert: Array.from(stats.tokensPerExpert), out: Array.from(output.toFloat32()),
    dx: Array.from(dx.toFloat32()), grads }));
  pg.destroy();
})().catch((e) => { console.error(e); process.exit(1); });
`;

bunTest(
  "a 2-rank MoELayer forward/backward under `bun dist/cli.js launch` equals the same run under Node",
  async () => {
    fs.writeFileSync(path.join(app, "layer.js"), LAYER_RANK);
    const cli = path.join(pkg, "dist", "cli.js");
    const ranks = (stdout: string) =>
      stdout
        .split("\n")
        .map((l) => /^\[rank (\d)\] (\{.*)$/.exec(l))
        .filter((m) => m)
        .map((m) => JSON.parse(m![2]))
        .sort((a, b) => a.rank - b.rank);
    const underBun = ranks(exec(bun, [cli, "launch", "-n", "2", path.join(app, "layer.js")], app, 90000));
    const underNode = ranks(
      (
        await runNode([cli, "launch", "-n", "2", path.join(app, "layer.js")], {
          limitMs: 90000,
          env: { MOE_EP_ADDON: "" },
        })
      ).stdout,
    );
    expect(underBun.map((r) => r.runtime)).toEqual(["bun", "bun"]);
    expect(underNode.map((r) => r.runtime)).toEqual(["node", "node"]);
    for (const r of underBun) {
      expect(r.out).toHaveLength(64 * 16);
      expect(r.tokensPerExpert.reduce((a: number, b: number) => a + b, 0)).toBe(2 * 64 * 2);
      expect(r.dx.every(Number.isFinite)).toBe(true);
      expect(r.dx.some((v: number) => v !== 0)).toBe(true);
    }
    const strip = (rs: any[]) => rs.map(({ runtime: _, ...rest }) => rest);
    expect(strip(underBun)).toEqual(strip(underNode));
  },
  240000,
);
