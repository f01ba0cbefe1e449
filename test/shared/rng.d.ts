/** Uniform numbers in [0, 1) from a 32-bit seed (mulberry32). */
export function rng(seed: number): () => number;
/** n values uniform in [lo, hi) (default [-1, 1)). */
export function uniform(n: number, seed: number, lo?: number, hi?: number): Float64Array;
/** n values, normal with standard deviation std (default 1; Box-Muller). */
export function normal(n: number, seed: number, std?: number): Float64Array;
/** k distinct expert ids per token, drawn from `allowed` (skewed toward its start). */
export function pickExperts(t: number, k: number, allowed: readonly number[], seed: number): Int32Array;
/** [0, 1, ..., n - 1]. */
export function range(n: number): number[];
