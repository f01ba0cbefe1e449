/** float64 reference of the expert bias update: b_e + rate · sign(mean load − load_e). */
export function expertBiasUpdateRef(bias: ArrayLike<number>, load: ArrayLike<number>, rate: number): Float64Array {
  let sum = 0;
  for (let i = 0; i < load.length; i++) sum += load[i];
  const mean = sum / load.length;
  return Float64Array.from(bias, (b, i) => b + rate * Math.sign(mean - load[i]));
}
