/**
 * The NCCL backend of ProcessGroup: collectives on CUDA tensors through a
 * NCCL communicator (cpp/comm/nccl_group.h). initProcessGroup({ backend:
 * "nccl" }) builds it when ncclStatus().available; the ProcessGroup surface is
 * the Gloo one. Every tensor passed to its collectives lives on the group's
 * device (ERR_MOE_DEVICE otherwise); bfloat16 needs NCCL >= 2.10.3
 * (ERR_MOE_NCCL_UNAVAILABLE naming the loaded version otherwise).
 *
 * The unique id of each communicator goes through the store; allToAllV
 * exchanges every rank's counts with an NCCL all-to-all on the device and
 * reads them back (its one host synchronisation), then moves the rows as
 * grouped ncclSend / ncclRecv on the device's communication stream, ordered
 * after the compute stream by events. The watchdog aborts a communicator
 * whose operation outlives the timeout.
 *
 * test/nccl-group.test.ts and scripts/device-check.js exercise it where a GPU
 * and NCCL are present, test/emulated/nccl-procs.test.ts across processes on
 * the CUDA emulator's NCCL.
 */
import type { NativeNcclGroupOptions, NativeProcessGroupHandle, NativeStoreHandle } from "../addon";
import { loadNative } from "../native";

/** The NCCL group's handle: the same native class as the Gloo group's. */
export type NativeNcclGroupHandle = NativeProcessGroupHandle;

/** @internal Connects this rank's NCCL communicator; resolves once every rank has. */
export function createNcclGroup(
  store: NativeStoreHandle,
  options: NativeNcclGroupOptions,
): Promise<NativeNcclGroupHandle> {
  return loadNative().createNcclGroup(store, options);
}

/** The device an NCCL rank uses when none is named: cuda:$LOCAL_RANK, else cuda:0. */
export function defaultNcclDevice(): string {
  const local = process.env.LOCAL_RANK;
  return local !== undefined && /^\d+$/.test(local) ? `cuda:${local}` : "cuda:0";
}
