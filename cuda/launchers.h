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
// This build has no CUDA code: every launcher is a stub (cpp/core/cuda_stubs.cpp)
// that returns this. A launcher added here needs its stub there too.
#define MOE_CUDA_ERR_NOT_BUILT (-3)

// Element types of the float data a launcher takes as void*; the values are
// moe::DType's (cpp/core/dtype.h).
#define MOE_CUDA_F32 0
#define MOE_CUDA_BF16 1
#define MOE_CUDA_F16 2

// Every launcher below compiles for sm_80 and sm_90a; of the kernels behind
// them, all but the Hopper (wgmma) grouped GEMM also run on the CPU emulator
// (cuda/emu/). Which have run on which GPU: docs/device-runs.md.

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
// Blocks until the work before the event's last record has finished.
int moe_cuda_event_synchronize(void* event);
// Page-locked host memory that kernels can write (cudaHostAllocMapped),
// zeroed; device_ptr is its device address. Kept for the process's lifetime.
int moe_cuda_host_alloc_mapped(size_t bytes, void** host, void** device_ptr);
// "cudaErrorIllegalAddress: an illegal memory access was encountered" for a
// code returned by a launcher (or the MOE_CUDA_ERR_* meanings).
const char* moe_cuda_error_string(int code);

// ---- streams, memory, copies (cuda/memory.cu) ---------------------------------------
// A non-blocking stream on `device` (cudaStreamNonBlocking: no implicit
// ordering with the legacy default stream).
int moe_cuda_stream_create(int device, void** stream);
int moe_cuda_stream_synchronize(void* stream);
// Work enqueued on `waiter` after this call starts only once the work enqueued
// on `signaler` before it has finished (an event recorded and waited on). The
// current device must be the signaler's; the waiter may be on another device.
int moe_cuda_stream_wait_stream(void* waiter, void* signaler);
// Calls fn(arg) on a CUDA-owned host thread once the stream reaches this point;
// fn must not call CUDA (cudaLaunchHostFunc).
int moe_cuda_launch_host_func(void* stream, void (*fn)(void*), void* arg);

// The device's default memory pool, which cudaMallocAsync draws from: keep
// freed memory (release threshold UINT64_MAX) instead of returning it at every
// synchronisation.
int moe_cuda_pool_configure(int device);
// Bytes the pool holds from the driver, and bytes handed out of it.
int moe_cuda_pool_usage(int device, uint64_t* reserved, uint64_t* used);
// Returns the pool's unused memory to the driver (after synchronising the device).
int moe_cuda_pool_trim(int device);
// Stream-ordered allocation and free (cudaMallocAsync / cudaFreeAsync): the
// memory is usable by work enqueued on `stream` after the call, and is
// released once the work enqueued before the free has finished. bytes == 0
// gives NULL.
int moe_cuda_malloc_async(void** ptr, size_t bytes, void* stream);
int moe_cuda_free_async(void* ptr, void* stream);
// Plain device memory for long-lived buffers (cudaMalloc, current device).
int moe_cuda_malloc(void** ptr, size_t bytes);
// Copies in any direction (cudaMemcpyDefault: the pointers say where they
// live), enqueued on `stream`. A pageable host source or destination may make
// the call synchronous; callers keep host memory alive until the stream gets
// there (moe_cuda_launch_host_func).
int moe_cuda_memcpy_async(void* dst, const void* src, size_t bytes, void* stream);
// Device to device across devices (cudaMemcpyPeerAsync), on `stream`.
int moe_cuda_memcpy_peer_async(void* dst, int dst_device, const void* src, int src_device, size_t bytes, void* stream);
int moe_cuda_memset_async(void* ptr, int value, size_t bytes, void* stream);
// Events with timing (for measuring kernels); elapsed waits for `end`.
int moe_cuda_timing_event_create(void** event);
int moe_cuda_event_elapsed_ms(void* start, void* end, float* ms);

// ---- errors found by kernels (cuda/checks.cu) ----------------------------------------
// A device status word: a tag (0 = nothing found) and a detail (the smallest
// bad element index, or a count). The first check in stream order that finds
// something sets the tag; later checks with another tag leave it alone. The
// host reads it when it synchronises, names the op that owns the tag, and
// resets it.
size_t moe_cuda_status_bytes(void);
int moe_cuda_status_reset(void* status, void* stream);
// Enqueues the read on `stream` and waits for it.
int moe_cuda_status_read(const void* status, uint32_t* tag, int64_t* detail, void* stream);
// Tags `status` with the smallest index of a NaN or infinity among n values
// (dtype MOE_CUDA_F32 / BF16 / F16).
int moe_cuda_check_finite(const void* data, int dtype, int64_t n, void* status, uint32_t tag, void* stream);
// Tags `status` with the smallest index i where data[i] is outside [lo, hi).
int moe_cuda_check_range_i32(const int32_t* data, int64_t n, int32_t lo, int32_t hi, void* status, uint32_t tag,
                             void* stream);
// Tags `status` with *value when *value > 0 (a count a kernel produced).
int moe_cuda_flag_if_positive(const int32_t* value, void* status, uint32_t tag, void* stream);

// ---- gate (docs/math.md#gate; cuda/gate.cu) ---------------------------------------------
// logits float32 [T, E] = x [T, D] (x_dtype) · wg float32 [D, E], float32 sums.
int moe_cuda_gate_forward(const void* x, int x_dtype, const float* wg, int64_t tokens, int64_t d_model, int64_t experts,
                          float* logits, void* stream);
// dx [T, D] (x_dtype) = d_logits · wgᵀ and dwg float32 [D, E] = xᵀ · d_logits;
// either output may be NULL to skip it. Each output element is summed by one
// thread in a fixed order (no atomics, no split-K).
int moe_cuda_gate_backward(const void* x, int x_dtype, const float* wg, const float* d_logits, int64_t tokens,
                           int64_t d_model, int64_t experts, void* dx, float* dwg, void* stream);

// ---- route (docs/math.md#route) -------------------------------------------
// score_function: 0 softmax, 1 sigmoid.

// Device workspace, in bytes, that moe_cuda_route_forward needs for
// num_tokens x num_experts logits (per-block partial sums of the loss
// statistics and counts, reduced in a fixed order so the result is bitwise
// reproducible).
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
//   tokens_per_expert int32 [E]                number of (t, j) choosing e
//   prob_sum          float32 [E]              sum over t of p[t, e] (p = s, or s / sum_e s for sigmoid)
//   lse_sq_sum        float32 [1]              sum over t of logsumexp(logits[t])^2
//   losses            float32 [2] or NULL      aux = E * sum_e (count_e / (T k)) * (prob_sum_e / T)
//                                              and z = lse_sq_sum / T, without coefficients (0 when T = 0)
//   nonfinite_tokens  int32 [1] or NULL        number of tokens with a NaN or infinite logit (zeroed here)
//   workspace         at least moe_cuda_route_workspace_bytes(T, E) bytes of device memory
int moe_cuda_route_forward(const float* logits, const float* expert_bias, int64_t num_tokens, int num_experts,
                           int top_k, int score_function, int renormalize, int num_groups, int topk_groups,
                           int32_t* indices, float* weights, float* scores, int32_t* tokens_per_expert, float* prob_sum,
                           float* lse_sq_sum, float* losses, int32_t* nonfinite_tokens, void* workspace,
                           size_t workspace_bytes, void* stream);

// Backward routing: d_logits float32 [T, E] (overwritten) from
//   d_weights         float32 [T, k] or NULL   gradient of the weights
//   indices           int32 [T, k]             as the forward returned them
//   scores            float32 [T, E]           as the forward returned them
//   logits            float32 [T, E]           required when z_loss_grad != 0
//   tokens_per_expert int32 [E]                required when aux_loss_grad != 0
//   aux_loss_grad, z_loss_grad                 d loss / d aux and d loss / d z (the coefficient
//                                              times the upstream gradient); 0 skips that term
int moe_cuda_route_backward(const float* d_weights, const int32_t* indices, const float* scores, const float* logits,
                            const int32_t* tokens_per_expert, int64_t num_tokens, int num_experts, int top_k,
                            int score_function, int renormalize, float aux_loss_grad, float z_loss_grad,
                            float* d_logits, void* stream);

// ---- grouped GEMM (docs/math.md#grouped-gemm; cuda/grouped_gemm_plan.h) ------------------------
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
#define MOE_CUDA_GG_BF16 0
#define MOE_CUDA_GG_F16 1
// flags
#define MOE_CUDA_GG_OUT_F32 0x1     // the output is float32 instead of the input dtype
#define MOE_CUDA_GG_FORCE_SM80 0x2  // use the mma.sync kernel even on sm_90
#define MOE_CUDA_GG_ACT_MASK 0x30   // forward only: activation applied after the bias
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

// Scores only: softmax or sigmoid of each row of logits float32 [T, E] into
// scores float32 [T, E], computed exactly as moe_cuda_route_forward computes
// them (the backward needs the forward's scores and is given only the logits).
int moe_cuda_route_scores(const float* logits, int64_t num_tokens, int num_experts, int score_function, float* scores,
                          void* stream);

// ---- permute (docs/math.md#permute; cuda/permute.cu) --------------
// A stable counting sort of the T·k (token, choice) pairs by expert, and the
// row moves, in two calls that enqueue everything (no host wait between them):
//   plan: per-warp expert histograms, their scan, rows per expert and their
//         offsets; rows_per_expert int32 [E] and summary int64 [3] =
//         { R, dropped pairs, bad indices } written on the device. With
//         status_copy, the plan kernel also copies the status word there as it
//         sees it (int64 tag, detail: every check of the work before it has
//         settled), and with summary_event that event is recorded right after
//         it, so the host can read R while the rows call's work runs.
//   rows: the stable order of the pairs; capacity (policy 0 "probs": per
//         expert, the C largest weights, ties to the lower flat index; policy
//         1 "position": the first C); pair_to_row int32 [T, k] (-1 when
//         dropped), row_to_pair (-1 for padding) and the rows (x's dtype; zero
//         padding rows), sized for max_rows = permute_max_rows(...)
//         (cuda/permute_plan.h) rows, of which the first R are the result.
// capacity < 0: dropless. Indices outside [0, E) are left out of every expert
// (and tagged on `status`), so nothing is written out of bounds.
int moe_cuda_permute_workspace_bytes(int64_t pairs, int num_experts, int drop_policy, int64_t capacity, size_t* bytes);
int moe_cuda_permute_plan(const int32_t* indices, const float* weights, int64_t pairs, int num_experts,
                          int64_t capacity, int drop_policy, int pad_to_capacity, int32_t* rows_per_expert,
                          int64_t* summary, void* status, uint32_t tag, void* workspace, size_t workspace_bytes,
                          int64_t* status_copy, void* summary_event, void* stream);
int moe_cuda_permute_rows(const void* x, int dtype, int64_t d_model, int top_k, const int32_t* indices,
                          const float* weights, int64_t pairs, int num_experts, int64_t capacity, int drop_policy,
                          int pad_to_capacity, const void* workspace, size_t workspace_bytes, int64_t max_rows,
                          int32_t* pair_to_row, int32_t* row_to_pair, void* out_rows, void* stream);

// ---- permute backward, unpermute and its backward (cuda/unpermute.cu) -----------------
// Row maps: pair_to_row int32 [T, k]; entries outside [-1, R) count as -1
// and, with `status`, are tagged there under `tag` (the smallest flat index).
// The row kernels make that check as they read the map, so it runs only when
// they launch: callers check with moe_cuda_check_range_i32 when D == 0 (and,
// for unpermute's backward, when R == 0).
// dx [T, D] (dtype) = Σ_j d_rows[pair_to_row[t, j]] over kept j, in j order, float32 sums.
int moe_cuda_permute_backward(const void* d_rows, int dtype, int64_t num_rows, int64_t d_model,
                              const int32_t* pair_to_row, int64_t tokens, int top_k, void* dx, void* status,
                              uint32_t tag, void* stream);
// y [T, D] (dtype) = Σ_j w[t, j] · rows[pair_to_row[t, j]] over kept j, in j order, float32 sums.
int moe_cuda_unpermute_forward(const void* rows, int dtype, int64_t num_rows, int64_t d_model,
                               const int32_t* pair_to_row, const float* weights, int64_t tokens, int top_k, void* y,
                               void* status, uint32_t tag, void* stream);
// d_rows [R, D] (rows_dtype): for each row, Σ over the pairs that read it (in
// flat order) of w · dy[t]; zero for rows no pair reads. d_weights float32 [T, k] = ⟨dy[t], rows[pair_to_row[t, j]]⟩
// (0 when dropped), one warp per pair with a fixed butterfly.
int moe_cuda_unpermute_backward_workspace_bytes(int64_t pairs, int64_t num_rows, size_t* bytes);
int moe_cuda_unpermute_backward(const void* dy, int dy_dtype, const void* rows, int rows_dtype, int64_t num_rows,
                                int64_t d_model, const int32_t* pair_to_row, const float* weights, int64_t tokens,
                                int top_k, void* d_rows, float* d_weights, void* workspace, size_t workspace_bytes,
                                void* status, uint32_t tag, void* stream);

// ---- activations (docs/math.md#activations; cuda/activation.cu) -------------------------------
// kind: 0 relu, 1 gelu (erf), 2 silu, 3 swiglu, 4 geglu (tanh form); the values
// of moe::ops::ActivationKind. x [rows, width]; gated kinds read the gate half
// (first width/2 columns), then the up half, and write h [rows, width/2].
int moe_cuda_activation_forward(const void* x, int dtype, int64_t rows, int64_t width, int kind, void* h, void* stream);
// dx [rows, width] (x_dtype) from dh (h's shape, dh_dtype) and x.
int moe_cuda_activation_backward(const void* dh, int dh_dtype, const void* x, int x_dtype, int64_t rows, int64_t width,
                                 int kind, void* dx, void* stream);

// ---- AdamW (cuda/adamw.cu) --------------------------------------------------------
// One step in place over n elements, per element in float32 (cpp/ops/adamw.h):
//   p = p·decay − step_size · m / (√v / bc2_sqrt + eps), after
//   m = b1·m + one_b1·g,  v = b2·v + one_b2·g².
int moe_cuda_adamw(void* param, int param_dtype, const void* grad, int grad_dtype, float* exp_avg, float* exp_avg_sq,
                   int64_t n, float decay, float step_size, float bc2_sqrt, float b1, float b2, float one_b1,
                   float one_b2, float eps, void* stream);

// ---- layer ops: elementwise, sum of squares, expert bias (cuda/elementwise.cu) ---------
// out (a_dtype) = a + b over n elements, float32 sum rounded once.
int moe_cuda_add(const void* a, int a_dtype, const void* b, int b_dtype, int64_t n, void* out, void* stream);
// In place: y = (alpha == 0 ? 0 : alpha·y) + beta·x in float32 (x NULL: no beta term).
int moe_cuda_axpby(void* y, int y_dtype, const void* x, int x_dtype, int64_t n, float alpha, float beta, void* stream);
// Σ v² in double, in two steps: partials (one per chunk of 2^14 elements, a
// fixed tree inside each) written to partials[0, count(n)), then one block
// summing `count` partials in index order (a fixed tree) into *out (float32).
int64_t moe_cuda_sum_squares_partials_count(int64_t n);
int moe_cuda_sum_squares_partials(const void* data, int dtype, int64_t n, double* partials, void* stream);
int moe_cuda_sum_squares_finish(const double* partials, int64_t count, float* out, void* stream);
// bias float32 [E] += rate · sign(mean(load) − load_e); load int32 or float32 [E].
// A negative or non-finite load tags `status` with its index and writes nothing.
int moe_cuda_expert_bias_update(float* bias, const void* load, int load_is_f32, int64_t num_experts, double rate,
                                void* status, uint32_t tag, void* stream);

// ---- counter-based random numbers (cuda/random.cu; cpp/ops/random.h's scheme) ---------
// uniform: 0 normal(a = mean, b = std), 1 uniform[a, b); slice_size 0: the whole tensor.
int moe_cuda_fill_random(void* data, int dtype, int64_t n, uint64_t seed, uint32_t key, int uniform, double a, double b,
                         int64_t slice_size, int64_t first_slice, void* stream);
// out = x ⊙ (1 − eps + 2·eps·uniform_i of slice `slice`).
int moe_cuda_jitter(const void* x, int dtype, int64_t n, double eps, uint64_t seed, uint32_t key, int64_t slice,
                    void* out, void* stream);

// ---- chunk transpose (cuda/chunks.cu) --------------------------------------------------
// x [rows, row_bytes] as A·B chunks of counts[a, b] rows (int32 [A, B] on the
// device) in a-major order -> out in b-major order. A negative count tags
// `status` with neg_tag (detail: its flat index), a sum other than rows with
// sum_tag (detail: the sum); nothing is copied then.
size_t moe_cuda_chunk_transpose_workspace_bytes(int64_t chunks);
int moe_cuda_chunk_transpose(const void* x, int64_t rows, size_t row_bytes, const int32_t* counts, int64_t a, int64_t b,
                             void* out, void* status, uint32_t neg_tag, uint32_t sum_tag, void* workspace,
                             size_t workspace_bytes, void* stream);

#ifdef __cplusplus
}
#endif
