#include "host_copy.h"

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_device.h"
#include "error.h"
#include "floats.h"

namespace moe {
namespace {

void convert(const void* src, DType sd, void* dst, DType dd, int64_t n, const char* what) {
  if (n == 0) return;  // an empty JS array may have no buffer at all: src is then null
  if (sd == dd) {
    std::memcpy(dst, src, size_t(n) * dtype_size(sd));
    return;
  }
  if (is_float(sd) && is_float(dd)) {
    std::vector<float> tmp;
    const float* f = static_cast<const float*>(src);
    if (sd != DType::F32) {
      tmp.resize(size_t(n));
      to_f32(src, sd, tmp.data(), n);
      f = tmp.data();
    }
    from_f32(f, dst, dd, n);
    return;
  }
  if (sd == DType::I32 && dd == DType::I64) {
    for (int64_t i = 0; i < n; ++i) static_cast<int64_t*>(dst)[i] = static_cast<const int32_t*>(src)[i];
    return;
  }
  if (sd == DType::I64 && dd == DType::I32) {
    // Narrowing never wraps: a value int32 cannot hold is refused, naming the first one.
    const int64_t* in = static_cast<const int64_t*>(src);
    for (int64_t i = 0; i < n; ++i) {
      if (in[i] < INT32_MIN || in[i] > INT32_MAX)
        fail(Code::Value, std::string(what) + ": expected int64 values in [-2147483648, 2147483647] for int32 but " +
                              "element " + std::to_string(i) + " is " + std::to_string(in[i]));
    }
    for (int64_t i = 0; i < n; ++i) static_cast<int32_t*>(dst)[i] = int32_t(in[i]);
    return;
  }
  fail(Code::Dtype, std::string(what) + ": expected data of a type convertible to " + dtype_name(dd) +
                        " but received " + dtype_name(sd));
}

}  // namespace

Tensor from_host(DType dtype, const Shape& shape, Device device, const void* src, DType src_dtype, int64_t count) {
  Tensor t = empty(dtype, shape, device);
  if (count != t.numel())
    fail(Code::Shape, "tensor: expected " + std::to_string(t.numel()) + " elements for shape " + shape_str(shape) +
                          " but received " + std::to_string(count));
  if (device.kind == Device::CUDA) {
    // Converted on the host, then copied from a staging buffer that lives
    // until the stream has read it: the caller's memory may go at once.
    std::vector<uint8_t> host(t.bytes());
    convert(src, src_dtype, host.data(), dtype, count, "tensor");
    cuda::upload(t.raw(), std::move(host), device);
    return t;
  }
  convert(src, src_dtype, t.raw(), dtype, count, "tensor");
  return t;
}

void to_host(const Tensor& t, void* dst, DType dst_dtype) {
  if (t.device().kind == Device::CUDA) {
    // Waits for the device (and reports what its kernels found), then copies.
    std::vector<uint8_t> host(t.bytes());
    cuda::download(host.data(), t.raw(), host.size(), t.device());
    convert(host.data(), t.dtype, dst, dst_dtype, t.numel(), "read");
    return;
  }
  convert(t.raw(), t.dtype, dst, dst_dtype, t.numel(), "read");
}

}  // namespace moe
