/** Shared test helpers: a seeded generator, float64 arrays, and error measures. */
import { Tensor, memoryStats, info, synchronize } from "../lib";
import type { DeviceName } from "../lib";
import { normal, rng, uniform } from "./shared/rng";

export { normal, rng, uniform };

/** Rounds float64 values to float32 (what a float32 tensor holds). */
export function f32(a: ArrayLike<number>): Float64Array {
  return Float64Array.from(Float32Array.from(a as ArrayLike<number>));
}

/** Relative error ‖a − b‖∞ / max(‖b‖∞, floor): the measure tolerances of docs/math.md#numerics use. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1e-6): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let num = 0;
  let den = floor;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

/**
 * relErr over the positions where the reference is a number, after checking that a is NaN
 * exactly where the reference is: Infinity when the NaNs differ.
 */
export function relErrNaN(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1e-6): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  const keepA: number[] = [];
  const keepB: number[] = [];
  for (let i = 0; i < a.length; i++) {
    if (Number.isNaN(a[i]) !== Number.isNaN(b[i])) return Infinity;
    if (!Number.isNaN(b[i])) {
      keepA.push(a[i]);
      keepB.push(b[i]);
    }
  }
  return relErr(keepA, keepB, floor);
}

export const TOL = { float32: 1e-5, bfloat16: 2e-2, float16: 2e-2 } as const;

/** A float tensor from float64 data. */
export function tensor(
  data: ArrayLike<number>,
  shape: number[],
  dtype: "float32" | "bfloat16" | "float16" = "float32",
): Tensor {
  return Tensor.from(Float32Array.from(data as ArrayLike<number>), shape, { dtype });
}

export function intTensor(data: ArrayLike<number>, shape: number[]): Tensor {
  return Tensor.from(Int32Array.from(data as ArrayLike<number>), shape, { dtype: "int32" });
}

/** The tensor's values as float64. */
export function values(t: Tensor): Float64Array {
  const a = t.toArray();
  return a instanceof BigInt64Array ? Float64Array.from(a, Number) : Float64Array.from(a);
}

/** Bitwise equality of two tensors' contents. */
export function sameBits(a: Tensor, b: Tensor): boolean {
  const x = Buffer.from(a.handle.read(a.dtype));
  const y = Buffer.from(b.handle.read(b.dtype));
  return x.equals(y);
}

/**
 * memoryStats(device) once queued work has finished, the garbage collector has
 * run and the finalizers it triggered have freed their tensors (jest runs
 * under --expose-gc).
 */
export async function memoryAtRest(device: DeviceName = "cpu"): Promise<ReturnType<typeof memoryStats>> {
  await synchronize();
  const gc = (globalThis as { gc?: () => void }).gc;
  for (let i = 0; i < 3 && gc; i++) {
    gc();
    await new Promise((r) => setTimeout(r, 0));
  }
  await synchronize();
  return memoryStats(device);
}

/** Live tensors and bytes. */
export interface Live {
  tensors: number;
  bytes: number;
}

/** A leak check started by leakCheck(device). */
export interface LeakCheck {
  device: DeviceName;
  /** memoryStats(device).made when the check started. */
  made: number;
  /** The tensors made on the device since the start that are alive now. */
  now(): Live;
  /**
   * The tensors made since the start that are still alive once queued work
   * has finished and the garbage collector has freed what the test dropped:
   * { tensors: 0, bytes: 0 } unless something made since is still referenced
   * or was never freed. Finalizers run late under load, so it collects and
   * looks again until nothing is left or `patienceMs` has passed.
   */
  left(patienceMs?: number): Promise<Live>;
}

/**
 * Starts a leak check on a device once queued work has finished (tensors of
 * work in flight count as made before it). It counts only tensors made after
 * it started, so earlier tests' garbage being collected meanwhile cannot
 * change its answer.
 */
export async function leakCheck(device: DeviceName = "cpu"): Promise<LeakCheck> {
  await synchronize();
  const made = memoryStats(device).made;
  const now = (): Live => {
    const s = memoryStats(device, { madeSince: made });
    return { tensors: s.tensors, bytes: s.bytes };
  };
  const left = async (patienceMs = 5000): Promise<Live> => {
    const gc = (globalThis as { gc?: () => void }).gc;
    const deadline = Date.now() + patienceMs;
    for (;;) {
      await synchronize();
      const live = now();
      if ((live.tensors === 0 && live.bytes === 0) || Date.now() >= deadline) return live;
      gc?.();
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  return { device, made, now, left };
}

/** Rounds float64 values to bfloat16 (nearest even on the float32's top 16 bits): what a bfloat16 tensor holds. */
export function bf16(a: ArrayLike<number>): Float64Array {
  const f = Float32Array.from(a as ArrayLike<number>);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < u.length; i++) {
    if ((u[i] & 0x7f800000) === 0x7f800000) continue; // inf / NaN stay
    u[i] = (((u[i] + 0x7fff + ((u[i] >>> 16) & 1)) >>> 16) << 16) >>> 0;
  }
  return Float64Array.from(f);
}

/** Why the CUDA backend does not run here ("" when it does). */
export function cudaSkipReason(): string {
  const c = info().cuda;
  return c.available ? "" : c.reason || "no CUDA device";
}

/** The devices the op tests run on: "cpu", plus "cuda:0" when a GPU is usable. */
export function backends(): DeviceName[] {
  return cudaSkipReason() ? ["cpu"] : ["cpu", "cuda:0"];
}

/**
 * One test per backend, named "<name> [device]". Where CUDA is unavailable the
 * cuda:0 case still appears, skipped, with the reason in its name.
 */
export function eachBackend(name: string, fn: (device: DeviceName) => Promise<void>, timeout?: number): void {
  for (const device of backends()) test(`${name} [${device}]`, () => fn(device), timeout);
  const why = cudaSkipReason();
  if (why) test.skip(`${name} [cuda:0] (skipped: CUDA unavailable: ${why})`, () => undefined);
}

/** A CUDA-only test, skipped with the reason in its name where CUDA is unavailable. */
export function cudaTest(name: string, fn: (device: DeviceName) => Promise<void>, timeout?: number): void {
  const why = cudaSkipReason();
  if (why) test.skip(`${name} [cuda:0] (skipped: CUDA unavailable: ${why})`, () => undefined);
  else test(`${name} [cuda:0]`, () => fn("cuda:0"), timeout);
}

/** A tensor made on the CPU, moved to `device` with .to() (the host copy is then disposed); on "cpu", t itself. */
export async function onDevice(device: DeviceName, t: Tensor): Promise<Tensor> {
  if (t.device === device) return t;
  const moved = await t.to(device);
  t.dispose();
  return moved;
}
