/**
 * The keys of Megatron-Core / DeepSpeed shaped configs, in three tables:
 * READ (keys turned into MoELayerOptions), IGNORED (keys owned by something
 * else: reported, never applied) and UNSUPPORTED (keys that would change the
 * layer's math: accepted only at the value this layer computes with). Any
 * other key is unknown and refused (docs/config.md lists the tables).
 *
 * Sections: "top" (the config object itself), "moe" (its `moe` object) and
 * "parallelism" (its `parallelism` object). Inside `moe` a key may be written
 * with or without Megatron's "moe_" prefix; at the top level and in
 * `parallelism` too, unless the key is `exact` (the top level's
 * ffn_hidden_size is the dense FFN's width, its moe_ffn_hidden_size the
 * experts').
 */

export type Section = "top" | "moe" | "parallelism";

export interface ReadKey {
  /** The spellings read, Megatron-Core's first (the one suggested for typos). */
  readonly names: readonly string[];
  /** Where it is read, in order of precedence. */
  readonly sections: readonly Section[];
  /** Outside `moe`, only the names as written (no "moe_" prefix added or dropped). */
  readonly exact?: boolean;
}

const MOE: readonly Section[] = ["moe", "top"];
const PAR: readonly Section[] = ["parallelism", "moe", "top"];
const PAR_TOP: readonly Section[] = ["parallelism", "top"];

/** The keys read, by what they set. */
export const READ = {
  dModel: { names: ["hidden_size", "d_model"], sections: MOE },
  /** The experts' FFN width. */
  dFF: { names: ["moe_ffn_hidden_size", "moe_intermediate_size"], sections: MOE, exact: true },
  /** The dense FFN's width: the experts' when no expert width is given (Megatron-Core's default). */
  denseFF: { names: ["ffn_hidden_size", "intermediate_size"], sections: ["top"], exact: true },
  numExperts: { names: ["num_moe_experts", "num_experts", "num_local_experts"], sections: MOE },
  topK: { names: ["moe_router_topk", "router_topk", "top_k", "k", "num_experts_per_tok"], sections: MOE },
  epSize: { names: ["expert_model_parallel_size", "expert_parallel_size", "ep_size"], sections: PAR },
  etpSize: { names: ["expert_tensor_parallel_size", "moe_tp_size"], sections: PAR },
  tensorParallel: { names: ["tensor_model_parallel_size", "tensor_parallel_size"], sections: PAR_TOP },
  pipelineParallel: { names: ["pipeline_model_parallel_size", "pipeline_parallel_size"], sections: PAR_TOP },
  dataParallel: { names: ["data_parallel_size"], sections: PAR_TOP },
  capacityFactor: {
    names: ["moe_expert_capacity_factor", "capacity_factor", "expert_capacity_factor"],
    sections: MOE,
  },
  dropPolicy: { names: ["moe_token_drop_policy", "token_drop_policy"], sections: MOE },
  dropTokens: { names: ["drop_tokens"], sections: MOE },
  minCapacity: { names: ["min_capacity"], sections: MOE },
  evalCapacityFactor: { names: ["eval_capacity_factor"], sections: MOE },
  residual: { names: ["use_residual"], sections: MOE },
  padToCapacity: { names: ["moe_pad_expert_input_to_capacity", "pad_expert_input_to_capacity"], sections: MOE },
  auxLossCoef: {
    names: [
      "moe_aux_loss_coeff",
      "aux_loss_coeff",
      "load_balancing_loss_coef",
      "aux_loss_coef",
      "router_aux_loss_coef",
    ],
    sections: MOE,
  },
  loadBalancingType: { names: ["moe_router_load_balancing_type"], sections: MOE },
  zLossCoef: { names: ["moe_z_loss_coeff", "z_loss_coeff", "z_loss_coef", "router_z_loss_coef"], sections: MOE },
  scoreFunction: {
    names: ["moe_router_score_function", "router_score_function", "router", "score_function", "scoring_func"],
    sections: MOE,
  },
  renormalize: { names: ["router_topk_renormalize", "norm_topk_prob"], sections: MOE },
  numGroups: { names: ["moe_router_num_groups", "router_num_groups", "n_group"], sections: MOE },
  topkGroups: { names: ["moe_router_group_topk", "router_group_topk", "topk_group"], sections: MOE },
  expertBias: { names: ["moe_router_enable_expert_bias", "router_enable_expert_bias"], sections: MOE },
  expertBiasUpdateRate: { names: ["moe_router_bias_update_rate", "router_bias_update_rate"], sections: MOE },
  jitter: { names: ["moe_input_jitter_eps", "input_jitter_eps"], sections: MOE },
  noisyGatePolicy: { names: ["noisy_gate_policy"], sections: MOE },
  activation: { names: ["activation_func", "activation", "hidden_act"], sections: MOE },
  gatedLinearUnit: { names: ["gated_linear_unit"], sections: MOE },
  bias: { names: ["add_bias_linear"], sections: MOE },
  sharedExpertFF: {
    names: ["moe_shared_expert_intermediate_size", "shared_expert_intermediate_size"],
    sections: MOE,
  },
  bf16: { names: ["bf16"], sections: ["top"], exact: true },
  fp16: { names: ["fp16"], sections: ["top"], exact: true },
  dtype: { names: ["params_dtype", "dtype", "torch_dtype"], sections: MOE },
  seed: { names: ["seed"], sections: MOE },
  initStd: { names: ["init_method_std", "initializer_range"], sections: MOE },
  /** moe.enabled: true is reported as ignored, false refused (the config asks for no MoE layer). */
  enabled: { names: ["enabled"], sections: ["moe"] },
} satisfies Record<string, ReadKey>;

export type ReadOption = keyof typeof READ;

/** Keys inside the `bf16` / `fp16` objects (DeepSpeed's { enabled, ...loss scaling }). */
export const PRECISION_READ = ["enabled"] as const;

const TRAINING_LOOP = "the training loop's (batch sizes, gradient accumulation): forward takes the tokens it is given";
const LOGGING = "logging and monitoring: the layer reports through stats and timings";
const RECOMPUTE = "activation recomputation trades memory for time; the results are the same";
const IMPLEMENTATION =
  "an implementation choice of Megatron-Core; the result is the same (this layer runs grouped GEMMs and an all-to-all dispatch)";
const MODEL = "the rest of the model (attention, embeddings, norms, which layers are MoE), not this layer";
const OPTIMIZER = "the optimizer's or the learning-rate schedule's: build the optimizer with AdamW.fromConfig";
const LOSS_SCALING = "loss scaling is the training loop's (scale the loss, unscale the gradients)";

/** Keys owned by something else, with the reason; matched in the top level, `moe` and `parallelism`. */
export const IGNORED: Readonly<Record<string, string>> = {
  optimizer: OPTIMIZER,
  scheduler: OPTIMIZER,
  lr: OPTIMIZER,
  min_lr: OPTIMIZER,
  weight_decay: OPTIMIZER,
  adam_beta1: OPTIMIZER,
  adam_beta2: OPTIMIZER,
  adam_eps: OPTIMIZER,
  lr_decay_style: OPTIMIZER,
  lr_warmup_iters: OPTIMIZER,
  train_iters: OPTIMIZER,
  zero_optimization:
    "ZeRO partitions optimizer state and gradients across data-parallel ranks; the layer's math is the same without it",
  zero_allow_untested_optimizer: "ZeRO's",
  gradient_clipping: "the training loop's: call layer.clipGradNorm(maxNorm)",
  clip_grad: "the training loop's: call layer.clipGradNorm(maxNorm)",
  train_batch_size: TRAINING_LOOP,
  train_micro_batch_size_per_gpu: TRAINING_LOOP,
  gradient_accumulation_steps: TRAINING_LOOP,
  micro_batch_size: TRAINING_LOOP,
  global_batch_size: TRAINING_LOOP,
  steps_per_print: LOGGING,
  wall_clock_breakdown: LOGGING,
  tensorboard: LOGGING,
  wandb: LOGGING,
  csv_monitor: LOGGING,
  comms_logger: LOGGING,
  flops_profiler: LOGGING,
  log_interval: LOGGING,
  moe_per_layer_logging: LOGGING,
  activation_checkpointing: RECOMPUTE,
  recompute_granularity: RECOMPUTE,
  moe_layer_recompute: RECOMPUTE,
  moe_grouped_gemm: IMPLEMENTATION,
  moe_use_legacy_grouped_gemm: IMPLEMENTATION,
  moe_permute_fusion: IMPLEMENTATION,
  moe_router_fusion: IMPLEMENTATION,
  moe_token_dispatcher_type: IMPLEMENTATION,
  moe_shared_expert_overlap: IMPLEMENTATION,
  moe_enable_deepep: IMPLEMENTATION,
  virtual_pipeline_model_parallel_size: "pipeline scheduling; the layer's result is the same",
  num_layers: MODEL,
  num_hidden_layers: MODEL,
  num_attention_heads: MODEL,
  num_key_value_heads: MODEL,
  num_query_groups: MODEL,
  kv_channels: MODEL,
  head_dim: MODEL,
  seq_length: MODEL,
  max_position_embeddings: MODEL,
  vocab_size: MODEL,
  padded_vocab_size: MODEL,
  rope_theta: MODEL,
  rotary_base: MODEL,
  position_embedding_type: MODEL,
  normalization: MODEL,
  layernorm_epsilon: MODEL,
  rms_norm_eps: MODEL,
  tie_word_embeddings: MODEL,
  untie_embeddings_and_output_weights: MODEL,
  attention_dropout: MODEL,
  hidden_dropout: MODEL,
  attention_bias: MODEL,
  qk_layernorm: MODEL,
  model_type: MODEL,
  architectures: MODEL,
  transformers_version: MODEL,
  use_cache: MODEL,
  bos_token_id: MODEL,
  eos_token_id: MODEL,
  pad_token_id: MODEL,
  moe_layer_freq: MODEL,
  first_k_dense_replace: MODEL,
  decoder_sparse_step: MODEL,
  mlp_only_layers: MODEL,
};

/** Ignored keys inside the `bf16` / `fp16` objects. */
export const PRECISION_IGNORED: Readonly<Record<string, string>> = {
  loss_scale: LOSS_SCALING,
  initial_scale_power: LOSS_SCALING,
  loss_scale_window: LOSS_SCALING,
  hysteresis: LOSS_SCALING,
  consecutive_hysteresis: LOSS_SCALING,
  min_loss_scale: LOSS_SCALING,
};

export interface UnsupportedKey {
  /** The values that mean what this layer does (null: the framework's default). */
  readonly accepts: readonly unknown[];
  /** What the layer does instead. */
  readonly reason: string;
}

/** Keys that would change the layer's math: a value other than `accepts` is an ERR_MOE_VALUE. */
export const UNSUPPORTED: Readonly<Record<string, UnsupportedKey>> = {
  moe_router_pre_softmax: { accepts: [false, null], reason: "the router takes the top-k of the scores, then weighs" },
  moe_router_topk_scaling_factor: { accepts: [1, null], reason: "the routing weights are not scaled" },
  moe_router_dtype: { accepts: ["fp32", null], reason: "the router computes in float32" },
  moe_router_force_load_balancing: { accepts: [false, null], reason: "tokens are routed by their scores" },
  moe_extended_tp: { accepts: [false, null], reason: "experts are split over expert parallelism only" },
  context_parallel_size: { accepts: [1, null], reason: "context parallelism is not supported" },
  sequence_parallel: { accepts: [false, null], reason: "each rank gives the layer its own whole token rows" },
  fp8: { accepts: [false, null], reason: "the expert GEMMs run in float32, bfloat16 or float16" },
  amp: {
    accepts: [null, { enabled: false }],
    reason: "mixed precision is the expert weights' dtype (bf16 / fp16), not Apex AMP",
  },
  communication_data_type: { accepts: ["fp32", null], reason: "gradients are reduced in float32" },
};

/** Unsupported keys inside the `bf16` / `fp16` objects. */
export const PRECISION_UNSUPPORTED: Readonly<Record<string, UnsupportedKey>> = {
  auto_cast: { accepts: [false, null], reason: "the layer computes in its input's dtype; inputs are not cast" },
};

/** A name as compared where the "moe_" prefix is optional. */
export const bare = (name: string): string => (name.startsWith("moe_") ? name.slice(4) : name);

/** Every key name a config may hold, for suggestions. */
export function knownNames(): string[] {
  const read = Object.values(READ as Record<string, ReadKey>).flatMap((k) => k.names);
  return [...new Set([...read, ...Object.keys(IGNORED), ...Object.keys(UNSUPPORTED), "moe", "parallelism"])];
}

/** The top-level name each foreign spelling of a native option is read from, for the native path's suggestions. */
export const NATIVE_OF: Readonly<Record<string, string>> = {
  dModel: "dModel",
  dFF: "dFF",
  denseFF: "dFF",
  numExperts: "numExperts",
  topK: "topK",
  epSize: "epSize",
  etpSize: "etpSize",
  capacityFactor: "capacityFactor",
  dropPolicy: "dropPolicy",
  padToCapacity: "padToCapacity",
  auxLossCoef: "auxLossCoef",
  zLossCoef: "zLossCoef",
  scoreFunction: "scoreFunction",
  renormalize: "renormalize",
  numGroups: "numGroups",
  topkGroups: "topkGroups",
  expertBias: "expertBias",
  expertBiasUpdateRate: "expertBiasUpdateRate",
  jitter: "jitter",
  activation: "activation",
  bias: "bias",
  sharedExpertFF: "sharedExpertFF",
  bf16: "dtype",
  fp16: "dtype",
  dtype: "dtype",
  seed: "seed",
  initStd: "initStd",
};

/** The native option a foreign key name stands for, if any (e.g. "hidden_size" → "dModel"). */
export function nativeOptionOf(name: string): string | undefined {
  for (const [option, key] of Object.entries(READ as Record<string, ReadKey>)) {
    if (NATIVE_OF[option] && key.names.some((n) => n === name || bare(n) === bare(name))) return NATIVE_OF[option];
  }
  return undefined;
}
