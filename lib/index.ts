export { MoEError } from "./errors";
export type { MoEErrorCode } from "./errors";
export { Tensor, scope, memoryStats, emptyCache, synchronize, DTYPES } from "./tensor";
export { DeviceEvent } from "./device";
export type { DType, DeviceName, HostArray, TensorOptions, MemoryStats } from "./tensor";
export { info, formatInfo } from "./info";
export type { Info } from "./info";
export * as ops from "./ops";
export * from "./dist";
