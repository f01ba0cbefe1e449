// Runs core work off the JS thread and settles a Promise with its result.
// Completion reaches JS through the environment's Mailbox (completions.h) from
// a thread the addon owns (the CPU stream, a blocking-call thread, a process
// group's queue), never through libuv's shared thread pool. Work the CPU stream
// takes at once (cpp/core/stream.h) settles before the call returns.
#pragma once
#include <napi.h>

#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <utility>

#include "../cpp/core/stream.h"
#include "../cpp/core/task.h"
#include "addon.h"
#include "completions.h"

namespace moe::binding {

// Hands work to the thread that should run it.
using Executor = std::function<void(std::function<void()>)>;

// A call in flight: the work and its outcome here, the Promise and the
// conversion in the environment's JsSide.
template <class R, class ToJs>
class Call final : public Completion {
 public:
  Call(Napi::Env env, Task<R> work, ToJs to_js)
      : work_(std::move(work)), js_(new Js{Napi::Promise::Deferred::New(env), std::move(to_js)}) {
    data(env).pending.insert(js_);
  }

  Napi::Promise promise() const { return js_->deferred.Promise(); }

  // Any thread; never throws.
  void run() noexcept {
    try {
      result_.emplace(work_());
    } catch (const Error& e) {
      code_ = e.code();
      message_ = e.what();
    } catch (const std::bad_alloc&) {
      code_ = Code::Value;
      message_ = "out of host memory";
    } catch (const std::exception& e) {
      message_ = e.what();
    } catch (...) {
      message_ = "unknown error";
    }
    work_ = nullptr;  // drop the inputs the work held, on this thread, as soon as it is done
  }

  void deliver(Napi::Env env) override {
    std::unique_ptr<Js> js(js_);
    data(env).pending.erase(js_);
    if (!result_) {
      js->deferred.Reject(make_error(env, code_, message_).Value());
      return;
    }
    try {
      js->deferred.Resolve(js->to_js(env, *result_));
    } catch (const Napi::Error& e) {
      js->deferred.Reject(e.Value());
    }
    result_.reset();
  }

 private:
  struct Js final : JsSide {
    Js(Napi::Promise::Deferred d, ToJs t) : deferred(std::move(d)), to_js(std::move(t)) {}
    Napi::Promise::Deferred deferred;
    ToJs to_js;
  };

  Task<R> work_;
  Js* js_;  // owned by AddonData::pending until delivered
  std::optional<R> result_;
  Code code_ = Code::Internal;
  std::string message_;
};

// Runs `work` through `submit`; the Promise resolves with to_js(env, result) on
// the JS thread, or rejects with the MoEError the work threw.
template <class R, class ToJs>
Napi::Value settle_async(Napi::Env env, const Executor& submit, Task<R> work, ToJs to_js) {
  auto call = std::make_shared<Call<R, ToJs>>(env, std::move(work), std::move(to_js));
  Napi::Promise promise = call->promise();
  std::shared_ptr<Mailbox> mailbox = data(env).mailbox;
  mailbox->expect(env, false);
  submit([call, mailbox]() mutable {
    call->run();
    mailbox->post(std::move(call));
  });
  return promise;
}

// An op's Task on the CPU stream: run at once when the stream takes it inline
// and none of this environment's earlier stream results is still on its way
// (so Promises settle in stream order), else queued behind them.
template <class R, class ToJs>
Napi::Value run_async(Napi::Env env, Task<R> task, ToJs to_js) {
  AddonData& d = data(env);
  const int64_t cost = task.cost;
  auto call = std::make_shared<Call<R, ToJs>>(env, std::move(task), std::move(to_js));
  Napi::Promise promise = call->promise();
  if (!d.mailbox->stream_results_pending() && cpu_stream_run_inline(cost, [&call] { call->run(); })) {
    call->deliver(env);
    return promise;
  }
  std::shared_ptr<Mailbox> mailbox = d.mailbox;
  call->on_stream = true;
  mailbox->expect(env, true);
  cpu_stream_submit(
      [call, mailbox]() mutable {
        call->run();
        mailbox->post(std::move(call));
      },
      &d);
  return promise;
}

}  // namespace moe::binding
