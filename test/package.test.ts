/**
 * The package as a user gets it: a clean copy with dist/ and a prebuild but no
 * build/ folder loads its addon from prebuilds/, through both `require` and
 * `import`, and its install step takes the prebuild instead of compiling.
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { buildDist } from "./procs";
import { ensurePrebuild } from "./prebuild-once";

const root = path.resolve(__dirname, "..");
const node = process.execPath;

function run(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): string {
  return execFileSync(node, args, { cwd, env: { ...process.env, MOE_EP_ADDON: "", ...env }, encoding: "utf8" });
}

describe("package", () => {
  let app: string;
  let pkg: string;

  beforeAll(() => {
    // dist/ as `npm ci` (prepare) would build it from this tree
    buildDist();
    ensurePrebuild();
    app = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-pkg-"));
    pkg = path.join(app, "node_modules", "moe-ep");
    fs.mkdirSync(pkg, { recursive: true });
    for (const f of ["package.json", "dist", "prebuilds", "scripts"])
      fs.cpSync(path.join(root, f), path.join(pkg, f), { recursive: true });
  }, 30 * 60_000);

  afterAll(() => fs.rmSync(app, { recursive: true, force: true }));

  test("require loads the prebuild from a copy with no build folder and runs an op", () => {
    const out = run(
      [
        "-e",
        `const m = require("moe-ep");
         (async () => {
           const l = await m.ops.gate(m.Tensor.from([1, 2, 3, 4], [2, 2]), m.Tensor.from([1, 0, 0, 1], [2, 2]));
           console.log(JSON.stringify({ addon: m.info().addon, v: Array.from(l.toFloat32()) }));
         })();`,
      ],
      app,
    );
    const r = JSON.parse(out);
    expect(r.addon).toBe(path.join(pkg, "prebuilds", `${process.platform}-${process.arch}`, "moe_ep.node"));
    expect(fs.existsSync(path.join(pkg, "build"))).toBe(false);
    expect(r.v).toEqual([1, 2, 3, 4]);
  });

  test("import works and shares the CommonJS instance", () => {
    const out = run(
      [
        "--input-type=module",
        "-e",
        `import { Tensor, MoEError } from "moe-ep";
         import { createRequire } from "module";
         const cjs = createRequire(import.meta.url)("moe-ep");
         console.log(JSON.stringify({ same: Tensor === cjs.Tensor && MoEError === cjs.MoEError, v: Array.from(Tensor.from([5], [1]).toFloat32()) }));`,
      ],
      app,
    );
    expect(JSON.parse(out)).toEqual({ same: true, v: [5] });
  });

  test("TypeScript resolves ES module types for import and CommonJS types for require, with the root's union types", () => {
    const tsc = require.resolve("typescript/bin/tsc");
    fs.writeFileSync(
      path.join(app, "esm.mts"),
      `import moe, { MoELayer, type ActivationKind, type Backend, type MoELayerOptions } from "moe-ep";
       const a: ActivationKind = "swiglu";
       const b: Backend = "gloo";
       const o: MoELayerOptions = { dModel: 8, dFF: 8, numExperts: 2, activation: a };
       export const layers: MoELayer[] = [new moe.MoELayer(o), new MoELayer(o)];
       export { b };
       // @ts-expect-error not an ActivationKind
       export const bad: ActivationKind = "reluu";\n`,
    );
    fs.writeFileSync(
      path.join(app, "cjs.cts"),
      `import moe = require("moe-ep");
       import type { ReduceOp } from "moe-ep";
       export const op: ReduceOp = "sum";
       export const layer: moe.MoELayer = moe.MoELayer.fromForeignConfig({ hidden_size: 8, num_experts: 2 });\n`,
    );
    const listed = run(
      [
        tsc,
        "--noEmit",
        "--listFiles",
        "--strict",
        "--module",
        "nodenext",
        "--typeRoots",
        path.join(root, "node_modules", "@types"),
        "--types",
        "node",
        "esm.mts",
        "cjs.cts",
      ],
      app,
    );
    const dist = path.join(pkg, "dist");
    expect(listed).toContain(path.join(dist, "index.d.mts"));
    expect(listed).toContain(path.join(dist, "index.d.ts"));
  }, 180000);

  test("the install step uses a working prebuild instead of compiling", () => {
    const out = run([path.join(pkg, "scripts", "install.js")], pkg);
    expect(out).toMatch(/using the prebuilt addon prebuilds\/.*\/moe_ep\.node/);
    expect(fs.existsSync(path.join(pkg, "build"))).toBe(false);
  });

  test("with no loadable addon the error lists every candidate", () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-empty-"));
    const bare = path.join(empty, "node_modules", "moe-ep");
    fs.mkdirSync(bare, { recursive: true });
    for (const f of ["package.json", "dist"]) fs.cpSync(path.join(root, f), path.join(bare, f), { recursive: true });
    const out = run(
      [
        "-e",
        `try { require("moe-ep").info(); } catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message })); }`,
      ],
      empty,
      { MOE_EP_ADDON: path.join(empty, "nope.node") },
    );
    fs.rmSync(empty, { recursive: true, force: true });
    const r = JSON.parse(out);
    expect(r.code).toBe("ERR_MOE_LOAD");
    expect(r.message).toContain("nope.node: not found");
    expect(r.message).toContain(path.join("build", "Release", "moe_ep.node") + ": not found");
    expect(r.message).toContain("prebuilds");
  });
});
