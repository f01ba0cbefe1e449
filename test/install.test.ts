/**
 * The install step's source build when it fails: it prints the cause (CMake's
 * error, the compiler's, the apt-get command for what is missing), not a
 * stack trace or a loader line, and exits non-zero. Forced here with no cmake
 * on PATH and with a compiler that does not exist.
 */
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";

const root = path.resolve(__dirname, "..");
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { tidy } = require("../scripts/install.js") as { tidy(build: string): void };

describe("install step", () => {
  let pkg: string;

  beforeAll(() => {
    // the sources as the package ships them, without prebuilds
    pkg = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-install-"));
    for (const f of ["package.json", "CMakeLists.txt", "cmake", "cpp", "binding", "cuda", "scripts"])
      fs.cpSync(path.join(root, f), path.join(pkg, f), { recursive: true });
    fs.symlinkSync(path.join(root, "node_modules"), path.join(pkg, "node_modules"));
  });

  afterAll(() => fs.rmSync(pkg, { recursive: true, force: true }));

  function install(env: NodeJS.ProcessEnv) {
    return spawnSync(process.execPath, [path.join(pkg, "scripts", "install.js")], {
      cwd: pkg,
      encoding: "utf8",
      env: { ...process.env, MOE_EP_CUDA: "OFF", MOE_EP_VERBOSE_BUILD: "", ...env },
      timeout: 120_000,
    });
  }

  test("without cmake it says so and gives the apt-get command", () => {
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-path-"));
    fs.symlinkSync(process.execPath, path.join(bin, "node"));
    const r = install({ PATH: bin });
    fs.rmSync(bin, { recursive: true, force: true });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/needs CMake >= 3\.24, which is not on PATH/);
    expect(r.stderr).toContain("sudo apt-get install -y cmake g++ libopenblas-dev libgloo-dev");
    expect(r.stderr).not.toMatch(/node:internal|\n\s+at /);
  });

  test("a failing configure prints CMake's error and what to install, and keeps the full log", () => {
    const r = install({ MOE_EP_CMAKE_ARGS: "--CDCMAKE_CXX_COMPILER=/nonexistent/g++" });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/the source build of the addon failed/);
    expect(r.stderr).toMatch(
      /CMake Error at CMakeLists\.txt:\d+ \(project\):[\s\S]*\/nonexistent\/g\+\+[\s\S]*is not a full path/,
    );
    expect(r.stderr).toContain("a C++17 compiler: sudo apt-get install -y g++");
    expect(r.stderr).not.toMatch(/node:internal|\n\s+at /);
    // the compiler's chatter went to the log, not to the terminal
    expect(r.stdout.split("\n").length).toBeLessThan(10);
    const log = path.join(pkg, "build", "build.log");
    expect(r.stderr).toContain(log);
    expect(fs.readFileSync(log, "utf8")).toContain("/nonexistent/g++");
  });

  test("a compile error is quoted with its file and line", () => {
    // first in the sources' order, so the build stops early
    const bad = path.join(pkg, "cpp", "capi", "aa_broken.cpp");
    fs.rmSync(path.join(pkg, "build"), { recursive: true, force: true });
    fs.writeFileSync(bad, "int broken() { return undeclared_name; }\n");
    try {
      const r = install({});
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/aa_broken\.cpp:1:\d+: error: .undeclared_name. was not declared/);
    } finally {
      fs.rmSync(bad);
    }
  }, 600_000);

  test("installed as a dependency, a successful build keeps only the libraries it loads", () => {
    const build = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-tidy-"));
    const files = [
      "Release/moe_ep.node",
      "Release/libmoe_ep.so",
      "Release/moe_ep_gloo.so",
      "Release/x.a",
      "CMakeFiles/a.o",
    ];
    for (const f of [...files, "build.log", "libmoe_ep_cuda.a"]) {
      fs.mkdirSync(path.dirname(path.join(build, f)), { recursive: true });
      fs.writeFileSync(path.join(build, f), f);
    }
    tidy(build);
    const left = fs.readdirSync(build, { recursive: true }).map(String).sort();
    fs.rmSync(build, { recursive: true, force: true });
    expect(left).toEqual(["Release", "Release/libmoe_ep.so", "Release/moe_ep.node", "Release/moe_ep_gloo.so"]);
  });

  test("the CUDA build asks ptxas for its per-kernel report only when MOE_EP_VERBOSE_BUILD is set", () => {
    // the CUDA builds there are (none where nvcc is missing)
    for (const dir of ["build", "build-prebuild-cuda"]) {
      const ninja = path.join(root, dir, "build.ninja");
      if (!fs.existsSync(ninja) || !/\.cu\.o\b/.test(fs.readFileSync(ninja, "utf8"))) continue;
      const verbose = /^MOE_EP_VERBOSE_BUILD:BOOL=ON$/m.test(
        fs.readFileSync(path.join(root, dir, "CMakeCache.txt"), "utf8"),
      );
      expect({ dir, ptxasReport: fs.readFileSync(ninja, "utf8").includes("-Xptxas=-v") }).toEqual({
        dir,
        ptxasReport: verbose,
      });
    }
  });
});
