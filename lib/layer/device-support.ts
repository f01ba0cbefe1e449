/**
 * Which device and process group a layer's configuration can run on: the CUDA
 * layer's grouped GEMMs and collectives, and the CPU layer's process group.
 */
import { MoEError } from "../errors";
import type { ResolvedMoEConfig } from "./config";

/**
 * Refuses, at construction, a configuration the device cannot run (ERR_MOE_UNSUPPORTED naming it): on
 * CUDA the experts' grouped GEMM takes bfloat16 or float16 operands with K and N multiples of 8 and no
 * bias terms, and collectives go through NCCL; a CPU layer takes no NCCL group. Never a silent fallback.
 */
export function checkDeviceSupport(c: ResolvedMoEConfig, group: unknown): void {
  const backendOf = (g: unknown): string | undefined => {
    if (g === null || typeof g !== "object") return undefined;
    const b = (g as { backend?: unknown }).backend;
    if (typeof b === "string") return b;
    const w = (g as { world?: unknown }).world;
    return w !== null && typeof w === "object" && typeof (w as { backend?: unknown }).backend === "string"
      ? (w as { backend: string }).backend
      : undefined;
  };
  const backend = backendOf(group);
  const unsupported = (what: string) => new MoEError(`MoELayer on ${c.device}: ${what}`, "ERR_MOE_UNSUPPORTED");
  if (!c.device.startsWith("cuda")) {
    if (backend === "nccl")
      throw unsupported('expected a "gloo" process group for CPU tensors but received an "nccl" group');
    return;
  }
  if (c.dtype !== "bfloat16" && c.dtype !== "float16") {
    throw unsupported(
      `expected dtype "bfloat16" or "float16" (the CUDA grouped GEMM takes 16-bit operands) but received "${c.dtype}"`,
    );
  }
  if (c.bias)
    throw unsupported(
      "expected bias: false (the bias gradient of the CUDA grouped GEMM is not built) but received bias: true",
    );
  const widths: Array<[string, number]> = [
    ["dModel", c.dModel],
    ["dFF", c.dFF],
  ];
  if (c.sharedExpertFF > 0) widths.push(["sharedExpertFF", c.sharedExpertFF]);
  for (const [name, v] of widths) {
    if (v % 8 !== 0)
      throw unsupported(`expected ${name} to be a multiple of 8 (the CUDA grouped GEMM's K and N) but received ${v}`);
  }
  if (backend !== undefined && backend !== "nccl") {
    throw unsupported(
      `expected an "nccl" process group (or none, for one process) for CUDA tensors but received a "${backend}" group`,
    );
  }
}
