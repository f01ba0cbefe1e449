// The CUDA paths of the ops (one *_cuda.cpp beside each op's file). Each op
// checks its arguments on the caller's thread as before, then hands CUDA
// tensors here: the returned Task runs on the CPU stream like any other, but
// only enqueues kernels on the device's compute stream (through
// cuda/launchers.h) and returns its outputs at once, ready when the stream
// reaches them. Data errors the kernels find are tagged on the device's status
// word and reported, naming the op, by the next synchronisation
// (cpp/core/cuda_device.h); permute with a capacity reads its row count back
// and so reports them itself.
//
// These paths compile in the CPU-only build too, against the launcher stubs.
#pragma once
#include <memory>
#include <vector>

#include "../core/cuda_device.h"
#include "activation.h"
#include "adamw.h"
#include "chunks.h"
#include "elementwise.h"
#include "expert_bias.h"
#include "gate.h"
#include "grouped_gemm.h"
#include "permute.h"
#include "random.h"
#include "route.h"
#include "unpermute.h"

namespace moe::ops::cuda_path {

Task<Tensor> gate(const Tensor& x, const Tensor& wg);
Task<GateGrads> gate_backward(const Tensor& x, const Tensor& wg, const Tensor& dlogits);

Task<RouteResult> route(const Tensor& logits, const Tensor& expert_bias, const RouteOptions& options);
Task<Tensor> route_backward(const Tensor& logits, const Tensor& indices, const Tensor& tokens_per_expert,
                            const Tensor& dweights, const RouteBackwardOptions& options);
// Refuses, on the caller's thread, shapes no compiled route kernel covers.
void check_route_supported(const char* op, int64_t tokens, int64_t experts, int64_t top_k, int64_t groups,
                           int64_t topk_groups);

// capacity: C, or -1 when dropless.
Task<Permuted> permute(const Tensor& x, const Tensor& indices, const Tensor& weights, const PermuteOptions& options,
                       int64_t capacity);
void check_permute_supported(int64_t num_experts);
Task<Tensor> permute_backward(const Tensor& d_rows, const Tensor& pair_to_row);
Task<Tensor> unpermute(const Tensor& rows, const Tensor& pair_to_row, const Tensor& weights);
Task<UnpermuteGrads> unpermute_backward(const Tensor& dy, const Tensor& rows, const Tensor& pair_to_row,
                                        const Tensor& weights);

// rows · width: x viewed as a matrix of its last dim.
Task<Tensor> activation(const Tensor& x, ActivationKind kind, int64_t rows, int64_t width);
Task<Tensor> activation_backward(const Tensor& dh, const Tensor& x, ActivationKind kind, int64_t rows, int64_t width);

// The per-step constants of AdamW as cpp/ops/adamw.cpp computes them.
struct AdamWConstants {
  float decay, step_size, bc2_sqrt, b1, b2, one_b1, one_b2, eps;
};
Task<bool> adamw(const Tensor& param, const Tensor& grad, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const AdamWConstants& c);

// grouped GEMM on the tensor-core kernels (cuda/grouped_gemm*.cu): bf16/f16
// operands, int32 counts on the device; float32 operands are ERR_MOE_UNSUPPORTED.
Task<Tensor> grouped_gemm(const Tensor& x, const Tensor& w, const Tensor& rows_per_expert, const Tensor& bias);
Task<GroupedGemmGrads> grouped_gemm_backward(const Tensor& dy, const Tensor& x, const Tensor& w,
                                             const Tensor& rows_per_expert, GroupedGemmNeeds needs);

// The layer's glue ops (cuda/elementwise.cu, cuda/random.cu, cuda/chunks.cu),
// arguments checked by the CPU ops first.
Task<Tensor> add(const Tensor& a, const Tensor& b);
Task<bool> axpby(const Tensor& y, const Tensor& x, float alpha, float beta);
// All tensors on one CUDA device; the result float32 [] on it.
Task<Tensor> sum_squares(const std::vector<Tensor>& tensors, Device device);
Task<bool> fill_random(const Tensor& t, const FillRandomOptions& o, int64_t slice);
Task<Tensor> jitter(const Tensor& x, double eps, const RandomStream& stream, int64_t slice);
Task<Tensor> chunk_transpose(const Tensor& x, const Tensor& counts);
Task<bool> expert_bias_update(const Tensor& bias, const Tensor& load, double rate);

// Device scratch memory for one op: a stream-ordered allocation carved into
// 256-byte aligned pieces, freed (in stream order) when the last holder goes.
class Scratch {
 public:
  Scratch(size_t bytes, Device device) : storage_(Storage::allocate(bytes, device)) {}
  void* at(size_t offset) const { return static_cast<char*>(storage_->data()) + offset; }
  size_t bytes() const { return storage_->bytes(); }

 private:
  std::shared_ptr<Storage> storage_;
};
inline size_t align256(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace moe::ops::cuda_path
