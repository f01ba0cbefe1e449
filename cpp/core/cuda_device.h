// Devices as the core sees them (docs/architecture.md#execution-model), through
// the launchers of cuda/launchers.h only (no CUDA headers here):
//
// - per device, created on first use: one compute stream and one
//   communication stream (non-blocking), a status word for errors found by
//   kernels, and the default memory pool set to keep freed memory;
// - device tensors come from the stream-ordered allocator on the compute
//   stream (cudaMallocAsync / cudaFreeAsync), so a tensor freed while queued
//   kernels still read it lives until they finish;
// - ops launch on the compute stream and return at once; reading data back
//   (and synchronize) waits for the stream, then reads the status word: a
//   check that fired becomes the op's typed error there (named through a
//   CheckRegistry), and the word is reset.
//
// On machines without CUDA every entry point below refuses
// (ERR_MOE_CUDA_UNAVAILABLE with the reason) before calling CUDA.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "error.h"
#include "tensor.h"

namespace moe::cuda {

// The device can take tensors: CUDA is built and available (else
// ERR_MOE_CUDA_UNAVAILABLE with the reason) and the index names a device that
// exists (else ERR_MOE_DEVICE). `what` starts the message.
void require(Device device, const std::string& what);

// Throws for a launcher's return code (0 returns): CUDA errors and refused
// arguments are ERR_MOE_INTERNAL, unsupported arguments ERR_MOE_UNSUPPORTED,
// a build without CUDA ERR_MOE_CUDA_UNAVAILABLE. `op` starts the message.
void check(int rc, const std::string& op, Device device);

// For the calling thread: makes `device` current and hands out its streams
// and status word. Every op on a CUDA tensor opens one before it launches.
class Scope {
 public:
  explicit Scope(Device device);
  void* stream() const { return compute_; }
  void* comm_stream() const { return comm_; }
  void* status() const { return status_; }
  Device device() const { return device_; }
  // A check whose failure the next synchronisation reports as `code` with
  // the message before + <detail> + after (detail: an element index or a
  // count, as the check's launcher says). Returns the tag for the launcher.
  uint32_t add_check(Code code, std::string before, std::string after) const;

 private:
  Device device_;
  void* compute_;
  void* comm_;
  void* status_;
};

// Stream-ordered device memory on the compute stream (bytes == 0: null).
void* allocate(size_t bytes, Device device);
void release(void* ptr, Device device) noexcept;
void memset_async(void* ptr, int value, size_t bytes, Device device);

// Host -> device: the bytes are copied into a staging buffer first, which
// lives until the stream has read it, so `src` may go at once.
void upload(void* dst, const void* src, size_t bytes, Device device);
// The same with a staging buffer the caller hands over.
void upload(void* dst, std::vector<uint8_t> staging, Device device);
// Enqueues a copy between device memory (or registered / staging host memory
// kept alive by the caller, see after_stream) on the device's compute stream.
void copy_async(void* dst, const void* src, size_t bytes, Device device);
// Device to device across devices, on `dst_device`'s compute stream; the
// caller orders the two streams (stream_waits_for).
void copy_peer_async(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
// Device -> host: synchronises the device (reporting what its kernels found),
// then copies.
void download(void* dst, const void* src, size_t bytes, Device device);
// Runs `fn` on a CUDA host thread once the compute stream reaches this point
// (keeping host memory alive until a copy has read it). `fn` must not call
// CUDA, so it may release host memory only, never a device tensor.
void after_stream(Device device, std::function<void()> fn);

// Ordering between the two streams of a device.
void comm_waits_for_compute(Device device);
void compute_waits_for_comm(Device device);
// Work enqueued on `waiter`'s compute stream from now on starts after the
// work enqueued so far on `signaler`'s (devices may differ).
void stream_waits_for(Device waiter, Device signaler);

// Waits for both streams of the device, then reports the first check that
// fired since the last synchronisation (as that check's error) and resets it.
void synchronize(Device device);
// synchronize() on every device used so far.
void synchronize_all();

// A few values that queued work produces early, read back without waiting for
// the work queued after them (permute with a capacity reads its row count
// while its rows move). The device has one such buffer: constructing a
// Readback waits for the previous holder. The op's kernels write into
// device_words() (pinned, device-mapped host memory): words 0 and 1 the status
// word as the writing kernel sees it (tag, detail), then the op's values; the
// op records event() right after that kernel. wait() blocks until the event,
// reports the first check that fired in the work queued before it, as
// synchronize() does (checks registered after the Readback was made stay for
// the next synchronisation), and returns the words.
class Readback {
 public:
  static constexpr int kWords = 8;
  explicit Readback(Device device);
  ~Readback();
  Readback(const Readback&) = delete;
  Readback& operator=(const Readback&) = delete;
  int64_t* device_words() const { return static_cast<int64_t*>(words_device_); }
  void* event() const { return event_; }
  const int64_t* wait();

 private:
  Device device_;
  void* lock_;  // the device's buffer mutex, held from construction to destruction
  uint64_t mark_;
  void* host_;
  void* words_device_;
  void* event_;
  int64_t words_[kWords];
};

// Freed bytes the device's pool keeps for reuse (0 for a device not used yet).
int64_t cached_bytes(Device device);
// Returns every used device's unused pool memory to the driver.
void empty_cache();

// A timing event recorded on the compute stream when constructed.
class TimingEvent {
 public:
  explicit TimingEvent(Device device);
  ~TimingEvent();
  TimingEvent(const TimingEvent&) = delete;
  TimingEvent& operator=(const TimingEvent&) = delete;
  // Milliseconds from `start` to this event; waits for this event.
  double elapsed_ms_since(const TimingEvent& start) const;
  Device device() const { return device_; }

 private:
  Device device_;
  void* event_ = nullptr;
};

// The launchers' dtype code of a float dtype (MOE_CUDA_F32 / BF16 / F16).
int dtype_code(DType dtype);

}  // namespace moe::cuda
