#include "copy.h"

#include <cstring>

#include "../core/check.h"
#include "../core/cuda_device.h"

namespace moe::ops {

Task<Tensor> to_device(const Tensor& t, Device target) {
  check_defined("to", "the tensor", t);
  if (target.kind == Device::CUDA) cuda::require(target, "to: cannot move a tensor to " + target.str());
  return [t, target]() -> Tensor {
    const Device source = t.device();
    if (source == target) return t;  // shares the storage
    Tensor out = empty(t.dtype, t.shape, target);
    const size_t bytes = t.bytes();
    if (source.kind == Device::CPU) {
      cuda::copy_async(out.raw(), t.raw(), bytes, target);
      // The host storage must outlive the copy; releasing it touches no CUDA.
      cuda::after_stream(target, [keep = t.storage] {});
    } else if (target.kind == Device::CPU) {
      cuda::download(out.raw(), t.raw(), bytes, source);
    } else {
      cuda::stream_waits_for(target, source);  // the source's data is ready
      cuda::copy_peer_async(out.raw(), target, t.raw(), source, bytes);
      cuda::stream_waits_for(source, target);  // the source is freed (on its stream) only after the copy
    }
    return out;
  };
}

Task<Tensor> clone(const Tensor& t) {
  check_defined("clone", "the tensor", t);
  return [t] {
    Tensor out = empty(t.dtype, t.shape, t.device());
    if (t.device().kind == Device::CUDA)
      cuda::copy_async(out.raw(), t.raw(), t.bytes(), t.device());
    else if (t.bytes() > 0)
      std::memcpy(out.raw(), t.raw(), t.bytes());
    return out;
  };
}

}  // namespace moe::ops
