export { Store, openStore, STORE_LIMITS } from "./store";
export type { StoreOptions, NativeStoreHandle } from "./store";
export { rendezvousFromEnv, openStoreFromEnv } from "./env";
export type { Rendezvous } from "./env";
export { launch } from "../launch";
export { ncclStatus, requireNccl } from "./nccl";
export type { NcclStatus } from "./nccl";
