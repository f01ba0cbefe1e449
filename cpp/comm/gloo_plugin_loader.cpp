// GlooGroup::create in the prebuilt addon: opens the Gloo plugin beside this
// library (gloo_plugin.h) once, and fails with ERR_MOE_UNSUPPORTED naming what
// is missing when it cannot be opened.
#include <dlfcn.h>

#include <mutex>

#include "gloo_plugin.h"

namespace moe::comm {

namespace {

std::string own_directory() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&own_directory), &info) == 0 || info.dli_fname == nullptr) return ".";
  std::string path = info.dli_fname;
  auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

GlooCreate load(std::string& error) {
  std::string path = own_directory() + "/moe_ep_gloo.so";
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    error = std::string("process group: Gloo process groups need libgloo.so.0 (Gloo 0.0~git20220518, as Debian 12 ") +
            "ships it: `sudo apt-get install libgloo0`), or a build from source against the system's Gloo " +
            "(`sudo apt-get install libgloo-dev` then `MOE_EP_BUILD_FROM_SOURCE=1 npm rebuild moe-ep`); opening " +
            path + " failed: " + (why ? why : "unknown error");
    return nullptr;
  }
  auto entry = reinterpret_cast<decltype(&moe_ep_gloo_entry)>(dlsym(handle, "moe_ep_gloo_entry"));
  GlooCreate create = entry ? entry(MOE_EP_GLOO_PLUGIN_VERSION) : nullptr;
  if (create == nullptr) error = "process group: " + path + " is not the Gloo plugin of this build of moe-ep";
  return create;
}

}  // namespace

std::shared_ptr<GlooGroup> GlooGroup::create(std::shared_ptr<Store> store, std::string prefix, int rank,
                                             std::vector<int> world_ranks, GroupOptions options) {
  static std::once_flag once;
  static GlooCreate create = nullptr;
  static std::string error;
  std::call_once(once, [] { create = load(error); });
  if (create == nullptr) fail(Code::Unsupported, error);
  return create(std::move(store), std::move(prefix), rank, std::move(world_ranks), std::move(options));
}

}  // namespace moe::comm
