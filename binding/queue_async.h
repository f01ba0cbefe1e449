// Runs a core Task on a queue the caller names (a process group's own thread)
// and settles a Promise with its result: binding/async.h's settle_async with
// the queue as the executor.
#pragma once
#include "async.h"

namespace moe::binding {

using Submit = Executor;

template <class R, class ToJs>
Napi::Value run_queued_async(Napi::Env env, const Submit& submit, Task<R> task, ToJs to_js) {
  return settle_async<R>(env, submit, std::move(task), std::move(to_js));
}

}  // namespace moe::binding
