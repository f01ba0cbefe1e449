/**
 * The npm packages as published: `npm pack` of moe-ep (with the CPU prebuild)
 * and of the CUDA package packages/linux-x64-cuda, installed into a new
 * project from the tarballs with `npm ci --offline` (moe-ep's dependencies
 * from npm's cache, pinned by a lockfile made from this repository's).
 * The CPU tarball stays small; with the CUDA package installed, the loader
 * and the install step pick its addon. The CUDA package carries the CUDA
 * prebuild when `npm run prebuild:cuda` has built it, else (to test the
 * choice) a copy of the CPU prebuild.
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { buildDist } from "./procs";
import { ensurePrebuild, prebuildDir, root } from "./prebuild-once";

const linuxX64 = process.platform === "linux" && process.arch === "x64";
const npm = path.join(path.dirname(process.execPath), "npm");
const cudaDir = path.join(root, "packages", "linux-x64-cuda");

function sh(cmd: string, args: string[], cwd: string): string {
  return execFileSync(cmd, args, {
    cwd,
    encoding: "utf8",
    env: { ...process.env, MOE_EP_ADDON: "", npm_config_audit: "false", npm_config_fund: "false" },
    timeout: 240_000,
  });
}

function packJson(dir: string, dest: string): { filename: string; size: number; files: { path: string }[] } {
  return JSON.parse(sh(npm, ["pack", "--json", "--ignore-scripts", "--pack-destination", dest], dir))[0];
}

type Entry = { version?: string; dev?: boolean; devOptional?: boolean; dependencies?: Record<string, string> };

/**
 * A project depending on the given tarballs (name -> file in work/), with a
 * lockfile holding them and moe-ep's dependencies as this repository's
 * lockfile pins them, so npm installs from its cache alone.
 */
function makeApp(app: string, tarballs: Record<string, string>): void {
  fs.rmSync(app, { recursive: true, force: true });
  fs.mkdirSync(app);
  const repo = JSON.parse(fs.readFileSync(path.join(root, "package-lock.json"), "utf8")) as {
    packages: Record<string, Entry>;
  };
  const dependencies = Object.fromEntries(Object.entries(tarballs).map(([n, f]) => [n, `file:../${f}`]));
  const packages: Record<string, object> = { "": { name: "app", version: "1.0.0", dependencies } };
  for (const [key, entry] of Object.entries(repo.packages)) {
    if (key && !entry.dev && !entry.devOptional) packages[key] = entry;
  }
  for (const [name, file] of Object.entries(tarballs)) {
    const own = name === "moe-ep" ? repo.packages[""] : { version: "0.1.0" };
    packages[`node_modules/${name}`] = {
      version: own.version,
      resolved: `file:../${file}`,
      dependencies: own.dependencies,
      hasInstallScript: name === "moe-ep" ? true : undefined,
      os: ["linux"],
    };
  }
  fs.writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "app", version: "1.0.0", dependencies }));
  fs.writeFileSync(
    path.join(app, "package-lock.json"),
    JSON.stringify({ name: "app", version: "1.0.0", lockfileVersion: 3, requires: true, packages }),
  );
}

(linuxX64 ? describe : describe.skip)("npm pack", () => {
  let work: string;
  let app: string;
  let main: ReturnType<typeof packJson>;
  let cuda: ReturnType<typeof packJson>;
  let realCuda: boolean;

  beforeAll(() => {
    buildDist();
    ensurePrebuild();
    work = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-pack-"));
    main = packJson(root, work);
    // the CUDA package, staged with its addon
    const staged = path.join(work, "cuda-package");
    fs.cpSync(cudaDir, staged, { recursive: true });
    realCuda = fs.existsSync(path.join(cudaDir, "moe_ep.node"));
    if (!realCuda) {
      for (const f of ["moe_ep.node", "libmoe_ep.so", "moe_ep_gloo.so", "include"])
        if (fs.existsSync(path.join(prebuildDir, f)))
          fs.cpSync(path.join(prebuildDir, f), path.join(staged, f), { recursive: true });
    }
    cuda = packJson(staged, work);
    app = path.join(work, "app");
  }, 30 * 60_000);

  afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

  test("the CPU tarball holds the prebuild, the C library and header, and stays a few MB", () => {
    const files = main.files.map((f) => f.path);
    for (const f of [
      "prebuilds/linux-x64/moe_ep.node",
      "prebuilds/linux-x64/libmoe_ep.so",
      "prebuilds/linux-x64/include/moe_ep.h",
      "cpp/include/moe_ep.h",
      "scripts/install.js",
      "scripts/build-errors.js",
      "cmake/portable.cmake",
      "CMakeLists.txt",
      "dist/index.js",
    ])
      expect(files).toContain(f);
    expect(files.filter((f) => /^(build|test|emu|node_modules)\//.test(f))).toEqual([]);
    expect(main.size).toBeLessThan(8 * 1024 * 1024);
    const pkg = JSON.parse(fs.readFileSync(path.join(root, "package.json"), "utf8"));
    expect(Object.keys(pkg.dependencies).sort()).toEqual(["cmake-js", "node-addon-api"]);
    expect(pkg.os).toEqual(["linux"]);
  });

  test("installed from the tarball offline, the install step and the loader take the CPU prebuild", () => {
    makeApp(app, { "moe-ep": main.filename });
    const log = sh(npm, ["ci", "--offline", "--foreground-scripts"], app);
    expect(log).toMatch(/using the prebuilt addon prebuilds\/linux-x64\/moe_ep\.node/);
    const out = sh(
      process.execPath,
      ["-e", 'const i = require("moe-ep").info(); console.log(JSON.stringify([i.addon, i.addonSource]))'],
      app,
    );
    expect(JSON.parse(out)).toEqual([
      path.join(app, "node_modules", "moe-ep", "prebuilds", "linux-x64", "moe_ep.node"),
      "CPU prebuild",
    ]);
    expect(fs.existsSync(path.join(app, "node_modules", "moe-ep", "build"))).toBe(false);
  });

  test("with the CUDA package installed too, both pick its addon; `moe-ep info` names it", () => {
    makeApp(app, { "moe-ep": main.filename, "@moe-ep/linux-x64-cuda": cuda.filename });
    const log = sh(npm, ["ci", "--offline", "--foreground-scripts"], app);
    const addon = path.join(app, "node_modules", "@moe-ep", "linux-x64-cuda", "moe_ep.node");
    expect(log).toContain("using the prebuilt addon ../@moe-ep/linux-x64-cuda/moe_ep.node");
    const out = sh(
      process.execPath,
      ["-e", 'const i = require("moe-ep").info(); console.log(JSON.stringify([i.addon, i.addonSource, i.cuda.built]))'],
      app,
    );
    expect(JSON.parse(out)).toEqual([addon, "CUDA prebuild", realCuda]);
    const info = sh(process.execPath, [path.join(app, "node_modules", "moe-ep", "dist", "cli.js"), "info"], app);
    expect(info).toContain(`addon: ${addon} (CUDA prebuild)`);
  });
});
