/*
 * moe-ep's C ABI: the native core for other runtimes. Plain C, opaque handles,
 * status codes; no exception crosses it. Calls run synchronously on the
 * calling thread and may be made from any thread.
 *
 * Every call returns MOE_OK or an error status; moe_last_error() then holds a
 * message (per thread) that says what was expected and what was received.
 * Tensors returned through out-parameters belong to the caller: free them
 * with moe_tensor_free().
 */
#ifndef MOE_EP_H
#define MOE_EP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_EP_ABI_VERSION 1

typedef enum {
  MOE_OK = 0,
  MOE_ERR_SHAPE = 1,
  MOE_ERR_DTYPE = 2,
  MOE_ERR_DEVICE = 3,
  MOE_ERR_DISPOSED = 4,
  MOE_ERR_VALUE = 5,
  MOE_ERR_NONFINITE = 6,
  MOE_ERR_CUDA_UNAVAILABLE = 7,
  MOE_ERR_UNSUPPORTED = 8,
  MOE_ERR_INTERNAL = 9,
  MOE_ERR_TIMEOUT = 10,
  MOE_ERR_PEER_LOST = 11,
  MOE_ERR_COUNT_MISMATCH = 12,
  MOE_ERR_NCCL_UNAVAILABLE = 13
} moe_status;

typedef enum { MOE_FLOAT32 = 0, MOE_BFLOAT16 = 1, MOE_FLOAT16 = 2, MOE_INT32 = 3, MOE_INT64 = 4 } moe_dtype;

typedef struct moe_tensor_s* moe_tensor;

int moe_abi_version(void);
/* The message of this thread's last failed call ("" if none). Valid until the next call on this thread. */
const char* moe_last_error(void);
/* "ERR_MOE_SHAPE", ... */
const char* moe_status_name(moe_status status);

/* A CPU tensor of `dtype` and `shape`, filled from `data` (elements of `dtype`, row-major) or zeros when NULL. */
moe_status moe_tensor_create(moe_dtype dtype, int ndim, const int64_t* shape, const void* data, moe_tensor* out);
void moe_tensor_free(moe_tensor t);
moe_status moe_tensor_info(moe_tensor t, moe_dtype* dtype, int* ndim, int64_t* shape, int max_dims);
/* Copies the elements, converted to `as` (floats to floats, ints to ints), into dst of dst_bytes. */
moe_status moe_tensor_read(moe_tensor t, moe_dtype as, void* dst, size_t dst_bytes);

/* logits[T, E] (float32) = x[T, D] . wg[D, E] */
moe_status moe_gate(moe_tensor x, moe_tensor wg, moe_tensor* logits);

typedef enum { MOE_SCORE_SOFTMAX = 0, MOE_SCORE_SIGMOID = 1 } moe_score_function;

typedef struct {
  int top_k;
  moe_score_function score_function;
  int renormalize;        /* 0 or 1 */
  moe_tensor expert_bias; /* float32 [E], or NULL */
  int num_groups;         /* 0 = no group-limited routing */
  int topk_groups;
} moe_route_options;

/* Top-k routing of logits[T, E] (docs/math.md#route). Any out-parameter may be NULL. */
moe_status moe_route(moe_tensor logits, const moe_route_options* options, moe_tensor* indices, moe_tensor* weights,
                     moe_tensor* tokens_per_expert, float* aux_loss, float* z_loss);

/* y[R, N] = per expert e: x[rows of e] . w[e] (+ bias[e]); rows_per_expert int32 [L]; bias may be NULL. */
moe_status moe_grouped_gemm(moe_tensor x, moe_tensor w, moe_tensor rows_per_expert, moe_tensor bias, moe_tensor* y);

#ifdef __cplusplus
}
#endif

#endif /* MOE_EP_H */
