/** Stable codes of every error moe-ep raises. */
export type MoEErrorCode =
  | "ERR_MOE_SHAPE"
  | "ERR_MOE_DTYPE"
  | "ERR_MOE_DEVICE"
  | "ERR_MOE_DISPOSED"
  | "ERR_MOE_VALUE"
  | "ERR_MOE_NONFINITE"
  | "ERR_MOE_CUDA_UNAVAILABLE"
  | "ERR_MOE_UNSUPPORTED"
  | "ERR_MOE_INTERNAL"
  | "ERR_MOE_TIMEOUT"
  | "ERR_MOE_PEER_LOST"
  | "ERR_MOE_COUNT_MISMATCH"
  | "ERR_MOE_NCCL_UNAVAILABLE"
  | "ERR_MOE_LOAD";

/** The one error class of moe-ep; native errors arrive as instances of it. */
export class MoEError extends Error {
  readonly code: MoEErrorCode;
  constructor(message: string, code: MoEErrorCode) {
    super(message);
    this.name = "MoEError";
    this.code = code;
  }
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return `[${value.map(describe).join(", ")}] of type array`;
  if (typeof value === "object") return `${(value as object).constructor?.name ?? "object"} of type object`;
  return `${String(value)} of type ${typeof value}`;
}

/** "Expected X for Y but received Z of type T". */
export function invalid(
  expected: string,
  name: string,
  value: unknown,
  code: MoEErrorCode = "ERR_MOE_VALUE",
): MoEError {
  return new MoEError(`Expected ${expected} for ${name} but received ${describe(value)}`, code);
}

export function checkInteger(name: string, value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `an integer >= ${min}` : `an integer in [${min}, ${max}]`;
    throw invalid(range, name, value);
  }
  return value;
}

/** An integer of any sign (ranges are checked where they are owned, usually by the core). */
export function checkSafeInteger(name: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value)) throw invalid("an integer", name, value);
  return value;
}

export function checkNumber(name: string, value: unknown, ok: (v: number) => boolean, expected: string): number {
  if (typeof value !== "number" || !Number.isFinite(value) || !ok(value)) throw invalid(expected, name, value);
  return value;
}

export function checkOneOf<T extends string>(name: string, value: unknown, allowed: readonly T[]): T {
  if (typeof value !== "string" || !(allowed as readonly string[]).includes(value)) {
    throw invalid(`one of ${allowed.map((a) => `"${a}"`).join(", ")}`, name, value);
  }
  return value as T;
}
