// Ends connections that a library owns and exposes no abort for (Gloo's pairs):
// finds this process's sockets by their two endpoints and shuts them down. The
// owner's event loop then reads end-of-file and fails every wait on them, and
// the peers read end-of-file too.
#pragma once
#include <sys/socket.h>

#include <utility>
#include <vector>

namespace moe::comm {

using Endpoints = std::pair<sockaddr_storage, sockaddr_storage>;  // local, peer

bool same_endpoint(const sockaddr_storage& a, const sockaddr_storage& b);

// The local and peer addresses of every connected socket of this process.
std::vector<Endpoints> list_connections();

// shutdown(SHUT_RDWR) on every socket of this process whose local and peer
// addresses are one of `connections`; returns how many it found.
int shutdown_connections(const std::vector<Endpoints>& connections);

}  // namespace moe::comm
