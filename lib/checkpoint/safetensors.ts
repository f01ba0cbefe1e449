/**
 * The safetensors format (huggingface/safetensors, "format" in its README):
 * 8 bytes of little-endian u64 header length N, N bytes of UTF-8 JSON mapping
 * each tensor's name to { dtype, shape, data_offsets: [begin, end] } (offsets
 * relative to the byte buffer after the header, in order, with no gaps or
 * overlaps) plus an optional "__metadata__" of string values, then the raw
 * little-endian bytes. The header is padded with spaces to a multiple of 8.
 *
 * Files are written tensor by tensor (the header, then each tensor's bytes as
 * the writer reaches it) and read tensor by tensor (positioned reads), so
 * neither side holds a whole file in memory. Tensors of dtypes moe-ep has no
 * tensor type for (F64, F8_*, I8, U8, BOOL, ...) are skipped and reported
 * when reading, or refused with `{ dtypes: "strict" }`.
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
/** The format's other dtypes, which moe-ep skips, with their element sizes (to check their byte ranges). */
const OTHER_SIZE: Readonly<Record<string, number>> = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  F8_E8M0: 1,
  I16: 2,
  U16: 2,
  U32: 4,
  U64: 8,
  F64: 8,
  C64: 8,
};
/** The reference implementation refuses headers above 100 MB. */
const MAX_HEADER = 100_000_000;

export interface SafetensorsTensor {
  name: string;
  dtype: DType;
  shape: number[];
  /** Little-endian element bytes. */
  data: Uint8Array;
}

/** A tensor to write: its bytes, or a function that gives them when the writer reaches the tensor. */
export interface SafetensorsEntry {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array | (() => Uint8Array | Promise<Uint8Array>);
}

export interface SafetensorsInfo {
  dtype: DType;
  shape: number[];
  /** Absolute byte range of the data in the file. */
  begin: number;
  end: number;
}

/** A tensor of a file that was not read because moe-ep has no tensor type for its dtype. */
export interface SafetensorsSkipped {
  name: string;
  /** The file's dtype string, e.g. "F8_E4M3". */
  dtype: string;
  shape: number[];
}

export interface SafetensorsReadOptions {
  /** "skip" (default): tensors of other dtypes are left out and listed in `skipped`; "strict": they are refused. */
  dtypes?: "skip" | "strict";
}

export function safetensorsDtype(dtype: DType): SafetensorsDType {
  return TO_FILE[dtype];
}

function bad(file: string, why: string): MoEError {
  return new MoEError(`Expected a safetensors file at ${file} but ${why}`, "ERR_MOE_VALUE");
}

function checkEntry(value: unknown, i: number, lazy: boolean): void {
  const t = value as Partial<SafetensorsEntry> | null;
  const ok =
    t !== null &&
    typeof t === "object" &&
    typeof t.name === "string" &&
    typeof t.dtype === "string" &&
    t.dtype in TO_FILE &&
    Array.isArray(t.shape) &&
    t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) &&
    (t.data instanceof Uint8Array || (lazy && typeof t.data === "function"));
  if (!ok) {
    const data = lazy ? "Uint8Array | () => Uint8Array" : "Uint8Array";
    throw invalid(`{ name: string, dtype, shape: number[], data: ${data} }`, `tensors[${i}]`, value);
  }
}

/** The padded header of tensors (in the order given) and their byte sizes. */
function headerOf(
  tensors: readonly SafetensorsEntry[],
  metadata: Record<string, string> | undefined,
  lazy: boolean,
): { json: Buffer; sizes: number[] } {
  if (!Array.isArray(tensors as unknown)) throw invalid("an array of { name, dtype, shape, data }", "tensors", tensors);
  (tensors as readonly unknown[]).forEach((t, i) => checkEntry(t, i, lazy));
  if (
    metadata !== undefined &&
    (metadata === null || typeof metadata !== "object" || Object.values(metadata).some((v) => typeof v !== "string"))
  )
    throw invalid("a map of strings", "metadata", metadata);
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  const sizes: number[] = [];
  let offset = 0;
  for (const t of tensors) {
    const dt = TO_FILE[t.dtype];
    const bytes = t.shape.reduce((a, b) => a * b, 1) * SIZE[dt];
    if (t.data instanceof Uint8Array) checkSize(t, bytes, t.data.byteLength);
    if (Object.prototype.hasOwnProperty.call(header, t.name))
      throw new MoEError(`safetensors: the name ${t.name} appears twice`, "ERR_MOE_VALUE");
    header[t.name] = { dtype: dt, shape: t.shape, data_offsets: [offset, offset + bytes] };
    sizes.push(bytes);
    offset += bytes;
  }
  let json = Buffer.from(JSON.stringify(header), "utf8");
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  return { json, sizes };
}

function checkSize(t: SafetensorsEntry, want: number, got: number): void {
  if (want !== got)
    throw new MoEError(
      `Expected ${want} bytes of data for ${t.name} (${t.dtype} [${t.shape.join(", ")}]) but received ${got}`,
      "ERR_MOE_SHAPE",
    );
}

function lengthPrefix(json: Buffer): Buffer {
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(json.length), 0);
  return head;
}

/** Serialises tensors (in the order given) and string metadata into one file's bytes (small files; see writeSafetensors). */
export function encodeSafetensors(tensors: readonly SafetensorsTensor[], metadata?: Record<string, string>): Buffer {
  const { json, sizes } = headerOf(tensors, metadata, false);
  const total = sizes.reduce((a, b) => a + b, 0);
  const out = Buffer.alloc(8 + json.length + total);
  lengthPrefix(json).copy(out, 0);
  json.copy(out, 8);
  let at = 8 + json.length;
  for (const t of tensors) {
    out.set(t.data, at);
    at += t.data.byteLength;
  }
  return out;
}

function writeAll(fd: number, data: Uint8Array): void {
  for (let at = 0; at < data.byteLength;) at += fs.writeSync(fd, data, at, data.byteLength - at);
}

/** Writes to file through a fsynced temporary and a rename, so that file is either absent or complete. */
async function atomically(file: string, write: (fd: number) => Promise<void> | void): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  try {
    const fd = fs.openSync(tmp, "w");
    try {
      await write(fd);
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

/**
 * Writes a safetensors file tensor by tensor: the header (from every entry's name, dtype and shape),
 * then each entry's bytes in order, asking a lazy entry for them only when the writer reaches it and
 * dropping them once written, so memory holds one tensor at a time, never the file. The file appears
 * whole or not at all (a temporary file, fsynced, then renamed). Resolves with the file's size.
 */
export async function writeSafetensors(
  file: string,
  tensors: readonly SafetensorsEntry[],
  metadata?: Record<string, string>,
): Promise<number> {
  if (typeof file !== "string" || file === "") throw invalid("a file path", "file", file);
  const { json, sizes } = headerOf(tensors, metadata, true);
  await atomically(file, async (fd) => {
    writeAll(fd, lengthPrefix(json));
    writeAll(fd, json);
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i];
      const data = typeof t.data === "function" ? await t.data() : t.data;
      if (!(data instanceof Uint8Array)) throw invalid("a Uint8Array", `the data of ${t.name}`, data);
      checkSize(t, sizes[i], data.byteLength);
      writeAll(fd, data);
    }
  });
  return 8 + json.length + sizes.reduce((a, b) => a + b, 0);
}

/** Writes a file so that it is either absent or complete (a temporary file, then a rename). */
export function writeFileAtomic(file: string, data: Buffer | string): void {
  const buf = typeof data === "string" ? Buffer.from(data, "utf8") : data;
  const tmp = `${file}.tmp-${process.pid}-${Date.now()}`;
  try {
    const fd = fs.openSync(tmp, "w");
    try {
      writeAll(fd, buf);
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

function checkReadOptions(options: unknown): "skip" | "strict" {
  if (options === null || typeof options !== "object" || Array.isArray(options))
    throw invalid('an options object ({ dtypes: "skip" | "strict" })', "read options", options);
  const d = (options as SafetensorsReadOptions).dtypes;
  if (d !== undefined && d !== "skip" && d !== "strict") throw invalid('"skip" or "strict"', "dtypes", d);
  return d ?? "skip";
}

/** Fills into from the file at position, positioned reads until every byte is in (a short file is an error). */
function readAt(fd: number, file: string, into: Uint8Array, position: number): void {
  for (let at = 0; at < into.byteLength;) {
    const n = fs.readSync(fd, into, at, into.byteLength - at, position + at);
    if (n === 0) throw bad(file, `it ends before byte ${position + into.byteLength}`);
    at += n;
  }
}

/** A safetensors file's header: its tensors by name, its metadata, and the tensors of dtypes skipped. */
export interface SafetensorsHeader {
  tensors: Map<string, SafetensorsInfo>;
  metadata: Record<string, string>;
  skipped: SafetensorsSkipped[];
}

function parseHeader(fd: number, file: string, dtypes: "skip" | "strict"): SafetensorsHeader {
  const stat = fs.fstatSync(fd);
  if (!stat.isFile()) throw bad(file, "it is not a regular file");
  const size = stat.size;
  if (size < 8) throw bad(file, `it holds only ${size} bytes`);
  const head = Buffer.alloc(8);
  readAt(fd, file, head, 0);
  const n = head.readBigUInt64LE(0);
  if (n > BigInt(Math.min(MAX_HEADER, size - 8))) throw bad(file, `its header length ${n} exceeds the file or 100 MB`);
  const json = Buffer.alloc(Number(n));
  readAt(fd, file, json, 8);
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
  const skipped: SafetensorsSkipped[] = [];
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
    if (typeof e?.dtype !== "string" || e.dtype === "") throw bad(file, `${name} has no dtype`);
    const known = e.dtype in FROM_FILE;
    if (!known && dtypes === "strict")
      throw new MoEError(
        `Expected tensors of the dtypes ${Object.keys(FROM_FILE).join(", ")} in ${file} but ${name} is ${e.dtype}`,
        "ERR_MOE_DTYPE",
      );
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
    const elem = known ? SIZE[e.dtype as SafetensorsDType] : OTHER_SIZE[e.dtype];
    const numel = (e.shape as number[]).reduce((a, b) => a * b, 1);
    // Sub-byte dtypes (F4, F6_*) have no whole element size: their ranges are checked for order only.
    if (elem !== undefined && off[1] - off[0] !== numel * elem)
      throw bad(file, `${name} spans ${off[1] - off[0]} bytes for its ${numel * elem}`);
    ranges.push([off[0], off[1], name]);
    if (known)
      tensors.set(name, {
        dtype: FROM_FILE[e.dtype as SafetensorsDType],
        shape: e.shape as number[],
        begin: start + off[0],
        end: start + off[1],
      });
    else skipped.push({ name, dtype: e.dtype, shape: e.shape as number[] });
  }
  ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let at = 0;
  for (const [b, e, name] of ranges) {
    if (b !== at) throw bad(file, `${name}'s data starts at ${b}, not at ${at} (gaps and overlaps are invalid)`);
    at = e;
  }
  if (start + at !== size) throw bad(file, `its data ends at ${start + at} but the file holds ${size} bytes`);
  return { tensors, metadata, skipped };
}

/**
 * Reads and checks a file's header: the tensors' dtypes, shapes and byte ranges, and the metadata.
 * Tensors of dtypes moe-ep does not read are listed in `skipped` (ERR_MOE_DTYPE with `dtypes: "strict"`).
 */
export function readSafetensorsHeader(file: string, options: SafetensorsReadOptions = {}): SafetensorsHeader {
  const dtypes = checkReadOptions(options);
  const fd = openForReading(file);
  try {
    return parseHeader(fd, file, dtypes);
  } finally {
    fs.closeSync(fd);
  }
}

/** An open safetensors file: its checked header, and its tensors read one at a time by positioned reads. */
export class SafetensorsFile {
  readonly tensors: Map<string, SafetensorsInfo>;
  readonly metadata: Record<string, string>;
  readonly skipped: SafetensorsSkipped[];
  private fd: number | undefined;

  private constructor(
    readonly file: string,
    fd: number,
    header: SafetensorsHeader,
  ) {
    this.fd = fd;
    this.tensors = header.tensors;
    this.metadata = header.metadata;
    this.skipped = header.skipped;
  }

  static open(file: string, options: SafetensorsReadOptions = {}): SafetensorsFile {
    const dtypes = checkReadOptions(options);
    const fd = openForReading(file);
    try {
      return new SafetensorsFile(file, fd, parseHeader(fd, file, dtypes));
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  /** The tensor's info; a name the file lacks (or holds in a skipped dtype) is ERR_MOE_VALUE. */
  info(name: string): SafetensorsInfo {
    const info = this.tensors.get(name);
    if (info) return info;
    const other = this.skipped.find((s) => s.name === name);
    if (other)
      throw new MoEError(
        `Expected the tensor ${name} in ${this.file} in a dtype moe-ep reads (${Object.keys(FROM_FILE).join(", ")}) but it is ${other.dtype}`,
        "ERR_MOE_DTYPE",
      );
    throw new MoEError(
      `Expected the tensor ${name} in ${this.file} but it holds ${[...this.tensors.keys()].slice(0, 8).join(", ")}…`,
      "ERR_MOE_VALUE",
    );
  }

  /** The tensor's bytes, read into `into` (of exactly its size) or a new array. */
  read(name: string, into?: Uint8Array): Uint8Array {
    if (this.fd === undefined) throw new MoEError(`Expected ${this.file} open but it was closed`, "ERR_MOE_DISPOSED");
    const info = this.info(name);
    const size = info.end - info.begin;
    const out = into ?? new Uint8Array(size);
    if (out.byteLength !== size)
      throw new MoEError(`Expected room for ${size} bytes of ${name} but received ${out.byteLength}`, "ERR_MOE_SHAPE");
    readAt(this.fd, this.file, out, info.begin);
    return out;
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/** The bytes of the named tensors of a file (all it can read when names is absent), one positioned read each. */
export function readSafetensors(
  file: string,
  names?: readonly string[],
  options: SafetensorsReadOptions = {},
): Map<string, SafetensorsTensor> {
  if (names !== undefined && (!Array.isArray(names) || names.some((n) => typeof n !== "string")))
    throw invalid("an array of tensor names", "names", names);
  const f = SafetensorsFile.open(file, options);
  const out = new Map<string, SafetensorsTensor>();
  try {
    for (const name of names ?? [...f.tensors.keys()]) {
      const info = f.info(name);
      out.set(name, { name, dtype: info.dtype, shape: info.shape, data: f.read(name) });
    }
  } finally {
    f.close();
  }
  return out;
}
