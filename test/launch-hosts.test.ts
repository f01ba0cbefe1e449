/**
 * `moe-ep launch` over two hosts: two Linux network namespaces joined by a
 * veth pair (scripts/netns-hosts.sh), two ranks in each. An MoE layer trained
 * at epSize 4 gives bitwise the bytes of the same run on one host; every
 * socket listens on the link's or the loopback address only; a failing rank
 * ends the run on both hosts with its exit code; killing one host's ranks
 * mid-step gives every rank of the other host a typed error within the
 * group's timeout. Skipped, with the reason, where namespaces cannot be made.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { alive, buildDist, root, runNode, script, tempDir, type Run } from "./procs";

const NETNS = path.join(root, "scripts", "netns-hosts.sh");
const BASE = "moe-ep-hosts";
const NAME = `${BASE}-${process.pid}`;
const HOST = [`${NAME}-a`, `${NAME}-b`];
const ADDR = ["10.213.0.1", "10.213.0.2"];
const PORT = 29500;
const ALLOWED = new Set([...ADDR, "127.0.0.1"]);

/** Why the namespaces could not be made ("" when they were): made here, so that tests can be skipped. */
function makeHosts(): string {
  if (process.platform !== "linux") return "skipped: network namespaces need Linux";
  if (process.getuid?.() !== 0) return "skipped: making network namespaces needs root";
  try {
    execFileSync("ip", ["-V"], { stdio: "ignore" });
  } catch {
    return "skipped: iproute2's ip is not in PATH";
  }
  try {
    execFileSync("bash", [NETNS, "prune", BASE], { stdio: "pipe" });
    execFileSync("bash", [NETNS, "up", NAME, ...ADDR], { stdio: "pipe" });
  } catch (e) {
    return `skipped: could not make network namespaces: ${String((e as { stderr?: Buffer }).stderr ?? e).trim()}`;
  }
  return "";
}
const skipReason = makeHosts();
const it = skipReason ? test.skip : test;

let work: string;
beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-hosts-");
});
afterAll(() => {
  if (!skipReason) execFileSync("bash", [NETNS, "down", NAME]);
  fs.rmSync(work, { recursive: true, force: true });
});

const ENTRY = `require(${JSON.stringify(path.join(root, "dist", "launch"))}).launch(process.argv.slice(1)).then((c) => { process.exitCode = c; })`;

interface Launcher {
  child: ChildProcess;
  out: () => string;
  done: Promise<Run>;
}

/** Starts `moe-ep launch args` inside namespace ns; killed (and failed) after limitMs. */
function launchIn(ns: string, args: string[], limitMs = 40000): Launcher {
  const t0 = Date.now();
  const child = spawn("ip", ["netns", "exec", ns, process.execPath, "-e", ENTRY, "--", ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const done = new Promise<Run>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`launcher in ${ns} ran past ${limitMs} ms\nstdout: ${stdout}\nstderr: ${stderr}`));
    }, limitMs);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0, pid: child.pid ?? -1 });
    });
  });
  return { child, out: () => stdout, done };
}

/** The launcher options of host h of two, 2 ranks each. */
function hostArgs(h: number, extra: string[] = []): string[] {
  return ["--nnodes", "2", "--node-rank", String(h), "--nproc-per-node", "2", "--master-addr", ADDR[0], ...extra];
}

/** Waits until ok(), calling poll (default: a 50 ms sleep) between tries. */
async function until(what: string, ok: () => boolean, poll?: () => Promise<unknown>, limitMs = 30000): Promise<void> {
  const end = Date.now() + limitMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await (poll ? poll() : new Promise((r) => setTimeout(r, 50)));
  }
}

interface Socket {
  proto: string;
  /** The local address, without the port. */
  local: string;
  port: number;
  line: string;
}

/** ss's sockets in namespace ns: "-l" the listening TCP and bound UDP ones, "" the connected TCP ones. */
async function sockets(ns: string, which: "-l" | "" = "-l"): Promise<Socket[]> {
  const rows: Socket[] = [];
  for (const proto of which ? ["t", "u"] : ["t"]) {
    const args = ["netns", "exec", ns, "ss", "-H", "-n", "-p", `-${proto}`, ...(which ? [which] : [])];
    const text = await new Promise<string>((resolve, reject) =>
      execFile("ip", args, { encoding: "utf8" }, (e, out) => (e ? reject(e) : resolve(out))),
    );
    for (const line of text.split("\n").filter((l) => l.trim())) {
      const local = line.trim().split(/\s+/)[3];
      const colon = local.lastIndexOf(":");
      rows.push({
        proto: proto === "t" ? "tcp" : "udp",
        local: local.slice(0, colon),
        port: Number(local.slice(colon + 1)),
        line,
      });
    }
  }
  return rows;
}

/** Polls the listening sockets of every namespace until stopped; each distinct one is kept. */
function watchListeners(): { stop: () => Promise<Map<string, Socket>[]> } {
  const seen = HOST.map(() => new Map<string, Socket>());
  let going = true;
  const loop = (async () => {
    while (going) {
      const rows = await Promise.all(HOST.map((ns) => sockets(ns)));
      rows.forEach((r, h) => r.forEach((s) => seen[h].set(`${s.proto} ${s.local}:${s.port}`, s)));
    }
  })();
  return {
    stop: async () => {
      going = false;
      await loop;
      return seen;
    },
  };
}

function lines(text: string, re: RegExp): RegExpExecArray[] {
  return text
    .split("\n")
    .map((l) => re.exec(l))
    .filter((m): m is RegExpExecArray => m !== null);
}

/**
 * One rank: a world group with a long rendezvous (rank --late joins it 1.5 s
 * after the others), then one over the same
 * ranks with the test's timeout for the collectives; an MoE layer at epSize 4
 * trained for --steps steps (forward, backward, AdamW) on inputs that depend
 * only on the rank and the step. The digest covers every step's output and
 * input gradient and the final parameters, byte for byte.
 */
const TRAIN = `
const fs = require("fs");
const { createHash } = require("crypto");
const { AdamW, MoELayer, Tensor, initProcessGroup } = require(${JSON.stringify(path.join(root, "dist"))});
const [out, steps, timeoutMs, go, late] = process.argv.slice(2);
const rank = Number(process.env.RANK);
const D = 16, F = 32, T = 48;
/** Deterministic values in [-1, 1) from a 32-bit LCG seeded by (rank, step, which). */
function values(step, which) {
  let s = (rank * 7919 + step * 104729 + which * 15485863) >>> 0;
  const v = new Float32Array(T * D);
  for (let i = 0; i < v.length; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; v[i] = s / 2 ** 31 - 1; }
  return v;
}
const bytes = (t) => { const f = t.toFloat32(); return Buffer.from(f.buffer, f.byteOffset, f.byteLength); };
(async () => {
  // A late rank keeps the others' Gloo sockets listening for it a while.
  if (rank === Number(late)) await new Promise((r) => setTimeout(r, 1500));
  const boot = await initProcessGroup({ timeoutMs: 30000 });
  const pg = await boot.newGroup([0, 1, 2, 3], { timeoutMs: Number(timeoutMs) });
  const moe = new MoELayer({ dModel: D, dFF: F, numExperts: 8, topK: 2, epSize: 4, activation: "relu", seed: 3, name: "moe" }, pg);
  await moe.ready;
  const opt = new AdamW(moe.parameters(), { lr: 1e-2, weightDecay: 0 });
  console.log("pid " + process.pid);
  const hash = createHash("sha256");
  const stepDigests = [];
  let last = "";
  for (let step = 1; step <= Number(steps); step++) {
    const x = Tensor.from(values(step, 0), [T, D]);
    const dy = Tensor.from(values(step, 1), [T, D]);
    const r = await moe.forward(x);
    const dx = await moe.backward(dy);
    const h = createHash("sha256").update(bytes(r.output)).update(bytes(dx)).digest("hex");
    hash.update(h);
    stepDigests.push(h);
    last = bytes(r.output).toString("base64");
    await opt.step();
    await moe.zeroGrad();
    for (const t of [x, dy, r.output, dx]) t.dispose();
    if (step === 2) console.log("stepping");
  }
  for (const p of moe.parameters()) hash.update(bytes(p.param));
  fs.writeFileSync(out + "." + rank + ".json", JSON.stringify({
    digest: hash.digest("hex"), stepDigests, last,
    gloo: pg.hostname, env: { MASTER_ADDR: process.env.MASTER_ADDR, GLOO: process.env.MOE_EP_GLOO_HOSTNAME, GROUP_RANK: process.env.GROUP_RANK },
  }));
  // Everything still listens here until the test has looked.
  console.log("trained");
  while (go && !fs.existsSync(go)) await new Promise((r) => setTimeout(r, 20));
  await pg.barrier();
  moe.dispose();
  pg.destroy();
  boot.destroy();
})().catch((e) => {
  console.log(JSON.stringify({ error: { code: e.code, message: e.message, at: Date.now() } }));
  process.exit(1);
});
`;

function results(prefix: string): Array<Record<string, any>> {
  return [0, 1, 2, 3].map((r) => JSON.parse(fs.readFileSync(`${prefix}.${r}.json`, "utf8")));
}

describe("moe-ep launch on two hosts (network namespaces joined by a veth pair)", () => {
  it(
    skipReason ||
      "an MoE layer trained at epSize 4 over 2 hosts x 2 ranks is bitwise the one-host run; nothing listens outside the link",
    async () => {
      const file = script(work, "train.js", TRAIN);
      const steps = "4";
      // The same run on one host, through the one-host launcher.
      const one = path.join(work, "one");
      const ref = await runNode(["-e", ENTRY, "--", "-n", "4", file, one, steps, "20000", "", "-1"], {
        limitMs: 40000,
      });
      expect([ref.code, ref.stderr]).toEqual([0, ""]);

      const two = path.join(work, "two");
      const go = path.join(work, "two.go");
      const args = [file, two, steps, "20000", go, "3"];
      const watch = watchListeners();
      const a = launchIn(HOST[0], hostArgs(0, args));
      // Host 0's launcher waits for host 1's on MASTER_ADDR:MASTER_PORT+1, on that address only.
      let waiting: Socket[] = [];
      await until(
        "host 0's launcher to listen",
        () => waiting.length > 0,
        async () => (waiting = await sockets(HOST[0])),
      );
      expect(waiting.map((l) => `${l.proto} ${l.local}:${l.port}`)).toEqual([`tcp ${ADDR[0]}:${PORT + 1}`]);
      const b = launchIn(HOST[1], hostArgs(1, args));
      await until(
        "4 ranks to train",
        () => (a.out() + b.out()).split("\n").filter((l) => l.endsWith("] trained")).length === 4,
      );
      // While the ranks hold their groups, every TCP socket is on the host's link address or loopback.
      const connected = await Promise.all(HOST.map((ns) => sockets(ns, "")));
      const listened = await watch.stop();
      fs.writeFileSync(go, "");
      const [ra, rb] = await Promise.all([a.done, b.done]);
      expect([ra.code, ra.stderr, rb.code, rb.stderr]).toEqual([0, "", 0, ""]);
      for (let h = 0; h < 2; h++) {
        const all = [...listened[h].values(), ...connected[h]];
        for (const s of all) expect([HOST[h], s.line, ALLOWED.has(s.local)]).toEqual([HOST[h], s.line, true]);
        // Gloo listened on the host's link address while rank 3 was late, and its connections use it.
        const gloo = [...listened[h].values()].filter(
          (s) => s.proto === "tcp" && s.port !== PORT && s.port !== PORT + 1,
        );
        expect([HOST[h], gloo.length > 0, gloo.every((s) => s.local === ADDR[h])]).toEqual([HOST[h], true, true]);
        expect(connected[h].filter((s) => s.local === ADDR[h]).length).toBeGreaterThanOrEqual(3);
      }
      // Rank 0's store, on host 0's link address.
      expect(listened[0].has(`tcp ${ADDR[0]}:${PORT}`)).toBe(true);

      const hosts = results(two);
      const single = results(one);
      for (let r = 0; r < 4; r++) {
        const h = r < 2 ? 0 : 1;
        // Gloo's address was chosen from the interface that routes to host 0.
        expect(hosts[r].gloo).toBe(ADDR[h]);
        expect(hosts[r].env).toEqual({ MASTER_ADDR: ADDR[0], GLOO: ADDR[h], GROUP_RANK: String(h) });
        expect(single[r].gloo).toBe("127.0.0.1");
        expect([r, hosts[r].last]).toEqual([r, single[r].last]);
        expect([r, hosts[r].stepDigests]).toEqual([r, single[r].stepDigests]);
        expect([r, hosts[r].digest]).toEqual([r, single[r].digest]);
      }
      // The run did something: the steps differ, and so do the ranks.
      expect(new Set(single[0].stepDigests).size).toBe(Number(steps));
      expect(new Set(single.map((s) => s.digest)).size).toBe(4);
    },
    90000,
  );

  it.each([
    [3, 7],
    [0, 5],
  ])(
    skipReason || "rank %i exiting with code %i ends the run on both hosts, each launcher exiting with that code",
    async (victim, code) => {
      const file = script(
        work,
        `fail-${victim}.js`,
        `const r = Number(process.env.RANK);
         console.log("pid " + process.pid);
         if (r === ${victim}) setTimeout(() => process.exit(${code}), 500);
         else setTimeout(() => console.log("woke"), 60000);`,
      );
      const a = launchIn(HOST[0], hostArgs(0, [file]));
      const b = launchIn(HOST[1], hostArgs(1, [file]));
      const runs = await Promise.all([a.done, b.done]);
      const pids = runs.flatMap((run) => lines(run.stdout, /^\[rank \d\] pid (\d+)$/).map((m) => Number(m[1])));
      expect(pids).toHaveLength(4);
      for (const run of runs) {
        expect([run.code, run.stderr]).toEqual([
          code,
          expect.stringContaining(`failed: rank ${victim} (host ${victim >> 1}) exited with code ${code}`),
        ]);
        expect(run.stdout).not.toMatch(/woke/);
        expect(run.ms).toBeLessThan(15000);
      }
      for (const pid of pids) expect(alive(pid)).toBe(false);
    },
    30000,
  );

  it(
    skipReason ||
      "killing host 1's ranks mid-step: every rank on host 0 gets a typed error within the group's timeout; both launchers exit non-zero",
    async () => {
      const file = script(work, "train.js", TRAIN);
      const timeoutMs = 1500;
      const fault = script(
        work,
        "fault.js",
        // Host 0's ranks keep running on the launcher's SIGTERM, so that each reports what its group told it;
        // the launcher's SIGKILL after its grace period still ends them.
        `process.on("SIGTERM", () => console.log("SIGTERM"));\nrequire(${JSON.stringify(file)});`,
      );
      const args = [fault, path.join(work, "fault"), "100000", String(timeoutMs), "", "-1"];
      const a = launchIn(HOST[0], hostArgs(0, args));
      const b = launchIn(HOST[1], hostArgs(1, args));
      await until(
        "4 ranks to step",
        () => (a.out() + b.out()).split("\n").filter((l) => l.endsWith("] stepping")).length === 4,
      );
      const victims = lines(b.out(), /^\[rank ([23])\] pid (\d+)$/).map((m) => Number(m[2]));
      expect(victims).toHaveLength(2);
      const at = Date.now();
      for (const pid of victims) process.kill(pid, "SIGKILL");
      const [ra, rb] = await Promise.all([a.done, b.done]);

      const errors = lines(ra.stdout, /^\[rank ([01])\] (\{"error".*)$/).map((m) => ({
        rank: Number(m[1]),
        ...JSON.parse(m[2]).error,
      }));
      expect(errors.map((e) => e.rank).sort()).toEqual([0, 1]);
      for (const e of errors) {
        expect(["ERR_MOE_PEER_LOST", "ERR_MOE_TIMEOUT"]).toContain(e.code);
        // A lost peer is known at once; a timeout counts from a collective that began before the kill.
        expect(e.at - at).toBeLessThanOrEqual(timeoutMs + 250);
      }
      // Host 1's launcher reports its rank's end; host 0's fails the run too.
      expect(rb.code).toBe(137);
      expect(rb.stderr).toMatch(/failed: rank [23] \(host 1\) was killed by SIGKILL/);
      expect(ra.code).not.toBe(0);
      expect(ra.stderr).toMatch(/failed: rank \d \(host [01]\)/);
    },
    60000,
  );

  it(
    skipReason || "hosts that disagree on --nproc-per-node are refused: both launchers exit 2 and start no rank",
    async () => {
      const file = script(work, "never.js", `console.log("started");`);
      const a = launchIn(HOST[0], hostArgs(0, [file]));
      const b = launchIn(HOST[1], [...hostArgs(1), "--nproc-per-node", "3", file]);
      const [ra, rb] = await Promise.all([a.done, b.done]);
      expect([ra.code, rb.code]).toEqual([2, 2]);
      expect(ra.stderr).toMatch(/--nproc-per-node 3 but host 0 has 2/);
      expect(rb.stderr).toMatch(/refused the run: .*--nproc-per-node 3 but host 0 has 2/);
      expect(ra.stdout + rb.stdout).not.toMatch(/started/);
    },
    30000,
  );
});
