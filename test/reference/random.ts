/**
 * float64 reference of the seeded generator (cpp/ops/random.h), in BigInt
 * arithmetic mod 2^64: SplitMix64's mix and counter, then uniform and normal
 * values formed in double.
 */
const M64 = (1n << 64n) - 1n;
const G = 0x9e3779b97f4a7c15n;

export function mix64(z: bigint): bigint {
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64;
  return z ^ (z >> 31n);
}

export function sliceState(seed: number, key: number, slice: number): bigint {
  return mix64(mix64((BigInt(seed) + G) & M64) ^ ((BigInt(key) << 32n) | BigInt(slice)));
}

export function bitsRef(state: bigint, i: number): bigint {
  return mix64((state + BigInt(i + 1) * G) & M64);
}

export function uniformRef(state: bigint, i: number): number {
  return Number(bitsRef(state, i) >> 40n) * 2 ** -24;
}

export function normalRef(state: bigint, i: number): number {
  const u1 = Number((bitsRef(state, 2 * i) >> 11n) + 1n) * 2 ** -53;
  const u2 = Number(bitsRef(state, 2 * i + 1) >> 11n) * 2 ** -53;
  return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}

/** Gumbel(0, 1): −ln(−ln u), u = ((bits(i) >> 11) + 1/2) · 2⁻⁵³. */
export function gumbelRef(state: bigint, i: number): number {
  const u = (Number(bitsRef(state, i) >> 11n) + 0.5) * 2 ** -53;
  return -Math.log(-Math.log(u));
}

export interface FillRef {
  seed: number;
  key: number;
  distribution: "normal" | "uniform" | "gumbel";
  a: number;
  b: number;
  sliceSize?: number;
  firstSlice?: number;
}

/** The n values fillRandom writes. */
export function fillRandomRef(n: number, o: FillRef): Float64Array {
  const size = o.sliceSize || n;
  const out = new Float64Array(n);
  let state = 0n;
  for (let i = 0; i < n; i++) {
    if (i % size === 0) state = sliceState(o.seed, o.key, (o.firstSlice ?? 0) + i / size);
    const j = i % size;
    out[i] =
      o.distribution === "normal"
        ? o.a + o.b * normalRef(state, j)
        : o.distribution === "gumbel"
          ? o.a + o.b * gumbelRef(state, j)
          : o.a + (o.b - o.a) * uniformRef(state, j);
  }
  return out;
}

/** The jitter factors u_i = 1 − ε + 2ε·uniform_i, as float32 holds them. */
export function jitterNoiseRef(n: number, eps: number, seed: number, key: number, slice: number): Float64Array {
  const state = sliceState(seed, key, slice);
  const f = new Float32Array(n);
  for (let i = 0; i < n; i++) f[i] = 1 - eps + 2 * eps * uniformRef(state, i);
  return Float64Array.from(f);
}

/** FNV-1a, 32 bits, of a name's UTF-8 bytes. */
export function fnv1a(name: string): number {
  let h = 0x811c9dc5;
  for (const c of new TextEncoder().encode(name)) {
    h ^= c;
    h = Number((BigInt(h) * 0x01000193n) & 0xffffffffn);
  }
  return h;
}
