// Runs a call that may block on peers (a store get, a rendezvous) on a thread
// of cpp/dist's blocking pool and settles a Promise with its result. Completion
// reaches JS through a ThreadSafeFunction, never through libuv's shared pool.
#pragma once
#include <napi.h>

#include <exception>
#include <functional>
#include <memory>
#include <optional>

#include "../cpp/dist/blocking.h"
#include "addon.h"

namespace moe::binding {

template <class R, class ToJs>
Napi::Value run_blocking_async(Napi::Env env, const char* name, std::function<R()> work, ToJs to_js) {
  struct Call {
    Napi::Promise::Deferred deferred;
    std::function<R()> work;
    ToJs to_js;
    std::optional<R> result;
    Code code = Code::Internal;
    std::string message;
  };
  auto call = std::make_shared<Call>(Call{Napi::Promise::Deferred::New(env), std::move(work), std::move(to_js), {}, {}, {}});
  Napi::Promise promise = call->deferred.Promise();
  auto tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), name, 0, 1);
  dist::run_blocking([call, tsfn]() mutable {
    try {
      call->result.emplace(call->work());
    } catch (const Error& e) {
      call->code = e.code();
      call->message = e.what();
    } catch (const std::exception& e) {
      call->message = e.what();
    }
    call->work = nullptr;  // drop what the call held (the store) on this thread
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
