/**
 * The safetensors format (huggingface/safetensors, "format" in its README):
 * 8 bytes of little-endian u64 header length N, N bytes of UTF-8 JSON mapping
 * each tensor's name to { dtype, shape, data_offsets: [begin, end] } (offsets
 * relative to the byte buffer after the header, in order, with no gaps or
 * overlaps) plus an optional "__metadata__" of string values, then the raw
 * little-endian bytes. The header is padded with spaces to a multiple of 8.
 */
import * as fs from "fs";
import { MoEError, invalid } from "../errors";
import type { DType } from "../tensor";

export type SafetensorsDType = "F32" | "BF16" | "F16" | "I32" | "I64";

const TO_FILE: Record<DType, SafetensorsDType> = {
  float32: "F32",
  bfloat16: "BF16",
  float16: "F16",
  int32: "I32",
  int64: "I64",
};
const FROM_FILE: Record<SafetensorsDType, DType> = {
  F32: "float32",
  BF16: "bfloat16",
  F16: "float16",
  I32: "int32",
  I64: "int64",
};
const SIZE: Record<SafetensorsDType, number> = { F32: 4, BF16: 2, F16: 2, I32: 4, I64: 8 };
/** The reference implementation refuses headers above 100 MB. */
const MAX_HEADER = 100_000_000;

export interface SafetensorsTensor {
  name: string;
  dtype: DType;
  shape: number[];
  /** Little-endian element bytes. */
  data: Uint8Array;
}

export interface SafetensorsInfo {
  dtype: DType;
  shape: number[];
  /** Absolute byte range of the data in the file. */
  begin: number;
  end: number;
}

export function safetensorsDtype(dtype: DType): SafetensorsDType {
  return TO_FILE[dtype];
}

function bad(file: string, why: string): MoEError {
  return new MoEError(`Expected a safetensors file at ${file} but ${why}`, "ERR_MOE_VALUE");
}

function checkEntry(value: unknown, i: number): void {
  const t = value as Partial<SafetensorsTensor> | null;
  const ok =
    t !== null &&
    typeof t === "object" &&
    typeof t.name === "string" &&
    typeof t.dtype === "string" &&
    t.dtype in TO_FILE &&
    Array.isArray(t.shape) &&
    t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) &&
    t.data instanceof Uint8Array;
  if (!ok) throw invalid("{ name: string, dtype, shape: number[], data: Uint8Array }", `tensors[${i}]`, value);
}

/** Serialises tensors (in the order given) and string metadata into one file's bytes. */
export function encodeSafetensors(tensors: readonly SafetensorsTensor[], metadata?: Record<string, string>): Buffer {
  if (!Array.isArray(tensors as unknown)) throw invalid("an array of { name, dtype, shape, data }", "tensors", tensors);
  (tensors as readonly unknown[]).forEach(checkEntry);
  if (
    metadata !== undefined &&
    (metadata === null || typeof metadata !== "object" || Object.values(metadata).some((v) => typeof v !== "string"))
  )
    throw invalid("a map of strings", "metadata", metadata);
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const t of tensors) {
    const dt = TO_FILE[t.dtype];
    const bytes = t.shape.reduce((a, b) => a * b, 1) * SIZE[dt];
    if (bytes !== t.data.byteLength)
      throw new MoEError(
        `Expected ${bytes} bytes of data for ${t.name} (${t.dtype} [${t.shape.join(", ")}]) but received ${t.data.byteLength}`,
        "ERR_MOE_SHAPE",
      );
    if (t.name in header) throw new MoEError(`safetensors: the name ${t.name} appears twice`, "ERR_MOE_VALUE");
    header[t.name] = { dtype: dt, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = Buffer.from(JSON.stringify(header), "utf8");
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const out = Buffer.alloc(8 + json.length + offset);
  out.writeBigUInt64LE(BigInt(json.length), 0);
  json.copy(out, 8);
  let at = 8 + json.length;
  for (const t of tensors) {
    out.set(t.data, at);
    at += t.data.byteLength;
  }
  return out;
}

/** Writes a file so that it is either absent or complete (a temporary file, then a rename). */
export function writeFileAtomic(file: string, data: Buffer | string): void {
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  try {
    const buf = typeof data === "string" ? Buffer.from(data, "utf8") : data;
    const fd = fs.openSync(tmp, "w");
    try {
      for (let at = 0; at < buf.length;) at += fs.writeSync(fd, buf, at, buf.length - at);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/** A file opened for reading; a path that cannot be opened is ERR_MOE_VALUE naming it, the fs error as cause. */
function openForReading(file: unknown): number {
  if (typeof file !== "string" || file === "") throw invalid("a file path", "file", file);
  try {
    return fs.openSync(file, "r");
  } catch (e) {
    const why = (e as NodeJS.ErrnoException).code === "ENOENT" ? "it does not exist" : "it cannot be opened";
    throw new MoEError(`Expected a safetensors file at ${file} but ${why}`, "ERR_MOE_VALUE", { cause: e });
  }
}

/** Reads and checks a file's header: the tensors' dtypes, shapes and byte ranges, and the metadata. */
export function readSafetensorsHeader(file: string): {
  tensors: Map<string, SafetensorsInfo>;
  metadata: Record<string, string>;
} {
  const fd = openForReading(file);
  try {
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) throw bad(file, "it is not a regular file");
    const size = stat.size;
    if (size < 8) throw bad(file, `it holds only ${size} bytes`);
    const head = Buffer.alloc(8);
    fs.readSync(fd, head, 0, 8, 0);
    const n = head.readBigUInt64LE(0);
    if (n > BigInt(Math.min(MAX_HEADER, size - 8)))
      throw bad(file, `its header length ${n} exceeds the file or 100 MB`);
    const json = Buffer.alloc(Number(n));
    fs.readSync(fd, json, 0, json.length, 8);
    let header: unknown;
    try {
      header = JSON.parse(json.toString("utf8"));
    } catch (e) {
      throw bad(file, `its header is not JSON (${(e as Error).message})`);
    }
    if (header === null || typeof header !== "object" || Array.isArray(header))
      throw bad(file, "its header is not a JSON object");
    const start = 8 + json.length;
    const tensors = new Map<string, SafetensorsInfo>();
    let metadata: Record<string, string> = {};
    const ranges: Array<[number, number, string]> = [];
    for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
      if (name === "__metadata__") {
        if (v === null || typeof v !== "object" || Object.values(v as object).some((x) => typeof x !== "string"))
          throw bad(file, "__metadata__ is not a map of strings");
        metadata = v as Record<string, string>;
        continue;
      }
      const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
      if (typeof e?.dtype !== "string" || !(e.dtype in FROM_FILE))
        throw bad(file, `${name} has the dtype ${String(e?.dtype)} (supported: ${Object.keys(FROM_FILE).join(", ")})`);
      const dt = e.dtype as SafetensorsDType;
      if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
        throw bad(file, `${name} has no valid shape`);
      const off = e.data_offsets;
      if (
        !Array.isArray(off) ||
        off.length !== 2 ||
        !off.every((d) => Number.isSafeInteger(d) && d >= 0) ||
        off[1] < off[0]
      ) {
        throw bad(file, `${name} has no valid data_offsets`);
      }
      const bytes = (e.shape as number[]).reduce((a, b) => a * b, 1) * SIZE[dt];
      if (off[1] - off[0] !== bytes) throw bad(file, `${name} spans ${off[1] - off[0]} bytes for its ${bytes}`);
      ranges.push([off[0], off[1], name]);
      tensors.set(name, {
        dtype: FROM_FILE[dt],
        shape: e.shape as number[],
        begin: start + off[0],
        end: start + off[1],
      });
    }
    ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let at = 0;
    for (const [b, e, name] of ranges) {
      if (b !== at) throw bad(file, `${name}'s data starts at ${b}, not at ${at} (gaps and overlaps are invalid)`);
      at = e;
    }
    if (start + at !== size) throw bad(file, `its data ends at ${start + at} but the file holds ${size} bytes`);
    return { tensors, metadata };
  } finally {
    fs.closeSync(fd);
  }
}

/** The bytes of the named tensors of a file (all of them when names is absent). */
export function readSafetensors(file: string, names?: readonly string[]): Map<string, SafetensorsTensor> {
  if (names !== undefined && (!Array.isArray(names) || names.some((n) => typeof n !== "string")))
    throw invalid("an array of tensor names", "names", names);
  const { tensors } = readSafetensorsHeader(file);
  const out = new Map<string, SafetensorsTensor>();
  const fd = openForReading(file);
  try {
    for (const name of names ?? [...tensors.keys()]) {
      const info = tensors.get(name);
      if (!info)
        throw new MoEError(
          `Expected the tensor ${name} in ${file} but it holds ${[...tensors.keys()].slice(0, 8).join(", ")}…`,
          "ERR_MOE_VALUE",
        );
      const data = new Uint8Array(info.end - info.begin);
      fs.readSync(fd, data, 0, data.length, info.begin);
      out.set(name, { name, dtype: info.dtype, shape: info.shape, data });
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}
