#include "tensor.h"

#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "cuda_device.h"
#include "error.h"
#include "host_allocator.h"
#include "size.h"

namespace moe {
namespace {

constexpr int kMaxCudaDevices = 16;
struct Counters {
  std::atomic<int64_t> tensors{0}, bytes{0}, peak{0};
  std::mutex mutex;  // guards the rest
  int64_t made = 0;
  Storage* oldest = nullptr;  // live storages, linked in allocation order
  Storage* newest = nullptr;
};
Counters cpu_counters;
std::array<Counters, kMaxCudaDevices> cuda_counters;

Counters& counters_for(Device d) { return d.kind == Device::CPU ? cpu_counters : cuda_counters.at(size_t(d.index)); }

void count(Device d, int64_t tensors, int64_t bytes) {
  Counters& c = counters_for(d);
  c.tensors += tensors;
  int64_t now = (c.bytes += bytes);
  int64_t peak = c.peak.load();
  while (now > peak && !c.peak.compare_exchange_weak(peak, now)) {
  }
}

}  // namespace

std::string Device::str() const { return kind == CPU ? "cpu" : "cuda:" + std::to_string(index); }

Device Device::parse(const std::string& text) {
  if (text == "cpu") return {CPU, 0};
  if (text == "cuda") return {CUDA, 0};
  if (text.rfind("cuda:", 0) == 0 && text.size() > 5 && text.size() < 8) {
    int index = 0;
    for (size_t i = 5; i < text.size(); ++i) {
      if (text[i] < '0' || text[i] > '9') goto bad;
      index = index * 10 + (text[i] - '0');
    }
    if (index < kMaxCudaDevices) return {CUDA, index};
  }
bad:
  fail(Code::Device, "expected a device of \"cpu\" or \"cuda:N\" (N < 16) but received \"" + text + "\"");
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  void* p;
  if (device.kind == Device::CUDA) {
    // Stream-ordered, on the device's compute stream (cuda_device.h).
    cuda::require(device, "cannot allocate a tensor on " + device.str());
    p = cuda::allocate(bytes, device);
  } else {
    p = host_alloc(bytes);
    if (!p) fail(Code::Value, "out of host memory allocating " + std::to_string(bytes) + " bytes");
  }
  Storage* s = new Storage(p, bytes, device);
  Counters& c = counters_for(device);
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    s->serial_ = c.made++;
    s->prev_ = c.newest;
    (c.newest ? c.newest->next_ : c.oldest) = s;
    c.newest = s;
  }
  count(device, 1, int64_t(bytes));
  return std::shared_ptr<Storage>(s);
}

Storage::~Storage() {
  if (device_.kind == Device::CUDA)
    cuda::release(data_, device_);
  else
    host_free(data_, bytes_, !abandoned_.load(std::memory_order_relaxed));
  Counters& c = counters_for(device_);
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    (prev_ ? prev_->next_ : c.oldest) = next_;
    (next_ ? next_->prev_ : c.newest) = prev_;
  }
  count(device_, -1, -int64_t(bytes_));
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

int64_t shape_numel(const Shape& shape) { return checked_numel(shape); }

std::string Tensor::describe() const {
  return std::string(dtype_name(dtype)) + " " + shape_str(shape) + " on " + device().str();
}

Tensor empty(DType dtype, const Shape& shape, Device device) {
  const size_t bytes = checked_bytes(checked_numel(shape), dtype);
  Tensor t;
  t.dtype = dtype;
  t.shape = shape;
  t.storage = Storage::allocate(bytes, device);
  return t;
}

Tensor zeros(DType dtype, const Shape& shape, Device device) {
  Tensor t = empty(dtype, shape, device);
  if (device.kind == Device::CUDA)
    cuda::memset_async(t.raw(), 0, t.bytes(), device);
  else
    std::memset(t.raw(), 0, t.bytes());
  note_zeroed(t.bytes());
  return t;
}

Tensor scalar_f32(float value) {
  Tensor t = empty(DType::F32, {});
  *t.data<float>() = value;
  return t;
}

MemoryStats memory_stats(Device device) {
  Counters& c = counters_for(device);
  MemoryStats s{c.tensors.load(), c.bytes.load(), c.peak.load(),
                device.kind == Device::CPU ? host_cached_bytes() : cuda::cached_bytes(device)};
  std::lock_guard<std::mutex> lock(c.mutex);
  s.made = c.made;
  return s;
}

MemoryStats memory_stats(Device device, int64_t made_since) {
  MemoryStats s = memory_stats(device);
  s.tensors = s.bytes = 0;
  Counters& c = counters_for(device);
  std::lock_guard<std::mutex> lock(c.mutex);
  for (const Storage* t = c.newest; t && t->serial_ >= made_since; t = t->prev_) {
    ++s.tensors;
    s.bytes += int64_t(t->bytes_);
  }
  return s;
}

}  // namespace moe
