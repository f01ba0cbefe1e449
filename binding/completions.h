// How results computed on other threads reach an environment's JS thread
// (the main thread's or a worker's), and how an environment that goes away
// leaves: its JS values stay with it, and nothing calls into it afterwards.
#pragma once
#include <napi.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace moe::binding {

// One async call's result on its way to JS: made on the JS thread, filled on
// another, delivered on the JS thread. It may be destroyed on any thread, so
// it holds no JS values: those live in a JsSide the environment owns.
class Completion {
 public:
  virtual ~Completion() = default;
  virtual void deliver(Napi::Env env) = 0;  // JS thread; settles the call's Promise
  bool on_stream = false;                   // queued on the CPU stream (for its ordering)
};

// A call's JS values (its Promise, the conversion of its result): owned by the
// environment (AddonData::pending), touched only on its JS thread.
class JsSide {
 public:
  virtual ~JsSide() = default;
};

// Per environment: the queue through which other threads hand Completions to
// the JS thread, woken by one threadsafe function per batch. Threads hold it
// by shared_ptr, so it outlives the environment; once closed, a posted
// Completion is destroyed on the posting thread and nothing reaches JS.
class Mailbox : public std::enable_shared_from_this<Mailbox> {
 public:
  // JS thread, at start-up.
  static std::shared_ptr<Mailbox> create(Napi::Env env);

  // Any thread.
  void post(std::shared_ptr<Completion> c);

  // JS thread: a call was handed off; the event loop stays alive until it is delivered.
  void expect(Napi::Env env, bool on_stream);
  // JS thread: whether calls handed to the CPU stream are still to be delivered.
  bool stream_results_pending() const { return stream_outstanding_ > 0; }

  // JS thread, at environment cleanup: later posts are dropped.
  void close();

 private:
  static void drain(napi_env env, napi_value js_cb, void* context, void* data);
  void settled(Napi::Env env, bool on_stream);

  std::mutex mu_;
  bool open_ = true;
  napi_threadsafe_function tsfn_ = nullptr;
  std::vector<std::shared_ptr<Completion>> ready_;
  int64_t outstanding_ = 0, stream_outstanding_ = 0;  // JS thread only
};

}  // namespace moe::binding
