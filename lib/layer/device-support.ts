/**
 * Which device and process group a layer's configuration can run on: the CUDA
 * layer's grouped GEMMs (asked of the native core, which owns their limits)
 * and collectives, and the CPU layer's process group.
 */
import { MoEError } from "../errors";
import { isGated } from "../ops/activation";
import { groupedGemmCudaSupport } from "../ops/grouped-gemm";
import type { ResolvedMoEConfig } from "./config";

function backendOf(g: unknown): string | undefined {
  if (g === null || typeof g !== "object") return undefined;
  const b = (g as { backend?: unknown }).backend;
  if (typeof b === "string") return b;
  const w = (g as { world?: unknown }).world;
  return w !== null && typeof w === "object" && typeof (w as { backend?: unknown }).backend === "string"
    ? (w as { backend: string }).backend
    : undefined;
}

/** A width of a grouped GEMM operand, as the config field it comes from and its value. */
interface Width {
  field: string;
  value: number;
}

/** The grouped GEMMs a layer runs, x [R, K] · w [L, K, N] each. */
function layerGemms(c: ResolvedMoEConfig): Array<{ what: string; k: Width; n: Width }> {
  const dModel = { field: "dModel", value: c.dModel };
  const ffn = (what: string, field: string, value: number) => {
    const hidden = { field, value };
    // Gated activations take both halves from one GEMM: W1 is [D, 2F].
    const gateUp = isGated(c.activation) ? { field: `2·${field}`, value: 2 * value } : hidden;
    return [
      { what: `${what} W1`, k: dModel, n: gateUp },
      { what: `${what} W2`, k: hidden, n: dModel },
    ];
  };
  // With expert tensor parallelism each rank's experts are dFF / etpSize wide.
  const gemms =
    c.etpSize > 1 ? ffn("the experts'", "dFF/etpSize", c.dFF / c.etpSize) : ffn("the experts'", "dFF", c.dFF);
  if (c.sharedExpertFF > 0) gemms.push(...ffn("the shared experts'", "sharedExpertFF", c.sharedExpertFF));
  return gemms;
}

/**
 * Refuses, at construction, a configuration the device cannot run (ERR_MOE_UNSUPPORTED naming it): on
 * CUDA every grouped GEMM of the layer (its dtype, widths, and bias gradient when bias is on) must be
 * one the CUDA kernels take, and collectives go through NCCL; a CPU layer takes no NCCL group. Never a
 * silent fallback.
 */
export function checkDeviceSupport(c: ResolvedMoEConfig, group: unknown): void {
  const backend = backendOf(group);
  const unsupported = (what: string) => new MoEError(`MoELayer on ${c.device}: ${what}`, "ERR_MOE_UNSUPPORTED");
  if (!c.device.startsWith("cuda")) {
    if (backend === "nccl")
      throw unsupported('expected a "gloo" process group for CPU tensors but received an "nccl" group');
    return;
  }
  if (c.residual) throw unsupported("the residual mix (residual: true) has no CUDA kernel; run it on the CPU");
  if (c.dropPolicy === "choice" && c.capacityFactor !== undefined)
    throw unsupported('the "choice" drop policy has no CUDA kernel; run it on the CPU');
  if (c.secondExpertSampling)
    throw unsupported("the second-expert sampling (secondExpertSampling: true) has no CUDA kernel; run it on the CPU");
  if (c.rsample) throw unsupported("the Gumbel selection noise (rsample: true) has no CUDA kernel; run it on the CPU");
  if (c.renormalizeKept)
    throw unsupported("renormalising the kept weights (renormalizeKept: true) has no CUDA kernel; run it on the CPU");
  for (const g of layerGemms(c)) {
    const answer = groupedGemmCudaSupport({ dtype: c.dtype, k: g.k.value, n: g.n.value, needDbias: c.bias });
    if (!answer.supported) {
      throw unsupported(
        `the CUDA grouped GEMM cannot run ${g.what} (dtype "${c.dtype}", K = ${g.k.field} = ${g.k.value}, ` +
          `N = ${g.n.field} = ${g.n.value}, bias: ${c.bias}): ${answer.reason}`,
      );
    }
  }
  if (backend !== undefined && backend !== "nccl") {
    throw unsupported(
      `expected an "nccl" process group (or none, for one process) for CUDA tensors but received a "${backend}" group`,
    );
  }
}
