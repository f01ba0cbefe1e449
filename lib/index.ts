export { MoEError } from "./errors";
export type { MoEErrorCode } from "./errors";
export { Tensor, scope, memoryStats, emptyCache, synchronize, DTYPES } from "./tensor";
export { DeviceEvent } from "./device";
export type { DType, DeviceName, HostArray, TensorOptions, MemoryStats, MemoryStatsOptions } from "./tensor";
export { info, formatInfo } from "./info";
export type { Info } from "./info";
export * as ops from "./ops";
export { MoELayer } from "./layer/moe-layer";
export type { MoEForwardResult, MoEForwardOptions, MoEBackwardOptions } from "./layer/moe-layer";
export type { ParameterEntry, BufferEntry } from "./layer/parameters";
export type { MoEStats } from "./layer/router";
export { STAGES } from "./layer/stage-clock";
export type { Stage, StageTimes } from "./layer/stage-clock";
export { resolveConfig, fromForeignConfig } from "./layer/config";
export { deepSpeedOptions, DEEPSPEED_DEFAULTS } from "./layer/deepspeed";
export type { DeepSpeedMoEKwargs, NoisyGatePolicy } from "./layer/deepspeed";
export type { MoELayerOptions, ResolvedMoEConfig, ParamDType } from "./layer/config";
export type { CollectiveGroup, SplittableGroup, LayerGroups } from "./layer/group";
export { AdamW } from "./optim/adamw";
export type { AdamWOptions, AdamWState, OptimizerParam } from "./optim/adamw";
export { clipGradNorm } from "./optim/clip";
export type { ClipParam } from "./optim/clip";
export {
  saveCheckpoint,
  loadCheckpoint,
  readCheckpointIndex,
  shardFileName,
  expertTensorName,
  INDEX_FILE,
} from "./checkpoint/checkpoint";
export type { CheckpointOptions, CheckpointIndex, CheckpointLayer } from "./checkpoint/checkpoint";
export { checkpointFilesDir } from "./checkpoint/layout";
export { encodeSafetensors, readSafetensors, readSafetensorsHeader } from "./checkpoint/safetensors";
export type { SafetensorsTensor, SafetensorsInfo, SafetensorsDType } from "./checkpoint/safetensors";
export * from "./comm";
