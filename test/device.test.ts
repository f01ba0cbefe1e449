/**
 * The device layer as far as a machine without a GPU can check it:
 * Tensor.to / clone, the refusals that name why CUDA is unavailable, the
 * registry that names the op behind an error a kernel found
 * (cpp/core/device_checks.cpp), and the permute kernels' launch plan
 * (cuda/permute_plan.h), both compiled here as plain C++. The plan's stable
 * counting sort is also replayed in TypeScript with the plan's own geometry
 * and compared with a stable sort. On a GPU machine the refusal tests turn
 * into checks that CUDA tensors work.
 */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { DeviceEvent, Tensor, info, memoryStats, ops, synchronize } from "../lib";
import { leakCheck, normal, rng, sameBits } from "./util";

const ROOT = path.join(__dirname, "..");
const cuda = info().cuda;

function findCxx(): string | undefined {
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    for (const name of ["c++", "g++"]) {
      const p = path.join(dir, name);
      if (dir && fs.existsSync(p)) return p;
    }
  }
  return undefined;
}
const cxx = findCxx();
const noCxx = cxx ? "" : " (skipped: no C++ compiler in PATH)";

/** Compiles `main` (plus extra sources) as plain C++17 with -Werror and returns its stdout. */
function runCxx(main: string, sources: string[], includes: string[]): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-device-"));
  try {
    const src = path.join(dir, "main.cpp");
    const exe = path.join(dir, "main");
    fs.writeFileSync(src, main);
    execFileSync(cxx!, [
      "-std=c++17",
      "-Wall",
      "-Wextra",
      "-Werror",
      ...includes.map((i) => `-I${i}`),
      src,
      ...sources,
      "-o",
      exe,
    ]);
    return execFileSync(exe, { encoding: "utf8" });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe("Tensor.to and clone", () => {
  test("to the same device is a new handle on the same storage; clone is an independent copy", async () => {
    const leaks = await leakCheck();
    const a = Tensor.from([1, 2, 3, 4], [2, 2], { dtype: "bfloat16" });
    const b = await a.to("cpu");
    expect(b).not.toBe(a);
    expect([b.device, b.dtype, b.shape]).toEqual(["cpu", "bfloat16", [2, 2]]);
    expect(leaks.now().tensors).toBe(1); // one storage
    const c = await a.clone();
    expect(leaks.now().tensors).toBe(2);
    expect(sameBits(c, a)).toBe(true);
    // In place on the clone: the original is untouched; on the shared handle: both see it.
    const zeros = () => Tensor.zeros([2, 2], { dtype: "float32" });
    await ops.adamw(c, Tensor.from([1, 1, 1, 1], [2, 2]), zeros(), zeros(), { lr: 0.5, step: 1 });
    expect(Array.from(a.toFloat32())).toEqual([1, 2, 3, 4]);
    await ops.adamw(b, Tensor.from([1, 1, 1, 1], [2, 2]), zeros(), zeros(), { lr: 0.5, step: 1 });
    expect(sameBits(a, b)).toBe(true);
    expect(Array.from(a.toFloat32())).not.toEqual([1, 2, 3, 4]);
    a.dispose();
    expect(b.toFloat32().length).toBe(4); // the storage lives while a handle does
    b.dispose();
    c.dispose();
    expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
  });

  test("bad devices and disposed tensors get typed errors", async () => {
    const t = Tensor.from([1], [1]);
    await expect(t.to("gpu" as never)).rejects.toMatchObject({ code: "ERR_MOE_DEVICE" });
    await expect(t.to("cuda:99" as never)).rejects.toMatchObject({ code: "ERR_MOE_DEVICE" });
    t.dispose();
    await expect(t.to("cpu")).rejects.toMatchObject({ code: "ERR_MOE_DISPOSED" });
    await expect(t.clone()).rejects.toMatchObject({ code: "ERR_MOE_DISPOSED" });
  });

  (cuda.available ? test.skip : test)(
    `without CUDA, to("cuda:0"), DeviceEvent.record and cuda tensors refuse with the reason${cuda.available ? " (skipped: CUDA is available here)" : ""}`,
    async () => {
      const t = Tensor.from([1, 2], [2]);
      const unavailable = { code: "ERR_MOE_CUDA_UNAVAILABLE", message: expect.stringContaining(cuda.reason) };
      await expect(t.to("cuda:0")).rejects.toMatchObject(unavailable);
      await expect(t.to("cuda")).rejects.toMatchObject(unavailable);
      await expect(DeviceEvent.record("cuda:0")).rejects.toMatchObject(unavailable);
      expect(() => Tensor.from([1, 2], [2], { device: "cuda:0" })).toThrow(expect.objectContaining(unavailable));
      expect(memoryStats("cuda:0")).toEqual({ tensors: 0, bytes: 0, peakBytes: 0, cachedBytes: 0, made: 0 });
      await expect(synchronize()).resolves.toBeUndefined(); // no device was used
      t.dispose();
    },
  );

  test("DeviceEvent refuses the cpu", async () => {
    await expect(DeviceEvent.record("cpu")).rejects.toMatchObject({ code: "ERR_MOE_DEVICE" });
  });

  (cuda.available ? test : test.skip)(
    `on a GPU: to/clone round trips, device memory statistics and event timing${cuda.available ? "" : ` (skipped: CUDA unavailable: ${cuda.reason})`}`,
    async () => {
      const host = Tensor.from(normal(4096, 1), [64, 64], { dtype: "bfloat16" });
      const leaks = await leakCheck("cuda:0");
      const d = await host.to("cuda:0");
      expect(memoryStats("cuda:0").tensors).toBeGreaterThanOrEqual(1);
      const start = await DeviceEvent.record("cuda:0");
      const c = await d.clone();
      const end = await DeviceEvent.record("cuda:0");
      expect(await end.elapsedMs(start)).toBeGreaterThanOrEqual(0);
      expect(sameBits(await c.to("cpu"), host)).toBe(true);
      c.dispose();
      d.dispose();
      expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
      host.dispose(); // referenced until here, so never collected mid-check
    },
  );
});

describe("cpp/core/device_checks.cpp (names the op behind an error a kernel found)", () => {
  (cxx ? test : test.skip)(`tags, messages, settling by mark, the capacity bound and tag wrap-around${noCxx}`, () => {
    const out = runCxx(
      `#include "device_checks.h"
#include <cstdio>
using namespace moe;
static void show(const std::optional<Error>& e) {
  if (e) std::printf("error %d %s\\n", int(e->code()), e->what()); else std::printf("none\\n");
}
int main() {
  CheckRegistry r(3);
  uint32_t a = r.add(Code::NonFinite, "gate: element ", " is not finite");
  uint32_t b = r.add(Code::Value, "permute: element ", " is out of range");
  std::printf("tags %u %u mark %llu size %zu\\n", a, b, (unsigned long long)r.mark(), r.size());
  uint64_t m = r.mark();
  uint32_t c = r.add(Code::Value, "unpermute: element ", " bad");  // registered after the sync began
  show(r.settle(b, 7, m));                                           // b fired
  std::printf("size %zu\\n", r.size());                              // c is kept
  show(r.settle(0, 0, r.mark()));                                    // nothing fired
  std::printf("size %zu c %u\\n", r.size(), c);
  for (int i = 0; i < 5; ++i) r.add(Code::Value, "x", "y");          // beyond capacity: oldest dropped
  std::printf("size %zu\\n", r.size());
  uint32_t first = r.add(Code::Value, "old ", "");
  for (int i = 0; i < 3; ++i) r.add(Code::Value, "x", "y");
  show(r.settle(first, 1, r.mark()));                                // pushed out: named as unknown
  // wrap-around: the low 32 bits of the sequence, with 0 ("nothing found") skipped
  CheckRegistry w(8, 0xfffffffeull);
  uint32_t t1 = w.add(Code::Value, "one ", ""), t2 = w.add(Code::Value, "two ", ""), t3 = w.add(Code::Dtype, "three ", "");
  std::printf("wrap %u %u %u\\n", t1, t2, t3);
  show(w.settle(t3, 4, w.mark()));
}
`,
      [path.join(ROOT, "cpp/core/device_checks.cpp")],
      [path.join(ROOT, "cpp/core")],
    );
    const lines = out.trim().split("\n");
    expect(lines[0]).toBe("tags 1 2 mark 2 size 2");
    // Code::Value = 5, Code::NonFinite = 6, Code::Internal = 9 (cpp/core/error.h)
    expect(lines[1]).toBe("error 5 permute: element 7 is out of range");
    expect(lines[2]).toBe("size 1");
    expect(lines[3]).toBe("none");
    expect(lines[4]).toBe("size 0 c 3");
    expect(lines[5]).toBe("size 3");
    expect(lines[6]).toMatch(
      /^error 9 a GPU kernel reported bad data \(check tag \d+, detail 1\) for an op no longer recorded/,
    );
    expect(lines[7]).toBe("wrap 4294967294 4294967295 1");
    expect(lines[8]).toBe("error 2 three 4");
  });
});

interface Layout {
  args: number[];
  status: number;
  warps: number;
  pairsPerWarp: number;
  blocks: number;
  cells: number;
  byProbs: number;
  cubScan: number;
  maxRows: number;
  offsets: number[]; // counts, expertStart, rowStart, sortedPairs, sortedKeys, cub
}

describe("cuda/permute_plan.h (the permute kernels' geometry and workspace)", () => {
  // [pairs, experts, policy (0 probs, 1 position), capacity]
  const cases = [
    [0, 8, 0, -1],
    [1, 1, 1, -1],
    [31, 4, 0, 3],
    [65536, 64, 0, 8192],
    [65536, 64, 1, -1],
    [1000, 1 << 20, 1, 5],
    [5, (1 << 20) + 1, 1, -1],
    [5, 0, 1, -1],
    [-1, 8, 1, -1],
    [5, 8, 2, -1],
    [2 ** 31, 8, 1, -1],
  ];
  let rows: Layout[] = [];
  beforeAll(() => {
    if (!cxx) return;
    const calls = cases.map((c) => `  row(${c[0]}LL, ${c[1]}, ${c[2]}, ${c[3]}LL);`).join("\n");
    rows = runCxx(
      `#include "permute_plan.h"
#include <cstdio>
static void row(long long n, int e, int policy, long long cap) {
  moe_cuda::PermuteLayout l = moe_cuda::permute_layout(n, e, policy, cap);
  std::printf("{\\"args\\":[%lld,%d,%d,%lld],\\"status\\":%d,\\"warps\\":%lld,\\"pairsPerWarp\\":%lld,\\"blocks\\":%lld,"
              "\\"cells\\":%lld,\\"byProbs\\":%d,\\"cubScan\\":%d,\\"maxRows\\":%lld,\\"offsets\\":[%zu,%zu,%zu,%zu,%zu,%zu]}\\n",
              n, e, policy, cap, l.status, (long long)l.warps, (long long)l.pairsPerWarp, (long long)l.blocks,
              (long long)l.cells, int(l.byProbs), int(l.cubScan), (long long)moe_cuda::permute_max_rows(n, e, cap, false),
              l.counts, l.expertStart, l.rowStart, l.sortedPairs, l.sortedKeys, l.cub);
}
int main() {
${calls}
}
`,
      [],
      [path.join(ROOT, "cuda")],
    )
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Layout);
  });

  (cxx ? test : test.skip)(
    `runs cover every pair once, the histogram fits, the workspace pieces do not overlap${noCxx}`,
    () => {
      expect(rows.length).toBe(cases.length);
      for (const r of rows) {
        const [n, e, policy, cap] = r.args;
        const invalid = n < 0 || n > 2147483647 || e < 1 || (policy !== 0 && policy !== 1);
        if (invalid || e > 1 << 20) {
          expect({ args: r.args, status: r.status }).toEqual({ args: r.args, status: invalid ? -1 : -2 });
          continue;
        }
        expect({ args: r.args, status: r.status }).toEqual({ args: r.args, status: 0 });
        expect(r.pairsPerWarp % 32).toBe(0);
        expect(r.warps * r.pairsPerWarp).toBeGreaterThanOrEqual(n);
        if (n > 0) expect((r.warps - 1) * r.pairsPerWarp).toBeLessThan(n); // no empty run
        expect(r.blocks).toBe(Math.ceil(r.warps / 8));
        expect(r.cells).toBe(e * r.warps + 1);
        expect(r.cells).toBeLessThanOrEqual(2 ** 24);
        expect(r.byProbs).toBe(cap >= 0 && policy === 0 ? 1 : 0);
        expect(r.cubScan).toBe(r.cells > 65536 ? 1 : 0);
        expect(r.maxRows).toBe(cap < 0 ? n : Math.min(n, e * cap));
        // Pieces in order, 256-aligned, each at least its documented size.
        const sizes = [4 * r.cells, 4 * (e + 1), 4 * (e + 1)];
        if (r.byProbs) sizes.push(4 * n, 4 * n);
        const used = r.byProbs ? [0, 1, 2, 3, 4] : [0, 1, 2];
        let end = 0;
        used.forEach((piece, i) => {
          const at = r.offsets[piece];
          expect(at % 256).toBe(0);
          expect(at).toBeGreaterThanOrEqual(end);
          end = at + sizes[i];
        });
        expect(r.offsets[5]).toBeGreaterThanOrEqual(end);
      }
    },
  );

  (cxx ? test : test.skip)(
    `replayed with the plan's geometry, the warp-run counting sort equals a stable sort by expert${noCxx}`,
    () => {
      // The scheme of cuda/permute.cu in plain TypeScript: per-run histograms in
      // expert-major cells, an exclusive scan, then each run placing its pairs
      // in steps of 32 lanes, a lane's rank being the earlier lanes of its step
      // with the same expert.
      const r = rows.find((x) => x.args[0] === 65536 && x.args[2] === 1)!;
      const [n, e] = r.args;
      const next = rng(5);
      const idx = Int32Array.from({ length: n }, () => Math.floor(e * next() * next()));
      const W = r.warps;
      const cells = new Int32Array(e * W + 1);
      for (let w = 0; w < W; w++)
        for (let i = w * r.pairsPerWarp; i < Math.min(n, (w + 1) * r.pairsPerWarp); i++) cells[idx[i] * W + w]++;
      let acc = 0;
      for (let c = 0; c < cells.length; c++) [cells[c], acc] = [acc, acc + cells[c]];
      const sorted = new Int32Array(n);
      for (let w = 0; w < W; w++) {
        const end = Math.min(n, (w + 1) * r.pairsPerWarp);
        for (let base = w * r.pairsPerWarp; base < end; base += 32) {
          const step = Array.from({ length: Math.min(32, end - base) }, (_, lane) => idx[base + lane]);
          const seen = new Map<number, number>();
          step.forEach((ex, lane) => {
            const rank = seen.get(ex) ?? 0;
            sorted[cells[ex * W + w] + rank] = base + lane;
            seen.set(ex, rank + 1);
          });
          for (const [ex, count] of seen) cells[ex * W + w] += count;
        }
      }
      const expected = Array.from({ length: n }, (_, i) => i).sort((a, b) => idx[a] - idx[b] || a - b);
      expect(Array.from(sorted)).toEqual(expected);
    },
  );
});
