// Argument checks shared by every op. Each failure names the op, the argument,
// what was expected and what was received.
#pragma once
#include <initializer_list>
#include <string>
#include <vector>

#include "error.h"
#include "tensor.h"

namespace moe {

// A defined tensor (a disposed one arrives as undefined).
void check_defined(const char* op, const char* name, const Tensor& t);
void check_dtype(const char* op, const char* name, const Tensor& t, std::initializer_list<DType> allowed);
void check_float(const char* op, const char* name, const Tensor& t);
// dims: the expected shape, -1 for "any"; `pattern` names the dims, e.g. "[tokens, dModel]".
void check_shape(const char* op, const char* name, const Tensor& t, const std::vector<int64_t>& dims,
                 const char* pattern);
// All tensors on one device, and that device usable by this build.
void check_same_device(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors);
// A finite positive/non-negative scalar option.
void check_option(const char* op, const char* name, bool ok, const std::string& expected, const std::string& got);

// Every value finite, or ERR_MOE_NONFINITE naming the first bad element.
void check_finite(const char* op, const char* name, const float* p, int64_t n);

std::string num_str(double v);

}  // namespace moe
