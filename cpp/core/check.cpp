#include "check.h"

#include <cmath>
#include <sstream>

namespace moe {

std::string num_str(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

void check_finite(const char* op, const char* name, const float* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i]))
      fail(Code::NonFinite, std::string(op) + ": expected finite values in " + name + " but element " +
                                std::to_string(i) + " is " + num_str(p[i]));
}

void check_defined(const char* op, const char* name, const Tensor& t) {
  if (!t.defined())
    fail(Code::Disposed, std::string(op) + ": expected " + name + " to be a live tensor but received a disposed one");
}

void check_dtype(const char* op, const char* name, const Tensor& t, std::initializer_list<DType> allowed) {
  check_defined(op, name, t);
  for (DType d : allowed)
    if (t.dtype == d) return;
  std::string want;
  size_t i = 0;
  for (DType d : allowed) want += std::string(i++ ? (i == allowed.size() ? " or " : ", ") : "") + dtype_name(d);
  fail(Code::Dtype,
       std::string(op) + ": expected " + name + " of dtype " + want + " but received " + dtype_name(t.dtype));
}

void check_float(const char* op, const char* name, const Tensor& t) {
  check_dtype(op, name, t, {DType::F32, DType::BF16, DType::F16});
}

void check_shape(const char* op, const char* name, const Tensor& t, const std::vector<int64_t>& dims,
                 const char* pattern) {
  check_defined(op, name, t);
  bool ok = t.shape.size() == dims.size();
  for (size_t i = 0; ok && i < dims.size(); ++i) ok = dims[i] < 0 || dims[i] == t.shape[i];
  if (ok) return;
  std::string want = pattern;
  bool concrete = false;
  for (int64_t d : dims) concrete |= d >= 0;
  if (concrete) {
    want += " = [";
    for (size_t i = 0; i < dims.size(); ++i)
      want += (i ? ", " : "") + (dims[i] < 0 ? std::string("*") : std::to_string(dims[i]));
    want += "]";
  }
  fail(Code::Shape,
       std::string(op) + ": expected " + name + " of shape " + want + " but received " + shape_str(t.shape));
}

void check_same_device(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
  const std::pair<const char*, const Tensor*>* first = nullptr;
  for (const auto& p : tensors) {
    if (!p.second->defined()) continue;
    if (!first) {
      first = &p;
      continue;
    }
    if (p.second->device() != first->second->device())
      fail(Code::Device, std::string(op) + ": expected " + p.first + " on " + first->second->device().str() +
                             " (where " + first->first + " is) but received a tensor on " + p.second->device().str());
  }
}

void check_option(const char* op, const char* name, bool ok, const std::string& expected, const std::string& got) {
  if (!ok) fail(Code::Value, std::string(op) + ": expected " + name + " to be " + expected + " but received " + got);
}

}  // namespace moe
