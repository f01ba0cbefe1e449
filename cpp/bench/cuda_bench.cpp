#include "cuda_bench.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "../../cuda/launchers.h"
#include "../core/cuda_device.h"
#include "../core/host_copy.h"

namespace moe::bench {
namespace {

// Median and best of per-launch times from `batches` event pairs around `reps` launches each.
template <class Launch>
KernelTime time_batches(Device device, int reps, int batches, Launch&& launch) {
  for (int i = 0; i < 3; ++i) launch();  // warm-up
  std::vector<double> us;
  for (int b = 0; b < batches; ++b) {
    cuda::TimingEvent start(device);
    for (int r = 0; r < reps; ++r) launch();
    cuda::TimingEvent end(device);
    us.push_back(1000.0 * end.elapsed_ms_since(start) / reps);
  }
  std::sort(us.begin(), us.end());
  KernelTime t;
  t.median_us = us[us.size() / 2];
  t.best_us = us.front();
  t.reps = reps;
  t.batches = batches;
  return t;
}

void check_counts(int reps, int batches) {
  if (reps < 1 || batches < 1)
    fail(Code::Value, "benchmark: expected reps and batches >= 1 but received " + std::to_string(reps) + " and " +
                          std::to_string(batches));
}

}  // namespace

Task<KernelTime> cuda_route_kernel(Device device, int64_t tokens, int experts, int top_k, int reps, int batches) {
  check_counts(reps, batches);
  cuda::require(device, "cudaRouteKernel");
  return [=] {
    cuda::Scope sc(device);
    std::vector<float> host(size_t(tokens) * size_t(experts));
    uint32_t s = 12345;
    for (float& v : host) {
      s = s * 1664525u + 1013904223u;
      v = 4.0f * (float(s) / 4294967296.0f - 0.5f);
    }
    Tensor logits =
        from_host(DType::F32, {tokens, int64_t(experts)}, device, host.data(), DType::F32, int64_t(host.size()));
    Tensor indices = empty(DType::I32, {tokens, top_k}, device), weights = empty(DType::F32, {tokens, top_k}, device);
    Tensor scores = empty(DType::F32, {tokens, int64_t(experts)}, device);
    Tensor counts = empty(DType::I32, {int64_t(experts)}, device), prob = empty(DType::F32, {int64_t(experts)}, device);
    Tensor stats = empty(DType::F32, {4}, device);
    const size_t ws_bytes = moe_cuda_route_workspace_bytes(tokens, experts);
    auto ws = Storage::allocate(ws_bytes, device);
    float* st = stats.data<float>();
    auto launch = [&] {
      cuda::check(moe_cuda_route_forward(logits.data<float>(), nullptr, tokens, experts, top_k, 0, 1, 0, 0,
                                         indices.data<int32_t>(), weights.data<float>(), scores.data<float>(),
                                         counts.data<int32_t>(), prob.data<float>(), st, st + 1, nullptr, ws->data(),
                                         ws_bytes, sc.stream()),
                  "cudaRouteKernel", device);
    };
    KernelTime t = time_batches(device, reps, batches, launch);
    cuda::synchronize(device);
    return t;
  };
}

Task<CopyRate> cuda_copy_rate(Device device, int64_t bytes, int reps, int batches) {
  check_counts(reps, batches);
  cuda::require(device, "cudaCopyRate");
  if (bytes < 1) fail(Code::Value, "cudaCopyRate: expected bytes >= 1 but received " + std::to_string(bytes));
  return [=] {
    cuda::Scope sc(device);
    auto src = Storage::allocate(size_t(bytes), device), dst = Storage::allocate(size_t(bytes), device);
    cuda::memset_async(src->data(), 1, size_t(bytes), device);
    KernelTime t =
        time_batches(device, reps, batches, [&] { cuda::copy_async(dst->data(), src->data(), size_t(bytes), device); });
    cuda::synchronize(device);
    CopyRate r;
    r.median_us = t.median_us;
    r.bytes = double(bytes);
    r.gbps = 2.0 * double(bytes) / (t.median_us * 1e-6) / 1e9;
    return r;
  };
}

}  // namespace moe::bench
