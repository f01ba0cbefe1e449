// route on CUDA tensors (see cuda_ops.h): the fused routing kernel of
// cuda/route.cu, one launch plus a one-block finalisation.
#include <climits>

#include "../../cuda/launchers.h"
#include "../../cuda/route_plan.h"
#include "cuda_ops.h"

namespace moe::ops::cuda_path {

namespace {
constexpr int kSoftmax = 0, kSigmoid = 1;
int score_code(ScoreFunction f) { return f == ScoreFunction::Softmax ? kSoftmax : kSigmoid; }
}  // namespace

void check_route_supported(const char* op, int64_t tokens, int64_t experts, int64_t top_k, int64_t groups,
                           int64_t topk_groups) {
  if (experts > INT_MAX || top_k > INT_MAX || groups > INT_MAX || topk_groups > INT_MAX)
    fail(Code::Unsupported, std::string(op) + ": expected numExperts, topK and groups below 2^31 on CUDA");
  const moe_cuda::RoutePlan p = moe_cuda::route_plan(tokens, int(experts), int(top_k), int(groups), int(topk_groups));
  if (p.status == MOE_CUDA_ERR_UNSUPPORTED)
    fail(Code::Unsupported,
         std::string(op) + ": expected at most " + std::to_string(32 * moe_cuda::kMaxExpertsPerLane) +
             " experts, and shared memory within " + std::to_string(moe_cuda::kRouteMaxSharedBytes) +
             " bytes, for the CUDA routing kernel but received numExperts " + std::to_string(experts) + ", topK " +
             std::to_string(top_k) + ", numGroups " + std::to_string(groups));
  if (p.status != 0)
    fail(Code::Internal, std::string(op) + ": the CUDA routing plan refused arguments the op accepted");
}

Task<RouteResult> route(const Tensor& logits, const Tensor& expert_bias, const RouteOptions& options) {
  return [logits, expert_bias, o = options] {
    const char* op = "route";
    const Device dev = logits.device();
    cuda::Scope sc(dev);
    const int64_t t = logits.dim(0);
    const int e = int(logits.dim(1)), k = int(o.top_k);
    if (expert_bias.defined()) {
      const uint32_t tag = sc.add_check(Code::NonFinite, "route: expected finite values in expertBias but element ",
                                        " is not finite (found on " + dev.str() + ")");
      cuda::check(moe_cuda_check_finite(expert_bias.raw(), MOE_CUDA_F32, e, sc.status(), tag, sc.stream()), op, dev);
    }
    RouteResult r{
        empty(DType::I32, {t, k}, dev),       empty(DType::F32, {t, k}, dev), empty(DType::F32, {t, int64_t(e)}, dev),
        empty(DType::I32, {int64_t(e)}, dev), empty(DType::F32, {}, dev),     empty(DType::F32, {}, dev)};

    // Scratch: the kernel's per-block partials, then prob_sum [E], lse_sq_sum,
    // losses [2] and the count of tokens with a non-finite logit.
    const size_t ws = moe_cuda_route_workspace_bytes(t, e);
    const size_t at_prob = align256(ws), at_lse = at_prob + align256(4 * size_t(e)), at_losses = at_lse + 256,
                 at_bad = at_losses + 256;
    Scratch scratch(at_bad + 256, dev);
    float* losses = static_cast<float*>(scratch.at(at_losses));
    int32_t* bad = static_cast<int32_t*>(scratch.at(at_bad));
    cuda::check(
        moe_cuda_route_forward(logits.data<float>(), expert_bias.defined() ? expert_bias.data<float>() : nullptr, t, e,
                               k, score_code(o.score), o.renormalize ? 1 : 0, int(o.num_groups), int(o.topk_groups),
                               r.indices.data<int32_t>(), r.weights.data<float>(), r.scores.data<float>(),
                               r.tokens_per_expert.data<int32_t>(), static_cast<float*>(scratch.at(at_prob)),
                               static_cast<float*>(scratch.at(at_lse)), losses, bad, scratch.at(0), ws, sc.stream()),
        op, dev);
    const uint32_t tag = sc.add_check(Code::NonFinite, "route: expected finite values in logits but ",
                                      " token(s) have a NaN or infinite logit (found on " + dev.str() + ")");
    cuda::check(moe_cuda_flag_if_positive(bad, sc.status(), tag, sc.stream()), op, dev);
    cuda::copy_async(r.aux_loss.raw(), losses, sizeof(float), dev);
    cuda::copy_async(r.z_loss.raw(), losses + 1, sizeof(float), dev);
    return r;
  };
}

Task<Tensor> route_backward(const Tensor& logits, const Tensor& indices, const Tensor& tokens_per_expert,
                            const Tensor& dweights, const RouteBackwardOptions& options) {
  return [logits, indices, tokens_per_expert, dweights, o = options] {
    const char* op = "routeBackward";
    const Device dev = logits.device();
    cuda::Scope sc(dev);
    const int64_t t = logits.dim(0);
    const int e = int(logits.dim(1)), k = int(indices.dim(1));
    const std::string where = " (found on " + dev.str() + ")";
    const uint32_t finite = sc.add_check(
        Code::NonFinite, "routeBackward: expected finite values in logits but element ", " is not finite" + where);
    cuda::check(moe_cuda_check_finite(logits.raw(), MOE_CUDA_F32, logits.numel(), sc.status(), finite, sc.stream()), op,
                dev);
    const uint32_t range =
        sc.add_check(Code::Value, "routeBackward: expected indices in [0, " + std::to_string(e) + ") but element ",
                     " is outside it" + where);
    cuda::check(
        moe_cuda_check_range_i32(indices.data<int32_t>(), indices.numel(), 0, e, sc.status(), range, sc.stream()), op,
        dev);
    const uint32_t counts =
        sc.add_check(Code::Value, "routeBackward: expected tokensPerExpert >= 0 but element ", " is negative" + where);
    cuda::check(
        moe_cuda_check_range_i32(tokens_per_expert.data<int32_t>(), e, 0, INT32_MAX, sc.status(), counts, sc.stream()),
        op, dev);

    Tensor dlogits = empty(DType::F32, {t, int64_t(e)}, dev);
    if (t == 0) return dlogits;
    // The forward's scores, recomputed with the forward's arithmetic.
    Scratch scores(4 * size_t(t) * size_t(e), dev);
    float* s = static_cast<float*>(scores.at(0));
    cuda::check(moe_cuda_route_scores(logits.data<float>(), t, e, score_code(o.score), s, sc.stream()), op, dev);
    cuda::check(moe_cuda_route_backward(dweights.defined() ? dweights.data<float>() : nullptr, indices.data<int32_t>(),
                                        s, logits.data<float>(), tokens_per_expert.data<int32_t>(), t, e, k,
                                        score_code(o.score), o.renormalize ? 1 : 0, float(o.aux_loss_grad),
                                        float(o.z_loss_grad), dlogits.data<float>(), sc.stream()),
                op, dev);
    return dlogits;
  };
}

}  // namespace moe::ops::cuda_path
