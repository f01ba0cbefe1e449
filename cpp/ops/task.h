// Ops check their arguments when called, on the caller's thread, and hand back
// a Task: the math itself, to run on the device's stream (or at once, from C).
#pragma once
#include <functional>

namespace moe::ops {

template <class T>
using Task = std::function<T()>;

}  // namespace moe::ops
