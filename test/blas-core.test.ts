/**
 * The check that OpenBLAS runs the fastest core the CPU supports: core names against CPU
 * flags (no environment change: OPENBLAS_CORETYPE stays as the machine has it).
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { bestCore, checkCore, coreLevel, cpuFlags } from "../lib/bench/blas-core";

const AVX512 = new Set(["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512vl", "avx512bw", "avx512dq"]);
const AVX2 = new Set(["sse4_2", "avx", "avx2", "fma"]);
const AVX = new Set(["sse4_2", "avx"]);

test("the best core follows the vector flags, as cpp/core/blas.cpp picks it", () => {
  expect(bestCore(AVX512)).toEqual({ core: "SkylakeX", level: 5 });
  expect(bestCore(AVX2)).toEqual({ core: "Haswell", level: 4 });
  expect(bestCore(AVX)).toEqual({ core: "Sandybridge", level: 3 });
  // AVX-512 foundation alone (no bw/dq/vl) is not enough for SkylakeX's kernels.
  expect(bestCore(new Set([...AVX2, "avx512f"])).core).toBe("Haswell");
  expect(bestCore(new Set()).core).toBe("Prescott");
});

test("a core older than the CPU supports is flagged; the best one or a newer one is not", () => {
  expect(checkCore("Haswell", AVX512)).toEqual({ core: "Haswell", best: "SkylakeX", slower: true });
  expect(checkCore("Prescott", AVX512)?.slower).toBe(true);
  expect(checkCore("Zen", AVX512)?.slower).toBe(true);
  expect(checkCore("SKYLAKEX", AVX512)?.slower).toBe(false);
  expect(checkCore("Haswell", AVX2)?.slower).toBe(false);
  expect(checkCore("Zen", AVX2)?.slower).toBe(false);
  expect(checkCore("Sandybridge", AVX2)?.slower).toBe(true);
  expect(checkCore("Cooperlake", AVX512)?.slower).toBe(false);
  // Unknown core names or flags: no claim either way.
  expect(checkCore("NeoverseN1", AVX512)).toBeUndefined();
  expect(checkCore("Haswell", new Set())).toBeUndefined();
  expect(coreLevel("haswell")).toBe(4);
});

test("cpuFlags reads the flags line of a cpuinfo file, and nothing from a missing one", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-cpuinfo-"));
  try {
    const file = path.join(dir, "cpuinfo");
    fs.writeFileSync(file, "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse4_2 avx avx2 fma\nbugs\t: none\n");
    expect([...cpuFlags(file)].sort()).toEqual(["avx", "avx2", "fma", "fpu", "sse4_2"]);
    expect(cpuFlags(path.join(dir, "none")).size).toBe(0);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
