#include "elementwise.h"

#include <cmath>
#include <string>

#include "../core/op_clock.h"
#include "../core/check.h"
#include "../core/host_allocator.h"
#include "../core/parallel.h"
#include "cuda_ops.h"
#include "float_span.h"

namespace moe::ops {

namespace {
constexpr int64_t kBlock = 1 << 14;  // elements per parallel chunk (and per partial sum)

int64_t total_numel(const std::vector<Tensor>& tensors) {
  int64_t n = 0;
  for (const Tensor& t : tensors) n += t.numel();
  return n;
}

}  // namespace

Task<Tensor> add(const Tensor& a, const Tensor& b) {
  const char* op = "add";
  check_float(op, "a", a);
  check_float(op, "b", b);
  check_shape(op, "b", b, a.shape, "like a");
  check_same_device(op, {{"a", &a}, {"b", &b}});
  if (a.device().kind == Device::CUDA) return cuda_path::add(a, b);
  Task<Tensor> task = [a, b] {
    OpTimer timer("add");
    Tensor out = empty(a.dtype, a.shape, a.device());
    const bool f32 = a.dtype == DType::F32 && b.dtype == DType::F32;
    parallel_for(a.numel(), kBlock, [&](int64_t i0, int64_t i1) {
      const int64_t n = i1 - i0;
      if (f32) {  // straight from the operands: no scratch, one sweep
        const float *x = a.data<float>() + i0, *y = b.data<float>() + i0;
        float* o = out.data<float>() + i0;
        for (int64_t j = 0; j < n; ++j) o[j] = x[j] + y[j];
        return;
      }
      HostScratch<float> x(size_t(n) * 2);
      float* y = x.data() + n;
      load_f32(a, i0, n, x.data());
      load_f32(b, i0, n, y);
      for (int64_t j = 0; j < n; ++j) x.data()[j] += y[j];
      store_f32(x.data(), n, out, i0);
    });
    return out;
  };
  task.cost = a.numel();  // steps: about one an element
  return task;
}

Task<bool> axpby(const Tensor& y, const Tensor& x, double alpha, double beta) {
  const char* op = "axpby";
  check_float(op, "y", y);
  if (x.defined()) {
    check_float(op, "x", x);
    check_shape(op, "x", x, y.shape, "like y");
    check_same_device(op, {{"y", &y}, {"x", &x}});
  }
  check_option(op, "alpha", std::isfinite(alpha), "a finite number", num_str(alpha));
  check_option(op, "beta", std::isfinite(beta), "a finite number", num_str(beta));
  const float a = float(alpha), b = float(beta);
  if (y.device().kind == Device::CUDA) return cuda_path::axpby(y, x, a, b);
  Task<bool> task = [y, x, a, b] {
    OpTimer timer("axpby");
    if (a == 0.0f && b == 0.0f) note_zeroed(y.bytes());
    const bool f32 = y.dtype == DType::F32 && (!x.defined() || x.dtype == DType::F32);
    parallel_for(y.numel(), kBlock, [&](int64_t i0, int64_t i1) {
      const int64_t n = i1 - i0;
      if (f32) {  // in place, no scratch; the same float operations as below
        float* yp = y.data<float>() + i0;
        if (x.defined()) {
          const float* xp = x.data<float>() + i0;
          if (a == 0.0f)
            for (int64_t j = 0; j < n; ++j) yp[j] = 0.0f + b * xp[j];
          else
            for (int64_t j = 0; j < n; ++j) yp[j] = a * yp[j] + b * xp[j];
        } else if (a == 0.0f) {
          std::fill(yp, yp + n, 0.0f);
        } else {
          for (int64_t j = 0; j < n; ++j) yp[j] = a * yp[j];
        }
        return;
      }
      std::vector<float> yv(static_cast<size_t>(n), 0.0f), xv;
      if (a != 0.0f) load_f32(y, i0, n, yv.data());
      if (x.defined()) {
        xv.resize(size_t(n));
        load_f32(x, i0, n, xv.data());
        for (int64_t j = 0; j < n; ++j) yv[size_t(j)] = (a == 0.0f ? 0.0f : a * yv[size_t(j)]) + b * xv[size_t(j)];
      } else {
        for (int64_t j = 0; j < n; ++j) yv[size_t(j)] = a == 0.0f ? 0.0f : a * yv[size_t(j)];
      }
      store_f32(yv.data(), n, y, i0);
    });
    return true;
  };
  task.cost = y.numel();
  return task;
}

Task<Tensor> sum_squares(const std::vector<Tensor>& tensors) {
  const char* op = "sumSquares";
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string name = "tensors[" + std::to_string(i) + "]";
    check_float(op, name.c_str(), tensors[i]);
    if (tensors[i].device() != tensors[0].device())
      fail(Code::Device, std::string(op) + ": expected every tensor on " + tensors[0].device().str() +
                             " (like tensors[0]) but " + name + " is on " + tensors[i].device().str());
  }
  if (!tensors.empty() && tensors[0].device().kind == Device::CUDA)
    return cuda_path::sum_squares(tensors, tensors[0].device());
  Task<Tensor> task = [tensors] {
    OpTimer timer("sumSquares");
    double total = 0;
    for (const Tensor& t : tensors) {
      const int64_t n = t.numel();
      const int64_t blocks = (n + kBlock - 1) / kBlock;
      std::vector<double> partial(static_cast<size_t>(blocks), 0.0);
      parallel_for(blocks, 1, [&](int64_t b0, int64_t b1) {
        std::vector<float> v(static_cast<size_t>(kBlock));
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t i0 = b * kBlock, m = std::min(kBlock, n - i0);
          load_f32(t, i0, m, v.data());
          double s = 0;
          for (int64_t j = 0; j < m; ++j) s += double(v[size_t(j)]) * double(v[size_t(j)]);
          partial[size_t(b)] = s;
        }
      });
      for (double s : partial) total += s;
    }
    return scalar_f32(float(total));
  };
  task.cost = total_numel(tensors);
  return task;
}

}  // namespace moe::ops
