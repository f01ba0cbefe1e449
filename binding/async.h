// Runs core work off the JS thread and settles a Promise with its result.
// Completion reaches JS through a ThreadSafeFunction from a thread the addon
// owns (the CPU stream, a blocking-call thread, a process group's queue),
// never through libuv's shared thread pool.
#pragma once
#include <napi.h>

#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <optional>

#include "../cpp/core/stream.h"
#include "../cpp/core/task.h"
#include "addon.h"

namespace moe::binding {

// Hands work to the thread that should run it.
using Executor = std::function<void(std::function<void()>)>;

// Runs `work` through `submit`; the Promise resolves with to_js(env, result) on
// the JS thread, or rejects with the MoEError the work threw.
template <class R, class ToJs>
Napi::Value settle_async(Napi::Env env, const char* name, const Executor& submit, std::function<R()> work, ToJs to_js) {
  struct Call {
    Napi::Promise::Deferred deferred;
    std::function<R()> work;
    ToJs to_js;
    std::optional<R> result;
    Code code = Code::Internal;
    std::string message;
  };
  auto call =
      std::make_shared<Call>(Call{Napi::Promise::Deferred::New(env), std::move(work), std::move(to_js), {}, {}, {}});
  Napi::Promise promise = call->deferred.Promise();
  auto tsfn =
      Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), name, 0, 1);
  submit([call, tsfn]() mutable {
    try {
      call->result.emplace(call->work());
    } catch (const Error& e) {
      call->code = e.code();
      call->message = e.what();
    } catch (const std::bad_alloc&) {
      call->code = Code::Value;
      call->message = "out of host memory";
    } catch (const std::exception& e) {
      call->message = e.what();
    }
    call->work = nullptr;  // drop the inputs the work held, on this thread, as soon as it is done
    tsfn.BlockingCall([call](Napi::Env env, Napi::Function) {
      if (!call->result) {
        call->deferred.Reject(make_error(env, call->code, call->message).Value());
        return;
      }
      try {
        call->deferred.Resolve(call->to_js(env, *call->result));
      } catch (const Napi::Error& e) {
        call->deferred.Reject(e.Value());
      }
      call->result.reset();
    });
    tsfn.Release();
  });
  return promise;
}

// An op's Task on the CPU stream.
template <class R, class ToJs>
Napi::Value run_async(Napi::Env env, Task<R> task, ToJs to_js) {
  return settle_async<R>(env, "moe-ep op", cpu_stream_submit, std::move(task), std::move(to_js));
}

}  // namespace moe::binding
