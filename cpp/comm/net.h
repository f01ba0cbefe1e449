// Small POSIX socket helpers shared by the tcp store's server and client.
#pragma once
#include <netinet/in.h>

#include <chrono>
#include <string>

namespace moe::comm::net {

using Clock = std::chrono::steady_clock;

// The IPv4 address of a host name or dotted quad ("localhost" -> 127.0.0.1).
// Throws ERR_MOE_VALUE when the name does not resolve to an IPv4 address.
in_addr resolve_ipv4(const std::string& host);
std::string format_ipv4(in_addr addr);

// The numeric address of a host name or IP literal, IPv4 preferred, else IPv6
// ("localhost" -> "127.0.0.1", "::1" stays "::1"). Gloo is handed only this:
// its own lookup of a name that does not resolve reads an uninitialised list.
// Throws ERR_MOE_VALUE naming the host, and `what` it is, when it does not resolve.
std::string resolve_numeric(const std::string& host, const std::string& what);

// The local IPv4 address of the interface the kernel routes to host:port: the source address a UDP
// socket's connect() picks (nothing is sent; the socket is bound by that connect, inside one system
// call, so it is never seen listening on 0.0.0.0). Throws ERR_MOE_VALUE naming the host on failure.
std::string address_toward(const std::string& host, int port);

void set_nonblocking(int fd);

// Milliseconds left until deadline, for poll(): 0 when passed, at most `cap`.
int poll_ms(Clock::time_point deadline, int cap = 1000);

enum class Io { Ok, Timeout, Closed };

// Send / receive exactly n bytes on a non-blocking socket, polling until deadline.
Io send_all(int fd, const void* data, size_t n, Clock::time_point deadline);
Io recv_all(int fd, void* data, size_t n, Clock::time_point deadline);

}  // namespace moe::comm::net
