// Gloo reports every transport failure as gloo::IoException with a text
// message; these turn them into the core's typed errors: a timeout becomes
// ERR_MOE_TIMEOUT naming the op and the timeout, a closed or reset connection
// ERR_MOE_PEER_LOST naming the peer when its endpoint is known.
#pragma once
#include <functional>
#include <string>

#include "../core/error.h"
#include "store.h"

namespace moe::comm {

// Gloo's message without the "[file.cc:123] " prefixes it adds.
std::string gloo_text(const std::string& what);

// Does text name endpoint (e.g. "[127.0.0.1]:4242"), not as the prefix of a longer port?
bool endpoint_in(const std::string& text, const std::string& endpoint);

// A failure during a collective. peer_in finds the peer a message names ("rank 2") or "".
Error gloo_io_error(const std::string& op, const std::string& what, Millis timeout, const std::string& group, int rank,
                    int size, const std::function<std::string(const std::string&)>& peer_in);

// A failure while connecting the group.
Error gloo_connect_error(const std::string& op, const std::string& what, Millis timeout);

}  // namespace moe::comm
