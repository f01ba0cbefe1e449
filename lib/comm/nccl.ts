/**
 * NCCL, the GPU communication library, as moe-ep finds it
 * (docs/architecture.md#process-groups). It is loaded at run time: the file
 * named by MOE_EP_NCCL_LIBRARY, else libnccl.so.2 from the loader's path. It is
 * usable when it loads, is NCCL >= 2.7.3 (send/recv), has every function moe-ep
 * calls, and a CUDA device answers; the first check that fails is the reason.
 * The answer is computed once per process.
 */
import type { NcclStatus } from "../addon";
import { MoEError } from "../errors";
import { native } from "../ops/common";

export type { NcclStatus };

/** What moe-ep found of NCCL; never throws for a missing library or device. */
export function ncclStatus(): NcclStatus {
  return native().ncclStatus();
}

/** The status when NCCL is available; otherwise MoEError ERR_MOE_NCCL_UNAVAILABLE with the reason. */
export function requireNccl(): NcclStatus {
  const s = ncclStatus();
  if (!s.available) throw new MoEError(`NCCL is unavailable: ${s.reason}`, "ERR_MOE_NCCL_UNAVAILABLE");
  return s;
}
