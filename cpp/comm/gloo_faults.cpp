#include "gloo_faults.h"

#include <algorithm>
#include <cctype>

namespace moe::comm {
namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

bool is_timeout(const std::string& text) {
  std::string l = lower(text);
  return l.find("timed out") != std::string::npos || l.find("timeout") != std::string::npos;
}

}  // namespace

std::string gloo_text(const std::string& what) {
  std::string s = what;
  // GLOO_ERROR_MSG prefixes "[path/file.cc:line] "; nested messages may repeat it.
  for (;;) {
    if (s.empty() || s[0] != '[') break;
    size_t close = s.find("] ");
    if (close == std::string::npos || s.find(':', 1) > close || s.find('/', 1) > close) break;
    s = s.substr(close + 2);
  }
  return s;
}

bool endpoint_in(const std::string& text, const std::string& endpoint) {
  if (endpoint.empty()) return false;
  for (size_t at = text.find(endpoint); at != std::string::npos; at = text.find(endpoint, at + 1)) {
    size_t end = at + endpoint.size();
    if (end >= text.size() || !std::isdigit(static_cast<unsigned char>(text[end]))) return true;
  }
  return false;
}

Error gloo_io_error(const std::string& op, const std::string& what, Millis timeout, const std::string& group, int rank,
                    int size, const std::function<std::string(const std::string&)>& peer_in) {
  const std::string text = gloo_text(what);
  const std::string where = "group " + group + ", rank " + std::to_string(rank) + " of " + std::to_string(size);
  if (is_timeout(text)) {
    return Error(Code::Timeout, op + ": timed out after " + std::to_string(timeout.count()) +
                                    " ms waiting for the other ranks (" + where +
                                    "): a rank is hung, stopped or too slow, or not calling the same collective");
  }
  std::string peer = peer_in ? peer_in(text) : "";
  return Error(Code::PeerLost, op + ": lost the connection to " + (peer.empty() ? "a peer" : peer) + " (" + where +
                                   "): it exited, was killed, or its process group failed (" + text + ")");
}

Error gloo_connect_error(const std::string& op, const std::string& what, Millis timeout) {
  const std::string text = gloo_text(what);
  if (is_timeout(text)) {
    return Error(Code::Timeout, op + ": could not connect to every other rank within " +
                                    std::to_string(timeout.count()) + " ms (" + text + ")");
  }
  return Error(Code::PeerLost, op + ": a peer went away while connecting (" + text + ")");
}

}  // namespace moe::comm
