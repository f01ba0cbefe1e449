/**
 * The machine's limits, measured natively (cpp/bench/peak.cpp) on the CPU stream,
 * so JavaScript stays free while they run: every benchmark prints its figure
 * beside them and the ratio to them.
 */
import type { FmaPeakResult, MemcpyBandwidthResult, SgemmRateResult } from "../addon";
import { checkInteger, checkNumber, invalid } from "../errors";
import { loadNative } from "../native";
import { native } from "../ops/common";

export type { FmaPeakResult, MemcpyBandwidthResult, SgemmRateResult };

function opts(value: unknown, name: string): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== "object" || Array.isArray(value))
    throw invalid("an options object", name, value);
  return value as Record<string, unknown>;
}

function defaultThreads(): number {
  return loadNative().info().threads;
}

/** The cores' FMA peak: `threads` threads (default: the core's thread count) of FMA chains for `seconds` (default 0.5). */
export async function fmaPeak(options: { threads?: number; seconds?: number } = {}): Promise<FmaPeakResult> {
  const o = opts(options, "fmaPeak options");
  const threads = checkInteger("threads", o.threads ?? defaultThreads(), 1, 1024);
  const seconds = checkNumber("seconds", o.seconds ?? 0.5, (v) => v > 0 && v <= 60, "a number in (0, 60]");
  return native().fmaPeak({ threads, seconds });
}

/** Memory bandwidth of a `bytes` copy (default 64 MiB) on `threads` threads, read + write bytes counted. */
export async function memcpyBandwidth(
  options: { bytes?: number; threads?: number } = {},
): Promise<MemcpyBandwidthResult> {
  const o = opts(options, "memcpyBandwidth options");
  const bytes = checkInteger("bytes", o.bytes ?? 64 * 2 ** 20, 2 ** 20, 2 ** 36);
  const threads = checkInteger("threads", o.threads ?? defaultThreads(), 1, 1024);
  return native().memcpyBandwidth({ bytes, threads });
}

/** The rate of one large C[m, n] = A[m, k] · B[k, n] through the core's sgemm (OpenBLAS). */
export async function sgemmRate(
  options: { m?: number; n?: number; k?: number; iterations?: number } = {},
): Promise<SgemmRateResult> {
  const o = opts(options, "sgemmRate options");
  const m = checkInteger("m", o.m ?? 4096, 1, 65536);
  const n = checkInteger("n", o.n ?? 2048, 1, 65536);
  const k = checkInteger("k", o.k ?? 1024, 1, 65536);
  const iterations = checkInteger("iterations", o.iterations ?? 5, 1, 1000);
  return native().sgemmRate({ m, n, k, iterations });
}
