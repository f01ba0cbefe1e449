/**
 * NCCL, the GPU communication library, as moe-ep finds it
 * (docs/architecture.md#process-groups). It is loaded at run time: the file
 * named by MOE_EP_NCCL_LIBRARY, else libnccl.so.2 from the loader's path. It is
 * usable when it loads, is NCCL >= 2.7.3 (send/recv), has every function moe-ep
 * calls, and a CUDA device answers; the first check that fails is the reason.
 * The answer is computed once per process.
 */
import { MoEError } from "../errors";
import { native } from "../ops/common";

export interface NcclStatus {
  /** Every check passed: NCCL communicators can be made in this process. */
  available: boolean;
  /** The library itself passed (loaded, new enough, complete), whether or not there is a device. */
  loaded: boolean;
  /** "2.18.1"; empty when the version could not be read. */
  version: string;
  /** The code ncclGetVersion returned (e.g. 21801), 0 when unknown. */
  versionCode: number;
  /** The file opened, or the name that was tried. */
  library: string;
  /**
   * Why NCCL is unavailable; empty when available. Starts with one of
   * "library not found", "library could not be loaded", "missing symbol",
   * "version unknown", "version too old", "no device".
   */
  reason: string;
  /** The library is NCCL >= 2.10.3, which has bfloat16. */
  supportsBf16: boolean;
  /** The library has ncclCommInitRankConfig (NCCL >= 2.14): calls never block, so hangs can be aborted. */
  nonBlocking: boolean;
}

interface NcclNative {
  ncclStatus(): NcclStatus;
}

/** What moe-ep found of NCCL; never throws for a missing library or device. */
export function ncclStatus(): NcclStatus {
  return native<NcclNative>().ncclStatus();
}

/** The status when NCCL is available; otherwise MoEError ERR_MOE_NCCL_UNAVAILABLE with the reason. */
export function requireNccl(): NcclStatus {
  const s = ncclStatus();
  if (!s.available) throw new MoEError(`NCCL is unavailable: ${s.reason}`, "ERR_MOE_NCCL_UNAVAILABLE");
  return s;
}
