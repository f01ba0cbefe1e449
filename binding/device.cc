// Devices from JavaScript: toDevice / clone (copies, in order on the stream),
// and CUDA timing events for measuring kernels (recorded in queue order).
#include <memory>

#include "../cpp/core/cuda_device.h"
#include "../cpp/ops/copy.h"
#include "addon.h"
#include "async.h"
#include "convert.h"
#include "tensor_handle.h"

namespace moe::binding {
namespace {

Napi::Value adopt(Napi::Env env, Tensor& t) { return NativeTensor::Adopt(env, t); }

// toDevice(tensor, device)
Napi::Value to_device(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Tensor t = NativeTensor::From(info[0], "tensor");
    return run_async(env, ops::to_device(t, Device::parse(to_string(info[1], "device"))), adopt);
  });
}

// clone(tensor)
Napi::Value clone(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] { return run_async(env, ops::clone(NativeTensor::From(info[0], "tensor")), adopt); });
}

using Event = std::shared_ptr<cuda::TimingEvent>;

// recordEvent(device): a Promise of an event recorded on the device's compute
// stream after every op queued before this call.
Napi::Value record_event(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Device d = Device::parse(to_string(info[0], "device"));
    if (d.kind != Device::CUDA)
      throw make_error(env, Code::Device, "recordEvent: expected a cuda device but received \"" + d.str() + "\"");
    cuda::require(d, "recordEvent");
    Task<Event> task = [d] { return std::make_shared<cuda::TimingEvent>(d); };
    return run_async(env, task, [](Napi::Env env, Event& e) -> Napi::Value {
      return Napi::External<Event>::New(env, new Event(e), [](Napi::Env, Event* p) { delete p; });
    });
  });
}

Event event_arg(Napi::Value v, const char* what) {
  if (!v.IsExternal())
    throw make_error(v.Env(), Code::Value, std::string("expected ") + what + " to be a device event");
  return *v.As<Napi::External<Event>>().Data();
}

// eventElapsedMs(start, end): a Promise of the milliseconds between two events.
Napi::Value event_elapsed_ms(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  return guard(env, [&] {
    Event start = event_arg(info[0], "start"), end = event_arg(info[1], "end");
    Task<double> task = [start, end] { return end->elapsed_ms_since(*start); };
    return run_async(env, task, [](Napi::Env env, double& ms) -> Napi::Value { return Napi::Number::New(env, ms); });
  });
}

Registration reg([](Napi::Env env, Napi::Object exports) {
  exports.Set("toDevice", Napi::Function::New(env, to_device));
  exports.Set("clone", Napi::Function::New(env, clone));
  exports.Set("recordEvent", Napi::Function::New(env, record_event));
  exports.Set("eventElapsedMs", Napi::Function::New(env, event_elapsed_ms));
});

}  // namespace
}  // namespace moe::binding
