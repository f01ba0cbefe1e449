/**
 * The Gloo process group: collectives between real processes on loopback
 * (world sizes 2, 3 and 4) checked against rank-encoded data, sub-groups laid
 * out as Megatron-Core / DeepSpeed do, ranks that disagree, bad input, the
 * event loop left free, no leaks, and sockets that listen on loopback only.
 * Fault handling (killed and stopped peers) is in process-group-faults.test.ts.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { MoEError, Tensor } from "../lib";
import { expertParallelLayout, initProcessGroup, ncclStatus, openStore, type ProcessGroup } from "../lib/comm";
import { buildDist, root, runNode, tempDir } from "./procs";
import { leakCheck, rng } from "./util";

const WORKER = path.join(root, "test", "workers", "process-group-worker.js");
let work: string;

/** Runs the worker's scenario on n ranks through `moe-ep launch`; the result of each rank, by rank. */
async function launchRanks(n: number, args: string[], limitMs = 40000): Promise<Array<Record<string, any>>> {
  const entry = `require(${JSON.stringify(path.join(root, "dist", "launch"))}).launch(process.argv.slice(1)).then((c) => { process.exitCode = c; })`;
  const run = await runNode(["-e", entry, "--", "-n", String(n), WORKER, ...args], { limitMs });
  if (run.code !== 0) throw new Error(`launch failed (${run.code}):\n${run.stdout}\n${run.stderr}`);
  const results: Array<Array<Record<string, any>>> = Array.from({ length: n }, () => []);
  for (const line of run.stdout.split("\n")) {
    const m = /^\[rank (\d+)\] (\{"result".*)$/.exec(line);
    if (m) results[Number(m[1])].push(JSON.parse(m[2]).result);
  }
  expect(results.map((r) => r.length > 0)).toEqual(Array(n).fill(true));
  return results.map((r) => Object.assign({}, ...r));
}

async function rejection(p: Promise<unknown>): Promise<MoEError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(MoEError);
  return e as MoEError;
}

/** Two ranks of one group inside this process (each with its own store client and sockets). */
async function twoRanksHere(runId: string, timeoutMs = 10000): Promise<[ProcessGroup, ProcessGroup]> {
  const url = `file://${path.join(work, "stores")}`;
  const stores = [0, 1].map((rank) => openStore(url, { rank, worldSize: 2, runId, timeoutMs }));
  const groups = await Promise.all(
    [0, 1].map((rank) => initProcessGroup({ rank, worldSize: 2, store: stores[rank], timeoutMs })),
  );
  return groups as [ProcessGroup, ProcessGroup];
}

beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-pg-");
});

afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

describe("collectives between processes", () => {
  test.each([2, 3, 4])(
    "world size %i: 200 all-to-all-v rounds with random splits (zeros included) arrive with 0 wrong; allToAll, allReduce and broadcast are exact",
    async (W) => {
      const results = await launchRanks(W, ["collectives", "200"]);
      let elements = 0;
      let zeroSends = 0;
      for (const [r, res] of results.entries()) {
        expect(res.rank).toBe(r);
        expect(res.size).toBe(W);
        expect(res.a2av.iterations).toBe(200);
        expect(res.a2av.firstWrong).toEqual([]);
        expect(res.a2av.wrong).toBe(0);
        expect(res.a2av.checkedExpectations).toBeGreaterThan(60);
        elements += res.a2av.elements;
        zeroSends += res.a2av.zeroSends;
        expect(res.a2a.wrong).toBe(0);
        // sum, avg (float dtypes) and max for five dtypes, a long vector and an empty one; every root.
        expect(res.allReduce).toHaveLength(3 * 3 + 2 * 2 + 2);
        expect(res.allReduce.filter((c: { wrong: number }) => c.wrong !== 0)).toEqual([]);
        expect(res.broadcast).toHaveLength(5 * W);
        expect(res.broadcast.filter((c: { wrong: number }) => c.wrong !== 0)).toEqual([]);
      }
      // The check covered real traffic, and empty sends were part of it.
      expect(elements).toBeGreaterThan(1000 * W);
      expect(zeroSends).toBeGreaterThan(50 * W);
    },
  );

  test.each([2, 3])(
    "world size %i: allToAllV's rows go through shared memory from the second call on, exactly, and /dev/shm keeps nothing",
    async (W) => {
      const results = await launchRanks(W, ["shm"]);
      for (const res of results) {
        expect(res.before).toBe(false);
        expect(res.after).toBe(true);
        expect(res.random.wrong).toBe(0);
        expect(res.random.firstWrong).toEqual([]);
        expect(res.large.wrong).toBe(0);
        expect(res.large.rows).toBeGreaterThan(1000);
        // The segments' names go once every rank has mapped them.
        expect(res.files).toEqual([]);
      }
    },
  );

  test.each([
    [2, "shared memory"],
    [3, "shared memory"],
    [3, "sockets"],
  ])(
    "world size %i, %s: allToAllV with sendChunks and recvChunks lays the rows out as chunkTranspose would around a plain one",
    async (W, path) => {
      const results = await launchRanks(W, ["chunks", path === "sockets" ? "sockets" : "shm"]);
      for (const res of results) {
        expect(res.sharedMemory).toBe(path === "shared memory");
        // What the MoE dispatcher asks before handing its regrouping to the exchange.
        expect(res.takesChunks).toBe(true);
        expect(res.rounds).toBe(30);
        expect(res.rows).toBeGreaterThan(100);
        expect(res.wrong).toBe(0);
      }
    },
  );

  test("MOE_EP_SHM=0 on one rank keeps every rank on the sockets, with the same rows", async () => {
    const results = await launchRanks(3, ["shm", "1"]);
    for (const res of results) {
      expect(res.after).toBe(false);
      expect(res.random.wrong).toBe(0);
      expect(res.large.wrong).toBe(0);
    }
  });

  test("sub-groups for W = 4, epSize = 2: EP groups [0, 1], [2, 3] and expert-data-parallel groups [0, 2], [1, 3] work on their own", async () => {
    const results = await launchRanks(4, ["subgroups", "2"]);
    const ep = [
      [0, 1],
      [2, 3],
    ];
    const edp = [
      [0, 2],
      [1, 3],
    ];
    for (const [r, res] of results.entries()) {
      const myEp = ep[Math.floor(r / 2)];
      const myEdp = edp[r % 2];
      expect(res.layout).toEqual({ ep, expertDataParallel: edp, etp: [[0], [1], [2], [3]] });
      expect(res.ep).toEqual({
        ranks: myEp,
        rank: myEp.indexOf(r),
        size: 2,
        name: `[${myEp.join(", ")}]`,
        sum: myEp[0] + myEp[1],
      });
      expect(res.edp).toMatchObject({ ranks: myEdp, rank: myEdp.indexOf(r), size: 2, sum: myEdp[0] + myEdp[1] });
      // Broadcast from the last rank of the expert-data-parallel group reached only that group.
      expect(res.edp.broadcast).toBe(7000 + myEdp[1]);
      // All-to-all-v inside the EP group: group rank g sent g + 1 rows to every member, encoded with world ranks.
      const g = myEp.indexOf(r);
      expect(res.a2av.recvCounts).toEqual([g + 1, g + 1]);
      const want: number[] = [];
      for (const s of myEp) for (let j = 0; j <= g; j++) want.push(s * 100 + r * 10 + j);
      expect(res.a2av.output).toEqual(want);
      // newGroup([0, 3]) called by its members only.
      if (r === 0 || r === 3) expect(res.ends).toEqual({ ranks: [0, 3], rank: r === 0 ? 0 : 1, size: 2, sum: 1 + 4 });
      else expect(res.ends).toBeNull();
      // Destroying the world group ends the groups made from it.
      expect(res.after.code).toBe("ERR_MOE_DISPOSED");
      expect(res.destroyed).toEqual([true, true]);
    }
  });

  test("ranks that disagree on counts get ERR_MOE_COUNT_MISMATCH naming both ranks on every rank; shapes, dtypes and the collective itself too; the group still works", async () => {
    const results = await launchRanks(3, ["mismatch"]);
    for (const res of results) {
      expect(res.counts.code).toBe("ERR_MOE_COUNT_MISMATCH");
      expect(res.counts.message).toMatch(/rank 0 sends 2 rows to rank 2 but rank 2 expects 1/);
      expect(res.afterCounts.code).toBe("none");
      expect(res.rowShape.code).toBe("ERR_MOE_SHAPE");
      expect(res.rowShape.message).toMatch(/rank 1 passed float32 rows of 4 elements/);
      expect(res.dtype.code).toBe("ERR_MOE_DTYPE");
      expect(res.dtype.message).toMatch(/rank 1 passed int32 rows/);
      expect(res.reduceSize.code).toBe("ERR_MOE_SHAPE");
      expect(res.reduceSize.message).toMatch(/rank 0 passed 4 float32 elements .* rank 2 passed 5/);
      expect(res.collective.code).toBe("ERR_MOE_VALUE");
      expect(res.collective.message).toMatch(/rank 0 calls broadcast .* rank 1 calls allReduce/);
      expect(res.reduced).toEqual([0 + 1 + 2, 3]);
    }
    // Every rank reports the same disagreement, word for word (after the name of its own call).
    for (const key of ["counts", "rowShape", "dtype", "reduceSize", "collective"]) {
      expect(new Set(results.map((r) => r[key].message.replace(/^\w+: /, ""))).size).toBe(1);
    }
  });
});

describe("two ranks in this process", () => {
  test("bad input is refused at once with a typed error, without waiting for the peer, and the group still works", async () => {
    const [a, b] = await twoRanksHere("bad-input");
    try {
      const x = Tensor.from(new Float32Array(12), [4, 3]);
      const t0 = Date.now();
      expect((await rejection(a.allToAllV(x, [-1, 5]))).code).toBe("ERR_MOE_VALUE");
      expect((await rejection(a.allToAllV(x, [1, 2]))).message).toMatch(/sum to the rows of x \(4\) but they sum to 3/);
      expect((await rejection(a.allToAllV(x, [4]))).code).toBe("ERR_MOE_VALUE");
      expect((await rejection(a.allToAllV(x, [2, 2], { recvCounts: [1, -1] }))).code).toBe("ERR_MOE_VALUE");
      expect((await rejection(a.allToAllV(x, [2.5, 1.5]))).code).toBe("ERR_MOE_VALUE");
      // Chunks that do not add up to the counts, or come without the counts they must add up to.
      expect((await rejection(a.allToAllV(x, [2, 2], { sendChunks: [1, 1, 1, 2] }))).message).toMatch(
        /sendChunks for rank 1 to sum to its sendCounts \(2\) but they sum to 3/,
      );
      expect((await rejection(a.allToAllV(x, [2, 2], { sendChunks: [1, 1, 1] }))).message).toMatch(
        /a multiple of 2\) but received 3/,
      );
      expect((await rejection(a.allToAllV(x, [2, 2], { recvChunks: [1, 1, 1, 1] }))).message).toMatch(
        /expected recvCounts with recvChunks/,
      );
      expect(
        (await rejection(a.allToAllV(x, [2, 2], { recvCounts: [2, 2], recvChunks: [1, 1, 0, 1] }))).message,
      ).toMatch(/recvChunks from rank 1 to sum to its recvCounts \(2\) but they sum to 1/);
      expect((await rejection(a.allToAllV(x, Tensor.from([2, 2], [2])))).code).toBe("ERR_MOE_DTYPE");
      expect((await rejection(a.allToAll(x))).code).toBe("ERR_MOE_SHAPE");
      const ints = Tensor.from(new Int32Array(4), [4]);
      expect((await rejection(a.allReduce(ints, "avg"))).code).toBe("ERR_MOE_DTYPE");
      expect((await rejection(a.allReduce(x, "min" as "sum"))).code).toBe("ERR_MOE_VALUE");
      expect((await rejection(a.broadcast(x, 2))).code).toBe("ERR_MOE_VALUE");
      expect((await rejection(a.split({ epSize: 3 }))).code).toBe("ERR_MOE_VALUE");
      expect((await rejection(a.newGroup([1, 0]))).code).toBe("ERR_MOE_VALUE");
      expect((await rejection(b.newGroup([0]))).message).toMatch(/not in \[0\]/);
      const gone = Tensor.from([1], [1]);
      gone.dispose();
      expect((await rejection(a.allReduce(gone))).code).toBe("ERR_MOE_DISPOSED");
      expect(Date.now() - t0).toBeLessThan(2000);
      // Nothing above reached the peer: the next collective pairs up as usual.
      const u = Tensor.from([1, 2], [2]);
      const v = Tensor.from([10, 20], [2]);
      await Promise.all([a.allReduce(u), b.allReduce(v)]);
      expect(Array.from(u.toFloat32())).toEqual([11, 22]);
      expect(Array.from(v.toFloat32())).toEqual([11, 22]);
    } finally {
      a.destroy();
      b.destroy();
    }
  });

  test("the event loop runs while a collective waits for a late peer", async () => {
    const [a, b] = await twoRanksHere("event-loop");
    try {
      const ticks: number[] = [];
      const timer = setInterval(() => ticks.push(performance.now()), 5);
      const start = performance.now();
      const pending = a.barrier();
      const returnedAfter = performance.now() - start;
      await new Promise((r) => setTimeout(r, 400));
      await Promise.all([pending, b.barrier()]);
      const end = performance.now();
      clearInterval(timer);
      expect(returnedAfter).toBeLessThan(50);
      expect(end - start).toBeGreaterThanOrEqual(390);
      const marks = [start, ...ticks.filter((t) => t > start && t < end), end];
      expect(marks.length - 2).toBeGreaterThanOrEqual(20);
      expect(Math.max(...marks.slice(1).map((t, i) => t - marks[i]))).toBeLessThan(200);
    } finally {
      a.destroy();
      b.destroy();
    }
  });

  test("allReduce of random floats: exact float32 sums, bitwise the same on both ranks and run after run", async () => {
    const [a, b] = await twoRanksHere("bits");
    try {
      const r = rng(7);
      const n = 4099;
      const xa = Float32Array.from({ length: n }, () => r() * 2 - 1);
      const xb = Float32Array.from({ length: n }, () => r() * 1e-3);
      const results: Float32Array[] = [];
      for (let run = 0; run < 2; run++) {
        const ta = Tensor.from(xa, [n]);
        const tb = Tensor.from(xb, [n]);
        await Promise.all([a.allReduce(ta), b.allReduce(tb)]);
        results.push(ta.toArray() as Float32Array, tb.toArray() as Float32Array);
      }
      // With two ranks a sum is one correctly rounded float32 addition.
      expect(Array.from(results[0])).toEqual(Array.from(xa, (v, i) => Math.fround(v + xb[i])));
      for (const res of results.slice(1))
        expect(Buffer.from(res.buffer).equals(Buffer.from(results[0].buffer))).toBe(true);
    } finally {
      a.destroy();
      b.destroy();
    }
  });

  test("1,000 all-to-all-v calls leave no tensor or byte behind", async () => {
    const [a, b] = await twoRanksHere("leak");
    try {
      const xa = Tensor.from(new Float32Array(64 * 8).fill(1), [64, 8]);
      const xb = Tensor.from(new Float32Array(32 * 8).fill(2), [32, 8]);
      const leaks = await leakCheck();
      for (let i = 0; i < 1000; i++) {
        const [ra, rb] = await Promise.all([a.allToAllV(xa, [40, 24]), b.allToAllV(xb, [16, 16])]);
        expect(ra.recvCounts).toEqual([40, 16]);
        ra.output.dispose();
        rb.output.dispose();
      }
      expect(await leaks.left()).toEqual({ tensors: 0, bytes: 0 });
      xa.dispose(); // the inputs stay referenced, so the collector cannot free them mid-check
      xb.dispose();
    } finally {
      a.destroy();
      b.destroy();
    }
  });

  test("destroy(): later calls reject with ERR_MOE_DISPOSED; the peer's next collective gets ERR_MOE_PEER_LOST naming rank 0", async () => {
    const [a, b] = await twoRanksHere("destroy");
    a.destroy();
    expect(a.destroyed).toBe(true);
    expect((await rejection(a.barrier())).code).toBe("ERR_MOE_DISPOSED");
    const e = await rejection(b.barrier());
    expect(e.code).toBe("ERR_MOE_PEER_LOST");
    expect(e.message).toMatch(/rank 0/);
    expect(b.fault?.code).toBe("ERR_MOE_PEER_LOST");
    // Broken: every later call fails at once with the same error.
    const t0 = Date.now();
    expect((await rejection(b.allReduce(Tensor.from([1], [1])))).code).toBe("ERR_MOE_PEER_LOST");
    expect(Date.now() - t0).toBeLessThan(200);
    b.destroy();
  });
});

describe("options", () => {
  test('backend "nccl" is ERR_MOE_NCCL_UNAVAILABLE with a reason; bad options are ERR_MOE_VALUE naming them', async () => {
    const nccl = await rejection(
      initProcessGroup({ backend: "nccl", rank: 0, worldSize: 1, store: "file:///nowhere" }),
    );
    expect(nccl.code).toBe("ERR_MOE_NCCL_UNAVAILABLE");
    expect(nccl.message).toMatch(/gloo/);
    if (!ncclStatus().available) expect(nccl.message).toContain(ncclStatus().reason);
    const base = { rank: 0, worldSize: 1, store: `file://${work}/opts`, runId: "o" };
    expect((await rejection(initProcessGroup({ ...base, backend: "mpi" as "gloo" }))).message).toMatch(/backend/);
    expect((await rejection(initProcessGroup({ ...base, timeoutMs: 0 }))).message).toMatch(/timeoutMs/);
    expect((await rejection(initProcessGroup({ ...base, hostname: "a b" }))).message).toMatch(/hostname/);
    expect((await rejection(initProcessGroup({ ...base, rank: 1 }))).message).toMatch(/rank/);
    expect((await rejection(initProcessGroup({ ...base, store: 5 as unknown as string }))).message).toMatch(/store/);
    // Without RANK and friends in the environment and no store given, the error names the variables.
    const saved = { ...process.env };
    for (const v of ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MOE_EP_STORE"]) delete process.env[v];
    try {
      expect((await rejection(initProcessGroup())).message).toMatch(/WORLD_SIZE/);
    } finally {
      Object.assign(process.env, saved);
    }
  });

  test("a group of one works, and split({ epSize }) follows expertParallelLayout", async () => {
    const pg = await initProcessGroup({
      rank: 0,
      worldSize: 1,
      store: `file://${work}/one`,
      runId: "one",
      timeoutMs: 5000,
    });
    try {
      const x = Tensor.from([1, 2, 3, 4, 5, 6], [3, 2]);
      const { output, recvCounts } = await pg.allToAllV(x, [3], { recvCounts: [3] });
      expect(recvCounts).toEqual([3]);
      expect(Array.from(output.toFloat32())).toEqual([1, 2, 3, 4, 5, 6]);
      // One rank: chunks [2, 1] sent and [1, 2] received keep the order, as chunkTranspose would.
      const chunked = await pg.allToAllV(x, [3], { recvCounts: [3], sendChunks: [2, 1], recvChunks: [2, 1] });
      expect(Array.from(chunked.output.toFloat32())).toEqual([1, 2, 3, 4, 5, 6]);
      chunked.output.dispose();
      await pg.allReduce(x, "avg");
      expect(Array.from(x.toFloat32())).toEqual([1, 2, 3, 4, 5, 6]);
      const { ep, expertDataParallel } = await pg.split({ epSize: 1 });
      expect([ep.ranks, expertDataParallel.ranks]).toEqual([[0], [0]]);
      await ep.barrier();
    } finally {
      pg.destroy();
    }
    expect(expertParallelLayout(8, 4)).toEqual({
      ep: [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
      ],
      expertDataParallel: [
        [0, 4],
        [1, 5],
        [2, 6],
        [3, 7],
      ],
      etp: [[0], [1], [2], [3], [4], [5], [6], [7]],
    });
    expect(expertParallelLayout(16, 4).expertDataParallel[1]).toEqual([1, 5, 9, 13]);
    expect(expertParallelLayout(4, 4)).toEqual({
      ep: [[0, 1, 2, 3]],
      expertDataParallel: [[0], [1], [2], [3]],
      etp: [[0], [1], [2], [3]],
    });
    // Expert tensor parallelism innermost, then EP, then expert data parallelism (Megatron-Core's expert side).
    expect(expertParallelLayout(8, 2, 2)).toEqual({
      ep: [
        [0, 2],
        [1, 3],
        [4, 6],
        [5, 7],
      ],
      expertDataParallel: [
        [0, 4],
        [1, 5],
        [2, 6],
        [3, 7],
      ],
      etp: [
        [0, 1],
        [2, 3],
        [4, 5],
        [6, 7],
      ],
    });
    expect(() => expertParallelLayout(6, 2, 2)).toThrow(
      /epSize × etpSize \(2 × 2 = 4\) to divide the world size \(6\)/,
    );
    expect(() => expertParallelLayout(6, 4)).toThrow(/divide/);
  });
});

describe("sockets", () => {
  type Listen = { rank: number; hostname: string; listening: string[]; connected: string[] };
  // /proc/net/tcp{,6} addresses: IPv4 as 8 little-endian hex digits, IPv6 as 32 (IPv4-mapped ::ffff:a.b.c.d too).
  const isLoopback = (hexAddr: string): boolean => {
    const a = hexAddr.split(":")[0];
    if (a.length === 8) return a.endsWith("7F");
    return a === "00000000000000000000000001000000" || (a.startsWith("0000000000000000FFFF0000") && a.endsWith("7F"));
  };
  const hex4 = (ip: string): string =>
    ip
      .split(".")
      .reverse()
      .map((p) => Number(p).toString(16).padStart(2, "0"))
      .join("")
      .toUpperCase();

  test("with the defaults, no socket of any rank listens on (or connects through) a non-loopback address", async () => {
    const results = (await launchRanks(3, ["listen"])) as unknown as Listen[];
    for (const r of results) {
      expect(r.hostname).toBe("127.0.0.1");
      expect(r.listening.filter((a) => !isLoopback(a))).toEqual([]);
      expect(r.connected.flatMap((c) => c.split(">")).filter((a) => !isLoopback(a))).toEqual([]);
      expect(r.connected.length).toBeGreaterThanOrEqual(2);
    }
    // The sampling saw the listening sockets: rank 0's store server and its Gloo pairs waiting for the late ranks.
    expect(results[0].listening.length).toBeGreaterThanOrEqual(2);
  });

  test("the check would see it: naming this machine's non-loopback address binds Gloo there", async () => {
    const ip = Object.values(os.networkInterfaces())
      .flat()
      .find((i) => i && i.family === "IPv4" && !i.internal)?.address;
    if (!ip) {
      console.warn("no non-loopback IPv4 interface here: the control is skipped");
      return;
    }
    const results = (await launchRanks(2, ["listen", ip])) as unknown as Listen[];
    expect(results[0].hostname).toBe(ip);
    expect(results[0].listening.some((a) => a.startsWith(hex4(ip) + ":"))).toBe(true);
  });
});
