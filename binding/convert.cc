#include "convert.h"

#include "addon.h"

namespace moe::binding {

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
    if (!d.IsNumber()) throw make_error(v.Env(), Code::Shape, std::string("expected ") + what + " to hold integers");
    s.push_back(d.As<Napi::Number>().Int64Value());
  }
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
