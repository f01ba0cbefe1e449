/**
 * The child process of test/exit-safety.test.ts. argv[2] names the scenario:
 *   terminate-gemm N        N times: a worker starts a large grouped GEMM and is terminated while it runs
 *   terminate-collective N  N times: a worker joins a Gloo group with this thread and is terminated
 *                           while its allReduce waits for this thread, which never joins it
 *   throw | exit            an uncaught exception / process.exit(3) while a large grouped GEMM runs
 * After the terminate scenarios the main thread runs a grouped GEMM and checks it against its formula,
 * then prints one JSON line {"rounds", "pendingAtTerminate", "check"}. The exit scenarios print
 * "stopping <Date.now()>" just before they throw or exit.
 */
"use strict";
const path = require("path");
const os = require("os");
const fs = require("fs");
const { Worker, isMainThread, parentPort, workerData } = require("worker_threads");

const root = path.resolve(__dirname, "..", "..");
const { Tensor, ops } = require(path.join(root, "dist"));
const { openStore, initProcessGroup } = require(path.join(root, "dist", "comm"));

// x = 0.5, w = 0.25 everywhere: every output element is K * 0.125.
function gemm(experts, rows, K, N) {
  const x = Tensor.from(new Float32Array(experts * rows * K).fill(0.5), [experts * rows, K]);
  const w = Tensor.from(new Float32Array(experts * K * N).fill(0.25), [experts, K, N]);
  const counts = Tensor.from(new Int32Array(experts).fill(rows), [experts], { dtype: "int32" });
  return ops.groupedGemm(x, w, counts);
}

function tracked(p) {
  const state = { settled: false };
  p.then(
    () => (state.settled = true),
    () => (state.settled = true),
  );
  return state;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function workerMain() {
  const { scenario, storeDir, runId } = workerData;
  if (scenario === "terminate-gemm") {
    // About 17 GFLOP: well over the 30 ms below even with AVX-512 kernels on 2 cores.
    const state = tracked(gemm(32, 1024, 512, 512));
    await sleep(30); // the GEMM is on the stream by now
    parentPort.postMessage({ pending: !state.settled });
    return;
  }
  const store = openStore(`file://${storeDir}`, { rank: 1, worldSize: 2, runId, timeoutMs: 30000 });
  const group = await initProcessGroup({ rank: 1, worldSize: 2, store, hostname: "127.0.0.1", timeoutMs: 30000 });
  const state = tracked(group.allReduce(Tensor.from([1, 2, 3], [3])));
  await sleep(30); // rank 0 never joins: the allReduce waits on its socket
  parentPort.postMessage({ pending: !state.settled });
}

async function terminateRounds(scenario, rounds) {
  let pendingAtTerminate = 0;
  const storeDir = fs.mkdtempSync(path.join(os.tmpdir(), "moe-ep-exit-"));
  for (let i = 0; i < rounds; i++) {
    const runId = `round-${i}`;
    const worker = new Worker(__filename, { workerData: { scenario, storeDir, runId } });
    let group;
    let store;
    if (scenario === "terminate-collective") {
      store = openStore(`file://${storeDir}`, { rank: 0, worldSize: 2, runId, timeoutMs: 30000 });
      group = await initProcessGroup({ rank: 0, worldSize: 2, store, hostname: "127.0.0.1", timeoutMs: 30000 });
    }
    const msg = await new Promise((resolve, reject) => {
      worker.once("message", resolve);
      worker.once("error", reject);
    });
    if (msg.pending) pendingAtTerminate++;
    await worker.terminate();
    if (group) group.destroy();
    if (store) store.close();
  }
  // A terminated worker's store is closed by its native group once the allReduce it left pending has
  // failed, some time after terminate() returns; the last store of a round removes the round's folder.
  // Wait for every round's folder to go (bounded), then remove the root.
  const deadline = Date.now() + 20000;
  let left;
  for (;;) {
    left = fs.readdirSync(storeDir).filter((e) => e.startsWith("round-"));
    if (left.length === 0 || Date.now() >= deadline) break;
    await sleep(20);
  }
  if (left.length > 0) console.error(`store folders never removed: ${left.join(", ")}`);
  fs.rmSync(storeDir, { recursive: true, force: true });
  // The stream still computes correctly after the cancelled work.
  const K = 256;
  const y = await gemm(4, 64, K, 128);
  const v = y.toFloat32();
  const check = v.every((e) => e === K * 0.125);
  console.log(JSON.stringify({ rounds, pendingAtTerminate, check }));
}

function stopDuringGemm(how) {
  // About 34 GFLOP: seconds of work on this machine's two cores, so that the stop below (from a timer
  // callback, so that the throw is an uncaught exception, not a rejection) lands in it even when the
  // machine is loaded and timers fire late.
  const state = tracked(gemm(64, 512, 512, 1024));
  setTimeout(() => {
    if (state.settled) {
      console.log("the GEMM ended before the test could stop the process");
      process.exit(9);
    }
    console.log(`stopping ${Date.now()}`);
    if (how === "throw") throw new Error("uncaught during a GEMM");
    process.exit(3);
  }, 50);
}

if (!isMainThread) {
  workerMain();
} else {
  const [scenario, n] = process.argv.slice(2);
  if (scenario === "throw" || scenario === "exit") stopDuringGemm(scenario);
  else terminateRounds(scenario, Number(n));
}
