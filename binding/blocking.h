// Runs a call that may block on peers (a store get, a rendezvous) on a thread
// of cpp/comm's blocking pool and settles a Promise with its result.
#pragma once
#include <napi.h>

#include "../cpp/comm/blocking.h"
#include "async.h"

namespace moe::binding {

template <class R, class ToJs>
Napi::Value run_blocking_async(Napi::Env env, Task<R> work, ToJs to_js) {
  return settle_async<R>(env, comm::run_blocking, std::move(work), std::move(to_js));
}

}  // namespace moe::binding
