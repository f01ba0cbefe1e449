// The export of the Gloo plugin (gloo_plugin.h).
#include "gloo_plugin.h"

extern "C" __attribute__((visibility("default"))) moe::comm::GlooCreate moe_ep_gloo_entry(int version) {
  return version == MOE_EP_GLOO_PLUGIN_VERSION ? &moe::comm::GlooGroup::create : nullptr;
}
