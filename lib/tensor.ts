/**
 * Tensor: a typed handle over a native tensor. Made from typed arrays, read
 * back into them (bfloat16 and float16 read and written as float32, rounding
 * to nearest even), freed with dispose() or `using`.
 */
import "./polyfill";
import { AsyncLocalStorage } from "async_hooks";
import { MoEError, invalid, rangeText } from "./errors";
import { loadNative } from "./native";
import type { NativeMemoryStats, NativeTensorHandle } from "./addon";

export type DType = "float32" | "bfloat16" | "float16" | "int32" | "int64";
export const DTYPES: readonly DType[] = ["float32", "bfloat16", "float16", "int32", "int64"];
export type DeviceName = "cpu" | `cuda:${number}` | "cuda";

export type HostArray = Float32Array | Float64Array | Int32Array | BigInt64Array | Uint16Array | number[];
type ReadArray<D extends DType> = D extends "int32" ? Int32Array : D extends "int64" ? BigInt64Array : Float32Array;

export interface TensorOptions {
  dtype?: DType;
  device?: DeviceName;
}

const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;

/**
 * A number[] as a typed array for a tensor of `target`: any numbers for float dtypes (NaN and
 * ±Infinity included), integers in [-2^31, 2^31 - 1] for int32 and in [-(2^53 - 1), 2^53 - 1]
 * (exact in a number) for int64. Anything else is refused, never converted.
 */
function fromNumbers(data: unknown[], target: DType): { view: ArrayBufferView; dtype: DType } {
  const integer = target === "int32" || target === "int64";
  const [min, max] = target === "int32" ? [INT32_MIN, INT32_MAX] : [-Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER];
  for (let i = 0; i < data.length; i++) {
    const v = data[i];
    if (typeof v !== "number") throw invalid("a number", `data[${i}]`, v);
    if (integer && !(Number.isInteger(v) && v >= min && v <= max)) {
      const why = target === "int32" ? "int32" : "int64 from a number[]; beyond it, a BigInt64Array";
      throw invalid(`an integer in ${rangeText(min, max)} (${why})`, `data[${i}]`, v);
    }
  }
  if (target === "int32") return { view: Int32Array.from(data as number[]), dtype: "int32" };
  if (target === "int64") return { view: BigInt64Array.from(data as number[], BigInt), dtype: "int64" };
  return { view: Float32Array.from(data as number[]), dtype: "float32" };
}

/**
 * The element type a host array carries, as the native side names it. Integer arrays go to
 * integer tensors (int64 values outside int32 are refused for int32 tensors by the core) and
 * float arrays to float tensors; the core refuses the other pairings (ERR_MOE_DTYPE).
 */
function hostDtype(data: unknown, target: DType): { view: ArrayBufferView; dtype: DType } {
  if (Array.isArray(data)) return fromNumbers(data, target);
  if (data instanceof Float32Array) return { view: data, dtype: "float32" };
  if (data instanceof Float64Array) return { view: Float32Array.from(data), dtype: "float32" };
  if (data instanceof Int32Array) return { view: data, dtype: "int32" };
  if (data instanceof BigInt64Array) return { view: data, dtype: "int64" };
  if (data instanceof Uint16Array) {
    if (target !== "bfloat16" && target !== "float16") {
      throw invalid("a Uint16Array only for bfloat16 or float16 bits", "data", data, "ERR_MOE_DTYPE");
    }
    return { view: data, dtype: target };
  }
  throw invalid("a Float32Array, Float64Array, Int32Array, BigInt64Array, Uint16Array or number[]", "data", data);
}

/** A copy of a shape: an array of integers in [0, 2^53 - 1], else ERR_MOE_SHAPE. */
export function checkShape(shape: unknown): number[] {
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw invalid("an array of integers in [0, 2^53 - 1]", "shape", shape, "ERR_MOE_SHAPE");
  }
  return [...shape] as number[];
}

/** The options of a factory; an absent dtype or device is the default, null is refused. */
function factoryOptions(options: unknown, fallback: DType): { dtype: DType; device: DeviceName } {
  if (options === null || typeof options !== "object" || Array.isArray(options))
    throw invalid("an options object ({ dtype, device })", "options", options);
  const o = options as TensorOptions;
  return {
    dtype: o.dtype === undefined ? fallback : checkDtype(o.dtype),
    device: o.device === undefined ? "cpu" : checkDevice(o.device),
  };
}

/** "cpu", "cuda" or "cuda:N" (N a non-negative integer), else ERR_MOE_DEVICE. */
export function checkDevice(device: unknown): DeviceName {
  if (typeof device !== "string" || !/^(cpu|cuda|cuda:\d+)$/.test(device)) {
    throw invalid('"cpu", "cuda" or "cuda:N"', "device", device, "ERR_MOE_DEVICE");
  }
  return device as DeviceName;
}

function checkDtype(dtype: unknown): DType {
  if (typeof dtype !== "string" || !(DTYPES as readonly string[]).includes(dtype)) {
    throw invalid(`one of ${DTYPES.join(", ")}`, "dtype", dtype, "ERR_MOE_DTYPE");
  }
  return dtype as DType;
}

// A tensor dropped without dispose() is freed when its native handle is collected, which gives its
// host memory back to the system; V8 knows of that memory through the addon's host allocator
// (binding/tensor_handle.h), so forgotten tensors lead to collections.

// Tensors made inside scope() are disposed when it ends unless returned.
const scopes = new AsyncLocalStorage<Set<Tensor>>();

export class Tensor implements Disposable {
  /** @internal */
  readonly handle: NativeTensorHandle;

  /** @internal Wraps a native handle; use Tensor.from / zeros / empty. */
  constructor(handle: NativeTensorHandle) {
    this.handle = handle;
    scopes.getStore()?.add(this);
  }

  static from(data: HostArray, shape: readonly number[], options: TensorOptions = {}): Tensor {
    const dims = checkShape(shape);
    const o = factoryOptions(options, defaultDtype(data));
    const { view, dtype: src } = hostDtype(data, o.dtype);
    const N = loadNative().NativeTensor;
    return new Tensor(new N(o.dtype, dims, o.device, view, src));
  }

  static zeros(shape: readonly number[], options: TensorOptions = {}): Tensor {
    const dims = checkShape(shape);
    const o = factoryOptions(options, "float32");
    const N = loadNative().NativeTensor;
    return new Tensor(new N(o.dtype, dims, o.device, null, undefined, true));
  }

  static empty(shape: readonly number[], options: TensorOptions = {}): Tensor {
    const dims = checkShape(shape);
    const o = factoryOptions(options, "float32");
    const N = loadNative().NativeTensor;
    return new Tensor(new N(o.dtype, dims, o.device, null));
  }

  get dtype(): DType {
    return this.handle.dtype;
  }
  get shape(): number[] {
    return this.handle.shape;
  }
  get device(): string {
    return this.handle.device;
  }
  get disposed(): boolean {
    return this.handle.disposed;
  }
  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** A copy of the elements: Float32Array for float dtypes, Int32Array / BigInt64Array for integers. */
  toArray(): ReadArray<DType> {
    this.live("toArray()");
    const dt = this.dtype;
    if (dt === "int32") return new Int32Array(this.handle.read("int32"));
    if (dt === "int64") return new BigInt64Array(this.handle.read("int64"));
    return new Float32Array(this.handle.read("float32"));
  }

  /** The elements as float32 (bfloat16 / float16 widened exactly). */
  toFloat32(): Float32Array {
    this.live("toFloat32()");
    if (this.dtype === "int32") return Float32Array.from(this.toInt32());
    if (this.dtype === "int64") return Float32Array.from(this.toArray() as BigInt64Array, Number);
    return new Float32Array(this.handle.read("float32"));
  }

  /** The elements of an integer tensor as int32 (an int64 value int32 cannot hold is ERR_MOE_VALUE, not wrapped). */
  toInt32(): Int32Array {
    this.live("toInt32()");
    if (this.dtype !== "int32" && this.dtype !== "int64") {
      throw new MoEError(`Expected an int32 or int64 tensor for toInt32 but received ${this.dtype}`, "ERR_MOE_DTYPE");
    }
    return new Int32Array(this.handle.read("int32"));
  }

  /** The raw bits of a bfloat16 / float16 tensor. */
  toBits(): Uint16Array {
    this.live("toBits()");
    if (this.dtype !== "bfloat16" && this.dtype !== "float16") {
      throw new MoEError(
        `Expected a bfloat16 or float16 tensor for toBits but received ${this.dtype}`,
        "ERR_MOE_DTYPE",
      );
    }
    return new Uint16Array(this.handle.read(this.dtype));
  }

  /** A scalar's value (a tensor of one element). */
  item(): number {
    this.live("item()");
    if (this.numel !== 1)
      throw new MoEError(
        `Expected a tensor of one element for item() but received shape [${this.shape.join(", ")}]`,
        "ERR_MOE_SHAPE",
      );
    const v = this.toArray()[0];
    return typeof v === "bigint" ? Number(v) : v;
  }

  /**
   * This tensor on `device`. The copy runs in order with the ops queued before
   * it: host to GPU is enqueued on the device's stream; GPU to host waits for
   * the device (and rejects with the first error its kernels found, naming
   * the op). On the same device the result is a new handle on the same
   * storage (no copy; dispose each handle). A device CUDA cannot use rejects
   * with ERR_MOE_CUDA_UNAVAILABLE and the reason.
   */
  async to(device: DeviceName): Promise<Tensor> {
    this.live("to()");
    const target = checkDevice(device);
    return new Tensor(await loadNative().toDevice(this.handle, target));
  }

  /** A copy on the same device (a device-to-device copy on the GPU). */
  async clone(): Promise<Tensor> {
    this.live("clone()");
    return new Tensor(await loadNative().clone(this.handle));
  }

  private live(what: string): void {
    if (this.disposed) throw new MoEError(`Expected a live tensor for ${what} but it was disposed`, "ERR_MOE_DISPOSED");
  }

  dispose(): void {
    this.handle.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype} [${this.shape.join(", ")}] on ${this.device}${this.disposed ? ", disposed" : ""})`;
  }
}

function defaultDtype(data: unknown): DType {
  if (data instanceof Int32Array) return "int32";
  if (data instanceof BigInt64Array) return "int64";
  return "float32";
}

/** Collects every tensor in a result value (arrays and plain objects, one level deep or more). */
function collect(value: unknown, out: Set<Tensor>, depth = 0): void {
  if (depth > 4 || value === null || typeof value !== "object") return;
  if (value instanceof Tensor) {
    out.add(value);
    return;
  }
  for (const v of Array.isArray(value) ? value : Object.values(value)) collect(v, out, depth + 1);
}

/**
 * Runs fn and disposes every tensor created inside it (including inside the
 * ops it awaits) except those in its return value.
 */
export async function scope<T>(fn: () => Promise<T> | T): Promise<T> {
  if (typeof fn !== "function") throw invalid("a function", "fn", fn);
  const made = new Set<Tensor>();
  const outer = scopes.getStore();
  let result: T;
  try {
    result = await scopes.run(made, fn);
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
  const keep = new Set<Tensor>();
  collect(result, keep);
  for (const t of made) {
    if (keep.has(t)) outer?.add(t);
    else t.dispose();
  }
  return result;
}

export type MemoryStats = NativeMemoryStats;

export interface MemoryStatsOptions {
  /**
   * An earlier `made`: tensors and bytes then count only the live storages
   * allocated since, so that what a stretch of work left behind can be told
   * apart from older tensors that are freed meanwhile.
   */
  madeSince?: number;
}

/**
 * Live tensors and bytes on a device (storage shared by views counts once).
 * On "cuda:N", cachedBytes is what the device's stream-ordered pool keeps for reuse.
 */
export function memoryStats(device: DeviceName = "cpu", options: MemoryStatsOptions = {}): MemoryStats {
  const since = options.madeSince;
  if (since !== undefined && !(Number.isSafeInteger(since) && since >= 0)) {
    throw invalid("a non-negative integer (an earlier memoryStats().made)", "madeSince", since);
  }
  return loadNative().memoryStats(checkDevice(device), since);
}

/** Returns the host allocator's cached blocks to the system, and every used GPU's pooled memory to the driver. */
export function emptyCache(): void {
  loadNative().emptyCache();
}

/**
 * Resolves once every op queued so far has finished, on the CPU and on every
 * GPU used; rejects with the first error a GPU kernel found since the last
 * synchronisation (a NaN in the router's input, an index out of range),
 * naming the op that found it.
 */
export function synchronize(): Promise<void> {
  return loadNative().synchronize();
}
