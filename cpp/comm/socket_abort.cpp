#include "socket_abort.h"

#include <dirent.h>
#include <netinet/in.h>
#include <sys/resource.h>

#include <cstdlib>
#include <cstring>

namespace moe::comm {

bool same_endpoint(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET) {
    auto& x = reinterpret_cast<const sockaddr_in&>(a);
    auto& y = reinterpret_cast<const sockaddr_in&>(b);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6) {
    auto& x = reinterpret_cast<const sockaddr_in6&>(a);
    auto& y = reinterpret_cast<const sockaddr_in6&>(b);
    return x.sin6_port == y.sin6_port && std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof(in6_addr)) == 0;
  }
  return false;
}

namespace {

bool endpoints_of(int fd, Endpoints& e) {
  socklen_t n = sizeof(e.first);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&e.first), &n) != 0) return false;
  n = sizeof(e.second);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&e.second), &n) != 0) return false;
  return e.first.ss_family == AF_INET || e.first.ss_family == AF_INET6;
}

bool matches(int fd, const std::vector<Endpoints>& connections) {
  Endpoints e{};
  if (!endpoints_of(fd, e)) return false;
  const sockaddr_storage& local = e.first;
  const sockaddr_storage& peer = e.second;
  for (const auto& c : connections) {
    if (same_endpoint(local, c.first) && same_endpoint(peer, c.second)) return true;
  }
  return false;
}

// This process's open descriptors: from /proc when there is one, else every number below the limit.
std::vector<int> descriptors() {
  std::vector<int> fds;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(dir)) {
      if (e->d_name[0] >= '0' && e->d_name[0] <= '9') fds.push_back(std::atoi(e->d_name));
    }
    closedir(dir);
    return fds;
  }
  rlimit lim{};
  int max_fd = getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < 65536 ? int(lim.rlim_cur) : 65536;
  for (int fd = 0; fd < max_fd; ++fd) fds.push_back(fd);
  return fds;
}

}  // namespace

std::vector<Endpoints> list_connections() {
  std::vector<Endpoints> out;
  for (int fd : descriptors()) {
    Endpoints e{};
    if (endpoints_of(fd, e)) out.push_back(e);
  }
  return out;
}

int shutdown_connections(const std::vector<Endpoints>& connections) {
  if (connections.empty()) return 0;
  int found = 0;
  for (int fd : descriptors()) {
    if (matches(fd, connections) && shutdown(fd, SHUT_RDWR) == 0) ++found;
  }
  return found;
}

}  // namespace moe::comm
