// mulberry32: a small seeded generator, good enough for test data. Shared by
// the TypeScript suites (through test/util.ts) and the plain-node scripts
// that tests run in child processes.
"use strict";

/** Uniform numbers in [0, 1) from a 32-bit seed. */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

module.exports = { rng };
