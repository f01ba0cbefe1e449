// JS values <-> plain C++ values. The TypeScript facade validates option types
// first; these checks only guard the boundary against direct misuse.
#pragma once
#include <napi.h>

#include <optional>
#include <string>

#include "../cpp/core/tensor.h"

namespace moe::binding {

std::string to_string(Napi::Value v, const char* what);
Shape to_shape(Napi::Value v, const char* what);
Napi::Array from_shape(Napi::Env env, const Shape& shape);

// Options-object fields; absent (undefined) fields give the fallback or nullopt.
double get_number(Napi::Object o, const char* key, double fallback);
std::optional<double> get_optional_number(Napi::Object o, const char* key);
bool get_bool(Napi::Object o, const char* key, bool fallback);
std::string get_string(Napi::Object o, const char* key, const std::string& fallback);
Napi::Object options_arg(const Napi::CallbackInfo& info, size_t index);

}  // namespace moe::binding
