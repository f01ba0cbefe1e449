// Checked size arithmetic: every count or byte size computed from a caller's
// shapes or options goes through here before it sizes an allocation, a loop or
// an index, so that a crafted shape is refused instead of wrapping around.
//
// The limits: an element count (and the product of a shape's non-zero
// dimensions) is at most 2^53 - 1, the largest integer a JavaScript number
// holds exactly; a byte count is at most 2^53 - 1 too, which also fits size_t.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "dtype.h"
#include "error.h"

namespace moe {

constexpr int64_t kMaxElements = (int64_t(1) << 53) - 1;
constexpr int64_t kMaxBytes = (int64_t(1) << 53) - 1;
extern const char* const kMaxElementsText;  // "2^53-1"

// a * b for non-negative a and b, or ERR_MOE_VALUE when it exceeds `limit`:
// "<op>: expected <what> of at most <limit> but <a> * <b> exceeds it".
int64_t checked_mul(const char* op, const char* what, int64_t a, int64_t b, int64_t limit = kMaxElements);
// a + b for non-negative a and b, the same way.
int64_t checked_add(const char* op, const char* what, int64_t a, int64_t b, int64_t limit = kMaxElements);

// The element count of a shape: every dimension >= 0 and the product of the
// non-zero ones at most 2^53 - 1 (so any sub-product of a tensor's dimensions
// fits too, even when another dimension is 0), or ERR_MOE_SHAPE naming the limit.
int64_t checked_numel(const std::vector<int64_t>& shape);

// numel * dtype_size(dtype) in bytes, at most kMaxBytes, or ERR_MOE_SHAPE.
size_t checked_bytes(int64_t numel, DType dtype);

// v as an int (the BLAS and the int32 row maps take ints), or ERR_MOE_SHAPE.
int checked_int(const char* op, const char* what, int64_t v);

// a * b, saturating at INT64_MAX: for work estimates (chunk sizes), never sizes.
int64_t saturating_mul(int64_t a, int64_t b);

}  // namespace moe
