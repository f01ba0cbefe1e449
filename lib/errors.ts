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

/**
 * The one error class of moe-ep; native errors arrive as instances of it. A failure of
 * another library (fs, Gloo) is wrapped in one, the original kept as `cause`.
 */
export class MoEError extends Error {
  readonly code: MoEErrorCode;
  constructor(message: string, code: MoEErrorCode, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "MoEError";
    this.code = code;
  }
}

/** A value as a message shows it: short, whatever it is (long strings and arrays are cut). */
function describe(value: unknown, nested = false): string {
  if (value === null) return "null";
  if (Array.isArray(value)) {
    if (nested) return `an array of ${value.length}`;
    const shown = value.slice(0, 8).map((v) => describe(v, true));
    if (value.length > 8) shown.push(`… ${value.length - 8} more`);
    return `[${shown.join(", ")}] of type array`;
  }
  if (typeof value === "object") {
    let name = "object";
    try {
      name = (value as object).constructor?.name ?? "object";
    } catch {
      // a revoked proxy or a throwing getter: the type is enough
    }
    return `${name} of type object`;
  }
  if (typeof value === "function") return `a function of type function`;
  const text = String(value);
  return `${text.length > 80 ? text.slice(0, 80) + "…" : text} of type ${typeof value}`;
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

/**
 * An option's value, or its default when it is absent (undefined). null is not absent: it is
 * passed on to the option's check, which refuses it, so that null never means "the default".
 */
export function orDefault<T>(value: T | undefined, fallback: T): T {
  return value === undefined ? fallback : value;
}

/** "[min, max]", with the largest safe integer written 2^53 - 1. */
export function rangeText(min: number, max: number): string {
  const bound = (v: number) =>
    v === Number.MAX_SAFE_INTEGER ? "2^53 - 1" : v === -Number.MAX_SAFE_INTEGER ? "-(2^53 - 1)" : String(v);
  return `[${bound(min)}, ${bound(max)}]`;
}

/** An integer in [min, max]; max defaults to the largest integer a number holds exactly, 2^53 - 1. */
export function checkInteger(name: string, value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < min || value > max) {
    throw invalid(`an integer in ${rangeText(min, max)}`, name, value);
  }
  return value;
}

/** An integer of any sign (ranges are checked where they are owned, usually by the core). */
export function checkSafeInteger(name: string, value: unknown): number {
  if (typeof value !== "number" || !Number.isSafeInteger(value)) {
    // An integer too large to hold exactly is told the limit it passed.
    const range = Number.isInteger(value) ? ` in ${rangeText(-Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER)}` : "";
    throw invalid(`an integer${range}`, name, value);
  }
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
