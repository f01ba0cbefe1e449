// Every CUDA entry point of moe-ep: plain C functions that take raw pointers,
// sizes and a stream, so cpp/ (and through it the C ABI) can call them without
// CUDA headers. Streams travel as void* (a cudaStream_t).
//
// Launchers return 0 on success, a cudaError_t value (> 0) when the CUDA runtime
// reports one, or one of the negative MOE_CUDA_ERR_* codes below for arguments
// they refuse before launching anything.
#pragma once
#include <stdint.h>
#include <stddef.h>

// An argument is out of its documented range (a null pointer that is required,
// k > numExperts, a workspace that is too small, ...).
#define MOE_CUDA_ERR_INVALID_ARGUMENT (-1)
// The arguments are valid but no compiled kernel covers them (too many experts).
#define MOE_CUDA_ERR_UNSUPPORTED (-2)

#ifdef __cplusplus
extern "C" {
#endif

// Number of usable devices (0 when none), the runtime and driver versions, and
// when 0 the reason in `reason`.
int moe_cuda_probe(int* runtime_version, int* driver_version, char* reason, size_t reason_len);

// ---- devices and events (the NCCL communicator's watchdog) ------------------------
// cudaSetDevice / cudaGetDevice for the calling thread.
int moe_cuda_set_device(int device);
int moe_cuda_get_device(int* device);
// An event without timing (cudaEventDisableTiming), recorded on `stream` after
// work was enqueued there, and polled without blocking: *done is 1 once all the
// work before the record has finished, 0 while it is still running.
int moe_cuda_event_create(void** event);
int moe_cuda_event_record(void* event, void* stream);
int moe_cuda_event_query(void* event, int* done);
int moe_cuda_event_destroy(void* event);
// "cudaErrorIllegalAddress: an illegal memory access was encountered" for a
// code returned by a launcher (or the MOE_CUDA_ERR_* meanings).
const char* moe_cuda_error_string(int code);

// ---- route (MATH.md: Router, Losses) -------------------------------------------
// score_function: 0 softmax, 1 sigmoid.

// Device workspace, in bytes, that moe_cuda_route_forward needs for
// num_tokens x num_experts logits (per-block partial sums of the loss
// statistics, reduced in a fixed order so the result is bitwise reproducible).
size_t moe_cuda_route_workspace_bytes(int64_t num_tokens, int num_experts);

// Forward routing, all on `stream`:
//   logits            float32 [T, E]           input
//   expert_bias       float32 [E] or NULL      added to the scores for selection only
//   num_groups, topk_groups                    group-limited selection when num_groups > 1
//                                              (E % num_groups == 0, 1 <= topk_groups <= num_groups,
//                                              top_k <= topk_groups * E / num_groups); 0 or 1: off
//   indices           int32 [T, k]             chosen experts, best first (ties: lower index)
//   weights           float32 [T, k]           scores at the chosen experts, renormalised if asked
//   scores            float32 [T, E]           softmax or sigmoid of the logits
//   tokens_per_expert int32 [E]                number of (t, j) choosing e (zeroed here first)
//   prob_sum          float32 [E]              sum over t of p[t, e] (p = s, or s / sum_e s for sigmoid)
//   lse_sq_sum        float32 [1]              sum over t of logsumexp(logits[t])^2
//   losses            float32 [2] or NULL      aux = E * sum_e (count_e / (T k)) * (prob_sum_e / T)
//                                              and z = lse_sq_sum / T, without coefficients (0 when T = 0)
//   nonfinite_tokens  int32 [1] or NULL        number of tokens with a NaN or infinite logit (zeroed here)
//   workspace         at least moe_cuda_route_workspace_bytes(T, E) bytes of device memory
int moe_cuda_route_forward(const float* logits, const float* expert_bias, int64_t num_tokens,
                           int num_experts, int top_k, int score_function, int renormalize,
                           int num_groups, int topk_groups, int32_t* indices, float* weights,
                           float* scores, int32_t* tokens_per_expert, float* prob_sum,
                           float* lse_sq_sum, float* losses, int32_t* nonfinite_tokens,
                           void* workspace, size_t workspace_bytes, void* stream);

// Backward routing: d_logits float32 [T, E] (overwritten) from
//   d_weights         float32 [T, k] or NULL   gradient of the weights
//   indices           int32 [T, k]             as the forward returned them
//   scores            float32 [T, E]           as the forward returned them
//   logits            float32 [T, E]           required when z_loss_grad != 0
//   tokens_per_expert int32 [E]                required when aux_loss_grad != 0
//   aux_loss_grad, z_loss_grad                 d loss / d aux and d loss / d z (the coefficient
//                                              times the upstream gradient); 0 skips that term
int moe_cuda_route_backward(const float* d_weights, const int32_t* indices, const float* scores,
                            const float* logits, const int32_t* tokens_per_expert,
                            int64_t num_tokens, int num_experts, int top_k, int score_function,
                            int renormalize, float aux_loss_grad, float z_loss_grad,
                            float* d_logits, void* stream);

// ---- grouped GEMM (MATH.md: Experts; cuda/grouped_gemm_plan.h) ------------------------
// L experts; rows_per_expert int32 [L] lives on the device (no host sync): the
// rows of expert e are [o_e, o_e + c_e) with o the exclusive prefix sum of the
// counts, and the counts must sum to at most total_rows (R, the capacity of
// the row-indexed buffers). Inputs are bf16 or f16 (dtype below), products
// accumulate in float32 on tensor cores. On a device of compute capability 9.0
// (and a build with sm_90a) a wgmma kernel fed by the TMA runs; elsewhere, or
// with MOE_CUDA_GG_FORCE_SM80, an mma.sync kernel (sm_80 and newer).
// K and N must be multiples of 8 (16-byte rows for cp.async and the TMA):
// other values return MOE_CUDA_ERR_UNSUPPORTED; pointers must be 16-byte
// aligned (INVALID_ARGUMENT otherwise).
// Invalid counts (a negative count, or a sum above R) are detected on the
// device: nothing is computed and, when `invalid_counts` (int32 [1], device)
// is given, it is set to 1 (0 otherwise).
// Status: compiled for sm_80 and sm_90a, not yet run on a GPU.
#define MOE_CUDA_GG_BF16 0
#define MOE_CUDA_GG_F16 1
// flags
#define MOE_CUDA_GG_OUT_F32 0x1       // the output is float32 instead of the input dtype
#define MOE_CUDA_GG_FORCE_SM80 0x2    // use the mma.sync kernel even on sm_90
#define MOE_CUDA_GG_ACT_MASK 0x30     // forward only: activation applied after the bias
#define MOE_CUDA_GG_ACT_NONE 0x00
#define MOE_CUDA_GG_ACT_RELU 0x10
#define MOE_CUDA_GG_ACT_SILU 0x20
#define MOE_CUDA_GG_ACT_GELU_TANH 0x30

// Device workspace, in bytes, of each grouped GEMM launcher (per-expert row
// offsets and tile starts).
size_t moe_cuda_grouped_gemm_workspace_bytes(int num_experts);

// *uses_sm90 = 1 when the launchers below would run the wgmma kernel on the
// current device with these flags, 0 when the mma.sync kernel.
int moe_cuda_grouped_gemm_uses_sm90(int flags, int* uses_sm90);

// Forward: y[o_e + i, :] = act(x[o_e + i, :] · w[e] + bias[e]) for i < c_e.
//   x     [R, K]  dtype            w [L, K, N] dtype           bias [L, N] dtype or NULL
//   y     [R, N]  dtype, or float32 with MOE_CUDA_GG_OUT_F32; rows past the sum of the counts untouched
int moe_cuda_grouped_gemm(const void* x, const void* w, const void* bias, const int32_t* rows_per_expert, void* y,
                          int64_t total_rows, int num_experts, int64_t k, int64_t n, int dtype, int flags,
                          void* workspace, size_t workspace_bytes, int32_t* invalid_counts, void* stream);

// Input gradient: dx[o_e + i, :] = dy[o_e + i, :] · w[e]ᵀ.
//   dy [R, N] dtype, w [L, K, N] dtype, dx [R, K] dtype (or float32 with MOE_CUDA_GG_OUT_F32)
int moe_cuda_grouped_gemm_dx(const void* dy, const void* w, const int32_t* rows_per_expert, void* dx,
                             int64_t total_rows, int num_experts, int64_t k, int64_t n, int dtype, int flags,
                             void* workspace, size_t workspace_bytes, int32_t* invalid_counts, void* stream);

// Weight gradient: dw[e] = x_eᵀ · dy_e, summed over the expert's own c_e rows;
// experts with no rows get dw[e] = 0 written.
//   x [R, K] dtype, dy [R, N] dtype, dw [L, K, N] dtype (or float32 with MOE_CUDA_GG_OUT_F32)
int moe_cuda_grouped_gemm_dw(const void* x, const void* dy, const int32_t* rows_per_expert, void* dw,
                             int64_t total_rows, int num_experts, int64_t k, int64_t n, int dtype, int flags,
                             void* workspace, size_t workspace_bytes, int32_t* invalid_counts, void* stream);

#ifdef __cplusplus
}
#endif
