/**
 * The CPU prebuild (npm run prebuild): portable by objdump's account
 * (scripts/check-portable.js), exporting only its entry points, loading and
 * running an op in a root that holds nothing but glibc and node, and running a
 * Gloo group through its plugin where libgloo.so.0 is installed.
 */
import { execFileSync, spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { buildDist } from "./procs";
import { ensurePrebuild, prebuildDir, root } from "./prebuild-once";
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { check } = require("../scripts/check-portable") as {
  check(file: string): { maxGlibc: string; needed: string[]; exported: string[]; problems: string[] };
};

const linuxX64 = process.platform === "linux" && process.arch === "x64";
const d = linuxX64 ? describe : describe.skip;
const libs = ["moe_ep.node", "libmoe_ep.so", "moe_ep_gloo.so"].map((f) => path.join(prebuildDir, f));
const hasGloo = fs.existsSync("/usr/include/gloo/config.h");

// The C ABI's functions, from the header's declarations.
function headerFunctions(): string[] {
  const header = fs
    .readFileSync(path.join(root, "cpp", "include", "moe_ep.h"), "utf8")
    .replace(/\/\*[\s\S]*?\*\//g, "");
  return [...new Set([...header.matchAll(/\b(moe_[a-z0-9_]+)\s*\(/g)].map((m) => m[1]))].sort();
}

d("the CPU prebuild", () => {
  beforeAll(() => {
    buildDist();
    ensurePrebuild();
  }, 30 * 60_000);

  test("needs glibc <= 2.28, libgcc_s <= GCC_4.2 and no libstdc++ or other library", () => {
    for (const file of libs.filter((f) => !f.endsWith("gloo.so") || hasGloo)) {
      const r = check(file);
      expect({ file, problems: r.problems }).toEqual({ file, problems: [] });
      const [major, minor] = r.maxGlibc.split(".").map(Number);
      expect(major * 100 + minor).toBeLessThanOrEqual(228);
      expect(r.needed.filter((l) => /stdc\+\+|openblas|hiredis|ibverbs/.test(l))).toEqual([]);
    }
  });

  test("the checker refuses the source build, which needs libstdc++ and exports its internals", () => {
    const source = path.join(root, "build", "Release", "moe_ep.node");
    if (!fs.existsSync(source)) return;
    const r = check(source);
    expect(r.problems.join("\n")).toMatch(/GLIBCXX_/);
    expect(r.exported.length).toBeGreaterThan(100);
  });

  test("the addon exports only napi_register_module_v1, libmoe_ep.so only the C ABI of moe_ep.h", () => {
    expect(check(libs[0]).exported.filter((s) => s !== "node_api_module_get_api_version_v1")).toEqual([
      "napi_register_module_v1",
    ]);
    expect(check(libs[1]).exported.sort()).toEqual(headerFunctions());
    expect(fs.readFileSync(path.join(prebuildDir, "include", "moe_ep.h"), "utf8")).toBe(
      fs.readFileSync(path.join(root, "cpp", "include", "moe_ep.h"), "utf8"),
    );
  });

  (process.getuid?.() === 0 ? test : test.skip)(
    "loads and runs an op in a root holding only node, glibc and the package; a Gloo group names libgloo.so.0",
    () => {
      // node and the libraries it needs (Debian's node links libstdc++ itself),
      // nothing else: no OpenBLAS, no Gloo, no compiler runtime of ours.
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-root-"));
      try {
        const ldd = execFileSync("ldd", [process.execPath], { encoding: "utf8" });
        const deps = [...ldd.matchAll(/(\/\S+\.so[.\d]*)/g)].map((m) => m[1]);
        for (const f of [...deps, "/lib/x86_64-linux-gnu/librt.so.1"]) {
          const dest = path.join(dir, fs.realpathSync(path.dirname(f)), path.basename(f));
          fs.mkdirSync(path.dirname(dest), { recursive: true });
          fs.copyFileSync(f, dest);
          if (f.startsWith("/lib64")) {
            fs.mkdirSync(path.join(dir, "lib64"), { recursive: true });
            fs.copyFileSync(f, path.join(dir, "lib64", path.basename(f)));
          }
        }
        fs.mkdirSync(path.join(dir, "bin"));
        fs.mkdirSync(path.join(dir, "tmp"));
        fs.copyFileSync(process.execPath, path.join(dir, "bin", "node"));
        const pkg = path.join(dir, "pkg");
        for (const f of ["package.json", "dist", "prebuilds"])
          fs.cpSync(path.join(root, f), path.join(pkg, f), { recursive: true });
        const script = `
          const m = require("/pkg");
          const maps = () => require("fs").readFileSync("/proc/self/maps", "utf8").match(/\\S+\\.(so[.\\d]*|node)$/gm) || [];
          (async () => {
            const l = await m.ops.gate(m.Tensor.from([1, 2, 3, 4], [2, 2]), m.Tensor.from([1, 0, 0, 1], [2, 2]));
            const i = m.info();
            let gloo;
            try { await m.initProcessGroup({ rank: 0, worldSize: 1, store: "file:///tmp/store", runId: "r" }); gloo = "connected"; }
            catch (e) { gloo = { code: e.code, message: e.message }; }
            console.log(JSON.stringify({ v: Array.from(l.toFloat32()), addon: i.addon, source: i.addonSource,
              blas: i.blas.loaded, gloo, libs: [...new Set(maps())] }));
          })();`;
        fs.writeFileSync(path.join(dir, "check.js"), script);
        fs.mkdirSync(path.join(dir, "proc"));
        // /proc for /proc/self/maps; chroot so the system's library folders are out of reach.
        const r = spawnSync(
          "unshare",
          ["--mount", "sh", "-c", `mount -t proc proc "$0/proc" && exec chroot "$0" /bin/node /check.js`, dir],
          { encoding: "utf8", env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", MOE_EP_ADDON: "" }, timeout: 60_000 },
        );
        expect(r.stderr).toBe("");
        const out = JSON.parse(r.stdout);
        expect(out.v).toEqual([1, 2, 3, 4]);
        expect(out.addon).toBe("/pkg/prebuilds/linux-x64/moe_ep.node");
        expect(out.source).toBe("CPU prebuild");
        expect(out.blas).toBe(false);
        expect(out.gloo.code).toBe("ERR_MOE_UNSUPPORTED");
        expect(out.gloo.message).toMatch(/libgloo\.so\.0.*apt-get install libgloo0/);
        // every library mapped is one of the root's: glibc's, node's and ours
        for (const lib of out.libs) expect(fs.existsSync(path.join(dir, lib))).toBe(true);
        expect(out.libs.filter((l: string) => /moe_ep/.test(l))).toEqual(["/pkg/prebuilds/linux-x64/moe_ep.node"]);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  (hasGloo ? test : test.skip)(
    "runs a Gloo group of world 1 through the plugin, errors crossing it as MoEErrors",
    () => {
      const store = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-gloo-"));
      try {
        const out = execFileSync(
          process.execPath,
          [
            "-e",
            `const m = require(${JSON.stringify(root)});
           (async () => {
             const g = await m.initProcessGroup({ rank: 0, worldSize: 1, store: "file://${store}/s", runId: "r" });
             const t = m.Tensor.from([1, 2, 3], [3]);
             await g.allReduce(t, "max");
             const a = await g.allToAll(m.Tensor.from([4, 5], [1, 2]));
             let err;
             try { await g.allReduce(m.Tensor.from([1, 2], [2], { dtype: "int32" }), "avg"); }
             catch (e) { err = { code: e.code, name: e.name, message: e.message }; }
             g.destroy();
             console.log(JSON.stringify({ addon: m.info().addon, t: Array.from(t.toFloat32()), a: Array.from(a.toFloat32()), err }));
           })();`,
          ],
          { encoding: "utf8", env: { ...process.env, MOE_EP_ADDON: libs[0] }, timeout: 60_000 },
        );
        const r = JSON.parse(out);
        expect(r.addon).toBe(libs[0]);
        expect(r.t).toEqual([1, 2, 3]);
        expect(r.a).toEqual([4, 5]);
        // raised by the plugin's GlooGroup::all_reduce, caught by the addon's binding
        expect(r.err).toEqual({
          code: "ERR_MOE_DTYPE",
          name: "MoEError",
          message: 'allReduce: op "avg" needs a float tensor but received int32 [2] on cpu',
        });
      } finally {
        fs.rmSync(store, { recursive: true, force: true });
      }
    },
  );
});
