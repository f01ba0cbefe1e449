/**
 * The child process of test/tensor.test.ts's forgotten-tensors test: argv[2] tensors of argv[3] MiB
 * dropped without dispose() in an async loop, no gc() call (the process runs without --expose-gc).
 * Prints {"peak"}: the most bytes the live tensors it made held at any iteration.
 */
"use strict";
const path = require("path");
const { Tensor, memoryStats } = require(path.join(__dirname, "..", "..", "dist"));

(async () => {
  const [count, mib] = process.argv.slice(2).map(Number);
  const start = memoryStats().made;
  let peak = 0;
  for (let i = 0; i < count; i++) {
    Tensor.empty([mib << 18]); // float32: 4 bytes each
    await new Promise((r) => setImmediate(r));
    peak = Math.max(peak, memoryStats("cpu", { madeSince: start }).bytes);
  }
  console.log(JSON.stringify({ peak }));
})();
