#include "size.h"

#include <climits>
#include <string>

#include "tensor.h"

namespace moe {

const char* const kMaxElementsText = "2^53-1";

namespace {

std::string limit_str(int64_t limit) {
  if (limit == kMaxElements) return kMaxElementsText;
  return std::to_string(limit);
}

}  // namespace

int64_t checked_mul(const char* op, const char* what, int64_t a, int64_t b, int64_t limit) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r) || r > limit)
    fail(Code::Value, std::string(op) + ": expected " + what + " of at most " + limit_str(limit) + " but " +
                          std::to_string(a) + " * " + std::to_string(b) + " exceeds it");
  return r;
}

int64_t checked_add(const char* op, const char* what, int64_t a, int64_t b, int64_t limit) {
  int64_t r;
  if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r) || r > limit)
    fail(Code::Value, std::string(op) + ": expected " + what + " of at most " + limit_str(limit) + " but " +
                          std::to_string(a) + " + " + std::to_string(b) + " exceeds it");
  return r;
}

int64_t checked_numel(const std::vector<int64_t>& shape) {
  int64_t nonzero = 1;
  bool empty = false;
  for (int64_t d : shape) {
    if (d < 0) fail(Code::Shape, "expected non-negative dimensions but received shape " + shape_str(shape));
    if (d == 0) {
      empty = true;
      continue;
    }
    if (__builtin_mul_overflow(nonzero, d, &nonzero) || nonzero > kMaxElements)
      fail(Code::Shape, std::string("expected a shape whose dimensions multiply to at most ") + kMaxElementsText +
                            " (zero dimensions aside) but received shape " + shape_str(shape));
  }
  return empty ? 0 : nonzero;
}

size_t checked_bytes(int64_t numel, DType dtype) {
  int64_t bytes;
  const int64_t size = int64_t(dtype_size(dtype));
  if (numel < 0 || __builtin_mul_overflow(numel, size, &bytes) || bytes > kMaxBytes ||
      uint64_t(bytes) > uint64_t(SIZE_MAX))
    fail(Code::Shape, std::string("expected a tensor of at most ") + kMaxElementsText + " bytes but " +
                          std::to_string(numel) + " elements of " + dtype_name(dtype) + " take " +
                          std::to_string(numel) + " * " + std::to_string(size));
  return size_t(bytes);
}

int checked_int(const char* op, const char* what, int64_t v) {
  if (v < 0 || v > INT_MAX)
    fail(Code::Shape, std::string(op) + ": expected " + what + " in [0, " + std::to_string(INT_MAX) +
                          "] but received " + std::to_string(v));
  return int(v);
}

int64_t saturating_mul(int64_t a, int64_t b) {
  int64_t r;
  return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}

}  // namespace moe
