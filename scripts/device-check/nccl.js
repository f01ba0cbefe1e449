// Check mode's NCCL rows: the NCCL process group at world size 1.
"use strict";
const fs = require("fs");
const os = require("os");
const path = require("path");
const { moe, normal, dispose, atRest } = require("./common");
const { record, shapeOf } = require("./compare");

const { Tensor, ops } = moe;

// The NCCL backend of ProcessGroup on this one device: the all-to-all-v is a
// grouped ncclSend / ncclRecv to this rank itself after the count exchange;
// every reduction over one rank is the input. Expected values are the inputs.
module.exports = async function checkNccl(dev) {
  const { initProcessGroup, ncclStatus } = moe;
  const st = ncclStatus();
  if (!st.available) {
    console.log(`skip nccl process group (world size 1): NCCL unavailable: ${st.reason}`);
    return;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-nccl-check-"));
  const store = `file://${dir}`;
  const errorOf = async (p) => {
    try {
      await p;
      return "no error";
    } catch (e) {
      return `${e.code} ${e.message}`;
    }
  };
  const diff = (a, b) => {
    if (a.length !== b.length) return Math.max(a.length, b.length);
    let w = 0;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) w++;
    return w;
  };
  let pg;
  try {
    pg = await initProcessGroup({
      backend: "nccl",
      rank: 0,
      worldSize: 1,
      store,
      runId: "device-check",
      device: dev,
      timeoutMs: 30000,
    });
  } catch (e) {
    record("nccl: init (world 1)", `NCCL ${st.version}`, 1, `${e.code} ${e.message}`);
    return;
  }
  record("nccl: init (world 1)", `NCCL ${st.version}`, pg.backend === "nccl" && pg.size === 1 ? 0 : 1, pg.toString());
  for (const dtype of st.supportsBf16 ? ["float32", "bfloat16"] : ["float32"]) {
    for (const [rows, width] of [
      [0, 8],
      [1, 1],
      [5, 3],
      [4096, 1024],
    ]) {
      // rank-encoded rows (1000 * rank + row), exact in bf16 after % 256; made on the device by an op just before
      const host = Float32Array.from(
        { length: rows * width },
        (_, i) => (1000 * pg.rank + Math.floor(i / width)) % 256,
      );
      const X = await Tensor.from(host, [rows, width], { dtype }).to(dev);
      const H = await ops.activation(X, "relu"); // enqueued from the CPU stream: the collective must come after it
      const r = await pg.allToAllV(H, [rows], { recvCounts: [rows] });
      const got = r.output.toFloat32();
      const wrong = diff(got, host) + (r.recvCounts[0] === rows ? 0 : 1);
      record("nccl: allToAllV to self", shapeOf({ dtype, rows, width }), wrong, `recvCounts ${r.recvCounts}`);
      dispose([X, H, r.output]);
    }
  }
  {
    const X = await Tensor.from(new Float32Array(6), [3, 2]).to(dev);
    const got = await errorOf(pg.allToAllV(X, [3], { recvCounts: [2] }));
    const again = await errorOf(pg.allToAllV(X, [3]).then((r) => r.output.dispose()));
    record(
      "nccl: recvCounts mismatch",
      "sends 3, expects 2",
      /^ERR_MOE_COUNT_MISMATCH/.test(got) && again === "no error" ? 0 : 1,
      got,
    );
    const cpu = Tensor.from(new Float32Array(4), [4]);
    const refused = await errorOf(pg.allReduce(cpu));
    record("nccl: CPU tensor refused", "", /^ERR_MOE_DEVICE/.test(refused) ? 0 : 1, refused);
    dispose([X, cpu]);
  }
  {
    const C = await Tensor.from(Int32Array.from([12345]), [1], { dtype: "int32" }).to(dev);
    const out = await pg.allToAll(C);
    record("nccl: allToAll int32 counts", "[1]", diff(out.toInt32(), [12345]), "");
    dispose([C, out]);
  }
  const data = normal(4099);
  for (const dtype of st.supportsBf16 ? ["float32", "bfloat16"] : ["float32"]) {
    const ref = Tensor.from(data, [4099], { dtype }).toFloat32();
    for (const op of ["sum", "avg", "max"]) {
      const T = await Tensor.from(data, [4099], { dtype }).to(dev);
      await pg.allReduce(T, op);
      record("nccl: allReduce", shapeOf({ dtype, op, n: 4099 }), diff(T.toFloat32(), ref), "one rank: the input");
      dispose(T);
    }
    const B = await Tensor.from(data, [4099], { dtype }).to(dev);
    await pg.broadcast(B, 0);
    record("nccl: broadcast", shapeOf({ dtype, n: 4099 }), diff(B.toFloat32(), ref), "");
    dispose(B);
  }
  const barrier = await errorOf(pg.barrier());
  record("nccl: barrier", "", barrier === "no error" ? 0 : 1, barrier);
  try {
    const { ep, expertDataParallel } = await pg.split({ epSize: 1 });
    let wrong = 0;
    for (const g of [ep, expertDataParallel]) {
      const T = await Tensor.from([1, 2, 3], [3]).to(dev);
      await g.allReduce(T, "sum");
      wrong += diff(T.toFloat32(), [1, 2, 3]) + (g.size === 1 && g.backend === "nccl" ? 0 : 1);
      dispose(T);
    }
    record("nccl: split epSize 1", "ep + expert-data-parallel", wrong, `${ep} ${expertDataParallel}`);
    ep.destroy();
    expertDataParallel.destroy();
  } catch (e) {
    record("nccl: split epSize 1", "", 1, `${e.code} ${e.message}`);
  }
  {
    const before = await atRest(dev);
    const X = await Tensor.from(normal(256 * 64), [256, 64], { dtype: "bfloat16" }).to(dev);
    for (let i = 0; i < 100; i++) dispose((await pg.allToAllV(X, [256])).output);
    dispose(X);
    const after = await atRest(dev);
    record(
      "nccl: no leak over 100 allToAllV",
      "",
      after.tensors === before.tensors && after.bytes === before.bytes ? 0 : 1,
      `tensors ${before.tensors} -> ${after.tensors}, bytes ${before.bytes} -> ${after.bytes}`,
    );
  }
  pg.destroy();
  const gone = await errorOf(pg.barrier());
  record("nccl: destroyed group refuses", "", /^ERR_MOE_DISPOSED/.test(gone) ? 0 : 1, gone);
};
