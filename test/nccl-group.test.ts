/**
 * The NCCL backend of ProcessGroup (lib/comm/nccl-group.ts,
 * cpp/comm/nccl_group.h) at world size 1, on cuda:0.
 *
 * Two parts:
 * - the refusals that come before any NCCL call, which run everywhere;
 * - the collectives themselves, which need NCCL and a CUDA device: without
 *   them they are listed as skipped with ncclStatus().reason in their names.
 *   They run on a GPU with a real libnccl, and in CI on the CUDA emulator with
 *   its one-rank NCCL (emu/nccl/nccl_emu.cpp; the cuda-emulated jest project).
 *
 * World size 1 still goes through NCCL: the all-to-all-v is a grouped
 * ncclSend / ncclRecv to this rank itself, after the count exchange read back
 * to the host; a sum over one rank is the tensor itself, so every expected
 * value below is the input, computed here in plain TypeScript.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { MoEError, Tensor } from "../lib";
import { initProcessGroup, ncclStatus, openStore, type ProcessGroup } from "../lib/comm";
import { createNcclGroup } from "../lib/comm/nccl-group";
import { leakCheck } from "./util";

async function rejection(p: Promise<unknown>): Promise<MoEError> {
  try {
    await p;
  } catch (e) {
    return e as MoEError;
  }
  throw new Error("expected a rejection");
}

function storeDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), "moe-nccl-"));
}

const status = ncclStatus();
const gpuTest = (name: string, fn: () => Promise<void>, timeout = 60000): void => {
  if (status.available) test(`${name} [nccl ${status.version}, cuda:0]`, fn, timeout);
  else test.skip(`${name} (skipped: NCCL unavailable: ${status.reason})`, () => undefined);
};

describe("before any NCCL call", () => {
  test("a device that is not CUDA is ERR_MOE_DEVICE, checked before NCCL is looked for", async () => {
    for (const device of ["cpu", "cuda:x", 3, "gpu:0"]) {
      const e = await rejection(
        initProcessGroup({
          backend: "nccl",
          rank: 0,
          worldSize: 1,
          store: "file:///nowhere",
          device: device as string,
        }),
      );
      expect(e.code).toBe("ERR_MOE_DEVICE");
      expect(e.message).toMatch(/device/);
    }
  });

  test("without NCCL: initProcessGroup and the native constructor are ERR_MOE_NCCL_UNAVAILABLE with the reason", async () => {
    if (status.available) return; // the GPU part below covers this machine
    const e = await rejection(
      initProcessGroup({ backend: "nccl", rank: 0, worldSize: 1, store: "file:///nowhere", device: "cuda:0" }),
    );
    expect(e.code).toBe("ERR_MOE_NCCL_UNAVAILABLE");
    expect(e.message).toContain(status.reason);
    const store = openStore(`file://${storeDir()}`, { rank: 0, worldSize: 1, runId: "nccl-group-test" });
    try {
      let thrown: MoEError | undefined;
      try {
        await createNcclGroup(store.handle, { rank: 0, worldSize: 1, prefix: "t", device: "cuda:0", timeoutMs: 1000 });
      } catch (err) {
        thrown = err as MoEError;
      }
      expect(thrown?.code).toBe("ERR_MOE_NCCL_UNAVAILABLE");
      expect(thrown?.message).toContain(status.reason);
    } finally {
      store.close();
    }
  });
});

describe("world size 1 on cuda:0", () => {
  let pg: ProcessGroup | undefined;
  const group = async (): Promise<ProcessGroup> => {
    pg ??= await initProcessGroup({
      backend: "nccl",
      rank: 0,
      worldSize: 1,
      store: `file://${storeDir()}`,
      runId: "nccl-group-test",
      device: "cuda:0",
      timeoutMs: 30000,
    });
    return pg;
  };
  afterAll(() => pg?.destroy());

  gpuTest("the group: backend, rank, size", async () => {
    const g = await group();
    expect(g.backend).toBe("nccl");
    expect([g.rank, g.size, g.name]).toEqual([0, 1, "world"]);
    expect(g.fault).toBeNull();
    // Its allToAllV takes no chunks: the MoE dispatcher keeps chunkTranspose on NCCL groups.
    expect(g.allToAllVChunks).toBe(false);
    expect(g.sharedMemory).toBe(false);
  });

  gpuTest("allToAllV of rank-encoded rows to itself, float32 and bfloat16; recvCounts checked", async () => {
    const g = await group();
    for (const [rows, width] of [
      [5, 3],
      [0, 4],
      [1, 1],
      [257, 64],
    ]) {
      const data = Float32Array.from({ length: rows * width }, (_, i) => 1000 * g.rank + i); // exact in bf16 below 256
      for (const dtype of status.supportsBf16 ? (["float32", "bfloat16"] as const) : (["float32"] as const)) {
        const src = dtype === "bfloat16" ? data.map((v) => v % 256) : data;
        const host = Tensor.from(src, [rows, width], { dtype });
        const x = await host.to("cuda:0");
        const { output, recvCounts } = await g.allToAllV(x, [rows], { recvCounts: [rows] });
        expect(recvCounts).toEqual([rows]);
        expect(output.shape).toEqual([rows, width]);
        expect(output.device).toBe("cuda:0");
        expect(Array.from(output.toFloat32())).toEqual(Array.from(src));
        [host, x, output].forEach((t) => t.dispose());
      }
    }
  });

  gpuTest("allToAllV: a recvCounts mismatch is ERR_MOE_COUNT_MISMATCH and leaves the group usable", async () => {
    const g = await group();
    const x = await Tensor.from(new Float32Array(6), [3, 2]).to("cuda:0");
    const e = await rejection(g.allToAllV(x, [3], { recvCounts: [2] }));
    expect(e.code).toBe("ERR_MOE_COUNT_MISMATCH");
    expect(e.message).toMatch(/sends 3 rows .* expects 2/);
    const { recvCounts } = await g.allToAllV(x, [3]);
    expect(recvCounts).toEqual([3]);
    x.dispose();
  });

  gpuTest("allToAll of int32 counts; allReduce sum / avg / max; broadcast; barrier", async () => {
    const g = await group();
    const counts = await Tensor.from(Int32Array.from([7]), [1], { dtype: "int32" }).to("cuda:0");
    const back = await g.allToAll(counts);
    expect(Array.from(back.toInt32())).toEqual([7]);
    const data = Float32Array.from({ length: 33 }, (_, i) => i - 16.5);
    for (const op of ["sum", "avg", "max"] as const) {
      const t = await Tensor.from(data, [33]).to("cuda:0");
      await g.allReduce(t, op);
      expect(Array.from(t.toFloat32())).toEqual(Array.from(data)); // one rank: the tensor itself
      t.dispose();
    }
    const b = await Tensor.from(data, [3, 11]).to("cuda:0");
    await g.broadcast(b, 0);
    expect(Array.from(b.toFloat32())).toEqual(Array.from(data));
    await g.barrier();
    [counts, back, b].forEach((t) => t.dispose());
  });

  gpuTest("a CPU tensor is ERR_MOE_DEVICE; avg of int32 is ERR_MOE_DTYPE", async () => {
    const g = await group();
    const cpu = Tensor.from(new Float32Array(4), [4]);
    expect((await rejection(g.allReduce(cpu))).code).toBe("ERR_MOE_DEVICE");
    expect((await rejection(g.allToAllV(Tensor.from(new Float32Array(4), [2, 2]), [2]))).code).toBe("ERR_MOE_DEVICE");
    const ints = await Tensor.from(Int32Array.from([1, 2]), [2], { dtype: "int32" }).to("cuda:0");
    expect((await rejection(g.allReduce(ints, "avg"))).code).toBe("ERR_MOE_DTYPE");
    cpu.dispose();
    ints.dispose();
  });

  gpuTest("split({ epSize: 1 }): two NCCL sub-groups of one rank that work", async () => {
    const g = await group();
    const { ep, expertDataParallel } = await g.split({ epSize: 1 });
    for (const sub of [ep, expertDataParallel]) {
      expect(sub.backend).toBe("nccl");
      expect([sub.rank, sub.size, sub.ranks]).toEqual([0, 1, [0]]);
      const t = await Tensor.from(Float32Array.from([1, 2, 3]), [3]).to("cuda:0");
      await sub.allReduce(t, "sum");
      expect(Array.from(t.toFloat32())).toEqual([1, 2, 3]);
      t.dispose();
    }
    ep.destroy();
    expertDataParallel.destroy();
  });

  gpuTest(
    "no device memory left behind by 200 allToAllV calls; destroy makes later calls ERR_MOE_DISPOSED",
    async () => {
      const g = await initProcessGroup({
        backend: "nccl",
        rank: 0,
        worldSize: 1,
        store: `file://${storeDir()}`,
        runId: "nccl-group-test",
        device: "cuda:0",
        timeoutMs: 30000,
      });
      const x = await Tensor.from(
        Float32Array.from({ length: 64 }, (_, i) => i),
        [16, 4],
      ).to("cuda:0");
      const leaks = await leakCheck("cuda:0");
      for (let i = 0; i < 200; i++) (await g.allToAllV(x, [16])).output.dispose();
      expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
      g.destroy();
      expect((await rejection(g.allReduce(x))).code).toBe("ERR_MOE_DISPOSED");
      x.dispose();
    },
  );
});
