// One exception type for the core. Every failure the core can report carries a
// stable code; the binding maps it to MoEError and the C ABI to a status.
#pragma once
#include <stdexcept>
#include <string>

namespace moe {

enum class Code {
  Shape = 1,
  Dtype,
  Device,
  Disposed,
  Value,
  NonFinite,
  CudaUnavailable,
  Unsupported,
  Internal,
  Timeout,
  PeerLost,
  CountMismatch,
  NcclUnavailable,
};

// "ERR_MOE_SHAPE", ... : the names JavaScript sees as error.code.
const char* code_name(Code code);

class Error : public std::runtime_error {
 public:
  Error(Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Code code() const { return code_; }

 private:
  Code code_;
};

[[noreturn]] inline void fail(Code code, const std::string& message) { throw Error(code, message); }

}  // namespace moe
