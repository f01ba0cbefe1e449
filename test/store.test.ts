/**
 * The rendezvous store: file:// and tcp:// stores shared by real processes,
 * run namespaces, timeouts, and a tcp server that survives hostile clients and
 * listens only where it was told to.
 */
import * as fs from "fs";
import * as net from "net";
import * as path from "path";
import { MoEError } from "../lib";
import { openStore, type Store } from "../lib/comm";
import { buildDist, commDir, freePort, runNode, script, tempDir } from "./procs";
import { rng } from "./util";

let work: string;
let rankScript: string;

// Each rank publishes text and bytes, reads everyone's, and bumps a shared
// counter 40 times; rank 0 (the tcp server) stays up until all are done.
const RANK_SOURCE = `
const { openStore } = require(${JSON.stringify(commDir)});
const [url, rank, world, runId] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4]), process.argv[5]];
(async () => {
  const s = openStore(url, { rank, worldSize: world, runId, timeoutMs: 10000 });
  const ranks = [...Array(world).keys()];
  await s.set("hello/" + rank, "from rank " + rank + " \\u2603");
  await s.set("bytes/" + rank, new Uint8Array([rank, 0, 255, 128]));
  await s.wait(ranks.map((r) => "hello/" + r));
  const checkAll = await s.check(ranks.map((r) => "hello/" + r));
  const seen = [];
  for (const r of ranks) seen.push(await s.getString("hello/" + r));
  const bytes = [];
  for (const r of ranks) bytes.push(Array.from(await s.get("bytes/" + r)));
  const counts = [];
  for (let i = 0; i < 40; ++i) counts.push(await s.add("counter", 1));
  const neverSet = await s.check(["never-set"]);
  await s.set("done/" + rank, "1");
  if (rank === 0) await s.wait(ranks.map((r) => "done/" + r));
  s.close();
  console.log(JSON.stringify({ rank, seen, bytes, checkAll, counts, neverSet }));
})().catch((e) => { console.error(e.code, e.message); process.exit(1); });
`;

async function threeRanks(url: string, runId: string): Promise<void> {
  const runs = await Promise.all([0, 1, 2].map((r) => runNode([rankScript, url, String(r), "3", runId])));
  const all: number[] = [];
  for (const [r, run] of runs.entries()) {
    expect({ rank: r, code: run.code, stderr: run.stderr }).toEqual({ rank: r, code: 0, stderr: "" });
    const out = JSON.parse(run.stdout);
    expect(out.seen).toEqual([0, 1, 2].map((i) => `from rank ${i} \u2603`));
    expect(out.bytes).toEqual([0, 1, 2].map((i) => [i, 0, 255, 128]));
    expect(out.checkAll).toBe(true);
    expect(out.neverSet).toBe(false);
    all.push(...out.counts);
  }
  // Atomic across processes: 120 increments handed out 1..120, each exactly once.
  expect(all.sort((a, b) => a - b)).toEqual(Array.from({ length: 120 }, (_, i) => i + 1));
}

async function expectCode(p: Promise<unknown>, code: string, text?: RegExp): Promise<MoEError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(MoEError);
  expect((e as MoEError).code).toBe(code);
  if (text) expect((e as MoEError).message).toMatch(text);
  return e as MoEError;
}

async function timed<T>(p: Promise<T>): Promise<[number, T | unknown]> {
  const t0 = Date.now();
  const r = await p.then(
    (v) => v,
    (e: unknown) => e,
  );
  return [Date.now() - t0, r];
}

function tcpPort(s: Store): number {
  return Number(/:(\d+)$/.exec(s.url)![1]);
}

beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-store-");
  rankScript = script(work, "rank.js", RANK_SOURCE);
});

afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

describe("file store", () => {
  test("three processes set, get, wait and add atomically", async () => {
    const dir = path.join(work, "file-3");
    await threeRanks(`file://${dir}`, "run-a1");
    // Everything lived under DIR/<run id>/, which the last rank to close removed.
    expect(fs.readdirSync(dir)).toEqual([]);
  });

  test("a store opened without a timeout has the core's default, 5 minutes", () => {
    const s = openStore(`file://${path.join(work, "default-timeout")}`, { runId: "r" });
    expect(s.timeoutMs).toBe(5 * 60 * 1000);
    s.close();
  });

  test("files of an earlier run, under another run id or the same key names, are never read", async () => {
    const dir = path.join(work, "stale");
    const old = openStore(`file://${dir}`, { runId: "run-old" });
    await old.set("config", "stale");
    await old.add("counter", 41);
    // The same files again at the top of DIR, and files named like the keys themselves.
    for (const f of fs.readdirSync(path.join(dir, "run-old"))) {
      fs.copyFileSync(path.join(dir, "run-old", f), path.join(dir, f));
    }
    fs.writeFileSync(path.join(dir, "config"), "stale");
    fs.writeFileSync(path.join(dir, "counter"), "41");

    const s = openStore(`file://${dir}`, { runId: "run-new", timeoutMs: 5000 });
    expect(await s.check(["config"])).toBe(false);
    expect(await s.check(["counter"])).toBe(false);
    await expectCode(s.get("config", 150), "ERR_MOE_TIMEOUT");
    expect(await s.add("counter", 1)).toBe(1);
    await s.set("config", "fresh");
    expect(await s.getString("config")).toBe("fresh");
    // ...and the earlier run's own files are left as they were.
    expect(await old.getString("config")).toBe("stale");
    expect(await old.getString("counter")).toBe("41");
    s.close();
    old.close();
  });

  test("a file store without a run id is refused, naming MOE_EP_RUN_ID and runId", () => {
    const saved = process.env.MOE_EP_RUN_ID;
    delete process.env.MOE_EP_RUN_ID;
    try {
      let err: unknown;
      try {
        openStore(`file://${work}/no-run-id`);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(MoEError);
      expect((err as MoEError).code).toBe("ERR_MOE_VALUE");
      expect((err as MoEError).message).toMatch(/MOE_EP_RUN_ID/);
      expect((err as MoEError).message).toMatch(/runId/);
      expect(fs.existsSync(`${work}/no-run-id`)).toBe(false);
    } finally {
      if (saved !== undefined) process.env.MOE_EP_RUN_ID = saved;
    }
    expect(() => openStore("file://relative/dir", { runId: "r" })).toThrow(/absolute/);
    expect(() => openStore(`file://${work}/x`, { runId: "../escape" })).toThrow(MoEError);
    expect(() => openStore(`file://${work}/x`, { runId: ".hidden" })).toThrow(MoEError);
  });

  test("get and wait time out with ERR_MOE_TIMEOUT naming the key, within bound", async () => {
    const s = openStore(`file://${work}/timeouts`, { runId: "run-t" });
    const [ms, err] = await timed(s.get("missing-key", 300));
    expect((err as MoEError).code).toBe("ERR_MOE_TIMEOUT");
    expect((err as MoEError).message).toMatch(/"missing-key"/);
    expect(ms).toBeGreaterThanOrEqual(290);
    expect(ms).toBeLessThan(1500);
    await s.set("present", "1");
    const [ms2, err2] = await timed(s.wait(["present", "absent"], 200));
    expect((err2 as MoEError).code).toBe("ERR_MOE_TIMEOUT");
    expect((err2 as MoEError).message).toMatch(/"absent"/);
    expect(ms2).toBeLessThan(1500);
    s.close();
  });

  test("a waiting get returns once the key is set; long and non-ASCII keys round-trip", async () => {
    const s = openStore(`file://${work}/keys`, { runId: "run-k", timeoutMs: 5000 });
    const pending = s.getString("later");
    setTimeout(() => void s.set("later", "arrived"), 100);
    expect(await pending).toBe("arrived");
    const long = "k".repeat(3000);
    const long2 = "k".repeat(2999) + "j";
    await s.set(long, "long");
    await s.set(long2, "long2");
    expect(await s.getString(long)).toBe("long");
    expect(await s.getString(long2)).toBe("long2");
    expect(await s.check([long, long2])).toBe(true);
    expect(await s.check(["k".repeat(2998)])).toBe(false);
    await s.set("ключ/☃", new Uint8Array([1, 2, 3]));
    expect(Array.from(await s.get("ключ/☃"))).toEqual([1, 2, 3]);
    await s.set("empty", new Uint8Array(0));
    expect((await s.get("empty")).length).toBe(0);
    await expectCode(
      Promise.resolve().then(() => s.set("x".repeat(4097), "v")),
      "ERR_MOE_VALUE",
      /4096/,
    );
    await expectCode(
      Promise.resolve().then(() => s.set("v", new Uint8Array(16 * 1024 * 1024 + 1))),
      "ERR_MOE_VALUE",
    );
    await s.set("text", "abc");
    await expectCode(s.add("text", 1), "ERR_MOE_VALUE", /not a decimal integer/);
    s.close();
    await expectCode(
      Promise.resolve().then(() => s.get("later")),
      "ERR_MOE_DISPOSED",
    );
  });
});

describe("tcp store", () => {
  test("three processes set, get, wait and add atomically through rank 0's server", async () => {
    await threeRanks(`tcp://127.0.0.1:${await freePort()}`, "run-b1");
  });

  test("get times out with ERR_MOE_TIMEOUT naming the key; a concurrent set is not held up by a waiting get", async () => {
    const s = openStore("tcp://127.0.0.1:0", { runId: "run-tt", timeoutMs: 5000 });
    const [ms, err] = await timed(s.get("missing-key", 300));
    expect((err as MoEError).code).toBe("ERR_MOE_TIMEOUT");
    expect((err as MoEError).message).toMatch(/"missing-key"/);
    expect(ms).toBeGreaterThanOrEqual(290);
    expect(ms).toBeLessThan(1500);
    const pending = s.getString("later", 3000);
    await new Promise((r) => setTimeout(r, 50));
    await s.set("later", "arrived");
    expect(await pending).toBe("arrived");
    expect(await s.add("n", 5)).toBe(5);
    expect(await s.add("n", -7)).toBe(-2);
    expect(await s.getString("n")).toBe("-2");
    s.close();
  });

  test("a client started before the server connects once it is up", async () => {
    const port = await freePort();
    const client = openStore(`tcp://127.0.0.1:${port}`, { rank: 1, worldSize: 2, runId: "run-late", timeoutMs: 5000 });
    const pending = client.set("early", "bird");
    await new Promise((r) => setTimeout(r, 300));
    const server = openStore(`tcp://127.0.0.1:${port}`, { rank: 0, worldSize: 2, runId: "run-late" });
    await pending;
    expect(await server.getString("early")).toBe("bird");
    client.close();
    server.close();
  });

  test("close() fails a pending get with ERR_MOE_DISPOSED; a lost server gives ERR_MOE_PEER_LOST", async () => {
    const server = openStore("tcp://127.0.0.1:0", { runId: "run-c" });
    const client = openStore(server.url, { rank: 1, worldSize: 2, runId: "run-c", timeoutMs: 10000 });
    await client.set("k", "v");
    const own = timed(client.get("never", 10000));
    const lost = openStore(server.url, { rank: 1, worldSize: 2, runId: "run-c", timeoutMs: 10000 });
    await lost.set("k2", "v");
    const orphan = timed(lost.get("never", 10000));
    await new Promise((r) => setTimeout(r, 100));
    client.close();
    const [ms, err] = await own;
    expect((err as MoEError).code).toBe("ERR_MOE_DISPOSED");
    expect(ms).toBeLessThan(2000);
    server.close();
    const [ms2, err2] = await orphan;
    expect((err2 as MoEError).code).toBe("ERR_MOE_PEER_LOST");
    expect(ms2).toBeLessThan(2000);
    lost.close();
  });

  describe("hostile clients", () => {
    const RUN = "run-raw";
    let server: Store;
    let port: number;

    // The wire format, written out here independently of the server's code:
    // u32 magic "MOES", u16 version 1, u16 op, u32 key length, u32 value length, big-endian.
    function frame(
      op: number,
      key: string | Buffer,
      value: Buffer = Buffer.alloc(0),
      o: { magic?: number; version?: number; keyLen?: number; valueLen?: number } = {},
    ): Buffer {
      const k = typeof key === "string" ? Buffer.from(key) : key;
      const h = Buffer.alloc(16);
      h.writeUInt32BE(o.magic ?? 0x4d4f4553, 0);
      h.writeUInt16BE(o.version ?? 1, 4);
      h.writeUInt16BE(op, 6);
      h.writeUInt32BE(o.keyLen ?? k.length, 8);
      h.writeUInt32BE(o.valueLen ?? value.length, 12);
      return Buffer.concat([h, k, value]);
    }
    const HELLO = 1,
      SET = 2,
      GET = 3,
      OK = 0x100,
      VALUE = 0x101,
      REFUSED = 0x102;

    // Sends bytes, then collects what comes back until the server closes (or 3 s pass).
    function exchange(bytes: Buffer): Promise<{ data: Buffer; closed: boolean }> {
      return new Promise((resolve) => {
        const chunks: Buffer[] = [];
        const sock = net.connect(port, "127.0.0.1", () => sock.write(bytes));
        const timer = setTimeout(() => {
          sock.destroy();
          resolve({ data: Buffer.concat(chunks), closed: false });
        }, 3000);
        sock.on("data", (d) => chunks.push(d));
        sock.on("error", () => undefined);
        sock.on("close", () => {
          clearTimeout(timer);
          resolve({ data: Buffer.concat(chunks), closed: true });
        });
      });
    }

    // Sends bytes and hangs up after ms, however the server answered.
    function exchangeFor(bytes: Buffer, ms: number): Promise<void> {
      return new Promise((resolve) => {
        const sock = net.connect(port, "127.0.0.1", () => sock.write(bytes));
        sock.on("error", () => undefined);
        sock.on("data", () => undefined);
        const timer = setTimeout(() => sock.destroy(), ms);
        sock.on("close", () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }

    function replies(data: Buffer): Array<{ op: number; value: string }> {
      const out = [];
      for (let at = 0; at + 16 <= data.length;) {
        expect(data.readUInt32BE(at)).toBe(0x4d4f4553);
        const op = data.readUInt16BE(at + 6);
        const n = data.readUInt32BE(at + 12);
        if (at + 16 + n > data.length) break; // the rest has not arrived yet
        out.push({ op, value: data.subarray(at + 16, at + 16 + n).toString() });
        at += 16 + n;
      }
      return out;
    }

    async function goodClientWorks(tag: string): Promise<void> {
      const c = openStore(server.url, { rank: 1, worldSize: 2, runId: RUN, timeoutMs: 5000 });
      await c.set(`good/${tag}`, tag);
      expect(await server.getString(`good/${tag}`)).toBe(tag);
      c.close();
    }

    beforeAll(() => {
      server = openStore("tcp://127.0.0.1:0", { runId: RUN, timeoutMs: 5000 });
      port = tcpPort(server);
    });
    afterAll(() => server.close());

    test("a raw client that follows the format is served", async () => {
      const { data } = await new Promise<{ data: Buffer }>((resolve) => {
        const chunks: Buffer[] = [];
        const sock = net.connect(port, "127.0.0.1", () => sock.write(frame(HELLO, RUN)));
        let step = 0;
        sock.on("data", (d) => {
          chunks.push(d);
          const got = replies(Buffer.concat(chunks));
          if (got.length > step) {
            step = got.length;
            if (step === 1) sock.write(frame(SET, "raw", Buffer.from("value")));
            else if (step === 2) sock.write(frame(GET, "raw"));
            else {
              sock.end();
              resolve({ data: Buffer.concat(chunks) });
            }
          }
        });
      });
      expect(replies(data)).toEqual([
        { op: OK, value: "" },
        { op: OK, value: "" },
        { op: VALUE, value: "value" },
      ]);
      expect(await server.getString("raw")).toBe("value");
    });

    const hostile: Array<[string, () => Buffer, number[]]> = [
      ["garbage (an HTTP request)", () => Buffer.from("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), []],
      ["a wrong magic", () => frame(HELLO, RUN, undefined, { magic: 0xdeadbeef }), []],
      ["another protocol version", () => frame(HELLO, RUN, undefined, { version: 2 }), []],
      ["an oversized key length in HELLO", () => frame(HELLO, RUN, undefined, { keyLen: 0xffffffff }), []],
      [
        "an oversized value length after HELLO",
        () => Buffer.concat([frame(HELLO, RUN), frame(SET, "k", undefined, { valueLen: 16 * 1024 * 1024 + 1 })]),
        [OK],
      ],
      ["an unknown op after HELLO", () => Buffer.concat([frame(HELLO, RUN), frame(99, "k")]), [OK]],
      ["a request before HELLO", () => frame(SET, "k", Buffer.from("v")), []],
      [
        "a second request before the first is answered",
        () => Buffer.concat([frame(HELLO, RUN), frame(GET, "absent"), frame(SET, "absent", Buffer.from("v"))]),
        [OK],
      ],
      ["a wrong run id", () => frame(HELLO, "run-other"), [REFUSED]],
    ];

    test.each(hostile)(
      "%s: the server closes that connection and still serves a good client",
      async (name, bytes, expected) => {
        const { data, closed } = await exchange(bytes());
        expect(closed).toBe(true);
        expect(replies(data).map((r) => r.op)).toEqual(expected);
        // The refused request changed nothing.
        expect(await server.check(["absent"])).toBe(false);
        await goodClientWorks(name.replace(/\W+/g, "-"));
      },
    );

    test("a client of another run id is refused with ERR_MOE_VALUE", async () => {
      const c = openStore(server.url, { rank: 1, worldSize: 2, runId: "run-other", timeoutMs: 3000 });
      await expectCode(c.set("k", "v"), "ERR_MOE_VALUE", /run id/);
      c.close();
      await goodClientWorks("after-wrong-run");
    });

    test("200 connections of seeded random bytes and random headers do not stop the server", async () => {
      const r = rng(7);
      const byte = (): number => Math.floor(r() * 256);
      const inputs: Buffer[] = [];
      for (let i = 0; i < 200; ++i) {
        const junk = Buffer.from(Array.from({ length: Math.floor(r() * 64) }, byte));
        const kind = i % 4;
        if (kind === 0) inputs.push(junk);
        // A valid magic and version with random op and lengths, then junk.
        else if (kind === 1)
          inputs.push(
            Buffer.concat([
              frame(Math.floor(r() * 8), "", undefined, {
                keyLen: (byte() << 8) | byte(),
                valueLen: ((byte() << 24) | byte()) >>> 0,
              }),
              junk,
            ]),
          );
        else if (kind === 2)
          inputs.push(
            Buffer.concat([frame(HELLO, RUN), frame(Math.floor(r() * 0x110), junk.subarray(0, 8), junk.subarray(8))]),
          );
        else inputs.push(Buffer.concat([frame(HELLO, RUN), junk]));
      }
      // Sent in batches; connections the server keeps open (a partial message) are dropped by us.
      for (let i = 0; i < inputs.length; i += 50) {
        await Promise.all(inputs.slice(i, i + 50).map((b) => exchangeFor(b, 300)));
      }
      await goodClientWorks("after-fuzz");
    });

    test("a client that drops mid-message or waits without HELLO does not stop the server", async () => {
      const half = net.connect(port, "127.0.0.1", () => half.end(frame(HELLO, RUN).subarray(0, 7)));
      const idle = net.connect(port, "127.0.0.1");
      await new Promise((r) => setTimeout(r, 100));
      await goodClientWorks("beside-idle");
      idle.destroy();
      half.destroy();
    });
  });

  function listening(port: number): Array<{ file: string; address: string }> {
    // This process's sockets, by inode, then their rows in /proc/net/tcp{,6} in state LISTEN (0A).
    const inodes = new Set<string>();
    for (const fd of fs.readdirSync("/proc/self/fd")) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(fs.readlinkSync(`/proc/self/fd/${fd}`));
        if (m) inodes.add(m[1]);
      } catch {
        // closed while reading
      }
    }
    const rows = [];
    for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
      if (!fs.existsSync(file)) continue;
      for (const line of fs.readFileSync(file, "utf8").trim().split("\n").slice(1)) {
        const f = line.trim().split(/\s+/);
        const [address, portHex] = f[1].split(":");
        if (f[3] === "0A" && inodes.has(f[9]) && parseInt(portHex, 16) === port) rows.push({ file, address });
      }
    }
    return rows;
  }

  test.each(["127.0.0.1", "localhost", ""])(
    "a server for host %p listens on 127.0.0.1 only, and stops when closed",
    async (host) => {
      const s = openStore(`tcp://${host}:0`, { runId: "run-l" });
      const port = tcpPort(s);
      expect(listening(port)).toEqual([{ file: "/proc/net/tcp", address: "0100007F" }]);
      s.close();
      expect(listening(port)).toEqual([]);
      const refused = await new Promise<string>((resolve) => {
        const sock = net.connect(port, "127.0.0.1", () => resolve("connected"));
        sock.on("error", (e: NodeJS.ErrnoException) => resolve(e.code ?? "error"));
      });
      expect(refused).toBe("ECONNREFUSED");
    },
  );

  test("bad urls and options are refused with ERR_MOE_VALUE", () => {
    for (const url of [
      "tcp://127.0.0.1",
      "tcp://127.0.0.1:70000",
      "tcp://[::1]:5000",
      "http://x:1",
      "tcp://127.0.0.1:x",
    ]) {
      expect(() => openStore(url, { runId: "r" })).toThrow(MoEError);
    }
    expect(() => openStore("tcp://127.0.0.1:0", { rank: 1, worldSize: 2, runId: "r" })).toThrow(/port 0/);
    expect(() => openStore("tcp://127.0.0.1:0", { rank: 2, worldSize: 2 })).toThrow(/rank/);
    expect(() => openStore("tcp://no-such-host.invalid:0", { runId: "r" })).toThrow(/resolve/);
  });
});
