/**
 * NCCL loaded at run time: which library is opened, the version check, the
 * functions looked up, and the device check, each failing with its own reason.
 * Real NCCL is not needed: fake libraries with the same symbol names are built
 * here with the system C compiler. The status is computed once per process, so
 * each variant runs in a child process with MOE_EP_NCCL_LIBRARY set.
 *
 * Nothing here runs a NCCL communicator (that needs a GPU and real NCCL).
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { MoEError } from "../lib";
import { ncclStatus, requireNccl, type NcclStatus } from "../lib/comm/nccl";
import { buildDist, commDir, root, runNode, script, tempDir } from "./procs";

// Every function moe-ep requires besides ncclGetVersion.
const REQUIRED = [
  "ncclGetUniqueId",
  "ncclCommInitRank",
  "ncclCommAbort",
  "ncclCommDestroy",
  "ncclCommGetAsyncError",
  "ncclGetErrorString",
  "ncclGroupStart",
  "ncclGroupEnd",
  "ncclSend",
  "ncclRecv",
  "ncclAllReduce",
  "ncclBroadcast",
];

let work: string;
let childScript: string;

interface ChildResult {
  status: NcclStatus;
  error: { code: string; message: string; isMoEError: boolean } | null;
  sameAfterEnvChange: boolean;
  cudaAvailable: boolean;
  cudaReason: string;
}

// Reads the status, asks for NCCL, then changes the variable and reads again
// (the answer must not change: the library is loaded once per process).
const CHILD_SOURCE = `
const { ncclStatus, requireNccl } = require(${JSON.stringify(path.join(commDir, "nccl"))});
const { MoEError, info } = require(${JSON.stringify(path.join(root, "dist"))});
const status = ncclStatus();
let error = null;
try { requireNccl(); } catch (e) { error = { code: e.code, message: e.message, isMoEError: e instanceof MoEError }; }
process.env.MOE_EP_NCCL_LIBRARY = "/somewhere/else/libnccl.so.2";
const again = ncclStatus();
const cuda = info().cuda;
console.log(JSON.stringify({ status, error, sameAfterEnvChange: JSON.stringify(again) === JSON.stringify(status),
  cudaAvailable: cuda.available, cudaReason: cuda.reason }));
`;

/**
 * A shared library exporting ncclGetVersion (returning `code`, or failing when
 * code is null) and stubs for `symbols`. The stubs return ncclInternalError:
 * nothing in these tests may call them.
 */
function fakeNccl(
  name: string,
  code: number | null,
  symbols: string[],
  options: { withVersion?: boolean } = {},
): string {
  const lines = ["typedef int result_t;"];
  if (options.withVersion !== false) {
    lines.push(
      code === null
        ? "result_t ncclGetVersion(int* v) { (void)v; return 3; }"
        : `result_t ncclGetVersion(int* v) { *v = ${code}; return 0; }`,
    );
  }
  for (const s of symbols) lines.push(`result_t ${s}(void) { return 3; }`);
  const src = path.join(work, `${name}.c`);
  const lib = path.join(work, `${name}.so`);
  fs.writeFileSync(src, lines.join("\n") + "\n");
  execFileSync("cc", ["-shared", "-fPIC", "-o", lib, src]);
  return lib;
}

async function statusIn(env: NodeJS.ProcessEnv): Promise<ChildResult> {
  const run = await runNode([childScript], { env });
  expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 0, stderr: "" });
  return JSON.parse(run.stdout) as ChildResult;
}

async function statusWith(library: string): Promise<ChildResult> {
  return statusIn({ MOE_EP_NCCL_LIBRARY: library });
}

function expectUnavailable(r: ChildResult, reasonStart: string): void {
  expect(r.status.available).toBe(false);
  expect(r.status.reason.startsWith(reasonStart)).toBe(true);
  expect(r.error).toEqual({
    code: "ERR_MOE_NCCL_UNAVAILABLE",
    message: `NCCL is unavailable: ${r.status.reason}`,
    isMoEError: true,
  });
  expect(r.sameAfterEnvChange).toBe(true);
}

beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-nccl-");
  childScript = script(work, "status.js", CHILD_SOURCE);
});

afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

describe("ncclStatus in this process", () => {
  test("is a complete report, and requireNccl agrees with it", () => {
    const s = ncclStatus();
    expect(Object.keys(s).sort()).toEqual(
      ["available", "library", "loaded", "nonBlocking", "reason", "supportsBf16", "version", "versionCode"].sort(),
    );
    if (s.available) {
      expect(s.reason).toBe("");
      expect(requireNccl()).toEqual(s);
    } else {
      expect(s.reason).not.toBe("");
      expect(() => requireNccl()).toThrow(MoEError);
      try {
        requireNccl();
      } catch (e) {
        expect((e as MoEError).code).toBe("ERR_MOE_NCCL_UNAVAILABLE");
        expect((e as MoEError).message).toContain(s.reason);
      }
    }
    // Computed once: the same object contents on every call.
    expect(ncclStatus()).toEqual(s);
  });
});

describe("library not found", () => {
  test("MOE_EP_NCCL_LIBRARY naming a missing file: the reason names the variable and the file", async () => {
    const missing = path.join(work, "no-such-dir", "libnccl.so.2");
    const r = await statusWith(missing);
    expectUnavailable(r, "library not found: ");
    expect(r.status.reason).toContain(`MOE_EP_NCCL_LIBRARY=${missing}`);
    expect(r.status).toMatchObject({
      loaded: false,
      version: "",
      versionCode: 0,
      library: missing,
      supportsBf16: false,
    });
  });

  test("unset (or empty): libnccl.so.2 is tried from the loader's path and named", async () => {
    // An empty LD_LIBRARY_PATH entry and an empty variable: the default name, nothing else.
    const r = await statusIn({ MOE_EP_NCCL_LIBRARY: "", LD_LIBRARY_PATH: work });
    if (r.status.loaded) return; // this machine has a system NCCL; the other tests still cover the reasons
    expectUnavailable(r, "library not found: tried libnccl.so.2 ");
    expect(r.status.library).toBe("libnccl.so.2");
    expect(r.status.reason).toContain("MOE_EP_NCCL_LIBRARY");
  });

  test("a file that is not a shared library: could not be loaded, with the loader's message", async () => {
    const junk = path.join(work, "junk.so");
    fs.writeFileSync(junk, "not an ELF file\n");
    const r = await statusWith(junk);
    expectUnavailable(r, "library could not be loaded: ");
    expect(r.status.reason).toContain(junk);
  });
});

describe("version", () => {
  test("2.6.2 (no ncclSend/ncclRecv yet) is too old: the reason names 2.6.2 and 2.7.3, not the missing symbols", async () => {
    const lib = fakeNccl(
      "v2602",
      2602,
      REQUIRED.filter((s) => s !== "ncclSend" && s !== "ncclRecv"),
    );
    const r = await statusWith(lib);
    expectUnavailable(r, "version too old: ");
    expect(r.status.reason).toContain("NCCL 2.6.2");
    expect(r.status.reason).toContain(">= 2.7.3");
    expect(r.status.reason).not.toContain("missing symbol");
    expect(r.status).toMatchObject({
      loaded: false,
      version: "2.6.2",
      versionCode: 2602,
      supportsBf16: false,
      library: lib,
    });
  });

  test("2.7.2, one patch short, is too old", async () => {
    const r = await statusWith(fakeNccl("v2702", 2702, REQUIRED));
    expectUnavailable(r, "version too old: ");
    expect(r.status.version).toBe("2.7.2");
  });

  test("ncclGetVersion failing: version unknown", async () => {
    const r = await statusWith(fakeNccl("vfail", null, REQUIRED));
    expectUnavailable(r, "version unknown: ");
  });

  // [code, version, bf16]: codes as NCCL encodes them, major*1000+minor*100+patch
  // up to 2.8 and major*10000+minor*100+patch from 2.9 on.
  const cases: [number, string, boolean, boolean][] = [
    [2703, "2.7.3", false, false],
    [2804, "2.8.4", false, false],
    [20906, "2.9.6", false, false],
    [21002, "2.10.2", false, false],
    [21003, "2.10.3", true, false],
    [21801, "2.18.1", true, true],
  ];
  test.each(cases)(
    "code %d is NCCL %s: loads, supportsBf16 %s, nonBlocking %s",
    async (code, version, bf16, nonBlocking) => {
      // ncclCommInitRankConfig is exported by every fake: it counts only from 2.14 on.
      const lib = fakeNccl(`v${code}`, code, [...REQUIRED, "ncclCommInitRankConfig", "ncclGetLastError"]);
      const r = await statusWith(lib);
      expect(r.status).toMatchObject({
        loaded: true,
        version,
        versionCode: code,
        supportsBf16: bf16,
        nonBlocking,
        library: lib,
      });
      expect(r.sameAfterEnvChange).toBe(true);
      if (r.cudaAvailable) {
        // A machine with a GPU: every check passes (the fake is never called).
        expect(r.status).toMatchObject({ available: true, reason: "" });
        expect(r.error).toBeNull();
      } else {
        // No device here: the library is fine, and the reason says what is missing instead.
        expectUnavailable(r, `no device: NCCL ${version} loaded from ${lib} but CUDA is unavailable: `);
        expect(r.status.reason).toContain(r.cudaReason);
      }
    },
  );
});

describe("missing symbols", () => {
  test("a library without ncclGetVersion is not taken for NCCL", async () => {
    const r = await statusWith(fakeNccl("noversion", 21801, REQUIRED, { withVersion: false }));
    expectUnavailable(r, "missing symbol: ");
    expect(r.status.reason).toContain("ncclGetVersion");
    expect(r.status.version).toBe("");
  });

  test("a new enough library without ncclCommAbort: the reason names it, and only it", async () => {
    const lib = fakeNccl(
      "noabort",
      21801,
      REQUIRED.filter((s) => s !== "ncclCommAbort"),
    );
    const r = await statusWith(lib);
    expectUnavailable(r, "missing symbol: ");
    expect(r.status.reason).toBe(`missing symbol: ${lib} (NCCL 2.18.1) has no ncclCommAbort`);
    // The version was read (it comes first) but the library is not usable.
    expect(r.status).toMatchObject({ loaded: false, version: "2.18.1", supportsBf16: false });
  });

  test("several missing functions are all named", async () => {
    const lib = fakeNccl(
      "nop2p",
      21801,
      REQUIRED.filter((s) => s !== "ncclSend" && s !== "ncclRecv" && s !== "ncclBroadcast"),
    );
    const r = await statusWith(lib);
    expectUnavailable(r, "missing symbol: ");
    expect(r.status.reason).toContain("has no ncclSend, ncclRecv, ncclBroadcast");
  });

  test("optional functions (ncclCommInitRankConfig) may be absent: blocking init then", async () => {
    const r = await statusWith(fakeNccl("noconfig", 21801, REQUIRED));
    expect(r.status).toMatchObject({ loaded: true, nonBlocking: false, supportsBf16: true });
  });
});

describe("the library stays private to moe-ep", () => {
  test("its symbols are not visible to other code in the process (RTLD_LOCAL)", async () => {
    // A second library, loaded after the fake NCCL, that looks ncclGetVersion up
    // in the global scope: with RTLD_LOCAL it must not find the fake's.
    const lib = fakeNccl("private", 21801, REQUIRED);
    const probeSrc = path.join(work, "probe.c");
    fs.writeFileSync(
      probeSrc,
      [
        "#define _GNU_SOURCE",
        "#include <dlfcn.h>",
        "#include <stdio.h>",
        "__attribute__((constructor)) static void probe(void) {",
        '  void* f = dlsym(RTLD_DEFAULT, "ncclGetVersion");',
        '  fprintf(stdout, "%s\\n", f ? "visible" : "hidden");',
        "  fflush(stdout);",
        "}",
      ].join("\n"),
    );
    const probe = path.join(work, "probe.node");
    execFileSync("cc", ["-shared", "-fPIC", "-o", probe, probeSrc, "-ldl"]);
    const src = `
      const { ncclStatus } = require(${JSON.stringify(path.join(commDir, "nccl"))});
      const s = ncclStatus();
      if (!s.loaded) throw new Error("fake not loaded: " + s.reason);
      try { process.dlopen({ exports: {} }, ${JSON.stringify(probe)}); } catch (e) { /* not an addon: the constructor already ran */ }
    `;
    const run = await runNode(["-e", src], { env: { MOE_EP_NCCL_LIBRARY: lib } });
    expect(run.code).toBe(0);
    expect(run.stdout.trim()).toBe("hidden");
  });
});
