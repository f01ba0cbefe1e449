#include "nccl_api.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>

#include "../core/cuda_probe.h"
#include "../core/error.h"

namespace moe::comm::nccl {
namespace {

constexpr const char* kEnvName = "MOE_EP_NCCL_LIBRARY";
constexpr const char* kDefaultName = "libnccl.so.2";

struct Loaded {
  Status status;
  Api api;
};

template <class F>
bool find(void* handle, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(handle, name));
  return fn != nullptr;
}

std::string dl_error() {
  const char* e = dlerror();
  return e ? e : "unknown error";
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

const char* const kHintDefault =
    "; set MOE_EP_NCCL_LIBRARY to the path of libnccl.so.2 (for example from the pip package "
    "nvidia-nccl-cu12 or nvidia-nccl-cu13), or put its folder on LD_LIBRARY_PATH";
const char* const kHintNamed = "; MOE_EP_NCCL_LIBRARY must name a libnccl.so.2 file";

Loaded load() {
  Loaded l;
  Status& s = l.status;
  Api& a = l.api;

  // 1. the library
  const char* env = std::getenv(kEnvName);
  const bool named = env && *env;
  const std::string path = named ? env : kDefaultName;
  s.library = path;
  const std::string tried = named ? std::string(kEnvName) + "=" + path : path;
  dlerror();
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const std::string err = dl_error();
    // A path (with a '/') that names no file, or a bare name the loader did not find.
    const bool missing =
        path.find('/') != std::string::npos ? !file_exists(path) : err.find("No such file") != std::string::npos;
    s.reason = (missing ? "library not found: tried " : "library could not be loaded: tried ") + tried + " (" + err +
               ")" + (named ? kHintNamed : kHintDefault);
    return l;
  }

  // A library that fails a check below is closed again and no pointer into it is kept.
  auto reject = [&](std::string reason) {
    s.reason = std::move(reason);
    a = Api{};
    dlclose(handle);
    return l;
  };

  // 2-3. the version, before anything else: a library older than 2.7 lacks ncclSend.
  if (!find(handle, "ncclGetVersion", a.GetVersion)) {
    return reject("missing symbol: " + path + " has no ncclGetVersion (is it NCCL?)");
  }
  int code = 0;
  if (a.GetVersion(&code) != kSuccess || code <= 0) {
    return reject("version unknown: ncclGetVersion of " + path + " failed or returned " + std::to_string(code));
  }
  const Version v = decode_version(code);
  s.version_code = code;
  s.version = version_string(v);
  if (!at_least(v, kMinVersion.major, kMinVersion.minor, kMinVersion.patch)) {
    return reject("version too old: " + path + " is NCCL " + s.version +
                  " but moe-ep needs NCCL >= " + version_string(kMinVersion) + " (for ncclSend/ncclRecv)");
  }

  // 4. every other function used
  struct Need {
    const char* name;
    bool ok;
  };
  const Need needs[] = {
      {"ncclGetUniqueId", find(handle, "ncclGetUniqueId", a.GetUniqueId)},
      {"ncclCommInitRank", find(handle, "ncclCommInitRank", a.CommInitRank)},
      {"ncclCommAbort", find(handle, "ncclCommAbort", a.CommAbort)},
      {"ncclCommDestroy", find(handle, "ncclCommDestroy", a.CommDestroy)},
      {"ncclCommGetAsyncError", find(handle, "ncclCommGetAsyncError", a.CommGetAsyncError)},
      {"ncclGetErrorString", find(handle, "ncclGetErrorString", a.GetErrorString)},
      {"ncclGroupStart", find(handle, "ncclGroupStart", a.GroupStart)},
      {"ncclGroupEnd", find(handle, "ncclGroupEnd", a.GroupEnd)},
      {"ncclSend", find(handle, "ncclSend", a.Send)},
      {"ncclRecv", find(handle, "ncclRecv", a.Recv)},
      {"ncclAllReduce", find(handle, "ncclAllReduce", a.AllReduce)},
      {"ncclBroadcast", find(handle, "ncclBroadcast", a.Broadcast)},
  };
  std::string missing;
  for (const Need& n : needs) {
    if (!n.ok) missing += (missing.empty() ? "" : ", ") + std::string(n.name);
  }
  if (!missing.empty()) {
    return reject("missing symbol: " + path + " (NCCL " + s.version + ") has no " + missing);
  }
  if (at_least(v, 2, 14, 0)) find(handle, "ncclCommInitRankConfig", a.CommInitRankConfig);
  if (at_least(v, 2, 13, 0)) find(handle, "ncclGetLastError", a.GetLastError);
  s.non_blocking = a.CommInitRankConfig != nullptr;
  s.supports_bf16 = at_least(v, kBf16Version.major, kBf16Version.minor, kBf16Version.patch);
  s.loaded = true;
  // The handle stays open for the life of the process: communicators hold code from it.

  // 5. a device to run on
  const CudaStatus& cuda = cuda_status();
  if (!cuda.available) {
    s.reason = "no device: NCCL " + s.version + " loaded from " + path + " but CUDA is unavailable: " + cuda.reason;
    return l;
  }
  s.available = true;
  return l;
}

const Loaded& loaded() {
  static const Loaded l = load();
  return l;
}

}  // namespace

Version decode_version(int code) {
  Version v;
  if (code >= 10000) {
    v.major = code / 10000;
    v.minor = code % 10000 / 100;
  } else {
    v.major = code / 1000;
    v.minor = code % 1000 / 100;
  }
  v.patch = code % 100;
  return v;
}

std::string version_string(const Version& v) {
  return std::to_string(v.major) + "." + std::to_string(v.minor) + "." + std::to_string(v.patch);
}

bool at_least(const Version& v, int major, int minor, int patch) {
  if (v.major != major) return v.major > major;
  if (v.minor != minor) return v.minor > minor;
  return v.patch >= patch;
}

const Status& status() { return loaded().status; }

const Api& api() {
  const Loaded& l = loaded();
  if (!l.status.available) fail(Code::NcclUnavailable, "NCCL is unavailable: " + l.status.reason);
  return l.api;
}

std::string describe(Result r) {
  static const char* const names[] = {"ncclSuccess",       "ncclUnhandledCudaError", "ncclSystemError",
                                      "ncclInternalError", "ncclInvalidArgument",    "ncclInvalidUsage",
                                      "ncclRemoteError",   "ncclInProgress",         "ncclTimeout"};
  const int i = static_cast<int>(r);
  std::string text = i >= 0 && i < int(sizeof names / sizeof names[0]) ? names[i] : "ncclResult";
  text += " (" + std::to_string(i) + ")";
  const Loaded& l = loaded();
  if (l.status.loaded && l.api.GetErrorString) {
    if (const char* s = l.api.GetErrorString(r)) text += std::string(": ") + s;
  }
  return text;
}

}  // namespace moe::comm::nccl
