/**
 * The child process of test/tensor.test.ts's forgotten-tensors test: 96 tensors of 16 MiB dropped
 * without dispose() in an async loop, no gc() call (the process runs without --expose-gc). Prints
 * {"made", "peak"}: the bytes made, and the most the live tensors held at any iteration.
 */
"use strict";
const path = require("path");
const { Tensor, memoryStats } = require(path.join(__dirname, "..", "..", "dist"));

(async () => {
  const start = memoryStats().made;
  let peak = 0;
  for (let i = 0; i < 96; i++) {
    Tensor.empty([4 << 20]);
    await new Promise((r) => setImmediate(r));
    peak = Math.max(peak, memoryStats("cpu", { madeSince: start }).bytes);
  }
  console.log(JSON.stringify({ made: 96 * (16 << 20), peak }));
})();
