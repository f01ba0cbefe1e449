// The C ABI (cpp/include/moe_ep.h) over the core: every entry point catches
// everything and turns it into a status plus a per-thread message.
#include "moe_ep.h"

#include <cstring>
#include <string>

#include "../core/error.h"
#include "../core/host_copy.h"
#include "../core/size.h"
#include "../core/tensor.h"
#include "../core/cuda_probe.h"
#include "../ops/copy.h"
#include "../ops/gate.h"
#include "capi_ops.h"

struct moe_tensor_s {
  moe::Tensor t;
};

namespace moe::capi {

thread_local std::string last_error;

moe_status status_of(Code code) { return static_cast<moe_status>(static_cast<int>(code)); }

DType dtype_of(moe_dtype d) {
  switch (d) {
    case MOE_FLOAT32:
      return DType::F32;
    case MOE_BFLOAT16:
      return DType::BF16;
    case MOE_FLOAT16:
      return DType::F16;
    case MOE_INT32:
      return DType::I32;
    case MOE_INT64:
      return DType::I64;
  }
  fail(Code::Dtype, "expected a moe_dtype in [0, 4] but received " + std::to_string(int(d)));
}

moe_dtype abi_dtype(DType d) {
  switch (d) {
    case DType::F32:
      return MOE_FLOAT32;
    case DType::BF16:
      return MOE_BFLOAT16;
    case DType::F16:
      return MOE_FLOAT16;
    case DType::I32:
      return MOE_INT32;
    case DType::I64:
      return MOE_INT64;
  }
  return MOE_FLOAT32;
}

const Tensor& in(moe_tensor t, const char* name) {
  if (!t) fail(Code::Value, std::string("expected ") + name + " to be a tensor but received NULL");
  return t->t;
}

Tensor optional_in(moe_tensor t) { return t ? t->t : Tensor(); }

void out(moe_tensor* slot, Tensor t) {
  if (slot) *slot = new moe_tensor_s{std::move(t)};
}

Device device_of(const char* name) { return name ? Device::parse(name) : Device{}; }

ops::ActivationKind activation_of(const moe_activation& kind, const char* op) {
  switch (enum_value(kind)) {
    case MOE_ACT_RELU:
      return ops::ActivationKind::Relu;
    case MOE_ACT_GELU:
      return ops::ActivationKind::Gelu;
    case MOE_ACT_SILU:
      return ops::ActivationKind::Silu;
    case MOE_ACT_SWIGLU:
      return ops::ActivationKind::Swiglu;
    case MOE_ACT_GEGLU:
      return ops::ActivationKind::Geglu;
  }
  fail(Code::Value, std::string(op) +
                        ": expected an activation in [0, 4] (MOE_ACT_RELU ... MOE_ACT_GEGLU) but received " +
                        std::to_string(enum_value(kind)));
}

}  // namespace moe::capi

using namespace moe;
using namespace moe::capi;

extern "C" {

int moe_abi_version(void) { return MOE_EP_ABI_VERSION; }

const char* moe_last_error(void) { return last_error.c_str(); }

const char* moe_status_name(moe_status status) {
  if (status == MOE_OK) return "OK";
  if (status < MOE_ERR_SHAPE || status > MOE_ERR_NCCL_UNAVAILABLE) return "ERR_MOE_UNKNOWN";
  return code_name(static_cast<Code>(static_cast<int>(status)));
}

moe_status moe_tensor_create(moe_dtype dtype, int ndim, const int64_t* shape, const void* data, moe_tensor* out_t) {
  return moe_tensor_create_on(dtype, ndim, shape, data, nullptr, out_t);
}

moe_status moe_tensor_create_on(moe_dtype dtype, int ndim, const int64_t* shape, const void* data, const char* device,
                                moe_tensor* out_t) {
  return guarded([&] {
    clear({out_t});
    if (!out_t) fail(Code::Value, "moe_tensor_create: expected an out pointer but received NULL");
    if (ndim < 0 || ndim > 8 || (ndim > 0 && !shape))
      fail(Code::Shape,
           "moe_tensor_create: expected 0 to 8 dimensions and a shape but received ndim " + std::to_string(ndim));
    Shape s(shape, shape + ndim);
    DType dt = dtype_of(dtype);
    Device dev = device_of(device);
    Tensor t = data ? from_host(dt, s, dev, data, dt, shape_numel(s)) : zeros(dt, s, dev);
    out(out_t, std::move(t));
  });
}

void moe_tensor_free(moe_tensor t) { delete t; }

moe_status moe_tensor_info(moe_tensor t, moe_dtype* dtype, int* ndim, int64_t* shape, int max_dims) {
  return guarded([&] {
    const Tensor& x = in(t, "t");
    if (dtype) *dtype = abi_dtype(x.dtype);
    if (ndim) *ndim = x.ndim();
    if (shape) {
      if (max_dims < x.ndim())
        fail(Code::Shape, "moe_tensor_info: expected room for " + std::to_string(x.ndim()) +
                              " dimensions but received max_dims " + std::to_string(max_dims));
      for (int i = 0; i < x.ndim(); ++i) shape[i] = x.dim(i);
    }
  });
}

moe_status moe_tensor_device(moe_tensor t, char* buf, size_t buf_size) {
  return guarded([&] {
    const std::string name = in(t, "t").device().str();
    if (!buf || buf_size < name.size() + 1)
      fail(Code::Value, "moe_tensor_device: expected a buffer of at least " + std::to_string(name.size() + 1) +
                            " bytes but received " + std::to_string(buf ? buf_size : 0));
    std::memcpy(buf, name.c_str(), name.size() + 1);
  });
}

moe_status moe_tensor_to_device(moe_tensor t, const char* device, moe_tensor* out_t) {
  return guarded([&] {
    clear({out_t});
    out(out_t, ops::to_device(in(t, "t"), device_of(device))());
  });
}

moe_status moe_tensor_clone(moe_tensor t, moe_tensor* out_t) {
  return guarded([&] {
    clear({out_t});
    out(out_t, ops::clone(in(t, "t"))());
  });
}

int moe_cuda_device_count(void) {
  try {
    const CudaStatus& s = cuda_status();
    return s.available ? s.device_count : 0;
  } catch (...) {
    return 0;
  }
}

moe_status moe_tensor_read(moe_tensor t, moe_dtype as, void* dst, size_t dst_bytes) {
  return guarded([&] {
    const Tensor& x = in(t, "t");
    DType dt = dtype_of(as);
    const size_t need = checked_bytes(x.numel(), dt);
    if (!dst || dst_bytes < need)
      fail(Code::Shape, "moe_tensor_read: expected a buffer of " + std::to_string(need) + " bytes but received " +
                            std::to_string(dst ? dst_bytes : 0));
    to_host(x, dst, dt);
  });
}

moe_status moe_gate(moe_tensor x, moe_tensor wg, moe_tensor* logits) {
  return guarded([&] {
    clear({logits});
    out(logits, ops::gate(in(x, "x"), in(wg, "wg"))());
  });
}

}  // extern "C"
