// The Gloo plugin of the prebuilt addon (MOE_EP_GLOO_PLUGIN): the Gloo side
// of the process groups (gloo_group.cpp, gloo_store.cpp, gloo_faults.cpp) in
// moe_ep_gloo.so, linked to the system's libgloo.so.0 and opened beside the
// addon when the first Gloo group is created (gloo_plugin_loader.cpp). Its one
// export hands back GlooGroup::create.
#pragma once
#include "gloo_group.h"

namespace moe::comm {

using GlooCreate = std::shared_ptr<GlooGroup> (*)(std::shared_ptr<Store>, std::string, int, std::vector<int>,
                                                  GroupOptions);

}  // namespace moe::comm

// Bumped whenever GlooGroup's layout or GlooCreate's signature changes.
#define MOE_EP_GLOO_PLUGIN_VERSION 1

extern "C" moe::comm::GlooCreate moe_ep_gloo_entry(int version);
