// Shared pieces of the C ABI's implementation files.
#pragma once
#include <exception>
#include <new>
#include <string>

#include "../core/error.h"
#include "../core/tensor.h"
#include "moe_ep.h"

namespace moe::capi {

extern thread_local std::string last_error;
moe_status status_of(Code code);

const Tensor& in(moe_tensor t, const char* name);
Tensor optional_in(moe_tensor t);
void out(moe_tensor* slot, Tensor t);

// Runs body; any exception becomes a status and this thread's last error.
template <class F>
moe_status guarded(F&& body) {
  try {
    body();
    last_error.clear();
    return MOE_OK;
  } catch (const Error& e) {
    last_error = e.what();
    return status_of(e.code());
  } catch (const std::bad_alloc&) {
    last_error = "out of host memory";
    return MOE_ERR_VALUE;
  } catch (const std::exception& e) {
    last_error = e.what();
    return MOE_ERR_INTERNAL;
  } catch (...) {
    last_error = "unknown error";
    return MOE_ERR_INTERNAL;
  }
}

}  // namespace moe::capi
