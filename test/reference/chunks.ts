/** float64 reference of chunkTranspose: rows gathered chunk by chunk, b-major. */
export function chunkTransposeRef(x: ArrayLike<number>, width: number, counts: number[][]): Float64Array {
  const A = counts.length;
  const B = A ? counts[0].length : 0;
  const start: number[][] = [];
  let off = 0;
  for (let a = 0; a < A; a++) {
    start.push([]);
    for (let b = 0; b < B; b++) {
      start[a].push(off);
      off += counts[a][b];
    }
  }
  const out: number[] = [];
  for (let b = 0; b < B; b++)
    for (let a = 0; a < A; a++)
      for (let r = 0; r < counts[a][b]; r++) for (let c = 0; c < width; c++) out.push(x[(start[a][b] + r) * width + c]);
  return Float64Array.from(out);
}
