/**
 * Gloo's address is resolved before Gloo sees it: a name that does not
 * resolve is ERR_MOE_VALUE naming it (Gloo's own lookup of such a name reads
 * an uninitialised list and crashes about half the time), in every one of
 * many processes; a name that resolves to loopback works and the group
 * reports the numeric address it bound.
 */
import * as fs from "fs";
import * as path from "path";
import { MoEError, Tensor } from "../lib";
import { initProcessGroup, openStore, type ProcessGroup } from "../lib/comm";
import { buildDist, commDir, runNode, script, tempDir } from "./procs";

const BAD = "no.such.host.invalid";
let work: string;

// A group of one whose hostname comes from the option or from MOE_EP_GLOO_HOSTNAME.
const CHILD = `
const { initProcessGroup } = require(${JSON.stringify(commDir)});
const [mode, host] = [process.argv[2], process.argv[3]];
(async () => {
  const o = { rank: 0, worldSize: 1, store: "tcp://127.0.0.1:0", runId: "host", timeoutMs: 5000 };
  if (mode === "option") o.hostname = host;
  try {
    const pg = await initProcessGroup(o);
    console.log(JSON.stringify({ ok: true, hostname: pg.hostname }));
    pg.destroy();
  } catch (e) {
    console.log(JSON.stringify({ ok: false, code: e.code, message: e.message }));
  }
})();
`;

beforeAll(() => {
  buildDist();
  work = tempDir("moe-ep-hostname-");
});

afterAll(() => fs.rmSync(work, { recursive: true, force: true }));

async function child(mode: "option" | "env", host: string): Promise<Record<string, unknown>> {
  const file = path.join(work, "child.js");
  if (!fs.existsSync(file)) script(work, "child.js", CHILD);
  const env = mode === "env" ? { MOE_EP_GLOO_HOSTNAME: host } : {};
  const run = await runNode([file, mode, host], { env, limitMs: 30000 });
  expect({ code: run.code, signal: run.signal, stderr: run.stderr }).toEqual({ code: 0, signal: null, stderr: "" });
  return JSON.parse(run.stdout);
}

test("20 processes given an unresolvable name (option or MOE_EP_GLOO_HOSTNAME) each get ERR_MOE_VALUE naming it and exit cleanly", async () => {
  const modes = Array.from({ length: 20 }, (_, i) => (i % 2 ? "env" : "option") as "option" | "env");
  const t0 = Date.now();
  for (let i = 0; i < modes.length; i += 5) {
    const results = await Promise.all(modes.slice(i, i + 5).map((m) => child(m, BAD)));
    for (const r of results) {
      expect(r.ok).toBe(false);
      expect(r.code).toBe("ERR_MOE_VALUE");
      expect(r.message).toContain(`"${BAD}"`);
      expect(r.message).toMatch(/MOE_EP_GLOO_HOSTNAME/);
    }
  }
  expect(Date.now() - t0).toBeLessThan(50000);
});

test('"localhost", by option or MOE_EP_GLOO_HOSTNAME, binds 127.0.0.1', async () => {
  expect(await child("option", "localhost")).toEqual({ ok: true, hostname: "127.0.0.1" });
  expect(await child("env", "localhost")).toEqual({ ok: true, hostname: "127.0.0.1" });
});

describe("two ranks in this process", () => {
  function stores(runId: string): ReturnType<typeof openStore>[] {
    const url = `file://${path.join(work, "stores")}`;
    return [0, 1].map((rank) => openStore(url, { rank, worldSize: 2, runId, timeoutMs: 10000 }));
  }

  test('named "localhost", they connect and reduce; the group reports 127.0.0.1', async () => {
    const s = stores("two-localhost");
    const groups = (await Promise.all(
      [0, 1].map((rank) =>
        initProcessGroup({ rank, worldSize: 2, store: s[rank], hostname: "localhost", timeoutMs: 10000 }),
      ),
    )) as ProcessGroup[];
    try {
      expect(groups.map((g) => g.hostname)).toEqual(["127.0.0.1", "127.0.0.1"]);
      const t = [Tensor.from([1, 2], [2]), Tensor.from([10, 20], [2])];
      await Promise.all(groups.map((g, i) => g.allReduce(t[i])));
      expect(Array.from(t[0].toFloat32())).toEqual([11, 22]);
      expect(Array.from(t[1].toFloat32())).toEqual([11, 22]);
      // Sub-groups share the device, and so the address.
      const subs = await Promise.all(groups.map((g) => g.newGroup([0, 1])));
      expect(subs.map((g) => g.hostname)).toEqual(["127.0.0.1", "127.0.0.1"]);
    } finally {
      for (const g of groups) g.destroy();
      for (const x of s) x.close();
    }
  });

  test("when one rank's name does not resolve, that rank gets ERR_MOE_VALUE and the other times out", async () => {
    const s = stores("two-bad");
    const settled = await Promise.all(
      [0, 1].map((rank) =>
        initProcessGroup({
          rank,
          worldSize: 2,
          store: s[rank],
          hostname: rank === 1 ? BAD : "127.0.0.1",
          timeoutMs: 1500,
        }).then(
          (g) => {
            g.destroy();
            return undefined;
          },
          (e: unknown) => e as MoEError,
        ),
      ),
    );
    for (const x of s) x.close();
    expect(settled[1]).toBeInstanceOf(MoEError);
    expect(settled[1]!.code).toBe("ERR_MOE_VALUE");
    expect(settled[1]!.message).toContain(`"${BAD}"`);
    expect(settled[0]?.code).toBe("ERR_MOE_TIMEOUT");
  });
});
