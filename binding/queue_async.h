// Runs a core Task on a queue the caller names (a process group's own thread)
// and settles a Promise with its result: binding/async.h's pattern with the
// queue as a parameter. Completion reaches JS through a ThreadSafeFunction,
// never through libuv's shared pool.
#pragma once
#include <napi.h>

#include <exception>
#include <functional>
#include <memory>
#include <optional>

#include "../cpp/ops/task.h"
#include "addon.h"

namespace moe::binding {

using Submit = std::function<void(std::function<void()>)>;

template <class R, class ToJs>
Napi::Value run_queued_async(Napi::Env env, const char* name, const Submit& submit, ops::Task<R> task, ToJs to_js) {
  struct Call {
    Napi::Promise::Deferred deferred;
    ops::Task<R> task;
    ToJs to_js;
    std::optional<R> result;
    Code code = Code::Internal;
    std::string message;
  };
  auto call = std::make_shared<Call>(Call{Napi::Promise::Deferred::New(env), std::move(task), std::move(to_js), {}, {}, {}});
  Napi::Promise promise = call->deferred.Promise();
  auto tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), name, 0, 1);
  submit([call, tsfn]() mutable {
    try {
      call->result.emplace(call->task());
    } catch (const Error& e) {
      call->code = e.code();
      call->message = e.what();
    } catch (const std::exception& e) {
      call->message = e.what();
    }
    call->task = nullptr;  // drop what the task held (tensors, the group) on the worker
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

}  // namespace moe::binding
