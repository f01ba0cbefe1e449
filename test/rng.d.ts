/** Uniform numbers in [0, 1) from a 32-bit seed (mulberry32). */
export function rng(seed: number): () => number;
