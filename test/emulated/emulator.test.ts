/**
 * The CUDA emulator (emu/cuda/, a build with MOE_EP_CUDA=EMULATE): its own
 * checks (test/emulated/selftest.cu: warp collectives and barriers against
 * formulas, launch errors, fresh memory, a race it exposes, a deadlock it
 * reports, and a buffer overrun and a use after free that fault), and
 * the promise of the real kernels that their results do not depend on the
 * order threads run in: test/emulated/workload.js prints the same digests
 * under every order the emulator has. Skipped, with the reason, where the
 * emulated build is absent (npm run build:emu makes it).
 */
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as path from "path";

const root = path.resolve(__dirname, "..", "..");
const addon = path.join(root, "build-emu", "Release", "moe_ep.node");
const selftest = path.join(root, "build-emu", "moe_ep_emu_selftest");
const nccl = path.join(root, "build-emu", "Release", "libnccl_emu.so");
const missing = !fs.existsSync(addon) || !fs.existsSync(selftest);
const maybe = missing ? test.skip : test;
const why = missing ? " (skipped: no emulated build in build-emu/: run npm run build:emu)" : "";

function run(cmd: string, args: string[], schedule: string) {
  const r = spawnSync(cmd, args, {
    encoding: "utf8",
    timeout: 300000, // the emulator runs the layer at a small fraction of a core when the machine is busy
    env: { ...process.env, MOE_EP_ADDON: addon, MOE_EP_NCCL_LIBRARY: nccl, MOE_EP_EMU_SCHEDULE: schedule },
  });
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

describe("the CUDA emulator", () => {
  for (const schedule of ["forward", "reverse", "shuffle"]) {
    maybe(
      `its warp collectives, barriers and launch checks agree with their formulas (${schedule} order)${why}`,
      () => {
        const r = run(selftest, [], schedule);
        expect(r.stderr).toBe("");
        expect(r.stdout).toMatch(/^0 failed$/m);
        expect(r.stdout).not.toMatch(/^FAIL/m);
        expect(r.status).toBe(0);
      },
    );
  }

  maybe(
    `a kernel that reads shared memory without a barrier gives different results in forward and reverse order${why}`,
    () => {
      const read = (schedule: string) => {
        const r = run(selftest, ["race"], schedule);
        expect(r.status).toBe(0);
        const m = /race: (\d+) of 64/.exec(r.stdout);
        if (!m) throw new Error(`unexpected output: ${r.stdout}`);
        return Number(m[1]);
      };
      // Forward: only the last thread finds its neighbour's write; reverse: all but the first.
      expect(read("forward")).toBe(1);
      expect(read("reverse")).toBe(63);
    },
  );

  maybe(`blocks run in the schedule's order: forward, reverse, or a permutation${why}`, () => {
    const order = (schedule: string) => {
      const r = run(selftest, ["order"], schedule);
      expect(r.status).toBe(0);
      const m = /^order: ([\d ]+)$/m.exec(r.stdout);
      if (!m) throw new Error(`unexpected output: ${r.stdout}`);
      return m[1].split(" ").map(Number);
    };
    expect(order("forward")).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(order("reverse")).toEqual([7, 6, 5, 4, 3, 2, 1, 0]);
    const shuffled = order("shuffle");
    expect([...shuffled].sort()).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(shuffled).not.toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  maybe(`barriers that cannot complete are reported as a deadlock naming the waiting threads${why}`, () => {
    const r = run(selftest, ["deadlock"], "forward");
    expect(r.signal).toBe("SIGABRT");
    expect(r.stderr).toMatch(/deadlock in block \(0,0,0\).* 0\(__syncthreads\) 1\(warp\)/);
    expect(r.stdout).not.toMatch(/the launch returned/);
  });

  maybe(`a kernel that writes past the end of its buffer faults at the guard page after it${why}`, () => {
    const r = run(selftest, ["overrun"], "forward");
    expect(r.signal).toBe("SIGSEGV");
    expect(r.stdout).not.toMatch(/the launch returned/);
  });

  maybe(`a kernel that writes to a freed buffer faults${why}`, () => {
    const r = run(selftest, ["freed"], "forward");
    expect(r.signal).toBe("SIGSEGV");
    expect(r.stdout).not.toMatch(/the launch returned/);
  });

  maybe(
    `routing, permutation, the glue ops and the layer give the same bits under every thread order${why}`,
    () => {
      const script = path.join(__dirname, "workload.js");
      const outputs = ["forward", "reverse", "shuffle"].map((schedule) => {
        const r = run(process.execPath, [script], schedule);
        if (r.status !== 0) throw new Error(`workload.js (${schedule}) failed: ${r.stderr}`);
        return r.stdout;
      });
      expect(outputs[0].trim().split("\n")).toHaveLength(9);
      expect(outputs[1]).toBe(outputs[0]);
      expect(outputs[2]).toBe(outputs[0]);
    },
    60000,
  );

  maybe(
    `the GPU check's scripts run on the emulated device: device-check.js --mode sanitize, device-layer.js --no-bench${why}`,
    () => {
      const sanitize = run(
        process.execPath,
        ["--expose-gc", path.join(root, "scripts", "device-check.js"), "--mode", "sanitize"],
        "forward",
      );
      expect(sanitize.stderr).toBe("");
      expect(sanitize.stdout).toMatch(/^sanitize: every kernel ran once/m);
      expect(sanitize.status).toBe(0);
      const layer = run(process.execPath, [path.join(root, "scripts", "device-layer.js"), "--no-bench"], "forward");
      expect(layer.stdout).not.toMatch(/^FAIL/m);
      expect(layer.stdout).toMatch(/^ok\tlayer, NCCL world 1: backward dx/m);
      expect(layer.stdout).toMatch(/^every case agrees$/m);
      expect(layer.status).toBe(0);
    },
    600000,
  );
});
