// Tensors of the core: a shared storage, a dtype, a shape and a device.
// Row-major and contiguous; copies are explicit.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dtype.h"

namespace moe {

struct Device {
  enum Kind { CPU, CUDA } kind = CPU;
  int index = 0;
  std::string str() const;
  static Device parse(const std::string& text);  // "cpu", "cuda", "cuda:N"; throws ERR_MOE_DEVICE
  bool operator==(const Device& o) const { return kind == o.kind && (kind == CPU || index == o.index); }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

struct MemoryStats;
MemoryStats memory_stats(Device device, int64_t made_since);

class Storage {
 public:
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }
  // Host memory goes back to the system, not to the allocator's cache, when the last reference
  // goes: for storage whose owner was collected without dispose(), so that memory a program forgets
  // does not pile up in the cache (host_allocator.h).
  void abandon() { abandoned_.store(true, std::memory_order_relaxed); }

 private:
  friend MemoryStats memory_stats(Device device, int64_t made_since);
  Storage(void* data, size_t bytes, Device device) : data_(data), bytes_(bytes), device_(device) {}
  void* data_;
  size_t bytes_;
  Device device_;
  std::atomic<bool> abandoned_{false};
  int64_t serial_ = 0;  // its place among the storages ever allocated on its device
  // The device's live storages, oldest first (memory_stats with made_since).
  Storage* prev_ = nullptr;
  Storage* next_ = nullptr;
};

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& shape);  // "[2, 3]"
// The element count; refuses negative dimensions and counts past 2^53 - 1 (size.h).
int64_t shape_numel(const Shape& shape);

struct Tensor {
  std::shared_ptr<Storage> storage;
  DType dtype = DType::F32;
  Shape shape;

  bool defined() const { return storage != nullptr; }
  Device device() const { return storage ? storage->device() : Device{}; }
  int64_t numel() const { return shape_numel(shape); }
  int64_t dim(int i) const { return shape.at(size_t(i)); }
  int ndim() const { return int(shape.size()); }
  size_t bytes() const { return size_t(numel()) * dtype_size(dtype); }
  void* raw() const { return storage ? storage->data() : nullptr; }
  template <class T>
  T* data() const {
    return static_cast<T*>(raw());
  }
  std::string describe() const;  // "float32 [2, 3] on cpu"
};

// Allocation; the contents of empty() are unspecified.
Tensor empty(DType dtype, const Shape& shape, Device device = {});
Tensor zeros(DType dtype, const Shape& shape, Device device = {});
Tensor scalar_f32(float value);

struct MemoryStats {
  int64_t tensors = 0;  // live storages
  int64_t bytes = 0;
  int64_t peak_bytes = 0;
  int64_t cached_bytes = 0;  // freed blocks the allocator keeps for reuse
  int64_t made = 0;          // storages ever allocated on the device
};
MemoryStats memory_stats(Device device);
// As above, but tensors and bytes count only the live storages allocated
// since `made` was `made_since`: what a stretch of work left behind, whatever
// older storages are freed meanwhile (the test suite's leak checks).
MemoryStats memory_stats(Device device, int64_t made_since);

}  // namespace moe
