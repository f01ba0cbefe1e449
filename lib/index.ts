export { MoEError } from "./errors";
export type { MoEErrorCode } from "./errors";
export { Tensor, scope, memoryStats, emptyCache, synchronize, DTYPES } from "./tensor";
export { DeviceEvent } from "./device";
export type { DType, DeviceName, HostArray, TensorOptions, MemoryStats, MemoryStatsOptions } from "./tensor";
export { info, formatInfo } from "./info";
export type { Info } from "./info";
export type { AddonSource } from "./native";
export * as ops from "./ops";
// The ops' union types and option interfaces, also at the root (values stay under `ops`).
export { ACTIVATION_KINDS } from "./ops/activation";
export type { ActivationKind } from "./ops/activation";
export { SCORE_FUNCTIONS } from "./ops/route";
export type { ScoreFunction, RouteOptions, RouteResult, RouteBackwardOptions, ChoiceOptions } from "./ops/route";
export { DROP_POLICIES } from "./ops/permute";
export type { DropPolicy, PermuteOptions, Permuted, UnpermuteGrads } from "./ops/permute";
export type { Distribution, RandomStreamOptions, FillRandomOptions, JitterOptions } from "./ops/random";
export type {
  GroupedGemmOptions,
  GroupedGemmBackwardOptions,
  GroupedGemmGrads,
  GroupedGemmShape,
} from "./ops/grouped-gemm";
export type { AxpbyOptions } from "./ops/elementwise";
export type { AdamWStepOptions } from "./ops/adamw";
export type { GateGrads } from "./ops/gate";
export { MoELayer } from "./layer/moe-layer";
export type { MoEForwardResult, MoEForwardOptions, MoEBackwardOptions } from "./layer/moe-layer";
export type { ParameterEntry, BufferEntry } from "./layer/parameters";
export type { MoEStats } from "./layer/router";
export { STAGES } from "./layer/stage-clock";
export type { Stage, StageTimes } from "./layer/stage-clock";
export { resolveConfig, PARAM_DTYPES } from "./layer/config";
export { deepSpeedOptions, DEEPSPEED_DEFAULTS } from "./layer/deepspeed";
export type { DeepSpeedMoEKwargs, NoisyGatePolicy } from "./layer/deepspeed";
export type { MoELayerOptions, ResolvedMoEConfig, ParamDType } from "./layer/config";
export { parseForeignConfig } from "./layer/foreign-config";
export type {
  ForeignConfig,
  ForeignConfigContext,
  IgnoredConfigKey,
  ParsedForeignConfig,
} from "./layer/foreign-config";
export type { CollectiveGroup, SplittableGroup, LayerGroups, MoELayerGroup, Split } from "./layer/group";
export { AdamW } from "./optim/adamw";
export type { AdamWOptions, AdamWState, OptimizerParam } from "./optim/adamw";
export type { OptimizerConfig } from "./optim/adamw-config";
export { clipGradNorm } from "./optim/clip";
export type { ClipParam } from "./optim/clip";
export {
  saveCheckpoint,
  loadCheckpoint,
  readCheckpointIndex,
  shardFileName,
  expertTensorName,
  optimizerShardFileName,
  INDEX_FILE,
  OPTIMIZER_INDEX_FILE,
} from "./checkpoint/checkpoint";
export type {
  CheckpointOptions,
  CheckpointIndex,
  CheckpointLayer,
  CheckpointLoadReport,
} from "./checkpoint/checkpoint";
export { stateDict, loadStateDict } from "./layer/state-dict";
export { importHuggingFace, exportHuggingFace, saveHuggingFace } from "./checkpoint/huggingface";
export type {
  HuggingFaceFormat,
  HuggingFaceOptions,
  HuggingFaceImportOptions,
  HuggingFaceImportReport,
  HuggingFaceLayer,
  HuggingFaceSource,
} from "./checkpoint/huggingface";
export type { StateDictLayer, StateParam, ExpertGather, LoadReport, LoadStateDictOptions } from "./layer/state-dict";
export { checkpointFilesDir } from "./checkpoint/layout";
export {
  encodeSafetensors,
  writeSafetensors,
  readSafetensors,
  readSafetensorsHeader,
  SafetensorsFile,
} from "./checkpoint/safetensors";
export type {
  SafetensorsTensor,
  SafetensorsEntry,
  SafetensorsInfo,
  SafetensorsDType,
  SafetensorsSkipped,
  SafetensorsReadOptions,
  SafetensorsHeader,
} from "./checkpoint/safetensors";
export * from "./comm";
