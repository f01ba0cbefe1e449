#include "convert.h"

#include <cmath>

#include "../cpp/core/check.h"
#include "../cpp/core/size.h"
#include "addon.h"

namespace moe::binding {
namespace {

// A number as JavaScript would show an integer: 4611686018427387904, not 4.61169e+18.
std::string number_str(double x) {
  if (std::floor(x) == x && std::fabs(x) < 9.2e18) return std::to_string(int64_t(x));
  return num_str(x);
}

}  // namespace

std::string to_string(Napi::Value v, const char* what) {
  if (!v.IsString()) throw make_error(v.Env(), Code::Value, std::string("expected ") + what + " to be a string");
  return v.As<Napi::String>().Utf8Value();
}

Shape to_shape(Napi::Value v, const char* what) {
  if (!v.IsArray())
    throw make_error(v.Env(), Code::Shape, std::string("expected ") + what + " to be an array of integers");
  Napi::Array a = v.As<Napi::Array>();
  Shape s;
  for (uint32_t i = 0; i < a.Length(); ++i) {
    Napi::Value d = a.Get(i);
    // Exact integers only: a double past 2^53 - 1 (or NaN) would not convert to the dimension it claims.
    const double x = d.IsNumber() ? d.As<Napi::Number>().DoubleValue() : NAN;
    if (!(x >= 0 && x <= double(kMaxElements) && std::floor(x) == x))
      throw make_error(v.Env(), Code::Shape,
                       std::string("expected ") + what + " to hold integers in [0, " + kMaxElementsText +
                           "] but element " + std::to_string(i) + " is " +
                           (d.IsNumber() ? number_str(x) : std::string("not a number")));
    s.push_back(int64_t(x));
  }
  checked_numel(s);
  return s;
}

Napi::Array from_shape(Napi::Env env, const Shape& shape) {
  Napi::Array a = Napi::Array::New(env, shape.size());
  for (size_t i = 0; i < shape.size(); ++i) a.Set(uint32_t(i), Napi::Number::New(env, double(shape[i])));
  return a;
}

double get_number(Napi::Object o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  if (!v.IsNumber()) throw make_error(o.Env(), Code::Value, std::string("expected option ") + key + " to be a number");
  return v.As<Napi::Number>().DoubleValue();
}

std::optional<double> get_optional_number(Napi::Object o, const char* key) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return std::nullopt;
  return get_number(o, key, 0);
}

bool get_bool(Napi::Object o, const char* key, bool fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  return v.ToBoolean();
}

std::string get_string(Napi::Object o, const char* key, const std::string& fallback) {
  Napi::Value v = o.Get(key);
  if (v.IsUndefined() || v.IsNull()) return fallback;
  return to_string(v, key);
}

Napi::Object options_arg(const Napi::CallbackInfo& info, size_t index) {
  if (index < info.Length() && info[index].IsObject()) return info[index].As<Napi::Object>();
  return Napi::Object::New(info.Env());
}

}  // namespace moe::binding
