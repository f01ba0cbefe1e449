// Shared pieces of the N-API glue: per-environment data, the registry that
// each binding/*.cc file adds its exports to, and error conversion.
#pragma once
#include <napi.h>

#include <functional>
#include <memory>
#include <new>
#include <string>
#include <unordered_set>
#include <vector>

#include "../cpp/core/error.h"
#include "../cpp/core/tensor.h"
#include "completions.h"

namespace moe::comm {
class ProcessGroup;
}

namespace moe::binding {

// One per environment (the main thread's, each worker's). At the
// environment's cleanup (addon.cc) its Mailbox closes, its work queued on the
// CPU stream is dropped and its running work waited for, its process groups
// are destroyed and the JS values of unsettled calls are freed.
struct AddonData {
  Napi::FunctionReference error_class;  // lib/errors.ts's MoEError, handed over at start-up
  Napi::FunctionReference tensor_class;
  Tensor* adopting = nullptr;  // the tensor NativeTensor::Adopt hands to the constructor
  std::shared_ptr<Mailbox> mailbox;
  std::unordered_set<JsSide*> pending;  // JS values of the calls not yet settled
  std::vector<std::weak_ptr<comm::ProcessGroup>> groups;
  int64_t reported_host_bytes = 0;  // host memory this env has reported to V8 (sync_external_memory)
  void adopt_group(const std::shared_ptr<comm::ProcessGroup>& g);
};
AddonData& data(Napi::Env env);

// Each binding file registers its functions with a static Registration.
using RegisterFn = void (*)(Napi::Env, Napi::Object);
struct Registration {
  explicit Registration(RegisterFn fn);
};
void register_all(Napi::Env env, Napi::Object exports);

// A JS MoEError (or Error before the class is handed over) for a code and message.
Napi::Error make_error(Napi::Env env, Code code, const std::string& message);

// Runs a binding body, turning core exceptions into thrown MoEErrors.
template <class F>
Napi::Value guard(Napi::Env env, F&& body) {
  try {
    return body();
  } catch (const Error& e) {
    throw make_error(env, e.code(), e.what());
  } catch (const Napi::Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw make_error(env, Code::Value, "out of host memory");
  } catch (const std::exception& e) {
    throw make_error(env, Code::Internal, e.what());
  }
}

}  // namespace moe::binding
