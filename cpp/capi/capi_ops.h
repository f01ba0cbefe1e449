// Shared pieces of the C ABI's implementation files.
#pragma once
#include <cstring>
#include <exception>
#include <initializer_list>
#include <new>
#include <string>

#include "../core/error.h"
#include "../core/tensor.h"
#include "../ops/activation.h"
#include "../ops/permute.h"
#include "moe_ep.h"

namespace moe::capi {

extern thread_local std::string last_error;
moe_status status_of(Code code);

const Tensor& in(moe_tensor t, const char* name);
Tensor optional_in(moe_tensor t);
void out(moe_tensor* slot, Tensor t);
// "cpu", "cuda", "cuda:N"; NULL is "cpu".
Device device_of(const char* name);
// A C struct argument that must not be NULL.
template <class T>
const T& options_in(const T* p, const char* op) {
  if (!p) fail(Code::Value, std::string(op) + ": expected options but received NULL");
  return *p;
}
// An int a C caller stored in an enum-typed field, read without assuming it is in range.
template <class E>
int enum_value(const E& field) {
  static_assert(sizeof(E) == sizeof(int), "a C enum is an int");
  int v;
  std::memcpy(&v, &field, sizeof v);
  return v;
}
ops::ActivationKind activation_of(const moe_activation& kind, const char* op);
// The permute options of a C caller's fields, the drop policy read as the int it stored (capi_permute.cpp).
ops::PermuteOptions permute_options(int64_t num_experts, double capacity_factor, const moe_drop_policy& drop_policy,
                                    int pad_to_capacity, const char* op);

// Sets every tensor out-parameter to NULL before a call, so that a failure leaves none set.
inline void clear(std::initializer_list<moe_tensor*> slots) {
  for (moe_tensor* s : slots)
    if (s) *s = nullptr;
}

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
