import { Tensor, memoryStats, emptyCache, scope, MoEError, info } from "../lib";
import * as path from "path";
import { buildDist, runNode } from "./procs";
import { loadNative } from "../lib/native";
import { leakCheck } from "./util";

/** bfloat16 of a float64 value, by the definition: round to nearest even on the top 16 bits of the float32. */
function bf16Ref(v: number): number {
  const f = new Float32Array([v]);
  const u = new Uint32Array(f.buffer);
  const bits = u[0];
  const lsb = (bits >>> 16) & 1;
  u[0] = ((bits + 0x7fff + lsb) >>> 16) << 16;
  return f[0];
}

describe("Tensor", () => {
  test("float32, int32 and int64 round-trip exactly with shape and dtype", () => {
    const f = Tensor.from(new Float32Array([1.5, -2, 3.25, 0, 7, 8]), [2, 3]);
    expect(f.shape).toEqual([2, 3]);
    expect(f.dtype).toBe("float32");
    expect(f.device).toBe("cpu");
    expect(Array.from(f.toFloat32())).toEqual([1.5, -2, 3.25, 0, 7, 8]);
    const i = Tensor.from(new Int32Array([1, -2, 2147483647]), [3]);
    expect(Array.from(i.toArray() as Int32Array)).toEqual([1, -2, 2147483647]);
    const l = Tensor.from(new BigInt64Array([1n, -(2n ** 40n)]), [2]);
    expect(l.dtype).toBe("int64");
    expect(Array.from(l.toArray() as BigInt64Array)).toEqual([1n, -(2n ** 40n)]);
    const l2 = Tensor.from([5, 6], [2], { dtype: "int64" });
    expect(Array.from(l2.toArray() as BigInt64Array)).toEqual([5n, 6n]);
  });

  test("plain arrays keep every value they are allowed to hold: the int32 and int64 limits, NaN and ±Infinity", () => {
    const i = Tensor.from([-(2 ** 31), 2 ** 31 - 1, 0], [3], { dtype: "int32" });
    expect(Array.from(i.toInt32())).toEqual([-(2 ** 31), 2 ** 31 - 1, 0]);
    // int64 from numbers goes through 64 bits: values beyond int32 are not wrapped.
    const big = [2 ** 40, -(2 ** 53 - 1), 2 ** 53 - 1];
    const l = Tensor.from(big, [3], { dtype: "int64" });
    expect(Array.from(l.toArray() as BigInt64Array)).toEqual(big.map(BigInt));
    const f = Tensor.from([NaN, Infinity, -Infinity, -0], [4]);
    expect(Array.from(f.toFloat32())).toEqual([NaN, Infinity, -Infinity, -0]);
    // Reading an int64 tensor as int32 refuses values int32 cannot hold rather than wrapping them.
    expect(() => l.toInt32()).toThrow(expect.objectContaining({ code: "ERR_MOE_VALUE" }));
    expect(Array.from(Tensor.from([3, -4], [2], { dtype: "int64" }).toInt32())).toEqual([3, -4]);
    for (const t of [i, l, f]) t.dispose();
  });

  test("bfloat16 writes round to nearest even and reads back as float32", () => {
    const vals = [1, 1.00390625, 1.01171875, 3.14159265, -0.1, 1e-3, 65504, 1 + 1 / 256, 1 + 3 / 256];
    const t = Tensor.from(Float64Array.from(vals), [vals.length], { dtype: "bfloat16" });
    expect(t.dtype).toBe("bfloat16");
    expect(Array.from(t.toFloat32())).toEqual(vals.map(bf16Ref));
    // ties: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7 and goes to the even mantissa (1)
    expect(t.toFloat32()[7]).toBe(1);
    expect(t.toFloat32()[8]).toBe(1 + 4 / 256);
    expect(Array.from(t.toBits().slice(0, 1))).toEqual([0x3f80]);
  });

  test("float16 round-trips values it can hold and rounds the rest", () => {
    const t = Tensor.from([0.5, -2, 65504, 6.103515625e-5, 5.960464477539063e-8, 0.1], [6], { dtype: "float16" });
    const r = t.toFloat32();
    expect(Array.from(r.slice(0, 5))).toEqual([0.5, -2, 65504, 6.103515625e-5, 5.960464477539063e-8]);
    expect(r[5]).toBeCloseTo(0.0999755859375, 12);
    expect(Array.from(t.toBits())).toEqual([0x3800, 0xc000, 0x7bff, 0x0400, 0x0001, 0x2e66]);
  });

  test("zeros and empty allocate the asked shape", () => {
    const z = Tensor.zeros([3, 4], { dtype: "bfloat16" });
    expect(Array.from(z.toFloat32())).toEqual(new Array(12).fill(0));
    expect(Tensor.empty([0, 5]).numel).toBe(0);
  });

  test("bad shapes, dtypes, devices and data get typed errors", () => {
    expect(() => Tensor.from([1, 2, 3], [2, 2])).toThrow(expect.objectContaining({ code: "ERR_MOE_SHAPE" }));
    expect(() => Tensor.from([1], [-1])).toThrow(expect.objectContaining({ code: "ERR_MOE_SHAPE" }));
    expect(() => Tensor.from([1], [1], { dtype: "float8" as never })).toThrow(
      expect.objectContaining({ code: "ERR_MOE_DTYPE" }),
    );
    expect(() => Tensor.from([1], [1], { device: "tpu" as never })).toThrow(
      expect.objectContaining({ code: "ERR_MOE_DEVICE" }),
    );
    expect(() => Tensor.from(new Int32Array(2), [2], { dtype: "float32" })).toThrow(
      expect.objectContaining({ code: "ERR_MOE_DTYPE" }),
    );
    expect(() => Tensor.from("abc" as never, [3])).toThrow(MoEError);
    try {
      Tensor.from([1, 2, 3], [2, 2]);
    } catch (e) {
      expect((e as Error).message).toMatch(/expected 4 elements for shape \[2, 2\] but received 3/);
    }
  });

  test("a CUDA tensor on a machine without CUDA says why", () => {
    if (info().cuda.available) return; // covered by the CUDA suite on GPU machines
    expect(() => Tensor.zeros([2], { device: "cuda:0" })).toThrow(
      expect.objectContaining({ code: "ERR_MOE_CUDA_UNAVAILABLE" }),
    );
    try {
      Tensor.zeros([2], { device: "cuda:0" });
    } catch (e) {
      expect((e as Error).message).toContain(info().cuda.reason);
    }
  });

  test("a disposed tensor refuses reads; dispose is idempotent; `using` disposes", async () => {
    const leaks = await leakCheck();
    const t = Tensor.from([1, 2], [2]);
    expect(leaks.now().tensors).toBe(1);
    t.dispose();
    t.dispose();
    expect(t.disposed).toBe(true);
    expect(() => t.toArray()).toThrow(expect.objectContaining({ code: "ERR_MOE_DISPOSED" }));
    {
      using u = Tensor.from([1, 2, 3], [3]);
      expect(u.numel).toBe(3);
    }
    expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
  });

  test("scope disposes its temporaries and keeps what it returns", async () => {
    const leaks = await leakCheck();
    const kept = await scope(async () => {
      Tensor.zeros([100]);
      Tensor.zeros([200]);
      await new Promise((r) => setTimeout(r, 1));
      const inner = await scope(async () => ({ a: Tensor.zeros([3]), b: Tensor.zeros([4]) }));
      inner.b.dispose();
      return { keep: inner.a };
    });
    expect(kept.keep.disposed).toBe(false);
    expect(leaks.now()).toEqual({ tensors: 1, bytes: 3 * 4 });
    kept.keep.dispose();
    await expect(
      scope(async () => {
        Tensor.zeros([10]);
        throw new Error("boom");
      }),
    ).rejects.toThrow("boom");
    expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
  });

  test("tensors dropped without dispose() are freed when collected, small and large", async () => {
    // Counts only tensors made from here on: earlier tests' garbage collected meanwhile cannot change the answer.
    const check = await leakCheck();
    ((): void => {
      for (let i = 0; i < 200; i++) Tensor.from([i, i + 1], [2]);
      for (let i = 0; i < 8; i++) Tensor.zeros([1 << 18]); // 1 MiB each
    })();
    expect(check.now()).toEqual({ tensors: 208, bytes: 200 * 2 * 4 + 8 * (1 << 20) });
    // The handles' finalizers run as tasks after a collection; left() collects until they have (20 s at most).
    expect(await check.left(20000)).toEqual({ tensors: 0, bytes: 0 });
  });

  test("V8's external memory follows the host memory tensors hold, not each tensor made and disposed", () => {
    const counters = (): { held: number; reported: number } => {
      const c = loadNative().hostCounters();
      return { held: c.heldBytes, reported: c.reportedBytes };
    };
    emptyCache();
    Tensor.empty([4]).dispose();
    const start = counters();
    const v8Start = loadNative().hostCounters().v8ExternalBytes;
    const a = Tensor.empty([16 << 20]); // 64 MiB, new from the system
    const grown = counters();
    expect(grown.held - start.held).toBeGreaterThanOrEqual(64 << 20);
    // The report follows in steps of at least 1 MiB, and V8's count moves with it.
    expect(Math.abs(grown.reported - grown.held)).toBeLessThan(1 << 20);
    expect(loadNative().hostCounters().v8ExternalBytes - v8Start).toBeGreaterThanOrEqual(60 << 20);
    // Disposed, the block waits in the cache: the process still holds it, and the report is unchanged.
    a.dispose();
    expect(memoryStats().cachedBytes).toBe(64 << 20);
    expect(counters()).toEqual(grown);
    // A steady loop of the same shape reuses the block: V8 sees no growth, so it starts no collection.
    for (let i = 0; i < 20; i++) Tensor.empty([16 << 20]).dispose();
    expect(counters()).toEqual(grown);
    // Given back to the system, the block leaves V8's count at the next tensor made.
    emptyCache();
    Tensor.empty([4]).dispose();
    const after = counters();
    expect(grown.held - after.held).toBeGreaterThanOrEqual(64 << 20);
    expect(Math.abs(after.reported - after.held)).toBeLessThan(1 << 20);
  });

  test("memory of tensors collected without dispose() goes back to the system, not to the cache", async () => {
    emptyCache();
    const check = await leakCheck();
    ((): void => {
      for (let i = 0; i < 4; i++) Tensor.empty([1 << 20]); // 4 MiB each
    })();
    expect(await check.left(20000)).toEqual({ tensors: 0, bytes: 0 });
    expect(memoryStats().cachedBytes).toBe(0);
    Tensor.empty([1 << 20]).dispose();
    expect(memoryStats().cachedBytes).toBe(4 << 20);
    emptyCache();
  });

  test("a program that forgets large tensors in a loop, with no gc() call, stays bounded: V8 collects them", async () => {
    buildDist();
    // 96 tensors of 16 MiB: 1.5 GiB made in all.
    const [count, mib] = [96, 16];
    const child = path.join(__dirname, "workers", "forgotten-tensors.js");
    const run = await runNode([child, String(count), String(mib)], { limitMs: 60000 });
    expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 0, stderr: "" });
    const { peak } = JSON.parse(run.stdout) as { peak: number };
    expect(peak).toBeLessThan((count * mib * 2 ** 20) / 2);
  }, 70000);

  test("freed large blocks are cached, reused for the same size, and released by emptyCache", () => {
    emptyCache();
    expect(memoryStats().cachedBytes).toBe(0);
    const a = Tensor.zeros([3 << 20]); // 12 MiB
    a.dispose();
    const cached = memoryStats().cachedBytes;
    expect(cached).toBeGreaterThanOrEqual(12 << 20);
    const b = Tensor.zeros([3 << 20]);
    expect(memoryStats().cachedBytes).toBe(cached - (12 << 20));
    expect(Array.from(b.toFloat32().subarray(0, 4))).toEqual([0, 0, 0, 0]);
    b.dispose();
    emptyCache();
    expect(memoryStats().cachedBytes).toBe(0);
  });
});
