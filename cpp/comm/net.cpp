#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "../core/error.h"
#include "store.h"

namespace moe::comm::net {

in_addr resolve_ipv4(const std::string& host) {
  in_addr addr{};
  if (::inet_pton(AF_INET, host.c_str(), &addr) == 1) return addr;
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || !res) {
    fail(Code::Value,
         "store: cannot resolve the host " + describe_key(host) + " to an IPv4 address: " + ::gai_strerror(rc));
  }
  addr = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
  ::freeaddrinfo(res);
  return addr;
}

std::string resolve_numeric(const std::string& host, const std::string& what) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = host.empty() ? EAI_NONAME : ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || !res) {
    if (res) ::freeaddrinfo(res);
    std::string why = rc == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(rc);
    fail(Code::Value, "cannot resolve " + describe_key(host) + " (" + what + ") to an address: " + why);
  }
  const addrinfo* pick = nullptr;
  for (const addrinfo* a = res; a; a = a->ai_next) {
    if (a->ai_family == AF_INET) {
      pick = a;
      break;
    }
    if (!pick && a->ai_family == AF_INET6) pick = a;
  }
  char buf[NI_MAXHOST] = {0};
  int ni = pick ? ::getnameinfo(pick->ai_addr, pick->ai_addrlen, buf, sizeof buf, nullptr, 0, NI_NUMERICHOST) : -1;
  ::freeaddrinfo(res);
  if (ni != 0) fail(Code::Value, "cannot resolve " + describe_key(host) + " (" + what + ") to an IPv4 or IPv6 address");
  return buf;
}

std::string address_toward(const std::string& host, int port) {
  if (port < 1 || port > 65535)
    fail(Code::Value,
         "expected a port in [1, 65535] toward " + describe_key(host) + " but received " + std::to_string(port));
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(uint16_t(port));
  const std::string numeric = resolve_numeric(host, "the host to find the route to");
  if (::inet_pton(AF_INET, numeric.c_str(), &to.sin_addr) != 1)
    fail(Code::Value,
         "expected an IPv4 address for " + describe_key(host) + " (to find the route to it) but it is " + numeric);
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    fail(Code::Internal, std::string("socket() for the route to ") + describe_key(host) + ": " + std::strerror(errno));
  sockaddr_in local{};
  socklen_t len = sizeof local;
  const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok)
    fail(Code::Value,
         "cannot find the route to " + describe_key(host) + ":" + std::to_string(port) + ": " + std::strerror(err));
  return format_ipv4(local.sin_addr);
}

std::string format_ipv4(in_addr addr) {
  char buf[INET_ADDRSTRLEN] = {0};
  ::inet_ntop(AF_INET, &addr, buf, sizeof buf);
  return buf;
}

void set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    fail(Code::Internal, std::string("store: fcntl(O_NONBLOCK) failed: ") + std::strerror(errno));
  }
}

int poll_ms(Clock::time_point deadline, int cap) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return int(std::min<long long>(left + 1, cap));
}

namespace {

// Waits until fd is ready for `events`; Timeout when the deadline passes first.
Io wait_ready(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    int timeout = poll_ms(deadline);
    int rc = ::poll(&p, 1, timeout);
    if (rc < 0) {
      if (errno == EINTR) continue;
      return Io::Closed;
    }
    if (rc > 0) return Io::Ok;  // ready, or an error that the next call reports
    if (Clock::now() >= deadline) return Io::Timeout;
  }
}

}  // namespace

Io send_all(int fd, const void* data, size_t n, Clock::time_point deadline) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      n -= size_t(w);
      continue;
    }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      Io r = wait_ready(fd, POLLOUT, deadline);
      if (r != Io::Ok) return r;
      continue;
    }
    return Io::Closed;
  }
  return Io::Ok;
}

Io recv_all(int fd, void* data, size_t n, Clock::time_point deadline) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r > 0) {
      p += r;
      n -= size_t(r);
      continue;
    }
    if (r == 0) return Io::Closed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      Io w = wait_ready(fd, POLLIN, deadline);
      if (w != Io::Ok) return w;
      continue;
    }
    return Io::Closed;
  }
  return Io::Ok;
}

}  // namespace moe::comm::net
