/**
 * The suite's leak check (leakCheck in util.ts, over memoryStats(device,
 * { madeSince })): it counts the tensors made since it started that are still
 * alive, so it fails on an op that keeps what it makes and is blind to older
 * tensors freed meanwhile.
 */
import { Tensor, memoryStats, ops } from "../lib";
import { leakCheck, normal, tensor } from "./util";

const NOTHING = { tensors: 0, bytes: 0 };

const gc = (globalThis as { gc?: () => void }).gc;
const noGc = gc ? "" : " (skipped: run under node --expose-gc, as npm test does)";

describe("leak check", () => {
  const X = tensor(normal(8 * 16, 1), [8, 16]);
  const W = tensor(normal(16 * 4, 2), [16, 4]);
  afterAll(() => {
    X.dispose();
    W.dispose();
  });

  test("fails on an op that keeps one of the tensors it makes", async () => {
    const kept: Tensor[] = [];
    // gate, but a copy of each result stays in `kept` and is never disposed: a leak.
    const leakyGate = async (x: Tensor, w: Tensor): Promise<Tensor> => {
      const logits = await ops.gate(x, w);
      kept.push(await logits.clone());
      return logits;
    };
    const leaks = await leakCheck();
    for (let i = 0; i < 10; i++) (await leakyGate(X, W)).dispose();
    const left = await leaks.left(200);
    expect(left).toEqual({ tensors: 10, bytes: 10 * 8 * 4 * 4 });
    expect(() => expect(left).toEqual(NOTHING)).toThrow(); // the check as the op tests write it
    for (const t of kept) t.dispose();
    expect(await leaks.left()).toEqual(NOTHING);
  });

  test("older tensors freed during the check do not count, though the process-wide count drops", async () => {
    const older = Array.from({ length: 50 }, () => Tensor.zeros([64]));
    const leaks = await leakCheck();
    const before = memoryStats().tensors;
    for (let i = 0; i < 10; i++) {
      (await ops.gate(X, W)).dispose();
      for (const t of older.splice(0, 5)) t.dispose(); // as a finalizer would free an earlier test's garbage
    }
    expect(memoryStats().tensors).toBeLessThanOrEqual(before - 50);
    expect(await leaks.left()).toEqual(NOTHING);
  });

  (gc ? test : test.skip)(`waits for the collector to free what the test dropped${noGc}`, async () => {
    const leaks = await leakCheck();
    for (let i = 0; i < 20; i++) await ops.gate(X, W); // results dropped, not disposed
    expect(leaks.now().tensors).toBeGreaterThan(0);
    expect(await leaks.left()).toEqual(NOTHING);
  });

  test("counts a storage once however many handles share it, and only on its device", async () => {
    const leaks = await leakCheck();
    const cudaMade = memoryStats("cuda:0").made;
    const a = Tensor.from([1, 2, 3], [3]);
    const b = await a.to("cpu");
    expect(leaks.now()).toEqual({ tensors: 1, bytes: 12 });
    expect(memoryStats("cpu", { madeSince: leaks.made + 1 })).toMatchObject({ tensors: 0, bytes: 0 });
    a.dispose();
    expect(leaks.now().tensors).toBe(1);
    b.dispose();
    expect(leaks.now()).toEqual(NOTHING);
    expect(memoryStats().made).toBe(leaks.made + 1);
    expect(memoryStats("cuda:0").made).toBe(cudaMade);
  });

  test("madeSince must be a non-negative integer", () => {
    for (const bad of [-1, 1.5, NaN, "3"]) {
      expect(() => memoryStats("cpu", { madeSince: bad as number })).toThrow(
        expect.objectContaining({ code: "ERR_MOE_VALUE" }),
      );
    }
  });
});
