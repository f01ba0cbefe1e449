/**
 * The grouped GEMM kernels as compiled code, checked without a GPU:
 *  - the archive build/libmoe_ep_cuda.a holds the mma.sync kernel in its sm_80
 *    and sm_90a cubins, and the wgmma kernel's body in the sm_90a cubin only
 *    (an empty stub elsewhere), none with a stack frame (where spills go);
 *  - ptxas -v, run here on the PTX of cuda/grouped_gemm_sm90.cu, reports no
 *    spills for any wgmma kernel;
 *  - the PTX of the Hopper kernel holds wgmma, bulk tensor copies and mbarriers,
 *    with the operand majorness each product was designed with;
 *  - cuda/grouped_gemm_plan.h (tile counts, per-expert offsets, grid bounds,
 *    shared memory and workspace sizes), compiled as plain C++, matches the
 *    arithmetic redone here;
 *  - the launchers refuse bad arguments with the documented status codes
 *    before they touch a device.
 * None of this runs a kernel.
 */
import { execFile, execFileSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { promisify } from "util";

import { embeddedCubins, findTool, parsePtxasReport, PtxasFunction } from "./cubin";
import { rng } from "./util";

const run = promisify(execFile);
const ROOT = path.join(__dirname, "..");
const CUDA_DIR = path.join(ROOT, "cuda");
const ARCHIVE = path.join(ROOT, "build", "libmoe_ep_cuda.a");
const nvcc = findTool("nvcc");
const cxx = findTool("c++") ?? findTool("g++");
const hasArchive = fs.existsSync(ARCHIVE);

// Constants of cuda/grouped_gemm_plan.h, restated.
const BM = 128;
const BN = 128;
const SM80 = { blockK: 32, stages: 4, threads: 256 };
const SM90 = { blockK: 64, stages: 4, threads: 384, alignSlack: 1024 };
const INVALID = -1;
const UNSUPPORTED = -2;
const INT32_MAX = 2147483647;

// Template instances <T, KIND, OutT> in Itanium mangling: gg_sm80_kernel<__half, 2, float>
// contains "gg_sm80_kernelI6__halfLi2EfEE"; OutT = T is the substitution S2_.
const DTYPES: [string, string][] = [
  ["bf16", "13__nv_bfloat16"],
  ["f16", "6__half"],
];
const KINDS: [string, number][] = [
  ["forward", 0],
  ["dx", 1],
  ["dw", 2],
];
const OUTS: [string, string][] = [
  ["same", "S2_"],
  ["f32", "f"],
];
function instances(family: string): { label: string; pattern: string }[] {
  const out: { label: string; pattern: string }[] = [];
  for (const [dt, dm] of DTYPES)
    for (const [kind, k] of KINDS)
      for (const [o, om] of OUTS)
        out.push({ label: `${family}<${dt}, ${kind}, out ${o}>`, pattern: `${family}I${dm}Li${k}E${om}EE` });
  return out;
}
const SM80_KERNELS = instances("gg_sm80_kernel");
const SM90_KERNELS = instances("gg_sm90_kernel");

// ---- the archive: which kernels each architecture's cubin holds ----------------------

const cubins = hasArchive ? embeddedCubins(ARCHIVE) : [];
const holding = (pattern: string, arch: string) =>
  cubins.filter((c) => c.arch === arch && [...c.functions.keys()].some((n) => n.includes(pattern)));
const archiveReason = !hasArchive
  ? `skipped: ${path.relative(ROOT, ARCHIVE)} is absent (build with nvcc: npx cmake-js compile)`
  : cubins.every((c) => ![...c.functions.keys()].some((n) => n.includes("gg_sm80_kernel")))
    ? "skipped: the archive holds no uncompressed grouped GEMM cubin (fatbinary compression is on)"
    : "";

describe("CUDA build: grouped GEMM kernels in build/libmoe_ep_cuda.a", () => {
  (archiveReason ? test.skip : test)(
    `the mma.sync kernel is in the sm_80 and sm_90a cubins, the wgmma body in sm_90a only, no stack frames (no spills)${archiveReason ? ` (${archiveReason})` : ""}`,
    () => {
      for (const arch of ["sm_80", "sm_90a"]) {
        for (const [family, list] of [
          ["gg_sm80_kernel", SM80_KERNELS],
          ["gg_sm90_kernel", SM90_KERNELS],
          ["gg_schedule_kernel", [{ label: "gg_schedule_kernel", pattern: "gg_schedule_kernel" }]],
        ] as const) {
          const images = holding(family, arch);
          expect({ arch, family, cubins: images.length }).toEqual({ arch, family, cubins: 1 });
          const fns = images[0].functions;
          for (const k of list) {
            const name = [...fns.keys()].find((n) => n.includes(k.pattern));
            expect({ arch, kernel: k.label, found: name !== undefined }).toEqual({
              arch,
              kernel: k.label,
              found: true,
            });
            const f = fns.get(name!)!;
            expect({ arch, kernel: k.label, frameBytes: f.frameBytes ?? 0 }).toEqual({
              arch,
              kernel: k.label,
              frameBytes: 0,
            });
            if (family === "gg_sm90_kernel") {
              // 64 float accumulators per consumer thread in the real body; the
              // stub that the other targets compile uses a handful of registers.
              const real = arch === "sm_90a";
              expect({ arch, kernel: k.label, body: (f.registers ?? 0) >= 64 }).toEqual({
                arch,
                kernel: k.label,
                body: real,
              });
            } else {
              expect(f.registers).toBeGreaterThan(0);
              // __launch_bounds__(256, 2) of the mma.sync kernel: at most 128 registers.
              if (family === "gg_sm80_kernel") expect(f.registers).toBeLessThanOrEqual(128);
            }
          }
        }
      }
    },
  );
});

// ---- ptxas and PTX of the Hopper file, compiled here -------------------------------------
// Only cuda/grouped_gemm_sm90.cu, to PTX and then through ptxas (no host
// compilation): about 10 s of CPU. The mma.sync kernels' spill check is the
// stack-frame check on the archive's cubins above.

const ptxas = findTool("ptxas");
const nvccReason = nvcc && ptxas ? "" : "skipped: nvcc or ptxas is not in PATH, $CUDA_HOME/bin or /usr/local/cuda/bin";
const COMMON = ["-std=c++17", "--expt-relaxed-constexpr", `-I${CUDA_DIR}`];

interface Compiled {
  report: PtxasFunction[];
  warnings: string[];
  ptx90: string; // -arch=sm_90a
  ptx80: string; // -arch=sm_80: the stubs
}

let compiled: Compiled | undefined;

describe("CUDA build: ptxas and PTX of cuda/grouped_gemm_sm90.cu", () => {
  beforeAll(async () => {
    if (nvccReason) return;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-gg-build-"));
    const src = path.join(CUDA_DIR, "grouped_gemm_sm90.cu");
    // nvcc prints nothing on stdout; ptxas -v reports on stderr.
    const build = async (arch: string) => {
      const ptx = path.join(dir, `${arch}.ptx`);
      const front = await run(nvcc!, [...COMMON, "-ptx", `-arch=${arch}`, src, "-o", ptx], { maxBuffer: 16 << 20 });
      const back = await run(ptxas!, ["-v", `-arch=${arch}`, ptx, "-o", path.join(dir, `${arch}.cubin`)], {
        maxBuffer: 16 << 20,
      });
      return { text: `${front.stderr}\n${back.stdout}\n${back.stderr}`, ptx: fs.readFileSync(ptx, "utf8") };
    };
    try {
      const [h, a] = await Promise.all([build("sm_90a"), build("sm_80")]);
      const text = `${h.text}\n${a.text}`;
      compiled = {
        report: parsePtxasReport(text),
        warnings: text.split("\n").filter((l) => /warning/i.test(l)),
        ptx90: h.ptx,
        ptx80: a.ptx,
      };
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 85_000);

  (nvccReason ? test.skip : test)(
    `ptxas -v: every wgmma kernel instance compiles for sm_90a without warnings, with 0 bytes spill stores, 0 bytes spill loads and no stack frame${nvccReason ? ` (${nvccReason})` : ""}`,
    () => {
      const c = compiled!;
      expect(c.warnings).toEqual([]);
      for (const k of SM90_KERNELS) {
        const hits = c.report.filter((f) => f.arch === "sm_90a" && f.name.includes(k.pattern));
        expect({ kernel: k.label, reports: hits.length }).toEqual({ kernel: k.label, reports: 1 });
        const f = hits[0];
        expect({ kernel: k.label, stack: f.stackBytes, spillStores: f.spillStores, spillLoads: f.spillLoads }).toEqual({
          kernel: k.label,
          stack: 0,
          spillStores: 0,
          spillLoads: 0,
        });
        // __launch_bounds__(384, 1): at most 168 registers per thread.
        expect(f.registers).toBeLessThanOrEqual(168);
      }
    },
  );

  (nvccReason ? test.skip : test)(
    `ptxas -v: the wgmma kernel's mbarriers (2 x ${SM90.stages} x 8 bytes of static shared memory) exist for sm_90a only, which is how the launcher tells the body from the stub${nvccReason ? ` (${nvccReason})` : ""}`,
    () => {
      const c = compiled!;
      for (const k of SM90_KERNELS) {
        const on90 = c.report.find((f) => f.arch === "sm_90a" && f.name.includes(k.pattern))!;
        const on80 = c.report.find((f) => f.arch === "sm_80" && f.name.includes(k.pattern))!;
        expect({ kernel: k.label, sm90a: on90.sharedBytes, sm80: on80.sharedBytes }).toEqual({
          kernel: k.label,
          sm90a: 2 * SM90.stages * 8,
          sm80: 0,
        });
      }
    },
  );

  (nvccReason ? test.skip : test)(
    `PTX for sm_90a holds wgmma.mma_async m64n128k16 (bf16, f16), cp.async.bulk.tensor and mbarrier pipelining, with trans flags (A, B) = (0, 1) forward, (0, 0) dx, (1, 1) dw${nvccReason ? ` (${nvccReason})` : ""}`,
    () => {
      const ptx = compiled!.ptx90;
      for (const needle of [
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16",
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16",
        "wgmma.fence.sync.aligned",
        "wgmma.commit_group.sync.aligned",
        "wgmma.wait_group.sync.aligned",
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes",
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes",
        "mbarrier.init.shared::cta.b64",
        "mbarrier.arrive.expect_tx.shared::cta.b64",
        "mbarrier.try_wait.parity.shared::cta.b64",
        "fence.proxy.async.shared::cta",
        "prefetch.tensormap",
      ])
        expect({ needle, found: ptx.includes(needle) }).toEqual({ needle, found: true });
      // "..., descA, descB, p, 1, 1, transA, transB;" — K-major A and N-major B
      // (w [K, N]) forward; K-major both for dx (w rows); M- and N-major for dw.
      const flags = new Set(
        [...ptx.matchAll(/wgmma\.mma_async[^;]*, p, 1, 1, (\d), (\d);/g)].map((m) => `${m[1]},${m[2]}`),
      );
      expect([...flags].sort()).toEqual(["0,0", "0,1", "1,1"]);
    },
  );

  (nvccReason ? test.skip : test)(
    `PTX for sm_80 of the same file: stubs only (no wgmma, no bulk copies, no mbarriers)${nvccReason ? ` (${nvccReason})` : ""}`,
    () => {
      expect(compiled!.ptx80).toMatch(/gg_sm90_kernel/);
      expect(compiled!.ptx80).not.toMatch(/wgmma|cp\.async\.bulk|mbarrier/);
    },
  );
});

// ---- cuda/grouped_gemm_plan.h as plain C++ ------------------------------------------------

const planReason = cxx ? "" : "skipped: no C++ compiler (c++ or g++) in PATH";

const ceilDiv = (a: number, b: number) => Math.floor((a + b - 1) / b);
const expertTiles = (rows: number, nOut: number) =>
  rows <= 0 || nOut <= 0 ? 0 : ceilDiv(rows, BM) * ceilDiv(nOut, BN);
const maxMTiles = (R: number, L: number) => (R <= 0 || L <= 0 ? 0 : Math.floor((R + Math.min(L, R) * (BM - 1)) / BM));
const workspaceBytes = (L: number) => (L < 1 ? 0 : Math.ceil((4 * (4 + 2 * (L + 1))) / 16) * 16);

interface OffsetCase {
  counts: number[];
  totalRows: number;
  nOut: number;
}
interface OffsetRow {
  bad: number;
  rowStart: number[];
  tileStart: number[];
}
// [kind, R, L, K, N, dtype, sm90]
type PlanCase = [number, number, number, number, number, number, number];
interface PlanRow {
  args: PlanCase;
  status: number;
  grid: number;
  tilesN: number;
  nOut: number;
  kRed: number;
  threads: number;
  sharedBytes: number;
  workspaceBytes: number;
}

function offsetCases(): OffsetCase[] {
  const r = rng(20240605);
  const cases: OffsetCase[] = [];
  for (let i = 0; i < 24; i++) {
    const L = 1 + Math.floor(r() * (i < 20 ? 70 : 300));
    const counts = Array.from({ length: L }, () => (r() < 0.25 ? 0 : Math.floor(r() * (r() < 0.5 ? 300 : 5000))));
    const sum = counts.reduce((a, b) => a + b, 0);
    cases.push({ counts, totalRows: sum + Math.floor(r() * 200), nOut: 8 * (1 + Math.floor(r() * 600)) });
  }
  // Edges: all empty, one row, exact tile multiples, a negative count, a sum above R.
  cases.push({ counts: [0, 0, 0], totalRows: 0, nOut: 128 });
  cases.push({ counts: [0, 1, 0], totalRows: 1, nOut: 8 });
  cases.push({ counts: [128, 256, 0, 129], totalRows: 513, nOut: 256 });
  cases.push({ counts: [5, -1, 7], totalRows: 100, nOut: 64 });
  cases.push({ counts: [50, 60], totalRows: 109, nOut: 64 });
  // The grid bound is attained: min(L, R) experts with one row, the rest of R in whole tiles.
  for (const [L, R] of [
    [8, 1000],
    [8, 5],
    [64, 64 * 129 + 77],
  ]) {
    const n = Math.min(L, R);
    const counts = Array.from({ length: L }, (_, e) => (e < n ? 1 : 0));
    counts[0] += Math.floor((R - n) / BM) * BM;
    cases.push({ counts, totalRows: R, nOut: 128 });
  }
  return cases;
}

function planCases(): PlanCase[] {
  const cases: PlanCase[] = [];
  for (const sm90 of [0, 1])
    for (const kind of [0, 1, 2]) {
      cases.push([kind, 32768, 8, 4096, 14336, 0, sm90]);
      cases.push([kind, 1000, 3, 72, 200, 1, sm90]);
      cases.push([kind, 0, 4, 64, 64, 0, sm90]);
      cases.push([kind, 7, 64, 8, 8, 1, sm90]);
    }
  cases.push([0, 100, 4, 12, 64, 0, 0]); // K % 8 != 0
  cases.push([1, 100, 4, 64, 20, 0, 1]); // N % 8 != 0
  cases.push([2, 3000000000, 4, 64, 64, 0, 0]); // R > INT32_MAX
  cases.push([0, 2000000000, 1, 64, 8 * 1000000, 0, 0]); // grid > INT32_MAX
  cases.push([3, 100, 4, 64, 64, 0, 0]); // unknown kind
  cases.push([0, -1, 4, 64, 64, 0, 0]);
  cases.push([0, 100, 0, 64, 64, 0, 0]);
  cases.push([0, 100, 4, 0, 64, 0, 0]);
  cases.push([0, 100, 4, 64, 0, 0, 0]);
  cases.push([0, 100, 4, 64, 64, 2, 0]); // unknown dtype
  return cases;
}

function expectedPlan(c: PlanCase): Omit<PlanRow, "args"> | { status: number } {
  const [kind, R, L, K, N, dtype, sm90] = c;
  if (![0, 1, 2].includes(kind) || R < 0 || L < 1 || K < 1 || N < 1 || ![0, 1].includes(dtype))
    return { status: INVALID };
  if (K % 8 !== 0 || N % 8 !== 0 || R > INT32_MAX) return { status: UNSUPPORTED };
  const nOut = kind === 1 ? K : N;
  const tilesN = ceilDiv(nOut, BN);
  const grid = kind === 2 ? L * ceilDiv(K, BM) * tilesN : maxMTiles(R, L) * tilesN;
  if (grid > INT32_MAX) return { status: UNSUPPORTED };
  const cfg = sm90 ? SM90 : SM80;
  const stage = (BM * cfg.blockK + cfg.blockK * BN) * 2;
  return {
    status: 0,
    grid,
    tilesN,
    nOut,
    kRed: kind === 0 ? K : kind === 1 ? N : 0,
    threads: cfg.threads,
    sharedBytes: cfg.stages * stage + (sm90 ? SM90.alignSlack : 0),
    workspaceBytes: workspaceBytes(L),
  };
}

describe("cuda/grouped_gemm_plan.h", () => {
  const oCases = offsetCases();
  const pCases = planCases();
  let offsets: OffsetRow[] = [];
  let plans: PlanRow[] = [];
  let maxTiles: number[] = [];
  let wsFn: number[] = [];

  beforeAll(() => {
    if (planReason) return;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-gg-plan-"));
    const src = path.join(dir, "plan.cpp");
    const exe = path.join(dir, "plan");
    const offsetCalls = oCases
      .map(
        (c, i) =>
          `  { static const int32_t c${i}[] = {${c.counts.join(", ")}}; offsets(c${i}, ${c.counts.length}, ${c.totalRows}LL, ${c.nOut}LL); }`,
      )
      .join("\n");
    const planCalls = pCases
      .map((c) => `  plan(${c[0]}, ${c[1]}LL, ${c[2]}, ${c[3]}LL, ${c[4]}LL, ${c[5]}, ${c[6]});`)
      .join("\n");
    const boundCalls = oCases
      .map(
        (c) => `  std::printf("%lld\\n", (long long)moe_cuda::gg_max_m_tiles(${c.totalRows}LL, ${c.counts.length}));`,
      )
      .join("\n");
    fs.writeFileSync(
      src,
      `#include "grouped_gemm_plan.h"
#include <cstdio>
#include <vector>
static void offsets(const int32_t* counts, int L, long long R, long long nOut) {
  std::vector<int32_t> rs(L + 1), ts(L + 1);
  int bad = moe_cuda::gg_offsets(counts, L, R, nOut, rs.data(), ts.data());
  std::printf("{\\"bad\\":%d,\\"rowStart\\":[", bad);
  for (int e = 0; e <= L; ++e) std::printf(e ? ",%d" : "%d", rs[e]);
  std::printf("],\\"tileStart\\":[");
  for (int e = 0; e <= L; ++e) std::printf(e ? ",%d" : "%d", ts[e]);
  std::printf("]}\\n");
}
static void plan(int kind, long long R, int L, long long K, long long N, int dtype, int sm90) {
  moe_cuda::GgPlan p = moe_cuda::gg_plan(kind, R, L, K, N, dtype, sm90 != 0);
  std::printf("{\\"args\\":[%d,%lld,%d,%lld,%lld,%d,%d],\\"status\\":%d,\\"grid\\":%lld,\\"tilesN\\":%lld,\\"nOut\\":%lld,"
              "\\"kRed\\":%lld,\\"threads\\":%d,\\"sharedBytes\\":%zu,\\"workspaceBytes\\":%zu}\\n",
              kind, R, L, K, N, dtype, sm90, p.status, (long long)p.grid, (long long)p.tilesN, (long long)p.nOut,
              (long long)p.kRed, p.threads, p.sharedBytes, p.workspaceBytes);
}
int main() {
${offsetCalls}
  std::printf("--\\n");
${planCalls}
  std::printf("--\\n");
${boundCalls}
  std::printf("--\\n");
  for (int L = 0; L <= 70; ++L) std::printf("%zu\\n", moe_cuda::gg_workspace_bytes(L));
}
`,
    );
    // No CUDA include path on purpose: the header must stand alone.
    execFileSync(cxx!, ["-std=c++17", "-Wall", "-Wextra", "-Werror", `-I${CUDA_DIR}`, src, "-o", exe]);
    const [o, p, b, w] = execFileSync(exe, { encoding: "utf8", maxBuffer: 16 << 20 })
      .trim()
      .split("--\n")
      .map((s) => s.trim().split("\n"));
    offsets = o.map((l) => JSON.parse(l) as OffsetRow);
    plans = p.map((l) => JSON.parse(l) as PlanRow);
    maxTiles = b.map(Number);
    wsFn = w.map(Number);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  (planReason ? test.skip : test)(
    `per-expert row offsets and tile starts are the exclusive prefix sums of the counts and of ceil(c/${BM}) * ceil(nOut/${BN}); bad counts schedule nothing${planReason ? ` (${planReason})` : ""}`,
    () => {
      expect(offsets.length).toBe(oCases.length);
      oCases.forEach((c, i) => {
        const L = c.counts.length;
        const sum = c.counts.reduce((a, b) => a + Math.max(b, 0), 0);
        const bad = c.counts.some((v) => v < 0) || sum > c.totalRows ? 1 : 0;
        const rowStart = new Array<number>(L + 1).fill(0);
        const tileStart = new Array<number>(L + 1).fill(0);
        if (!bad)
          for (let e = 0; e < L; e++) {
            rowStart[e + 1] = rowStart[e] + c.counts[e];
            tileStart[e + 1] = tileStart[e] + expertTiles(c.counts[e], c.nOut);
          }
        expect({ case: i, ...offsets[i] }).toEqual({ case: i, bad, rowStart, tileStart });
        // Zero-row experts own no tiles: their tile range is empty.
        c.counts.forEach((v, e) => {
          if (v === 0) expect(offsets[i].tileStart[e + 1]).toBe(offsets[i].tileStart[e]);
        });
      });
      expect(new Set(offsets.map((o) => o.bad))).toEqual(new Set([0, 1]));
    },
  );

  (planReason ? test.skip : test)(
    `the forward / dx grid bound covers every count vector summing to at most R, and is attained${planReason ? ` (${planReason})` : ""}`,
    () => {
      let attained = 0;
      oCases.forEach((c, i) => {
        expect(maxTiles[i]).toBe(maxMTiles(c.totalRows, c.counts.length));
        if (offsets[i].bad) return;
        const mTiles = c.counts.reduce((a, v) => a + ceilDiv(Math.max(v, 0), BM), 0);
        expect({ case: i, covered: mTiles <= maxTiles[i] }).toEqual({ case: i, covered: true });
        if (mTiles === maxTiles[i] && mTiles > 0) attained++;
      });
      expect(attained).toBeGreaterThanOrEqual(3);
    },
  );

  (planReason ? test.skip : test)(
    `plans: status, grid, tiles, threads, shared memory (sm_80 ${SM80.stages} x 16 KB; sm_90a ${SM90.stages} x 32 KB + 1 KB alignment) and workspace${planReason ? ` (${planReason})` : ""}`,
    () => {
      expect(plans.length).toBe(pCases.length);
      plans.forEach((r, i) => {
        const exp = expectedPlan(pCases[i]);
        const got =
          r.status === 0
            ? {
                status: 0,
                grid: r.grid,
                tilesN: r.tilesN,
                nOut: r.nOut,
                kRed: r.kRed,
                threads: r.threads,
                sharedBytes: r.sharedBytes,
                workspaceBytes: r.workspaceBytes,
              }
            : { status: r.status };
        expect({ args: r.args, ...got }).toEqual({ args: pCases[i], ...exp });
      });
      expect(new Set(plans.map((r) => r.status))).toEqual(new Set([0, INVALID, UNSUPPORTED]));
      // Both kernels fit an sm_80 (164 KB) / sm_90 (227 KB) SM's opt-in shared memory.
      const ok = plans.filter((r) => r.status === 0);
      expect(Math.max(...ok.filter((r) => r.threads === SM80.threads).map((r) => r.sharedBytes))).toBeLessThanOrEqual(
        164 * 1024,
      );
      expect(Math.max(...ok.filter((r) => r.threads === SM90.threads).map((r) => r.sharedBytes))).toBeLessThanOrEqual(
        227 * 1024,
      );
      wsFn.forEach((v, L) => expect({ L, bytes: v }).toEqual({ L, bytes: workspaceBytes(L) }));
    },
  );
});

// ---- the launchers' argument checks, linked against the archive -------------------------------

const launcherReason = !hasArchive
  ? `skipped: ${path.relative(ROOT, ARCHIVE)} is absent (build with nvcc: npx cmake-js compile)`
  : nvccReason;

describe("grouped GEMM launchers (launchers.h)", () => {
  let out: Record<string, number> = {};
  beforeAll(async () => {
    if (launcherReason) return;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-gg-launch-"));
    const src = path.join(dir, "launch.cpp");
    const exe = path.join(dir, "launch");
    // Fake, 16-byte aligned "device" addresses: the calls below must fail before
    // anything dereferences them; the one call with valid arguments is made only
    // when no device is visible (it then fails in the device query).
    fs.writeFileSync(
      src,
      `#include "launchers.h"
#include <cstdio>
int main() {
  void* p = reinterpret_cast<void*>(0x10000);
  void* q = reinterpret_cast<void*>(0x20000);
  void* o = reinterpret_cast<void*>(0x30000);
  const int32_t* c = reinterpret_cast<const int32_t*>(0x40000);
  void* ws = reinterpret_cast<void*>(0x50000);
  const size_t wsb = moe_cuda_grouped_gemm_workspace_bytes(8);
  std::printf("{");
  std::printf("\\"wsBytes8\\":%zu,", wsb);
  std::printf("\\"kNotMultipleOf8\\":%d,", moe_cuda_grouped_gemm(p, q, nullptr, c, o, 100, 8, 12, 64, MOE_CUDA_GG_BF16, 0, ws, wsb, nullptr, nullptr));
  std::printf("\\"nNotMultipleOf8\\":%d,", moe_cuda_grouped_gemm_dx(p, q, c, o, 100, 8, 64, 20, MOE_CUDA_GG_F16, 0, ws, wsb, nullptr, nullptr));
  std::printf("\\"noExperts\\":%d,", moe_cuda_grouped_gemm_dw(p, q, c, o, 100, 0, 64, 64, MOE_CUDA_GG_BF16, 0, ws, wsb, nullptr, nullptr));
  std::printf("\\"badDtype\\":%d,", moe_cuda_grouped_gemm(p, q, nullptr, c, o, 100, 8, 64, 64, 7, 0, ws, wsb, nullptr, nullptr));
  std::printf("\\"unknownFlag\\":%d,", moe_cuda_grouped_gemm(p, q, nullptr, c, o, 100, 8, 64, 64, MOE_CUDA_GG_BF16, 0x100, ws, wsb, nullptr, nullptr));
  std::printf("\\"activationOnDx\\":%d,", moe_cuda_grouped_gemm_dx(p, q, c, o, 100, 8, 64, 64, MOE_CUDA_GG_BF16, MOE_CUDA_GG_ACT_RELU, ws, wsb, nullptr, nullptr));
  std::printf("\\"nullX\\":%d,", moe_cuda_grouped_gemm(nullptr, q, nullptr, c, o, 100, 8, 64, 64, MOE_CUDA_GG_BF16, 0, ws, wsb, nullptr, nullptr));
  std::printf("\\"nullCounts\\":%d,", moe_cuda_grouped_gemm_dw(p, q, nullptr, o, 100, 8, 64, 64, MOE_CUDA_GG_BF16, 0, ws, wsb, nullptr, nullptr));
  std::printf("\\"misaligned\\":%d,", moe_cuda_grouped_gemm(static_cast<char*>(p) + 2, q, nullptr, c, o, 100, 8, 64, 64, MOE_CUDA_GG_BF16, 0, ws, wsb, nullptr, nullptr));
  std::printf("\\"smallWorkspace\\":%d,", moe_cuda_grouped_gemm(p, q, nullptr, c, o, 100, 8, 64, 64, MOE_CUDA_GG_BF16, 0, ws, wsb - 16, nullptr, nullptr));
  int uses = -1;
  std::printf("\\"forcedStatus\\":%d,", moe_cuda_grouped_gemm_uses_sm90(MOE_CUDA_GG_FORCE_SM80, &uses));
  std::printf("\\"forcedUses\\":%d,", uses);
  int rt = 0, drv = 0;
  char reason[256];
  const int devices = moe_cuda_probe(&rt, &drv, reason, sizeof reason);
  std::printf("\\"devices\\":%d", devices);
  if (devices == 0)
    std::printf(",\\"validWithoutDevice\\":%d", moe_cuda_grouped_gemm(p, q, nullptr, c, o, 100, 8, 64, 64, MOE_CUDA_GG_BF16, 0, ws, wsb, nullptr, nullptr));
  std::printf("}\\n");
}
`,
    );
    try {
      await run(nvcc!, ["-std=c++17", `-I${CUDA_DIR}`, src, ARCHIVE, "-o", exe]);
      out = JSON.parse((await run(exe, [])).stdout) as Record<string, number>;
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  (launcherReason ? test.skip : test)(
    `bad arguments return MOE_CUDA_ERR_INVALID_ARGUMENT (-1), K or N not a multiple of 8 MOE_CUDA_ERR_UNSUPPORTED (-2), before any device call${launcherReason ? ` (${launcherReason})` : ""}`,
    () => {
      expect(out.wsBytes8).toBe(workspaceBytes(8));
      expect(out).toMatchObject({
        kNotMultipleOf8: UNSUPPORTED,
        nNotMultipleOf8: UNSUPPORTED,
        noExperts: INVALID,
        badDtype: INVALID,
        unknownFlag: INVALID,
        activationOnDx: INVALID,
        nullX: INVALID,
        nullCounts: INVALID,
        misaligned: INVALID,
        smallWorkspace: INVALID,
        forcedStatus: 0,
        forcedUses: 0,
      });
      // Without a device, valid arguments get the runtime's error (a positive cudaError_t).
      if (out.devices === 0) expect(out.validWithoutDevice).toBeGreaterThan(0);
    },
  );
});
