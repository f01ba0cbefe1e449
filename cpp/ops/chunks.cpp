#include "chunks.h"

#include <cstring>
#include <string>
#include <vector>

#include "../core/check.h"
#include "../core/parallel.h"
#include "cuda_ops.h"

namespace moe::ops {

Task<Tensor> chunk_transpose(const Tensor& x, const Tensor& counts) {
  const char* op = "chunkTranspose";
  check_defined(op, "x", x);
  if (x.ndim() < 1)
    fail(Code::Shape, std::string(op) + ": expected x of shape [rows, ...] but received " + shape_str(x.shape));
  check_dtype(op, "counts", counts, {DType::I32});
  check_shape(op, "counts", counts, {-1, -1}, "[A, B]");
  check_same_device(op, {{"x", &x}, {"counts", &counts}});
  if (x.device().kind == Device::CUDA) return cuda_path::chunk_transpose(x, counts);
  return [op, x, counts] {
    const int64_t A = counts.dim(0), B = counts.dim(1), R = x.dim(0);
    const int32_t* c = counts.data<int32_t>();
    // Source offsets in a-major order.
    std::vector<int64_t> src(static_cast<size_t>(A * B));
    int64_t off = 0;
    for (int64_t i = 0; i < A * B; ++i) {
      if (c[i] < 0)
        fail(Code::Value, std::string(op) + ": expected counts >= 0 but counts[" + std::to_string(i / B) + ", " +
                              std::to_string(i % B) + "] is " + std::to_string(c[i]));
      src[size_t(i)] = off;
      if (off <= R) off += c[i];  // past R it is reported below; stopping there keeps the sum from overflowing
    }
    if (off != R)
      fail(Code::Value, std::string(op) + ": expected counts to sum to the " + std::to_string(R) +
                            " rows of x but they sum to " + (off > R ? "more" : std::to_string(off)));
    Tensor out = empty(x.dtype, x.shape, x.device());
    const size_t row_bytes = R ? x.bytes() / size_t(R) : 0;
    const char* in = static_cast<const char*>(x.raw());
    char* o = static_cast<char*>(out.raw());
    // Destination chunks in b-major order, each a contiguous copy.
    std::vector<int64_t> dst_off(static_cast<size_t>(A * B)), order(static_cast<size_t>(A * B));
    int64_t d = 0, n = 0;
    // A zero in [A, B] means no chunks, however large the other dimension claims to be.
    for (int64_t b = 0; b < (A == 0 ? 0 : B); ++b)
      for (int64_t a = 0; a < A; ++a) {
        order[size_t(n++)] = a * B + b;
        dst_off[size_t(a * B + b)] = d;
        d += c[a * B + b];
      }
    parallel_for(A * B, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t k = order[size_t(i)];
        std::memcpy(o + size_t(dst_off[size_t(k)]) * row_bytes, in + size_t(src[size_t(k)]) * row_bytes,
                    size_t(c[k]) * row_bytes);
      }
    });
    return out;
  };
}

}  // namespace moe::ops
