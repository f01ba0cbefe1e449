/**
 * Properties of the compiled CUDA code, checked without a GPU: the route
 * kernels exist as SASS for every target architecture, and none of them (nor
 * any device function they call) has a local-memory stack frame, which is
 * where register spills go. Read two ways: with cuobjdump when the toolkit has
 * it, and from the cubins embedded in build/libmoe_ep_cuda.a (ELF sections
 * .nv.info and .note.nv.tkinfo) when they are stored uncompressed. Also the
 * host-side launch planning of cuda/route_plan.h, compiled as plain C++.
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { embeddedCubins, findTool } from "./cubin";

const ROOT = path.join(__dirname, "..");
const ARCHIVE = path.join(ROOT, "build", "libmoe_ep_cuda.a");
const ARCHS = ["sm_80", "sm_90a"];
const EXPERTS_PER_LANE = [1, 2, 4, 8, 16];
// Itanium-mangled template kernels: route_forward_kernel<8> contains "route_forward_kernelILi8EE".
const KERNELS = [
  ...EXPERTS_PER_LANE.map((n) => `route_forward_kernelILi${n}EE`),
  ...EXPERTS_PER_LANE.map((n) => `route_backward_kernelILi${n}EE`),
  "route_sums_kernel",
  "route_finalize_kernel",
];

const hasArchive = fs.existsSync(ARCHIVE);
const cuobjdump = findTool("cuobjdump");
const cubins = hasArchive ? embeddedCubins(ARCHIVE) : [];
const routeCubins = cubins.filter((c) => [...c.functions.keys()].some((n) => n.includes("route_forward_kernel")));

const noArchive = `skipped: ${path.relative(ROOT, ARCHIVE)} is absent (build with nvcc: npx cmake-js compile)`;
const cuobjdumpReason = !hasArchive
  ? noArchive
  : !cuobjdump
    ? "skipped: cuobjdump is not in PATH, $CUDA_HOME/bin or /usr/local/cuda/bin"
    : "";
const embeddedReason = !hasArchive
  ? noArchive
  : routeCubins.length === 0
    ? "skipped: the archive holds no uncompressed route cubin (fatbinary compression is on)"
    : "";

describe("CUDA build: route kernels", () => {
  (embeddedReason ? test.skip : test)(
    `SASS for ${ARCHS.join(" and ")} has every route kernel, none with a stack frame (no spills), read from the embedded cubins${embeddedReason ? ` (${embeddedReason})` : ""}`,
    () => {
      for (const arch of ARCHS) {
        const forArch = routeCubins.filter((c) => c.arch === arch);
        expect({ arch, cubins: forArch.length }).toEqual({ arch, cubins: 1 });
        const functions = forArch[0].functions;
        for (const kernel of KERNELS) {
          const name = [...functions.keys()].find((n) => n.includes(kernel));
          expect({ arch, kernel, found: name !== undefined }).toEqual({ arch, kernel, found: true });
          expect(functions.get(name!)!.registers).toBeGreaterThan(0);
        }
        // Kernels and the device functions they call (division slow paths, ...).
        const framed = [...functions]
          .filter(([, f]) => (f.frameBytes ?? 0) !== 0)
          .map(([n, f]) => `${n}: ${f.frameBytes} bytes`);
        expect({ arch, framed }).toEqual({ arch, framed: [] });
      }
    },
  );

  (cuobjdumpReason ? test.skip : test)(
    `cuobjdump lists ${ARCHS.join(" and ")} and reports STACK:0 LOCAL:0 for every route kernel${cuobjdumpReason ? ` (${cuobjdumpReason})` : ""}`,
    () => {
      const list = execFileSync(cuobjdump!, ["--list-elf", ARCHIVE], { encoding: "utf8" });
      for (const arch of ARCHS) expect(list).toMatch(new RegExp(`\\b${arch}\\.cubin`));

      // "arch = sm_80" opens each image; "Function NAME:" is followed by a line
      // "REG:n STACK:n SHARED:n LOCAL:n ...".
      const usage = execFileSync(cuobjdump!, ["--dump-resource-usage", ARCHIVE], { encoding: "utf8" });
      const seen = new Map<string, { stack: number; local: number }>();
      let arch = "";
      let fn = "";
      for (const line of usage.split("\n")) {
        const a = /arch = (sm_\w+)/.exec(line);
        if (a) arch = a[1];
        const f = /Function ([^\s:]+):/.exec(line);
        if (f) fn = f[1];
        const r = /STACK:(\d+).*LOCAL:(\d+)/.exec(line);
        if (r && fn) {
          seen.set(`${arch} ${fn}`, { stack: Number(r[1]), local: Number(r[2]) });
          fn = "";
        }
      }
      for (const a of ARCHS) {
        for (const kernel of KERNELS) {
          const hits = [...seen].filter(([key]) => key.startsWith(`${a} `) && key.includes(kernel));
          expect({ arch: a, kernel, found: hits.length > 0 }).toEqual({ arch: a, kernel, found: true });
          for (const [key, u] of hits) expect({ key, ...u }).toEqual({ key, stack: 0, local: 0 });
        }
      }
    },
  );
});

// Every other kernel behind cuda/launchers.h (device memory checks, gate,
// permute, unpermute, activations, AdamW); each name appears in some cubin of
// each architecture.
const OTHER_KERNELS = [
  "route_scores_kernel",
  "check_finite_kernel",
  "check_range_kernel",
  "flag_if_positive_kernel",
  "status_reset_kernel",
  "gemm_kernel",
  "permute_count_kernel",
  "permute_plan_kernel",
  "permute_sort_kernel",
  "permute_select_kernel",
  "permute_scatter_kernel",
  "permute_zero_kernel",
  "combine_kernel",
  "row_readers_init_kernel",
  "row_readers_kernel",
  "unpermute_bwd_pairs_kernel",
  "unpermute_bwd_rows_kernel",
  "activation_forward_kernel",
  "activation_backward_kernel",
  "adamw_kernel",
  "elementwise_add_kernel",
  "axpby_kernel",
  "sum_squares_partials_kernel",
  "sum_squares_finish_kernel",
  "expert_bias_update_kernel",
  "fill_random_kernel",
  "jitter_kernel",
  "chunk_plan_kernel",
  "chunk_copy_kernel",
];
const archCubins = (arch: string) => cubins.filter((c) => c.arch === arch);
const allReason = !hasArchive
  ? noArchive
  : ARCHS.some((a) => archCubins(a).length === 0)
    ? "skipped: the archive holds no uncompressed cubins (fatbinary compression is on)"
    : "";

describe("CUDA build: every kernel", () => {
  (allReason ? test.skip : test)(
    `SASS for ${ARCHS.join(" and ")} has every kernel of the launchers, and no function in the archive (CUB's included) has a stack frame${allReason ? ` (${allReason})` : ""}`,
    () => {
      for (const arch of ARCHS) {
        const names = archCubins(arch).flatMap((c) => [...c.functions.keys()]);
        for (const kernel of OTHER_KERNELS)
          expect({ arch, kernel, found: names.some((n) => n.includes(kernel)) }).toEqual({ arch, kernel, found: true });
        const framed = archCubins(arch).flatMap((c) =>
          [...c.functions].filter(([, f]) => (f.frameBytes ?? 0) !== 0).map(([n, f]) => `${n}: ${f.frameBytes} bytes`),
        );
        expect({ arch, framed }).toEqual({ arch, framed: [] });
      }
    },
  );
});

// ---- cuda/route_plan.h, compiled as plain C++ (it must not need CUDA) -----------------

const cxx = findTool("c++") ?? findTool("g++");
const planReason = cxx ? "" : "skipped: no C++ compiler (c++ or g++) in PATH";

interface PlanRow {
  args: number[];
  status: number;
  expertsPerLane: number;
  blocks: number;
  sharedBytes: number;
  workspaceBytes: number;
  wsFn: number;
}

describe("cuda/route_plan.h", () => {
  const INVALID = -1;
  const UNSUPPORTED = -2;
  // [tokens, experts, topK, groups, topkGroups]
  const cases: number[][] = [
    [0, 8, 2, 0, 0],
    [1, 8, 2, 0, 0],
    [7, 32, 1, 0, 0],
    [9, 33, 4, 0, 0],
    [100, 64, 2, 0, 0],
    [4096, 65, 8, 0, 0],
    [1 << 20, 256, 8, 8, 4],
    [5, 257, 8, 0, 0],
    [5, 512, 512, 8, 8],
    [5, 513, 1, 0, 0],
    [5, 8, 9, 0, 0],
    [5, 8, 0, 0, 0],
    [-1, 8, 2, 0, 0],
    [5, 10, 2, 4, 2],
    [5, 16, 9, 4, 2],
    [5, 16, 8, 4, 5],
    [5, 16, 8, 4, 2],
    [5, 16, 2, -1, 0],
  ];

  let rows: PlanRow[] = [];
  beforeAll(() => {
    if (planReason) return;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-route-plan-"));
    const src = path.join(dir, "plan.cpp");
    const exe = path.join(dir, "plan");
    const calls = cases.map((c) => `  row(${c[0]}LL, ${c[1]}, ${c[2]}, ${c[3]}, ${c[4]});`).join("\n");
    fs.writeFileSync(
      src,
      `#include "route_plan.h"
#include <cstdio>
static void row(long long t, int e, int k, int g, int tg) {
  moe_cuda::RoutePlan p = moe_cuda::route_plan(t, e, k, g, tg);
  std::printf("{\\"args\\":[%lld,%d,%d,%d,%d],\\"status\\":%d,\\"expertsPerLane\\":%d,\\"blocks\\":%lld,"
              "\\"sharedBytes\\":%zu,\\"workspaceBytes\\":%zu,\\"wsFn\\":%zu}\\n",
              t, e, k, g, tg, p.status, p.expertsPerLane, static_cast<long long>(p.blocks), p.sharedBytes,
              p.workspaceBytes, moe_cuda::route_workspace_bytes(t, e));
}
int main() {
${calls}
}
`,
    );
    // No CUDA include path on purpose: the header must stand alone.
    execFileSync(cxx!, ["-std=c++17", "-Wall", "-Wextra", "-Werror", `-I${path.join(ROOT, "cuda")}`, src, "-o", exe]);
    rows = execFileSync(exe, { encoding: "utf8" })
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as PlanRow);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  (planReason ? test.skip : test)(
    `compiles without CUDA and sizes grids, shared memory and workspaces by its documented formulas${planReason ? ` (${planReason})` : ""}`,
    () => {
      expect(rows.length).toBe(cases.length);
      for (const r of rows) {
        const [t, e, k, g, tg] = r.args;
        const invalid =
          t < 0 || e < 1 || k < 1 || k > e || g < 0 || (g > 1 && (e % g !== 0 || tg < 1 || tg > g || k > tg * (e / g)));
        // ceil(E / 32) rounded up to a compiled power of two, at most 16 (E <= 512)
        const need = Math.ceil(e / 32);
        const epl = [1, 2, 4, 8, 16].find((v) => v >= need) ?? 0;
        const blocks = t <= 0 ? 0 : Math.min(Math.ceil(t / 4), 1024);
        const shared = 4 * (4 * (e + 2 * k + (g > 1 ? e + g : 0)) + e);
        const expected = invalid
          ? { status: INVALID }
          : epl === 0 || shared > 48 * 1024
            ? { status: UNSUPPORTED }
            : { status: 0, expertsPerLane: epl, blocks, sharedBytes: shared, workspaceBytes: blocks * (2 * e + 1) * 4 };
        const got =
          r.status === 0
            ? {
                status: 0,
                expertsPerLane: r.expertsPerLane,
                blocks: r.blocks,
                sharedBytes: r.sharedBytes,
                workspaceBytes: r.workspaceBytes,
              }
            : { status: r.status };
        expect({ args: r.args, ...got }).toEqual({ args: r.args, ...expected });
        if (e >= 1) expect({ args: r.args, ws: r.wsFn }).toEqual({ args: r.args, ws: blocks * (2 * e + 1) * 4 });
      }
      // The cases reach every outcome.
      expect(new Set(rows.map((r) => r.status))).toEqual(new Set([0, INVALID, UNSUPPORTED]));
    },
  );
});
