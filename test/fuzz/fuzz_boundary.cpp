// Fuzz target for the native boundary: the C ABI (cpp/include/moe_ep.h) and
// the core's tensor and op entry points, driven by arbitrary bytes. Shapes mix
// small dimensions with the ones that overflow (2^31, 2^53, 2^62, INT64_MAX,
// negatives), next to zero dimensions; dtypes, options and buffer sizes are
// drawn the same way. Every call must either succeed or fail the documented
// way: a moe_status other than MOE_ERR_INTERNAL with a message, or a typed
// moe::Error. Anything else (a crash, a sanitizer report, an internal error)
// aborts. Built with libFuzzer (clang) or with standalone.cpp (any compiler).
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "../../cpp/core/error.h"
#include "../../cpp/core/host_copy.h"
#include "../../cpp/core/tensor.h"
#include "../../cpp/ops/activation.h"
#include "../../cpp/ops/chunks.h"
#include "../../cpp/ops/elementwise.h"
#include "../../cpp/ops/gate.h"
#include "../../cpp/ops/grouped_gemm.h"
#include "../../cpp/ops/kept_weights.h"
#include "../../cpp/ops/permute.h"
#include "../../cpp/ops/random.h"
#include "../../cpp/ops/residual.h"
#include "../../cpp/ops/route.h"
#include "../../cpp/ops/unpermute.h"
#include "moe_ep.h"

// Allocations past 64 MiB fail (NULL from malloc) rather than abort, so that a
// shape that is legal but huge meets the core's "out of host memory" error.
extern "C" const char* __asan_default_options() {
  return "allocator_may_return_null=1:max_allocation_size_mb=64:detect_leaks=1";
}

namespace {

constexpr int kPool = 4;

struct Reader {
  const uint8_t* p;
  size_t n;
  uint8_t byte() {
    if (!n) return 0;
    --n;
    return *p++;
  }
  bool flag() { return byte() & 1; }
  int64_t dim() {
    static const int64_t big[] = {
        0,
        1,
        255,
        65536,
        (int64_t(1) << 31) - 1,
        int64_t(1) << 31,
        (int64_t(1) << 32) + 1,
        (int64_t(1) << 53) - 1,
        int64_t(1) << 53,
        int64_t(1) << 62,
        std::numeric_limits<int64_t>::max(),
        -1,
        std::numeric_limits<int64_t>::min(),
    };
    const uint8_t b = byte();
    if (b < 208) return b % 9;
    return big[(b - 208) % (sizeof big / sizeof big[0])];
  }
  double number() {
    static const double v[] = {0, 1, -1, 0.5, 2, 1e30, -1e30, NAN, INFINITY, -INFINITY, 1e-40, 3, 1.25};
    return v[byte() % (sizeof v / sizeof v[0])];
  }
  int32_t i32() {
    static const int32_t v[] = {0, 1, 2, 3, -1, 7, INT32_MAX, INT32_MIN, 4, 5};
    return v[byte() % (sizeof v / sizeof v[0])];
  }
};

[[noreturn]] void finding(const char* what, const char* detail) {
  std::fprintf(stderr, "fuzz finding: %s: %s\n", what, detail);
  std::abort();
}

// A documented failure of the C ABI: a known error status with a message.
void expect_abi(moe_status s, const char* call) {
  if (s == MOE_OK) return;
  if (s == MOE_ERR_INTERNAL || s < MOE_ERR_SHAPE || s > MOE_ERR_NCCL_UNAVAILABLE) finding(call, moe_last_error());
  if (!*moe_last_error()) finding(call, "a failure without a message");
}

// Runs a core call; a typed error is fine, anything else is a finding.
template <class F>
bool core(const char* call, F&& body) {
  try {
    body();
    return true;
  } catch (const moe::Error& e) {
    if (e.code() == moe::Code::Internal) finding(call, e.what());
    if (!*e.what()) finding(call, "an error without a message");
  } catch (const std::bad_alloc&) {
  } catch (const std::exception& e) {
    finding(call, e.what());
  }
  return false;
}

moe::DType core_dtype(int d) {
  static const moe::DType all[] = {moe::DType::F32, moe::DType::BF16, moe::DType::F16, moe::DType::I32,
                                   moe::DType::I64};
  return all[d % 5];
}

struct Spec {
  int dtype;  // moe_dtype; 5 and up are invalid
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // element bytes when the shape is small and valid
};

// The element count as the harness sees it, or -1 when the shape is invalid or large.
int64_t small_numel(const std::vector<int64_t>& shape) {
  __int128 n = 1;
  for (int64_t d : shape) {
    if (d < 0) return -1;
    n *= d;
    if (n > 4096) return -1;
  }
  return int64_t(n);
}

size_t abi_size(int dtype) { return dtype == 0 || dtype == 3 ? 4 : dtype == 4 ? 8 : 2; }

Spec make_spec(Reader& r) {
  Spec s;
  s.dtype = r.byte() % 6;
  const int ndim = r.byte() % 5;
  for (int i = 0; i < ndim; ++i) s.shape.push_back(r.dim());
  const int64_t n = small_numel(s.shape);
  if (n >= 0 && s.dtype < 5 && r.flag()) {
    s.data.resize(size_t(n) * abi_size(s.dtype));
    for (int64_t i = 0; i < n; ++i) {
      uint8_t* at = s.data.data() + size_t(i) * abi_size(s.dtype);
      if (s.dtype == 0) {
        float f = float(r.number());
        std::memcpy(at, &f, 4);
      } else if (s.dtype == 3) {
        int32_t v = r.i32();
        std::memcpy(at, &v, 4);
      } else if (s.dtype == 4) {
        int64_t v = r.flag() ? int64_t(r.i32()) : r.dim();
        std::memcpy(at, &v, 8);
      } else {
        at[0] = r.byte();
        at[1] = r.byte();
      }
    }
  }
  return s;
}

void read_back(moe_tensor t) {
  moe_dtype dt;
  int nd = 0;
  int64_t shape[8];
  expect_abi(moe_tensor_info(t, &dt, &nd, shape, 8), "moe_tensor_info");
  __int128 n = 1;
  for (int i = 0; i < nd; ++i) n *= shape[i];
  if (n > (int64_t(1) << 22)) return;
  std::vector<uint8_t> buf(size_t(n) * 8 + 1);
  expect_abi(moe_tensor_read(t, dt, buf.data(), buf.size()), "moe_tensor_read");
}

moe::Tensor pick(const std::vector<moe::Tensor>& pool, Reader& r) {
  const uint8_t b = r.byte();
  return b % 8 == 7 ? moe::Tensor() : pool[b % kPool];  // sometimes an undefined (disposed) tensor
}

void run_abi(Reader& r, moe_tensor* h) {
  auto any = [&]() -> moe_tensor {
    uint8_t b = r.byte();
    return b % 8 == 7 ? nullptr : h[b % kPool];
  };
  moe_tensor out = nullptr, out2 = nullptr, out3 = nullptr;
  // Expert counts are capped as in run_core: a legal but huge count sizes host scratch by itself.
  auto experts = [&] {
    int64_t e = r.dim();
    return e > (int64_t(1) << 20) && e <= INT32_MAX ? int64_t(1) << 20 : e;
  };
  switch (r.byte() % 9) {
    case 0:
      expect_abi(moe_gate(any(), any(), &out), "moe_gate");
      break;
    case 1: {
      moe_route_options o{};
      o.top_k = int(r.dim());
      o.score_function = moe_score_function(r.byte() % 3);
      o.renormalize = r.flag();
      o.expert_bias = r.flag() ? any() : nullptr;
      o.num_groups = int(r.dim());
      o.topk_groups = int(r.dim());
      float aux, z;
      expect_abi(moe_route(any(), r.flag() ? &o : nullptr, &out, &out2, &out3, &aux, &z), "moe_route");
      break;
    }
    case 2:
      expect_abi(moe_grouped_gemm(any(), any(), any(), r.flag() ? any() : nullptr, &out), "moe_grouped_gemm");
      break;
    case 3: {
      int64_t shape[8];
      moe_dtype dt;
      int nd;
      expect_abi(moe_tensor_info(any(), &dt, &nd, r.flag() ? shape : nullptr, int(r.byte() % 10) - 1),
                 "moe_tensor_info");
      break;
    }
    case 4: {
      uint8_t buf[512];
      const size_t bytes = r.flag() ? sizeof buf : r.byte() % sizeof buf;
      expect_abi(moe_tensor_read(any(), moe_dtype(r.byte() % 6), r.flag() ? buf : nullptr, bytes), "moe_tensor_read");
      break;
    }
    case 5: {
      moe_layer_config c{};
      c.num_experts = experts();
      c.top_k = int(r.dim());
      c.activation = moe_activation(r.byte() % 6);
      c.score_function = moe_score_function(r.byte() % 3);
      c.renormalize = r.flag();
      c.num_groups = r.flag() ? int(r.dim()) : 0;
      c.topk_groups = c.num_groups ? int(r.dim()) : 0;
      c.capacity_factor = r.flag() ? r.number() : 0;
      c.drop_policy = moe_drop_policy(r.byte() % 3);
      c.pad_to_capacity = r.flag();
      c.aux_loss_coef = r.number();
      moe_layer_weights w{};
      for (moe_tensor* slot : {&w.router_weight, &w.w1, &w.w2}) *slot = any();
      for (moe_tensor* slot : {&w.expert_bias, &w.b1, &w.b2, &w.shared_w1, &w.shared_b1, &w.shared_w2, &w.shared_b2})
        *slot = r.flag() ? any() : nullptr;
      moe_layer_saved saved = nullptr;
      float aux, z;
      moe_status s = moe_layer_forward(&c, &w, any(), &out, &aux, &z, r.flag() ? &saved : nullptr);
      expect_abi(s, "moe_layer_forward");
      if (saved) {
        moe_layer_grads g{};
        expect_abi(moe_layer_backward(&c, &w, saved, any(), r.number(), &out2, &g), "moe_layer_backward");
        for (moe_tensor t :
             {g.router_weight, g.w1, g.b1, g.w2, g.b2, g.shared_w1, g.shared_b1, g.shared_w2, g.shared_b2})
          if (t) read_back(t);
        moe_layer_grads_free(&g);
        moe_layer_saved_free(saved);
      }
      break;
    }
    case 6: {
      moe_permute_options o{experts(), r.flag() ? r.number() : 0, moe_drop_policy(r.byte() % 3), int(r.flag())};
      moe_tensor rows = nullptr;
      int64_t dropped, capacity;
      expect_abi(
          moe_permute(any(), any(), any(), r.flag() ? &o : nullptr, &out, &out2, &out3, &rows, &dropped, &capacity),
          "moe_permute");
      if (rows) {
        read_back(rows);
        moe_tensor_free(rows);
      }
      break;
    }
    case 7:
      if (r.flag())
        expect_abi(moe_activation_forward(any(), moe_activation(r.byte() % 6), &out), "moe_activation_forward");
      else
        expect_abi(moe_activation_backward(any(), any(), moe_activation(r.byte() % 6), &out),
                   "moe_activation_backward");
      break;
    case 8:
      expect_abi(moe_grouped_gemm_backward(any(), any(), any(), any(), r.flag() ? &out : nullptr,
                                           r.flag() ? &out2 : nullptr, r.flag() ? &out3 : nullptr),
                 "moe_grouped_gemm_backward");
      break;
  }
  for (moe_tensor t : {out, out2, out3})
    if (t) {
      read_back(t);
      moe_tensor_free(t);
    }
}

void run_core(Reader& r, const std::vector<moe::Tensor>& pool) {
  using namespace moe;
  auto t = [&] { return pick(pool, r); };
  switch (r.byte() % 13) {
    case 0: {
      ops::PermuteOptions o;
      o.num_experts = r.dim();
      // A legal but huge expert count sizes host scratch by itself (2^31 - 1 experts: 16 GiB), which under
      // ASan aborts instead of throwing std::bad_alloc; such counts are tried at 2^20, the refused ones as drawn.
      if (o.num_experts > (int64_t(1) << 20) && o.num_experts <= INT32_MAX) o.num_experts = int64_t(1) << 20;
      if (r.flag()) o.capacity_factor = r.number();
      if (r.flag()) o.min_capacity = r.dim();
      o.drop_policy = ops::DropPolicy(r.byte() % 3);
      o.pad_to_capacity = r.flag();
      core("permute", [&] { ops::permute(t(), t(), t(), o)(); });
      break;
    }
    case 1:
      core("permuteBackward", [&] { ops::permute_backward(t(), t())(); });
      break;
    case 2:
      core("unpermute", [&] { ops::unpermute(t(), t(), t())(); });
      core("residualMix", [&] { ops::residual_mix(t(), t(), t(), t())(); });
      core("residualMixBackward", [&] { ops::residual_mix_backward(t(), t(), t(), t(), t())(); });
      core("renormalizeKept", [&] { ops::renormalize_kept(t(), t())(); });
      core("renormalizeKeptBackward", [&] { ops::renormalize_kept_backward(t(), t(), t())(); });
      break;
    case 3:
      core("unpermuteBackward", [&] { ops::unpermute_backward(t(), t(), t(), t())(); });
      break;
    case 4:
      core("chunkTranspose", [&] { ops::chunk_transpose(t(), t())(); });
      break;
    case 5: {
      ops::RouteOptions o;
      o.top_k = r.dim();
      o.score = r.flag() ? ops::ScoreFunction::Sigmoid : ops::ScoreFunction::Softmax;
      o.renormalize = r.flag();
      o.num_groups = r.flag() ? r.dim() : 0;
      o.topk_groups = r.flag() ? r.dim() : 0;
      if (r.flag()) o.selection_noise = t();
      if (r.flag()) o.noise_from = r.dim();
      core("route", [&] { ops::route(t(), t(), o)(); });
      core("checkRouteOptions", [&] { ops::check_route_options("fuzz", r.dim(), o); });
      break;
    }
    case 6: {
      ops::RouteBackwardOptions o;
      o.score = r.flag() ? ops::ScoreFunction::Sigmoid : ops::ScoreFunction::Softmax;
      o.renormalize = r.flag();
      o.aux_loss_grad = r.number();
      o.z_loss_grad = r.number();
      core("routeBackward", [&] { ops::route_backward(t(), t(), t(), t(), o)(); });
      break;
    }
    case 7: {
      ops::GroupedGemmNeeds needs{r.flag(), r.flag(), r.flag()};
      core("groupedGemm", [&] { ops::grouped_gemm(t(), t(), t(), t())(); });
      core("groupedGemmBackward", [&] { ops::grouped_gemm_backward(t(), t(), t(), t(), needs)(); });
      break;
    }
    case 8:
      core("gateBackward", [&] { ops::gate_backward(t(), t(), t())(); });
      break;
    case 9: {
      const auto kind = ops::ActivationKind(r.byte() % 5);
      core("activation", [&] { ops::activation(t(), kind)(); });
      core("activationBackward", [&] { ops::activation_backward(t(), t(), kind)(); });
      break;
    }
    case 10: {
      ops::FillRandomOptions o;
      o.stream.seed = uint64_t(r.dim());
      o.slice_size = r.dim();
      o.first_slice = r.dim();
      o.distribution = ops::Distribution(r.byte() % 3);
      core("fillRandom", [&] { ops::fill_random(t(), o)(); });
      core("jitter", [&] { ops::jitter(t(), r.number(), o.stream, r.dim())(); });
      break;
    }
    case 11:
      core("add", [&] { ops::add(t(), t())(); });
      core("axpby", [&] { ops::axpby(t(), t(), r.number(), r.number())(); });
      break;
    case 12: {
      std::vector<Tensor> list;
      for (int i = r.byte() % 4; i > 0; --i) list.push_back(t());
      core("sumSquares", [&] { ops::sum_squares(list)(); });
      break;
    }
  }
}

}  // namespace

constexpr int64_t kPoolElements = int64_t(1) << 21;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Reader r{data, size};
  moe_tensor handles[kPool] = {};
  std::vector<moe::Tensor> pool(kPool);
  for (int i = 0; i < kPool; ++i) {
    Spec s = make_spec(r);
    const void* bytes = s.data.empty() ? nullptr : s.data.data();
    expect_abi(moe_tensor_create(moe_dtype(s.dtype), int(s.shape.size()), s.shape.data(), bytes, &handles[i]),
               "moe_tensor_create");
    // The core's ops run on tensors of at most kPoolElements (larger legal shapes stay undefined
    // there, and meet the allocation limits through the C ABI's handles above): every op walks its
    // elements under coverage instrumentation, about 0.3 µs each in the float16 conversions, and a
    // few ops on 64 MiB tensors ran one input past libFuzzer's 30 s timeout.
    if (s.dtype < 5)
      core("tensor", [&] {
        if (moe::shape_numel(s.shape) > kPoolElements) return;
        const moe::DType dt = core_dtype(s.dtype);
        pool[size_t(i)] =
            bytes ? moe::from_host(dt, s.shape, {}, bytes, dt, moe::shape_numel(s.shape)) : moe::zeros(dt, s.shape);
      });
  }
  for (int calls = 0; calls < 6 && r.n; ++calls) {
    if (r.flag())
      run_abi(r, handles);
    else
      run_core(r, pool);
  }
  for (moe_tensor h : handles) moe_tensor_free(h);
  return 0;
}
