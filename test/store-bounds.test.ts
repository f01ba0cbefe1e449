/**
 * What strangers can make a store hold: a tcp server (in a child process, so
 * its resident memory can be read) takes only a HELLO before the handshake,
 * holds at most maxBytes for its run, shares a value between the replies that
 * send it, drops whoever passes a bound with one line on stderr, and serves
 * everyone else. A file store removes its run's keys once every rank's store
 * has closed, and never before.
 */
import { spawn, type ChildProcess } from "child_process";
import * as fs from "fs";
import * as net from "net";
import * as path from "path";
import { MoEError, Tensor } from "../lib";
import { initProcessGroup, openStore, STORE_LIMITS } from "../lib/comm";
import { buildDist, commDir, runNode, script, tempDir } from "./procs";

const MiB = 1024 * 1024;
const ENTRY_OVERHEAD = 64; // per key, as docs/architecture.md#stores states
const HELLO = 1,
  SET = 2,
  GET = 3,
  OK = 0x100,
  ERROR = 0x103;

let work: string;
let serverScript: string;

// Rank 0 of a run: serves a tcp store until its stdin closes.
const SERVER_SOURCE = `
const { openStore } = require(${JSON.stringify(commDir)});
const [runId, maxBytes] = [process.argv[2], process.argv[3]];
const s = openStore("tcp://127.0.0.1:0", { runId, timeoutMs: 10000, ...(maxBytes ? { maxBytes: Number(maxBytes) } : {}) });
console.log(JSON.stringify({ port: Number(/:(\\d+)$/.exec(s.url)[1]) }));
process.stdin.on("data", () => undefined);
process.stdin.on("end", () => { s.close(); process.exit(0); });
`;

interface Server {
  child: ChildProcess;
  port: number;
  url: string;
  stderr: () => string;
  rss: () => number;
  stop: () => Promise<void>;
}

async function startServer(runId: string, o: { maxBytes?: number; env?: NodeJS.ProcessEnv } = {}): Promise<Server> {
  const args = [serverScript, runId, ...(o.maxBytes ? [String(o.maxBytes)] : [])];
  const child = spawn(process.execPath, args, { env: { ...process.env, ...o.env }, stdio: ["pipe", "pipe", "pipe"] });
  let stderr = "";
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const port = await new Promise<number>((resolve, reject) => {
    let out = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      out += d;
      const m = /\{"port":(\d+)\}/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.on("exit", (code) => reject(new Error(`server exited (${code}): ${stderr}`)));
  });
  return {
    child,
    port,
    url: `tcp://127.0.0.1:${port}`,
    stderr: () => stderr,
    // The serving process's resident memory, in bytes.
    rss: () => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, "utf8"))![1]) * 1024,
    stop: () =>
      new Promise<void>((resolve) => {
        child.on("exit", () => resolve());
        child.stdin!.end();
      }),
  };
}

// The wire format, written out independently of the server's code (cpp/comm/tcp_wire.h):
// u32 magic "MOES", u16 version 1, u16 op, u32 key length, u32 value length, big-endian.
function header(op: number, keyLen: number, valueLen: number, magic = 0x4d4f4553): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(magic, 0);
  h.writeUInt16BE(1, 4);
  h.writeUInt16BE(op, 6);
  h.writeUInt32BE(keyLen, 8);
  h.writeUInt32BE(valueLen, 12);
  return h;
}

function frame(op: number, key: string, value: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([header(op, Buffer.byteLength(key), value.length), Buffer.from(key), value]);
}

/** A raw client that reads whole replies and knows when the server closed it. */
class Raw {
  readonly sock: net.Socket;
  closed = false;
  private data = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  private readonly ready: Promise<void>;

  constructor(port: number, readReplies = true) {
    this.sock = net.connect(port, "127.0.0.1");
    this.ready = new Promise((resolve) => this.sock.once("connect", () => resolve()));
    this.sock.on("error", () => undefined);
    if (readReplies) {
      this.sock.on("data", (d: Buffer) => {
        this.data = Buffer.concat([this.data, d]);
        this.waiter?.();
      });
    }
    this.sock.on("close", () => {
      this.closed = true;
      this.waiter?.();
    });
  }

  async localPort(): Promise<number> {
    await this.ready;
    return this.sock.localPort!;
  }

  async send(bytes: Buffer): Promise<void> {
    await this.ready;
    this.sock.write(bytes);
  }

  /** The next whole reply, or null when the server closes first (or after ms). */
  async reply(ms = 10000): Promise<{ op: number; value: Buffer } | null> {
    const deadline = Date.now() + ms;
    for (;;) {
      if (this.data.length >= 16) {
        const n = this.data.readUInt32BE(12);
        if (this.data.length >= 16 + n) {
          const r = { op: this.data.readUInt16BE(6), value: this.data.subarray(16, 16 + n) };
          this.data = this.data.subarray(16 + n);
          return r;
        }
      }
      if (this.closed || Date.now() >= deadline) return null;
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
        setTimeout(resolve, 50);
      });
      this.waiter = undefined;
    }
  }

  /** Resolves true once the server has closed the connection, false after ms. */
  async closedWithin(ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }

  destroy(): void {
    this.sock.destroy();
  }
}

async function hello(port: number, runId: string): Promise<Raw> {
  const c = new Raw(port);
  await c.send(frame(HELLO, runId));
  expect((await c.reply())?.op).toBe(OK);
  return c;
}

/** The lines of the server's log that name this peer port. */
function linesFor(log: string, port: number): string[] {
  return log.split("\n").filter((l) => l.includes(`dropped the client 127.0.0.1:${port}:`));
}

async function eventually(check: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
}

async function legitClientWorks(url: string, runId: string, tag: string): Promise<void> {
  const c = openStore(url, { rank: 1, worldSize: 2, runId, timeoutMs: 5000 });
  try {
    await c.set(`good/${tag}`, tag);
    expect(await c.getString(`good/${tag}`)).toBe(tag);
  } finally {
    c.close();
  }
}

async function settle(): Promise<void> {
  await new Promise((r) => setTimeout(r, 300));
}

beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-store-bounds-");
  serverScript = script(work, "server.js", SERVER_SOURCE);
});

afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

describe("tcp store: before the handshake", () => {
  test("40 strangers sending 16 MiB each before HELLO are dropped at the header, rank 0's memory stays flat, and the run goes on", async () => {
    const RUN = "run-pre";
    const server = await startServer(RUN);
    try {
      await legitClientWorks(server.url, RUN, "warm");
      await settle();
      const before = server.rss();
      const junk = Buffer.alloc(16 * MiB, 0xab);
      // Four kinds: a request before HELLO, an oversized HELLO key, a HELLO with a value, bytes that are no message.
      const firstBytes = [
        header(SET, 1, 16 * MiB),
        header(HELLO, 0xffffffff, 0),
        header(HELLO, RUN.length, 16 * MiB),
        Buffer.alloc(16, 0xab),
      ];
      const strangers = Array.from({ length: 40 }, () => new Raw(server.port));
      const ports = await Promise.all(strangers.map((s) => s.localPort()));
      const attack = (i: number): Promise<boolean> =>
        strangers[i].send(Buffer.concat([firstBytes[i % 4], junk])).then(() => strangers[i].closedWithin(10000));
      // One of each kind in turn (so the log's first lines are theirs), then the rest at once.
      const closed = [];
      for (let i = 0; i < 4; ++i) closed.push(await attack(i));
      closed.push(...(await Promise.all(strangers.slice(4).map((_, i) => attack(i + 4)))));
      expect(closed).toEqual(Array(40).fill(true));
      await settle();
      // Before the fix each connection buffered up to 16 MiB (40 of them: about 640 MiB).
      expect(server.rss() - before).toBeLessThan(16 * MiB);
      await legitClientWorks(server.url, RUN, "after");

      // One line per dropped client, naming it and the bound, up to 20 lines in 10 s.
      await eventually(
        () =>
          server
            .stderr()
            .split("\n")
            .filter((l) => l.includes("dropped the client")).length >= 20,
      );
      const lines = server
        .stderr()
        .split("\n")
        .filter((l) => l.includes("dropped the client"));
      expect(lines.length).toBe(20);
      for (const l of lines) {
        expect(l).toMatch(
          /^moe-ep store server \(run run-pre\): dropped the client 127\.0\.0\.1:\d+: sent .* before its handshake \(only a HELLO of at most 144 bytes may come first\)$/,
        );
        expect(ports).toContain(Number(/127\.0\.0\.1:(\d+):/.exec(l)![1]));
      }
      const said = [
        "a request (op 2)",
        "a HELLO of 4294967295 + 0 bytes",
        "a HELLO of 7 + 16777216 bytes",
        "bytes that are not",
      ];
      for (let i = 0; i < 4; ++i) {
        expect(linesFor(lines.join("\n"), ports[i])).toEqual([expect.stringContaining(`sent ${said[i]}`)]);
      }
    } finally {
      await server.stop();
    }
  });

  test("a client that sends half a HELLO and leaves is no violation: nothing is logged", async () => {
    const RUN = "run-half";
    const server = await startServer(RUN);
    try {
      const half = new Raw(server.port);
      await half.send(frame(HELLO, RUN).subarray(0, 10));
      await legitClientWorks(server.url, RUN, "beside-half");
      half.destroy(); // a client that leaves is not a violation: no line
      await settle();
      expect(server.stderr()).toBe("");
    } finally {
      await server.stop();
    }
  });
});

describe("tcp store: what one run may hold", () => {
  test("20 writes of 16 MiB with the right run id: those within MOE_EP_STORE_MAX_BYTES are kept, the rest refused and the writer dropped", async () => {
    const RUN = "run-quota";
    const max = 64 * MiB;
    const server = await startServer(RUN, { env: { MOE_EP_STORE_MAX_BYTES: String(max) } });
    try {
      await legitClientWorks(server.url, RUN, "warm");
      await settle();
      const before = server.rss();
      // What the run holds, by the documented accounting: each key its bytes + 64, each value its bytes.
      let held = "good/warm".length + ENTRY_OVERHEAD + "warm".length;
      const value = (i: number): Buffer => Buffer.alloc(16 * MiB, i + 1);
      let writer = await hello(server.port, RUN);
      let writerPort = await writer.localPort();
      const accepted: number[] = [];
      const droppedPorts: number[] = [];
      for (let i = 0; i < 20; ++i) {
        const key = `big/${i}`;
        const cost = key.length + 16 * MiB + ENTRY_OVERHEAD;
        await writer.send(frame(SET, key, value(i)));
        const r = await writer.reply();
        if (held + cost <= max) {
          expect(r?.op).toBe(OK);
          held += cost;
          accepted.push(i);
        } else {
          expect(r?.op).toBe(ERROR);
          expect(r!.value.toString()).toMatch(
            /bound of 67108864 bytes \(maxBytes \/ MOE_EP_STORE_MAX_BYTES on rank 0\)/,
          );
          expect(await writer.closedWithin(3000)).toBe(true);
          droppedPorts.push(writerPort);
          writer = await hello(server.port, RUN);
          writerPort = await writer.localPort();
        }
      }
      writer.destroy();
      expect(accepted).toEqual([0, 1, 2]);
      await settle();
      // Unbounded, the 20 writes held 320 MiB.
      expect(server.rss() - before).toBeLessThan(max + 16 * MiB);

      await eventually(() => linesFor(server.stderr(), droppedPorts[droppedPorts.length - 1]).length > 0);
      for (const p of droppedPorts) {
        const lines = linesFor(server.stderr(), p);
        expect(lines.length).toBe(1);
        expect(lines[0]).toMatch(/its set of \d+ bytes would pass the run's bound of 67108864 bytes/);
      }

      // The kept values are intact, and a well-behaved client is served.
      const c = openStore(server.url, { rank: 1, worldSize: 2, runId: RUN, timeoutMs: 5000 });
      try {
        expect(Buffer.from(await c.get("big/2")).equals(value(2))).toBe(true);
        expect(await c.check(["big/3"])).toBe(false);
        // Its own set past the bound is ERR_MOE_VALUE naming it, and the client goes on working.
        const err = await c.set("too-big", new Uint8Array(16 * MiB)).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(MoEError);
        expect((err as MoEError).code).toBe("ERR_MOE_VALUE");
        expect((err as MoEError).message).toMatch(/MOE_EP_STORE_MAX_BYTES/);
        await c.set("small", "fits");
        expect(await c.getString("small")).toBe("fits");
      } finally {
        c.close();
      }
    } finally {
      await server.stop();
    }
  });

  test("replies share the stored value; values kept alive by unread replies count until their readers go", async () => {
    const RUN = "run-share";
    const max = 64 * MiB;
    // Larger than what the kernel takes of a reply nobody reads (tcp_wmem's 4 MiB and a receive window),
    // so the server still holds part of every such reply.
    const VALUE = 16 * MiB;
    const server = await startServer(RUN, { maxBytes: max });
    const readers: Raw[] = [];
    const stalledRead = async (): Promise<void> => {
      const r = await hello(server.port, RUN);
      r.sock.pause();
      await r.send(frame(GET, "shared"));
      readers.push(r);
    };
    try {
      const owner = openStore(server.url, { rank: 1, worldSize: 2, runId: RUN, timeoutMs: 10000 });
      await owner.set("shared", new Uint8Array(VALUE).fill(1));
      await settle();
      const before = server.rss();
      // 10 readers ask for the value and never read the reply: copied into each, 160 MiB.
      for (let i = 0; i < 10; ++i) await stalledRead();
      await settle();
      expect(server.rss() - before).toBeLessThan(16 * MiB);

      // Replaced while readers hold it, each old value lives on, and counts: the key's bytes + 64
      // once, every live value in full, and a set reserves its key, value and 64 bytes.
      const key = "shared".length + ENTRY_OVERHEAD;
      let live = 1;
      let expected = 0;
      while (key + live * VALUE + key + VALUE <= max) {
        expected++;
        live++;
      }
      let replaced = 0;
      for (let i = 0; i < expected + 2; ++i) {
        const ok = await owner.set("shared", new Uint8Array(VALUE).fill(i + 2)).then(
          () => true,
          (e: MoEError) => {
            expect(e.code).toBe("ERR_MOE_VALUE");
            return false;
          },
        );
        if (!ok) break;
        replaced++;
        await stalledRead(); // holds the new value too
      }
      expect(expected).toBeGreaterThan(0);
      expect(replaced).toBe(expected);
      expect(server.rss() - before).toBeLessThan(max + 16 * MiB);

      // Once the readers go, the old values are freed and no longer count.
      for (const r of readers) r.destroy();
      await settle();
      for (let i = 0; i < expected + 2; ++i) await owner.set("shared", new Uint8Array(VALUE).fill(99));
      expect((await owner.get("shared"))[VALUE - 1]).toBe(99);
      owner.close();
    } finally {
      for (const r of readers) r.destroy();
      await server.stop();
    }
  });

  test("maxBytes, storeMaxBytes and MOE_EP_STORE_MAX_BYTES are checked; a group fits in the least bound", async () => {
    expect(STORE_LIMITS.maxBytes).toBe(256 * MiB);
    expect(() => openStore("tcp://127.0.0.1:0", { runId: "r", maxBytes: 1000 })).toThrow(/maxBytes/);
    expect(() => openStore("tcp://127.0.0.1:0", { runId: "r", maxBytes: 1.5 * MiB + 0.5 })).toThrow(MoEError);
    const saved = process.env.MOE_EP_STORE_MAX_BYTES;
    try {
      for (const bad of ["lots", "-1", "1000", "1e9"]) {
        process.env.MOE_EP_STORE_MAX_BYTES = bad;
        let err: unknown;
        try {
          openStore("tcp://127.0.0.1:0", { runId: "r" });
        } catch (e) {
          err = e;
        }
        expect((err as MoEError).code).toBe("ERR_MOE_VALUE");
        expect((err as MoEError).message).toMatch(/MOE_EP_STORE_MAX_BYTES/);
      }
    } finally {
      if (saved === undefined) delete process.env.MOE_EP_STORE_MAX_BYTES;
      else process.env.MOE_EP_STORE_MAX_BYTES = saved;
    }
    const bad = await initProcessGroup({
      rank: 0,
      worldSize: 1,
      store: "tcp://127.0.0.1:0",
      runId: "pg-bad",
      storeMaxBytes: 10,
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((bad as MoEError).code).toBe("ERR_MOE_VALUE");
    expect((bad as MoEError).message).toMatch(/storeMaxBytes/);
    const pg = await initProcessGroup({
      rank: 0,
      worldSize: 1,
      store: "tcp://127.0.0.1:0",
      runId: "pg-small",
      storeMaxBytes: STORE_LIMITS.minMaxBytes,
      timeoutMs: 5000,
    });
    try {
      const t = Tensor.from([1, 2, 3], [3]);
      await pg.allReduce(t);
      expect(Array.from(t.toFloat32())).toEqual([1, 2, 3]);
    } finally {
      pg.destroy();
    }
  });
});

describe("file store cleanup", () => {
  test("destroying a two-rank group on both ranks removes the run's keys", async () => {
    const dir = path.join(work, "pg-files");
    const rank = script(
      work,
      "pg-rank.js",
      `const fs = require("fs");
       const { initProcessGroup } = require(${JSON.stringify(commDir)});
       const [dir, rank] = [process.argv[2], Number(process.argv[3])];
       (async () => {
         const pg = await initProcessGroup({ rank, worldSize: 2, store: "file://" + dir, runId: "pg-run", timeoutMs: 10000 });
         await pg.barrier();
         const keys = fs.readdirSync(dir + "/pg-run").filter((f) => !f.startsWith("."));
         await pg.barrier();
         // Rank 1 leaves first; rank 0 still sees every key, then leaves too.
         if (rank === 1) pg.destroy();
         else await new Promise((r) => setTimeout(r, 500));
         const still = fs.readdirSync(dir + "/pg-run").filter((f) => !f.startsWith("."));
         if (rank === 0) pg.destroy();
         console.log(JSON.stringify({ keys, still }));
       })().catch((e) => { console.error(e.code, e.message); process.exit(1); });`,
    );
    const runs = await Promise.all([0, 1].map((r) => runNode([rank, dir, String(r)])));
    for (const run of runs) expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 0, stderr: "" });
    const [r0] = runs.map((run) => JSON.parse(run.stdout));
    expect(r0.keys.length).toBeGreaterThanOrEqual(2); // each rank's Gloo addresses, at least
    expect(r0.still.sort()).toEqual(r0.keys.sort());
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  test("a rank that writes and closes early never removes a key a later rank still needs", async () => {
    const dir = path.join(work, "early");
    const url = `file://${dir}`;
    // Rank 1 publishes and leaves, twice, before rank 0 has opened the store.
    for (let i = 0; i < 2; ++i) {
      const s1 = openStore(url, { rank: 1, worldSize: 2, runId: "early-run" });
      await s1.set(`from-1/${i}`, `value ${i}`);
      s1.close();
    }
    expect(fs.existsSync(path.join(dir, "early-run"))).toBe(true);
    const s0 = openStore(url, { rank: 0, worldSize: 2, runId: "early-run", timeoutMs: 2000 });
    expect(await s0.getString("from-1/0")).toBe("value 0");
    expect(await s0.getString("from-1/1")).toBe("value 1");
    // Another store of rank 0 closing while s0 is open removes nothing either.
    openStore(url, { rank: 0, worldSize: 2, runId: "early-run" }).close();
    expect(await s0.check(["from-1/1"])).toBe(true);
    s0.close();
    expect(fs.readdirSync(dir)).toEqual([]);
    // Other runs in the same directory are left alone.
    const other = openStore(url, { runId: "other-run", worldSize: 2 });
    await other.set("k", "v");
    const last = openStore(url, { runId: "third-run" });
    last.close();
    expect(fs.readdirSync(dir)).toEqual(["other-run"]);
    other.close();
  });
});
