export { Store, openStore, STORE_LIMITS } from "./store";
export type { StoreOptions, NativeStoreHandle } from "./store";
export { rendezvousFromEnv, openStoreFromEnv } from "./env";
export type { Rendezvous } from "./env";
export { launch } from "../launch";
export { ncclStatus, requireNccl } from "./nccl";
export type { NcclStatus } from "./nccl";
export type { NativeNcclGroupHandle } from "./nccl-group";
export { ProcessGroup, initProcessGroup, BACKENDS, REDUCE_OPS } from "./process-group";
export type {
  Backend,
  ReduceOp,
  Counts,
  ProcessGroupOptions,
  AllToAllVOptions,
  AllToAllVResult,
  AllGatherVResult,
  NewGroupOptions,
  SplitOptions,
  ExpertParallelGroups,
  NativeProcessGroupHandle,
} from "./process-group";
export { expertParallelLayout } from "./layout";
export type { ExpertParallelLayout } from "./layout";
