/**
 * A tensor's elements as little-endian bytes on the host, and back: what the
 * checkpoint and state-dict code moves between tensors and files. Bytes are
 * copied, never converted; conversions between dtypes are the ops' (copyInto).
 */
import { Tensor, type DType, type DeviceName } from "../tensor";

/** Bytes per element of each dtype. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = {
  float32: 4,
  bfloat16: 2,
  float16: 2,
  int32: 4,
  int64: 8,
};

export function isFloat(dtype: DType): boolean {
  return dtype !== "int32" && dtype !== "int64";
}

export function numelOf(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** A host copy of t's elements (waits for the work queued on t). */
export function tensorBytes(t: Tensor): Uint8Array {
  return new Uint8Array(t.handle.read(t.dtype));
}

/** A tensor of shape and dtype on device holding bytes (little-endian elements of dtype). */
export function tensorFromBytes(bytes: Uint8Array, shape: readonly number[], dtype: DType, device: string): Tensor {
  const size = DTYPE_BYTES[dtype];
  const b = bytes.byteOffset % size === 0 ? bytes : bytes.slice();
  const n = b.byteLength / size;
  const options = { dtype, device: device as DeviceName };
  switch (dtype) {
    case "float32":
      return Tensor.from(new Float32Array(b.buffer, b.byteOffset, n), shape, options);
    case "bfloat16":
    case "float16":
      return Tensor.from(new Uint16Array(b.buffer, b.byteOffset, n), shape, options);
    case "int32":
      return Tensor.from(new Int32Array(b.buffer, b.byteOffset, n), shape, options);
    case "int64":
      return Tensor.from(new BigInt64Array(b.buffer, b.byteOffset, n), shape, options);
  }
}
