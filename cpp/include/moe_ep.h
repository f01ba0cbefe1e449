/*
 * moe-ep's C ABI: the native core for other runtimes. Plain C, opaque handles,
 * status codes; no exception crosses it.
 *
 * Rules that hold for every function below unless its comment says otherwise:
 *
 * - Status: every call returns MOE_OK or an error status; moe_last_error()
 *   then holds a message (per thread) that says what was expected and what
 *   was received.
 * - Ownership: tensors returned through out-parameters belong to the caller,
 *   who frees each with moe_tensor_free(). Input tensors are borrowed for the
 *   call only (a result never aliases an input's handle, though it may share
 *   its storage, e.g. moe_layer_forward keeps x in `saved`).
 * - NULL on failure: on any error every tensor out-parameter is set to NULL
 *   and every scalar out-parameter is left as it was. Any out-parameter may
 *   be NULL when the caller does not want that output.
 * - Threads: calls may be made from any thread, and run on the calling
 *   thread. Calls that only read their inputs may share them across threads;
 *   a call that writes a tensor in place (marked "in place") must not run
 *   while another call reads or writes that tensor.
 * - Devices: tensors live on "cpu" or "cuda:N" (moe_tensor_create_on). An op
 *   runs on the device of its inputs, which must all be on one device; work on
 *   a CUDA device is queued on that device's stream in call order, and
 *   moe_tensor_read waits for it; a check that only a kernel can make (a
 *   non-finite value, an index out of range) is reported by the next call
 *   that waits. Without a CUDA build or GPU, a CUDA device gives
 *   MOE_ERR_CUDA_UNAVAILABLE.
 *
 * The math of each op is docs/math.md's (section named per function).
 */
#ifndef MOE_EP_H
#define MOE_EP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_EP_ABI_VERSION 2

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

/* ---- tensors ---------------------------------------------------------------------------- */

/* A CPU tensor of `dtype` and `shape`, filled from `data` (elements of `dtype`, row-major) or zeros when NULL. */
moe_status moe_tensor_create(moe_dtype dtype, int ndim, const int64_t* shape, const void* data, moe_tensor* out);
/* The same on `device` ("cpu", "cuda" or "cuda:N"; NULL means "cpu"). */
moe_status moe_tensor_create_on(moe_dtype dtype, int ndim, const int64_t* shape, const void* data, const char* device,
                                moe_tensor* out);
/* Frees the handle (NULL is ignored). The storage lives on while a result that shares it does. */
void moe_tensor_free(moe_tensor t);
/* dtype, number of dimensions and up to max_dims sizes (MOE_ERR_SHAPE when the tensor has more). */
moe_status moe_tensor_info(moe_tensor t, moe_dtype* dtype, int* ndim, int64_t* shape, int max_dims);
/* The device's name ("cpu", "cuda:0", ...) into buf of buf_size bytes, NUL-terminated. */
moe_status moe_tensor_device(moe_tensor t, char* buf, size_t buf_size);
/* Copies the elements, converted to `as` (floats to floats, ints to ints), into dst of dst_bytes;
   waits for queued work on the tensor's device. */
moe_status moe_tensor_read(moe_tensor t, moe_dtype as, void* dst, size_t dst_bytes);
/* A copy of t on `device`. */
moe_status moe_tensor_to_device(moe_tensor t, const char* device, moe_tensor* out);
/* A copy of t on its own device. */
moe_status moe_tensor_clone(moe_tensor t, moe_tensor* out);
/* CUDA devices usable by this build (0 without CUDA or a GPU; never an error). */
int moe_cuda_device_count(void);

/* ---- router ------------------------------------------------------------------------------ */

/* logits[T, E] (float32) = x[T, D] . wg[D, E] (docs/math.md#gate). */
moe_status moe_gate(moe_tensor x, moe_tensor wg, moe_tensor* logits);
/* dx[T, D] (x's dtype) = dlogits . wgᵀ and dwg[D, E] (float32) = xᵀ . dlogits. */
moe_status moe_gate_backward(moe_tensor x, moe_tensor wg, moe_tensor dlogits, moe_tensor* dx, moe_tensor* dwg);

typedef enum { MOE_SCORE_SOFTMAX = 0, MOE_SCORE_SIGMOID = 1 } moe_score_function;

typedef struct {
  int top_k;
  moe_score_function score_function;
  int renormalize;        /* 0 or 1 */
  moe_tensor expert_bias; /* float32 [E], or NULL */
  int num_groups;         /* 0 = no group-limited routing */
  int topk_groups;
} moe_route_options;

/* Top-k routing of logits[T, E] (docs/math.md#route): indices int32 [T, k], weights float32 [T, k],
   tokens_per_expert int32 [E], and the load-balancing and z losses without their coefficients. */
moe_status moe_route(moe_tensor logits, const moe_route_options* options, moe_tensor* indices, moe_tensor* weights,
                     moe_tensor* tokens_per_expert, float* aux_loss, float* z_loss);

/* y[R, N] = per expert e: x[rows of e] . w[e] (+ bias[e]); rows_per_expert int32 [L]; bias may be NULL. */
moe_status moe_grouped_gemm(moe_tensor x, moe_tensor w, moe_tensor rows_per_expert, moe_tensor bias, moe_tensor* y);

/* The scores float32 [T, E] route computes from logits (softmax or sigmoid, before any expert bias). */
moe_status moe_route_scores(moe_tensor logits, const moe_route_options* options, moe_tensor* scores);

typedef struct {
  moe_score_function score_function;
  int renormalize;      /* 0 or 1, as in the forward */
  double aux_loss_grad; /* d total / d aux loss (the loss's coefficient times any loss scale) */
  double z_loss_grad;   /* d total / d z loss */
} moe_route_backward_options;

/* dlogits float32 [T, E] from dweights (float32 [T, k], or NULL for none) and the losses' gradients;
   indices and tokens_per_expert are moe_route's outputs for these logits (docs/math.md#route-backward). */
moe_status moe_route_backward(moe_tensor logits, moe_tensor indices, moe_tensor tokens_per_expert, moe_tensor dweights,
                              const moe_route_backward_options* options, moe_tensor* dlogits);

/* ---- permutation ------------------------------------------------------------------------- */

typedef enum { MOE_DROP_PROBS = 0, MOE_DROP_POSITION = 1 } moe_drop_policy;

typedef struct {
  int64_t num_experts;
  double capacity_factor; /* 0: dropless; otherwise C = ceil(T·k/E · capacity_factor) */
  moe_drop_policy drop_policy;
  int pad_to_capacity; /* 0 or 1: every expert gets exactly C rows (needs a capacity factor) */
} moe_permute_options;

/* C = ceil(T·k/E · capacity_factor) (docs/math.md#capacity-and-drop-policies). */
moe_status moe_expert_capacity(int64_t tokens, int64_t top_k, int64_t num_experts, double capacity_factor,
                               int64_t* capacity);

/* Rows of x[T, D] grouped by expert (docs/math.md#permute): rows [R, D] (x's dtype), rows_per_expert int32 [E],
   pair_to_row int32 [T, k] (-1 when dropped), row_to_pair int32 [R] (-1 for padding); `dropped` choices dropped by
   capacity and `capacity` C (-1 when dropless). */
moe_status moe_permute(moe_tensor x, moe_tensor indices, moe_tensor weights, const moe_permute_options* options,
                       moe_tensor* rows, moe_tensor* rows_per_expert, moe_tensor* pair_to_row, moe_tensor* row_to_pair,
                       int64_t* dropped, int64_t* capacity);
/* dx[T, D] = Σ_j d_rows[pair_to_row[t, j]] (docs/math.md#permute). */
moe_status moe_permute_backward(moe_tensor d_rows, moe_tensor pair_to_row, moe_tensor* dx);
/* y[T, D] = Σ_j weights[t, j] · rows[pair_to_row[t, j]] (docs/math.md#unpermute). */
moe_status moe_unpermute(moe_tensor rows, moe_tensor pair_to_row, moe_tensor weights, moe_tensor* y);
/* d_rows [R, D] (rows' dtype) and d_weights float32 [T, k] for dy [T, D]. */
moe_status moe_unpermute_backward(moe_tensor dy, moe_tensor rows, moe_tensor pair_to_row, moe_tensor weights,
                                  moe_tensor* d_rows, moe_tensor* d_weights);
/* Chunks of x regrouped: counts int32 [P, L] gives the rows of chunk (p, l), stored p-major; the result holds them
   l-major (docs/math.md#dispatch-and-combine). */
moe_status moe_chunk_transpose(moe_tensor x, moe_tensor counts, moe_tensor* y);

/* ---- experts ----------------------------------------------------------------------------- */

/* dx [R, K] (x's dtype), dw [L, K, N] and dbias [L, N] (float32) for dy [R, N]; only the outputs asked for are
   computed (the others come back NULL) (docs/math.md#grouped-gemm). */
moe_status moe_grouped_gemm_backward(moe_tensor dy, moe_tensor x, moe_tensor w, moe_tensor rows_per_expert,
                                     moe_tensor* dx, moe_tensor* dw, moe_tensor* dbias);

typedef enum {
  MOE_ACT_RELU = 0,
  MOE_ACT_GELU = 1,
  MOE_ACT_SILU = 2,
  MOE_ACT_SWIGLU = 3, /* gated: x = [gate | up], width 2F -> F */
  MOE_ACT_GEGLU = 4
} moe_activation;

/* h = act(x) row by row (docs/math.md#activations); gated kinds halve the last dimension. */
moe_status moe_activation_forward(moe_tensor x, moe_activation kind, moe_tensor* h);
/* dx (x's shape and dtype) for dh. */
moe_status moe_activation_backward(moe_tensor dh, moe_tensor x, moe_activation kind, moe_tensor* dx);

/* ---- elementwise, random, optimizer ------------------------------------------------------- */

/* a + b, one shape and dtype. */
moe_status moe_add(moe_tensor a, moe_tensor b, moe_tensor* out);
/* In place: y = alpha·y + beta·x, in float32 (x may be NULL: y = alpha·y) (docs/math.md#elementwise-ops). */
moe_status moe_axpby(moe_tensor y, moe_tensor x, double alpha, double beta);
/* Σ x² over every element of the n float tensors (one device), as float32 [] on that device ("cpu" when n is 0). */
moe_status moe_sum_squares(const moe_tensor* tensors, int n, moe_tensor* out);

typedef enum { MOE_NORMAL = 0, MOE_UNIFORM = 1 } moe_distribution;

typedef struct {
  uint64_t seed;
  uint32_t key; /* e.g. a hash of the parameter's name */
  moe_distribution distribution;
  double a;           /* normal: mean; uniform: low */
  double b;           /* normal: standard deviation; uniform: high */
  int64_t slice_size; /* 0: the whole tensor is one slice */
  int64_t first_slice;
} moe_fill_random_options;

/* In place: fills t with counter-based random values (docs/math.md#random-numbers). */
moe_status moe_fill_random(moe_tensor t, const moe_fill_random_options* options);
/* x ⊙ u, u_i = 1 − eps + 2·eps·uniform_i of (seed, key, slice) (docs/math.md#jitter); also its own backward. */
moe_status moe_jitter(moe_tensor x, double eps, uint64_t seed, uint32_t key, int64_t slice, moe_tensor* y);

typedef struct {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step; /* the step being taken, from 1 */
} moe_adamw_options;

/* In place on param, exp_avg and exp_avg_sq (docs/math.md#adamw). */
moe_status moe_adamw(moe_tensor param, moe_tensor grad, moe_tensor exp_avg, moe_tensor exp_avg_sq,
                     const moe_adamw_options* options);
/* In place: bias[e] += rate · sign(mean(load) − load[e]) (docs/math.md#expert-bias). */
moe_status moe_expert_bias_update(moe_tensor bias, moe_tensor load, double rate);

/* ---- the layer (one process: every expert local) ------------------------------------------ */

typedef struct {
  int64_t num_experts;
  int top_k;
  moe_activation activation;
  moe_score_function score_function;
  int renormalize; /* 0 or 1 */
  int num_groups;  /* 0 = no group-limited routing */
  int topk_groups;
  double capacity_factor; /* 0: dropless */
  moe_drop_policy drop_policy;
  int pad_to_capacity;
  double aux_loss_coef;
  double z_loss_coef;
} moe_layer_config;

/* The layer's weights, borrowed for each call (layouts as docs/math.md#layer-forward names them). F1 is F, or 2F
   for gated activations (gate columns, then up columns). Optional ones are NULL. */
typedef struct {
  moe_tensor router_weight; /* [D, E] */
  moe_tensor expert_bias;   /* float32 [E] (aux-loss-free balancing), or NULL */
  moe_tensor w1;            /* [E, D, F1] */
  moe_tensor b1;            /* [E, F1] or NULL */
  moe_tensor w2;            /* [E, F, D] */
  moe_tensor b2;            /* [E, D] or NULL (with b1) */
  moe_tensor shared_w1;     /* [1, D, S1] or NULL: the shared experts */
  moe_tensor shared_b1;     /* [1, S1] or NULL */
  moe_tensor shared_w2;     /* [1, S, D] or NULL */
  moe_tensor shared_b2;     /* [1, D] or NULL */
} moe_layer_weights;

/* What a forward keeps for its backward. */
typedef struct moe_layer_saved_s* moe_layer_saved;

/* Gradients of one backward, each owned by the caller (NULL where the weight is absent). */
typedef struct {
  moe_tensor router_weight, w1, b1, w2, b2, shared_w1, shared_b1, shared_w2, shared_b2;
} moe_layer_grads;

/* y[T, D] (x's dtype) for x[T, D] (docs/math.md#layer-forward): gate, route, permute, the experts' FFN, unpermute,
   plus the shared experts. aux_loss and z_loss come with their coefficients. When `saved` is not NULL it receives
   what moe_layer_backward needs (free it with moe_layer_saved_free). */
moe_status moe_layer_forward(const moe_layer_config* config, const moe_layer_weights* weights, moe_tensor x,
                             moe_tensor* y, float* aux_loss, float* z_loss, moe_layer_saved* saved);
/* dx[T, D] for dy[T, D] through the forward that made `saved` (with the same config and weights), and every weight's
   gradient into grads (float32; the losses' gradients, times loss_scale, included) (docs/math.md#layer-backward).
   `saved` stays valid: it may be differentiated again. */
moe_status moe_layer_backward(const moe_layer_config* config, const moe_layer_weights* weights, moe_layer_saved saved,
                              moe_tensor dy, double loss_scale, moe_tensor* dx, moe_layer_grads* grads);
void moe_layer_saved_free(moe_layer_saved saved);
/* Frees every gradient in grads and sets them to NULL. */
void moe_layer_grads_free(moe_layer_grads* grads);

#ifdef __cplusplus
}
#endif

#endif /* MOE_EP_H */
