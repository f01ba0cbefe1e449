/**
 * Workers and exits while native work runs: a worker terminated during a
 * grouped GEMM or during a collective that waits on a peer leaves the process
 * healthy (no abort, later ops correct), and an uncaught exception or
 * process.exit() during a GEMM ends the process with its code at once (no hang
 * in OpenBLAS's exit handler, no crash), with OpenBLAS's default thread count
 * and with OPENBLAS_NUM_THREADS=1.
 */
import * as path from "path";
import { buildDist, runNode } from "./procs";

const child = path.join(__dirname, "workers", "exit-safety-child.js");
const ROUNDS = 20;

beforeAll(() => buildDist());

describe.each([
  ["OpenBLAS's default threads", undefined],
  ["OPENBLAS_NUM_THREADS=1", "1"],
])("with %s", (_name, threads) => {
  const env = { OPENBLAS_NUM_THREADS: threads };

  test.each(["terminate-gemm", "terminate-collective"])(
    `${ROUNDS} workers terminated during %s: the process carries on and exits with 0`,
    async (scenario) => {
      const run = await runNode([child, scenario, String(ROUNDS)], { env, limitMs: 120000 });
      expect({ code: run.code, signal: run.signal, stderr: run.stderr }).toEqual({ code: 0, signal: null, stderr: "" });
      // Every worker was terminated while its op was still pending, and the stream computes correctly afterwards.
      expect(JSON.parse(run.stdout)).toEqual({ rounds: ROUNDS, pendingAtTerminate: ROUNDS, check: true });
    },
    150000,
  );

  test.each([
    ["throw", 1],
    ["exit", 3],
  ])(
    "%s during a grouped GEMM: the process exits with %d within a second",
    async (scenario, code) => {
      const run = await runNode([child, scenario], { env, limitMs: 60000 });
      const ended = Date.now();
      expect({ code: run.code, signal: run.signal }).toEqual({ code, signal: null });
      const stopped = /stopping (\d+)/.exec(run.stdout);
      expect(stopped).not.toBeNull();
      expect(ended - Number(stopped![1])).toBeLessThan(1000);
      if (scenario === "throw") expect(run.stderr).toContain("uncaught during a GEMM");
    },
    70000,
  );
});
