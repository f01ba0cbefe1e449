/**
 * Rank t's slice of a whole expert tensor under expert tensor parallelism, cut on the host apart
 * from the library (lib/layer/expert-slices.ts): w1 [L, D, F1] and b1 [L, F1] by columns of each
 * half (gated kinds: gate, then up), w2 [L, F, D] by rows. Self-contained, so that tests can also
 * inline it into a child process's script with sliceHost.toString().
 */
export function sliceHost(
  full: ArrayLike<number>,
  kind: string,
  shape: number[],
  etp: number,
  t: number,
  gated: boolean,
): number[] {
  const out: number[] = [];
  if (kind === "w2") {
    const [L, F, D] = shape;
    const Fs = F / etp;
    for (let l = 0; l < L; l++)
      for (let f = t * Fs; f < (t + 1) * Fs; f++) for (let d = 0; d < D; d++) out.push(full[(l * F + f) * D + d]);
    return out;
  }
  const [outer, F1] = kind === "w1" ? [shape[0] * shape[1], shape[2]] : [shape[0], shape[1]];
  const halves = gated ? 2 : 1;
  const F = F1 / halves;
  const Fs = F / etp;
  for (let o = 0; o < outer; o++)
    for (let h = 0; h < halves; h++) for (let f = t * Fs; f < (t + 1) * Fs; f++) out.push(full[o * F1 + h * F + f]);
  return out;
}
