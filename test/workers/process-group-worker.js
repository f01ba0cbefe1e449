/**
 * One rank of the process group tests (test/process-group*.test.ts). It joins
 * the group from the environment a launcher sets, runs the scenario named by
 * argv[2], checks what it received against values computed here from
 * formulas (rank-encoded data: the receiver knows exactly what each sender
 * sent), and prints one JSON line: {"result": ...}.
 */
"use strict";
const fs = require("fs");
const path = require("path");

const root = path.resolve(__dirname, "..", "..");
const { Tensor } = require(path.join(root, "dist"));
const { initProcessGroup, expertParallelLayout } = require(path.join(root, "dist", "comm"));

const scenario = process.argv[2];
const args = process.argv.slice(3);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const report = (result) => process.stdout.write(JSON.stringify({ result }) + "\n");
const DTYPES = ["float32", "int32", "int64", "bfloat16", "float16"];
const { rng } = require("../shared/rng");

/** A tensor of dtype from plain numbers (or BigInts for int64). */
function make(dtype, values, shape) {
  if (dtype === "int64")
    return Tensor.from(
      BigInt64Array.from(values, (v) => BigInt(v)),
      shape,
      { dtype },
    );
  if (dtype === "int32") return Tensor.from(Int32Array.from(values), shape, { dtype });
  return Tensor.from(Float32Array.from(values), shape, { dtype });
}

/** A tensor's values as numbers (int64 as BigInt). */
function read(t) {
  return Array.from(t.toArray());
}

async function caught(p) {
  try {
    await p;
    return { code: "none" };
  } catch (e) {
    return { code: e.code, message: e.message };
  }
}

// ---------------------------------------------------------------------------

/** Row j (element c) from rank s to rank d; small values for the 16-bit float types. */
function enc(dtype, s, d, j, c) {
  return dtype === "bfloat16" || dtype === "float16" ? s * 16 + d * 4 + c : s * 1e6 + d * 1e4 + j * 10 + c;
}

/** The splits of iteration it, the same on every rank: S[s][d] rows from s to d. */
function splits(it, W) {
  const r = rng(1000 + it);
  const S = [];
  for (let s = 0; s < W; s++) {
    S.push([]);
    for (let d = 0; d < W; d++) S[s].push(r() < 0.3 ? 0 : Math.floor(r() * 6));
  }
  if (it % 17 === 5) S[it % W].fill(0); // one rank sends nothing
  if (it % 19 === 7) for (const row of S) row[it % W] = 0; // one rank receives nothing
  if (it % 50 === 49) for (const row of S) row.fill(0); // nobody sends anything
  return S;
}

async function allToAllVRandom(pg, iterations) {
  const W = pg.size;
  const me = pg.rank;
  let wrong = 0;
  let elements = 0;
  let zeroSends = 0;
  let checkedExpectations = 0;
  const firstWrong = [];
  for (let it = 0; it < iterations; it++) {
    const S = splits(it, W);
    const dtype = DTYPES[it % DTYPES.length];
    const rowShape = it % 2 ? [3] : [2, 2];
    const rowElems = rowShape.reduce((a, b) => a * b, 1);
    const send = S[me];
    const rows = send.reduce((a, b) => a + b, 0);
    const data = [];
    for (let d = 0; d < W; d++)
      for (let j = 0; j < send[d]; j++) for (let c = 0; c < rowElems; c++) data.push(enc(dtype, me, d, j, c));
    zeroSends += send.filter((n) => n === 0).length;
    const x = make(dtype, data, [rows, ...rowShape]);
    const expectedCounts = S.map((row) => row[me]);
    const useExpectation = it % 3 === 0;
    if (useExpectation) checkedExpectations++;
    const { output, recvCounts } = await pg.allToAllV(
      x,
      send,
      useExpectation ? { recvCounts: expectedCounts } : undefined,
    );
    const expected = [];
    for (let s = 0; s < W; s++)
      for (let j = 0; j < S[s][me]; j++) for (let c = 0; c < rowElems; c++) expected.push(enc(dtype, s, me, j, c));
    const got = read(output);
    const shapeOk = JSON.stringify(output.shape) === JSON.stringify([expected.length / rowElems, ...rowShape]);
    if (!shapeOk || output.dtype !== dtype || JSON.stringify(recvCounts) !== JSON.stringify(expectedCounts)) {
      wrong += Math.max(1, expected.length);
      if (firstWrong.length < 3) firstWrong.push({ it, shape: output.shape, recvCounts, expectedCounts });
    } else {
      for (let i = 0; i < expected.length; i++) {
        if (Number(got[i]) !== expected[i]) {
          wrong++;
          if (firstWrong.length < 3) firstWrong.push({ it, i, got: Number(got[i]), want: expected[i] });
        }
      }
    }
    elements += expected.length;
    x.dispose();
    output.dispose();
  }
  return { iterations, wrong, elements, zeroSends, checkedExpectations, firstWrong };
}

async function allToAllBlocks(pg) {
  const W = pg.size;
  const me = pg.rank;
  let wrong = 0;
  // The per-expert count vectors: [W] int32.
  const counts = make(
    "int32",
    Array.from({ length: W }, (_, d) => me * 10 + d),
    [W],
  );
  const got = read(await pg.allToAll(counts));
  for (let s = 0; s < W; s++) if (got[s] !== s * 10 + me) wrong++;
  // Blocks of any shape and dtype: [W, 2, 3].
  for (const dtype of DTYPES) {
    const small = dtype === "bfloat16" || dtype === "float16";
    const v = (s, d, k) => (small ? s * 16 + d * 4 + (k % 4) : s * 100 + d * 10 + k);
    const x = make(
      dtype,
      Array.from({ length: W * 6 }, (_, i) => v(me, Math.floor(i / 6), i % 6)),
      [W, 2, 3],
    );
    const out = await pg.allToAll(x);
    const o = read(out);
    if (JSON.stringify(out.shape) !== JSON.stringify([W, 2, 3]) || out.dtype !== dtype) wrong++;
    for (let i = 0; i < W * 6; i++) if (Number(o[i]) !== v(Math.floor(i / 6), me, i % 6)) wrong++;
  }
  return { wrong };
}

/** Element i of rank r for an allReduce; chosen so that sums and averages are exact in the dtype. */
function reduceValue(dtype, W, r, i) {
  switch (dtype) {
    case "float32":
      return (r + 1) * (i - 3) * 0.5 * W;
    case "bfloat16":
    case "float16":
      return (r + 1) * (i - 3) * W;
    case "int32":
      return (r + 1) * (i - 3) * 1000003;
    case "int64":
      return BigInt(r + 1) * BigInt(i - 3) * 2n ** 50n;
  }
}

async function allReduceExact(pg) {
  const W = pg.size;
  const me = pg.rank;
  const cases = [];
  const n = 7;
  for (const dtype of DTYPES) {
    for (const op of ["sum", "avg", "max"]) {
      if (op === "avg" && (dtype === "int32" || dtype === "int64")) continue;
      const t = make(
        dtype,
        Array.from({ length: n }, (_, i) => reduceValue(dtype, W, me, i)),
        [n],
      );
      await pg.allReduce(t, op);
      const got = read(t);
      let wrong = 0;
      for (let i = 0; i < n; i++) {
        const all = Array.from({ length: W }, (_, r) => reduceValue(dtype, W, r, i));
        let want;
        if (dtype === "int64") {
          want = op === "sum" ? all.reduce((a, b) => a + b, 0n) : all.reduce((a, b) => (b > a ? b : a));
        } else {
          const sum = all.reduce((a, b) => a + b, 0);
          want = op === "sum" ? sum : op === "avg" ? sum / W : Math.max(...all);
        }
        if (dtype === "int64" ? got[i] !== want : Number(got[i]) !== want) wrong++;
      }
      cases.push({ dtype, op, wrong });
      t.dispose();
    }
  }
  // A long float32 vector: the ring cuts it into chunks; integers keep the sums exact.
  const N = 100003;
  const v = (r, i) => ((r * 7 + i) % 13) - 6;
  const big = make(
    "float32",
    Array.from({ length: N }, (_, i) => v(me, i)),
    [N],
  );
  await pg.allReduce(big);
  const got = big.toArray();
  let wrong = 0;
  for (let i = 0; i < N; i++) {
    let want = 0;
    for (let r = 0; r < W; r++) want += v(r, i);
    if (got[i] !== want) wrong++;
  }
  cases.push({ dtype: "float32", op: "sum", n: N, wrong });
  // Empty tensors reduce to themselves.
  const empty = make("float32", [], [0]);
  await pg.allReduce(empty);
  cases.push({ dtype: "float32", op: "sum", n: 0, wrong: empty.shape[0] === 0 ? 0 : 1 });
  return cases;
}

async function broadcastExact(pg) {
  const W = pg.size;
  const me = pg.rank;
  const cases = [];
  const n = 9;
  const v = (dtype, root, i) => {
    if (dtype === "int64") return BigInt(root) * 2n ** 40n + BigInt(i);
    if (dtype === "int32") return root * 1000003 + i;
    if (dtype === "float32") return root * 1000 + i + 0.25;
    return root * 16 + i; // bfloat16, float16: small integers, exact
  };
  for (const dtype of DTYPES) {
    for (let rootRank = 0; rootRank < W; rootRank++) {
      const values = Array.from({ length: n }, (_, i) =>
        me === rootRank ? v(dtype, rootRank, i) : dtype === "int64" ? -1n : -1,
      );
      const t = make(dtype, values, [3, 3]);
      await pg.broadcast(t, rootRank);
      const got = read(t);
      let wrong = 0;
      for (let i = 0; i < n; i++) {
        const want = v(dtype, rootRank, i);
        if (dtype === "int64" ? got[i] !== want : Number(got[i]) !== want) wrong++;
      }
      cases.push({ dtype, root: rootRank, wrong });
      t.dispose();
    }
  }
  return cases;
}

// ---------------------------------------------------------------------------

/**
 * Large all-to-all-v rounds with rows of 1024 float32 elements, growing from a few rows to about
 * 4.5 MiB per destination, so the shared-memory area grows past its first megabytes.
 * Row j from s to d holds s * 1e6 + d * 1e4 + j in element 0 and its element index elsewhere;
 * every row's first and last elements are checked.
 */
async function allToAllVLarge(pg, rounds) {
  const W = pg.size;
  const me = pg.rank;
  const D = 1024;
  const rowsTo = (it, s, d) => ((it * 7 + s * 3 + d * 5) % 4) * Math.min(384, 4 << it) + ((s + d + it) % 3);
  let wrong = 0;
  let rows = 0;
  for (let it = 0; it < rounds; it++) {
    const send = Array.from({ length: W }, (_, d) => rowsTo(it, me, d));
    const total = send.reduce((a, b) => a + b, 0);
    const data = new Float32Array(total * D);
    let at = 0;
    for (let d = 0; d < W; d++)
      for (let j = 0; j < send[d]; j++, at++) {
        for (let c = 1; c < D; c++) data[at * D + c] = c;
        data[at * D] = me * 1e6 + d * 1e4 + j;
      }
    const x = Tensor.from(data, [total, D]);
    const expectedCounts = Array.from({ length: W }, (_, s) => rowsTo(it, s, me));
    const { output, recvCounts } = await pg.allToAllV(x, send, { recvCounts: expectedCounts });
    const got = output.toFloat32();
    let r = 0;
    for (let s = 0; s < W; s++)
      for (let j = 0; j < expectedCounts[s]; j++, r++) {
        if (got[r * D] !== s * 1e6 + me * 1e4 + j || got[r * D + D - 1] !== D - 1) wrong++;
      }
    if (JSON.stringify(recvCounts) !== JSON.stringify(expectedCounts) || r !== output.shape[0]) wrong++;
    rows += r;
    x.dispose();
    output.dispose();
  }
  return { rounds, rows, wrong };
}

/**
 * allToAllV with sendChunks and/or recvChunks: C[s][d][l] rows of chunk l go from s to d (the same
 * on every rank). Row k of chunk l from s to d holds s * 1e6 + d * 1e4 + l * 100 + k. x is laid out
 * chunk-major when sendChunks is given, else by destination; the output is expected chunk-major
 * with recvChunks, else by source: the layouts chunkTranspose gives around a plain allToAllV.
 */
async function allToAllVChunked(pg, rounds) {
  const W = pg.size;
  const me = pg.rank;
  const D = 3;
  let wrong = 0;
  let rows = 0;
  for (let it = 0; it < rounds; it++) {
    const r = rng(5000 + it);
    const L = 1 + (it % 4);
    const C = Array.from({ length: W }, () =>
      Array.from({ length: W }, () => Array.from({ length: L }, () => (r() < 0.25 ? 0 : Math.floor(r() * 5)))),
    );
    const mode = it % 3; // 0: sendChunks, 1: recvChunks, 2: both
    const useSend = mode !== 1;
    const useRecv = mode !== 0;
    const row = (s, d, l, k) => s * 1e6 + d * 1e4 + l * 100 + k;
    const data = [];
    const push = (d, l) => {
      for (let k = 0; k < C[me][d][l]; k++) for (let c = 0; c < D; c++) data.push(row(me, d, l, k));
    };
    if (useSend) for (let l = 0; l < L; l++) for (let d = 0; d < W; d++) push(d, l);
    else for (let d = 0; d < W; d++) for (let l = 0; l < L; l++) push(d, l);
    const sendCounts = C[me].map((ch) => ch.reduce((a, b) => a + b, 0));
    const recvCounts = C.map((from) => from[me].reduce((a, b) => a + b, 0));
    const total = sendCounts.reduce((a, b) => a + b, 0);
    const x = Tensor.from(Float32Array.from(data), [total, D]);
    const options = { recvCounts };
    if (useSend) options.sendChunks = Array.from({ length: L * W }, (_, i) => C[me][i % W][Math.floor(i / W)]);
    if (useRecv) options.recvChunks = Array.from({ length: W * L }, (_, i) => C[Math.floor(i / L)][me][i % L]);
    const { output } = await pg.allToAllV(x, sendCounts, options);
    const expected = [];
    const want = (s, l) => {
      for (let k = 0; k < C[s][me][l]; k++) for (let c = 0; c < D; c++) expected.push(row(s, me, l, k));
    };
    if (useRecv) for (let l = 0; l < L; l++) for (let s = 0; s < W; s++) want(s, l);
    else for (let s = 0; s < W; s++) for (let l = 0; l < L; l++) want(s, l);
    const got = output.toFloat32();
    if (got.length !== expected.length) wrong += Math.max(1, expected.length);
    else for (let i = 0; i < expected.length; i++) if (got[i] !== expected[i]) wrong++;
    rows += expected.length / D;
    x.dispose();
    output.dispose();
  }
  return { rounds, rows, wrong };
}

/** The files this process left in /dev/shm. */
function shmFiles() {
  try {
    return fs.readdirSync("/dev/shm").filter((f) => f.startsWith(`moe-ep-${process.pid}-`));
  } catch {
    return [];
  }
}

const scenarios = {
  async collectives() {
    const pg = await initProcessGroup({ timeoutMs: 20000 });
    const a2av = await allToAllVRandom(pg, Number(args[0] ?? 200));
    const a2a = await allToAllBlocks(pg);
    const allReduce = await allReduceExact(pg);
    const broadcast = await broadcastExact(pg);
    await pg.barrier();
    report({ rank: pg.rank, size: pg.size, a2av, a2a, allReduce, broadcast });
    pg.destroy();
  },

  // allToAllV through shared memory: off before the first call, on after it (unless args[0] names
  // a rank that sets MOE_EP_SHM=0), exact for random splits and for large growing rows.
  async shm() {
    if (args[0] !== undefined && Number(process.env.RANK) === Number(args[0])) process.env.MOE_EP_SHM = "0";
    const pg = await initProcessGroup({ timeoutMs: 20000 });
    const before = pg.sharedMemory;
    const random = await allToAllVRandom(pg, 60);
    const large = await allToAllVLarge(pg, 12);
    const after = pg.sharedMemory;
    const files = shmFiles();
    await pg.barrier();
    report({ rank: pg.rank, before, after, random, large, files });
    pg.destroy();
  },

  // allToAllV with chunks on either side, through shared memory (or with args[0] = "sockets", not).
  async chunks() {
    if (args[0] === "sockets") process.env.MOE_EP_SHM = "0";
    const pg = await initProcessGroup({ timeoutMs: 20000 });
    const result = await allToAllVChunked(pg, 30);
    const sharedMemory = pg.sharedMemory;
    await pg.barrier();
    report({ rank: pg.rank, sharedMemory, takesChunks: pg.allToAllVChunks, ...result });
    pg.destroy();
  },

  // Large allToAllV rounds until a fault (the rows mostly in shared memory); "ready" once warm.
  async shmFault() {
    const pg = await initProcessGroup({ timeoutMs: Number(args[0]) });
    const W = pg.size;
    const x = Tensor.zeros([W * 512, 1024]);
    for (let i = 0; ; i++) {
      if (i === 5) process.stdout.write(`ready ${pg.rank} ${pg.sharedMemory}\n`);
      try {
        (await pg.allToAllV(x, Array(W).fill(512))).output.dispose();
      } catch (e) {
        report({ rank: pg.rank, at: Date.now(), code: e.code, message: e.message, sharedMemory: pg.sharedMemory });
        process.exit(0);
      }
    }
  },

  async subgroups() {
    const epSize = Number(args[0]);
    const pg = await initProcessGroup({ timeoutMs: 20000 });
    const { ep, expertDataParallel: edp } = await pg.split({ epSize });
    const me = pg.rank;
    // Sums of world ranks inside each group.
    const a = make("int32", [me], [1]);
    await ep.allReduce(a);
    const b = make("int32", [me], [1]);
    await edp.allReduce(b);
    // Rows inside the EP group, rank-encoded with world ranks: me sends (d + 1) rows to group rank d.
    const send = ep.ranks.map((_, d) => d + 1);
    const rows = [];
    ep.ranks.forEach((w, d) => {
      for (let j = 0; j < send[d]; j++) rows.push(me * 100 + w * 10 + j);
    });
    const { output, recvCounts } = await ep.allToAllV(make("float32", rows, [rows.length]), send);
    // Broadcast from group rank edp.size - 1 inside the expert-data-parallel group.
    const c = make("float32", [me === edp.ranks[edp.size - 1] ? 7000 + me : -1], [1]);
    await edp.broadcast(c, edp.size - 1);
    // A group of only the first and last world ranks; the others do not call it.
    let ends = null;
    if (me === 0 || me === pg.size - 1) {
      const g = await pg.newGroup([0, pg.size - 1]);
      const t = make("int32", [me + 1], [1]);
      await g.allReduce(t);
      ends = { ranks: g.ranks, rank: g.rank, size: g.size, sum: read(t)[0] };
    }
    await pg.barrier();
    report({
      rank: me,
      layout: expertParallelLayout(pg.size, epSize),
      ep: { ranks: ep.ranks, rank: ep.rank, size: ep.size, name: ep.name, sum: read(a)[0] },
      edp: { ranks: edp.ranks, rank: edp.rank, size: edp.size, name: edp.name, sum: read(b)[0], broadcast: read(c)[0] },
      a2av: { recvCounts, output: read(output) },
      ends,
    });
    pg.destroy();
    // Destroying the world group ended the sub-groups made from it.
    report({ rank: me, after: await caught(ep.barrier()), destroyed: [ep.destroyed, edp.destroyed] });
  },

  // Ranks that disagree: every rank gets the same typed error, and the group still works.
  async mismatch() {
    const pg = await initProcessGroup({ timeoutMs: 20000 });
    const W = pg.size;
    const me = pg.rank;
    const out = { rank: me };
    const x = make(
      "float32",
      Array.from({ length: 2 * W * 3 }, (_, i) => me * 1000 + i),
      [2 * W, 3],
    );
    const two = Array(W).fill(2);
    // The last rank expects one row fewer from rank 0 than rank 0 sends it.
    const expect = me === W - 1 ? two.map((n, s) => (s === 0 ? 1 : n)) : two;
    out.counts = await caught(pg.allToAllV(x, two, { recvCounts: expect }));
    out.afterCounts = await caught(pg.allToAllV(x, two));
    // Rank 1 sends rows of four elements, the others rows of three.
    const y = me === 1 ? make("float32", Array(2 * W * 4).fill(1), [2 * W, 4]) : x;
    out.rowShape = await caught(pg.allToAllV(y, two));
    // Rank 1 sends int32 rows.
    const z = me === 1 ? make("int32", Array(2 * W * 3).fill(1), [2 * W, 3]) : x;
    out.dtype = await caught(pg.allToAllV(z, two));
    // allReduce over 4 elements, but 5 on the last rank: refused, not a crash.
    out.reduceSize = await caught(
      pg.allReduce(make("float32", [1, 2, 3, 4, 5].slice(0, me === W - 1 ? 5 : 4), [me === W - 1 ? 5 : 4])),
    );
    // Rank 0 calls broadcast while the others call allReduce on the same tensor size.
    const t = make("float32", [1, 2, 3, 4], [4]);
    out.collective = await caught(me === 0 ? pg.broadcast(t, 0) : pg.allReduce(t));
    // The group still works.
    const sum = make("float32", [me, 1], [2]);
    await pg.allReduce(sum);
    out.reduced = read(sum);
    report(out);
    pg.destroy();
  },

  // Every TCP socket of this process while the group connects and works: LISTEN rows and connections.
  async listen() {
    const hostname = args[0] || undefined;
    const inodes = () => {
      const s = new Set();
      for (const fd of fs.readdirSync("/proc/self/fd")) {
        try {
          const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/self/fd/${fd}`));
          if (m) s.add(m[1]);
        } catch {
          // closed meanwhile
        }
      }
      return s;
    };
    const listening = new Set();
    const connected = new Set();
    const sample = () => {
      const mine = inodes();
      for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
        if (!fs.existsSync(file)) continue;
        for (const line of fs.readFileSync(file, "utf8").trim().split("\n").slice(1)) {
          const f = line.trim().split(/\s+/);
          if (!mine.has(f[9])) continue;
          if (f[3] === "0A") listening.add(f[1]);
          else if (f[3] === "01") connected.add(`${f[1]}>${f[2]}`);
        }
      }
    };
    const timer = setInterval(sample, 1);
    // The others arrive late, so rank 0's sockets wait in LISTEN for a while.
    if (Number(process.env.RANK) > 0) await sleep(300);
    const pg = await initProcessGroup(hostname ? { timeoutMs: 20000, hostname } : { timeoutMs: 20000 });
    sample();
    for (let i = 0; i < 5; i++) {
      const x = make("float32", Array(pg.size * 2).fill(pg.rank), [pg.size * 2]);
      await pg.allToAllV(x, Array(pg.size).fill(2));
      await pg.allReduce(x);
      sample();
    }
    clearInterval(timer);
    await pg.barrier();
    report({ rank: pg.rank, hostname: pg.hostname, listening: [...listening], connected: [...connected] });
    pg.destroy();
  },

  // Loops collectives until a fault; prints "ready" once warm, then the error with its time.
  async fault() {
    const timeoutMs = Number(args[0]);
    const pg = await initProcessGroup({ timeoutMs });
    const W = pg.size;
    const x = make("float32", Array(W * 4).fill(pg.rank), [W * 4]);
    const t = make("float32", Array(64).fill(1), [64]);
    for (let i = 0; ; i++) {
      if (i === 20) process.stdout.write(`ready ${pg.rank}\n`);
      try {
        if (i % 2) (await pg.allToAllV(x, Array(W).fill(4))).output.dispose();
        else await pg.allReduce(t);
      } catch (e) {
        const at = Date.now();
        // Later calls fail at once with the same error.
        const t0 = Date.now();
        const again = await caught(pg.barrier());
        report({ rank: pg.rank, at, code: e.code, message: e.message, again: again.code, againMs: Date.now() - t0 });
        process.exit(0);
      }
    }
  },

  // Waits at the rendezvous for ranks that never come.
  async rendezvous() {
    const timeoutMs = Number(args[0]);
    const t0 = Date.now();
    const r = await caught(initProcessGroup({ timeoutMs }));
    report({ rank: Number(process.env.RANK), ms: Date.now() - t0, ...r });
  },

  // destroy() aborts a collective in progress; the peer then sees its connection go.
  async destroy() {
    const pg = await initProcessGroup({ timeoutMs: 20000 });
    if (pg.rank === 0) {
      const t0 = Date.now();
      const pending = caught(pg.barrier());
      await sleep(300);
      pg.destroy();
      const r = await pending;
      const ms = Date.now() - t0;
      report({ rank: 0, ...r, ms, later: await caught(pg.allReduce(make("float32", [1], [1]))) });
    } else {
      await sleep(1000);
      const t0 = Date.now();
      const r = await caught(pg.allReduce(make("float32", [1], [1])));
      report({ rank: 1, ...r, ms: Date.now() - t0 });
      pg.destroy();
    }
  },
};

const run = scenarios[scenario];
if (!run) {
  process.stderr.write(`unknown scenario ${scenario}\n`);
  process.exit(2);
}
run().catch((e) => {
  process.stderr.write(`${e.code} ${e.stack}\n`);
  process.exit(1);
});
