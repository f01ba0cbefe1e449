/**
 * Small CPU ops run at once on the calling thread when the CPU stream is idle
 * (cpp/core/stream.h): their Promise is settled when the call returns, they
 * settle in stream order behind larger work queued before them, and their
 * results are bitwise those of the same ops run on the stream's thread
 * (MOE_EP_INLINE_WORK=0 in a child process).
 */
import { execFileSync } from "child_process";
import * as path from "path";
import { Tensor, ops } from "../lib";
import { buildDist } from "./procs";

/** Whether p settles within a few microtask turns, that is without the event loop turning: at once. */
async function settledNow(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 10 && !done; i++) await Promise.resolve();
  return done;
}

test("a small add on an idle stream is settled when the call returns", async () => {
  const a = Tensor.from([1, 2], [2]);
  const p = ops.add(a, a);
  expect(await settledNow(p)).toBe(true);
  const y = await p;
  expect(Array.from(y.toFloat32())).toEqual([2, 4]);
  for (const t of [a, y]) t.dispose();
});

test("a small op issued behind a large grouped GEMM settles after it, with the right values", async () => {
  const [L, rows, K, N] = [4, 256, 512, 512];
  const x = Tensor.from(new Float32Array(L * rows * K).fill(0.5), [L * rows, K]);
  const w = Tensor.from(new Float32Array(L * K * N).fill(0.25), [L, K, N]);
  const counts = Tensor.from(new Int32Array(L).fill(rows), [L], { dtype: "int32" });
  const a = Tensor.from([3], [1]);
  const order: string[] = [];
  const big = ops.groupedGemm(x, w, counts).then((y) => (order.push("gemm"), y));
  const small = ops.add(a, a).then((y) => (order.push("add"), y));
  expect(await settledNow(small)).toBe(false);
  const [y, s] = await Promise.all([big, small]);
  expect(order).toEqual(["gemm", "add"]);
  expect(y.toFloat32()[0]).toBe(K * 0.125);
  expect(Array.from(s.toFloat32())).toEqual([6]);
  for (const t of [x, w, counts, a, y, s]) t.dispose();
});

test("inline and on the stream's thread, add and route give the same bits", async () => {
  buildDist();
  const src = `
    const m = require(${JSON.stringify(path.resolve(__dirname, "..", "dist"))});
    (async () => {
      let s = 12345;
      const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 4294967296 - 0.5) * 8;
      const lg = m.Tensor.from(Float32Array.from({ length: 64 * 8 }, rnd), [64, 8]);
      const b = m.Tensor.from(Float32Array.from({ length: 64 * 8 }, rnd), [64, 8]);
      const sum = await m.ops.add(lg, b);
      const r = await m.ops.route(lg, { topK: 2, renormalize: true });
      const out = [sum, r.indices, r.weights, r.scores, r.tokensPerExpert, r.auxLoss, r.zLoss];
      console.log(JSON.stringify(out.map((t) => Buffer.from(t.toArray().buffer).toString("base64"))));
    })();`;
  const run = (inline: string) =>
    JSON.parse(
      execFileSync(process.execPath, ["-e", src], {
        encoding: "utf8",
        env: { ...process.env, MOE_EP_INLINE_WORK: inline },
        timeout: 30000,
      }),
    ) as string[];
  const onThread = run("0");
  const inline = run("1000000");
  expect(inline).toEqual(onThread);
  expect(onThread).toHaveLength(7);
});
