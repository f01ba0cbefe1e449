// Seeded test data: mulberry32 and what is drawn from it. Shared by the
// TypeScript suites (through test/util.ts), the plain-node scripts that tests
// run in child processes, and the device check (scripts/device-check/).
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

/** n values uniform in [lo, hi). */
function uniform(n, seed, lo = -1, hi = 1) {
  const r = rng(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * r();
  return out;
}

/** n values, normal with standard deviation std (Box-Muller). */
function normal(n, seed, std = 1) {
  const r = rng(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(r(), 1e-12);
    const v = r();
    const m = std * Math.sqrt(-2 * Math.log(u));
    out[i] = m * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = m * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** k distinct expert ids per token, drawn from `allowed` (skewed toward its start). */
function pickExperts(t, k, allowed, seed) {
  const r = rng(seed);
  const out = new Int32Array(t * k);
  for (let tt = 0; tt < t; tt++) {
    const pool = [...allowed];
    for (let j = 0; j < k; j++) {
      const at = Math.floor(pool.length * r() * r());
      out[tt * k + j] = pool.splice(at, 1)[0];
    }
  }
  return out;
}

/** [0, 1, ..., n - 1]. */
function range(n) {
  return Array.from({ length: n }, (_, i) => i);
}

module.exports = { rng, uniform, normal, pickExperts, range };
