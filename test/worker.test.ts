/** The addon loads in worker_threads (per-environment data), runs ops there and lets workers exit cleanly. */
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { buildDist } from "./procs";

const dist = path.resolve(__dirname, "..", "dist");

test("two workers and the main thread run ops at once, then every thread exits", () => {
  buildDist();
  const src = `
    const { Worker, isMainThread, parentPort, workerData } = require("worker_threads");
    const m = require(${JSON.stringify(dist)});
    async function work(seed) {
      const x = m.Tensor.from([seed, 1, 2, 3], [2, 2]);
      const w = m.Tensor.from([1, 0, 0, 1], [2, 2]);
      const l = await m.ops.gate(x, w);
      let err = "";
      try { await m.ops.gate(x, m.Tensor.from([1, 2, 3], [3, 1])); } catch (e) { err = e instanceof m.MoEError ? e.code : "not MoEError"; }
      return { v: Array.from(l.toFloat32()), err };
    }
    if (isMainThread) {
      const runs = [1, 2].map((s) => new Promise((res, rej) => {
        const wk = new Worker(__filename, { workerData: s });
        let msg; wk.on("message", (m) => (msg = m)); wk.on("error", rej);
        wk.on("exit", (code) => res({ code, msg }));
      }));
      Promise.all([work(0), ...runs]).then((r) => console.log(JSON.stringify(r)));
    } else {
      work(workerData).then((r) => parentPort.postMessage(r));
    }`;
  const file = path.join(os.tmpdir(), `moe-ep-worker-${process.pid}.js`);
  fs.writeFileSync(file, src);
  const out = execFileSync(process.execPath, [file], { encoding: "utf8", timeout: 30000 });
  const [main, w1, w2] = JSON.parse(out);
  expect(main).toEqual({ v: [0, 1, 2, 3], err: "ERR_MOE_SHAPE" });
  expect(w1).toEqual({ code: 0, msg: { v: [1, 1, 2, 3], err: "ERR_MOE_SHAPE" } });
  expect(w2).toEqual({ code: 0, msg: { v: [2, 1, 2, 3], err: "ERR_MOE_SHAPE" } });
});
