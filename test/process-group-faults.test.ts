/**
 * Faults become typed errors on every surviving rank, within bounds: a peer
 * killed with SIGKILL gives ERR_MOE_PEER_LOST or ERR_MOE_TIMEOUT within
 * timeout + 2 s; one stopped with SIGSTOP never before half the timeout; a
 * rank that never arrives times the rendezvous out; and a broken group fails
 * every later call at once with the same error.
 */
import type { ChildProcess } from "child_process";
import * as path from "path";
import { buildDist, freePort, root, runNode, type Run } from "./procs";

const WORKER = path.join(root, "test", "workers", "process-group-worker.js");
const TYPED = ["ERR_MOE_PEER_LOST", "ERR_MOE_TIMEOUT"];

interface Ranks {
  children: Map<number, ChildProcess>;
  /** Resolves once every started rank has printed "ready <rank>". */
  ready: Promise<void>;
  done: Promise<Run[]>;
}

/** Starts ranks `which` of a world of W with the rendezvous environment, each running the worker's scenario. */
async function startRanks(W: number, which: number[], args: string[], limitMs = 30000): Promise<Ranks> {
  const env = {
    WORLD_SIZE: String(W),
    LOCAL_WORLD_SIZE: String(W),
    MASTER_ADDR: "127.0.0.1",
    MASTER_PORT: String(await freePort()),
    MOE_EP_RUN_ID: `faults-${process.pid}-${Date.now()}`,
  };
  const children = new Map<number, ChildProcess>();
  let readyCount = 0;
  let onReady: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  const done = Promise.all(
    which.map((rank) => {
      let seen = false;
      return runNode([WORKER, ...args], {
        env: { ...env, RANK: String(rank), LOCAL_RANK: String(rank) },
        limitMs,
        onStdout: (text, child) => {
          children.set(rank, child);
          if (!seen && text.includes(`ready ${rank}`)) {
            seen = true;
            if (++readyCount === which.length) onReady();
          }
        },
      });
    }),
  );
  return { children, ready, done };
}

function results(runs: Run[]): Array<Record<string, any>> {
  return runs.map((r) => {
    const line = r.stdout.split("\n").find((l) => l.startsWith('{"result"'));
    if (!line) throw new Error(`no result (code ${r.code}, signal ${r.signal}):\n${r.stdout}\n${r.stderr}`);
    return JSON.parse(line).result;
  });
}

/** Runs the fault scenario, hits rank `victim` with `signal` once all are warm, and returns the survivors' reports and the signal's time. */
async function hit(W: number, victim: number, signal: NodeJS.Signals, timeoutMs: number) {
  const ranks = await startRanks(W, [...Array(W).keys()], ["fault", String(timeoutMs)]);
  await ranks.ready;
  const at = Date.now();
  ranks.children.get(victim)!.kill(signal);
  const survivors = [...Array(W).keys()].filter((r) => r !== victim);
  // The survivors exit on their own once they have the error; then the victim goes.
  const until = Date.now() + timeoutMs + 10000;
  while (Date.now() < until && !survivors.every((r) => ranks.children.get(r)!.exitCode !== null)) {
    await new Promise((r) => setTimeout(r, 50));
  }
  ranks.children.get(victim)!.kill("SIGKILL");
  const reports = await ranks.done;
  const byRank = results(reports.filter((_, r) => r !== victim));
  return { at, survivors: byRank };
}

beforeAll(() => buildDist());

describe("a peer that dies or hangs becomes a typed error on every surviving rank", () => {
  test.each([
    [3, 1],
    [4, 0],
  ])("world size %i, rank %i killed with SIGKILL: every survivor fails within timeout + 2 s", async (W, victim) => {
    const timeoutMs = 3000;
    const { at, survivors } = await hit(W, victim, "SIGKILL", timeoutMs);
    expect(survivors).toHaveLength(W - 1);
    for (const s of survivors) {
      expect(TYPED).toContain(s.code);
      expect(s.at - at).toBeLessThanOrEqual(timeoutMs + 2000);
      // The group is broken: the next call fails at once with the same error.
      expect(s.again).toBe(s.code);
      expect(s.againMs).toBeLessThan(500);
    }
    // The ranks that lost their connection to the victim say so, and name it.
    const direct = survivors.filter((s) => s.code === "ERR_MOE_PEER_LOST" && s.message.includes(`rank ${victim} `));
    expect(direct.length).toBeGreaterThanOrEqual(1);
  });

  test.each([
    [3, 2],
    [4, 1],
  ])(
    "world size %i, rank %i stopped with SIGSTOP: every survivor fails, never before half the timeout",
    async (W, victim) => {
      const timeoutMs = 2500;
      const { at, survivors } = await hit(W, victim, "SIGSTOP", timeoutMs);
      expect(survivors).toHaveLength(W - 1);
      for (const s of survivors) {
        expect(TYPED).toContain(s.code);
        expect(s.at - at).toBeGreaterThanOrEqual(timeoutMs / 2);
        expect(s.at - at).toBeLessThanOrEqual(timeoutMs + 2000);
        expect(s.again).toBe(s.code);
      }
      // Somebody waited the whole timeout and says how long it was.
      const timedOut = survivors.filter((s) => s.code === "ERR_MOE_TIMEOUT");
      expect(timedOut.length).toBeGreaterThanOrEqual(1);
      expect(timedOut[0].message).toMatch(/timed out after 2500 ms/);
    },
  );

  test.each([
    [2, 1],
    [3, 0],
  ])(
    "world size %i, rank %i killed during allToAllVs through shared memory: every survivor gets ERR_MOE_PEER_LOST naming it, long before the timeout",
    async (W, victim) => {
      const timeoutMs = 20000;
      const ranks = await startRanks(W, [...Array(W).keys()], ["shmFault", String(timeoutMs)]);
      let shared = "";
      const seen = ranks.children;
      await ranks.ready;
      const at = Date.now();
      seen.get(victim)!.kill("SIGKILL");
      const reports = await ranks.done;
      shared = reports.map((r) => /ready \d+ (true|false)/.exec(r.stdout)?.[1] ?? "").join(",");
      expect(shared).toBe(Array(W).fill("true").join(","));
      const survivors = results(reports.filter((_, r) => r !== victim));
      expect(survivors).toHaveLength(W - 1);
      for (const s of survivors) {
        expect(s.code).toBe("ERR_MOE_PEER_LOST");
        expect(s.at - at).toBeLessThan(3000);
      }
      expect(survivors.some((s) => s.message.includes(`rank ${victim} `))).toBe(true);
    },
  );

  test("a rank that never arrives: the rendezvous fails with ERR_MOE_TIMEOUT after the timeout (or, once rank 0 has given up and gone, with the store lost)", async () => {
    const timeoutMs = 2000;
    const ranks = await startRanks(3, [0, 1], ["rendezvous", String(timeoutMs)]);
    const [r0, r1] = results(await ranks.done);
    // Rank 0 serves the store and waits the whole timeout.
    expect(r0.code).toBe("ERR_MOE_TIMEOUT");
    expect(r0.message).toMatch(/did not all arrive within 2000 ms/);
    expect(r0.ms).toBeGreaterThanOrEqual(timeoutMs - 50);
    expect(r0.ms).toBeLessThanOrEqual(timeoutMs + 2000);
    // Rank 1 times out too, unless rank 0 exited first and took the store server with it.
    if (r1.code === "ERR_MOE_TIMEOUT") expect(r1.message).toMatch(/did not all arrive within 2000 ms/);
    else expect(r1).toMatchObject({ code: "ERR_MOE_PEER_LOST", message: expect.stringMatching(/store server/) });
    expect(r1.ms).toBeGreaterThanOrEqual(timeoutMs / 2);
    expect(r1.ms).toBeLessThanOrEqual(timeoutMs + 2000);
  });

  test("destroy() aborts a collective in progress (ERR_MOE_DISPOSED at once); the peer then gets ERR_MOE_PEER_LOST", async () => {
    const ranks = await startRanks(2, [0, 1], ["destroy"]);
    const [r0, r1] = results(await ranks.done);
    expect(r0.code).toBe("ERR_MOE_DISPOSED");
    expect(r0.ms).toBeLessThan(1500);
    expect(r0.later.code).toBe("ERR_MOE_DISPOSED");
    expect(r1.code).toBe("ERR_MOE_PEER_LOST");
    expect(r1.message).toMatch(/rank 0/);
    expect(r1.ms).toBeLessThan(1000);
  });
});
